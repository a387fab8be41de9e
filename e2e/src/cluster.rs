//! The harness of the cluster suite (`tests/cluster.rs`): scenarios run
//! against a real Kubernetes cluster — the one of `KUBECONFIG`, or the
//! current context — with real pods, volumes, Services and PostgreSQL.
//!
//! # Configuration (environment)
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ORDINAL_E2E_POSTGRES_IMAGE` | `postgres:17` | `spec.image` of the clusters the tests create |
//! | `ORDINAL_E2E_IMAGE` | `ghcr.io/ordinal-dev/ordinal:<crate version>` | the Ordinal image (operator + `ordinal-init`); the spawned operator's `ORDINAL_INIT_IMAGE` |
//! | `ORDINAL_E2E_OPERATOR` | `spawn` | `spawn`: the harness runs `<target>/<profile>/ordinal-operator` (next to the test binary; `cargo build -p ordinal-operator` first) as a child process against the same kube context, with `ORDINAL_INIT_IMAGE` = the Ordinal image and `ORDINAL_METRICS_ADDR` on a free 127.0.0.1 port, killed when the last test using it ends; `external`: an operator already runs in the cluster (`kubectl apply -k deploy/`) |
//! | `ORDINAL_E2E_STORAGE_CLASS` | unset (the cluster's default class) | `spec.storage.storageClassName` |
//! | `ORDINAL_E2E_TIMEOUT_SECONDS` | `600` | the wait budget of each scenario step |
//! | `ORDINAL_E2E_KEEP` | unset | `1`: keep the namespace of a failed test for inspection |
//!
//! `RUST_LOG` is passed to the spawned operator (default `info,kube=warn`),
//! as is the rest of the environment (e.g. `ORDINAL_INIT_IMAGE_PULL_POLICY`);
//! its output goes to a file in the temporary directory, whose end is
//! printed when a test fails.
//!
//! # Spawned operator and pod IPs
//!
//! The operator's failover loop probes every instance at its pod IP
//! (promotion, slots, lag). An operator spawned on the test machine must
//! therefore reach pod IPs: true when the tests run inside the cluster or
//! on a node, not by default on kind, whose pod network lives inside the
//! node containers. The harness checks this once the first pods are Ready
//! and fails with what to do: on Linux with a single-node kind cluster,
//! `sudo ip route add <podCIDR> via <node IP>` (see the suite's module doc),
//! or run the operator in the cluster and use `ORDINAL_E2E_OPERATOR=external`.
//! In `spawn` mode no other operator may run in the cluster: two failover
//! loops would fight over the same clusters (the harness checks for the
//! `app.kubernetes.io/name=ordinal-operator` pods of `deploy/`).
//!
//! # Namespaces and failure dumps
//!
//! Each test runs in a fresh namespace `ordinal-e2e-<random>`, labelled
//! `ordinal.dev/e2e=true` and enforcing the `restricted` Pod Security
//! Standard (the pods claim to pass it). When the test ends, the
//! [`Harness`] guard deletes the namespace. When it fails (panics), the
//! guard first prints to stderr what `kubectl describe` and `kubectl logs`
//! would show: the PostgresClusters (spec and status), StatefulSets, PVCs,
//! pods (phase, conditions, container states and restarts), the namespace's
//! Events by time, the last 100 log lines of every container of every pod
//! (and 50 of the previous instance of a restarted one), and the last 300
//! lines of the spawned operator's log; then it deletes the namespace unless `ORDINAL_E2E_KEEP=1`.
//! The guard's `Drop` is synchronous and the client async: it uses
//! `block_in_place` + `Handle::block_on`, so tests must use
//! `#[tokio::test(flavor = "multi_thread")]` (checked).
//!
//! # SQL access
//!
//! Through a kube-rs port-forward to a pod's port 5432 (no local port, no
//! `kubectl`), as `postgres` with the password of the cluster's superuser
//! Secret. A port-forward targets a pod, never a Service (`kubectl
//! port-forward svc/...` also just picks one pod), so "through db-rw"
//! means: the pod the db-rw Service routes to, read from its
//! EndpointSlices (ready endpoints) — the Ready pod labelled
//! `ordinal.dev/role=primary`.

// A test harness: a failure here is a test failure, so it panics.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStatus, Event, Namespace, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    AttachParams, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, Resource, ResourceExt};
use ordinal_crds::{PostgresCluster, PostgresClusterSpec, PostgresClusterStatus, names};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::workload::Acks;

/// Field manager of every server-side apply the tests send.
pub const FIELD_MANAGER: &str = "ordinal-e2e";
/// The table the [`Writer`] fills.
pub const WRITES_TABLE: &str = "e2e_writes";
/// Label on every namespace the harness creates.
pub const NAMESPACE_LABEL: &str = "ordinal.dev/e2e";

const POLL: Duration = Duration::from_millis(500);
/// Longest a single check of a wait may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
const PG_PORT: u16 = 5432;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

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
        }
    }
}

// ---------------------------------------------------------------------------
// The spawned operator, shared by the tests running at the same time
// ---------------------------------------------------------------------------

struct OperatorProcess {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
}

struct SharedOperator {
    users: usize,
    process: Option<OperatorProcess>,
    /// A test failed while this process ran: keep its log file.
    failed: bool,
}

/// One operator process for every test running at the same time: two
/// operators would fight over the same clusters.
static OPERATOR: Mutex<SharedOperator> = Mutex::new(SharedOperator {
    users: 0,
    process: None,
    failed: false,
});

fn shared_operator() -> std::sync::MutexGuard<'static, SharedOperator> {
    OPERATOR.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `target/<profile>/ordinal-operator`, next to this test binary's `deps/`.
fn operator_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("ordinal-operator"))
        .expect("the test binary lives in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: build it with the same profile first (`cargo build -p ordinal-operator`), \
         or run an operator in the cluster and set ORDINAL_E2E_OPERATOR=external",
        bin.display()
    );
    bin
}

fn free_local_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free local port");
    listener.local_addr().expect("the free port's address")
}

fn tail_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// A test's claim on the spawned operator: released (the process stopped
/// when nobody uses it any more) on drop.
struct OperatorLease {
    log: PathBuf,
    addr: SocketAddr,
    keep: bool,
}

