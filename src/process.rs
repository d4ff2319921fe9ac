//! The only place that spawns processes or reads the environment.
//!
//! Children of headwarden never inherit `HEADSCALE_*` variables: Headscale reads every config key
//! from them, so a stray `HEADSCALE_DATABASE_SQLITE_PATH` in an admin's shell could point a
//! staging instance at the production database.
#![allow(clippy::disallowed_methods)] // the one home of spawning and of the environment

use std::ffi::OsStr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::error::Hinted;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {}s", timeout.as_secs())]
    Timeout { program: String, timeout: Duration },
}

impl Hinted for ProcessError {}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    /// The last lines of stderr (or stdout), for error messages.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

/// What `/proc/<pid>` says about a process, for telling production's server from a look-alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    /// The effective uid (`/proc/<pid>/status`, `Uid:`'s second field).
    pub uid: u32,
    /// The effective gid (`Gid:`'s second field).
    pub gid: u32,
    /// What `/proc/<pid>/exe` links to (`<path> (deleted)` once the file was replaced).
    pub exe: std::path::PathBuf,
    /// Device and inode of the executable it runs (the deleted file's too).
    pub exe_id: (u64, u64),
    /// The start time in clock ticks since boot (`/proc/<pid>/stat` field 22): with the pid it
    /// names one process, even after the pid is reused.
    pub start_time: u64,
}

/// Why `/proc/<pid>` could not tell.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("no process {0} runs")]
    Gone(i32),
    #[error("cannot read /proc/{pid}/{what}")]
    Unreadable {
        pid: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Reads `/proc/<pid>`: account, executable and start time. A zombie counts as gone.
pub fn proc_info(pid: i32) -> Result<ProcInfo, ProcError> {
    use std::os::unix::fs::MetadataExt;
    let dir = Path::new("/proc").join(pid.to_string());
    let unreadable = |what| move |source| ProcError::Unreadable { pid, what, source };
    let stat = match std::fs::read_to_string(dir.join("stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ProcError::Gone(pid)),
        Err(e) => return Err(unreadable("stat")(e)),
    };
    // Fields after the command name (which may hold spaces and parentheses).
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    if fields.first().is_none_or(|state| *state == "Z") {
        return Err(ProcError::Gone(pid));
    }
    let start_time = fields.get(19).and_then(|t| t.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(dir.join("status")).map_err(unreadable("status"))?;
    let effective = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|id| id.parse::<u32>().ok())
            .ok_or_else(|| unreadable("status")(std::io::Error::other(format!("no {key} line"))))
    };
    let (uid, gid) = (effective("Uid:")?, effective("Gid:")?);
    let exe = std::fs::read_link(dir.join("exe")).map_err(unreadable("exe"))?;
    let meta = std::fs::metadata(dir.join("exe")).map_err(unreadable("exe"))?;
    Ok(ProcInfo {
        pid,
        uid,
        gid,
        exe,
        exe_id: (meta.dev(), meta.ino()),
        start_time,
    })
}

/// The `HEADSCALE_*` variables of process `pid` (`/proc/<pid>/environ`): the environment its
/// service manager gave it, which Headscale reads as config (viper's `AutomaticEnv`).
pub fn headscale_env(pid: i32) -> Result<std::collections::BTreeMap<String, String>, ProcError> {
    let environ =
        std::fs::read(format!("/proc/{pid}/environ")).map_err(|source| ProcError::Unreadable {
            pid,
            what: "environ",
            source,
        })?;
    Ok(environ
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            k.starts_with("HEADSCALE_")
                .then(|| (k.to_string(), v.to_string()))
        })
        .collect())
}

