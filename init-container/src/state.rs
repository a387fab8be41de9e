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
    /// `status.targetPrimary`: a promotion is under way to this pod.
    pub target_primary: Option<String>,
    /// True once the first primary was initialized.
    pub bootstrapped: bool,
    pub epoch: i64,
    /// The primary's pod IP as the operator last saw it
    /// (`status.instances[].ip`): connected to without a DNS lookup, which
    /// the cluster's DNS cache can answer with a recreated pod's old address.
    pub primary_address: Option<String>,
    /// The fenced instances (`ordinal.dev/fenced`): their postgres stays
    /// stopped.
    pub fenced: Vec<String>,
}

/// How to reach a pod's PostgreSQL server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The address `host` stands for, when known: libpq's `hostaddr`.
    pub hostaddr: Option<String>,
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
    target_primary: Option<String>,
    #[serde(default)]
    bootstrapped: bool,
    #[serde(default)]
    epoch: i64,
    #[serde(default)]
    endpoints: BTreeMap<String, String>,
    #[serde(default)]
    fenced: Vec<String>,
}

/// Where the state is read from, and the pod it is read for.
pub struct StateSource {
    settings: Settings,
    backend: Backend,
}

enum Backend {
    Kubernetes(Box<Api<PostgresCluster>>),
    File(PathBuf),
}

