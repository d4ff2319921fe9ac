//! Error text: an error and its sources as one line, for the journal, events and the CLI's
//! `error: … / Caused by: …` output. Lower layers keep their errors typed (`thiserror` enums);
//! only the writers of text (CLI, journal, events) flatten a chain with [`error_chain`].

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
