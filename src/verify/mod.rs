//! Download and verification. Only this module constructs [`Verified`], and `deploy` accepts
//! nothing else, so "installed without verifying" cannot be written.
//!
//! Procedure for one release:
//! 1. Refuse URLs that are not https (plain http only for loopback with `allow_insecure_http`),
//!    also after redirects.
//! 2. Fetch `checksums.txt` (size-capped) and find the line for `headscale_<ver>_<os>_<arch>`.
//! 3. With a minisign key: fetch `<asset>.minisig` or `checksums.txt.minisig`; with
//!    `require_signature`, refuse when neither exists. A signed checksums.txt is verified now.
//! 4. Stream the asset into a 0600 temp file inside the 0700 download directory, hashing
//!    (sha256, and BLAKE2b for minisign) as bytes arrive; memory stays at one chunk; the size is
//!    capped and must equal the API's `size`.
//! 5. fsync; compare sha256 with checksums.txt and GitHub's `digest`; finish the signature.
//! 6. Only then rename the file into place and return `Verified`.

pub mod image;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use sha2::{Digest, Sha256};

use crate::error::error_chain;
use crate::release::{Asset, AssetKind, Release};
use crate::settings;
use crate::settings::ReleaseSettings;

pub use image::{ImageError, VerifiedImage};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{tag}: release has no asset {name}")]
    MissingAsset { tag: String, name: String },
    #[error("{tag}: checksums.txt has no line for {name}")]
    MissingChecksum { tag: String, name: String },
    #[error("{tag}: checksums.txt is malformed: {detail}")]
    MalformedChecksums { tag: String, detail: String },
    #[error("{name}: sha256 {actual} does not match checksums.txt ({expected})")]
    ChecksumMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{name}: sha256 {actual} does not match GitHub's asset digest ({expected})")]
    DigestMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{name}: unsupported or malformed asset digest {digest:?}")]
    BadDigest { name: String, digest: String },
    #[error("{name}: downloaded {actual} bytes, the release lists {expected}")]
    SizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("{name}: larger than the {limit}-byte limit")]
    TooLarge { name: String, limit: u64 },
    #[error("{tag}: no minisign signature, and release.require_signature is true")]
    Unsigned { tag: String },
    #[error("{name}: minisign signature does not verify: {detail}")]
    BadSignature { name: String, detail: String },
    #[error(
        "refusing to download {url}: only https (or http to loopback with allow_insecure_http)"
    )]
    InsecureUrl { url: String },
    #[error("downloading {url}: {detail}")]
    Download { url: String, detail: String },
    #[error("download directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl VerifyError {
    /// Failures that mean the release itself is bad (record it), not a transient problem.
    pub fn release_is_bad(&self) -> bool {
        !matches!(
            self,
            VerifyError::Download { .. } | VerifyError::Io { .. } | VerifyError::InsecureUrl { .. }
        )
    }
}

/// A release binary whose bytes matched every check. Fields are private; only `verify` builds it.
#[derive(Debug)]
pub struct Verified {
    version: Version,
    tag: String,
    path: PathBuf,
    sha256: String,
    signed: bool,
    /// GitHub published a `digest` for the asset and it matched.
    digest_checked: bool,
}

impl Verified {
    pub fn version(&self) -> &Version {
        &self.version
    }
    pub fn tag(&self) -> &str {
        &self.tag
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    pub fn signed(&self) -> bool {
        self.signed
    }
    pub fn digest_checked(&self) -> bool {
        self.digest_checked
    }
}

pub struct Downloader {
    client: reqwest::Client,
    settings: ReleaseSettings,
    pub progress: bool,
}

impl Downloader {
    pub fn new(settings: &ReleaseSettings) -> Self {
        let allow_http = settings.allow_insecure_http;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > 5 {
                attempt.error("too many redirects")
            } else if settings::url_allowed(attempt.url().as_str(), allow_http) {
                attempt.follow()
            } else {
                attempt.error("redirect to a non-https URL")
            }
        });
        let client = reqwest::Client::builder()
            .user_agent(concat!("headwarden/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .redirect(policy)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            client,
            settings: settings.clone(),
            progress: false,
        }
    }