impl OperatorLease {
    fn acquire(config: &Config) -> Self {
        let mut shared = shared_operator();
        if let Some(process) = shared.process.as_mut()
            && let Ok(Some(status)) = process.child.try_wait()
        {
            let log = std::fs::read_to_string(&process.log).unwrap_or_default();
            panic!(
                "the spawned operator exited ({status}); its log {}:\n{}",
                process.log.display(),
                tail_lines(&log, 100).join("\n")
            );
        }
        if shared.process.is_none() {
            let bin = operator_bin();
            let addr = free_local_port();
            let log = std::env::temp_dir().join(format!(
                "ordinal-e2e-operator-{}-{}.log",
                std::process::id(),
                addr.port()
            ));
            let file = std::fs::File::create(&log).expect("create the operator's log file");
            let child = Command::new(&bin)
                .arg("run")
                .env("ORDINAL_INIT_IMAGE", &config.ordinal_image)
                .env("ORDINAL_METRICS_ADDR", addr.to_string())
                .env("ORDINAL_LOG_FORMAT", "text")
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info,kube=warn".to_owned()),
                )
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("clone the log file handle"))
                .stderr(file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            eprintln!(
                "ordinal-e2e: spawned {} (pid {}, metrics on {addr}, init image {}, log {})",
                bin.display(),
                child.id(),
                config.ordinal_image,
                log.display()
            );
            shared.process = Some(OperatorProcess { child, log, addr });
            shared.failed = false;
        }
        shared.users += 1;
        let process = shared.process.as_ref().expect("just spawned");
        Self {
            log: process.log.clone(),
            addr: process.addr,
            keep: config.keep,
        }
    }

    /// Until the operator answers 200 on /readyz (its controller started).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(why) = operator_exited() {
                panic!("{why}");
            }
            if http_get_status(self.addr, "/readyz").await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the spawned operator did not become ready on {} within 60s; its log:\n{}",
                self.addr,
                tail_lines(&std::fs::read_to_string(&self.log).unwrap_or_default(), 100).join("\n")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for OperatorLease {
    fn drop(&mut self) {
        let mut shared = shared_operator();
        if std::thread::panicking() {
            shared.failed = true;
        }
        shared.users = shared.users.saturating_sub(1);
        if shared.users > 0 {
            return;
        }
        let failed = shared.failed;
        let Some(mut process) = shared.process.take() else {
            return;
        };
        drop(shared);
        // A graceful stop first (the operator stops its failover loops).
        if let Ok(pid) = i32::try_from(process.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(process.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = process.child.kill();
        let _ = process.child.wait();
        if failed || self.keep {
            eprintln!(
                "ordinal-e2e: the operator's log is kept in {}",
                process.log.display()
            );
        } else {
            let _ = std::fs::remove_file(&process.log);
        }
    }
}

/// Some(why) when the spawned operator has exited.
fn operator_exited() -> Option<String> {
    let mut shared = shared_operator();
    let process = shared.process.as_mut()?;
    let status = process.child.try_wait().ok()??;
    let log = std::fs::read_to_string(&process.log).unwrap_or_default();
    Some(format!(
        "the spawned operator exited ({status}); the end of its log {}:\n{}",
        process.log.display(),
        tail_lines(&log, 100).join("\n")
    ))
}

/// The status code of `GET path` on `addr`, None when it does not answer.
async fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

/// One test's access to the cluster: its namespace, the client, the waits.
/// Dropping it cleans up (and dumps the namespace when the test failed).
pub struct Harness {
    pub client: Client,
    pub namespace: String,
    pub config: Config,
    /// Released after `Drop::drop` (fields drop after it): the dump still
    /// reads the log of the running operator.
    operator: Option<OperatorLease>,
    network_checked: AtomicBool,
}

/// `ordinal-e2e-` and six random lowercase letters and digits.
fn namespace_name() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..6)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("ordinal-e2e-{suffix}")
}

/// A label value from a test name: at most 63 characters of `[a-z0-9_.-]`,
/// starting and ending with an alphanumeric character.
fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} ({}): {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}

impl Harness {
    /// Connects, checks the cluster is ready for the suite (CRD installed,
    /// operator running or spawned) and creates the test's namespace.
    pub async fn new(test: &str) -> Self {
        crate::init_logs();
        let handle = tokio::runtime::Handle::current();
        assert_eq!(
            handle.runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread,
            "cluster tests need #[tokio::test(flavor = \"multi_thread\")]: the harness cleans up in Drop with block_in_place"
        );
        let config = Config::from_env();
        let client = Client::try_default().await.unwrap_or_else(|e| {
            panic!("no Kubernetes cluster to test against (KUBECONFIG or the current context): {e}")
        });

        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd_name = format!("postgresclusters.{}", names::GROUP);
        match crds.get_opt(&crd_name).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!(
                "the CRD {crd_name} is not installed: kubectl apply -f deploy/crds/ (from the repository root)"
            ),
            Err(e) => panic!("cannot read the CRD {crd_name}: {}", error_text(&e)),
        }

        let operator = match config.operator {
            OperatorMode::External => None,
            OperatorMode::Spawn => {
                let others: Api<Pod> = Api::all(client.clone());
                if let Ok(list) = others
                    .list(&ListParams::default().labels("app.kubernetes.io/name=ordinal-operator"))
                    .await
                {
                    let running: Vec<String> = list
                        .items
                        .iter()
                        .filter(|p| {
                            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                        })
                        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                        .collect();
                    assert!(
                        running.is_empty(),
                        "an operator already runs in the cluster ({}): set ORDINAL_E2E_OPERATOR=external, \
                         or remove it — two operators would fight over the test clusters",
                        running.join(", ")
                    );
                }
                let lease = OperatorLease::acquire(&config);
                lease.wait_ready().await;
                Some(lease)
            }
        };

        let namespace = namespace_name();
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some(BTreeMap::from([
                    (NAMESPACE_LABEL.to_owned(), "true".to_owned()),
                    ("ordinal.dev/e2e-test".to_owned(), label_value(test)),
                    (
                        "app.kubernetes.io/created-by".to_owned(),
                        "ordinal-e2e".to_owned(),
                    ),
                    // The pods claim to pass the restricted standard.
                    (
                        "pod-security.kubernetes.io/enforce".to_owned(),
                        "restricted".to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {namespace}: {}", error_text(&e)));
        eprintln!(
            "ordinal-e2e: {test} runs in namespace {namespace} (operator: {:?}, postgres image {}, timeout {}s)",
            config.operator,
            config.postgres_image,
            config.timeout.as_secs()
        );
        Self {
            client,
            namespace,
            config,
            operator,
            network_checked: AtomicBool::new(false),
        }
    }

    /// The API of a namespaced kind in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn clusters(&self) -> Api<PostgresCluster> {
        self.api()
    }

    pub fn pods(&self) -> Api<Pod> {
        self.api()
    }

    /// A spec like deploy/examples/cluster.yaml: `replicas` instances of the
    /// configured image, 1Gi volumes of the configured StorageClass.
    pub fn spec(&self, replicas: i32) -> PostgresClusterSpec {
        let mut storage = json!({ "size": "1Gi" });
        if let Some(class) = &self.config.storage_class {
            storage["storageClassName"] = json!(class);
        }
        serde_json::from_value(json!({
            "replicas": replicas,
            "image": self.config.postgres_image,
            "storage": storage,
        }))
        .expect("a PostgresCluster spec")
    }

    /// Server-side applies the PostgresCluster `name` with `spec`.
    pub async fn try_apply(
        &self,
        name: &str,
        spec: &PostgresClusterSpec,
    ) -> Result<PostgresCluster, kube::Error> {
        let pgc = PostgresCluster::new(name, spec.clone());
        self.clusters()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&pgc),
            )
            .await
    }

