//! Status as a function of what was observed, and the two ways it is written.
//!
//! Two field managers share `.status`, so that one never erases the other's
//! fields (server-side apply removes fields a manager owned and omitted):
//! - [`STATUS_MANAGER`] owns what the reconciler observes: phase,
//!   conditions, counts, selector.
//! - [`PRIMARY_MANAGER`] owns who is primary: `currentPrimary`,
//!   `targetPrimary`, `epoch`, `bootstrapped`. It is always written with the
//!   resourceVersion it was computed from, so a stale writer fails with a
//!   conflict instead of overwriting a newer primary.
//! - [`TLS_MANAGER`] owns `tls`, the step TLS has reached on the instances
//!   (see [`super::tls_phase`]).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use ordinal_crds::{
    CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY, Phase, PostgresClusterStatus, names,
};
use serde_json::{Value, json};

pub const STATUS_MANAGER: &str = "ordinal-operator/status";
pub const PRIMARY_MANAGER: &str = "ordinal-operator/primary";
pub const TLS_MANAGER: &str = "ordinal-operator/tls";

/// status.tls, as [`TLS_MANAGER`] writes it.
pub fn tls_patch(tls: &ordinal_crds::TlsStatus) -> Value {
    json!({
        "apiVersion": "ordinal.dev/v1alpha1",
        "kind": "PostgresCluster",
        "status": { "tls": tls }
    })
}

/// What the reconciler saw of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub ready: bool,
    pub role: Option<String>,
    pub terminating: bool,
    /// Why its `init` container keeps failing (the last line it wrote:
    /// ordinal-init's error), while it does.
    pub failing: Option<String>,
}

impl PodView {
    pub fn from_pod(pod: &Pod) -> Self {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Self {
            name: pod.name_any(),
            ready,
            role: pod.labels().get(names::LABEL_ROLE).cloned(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            failing: init_failure(pod),
        }
    }
}

/// The error of the pod's `init` container while it fails: from its last
/// termination message (the kubelet keeps the log's end), the last error
/// ordinal-init logged and the lines after it, without the log line's
/// time and level; else the last line.
pub fn init_failure(pod: &Pod) -> Option<String> {
    let init = pod
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == names::INIT_CONTAINER)?;
    // Done, or running again after a failure: not failing now.
    if init.state.as_ref().is_some_and(|s| {
        s.running.is_some() || s.terminated.as_ref().is_some_and(|t| t.exit_code == 0)
    }) {
        return None;
    }
    let terminated = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| init.last_state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code != 0)?;
    let message = terminated.message.as_deref().unwrap_or_default();
    // The error and what follows it (a server log's end), else the last line.
    let error = match message.rfind(" ERROR ") {
        Some(at) => &message[at + " ERROR ".len()..],
        None => message.lines().rev().find(|l| !l.trim().is_empty())?,
    };
    let said: Vec<&str> = error
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    (!said.is_empty()).then(|| said.join(" | ").chars().take(800).collect())
}

/// Why the cluster cannot be built as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// The spec is invalid: the message names the fields.
    InvalidSpec(String),
    /// A Secret the spec names does not exist.
    MissingSecret(String),
    /// Volumes exist but no primary is recorded: a person must say whose
    /// data is the latest.
    ExistingVolumes(String),
    /// spec.image changes the PostgreSQL major version.
    MajorVersionChange(String),
}

impl Blocker {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::MissingSecret(_) => "MissingSecret",
            Self::ExistingVolumes(_) => "ExistingVolumes",
            Self::MajorVersionChange(_) => "MajorVersionChange",
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::InvalidSpec(m)
            | Self::MissingSecret(m)
            | Self::ExistingVolumes(m)
            | Self::MajorVersionChange(m) => m,
        }
    }

    fn waiting(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "waiting for a valid spec",
            Self::MissingSecret(_) => "waiting for the Secret to exist",
            Self::ExistingVolumes(_) => "waiting for the primary to be named",
            Self::MajorVersionChange(_) => "waiting for an image of the running major version",
        }
    }
}

/// Everything the reconciler-owned part of the status is computed from.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub cluster: &'a str,
    pub generation: Option<i64>,
    pub desired: i32,
    pub pods: &'a [PodView],
    pub current_primary: Option<&'a str>,
    pub target_primary: Option<&'a str>,
    pub bootstrapped: bool,
    pub blocker: Option<Blocker>,
}

