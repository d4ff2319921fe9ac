//! The dns step: nameservers and MagicDNS.

use crate::event::Severity;
use crate::headscale::config::HeadscaleConfig;

use crate::audit::{finding, mitigation, Finding};
use crate::headscale::config::FileKey;

pub(crate) fn dns_checks(
    c: &HeadscaleConfig,
    allowed_nameservers: Option<&[String]>,
) -> Vec<Finding> {
    let file = c.path.display().to_string();
    let mut out = Vec::new();
    if c.file_value(FileKey::DnsMagicDns).as_deref() == Some("false") {
        out.push(finding(
            "dns.magic_dns_off",
            None,
            Severity::Info,
            "MagicDNS is off: nodes are addressed by IP and names resolve outside the tailnet"
                .into(),
            format!("{file}: dns.magic_dns: false"),
            mitigation::DNS,
            "dns.magic_dns: true with a base_domain",
        ));
    }
    if c.file_value(FileKey::DnsOverrideLocalDns).as_deref() == Some("false") {
        out.push(finding(
            "dns.local_dns_not_overridden",
            None,
            Severity::Warning,
            "nodes keep their local resolvers: tailnet lookups can leak to the local network"
                .into(),
            format!("{file}: dns.override_local_dns: false"),
            mitigation::DNS,
            "dns.override_local_dns: true with trusted dns.nameservers.global",
        ));
    }
    if let Some(allowed) = allowed_nameservers {
        for ns in c.file_list(FileKey::DnsNameserversGlobal) {
            let ns = ns.as_str();
            if !allowed.iter().any(|a| a == ns) {
                out.push(finding(
                    "dns.nameserver_not_allowed",
                    Some(ns),
                    Severity::Warning,
                    format!("nodes resolve through {ns}, which is not an allowed nameserver"),
                    format!(
                        "{file}: dns.nameservers.global; allowed: {}",
                        allowed.join(", ")
                    ),
                    mitigation::DNS,
                    "use only the resolvers in audit.allowed_nameservers",
                ));
            }
        }
    }
    out
}
