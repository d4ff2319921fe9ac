//! What headwarden's own units must allow for the configured install kind, and where they (or
//! this process) do not: `config check` says so before a run fails on it.
//!
//! As root headwarden enters Headscale's 0750 runtime and data directories (upstream's unit runs
//! Headscale as `headscale`), creates and restores files there with their owner and mode, reads
//! the server process's `/proc/<pid>/{exe,environ}` and stops stand-alone servers: every kind
//! needs the base capabilities. The binary, deb and external kinds run the candidate on staging
//! as production's account (`CAP_SETUID`, `CAP_SETGID`). dpkg writes /usr, /etc and /var/lib/dpkg (`ProtectSystem=no`);
//! rootful Podman mounts and makes namespaces (`CAP_SYS_ADMIN` and more).

use crate::process;
use crate::settings::{Install, Settings};

/// Capabilities every kind needs, by name and number.
const BASE: [(&str, u32); 6] = [
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_FOWNER", 3),
    ("CAP_KILL", 5),
    ("CAP_SYS_PTRACE", 19),
];
/// What a compose install adds (rootful Podman; Docker needs only its socket).
const COMPOSE: [(&str, u32); 1] = [("CAP_SYS_ADMIN", 21)];
/// What kinds whose candidate runs on staging as headwarden's child add: it runs as
/// production's account (security review N7).
const STAGING_CHILD: [(&str, u32); 2] = [("CAP_SETGID", 6), ("CAP_SETUID", 7)];

/// The units headwarden ships.
const UNITS: [&str; 2] = ["headwarden.service", "headwarden-daemon.service"];

fn needed(s: &Settings) -> Vec<(&'static str, u32)> {
    let mut caps = BASE.to_vec();
    match &s.headscale.install {
        Install::Compose(_) => caps.extend(COMPOSE),
        Install::Binary | Install::Deb(_) | Install::External(_) => caps.extend(STAGING_CHILD),
    }
    caps
}

/// What this kind needs of the file system beyond the base unit (`ProtectSystem=`).
fn needs_writable_system(s: &Settings) -> bool {
    matches!(s.headscale.install, Install::Deb(_))
}

/// The drop-in README names for the kind.
fn drop_in(s: &Settings) -> &'static str {
    match &s.headscale.install {
        Install::Deb(_) => "deb-install.conf",
        Install::Compose(_) => "compose-install.conf",
        Install::Binary | Install::External(_) => "none needed",
    }
}

/// Why this process or an installed headwarden unit cannot do what the configured kind needs;
/// empty when nothing is missing (or headwarden does not run as root: it then has no
/// capabilities to lose and says so elsewhere).
pub async fn gaps(s: &Settings) -> Vec<String> {
    if !nix::unistd::geteuid().is_root() {
        return vec![];
    }
    let needed = needed(s);
    let mut out = Vec::new();
    if let Some(bounding) = own_bounding_set() {
        let missing: Vec<&str> = needed
            .iter()
            .filter(|(_, n)| bounding & (1u64 << n) == 0)
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "this headwarden runs without {}: it cannot enter or restore Headscale's files as this kind needs",
                missing.join(" ")
            ));
        }
    }
    for unit in UNITS {
        if let Some(gap) = unit_gap(s, unit, &needed).await {
            out.push(gap);
        }
    }
    out
}

/// This process's capability bounding set (`CapBnd:` of /proc/self/status).
fn own_bounding_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// What the installed `unit` lacks, as systemd has it loaded (with every drop-in).
async fn unit_gap(s: &Settings, unit: &str, needed: &[(&str, u32)]) -> Option<String> {
    let argv: Vec<String> = [
        "systemctl",
        "show",
        "-p",
        "LoadState",
        "-p",
        "CapabilityBoundingSet",
        "-p",
        "ProtectSystem",
        unit,
    ]
    .map(String::from)
    .to_vec();
    let out = process::run(&argv, std::time::Duration::from_secs(10))
        .await
        .ok()
        .filter(|o| o.success())?;
    let mut props = std::collections::BTreeMap::new();
    for line in out.stdout.lines() {
        if let Some((k, v)) = line.split_once('=') {
            props.insert(k.to_string(), v.trim().to_string());
        }
    }
    if props.get("LoadState").map(String::as_str) != Some("loaded") {
        return None;
    }
    let caps = props
        .get("CapabilityBoundingSet")
        .cloned()
        .unwrap_or_default()
        .to_uppercase();
    let have: Vec<&str> = caps.split_whitespace().collect();
    let mut missing: Vec<&str> = needed
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !have.contains(name))
        .collect();
    let protect = props.get("ProtectSystem").cloned().unwrap_or_default();
    let system = needs_writable_system(s) && protect != "no";
    if missing.is_empty() && !system {
        return None;
    }
    let mut why = Vec::new();
    if !missing.is_empty() {
        missing.sort_unstable();
        why.push(format!(
            "its CapabilityBoundingSet lacks {}",
            missing.join(" ")
        ));
    }
    if system {
        why.push(format!(
            "ProtectSystem={protect} keeps dpkg from writing /usr and /etc"
        ));
    }
    Some(format!(
        "{unit}: {} for headscale.install.kind {}; install the drop-in {} (README, \"Running under systemd\")",
        why.join(", and "),
        s.headscale.install.kind_name(),
        drop_in(s)
    ))
}
