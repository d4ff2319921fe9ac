//! Key planning at scale (harness = false): `cargo bench --bench keys`.
//!
//! A stand-in Headscale serves 100,000 nodes; headwarden lists them through the real API client
//! (REST over TCP at 0.30, gRPC over the unix socket at 0.29) and plans rotation for all of
//! them. Prints wall time for the list and for the plan, and this process's peak RSS.

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::time::Instant;

use headwarden::keys::plan::{plan, Policy};
use support::Sandbox;

fn vm_hwm_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:").map(|v| {
                    v.trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse::<f64>()
                        .unwrap_or(0.0)
                })
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("## Key planning for 100,000 nodes\n");
    println!("| transport | list nodes (API) | plan (pure) | peak RSS of the bench process |\n|---|---|---|---|");
    // gRPC first: VmHWM only grows, so each row's figure is an upper bound for that transport.
    for (version, socket) in [("0.29.2", true), ("0.30.0", false)] {
        let mut sb = Sandbox::new(version);
        let t = Instant::now();
        sb.prod_cmd(&[
            "debug",
            "seed",
            "--users",
            "1000",
            "--nodes-per-user",
            "100",
            "--age-days",
            "80",
            "--prefix",
            "bench",
        ]);
        let seeded = t.elapsed();
        sb.enable_api(socket);
        let settings = headwarden::settings::load(&sb.config_path()).expect("config");
        let (nodes, list_time) = rt.block_on(async {
            let api = headwarden::headscale::api::ApiClient::connect(&settings)
                .await
                .expect("connect");
            let t = Instant::now();
            let nodes = api.list_nodes().await.expect("list");
            (nodes, t.elapsed())
        });
        assert!(nodes.len() >= 100_000, "{}", nodes.len());
        let policy = Policy::from_settings(&settings.keys);
        let t = Instant::now();
        let plans = plan(
            &nodes,
            &policy,
            &HashMap::new(),
            &HashMap::new(),
            headwarden::state::now(),
        );
        let plan_time = t.elapsed();
        assert_eq!(plans.len(), nodes.len());
        let transport = if socket {
            format!("gRPC, unix socket ({version})")
        } else {
            format!("REST, TCP + API key ({version})")
        };
        println!(
            "| {transport} | {:.2} s | **{:.0} ms** | {:.0} MB |",
            list_time.as_secs_f64(),
            plan_time.as_secs_f64() * 1000.0,
            vm_hwm_mb()
        );
        eprintln!(
            "(seeding {} nodes took {:.1} s)",
            nodes.len(),
            seeded.as_secs_f64()
        );
    }
    println!();
}
