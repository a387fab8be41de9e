//! Test fixtures: small builders of clusters and pods, and a scripted API
//! server (the controller-rs `ApiServerVerifier` pattern) that checks each
//! request the reconciler sends — method, path, field manager, body — in
//! order, answers it, and fails on a missing or an extra request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource};
use ordinal_crds::{
    PostgresCluster, PostgresClusterSpec, PostgresClusterStatus, ReplicationMode, names,
};
use serde_json::{Value, json};

use crate::Context;
use crate::metrics::Metrics;
use crate::reconcile::build::BuildConfig;
use crate::reconcile::validate::{ValidCluster, validate};

/// Builds a PostgresCluster `ns/db` with 3 replicas and 10Gi volumes.
pub struct ClusterBuilder {
    pgc: PostgresCluster,
}

pub fn cluster() -> ClusterBuilder {
    let spec: PostgresClusterSpec =
        serde_json::from_value(json!({"storage": {"size": "10Gi"}})).expect("minimal spec");
    let mut pgc = PostgresCluster::new("db", spec);
    pgc.meta_mut().namespace = Some("ns".to_owned());
    pgc.meta_mut().uid = Some("7d3b2c1a-0000-4000-8000-000000000001".to_owned());
    pgc.meta_mut().generation = Some(1);
    pgc.meta_mut().resource_version = Some("100".to_owned());
    ClusterBuilder { pgc }
}

impl ClusterBuilder {
    pub fn replicas(mut self, n: i32) -> Self {
        self.pgc.spec.replicas = n;
        self
    }
    pub fn quorum(mut self, n: i32) -> Self {
        self.pgc.spec.replication.mode = ReplicationMode::Quorum;
        self.pgc.spec.replication.quorum = n;
        self
    }
    pub fn size(mut self, size: &str) -> Self {
        self.pgc.spec.storage.size = size.to_owned();
        self
    }
    pub fn parameter(mut self, key: &str, value: &str) -> Self {
        self.pgc
            .spec
            .postgresql
            .parameters
            .insert(key.to_owned(), value.to_owned());
        self
    }
    pub fn hba(mut self, line: &str) -> Self {
        self.pgc.spec.postgresql.pg_hba.push(line.to_owned());
        self
    }
    pub fn service_name(mut self, name: &str) -> Self {
        self.pgc.spec.service_name = Some(name.to_owned());
        self
    }
    pub fn min_available(mut self, n: i32) -> Self {
        self.pgc.spec.pod_disruption_budget.min_available = Some(n);
        self
    }
    pub fn superuser_secret(mut self, name: &str) -> Self {
        self.pgc.spec.superuser_secret = Some(name.to_owned());
        self
    }
    /// A status naming `primary` as currentPrimary.
    pub fn primary(mut self, primary: &str, bootstrapped: bool) -> Self {
        let status = self
            .pgc
            .status
            .get_or_insert_with(PostgresClusterStatus::default);
        status.current_primary = Some(primary.to_owned());
        status.bootstrapped = bootstrapped;
        // A running cluster whose instances all require TLS already.
        status.tls = Some(ordinal_crds::TlsStatus {
            phase: ordinal_crds::TlsPhase::Required,
            secret: Some("db-server".to_owned()),
        });
        self
    }
    pub fn build(self) -> PostgresCluster {
        self.pgc
    }
}

/// The validated form of `pgc`, for builder tests.
pub fn valid(pgc: PostgresCluster) -> ValidCluster {
    validate(&pgc).expect("usable object").expect("valid spec")
}

/// `spec.backup` to an AWS S3 bucket `backups`, credentials in Secret
/// `store`, the defaults otherwise.
pub fn s3_backup() -> ordinal_crds::BackupSpec {
    ordinal_crds::BackupSpec {
        s3: Some(ordinal_crds::S3Store {
            bucket: "backups".to_owned(),
            endpoint: None,
            region: None,
            path_style: false,
        }),
        gcs: None,
        azure: None,
        prefix: None,
        credentials_secret: "store".to_owned(),
        archive_timeout_seconds: 60,
        schedule: None,
        retention: None,
        verify: false,
    }
}

pub fn build_config() -> BuildConfig {
    BuildConfig {
        init_image: "ghcr.io/ordinal-dev/ordinal:test".to_owned(),
        init_image_pull_policy: None,
        pooler_image: "ordinal.local/pgbouncer:test".to_owned(),
        operator_namespace: Some("ordinal-system".to_owned()),
    }
}

/// A pod of cluster `db`, Ready or not, with a role label or none.
pub fn pod(name: &str, ready: bool, role: Option<&str>) -> Pod {
    let mut labels = crate::reconcile::build::labels("db");
    if let Some(role) = role {
        labels.insert(names::LABEL_ROLE.to_owned(), role.to_owned());
    }
    // Mounting what the default cluster's ConfigMap and certificate hold.
    let mounted = crate::reconcile::build::mounted_digest(&valid(cluster().build()), None);
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "labels": labels,
                     "annotations": {names::ANNOTATION_MOUNTED: mounted}},
        "spec": {"containers": [{"name": "postgres", "image": "postgres:17"}]},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    }))
    .expect("pod")
}

