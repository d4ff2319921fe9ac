//! `headwarden config check`: loads and validates the config, prints what it resolved to.

use crate::deploy;
use crate::deploy::postgres;
use crate::deploy::production::{self, Production};
use crate::exit;
use crate::headscale::config::Database;

use crate::cli::{load, print_json, Cli, Failure};

pub async fn check(cli: &Cli) -> Result<u8, Failure> {
    let s = load(cli)?;
    if let Some(conflict) = deploy::install_conflict(&s).await {
        eprintln!("error: {conflict}");
        return Ok(exit::USAGE);
    }
    if cli.json {
        print_json(&serde_json::json!({"ok": true, "file": s.source}))?;
    } else {
        println!("{}: ok", s.source.display());
        println!("  state_dir: {}", s.state_dir.display());
        println!(
            "  release feed: {}/{} at {}",
            s.release.owner, s.release.repo, s.release.api_url
        );
        println!("  headscale: {}", production::describe_install(&s));
        if s.release.token.is_some() {
            println!("  github token: set (not shown)");
        }
    }
    // The database as production runs it (its file and its service's environment), else as
    // the file alone says.
    let config = match Production::find(&s).await {
        Ok(p) => Some(p.config),
        Err(_) => production::config_file(&s),
    };
    if let Some(c) = &config {
        if !cli.json {
            println!("  database: {}", c.database);
        }
        if let Database::Postgres(pg) = &c.database {
            match postgres::preflight(pg).await {
                Ok(facts) if !cli.json => println!("  postgres: {}", facts.describe()),
                Ok(_) => {}
                Err(e) => eprintln!("warning: postgres: {e}"),
            }
        }
        if let Err(refused) = c.sqlite_path() {
            eprintln!("warning: {refused}");
        }
    }
    for w in s.warnings() {
        eprintln!("warning: {w}");
    }
    for gap in deploy::unit::gaps(&s).await {
        eprintln!("warning: {gap}");
    }
    for input in deploy::inputs::foreign_writable(&s) {
        eprintln!("warning: {input}");
    }
    Ok(exit::OK)
}
