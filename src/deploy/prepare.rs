//! Each install kind's work before and around the first hop, so that the upgrade job walks one
//! path whatever the kind:
//!
//! 1. [`Prep::fetch`], per hop, journaled as a `download` step:
//!    - binary: the release's host binary, verified (`verify`), installed under `versions/`;
//!    - deb: first the running version's package is kept under `versions/` (the way back;
//!      fetched from its release and verified like any other), and dpkg must record that
//!      version as installed and configured; then each hop's `.deb`, verified and unpacked;
//!    - compose: `image:X.Y.Z` pulled and held to the digest first recorded for that tag;
//!    - external: nothing is fetched: the candidate is what the package manager put on disk.
//! 2. [`Prep::recheck`] (the playbook's `verify` step): nothing swapped an artifact between its
//!    fetch and its use (a binary's sha256, an image's digest in the engine's storage).
//! 3. [`Prep::before_promote`]: a compose file's floating tag (`latest`, `0.29`) is pinned to
//!    the exact version running now, so that the backup, the rollback and later runs name one
//!    release.

use std::future::Future;
use std::time::Instant;

use semver::Version;

use crate::compose::TagKind;
use crate::deploy::{self, container, Artifact, DeployError, Installed, Slot};
use crate::release::plan::Hop;
use crate::release::watch;
use crate::release::{asset_name, AssetKind, Release};
use crate::settings::{ComposeInstall, Install, Settings};
use crate::state::{RunId, Step, Store};
use crate::verify;
use crate::verify::Downloader;

/// One run's context for the kind's preparation.
pub struct Prep<'a> {
    pub s: &'a Settings,
    pub store: &'a Store,
    pub run: RunId,
    /// The version production runs now.
    pub current: &'a Version,
    /// Progress lines for the admin.
    pub say: &'a (dyn Fn(&str) + Sync),
}

/// An artifact ready to stage, with the sha256 or digest it was verified at.
pub type Fetched = (Installed, String);

