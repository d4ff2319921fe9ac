//! Events: the families chat destinations subscribe to and how important an event is. Event
//! names are `<family>.<what>` (`upgrade.promoted`, `keys.reminder`); the outbox stores them as
//! text, and `notify[].events` may name a family or an exact event.

/// Event families a `notify[].events` entry may name (or an exact event such as `keys.reminder`).
pub const FAMILIES: &[&str] = &["release", "upgrade", "keys", "audit", "health", "test"];

/// Whether `e` names a family or an event of one (`keys`, `keys.reminder`).
pub fn known_event(e: &str) -> bool {
    FAMILIES.contains(&e.split('.').next().unwrap_or(""))
}

/// Every event headwarden queues: the closed list chat destinations can be sent. Its name
/// (`as_str`) is what the outbox stores and what `notify[].events` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Release,
    ReleaseArtifactReplaced,
    UpgradeStarted,
    UpgradeSucceeded,
    UpgradeStagingFailed,
    UpgradeStaged,
    UpgradeRolledBack,
    UpgradeRollbackFailed,
    UpgradeHookFailed,
    UpgradeFailed,
    UpgradeBlocked,
    UpgradeAwaitingApproval,
    UpgradePromoted,
    UpgradeRecovered,
    UpgradeBackupUnverified,
    /// Too few nodes came back after a promotion, and `smoke.reconnect.on_failure: alert` kept it.
    UpgradeReconnectIncomplete,
    KeysReminder,
    KeysRotationRequested,
    KeysRotated,
    KeysExpiring,
    KeysExpired,
    KeysDuplicateRemoved,
    KeysApiKeyRotated,
    KeysStepFailed,
    AuditDrift,
    HealthFeedUnreachable,
    HealthLockStuck,
    Test,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Release => "release",
            Event::ReleaseArtifactReplaced => "release.artifact_replaced",
            Event::UpgradeStarted => "upgrade.started",
            Event::UpgradeSucceeded => "upgrade.succeeded",
            Event::UpgradeStagingFailed => "upgrade.staging_failed",
            Event::UpgradeStaged => "upgrade.staged",
            Event::UpgradeRolledBack => "upgrade.rolled_back",
            Event::UpgradeRollbackFailed => "upgrade.rollback_failed",
            Event::UpgradeHookFailed => "upgrade.hook_failed",
            Event::UpgradeFailed => "upgrade.failed",
            Event::UpgradeBlocked => "upgrade.blocked",
            Event::UpgradeAwaitingApproval => "upgrade.awaiting_approval",
            Event::UpgradePromoted => "upgrade.promoted",
            Event::UpgradeRecovered => "upgrade.recovered",
            Event::UpgradeBackupUnverified => "upgrade.backup_unverified",
            Event::UpgradeReconnectIncomplete => "upgrade.reconnect_incomplete",
            Event::KeysReminder => "keys.reminder",
            Event::KeysRotationRequested => "keys.rotation_requested",
            Event::KeysRotated => "keys.rotated",
            Event::KeysExpiring => "keys.expiring",
            Event::KeysExpired => "keys.expired",
            Event::KeysDuplicateRemoved => "keys.duplicate_removed",
            Event::KeysApiKeyRotated => "keys.api_key_rotated",
            Event::KeysStepFailed => "keys.step_failed",
            Event::AuditDrift => "audit.drift",
            Event::HealthFeedUnreachable => "health.feed_unreachable",
            Event::HealthLockStuck => "health.lock_stuck",
            Event::Test => "test",
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How important an event is; `notify[].min_severity` filters on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Severity {
    #[default]
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert!(known_event("upgrade.rolled_back") && known_event("keys") && !known_event("nope"));
    }
}
