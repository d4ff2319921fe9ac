//! A backup goes back only where it came from (security review N2): each backup records the
//! path, directory, owner and mode of every file it copied, and a rollback refuses, before
//! production is stopped, when production's config now names another place or a directory was
//! swapped.

use crate::support::{code, text, Sandbox};

/// Production upgraded 0.27.1 → 0.28.0, so a rollback has a backup to restore.
fn upgraded() -> Sandbox {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.28.0");
    sb
}

/// The rollback was refused with `says`, nothing was stopped or restored, and a run that is
/// allowed again afterwards still works.
fn assert_refused(sb: &Sandbox, out: &std::process::Output, says: &str) {
    assert_eq!(code(out), 1, "{}", text(out));
    assert!(text(out).contains(says), "{}", text(out));
    assert!(text(out).contains("not restoring"), "{}", text(out));
    assert_eq!(sb.served_version(), "v0.28.0", "production kept running");
    assert_eq!(sb.prod_processes().len(), 1, "one production server");
    assert!(sb.status_json()["interrupted_runs"]
        .as_array()
        .expect("runs")
        .is_empty());
}

#[test]
fn a_rollback_refuses_to_write_the_noise_key_where_the_config_now_points() {
    let sb = upgraded();
    // The account that can steer production's config (or its environment) points the noise key
    // at a root-owned path; the backup's key bytes must not land there.
    let victim_dir = sb.path("etc-root");
    std::fs::create_dir(&victim_dir).expect("victim dir");
    let victim = victim_dir.join("ld.so.preload");
    let cfg = sb.path("prod/etc/config.yaml");
    let text_before = std::fs::read_to_string(&cfg).expect("config");
    let key_line = text_before
        .lines()
        .find(|l| l.trim_start().starts_with("private_key_path:"))
        .expect("noise key line")
        .to_string();
    let poisoned = text_before.replace(
        &key_line,
        &format!("  private_key_path: {}", victim.display()),
    );
    std::fs::write(&cfg, poisoned).expect("poison");
    let out = sb.hw(&["rollback"]);
    assert_refused(&sb, &out, "production's config now names");
    assert!(!victim.exists(), "nothing written to {}", victim.display());
}

#[test]
fn a_rollback_refuses_a_data_directory_swapped_for_a_link() {
    let sb = upgraded();
    // The data directory replaced by a link to another directory of the same name's files: the
    // path is the same, the directory is not.
    let lib = sb.path("prod/lib");
    let moved = sb.path("prod/lib-moved");
    let elsewhere = sb.path("elsewhere");
    std::fs::create_dir(&elsewhere).expect("elsewhere");
    // Owned by production's account, as its own data directory is (the identity check would
    // otherwise refuse first: the data directory names production's account for a pidfile).
    std::os::unix::fs::chown(&elsewhere, Some(65534), Some(65534)).expect("chown");
    std::fs::rename(&lib, &moved).expect("move");
    std::os::unix::fs::symlink(&elsewhere, &lib).expect("link");
    let out = sb.hw(&["rollback"]);
    // Put production's data back where it was before asserting on the running server.
    std::fs::remove_file(&lib).expect("unlink");
    std::fs::rename(&moved, &lib).expect("move back");
    assert_refused(&sb, &out, "is no longer the directory");
    assert_eq!(
        std::fs::read_dir(&elsewhere).expect("elsewhere").count(),
        0,
        "nothing written through the link"
    );
}