    pub async fn apply(&self, name: &str, spec: &PostgresClusterSpec) -> PostgresCluster {
        self.try_apply(name, spec)
            .await
            .unwrap_or_else(|e| panic!("applying PostgresCluster {name}: {}", error_text(&e)))
    }

    pub async fn cluster(&self, name: &str) -> PostgresCluster {
        self.clusters()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading PostgresCluster {name}: {}", error_text(&e)))
    }

    pub async fn status(&self, name: &str) -> PostgresClusterStatus {
        self.cluster(name).await.status.unwrap_or_default()
    }

    /// The status, or why it cannot be read (for use inside waits).
    pub async fn try_status(&self, name: &str) -> Result<PostgresClusterStatus, String> {
        self.clusters()
            .get(name)
            .await
            .map(|c| c.status.unwrap_or_default())
            .map_err(|e| format!("reading PostgresCluster {name}: {}", error_text(&e)))
    }

    /// Polls `check` until it returns Ok (its value is returned), at most the
    /// configured timeout; Err says why not yet and is shown on timeout.
    /// Fails at once when the spawned operator has exited.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        loop {
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(CHECK_TIMEOUT)
                .max(Duration::from_secs(1));
            let last = match tokio::time::timeout(budget, check()).await {
                Ok(Ok(value)) => {
                    eprintln!(
                        "ordinal-e2e [{}] {:>6.1}s  {what}",
                        self.namespace,
                        started.elapsed().as_secs_f64()
                    );
                    return value;
                }
                Ok(Err(why)) => why,
                Err(_) => format!("the check itself took longer than {budget:?}"),
            };
            if self.operator.is_some()
                && let Some(why) = operator_exited()
            {
                panic!("while waiting until {what}: {why}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {}s waiting until {what}; last observation: {last}",
                self.config.timeout.as_secs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// [`Self::wait_until`] for a yes/no condition.
    pub async fn wait_for(&self, what: &str, mut condition: impl AsyncFnMut() -> bool) {
        self.wait_until(what, async || {
            if condition().await {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        })
        .await;
    }

    /// Checks that `condition` stays Ok for `period` (polling), failing at
    /// the first Err: for "nothing else happens" assertions.
    pub async fn hold_for(
        &self,
        what: &str,
        period: Duration,
        mut condition: impl AsyncFnMut() -> Result<(), String>,
    ) {
        let until = Instant::now() + period;
        while Instant::now() < until {
            match tokio::time::timeout(CHECK_TIMEOUT, condition()).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => panic!("expected {what} for {period:?}, but: {why}"),
                Err(_) => panic!("expected {what}: a check took longer than {CHECK_TIMEOUT:?}"),
            }
            tokio::time::sleep(POLL).await;
        }
        eprintln!(
            "ordinal-e2e [{}] held {:>4}s  {what}",
            self.namespace,
            period.as_secs()
        );
    }

    /// The pods of cluster `cluster` (by the `ordinal.dev/cluster` label).
    pub async fn cluster_pods(&self, cluster: &str) -> Result<Vec<Pod>, String> {
        self.pods()
            .list(&ListParams::default().labels(&format!("{}={cluster}", names::LABEL_CLUSTER)))
            .await
            .map(|l| l.items)
            .map_err(|e| error_text(&e))
    }

    /// Until `n` pods `<cluster>-0..n-1` are Ready and labelled by role (no
    /// others), and the status says so: `ready` "n/n", phase Healthy, the
    /// current generation observed, no promotion under way. In spawn mode it
    /// then checks once that this machine reaches pod IPs.
    pub async fn wait_ready(&self, cluster: &str, n: i32) -> PostgresClusterStatus {
        let status = self
            .wait_until(
                &format!("{cluster}: {n} pods Ready with role labels, status {n}/{n} Healthy"),
                async || self.ready_check(cluster, n).await,
            )
            .await;
        if let Some(primary) = &status.current_primary {
            self.check_pod_network(primary).await;
        }
        status
    }

    async fn ready_check(&self, cluster: &str, n: i32) -> Result<PostgresClusterStatus, String> {
        let pgc = self
            .clusters()
            .get(cluster)
            .await
            .map_err(|e| error_text(&e))?;
        let status = pgc.status.clone().ok_or("no status yet")?;
        if status.observed_generation != pgc.metadata.generation {
            return Err(format!(
                "status observes generation {:?}, the spec is at {:?}",
                status.observed_generation, pgc.metadata.generation
            ));
        }
        let primary = status
            .current_primary
            .clone()
            .ok_or("no currentPrimary in the status")?;
        if let Some(target) = &status.target_primary {
            return Err(format!("a promotion of {target} is under way"));
        }
        let want = format!("{n}/{n}");
        if status.ready.as_deref() != Some(want.as_str())
            || status.ready_replicas != n
            || status.phase != Some(ordinal_crds::Phase::Healthy)
        {
            return Err(format!(
                "status ready {:?} (readyReplicas {}), phase {:?}",
                status.ready, status.ready_replicas, status.phase
            ));
        }
        let pods = self.cluster_pods(cluster).await?;
        for pod in &pods {
            let name = pod.name_any();
            if names::ordinal_of(cluster, &name).is_some_and(|o| o >= n) {
                return Err(format!("{name} still exists"));
            }
        }
        for ordinal in 0..n {
            let name = names::pod(cluster, ordinal);
            let pod = pods
                .iter()
                .find(|p| p.name_any() == name)
                .ok_or_else(|| format!("{name} does not exist"))?;
            if pod.metadata.deletion_timestamp.is_some() {
                return Err(format!("{name} is terminating"));
            }
            if !pod_ready(pod) {
                return Err(format!("{name} is not Ready"));
            }
            let want = if name == primary {
                names::ROLE_PRIMARY
            } else {
                names::ROLE_REPLICA
            };
            let role = pod.labels().get(names::LABEL_ROLE);
            if role.map(String::as_str) != Some(want) {
                return Err(format!("{name} is labelled {role:?}, expected {want}"));
            }
        }
        Ok(status)
    }

    /// Spawn mode: the operator on this machine probes pods at their IPs.
    async fn check_pod_network(&self, pod: &str) {
        if self.operator.is_none() || self.network_checked.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(ip) = self
            .pods()
            .get_opt(pod)
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status?.pod_ip)
        else {
            return;
        };
        let Ok(addr) = ip.parse::<IpAddr>() else {
            return;
        };
        let reachable = matches!(
            tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(SocketAddr::new(addr, PG_PORT))
            )
            .await,
            Ok(Ok(_))
        );
        assert!(
            reachable,
            "this machine cannot reach pod {pod} at {ip}:{PG_PORT}, so the spawned operator cannot probe, \
             promote or keep slots. Run the tests where pod IPs are routable (in the cluster, on a node), \
             add a route (kind, Linux, one node: sudo ip route add <the node's podCIDR> via <the node container's IP>), \
             or deploy the operator (kubectl apply -k deploy/) and set ORDINAL_E2E_OPERATOR=external"
        );
    }

