//! PostgresBackups: each one is a Job that runs `ordinal-init base-backup`
//! against the instance chosen here (a healthy streaming replica unless
//! the backup asks for the primary), and a status read back from the Job
//! and from its container's termination message (the backup's manifest,
//! or its error).
//!
//! The decisions are pure functions ([`choose_source`], [`outcome`],
//! [`completed_status`]); `reconcile` reads, decides and writes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::utils::PredicateConfig;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Resource, ResourceExt};
use ordinal_crds::{
    BackupManifest, BackupPhase, BackupTarget, BackupsStatus, CONDITION_BACKUP_VERIFIED,
    PostgresBackup, PostgresBackupStatus, PostgresCluster, PostgresClusterStatus, Role,
    VerificationPhase, VerificationReport, VerificationStatus, names,
};
use serde_json::json;

use crate::Context;
use crate::reconcile::build::job::{BACKUP_CONTAINER, VERIFY_CONTAINER, verify_job_name};
use crate::reconcile::build::{build_backup_job, build_verify_job};
use crate::reconcile::validate;

/// How soon a backup waiting for its cluster is looked at again.
const PENDING_RETRY: Duration = Duration::from_secs(10);
/// How often a running backup is looked at without an event of its Job.
const RUNNING_RESYNC: Duration = Duration::from_secs(60);

/// Errors of one reconcile of a PostgresBackup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("PostgresBackup {name} has no namespace")]
    MissingNamespace { name: String },
    #[error("failed to {action} for PostgresBackup {namespace}/{name}")]
    Api {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("PostgresBackup {namespace}/{name} has no uid yet, so its Job cannot be owned by it")]
    MissingUid { namespace: String, name: String },
    #[error(transparent)]
    Cluster(#[from] crate::Error),
}

/// A kube error, said as what failed for which backup.
fn api_error(
    action: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> BackupError {
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    move |source| BackupError::Api {
        action,
        namespace,
        name,
        source,
    }
}

/// What became of a backup's Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Running,
    /// Its container's termination message: the manifest, as JSON.
    Succeeded(Option<String>),
    /// Why.
    Failed(String),
}

/// The instance a backup is read from, by pod name: for `PreferStandby`
/// the ready replica that lags least, else the primary. None while a
/// promotion is under way or there is no primary.
pub fn choose_source(status: &PostgresClusterStatus, target: BackupTarget) -> Option<String> {
    if status.target_primary.is_some() || status.pending_promotion.is_some() {
        return None;
    }
    let primary = status.current_primary.clone()?;
    if target == BackupTarget::Primary {
        return Some(primary);
    }
    status
        .instances
        .iter()
        .filter(|i| i.role == Role::Replica && i.ready && i.pod != primary)
        .filter_map(|i| Some((i.lag_bytes?, &i.pod)))
        .min()
        .map(|(_, pod)| pod.clone())
        .or(Some(primary))
}

/// The Job's outcome from its status and its pod's `container`.
pub fn outcome(job: &Job, pods: &[Pod], container: &str) -> Outcome {
    let status = job.status.as_ref();
    let condition = |type_: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == "True"))
    };
    let message = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == container)
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .map(|m| m.trim().to_owned())
        .find(|m| !m.is_empty());
    if condition("Complete").is_some() || status.and_then(|s| s.succeeded).unwrap_or(0) > 0 {
        return Outcome::Succeeded(message);
    }
    if let Some(failed) = condition("Failed") {
        return Outcome::Failed(message.unwrap_or_else(|| {
            format!(
                "the Job failed: {}",
                failed.message.clone().unwrap_or_default()
            )
        }));
    }
    Outcome::Running
}

/// `1234567` → `1.2MiB`, as the cluster's MAX LAG column says it.
pub fn human_bytes(bytes: u64) -> String {
    crate::failover::decide::human_bytes(i64::try_from(bytes).unwrap_or(i64::MAX))
}

