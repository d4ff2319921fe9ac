//! `headwarden demo --real`: the demo's story on real Headscale with real Tailscale clients, all
//! on 127.0.0.1, from the builds `scripts/rig` keeps (versions in rig/versions).
//!
//! 1. Production is real Headscale 0.26.1 (as `nobody` when run as root), started offline; two
//!    users each join with a real `tailscaled` (userspace networking) and a pre-auth key.
//! 2. The local release feed publishes the real 0.27.1 and 0.28.0, signed like upstream's assets:
//!    upgrade 0.26.1 → 0.27.1 → 0.28.0, each hop staged on a copy of production's data; the
//!    clients still reach each other.
//! 3. The feed publishes 0.29.3, rigged to fail only as production (after migrating its
//!    database): promoted, fails, rolled back to 0.28.0 with its data.
//! 4. The feed publishes the real 0.29.2: upgraded; the clients still reach each other.
//! 5. The key job with a short `max_age`: reminders with one-time keys (masked here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::commands::demo::{demo_config, describe, sim, wait_addr};
use crate::cli::Failure;
use crate::exit;
use crate::headscale::api::ApiClient;
use crate::keys;
use crate::process;
use crate::settings;
use crate::state::Store;
use crate::upgrade::{self, UpgradeOptions};

/// The unprivileged account production runs as when the demo runs as root.
const NOBODY: &str = "65534";

fn rig_binary(rig: &Path, rel: &str) -> Result<PathBuf, Failure> {
    let p = rig.join(rel);
    if p.is_file() {
        Ok(p)
    } else {
        Err(anyhow::anyhow!(
            "{} is missing: build the rig of real binaries first with `scripts/rig`",
            p.display()
        )
        .into())
    }
}

/// The tailscale version of rig/versions as built into the rig (its only `tailscale/<v>`).
fn tailscale_dir(rig: &Path) -> Result<PathBuf, Failure> {
    std::fs::read_dir(rig.join("tailscale"))
        .ok()
        .and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.join("tailscaled").is_file())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no Tailscale client in {}: run `scripts/rig`",
                rig.display()
            )
            .into()
        })
}

struct Client {
    name: &'static str,
    socket: PathBuf,
    tailscale: PathBuf,
    daemon: tokio::process::Child,
}