    /// The password of cluster `cluster`'s superuser (`postgres`).
    pub async fn superuser_password(&self, cluster: &str) -> Result<String, String> {
        let pgc = self
            .clusters()
            .get(cluster)
            .await
            .map_err(|e| error_text(&e))?;
        let secret_name = pgc.superuser_secret_name();
        let secret = self
            .api::<Secret>()
            .get(&secret_name)
            .await
            .map_err(|e| format!("Secret {secret_name}: {}", error_text(&e)))?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(names::SECRET_PASSWORD_KEY))
            .ok_or_else(|| format!("Secret {secret_name} has no {}", names::SECRET_PASSWORD_KEY))?;
        String::from_utf8(bytes.0.clone())
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("Secret {secret_name}: {e}"))
    }

    /// One attempt at a SQL session with `pod` of cluster `cluster`.
    pub async fn try_sql(
        &self,
        cluster: &str,
        pod: &str,
    ) -> Result<tokio_postgres::Client, String> {
        let password = self.superuser_password(cluster).await?;
        connect_pod(&self.client, &self.namespace, pod, &password).await
    }

    /// A SQL session with `pod`, retried until it works (or the timeout).
    pub async fn sql(&self, cluster: &str, pod: &str) -> tokio_postgres::Client {
        self.wait_until(&format!("SQL session with {pod}"), async || {
            self.try_sql(cluster, pod).await
        })
        .await
    }

    /// The pods db-rw routes to now: ready endpoints of its EndpointSlices.
    pub async fn rw_pods(&self, cluster: &str) -> Result<Vec<String>, String> {
        routed_pods(&self.client, &self.namespace, &names::rw_service(cluster)).await
    }

    /// The one pod db-rw routes to, and a SQL session with it.
    pub async fn sql_rw(&self, cluster: &str) -> (String, tokio_postgres::Client) {
        self.wait_until(
            &format!("SQL session through {}", names::rw_service(cluster)),
            async || {
                let routed = self.rw_pods(cluster).await?;
                let [pod] = routed.as_slice() else {
                    return Err(format!(
                        "{} routes to {routed:?}",
                        names::rw_service(cluster)
                    ));
                };
                let client = self.try_sql(cluster, pod).await?;
                Ok((pod.clone(), client))
            },
        )
        .await
    }

    /// Runs `command` in `container` of `pod` (kubectl exec).
    pub async fn exec(
        &self,
        pod: &str,
        container: &str,
        command: &[&str],
    ) -> Result<ExecOutput, String> {
        let params = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let run = async {
            let mut attached = self
                .pods()
                .exec(pod, command.to_vec(), &params)
                .await
                .map_err(|e| error_text(&e))?;
            let stdout = attached.stdout();
            let stderr = attached.stderr();
            let status = attached.take_status();
            let read = |half: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
                let mut buf = Vec::new();
                if let Some(mut half) = half {
                    let _ = half.read_to_end(&mut buf).await;
                }
                String::from_utf8_lossy(&buf).into_owned()
            };
            let (stdout, stderr) = tokio::join!(read(stdout), read(stderr));
            let status = match status {
                Some(status) => status.await,
                None => None,
            };
            let _ = attached.join().await;
            Ok(ExecOutput {
                stdout,
                stderr,
                status,
            })
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .map_err(|_| format!("exec in {pod}/{container} did not finish within 60s"))?
    }

    /// Crashes PostgreSQL in `pod` and waits until the crash shows (the
    /// container restarted, or the pod was replaced).
    ///
    /// Not a literal `kill -9 1`: postgres is PID 1 of its container
    /// (ordinal-init execs it), and the kernel drops SIGKILL sent to a PID
    /// namespace's init from inside the namespace — which is where exec
    /// runs. So every other process of the container (the backends,
    /// walsenders, checkpointer: everything holding unsent WAL) gets
    /// SIGKILL, and the postmaster SIGQUIT, postgres' immediate shutdown:
    /// no checkpoint, no final WAL to the standbys, crash recovery at the
    /// next start. Should the postmaster not be PID 1, it gets SIGKILL.
    pub async fn crash_postgres(&self, pod: &str) {
        let before = self
            .pods()
            .get(pod)
            .await
            .unwrap_or_else(|e| panic!("reading pod {pod}: {}", error_text(&e)));
        let uid = before.metadata.uid.clone();
        let restarts = postgres_restarts(&before);
        // Every process but PID 1 and this shell (dash has no reliable
        // `kill -1`), then the postmaster.
        let script = r#"read -r pid < "$PGDATA/postmaster.pid" || exit 3
echo "postmaster pid $pid"
if [ "$pid" = 1 ]; then
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = 1 ] || [ "$p" = "$$" ] || kill -KILL "$p" 2>/dev/null
  done
  kill -QUIT 1
else
  kill -KILL "$pid"
