//! The journal's closed vocabularies, stored as the same text they always were (no schema
//! change): what a run is and how it ended.

use serde::Serialize;

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
                f.write_str(self.as_str())
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
