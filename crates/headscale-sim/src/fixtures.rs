//! Test fixtures: a local GitHub releases API, release building and signing, a production testbed.
//!
//! Feed directory layout (the server re-reads it on every request, so tests edit files to act):
//! ```text
//! feed/releases/<tag>/release.json   {draft, prerelease, published_at, body, pending, digests, truncate, size_override, gone}
//! feed/releases/<tag>/assets/<name>  asset bytes (launcher, checksums.txt, *.minisig)
//! feed/inject                        one fault per line, consumed by successive list requests:
//!                                    500 | 429 <retry-after-secs> | 403 <reset-in-secs> | malformed
//! feed/requests.log                  one line per request: "<path> <status> <unix ms>"
//! feed/auth.log                      per request: "<path> bearer:<sha256 prefix of the token> | other | none"
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleaseMeta {
    pub draft: bool,
    pub prerelease: bool,
    pub published_at: String,
    pub body: String,
    /// Assets are listed with state "starter" (upload not finished).
    pub pending: bool,
    /// Per-asset digest override ("" hides the digest field, as older GitHub responses do).
    pub digests: BTreeMap<String, String>,
    /// Assets served cut off half-way (the connection drops).
    pub truncate: Vec<String>,
    /// Per-asset size override in the API listing.
    pub size_override: BTreeMap<String, u64>,
    /// Assets still listed but deleted from storage (a download answers 404).
    pub gone: Vec<String>,
    /// Per-asset redirect (GitHub sends downloads to its CDN): the download answers 302 to this
    /// URL; `cdn` means this server's own `/cdn/<tag>/<name>`.
    pub redirect: BTreeMap<String, String>,
}

struct Feed {
    dir: PathBuf,
    addr: String,
    remaining: std::sync::Mutex<u64>,
}

/// Where a fixture server listens and publishes its bound address.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Where to write the bound address (atomically, once listening).
    #[arg(long)]
    pub addr_file: PathBuf,
}

/// Binds `listen` and writes the bound address to `addr_file` (temp file + rename).
pub async fn bind_and_publish(a: &ServerArgs) -> Result<(tokio::net::TcpListener, String)> {
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?.to_string();
    let tmp = a.addr_file.with_extension("tmp");
    std::fs::write(&tmp, &addr)?;
    std::fs::rename(&tmp, &a.addr_file)?;
    Ok((listener, addr))
}

/// Takes the first non-empty line of `dir/inject` (one fault per request), rewriting the rest.
pub fn pop_injection(dir: &std::path::Path) -> Option<String> {
    let path = dir.join("inject");
    let text = std::fs::read_to_string(&path).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next()?.trim().to_string();
    let rest: Vec<&str> = lines.collect();
    let _ = std::fs::write(&path, rest.join("\n"));
    Some(first)
}

pub async fn github_feed(a: ServerArgs) -> Result<()> {
    let (listener, addr) = bind_and_publish(&a).await?;
    let feed = Arc::new(Feed {
        dir: a.dir,
        addr: addr.clone(),
        remaining: std::sync::Mutex::new(5000),
    });
    let app = Router::new()
        .route("/repos/{owner}/{repo}/releases", get(list_releases))
        .route("/download/{tag}/{name}", get(download))
        .route("/cdn/{tag}/{name}", get(cdn))
        .with_state(feed);
    eprintln!("github-feed listening on {addr}");
    axum::serve(listener, app).await?;
    Ok(())
}

fn log_request(feed: &Feed, path: &str, status: u16) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(feed.dir.join("requests.log"))
    {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let _ = writeln!(f, "{path} {status} {ms}");
    }
}