/// The status of a completed backup, from its manifest.
pub fn completed_status(
    mut status: PostgresBackupStatus,
    manifest: &BackupManifest,
    location: Option<String>,
) -> PostgresBackupStatus {
    status.phase = Some(BackupPhase::Completed);
    status.message = None;
    status.id = Some(manifest.id.clone());
    status.location = location.map(|l| format!("{l}/base/{}/", manifest.id));
    status.from_standby = Some(manifest.from_standby);
    status.timeline = Some(manifest.timeline);
    status.begin_lsn = Some(manifest.begin_lsn.clone());
    status.end_lsn = Some(manifest.end_lsn.clone());
    status.begin_wal = Some(manifest.begin_wal.clone());
    status.end_wal = Some(manifest.end_wal.clone());
    status.started_at = Some(manifest.started_at.clone());
    status.completed_at = Some(manifest.completed_at.clone());
    status.data_bytes = Some(manifest.data_bytes);
    status.stored_bytes = Some(manifest.stored_bytes);
    status.size = Some(format!(
        "{}/{}",
        human_bytes(manifest.data_bytes),
        human_bytes(manifest.stored_bytes)
    ));
    status
}

/// Runs the PostgresBackup controller until SIGTERM or SIGINT.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let backups: Api<PostgresBackup> = Api::all(client.clone());
    if let Err(error) = backups.list(&ListParams::default().limit(1)).await {
        tracing::error!(
            %error,
            "cannot list PostgresBackups (is deploy/crds/postgresbackups.ordinal.dev.yaml installed?): backups are off"
        );
        return;
    }
    let jobs = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_APP_NAME,
        names::BACKUP_APP_NAME
    ));
    let controller = Controller::new(backups, watcher::Config::default().any_semantic());
    let known = controller.store();
    // A change of a cluster's spec (spec.backup.verify turned on) looks at
    // its backups again; its status, written every second, does not.
    let spec_changes = watcher(
        Api::<PostgresCluster>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());
    controller
        .owns(Api::<Job>::all(client), jobs)
        .watches_stream(spec_changes, move |pgc: PostgresCluster| {
            let namespace = pgc.namespace();
            let cluster = pgc.name_any();
            known
                .state()
                .into_iter()
                .filter(|b| b.namespace() == namespace && b.spec.cluster == cluster)
                .map(|b| ObjectRef::from_obj(&*b))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "backup reconcile did not complete");
            }
        })
        .await;
}

fn error_policy(backup: Arc<PostgresBackup>, error: &BackupError, _: Arc<Context>) -> Action {
    tracing::warn!(backup = %backup.name_any(), %error, "backup reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(backup: Arc<PostgresBackup>, ctx: Arc<Context>) -> Result<Action, BackupError> {
    let name = backup.name_any();
    let namespace = backup
        .namespace()
        .ok_or_else(|| BackupError::MissingNamespace { name: name.clone() })?;
    let api_err = |action| api_error(action, &namespace, &name);
    let mut status = backup.status.clone().unwrap_or_default();
    if !status.finished() {
        // The cache can lag behind this controller's own last write, and a
        // status computed from it would drop what that write said (an
        // apply removes the fields it omits): the instance, the Job.
        let api: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), &namespace);
        match api
            .get_opt(&name)
            .await
            .map_err(api_err("read the PostgresBackup"))?
        {
            Some(fresh) => status = fresh.status.unwrap_or_default(),
            None => return Ok(Action::await_change()),
        }
    }
    let cluster = &backup.spec.cluster;
    if status.finished() {
        if status.phase == Some(BackupPhase::Completed) {
            // A restarted operator sets the backup series again from here.
            record(&ctx, &namespace, cluster, &status);
            return verification(&backup, &ctx, &namespace, &status).await;
        }
        return Ok(Action::await_change());
    }

    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    // The backups the retention policy deleted from the store.
    let mut pruned = Vec::new();
    let next = match jobs.get_opt(&name).await.map_err(api_err("read the Job"))? {
        None => start(&backup, &ctx, &namespace, status.clone()).await?,
        Some(job) => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            let selector = format!("{}={name}", names::LABEL_BACKUP);
            let pods = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(api_err("list the Job's pods"))?
                .items;
            match outcome(&job, &pods, BACKUP_CONTAINER) {
                Outcome::Running => PostgresBackupStatus {
                    phase: Some(BackupPhase::Running),
                    ..status.clone()
                },
                Outcome::Succeeded(report) => {
                    match report
                        .as_deref()
                        .map(serde_json::from_str::<BackupManifest>)
                    {
                        Some(Ok(manifest)) => {
                            let location = ctx
                                .clusters
                                .get()
                                .and_then(|s| {
                                    s.get(
                                        &kube::runtime::reflector::ObjectRef::new(cluster)
                                            .within(&namespace),
                                    )
                                })
                                .and_then(|pgc| validate::validate(&pgc).ok()?.ok())
                                .and_then(|c| crate::reconcile::build::backup::archive(&c))
                                .map(|a| a.url);
                            pruned.clone_from(&manifest.pruned);
                            completed_status(status.clone(), &manifest, location)
                        }
                        _ => PostgresBackupStatus {
                            phase: Some(BackupPhase::Failed),
                            message: Some(format!(
                                "the backup Job succeeded but its report is not a manifest: {}",
                                report.unwrap_or_default()
                            )),
                            ..status.clone()
                        },
                    }
                }
                Outcome::Failed(message) => PostgresBackupStatus {
                    phase: Some(BackupPhase::Failed),
                    message: Some(message),
                    ..status.clone()
                },
            }
        }
    };

    if next != status {
        write_status(&ctx, &backup, &namespace, &next).await?;
        announce(&ctx, &backup, &status, &next).await;
        if next.phase == Some(BackupPhase::Completed) {
            record(&ctx, &namespace, cluster, &next);
            // One list of the namespace's backups serves both.
            let mut backups = Api::<PostgresBackup>::namespaced(ctx.client.clone(), &namespace)
                .list(&ListParams::default())
                .await
                .map_err(api_err("list the cluster's backups"))?
                .items;
            forget_pruned(&ctx, &namespace, cluster, &pruned, &mut backups).await?;
            write_cluster_backups(&ctx, &namespace, cluster, &backups).await?;
        }
    }
    Ok(match next.phase {
        Some(BackupPhase::Pending) => Action::requeue(PENDING_RETRY),
        Some(BackupPhase::Running) => Action::requeue(RUNNING_RESYNC),
        _ => Action::await_change(),
    })
}

