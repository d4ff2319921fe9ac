//! What an admin must know from a release's notes before upgrading: breaking changes, "back up
//! first" warnings, security fixes, and the minimum Tailscale client version when stated.
//! Headscale's notes are its CHANGELOG section: `### BREAKING` headings with bullet lists, and a
//! line such as "Minimum supported Tailscale client version: v1.80.0".

use serde::Serialize;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Highlights {
    /// Bullet points under a heading that says BREAKING.
    pub breaking: Vec<String>,
    /// Lines telling the admin to back up first.
    pub backup: Vec<String>,
    /// Lines mentioning a security fix or a CVE.
    pub security: Vec<String>,
    /// "v1.80.0" when the notes state a minimum Tailscale client version.
    pub min_tailscale: Option<String>,
}

const MAX_ITEMS: usize = 8;
const MAX_CHARS: usize = 240;

fn clean(line: &str) -> String {
    let t = line
        .trim()
        .trim_start_matches(['-', '*', '+'])
        .trim()
        .replace("**", "");
    if t.chars().count() > MAX_CHARS {
        let mut s: String = t.chars().take(MAX_CHARS - 1).collect();
        s.push('…');
        s
    } else {
        t
    }
}

fn push(list: &mut Vec<String>, line: &str) {
    let c = clean(line);
    if !c.is_empty() && list.len() < MAX_ITEMS && !list.contains(&c) {
        list.push(c);
    }
}

/// Reads at most the first 64 KiB of the notes; never fails.
pub fn highlights(notes: &str) -> Highlights {
    let notes = match notes.char_indices().nth(65536) {
        Some((i, _)) => &notes[..i],
        None => notes,
    };
    let mut h = Highlights::default();
    let mut in_breaking = false;
    for line in notes.lines() {
        let trimmed = line.trim();
        let lower = trimmed.to_ascii_lowercase();
        if trimmed.starts_with('#') {
            in_breaking = lower.contains("breaking");
            continue;
        }
        let bullet = trimmed.starts_with('-') || trimmed.starts_with('*');
        if (in_breaking && bullet)
            || lower.starts_with("breaking")
            || lower.contains("breaking change")
        {
            push(&mut h.breaking, trimmed);
        }
        if lower.contains("back up")
            || lower.contains("backup of")
            || lower.contains("take a backup")
        {
            push(&mut h.backup, trimmed);
        }
        if lower.contains("security") || lower.contains("cve-") || lower.contains("vulnerab") {
            push(&mut h.security, trimmed);
        }
        if h.min_tailscale.is_none()
            && lower.contains("minimum")
            && lower.contains("tailscale")
            && lower.contains("version")
        {
            h.min_tailscale = trimmed
                .split(|c: char| c.is_whitespace() || c == '`' || c == ',' || c == '(' || c == ')')
                .map(|w| w.trim_end_matches('.'))
                .find(|w| {
                    w.strip_prefix('v')
                        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                })
                .map(str::to_string);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_headscale_changelog_shape() {
        let notes = "## 0.29.0\n\n### BREAKING\n\n- **Remove** `randomize_client_port` [#2799]\n- Tags are now owned by the tag, not the user\n\nPlease back up your database before upgrading.\n\nMinimum supported Tailscale client version: v1.80.0\n\n### Changes\n\n- Fix a security issue in the OIDC flow (CVE-2026-1234)\n- Faster map responses\n";
        let h = highlights(notes);
        assert_eq!(h.breaking.len(), 2, "{h:?}");
        assert_eq!(h.breaking[0], "Remove `randomize_client_port` [#2799]");
        assert_eq!(
            h.backup,
            vec!["Please back up your database before upgrading."]
        );
        assert_eq!(h.security.len(), 1);
        assert_eq!(h.min_tailscale.as_deref(), Some("v1.80.0"));
    }

    #[test]
    fn empty_and_huge_notes() {
        assert_eq!(highlights(""), Highlights::default());
        let big = "### BREAKING\n".to_string() + &"- x breaking thing\n".repeat(100_000);
        let h = highlights(&big);
        assert!(
            h.breaking.len() <= 2,
            "duplicates collapse (the cut may leave one partial line)"
        );
        let long = format!("### Breaking\n- {}\n", "é".repeat(10_000));
        assert!(highlights(&long).breaking[0].chars().count() <= MAX_CHARS);
    }
}
