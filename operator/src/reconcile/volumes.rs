//! The cluster's data volumes: grown when `spec.storage.size` grows, and
//! watched for the placement mistake that leaves a pod Pending for good (a
//! volume bound in a zone where its pod cannot run).
//!
//! A StatefulSet's volumeClaimTemplates never change, so growing the
//! volumes is three steps, as the peers do it: each bound claim is patched
//! to the new size (the StorageClass's driver grows the volume), then the
//! StatefulSet is deleted with `propagationPolicy: Orphan` — its pods keep
//! running, untouched — and the next reconcile creates it again with the new
//! claim size. Its pod template is the same, so it adopts the pods without
//! a restart. Until a StorageClass allows expansion, nothing is touched and
//! the `VolumesResized` condition says why.
//!
//! [`plan`] decides from what was seen; [`reconcile_volumes`] reads, acts
//! and writes the two conditions under a field manager of their own.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use ordinal_crds::{
    CONDITION_VOLUME_PLACEMENT, CONDITION_VOLUMES_RESIZED, PostgresCluster, PostgresClusterStatus,
    names,
};
use serde_json::json;

use crate::reconcile::build;
use crate::reconcile::status::{self, keep_transition_times};
use crate::reconcile::validate::{ValidCluster, quantity_bytes};
use crate::{Context, Error};

/// The field manager of the volume conditions.
pub const VOLUMES_MANAGER: &str = "ordinal-operator/volumes";

/// The default StorageClass's annotation.
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// What was seen of one data volume (a PVC of the claim template).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeView {
    pub name: String,
    pub bound: bool,
    pub requested: Option<String>,
    pub capacity: Option<String>,
    pub class: Option<String>,
    /// A resize under way or failed, from the claim's conditions
    /// (`Resizing`, `FileSystemResizePending`, `ControllerResizeError`…).
    pub resizing: Option<String>,
}

impl VolumeView {
    pub fn from_pvc(pvc: &PersistentVolumeClaim) -> Self {
        let status = pvc.status.as_ref();
        let storage = |m: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >| { m.and_then(|m| m.get("storage")).map(|q| q.0.clone()) };
        let resizing = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.status == "True"))
            .map(|c| match c.message.as_deref().filter(|m| !m.is_empty()) {
                Some(message) => format!("{}: {message}", c.type_),
                None => c.type_.clone(),
            });
        Self {
            name: pvc.name_any(),
            bound: status.and_then(|s| s.phase.as_deref()) == Some("Bound"),
            requested: storage(
                pvc.spec
                    .as_ref()
                    .and_then(|s| s.resources.as_ref())
                    .and_then(|r| r.requests.as_ref()),
            ),
            capacity: storage(status.and_then(|s| s.capacity.as_ref())),
            class: pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()),
            resizing,
        }
    }
}

/// The StorageClass of the volumes, as far as it matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassView {
    pub name: String,
    pub expandable: bool,
    /// `volumeBindingMode: Immediate`: volumes are created before the
    /// scheduler has chosen a node for the pod.
    pub immediate: bool,
}

impl ClassView {
    pub fn from_class(class: &StorageClass) -> Self {
        Self {
            name: class.name_any(),
            expandable: class.allow_volume_expansion == Some(true),
            immediate: class.volume_binding_mode.as_deref().unwrap_or("Immediate") == "Immediate",
        }
    }
}

/// A pod the scheduler cannot place because of its volume's node affinity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrandedPod {
    pub pod: String,
    pub claim: String,
    /// Where the volume is pinned (`topology.kubernetes.io/zone in (b)`).
    pub pinned_to: Option<String>,
    /// The scheduler's own words.
    pub scheduler: String,
}

/// Everything the volume plan is computed from.
#[derive(Clone, Debug)]
pub struct Seen<'a> {
    /// spec.storage.size.
    pub want: &'a str,
    /// The StatefulSet's claim size; None when it does not exist.
    pub template: Option<&'a str>,
    /// The StatefulSet is being deleted (an orphan delete of a resize).
    pub template_deleting: bool,
    pub volumes: &'a [VolumeView],
    pub class: Option<&'a ClassView>,
    /// The class name the volumes use or will use, even when not found.
    pub class_name: Option<&'a str>,
    pub stranded: &'a [StrandedPod],
    pub primary: Option<&'a str>,
}

