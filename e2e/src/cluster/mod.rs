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
//! | `ORDINAL_E2E_CONTAINERD_STATE` | unset | the node's containerd state directory (`/run/ordinal-cluster/containerd` on the local cluster): the suite signals postmasters from the node through it (a real `kill -9`, `kill -STOP`) |
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

mod config;
mod dump;
mod harness;
mod operator;
mod pods;
mod sampler;
mod sql;
mod wait;
mod writer;

use std::time::Duration;

pub use config::{Config, OperatorMode};
pub use harness::Harness;
pub use pods::{ExecOutput, Loss, pod_ready, pod_revision, postgres_restarts};
pub use sampler::{Sampler, SamplerReport, SplitBrain};
pub use sql::{connect_pod, connect_pod_with, routed_endpoints, routed_pods};
pub use writer::Writer;

/// The epoch after one failover from `before`: one more, and one more
/// again when its intent moved, the old primary stopped, to a standby
/// that held more WAL than the target (said in `lastFailover.reason`).
pub fn epoch_after_one_failover(before: i64, record: &ordinal_crds::FailoverRecord) -> i64 {
    let retargeted = record
        .reason
        .contains(ordinal_operator::failover::machine::RETARGETED);
    before + 1 + i64::from(retargeted)
}

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
const PG_PORT: u16 = 5432;

fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} ({}): {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}
