//! Compose installs of real Headscale, run by real `podman-compose` from images of the rig's
//! real binaries, pulled from a registry on 127.0.0.1 (scripts/test starts it). Podman only:
//! Docker's `docker compose` takes the same code path but is not installed here.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::rows::{row, End, Expect, CRASHED};
use crate::support::compose::ComposeSandbox;
use crate::support::{code, sqlite_column, text, Client};

/// The users, nodes and pre-auth keys in production's database (columns every version has).
/// The connectivity probe's own user and its used one-time keys, which it keeps, are left out.
fn identities(sb: &ComposeSandbox) -> Vec<String> {
    let mut out = Vec::new();
    for (sql, what) in [
        (
            "SELECT id || ' ' || name FROM users WHERE name <> 'headwarden-probe' ORDER BY id",
            "user",
        ),
        (
            "SELECT id || ' ' || machine_key || ' ' || node_key || ' ' || hostname FROM nodes ORDER BY id",
            "node",
        ),
        (
            "SELECT id FROM pre_auth_keys WHERE user_id IS NULL OR user_id NOT IN (SELECT id FROM users WHERE name = 'headwarden-probe') ORDER BY id",
            "pre_auth_key",
        ),
    ] {
        out.extend(sqlite_column(&sb.db(), sql).into_iter().map(|r| format!("{what} {r}")));
    }
    out
}

fn migrations(sb: &ComposeSandbox) -> Vec<String> {
    sqlite_column(&sb.db(), "SELECT id FROM migrations ORDER BY id")
}

/// A user's id and a pre-auth key for it, through production's CLI in its container.
fn key_for(sb: &ComposeSandbox, user: &str) -> String {
    sb.exec(&["users", "create", user]);
    let users = sb.exec_json(&["users", "list"]);
    let id = users
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["name"] == user)
        .map(|u| u["id"].to_string().trim_matches('"').to_string())
        .expect("user id");
    let key = sb.exec_json(&[
        "preauthkeys",
        "create",
        "--user",
        &id,
        "--expiration",
        "24h",
    ]);
    key["key"].as_str().expect("key").to_string()
}

/// A compose install on the floating tag `latest` (0.26.1): `check` says it floats and what it
/// will be pinned to; one `upgrade` pins it, then takes it hop by hop (one minor per hop, newest
/// patch) to the newest 0.29.x, each hop staged in a throwaway container on a copy of the data;
/// users, nodes, keys and the noise key are kept, the real clients reach each other again, the
/// compose file's comments stay, and no staging container is left.
#[test]
fn compose_upgrade_pins_a_floating_tag_then_goes_hop_by_hop_to_the_newest_0_29() {
    let sb = ComposeSandbox::new("0.26.1", "latest");
    let login = sb.login_server();
    let alice = Client::join_at(
        &sb.client_dir("alice"),
        "alice-laptop",
        &login,
        &key_for(&sb, "alice"),
    );
    let bob = Client::join_at(
        &sb.client_dir("bob"),
        "bob-phone",
        &login,
        &key_for(&sb, "bob"),
    );
    assert!(alice.pings(&bob), "the tailnet works before the upgrade");
    for v in ["0.27.1", "0.28.0", "0.29.2", "0.29.3"] {
        sb.release(v);
        sb.push(v, v);
    }
    let check = sb.hw(&["check"]);
    assert_eq!(code(&check), 0, "{}", text(&check));
    let said = text(&check);
    assert!(said.contains("floats (tag latest)"), "{said}");
    assert!(
        said.contains(&format!("pins it to {}:0.26.1", sb.repo)),
        "{said}"
    );
    assert!(
        said.contains("0.26.1 -> 0.27.1 -> 0.28.0 -> 0.29.3"),
        "{said}"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&sb.hw(&["status", "--json"]).stdout).expect("status json");
    assert_eq!(
        status["production"]["image"]["floating"], "latest",
        "{status}"
    );
    assert_eq!(
        status["production"]["image"]["pin_to"],
        format!("{}:0.26.1", sb.repo).as_str()
    );
    assert!(status["production"]["binary"].is_null(), "{status}");
    let audit = sb.hw(&["audit"]);
    assert!(
        text(&audit).contains("version.floating_image_tag"),
        "{}",
        text(&audit)
    );

    let before = identities(&sb);
    let noise = std::fs::read(sb.data_dir().join("noise_private.key")).expect("noise");
    let out = sb.hw(&["upgrade", "--yes"]);
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains(&format!("to {}:0.26.1", sb.repo)),
        "pinned first: {said}"
    );
    for v in ["0.27.1", "0.28.0", "0.29.3"] {
        assert!(said.contains(&format!("production now on {v}")), "{said}");
    }
    assert_eq!(sb.served_version(), "v0.29.3");
    // Pinned by the digest headwarden verified (and staged), not by the tag: a tag re-pointed
    // later (another pull, an auto-updater) cannot change what production runs.
    let pulled = format!("pulled {}:0.29.3: digest ", sb.repo);
    let digest = said
        .split(&pulled)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest said for 0.29.3: {said}"));
    assert_eq!(
        sb.image_line(),
        format!(
            "    image: {}:0.29.3@{digest}  # upgraded by headwarden",
            sb.repo
        )
    );
    assert_eq!(identities(&sb), before, "every user, node and key kept");
    assert_eq!(
        std::fs::read(sb.data_dir().join("noise_private.key")).expect("noise"),
        noise
    );
    assert_eq!(sb.containers().len(), 1, "one production container");
    assert!(
        sb.staging_containers().is_empty(),
        "{:?}",
        sb.staging_containers()
    );
    assert!(alice.pings(&bob), "alice reaches bob after the upgrade");
    let status = sb.hw(&["status"]);
    assert!(
        text(&status).contains("pinned to an exact version"),
        "{}",
        text(&status)
    );
}

