//! Headscale's config file: the keys headwarden reads, and the derivation of a staging config.
//!
//! A staging instance must not collide with production: every listener, the unix socket, the
//! database and the noise key move into `state_dir/staging`; DERP comes from an offline map
//! (Headscale refuses to start with an empty DERP map); update checks and ACME are off.
//! Production's noise key is *copied* so the staging instance presents the same public key,
//! which is what the noise-key smoke check compares.

use std::path::{Path, PathBuf};

use crate::settings;
use crate::settings::Secret;
use serde_yaml_ng::{Mapping, Value};

#[derive(Debug, thiserror::Error)]
pub enum HeadscaleConfigError {
    #[error("cannot read Headscale config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Headscale config {path} is not valid YAML: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("Headscale config {path}: {detail}")]
    Unsupported { path: PathBuf, detail: String },
}

/// Where Headscale keeps its data (`database.*`, the file and the environment as viper reads
/// them; relative SQLite paths against the config file's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(Postgres),
}

/// `database.postgres.*` as Headscale builds its connection from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postgres {
    /// A host name, or a directory holding the server's unix socket.
    pub host: String,
    /// `None` when unset or 0: not in Headscale's DSN (the driver's default or `PGPORT`).
    pub port: Option<u16>,
    pub name: String,
    pub user: String,
    /// `pass` (never printed; headwarden's own clients get it as `PGPASSWORD`).
    pub password: Option<Secret>,
    /// The `sslmode` Headscale's DSN carries: `false` is `disable`, `true` adds none (the
    /// driver's `prefer`), anything else is passed through.
    pub sslmode: Option<String>,
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "sqlite {}", path.display()),
            Database::Postgres(p) => {
                write!(
                    f,
                    "postgres database {} as {} at {}",
                    p.name, p.user, p.host
                )?;
                match p.port {
                    Some(port) => write!(f, ":{port}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What headwarden needs to know about a Headscale instance's config.
#[derive(Debug, Clone)]
pub struct HeadscaleConfig {
    pub path: PathBuf,
    pub root: Value,
    pub listen_addr: String,
    pub unix_socket: PathBuf,
    pub database: Database,
    pub noise_key_path: PathBuf,
    /// Headscale terminates TLS itself (cert files or Let's Encrypt): check it through server_url.
    pub serves_tls: bool,
    pub server_url: String,
    /// The `HEADSCALE_*` variables production runs with (its service manager's environment):
    /// Headscale reads them as config keys, over the file (`HEADSCALE_` + the key with `.` as `_`,
    /// upper-cased). Empty until [`HeadscaleConfig::with_env`].
    pub env: std::collections::BTreeMap<String, String>,
}

/// The part of production's `HEADSCALE_*` environment a staging instance runs with: everything
/// but the keys staging sets itself (addresses, socket, database, keys, DERP, TLS, update checks),
/// so staging sees the same configuration without ever touching production's files or ports.
pub fn staging_env(prod: &HeadscaleConfig) -> Vec<(String, String)> {
    const OWN: &[&str] = &[
        "HEADSCALE_SERVER_URL",
        "HEADSCALE_LISTEN_ADDR",
        "HEADSCALE_METRICS_LISTEN_ADDR",
        "HEADSCALE_GRPC_LISTEN_ADDR",
        "HEADSCALE_GRPC_ALLOW_INSECURE",
        "HEADSCALE_UNIX_SOCKET",
        "HEADSCALE_UNIX_SOCKET_PERMISSION",
        "HEADSCALE_DISABLE_CHECK_UPDATES",
        "HEADSCALE_CLI_ADDRESS",
        "HEADSCALE_CONFIG",
    ];
    const OWN_PREFIXES: &[&str] = &[
        "HEADSCALE_DATABASE_",
        "HEADSCALE_NOISE_",
        "HEADSCALE_DERP_",
        "HEADSCALE_TLS_",
    ];
    prod.env
        .iter()
        .filter(|(k, _)| {
            !OWN.contains(&k.as_str()) && !OWN_PREFIXES.iter().any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The environment variable Headscale (viper) reads for `key`: `dns.base_domain` →
/// `HEADSCALE_DNS_BASE_DOMAIN`.
pub fn env_name(key: &str) -> String {
    format!("HEADSCALE_{}", key.replace('.', "_").to_uppercase())
}

/// Config keys the audit reads from the admin's file (what the file says, not the service's
/// environment: a finding names a line the admin can change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKey {
    DerpServerEnabled,
    DerpServerPrivateKeyPath,
    DnsMagicDns,
    DnsOverrideLocalDns,
    DnsNameserversGlobal,
    GrpcAllowInsecure,
    GrpcListenAddr,
    LogLevel,
    MetricsListenAddr,
    PolicyMode,
    PolicyPath,
    TlsKeyPath,
    UnixSocketPermission,
}

impl FileKey {
    /// The key as Headscale's config names it.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKey::DerpServerEnabled => "derp.server.enabled",
            FileKey::DerpServerPrivateKeyPath => "derp.server.private_key_path",
            FileKey::DnsMagicDns => "dns.magic_dns",
            FileKey::DnsOverrideLocalDns => "dns.override_local_dns",
            FileKey::DnsNameserversGlobal => "dns.nameservers.global",
            FileKey::GrpcAllowInsecure => "grpc_allow_insecure",
            FileKey::GrpcListenAddr => "grpc_listen_addr",
            FileKey::LogLevel => "log.level",
            FileKey::MetricsListenAddr => "metrics_listen_addr",
            FileKey::PolicyMode => "policy.mode",
            FileKey::PolicyPath => "policy.path",
            FileKey::TlsKeyPath => "tls_key_path",
            FileKey::UnixSocketPermission => "unix_socket_permission",
        }
    }
}

pub fn get<'a>(root: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(root, |cur, part| cur.get(part))
}

pub fn get_str(root: &Value, key: &str) -> Option<String> {
    match get(root, key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl HeadscaleConfig {
    pub fn load(path: &Path) -> Result<Self, HeadscaleConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| HeadscaleConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, HeadscaleConfigError> {
        settings::yaml_guard(text).map_err(|refused| HeadscaleConfigError::Parse {
            path: path.to_path_buf(),
            detail: refused.to_string(),
        })?;
        let root: Value =
            serde_yaml_ng::from_str(text).map_err(|e| HeadscaleConfigError::Parse {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        Self::build(path, root, std::collections::BTreeMap::new())
    }

    /// The same config as production really runs it: its file plus the `HEADSCALE_*`
    /// environment its service manager gives it (the environment wins, as in Headscale).
    pub fn with_env(
        self,
        env: std::collections::BTreeMap<String, String>,
    ) -> Result<Self, HeadscaleConfigError> {
        Self::build(&self.path, self.root, env)
    }

    /// A key's value: from the environment when set there, else from the file.
    pub fn value(&self, key: &str) -> Option<String> {
        self.env
            .get(&env_name(key))
            .cloned()
            .or_else(|| get_str(&self.root, key))
    }

    /// What the file says of `key` (a string, number or boolean, as text).
    pub fn file_value(&self, key: FileKey) -> Option<String> {
        get_str(&self.root, key.as_str())
    }

    /// What the file lists under `key` (the strings of a sequence).
    pub fn file_list(&self, key: FileKey) -> Vec<String> {
        get(&self.root, key.as_str())
            .and_then(Value::as_sequence)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `key` is set, in the file or in the environment.
    pub fn is_set(&self, key: &str) -> bool {
        self.env.contains_key(&env_name(key)) || get(&self.root, key).is_some()
    }

    fn build(
        path: &Path,
        root: Value,
        env: std::collections::BTreeMap<String, String>,
    ) -> Result<Self, HeadscaleConfigError> {
        let lookup = |key: &str| {
            env.get(&env_name(key))
                .cloned()
                .or_else(|| get_str(&root, key))
        };
        let unsupported = |detail: String| HeadscaleConfigError::Unsupported {
            path: path.to_path_buf(),
            detail,
        };
        let required = |key: &str, default: &str| {
            lookup(key)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        // Upstream resolves relative data paths against the config file's directory
        // (`AbsolutePathFromConfigPath`), not against the working directory.
        let config_dir = path.parent().unwrap_or(Path::new("/"));
        let data_path = |key: &str, default: &str| config_dir.join(required(key, default));
        let database = match lookup("database.type").as_deref().unwrap_or("sqlite") {
            "sqlite" | "sqlite3" => Database::Sqlite(data_path(
                "database.sqlite.path",
                "/var/lib/headscale/db.sqlite",
            )),
            "postgres" => Database::Postgres(Postgres {
                host: required("database.postgres.host", ""),
                port: lookup("database.postgres.port")
                    .and_then(|p| p.trim().parse::<u16>().ok())
                    .filter(|p| *p != 0),
                name: required("database.postgres.name", ""),
                user: required("database.postgres.user", ""),
                password: lookup("database.postgres.pass")
                    .filter(|p| !p.is_empty())
                    .map(Secret::new),
                sslmode: match lookup("database.postgres.ssl").as_deref() {
                    None | Some("false") => Some("disable".to_string()),
                    Some("true") => None,
                    Some(mode) => Some(mode.to_string()),
                },
            }),
            other => {
                return Err(unsupported(format!(
                "database.type is {other:?}, which Headscale itself refuses (sqlite or postgres)"
            )))
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            listen_addr: required("listen_addr", "127.0.0.1:8080"),
            unix_socket: PathBuf::from(required(
                "unix_socket",
                "/var/run/headscale/headscale.sock",
            )),
            database,
            noise_key_path: data_path(
                "noise.private_key_path",
                "/var/lib/headscale/noise_private.key",
            ),
            serves_tls: !lookup("tls_cert_path").unwrap_or_default().is_empty()
                || !lookup("tls_letsencrypt_hostname")
                    .unwrap_or_default()
                    .is_empty(),
            server_url: required("server_url", "").trim_end_matches('/').to_string(),
            root,
            env,
        })
    }

    /// Production's SQLite database; a PostgreSQL one is refused with the reason (staging,
    /// backups and restores copy a SQLite file).
    pub fn sqlite_path(&self) -> Result<&Path, HeadscaleConfigError> {
        match &self.database {
            Database::Sqlite(path) => Ok(path),
            Database::Postgres(_) => Err(HeadscaleConfigError::Unsupported {
                path: self.path.clone(),
                detail: format!(
                    "{}: headwarden stages, backs up and restores SQLite databases only so far; it does not upgrade this server (status, keys and the audit work)",
                    self.database
                ),
            }),
        }
    }

    /// The directory production's own data lives in: the SQLite database's, else the noise
    /// key's (its owner is production's account).
    pub fn data_dir(&self) -> Option<&Path> {
        match &self.database {
            Database::Sqlite(path) => path.parent(),
            Database::Postgres(_) => self.noise_key_path.parent(),
        }
    }

    /// No ACL policy restricts what nodes see: no policy file (`policy.path`, before 0.23
    /// `acl_policy_path`) and not `policy.mode: database` (whose policy headwarden cannot read).
    pub fn open_policy(&self) -> bool {
        let set = |k: &str| self.value(k).is_some_and(|v| !v.trim().is_empty());
        !set("policy.path")
            && !set("acl_policy_path")
            && self.value("policy.mode").as_deref() != Some("database")
    }

    /// Base URL for HTTP checks: the listen address (wildcard host replaced by loopback), or
    /// `server_url` when Headscale itself serves TLS (its certificate names that host).
    pub fn http_base(&self) -> String {
        if self.serves_tls && self.server_url.starts_with("https://") {
            self.server_url.clone()
        } else {
            base_url(&self.listen_addr)
        }
    }
}

pub fn base_url(listen_addr: &str) -> String {
    let addr = listen_addr
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    let addr = if addr.starts_with(':') {
        format!("127.0.0.1{addr}")
    } else {
        addr
    };
    format!("http://{addr}")
}

/// Where a staging instance lives and listens.
#[derive(Debug, Clone)]
pub struct StagingLayout {
    pub dir: PathBuf,
    pub http_port: u16,
    pub metrics_port: u16,
    pub grpc_port: u16,
    pub derp_map: PathBuf,
}

impl StagingLayout {
    /// What the candidate writes (its database, key and socket): owned by the account it runs
    /// as. Everything else in `dir` (config, DERP map, logs) is root's, so nothing the candidate
    /// leaves behind is later written through.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn database(&self) -> PathBuf {
        self.data().join("db.sqlite")
    }
    pub fn noise_key(&self) -> PathBuf {
        self.data().join("noise_private.key")
    }
    pub fn socket(&self) -> PathBuf {
        self.data().join("headscale.sock")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }
}

fn set(root: &mut Value, key: &str, value: Value) {
    let mut cur = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = cur else { return };
        let k = Value::String((*part).to_string());
        if i == parts.len() - 1 {
            map.insert(k, value);
            return;
        }
        cur = map
            .entry(k)
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
}

/// Deep-merges `overlay` into `base` (maps merge; anything else replaces).
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Production's config with everything that could collide moved into the staging layout.
pub fn derive_staging(
    prod: &HeadscaleConfig,
    layout: &StagingLayout,
    overlay: Option<&Value>,
) -> Value {
    let mut v = prod.root.clone();
    let s = |x: String| Value::String(x);
    set(
        &mut v,
        "server_url",
        s(format!("http://127.0.0.1:{}", layout.http_port)),
    );
    set(
        &mut v,
        "listen_addr",
        s(format!("127.0.0.1:{}", layout.http_port)),
    );
    set(
        &mut v,
        "metrics_listen_addr",
        s(format!("127.0.0.1:{}", layout.metrics_port)),
    );
    set(
        &mut v,
        "grpc_listen_addr",
        s(format!("127.0.0.1:{}", layout.grpc_port)),
    );
    set(&mut v, "grpc_allow_insecure", Value::Bool(false));
    set(
        &mut v,
        "unix_socket",
        s(layout.socket().display().to_string()),
    );
    set(&mut v, "unix_socket_permission", s("0700".into()));
    set(&mut v, "database.type", s("sqlite".into()));
    set(
        &mut v,
        "database.sqlite.path",
        s(layout.database().display().to_string()),
    );
    set(
        &mut v,
        "noise.private_key_path",
        s(layout.noise_key().display().to_string()),
    );
    set(&mut v, "derp.server.enabled", Value::Bool(false));
    set(&mut v, "derp.urls", Value::Sequence(vec![]));
    set(
        &mut v,
        "derp.paths",
        Value::Sequence(vec![s(layout.derp_map.display().to_string())]),
    );
    set(&mut v, "derp.auto_update_enabled", Value::Bool(false));
    set(&mut v, "disable_check_updates", Value::Bool(true));
    set(&mut v, "tls_letsencrypt_hostname", s(String::new()));
    set(&mut v, "tls_cert_path", s(String::new()));
    set(&mut v, "tls_key_path", s(String::new()));
    set(&mut v, "cli.address", s(String::new()));
    if let Some(o) = overlay {
        merge(&mut v, o);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_moves_every_shared_resource() {
        let prod = HeadscaleConfig::parse(
            Path::new("/etc/headscale/config.yaml"),
            "server_url: https://hs.example.com\nlisten_addr: 0.0.0.0:443\nmetrics_listen_addr: 127.0.0.1:9090\nunix_socket: /var/run/headscale/headscale.sock\ndatabase:\n  type: sqlite\n  sqlite:\n    path: /var/lib/headscale/db.sqlite\nnoise:\n  private_key_path: /var/lib/headscale/noise_private.key\ntls_letsencrypt_hostname: hs.example.com\nderp:\n  urls: [https://controlplane.tailscale.com/derpmap/default]\n",
        )
        .expect("parse");
        assert_eq!(
            prod.http_base(),
            "https://hs.example.com",
            "Headscale serves TLS itself"
        );
        let layout = StagingLayout {
            dir: "/s".into(),
            http_port: 1,
            metrics_port: 2,
            grpc_port: 3,
            derp_map: "/s/derp.yaml".into(),
        };
        let overlay: Value = serde_yaml_ng::from_str("log:\n  level: debug\n").expect("yaml");
        let staged = HeadscaleConfig::parse(
            Path::new("/s/config.yaml"),
            &serde_yaml_ng::to_string(&derive_staging(&prod, &layout, Some(&overlay)))
                .expect("ser"),
        )
        .expect("reparse");
        assert_eq!(staged.listen_addr, "127.0.0.1:1");
        assert_eq!(
            staged.http_base(),
            "http://127.0.0.1:1",
            "staging serves plain http on loopback"
        );
        assert_eq!(
            staged.database,
            Database::Sqlite(PathBuf::from("/s/data/db.sqlite"))
        );
        assert_eq!(staged.unix_socket, PathBuf::from("/s/data/headscale.sock"));
        assert_eq!(
            staged.noise_key_path,
            PathBuf::from("/s/data/noise_private.key")
        );
        assert_eq!(
            get_str(&staged.root, "tls_letsencrypt_hostname").as_deref(),
            Some("")
        );
        assert_eq!(get_str(&staged.root, "log.level").as_deref(), Some("debug"));
        assert_eq!(
            get_str(&staged.root, "database.sqlite.path").as_deref(),
            Some("/s/data/db.sqlite")
        );
    }

    #[test]
    fn postgres_is_read_as_headscale_reads_it_and_refused_for_copies() {
        let c = HeadscaleConfig::parse(
            Path::new("/etc/headscale/config.yaml"),
            "database:\n  type: postgres\n  postgres:\n    host: db\n    port: 5432\n    name: hs\n    user: headscale\n    pass: secret\n",
        )
        .expect("postgres");
        let mut env = std::collections::BTreeMap::new();
        env.insert(
            "HEADSCALE_DATABASE_POSTGRES_NAME".to_string(),
            "prod".to_string(),
        );
        env.insert(
            "HEADSCALE_DATABASE_POSTGRES_PORT".to_string(),
            "0".to_string(),
        );
        let c = c.with_env(env).expect("env");
        assert_eq!(
            c.database,
            Database::Postgres(Postgres {
                host: "db".into(),
                port: None,
                name: "prod".into(),
                user: "headscale".into(),
                password: Some(Secret::new("secret")),
                sslmode: Some("disable".into()),
            })
        );
        let refused = c.sqlite_path().expect_err("no file to copy").to_string();
        assert!(
            refused.contains("postgres database prod as headscale at db"),
            "{refused}"
        );
        assert!(!refused.contains("secret") && !format!("{:?}", c.database).contains("secret"));
        let e = HeadscaleConfig::parse(Path::new("c.yaml"), "database:\n  type: mysql\n")
            .expect_err("mysql");
        assert!(e.to_string().contains("mysql"), "{e}");
    }
}

/// A config problem that makes a given Headscale version refuse to start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Incompatibility {
    /// The config key, or its `HEADSCALE_*` variable when only the environment sets it.
    pub key: String,
    pub since: semver::Version,
    pub fix: String,
}

/// Config keys that stop a release from starting (upstream's deprecator and CHANGELOG; see
/// shared/HEADSCALE.md §4). Checked before anything is downloaded, so an admin hears "change
/// this key" instead of reading a failed staging log.
pub fn incompatibilities(cfg: &HeadscaleConfig, target: &semver::Version) -> Vec<Incompatibility> {
    let present = |key: &str| cfg.is_set(key);
    let at_least = |minor: u64| (target.major, target.minor) >= (0, minor);
    let mut out = Vec::new();
    let mut add = |key: &str, minor: u64, fix: &str| {
        let in_file = get(&cfg.root, key).is_some();
        out.push(Incompatibility {
            key: if in_file || !cfg.env.contains_key(&env_name(key)) {
                key.to_string()
            } else {
                format!("{} (in the service's environment)", env_name(key))
            },
            since: semver::Version::new(0, minor, 0),
            fix: fix.to_string(),
        })
    };
    if at_least(23) {
        for (old, new) in [
            ("dns_config", "dns"),
            ("acl_policy_path", "policy.path"),
            ("db_type", "database.type"),
            ("db_path", "database.sqlite.path"),
            ("ip_prefixes", "prefixes"),
        ] {
            if present(old) && !present(new) {
                add(old, 23, &format!("renamed to `{new}`"));
            }
        }
    }
    if at_least(26) {
        for key in ["oidc.strip_email_domain", "oidc.map_legacy_users"] {
            if present(key) {
                add(key, 26, "removed; delete the key");
            }
        }
        let override_local = cfg
            .value("dns.override_local_dns")
            .is_none_or(|v| v == "true");
        let has_global = matches!(get(&cfg.root, "dns.nameservers.global"), Some(Value::Sequence(s)) if !s.is_empty())
            || cfg
                .env
                .get(&env_name("dns.nameservers.global"))
                .is_some_and(|v| !v.trim().is_empty());
        if override_local && !has_global {
            add(
                "dns.nameservers.global",
                26,
                "required when dns.override_local_dns is true (its default); add nameservers or set override_local_dns: false",
            );
        }
    }
    if at_least(29) {
        if present("randomize_client_port") {
            add(
                "randomize_client_port",
                29,
                "fatal even when false; delete it and set `randomizeClientPort` at the top level of the policy instead",
            );
        }
        if present("oidc.expiry") {
            add("oidc.expiry", 29, "removed; use node.expiry");
        }
    }
    out
}

#[cfg(test)]
mod incompatibility_tests {
    use super::*;

    fn cfg(text: &str) -> HeadscaleConfig {
        HeadscaleConfig::parse(Path::new("c.yaml"), text).expect("parse")
    }

    #[test]
    fn known_breaking_keys_per_target() {
        let base = "dns:\n  nameservers:\n    global: [1.1.1.1]\n";
        let c = cfg(&format!("{base}randomize_client_port: false\n"));
        assert!(incompatibilities(&c, &semver::Version::new(0, 28, 0)).is_empty());
        let found = incompatibilities(&c, &semver::Version::new(0, 29, 2));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, "randomize_client_port");
        let c = cfg("dns:\n  override_local_dns: true\n");
        assert_eq!(
            incompatibilities(&c, &semver::Version::new(0, 26, 0))[0].key,
            "dns.nameservers.global"
        );
        let c = cfg("dns:\n  override_local_dns: false\n");
        assert!(incompatibilities(&c, &semver::Version::new(0, 26, 0)).is_empty());
        let c = cfg(&format!(
            "{base}acl_policy_path: /etc/headscale/acl.hujson\n"
        ));
        assert_eq!(
            incompatibilities(&c, &semver::Version::new(0, 27, 0))[0].key,
            "acl_policy_path"
        );
    }
}