/// What to do with the StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatefulSetStep {
    /// Apply it with this claim size.
    Apply(String),
    /// Delete it, orphaning its pods, to re-create it with the new size.
    Recreate,
    /// Its orphan delete is still going on: apply nothing yet.
    Wait,
}

/// A condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub statefulset: StatefulSetStep,
    /// Claims to patch to `want`, before the StatefulSet step.
    pub expand: Vec<String>,
    pub resized: Verdict,
    pub placement: Verdict,
}

fn bytes(q: Option<&str>) -> Option<f64> {
    q.and_then(quantity_bytes)
}

/// Decides the StatefulSet's claim size, which claims to grow, and the two
/// conditions.
pub fn plan(seen: &Seen<'_>) -> Plan {
    let want = bytes(Some(seen.want));
    let template = bytes(seen.template);
    let expandable = seen.class.is_some_and(|c| c.expandable);
    let class = seen.class_name.unwrap_or("(the cluster default)");
    let smaller = |v: &VolumeView| match (bytes(v.requested.as_deref()), want) {
        (Some(have), Some(want)) => have < want,
        _ => false,
    };
    let to_grow: Vec<&VolumeView> = seen
        .volumes
        .iter()
        .filter(|v| v.bound && smaller(v))
        .collect();
    let grow_template = matches!((template, want), (Some(t), Some(w)) if t < w);
    let shrink_template = matches!((template, want), (Some(t), Some(w)) if t > w);
    let current = seen.template.unwrap_or(seen.want).to_owned();

    let not_allowed = Verdict {
        ok: false,
        reason: "ExpansionNotAllowed",
        message: format!(
            "storage.size is {} but the volumes stay at {current}: StorageClass {class} does not allow volume expansion \
             (allowVolumeExpansion is not true). Set storage.size back to {current}, or, if the class's driver can \
             grow volumes, set allowVolumeExpansion: true on it",
            seen.want
        ),
    };
    let (statefulset, expand, blocked) = if seen.template_deleting {
        (StatefulSetStep::Wait, Vec::new(), None)
    } else if shrink_template {
        let verdict = Verdict {
            ok: false,
            reason: "CannotShrink",
            message: format!(
                "storage.size {} is smaller than the volumes' {current}: a volume never shrinks; set storage.size back to {current}",
                seen.want
            ),
        };
        (StatefulSetStep::Apply(current), Vec::new(), Some(verdict))
    } else if (grow_template || !to_grow.is_empty()) && !expandable {
        (
            StatefulSetStep::Apply(current),
            Vec::new(),
            Some(not_allowed),
        )
    } else {
        let expand = to_grow.iter().map(|v| v.name.clone()).collect();
        let step = if grow_template {
            StatefulSetStep::Recreate
        } else {
            StatefulSetStep::Apply(seen.want.to_owned())
        };
        (step, expand, None)
    };

    let resized = blocked.unwrap_or_else(|| {
        let bound: Vec<&VolumeView> = seen.volumes.iter().filter(|v| v.bound).collect();
        let short: Vec<String> = bound
            .iter()
            .filter(|v| match (bytes(v.capacity.as_deref()), want) {
                (Some(have), Some(want)) => have < want,
                (None, _) => true,
                _ => false,
            })
            .map(|v| {
                let have = v.capacity.as_deref().unwrap_or("no capacity yet");
                match &v.resizing {
                    Some(why) => format!("{} ({have}, {why})", v.name),
                    None => format!("{} ({have})", v.name),
                }
            })
            .collect();
        if short.is_empty() && !grow_template && !seen.template_deleting {
            Verdict {
                ok: true,
                reason: "AsRequested",
                message: format!("every volume has {} (storage.size)", seen.want),
            }
        } else {
            let mut message = format!(
                "growing the volumes to {}: {} of {} done",
                seen.want,
                bound.len() - short.len(),
                bound.len()
            );
            if !short.is_empty() {
                message.push_str(&format!("; waiting for {}", short.join(", ")));
            }
            if grow_template || seen.template_deleting {
                message.push_str("; the StatefulSet is re-created with the new claim size, its pods keep running");
            }
            Verdict {
                ok: false,
                reason: "Resizing",
                message,
            }
        }
    });

    let placement = if !seen.stranded.is_empty() {
        let said: Vec<String> = seen
            .stranded
            .iter()
            .map(|s| {
                let pinned = s
                    .pinned_to
                    .as_deref()
                    .map(|p| format!(" to {p}"))
                    .unwrap_or_default();
                let fix = if seen.primary == Some(s.pod.as_str()) {
                    "make a node there schedulable (uncordon it, or add one in that zone); it is the primary's volume: never delete it".to_owned()
                } else {
                    format!(
                        "make a node there schedulable (uncordon it, or add one in that zone); or, as {} is a replica, \
                         delete the claim {} and then the pod: the pod is re-created where it fits and cloned from the primary",
                        s.pod, s.claim
                    )
                };
                format!(
                    "{} cannot be scheduled: its volume {} is pinned{pinned}, where no node can run it ({}). Fix: {fix}",
                    s.pod, s.claim, s.scheduler
                )
            })
            .collect();
        Verdict {
            ok: false,
            reason: "VolumeNodeAffinityConflict",
            message: said.join("; "),
        }
    } else if seen.class.is_some_and(|c| c.immediate) {
        Verdict {
            ok: false,
            reason: "ImmediateBinding",
            message: format!(
                "StorageClass {class} binds volumes when they are created (volumeBindingMode: Immediate), before the \
                 scheduler chooses a node: a volume can land in a zone where its pod cannot run, and the pod stays \
                 Pending. Use a StorageClass with volumeBindingMode: WaitForFirstConsumer (storage.storageClassName \
                 is fixed at creation: set it on a new cluster)"
            ),
        }
    } else {
        Verdict {
            ok: true,
            reason: "WaitForFirstConsumer",
            message: match seen.class {
                Some(c) => format!(
                    "volumes are created where the scheduler places their pods (StorageClass {}: WaitForFirstConsumer)",
                    c.name
                ),
                None => format!("no conflict seen (StorageClass {class} not found)"),
            },
        }
    };

    Plan {
        statefulset,
        expand,
        resized,
        placement,
    }
}

