//! The kube-runtime Controller: watches PostgresClusters, the objects they
//! own and their pods, and runs `reconcile` with a per-cluster backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use ordinal_crds::{PostgresCluster, names};
use std::time::Duration;

use crate::failover::kube::PodWatch;
use crate::{Context, Error, reconcile};

/// Longest wait between retries of a failing cluster.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot list PostgresClusters: is the CRD installed (kubectl apply -f deploy/crds/) and may the operator list them?"
    )]
    CrdMissing(#[source] kube::Error),
}

/// Runs until SIGTERM or SIGINT, then finishes the reconciles under way.
pub async fn run(ctx: Arc<Context>, ready: Arc<AtomicBool>) -> Result<(), StartError> {
    let client = ctx.client.clone();
    let clusters: Api<PostgresCluster> = Api::all(client.clone());
    clusters
        .list(&ListParams::default().limit(1))
        .await
        .map_err(StartError::CrdMissing)?;

    let managed = || {
        watcher::Config::default().labels(&format!(
            "{}={}",
            names::LABEL_MANAGED_BY,
            names::MANAGED_BY
        ))
    };
    // The failover loops write the status every few seconds (positions,
    // lags): only what a reconcile acts on wakes it, not every write.
    // (Controller::for_stream is behind kube's unstable-runtime feature.)
    let (triggers, pod_triggers) = futures::channel::mpsc::unbounded();
    let _ = ctx
        .pods
        .set(PodWatch::start(client.clone(), Some(triggers)));
    let (reader, writer) = reflector::store();
    let changes = watcher(clusters, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(forget_managed_fields)
        .reflect(writer)
        .touched_objects()
        .predicate_filter(reconcile_inputs, PredicateConfig::default());
    let controller = Controller::for_stream(changes, reader)
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .owns(Api::<StatefulSet>::all(client.clone()), managed())
        .owns(Api::<Service>::all(client.clone()), managed())
        .owns(Api::<ConfigMap>::all(client.clone()), managed())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), managed())
        // Pods belong to the StatefulSet, not to us; a recreated pod needs
        // its role label at once, so pod events map to their cluster. One
        // watch serves this and every failover loop.
        .reconcile_on(pod_triggers)
        .shutdown_on_signal();
    // The failover loops read their cluster from the controller's cache.
    let _ = ctx.clusters.set(controller.store());
    ready.store(true, Ordering::Relaxed);
    tracing::info!("controller started");
    let clusters = controller
        .run(reconcile_counted, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not complete"),
            }
        });
    // PostgresBackups, beside: their own controller, under the same Lease.
    futures::join!(clusters, crate::backup::run(ctx));
    tracing::info!("controller stopped");
    Ok(())
}

/// At most this many reconciles at once. Unbounded, a start-up (or a
/// resync) with a hundred clusters decoded every cluster's pods and built
/// every child object at once: that peak, not the steady state, set the
/// operator's resident memory. Each reconcile mostly waits for the API
/// server, so a few at a time keep up on any node.
const RECONCILE_CONCURRENCY: u16 = 4;

/// Drops an object's `managedFields` before it is cached: nothing here
/// reads them (server-side apply keeps its own record on the server), and
/// they are most of a small object — every look of the failover loops
/// copies its cluster, every cached pod holds them.
pub fn forget_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// A hash of what a reconcile reads from its PostgresCluster: the spec (its
/// generation), the annotations and labels, the deletion, and the parts of
/// the status it acts on — the primary and a promotion under way, and per
/// instance its role, readiness and whether it lags (the rolling update
/// waits for that). Positions, lag figures and the conditions the failover
/// loop writes are left out: a status write of theirs does not wake the
/// reconciler (with 100 clusters it did ten times a second, each re-applying
/// every child).
pub fn reconcile_inputs(pgc: &PostgresCluster) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let meta = &pgc.metadata;
    meta.generation.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    if let Some(status) = &pgc.status {
        status.current_primary.hash(&mut hasher);
        status.target_primary.hash(&mut hasher);
        status.pending_promotion.is_some().hash(&mut hasher);
        status.epoch.hash(&mut hasher);
        status.bootstrapped.hash(&mut hasher);
        for i in &status.instances {
            i.pod.hash(&mut hasher);
            i.role.hash(&mut hasher);
            i.ready.hash(&mut hasher);
            i.lag_bytes.map(|b| b > 0).hash(&mut hasher);
        }
    }
    Some(hasher.finish())
}