/// No Job yet: choose the instance and create it, or say why not.
async fn start(
    backup: &PostgresBackup,
    ctx: &Context,
    namespace: &str,
    status: PostgresBackupStatus,
) -> Result<PostgresBackupStatus, BackupError> {
    let name = backup.name_any();
    let cluster_name = &backup.spec.cluster;
    let pending = |message: String| PostgresBackupStatus {
        phase: Some(BackupPhase::Pending),
        message: Some(message),
        ..status.clone()
    };
    let failed = |message: String| PostgresBackupStatus {
        phase: Some(BackupPhase::Failed),
        message: Some(message),
        ..status.clone()
    };
    let clusters: Api<PostgresCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(pgc) = clusters.get_opt(cluster_name).await.map_err(api_error(
        "read the PostgresCluster",
        namespace,
        &name,
    ))?
    else {
        return Ok(pending(format!(
            "PostgresCluster {namespace}/{cluster_name} does not exist"
        )));
    };
    let cluster = match validate::validate(&pgc)? {
        Ok(cluster) => cluster,
        Err(problems) => {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Ok(pending(format!(
                "PostgresCluster {cluster_name} has an invalid spec: {}",
                problems.join("; ")
            )));
        }
    };
    if cluster.spec.backup.is_none() {
        return Ok(failed(format!(
            "PostgresCluster {cluster_name} has no spec.backup: there is no object store to back up to"
        )));
    }
    let cluster_status = pgc.status.clone().unwrap_or_default();
    let Some(instance) = choose_source(&cluster_status, backup.spec.target) else {
        return Ok(pending(format!(
            "PostgresCluster {cluster_name} has no primary, or a promotion is under way"
        )));
    };
    // The pod's DNS name, which its certificate holds (pg_basebackup
    // verifies it), at its address as last seen: the name may resolve to
    // the old pod's address for a while after the pod was recreated.
    let host = ordinal_crds::names::pod_dns(&instance, &cluster.service_name, namespace);
    let hostaddr = cluster_status
        .instances
        .iter()
        .find(|i| i.pod == instance)
        .and_then(|i| i.ip.clone());
    let owner = backup
        .controller_owner_ref(&())
        .ok_or_else(|| BackupError::MissingUid {
            namespace: namespace.to_owned(),
            name: name.clone(),
        })?;
    let job = build_backup_job(
        &cluster,
        &ctx.build,
        &name,
        owner,
        &host,
        hostaddr.as_deref(),
    );
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    jobs.patch(
        &name,
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&job),
    )
    .await
    .map_err(api_error("create the Job", namespace, &name))?;
    tracing::info!(%namespace, backup = %name, cluster = %cluster_name, %instance, "backup started");
    Ok(PostgresBackupStatus {
        phase: Some(BackupPhase::Running),
        message: None,
        job: Some(name),
        instance: Some(instance),
        started_at: Some((ctx.now)().to_string()),
        ..status
    })
}

