//! The suite's configuration, from the environment.

use std::path::PathBuf;
use std::time::Duration;

/// Who runs the operator during the tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorMode {
    /// The harness runs the operator binary of this build as a child process.
    Spawn,
    /// An operator already runs in the cluster.
    External,
}

/// The suite's configuration, from the environment (see the module doc).
#[derive(Clone, Debug)]
pub struct Config {
    pub postgres_image: String,
    pub ordinal_image: String,
    pub operator: OperatorMode,
    pub storage_class: Option<String>,
    pub timeout: Duration,
    pub keep: bool,
    /// The node's containerd state directory, through which the suite
    /// signals processes in containers from the node.
    pub containerd_state: Option<PathBuf>,
}

impl Config {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let operator = match var("ORDINAL_E2E_OPERATOR").as_deref() {
            None | Some("spawn") => OperatorMode::Spawn,
            Some("external") => OperatorMode::External,
            Some(other) => panic!("ORDINAL_E2E_OPERATOR={other}: expected `spawn` or `external`"),
        };
        let timeout = match var("ORDINAL_E2E_TIMEOUT_SECONDS") {
            None => 600,
            Some(s) => s
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .unwrap_or_else(|| {
                    panic!("ORDINAL_E2E_TIMEOUT_SECONDS={s}: expected a positive number of seconds")
                }),
        };
        Self {
            postgres_image: var("ORDINAL_E2E_POSTGRES_IMAGE")
                .unwrap_or_else(|| "postgres:17".to_owned()),
            ordinal_image: var("ORDINAL_E2E_IMAGE").unwrap_or_else(|| {
                concat!("ghcr.io/ordinal-dev/ordinal:", env!("CARGO_PKG_VERSION")).to_owned()
            }),
            operator,
            storage_class: var("ORDINAL_E2E_STORAGE_CLASS"),
            timeout: Duration::from_secs(timeout),
            keep: var("ORDINAL_E2E_KEEP").as_deref() == Some("1"),
            containerd_state: var("ORDINAL_E2E_CONTAINERD_STATE").map(PathBuf::from),
        }
    }
}
