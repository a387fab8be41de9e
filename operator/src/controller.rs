//! The kube-runtime Controller: watches PostgresClusters, the objects they
//! own and their pods, and runs `reconcile` with a per-cluster backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use ordinal_crds::{PostgresCluster, names};
use std::time::Duration;

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
    let controller = Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(Api::<StatefulSet>::all(client.clone()), managed())
        .owns(Api::<Service>::all(client.clone()), managed())
        .owns(Api::<ConfigMap>::all(client.clone()), managed())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), managed())
        // Pods belong to the StatefulSet, not to us; a recreated pod needs
        // its role label at once, so pod events map to their cluster.
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(names::LABEL_CLUSTER),
            |pod| {
                let cluster = pod.labels().get(names::LABEL_CLUSTER)?.clone();
                Some(ObjectRef::new(&cluster).within(&pod.namespace()?))
            },
        )
        .shutdown_on_signal();
    // The failover loops read their cluster from the controller's cache.
    let _ = ctx.clusters.set(controller.store());
    ready.store(true, Ordering::Relaxed);
    tracing::info!("controller started");
    controller
        .run(reconcile_counted, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not complete"),
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
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