/// A real 0.28.0 image that migrates production's database, then fails its smoke checks on
/// production (injected at the `smoke` step): headwarden stops the service, restores the
/// database, the config and the compose file byte for byte, recreates the 0.27.1 container and
/// checks that 0.27.1 answers. The data lives on a named volume: headwarden finds it through the
/// container's mounts.
#[test]
fn compose_failure_after_the_switch_restores_data_config_and_compose_file() {
    let sb = ComposeSandbox::with_named_volume("0.27.1", "0.27.1");
    assert!(
        !sb.data_dir().starts_with(sb.project_dir()),
        "{}",
        sb.data_dir().display()
    );
    key_for(&sb, "alice");
    sb.release("0.28.0");
    sb.push("0.28.0", "0.28.0");
    let (ids, applied) = (identities(&sb), migrations(&sb));
    let compose = std::fs::read(sb.compose_file()).expect("compose");
    let config = std::fs::read(sb.project_dir().join("config/config.yaml")).expect("config");
    let out = sb.hw_env(&["upgrade", "--yes"], &[("HEADWARDEN_FAIL_AT", "smoke")]);
    let said = text(&out);
    assert_eq!(code(&out), 3, "{said}");
    assert!(said.contains("staging passed for 0.28.0"), "{said}");
    assert!(said.contains("rolled back to 0.27.1"), "{said}");
    assert_eq!(sb.served_version(), "v0.27.1");
    assert_eq!(migrations(&sb), applied, "the pre-upgrade database is back");
    assert_eq!(identities(&sb), ids);
    assert_eq!(std::fs::read(sb.compose_file()).expect("compose"), compose);
    assert_eq!(
        std::fs::read(sb.project_dir().join("config/config.yaml")).expect("config"),
        config
    );
    assert_eq!(sb.containers().len(), 1);
    assert!(sb.staging_containers().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The fault rows that apply to compose installs, each with the binary matrix's end-state checks:
// the exit code; the version answering on production's published port; exactly one production
// container, running; for "old" outcomes the database row by row, the noise key, the config and
// the compose file byte for byte; no run left open; no staging container left; whether the
// release was recorded bad; the events in the outbox; what the output says.

/// One row: production on `from`, release `to` published (its image pushed by `prepare`
/// unless the row makes its own), then `run`, then every end-state check (`rows::row`).
fn compose_row(
    from: &str,
    to: &str,
    prepare: impl FnOnce(&mut ComposeSandbox),
    run: impl FnOnce(&ComposeSandbox) -> Output,
    e: Expect,
) {
    let mut sb = ComposeSandbox::new(from, from);
    key_for(&sb, "alice");
    sb.release(to);
    prepare(&mut sb);
    row(&sb, from, to, run, e);
}

fn upgrade(sb: &ComposeSandbox) -> Output {
    sb.hw(&["upgrade", "--yes"])
}

/// Killed at `point`, then a fresh `upgrade`: recovery finishes the interrupted run, then the
/// upgrade succeeds.
fn crash_then_upgrade(sb: &ComposeSandbox, point: &str) -> Output {
    let killed = sb.hw_env(&["upgrade", "--yes"], &[("HEADWARDEN_CRASH_AT", point)]);
    assert_eq!(
        killed.status.code(),
        None,
        "{point}: killed\n{}",
        text(&killed)
    );
    upgrade(sb)
}

macro_rules! crash_rows {
    ($($name:ident: $point:literal,)*) => {$(
        /// SIGKILL at the journaled point, then a fresh `upgrade`.
        #[test]
        fn $name() {
            compose_row("0.27.1", "0.28.0", |sb| sb.push("0.28.0", "0.28.0"), |sb| crash_then_upgrade(sb, $point), CRASHED);
        }
    )*};
}

crash_rows! {
    compose_sigkill_after_the_staging_container_started: "stage_start:after",
    compose_sigkill_before_the_stop: "stop:before",
    compose_sigkill_after_the_stop: "stop:after",
    compose_sigkill_after_the_backup: "backup:after",
    compose_sigkill_before_the_image_line_changes: "switch:before",
    compose_sigkill_after_the_image_line_changed: "switch:after",
    compose_sigkill_after_the_recreate: "start:after",
    compose_sigkill_before_the_smoke_checks: "smoke:before",
    compose_sigkill_during_the_smoke_checks: "smoke:after",
    compose_sigkill_after_the_smoke_checks: "smoke:done",
}

/// Smoke fails on production, then SIGKILL inside the rollback: recovery finishes it (data,
/// config and compose file back), and the fresh run upgrades.
#[test]
fn compose_sigkill_inside_the_rollback() {
    compose_row(
        "0.27.1",
        "0.28.0",
        |sb| sb.push("0.28.0", "0.28.0"),
        |sb| {
            let env = [
                ("HEADWARDEN_FAIL_AT", "smoke"),
                ("HEADWARDEN_CRASH_AT", "rollback:before"),
            ];
            let killed = sb.hw_env(&["upgrade", "--yes"], &env);
            assert_eq!(killed.status.code(), None, "killed: {}", text(&killed));
            upgrade(sb)
        },
        Expect {
            says: &["recovered interrupted run 1: rolled_back"],
            ..CRASHED
        },
    );
}

/// A candidate image that exits at start (a real 0.27.1 binary given an unknown flag by its
/// entrypoint) is rejected on staging; production is not touched.
#[test]
fn compose_candidate_that_crashes_is_rejected_on_staging() {
    compose_row(
        "0.26.1",
        "0.27.1",
        |sb| {
            sb.push_variant(
                "0.27.1",
                "0.27.1",
                r#"ENTRYPOINT ["/ko-app/headscale", "--no-such-flag"]"#,
                &[],
            )
        },
        upgrade,
        Expect {
            exit: &[1],
            end: End::Old,
            bad: true,
            events: &["upgrade.staging_failed"],
            says: &[
                "staging REJECTED 0.27.1",
                "staging container exited",
                "production was not touched",
            ],
        },
    );
}

/// A candidate that runs but never answers on the address staging gave it (its image sets
/// `HEADSCALE_LISTEN_ADDR`, which wins over the config file) is rejected after the timeout.
#[test]
fn compose_candidate_never_healthy_is_rejected_on_staging() {
    compose_row(
        "0.26.1",
        "0.27.1",
        |sb| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("port")
                .port();
            sb.push_variant(
                "0.27.1",
                "0.27.1",
                &format!("ENV HEADSCALE_LISTEN_ADDR=127.0.0.1:{port}"),
                &[],
            );
            sb.smoke_timeout = "8s".into();
            sb.write_config();
        },
        upgrade,
        Expect {
            exit: &[1],
            end: End::Old,
            bad: true,
            events: &["upgrade.staging_failed"],
            says: &["staging REJECTED 0.27.1", "did not become healthy"],
        },
    );
}

/// A candidate that serves on an empty database of its own (its image points
/// `HEADSCALE_DATABASE_SQLITE_PATH` elsewhere): data parity on staging sees the users gone.
#[test]
fn compose_candidate_that_loses_the_data_is_rejected_on_staging() {
    compose_row(
        "0.26.1",
        "0.27.1",
        |sb| {
            sb.push_variant(
                "0.27.1",
                "0.27.1",
                "ENV HEADSCALE_DATABASE_SQLITE_PATH=/ko-app/empty.sqlite",
                &[],
            )
        },
        upgrade,
        Expect {
            exit: &[1],
            end: End::Old,
            bad: true,
            events: &["upgrade.staging_failed"],
            says: &["staging REJECTED 0.27.1", "alice"],
        },
    );
}

/// A candidate that generates a noise key of its own (its image points
/// `HEADSCALE_NOISE_PRIVATE_KEY_PATH` elsewhere): every client would fail the handshake, and
/// staging rejects it twice: the noise-key check, and the connectivity probe, whose ts2021
/// handshake with production's key the container refuses.
#[test]
fn compose_candidate_with_another_noise_key_is_rejected_on_staging() {
    compose_row(
        "0.27.1",
        "0.28.0",
        |sb| {
            sb.push_variant(
                "0.28.0",
                "0.28.0",
                "ENV HEADSCALE_NOISE_PRIVATE_KEY_PATH=/ko-app/other_noise.key",
                &[],
            )
        },
        upgrade,
        Expect {
            exit: &[1],
            end: End::Old,
            bad: true,
            events: &["upgrade.staging_failed"],
            says: &[
                "staging REJECTED 0.28.0",
                "noise",
                "connectivity probe failed at handshake",
            ],
        },
    );
}

/// A real 0.28.0 that passes staging but, run by compose (no `-c`, so its image's
/// `HEADSCALE_CONFIG` applies), migrates production's database and then listens on a port that
/// is not published: never healthy on production, rolled back with data, config and compose
/// file.
#[test]
fn compose_candidate_that_fails_only_on_production_is_rolled_back_with_its_data() {
    compose_row(
        "0.27.1",
        "0.28.0",
        |sb| {
            let prod = sb
                .headscale_config_text()
                .replace("listen_addr: 0.0.0.0:8080", "listen_addr: 0.0.0.0:8089");
            sb.push_variant(
                "0.28.0",
                "0.28.0",
                "COPY prod.yaml /ko-app/prod.yaml\nENV HEADSCALE_CONFIG=/ko-app/prod.yaml",
                &[("prod.yaml", &prod)],
            );
            sb.smoke_timeout = "10s".into();
            sb.write_config();
        },
        upgrade,
        Expect {
            exit: &[3],
            end: End::Old,
            bad: true,
            events: &["upgrade.rolled_back"],
            says: &["staging passed for 0.28.0", "rolled back to 0.27.1"],
        },
    );
}

/// The compose command fails on `stop`: nothing is changed, the old container keeps running and
/// the release is not blamed.
#[test]
fn compose_engine_command_failing_changes_nothing() {
    compose_row(
        "0.27.1",
        "0.28.0",
        |sb| {
            sb.push("0.28.0", "0.28.0");
            let dir = sb.path("bin");
            std::fs::create_dir_all(&dir).expect("bin");
            let wrapper = dir.join("podman-compose");
            std::fs::write(
                &wrapper,
                "#!/bin/sh\n# podman-compose whose `stop` fails\ncase \" $* \" in *\" stop \"*) echo 'Error: engine refused' >&2; exit 125 ;; esac\nexec /usr/bin/podman-compose \"$@\"\n",
            )
            .expect("wrapper");
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            sb.command = wrapper.display().to_string();
            sb.write_config();
        },
        upgrade,
        Expect {
            exit: &[1],
            end: End::Old,
            bad: false,
            events: &[],
            says: &[
                "stopping production failed",
                "engine refused",
                "nothing was changed",
            ],
        },
    );
}

/// The release is in the feed but its image cannot be pulled: a clear error, nothing changed,
/// the release not blamed.
#[test]
fn compose_pull_failing_changes_nothing() {
    compose_row(
        "0.27.1",
        "0.28.0",
        |_| {},
        upgrade,
        Expect {
            exit: &[1],
            end: End::Old,
            bad: false,
            events: &[],
            says: &["pulling", ":0.28.0 failed"],
        },
    );
}

/// A tag that resolves to another digest than when headwarden first pulled it (re-pushed
/// after publication): the critical `release.artifact_replaced` alarm, the release recorded
/// bad, never installed.
#[test]
fn compose_image_replaced_after_publication_is_refused() {
    compose_row(
        "0.27.1",
        "0.28.0",
        |sb| {
            sb.push("0.28.0", "0.28.0");
            // A first run pulls 0.28.0 (its digest recorded) and is killed on staging.
            let killed = sb.hw_env(
                &["upgrade", "--yes"],
                &[("HEADWARDEN_CRASH_AT", "stage_start:after")],
            );
            assert_eq!(killed.status.code(), None, "{}", text(&killed));
            // The same tag now points at another image.
            sb.push_variant("0.28.0", "0.28.0", "LABEL replaced=yes", &[]);
        },
        upgrade,
        Expect {
            exit: &[1],
            end: End::Old,
            bad: true,
            events: &["release.artifact_replaced"],
            says: &["was replaced after publication"],
        },
    );
}

/// A tag re-pointed after headwarden verified and staged it — an auto-updater's pull, another
/// admin's `podman tag` — right before the promotion (a pre-promote hook does it here): the
/// compose file names the image by the verified digest, so production still runs exactly what
/// staging tested, and the running container's image is checked after the start (security
/// review N4; by tag, production came up on the re-pointed 0.27.1 image and was rolled back).
#[test]
fn compose_tag_re_pointed_before_the_promotion_does_not_reach_production() {
    compose_row(
        "0.27.1",
        "0.28.0",
        |sb| {
            sb.push("0.28.0", "0.28.0");
            let hook = sb.path("re-point.sh");
            let env: String = [
                "CONTAINERS_CONF",
                "CONTAINERS_STORAGE_CONF",
                "CONTAINERS_REGISTRIES_CONF",
            ]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| format!("export {k}='{v}'\n")))
            .collect();
            std::fs::write(
                &hook,
                format!(
                    "#!/bin/sh\n{env}exec podman tag {repo}:0.27.1 {repo}:0.28.0\n",
                    repo = sb.repo
                ),
            )
            .expect("hook");
            std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
            let default = std::fs::read_to_string(format!(
                "{}/playbooks/upgrade.yaml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .expect("default playbook");
            let playbook = default.replacen(
                "  - step: promote",
                &format!(
                    "  - step: hook\n    argv: [{}]\n    timeout: 30s\n  - step: promote",
                    hook.display()
                ),
                1,
            );
            let file = sb.path("upgrade-playbook.yaml");
            std::fs::write(&file, playbook).expect("playbook");
            sb.extra_top = format!("playbooks:\n  upgrade: {}\n", file.display());
            sb.write_config();
        },
        upgrade,
        Expect {
            exit: &[0],
            end: End::New,
            bad: false,
            events: &["upgrade.succeeded"],
            says: &["production now on 0.28.0"],
        },
    );
}
