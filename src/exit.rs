//! Documented exit codes (README "Exit codes" lists the same table).

/// Success, or nothing to do.
pub const OK: u8 = 0;
/// A step failed; production is unchanged (or was restored and is healthy — see the message).
pub const FAILURE: u8 = 1;
/// Usage or configuration error.
pub const USAGE: u8 = 2;
/// An upgrade failed on production and was rolled back: the old version runs on the old data.
pub const ROLLED_BACK: u8 = 3;
/// Another headwarden run holds the lock.
pub const LOCKED: u8 = 4;
/// Rollback itself failed: production needs a human (the message names the backup).
pub const ROLLBACK_FAILED: u8 = 5;