/// The claim size of an existing StatefulSet's data template.
pub fn template_size(sts: &StatefulSet) -> Option<String> {
    sts.spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some(names::VOLUME_DATA))?
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// Why the scheduler refuses `pod` for its volume's node affinity, if so.
fn volume_conflict(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Pending") {
        return None;
    }
    let scheduled = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    let message = scheduled.message.as_deref().unwrap_or_default();
    // The scheduler's words: "volume node affinity conflict" before
    // Kubernetes 1.30ish, "didn't match PersistentVolume's node affinity"
    // since.
    let conflict = message.contains("volume node affinity conflict")
        || message.contains("didn't match PersistentVolume's node affinity");
    (scheduled.status == "False" && conflict).then(|| message.trim().to_owned())
}

/// Whether the scheduler refused `pod` (PodScheduled False, Unschedulable).
pub fn unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .filter(|s| s.phase.as_deref() == Some("Pending"))
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// `key in (values)` of a PersistentVolume's required node affinity.
fn pinned_to(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    let said: Vec<String> = terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .map(|e| {
            format!(
                "{} {} ({})",
                e.key,
                e.operator.to_lowercase(),
                e.values
                    .iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    (!said.is_empty()).then(|| said.join(" or "))
}

/// The result of the volume step for the rest of the reconcile.
pub struct Outcome {
    /// The claim size to apply the StatefulSet with; None: do not apply it
    /// in this reconcile.
    pub template_size: Option<String>,
    /// Whether a resize is going on.
    pub in_progress: bool,
}

/// Reads the volumes, grows them when asked, writes the two conditions and
/// says what changed in Events.
pub async fn reconcile_volumes(
    ctx: &Context,
    pgc: &PostgresCluster,
    cluster: &ValidCluster,
    pods: &[Pod],
) -> Result<Outcome, Error> {
    let client = &ctx.client;
    let ns = &cluster.namespace;
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let sts = sts_api
        .get_opt(&cluster.name)
        .await
        .map_err(|source| Error::Get {
            kind: "StatefulSet",
            namespace: ns.clone(),
            name: cluster.name.clone(),
            source,
        })?;
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let selector = build::selector_string(&cluster.name);
    let claims = pvc_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListVolumes {
            namespace: ns.clone(),
            name: cluster.name.clone(),
            source,
        })?
        .items;
    // Only the claims of the data template (`data-<cluster>-<n>`).
    let prefix = format!("{}-", names::VOLUME_DATA);
    let claims: Vec<&PersistentVolumeClaim> = claims
        .iter()
        .filter(|c| {
            c.name_any()
                .strip_prefix(&prefix)
                .and_then(|pod| names::ordinal_of(&cluster.name, pod))
                .is_some()
        })
        .collect();
    let volumes: Vec<VolumeView> = claims.iter().map(|c| VolumeView::from_pvc(c)).collect();

    let classes = Api::<StorageClass>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::ListStorageClasses {
            namespace: ns.clone(),
            name: cluster.name.clone(),
            source,
        })?
        .items;
    let class_name = cluster
        .spec
        .storage
        .storage_class_name
        .clone()
        .or_else(|| volumes.iter().find_map(|v| v.class.clone()))
        .or_else(|| {
            classes
                .iter()
                .find(|c| c.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true"))
                .map(ResourceExt::name_any)
        });
    let class = class_name
        .as_deref()
        .and_then(|n| classes.iter().find(|c| c.name_any() == n))
        .map(ClassView::from_class);

    let mut stranded = Vec::new();
    for pod in pods {
        let Some(scheduler) = volume_conflict(pod) else {
            continue;
        };
        let claim = format!("{prefix}{}", pod.name_any());
        // By name: a claim made by hand for the pod has no cluster labels.
        let volume = pvc_api
            .get_opt(&claim)
            .await
            .map_err(|source| Error::Get {
                kind: "PersistentVolumeClaim",
                namespace: ns.clone(),
                name: claim.clone(),
                source,
            })?
            .and_then(|c| c.spec?.volume_name);
        let pinned = match volume {
            Some(pv) => Api::<PersistentVolume>::all(client.clone())
                .get_opt(&pv)
                .await
                .map_err(|source| Error::GetClusterScoped {
                    kind: "PersistentVolume",
                    name: pv.clone(),
                    source,
                })?
                .as_ref()
                .and_then(pinned_to),
            None => None,
        };
        stranded.push(StrandedPod {
            pod: pod.name_any(),
            claim,
            pinned_to: pinned,
            scheduler,
        });
    }

    let template = sts.as_ref().and_then(template_size);
    let primary = pgc
        .status
        .as_ref()
        .and_then(|s| s.current_primary.as_deref());
    let seen = Seen {
        want: &cluster.spec.storage.size,
        template: template.as_deref(),
        template_deleting: sts
            .as_ref()
            .is_some_and(|s| s.metadata.deletion_timestamp.is_some()),
        volumes: &volumes,
        class: class.as_ref(),
        class_name: class_name.as_deref(),
        stranded: &stranded,
        primary,
    };
    let plan = plan(&seen);

    for claim in &plan.expand {
        let body =
            json!({"spec": {"resources": {"requests": {"storage": cluster.spec.storage.size}}}});
        match pvc_api
            .patch(claim, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                tracing::info!(%claim, size = %cluster.spec.storage.size, "volume expansion asked")
            }
            // Refused by the API server's resize admission: said in the
            // condition, nothing else is changed.
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
                let verdict = Verdict {
                    ok: false,
                    reason: "ExpansionRefused",
                    message: format!(
                        "the API server refused to grow {claim} to {}: {}",
                        cluster.spec.storage.size, e.message
                    ),
                };
                write_conditions(ctx, pgc, &verdict, &plan.placement).await?;
                return Ok(Outcome {
                    template_size: template.clone(),
                    in_progress: false,
                });
            }
            Err(source) => {
                return Err(Error::Apply {
                    kind: "PersistentVolumeClaim",
                    namespace: ns.clone(),
                    name: claim.clone(),
                    source,
                });
            }
        }
    }
    if plan.statefulset == StatefulSetStep::Recreate
        && let Some(sts) = &sts
    {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            preconditions: Some(Preconditions {
                uid: sts.uid(),
                resource_version: sts.resource_version(),
            }),
            ..DeleteParams::default()
        };
        match sts_api.delete(&cluster.name, &params).await {
            Ok(_) => {}
            // Gone, or changed since read: the next reconcile looks again.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind: "StatefulSet",
                    namespace: ns.clone(),
                    name: cluster.name.clone(),
                    source,
                });
            }
        }
        ctx.publish(
            pgc,
            EventType::Normal,
            "VolumeExpansion",
            "Resize",
            format!(
                "growing the volumes from {} to {}: asked of {}; the StatefulSet is re-created with the new claim size (orphan delete: its pods keep running)",
                template.as_deref().unwrap_or("?"),
                cluster.spec.storage.size,
                if plan.expand.is_empty() {
                    "no claim (all had asked it already)".to_owned()
                } else {
                    plan.expand.join(", ")
                }
            ),
        )
        .await;
    }
    write_conditions(ctx, pgc, &plan.resized, &plan.placement).await?;
    let old = pgc.status.as_ref();
    say_changes(ctx, pgc, old, CONDITION_VOLUMES_RESIZED, &plan.resized).await;
    say_changes(ctx, pgc, old, CONDITION_VOLUME_PLACEMENT, &plan.placement).await;
    ctx.metrics.observe_unschedulable(
        ns,
        &cluster.name,
        &pods
            .iter()
            .filter(|p| unschedulable(p))
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
    );

    let in_progress = !plan.resized.ok && plan.resized.reason == "Resizing";
    Ok(Outcome {
        template_size: match plan.statefulset {
            StatefulSetStep::Apply(size) => Some(size),
            StatefulSetStep::Recreate | StatefulSetStep::Wait => None,
        },
        in_progress,
    })
}