/// `reconcile`, plus its metrics and the reset of the backoff.
async fn reconcile_counted(pgc: Arc<PostgresCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile::reconcile(pgc.clone(), ctx.clone()).await;
    ctx.metrics.observe_reconcile(
        &pgc.namespace().unwrap_or_default(),
        &pgc.name_any(),
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::category),
    );
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&ObjectRef::from_obj(&*pgc));
    }
    result
}

/// Retries a failed reconcile after an exponential, jittered delay that
/// starts at the error's base delay and grows per consecutive failure.
fn error_policy(pgc: Arc<PostgresCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx
        .failures
        .lock()
        .ok()
        .and_then(|mut failures| {
            let attempt = failures.entry(ObjectRef::from_obj(&*pgc)).or_insert(0);
            *attempt += 1;
            retry_delay(error.base_retry(), *attempt)
        })
        .unwrap_or(MAX_RETRY);
    tracing::warn!(
        cluster = %pgc.name_any(),
        namespace = %pgc.namespace().unwrap_or_default(),
        error = %error,
        source = ?std::error::Error::source(error).map(ToString::to_string),
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// The delay before retry `attempt` (1-based).
pub fn retry_delay(base: Duration, attempt: u32) -> Option<Duration> {
    ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(MAX_RETRY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempt.saturating_sub(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cluster;
    use ordinal_crds::{InstanceStatus, Role};

    fn instance(pod: &str, lag_bytes: i64) -> InstanceStatus {
        InstanceStatus {
            pod: pod.to_owned(),
            role: Role::Replica,
            ready: true,
            lsn: Some(format!("0/{:X}", 0x3000000 + lag_bytes)),
            lag_bytes: Some(lag_bytes),
            lag_seconds: Some(0.0),
            timeline: Some(1),
            ip: None,
            ssl: None,
            upstream_sslmode: None,
        }
    }

    #[test]
    fn failover_loop_figures_do_not_wake_the_reconciler() {
        let mut pgc = cluster().primary("db-0", true).build();
        let status = pgc.status.get_or_insert_with(Default::default);
        status.instances = vec![instance("db-1", 0)];
        let before = reconcile_inputs(&pgc);

        // Positions and lag figures: not an input.
        let status = pgc.status.get_or_insert_with(Default::default);
        status.instances[0].lsn = Some("0/5000000".to_owned());
        status.primary_lsn = Some("0/5000000".to_owned());
        status.max_lag = Some("0B".to_owned());
        status.last_failover = None;
        assert_eq!(reconcile_inputs(&pgc), before);

        // A replica starting to lag is (the rolling update waits on it).
        let mut lagging = pgc.clone();
        if let Some(s) = lagging.status.as_mut() {
            s.instances[0].lag_bytes = Some(4096);
        }
        assert_ne!(reconcile_inputs(&lagging), before);

        // So are the primary, a promotion, the spec and the annotations.
        let mut promoted = pgc.clone();
        if let Some(s) = promoted.status.as_mut() {
            s.target_primary = Some("db-1".to_owned());
        }
        assert_ne!(reconcile_inputs(&promoted), before);
        let mut changed = pgc.clone();
        changed.metadata.generation = Some(7);
        assert_ne!(reconcile_inputs(&changed), before);
        let mut annotated = pgc;
        annotated
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("ordinal.dev/primary".to_owned(), "db-2".to_owned());
        assert_ne!(reconcile_inputs(&annotated), before);
    }

    #[test]
    fn retries_back_off_up_to_five_minutes() {
        let first = retry_delay(Duration::from_secs(1), 1).expect("delay");
        assert!(
            first >= Duration::from_secs(1) && first < Duration::from_secs(3),
            "{first:?}"
        );
        let fifth = retry_delay(Duration::from_secs(1), 5).expect("delay");
        assert!(fifth >= Duration::from_secs(16), "{fifth:?}");
        let late = retry_delay(Duration::from_secs(1), 40).expect("delay");
        assert!(late <= MAX_RETRY * 2, "{late:?}");
        assert!(late >= MAX_RETRY, "{late:?}");
    }
}
