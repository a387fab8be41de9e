//! The cluster state, read through one small seam: the PostgresCluster's
//! status in Kubernetes, or a JSON file in tests. Nobody guesses a primary:
//! when the state cannot be read, the pod does not start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use kube::{Api, Client};
use ordinal_crds::{PostgresCluster, names};
use serde::Deserialize;

use crate::settings::{Settings, StateSourceKind};

/// What a pod needs to know of its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    /// `status.currentPrimary`: the only source of truth for roles.
    pub current_primary: String,
    /// True once the first primary was initialized.
    pub bootstrapped: bool,
    pub epoch: i64,
}

/// How to reach a pod's PostgreSQL server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create a Kubernetes client from the in-cluster config")]
    Client(#[source] kube::Error),
    #[error("cannot read PostgresCluster {namespace}/{name}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "PostgresCluster {namespace}/{name} has no status.currentPrimary yet: the operator has not chosen a primary"
    )]
    NoPrimary { namespace: String, name: String },
    #[error("cannot read the state file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the state file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("gave up reading the cluster state after {0:?}")]
    Timeout(Duration, #[source] Box<StateError>),
}

/// The state file used by tests: the status fields plus each pod's address.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateFile {
    current_primary: Option<String>,
    #[serde(default)]
    bootstrapped: bool,
    #[serde(default)]
    epoch: i64,
    #[serde(default)]
    endpoints: BTreeMap<String, String>,
}

pub enum StateSource {
    Kubernetes {
        api: Api<PostgresCluster>,
        settings: Settings,
    },
    File {
        path: PathBuf,
        settings: Settings,
    },
}

impl StateSource {
    pub async fn new(settings: &Settings) -> Result<Self, StateError> {
        Ok(match &settings.state {
            StateSourceKind::Kubernetes => {
                let client = Client::try_default().await.map_err(StateError::Client)?;
                Self::Kubernetes {
                    api: Api::namespaced(client, &settings.namespace),
                    settings: settings.clone(),
                }
            }
            StateSourceKind::File(path) => Self::File {
                path: path.clone(),
                settings: settings.clone(),
            },
        })
    }

    fn settings(&self) -> &Settings {
        match self {
            Self::Kubernetes { settings, .. } | Self::File { settings, .. } => settings,
        }
    }

    /// Reads the state once.
    pub async fn read_once(&self) -> Result<ClusterState, StateError> {
        let s = self.settings();
        let no_primary = || StateError::NoPrimary {
            namespace: s.namespace.clone(),
            name: s.cluster.clone(),
        };
        match self {
            Self::Kubernetes { api, settings } => {
                let pgc = api
                    .get(&settings.cluster)
                    .await
                    .map_err(|source| StateError::Read {
                        namespace: settings.namespace.clone(),
                        name: settings.cluster.clone(),
                        source,
                    })?;
                let status = pgc.status.unwrap_or_default();
                Ok(ClusterState {
                    current_primary: status.current_primary.ok_or_else(no_primary)?,
                    bootstrapped: status.bootstrapped,
                    epoch: status.epoch,
                })
            }
            Self::File { path, .. } => {
                let file = read_file(path)?;
                Ok(ClusterState {
                    current_primary: file.current_primary.ok_or_else(no_primary)?,
                    bootstrapped: file.bootstrapped,
                    epoch: file.epoch,
                })
            }
        }
    }

    /// Reads the state, retrying with a jittered exponential backoff (1 s
    /// up to 30 s) until it succeeds or the configured timeout passes.
    pub async fn read(&self) -> Result<ClusterState, StateError> {
        let started = Instant::now();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let error = match self.read_once().await {
                Ok(state) => return Ok(state),
                Err(error) => error,
            };
            let delay = delays.next().unwrap_or(Duration::from_secs(30));
            if let Some(timeout) = self.settings().state_timeout
                && started.elapsed() + delay > timeout
            {
                return Err(StateError::Timeout(timeout, Box::new(error)));
            }
            tracing::warn!(
                error = %error,
                source = ?std::error::Error::source(&error).map(ToString::to_string),
                retry_in = ?delay,
                "cannot read the cluster state; not starting until it can be read"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// How to reach `pod`: its stable DNS name through the headless Service,
    /// or the address the state file gives.
    pub fn endpoint(&self, pod: &str) -> Result<Endpoint, StateError> {
        match self {
            Self::Kubernetes { settings, .. } => Ok(Endpoint {
                host: names::pod_dns(pod, &settings.service, &settings.namespace),
                port: names::POSTGRES_PORT as u16,
            }),
            Self::File { path, .. } => {
                let file = read_file(path)?;
                let address = file.endpoints.get(pod).cloned().unwrap_or_default();
                let (host, port) = address.rsplit_once(':').unwrap_or((&address, ""));
                Ok(Endpoint {
                    host: if host.is_empty() {
                        "127.0.0.1".to_owned()
                    } else {
                        host.to_owned()
                    },
                    port: port.parse().unwrap_or(names::POSTGRES_PORT as u16),
                })
            }
        }
    }
}

fn read_file(path: &PathBuf) -> Result<StateFile, StateError> {
    let text = std::fs::read_to_string(path).map_err(|source| StateError::File {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| StateError::Parse {
        path: path.clone(),
        source,
    })
}