impl Client {
    async fn cli(&self, args: &[&str]) -> Result<process::Output, Failure> {
        let mut argv = vec![
            self.tailscale.display().to_string(),
            format!("--socket={}", self.socket.display()),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        Ok(process::run(&argv, Duration::from_secs(90)).await?)
    }

    async fn ping(&self, peer: &Client) -> Result<String, Failure> {
        let ip = peer.cli(&["ip", "-4"]).await?.stdout.trim().to_string();
        for _ in 0..10 {
            let out = self
                .cli(&["ping", "-c", "3", "--timeout", "5s", &ip])
                .await?;
            if out.success() {
                return Ok(format!(
                    "{} reaches {} ({ip}): {}",
                    self.name,
                    peer.name,
                    out.stdout.lines().last().unwrap_or("").trim()
                ));
            }
        }
        Ok(format!("{} does NOT reach {} ({ip})", self.name, peer.name))
    }
}

async fn join(
    root: &Path,
    ts: &Path,
    name: &'static str,
    login: &str,
    key: &str,
) -> Result<Client, Failure> {
    let dir = root.join("clients").join(name);
    std::fs::create_dir_all(&dir)?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let socket = dir.join("tailscaled.sock");
    let env = [
        ("TS_NO_LOGS_NO_SUPPORT", "true".to_string()),
        ("TS_DISABLE_PORTMAPPER", "1".to_string()),
        ("TS_DEBUG_OMIT_LOCAL_ADDRS", "1".to_string()),
        ("TS_DEBUG_PRETENDPOINT", format!("127.0.0.1:{port}")),
        ("HOME", dir.display().to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let state = format!("--statedir={}", dir.join("state").display());
    let sock = format!("--socket={}", socket.display());
    let port_arg = format!("--port={port}");
    let daemon = process::spawn_logged_env(
        &ts.join("tailscaled"),
        &["--tun=userspace-networking", &state, &sock, &port_arg],
        &dir.join("tailscaled.log"),
        &env,
        None,
    )?;
    for _ in 0..1000 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = Client {
        name,
        socket,
        tailscale: ts.join("tailscale"),
        daemon,
    };
    let out = client
        .cli(&[
            "up",
            "--login-server",
            login,
            "--authkey",
            key,
            "--hostname",
            name,
            "--accept-dns=false",
            "--timeout",
            "60s",
        ])
        .await?;
    if !out.success() {
        return Err(anyhow::anyhow!("tailscale up for {name}: {}", out.tail()).into());
    }
    Ok(client)
}

/// Production's real CLI.
async fn headscale(root: &Path, args: &[&str]) -> Result<String, Failure> {
    let mut argv = vec![
        root.join("prod/bin/headscale").display().to_string(),
        "-c".into(),
        root.join("prod/etc/config.yaml").display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = process::run(&argv, Duration::from_secs(30)).await?;
    if !out.success() {
        return Err(anyhow::anyhow!("headscale {}: {}", args.join(" "), out.tail()).into());
    }
    Ok(out.stdout)
}

/// Publishes real binary `binary` as signed release `v` in the demo's feed.
async fn publish(sim_bin: &Path, root: &Path, v: &str, binary: PathBuf) -> Result<String, Failure> {
    let d = |p: &str| root.join(p).display().to_string();
    sim(
        sim_bin,
        &[
            "make-release",
            "--feed",
            &d("feed"),
            "--version",
            v,
            "--binary",
            &binary.display().to_string(),
            "--sign",
            &d("keys/minisign.key"),
        ],
    )
    .await
}

/// alice-laptop and bob-phone: a user each, a pre-auth key each, a real `tailscaled` each.
async fn join_clients(root: &Path, ts: &Path, login: &str) -> Result<Vec<Client>, Failure> {
    let mut clients = Vec::new();
    for (user, name) in [("alice", "alice-laptop"), ("bob", "bob-phone")] {
        headscale(root, &["users", "create", user]).await?;
        let users: serde_json::Value =
            serde_json::from_str(&headscale(root, &["users", "list", "-o", "json"]).await?)
                .unwrap_or_default();
        let id = users
            .as_array()
            .and_then(|a| a.iter().find(|u| u["name"] == user))
            .map(|u| u["id"].to_string())
            .unwrap_or_default();
        let key: serde_json::Value = serde_json::from_str(
            &headscale(
                root,
                &[
                    "preauthkeys",
                    "create",
                    "--user",
                    &id,
                    "--expiration",
                    "1h",
                    "-o",
                    "json",
                ],
            )
            .await?,
        )
        .unwrap_or_default();
        clients.push(join(root, ts, name, login, key["key"].as_str().unwrap_or("")).await?);
    }
    Ok(clients)
}

/// The demo's steps over the running production, feed and clients.
async fn story(
    settings: &settings::Settings,
    store: &Store,
    sim_bin: &Path,
    root: &Path,
    clients: &[Client],
    hs: &dyn Fn(&str) -> Result<PathBuf, Failure>,
) -> Result<u8, Failure> {
    let say = |line: &str| println!("   {line}");
    let opts = UpgradeOptions::default();
    println!("   {}", clients[0].ping(&clients[1]).await?);
    println!("\n-- step 1: upgrade (two hops, each staged on a copy of production's real database first)");
    describe(&upgrade::upgrade(settings, store, &opts, &say).await?);
    println!("   {}", clients[0].ping(&clients[1]).await?);

    println!("\n-- step 2: v0.29.3 is published, rigged to fail only as production (after migrating its database)");
    let real = root.join("real-headscale-0.29.3");
    std::fs::copy(hs("0.29.3")?, &real)?;
    let wrapper = root.join("headscale-0.29.3-prod-fails");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" serve \"*\"{}\"*) export HEADSCALE_LISTEN_ADDR=127.0.0.1:1 ;; esac\nexec '{}' \"$@\"\n",
            root.join("prod/etc/config.yaml").display(),
            real.display()
        ),
    )?;
    publish(sim_bin, root, "0.29.3", wrapper).await?;
    describe(&upgrade::upgrade(settings, store, &opts, &say).await?);
    println!("   {}", clients[0].ping(&clients[1]).await?);

    println!("\n-- step 3: the real v0.29.2 is published");
    publish(sim_bin, root, "0.29.2", hs("0.29.2")?).await?;
    describe(&upgrade::upgrade(settings, store, &opts, &say).await?);
    println!("   {}", clients[1].ping(&clients[0]).await?);

    println!("\n-- step 4: the key job (max_age 10m for the demo: every node is due)");
    let mut api = ApiClient::connect(settings).await?;
    let report = keys::run(settings, store, &mut api, &say).await?;
    println!(
        "   {} reminder(s) with one-time keys; the keys go only to each owner's own destination (none configured here), never to logs",
        report.reminders.len()
    );
    Ok(exit::OK)
}

pub async fn run(keep: bool) -> Result<u8, Failure> {
    let sim_bin = process::sibling_binary("headscale-sim").ok_or_else(|| {
        anyhow::anyhow!("headscale-sim not found next to headwarden; build both with `cargo build`")
    })?;
    let rig = process::rig_dir()
        .ok_or_else(|| anyhow::anyhow!("set HEADWARDEN_RIG or HOME to find the rig"))?;
    let hs = |v: &str| rig_binary(&rig, &format!("headscale/{v}/headscale"));
    let ts = tailscale_dir(&rig)?;
    let tmp = tempfile::Builder::new()
        .prefix("headwarden-demo-real-")
        .tempdir()?;
    let root = tmp.path().to_path_buf();
    println!(
        "== headwarden demo --real: real Headscale and real Tailscale clients on 127.0.0.1 =="
    );
    println!(
        "   directory: {}; binaries: {}",
        root.display(),
        rig.display()
    );
    let d = |p: &str| root.join(p).display().to_string();
    let pubkey = sim(&sim_bin, &["keygen", "--out", &d("keys")]).await?;
    publish(&sim_bin, &root, "0.27.1", hs("0.27.1")?).await?;
    publish(&sim_bin, &root, "0.28.0", hs("0.28.0")?).await?;
    let base = hs("0.26.1")?.display().to_string();
    let prod = d("prod");
    let mut testbed = vec![
        "testbed",
        "--dir",
        &prod,
        "--version",
        "0.26.1",
        "--start",
        "--binary",
        &base,
    ];
    if nix::unistd::geteuid().is_root() {
        testbed.extend(["--run-as", NOBODY]);
    }
    sim(&sim_bin, &testbed).await?;
    let listen = std::fs::read_to_string(root.join("prod/etc/config.yaml"))?
        .lines()
        .find_map(|l| l.strip_prefix("listen_addr: ").map(str::to_string))
        .unwrap_or_default();
    let login = format!("http://{listen}");
    let clients = join_clients(&root, &ts, &login).await?;
    println!("-- production: real Headscale 0.26.1{}; alice-laptop and bob-phone joined with real tailscaled clients",
        if nix::unistd::geteuid().is_root() { " running as nobody" } else { "" });

    let feed_addr_file = root.join("feed.addr");
    let mut feed = process::spawn_logged(
        &sim_bin,
        &[
            "github-feed",
            "--dir",
            &d("feed"),
            "--addr-file",
            &feed_addr_file.display().to_string(),
        ],
        &root.join("feed.log"),
    )?;
    let addr = wait_addr(&feed_addr_file).await;
    let config_path = root.join("headwarden.yaml");
    std::fs::write(
        &config_path,
        // The two clients are enough for the reconnect bake to judge each promotion.
        demo_config(&root, &addr, &pubkey)
            + "  reconnect:\n    min_nodes: 2\n    within: 60s\nkeys:\n  max_age: 10m\n  remind_before: [599s]\n",
    )?;
    let settings = settings::load(&config_path)?;
    let store = Store::open(&settings.state_dir)?;
    let result = story(&settings, &store, &sim_bin, &root, &clients, &hs).await;

    for mut c in clients {
        process::terminate(&mut c.daemon, Duration::from_secs(2)).await;
    }
    let _ = process::run(
        &[
            root.join("prod/service.sh").display().to_string(),
            "stop".into(),
        ],
        Duration::from_secs(30),
    )
    .await;
    process::terminate(&mut feed, Duration::from_secs(2)).await;
    if keep {
        let kept: PathBuf = tmp.keep();
        println!("kept {}", kept.display());
    }
    result
}
