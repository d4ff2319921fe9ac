//! `headwarden run`: each due job once, for the systemd timer.

use crate::exit;
use crate::metrics;
use crate::settings::cron;
use crate::settings::Job;
use crate::state;
use crate::state::{Key, Store};

use crate::cli::{fmt_local, load, run_command, Cli, Command, Failure, KeysCmd};

/// `headwarden run`: each due job once, in turn. A job whose lock is held is left for the next
/// invocation (not a failure); a failed job does not stop the next one. The exit code is the
/// first failing job's.
pub async fn run(cli: &Cli) -> Result<u8, Failure> {
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    let now = state::now();
    let mut result = exit::OK;
    for job in Job::ALL {
        let key = Key::JobLast(job);
        let last = store.kv_get(key)?.and_then(|v| v.parse().ok());
        let next = cron::next_due(s.schedule.of(job), s.schedule.timezone, last, now);
        let job_name = job.as_str();
        if let Some(next) = next {
            println!("{job_name}: not due; next at {}", fmt_local(next));
            continue;
        }
        println!("{job_name}: due");
        let command = match job {
            Job::Upgrade => Command::Upgrade {
                to: None,
                yes: true,
                dry_run: false,
                allow_downgrade: false,
                ignore_window: false,
            },
            Job::Keys => Command::Keys { cmd: KeysCmd::Run },
            Job::Audit => Command::Audit { fail_on: None },
        };
        let sub = Cli {
            config: cli.config.clone(),
            json: false,
            verbose: cli.verbose,
            quiet: cli.quiet,
            command,
        };
        let code = match Box::pin(run_command(&sub)).await {
            Ok(code) => code,
            Err(f) if f.code == exit::LOCKED => {
                println!("{job_name}: another run holds its lock; it runs at the next invocation");
                continue;
            }
            Err(f) => {
                eprintln!("error: {job_name}: {:#}", f.error);
                if let Some(h) = &f.hint {
                    eprintln!("hint: {h}");
                }
                f.code
            }
        };
        store.kv_set(key, &now.to_string())?;
        if result == exit::OK {
            result = code;
        }
    }
    if let Some(path) = &s.metrics.textfile {
        let text = metrics::text(&s).await?;
        metrics::write_textfile(path, &text)
            .map_err(|e| anyhow::anyhow!("cannot write metrics to {}: {e}", path.display()))?;
    }
    Ok(result)
}
