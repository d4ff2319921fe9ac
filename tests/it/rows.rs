//! What the fault rows of every install kind (compose, deb) share: the expected end state, and
//! reading headwarden's journal, outbox and bad-release list after a row ran.

use std::path::Path;
use std::process::Output;

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
