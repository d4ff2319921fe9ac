//! Fixtures shared by every sandbox: upstream's config shape, the offline DERP map, the release
//! feed and its publisher.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::bins::{sim, sim_bin, wait_for_addr};

/// Real Headscale's config as the compose and deb sandboxes give it: upstream's paths
/// (/var/lib/headscale, /var/run/headscale, /etc/headscale/derp.yaml), offline DERP, no update
/// check, policy in the database.
pub fn upstream_config(server_url: &str, listen: &str, metrics: &str, grpc: &str) -> String {
    UPSTREAM_CONFIG
        .replace("{server}", server_url)
        .replace("{listen}", listen)
        .replace("{metrics}", metrics)
        .replace("{grpc}", grpc)
}

const UPSTREAM_CONFIG: &str = "server_url: {server}
listen_addr: {listen}
metrics_listen_addr: {metrics}
grpc_listen_addr: {grpc}
noise:
  private_key_path: /var/lib/headscale/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: false
  urls: []
  paths: [/etc/headscale/derp.yaml]
  auto_update_enabled: false
disable_check_updates: true
ephemeral_node_inactivity_timeout: 30m
database:
  type: sqlite
  sqlite:
    path: /var/lib/headscale/db.sqlite
    write_ahead_log: true
log:
  level: info
policy:
  mode: database
dns:
  magic_dns: false
  base_domain: tailnet.example
  override_local_dns: false
  nameservers:
    global: []
unix_socket: /var/run/headscale/headscale.sock
unix_socket_permission: \"0770\"
";

/// An offline DERP map (the real server must start without fetching one).
pub const OFFLINE_DERP: &str = "regions:
  900:
    regionid: 900
    regioncode: local
    regionname: Offline
    nodes:
      - name: 900a
        regionid: 900
        hostname: 127.0.0.1
        ipv4: 127.0.0.1
        stunport: -1
        derpport: 1
";

/// `smoke.checks` for a stand-in production: every check but the connectivity probe.
pub const STAND_IN_CHECKS: &str = "  checks: [health, version, noise_key, data_parity]\n";

/// The account production runs as when the suite runs as root (`nobody`).
pub const PROD_UID: u32 = 65534;

/// The stand-in's GitHub releases API over `dir/feed` (its releases under `feed/releases`), and
/// the address it listens on.
pub fn start_feed(dir: &Path) -> (Child, String) {
    std::fs::create_dir_all(dir.join("feed/releases")).expect("feed dir");
    let addr_file = dir.join("feed.addr");
    let feed = Command::new(sim_bin())
        .args([
            "github-feed",
            "--dir",
            &dir.join("feed").display().to_string(),
            "--addr-file",
            &addr_file.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("feed");
    let addr = wait_for_addr(&addr_file);
    (feed, addr)
}

/// Publishes release `version` in the feed under `dir` (`dir/feed`, signed with
/// `dir/keys/minisign.key`): `binary` as its asset and, when given, `deb` as its package, named,
/// checksummed and signed like upstream's.
pub fn publish(dir: &Path, version: &str, binary: &Path, deb: Option<&Path>) {
    let feed = dir.join("feed").display().to_string();
    let key = dir.join("keys/minisign.key").display().to_string();
    let binary = binary.display().to_string();
    let deb = deb.map(|d| d.display().to_string());
    let mut args = vec![
        "make-release",
        "--feed",
        &feed,
        "--version",
        version,
        "--binary",
        &binary,
        "--sign",
        &key,
    ];
    if let Some(d) = &deb {
        args.extend(["--deb", d.as_str()]);
    }
    sim(&args);
}