/// The reconciler-owned part of the status.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedStatus {
    pub observed_generation: Option<i64>,
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub ready: String,
    pub selector: String,
}

pub(crate) fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        // Filled in by `keep_transition_times`.
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Computes the reconciler-owned status. `old` keeps lastTransitionTime of
/// conditions whose status did not change; `now` stamps the others.
pub fn compute(
    obs: &Observed<'_>,
    old: Option<&PostgresClusterStatus>,
    now: Time,
) -> ObservedStatus {
    let live: Vec<&PodView> = obs.pods.iter().filter(|p| !p.terminating).collect();
    let ready_replicas = live.iter().filter(|p| p.ready).count() as i32;
    let primary_ready = obs
        .current_primary
        .is_some_and(|primary| live.iter().any(|p| p.name == primary && p.ready));
    let all_ready = ready_replicas >= obs.desired && primary_ready;
    let generation = obs.generation;

    let (phase, ready, progressing, degraded) = match &obs.blocker {
        Some(blocker) => {
            let reason = blocker.reason();
            (
                Phase::Degraded,
                condition(
                    CONDITION_READY,
                    primary_ready,
                    if primary_ready {
                        "PrimaryReady"
                    } else {
                        reason
                    },
                    blocker.message().to_owned(),
                    generation,
                ),
                condition(
                    CONDITION_PROGRESSING,
                    false,
                    reason,
                    blocker.waiting().to_owned(),
                    generation,
                ),
                condition(
                    CONDITION_DEGRADED,
                    true,
                    reason,
                    blocker.message().to_owned(),
                    generation,
                ),
            )
        }
        None => {
            let not_ready: Vec<&str> = live
                .iter()
                .filter(|p| !p.ready)
                .map(|p| p.name.as_str())
                .collect();
            let failing: Vec<String> = live
                .iter()
                .filter_map(|p| Some(format!("{} cannot start: {}", p.name, p.failing.as_ref()?)))
                .collect();
            let mut summary = format!("{ready_replicas}/{} instances ready", obs.desired);
            if !failing.is_empty() {
                summary = format!("{summary}; {}", failing.join("; "));
            }
            // Degraded: the primary or an existing instance is down.
            // Creating: the cluster is new, or instances are still to be
            // created (a scale-up) while all existing ones are ready.
            let existing_down = !primary_ready || !not_ready.is_empty();
            let phase = if obs.target_primary.is_some() {
                Phase::FailingOver
            } else if all_ready {
                Phase::Healthy
            } else if !obs.bootstrapped || !existing_down {
                Phase::Creating
            } else {
                Phase::Degraded
            };
            let ready = if all_ready {
                condition(
                    CONDITION_READY,
                    true,
                    "AllInstancesReady",
                    summary.clone(),
                    generation,
                )
            } else if !primary_ready {
                let primary = obs.current_primary.unwrap_or("none");
                condition(
                    CONDITION_READY,
                    false,
                    "PrimaryNotReady",
                    format!("primary {primary} is not ready; {summary}"),
                    generation,
                )
            } else {
                condition(
                    CONDITION_READY,
                    false,
                    "InstancesNotReady",
                    format!("{summary}; not ready: {}", not_ready.join(", ")),
                    generation,
                )
            };
            let progressing = if all_ready {
                condition(
                    CONDITION_PROGRESSING,
                    false,
                    "Reconciled",
                    summary.clone(),
                    generation,
                )
            } else if obs.bootstrapped && existing_down {
                condition(
                    CONDITION_PROGRESSING,
                    true,
                    "Recovering",
                    format!("waiting for instances to become ready; {summary}"),
                    generation,
                )
            } else if obs.bootstrapped {
                condition(
                    CONDITION_PROGRESSING,
                    true,
                    "Scaling",
                    format!("creating instances; {summary}"),
                    generation,
                )
            } else {
                condition(
                    CONDITION_PROGRESSING,
                    true,
                    "Creating",
                    format!("creating the cluster; {summary}"),
                    generation,
                )
            };
            let degraded = if phase == Phase::Degraded {
                condition(
                    CONDITION_DEGRADED,
                    true,
                    if primary_ready {
                        "InstancesNotReady"
                    } else {
                        "PrimaryNotReady"
                    },
                    summary,
                    generation,
                )
            } else {
                condition(CONDITION_DEGRADED, false, "AsExpected", summary, generation)
            };
            (phase, ready, progressing, degraded)
        }
    };

    let mut conditions = vec![ready, progressing, degraded];
    keep_transition_times(&mut conditions, old, now);
    ObservedStatus {
        observed_generation: generation,
        phase,
        conditions,
        replicas: live.len() as i32,
        ready_replicas,
        ready: format!("{ready_replicas}/{}", obs.desired),
        selector: crate::reconcile::build::selector_string(obs.cluster),
    }
}