fn next_injection(feed: &Feed) -> Option<String> {
    pop_injection(&feed.dir)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn list_releases(State(feed): State<Arc<Feed>>, headers: HeaderMap) -> Response {
    let path = "/releases";
    record_auth(&feed, path, &headers);
    if let Some(inj) = next_injection(&feed) {
        let mut parts = inj.split_whitespace();
        let code = parts.next().unwrap_or("");
        let arg: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(1);
        let resp = match code {
            "500" => (StatusCode::INTERNAL_SERVER_ERROR, "server error").into_response(),
            "429" => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", arg.to_string())],
                r#"{"message":"too many requests"}"#,
            )
                .into_response(),
            "403" => (
                StatusCode::FORBIDDEN,
                [
                    ("x-ratelimit-remaining", "0".to_string()),
                    ("x-ratelimit-reset", (now_secs() + arg).to_string()),
                ],
                r#"{"message":"API rate limit exceeded"}"#,
            )
                .into_response(),
            "malformed" => (StatusCode::OK, "[{\"tag_name\": ").into_response(),
            "hang" => {
                tokio::time::sleep(std::time::Duration::from_secs(arg)).await;
                (StatusCode::OK, "[]").into_response()
            }
            _ => (StatusCode::BAD_REQUEST, "bad injection").into_response(),
        };
        log_request(&feed, path, resp.status().as_u16());
        return resp;
    }
    let body = match render_releases(&feed) {
        Ok(b) => b,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let etag = format!(
        "\"{}\"",
        &hex::encode(Sha256::digest(body.as_bytes()))[..16]
    );
    let remaining = *feed.remaining.lock().expect("feed counter");
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        // 304s are free on GitHub: the remaining count does not move.
        log_request(&feed, path, 304);
        return (
            StatusCode::NOT_MODIFIED,
            [
                ("etag", etag),
                ("x-ratelimit-remaining", remaining.to_string()),
            ],
        )
            .into_response();
    }
    let remaining = {
        let mut r = feed.remaining.lock().expect("feed counter");
        *r = r.saturating_sub(1);
        *r
    };
    log_request(&feed, path, 200);
    (
        StatusCode::OK,
        [
            ("etag", etag),
            ("content-type", "application/json".to_string()),
            ("x-ratelimit-limit", "5000".to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset", (now_secs() + 3600).to_string()),
        ],
        body,
    )
        .into_response()
}

fn render_releases(feed: &Feed) -> Result<String> {
    let mut out = Vec::new();
    let dir = feed.dir.join("releases");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    entries.sort_by_key(|e| e.file_name());
    for (i, entry) in entries.iter().enumerate() {
        let tag = entry.file_name().to_string_lossy().to_string();
        let meta: ReleaseMeta =
            serde_json::from_str(&std::fs::read_to_string(entry.path().join("release.json"))?)?;
        let mut assets = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(entry.path().join("assets"))
            .map(|d| d.filter_map(|e| e.ok()).collect())
            .unwrap_or_default();
        names.sort_by_key(|e| e.file_name());
        for (j, a) in names.iter().enumerate() {
            let name = a.file_name().to_string_lossy().to_string();
            let bytes = std::fs::read(a.path())?;
            let mut asset = json!({
                "id": 1000 * (i + 1) + j,
                "name": name,
                "size": meta.size_override.get(&name).copied().unwrap_or(bytes.len() as u64),
                "state": if meta.pending { "starter" } else { "uploaded" },
                "content_type": "application/octet-stream",
                "browser_download_url": format!("http://{}/download/{}/{}", feed.addr, tag, name),
                "url": format!("http://{}/download/{}/{}", feed.addr, tag, name),
            });
            match meta.digests.get(&name) {
                Some(d) if d.is_empty() => {}
                Some(d) => asset["digest"] = json!(d),
                None => {
                    asset["digest"] =
                        json!(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))))
                }
            }
            assets.push(asset);
        }
        out.push(json!({
            "id": i + 1,
            "tag_name": tag,
            "name": tag,
            "draft": meta.draft,
            "prerelease": meta.prerelease,
            "created_at": meta.published_at,
            "published_at": if meta.draft { serde_json::Value::Null } else { json!(meta.published_at) },
            "body": meta.body,
            "html_url": format!("http://{}/releases/tag/{}", feed.addr, tag),
            "assets": assets,
        }));
    }
    // GitHub lists newest first.
    out.reverse();
    Ok(serde_json::to_string(&out)?)
}