/// The clock of the tests.
pub fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("timestamp")
}

type Check = Box<dyn Fn(&Value) + Send>;
type Answer = Box<dyn Fn(&Value) -> (u16, Value) + Send>;

/// One expected request and its answer.
pub struct Exchange {
    method: Method,
    path: String,
    query: Vec<String>,
    check: Check,
    answer: Answer,
}

impl Exchange {
    fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            check: Box::new(|_| {}),
            answer: Box::new(|body| (200, body.clone())),
        }
    }
    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }
    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }
    pub fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path)
    }
    /// A plain PATCH (a merge patch).
    pub fn new_patch(path: impl Into<String>) -> Self {
        Self::new(Method::PATCH, path)
    }
    /// A server-side apply under `manager`, forced.
    pub fn apply(path: impl Into<String>, manager: &str) -> Self {
        let mut e = Self::new(Method::PATCH, path);
        e.query = vec![format!("fieldManager={manager}"), "force=true".to_owned()];
        e
    }
    /// Checks the request body.
    pub fn check(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Box::new(check);
        self
    }
    /// Answers with `status` and `body`.
    pub fn answer(mut self, status: u16, body: Value) -> Self {
        self.answer = Box::new(move |_| (status, body.clone()));
        self
    }
    /// Answers with a value computed from the request body.
    pub fn answer_with(mut self, f: impl Fn(&Value) -> (u16, Value) + Send + 'static) -> Self {
        self.answer = Box::new(f);
        self
    }
    pub fn not_found(self) -> Self {
        self.answer(404, status_body(404, "NotFound"))
    }
}

pub fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{reason} (scripted)"), "reason": reason, "code": code})
}

/// Answers a status patch with the cluster carrying the patched status and
/// a new resourceVersion.
pub fn with_status(pgc: &PostgresCluster) -> impl Fn(&Value) -> (u16, Value) + Send + 'static {
    let base = serde_json::to_value(pgc).expect("cluster serializes");
    move |body| {
        let mut obj = base.clone();
        let status = obj
            .as_object_mut()
            .expect("object")
            .entry("status")
            .or_insert_with(|| json!({}));
        if let (Some(status), Some(patch)) = (status.as_object_mut(), body["status"].as_object()) {
            for (k, v) in patch {
                status.insert(k.clone(), v.clone());
            }
        }
        obj["metadata"]["resourceVersion"] = json!("101");
        (200, obj)
    }
}

pub fn pod_list(pods: &[Pod]) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})
}

/// A context whose client talks to the scripted server.
pub fn mock_context() -> (Arc<Context>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let recorder = Recorder::new(client.clone(), Reporter::from("ordinal-operator"));
    let mut ctx = Context::new(
        client,
        recorder,
        Metrics::new().expect("metrics"),
        build_config(),
    );
    ctx.now = now;
    ctx.run_failover_loops = false;
    (Arc::new(ctx), ApiServer(handle))
}

pub struct ApiServer(tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    pub fn from_handle(handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) -> Self {
        Self(handle)
    }

    /// Serves `script` in order, then fails on any further request. Await
    /// the handle after dropping the context.
    pub fn run(self, script: Vec<Exchange>) -> tokio::task::JoinHandle<()> {
        let mut handle = self.0;
        tokio::spawn(async move {
            for (i, ex) in script.into_iter().enumerate() {
                let next =
                    tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
                let (request, send) = match next {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        panic!("request {i} never came: expected {} {}", ex.method, ex.path)
                    }
                    Err(_) => panic!(
                        "timed out waiting for request {i}: {} {}",
                        ex.method, ex.path
                    ),
                };
                let query = request
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .replace("%2F", "/");
                assert_eq!(
                    (request.method(), request.uri().path()),
                    (&ex.method, ex.path.as_str()),
                    "request {i}"
                );
                for q in &ex.query {
                    assert!(
                        query.split('&').any(|p| p == q),
                        "request {i} to {}: {q} not in query {query:?}",
                        ex.path
                    );
                }
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body");
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("JSON request body")
                };
                (ex.check)(&body);
                let (status, answer) = (ex.answer)(&body);
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&answer).expect("answer")))
                        .expect("response"),
                );
            }
            let extra = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
            if let Ok(Some((request, _))) = extra {
                panic!("unexpected request: {} {}", request.method(), request.uri());
            }
        })
    }
}

/// Label map helper for assertions.
pub fn labels_of(value: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(value["metadata"]["labels"].clone()).unwrap_or_default()
}
