//! `headwarden notify test|flush`: a test message to the chat destinations, or deliver what is queued.

use crate::exit;
use crate::notify;
use crate::state::Store;

use crate::cli::{load, print_json, Cli, Failure, NotifyCmd};

pub async fn run(cli: &Cli, cmd: &NotifyCmd) -> Result<u8, Failure> {
    let s = load(cli)?;
    match cmd {
        NotifyCmd::Test { url } => {
            let url = match url.as_deref() {
                Some("-") => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map_err(|e| Failure {
                        code: exit::USAGE,
                        hint: None,
                        error: anyhow::anyhow!("cannot read the URL from standard input: {e}"),
                    })?;
                    Some(line.trim().to_string())
                }
                other => other.map(str::to_string),
            };
            let results = notify::test(&s, url.as_deref())
                .await
                .map_err(|e| Failure {
                    code: exit::USAGE,
                    hint: Some(e.hint()),
                    error: anyhow::anyhow!("{e}"),
                })?;
            if results.is_empty() {
                println!("no notification destinations configured (notify: in the config)");
                return Ok(exit::USAGE);
            }
            let mut failed = 0;
            for (label, r) in &results {
                match r {
                    Ok(ms) => println!("ok      {label} ({ms} ms)"),
                    Err(e) => {
                        failed += 1;
                        println!("FAILED  {e}");
                    }
                }
            }
            Ok(if failed == 0 { exit::OK } else { exit::FAILURE })
        }
        NotifyCmd::Flush => {
            let store = Store::open(&s.state_dir)?;
            let r = notify::flush(&s, &store, notify::FLUSH_BUDGET).await?;
            if cli.json {
                print_json(&r)?;
            } else if r.busy {
                println!("another headwarden process is delivering notifications");
            } else {
                println!(
                    "sent {}, waiting to retry {}, failed {}, uncertain {}",
                    r.sent, r.retrying, r.failed, r.uncertain
                );
                for e in &r.errors {
                    println!("  {e}");
                }
            }
            Ok(exit::OK)
        }
    }
}