/// lastTransitionTime moves only when a condition's status flips.
pub(crate) fn keep_transition_times(
    conditions: &mut [Condition],
    old: Option<&PostgresClusterStatus>,
    now: Time,
) {
    for c in conditions {
        c.last_transition_time = match old.and_then(|o| o.condition(&c.type_)) {
            Some(prev) if prev.status == c.status => prev.last_transition_time.clone(),
            _ => now.clone(),
        };
    }
}

/// The server-side apply body of the reconciler-owned status.
pub fn observed_patch(status: &ObservedStatus) -> Value {
    json!({
        "apiVersion": "ordinal.dev/v1alpha1",
        "kind": "PostgresCluster",
        "status": {
            "observedGeneration": status.observed_generation,
            "phase": status.phase,
            "conditions": status.conditions,
            "replicas": status.replicas,
            "readyReplicas": status.ready_replicas,
            "ready": status.ready,
            "selector": status.selector,
        }
    })
}

/// Who is primary: the fields [`PRIMARY_MANAGER`] owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryStatus {
    pub current_primary: String,
    pub target_primary: Option<String>,
    pub epoch: i64,
    pub bootstrapped: bool,
    /// How targetPrimary is being promoted.
    pub pending: Option<ordinal_crds::PendingPromotion>,
}

impl PrimaryStatus {
    pub fn from_status(status: &PostgresClusterStatus) -> Option<Self> {
        Some(Self {
            current_primary: status.current_primary.clone()?,
            target_primary: status.target_primary.clone(),
            epoch: status.epoch,
            bootstrapped: status.bootstrapped,
            pending: status.pending_promotion.clone(),
        })
    }
}

/// The apply body of the primary fields, guarded by `resource_version`.
pub fn primary_patch(primary: &PrimaryStatus, resource_version: Option<&str>) -> Value {
    let mut status = json!({
        "currentPrimary": primary.current_primary,
        "epoch": primary.epoch,
        "bootstrapped": primary.bootstrapped,
    });
    if let Some(target) = &primary.target_primary {
        status["targetPrimary"] = json!(target);
        if let Some(pending) = &primary.pending {
            status["pendingPromotion"] = json!(pending);
        }
    }
    let mut body = json!({
        "apiVersion": "ordinal.dev/v1alpha1",
        "kind": "PostgresCluster",
        "status": status,
    });
    if let Some(rv) = resource_version {
        body["metadata"] = json!({ "resourceVersion": rv });
    }
    body
}

/// How a cluster without a recorded primary gets one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitialPrimary {
    /// A brand-new cluster: ordinal 0 runs initdb.
    New(String),
    /// Data exists and this pod's is named the primary's (a pod labelled
    /// primary, or the `ordinal.dev/primary` annotation): the cluster is
    /// bootstrapped already.
    Adopt(String),
    /// Volumes of the cluster exist but nothing says whose data is the
    /// latest: choosing wrongly would rewind away committed data. Says why.
    Ask(String),
}

/// The primary of a cluster that has no status yet (a new cluster, or one
/// recreated over its retained volumes, or restored without its status).
pub fn initial_primary(
    cluster: &str,
    pods: &[PodView],
    annotation: Option<&str>,
    volumes: &[String],
) -> InitialPrimary {
    if let Some(pod) = annotation {
        return InitialPrimary::Adopt(pod.to_owned());
    }
    if let Some(pod) = pods
        .iter()
        .find(|p| p.role.as_deref() == Some(names::ROLE_PRIMARY) && !p.terminating)
    {
        return InitialPrimary::Adopt(pod.name.clone());
    }
    if volumes.is_empty() {
        return InitialPrimary::New(names::pod(cluster, 0));
    }
    InitialPrimary::Ask(format!(
        "volumes of this cluster already exist ({}) but no primary is recorded: \
         annotate the cluster with {}=<pod whose data is the latest> to adopt them",
        volumes.join(", "),
        names::ANNOTATION_PRIMARY
    ))
}

#[cfg(test)]
mod tests;
