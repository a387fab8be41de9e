//! Ordinal's operator: reconciles PostgresClusters into StatefulSets,
//! Services, a PDB, configuration, credentials and RBAC.

// kube::Error is large; reconcile errors are rare and cold, so boxing every
// source would add noise for no measurable gain.
#![allow(clippy::result_large_err)]

pub mod controller;
mod error;
pub mod failover;
pub mod http;
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
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &pgc.object_ref(&())).await {
            tracing::warn!(%error, reason, "failed to publish an event");
        }
    }
}
