//! Container images: pull `repository:X.Y.Z`, read the manifest digest the registry served,
//! and hold the tag to the first digest ever seen for it. Only this module builds
//! [`VerifiedImage`].
//!
//! Upstream's images are built by ko from the same source as the release binaries, not from
//! the release binaries themselves, so the binary inside is not byte-identical to the release
//! asset and cannot be checked against `checksums.txt` (ARCHITECTURE.md); the digest pin is the
//! check: a tag that later resolves to another digest was replaced after publication.

use std::time::Duration;

use semver::Version;

use crate::compose::{Engine, EngineError};
use crate::event::{Event, Severity};
use crate::state::{Key, StateError, Store};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("pulling {reference} failed: {source}")]
    Pull {
        reference: String,
        #[source]
        source: EngineError,
    },
    #[error("{reference}: the engine reports no registry digest for {repository} after the pull")]
    NoDigest {
        reference: String,
        repository: String,
    },
    #[error(
        "{reference} was replaced after publication: digest {first} when first pulled, now {now}"
    )]
    Replaced {
        reference: String,
        first: String,
        now: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

impl ImageError {
    /// Failures that mean the release itself is bad (record it), not a transient problem.
    pub fn release_is_bad(&self) -> bool {
        matches!(self, ImageError::Replaced { .. })
    }
}

/// An image pulled at an exact version whose digest matches the first one recorded for its tag.
#[derive(Debug)]
pub struct VerifiedImage {
    version: Version,
    reference: String,
    digest: String,
}

impl VerifiedImage {
    pub fn version(&self) -> &Version {
        &self.version
    }
    /// `repository:X.Y.Z`.
    pub fn reference(&self) -> &str {
        &self.reference
    }
    /// `sha256:…`, the registry's manifest digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// The digest recorded for `reference` when it was first pulled.
fn recorded_digest(store: &Store, reference: &str) -> Result<Option<String>, StateError> {
    store.kv_get(Key::Image(reference))
}

/// Pulls `repository:version` and checks its digest against the one recorded for that tag; a
/// different digest raises the critical `release.artifact_replaced` alarm (once per digest).
pub async fn pull_verified(
    engine: &Engine,
    store: &Store,
    repository: &str,
    version: &Version,
) -> Result<VerifiedImage, ImageError> {
    let reference = format!("{repository}:{version}");
    // Podman 4.3 once listed no digest for this repository right after a successful pull, in a
    // CI run where other pulls and untags of the same image ran at the same time. Pulling again
    // is harmless (the digest is still compared with the recorded one); a third miss is an error.
    let mut digest = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tracing::warn!(%reference, attempt, "no registry digest after the pull; pulling again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        engine
            .pull(&reference)
            .await
            .map_err(|source| ImageError::Pull {
                reference: reference.clone(),
                source,
            })?;
        let info = engine
            .image(&reference)
            .await
            .map_err(|source| ImageError::Pull {
                reference: reference.clone(),
                source,
            })?;
        digest = info.and_then(|i| i.digest_for(repository));
        if digest.is_some() {
            break;
        }
    }
    let digest = digest.ok_or_else(|| ImageError::NoDigest {
        reference: reference.clone(),
        repository: repository.to_string(),
    })?;
    match recorded_digest(store, &reference)? {
        Some(first) if first != digest => {
            tracing::error!(%reference, %first, now = %digest, "image tag replaced after publication");
            store.push_event_once(
                Event::ReleaseArtifactReplaced,
                Severity::Critical,
                &serde_json::json!({
                    "summary": format!("Headscale {version}: the image {reference} was replaced"),
                    "tag": format!("v{version}"), "asset": reference, "first_seen": first, "now": digest,
                    "action": "recorded as bad; headwarden will not install it. Compare with upstream's announcement before trusting it.",
                }),
                &format!("release.artifact_replaced:v{version}:{reference}:{digest}"),
                365 * 86400,
            )?;
            return Err(ImageError::Replaced {
                reference,
                first,
                now: digest,
            });
        }
        Some(_) => {}
        None => store.kv_set(Key::Image(&reference), &digest)?,
    }
    Ok(VerifiedImage {
        version: version.clone(),
        reference,
        digest,
    })
}