impl StateSource {
    pub async fn new(settings: &Settings) -> Result<Self, StateError> {
        let backend = match &settings.state {
            StateSourceKind::Kubernetes => {
                let client = Client::try_default().await.map_err(StateError::Client)?;
                Backend::Kubernetes(Box::new(Api::namespaced(client, &settings.namespace)))
            }
            StateSourceKind::File(path) => Backend::File(path.clone()),
        };
        Ok(Self {
            settings: settings.clone(),
            backend,
        })
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Reads the state once.
    pub async fn read_once(&self) -> Result<ClusterState, StateError> {
        let s = self.settings();
        let no_primary = || StateError::NoPrimary {
            namespace: s.namespace.clone(),
            name: s.cluster.clone(),
        };
        match &self.backend {
            Backend::Kubernetes(api) => {
                let pgc = api
                    .get(&s.cluster)
                    .await
                    .map_err(|source| StateError::Read {
                        namespace: s.namespace.clone(),
                        name: s.cluster.clone(),
                        source,
                    })?;
                let fenced = pgc.fenced_instances();
                let status = pgc.status.unwrap_or_default();
                let current_primary = status.current_primary.ok_or_else(no_primary)?;
                let primary_address = status
                    .instances
                    .iter()
                    .find(|i| i.pod == current_primary)
                    .and_then(|i| i.ip.clone())
                    .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
                Ok(ClusterState {
                    current_primary,
                    target_primary: status.target_primary,
                    bootstrapped: status.bootstrapped,
                    epoch: status.epoch,
                    primary_address,
                    fenced,
                })
            }
            Backend::File(path) => {
                let file = read_file(path)?;
                Ok(ClusterState {
                    current_primary: file.current_primary.ok_or_else(no_primary)?,
                    target_primary: file.target_primary,
                    bootstrapped: file.bootstrapped,
                    epoch: file.epoch,
                    primary_address: None,
                    fenced: file.fenced,
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
        match &self.backend {
            Backend::Kubernetes(_) => Ok(Endpoint {
                host: names::pod_dns(pod, &self.settings.service, &self.settings.namespace),
                port: names::POSTGRES_PORT as u16,
                hostaddr: None,
            }),
            Backend::File(path) => {
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
                    hostaddr: None,
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    use super::*;

    fn settings() -> Settings {
        Settings {
            pod: "db-1".to_owned(),
            namespace: "test".to_owned(),
            cluster: "db".to_owned(),
            service: "db-headless".to_owned(),
            pgdata: PathBuf::from("/data/pgdata"),
            superuser_dir: PathBuf::from("/su"),
            replication_dir: PathBuf::from("/repl"),
            socket_dir: PathBuf::from("/run"),
            port: 5432,
            pg_bin: PathBuf::from("/bin"),
            state: StateSourceKind::Kubernetes,
            state_timeout: Some(Duration::from_secs(1)),
            primary_wait: Duration::from_secs(1),
            max_ready_lag_bytes: None,
            isolation: Duration::from_secs(10),
            health_address: None,
            recovery: None,
            tls_ca: None,
            replication_tls: false,
        }
    }

    /// Reads the state through a scripted API server answering `status, body`.
    async fn read_with(status: u16, body: serde_json::Value) -> Result<ClusterState, StateError> {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), http::Method::GET);
            assert_eq!(
                request.uri().path(),
                "/apis/ordinal.dev/v1alpha1/namespaces/test/postgresclusters/db"
            );
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response"),
            );
        });
        let source = StateSource {
            settings: settings(),
            backend: Backend::Kubernetes(Box::new(Api::namespaced(
                Client::new(service, "test"),
                "test",
            ))),
        };
        let result = source.read_once().await;
        server.await.expect("server");
        result
    }

    fn cluster(status: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "ordinal.dev/v1alpha1", "kind": "PostgresCluster",
            "metadata": {"name": "db", "namespace": "test"},
            "spec": {"storage": {"size": "1Gi"}},
            "status": status,
        })
    }

    #[tokio::test]
    async fn reads_the_primary_from_the_status() {
        let state = read_with(
            200,
            cluster(json!({"currentPrimary": "db-2", "bootstrapped": true, "epoch": 4})),
        )
        .await
        .expect("state");
        assert_eq!(
            state,
            ClusterState {
                current_primary: "db-2".to_owned(),
                target_primary: None,
                bootstrapped: true,
                epoch: 4,
                primary_address: None,
                fenced: Vec::new(),
            }
        );
    }

    #[tokio::test]
    async fn reads_the_primary_address_from_its_instance() {
        let instances = json!([
            {"pod": "db-1", "role": "Replica", "ready": true, "ip": "198.18.0.5"},
            {"pod": "db-2", "role": "Primary", "ready": true, "ip": "198.18.0.9"},
        ]);
        let state = read_with(
            200,
            cluster(json!({"currentPrimary": "db-2", "epoch": 4, "instances": instances})),
        )
        .await
        .expect("state");
        assert_eq!(state.primary_address.as_deref(), Some("198.18.0.9"));
        // Anything but an IP address is not taken for one.
        let garbled = json!([{"pod": "db-2", "role": "Primary", "ready": true, "ip": "db-2 x"}]);
        let state = read_with(
            200,
            cluster(json!({"currentPrimary": "db-2", "instances": garbled})),
        )
        .await
        .expect("state");
        assert_eq!(state.primary_address, None);
    }

    #[tokio::test]
    async fn no_primary_yet_is_an_error_not_a_guess() {
        let err = read_with(200, cluster(json!({})))
            .await
            .expect_err("no primary");
        assert!(matches!(err, StateError::NoPrimary { .. }), "{err}");
    }

    #[tokio::test]
    async fn api_errors_name_the_object() {
        let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": "forbidden", "reason": "Forbidden", "code": 403});
        let err = read_with(403, forbidden).await.expect_err("forbidden");
        assert_eq!(err.to_string(), "cannot read PostgresCluster test/db");
    }

    #[tokio::test]
    async fn pods_are_reached_by_their_stable_dns_name() {
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let source = StateSource {
            settings: settings(),
            backend: Backend::Kubernetes(Box::new(Api::namespaced(
                Client::new(service, "test"),
                "test",
            ))),
        };
        assert_eq!(
            source.endpoint("db-0").expect("endpoint"),
            Endpoint {
                host: "db-0.db-headless.test.svc".to_owned(),
                port: 5432,
                hostaddr: None,
            }
        );
    }
}
