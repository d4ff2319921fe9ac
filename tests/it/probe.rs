//! The connectivity probe (`smoke.checks: connectivity`) against real Headscale from the rig:
//! headwarden registers an ephemeral node over ts2021 and reads its map, on every version; a
//! candidate that lost production's Noise key or refuses registration fails at the named step on
//! staging with production untouched; a crash inside the probe leaves no probe node after
//! recovery.

use std::path::Path;

use crate::real::{cli_json, headscale_versions, identities, preauth_key};
use crate::support::{code, text, Client, Sandbox, PROD_UID};

/// The probe's nodes production still lists (its user is kept by design).
fn probe_leftovers(sb: &Sandbox) -> Vec<String> {
    let mut out = Vec::new();
    for n in cli_json(sb, &["nodes", "list"])
        .as_array()
        .into_iter()
        .flatten()
    {
        if n["user"]["name"] == "headwarden-probe" {
            out.push(format!("node {}", n["given_name"]));
        }
    }
    out
}

/// One user with a real client: the probe must see it as its peer (no ACL policy).
fn one_client(sb: &Sandbox) -> Client {
    sb.prod_cmd(&["users", "create", "alice"]);
    let key = preauth_key(sb, "alice", &[]);
    Client::join(sb, "alice", &key)
}

#[test]
fn probe_passes_on_every_rig_version() {
    for v in headscale_versions() {
        let sb = Sandbox::new_real(&v);
        let _alice = one_client(&sb);
        let out = sb.hw(&["smoke"]);
        assert_eq!(code(&out), 0, "{v}: {}", text(&out));
        assert!(
            text(&out).contains("ok   connectivity: ts2021 handshake, registration and map: 1 DERP region(s), 1 peer(s) of 1 node(s)"),
            "{v}: {}",
            text(&out)
        );
        assert_eq!(probe_leftovers(&sb), Vec::<String>::new(), "{v}");
    }
}

/// The probe's user is the one headwarden created and recorded, never a user that merely has its
/// name (with OIDC a person can be called `headwarden-probe`): that one is refused, and its node
/// is not swept (security review N10). headwarden's own user is reused run after run.
#[test]
fn a_user_merely_named_like_the_probe_is_neither_used_nor_swept() {
    let versions = headscale_versions();
    let newest = versions.last().expect("versions");
    let sb = Sandbox::new_real(newest);
    let _alice = one_client(&sb);
    sb.prod_cmd(&["users", "create", "headwarden-probe"]);
    let key = preauth_key(&sb, "headwarden-probe", &[]);
    let _person = Client::join(&sb, "person", &key);
    let before = probe_leftovers(&sb);
    assert_eq!(before.len(), 1, "{before:?}");
    let out = sb.hw(&["smoke"]);
    assert_ne!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("is named headwarden-probe, but headwarden did not create it"),
        "{}",
        text(&out)
    );
    assert_eq!(probe_leftovers(&sb), before, "the person's node is kept");

    let sb = Sandbox::new_real(newest);
    let _alice = one_client(&sb);
    for round in 0..2 {
        let out = sb.hw(&["smoke"]);
        assert_eq!(code(&out), 0, "round {round}: {}", text(&out));
    }
    let probes: Vec<String> = cli_json(&sb, &["users", "list"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["name"] == "headwarden-probe")
        .map(|u| u["id"].to_string())
        .collect();
    assert_eq!(probes.len(), 1, "one probe user, reused: {probes:?}");
    assert_eq!(probe_leftovers(&sb), Vec::<String>::new());
}

fn assert_untouched(sb: &Sandbox, before: &[String], version: &str) {
    assert_eq!(sb.served_version(), format!("v{version}"));
    assert_eq!(identities(sb), before, "production's data");
    assert_eq!(probe_leftovers(sb), Vec::<String>::new());
}

/// A real 0.29 started with another noise key file: the probe's handshake with production's key
/// fails on staging, and production (0.28.0) is never stopped.
#[test]
fn candidate_with_another_noise_key_fails_the_probe_at_the_handshake() {
    let versions = headscale_versions();
    let newest = versions.last().expect("versions");
    let sb = Sandbox::new_real("0.28.0");
    let _alice = one_client(&sb);
    // The candidate runs on staging as production's account: it makes its key where that
    // account may write.
    let own = sb.path("other");
    std::fs::create_dir(&own).expect("dir");
    std::os::unix::fs::chown(&own, Some(PROD_UID), Some(PROD_UID)).expect("chown");
    let other = own.join("other-noise.key");
    sb.release_wrapped(
        newest,
        "with another noise key",
        &format!(
            "case \" $* \" in *\" serve \"*) export HEADSCALE_NOISE_PRIVATE_KEY_PATH='{}' ;; esac",
            other.display()
        ),
    );
    let before = identities(&sb);
    let plan = sb.hw(&["check"]);
    assert!(
        text(&plan).contains("smoke checks, on staging and on production before commit: health, version, noise_key, data_parity, connectivity (connectivity: ts2021 handshake with production's key"),
        "check names the probe: {}",
        text(&plan)
    );
    let out = sb.hw(&["upgrade", "--yes"]);
    let t = text(&out);
    assert_eq!(code(&out), 1, "{t}");
    assert!(
        t.contains("connectivity: connectivity probe failed at handshake"),
        "{t}"
    );
    assert!(t.contains("production's key is mkey:"), "{t}");
    assert!(Path::new(&other).exists(), "the candidate made its own key");
    assert!(!crate::support::journal_has(&sb.path("state"), "stop"));
    assert_untouched(&sb, &before, "0.28.0");
}

