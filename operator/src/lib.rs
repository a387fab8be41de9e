//! Ordinal's operator: reconciles PostgresClusters into StatefulSets,
//! Services, a PDB, configuration, credentials and RBAC.

// kube::Error is large; reconcile errors are rare and cold, so boxing every
// source would add noise for no measurable gain.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod controller;
mod error;
pub mod failover;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconcile;

#[cfg(test)]
mod fixtures;

use std::collections::HashMap;
use std::sync::Mutex;

pub use error::Error;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use ordinal_crds::PostgresCluster;

use crate::metrics::Metrics;
use crate::reconcile::build::BuildConfig;

/// Everything a reconcile needs, built once at start-up.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub build: BuildConfig,
    /// The clock, injectable in tests.
    pub now: fn() -> Timestamp,
    /// Consecutive failed reconciles per cluster, for the retry backoff.
    pub failures: Mutex<HashMap<ObjectRef<PostgresCluster>, u32>>,
    /// The failover loop of each cluster.
    pub loops: Mutex<HashMap<ObjectRef<PostgresCluster>, LoopHandle>>,
    /// Whether reconciles start failover loops (tests of the reconciler
    /// alone turn it off).
    pub run_failover_loops: bool,
    /// The controller's cache of PostgresClusters, once it runs: the
    /// failover loops read their cluster from it.
    pub clusters: std::sync::OnceLock<kube::runtime::reflector::Store<PostgresCluster>>,
    /// The one watch of every cluster's pods, once the controller runs:
    /// the failover loops are fed by it.
    pub pods: std::sync::OnceLock<failover::kube::PodWatch>,
}

/// A running failover loop.
pub struct LoopHandle {
    /// The uid of the cluster it serves: a cluster deleted and recreated
    /// under the same name gets a fresh loop, not the old one's memory.
    uid: Option<String>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Context {
    pub fn new(client: Client, recorder: Recorder, metrics: Metrics, build: BuildConfig) -> Self {
        Self {
            client,
            recorder,
            metrics,
            build,
            now: Timestamp::now,
            failures: Mutex::default(),
            loops: Mutex::default(),
            run_failover_loops: true,
            clusters: std::sync::OnceLock::new(),
            pods: std::sync::OnceLock::new(),
        }
    }

    /// Starts the failover loop of `namespace/name` unless it runs. A loop
    /// ends by itself when its cluster is deleted.
    pub fn ensure_failover_loop(&self, namespace: &str, name: &str, uid: Option<&str>) {
        if !self.run_failover_loops {
            return;
        }
        let Some(pods) = self.pods.get() else {
            tracing::warn!(
                namespace,
                cluster = name,
                "no pod watch yet: failover loop not started"
            );
            return;
        };
        let Ok(mut loops) = self.loops.lock() else {
            return;
        };
        let key = ObjectRef::new(name).within(namespace);
        match loops.get(&key) {
            Some(l) if !l.task.is_finished() && l.uid.as_deref() == uid => return,
            Some(l) => {
                let _ = l.stop.send(true);
            }
            None => {}
        }
        let seam = failover::kube::KubeSeam::new(
            self.client.clone(),
            self.recorder.clone(),
            pods,
            namespace,
            name,
            self.clusters.get().cloned(),
        );
        let failover = failover::FailoverLoop::new(seam, Some(self.metrics.clone()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (ns, cluster, metrics) = (namespace.to_owned(), name.to_owned(), self.metrics.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = failover.run(stopped).await {
                tracing::error!(namespace = %ns, cluster = %cluster, %error, "failover loop ended");
            }
            metrics.forget_cluster(&ns, &cluster);
        });
        tracing::info!(namespace, cluster = name, "failover loop started");
        loops.insert(
            key,
            LoopHandle {
                uid: uid.map(str::to_owned),
                stop,
                task,
            },
        );
    }

    /// Stops every failover loop (on shutdown) and waits for them.
    pub async fn stop_failover_loops(&self) {
        let handles: Vec<LoopHandle> = match self.loops.lock() {
            Ok(mut loops) => loops.drain().map(|(_, h)| h).collect(),
            Err(_) => return,
        };
        for handle in &handles {
            let _ = handle.stop.send(true);
        }
        for handle in handles {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), handle.task).await;
        }
    }

    /// Publishes an Event on the PostgresCluster. A failure to publish is
    /// logged, never fatal: Events are for people, not for correctness.
    pub async fn publish(
        &self,
        pgc: &PostgresCluster,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            // The API server refuses a note over 1 kB (the Event is lost).
            note: Some(note.chars().take(1000).collect()),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &pgc.object_ref(&())).await {
            tracing::warn!(%error, reason, "failed to publish an event");
        }
    }
}
