//! Who this pod is and where things are: read once from the environment the
//! StatefulSet builder sets (see the operator's `statefulset.rs`).

use std::env;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ordinal_crds::names::{self, env as e, paths};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "environment variable {name} is not set; the pod template sets it, so this pod was not created by Ordinal"
    )]
    Missing { name: &'static str },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("no PostgreSQL server binaries found: set ORDINAL_PG_BIN, or put initdb on PATH")]
    NoPostgres,
}

/// Where the cluster state comes from.
#[derive(Clone, Debug)]
pub enum StateSourceKind {
    /// The PostgresCluster, read through the API with in-cluster config.
    Kubernetes,
    /// A JSON file (tests and local runs).
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub pod: String,
    pub namespace: String,
    pub cluster: String,
    pub service: String,
    pub pgdata: PathBuf,
    pub superuser_dir: PathBuf,
    pub replication_dir: PathBuf,
    /// Unix socket directory of the local server.
    pub socket_dir: PathBuf,
    pub port: u16,
    pub pg_bin: PathBuf,
    pub state: StateSourceKind,
    /// Give up reading the state after this long (None: keep trying).
    pub state_timeout: Option<Duration>,
    /// How long a replica waits for its primary to accept connections.
    pub primary_wait: Duration,
    pub max_ready_lag_bytes: Option<i64>,
    /// A primary that reaches neither the API server nor any standby for
    /// this long stops (spec.failover.isolationSeconds).
    pub isolation: Duration,
    /// Where `run` serves the kubelet's probes, if anywhere.
    pub health_address: Option<std::net::SocketAddr>,
    /// A new cluster is restored from a backup instead of initdb.
    pub recovery: Option<Recovery>,
    /// While the pod mounts the servers' certificate: its CA.
    pub tls_ca: Option<PathBuf>,
    /// Whether connections to the primary require TLS and verify it
    /// (`replication-sslmode` in the cluster's ConfigMap): false while TLS
    /// is being turned on or off (see [`Settings::replication_ca`]).
    pub replication_tls: bool,
}

/// `spec.bootstrap.recovery`, as the pod is told of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// A base backup's id; else the latest (before the target time).
    pub backup: Option<String>,
    pub target: RecoveryTarget,
}

/// How far the restored cluster replays the source's WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// To the end of the archive.
    Latest,
    Time(k8s_openapi::jiff::Timestamp),
    Lsn(String),
    /// A restore point (`pg_create_restore_point`).
    Name(String),
}

/// The recovery the environment names, if any. Each value is checked as
/// the CRD checks it: it goes on postgres' command line.
fn recovery_from_env() -> Result<Option<Recovery>, SettingsError> {
    if var(e::RECOVERY_URL).is_none() {
        return Ok(None);
    }
    let checked = |name: &'static str, allowed: fn(char) -> bool, reason: &'static str| {
        var(name)
            .map(|value| {
                if !value.is_empty() && value.len() <= 64 && value.chars().all(allowed) {
                    Ok(value)
                } else {
                    Err(SettingsError::Invalid {
                        name,
                        value,
                        reason,
                    })
                }
            })
            .transpose()
    };
    let time = checked(
        e::RECOVERY_TARGET_TIME,
        |c| c.is_ascii_alphanumeric() || "-:.+ ".contains(c),
        "not an RFC 3339 time",
    )?;
    let lsn = checked(
        e::RECOVERY_TARGET_LSN,
        |c| c.is_ascii_hexdigit() || c == '/',
        "not an LSN (0/3000028)",
    )?;
    let name = checked(
        e::RECOVERY_TARGET_NAME,
        |c| c.is_ascii_alphanumeric() || "-_.:".contains(c),
        "a restore point name of letters, digits, '-', '_', '.' and ':'",
    )?;
    let backup = checked(
        e::RECOVERY_BACKUP,
        |c| c.is_ascii_alphanumeric(),
        "not a backup id (20261205T213000Z)",
    )?;
    let target = match (time, lsn, name) {
        (None, None, None) => RecoveryTarget::Latest,
        (Some(t), None, None) => {
            RecoveryTarget::Time(t.parse().map_err(|_| SettingsError::Invalid {
                name: e::RECOVERY_TARGET_TIME,
                value: t,
                reason: "not an RFC 3339 time (2026-12-05T21:30:00Z)",
            })?)
        }
        (None, Some(l), None) => RecoveryTarget::Lsn(l),
        (None, None, Some(n)) => RecoveryTarget::Name(n),
        _ => {
            return Err(SettingsError::Invalid {
                name: e::RECOVERY_TARGET_TIME,
                value: "several".to_owned(),
                reason: "at most one recovery target: a time, an LSN or a name",
            });
        }
    };
    Ok(Some(Recovery { backup, target }))
}

fn var(name: &'static str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn required(name: &'static str) -> Result<String, SettingsError> {
    var(name).ok_or(SettingsError::Missing { name })
}