async fn write_status(
    ctx: &Context,
    backup: &PostgresBackup,
    namespace: &str,
    status: &PostgresBackupStatus,
) -> Result<(), BackupError> {
    let api: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), namespace);
    let body = json!({
        "apiVersion": PostgresBackup::api_version(&()),
        "kind": PostgresBackup::kind(&()),
        "status": status,
    });
    api.patch_status(
        &backup.name_any(),
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(api_error("write the status", namespace, &backup.name_any()))?;
    Ok(())
}

/// An Event on the PostgresBackup when it starts, completes or fails.
async fn announce(
    ctx: &Context,
    backup: &PostgresBackup,
    before: &PostgresBackupStatus,
    after: &PostgresBackupStatus,
) {
    if before.phase == after.phase {
        return;
    }
    let (type_, reason, note) = match after.phase {
        Some(BackupPhase::Running) => (
            EventType::Normal,
            "BackupStarted",
            format!(
                "reading from {}",
                after.instance.as_deref().unwrap_or("the primary")
            ),
        ),
        Some(BackupPhase::Completed) => (
            EventType::Normal,
            "BackupCompleted",
            format!(
                "backup {} from {}: {}, WAL {}..{} archived",
                after.id.as_deref().unwrap_or_default(),
                after.instance.as_deref().unwrap_or_default(),
                after.size.as_deref().unwrap_or_default(),
                after.begin_wal.as_deref().unwrap_or_default(),
                after.end_wal.as_deref().unwrap_or_default(),
            ),
        ),
        Some(BackupPhase::Failed) => (
            EventType::Warning,
            "BackupFailed",
            after.message.clone().unwrap_or_default(),
        ),
        Some(BackupPhase::Pending) => (
            EventType::Normal,
            "BackupPending",
            after.message.clone().unwrap_or_default(),
        ),
        None => return,
    };
    let event = Event {
        type_,
        reason: reason.to_owned(),
        // The API server caps a note at 1 kB.
        note: Some(note.chars().take(1000).collect()),
        action: "Backup".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &backup.object_ref(&())).await {
        tracing::warn!(%error, reason, "failed to publish an event");
    }
}

/// The cluster's base backups as its status shows them, from its
/// PostgresBackups.
pub fn summarize(backups: &[PostgresBackup], cluster: &str) -> BackupsStatus {
    let mut completed = completed(backups, cluster);
    completed.sort();
    BackupsStatus {
        completed: i32::try_from(completed.len()).unwrap_or(i32::MAX),
        last_backup: completed.last().map(|(_, name)| (*name).to_owned()),
        last_backup_time: completed.last().map(|(at, _)| (*at).to_owned()),
        first_recoverability_point: completed.first().map(|(at, _)| (*at).to_owned()),
    }
}

/// `status.backups` of the cluster, written by this controller's own field
/// manager (the failover loop and the reconciler own the rest).
async fn write_cluster_backups(
    ctx: &Context,
    namespace: &str,
    cluster: &str,
    backups: &[PostgresBackup],
) -> Result<(), BackupError> {
    let mut body = json!({
        "apiVersion": PostgresCluster::api_version(&()),
        "kind": PostgresCluster::kind(&()),
        "status": { "backups": summarize(backups, cluster) },
    });
    let cached = cached_cluster(ctx, namespace, cluster);
    let old = cached
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .and_then(|s| s.condition(CONDITION_BACKUP_VERIFIED));
    if let Some(condition) = verified_condition(backups, cluster, old, Time((ctx.now)())) {
        body["status"]["conditions"] = json!([condition]);
    }
    let clusters: Api<PostgresCluster> = Api::namespaced(ctx.client.clone(), namespace);
    match clusters
        .patch_status(
            cluster,
            &PatchParams::apply(BACKUPS_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => Ok(()),
        // The cluster is gone; its backups stay in the store.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(api_error(
            "write the cluster's status.backups",
            namespace,
            cluster,
        )(source)),
    }
}

