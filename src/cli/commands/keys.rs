//! `headwarden keys plan|run|rotate NODE`: the key-rotation job.

use crate::exit;
use crate::headscale::api::ApiClient;
use crate::keys;
use crate::keys::plan::{Action, KeyState};
use crate::lock::RunLock;
use crate::state::Store;

use crate::cli::{load, print_json, Cli, Failure, KeysCmd};

pub async fn run(cli: &Cli, cmd: &KeysCmd) -> Result<u8, Failure> {
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    let api = ApiClient::connect(&s).await?;
    match cmd {
        KeysCmd::Plan => {
            let plans = keys::plan_now(&s, &store, &api).await?;
            if cli.json {
                return print_json(&plans).map(|()| exit::OK);
            }
            println!("Headscale {} — {} nodes", api.version, plans.len());
            println!(
                "{:>5}  {:<24} {:<14} {:<18} {:<21} next action",
                "id", "node", "user", "state", "deadline"
            );
            for p in &plans {
                let state = match &p.state {
                    KeyState::Ok => "ok".to_string(),
                    KeyState::DueSoon { stage } => format!("due-soon (stage {stage})"),
                    KeyState::InGrace => "in-grace".into(),
                    KeyState::Overdue => "overdue".into(),
                    KeyState::Rotated => "rotated".into(),
                    KeyState::Exempt { reason } => format!("exempt ({reason})"),
                    KeyState::AlreadyExpired => "already expired".into(),
                };
                let action = match &p.action {
                    Action::None => "-".to_string(),
                    Action::Remind { stage } => {
                        format!("remind (stage {stage}) with a one-time key")
                    }
                    Action::Expire => "expire node".into(),
                    Action::RecordRotation => "record rotation".into(),
                };
                let deadline = p
                    .deadline
                    .and_then(|d| time::OffsetDateTime::from_unix_timestamp(d).ok())
                    .map(|d| format!("{}-{:02}-{:02}", d.year(), d.month() as u8, d.day()))
                    .unwrap_or_else(|| "-".into());
                let flag = if p.never_expires {
                    " [never expires in Headscale]"
                } else {
                    ""
                };
                println!(
                    "{:>5}  {:<24} {:<14} {:<18} {:<21} {action}{flag}",
                    p.node_id, p.name, p.user, state, deadline
                );
            }
            Ok(exit::OK)
        }
        KeysCmd::Run => {
            let _lock = RunLock::acquire_keys(&s.state_dir, "keys run")?;
            let mut api = api;
            let quiet = cli.json;
            let say = move |line: &str| {
                if !quiet {
                    println!("{line}");
                }
            };
            let report = keys::run(&s, &store, &mut api, &say).await?;
            if cli.json {
                print_json(&report)?;
            } else {
                println!(
                    "key job: {} reminder(s), {} rotation(s), {} node(s) expired, {} stale duplicate(s) removed, {} one-time key(s) retired",
                    report.reminders.len(),
                    report.rotated.len(),
                    report.expired.len(),
                    report.duplicates_removed.len(),
                    report.keys_retired
                );
            }
            Ok(exit::OK)
        }
        KeysCmd::Rotate { node } => {
            let _lock = RunLock::acquire_keys(&s.state_dir, "keys rotate")?;
            let name = keys::rotate(&s, &store, &api, node).await?;
            println!("rotation started for {name}: a one-time key was minted and the reminder queued for its owner");
            Ok(exit::OK)
        }
    }
}