fn clean_command<S: AsRef<OsStr>>(program: S) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HEADSCALE_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs argv to completion with a timeout (the child is killed on timeout; what it started in the
/// background — a service script's server — is left alone).
pub async fn run(argv: &[String], timeout: Duration) -> Result<Output, ProcessError> {
    collect(argv, &[], false, timeout).await
}

/// Runs argv directly with `env` added, in its own process group; on timeout the whole group is
/// killed (a hook script's own children included).
pub async fn run_env(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<Output, ProcessError> {
    collect(argv, env, true, timeout).await
}

async fn collect(
    argv: &[String],
    env: &[(String, String)],
    own_group: bool,
    timeout: Duration,
) -> Result<Output, ProcessError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = clean_command(&program);
    cmd.args(&argv[1.min(argv.len())..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if own_group {
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pgid = child.id().map(|p| p as i32);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Ok(Err(source)) => Err(ProcessError::Spawn { program, source }),
        Err(_) => {
            if let Some(pgid) = pgid.filter(|_| own_group) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(ProcessError::Timeout { program, timeout })
        }
    }
}

/// An account a child runs as (its uid and primary gid; supplementary groups are dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// Starts a long-running child (a staging server) with output appended to `log`.
pub fn spawn_logged(program: &Path, args: &[&str], log: &Path) -> Result<Child, ProcessError> {
    spawn_logged_env(program, args, log, &[], None)
}

/// [`spawn_logged`] with `env` given to the child (and nothing else of ours named `HEADSCALE_*`),
/// run as `account` when given (root only: it needs `CAP_SETUID` and `CAP_SETGID`). The log is
/// opened by us, never through a link.
pub fn spawn_logged_env(
    program: &Path,
    args: &[&str],
    log: &Path,
    env: &[(String, String)],
    account: Option<Account>,
) -> Result<Child, ProcessError> {
    let name = program.display().to_string();
    let err = |source| ProcessError::Spawn {
        program: name.clone(),
        source,
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(log)
        .map_err(err)?;
    let errf = out.try_clone().map_err(err)?;
    let mut cmd = clean_command(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(out)
        .stderr(errf)
        .kill_on_drop(true);
    if let Some(a) = account {
        // std drops the supplementary groups before setuid when it runs as root.
        cmd.uid(a.uid).gid(a.gid);
    }
    cmd.spawn().map_err(err)
}

/// Starts this program again with `args` (the daemon's jobs), output inherited (the journal),
/// in its own process group so a Ctrl-C or a SIGTERM meant for the daemon does not cut a
/// promotion short; the daemon waits for it instead.
pub fn spawn_self(args: &[String]) -> Result<Child, ProcessError> {
    let exe = std::env::current_exe().map_err(|source| ProcessError::Spawn {
        program: "headwarden".into(),
        source,
    })?;
    let mut cmd = clean_command(&exe);
    cmd.args(args).process_group(0).kill_on_drop(false);
    cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: exe.display().to_string(),
        source,
    })
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL.
pub async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Terminates a process by pid when its command line contains `marker` (guards against pid reuse).
pub fn terminate_pid_if(pid: u32, marker: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !cmdline.contains(marker) {
        return false;
    }
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..100 {
        if nix::sys::signal::kill(pid, None).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    true
}

/// Log filter from `HEADWARDEN_LOG` (tracing `EnvFilter` syntax).
pub fn log_filter_env() -> Option<String> {
    std::env::var("HEADWARDEN_LOG").ok()
}

/// Whether stderr is a terminal (progress bars only then).
pub fn stderr_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Whether systemd's journal is our stderr (then no timestamps: journald adds its own).
pub fn stderr_is_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Path of the headscale-sim binary shipped next to this executable (for `demo`).
pub fn sibling_binary(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.exists().then_some(p)
}

/// Where `scripts/rig` keeps the real Headscale and Tailscale builds (`HEADWARDEN_RIG`, else
/// `~/.cache/headwarden-rig`): `headwarden demo --real` runs them.
pub fn rig_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("HEADWARDEN_RIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/headwarden-rig")))
}

/// Fault injection for the crash-safety tests: when `HEADWARDEN_CRASH_AT` equals `point`
/// (e.g. `switch:before`), headwarden sends itself SIGKILL — a real, uncatchable kill at a
/// journaled step. Unset in production; the variable is documented as test-only.
pub fn crash_point(point: &str) {
    if std::env::var("HEADWARDEN_CRASH_AT").is_ok_and(|v| v == point) {
        tracing::warn!(point, "HEADWARDEN_CRASH_AT: killing this process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Fault injection for tests: when `HEADWARDEN_FAIL_AT` (a comma-separated list) names this
/// step, the step fails with an injected error instead of running (e.g. a backup that cannot be
/// written). Test-only.
pub fn fail_point(step: &str) -> Option<String> {
    std::env::var("HEADWARDEN_FAIL_AT")
        .ok()
        .filter(|v| v.split(',').any(|s| s.trim() == step))
        .map(|_| format!("injected failure at {step} (HEADWARDEN_FAIL_AT)"))
}

/// A full disk or a file-size limit (`ulimit -f`) must be an error on the write that hits it,
/// not SIGXFSZ killing the process halfway through a journaled step. A tokio listener replaces
/// the default action for the rest of the process's life (no unsafe code); the signal is then
/// simply noticed, and the write fails with EFBIG. Call inside the runtime.
pub fn ignore_file_size_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    if let Err(e) = signal(SignalKind::from_raw(nix::libc::SIGXFSZ)) {
        tracing::debug!(error = %e, "cannot take over SIGXFSZ");
    }
}
