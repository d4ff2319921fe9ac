//! Snapshots of the text admins read — `check`, `status`, `keys plan`, `audit`, `history` — so a
//! change to any of it shows up as a reviewed diff (`cargo insta review`, or
//! `INSTA_UPDATE=always cargo test snapshots` and read `git diff`). What differs from run to run
//! (temp paths, ports, times, durations, keys) is filtered to placeholders first; everything
//! else must match byte for byte.

use std::process::Output;

use crate::support::compose::ComposeSandbox;
use crate::support::deb::DebHost;
use crate::support::{code, Sandbox};

/// Replaces what differs between runs; `root` is the sandbox directory.
fn settings(root: &str) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_prepend_module_to_snapshot(false);
    s.set_snapshot_path("snapshots");
    s.add_filter(&regex_escape(root), "[SANDBOX]");
    s.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]");
    s.add_filter(
        r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d)?(\.\d+)?(Z| ?[+-]\d\d:?\d\d)?( [A-Z]{2,5})?",
        "[TIME]",
    );
    // Key deadlines count from each node's registration, which the fixture sets relative to now.
    s.add_filter(r"\b\d{4}-\d\d-\d\d\b", "[DATE]");
    // Right-aligned in history's columns: the padding goes with the number.
    s.add_filter(r" +\d+(\.\d+)? ?(ms|s)\b", " [DURATION]");
    s.add_filter(r"\b[0-9a-f]{64}\b", "[SHA256]");
    s.add_filter(r"(API key |api_key_no_expiry:)[0-9a-f]+", "$1[PREFIX]");
    s.add_filter(r"hskey-(auth|api)-[A-Za-z0-9_-]+", "hskey-$1-[KEY]");
    s.add_filter(r"\brun \d+\b", "run [N]");
    s.add_filter(r"#\d+\b", "#[N]");
    s.add_filter(r"\bprocess \d+ \(uid \d+,", "process [PID] (uid [UID],");
    s
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

/// stdout and stderr as an admin sees them, with the exit code.
fn shown(sb: &Sandbox, args: &[&str]) -> String {
    shown_out(args, sb.hw(args))
}

fn shown_out(args: &[&str], out: Output) -> String {
    format!(
        "$ headwarden {}\nexit: {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        code(&out),
        installed_sorted(&String::from_utf8_lossy(&out.stdout)),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `status` lists installed versions newest install first; versions installed within the same
/// second (a run's downloads, the adopted original) come in either order, so they are compared
/// sorted.
fn installed_sorted(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("installed: ") {
            Some(list) => {
                let mut v: Vec<&str> = list.split(", ").collect();
                v.sort_unstable();
                format!("installed: {}\n", v.join(", "))
            }
            None => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn the_text_admins_read() {
    let mut sb = Sandbox::new("0.26.1");
    for v in ["0.27.1", "0.28.0"] {
        sb.release(v, "none");
    }
    sb.enable_api(false);
    // One node of each key state the plan distinguishes.
    sb.seed("fresh", 10, None, "");
    sb.seed("due", 80, None, "");
    sb.seed("overdue", 95, None, "");
    sb.seed("server", 200, None, "tag:server");
    let root = sb.path("").display().to_string();
    settings(root.trim_end_matches('/')).bind(|| {
        insta::assert_snapshot!("check", shown(&sb, &["check"]));
        insta::assert_snapshot!("keys_plan", shown(&sb, &["keys", "plan"]));
        insta::assert_snapshot!("audit", shown(&sb, &["audit"]));
        insta::assert_snapshot!("status_before", shown(&sb, &["status"]));
        assert_eq!(code(&sb.hw(&["upgrade", "--yes"])), 0);
        insta::assert_snapshot!("history", shown(&sb, &["history"]));
        insta::assert_snapshot!("status_after", shown(&sb, &["status"]));
    });
}

/// `config check`, `check` and `status` of the other install kinds: a deb install (real dpkg in
/// a booted host with a real systemd), the same host as `kind: external`, and a compose service (Podman).
#[test]
fn the_text_admins_read_for_every_install_kind() {
    let deb = DebHost::new("0.28.0");
    deb.release("0.28.0");
    deb.release("0.29.3");
    let root = deb.path("").display().to_string();
    settings(root.trim_end_matches('/')).bind(|| {
        for args in [&["config", "check"][..], &["check"], &["status"]] {
            let name = format!("deb_{}", args.join("_"));
            insta::assert_snapshot!(name, shown_out(args, deb.hw(args)));
        }
    });
    let mut external = deb;
    external.kind = "external".into();
    external.write_config();
    settings(root.trim_end_matches('/')).bind(|| {
        for args in [&["config", "check"][..], &["check"], &["status"]] {
            let name = format!("external_{}", args.join("_"));
            insta::assert_snapshot!(name, shown_out(args, external.hw(args)));
        }
    });
    let compose = ComposeSandbox::new("0.28.0", "0.28.0");
    compose.release("0.29.3");
    let root = compose.path("").display().to_string();
    let mut st = settings(root.trim_end_matches('/'));
    // The compose project (`hs<unique>`) and the image repository are named after the sandbox.
    let project = compose.project_dir();
    let base = project
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches("hs").to_string())
        .unwrap_or_default();
    st.add_filter(&regex_escape(&base), "[TMP]");
    st.bind(|| {
        for args in [&["config", "check"][..], &["check"], &["status"]] {
            let name = format!("compose_{}", args.join("_"));
            insta::assert_snapshot!(name, shown_out(args, compose.hw(args)));
        }
    });
}
