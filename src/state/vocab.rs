//! The journal's closed vocabularies, stored as the same text they always were (no schema
//! change): what a run is and how it ended.

use serde::Serialize;

use crate::settings::Job;

/// Declares a closed vocabulary stored as text: `as_str` is what the database holds (no schema
/// change), `FromSql` refuses text outside it, `Serialize` writes the same text.
macro_rules! stored_text {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let text = v.as_str()?;
                $name::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!("unknown {} {text:?}", stringify!($name)).into(),
                    )
                })
            }
        }
    };
}

stored_text! {
    /// What a journaled run is (`runs.kind`).
    RunKind {
        /// `headwarden upgrade` (and the timer's and daemon's upgrade job).
        Upgrade = "upgrade",
        /// `headwarden rollback`, or the one a hook after promote asked for.
        Rollback = "rollback",
        /// `headwarden smoke`: the checks against production (journaled for the probe's sweep).
        Smoke = "smoke",
    }
}

stored_text! {
    /// How a run ended (`runs.outcome`; open runs have none).
    RunOutcome {
        /// Production is on the target (or recovery committed the promotion).
        Upgraded = "upgraded",
        /// Staging refused a hop; production untouched.
        StagingFailed = "staging_failed",
        /// Production failed and was rolled back with its data (or a rollback run completed).
        RolledBack = "rolled_back",
        /// The rollback itself failed.
        RollbackFailed = "rollback_failed",
        /// A hook step stopped the run.
        HookFailed = "hook_failed",
        /// Staging passed; the promotion waits for an approval or a window.
        Staged = "staged",
        /// Decided before anything ran (nothing to do, blocked, on hold).
        Ok = "ok",
        /// A step failed (production unchanged), or recovery could not restart production.
        Failed = "failed",
        /// Interrupted before production was touched; recovery left it (or restarted it) unchanged.
        Aborted = "aborted",
        /// `headwarden smoke`: every check passed.
        Passed = "passed",
    }
}

stored_text! {
    /// A journaled step (`steps.name`): what is about to act, written before it acts.
    Step {
        /// A release file downloaded and verified (or an image pulled), hop by hop.
        Download = "download",
        /// A compose file's floating tag pinned to the running version.
        Pin = "pin",
        /// Production's database copied online for staging.
        StageCopy = "stage_copy",
        /// A candidate started on the staging copy.
        StageStart = "stage_start",
        /// The smoke checks on staging.
        StageSmoke = "stage_smoke",
        /// Production stopped.
        Stop = "stop",
        /// The stopped database, config and noise key backed up.
        Backup = "backup",
        /// The backup's integrity check, once production answers again.
        VerifyBackup = "verify_backup",
        /// Production pointed at the candidate (symlink, dpkg, image line).
        Switch = "switch",
        /// Production started.
        Start = "start",
        /// The smoke checks (and the reconnect bake) on production.
        Smoke = "smoke",
        /// The promotion kept.
        Commit = "commit",
        /// A failed promotion undone: data restored, previous slot, started.
        Rollback = "rollback",
        /// `headwarden rollback`: what it replaces, kept first.
        SafetyBackup = "safety_backup",
        /// `headwarden rollback`: the restore and the switch back.
        ManualRollback = "manual_rollback",
    }
}

impl Step {
    /// Whether the step acts on production (the others touch only `state_dir`): recovery
    /// settles a run from its last such step.
    pub fn acts_on_production(self) -> bool {
        matches!(
            self,
            Step::Stop
                | Step::Backup
                | Step::Switch
                | Step::Start
                | Step::Smoke
                | Step::Commit
                | Step::Rollback
                | Step::SafetyBackup
                | Step::ManualRollback
        )
    }
}

/// A journaled run's id (`runs.id`): not any number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RunId(pub i64);

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl rusqlite::types::ToSql for RunId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for RunId {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        i64::column_result(v).map(RunId)
    }
}

/// A key of the state store's `kv` table, stored as the same text it always was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// How many planned versions wait for `headwarden approve`.
    ApprovalsPending,
    /// `headwarden approve VERSION` was given for this version.
    Approved(&'a str),
    /// The last audit's open findings (JSON), for drift.
    AuditLast,
    /// The last audit's open findings by severity (JSON).
    AuditCounts,
    /// When the last audit ran (Unix time).
    AuditLastAt,
    /// When the feed first failed in a row of failures (Unix time).
    FeedFirstFail,
    /// When the feed last answered (Unix time).
    FeedLastOk,
    /// The newest stable release seen in the feed.
    FeedNewest,
    /// GitHub's rate limit left at the last poll.
    FeedRateRemaining,
    /// Every uploaded asset's GitHub digest of a release tag (JSON), to notice replaced files.
    Assets(&'a str),
    /// The digest first pulled for an image reference.
    Image(&'a str),
    /// The reason upgrades are held.
    Hold,
    /// The target staged early while the promotion waits.
    StagedEarly,
    /// Nodes per key state at the last key job (JSON).
    KeysStates,
    /// When a scheduled job last started (Unix time).
    JobLast(Job),
    /// The id of the Headscale user headwarden created in production for the connectivity probe.
    ProbeUser,
}

impl Key<'_> {
    /// The text the `kv` table holds.
    pub fn name(&self) -> String {
        match self {
            Key::ApprovalsPending => "approvals.pending".into(),
            Key::Approved(v) => format!("approved.{v}"),
            Key::AuditLast => "audit.last".into(),
            Key::AuditCounts => "audit.counts".into(),
            Key::AuditLastAt => "audit.last_at".into(),
            Key::FeedFirstFail => "feed.first_fail".into(),
            Key::FeedLastOk => "feed.last_ok".into(),
            Key::FeedNewest => "feed.newest".into(),
            Key::FeedRateRemaining => "feed.rate_remaining".into(),
            Key::Assets(tag) => format!("assets.{tag}"),
            Key::Image(reference) => format!("image.{reference}"),
            Key::Hold => "hold".into(),
            Key::StagedEarly => "staged_early".into(),
            Key::KeysStates => "keys.states".into(),
            Key::JobLast(job) => format!("job.{}.last", job.as_str()),
            Key::ProbeUser => "probe.user_id".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `kv` table keeps the text earlier versions wrote: a state store carries over.
    #[test]
    fn keys_keep_their_stored_text() {
        for (key, text) in [
            (Key::ApprovalsPending, "approvals.pending"),
            (Key::Approved("0.28.1"), "approved.0.28.1"),
            (Key::AuditLast, "audit.last"),
            (Key::AuditCounts, "audit.counts"),
            (Key::AuditLastAt, "audit.last_at"),
            (Key::FeedFirstFail, "feed.first_fail"),
            (Key::FeedLastOk, "feed.last_ok"),
            (Key::FeedNewest, "feed.newest"),
            (Key::FeedRateRemaining, "feed.rate_remaining"),
            (Key::Assets("v0.29.3"), "assets.v0.29.3"),
            (Key::Image("r/h:0.29.3"), "image.r/h:0.29.3"),
            (Key::Hold, "hold"),
            (Key::StagedEarly, "staged_early"),
            (Key::KeysStates, "keys.states"),
            (Key::JobLast(Job::Upgrade), "job.upgrade.last"),
            (Key::ProbeUser, "probe.user_id"),
        ] {
            assert_eq!(key.name(), text);
        }
        for step in [
            "download",
            "stop",
            "switch",
            "manual_rollback",
            "stage_start",
        ] {
            assert_eq!(Step::parse(step).map(Step::as_str), Some(step));
        }
    }
}