    fn check_url(&self, url: &str) -> Result<(), VerifyError> {
        if settings::url_allowed(url, self.settings.allow_insecure_http) {
            Ok(())
        } else {
            Err(VerifyError::InsecureUrl {
                url: url.to_string(),
            })
        }
    }

    async fn fetch_small(&self, url: &str, limit: u64) -> Result<Vec<u8>, VerifyError> {
        self.check_url(url)?;
        let err = |detail: String| VerifyError::Download {
            url: url.to_string(),
            detail,
        };
        let deadline = tokio::time::Instant::now() + self.settings.download_timeout;
        let mut resp = within(deadline, self.client.get(url).send())
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(err(format!("HTTP {}", resp.status())));
        }
        let mut buf = Vec::new();
        while let Some(chunk) = within(deadline, resp.chunk())
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(error_chain(&e)))?
        {
            buf.extend_from_slice(&chunk);
            if buf.len() as u64 > limit {
                return Err(err(format!("larger than {limit} bytes")));
            }
        }
        Ok(buf)
    }

    /// Downloads and verifies `release`'s file of `kind` for this host into `dir`.
    pub async fn fetch_verified(
        &self,
        release: &Release,
        kind: AssetKind,
        dir: &Path,
    ) -> Result<Verified, VerifyError> {
        let name = release.asset_name(kind);
        let asset = release
            .asset(&name)
            .ok_or_else(|| VerifyError::MissingAsset {
                tag: release.tag.clone(),
                name: name.clone(),
            })?;
        let (sums, expected) = self.expected_checksum(release, &name).await?;
        let digest = match &asset.sha256 {
            None => None,
            Some(d) => Some(parse_digest(d).ok_or_else(|| VerifyError::BadDigest {
                name: name.clone(),
                digest: d.clone(),
            })?),
        };
        let signing = self.signatures(release, &name, &sums).await?;
        let io = |source| VerifyError::Io {
            path: dir.to_path_buf(),
            source,
        };
        create_private_dir(dir).map_err(io)?;
        let mut stream_verifier = match (&signing.key, &signing.asset) {
            (Some(k), Some(s)) => {
                Some(k.verify_stream(s).map_err(|e| VerifyError::BadSignature {
                    name: name.clone(),
                    detail: e.to_string(),
                })?)
            }
            _ => None,
        };
        let (tmp, actual, total) = self
            .stream(asset, &name, dir, |chunk| {
                if let Some(v) = stream_verifier.as_mut() {
                    v.update(chunk);
                }
            })
            .await?;
        if total != asset.size {
            return Err(VerifyError::SizeMismatch {
                name,
                expected: asset.size,
                actual: total,
            });
        }
        if actual != expected {
            return Err(VerifyError::ChecksumMismatch {
                name,
                expected,
                actual,
            });
        }
        let digest_checked = digest.is_some();
        if let Some(d) = digest {
            if d != actual {
                return Err(VerifyError::DigestMismatch {
                    name,
                    expected: d,
                    actual,
                });
            }
        }
        let mut signed = signing.checksums_signed;
        if let Some(mut v) = stream_verifier {
            v.finalize().map_err(|e| VerifyError::BadSignature {
                name: name.clone(),
                detail: e.to_string(),
            })?;
            signed = true;
        }
        let final_path = dir.join(&name);
        tmp.persist(&final_path).map_err(|e| io(e.error))?;
        Ok(Verified {
            version: release.version.clone(),
            tag: release.tag.clone(),
            path: final_path,
            sha256: actual,
            signed,
            digest_checked,
        })
    }

    /// `checksums.txt` of `release` and the sha256 it lists for `name`.
    async fn expected_checksum(
        &self,
        release: &Release,
        name: &str,
    ) -> Result<(String, String), VerifyError> {
        let tag = &release.tag;
        let sums_asset =
            release
                .asset("checksums.txt")
                .ok_or_else(|| VerifyError::MissingAsset {
                    tag: tag.clone(),
                    name: "checksums.txt".into(),
                })?;
        let sums = self.fetch_small(&sums_asset.url, 1024 * 1024).await?;
        let sums = String::from_utf8(sums).map_err(|_| VerifyError::MalformedChecksums {
            tag: tag.clone(),
            detail: "not UTF-8".into(),
        })?;
        let expected = checksum_for(&sums, name)
            .map_err(|e| VerifyError::MalformedChecksums {
                tag: tag.clone(),
                detail: e.to_string(),
            })?
            .ok_or_else(|| VerifyError::MissingChecksum {
                tag: tag.clone(),
                name: name.to_string(),
            })?;
        Ok((sums, expected))
    }

    /// The configured key and the release's signature: of the asset itself (checked while it
    /// streams) or of `checksums.txt` (checked here). Unsigned with `require_signature` is an
    /// error.
    async fn signatures(
        &self,
        release: &Release,
        name: &str,
        sums: &str,
    ) -> Result<Signing, VerifyError> {
        let key = match &self.settings.minisign_public_key {
            Some(k) => Some(minisign_verify::PublicKey::from_base64(k).map_err(|e| {
                VerifyError::BadSignature {
                    name: name.to_string(),
                    detail: e.to_string(),
                }
            })?),
            None => None,
        };
        let mut signing = Signing {
            key: None,
            asset: None,
            checksums_signed: false,
        };
        let Some(key) = key else {
            return Ok(signing);
        };
        let bad = |n: &str, e: minisign_verify::Error| VerifyError::BadSignature {
            name: n.to_string(),
            detail: e.to_string(),
        };
        if let Some(a) = release.asset(&format!("{name}.minisig")) {
            let text =
                String::from_utf8_lossy(&self.fetch_small(&a.url, 64 * 1024).await?).into_owned();
            signing.asset =
                Some(minisign_verify::Signature::decode(&text).map_err(|e| bad(name, e))?);
        } else if let Some(a) = release.asset("checksums.txt.minisig") {
            let text =
                String::from_utf8_lossy(&self.fetch_small(&a.url, 64 * 1024).await?).into_owned();
            let sig =
                minisign_verify::Signature::decode(&text).map_err(|e| bad("checksums.txt", e))?;
            key.verify(sums.as_bytes(), &sig, false)
                .map_err(|e| bad("checksums.txt", e))?;
            signing.checksums_signed = true;
        }
        if signing.asset.is_none() && !signing.checksums_signed && self.settings.require_signature {
            return Err(VerifyError::Unsigned {
                tag: release.tag.clone(),
            });
        }
        signing.key = Some(key);
        Ok(signing)
    }

    /// Streams `asset` into a private temporary file in `dir`, within the size cap and the
    /// download deadline, handing each chunk to `each`. Returns the file, its sha256 and its
    /// length.
    async fn stream(
        &self,
        asset: &Asset,
        name: &str,
        dir: &Path,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(tempfile::NamedTempFile, String, u64), VerifyError> {
        let io = |source| VerifyError::Io {
            path: dir.to_path_buf(),
            source,
        };
        self.check_url(&asset.url)?;
        let derr = |detail: String| VerifyError::Download {
            url: asset.url.clone(),
            detail,
        };
        let deadline = tokio::time::Instant::now() + self.settings.download_timeout;
        let mut resp = within(deadline, self.client.get(&asset.url).send())
            .await
            .map_err(|e| derr(e.to_string()))?
            .map_err(|e| derr(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(derr(format!("HTTP {}", resp.status())));
        }
        let limit = self.settings.max_asset_size;
        let too_large = || VerifyError::TooLarge {
            name: name.to_string(),
            limit,
        };
        if asset.size > limit || resp.content_length().is_some_and(|l| l > limit) {
            return Err(too_large());
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(dir)
            .map_err(io)?;
        let mut sha = Sha256::new();
        let bar = self.progress.then(|| progress_bar(asset.size, name));
        let mut total: u64 = 0;
        loop {
            let chunk = match within(deadline, resp.chunk())
                .await
                .map_err(|e| derr(e.to_string()))?
            {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(derr(format!(
                        "transfer interrupted after {total} bytes: {e}"
                    )))
                }
            };
            total += chunk.len() as u64;
            if total > limit {
                return Err(too_large());
            }
            sha.update(&chunk);
            each(&chunk);
            tmp.write_all(&chunk).map_err(io)?;
            if let Some(b) = &bar {
                b.set_position(total);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        tmp.as_file().sync_all().map_err(io)?;
        Ok((tmp, hex::encode(sha.finalize()), total))
    }
}

/// The key and signatures a download is checked against.
struct Signing {
    key: Option<minisign_verify::PublicKey>,
    /// The asset's own `.minisig`, verified while the asset streams.
    asset: Option<minisign_verify::Signature>,
    /// `checksums.txt.minisig` verified (the checksum then vouches for the asset).
    checksums_signed: bool,
}

fn progress_bar(size: u64, name: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(size);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(name.to_string());
    b
}

pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// `f`, or an error once `deadline` (the download's overall deadline) has passed.
async fn within<T>(
    deadline: tokio::time::Instant,
    f: impl std::future::Future<Output = T>,
) -> Result<T, Overdue> {
    tokio::time::timeout_at(deadline, f)
        .await
        .map_err(|_| Overdue)
}

/// A download that outlived `release.download_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the download did not finish within release.download_timeout")]
struct Overdue;

/// A checksums.txt that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumsError {
    #[error("line {0}: expected \"<sha256>  <file>\"")]
    Line(usize),
    #[error("line {line}: {hash:?} is not a sha256")]
    NotSha256 { line: usize, hash: String },
    #[error("{0} is listed twice")]
    Twice(String),
}

/// The sha256 for `name` in a goreleaser checksums.txt (`<64 hex>  <name>`, `*` binary marker allowed).
pub fn checksum_for(text: &str, name: &str) -> Result<Option<String>, ChecksumsError> {
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (hash, file) = line
            .split_once(char::is_whitespace)
            .ok_or(ChecksumsError::Line(i + 1))?;
        let file = file.trim_start().trim_start_matches('*');
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChecksumsError::NotSha256 {
                line: i + 1,
                hash: hash.to_string(),
            });
        }
        if file == name {
            if found.is_some() {
                return Err(ChecksumsError::Twice(name.to_string()));
            }
            found = Some(hash.to_ascii_lowercase());
        }
    }
    Ok(found)
}

