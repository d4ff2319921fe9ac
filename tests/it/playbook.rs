//! Edited playbooks executed for real: hook steps (argv and HTTP) at chosen points with their
//! timeouts and failure policies, a dropped optional step, and unsafe edits refused at load.

use std::time::{Duration, Instant};

use crate::support::{code, text, Sandbox};

/// The default upgrade playbook with `extra` steps spliced in before `before` (a step name).
fn upgrade_playbook(before: &str, extra: &str) -> String {
    let default = std::fs::read_to_string(format!(
        "{}/playbooks/upgrade.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("default playbook");
    let plain: String = default
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim_end())
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    if before.is_empty() {
        return format!("{plain}{extra}");
    }
    let at = format!("  - step: {before}\n");
    assert!(plain.contains(&at), "{before} in {plain}");
    plain.replacen(&at, &format!("{extra}{at}"), 1)
}

fn use_playbook(sb: &mut Sandbox, key: &str, text: &str) {
    let file = sb.path(&format!("{key}.yaml"));
    std::fs::write(&file, text).expect("playbook");
    sb.extra_top = format!("{}playbooks:\n  {key}: {}\n", sb.extra_top, file.display());
    sb.write_config();
}

fn script(sb: &Sandbox, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = sb.path(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.display().to_string()
}

#[test]
fn hooks_run_in_place_with_context_and_a_failing_post_promote_check_rolls_back() {
    let mut sb = Sandbox::new("0.27.1");
    let env_file = sb.path("hook-env");
    let pre = script(
        &sb,
        "pre.sh",
        &format!("env | grep ^HEADWARDEN_ | sort > {}", env_file.display()),
    );
    let post = script(
        &sb,
        "post.sh",
        "echo 'probe: tailnet unreachable' >&2; exit 7",
    );
    let extra_pre = format!("  - step: hook\n    argv: [{pre}]\n    timeout: 10s\n");
    let pb = upgrade_playbook("promote", &extra_pre);
    let pb = upgrade_playbook_append(
        &pb,
        &format!(
            "  - step: hook\n    argv: [{post}]\n    timeout: 10s\n    on_failure: rollback\n"
        ),
    );
    use_playbook(&mut sb, "upgrade", &pb);
    sb.release("0.28.0", "none");
    let before = sb.dump();
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 3, "rolled back: {}", text(&out));
    assert!(text(&out).contains("tailnet unreachable"), "{}", text(&out));
    // The pre-promote hook saw production still on the old version and the staged plan.
    let env = std::fs::read_to_string(&env_file).expect("hook ran");
    assert!(env.contains("HEADWARDEN_FROM=0.27.1"), "{env}");
    assert!(env.contains("HEADWARDEN_TO=0.28.0"), "{env}");
    assert!(env.contains("HEADWARDEN_PRODUCTION=0.27.1"), "{env}");
    assert!(env.contains("HEADWARDEN_STAGED=true"), "{env}");
    assert!(
        !env.contains("KEY="),
        "no secrets in a hook's environment: {env}"
    );
    // The post-promote hook failed: production is back on the old binary with its data.
    assert_eq!(sb.prod_version(), "v0.27.1");
    assert_eq!(sb.dump(), before);
    let events: Vec<String> = sb.outbox().into_iter().map(|(e, _)| e).collect();
    assert!(
        events.contains(&"upgrade.promoted".to_string()),
        "{events:?}"
    );
    assert!(
        events.contains(&"upgrade.hook_failed".to_string()),
        "{events:?}"
    );
    assert_eq!(sb.status_json()["production"]["health"], "healthy");
}

fn upgrade_playbook_append(pb: &str, extra: &str) -> String {
    format!("{pb}{extra}")
}

#[test]
fn a_hook_that_hangs_is_killed_at_its_timeout_and_stops_the_upgrade_before_production() {
    let mut sb = Sandbox::new("0.27.1");
    let pid_file = sb.path("hook-child.pid");
    // The hook's own child would outlive a plain kill; the whole process group must go.
    let hang = script(
        &sb,
        "hang.sh",
        &format!(
            "sh -c 'echo $$ > {}; exec sleep 60' &\nsleep 60",
            pid_file.display()
        ),
    );
    let pb = upgrade_playbook(
        "stage",
        &format!("  - step: hook\n    argv: [{hang}]\n    timeout: 1s\n"),
    );
    use_playbook(&mut sb, "upgrade", &pb);
    sb.release("0.28.0", "none");
    let t = Instant::now();
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(
        text(&out).contains("did not finish within 1s"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.27.1");
    let child: i32 = std::fs::read_to_string(&pid_file)
        .expect("the hook's child started")
        .trim()
        .parse()
        .expect("pid");
    // SIGKILL to the group was sent before headwarden returned; the orphan is reaped by init.
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::support::alive(child) {
        assert!(
            Instant::now() < deadline,
            "the hook's child survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let history = sb.hw(&["history", "--json"]);
    assert!(text(&history).contains("hook_failed"), "{}", text(&history));
}

#[test]
fn a_failing_hook_with_continue_and_an_http_hook_do_not_stop_the_upgrade() {
    let mut sb = Sandbox::new("0.27.1");
    let sink = crate::notify::ChatSink::start(&sb);
    let extra = format!(
        "  - step: hook\n    argv: [/bin/false]\n    timeout: 5s\n    on_failure: continue\n  - step: hook\n    url: http://{}/webhook/after-upgrade\n    timeout: 5s\n",
        sink.addr
    );
    let pb = upgrade_playbook("", &extra);
    use_playbook(&mut sb, "upgrade", &pb);
    sb.release("0.28.0", "none");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.28.0");
    let hook = sink
        .messages()
        .into_iter()
        .find(|m| m["path"] == "/webhook/after-upgrade")
        .expect("the HTTP hook was called");
    let body = &hook["body"];
    assert_eq!(body["production"], "0.28.0");
    assert_eq!(body["promoted"], true);
    let failed = sb
        .outbox()
        .into_iter()
        .find(|(e, _)| e == "upgrade.hook_failed")
        .expect("the failure is reported");
    assert!(failed.1["summary"]
        .as_str()
        .expect("summary")
        .contains("went on"));
}

#[test]
fn without_the_expire_step_overdue_nodes_are_never_expired() {
    let mut sb = Sandbox::new("0.29.2");
    sb.enable_api(false);
    sb.seed("late", 100, None, "");
    sb.extra_top = "keys:\n  enforce: expire\n".into();
    let pb = "name: rotate-keys\nsteps:\n  - step: plan\n  - step: rotate\n  - step: notify\n";
    use_playbook(&mut sb, "rotate_keys", pb);
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        !text(&out).contains("expired in Headscale"),
        "{}",
        text(&out)
    );
    let events: Vec<String> = sb.outbox().into_iter().map(|(e, _)| e).collect();
    assert!(!events.contains(&"keys.expired".to_string()), "{events:?}");
    assert!(
        text(&out).contains("not expired: the playbook has no expire step"),
        "{}",
        text(&out)
    );
    let plan = sb.hw(&["keys", "plan", "--json"]);
    assert!(text(&plan).contains("\"overdue\""), "{}", text(&plan));
}

/// Security review N8: what root runs or reads must not be another account's to change. A hook
/// owned by another account, and a playbook in a directory others may write, are named by
/// `config check`.
#[test]
fn config_check_names_inputs_another_account_could_change() {
    let mut sb = Sandbox::new("0.27.1");
    let hook = script(&sb, "their-hook.sh", "true");
    std::os::unix::fs::chown(&hook, Some(4242), Some(4242)).expect("chown");
    let pb = upgrade_playbook(
        "promote",
        &format!("  - step: hook\n    argv: [{hook}]\n    timeout: 10s\n"),
    );
    let open = sb.path("open");
    std::fs::create_dir(&open).expect("dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let file = open.join("upgrade.yaml");
    std::fs::write(&file, pb).expect("playbook");
    sb.extra_top = format!("playbooks:\n  upgrade: {}\n", file.display());
    sb.write_config();
    let out = sb.hw(&["config", "check"]);
    let said = text(&out);
    assert_eq!(code(&out), 0, "a warning, not a refusal: {said}");
    assert!(
        said.contains(&format!("the hook {hook}: the file is owned by uid 4242")),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "the playbook {}: its directory is writable by others (mode 0777)",
            file.display()
        )),
        "{said}"
    );
    // headwarden's own config in the sandbox is root's: not named.
    assert!(!said.contains("headwarden's config"), "{said}");
}

#[test]
fn unsafe_playbooks_in_the_config_are_refused_with_the_reason() {
    let mut sb = Sandbox::new("0.27.1");
    let pb = upgrade_playbook("stage", "  - step: promote\n");
    use_playbook(&mut sb, "upgrade", &pb);
    let out = sb.hw(&["config", "check"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("playbooks.upgrade"), "{}", text(&out));
    assert!(text(&out).contains("appears twice"), "{}", text(&out));

    let mut sb = Sandbox::new("0.27.1");
    let pb = "name: rotate-keys\nsteps:\n  - step: plan\n  - step: expire\n  - step: rotate\n";
    use_playbook(&mut sb, "rotate_keys", pb);
    let out = sb.hw(&["config", "check"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("expire comes before rotate"),
        "{}",
        text(&out)
    );
}