/// The CDN a redirected download lands on: the same bytes, no redirect, no faults.
async fn cdn(
    State(feed): State<Arc<Feed>>,
    UrlPath((tag, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve_asset(feed, tag, name, headers, "/cdn").await
}

async fn download(
    State(feed): State<Arc<Feed>>,
    UrlPath((tag, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve_asset(feed, tag, name, headers, "/download").await
}

/// Records whether a request carried a token, as `bearer:<first 12 hex of its sha256>` (never
/// the token itself), `other` or `none`.
fn record_auth(feed: &Feed, path: &str, headers: &HeaderMap) {
    let auth = match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v.starts_with("Bearer ") && v.len() > 7 => {
            format!(
                "bearer:{}",
                &hex::encode(Sha256::digest(&v.as_bytes()[7..]))[..12]
            )
        }
        Some(_) => "other".into(),
        None => "none".into(),
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(feed.dir.join("auth.log"))
    {
        let _ = writeln!(f, "{path} {auth}");
    }
}

async fn serve_asset(
    feed: Arc<Feed>,
    tag: String,
    name: String,
    headers: HeaderMap,
    prefix: &str,
) -> Response {
    record_auth(&feed, &format!("{prefix}/{tag}/{name}"), &headers);
    let rel = feed.dir.join("releases").join(&tag);
    let path = rel.join("assets").join(&name);
    if name.contains('/') || tag.contains('/') || name.contains("..") || tag.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let meta: ReleaseMeta = std::fs::read_to_string(rel.join("release.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let bytes = match std::fs::read(&path) {
        Ok(b) if !meta.gone.contains(&name) => b,
        _ => {
            log_request(&feed, &format!("{prefix}/{tag}/{name}"), 404);
            return (StatusCode::NOT_FOUND, "Not Found").into_response();
        }
    };
    if let Some(to) = meta.redirect.get(&name).filter(|_| prefix == "/download") {
        let location = match to.as_str() {
            "cdn" => format!("http://{}/cdn/{tag}/{name}", feed.addr),
            other => other.to_string(),
        };
        log_request(&feed, &format!("{prefix}/{tag}/{name}"), 302);
        return (StatusCode::FOUND, [("location", location)]).into_response();
    }
    log_request(&feed, &format!("{prefix}/{tag}/{name}"), 200);
    if meta.truncate.contains(&name) {
        // Promise the full length, send half, then fail the stream: the connection drops.
        let half = bytes[..bytes.len() / 2].to_vec();
        let stream = futures_stream(half);
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-length", bytes.len().to_string())
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    (
        StatusCode::OK,
        [("content-type", "application/octet-stream")],
        bytes,
    )
        .into_response()
}

fn futures_stream(
    first: Vec<u8>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    struct S(Option<Vec<u8>>, bool);
    impl futures_core::Stream for S {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if let Some(b) = self.0.take() {
                return std::task::Poll::Ready(Some(Ok(b)));
            }
            if !self.1 {
                self.1 = true;
                return std::task::Poll::Ready(Some(Err(std::io::Error::other(
                    "simulated connection drop",
                ))));
            }
            std::task::Poll::Ready(None)
        }
    }
    S(Some(first), false)
}

#[derive(clap::Args, Debug)]
pub struct MakeRelease {
    /// Feed directory.
    #[arg(long)]
    pub feed: PathBuf,
    /// Version without the leading v (e.g. 0.27.1).
    #[arg(long)]
    pub version: String,
    #[arg(long, default_value = "none")]
    pub fault: String,
    /// Minisign secret key to sign the asset and checksums.txt with.
    #[arg(long)]
    pub sign: Option<PathBuf>,
    #[arg(long)]
    pub prerelease: bool,
    #[arg(long)]
    pub draft: bool,
    /// Days since publication.
    #[arg(long, default_value_t = 30)]
    pub age_days: u64,
    /// Release notes.
    #[arg(long, default_value = "")]
    pub body: String,
    /// Pad the binary with this many bytes of comment (a realistically large download).
    #[arg(long, default_value_t = 0)]
    pub pad: usize,
    /// Publish this real Headscale binary as the asset instead of a stand-in launcher (the
    /// real-server tests: scripts/rig builds them).
    #[arg(long, conflicts_with_all = ["fault", "pad"])]
    pub binary: Option<PathBuf>,
    /// Also publish this Debian package as `<asset>.deb`, checksummed and signed like the
    /// binary (upstream's releases carry both; scripts/debs builds them).
    #[arg(long)]
    pub deb: Option<PathBuf>,
}

pub fn host_asset_name(version: &str) -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("headscale_{version}_{}_{arch}", std::env::consts::OS)
}

/// A release of the stand-in: a copy of this executable with the release identity, the fault
/// mode and the start counter appended after the ELF image (see [`launch_trailer`]). A real
/// executable, not a script, so that `/proc/<pid>/exe` of a running "release" is the installed
/// file itself, as it is for real Headscale: headwarden checks exactly that.
pub fn launcher(version: &str, fault: &str, counter: &Path, pad: usize) -> Result<Vec<u8>> {
    let mut bytes = std::fs::read(std::env::current_exe()?)?;
    if let Some(own) = trailer_start(&bytes) {
        bytes.truncate(own);
    }
    let mut payload = format!(
        "release={version}\nfault={fault}\ncounter={}\n",
        counter.display()
    );
    if pad > 0 {
        let line = format!("# {}\n", "x".repeat(77));
        payload.push_str(&line.repeat(pad / line.len() + 1));
    }
    bytes.extend_from_slice(payload.as_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(TRAILER_MAGIC);
    Ok(bytes)
}

const TRAILER_MAGIC: &[u8; 8] = b"HSSIM01\n";

/// Where an appended launch trailer starts in `bytes`, if it has one.
fn trailer_start(bytes: &[u8]) -> Option<usize> {
    let end = bytes.len().checked_sub(16)?;
    if &bytes[end + 8..] != TRAILER_MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(bytes[end..end + 8].try_into().ok()?) as usize;
    end.checked_sub(len)
}

/// The `--release`, `--fault` and `--start-counter` arguments appended to this executable by
/// [`launcher`], read from its own file (`/proc/self/exe`); empty for the plain stand-in.
pub fn launch_trailer() -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open("/proc/self/exe") else {
        return vec![];
    };
    let mut tail = [0u8; 16];
    if f.seek(SeekFrom::End(-16)).is_err() || f.read_exact(&mut tail).is_err() {
        return vec![];
    }
    if &tail[8..] != TRAILER_MAGIC {
        return vec![];
    }
    let len = u64::from_le_bytes(tail[..8].try_into().unwrap_or_default());
    let mut payload = vec![0u8; len as usize];
    if f.seek(SeekFrom::End(-16 - len as i64)).is_err() || f.read_exact(&mut payload).is_err() {
        return vec![];
    }
    let mut args = vec![];
    for line in String::from_utf8_lossy(&payload).lines() {
        let flag = match line.split_once('=') {
            Some(("release", v)) => ("--release", v),
            Some(("fault", v)) => ("--fault", v),
            Some(("counter", v)) => ("--start-counter", v),
            _ => continue,
        };
        args.extend([flag.0.to_string(), flag.1.to_string()]);
    }
    args
}

pub fn make_release(a: MakeRelease) -> Result<()> {
    let tag = format!("v{}", a.version);
    let rel = a.feed.join("releases").join(&tag);
    let assets = rel.join("assets");
    std::fs::create_dir_all(&assets)?;
    let name = host_asset_name(&a.version);
    let counter = a.feed.join(format!("{tag}.starts"));
    start_counter(&counter)?;
    match &a.binary {
        Some(real) => {
            std::fs::copy(real, assets.join(&name))
                .with_context(|| format!("publishing {}", real.display()))?;
        }
        None => {
            let bytes = launcher(&a.version, &a.fault, &counter, a.pad)?;
            std::fs::write(assets.join(&name), bytes)?;
        }
    }
    // A second artifact so checksums.txt has more than one line, sorted by name as goreleaser does.
    let source = format!("headscale_{}.tar.gz", a.version);
    std::fs::write(assets.join(&source), format!("source of {tag}\n"))?;
    let mut published = vec![name.clone(), source];
    if let Some(deb) = &a.deb {
        let deb_name = format!("{name}.deb");
        std::fs::copy(deb, assets.join(&deb_name))
            .with_context(|| format!("publishing {}", deb.display()))?;
        published.push(deb_name);
    }
    let mut lines: Vec<(String, String)> = published
        .iter()
        .map(|n| {
            Ok((
                n.clone(),
                hex::encode(Sha256::digest(std::fs::read(assets.join(n))?)),
            ))
        })
        .collect::<Result<_>>()?;
    lines.sort();
    let checksums: String = lines.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    std::fs::write(assets.join("checksums.txt"), &checksums)?;
    if let Some(sk_path) = &a.sign {
        // The fixture stores the raw (unencrypted) secret key as hex; see `keygen`.
        let sk = minisign::SecretKey::from_bytes(&hex::decode(
            std::fs::read_to_string(sk_path)?.trim(),
        )?)?;
        let signed = published
            .iter()
            .filter(|n| !n.ends_with(".tar.gz"))
            .map(String::as_str)
            .chain(["checksums.txt"]);
        for file in signed {
            let data = std::fs::read(assets.join(file))?;
            let sig = minisign::sign(
                None,
                &sk,
                std::io::Cursor::new(data),
                Some(&format!("file:{file}")),
                None,
            )?;
            std::fs::write(assets.join(format!("{file}.minisig")), sig.to_string())?;
        }
    }
    let published = time::OffsetDateTime::now_utc() - time::Duration::days(a.age_days as i64);
    let meta = ReleaseMeta {
        draft: a.draft,
        prerelease: a.prerelease,
        published_at: published.format(&time::format_description::well_known::Rfc3339)?,
        body: a.body,
        ..Default::default()
    };
    std::fs::write(
        rel.join("release.json"),
        serde_json::to_string_pretty(&meta)?,
    )?;
    println!("{}", assets.join(&name).display());
    Ok(())
}

pub fn keygen(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let kp = minisign::KeyPair::generate_unencrypted_keypair()?;
    std::fs::write(out.join("minisign.key"), hex::encode(kp.sk.to_bytes()))?;
    std::fs::write(out.join("minisign.pub"), kp.pk.to_box()?.into_string())?;
    println!("{}", kp.pk.to_base64());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct Testbed {
    /// Directory for the production instance.
    #[arg(long)]
    pub dir: PathBuf,
    /// Version production runs.
    #[arg(long)]
    pub version: String,
    /// Start production and register users and nodes.
    #[arg(long)]
    pub start: bool,
    #[arg(long, default_value_t = 3)]
    pub users: u32,
    #[arg(long, default_value_t = 2)]
    pub nodes_per_user: u32,
    /// Configure TLS (a private CA at lib/ca.crt signs lib/tls.crt for localhost/127.0.0.1):
    /// Headscale ≤0.29 then serves remote gRPC on grpc_listen_addr.
    #[arg(long)]
    pub tls: bool,
    /// Run production as this uid (and gid), as upstream's unit runs it as `headscale`:
    /// lib/ and run/ become that account's (0700, files 0600), the config too (0640).
    #[arg(long)]
    pub run_as: Option<u32>,
    /// A real Headscale binary (scripts/rig builds them): copied to bin/headscale as an admin
    /// installs it, with a config the real server starts with offline (`derp.urls: []`, a local
    /// DERP map, update checks off, the policy in the database). `--start` starts it but seeds
    /// nothing: the tests build the tailnet through the real server's CLI and real clients.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// `KEY=VALUE` the service gives production (what systemd's `Environment=` does); repeat it.
    #[arg(long = "env")]
    pub env: Vec<String>,
}

/// A private CA and a server certificate for localhost / 127.0.0.1.
fn make_tls(dir: &Path) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?
        .signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    set_mode(&dir.join("tls.key"), 0o600)?;
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Lays out `dir` like a Headscale host: bin/headscale (launcher), etc/config.yaml,
/// lib/ (db, noise key), run/ (socket), derp.yaml, and service.sh {start|stop|status}.
pub fn testbed(a: Testbed) -> Result<()> {
    let d = std::fs::canonicalize(&a.dir).or_else(|_| {
        std::fs::create_dir_all(&a.dir)?;
        std::fs::canonicalize(&a.dir)
    })?;
    for sub in ["bin", "etc", "lib", "run"] {
        std::fs::create_dir_all(d.join(sub))?;
    }
    let launcher = d.join("bin/headscale");
    match &a.binary {
        Some(real) => {
            std::fs::copy(real, &launcher)
                .with_context(|| format!("installing {}", real.display()))?;
        }
        None => std::fs::write(
            &launcher,
            self::launcher(&a.version, "none", &d.join("starts"), 0)?,
        )?,
    }
    start_counter(&d.join("starts"))?;
    set_mode(&launcher, 0o755)?;
    std::fs::write(
        d.join("derp.yaml"),
        "regions:\n  900:\n    regionid: 900\n    regioncode: local\n    regionname: Local\n    nodes:\n      - name: 900a\n        regionid: 900\n        hostname: 127.0.0.1\n        stunport: -1\n        derpport: 0\n",
    )?;
    let port = free_port()?;
    let metrics = free_port()?;
    let grpc = free_port()?;
    let tls = if a.tls {
        make_tls(&d.join("lib"))?;
        format!(
            "tls_cert_path: {d}/lib/tls.crt\ntls_key_path: {d}/lib/tls.key\n",
            d = d.display()
        )
    } else {
        String::new()
    };
    // The real server must start offline: no DERP URL to fetch (fatal from 0.27), no update check.
    let (derp_urls, checks, policy_mode, dns) = if a.binary.is_some() {
        ("  urls: []\n", "true", "database", "dns:\n  magic_dns: true\n  base_domain: tailnet.example.com\n  override_local_dns: false\n  nameservers:\n    global: []\n")
    } else {
        ("  urls:\n    - https://controlplane.tailscale.com/derpmap/default\n", "false", "file", "dns:\n  magic_dns: true\n  base_domain: example.com\n  override_local_dns: true\n  nameservers:\n    global: [1.1.1.1]\n")
    };
    let config = format!(
        "server_url: http://127.0.0.1:{port}\nlisten_addr: 127.0.0.1:{port}\nmetrics_listen_addr: 127.0.0.1:{metrics}\ngrpc_listen_addr: 127.0.0.1:{grpc}\n{tls}grpc_allow_insecure: false\nnoise:\n  private_key_path: {d}/lib/noise_private.key\nprefixes:\n  v4: 100.64.0.0/10\n  v6: fd7a:115c:a1e0::/48\n  allocation: sequential\nderp:\n  server:\n    enabled: false\n{derp_urls}  paths:\n    - {d}/derp.yaml\n  auto_update_enabled: false\n  update_frequency: 3h\ndisable_check_updates: {checks}\ndatabase:\n  type: sqlite\n  sqlite:\n    path: {d}/lib/db.sqlite\n    write_ahead_log: true\nlog:\n  level: info\n  format: text\npolicy:\n  mode: {policy_mode}\n  path: \"\"\n{dns}unix_socket: {d}/run/headscale.sock\nunix_socket_permission: \"0770\"\n",
        d = d.display()
    );
    std::fs::write(d.join("etc/config.yaml"), config)?;
    // `start` is idempotent like `systemctl start`: a running service is left alone.
    let mut run_as = a
        .run_as
        .map(|u| format!("setpriv --reuid={u} --regid={u} --clear-groups "))
        .unwrap_or_default();
    for kv in &a.env {
        if !kv.contains('=') || kv.contains('\'') {
            bail!("--env takes KEY=VALUE without quotes: {kv:?}");
        }
        run_as = format!("env '{kv}' {run_as}");
    }
    let service = format!(
        r#"#!/bin/sh
# Service manager stand-in for tests (what systemctl does on a real host). The pid file holds
# the pid and the process's start time: pids wrap (32768) on a busy machine, and a stale pid
# must never be signalled once someone else has it.
D='{d}'
started_at() {{ sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{{print $20}}'; }}
running() {{
    [ -f "$D/headscale.pid" ] || return 1
    read -r pid at <"$D/headscale.pid" || return 1
    [ -n "$at" ] && [ "$(started_at "$pid")" = "$at" ] || return 1
    # An exited child of ours may linger as a zombie until init reaps it: that counts as stopped.
    [ "$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{{print $1}}')" != Z ]
}}
case "$1" in
  start)
    running && exit 0
    {run_as}"$D/bin/headscale" serve -c "$D/etc/config.yaml" >>"$D/headscale.log" 2>&1 &
    echo "$! $(started_at $!)" > "$D/headscale.pid" ;;
  stop)
    if running; then
      kill "$pid" 2>/dev/null || true
      while running; do sleep 0.01; done
    fi
    rm -f "$D/headscale.pid" ;;
  status)
    running ;;
esac
"#,
        d = d.display()
    );
    std::fs::write(d.join("service.sh"), service)?;
    set_mode(&d.join("service.sh"), 0o755)?;
    if let Some(uid) = a.run_as {
        hand_over(&d, uid)?;
    }
    if a.start {
        let status = std::process::Command::new(d.join("service.sh"))
            .arg("start")
            .status()?;
        if !status.success() {
            bail!("service.sh start failed");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let sock = d.join("run/headscale.sock");
        while !sock.exists() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "production stand-in did not start; see {}",
                    d.join("headscale.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if a.binary.is_some() {
            return Ok(());
        }
        let out = std::process::Command::new(&launcher)
            .args([
                "-c",
                &d.join("etc/config.yaml").to_string_lossy(),
                "debug",
                "seed",
            ])
            .args([
                "--users",
                &a.users.to_string(),
                "--nodes-per-user",
                &a.nodes_per_user.to_string(),
            ])
            .output()?;
        if !out.status.success() {
            bail!("seeding failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    println!("{}", d.display());
    Ok(())
}

/// A release's start counter, writable by whichever account runs the release.
fn start_counter(path: &Path) -> Result<()> {
    if !path.exists() {
        std::fs::write(path, "0")?;
    }
    set_mode(path, 0o666)
}

/// Gives production's data to `uid` the way upstream's unit has it: lib/ and run/ owned by the
/// service account (0700, files 0600), the config owned by it too (0640): some admins keep it
/// that way, and a restore must put back whatever owner and mode it had.
fn hand_over(d: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::chown;
    for dir in ["lib", "run"] {
        let dir = d.join(dir);
        chown(&dir, Some(uid), Some(uid))?;
        set_mode(&dir, 0o700)?;
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            chown(&p, Some(uid), Some(uid))?;
            set_mode(&p, 0o600)?;
        }
    }
    let cfg = d.join("etc/config.yaml");
    chown(&cfg, Some(uid), Some(uid))?;
    set_mode(&cfg, 0o640)?;
    // The directories above production's must be traversable by the service account.
    for dir in d.ancestors() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            set_mode(dir, (mode & 0o7777) | 0o011)?;
        }
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
