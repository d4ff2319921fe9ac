//! What drives root's actions, and who could change it: headwarden's config, its playbooks and
//! the hooks they run, the staging overlay, Headscale's config (whose data paths root backs up
//! and restores), a compose file (root runs `compose up` on it) and the directory of
//! `headscale.binary` (root runs `<binary> version`). Any of these that an account other than
//! root or headwarden's own may write — the file, or the directory holding it — makes that
//! account root; `config check` says so (security review N8).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::settings::{Install, LoadedPlaybook, Settings};

/// Why each input another account may change is a way to root.
pub fn foreign_writable(s: &Settings) -> Vec<String> {
    let me = nix::unistd::geteuid().as_raw();
    let mut out = Vec::new();
    for (what, path) in inputs(s) {
        for p in [Some(path.clone()), path.parent().map(Path::to_path_buf)]
            .into_iter()
            .flatten()
        {
            if let Some(why) = writable_by_others(&p, me) {
                out.push(format!(
                    "{what} {}: {} {why}, and headwarden runs as root on it",
                    path.display(),
                    if p == path {
                        "the file is"
                    } else {
                        "its directory is"
                    }
                ));
                break;
            }
        }
    }
    out
}

/// Every input, named.
fn inputs(s: &Settings) -> Vec<(&'static str, PathBuf)> {
    let mut out = vec![
        ("headwarden's config", s.source.clone()),
        ("the Headscale config", s.headscale.config.clone()),
    ];
    let playbooks: [&LoadedPlaybook; 3] = [
        &s.playbooks.upgrade,
        &s.playbooks.rotate_keys,
        &s.audit.playbook,
    ];
    for pb in playbooks {
        if let Some(p) = &pb.path {
            out.push(("the playbook", p.clone()));
        }
        for step in &pb.playbook.steps {
            if let Some(program) = step.argv.as_ref().and_then(|a| a.first()) {
                out.push(("the hook", PathBuf::from(program)));
            }
        }
    }
    if let Some(o) = &s.staging.overlay {
        out.push(("the staging overlay", o.clone()));
    }
    match &s.headscale.install {
        Install::Compose(c) => out.push(("the compose file", c.file.clone())),
        Install::Binary | Install::Deb(_) | Install::External(_) => {
            out.push(("headscale.binary", s.headscale.binary.clone()))
        }
    }
    out
}

/// Owned by someone else than root or `me`, or writable by group or others (a sticky
/// directory, like /tmp, lets nobody replace another's file and does not count).
fn writable_by_others(path: &Path, me: u32) -> Option<String> {
    let m = std::fs::symlink_metadata(path).ok()?;
    if m.uid() != 0 && m.uid() != me {
        return Some(format!("owned by uid {}", m.uid()));
    }
    let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
    if !m.file_type().is_symlink() && !sticky_dir && m.mode() & 0o022 != 0 {
        return Some(format!(
            "writable by others (mode {:04o})",
            m.mode() & 0o7777
        ));
    }
    None
}