/// An Event when a condition turns False with a new reason or message, and
/// when a resize is done.
async fn say_changes(
    ctx: &Context,
    pgc: &PostgresCluster,
    old: Option<&PostgresClusterStatus>,
    type_: &str,
    verdict: &Verdict,
) {
    let before = old.and_then(|s| s.condition(type_));
    let same = before.is_some_and(|c| {
        c.reason == verdict.reason
            && c.message == verdict.message
            && (c.status == "True") == verdict.ok
    });
    if same {
        return;
    }
    if !verdict.ok {
        // A resize's start is said by VolumeExpansion, its progress only in
        // the condition.
        if verdict.reason == "Resizing" {
            return;
        }
        ctx.publish(
            pgc,
            EventType::Warning,
            verdict.reason,
            "Volumes",
            verdict.message.clone(),
        )
        .await;
    } else if before.is_some_and(|c| c.reason == "Resizing") {
        ctx.publish(
            pgc,
            EventType::Normal,
            "VolumesResized",
            "Resize",
            verdict.message.clone(),
        )
        .await;
    }
}

/// Writes VolumesResized and VolumePlacement under [`VOLUMES_MANAGER`].
async fn write_conditions(
    ctx: &Context,
    pgc: &PostgresCluster,
    resized: &Verdict,
    placement: &Verdict,
) -> Result<(), Error> {
    let generation = pgc.metadata.generation;
    let condition = |type_: &str, v: &Verdict| {
        status::condition(type_, v.ok, v.reason, v.message.clone(), generation)
    };
    let mut conditions = vec![
        condition(CONDITION_VOLUMES_RESIZED, resized),
        condition(CONDITION_VOLUME_PLACEMENT, placement),
    ];
    keep_transition_times(&mut conditions, pgc.status.as_ref(), Time((ctx.now)()));
    let body = json!({
        "apiVersion": "ordinal.dev/v1alpha1",
        "kind": "PostgresCluster",
        "status": {"conditions": conditions},
    });
    crate::reconcile::apply::apply_status(&ctx.client, pgc, VOLUMES_MANAGER, &body)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests;
