//! The stand-in's own command line, run as a real process. Having an integration test also makes
//! `cargo test` build the `headscale-sim` executable that headwarden's suite runs (from
//! `target/<profile>/`, with the workspace's unified features).

use std::process::Command;

const SIM: &str = env!("CARGO_BIN_EXE_headscale-sim");

#[test]
fn keygen_writes_a_minisign_key_pair_and_prints_the_public_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(SIM)
        .args(["keygen", "--out"])
        .arg(dir.path())
        .output()
        .expect("run headscale-sim");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let file = std::fs::read_to_string(dir.path().join("minisign.pub")).expect("minisign.pub");
    assert!(
        file.starts_with("untrusted comment: minisign public key"),
        "{file}"
    );
    assert_eq!(file.lines().nth(1), Some(printed.as_str()));
    assert!(
        printed.starts_with("RW") && printed.len() == 56,
        "{printed}"
    );
    assert!(dir.path().join("minisign.key").is_file());
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let out = Command::new(SIM)
        .arg("no-such-command")
        .output()
        .expect("run headscale-sim");
    assert_eq!(out.status.code(), Some(2));
}
