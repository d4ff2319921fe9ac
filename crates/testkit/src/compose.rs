//! A compose install of real Headscale for the tests: a project directory with a compose file
//! (bind-mounted config and data, the port published on 127.0.0.1), run by real
//! `podman-compose` from images scripts/containers built from the rig's binaries and serves
//! from a registry on 127.0.0.1 (`HEADWARDEN_REGISTRY`). Each sandbox pushes the versions it
//! needs into a repository of its own, so digests and tags never leak between tests.
//! Dropping it takes the project down and removes its containers, network and images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{free_port, publish, run_hw, sim, start_feed, text, upstream_config, OFFLINE_DERP};

pub struct ComposeSandbox {
    pub dir: tempfile::TempDir,
    feed: std::process::Child,
    pub feed_addr: String,
    pub pubkey: String,
    /// `127.0.0.1:PORT/<unique>/headscale`.
    pub repo: String,
    pub project: String,
    pub port: u16,
    /// Appended to headwarden's config (top level).
    pub extra_top: String,
    /// `smoke.timeout`.
    pub smoke_timeout: String,
    /// `headscale.install.command`.
    pub command: String,
    /// The data directory is the named volume `headscale-data`, not a bind mount.
    pub named_volume: bool,
}

fn registry() -> String {
    std::env::var("HEADWARDEN_REGISTRY").unwrap_or_else(|_| {
        panic!("HEADWARDEN_REGISTRY is not set: run the suite through scripts/test (it builds the images and serves them on 127.0.0.1)")
    })
}

