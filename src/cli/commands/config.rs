//! `headwarden config check`: loads and validates the config, prints what it resolved to.

use crate::deploy;
use crate::exit;
use crate::settings::Install;

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
        match &s.headscale.install {
            Install::Binary => println!(
                "  headscale: {} with {}",
                s.headscale.binary.display(),
                s.headscale.config.display()
            ),
            Install::Deb(d) => println!(
                "  headscale: Debian package {} ({}) with {}",
                d.package,
                s.headscale.binary.display(),
                s.headscale.config.display()
            ),
            Install::External(e) => println!(
                "  headscale: {} from package {} (kind external: the package manager installs it; headwarden stages and guards the restart) with {}",
                s.headscale.binary.display(),
                e.package,
                s.headscale.config.display()
            ),
            Install::Compose(c) => println!(
                "  headscale: compose service {} of {} ({}), image {}, config {} inside the container",
                c.service,
                c.file.display(),
                c.command.join(" "),
                c.image,
                s.headscale.config.display()
            ),
        }
        if s.release.token.is_some() {
            println!("  github token: set (not shown)");
        }
    }
    for w in s.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(exit::OK)
}
