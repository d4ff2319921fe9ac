//! Events: the families chat destinations subscribe to and how important an event is. Event
//! names are `<family>.<what>` (`upgrade.promoted`, `keys.reminder`); the outbox stores them as
//! text, and `notify[].events` may name a family or an exact event.

/// Event families a `notify[].events` entry may name (or an exact event such as `keys.reminder`).
pub const FAMILIES: &[&str] = &["release", "upgrade", "keys", "audit", "health", "test"];

/// Whether `e` names a family or an event of one (`keys`, `keys.reminder`).
pub fn known_event(e: &str) -> bool {
    FAMILIES.contains(&e.split('.').next().unwrap_or(""))
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
