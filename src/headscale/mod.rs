//! The only module that knows Headscale's formats: config keys, CLI JSON, HTTP endpoints.
//!
//! Version differences handled here (shared/HEADSCALE.md): `/version` exists from 0.27 (older
//! servers are asked through `headscale version`); CLI JSON is Go's encoding of the protobuf
//! structs (snake_case, numeric ids) while REST is protojson (camelCase, ids as strings) — both
//! are accepted; `/key?v=` needs a capability version ≥ 39 to return the Noise key.

pub mod api;
pub mod cli;
pub mod config;
pub mod grpc;
pub mod http;
pub mod model;

use semver::Version;

/// A user as far as data parity cares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct UserRef {
    pub id: u64,
    pub name: String,
}

/// A node as far as data parity and the reconnect bake care: identity, owner, name, and whether
/// the server sees it connected now.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct NodeRef {
    pub id: u64,
    pub machine_key: String,
    pub user: String,
    /// The owner's id (0 when the server does not say).
    pub user_id: u64,
    /// The given name (or hostname), for messages.
    pub name: String,
    pub online: bool,
}

/// The special user that owns tagged nodes from 0.28 (tags as identity: the one-time migration
/// moves every tagged node to it).
pub const TAGGED_DEVICES_USER: &str = "tagged-devices";

impl NodeRef {
    /// Whether `after` is this node after an upgrade: the same id and machine key, owned by the
    /// same user or, when 0.28's migration made it a tagged device, by `tagged-devices`.
    pub fn kept_as(&self, after: &NodeRef) -> bool {
        self.id == after.id
            && self.machine_key == after.machine_key
            && (self.user == after.user || after.user == TAGGED_DEVICES_USER)
    }
}

/// Parses "v0.29.2", "0.29.2", "headscale version v0.29.2" or `{"version": "v0.29.2"}`.
pub fn parse_version_text(text: &str) -> Option<Version> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(s) = v.get("version").and_then(|s| s.as_str()) {
            return parse_version_text(s);
        }
    }
    text.split_whitespace()
        .find_map(|w| Version::parse(w.trim_start_matches('v')).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_texts() {
        assert_eq!(
            parse_version_text("v0.29.2\n"),
            Some(Version::new(0, 29, 2))
        );
        assert_eq!(
            parse_version_text("headscale version v0.26.1"),
            Some(Version::new(0, 26, 1))
        );
        assert_eq!(
            parse_version_text(r#"{"version":"v0.28.0","commit":"x"}"#),
            Some(Version::new(0, 28, 0))
        );
        assert_eq!(parse_version_text("dev"), None);
    }
}
