//! Error text: an error and its sources as one line, for the journal, events and the CLI's
//! `error: … / Caused by: …` output. Lower layers keep their errors typed (`thiserror` enums);
//! only the writers of text (CLI, journal, events) flatten a chain with [`error_chain`].
//!
//! [`Hinted`] is what the command line needs of an error it prints: its exit code and a hint
//! (what to do next). Every error a command returns implements it, so a new domain error cannot
//! silently go without one: the compiler asks for the impl where the error reaches the CLI.

use crate::exit;

/// The exit code and the hint the command line gives with an error.
pub trait Hinted: std::error::Error + Send + Sync + 'static {
    /// What to do next, when there is something to say.
    fn hint(&self) -> Option<String> {
        None
    }
    /// One of the documented codes in `exit` (`FAILURE` unless said otherwise).
    fn exit_code(&self) -> u8 {
        exit::FAILURE
    }
}

/// Errors of the machine and of libraries: no hint beyond their text.
impl Hinted for std::io::Error {}
impl Hinted for serde_json::Error {}

/// `a: b: c` from an error and its sources; a source whose text the line already holds is left
/// out, so wrapped errors that repeat their cause do not print it twice.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