/// Runs the engine (podman) and panics with its output on failure.
pub fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run podman");
    assert!(out.status.success(), "podman {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl ComposeSandbox {
    /// Production is real Headscale `version` from the compose file, the image named by `tag`
    /// (`version` itself, or a floating tag such as `latest` pushed for the same image).
    pub fn new(version: &str, tag: &str) -> Self {
        Self::build(version, tag, false)
    }

    /// [`ComposeSandbox::new`] with production's data on a named volume.
    pub fn with_named_volume(version: &str, tag: &str) -> Self {
        Self::build(version, tag, true)
    }

    fn build(version: &str, tag: &str, named_volume: bool) -> Self {
        // Asked first: a missing registry fails the test before it starts anything to leak.
        let registry = registry();
        let dir = tempfile::tempdir().expect("tempdir");
        let unique = dir
            .path()
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "");
        let project = format!("hs{unique}");
        let p = |s: &str| dir.path().join(s).display().to_string();
        let pubkey = sim(&["keygen", "--out", &p("keys")]);
        let (feed, feed_addr) = start_feed(dir.path());
        let sb = ComposeSandbox {
            repo: format!("{registry}/{unique}/headscale"),
            project,
            port: free_port(),
            dir,
            feed,
            feed_addr,
            pubkey,
            extra_top: String::new(),
            smoke_timeout: "30s".into(),
            command: "podman-compose".into(),
            named_volume,
        };
        let proj = sb.project_dir();
        std::fs::create_dir_all(proj.join("config")).expect("config dir");
        std::fs::create_dir_all(proj.join("data")).expect("data dir");
        std::fs::write(
            proj.join("config/config.yaml"),
            upstream_config(
                &format!("http://127.0.0.1:{}", sb.port),
                "0.0.0.0:8080",
                "127.0.0.1:9090",
                "127.0.0.1:50443",
            ),
        )
        .expect("config");
        std::fs::write(proj.join("config/derp.yaml"), OFFLINE_DERP).expect("derp");
        sb.push(version, version);
        if tag != version {
            sb.push(version, tag);
        }
        sb.write_compose(tag);
        sb.write_config();
        sb.compose(&["up", "-d"]);
        sb.wait_healthy();
        sb
    }

    pub fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    pub fn project_dir(&self) -> PathBuf {
        self.path(&self.project)
    }

    pub fn compose_file(&self) -> PathBuf {
        self.project_dir().join("compose.yaml")
    }

    /// Pushes the rig's image of `version` into this sandbox's repository as `tag`.
    pub fn push(&self, version: &str, tag: &str) {
        self.push_image(
            &format!("localhost/headwarden-rig/headscale:{version}"),
            tag,
        );
    }

    /// Pushes a local image into this sandbox's repository as `tag`.
    pub fn push_image(&self, local: &str, tag: &str) {
        podman(&[
            "push",
            "-q",
            "--tls-verify=false",
            local,
            &format!("docker://{}:{tag}", self.repo),
        ]);
    }

    /// Builds an image `FROM` the rig's `version` with the Containerfile `lines` after it (and
    /// `files` in its context), and pushes it as `tag`.
    pub fn push_variant(&self, version: &str, tag: &str, lines: &str, files: &[(&str, &str)]) {
        let ctx = self.path(&format!("variant-{tag}"));
        std::fs::create_dir_all(&ctx).expect("ctx");
        for (name, content) in files {
            std::fs::write(ctx.join(name), content).expect("context file");
        }
        std::fs::write(
            ctx.join("Containerfile"),
            format!("FROM localhost/headwarden-rig/headscale:{version}\n{lines}\n"),
        )
        .expect("containerfile");
        let local = format!("localhost/{}-variant:{tag}", self.project);
        podman(&["build", "-q", "-t", &local, &ctx.display().to_string()]);
        self.push_image(&local, tag);
        podman(&["untag", &local, &local]);
    }

    pub fn write_compose(&self, tag: &str) {
        let (data, volumes) = if self.named_volume {
            ("headscale-data", "volumes:\n  headscale-data: {}\n")
        } else {
            ("./data", "")
        };
        let text = format!(
            "# Headscale on this host (the admin's own comments stay)\nservices:\n  headscale:\n    image: {repo}:{tag}  # upgraded by headwarden\n    restart: unless-stopped\n    command: serve\n    volumes:\n      - ./config:/etc/headscale\n      - {data}:/var/lib/headscale\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n    environment:\n      - HEADSCALE_LOG_LEVEL=info\n{volumes}",
            repo = self.repo,
            port = self.port
        );
        std::fs::write(self.compose_file(), text).expect("compose file");
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("headwarden.yaml")
    }

    pub fn write_config(&self) {
        let r = self.dir.path().display();
        let text = format!(
            "state_dir: {r}/state\nrelease:\n  api_url: http://{addr}\n  allow_insecure_http: true\n  min_age: 1d\n  minisign_public_key: {key}\nheadscale:\n  install:\n    kind: compose\n    file: {file}\n    service: headscale\n    command: [{command}]\n    image: {repo}\n  config: /etc/headscale/config.yaml\nsmoke:\n  timeout: {timeout}\n{top}",
            addr = self.feed_addr,
            key = self.pubkey,
            file = self.compose_file().display(),
            repo = self.repo,
            command = self.command,
            timeout = self.smoke_timeout,
            top = self.extra_top
        );
        std::fs::write(self.config_path(), text).expect("config");
    }

    /// Publishes release `version` in the feed (the real binary as its asset, signed).
    pub fn release(&self, version: &str) {
        publish(self.dir.path(), version, &crate::headscale(version), None);
    }

    pub fn compose(&self, args: &[&str]) -> String {
        let file = self.compose_file().display().to_string();
        let out = Command::new("podman-compose")
            .args(["-f", &file])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("podman-compose");
        assert!(
            out.status.success(),
            "podman-compose {args:?}: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn hw(&self, args: &[&str]) -> Output {
        self.hw_env(args, &[])
    }

    pub fn hw_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        run_hw(&self.config_path(), args, env)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn wait_healthy(&self) {
        crate::wait_for_health(&self.addr(), "compose production", || self.logs());
    }

    /// `/version` of what answers on production's port ("none" when nothing answers; 0.26 has
    /// no /version and answers with its CLI's version instead).
    pub fn served_version(&self) -> String {
        match crate::http_get(&self.addr(), "/version") {
            Some(body) => match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(v) => v["version"].as_str().unwrap_or("unparsable").to_string(),
                Err(_) => format!("unparsable: {body}"),
            },
            None if crate::http_get(&self.addr(), "/health").is_some() => {
                format!("v{}", self.cli_version())
            }
            None => "none".into(),
        }
    }

    fn cli_version(&self) -> String {
        self.exec(&["version"])
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .trim_start_matches('v')
            .to_string()
    }

    /// The service's container (running or not).
    pub fn containers(&self) -> Vec<String> {
        podman(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--format",
            "{{.Names}}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Staging containers of this sandbox's repository (`name image` per line).
    pub fn staging_containers(&self) -> Vec<String> {
        // Not `podman()`: teardown calls this too, and must not panic while unwinding.
        let out = Command::new("podman")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=io.headwarden.staging",
                "--format",
                "{{.Names}} {{.Image}}",
            ])
            .output()
            .expect("run podman");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&self.repo))
            .map(str::to_string)
            .collect()
    }

    /// `headscale ARGS` inside production's container.
    pub fn exec(&self, args: &[&str]) -> String {
        let name = format!("{}_headscale_1", self.project);
        let mut all = vec!["exec", &name, "/ko-app/headscale"];
        all.extend_from_slice(args);
        podman(&all)
    }

    /// Production's CLI with `-o json`, parsed.
    pub fn exec_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.exec(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    pub fn logs(&self) -> String {
        let name = format!("{}_headscale_1", self.project);
        let out = Command::new("podman")
            .args(["logs", "--tail", "20", &name])
            .output();
        out.map(|o| text(&o)).unwrap_or_default()
    }

    /// The image line of the compose file.
    pub fn image_line(&self) -> String {
        std::fs::read_to_string(self.compose_file())
            .expect("compose file")
            .lines()
            .find(|l| l.trim_start().starts_with("image:"))
            .expect("image line")
            .to_string()
    }

    /// Production's config file on the host.
    pub fn headscale_config(&self) -> PathBuf {
        self.project_dir().join("config/config.yaml")
    }

    /// The text of production's config (for variants that change one key).
    pub fn headscale_config_text(&self) -> String {
        std::fs::read_to_string(self.headscale_config()).expect("config")
    }

    /// Production's data directory on the host: `./data`, or the named volume's mount point.
    pub fn data_dir(&self) -> PathBuf {
        if self.named_volume {
            PathBuf::from(podman(&[
                "volume",
                "inspect",
                "--format",
                "{{.Mountpoint}}",
                &self.volume(),
            ]))
        } else {
            self.project_dir().join("data")
        }
    }

    fn volume(&self) -> String {
        format!("{}_headscale-data", self.project)
    }

    pub fn db(&self) -> PathBuf {
        self.data_dir().join("db.sqlite")
    }

    pub fn login_server(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn client_dir(&self, name: &str) -> PathBuf {
        self.path(&format!("clients/{name}"))
    }
}

impl Drop for ComposeSandbox {
    fn drop(&mut self) {
        let file = self.compose_file().display().to_string();
        let _ = Command::new("podman-compose")
            .args(["-f", &file, "down"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let quiet = |args: &[&str]| {
            let _ = Command::new("podman")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        // Staging containers of this sandbox's image, the project's network and its images.
        for line in self.staging_containers() {
            if let Some((name, _)) = line.split_once(' ') {
                quiet(&["rm", "-f", name]);
            }
        }
        if self.named_volume {
            quiet(&["volume", "rm", "-f", &self.volume()]);
        }
        let network = format!("{}_default", self.project);
        quiet(&["network", "rm", "-f", &network]);
        // CNI's host-local IPAM keeps the network's leases here; the network is gone with it.
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&network));
        // Only this sandbox's names: the images themselves are the rig's, shared by every test.
        if let Ok(out) = Command::new("podman")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
        {
            for image in String::from_utf8_lossy(&out.stdout).lines() {
                if image.starts_with(&format!("{}:", self.repo)) {
                    quiet(&["untag", image, image]);
                }
            }
        }
        // Untagged, they dangle: the suite's private storage holds nothing else that dangles.
        quiet(&["image", "prune", "-f"]);
        let _ = self.feed.kill();
        let _ = self.feed.wait();
    }
}