/// Deletes the PostgresBackups of `cluster` whose base backups the
/// retention policy deleted from the store (their status would name data
/// that is gone), and drops them from `backups`.
async fn forget_pruned(
    ctx: &Context,
    namespace: &str,
    cluster: &str,
    pruned: &[String],
    backups: &mut Vec<PostgresBackup>,
) -> Result<(), BackupError> {
    let is_pruned = |b: &PostgresBackup| {
        b.spec.cluster == cluster
            && b.status
                .as_ref()
                .and_then(|s| s.id.as_ref())
                .is_some_and(|id| pruned.contains(id))
    };
    let api: Api<PostgresBackup> = Api::namespaced(ctx.client.clone(), namespace);
    for backup in backups.iter().filter(|b| is_pruned(b)) {
        let name = backup.name_any();
        match api.delete(&name, &Default::default()).await {
            Ok(_) => {
                tracing::info!(%namespace, backup = %name, "deleted: its base backup was pruned");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(api_error("delete a pruned backup", namespace, &name)(
                    source,
                ));
            }
        }
    }
    backups.retain(|b| !is_pruned(b));
    Ok(())
}

/// The cluster as the reconciler's cache last saw it.
fn cached_cluster(ctx: &Context, namespace: &str, cluster: &str) -> Option<Arc<PostgresCluster>> {
    ctx.clusters.get()?.get(
        &kube::runtime::reflector::ObjectRef::<PostgresCluster>::new(cluster).within(namespace),
    )
}

/// The cluster's `BackupVerified` condition: the result of the newest
/// finished verification among its backups (None when none was
/// verified). Its transition time moves only when its status flips.
pub fn verified_condition(
    backups: &[PostgresBackup],
    cluster: &str,
    old: Option<&Condition>,
    now: Time,
) -> Option<Condition> {
    let (backup, verification) = backups
        .iter()
        .filter(|b| b.spec.cluster == cluster)
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            let v = status.verification.as_ref().filter(|v| v.finished())?;
            Some((status.completed_at.clone()?, b.name_any(), v))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, name, v)| (name, v))?;
    let passed = verification.phase == VerificationPhase::Passed;
    let status = if passed { "True" } else { "False" };
    let message = if passed {
        format!(
            "backup {backup} was restored{} and passed {}",
            verification
                .restore_milliseconds
                .map(|ms| format!(" in {:.1} s", ms as f64 / 1000.0))
                .unwrap_or_default(),
            verification.checks.join("; ")
        )
    } else {
        format!(
            "backup {backup} failed its verification: {}",
            verification.message.as_deref().unwrap_or("no reason given")
        )
    };
    Some(Condition {
        type_: CONDITION_BACKUP_VERIFIED.to_owned(),
        status: status.to_owned(),
        reason: if passed {
            "Passed"
        } else {
            "VerificationFailed"
        }
        .to_owned(),
        message: message.chars().take(1000).collect(),
        last_transition_time: match old {
            Some(prev) if prev.status == status => prev.last_transition_time.clone(),
            _ => now,
        },
        observed_generation: None,
    })
}

/// The name of the cluster's newest completed backup.
pub fn newest_completed<'a>(backups: &'a [PostgresBackup], cluster: &str) -> Option<&'a str> {
    completed(backups, cluster)
        .into_iter()
        .max()
        .map(|(_, name)| name)
}

/// The cluster's completed backups: (completedAt, name).
fn completed<'a>(backups: &'a [PostgresBackup], cluster: &str) -> Vec<(&'a str, &'a str)> {
    backups
        .iter()
        .filter(|b| b.spec.cluster == cluster)
        .filter_map(|b| {
            let s = b.status.as_ref()?;
            (s.phase == Some(BackupPhase::Completed))
                .then(|| Some((s.completed_at.as_deref()?, b.metadata.name.as_deref()?)))?
        })
        .collect()
}

