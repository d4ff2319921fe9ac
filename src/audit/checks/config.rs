//! The config step: production's Headscale config against the seeds' mitigations, and the keys the next minor refuses.

use crate::event::Severity;
use crate::headscale::config;
use crate::headscale::config::{FileKey, HeadscaleConfig};

use crate::audit::{finding, mitigation, Finding};

pub(crate) fn host_of(addr: &str) -> &str {
    let a = addr.trim();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    a.rsplit_once(':').map_or(a, |(h, _)| h)
}

pub(crate) fn is_loopback_host(h: &str) -> bool {
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `version`: production's, for defaults that changed (unknown: the older default).
/// Listeners reachable from other hosts: the HTTP listener without TLS, metrics, gRPC.
fn listener_checks(c: &HeadscaleConfig, version: Option<&semver::Version>) -> Vec<Finding> {
    let file = c.path.display().to_string();
    let mut out = Vec::new();
    let exposed = |addr: &str| -> bool {
        let h = host_of(addr);
        !addr.is_empty() && !is_loopback_host(h)
    };
    if exposed(&c.listen_addr) && !c.serves_tls {
        out.push(finding(
            "config.listen_addr_exposed",
            None,
            Severity::Warning,
            format!("Headscale listens on {} without terminating TLS itself", c.listen_addr),
            format!("{file}: listen_addr: {}", c.listen_addr),
            mitigation::CONFIG,
            "bind to 127.0.0.1:8080 behind the TLS reverse proxy (or configure tls_cert_path / Let's Encrypt)",
        ));
    }
    if let Some(m) = c
        .file_value(FileKey::MetricsListenAddr)
        .filter(|m| exposed(m))
    {
        out.push(finding(
            "config.metrics_exposed",
            None,
            Severity::Warning,
            format!("metrics and debug endpoints are reachable on {m}"),
            format!("{file}: metrics_listen_addr: {m}"),
            mitigation::CONFIG,
            "metrics_listen_addr: 127.0.0.1:9090 (scrape locally or through a tunnel)",
        ));
    }
    let insecure = c.file_value(FileKey::GrpcAllowInsecure).as_deref() == Some("true");
    // Upstream's default is `:50443` (all interfaces) when the key is absent (removed in 0.30).
    let grpc = c.file_value(FileKey::GrpcListenAddr).or_else(|| {
        version
            .is_none_or(|v| (v.major, v.minor) < (0, 30))
            .then(|| ":50443".to_string())
    });
    let shown = if c.file_value(FileKey::GrpcListenAddr).is_some() {
        ""
    } else {
        " (the default: the key is absent)"
    };
    if let Some(g) = grpc.as_deref().filter(|g| exposed(g)) {
        out.push(finding(
            "config.grpc_exposed",
            None,
            if insecure { Severity::Critical } else { Severity::Warning },
            if insecure {
                format!("the gRPC admin API listens on {g} without TLS (grpc_allow_insecure: true)")
            } else {
                format!("the gRPC admin API listens on {g}")
            },
            format!("{file}: grpc_listen_addr: {g}{shown}, grpc_allow_insecure: {insecure}"),
            mitigation::CONFIG,
            "grpc_listen_addr: 127.0.0.1:50443 and grpc_allow_insecure: false; manage through the unix socket",
        ));
    }
    out
}

pub(crate) fn config_checks(
    c: &HeadscaleConfig,
    version: Option<&semver::Version>,
) -> Vec<Finding> {
    let file = c.path.display().to_string();
    let mut out = listener_checks(c, version);
    let url = &c.server_url;
    if !url.starts_with("https://") {
        let local = is_loopback_host(host_of(
            url.split_once("://")
                .map_or("", |(_, r)| r.split('/').next().unwrap_or("")),
        ));
        out.push(finding(
            "config.server_url_not_https",
            None,
            if local { Severity::Info } else { Severity::Critical },
            format!("server_url {url} is not https"),
            format!("{file}: server_url: {url}"),
            mitigation::CONFIG,
            "serve Headscale over https (reverse proxy or tls_cert_path) and set server_url to the https URL",
        ));
    }
    let level = c
        .file_value(FileKey::LogLevel)
        .unwrap_or_default()
        .to_lowercase();
    if matches!(level.as_str(), "debug" | "trace") {
        out.push(finding(
            "config.log_verbose",
            None,
            Severity::Warning,
            format!("log level {level} in production"),
            format!("{file}: log.level: {level}"),
            mitigation::CONFIG,
            "log.level: info (debug logs carry node and key details)",
        ));
    }
    if let Some(p) = c.file_value(FileKey::UnixSocketPermission) {
        match u32::from_str_radix(p.trim_start_matches("0o"), 8) {
            Ok(mode) if mode & 0o007 != 0 => out.push(finding(
                "config.socket_permission",
                None,
                Severity::Critical,
                format!("the admin socket is open to every local user (mode {p})"),
                format!("{file}: unix_socket_permission: \"{p}\""),
                mitigation::CONFIG,
                "unix_socket_permission: \"0770\" (anyone who can open the socket is an admin)",
            )),
            _ => {}
        }
    }
    out
}

/// Keys in `c` that the next minor release refuses to start with.
pub(crate) fn next_minor_checks(c: &HeadscaleConfig, current: &semver::Version) -> Vec<Finding> {
    let next = semver::Version::new(current.major, current.minor + 1, 0);
    config::incompatibilities(c, &next)
        .into_iter()
        .filter(|p| p.since > *current)
        .map(|p| {
            finding(
                "config.next_minor_incompatible",
                Some(&p.key),
                Severity::Warning,
                format!("`{}` stops Headscale {} from starting", p.key, next),
                format!("{}: {} (since {})", c.path.display(), p.key, p.since),
                mitigation::UPDATED,
                &p.fix,
            )
        })
        .collect()
}