fi"#;
        // The container dies with postgres: the exec may end abruptly.
        match self.exec(pod, "postgres", &["sh", "-c", script]).await {
            Ok(out) => eprintln!(
                "ordinal-e2e: crash {pod}: {} {} ({:?})",
                out.stdout.trim(),
                out.stderr.trim(),
                out.status.and_then(|s| s.message)
            ),
            Err(why) => eprintln!("ordinal-e2e: crash {pod}: the exec ended with: {why}"),
        }
        self.wait_until(
            &format!("postgres in {pod} is down (container restarted or pod replaced)"),
            async || match self.pods().get_opt(pod).await {
                Ok(None) => Ok(()),
                Ok(Some(p)) if p.metadata.uid != uid => Ok(()),
                Ok(Some(p)) if p.metadata.deletion_timestamp.is_some() => Ok(()),
                Ok(Some(p)) if postgres_restarts(&p) > restarts || postgres_not_running(&p) => {
                    Ok(())
                }
                Ok(Some(p)) => Err(format!(
                    "{pod}: container postgres still running, restartCount {}",
                    postgres_restarts(&p)
                )),
                Err(e) => Err(error_text(&e)),
            },
        )
        .await;
    }

    /// Until `pod` streams from the primary: it is Ready, in recovery, its
    /// WAL receiver streams, and the primary `primary` lists it streaming.
    pub async fn wait_streaming_replica(&self, cluster: &str, primary: &str, pod: &str) {
        self.wait_until(
            &format!("{pod} is a Ready replica streaming from {primary}"),
            async || {
                let p = self
                    .pods()
                    .get_opt(pod)
                    .await
                    .map_err(|e| error_text(&e))?
                    .ok_or_else(|| format!("{pod} does not exist"))?;
                if !pod_ready(&p) || p.metadata.deletion_timestamp.is_some() {
                    return Err(format!("{pod} is not Ready"));
                }
                let replica = self.try_sql(cluster, pod).await?;
                let row = replica
                    .query_one(
                        "SELECT pg_is_in_recovery(), \
                         (SELECT status FROM pg_stat_wal_receiver LIMIT 1)",
                        &[],
                    )
                    .await
                    .map_err(|e| format!("{pod}: {e}"))?;
                let in_recovery: bool = row.get(0);
                let receiver: Option<String> = row.get(1);
                if !in_recovery {
                    return Err(format!("{pod} is not in recovery: it accepts writes"));
                }
                if receiver.as_deref() != Some("streaming") {
                    return Err(format!("{pod}: WAL receiver {receiver:?}"));
                }
                let states = self.replication_states(cluster, primary).await?;
                match states.get(pod).map(String::as_str) {
                    Some("streaming") => Ok(()),
                    other => Err(format!(
                        "{primary}'s pg_stat_replication shows {pod} as {other:?}"
                    )),
                }
            },
        )
        .await;
    }

    /// `application_name → state` of `pg_stat_replication` on `primary`.
    pub async fn replication_states(
        &self,
        cluster: &str,
        primary: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        let client = self.try_sql(cluster, primary).await?;
        let rows = client
            .query(
                "SELECT application_name, coalesce(state, '') FROM pg_stat_replication",
                &[],
            )
            .await
            .map_err(|e| format!("{primary}: {e}"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    /// Physical replication slots on `primary`.
    pub async fn slots(&self, cluster: &str, primary: &str) -> Result<BTreeSet<String>, String> {
        let client = self.try_sql(cluster, primary).await?;
        let rows = client
            .query("SELECT slot_name::text FROM pg_replication_slots", &[])
            .await
            .map_err(|e| format!("{primary}: {e}"))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    /// Until the primary in quorum mode lists its synchronous standbys
    /// (`ANY k (...)`) and at least `k` of them confirm commits.
    pub async fn wait_quorum_active(&self, cluster: &str, primary: &str, k: usize) {
        self.wait_until(
            &format!("{primary} commits with a quorum of {k} synchronous standbys"),
            async || {
                let client = self.try_sql(cluster, primary).await?;
                let names: String = client
                    .query_one("SHOW synchronous_standby_names", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                if !names.starts_with(&format!("ANY {k} ")) {
                    return Err(format!("synchronous_standby_names = {names:?}"));
                }
                let quorum: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum' AND state = 'streaming'",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                if usize::try_from(quorum).unwrap_or(0) < k {
                    return Err(format!(
                        "{names}: only {quorum} quorum standbys stream"
                    ));
                }
                Ok(())
            },
        )
        .await;
    }

    /// Asserts that every id of `acked` is in [`WRITES_TABLE`] on the pod
    /// db-rw routes to; returns that pod.
    pub async fn assert_acked_rows_present(&self, cluster: &str, acked: &[i64]) -> String {
        let (pod, client) = self.sql_rw(cluster).await;
        let rows = client
            .query(&format!("SELECT id FROM {WRITES_TABLE}"), &[])
            .await
            .unwrap_or_else(|e| panic!("reading {WRITES_TABLE} on {pod}: {e}"));
        let present: BTreeSet<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
        let missing: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged rows are missing on the primary {pod} (first: {:?})",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(20)]
        );
        eprintln!(
            "ordinal-e2e [{}] all {} acknowledged rows are present on {pod}",
            self.namespace,
            acked.len()
        );
        pod
    }

    /// Deletes pod `pod` (default grace period: a planned stop).
    pub async fn delete_pod(&self, pod: &str) {
        self.pods()
            .delete(pod, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting pod {pod}: {}", error_text(&e)));
    }

    /// The StatefulSet of cluster `cluster`.
    pub async fn statefulset(&self, cluster: &str) -> Result<StatefulSet, String> {
        self.api::<StatefulSet>()
            .get(cluster)
            .await
            .map_err(|e| error_text(&e))
    }

    /// Whether the namespaced object `name` of kind `K` exists (and is not
    /// being deleted).
    pub async fn exists<K>(&self, name: &str) -> Result<bool, String>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        <K as Resource>::DynamicType: Default,
    {
        match self.api::<K>().get_opt(name).await {
            Ok(Some(obj)) => Ok(obj.meta().deletion_timestamp.is_none()),
            Ok(None) => Ok(false),
            Err(e) => Err(error_text(&e)),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            eprintln!(
                "ordinal-e2e: no tokio runtime to clean up namespace {}: delete it by hand",
                self.namespace
            );
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            eprintln!(
                "ordinal-e2e: not a multi-thread runtime, cannot clean up namespace {}: delete it by hand",
                self.namespace
            );
            return;
        }
        let client = self.client.clone();
        let namespace = self.namespace.clone();
        let keep = self.config.keep;
        let log = self.operator.as_ref().map(|o| o.log.clone());
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                if failed {
                    let dumped = tokio::time::timeout(
                        Duration::from_secs(180),
                        dump(&client, &namespace, log.as_deref()),
                    )
                    .await;
                    if dumped.is_err() {
                        eprintln!("ordinal-e2e: the dump of {namespace} took over 180s: cut short");
                    }
                }
                if failed && keep {
                    eprintln!(
                        "ordinal-e2e: ORDINAL_E2E_KEEP=1: namespace {namespace} is kept \
                         (kubectl delete namespace {namespace} when done)"
                    );
                    return;
                }
                let namespaces: Api<Namespace> = Api::all(client);
                match tokio::time::timeout(
                    Duration::from_secs(30),
                    namespaces.delete(&namespace, &DeleteParams::background()),
                )
                .await
                {
                    Ok(Ok(_)) => eprintln!("ordinal-e2e: deleting namespace {namespace}"),
                    Ok(Err(e)) => eprintln!(
                        "ordinal-e2e: cannot delete namespace {namespace}: {}",
                        error_text(&e)
                    ),
                    Err(_) => eprintln!("ordinal-e2e: deleting namespace {namespace} timed out"),
                }
            });
        });
    }
}

