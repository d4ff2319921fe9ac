//! Processes as tests see them: alive or not, and those a sandbox left behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Live processes (not zombies) whose command line names something under `dir`.
pub fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|st| {
                st.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && cmd.contains(&needle) {
            out.push((pid, cmd.trim().to_string()));
        }
    }
    out
}

/// The effective uids of processes whose command line names something under `dir` and holds the
/// word `word`, watched every 20 ms from `start` until `stop` (a staging instance lives seconds).
pub struct UidWatch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<BTreeSet<u32>>,
}

impl UidWatch {
    pub fn start(dir: &Path, word: &str) -> UidWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir, word) = (stop.clone(), dir.to_path_buf(), word.to_string());
        let handle = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !flag.load(Ordering::Relaxed) {
                for (pid, cmd) in processes_under(&dir) {
                    if cmd.split_whitespace().any(|w| w == word) {
                        seen.extend(effective_uid(pid));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            seen
        });
        UidWatch { stop, handle }
    }

    pub fn stop(self) -> BTreeSet<u32> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("uid watcher")
    }
}

/// `Uid:`'s second field of `/proc/<pid>/status`.
fn effective_uid(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