/// A real 0.29 whose one-time keys are expired as soon as they are minted (the failure mode of
/// upstream's pre-auth-key regressions): the server refuses the probe's registration, the probe
/// names that step, and nothing is left behind.
#[test]
fn candidate_that_refuses_registration_fails_the_probe_at_register() {
    let versions = headscale_versions();
    let newest = versions.last().expect("versions");
    let sb = Sandbox::new_real("0.28.0");
    let _alice = one_client(&sb);
    sb.release_wrapped(
        newest,
        "refusing the keys it mints",
        r#"case " $* " in
  *" preauthkeys create "*)
    out=$("$real" "$@") || exit $?
    id=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    "$real" "$1" "$2" preauthkeys expire --id "$id" >/dev/null || exit 9
    printf '%s\n' "$out"
    exit 0 ;;
esac"#,
    );
    let before = identities(&sb);
    // At -vv, so that no log line may carry the one-time key either.
    let out = sb.hw(&["-vv", "upgrade", "--yes"]);
    let t = text(&out);
    assert_eq!(code(&out), 1, "{t}");
    assert!(
        t.contains("connectivity probe failed at register: refused: authkey expired"),
        "{t}"
    );
    assert!(!t.contains("hskey-auth-"), "no key in the output: {t}");
    assert!(!crate::support::journal_has(&sb.path("state"), "stop"));
    assert_untouched(&sb, &before, "0.28.0");
}

/// SIGKILL after the probe registered on production during `headwarden smoke`: the node is
/// there, and the next locked command's recovery removes it and its user.
#[test]
fn sigkill_inside_the_smoke_commands_probe_then_recovery_removes_the_node() {
    let sb = Sandbox::new_real("0.29.3");
    let _alice = one_client(&sb);
    let killed = sb.hw_env(
        &["smoke"],
        &[("HEADWARDEN_CRASH_AT", "probe:production:registered")],
    );
    assert_eq!(killed.status.code(), None, "killed: {}", text(&killed));
    assert!(
        probe_leftovers(&sb).iter().any(|l| l.starts_with("node")),
        "the crash left the probe node: {:?}",
        probe_leftovers(&sb)
    );
    // Nothing to upgrade to: the run only recovers.
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("the smoke checks were interrupted"),
        "{}",
        text(&out)
    );
    assert_eq!(probe_leftovers(&sb), Vec::<String>::new());
}

/// SIGKILL inside the probe on production during an upgrade: recovery rolls back to the old
/// version with its data (the probe node goes with the data), and the next upgrade completes.
#[test]
fn sigkill_inside_the_production_probe_then_recovery_leaves_no_probe_node() {
    let versions = headscale_versions();
    let newest = versions.last().expect("versions");
    let sb = Sandbox::new_real("0.28.0");
    let alice = one_client(&sb);
    sb.release_real(newest);
    let before = identities(&sb);
    let killed = sb.hw_env(
        &["upgrade", "--yes"],
        &[("HEADWARDEN_CRASH_AT", "probe:production:registered")],
    );
    assert_eq!(killed.status.code(), None, "killed: {}", text(&killed));
    assert_eq!(sb.served_version(), format!("v{newest}"));
    assert!(
        probe_leftovers(&sb).iter().any(|l| l.starts_with("node")),
        "the crash left the probe node: {:?}",
        probe_leftovers(&sb)
    );
    let out = sb.hw(&["upgrade", "--yes"]);
    let t = text(&out);
    assert_eq!(code(&out), 0, "{t}");
    assert!(t.contains("recovered interrupted run"), "{t}");
    assert_eq!(sb.served_version(), format!("v{newest}"));
    assert_eq!(identities(&sb), before);
    assert_eq!(probe_leftovers(&sb), Vec::<String>::new());
    assert!(
        alice.ipv4().starts_with("100."),
        "the client is still registered"
    );
}
