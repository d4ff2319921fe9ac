//! Which URLs headwarden may fetch from or post to: https anywhere, http only to loopback and
//! only where the config allows it.

/// Parsed the way the HTTP client parses it (WHATWG URL): `http://a#@127.0.0.1` has host `a`,
/// `http://a\\@127.0.0.1` too. Only a loopback host counts.
fn is_loopback_url(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `https://` anywhere; `http://` only to a loopback host and only when allowed. URLs with a
/// backslash or a fragment are refused outright: parsers disagree about where their host ends.
pub fn url_allowed(url: &str, allow_insecure_http: bool) -> bool {
    if url.contains('\\') || url.contains('#') {
        return false;
    }
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.scheme() {
        "https" => parsed.host().is_some(),
        "http" => allow_insecure_http && is_loopback_url(&parsed),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls() {
        assert!(url_allowed("http://127.0.0.1:8080/x", true));
        assert!(url_allowed("http://localhost/x", true));
        assert!(url_allowed("http://[::1]:9/x", true));
        assert!(!url_allowed("http://127.0.0.1:8080/x", false));
        assert!(!url_allowed("http://example.com/x", true));
        assert!(!url_allowed("http://127.0.0.1.evil.com/x", true));
        assert!(!url_allowed("http://user@evil.com/x", true));
        assert!(url_allowed("https://api.github.com", false));
        // The review's bypasses: the host the client would dial is not loopback.
        assert!(!url_allowed("http://example.invalid#@127.0.0.1", true));
        assert!(!url_allowed(
            "http://example.invalid\\@127.0.0.1:8/files/x",
            true
        ));
        assert!(!url_allowed(
            "http://headscale.example.invalid\\@127.0.0.1:8080",
            true
        ));
        assert!(!url_allowed("http://a?@127.0.0.1/", true));
        assert!(!url_allowed("http://127.0.0.1.nip.io/", true));
        assert!(!url_allowed("http://[::ffff:127.0.0.1]/", true));
        assert!(url_allowed("http://LOCALHOST:9/", true));
    }
}