fn parsed<T: std::str::FromStr>(
    name: &'static str,
    reason: &'static str,
) -> Result<Option<T>, SettingsError> {
    var(name)
        .map(|value| {
            value.parse().map_err(|_| SettingsError::Invalid {
                name,
                value,
                reason,
            })
        })
        .transpose()
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let pod = required(e::POD_NAME)?;
        let cluster = required(e::CLUSTER)?;
        if names::ordinal_of(&cluster, &pod).is_none() {
            return Err(SettingsError::Invalid {
                name: e::POD_NAME,
                value: pod,
                reason: "not a pod of ORDINAL_CLUSTER (<cluster>-<ordinal>)",
            });
        }
        let state = match var("ORDINAL_STATE_FILE") {
            Some(path) => StateSourceKind::File(path.into()),
            None => StateSourceKind::Kubernetes,
        };
        Ok(Self {
            namespace: var(e::POD_NAMESPACE).unwrap_or_else(|| "default".to_owned()),
            service: var(e::SERVICE).unwrap_or_else(|| names::headless_service(&cluster)),
            pgdata: var(e::PGDATA)
                .unwrap_or_else(|| paths::PGDATA.to_owned())
                .into(),
            superuser_dir: var(e::SUPERUSER_DIR)
                .unwrap_or_else(|| paths::SUPERUSER_SECRET_DIR.to_owned())
                .into(),
            replication_dir: var(e::REPLICATION_DIR)
                .unwrap_or_else(|| paths::REPLICATION_SECRET_DIR.to_owned())
                .into(),
            socket_dir: var(e::PGHOST)
                .unwrap_or_else(|| paths::RUN_DIR.to_owned())
                .into(),
            port: parsed(e::PGPORT, "not a port number")?.unwrap_or(names::POSTGRES_PORT as u16),
            pg_bin: pg_bin_dir()?,
            state_timeout: parsed::<u64>(
                "ORDINAL_STATE_TIMEOUT_SECONDS",
                "not a number of seconds",
            )?
            .map(Duration::from_secs),
            max_ready_lag_bytes: parsed(e::MAX_READY_LAG_BYTES, "not a number of bytes")?,
            isolation: Duration::from_secs(
                parsed(e::ISOLATION_SECONDS, "not a number of seconds")?.unwrap_or(10),
            ),
            health_address: parsed(e::HEALTH_ADDRESS, "not an address and port (0.0.0.0:8008)")?,
            recovery: recovery_from_env()?,
            tls_ca: var(e::TLS_CA).map(PathBuf::from),
            replication_tls: replication_tls(Path::new(paths::CONFIG_DIR)),
            primary_wait: Duration::from_secs(
                parsed("ORDINAL_PRIMARY_WAIT_SECONDS", "not a number of seconds")?.unwrap_or(300),
            ),
            pod,
            cluster,
            state,
        })
    }

    /// The CA every connection to the primary verifies it against
    /// (`sslmode=verify-full`), once TLS is required; before, libpq's
    /// default (TLS when the primary offers it).
    pub fn replication_ca(&self) -> Option<&Path> {
        self.tls_ca.as_deref().filter(|_| self.replication_tls)
    }

    /// A PostgreSQL tool of the server's own version.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.pg_bin.join(name)
    }

    /// The directory holding PGDATA (the volume mount).
    pub fn data_mount(&self) -> &Path {
        self.pgdata.parent().unwrap_or(Path::new("/"))
    }

    /// Where a clone or a bootstrap is built before it becomes PGDATA.
    pub fn staging_dir(&self, what: &str) -> PathBuf {
        let name = self
            .pgdata
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pgdata".to_owned());
        self.data_mount().join(format!("{name}.{what}"))
    }
}

/// The PostgreSQL bin directory: ORDINAL_PG_BIN, else where `initdb` on
/// PATH really lives (Debian links a few tools into /usr/local/bin, not all
/// of them), else the newest /usr/lib/postgresql/<major>/bin.
pub fn pg_bin_dir() -> Result<PathBuf, SettingsError> {
    if let Some(dir) = var("ORDINAL_PG_BIN") {
        return Ok(dir.into());
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if let Ok(real) = std::fs::canonicalize(&initdb)
                && let Some(bin) = real.parent()
                && bin.join("pg_rewind").exists()
            {
                return Ok(bin.to_path_buf());
            }
        }
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    majors.sort();
    majors
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(SettingsError::NoPostgres)
}

/// Whether the ConfigMap mounted at `config_dir` says connections to the
/// primary verify it. A ConfigMap without the key (an older operator's)
/// means yes: that operator mounted the certificate only with TLS on.
fn replication_tls(config_dir: &Path) -> bool {
    match std::fs::read_to_string(config_dir.join(names::CONFIG_REPLICATION_SSLMODE)) {
        Ok(mode) => mode.trim() == "verify-full",
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configmap_says_when_the_primary_is_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            replication_tls(dir.path()),
            "an older operator's ConfigMap has no key: TLS was on whenever mounted"
        );
        let key = dir.path().join(names::CONFIG_REPLICATION_SSLMODE);
        std::fs::write(&key, "prefer").expect("write");
        assert!(!replication_tls(dir.path()));
        std::fs::write(&key, "verify-full\n").expect("write");
        assert!(replication_tls(dir.path()));
    }
}