// ---------------------------------------------------------------------------
// Pods, SQL sessions, routing
// ---------------------------------------------------------------------------

/// What an exec printed, and the status the API server reported.
#[derive(Debug)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.status.as_deref() == Some("Success"))
    }
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn postgres_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "postgres")
}

/// Restarts of the `postgres` container of `pod`.
pub fn postgres_restarts(pod: &Pod) -> i32 {
    postgres_status(pod).map_or(0, |c| c.restart_count)
}

fn postgres_not_running(pod: &Pod) -> bool {
    postgres_status(pod)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_none())
}

/// The pod's `controller-revision-hash` (its StatefulSet revision).
pub fn pod_revision(pod: &Pod) -> Option<String> {
    pod.labels().get("controller-revision-hash").cloned()
}

/// A SQL session with `pod` through a port-forward, as `postgres`.
pub async fn connect_pod(
    client: &Client,
    namespace: &str,
    pod: &str,
    password: &str,
) -> Result<tokio_postgres::Client, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut forward = tokio::time::timeout(CONNECT_TIMEOUT, pods.portforward(pod, &[PG_PORT]))
        .await
        .map_err(|_| format!("port-forward to {pod}: timed out"))?
        .map_err(|e| format!("port-forward to {pod}: {}", error_text(&e)))?;
    let stream = forward
        .take_stream(PG_PORT)
        .ok_or_else(|| format!("port-forward to {pod}: no stream for port {PG_PORT}"))?;
    let failed = forward.take_error(PG_PORT);
    let mut config = tokio_postgres::Config::new();
    config
        .user(names::SUPERUSER_NAME)
        .password(password)
        .dbname("postgres")
        .application_name("ordinal-e2e");
    let connecting = tokio::time::timeout(
        CONNECT_TIMEOUT,
        config.connect_raw(stream, tokio_postgres::NoTls),
    );
    let forward_failed = async move {
        match failed {
            Some(failed) => failed
                .await
                .unwrap_or_else(|| "the port-forward closed".to_owned()),
            None => std::future::pending().await,
        }
    };
    let (session, connection) = tokio::select! {
        connected = connecting => match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(format!("{pod}: {e}")),
            Err(_) => return Err(format!("{pod}: connecting timed out")),
        },
        why = forward_failed => return Err(format!("port-forward to {pod}: {why}")),
    };
    tokio::spawn(async move {
        let _ = connection.await;
        // The forwarder's task ends with the websocket; keep it until then.
        drop(forward);
    });
    Ok(session)
}

/// The pods Service `service` routes to now: the ready endpoints of its
/// EndpointSlices (what kube-proxy programs), deduplicated and sorted.
pub async fn routed_pods(
    client: &Client,
    namespace: &str,
    service: &str,
) -> Result<Vec<String>, String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(|e| error_text(&e))?;
    let pods: BTreeSet<String> = list
        .items
        .iter()
        .flat_map(|slice| slice.endpoints.iter())
        .filter(|ep| {
            let c = ep.conditions.as_ref();
            c.and_then(|c| c.ready) != Some(false) && c.and_then(|c| c.terminating) != Some(true)
        })
        .filter_map(|ep| {
            let target = ep.target_ref.as_ref()?;
            (target.kind.as_deref() == Some("Pod"))
                .then(|| target.name.clone())
                .flatten()
        })
        .collect();
    Ok(pods.into_iter().collect())
}

// ---------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------

