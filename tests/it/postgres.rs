//! A PostgreSQL-backed Headscale (issue 26, first part): real Headscale on a private real
//! PostgreSQL cluster, its database given through the service's environment as Helm charts and
//! NixOS do. headwarden reads it as Headscale does — `status`, `config check` and `check` name the
//! database, the audit runs — and refuses the upgrade before anything is downloaded, staged or stopped, because
//! it stages, backs up and restores SQLite only so far.

use crate::real::cli_json;
use crate::support::pg::{PgCluster, DATABASE, ROLE};
use crate::support::{code, text, Sandbox};

#[test]
fn a_postgres_backed_server_is_read_and_its_upgrade_refused_before_anything_is_touched() {
    let pg = PgCluster::start();
    let env = pg.headscale_env();
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let sb = Sandbox::new_real_env("0.28.0", &env);
    sb.prod_cmd(&["users", "create", "alice"]);
    // Production really keeps its data in the cluster.
    assert_eq!(pg.sql("SELECT name FROM users ORDER BY id"), "alice");
    let users = cli_json(&sb, &["users", "list"]);
    assert_eq!(users.as_array().map(Vec::len), Some(1), "{users}");
    let database = format!(
        "database: postgres database {DATABASE} as {ROLE} at 127.0.0.1:{}",
        pg.port
    );

    let status = sb.hw(&["status"]);
    assert_eq!(code(&status), 0, "{}", text(&status));
    assert!(text(&status).contains(&database), "{}", text(&status));
    assert!(text(&status).contains("healthy"), "{}", text(&status));

    // The audit reads the same production (its version through the CLI, the config's checks).
    let audit = sb.hw(&["audit"]);
    assert_eq!(code(&audit), 0, "{}", text(&audit));
    assert!(
        text(&audit).contains("security audit (Headscale 0.28.0)")
            && text(&audit).contains("config.server_url_not_https"),
        "{}",
        text(&audit)
    );
    // What headwarden may do there, asked as production's role (password through the
    // client's environment): the owner, without CREATEDB, and production's own session.
    let checked = sb.hw(&["config", "check"]);
    assert_eq!(code(&checked), 0, "{}", text(&checked));
    assert!(text(&checked).contains(&database), "{}", text(&checked));
    assert!(
        text(&checked).contains(&format!(
            "postgres: reachable as {ROLE} (owner of {DATABASE}, no CREATEDB); server "
        )) && text(&checked).contains("; pg_dump ")
            && !text(&checked).contains("older than the server"),
        "{}",
        text(&checked)
    );
    pg.sql(&format!("ALTER ROLE {ROLE} CREATEDB"));
    let granted = sb.hw(&["config", "check"]);
    assert!(
        text(&granted).contains(&format!("(owner of {DATABASE}, with CREATEDB)")),
        "{}",
        text(&granted)
    );
    assert!(
        text(&checked).contains("warning: Headscale config")
            && text(&checked).contains("stages, backs up and restores SQLite databases only"),
        "{}",
        text(&checked)
    );

    sb.release_real("0.29.3");
    let plan = sb.hw(&["check"]);
    assert_eq!(code(&plan), 0, "{}", text(&plan));
    assert!(
        text(&plan).contains("upgrade refused: ") && text(&plan).contains("plan: 0.28.0 -> 0.29.3"),
        "{}",
        text(&plan)
    );
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("it does not upgrade this server")
            && text(&out).contains("nothing was downloaded, staged or stopped"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(crate::support::pg::PASSWORD));
    // Nothing was touched: the same server, same data, nothing downloaded or journaled.
    assert_eq!(sb.served_version(), "v0.28.0");
    assert_eq!(pg.sql("SELECT name FROM users ORDER BY id"), "alice");
    assert!(!crate::support::journal_has(&sb.path("state"), "stop"));
    let downloads = std::fs::read_dir(sb.path("state/downloads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(downloads, 0, "nothing downloaded");

    // The server gone: said plainly, without the password.
    drop(pg);
    let gone = sb.hw(&["config", "check"]);
    assert_eq!(code(&gone), 0, "{}", text(&gone));
    assert!(
        text(&gone).contains(&format!(
            "warning: postgres: cannot reach database {DATABASE} as {ROLE}"
        )),
        "{}",
        text(&gone)
    );
    assert!(!text(&gone).contains(crate::support::pg::PASSWORD));
}