impl Prep<'_> {
    /// Runs `work` as the journal step `name` of `hop`, recording its detail or its error.
    async fn journaled<T, E: std::fmt::Display>(
        &self,
        hop: i64,
        name: Step,
        data: &serde_json::Value,
        work: impl Future<Output = Result<(T, String), E>>,
    ) -> Result<Result<T, E>, DeployError> {
        let step = self.store.step_start(self.run, hop, name, data)?;
        let t = Instant::now();
        let result = work.await;
        let ms = t.elapsed().as_millis();
        Ok(match result {
            Ok((value, detail)) => {
                self.store.step_finish(step, true, &detail, ms)?;
                Ok(value)
            }
            Err(e) => {
                self.store.step_finish(step, false, &e.to_string(), ms)?;
                Err(e)
            }
        })
    }

    /// Step 1: every hop's artifact, verified, before anything is touched.
    pub async fn fetch(
        &self,
        downloader: &Downloader,
        releases: &[Release],
        hops: &[Hop],
    ) -> Result<Vec<Fetched>, DeployError> {
        let s = self.s;
        let mut out = Vec::new();
        match &s.headscale.install {
            Install::External(_) => {
                for hop in hops {
                    out.push(deploy::on_disk(s, &hop.version)?);
                }
                return Ok(out);
            }
            Install::Compose(c) => {
                for (i, hop) in hops.iter().enumerate() {
                    out.push(self.fetch_image(c, i, hop).await?);
                }
                return Ok(out);
            }
            Install::Deb(d) => {
                self.keep_running_package(downloader, releases, &d.package)
                    .await?
            }
            Install::Binary => {}
        }
        let kind = watch::asset_kind(s);
        for (i, hop) in hops.iter().enumerate() {
            let release = releases
                .iter()
                .find(|r| r.tag == hop.tag)
                .ok_or_else(|| DeployError::Other(format!("{} vanished from the feed", hop.tag)))?;
            let fetched = self
                .journaled(
                    i as i64,
                    Step::Download,
                    &serde_json::json!({"tag": hop.tag}),
                    async {
                        let v = downloader
                            .fetch_verified(release, kind, &deploy::downloads_dir(s))
                            .await?;
                        let detail = format!(
                            "sha256 {}{}",
                            v.sha256(),
                            if v.signed() { ", signature ok" } else { "" }
                        );
                        Ok::<_, verify::VerifyError>((v, detail))
                    },
                )
                .await?;
            let v = match fetched {
                Ok(v) => v,
                Err(e) => {
                    if e.release_is_bad() {
                        self.store.mark_release_bad(&hop.tag, &e.to_string())?;
                    }
                    return Err(e.into());
                }
            };
            (self.say)(&format!(
                "verified {}: sha256 matches checksums.txt{}{}",
                hop.tag,
                if v.digest_checked() {
                    " and GitHub's asset digest"
                } else {
                    " (GitHub published no asset digest)"
                },
                if v.signed() {
                    "; minisign signature valid"
                } else {
                    ""
                }
            ));
            let sha = v.sha256().to_string();
            let installed = match kind {
                AssetKind::Deb => deploy::install_package(s, self.store, v).await?,
                AssetKind::Binary => deploy::install(s, self.store, v)?,
            };
            out.push((installed, sha));
        }
        Ok(out)
    }

    /// Before a deb install's first download: the package of the version running now is the
    /// way back, so it is kept under `versions/` first (fetched from its release and verified
    /// like any other), and dpkg must record that version as installed and configured.
    async fn keep_running_package(
        &self,
        downloader: &Downloader,
        releases: &[Release],
        package: &str,
    ) -> Result<(), DeployError> {
        let (s, current) = (self.s, self.current);
        let state = deploy::package::installed(package).await?;
        match &state {
            Some(st) if st.configured() && st.release().as_ref() == Some(current) => {}
            other => {
                return Err(DeployError::Other(format!(
                    "headscale.install.kind is deb, but dpkg records {package} {} while {} runs {current}; install the release's package (apt install ./{}) or fix headscale.binary",
                    other.as_ref().map_or("not installed".to_string(), |st| format!("{} ({})", st.version, st.status)),
                    s.headscale.binary.display(),
                    asset_name(&format!("v{current}"), AssetKind::Deb)
                )))
            }
        }
        if deploy::package_path(s, current).exists() {
            return Ok(());
        }
        let tag = format!("v{current}");
        let release = releases
            .iter()
            .find(|r| r.version == *current)
            .ok_or_else(|| {
                DeployError::Other(format!(
                    "the feed has no release {tag}, whose package a rollback would reinstall; nothing was changed"
                ))
            })?;
        let kept = self
            .journaled(
                -1,
                Step::Download,
                &serde_json::json!({"tag": tag, "keep": "rollback package"}),
                async {
                    let v = downloader
                        .fetch_verified(release, AssetKind::Deb, &deploy::downloads_dir(s))
                        .await
                        .map_err(|e| e.to_string())?;
                    let deb = deploy::keep_package(s, &v).map_err(|e| e.to_string())?;
                    Ok::<_, String>((deb, format!("sha256 {}", v.sha256())))
                },
            )
            .await?;
        match kept {
            Ok(deb) => {
                (self.say)(&format!(
                    "kept the package of the running {current} for a rollback: {} (verified)",
                    deb.display()
                ));
                Ok(())
            }
            Err(e) => Err(DeployError::Other(format!(
                "cannot keep the package of the running {current} for a rollback: {e}; nothing was changed"
            ))),
        }
    }

    /// `fetch` for a compose install: pull `image:X.Y.Z` and hold it to the digest first
    /// recorded for that tag.
    async fn fetch_image(
        &self,
        c: &ComposeInstall,
        i: usize,
        hop: &Hop,
    ) -> Result<Fetched, DeployError> {
        let reference = format!("{}:{}", c.image, hop.version);
        let engine = container::engine(c);
        let pulled = self
            .journaled(
                i as i64,
                Step::Download,
                &serde_json::json!({"tag": hop.tag, "image": reference}),
                async {
                    let v =
                        verify::image::pull_verified(&engine, self.store, &c.image, &hop.version)
                            .await?;
                    let detail = format!("digest {}", v.digest());
                    Ok::<_, verify::image::ImageError>((v, detail))
                },
            )
            .await?;
        match pulled {
            Ok(v) => {
                (self.say)(&format!(
                    "pulled {}: digest {} (the first seen for this tag)",
                    v.reference(),
                    v.digest()
                ));
                let digest = v.digest().to_string();
                Ok((Installed::image(v), digest))
            }
            Err(e) => {
                if e.release_is_bad() {
                    self.store.mark_release_bad(&hop.tag, &e.to_string())?;
                }
                Err(DeployError::Image(e))
            }
        }
    }

    /// Step 2: installed binaries still hash to what was verified, and pulled images still carry
    /// the digest they were verified at.
    pub async fn recheck(&self, fetched: &[Fetched]) -> Result<(), DeployError> {
        for (inst, sha) in fetched {
            match (inst.artifact(), &self.s.headscale.install) {
                (Artifact::Binary(path), _) | (Artifact::Package { deb: path, .. }, _) => {
                    let now = verify::sha256_file(path).map_err(|e| {
                        DeployError::Other(format!("re-hashing {}: {e}", path.display()))
                    })?;
                    if &now != sha {
                        return Err(DeployError::Other(format!(
                            "{} changed on disk after verification (sha256 {now}, verified {sha}); refusing to run it",
                            path.display()
                        )));
                    }
                }
                (Artifact::Image { reference, digest }, Install::Compose(c)) => {
                    let now = container::engine(c)
                        .image(reference)
                        .await?
                        .and_then(|i| i.digest_for(&c.image));
                    if now.as_deref() != Some(digest.as_str()) {
                        return Err(DeployError::Other(format!(
                            "{reference} changed in the engine's storage after verification (digest {}, verified {digest}); refusing to run it",
                            now.unwrap_or_else(|| "none".into())
                        )));
                    }
                }
                (
                    Artifact::Image { reference, .. },
                    Install::Binary | Install::Deb(_) | Install::External(_),
                ) => {
                    return Err(DeployError::Other(format!(
                        "{reference} is an image, but headscale.install.kind is not compose"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Step 3, before the first hop's stop.
    pub async fn before_promote(&self) -> Result<(), DeployError> {
        match &self.s.headscale.install {
            Install::Compose(c) => self.pin_floating(c).await,
            Install::Binary | Install::Deb(_) | Install::External(_) => Ok(()),
        }
    }

    /// A floating tag is pinned to the exact version running now. Refused when the image
    /// running is not that release's image.
    async fn pin_floating(&self, c: &ComposeInstall) -> Result<(), DeployError> {
        let image = container::current_image(c)?;
        let TagKind::Floating(tag) = image.tag_kind() else {
            return Ok(());
        };
        if !image.same_repository(&c.image) {
            return Err(DeployError::Other(format!(
                "the compose file runs {image}, but headscale.install.image is {}; make them name the same repository",
                c.image
            )));
        }
        let engine = container::engine(c);
        let pinned = self
            .journaled(
                0,
                Step::Pin,
                &serde_json::json!({"from": image.to_string(), "to": c.image.clone() + ":" + &self.current.to_string()}),
                async {
                    let pinned =
                        verify::image::pull_verified(&engine, self.store, &c.image, self.current)
                            .await?;
                    let running = container::discover(c)
                        .await?
                        .container
                        .map(|i| i.image_id)
                        .unwrap_or_default();
                    let pinned_id = engine
                        .image(pinned.reference())
                        .await?
                        .map(|i| i.id)
                        .unwrap_or_default();
                    if running.is_empty() || running != pinned_id {
                        return Err(DeployError::Other(format!(
                            "the compose file names {image} (tag {tag}), but the image running ({}) is not {} ({pinned_id}); pin the tag by hand to the image that runs, then run again",
                            if running.is_empty() { "none" } else { &running },
                            pinned.reference()
                        )));
                    }
                    let to = pinned.reference().to_string();
                    deploy::switch_to(self.s, &Slot::Image(to.clone())).await?;
                    Ok::<_, DeployError>((to.clone(), format!("pinned to {to}")))
                },
            )
            .await??;
        (self.say)(&format!(
            "pinned the compose file's floating {image} to {pinned} (the version running now; previous file kept as {})",
            container::previous_copy(&c.file).display()
        ));
        Ok(())
    }
}