/// Commits numbered rows (`INSERT INTO e2e_writes`) one transaction at a
/// time through db-rw — the pod its EndpointSlices route to, re-resolved
/// every second and after every error — and records which commits were
/// acknowledged, when, and by which pod. An id is never retried: an
/// unacknowledged insert may have committed.
pub struct Writer {
    acks: Arc<Mutex<Acks>>,
    /// Resolutions where db-rw routed to more than one pod.
    split_routes: Arc<Mutex<Vec<Vec<String>>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn copy_acks(a: &Acks) -> Acks {
    Acks {
        ids: a.ids.clone(),
        at: a.at.clone(),
        by: a.by.clone(),
        errors: a.errors,
    }
}

impl Writer {
    /// Creates the table through db-rw and starts writing.
    pub async fn start(h: &Harness, cluster: &str) -> Self {
        let (pod, session) = h.sql_rw(cluster).await;
        session
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {WRITES_TABLE} \
                 (id bigint PRIMARY KEY, pod text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .unwrap_or_else(|e| panic!("creating {WRITES_TABLE} on {pod}: {e}"));
        let next: i64 = session
            .query_one(
                &format!("SELECT coalesce(max(id), 0) + 1 FROM {WRITES_TABLE}"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("reading {WRITES_TABLE} on {pod}: {e}"))
            .get(0);
        let password = h
            .superuser_password(cluster)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let acks = Arc::new(Mutex::new(Acks::default()));
        let split_routes = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(write_loop(
            h.client.clone(),
            h.namespace.clone(),
            names::rw_service(cluster),
            password,
            next,
            Arc::clone(&acks),
            Arc::clone(&split_routes),
            stopped,
        ));
        Self {
            acks,
            split_routes,
            stop,
            task,
        }
    }

    /// A copy of what was acknowledged so far.
    pub fn acks(&self) -> Acks {
        copy_acks(&self.acks.lock().unwrap())
    }

    pub fn acked(&self) -> usize {
        self.acks.lock().unwrap().ids.len()
    }

    /// The first acknowledgement after `t` by a pod other than `not_by`.
    pub fn first_ack_after(&self, t: Instant, not_by: &str) -> Option<(Instant, String)> {
        let a = self.acks.lock().unwrap();
        a.at.iter()
            .zip(&a.by)
            .find(|(at, by)| **at > t && by.as_str() != not_by)
            .map(|(at, by)| (*at, by.clone()))
    }

    /// Acknowledgements after `t` by `by`.
    pub fn acks_after_by(&self, t: Instant, by: &str) -> usize {
        let a = self.acks.lock().unwrap();
        a.at.iter()
            .zip(&a.by)
            .filter(|(at, b)| **at > t && b.as_str() == by)
            .count()
    }

    /// Resolutions in which db-rw routed to two pods or more.
    pub fn split_routes(&self) -> Vec<Vec<String>> {
        self.split_routes.lock().unwrap().clone()
    }

    /// Until `n` more commits are acknowledged than now.
    pub async fn wait_more_acks(&self, h: &Harness, n: usize) {
        let target = self.acked() + n;
        h.wait_until(
            &format!("the writer has {target} acknowledged commits"),
            async || {
                let a = self.acks.lock().unwrap();
                if a.ids.len() >= target {
                    Ok(())
                } else {
                    Err(format!("{} acknowledged, {} errors", a.ids.len(), a.errors))
                }
            },
        )
        .await;
    }

    /// Stops writing; returns every acknowledgement.
    pub async fn stop(mut self) -> Acks {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .is_err()
        {
            eprintln!("ordinal-e2e: the writer did not stop within 30s");
        }
        copy_acks(&self.acks.lock().unwrap())
    }
}

impl Drop for Writer {
    /// A failed test drops a running writer: stop it at once.
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    client: Client,
    namespace: String,
    service: String,
    password: String,
    mut next: i64,
    acks: Arc<Mutex<Acks>>,
    split_routes: Arc<Mutex<Vec<Vec<String>>>>,
    mut stop: watch::Receiver<bool>,
) {
    const RESOLVE_EVERY: Duration = Duration::from_secs(1);
    let statement = format!("INSERT INTO {WRITES_TABLE} (id, pod) VALUES ($1, $2)");
    let mut session: Option<(String, tokio_postgres::Client)> = None;
    let mut resolved_at: Option<Instant> = None;
    let pause = async |stop: &mut watch::Receiver<bool>, ms: u64| {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = stop.changed() => {}
        }
    };
    while !*stop.borrow() {
        let stale = resolved_at.is_none_or(|t| t.elapsed() >= RESOLVE_EVERY);
        if session.is_none() || stale {
            let routed = match routed_pods(&client, &namespace, &service).await {
                Ok(routed) => routed,
                Err(_) => {
                    acks.lock().unwrap().errors += 1;
                    pause(&mut stop, 200).await;
                    continue;
                }
            };
            resolved_at = Some(Instant::now());
            if routed.len() > 1 {
                split_routes.lock().unwrap().push(routed.clone());
            }
            let [pod] = routed.as_slice() else {
                session = None;
                pause(&mut stop, 100).await;
                continue;
            };
            if session.as_ref().is_none_or(|(p, _)| p != pod) {
                session = match connect_pod(&client, &namespace, pod, &password).await {
                    Ok(s) => Some((pod.clone(), s)),
                    Err(_) => {
                        acks.lock().unwrap().errors += 1;
                        pause(&mut stop, 200).await;
                        continue;
                    }
                };
            }
        }
        let Some((pod, db)) = session.as_ref() else {
            continue;
        };
        let id = next;
        next += 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, pod];
        let insert = db.execute(&statement, &params);
        let outcome = tokio::select! {
            r = tokio::time::timeout(STATEMENT_TIMEOUT, insert) => r,
            _ = stop.changed() => break,
        };
        match outcome {
            Ok(Ok(_)) => {
                let mut a = acks.lock().unwrap();
                a.ids.push(id);
                a.at.push(Instant::now());
                a.by.push(pod.clone());
            }
            // Not acknowledged: it may or may not have committed.
            _ => {
                acks.lock().unwrap().errors += 1;
                session = None;
                pause(&mut stop, 100).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The failure dump
// ---------------------------------------------------------------------------

fn ts(t: Option<&Timestamp>) -> String {
    t.map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn state_text(state: Option<&ContainerState>) -> String {
    let Some(state) = state else {
        return "unknown".to_owned();
    };
    if let Some(r) = &state.running {
        return format!("running since {}", ts(r.started_at.as_ref().map(|t| &t.0)));
    }
    if let Some(w) = &state.waiting {
        return format!(
            "waiting ({}): {}",
            w.reason.as_deref().unwrap_or("-"),
            w.message.as_deref().unwrap_or("")
        );
    }
    if let Some(t) = &state.terminated {
        return format!(
            "terminated ({}, exit {}{}) at {}: {}",
            t.reason.as_deref().unwrap_or("-"),
            t.exit_code,
            t.signal
                .map(|s| format!(", signal {s}"))
                .unwrap_or_default(),
            ts(t.finished_at.as_ref().map(|t| &t.0)),
            t.message.as_deref().unwrap_or("")
        );
    }
    "unknown".to_owned()
}

fn container_line(kind: &str, c: &ContainerStatus) -> String {
    let mut line = format!(
        "    {kind} {}: ready={} restarts={} image={} state={}",
        c.name,
        c.ready,
        c.restart_count,
        c.image,
        state_text(c.state.as_ref())
    );
    if c.last_state
        .as_ref()
        .is_some_and(|s| s.terminated.is_some())
    {
        line.push_str(&format!(
            "\n      last state: {}",
            state_text(c.last_state.as_ref())
        ));
    }
    line
}

async fn dump(client: &Client, ns: &str, operator_log: Option<&Path>) {
    let clusters: Api<PostgresCluster> = Api::namespaced(client.clone(), ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    eprintln!("\n========== ordinal-e2e: the test failed; namespace {ns} ==========");

    eprintln!("\n---------- PostgresClusters ----------");
    match clusters.list(&ListParams::default()).await {
        Ok(list) if list.items.is_empty() => eprintln!("(none)"),
        Ok(list) => {
            for mut pgc in list.items {
                pgc.metadata.managed_fields = None;
                match serde_norway::to_string(&pgc) {
                    Ok(yaml) => eprintln!("{yaml}---"),
                    Err(e) => eprintln!("(cannot print {}: {e})", pgc.name_any()),
                }
            }
        }
        Err(e) => eprintln!("(cannot list PostgresClusters: {})", error_text(&e)),
    }

    eprintln!("\n---------- StatefulSets ----------");
    match statefulsets.list(&ListParams::default()).await {
        Ok(list) => {
            for sts in list.items {
                let spec = sts.spec.as_ref();
                let status = sts.status.as_ref();
                eprintln!(
                    "{}: replicas {:?}, ready {:?}, current {:?}, updated {:?}, currentRevision {:?}, updateRevision {:?}, generation {:?} (observed {:?})",
                    sts.name_any(),
                    spec.and_then(|s| s.replicas),
                    status.and_then(|s| s.ready_replicas),
                    status.and_then(|s| s.current_replicas),
                    status.and_then(|s| s.updated_replicas),
                    status.and_then(|s| s.current_revision.clone()),
                    status.and_then(|s| s.update_revision.clone()),
                    sts.metadata.generation,
                    status.and_then(|s| s.observed_generation),
                );
            }
        }
        Err(e) => eprintln!("(cannot list StatefulSets: {})", error_text(&e)),
    }

    eprintln!("\n---------- PersistentVolumeClaims ----------");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    match pvcs.list(&ListParams::default()).await {
        Ok(list) => {
            for pvc in list.items {
                eprintln!(
                    "{}: phase {:?}, volume {:?}, class {:?}, deleting {}",
                    pvc.name_any(),
                    pvc.status.as_ref().and_then(|s| s.phase.clone()),
                    pvc.spec.as_ref().and_then(|s| s.volume_name.clone()),
                    pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()),
                    pvc.metadata.deletion_timestamp.is_some()
                );
            }
        }
        Err(e) => eprintln!("(cannot list PVCs: {})", error_text(&e)),
    }

    eprintln!("\n---------- Pods ----------");
    let pod_list = match pods.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            eprintln!("(cannot list pods: {})", error_text(&e));
            Vec::new()
        }
    };
    for pod in &pod_list {
        let status = pod.status.as_ref();
        eprintln!(
            "pod {}: phase {}, node {}, ip {}, role {}, revision {}, uid {}, created {}{}",
            pod.name_any(),
            status.and_then(|s| s.phase.as_deref()).unwrap_or("-"),
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("-"),
            status.and_then(|s| s.pod_ip.as_deref()).unwrap_or("-"),
            pod.labels()
                .get(names::LABEL_ROLE)
                .map_or("-", String::as_str),
            pod_revision(pod).unwrap_or_else(|| "-".to_owned()),
            pod.metadata.uid.as_deref().unwrap_or("-"),
            ts(pod.metadata.creation_timestamp.as_ref().map(|t| &t.0)),
            pod.metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| format!(", deleting since {}", t.0))
                .unwrap_or_default(),
        );
        for c in status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
        {
            eprintln!(
                "    condition {}={} {} {}",
                c.type_,
                c.status,
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or("")
            );
        }
        for c in status
            .and_then(|s| s.init_container_statuses.as_ref())
            .into_iter()
            .flatten()
        {
            eprintln!("{}", container_line("init", c));
        }
        for c in status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
        {
            eprintln!("{}", container_line("container", c));
        }
    }

    eprintln!("\n---------- Events (oldest first) ----------");
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    match events.list(&ListParams::default()).await {
        Ok(list) => {
            let mut items = list.items;
            let when = |e: &Event| -> Option<Timestamp> {
                e.last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or_else(|| e.event_time.as_ref().map(|t| t.0))
                    .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
                    .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
            };
            items.sort_by_key(|e| when(e));
            for e in &items {
                eprintln!(
                    "{} {} {}/{} {}: {}{}",
                    ts(when(e).as_ref()),
                    e.type_.as_deref().unwrap_or("-"),
                    e.involved_object.kind.as_deref().unwrap_or("-"),
                    e.involved_object.name.as_deref().unwrap_or("-"),
                    e.reason.as_deref().unwrap_or("-"),
                    e.message.as_deref().unwrap_or(""),
                    e.count
                        .filter(|c| *c > 1)
                        .map(|c| format!(" (x{c})"))
                        .unwrap_or_default()
                );
            }
        }
        Err(e) => eprintln!("(cannot list Events: {})", error_text(&e)),
    }

    for pod in &pod_list {
        let name = pod.name_any();
        let spec = pod.spec.as_ref();
        let containers: Vec<String> = spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .chain(spec.map(|s| s.containers.iter()).into_iter().flatten())
            .map(|c| c.name.clone())
            .collect();
        for container in containers {
            let restarted = pod
                .status
                .as_ref()
                .and_then(|s| {
                    s.container_statuses
                        .iter()
                        .chain(s.init_container_statuses.iter())
                        .flatten()
                        .find(|c| c.name == container)
                })
                .is_some_and(|c| c.restart_count > 0);
            let mut runs = vec![(false, 100)];
            if restarted {
                runs.insert(0, (true, 50));
            }
            for (previous, lines) in runs {
                let params = LogParams {
                    container: Some(container.clone()),
                    tail_lines: Some(lines),
                    previous,
                    ..LogParams::default()
                };
                let which = if previous { " (previous instance)" } else { "" };
                eprintln!(
                    "\n---------- logs {name}/{container}{which}, last {lines} lines ----------"
                );
                match tokio::time::timeout(Duration::from_secs(20), pods.logs(&name, &params)).await
                {
                    Ok(Ok(text)) if text.is_empty() => eprintln!("(empty)"),
                    Ok(Ok(text)) => eprintln!("{}", text.trim_end()),
                    Ok(Err(e)) => eprintln!("(no logs: {})", error_text(&e)),
                    Err(_) => eprintln!("(reading the logs timed out)"),
                }
            }
        }
    }

    if let Some(path) = operator_log {
        eprintln!(
            "\n---------- spawned operator log {}, last 300 lines ----------",
            path.display()
        );
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in tail_lines(&text, 300) {
                    eprintln!("{line}");
                }
            }
            Err(e) => eprintln!("(cannot read it: {e})"),
        }
    }
    eprintln!("\n========== ordinal-e2e: end of the dump of {ns} ==========\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("a_test::name"), "a_test--name");
        assert_eq!(label_value("--x--"), "x");
        assert!(label_value(&"a".repeat(100)).len() <= 63);
    }

    #[test]
    fn namespaces_are_dns_labels() {
        let ns = namespace_name();
        assert!(ns.starts_with("ordinal-e2e-"));
        assert_eq!(ns.len(), "ordinal-e2e-".len() + 6);
        assert!(
            ns.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }
}