/// A verification from its Job's end: the report (its container's
/// termination message) when there is one, else what the Job said.
pub fn verification_result(
    running: &VerificationStatus,
    outcome: Outcome,
    now: &str,
) -> VerificationStatus {
    let (succeeded, text) = match outcome {
        Outcome::Running => return running.clone(),
        Outcome::Succeeded(text) => (true, text.unwrap_or_default()),
        Outcome::Failed(text) => (false, text),
    };
    let mut done = VerificationStatus {
        completed_at: Some(now.to_owned()),
        ..running.clone()
    };
    match serde_json::from_str::<VerificationReport>(&text) {
        Ok(report) => {
            done.phase = if report.passed && succeeded {
                VerificationPhase::Passed
            } else {
                VerificationPhase::Failed
            };
            done.restore_milliseconds = report
                .restore_seconds
                .map(|s| (s * 1000.0).round().max(0.0) as u64);
            done.checks = report.checks;
            done.message = report.message;
        }
        Err(_) => {
            done.phase = VerificationPhase::Failed;
            done.message = Some(if text.is_empty() {
                "the verification Job ended without a report".to_owned()
            } else {
                text
            });
        }
    }
    if done.phase == VerificationPhase::Failed && done.message.is_none() {
        done.message = Some("the verification Job failed without saying why".to_owned());
    }
    done
}

/// A completed backup: verified when the cluster asks for it
/// (`spec.backup.verify`) and it is the cluster's newest; the Job is
/// started, followed and its result recorded.
async fn verification(
    backup: &PostgresBackup,
    ctx: &Context,
    namespace: &str,
    status: &PostgresBackupStatus,
) -> Result<Action, BackupError> {
    let name = backup.name_any();
    let cluster_name = &backup.spec.cluster;
    let api_err = |action| api_error(action, namespace, &name);
    if let Some(done) = status.verification.as_ref().filter(|v| v.finished()) {
        record_verification(ctx, namespace, cluster_name, status, done);
        return Ok(Action::await_change());
    }
    let Some(id) = status.id.clone() else {
        return Ok(Action::await_change());
    };
    let job_name = verify_job_name(&name);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let job = jobs
        .get_opt(&job_name)
        .await
        .map_err(api_err("read the verification Job"))?;
    let next = match (&status.verification, job) {
        (Some(running), Some(job)) => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
            let selector = format!("batch.kubernetes.io/job-name={job_name}");
            let pods = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(api_err("list the verification Job's pods"))?
                .items;
            match outcome(&job, &pods, VERIFY_CONTAINER) {
                Outcome::Running => return Ok(Action::requeue(RUNNING_RESYNC)),
                ended => verification_result(running, ended, &(ctx.now)().to_string()),
            }
        }
        // Not started, or its Job is gone: only when asked, and for the
        // cluster's newest backup (turning verify on verifies that one,
        // not every backup ever taken).
        (_, None) => {
            let Some(pgc) = cached_cluster(ctx, namespace, cluster_name) else {
                return Ok(Action::await_change());
            };
            if !pgc.spec.backup.as_ref().is_some_and(|b| b.verify) {
                return Ok(Action::await_change());
            }
            let backups = Api::<PostgresBackup>::namespaced(ctx.client.clone(), namespace)
                .list(&ListParams::default())
                .await
                .map_err(api_err("list the cluster's backups"))?
                .items;
            if newest_completed(&backups, cluster_name) != Some(name.as_str()) {
                return Ok(Action::await_change());
            }
            let Ok(cluster) = validate::validate(&pgc)? else {
                return Ok(Action::await_change());
            };
            let owner =
                backup
                    .controller_owner_ref(&())
                    .ok_or_else(|| BackupError::MissingUid {
                        namespace: namespace.to_owned(),
                        name: name.clone(),
                    })?;
            let job = build_verify_job(&cluster, &ctx.build, &name, &id, owner);
            jobs.patch(
                &job_name,
                &PatchParams::apply(names::FIELD_MANAGER).force(),
                &Patch::Apply(&job),
            )
            .await
            .map_err(api_err("create the verification Job"))?;
            tracing::info!(%namespace, backup = %name, %id, "verification started");
            running_verification(job_name, ctx)
        }
        (None, Some(_)) => running_verification(job_name, ctx),
    };
    let updated = PostgresBackupStatus {
        verification: Some(next.clone()),
        ..status.clone()
    };
    write_status(ctx, backup, namespace, &updated).await?;
    announce_verification(ctx, backup, &next).await;
    if !next.finished() {
        return Ok(Action::requeue(RUNNING_RESYNC));
    }
    record_verification(ctx, namespace, cluster_name, &updated, &next);
    let backups = Api::<PostgresBackup>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(api_err("list the cluster's backups"))?
        .items;
    write_cluster_backups(ctx, namespace, cluster_name, &backups).await?;
    Ok(Action::await_change())
}

