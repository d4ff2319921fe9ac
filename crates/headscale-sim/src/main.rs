//! `headscale-sim`: a stand-in for the Headscale control server, for tests and `headwarden demo`.
//!
//! It behaves like real Headscale (0.26–0.30) in everything headwarden touches and shares no
//! code with headwarden's domain modules, so a bug in headwarden cannot hide in a shared helper.
//!
//! - `serve -c config.yaml`: reads real config keys and `HEADSCALE_*` overrides, opens SQLite,
//!   applies the `database_versions` rules and one migration per minor, serves `/health`,
//!   `/version` (0.27+), `/key?v=`, and `/api/v1/{user,node}` on TCP (Bearer) and the unix socket.
//! - `version [-o json]`, `users list -o json`, `nodes list -o json`: the CLI (over the socket).
//! - `debug seed --users N --nodes-per-user M`: acts as clients registering nodes.
//! - `github-feed`, `make-release`, `keygen`, `testbed`: test fixtures (see `fixtures.rs`).
//!
//! The release identity (`--release`) and fault mode (`--fault`) are appended to each release's
//! copy of this executable (`fixtures::launcher`), so a "release" is a real executable whose
//! `/proc/<pid>/exe` is the installed file, as for real Headscale.

mod api;
mod chat;
mod fixtures;
mod grpc;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "headscale", about = "headscale stand-in (simulation)")]
struct Cli {
    /// The Headscale release this binary pretends to be.
    #[arg(
        long,
        global = true,
        default_value = "0.26.1",
        env = "HEADSCALE_SIM_RELEASE"
    )]
    release: String,
    /// Fault mode: none, crash, never-healthy, drop-rows, noise-key, slow-start, prod-crash,
    /// prod-wreck.
    #[arg(
        long,
        global = true,
        default_value = "none",
        env = "HEADSCALE_SIM_FAULT"
    )]
    fault: String,
    /// File counting `serve` starts (used by the `prod-crash` fault).
    #[arg(long, global = true)]
    start_counter: Option<PathBuf>,
    /// Config file.
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Output format (`json`).
    #[arg(short = 'o', long = "output", global = true)]
    output: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve,
    /// Print the version.
    Version,
    /// Users.
    Users {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Nodes.
    Nodes {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// API keys: `apikeys expire --prefix P`.
    Apikeys {
        #[command(subcommand)]
        cmd: ApikeysCmd,
    },
    /// Pre-auth keys: `preauthkeys create --user ID [--reusable] [-e 1h]`.
    Preauthkeys {
        #[command(subcommand)]
        cmd: PreauthCmd,
    },
    /// The policy (database mode): `policy set -f FILE`, `policy get`.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Simulated clients.
    Debug {
        #[command(subcommand)]
        cmd: DebugCmd,
    },
    /// Test fixture: a local server speaking the GitHub releases API.
    GithubFeed(fixtures::ServerArgs),
    /// Test fixture: a local receiver answering like each chat service's API.
    ChatSink(fixtures::ServerArgs),
    /// Test fixture: build a release (launcher, checksums.txt, optional minisign signature).
    MakeRelease(fixtures::MakeRelease),
    /// Test fixture: create an unencrypted minisign key pair.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Test fixture: lay out a production instance (config, service script, launcher).
    Testbed(fixtures::Testbed),
}

#[derive(Subcommand, Debug)]
enum ListCmd {
    List,
    Create { name: String },
}

#[derive(Subcommand, Debug)]
enum ApikeysCmd {
    Expire {
        #[arg(short = 'p', long)]
        prefix: String,
    },
}

#[derive(Subcommand, Debug)]
enum PreauthCmd {
    Create {
        #[arg(short = 'u', long)]
        user: u64,
        #[arg(long)]
        reusable: bool,
        /// Valid for this long (`90m`, `1h`, `30d`); the CLI default is 1h.
        #[arg(short = 'e', long, default_value = "1h")]
        expiration: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    Get,
    Set {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum DebugCmd {
    /// Register users with nodes (as clients would).
    Seed {
        #[arg(long, default_value_t = 3)]
        users: u32,
        #[arg(long, default_value_t = 2)]
        nodes_per_user: u32,
        /// Pretend the nodes registered this many days ago.
        #[arg(long, default_value_t = 0)]
        age_days: i64,
        /// Node expiry this many days from now (negative: already expired); none by default.
        #[arg(long, allow_hyphen_values = true)]
        expiry_days: Option<i64>,
        /// Comma-separated tags for the nodes.
        #[arg(long, default_value = "")]
        tags: String,
        /// User name prefix.
        #[arg(long, default_value = "user")]
        prefix: String,
    },
    /// `tailscale up --auth-key KEY`: register (or re-key, same machine key) a node.
    Register {
        #[arg(long)]
        auth_key: String,
        #[arg(long, default_value = "node")]
        hostname: String,
        #[arg(long)]
        machine_key: Option<String>,
        /// Register as a new node even if the machine key is known (as after a user change).
        #[arg(long)]
        new_node: bool,
    },
    /// Create an API key (what `headscale apikeys create` does).
    Apikey {
        /// RFC 3339 expiration.
        #[arg(long)]
        expiration: Option<String>,
    },
}

fn main() -> ExitCode {
    // A release's identity rides on its own executable (fixtures::launcher), before the
    // arguments it was started with.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let rest = args.split_off(1.min(args.len()));
    args.extend(fixtures::launch_trailer().into_iter().map(Into::into));
    args.extend(rest);
    let cli = Cli::parse_from(args);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("FTL cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    // Do not wait for idle runtime threads: a stopped server exits at once, like upstream's.
    rt.shutdown_timeout(std::time::Duration::from_millis(50));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FTL {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let release = server::SimVersion::parse(&cli.release)?;
    match cli.command {
        Command::Serve => {
            let config = server::load_config(cli.config.as_deref())?;
            server::serve(release, &cli.fault, cli.start_counter.as_deref(), config).await
        }
        Command::Version => {
            if cli.output.as_deref() == Some("json") {
                println!("{}", server::version_json(&release));
            } else {
                println!("v{}", release.text);
            }
            Ok(())
        }
        Command::Users { cmd } => {
            let config = server::load_config(cli.config.as_deref())?;
            match cmd {
                ListCmd::List => server::cli_get(&config, "/api/v1/user", "users").await,
                ListCmd::Create { name } => {
                    server::cli_post(&config, &format!("/api/v1/user?name={name}")).await
                }
            }
        }
        Command::Nodes { cmd } => {
            let config = server::load_config(cli.config.as_deref())?;
            match cmd {
                ListCmd::List => server::cli_get(&config, "/api/v1/node", "nodes").await,
                ListCmd::Create { .. } => anyhow::bail!("use `debug seed` to register nodes"),
            }
        }
        Command::Preauthkeys {
            cmd:
                PreauthCmd::Create {
                    user,
                    reusable,
                    expiration,
                },
        } => {
            let config = server::load_config(cli.config.as_deref())?;
            let (n, unit) = expiration.split_at(expiration.len().saturating_sub(1));
            let secs = n
                .parse::<i64>()
                .map_err(|_| anyhow::anyhow!("bad expiration {expiration}"))?
                * match unit {
                    "m" => 60,
                    "h" => 3600,
                    "d" => 86400,
                    _ => anyhow::bail!("bad expiration unit in {expiration}"),
                };
            let at = chrono::Utc::now() + chrono::Duration::seconds(secs);
            server::cli_post_json(
                &config,
                "/api/v1/preauthkey",
                &serde_json::json!({"user": user.to_string(), "reusable": reusable, "expiration": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}),
            )
            .await
        }
        Command::Apikeys {
            cmd: ApikeysCmd::Expire { prefix },
        } => {
            let config = server::load_config(cli.config.as_deref())?;
            server::cli_post_json(
                &config,
                "/api/v1/apikey/expire",
                &serde_json::json!({"prefix": prefix}),
            )
            .await
        }
        Command::Policy { cmd } => {
            let config = server::load_config(cli.config.as_deref())?;
            match cmd {
                PolicyCmd::Get => server::cli_get(&config, "/api/v1/policy", "policy").await,
                PolicyCmd::Set { file } => {
                    let policy = std::fs::read_to_string(&file)?;
                    server::cli_send_json(
                        &config,
                        "PUT",
                        "/api/v1/policy",
                        &serde_json::json!({"policy": policy}),
                    )
                    .await
                }
            }
        }
        Command::Debug { cmd } => {
            let config = server::load_config(cli.config.as_deref())?;
            let path = match cmd {
                DebugCmd::Seed { users, nodes_per_user, age_days, expiry_days, tags, prefix } => format!(
                    "/api/v1/debug/seed?users={users}&nodes_per_user={nodes_per_user}&age_days={age_days}{}&tags={tags}&prefix={prefix}",
                    expiry_days.map(|d| format!("&expiry_days={d}")).unwrap_or_default()
                ),
                DebugCmd::Register { auth_key, hostname, machine_key, new_node } => format!(
                    "/api/v1/debug/register?auth_key={auth_key}&hostname={hostname}{}{}",
                    machine_key.map(|m| format!("&machine_key={m}")).unwrap_or_default(),
                    if new_node { "&new_node=true" } else { "" }
                ),
                DebugCmd::Apikey { expiration } => {
                    return server::cli_post_json(&config, "/api/v1/debug/apikey", &serde_json::json!({"expiration": expiration})).await;
                }
            };
            server::cli_post(&config, &path).await
        }
        Command::GithubFeed(args) => fixtures::github_feed(args).await,
        Command::ChatSink(args) => chat::chat_sink(args).await,
        Command::MakeRelease(args) => fixtures::make_release(args),
        Command::Keygen { out } => fixtures::keygen(&out),
        Command::Testbed(args) => fixtures::testbed(args),
    }
}
