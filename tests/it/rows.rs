//! What the fault rows of every install kind (compose, deb) share: the expected end state, one
//! runner over any [`Host`] that checks it, and reading headwarden's journal, outbox and
//! bad-release list after a row ran.

use std::path::Path;
use std::process::Output;

use crate::support::{dump_sqlite, sqlite_column, Host};

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum End {
    /// Still the old version, database, config (and the kind's own install files) as before.
    Old,
    /// The new version, every user kept.
    New,
}

pub struct Expect {
    pub exit: &'static [i32],
    pub end: End,
    pub bad: bool,
    pub events: &'static [&'static str],
    pub says: &'static [&'static str],
}

/// SIGKILL at a journaled point, then a fresh `upgrade` that recovers and finishes.
pub const CRASHED: Expect = Expect {
    exit: &[0],
    end: End::New,
    bad: false,
    events: &["upgrade.recovered"],
    says: &["recovered interrupted run 1"],
};

fn state_db(state_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(state_dir.join("state.db")).expect("state.db")
}

/// The events in the outbox, oldest first.
pub fn outbox(state_dir: &Path) -> Vec<String> {
    let db = state_db(state_dir);
    let mut stmt = db
        .prepare("SELECT event FROM outbox ORDER BY id")
        .expect("query");
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .expect("rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    rows
}

/// Runs the journal has not finished.
pub fn open_runs(state_dir: &Path) -> i64 {
    state_db(state_dir)
        .query_row(
            "SELECT count(*) FROM runs WHERE finished_at IS NULL",
            [],
            |r| r.get(0),
        )
        .expect("runs")
}

/// Whether `status --json` lists `version` among the bad releases.
pub fn recorded_bad(status: &Output, version: &str) -> bool {
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    v["bad_releases"].as_array().is_some_and(|a| {
        a.iter()
            .any(|r| r.to_string().contains(&format!("v{version}")))
    })
}

/// The end-state checks every row makes of headwarden's own records, and of what it said.
pub fn check_records(state_dir: &Path, status: &Output, to: &str, said: &str, e: &Expect) {
    assert_eq!(open_runs(state_dir), 0, "no run left open: {said}");
    assert_eq!(recorded_bad(status, to), e.bad, "recorded bad: {said}");
    let events = outbox(state_dir);
    for ev in e.events {
        assert!(
            events.iter().any(|x| x == ev),
            "no {ev} event in {events:?}"
        );
    }
}

/// The exit code is one `e` allows and the output says everything it should.
pub fn check_output(out: &Output, e: &Expect) -> String {
    let said = crate::support::text(out);
    let code = crate::support::code(out);
    assert!(e.exit.contains(&code), "exit {code}: {said}");
    for needle in e.says {
        assert!(
            said.to_lowercase().contains(&needle.to_lowercase()),
            "output does not say {needle:?}: {said}"
        );
    }
    said
}

/// What an "old" end is compared with, read before the row runs.
struct Before {
    dump: Vec<String>,
    noise: Vec<u8>,
    config: Vec<u8>,
    install: Vec<Vec<u8>>,
    users: Vec<String>,
}

/// Production's users (the probe's own left out).
fn users(db: &Path) -> Vec<String> {
    sqlite_column(
        db,
        "SELECT id || ' ' || name FROM users WHERE name <> 'headwarden-probe' ORDER BY id",
    )
}

fn before<H: Host>(sb: &H) -> Before {
    Before {
        dump: dump_sqlite(&sb.db()).expect("dump"),
        noise: std::fs::read(sb.noise_key()).expect("noise"),
        config: std::fs::read(sb.headscale_config()).expect("config"),
        install: sb
            .install_files()
            .iter()
            .map(|p| std::fs::read(p).expect("install file"))
            .collect(),
        users: users(&sb.db()),
    }
}

/// One row on a prepared host: production on `from`, `run`, then every end-state check — the
/// exit code and what the output says; one production server; the version it answers with; for
/// an old end the database row by row and the noise key, config and the kind's install files
/// byte for byte, for a new end every user kept; the kind's own checks; no run left open;
/// whether the release was recorded bad; the events in the outbox.
pub fn row<H: Host>(sb: &H, from: &str, to: &str, run: impl FnOnce(&H) -> Output, e: Expect) {
    let was = before(sb);
    let out = run(sb);
    let said = check_output(&out, &e);
    let want = match e.end {
        End::Old => from,
        End::New => to,
    };
    assert_eq!(sb.serving(), want, "{said}");
    sb.one_server(&said);
    match e.end {
        End::Old => {
            assert_eq!(
                dump_sqlite(&sb.db()).expect("dump"),
                was.dump,
                "database unchanged: {said}"
            );
            assert_eq!(std::fs::read(sb.noise_key()).expect("noise"), was.noise);
            assert_eq!(
                std::fs::read(sb.headscale_config()).expect("config"),
                was.config
            );
            for (path, bytes) in sb.install_files().iter().zip(&was.install) {
                assert_eq!(
                    &std::fs::read(path).expect("install file"),
                    bytes,
                    "{} unchanged: {said}",
                    path.display()
                );
            }
        }
        End::New => assert_eq!(users(&sb.db()), was.users, "every user kept: {said}"),
    }
    sb.check_kind(want, &said);
    check_records(
        &sb.state_dir(),
        &sb.hw(&["status", "--json"]),
        to,
        &said,
        &e,
    );
}