/// A verification whose Job runs, from now.
fn running_verification(job: String, ctx: &Context) -> VerificationStatus {
    VerificationStatus {
        phase: VerificationPhase::Running,
        job: Some(job),
        started_at: Some((ctx.now)().to_string()),
        completed_at: None,
        restore_milliseconds: None,
        checks: Vec::new(),
        message: None,
    }
}

/// Events of a verification: on the PostgresBackup always, on the
/// cluster too when it failed (where people look first).
async fn announce_verification(
    ctx: &Context,
    backup: &PostgresBackup,
    verification: &VerificationStatus,
) {
    let name = backup.name_any();
    let (type_, reason, note) = match verification.phase {
        VerificationPhase::Running => (
            EventType::Normal,
            "VerificationStarted",
            format!(
                "restoring backup {} in Job {} to check it",
                backup
                    .status
                    .as_ref()
                    .and_then(|s| s.id.as_deref())
                    .unwrap_or_default(),
                verification.job.as_deref().unwrap_or_default()
            ),
        ),
        VerificationPhase::Passed => (
            EventType::Normal,
            "BackupVerified",
            format!(
                "restored in {:.1} s; {}",
                verification.restore_milliseconds.unwrap_or_default() as f64 / 1000.0,
                verification.checks.join("; ")
            ),
        ),
        VerificationPhase::Failed => (
            EventType::Warning,
            "BackupVerificationFailed",
            format!(
                "backup {name}: {}",
                verification.message.as_deref().unwrap_or_default()
            ),
        ),
    };
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Verify".to_owned(),
        secondary: None,
    };
    let mut targets = vec![backup.object_ref(&())];
    if verification.phase == VerificationPhase::Failed
        && let Some(namespace) = backup.namespace()
        && let Some(pgc) = cached_cluster(ctx, &namespace, &backup.spec.cluster)
    {
        targets.push(pgc.object_ref(&()));
    }
    for target in targets {
        if let Err(error) = ctx.recorder.publish(&event, &target).await {
            tracing::warn!(%error, reason, "failed to publish an event");
        }
    }
}

/// The verification series of the cluster, from a finished verification.
fn record_verification(
    ctx: &Context,
    namespace: &str,
    cluster: &str,
    status: &PostgresBackupStatus,
    verification: &VerificationStatus,
) {
    let Some(completed) = status
        .completed_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
    else {
        return;
    };
    ctx.metrics.record_verification(
        namespace,
        cluster,
        completed.as_millisecond() as f64 / 1000.0,
        verification.phase == VerificationPhase::Passed,
        verification
            .restore_milliseconds
            .map(|ms| ms as f64 / 1000.0),
    );
}

/// The field manager of `status.backups`.
const BACKUPS_MANAGER: &str = "ordinal-backups";

/// The backup series of the cluster, from a completed backup's status.
fn record(ctx: &Context, namespace: &str, cluster: &str, status: &PostgresBackupStatus) {
    let parse = |t: &Option<String>| t.as_deref()?.parse::<Timestamp>().ok();
    if let (Some(started), Some(completed)) =
        (parse(&status.started_at), parse(&status.completed_at))
    {
        let seconds = completed.duration_since(started).as_secs_f64();
        ctx.metrics.record_backup(
            namespace,
            cluster,
            completed.as_millisecond() as f64 / 1000.0,
            seconds,
        );
    }
}

#[cfg(test)]
mod tests;
