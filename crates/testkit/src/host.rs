//! What the fault rows need of every install kind's test host — the binary-kind [`Sandbox`], the
//! [`ComposeSandbox`] and the deb [`DebHost`] — so that one runner (`tests/it/rows.rs`) checks
//! every kind's end state the same way, and each kind adds only what is its own.

use std::path::PathBuf;
use std::process::Output;

use crate::compose::ComposeSandbox;
use crate::deb::DebHost;
use crate::sandbox::Sandbox;

pub trait Host {
    /// headwarden with this host's config.
    fn hw(&self, args: &[&str]) -> Output;
    /// headwarden's state directory.
    fn state_dir(&self) -> PathBuf;
    /// Production's database, as a file the test can read.
    fn db(&self) -> PathBuf;
    /// Production's noise key and Headscale config file, as files the test can read.
    fn noise_key(&self) -> PathBuf;
    fn headscale_config(&self) -> PathBuf;
    /// The kind's own install files an "old" end leaves byte for byte (the compose file).
    fn install_files(&self) -> Vec<PathBuf> {
        vec![]
    }
    /// The version production answers with (`X.Y.Z`), once it answers.
    fn serving(&self) -> String;
    /// Asserts that exactly one production server runs, as production's account.
    fn one_server(&self, said: &str);
    /// The kind's own end-state checks (`want`: the version production must be on).
    fn check_kind(&self, _want: &str, _said: &str) {}
}

impl Host for Sandbox {
    fn hw(&self, args: &[&str]) -> Output {
        Sandbox::hw(self, args)
    }
    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }
    fn db(&self) -> PathBuf {
        self.path("prod/lib/db.sqlite")
    }
    fn noise_key(&self) -> PathBuf {
        self.path("prod/lib/noise_private.key")
    }
    fn headscale_config(&self) -> PathBuf {
        self.path("prod/etc/config.yaml")
    }
    fn serving(&self) -> String {
        self.served_version().trim_start_matches('v').to_string()
    }
    fn one_server(&self, said: &str) {
        assert_eq!(
            self.prod_processes().len(),
            1,
            "one production server: {said}"
        );
    }
}

impl Host for ComposeSandbox {
    fn hw(&self, args: &[&str]) -> Output {
        ComposeSandbox::hw(self, args)
    }
    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }
    fn db(&self) -> PathBuf {
        ComposeSandbox::db(self)
    }
    fn noise_key(&self) -> PathBuf {
        self.data_dir().join("noise_private.key")
    }
    fn headscale_config(&self) -> PathBuf {
        ComposeSandbox::headscale_config(self)
    }
    fn install_files(&self) -> Vec<PathBuf> {
        vec![self.compose_file()]
    }
    fn serving(&self) -> String {
        self.served_version().trim_start_matches('v').to_string()
    }
    fn one_server(&self, said: &str) {
        let running = crate::compose::podman(&[
            "ps",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--format",
            "{{.Names}}",
        ]);
        assert_eq!(
            running.lines().count(),
            1,
            "one production container runs: {running:?}; {said}"
        );
        assert_eq!(self.containers().len(), 1, "{said}");
    }
    fn check_kind(&self, want: &str, said: &str) {
        // The exact tag, pinned by its digest once headwarden wrote the line.
        let line = self.image_line();
        assert!(
            line.contains(&format!(":{want} ")) || line.contains(&format!(":{want}@sha256:")),
            "{line}: {said}"
        );
        assert!(
            self.staging_containers().is_empty(),
            "{:?}",
            self.staging_containers()
        );
    }
}

impl Host for DebHost {
    fn hw(&self, args: &[&str]) -> Output {
        DebHost::hw(self, args)
    }
    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }
    fn db(&self) -> PathBuf {
        DebHost::db(self)
    }
    fn noise_key(&self) -> PathBuf {
        self.root("/var/lib/headscale/noise_private.key")
    }
    fn headscale_config(&self) -> PathBuf {
        self.root("/etc/headscale/config.yaml")
    }
    fn serving(&self) -> String {
        self.wait_healthy();
        self.cli_version()
    }
    fn one_server(&self, said: &str) {
        assert_eq!(
            self.service_process().map(|p| p.1),
            Some(self.headscale_uid()),
            "one server, as headscale: {said}"
        );
        assert_eq!(self.servers(), 1, "one production server: {said}");
    }
    fn check_kind(&self, want: &str, said: &str) {
        assert_eq!(self.dpkg_state("headscale"), format!("{want} ii"), "{said}");
    }
}