/// GitHub's asset digest `sha256:<hex>` → hex.
pub fn parse_digest(d: &str) -> Option<String> {
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// sha256 of a file, streamed (used by benchmarks and the installed-binary check).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(hex::encode(sha.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn checksum_lines() {
        let text =
            format!("{H}  headscale_0.29.2_linux_amd64\n{H}  headscale_0.29.2_linux_arm64\n");
        assert_eq!(
            checksum_for(&text, "headscale_0.29.2_linux_amd64"),
            Ok(Some(H.to_string()))
        );
        assert_eq!(
            checksum_for(&text, "headscale_0.29.2_darwin_amd64"),
            Ok(None)
        );
        assert_eq!(
            checksum_for(&format!("{H} *x\n"), "x"),
            Ok(Some(H.to_string()))
        );
        assert!(checksum_for("zz  x\n", "x").is_err());
        assert!(checksum_for(&format!("{H}  x\n{H}  x\n"), "x").is_err());
        assert!(checksum_for("garbage", "x").is_err());
    }

    #[test]
    fn digests() {
        assert_eq!(parse_digest(&format!("sha256:{H}")), Some(H.to_string()));
        assert_eq!(parse_digest(&format!("sha512:{H}")), None);
        assert_eq!(parse_digest("sha256:abc"), None);
    }
}
