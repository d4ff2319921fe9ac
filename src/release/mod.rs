//! Headscale releases: the GitHub feed (wire types stay in `feed`), strict tag parsing, and the
//! pure upgrade planner (`plan`).

pub mod feed;
pub mod notes;
pub mod plan;
pub mod watch;

use semver::Version;
use serde::Serialize;

/// A published release, in domain terms.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub tag: String,
    pub version: Version,
    pub prerelease: bool,
    /// Unix seconds; `None` for drafts (which never reach the planner).
    pub published_at: Option<i64>,
    pub notes: String,
    pub url: String,
    pub assets: Vec<Asset>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Asset {
    pub name: String,
    pub size: u64,
    /// Lowercase hex sha256 from GitHub's `digest` field, when the API gives one.
    pub sha256: Option<String>,
    pub url: String,
    /// GitHub's asset state is "uploaded" (not "starter", i.e. still uploading).
    pub uploaded: bool,
}

impl Release {
    pub fn asset(&self, name: &str) -> Option<&Asset> {
        self.assets.iter().find(|a| a.name == name)
    }

    /// The file of `kind` for this host, by upstream's naming: `headscale_<ver>_<os>_<arch>`,
    /// `.deb` appended for the package.
    pub fn asset_name(&self, kind: AssetKind) -> String {
        asset_name(&self.tag, kind)
    }

    /// Assets needed to install are all present and uploaded.
    pub fn assets_ready(&self, kind: AssetKind) -> bool {
        let name = self.asset_name(kind);
        [name.as_str(), "checksums.txt"]
            .iter()
            .all(|n| self.asset(n).is_some_and(|a| a.uploaded))
    }
}

/// Which of a release's files an install kind installs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AssetKind {
    /// The bare binary (also what a compose install's planning looks for: upstream publishes
    /// binary and images together).
    #[default]
    Binary,
    /// The Debian package upstream builds with nFPM.
    Deb,
}

pub fn asset_name(tag: &str, kind: AssetKind) -> String {
    match kind {
        AssetKind::Binary => host_asset_name(tag),
        AssetKind::Deb => format!("{}.deb", host_asset_name(tag)),
    }
}

pub fn host_asset_name(tag: &str) -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!(
        "headscale_{}_{}_{arch}",
        tag.trim_start_matches('v'),
        std::env::consts::OS
    )
}

/// Strict tag parsing: `vMAJOR.MINOR.PATCH` with an optional `-alpha|beta|rc[.]N` suffix
/// (older tags have no dot: `v0.23.0-beta1`). Everything else (`v0.28-fix`, `backup/…`) is not a release.
pub fn parse_tag(tag: &str) -> Option<Version> {
    let rest = tag.strip_prefix('v')?;
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let nums: Vec<&str> = core.split('.').collect();
    if nums.len() != 3
        || nums.iter().any(|n| {
            n.is_empty()
                || !n.bytes().all(|b| b.is_ascii_digit())
                || (n.len() > 1 && n.starts_with('0'))
        })
    {
        return None;
    }
    let pre = match pre {
        None => semver::Prerelease::EMPTY,
        Some(p) => {
            let kind = ["alpha", "beta", "rc"]
                .into_iter()
                .find(|k| p.starts_with(k))?;
            let num = p[kind.len()..].trim_start_matches('.');
            if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            semver::Prerelease::new(&format!("{kind}.{num}")).ok()?
        }
    };
    let mut v = Version::new(
        nums[0].parse().ok()?,
        nums[1].parse().ok()?,
        nums[2].parse().ok()?,
    );
    v.pre = pre;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let ok = [
            ("v0.29.2", "0.29.2"),
            ("v0.29.0-beta.4", "0.29.0-beta.4"),
            ("v0.23.0-beta1", "0.23.0-beta.1"),
            ("v0.27.2-rc.1", "0.27.2-rc.1"),
            ("v1.0.0", "1.0.0"),
        ];
        for (tag, v) in ok {
            assert_eq!(
                parse_tag(tag).map(|x| x.to_string()).as_deref(),
                Some(v),
                "{tag}"
            );
        }
        for bad in [
            "0.29.2",
            "v0.28-fix",
            "backup/v0.1",
            "v0.23.0-alpha4-docker-ko-test1",
            "upstream/v0.12.4",
            "tmp-prerework",
            "v0.29",
            "v01.2.3",
            "v0.29.2-dev",
            "v0.29.2-rc",
            "v0.29.2 ",
        ] {
            assert_eq!(parse_tag(bad), None, "{bad}");
        }
    }
}
