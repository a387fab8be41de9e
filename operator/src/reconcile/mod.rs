//! One reconcile of a PostgresCluster, as a pipeline:
//! validate → bootstrap the primary → secrets → children → role labels →
//! status. Only `apply` talks to the API; the other steps are pure.

pub mod apply;
pub mod build;
pub mod rolling;
pub mod schedule;
pub mod status;
pub mod tls_phase;
pub mod validate;
pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use ordinal_crds::{PostgresCluster, names};

use crate::{Context, Error};
use status::{Blocker, InitialPrimary, Observed, PodView, PrimaryStatus};

/// How often a settled cluster is looked at again without any event.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a cluster that is still converging is looked at again.
const CONVERGING: Duration = Duration::from_secs(10);
/// How soon a cluster whose volumes are growing is looked at again.
const VOLUMES_CHANGING: Duration = Duration::from_secs(3);

pub async fn reconcile(pgc: Arc<PostgresCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = pgc.name_any();
    let namespace = pgc.namespace().unwrap_or_default();

    // The failover loop watches the pods, routes them by role and promotes a
    // replica when the primary is lost — whatever else this reconcile finds
    // wrong (an invalid spec, a missing Secret, an API error): an operator
    // restarted into such a state must still fail over, or finish a
    // promotion it had begun.
    if !namespace.is_empty() {
        ctx.ensure_failover_loop(&namespace, &name, pgc.uid().as_deref());
    }

    let mut cluster = match validate::validate(&pgc)? {
        Ok(cluster) => cluster,
        Err(problems) => {
            let message = problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(%message, "invalid spec: nothing is changed until it is fixed");
            ctx.publish(
                &pgc,
                EventType::Warning,
                "InvalidSpec",
                "Validate",
                message.clone(),
            )
            .await;
            let pods = apply::list_pods(&ctx.client, &namespace, &name).await?;
            write_observed(&ctx, &pgc, &pods, Some(Blocker::InvalidSpec(message))).await?;
            return Ok(Action::await_change());
        }
    };

    let pods = apply::list_pods(&ctx.client, &namespace, &name).await?;
    let views: Vec<PodView> = pods.iter().map(PodView::from_pod).collect();

    // The primary is decided before any pod exists, so that ordinal-init
    // never has to guess it.
    let mut pgc = pgc;
    let mut primary = match pgc.status.as_ref().and_then(PrimaryStatus::from_status) {
        Some(primary) => primary,
        None => {
            let volumes = apply::list_data_volumes(&ctx.client, &namespace, &name).await?;
            let annotation = pgc
                .annotations()
                .get(names::ANNOTATION_PRIMARY)
                .map(String::as_str);
            let (current, bootstrapped) =
                match status::initial_primary(&name, &views, annotation, &volumes) {
                    InitialPrimary::New(pod) => (pod, false),
                    InitialPrimary::Adopt(pod) => (pod, true),
                    InitialPrimary::Ask(why) => {
                        tracing::warn!(%why, "not choosing a primary");
                        ctx.publish(
                            &pgc,
                            EventType::Warning,
                            "ExistingVolumes",
                            "Bootstrap",
                            why.clone(),
                        )
                        .await;
                        write_observed(&ctx, &pgc, &pods, Some(Blocker::ExistingVolumes(why)))
                            .await?;
                        return Ok(Action::requeue(CONVERGING));
                    }
                };
            let primary = PrimaryStatus {
                current_primary: current,
                target_primary: None,
                epoch: pgc.status.as_ref().map_or(0, |s| s.epoch),
                bootstrapped,
                pending: None,
            };
            let body = status::primary_patch(&primary, pgc.resource_version().as_deref());
            pgc = Arc::new(apply::apply_primary_status(&ctx.client, &pgc, &body).await?);
            tracing::info!(primary = %primary.current_primary, bootstrapped, "primary chosen");
            let note = if bootstrapped {
                format!(
                    "{} is the primary: its existing data is adopted",
                    primary.current_primary
                )
            } else {
                format!(
                    "{} will initialize the cluster as its primary",
                    primary.current_primary
                )
            };
            ctx.publish(&pgc, EventType::Normal, "PrimaryChosen", "Bootstrap", note)
                .await;
            primary
        }
    };

    match apply::ensure_secrets(&ctx.client, &cluster).await {
        Ok(()) => {}
        Err(error @ (Error::MissingSecret { .. } | Error::MissingSecretKeys { .. })) => {
            return blocked_by_secret(&ctx, &pgc, &pods, "MissingSecret", "Secrets", error).await;
        }
        Err(error) => return Err(error),
    }
    let certificate_version =
        match apply::ensure_tls(&ctx.client, &cluster, (ctx.now)().as_second()).await {
            Ok(certificates) => {
                for change in certificates.changes {
                    let (reason, note) = change.event(&cluster.name);
                    tracing::info!(%note, "certificates");
                    ctx.publish(&pgc, EventType::Normal, reason, "Certificates", note)
                        .await;
                }
                ctx.metrics
                    .observe_certificate(&namespace, &name, certificates.not_after);
                certificates.version
            }
            Err(error @ (Error::MissingSecret { .. } | Error::Tls { .. })) => {
                return blocked_by_secret(
                    &ctx,
                    &pgc,
                    &pods,
                    "TLSSecretInvalid",
                    "Certificates",
                    error,
                )
                .await;
            }
            Err(error) => return Err(error),
        };

    let tls_settled = tls_phase::settled(pgc.server_tls_secret_name());
    cluster.tls = advance_tls(&ctx, &mut pgc, &pods, &views).await?;

    // A major-version change cannot be rolled out: postgres would refuse
    // the data directory and every pod would crash-loop.
    if let Some(why) = major_version_change(&cluster.spec.image, &pods) {
        tracing::warn!(%why, "image change refused");
        ctx.publish(
            &pgc,
            EventType::Warning,
            "MajorVersionChange",
            "Validate",
            why.clone(),
        )
        .await;
        write_observed(&ctx, &pgc, &pods, Some(Blocker::MajorVersionChange(why))).await?;
        return Ok(Action::await_change());
    }

    let volumes = volumes::reconcile_volumes(&ctx, &pgc, &cluster, &pods).await?;
    let statefulset = apply::apply_children(
        &ctx.client,
        &cluster,
        &ctx.build,
        volumes.template_size.as_deref(),
    )
    .await?;
    // The pods' mounts, refreshed now rather than at the kubelet's next
    // look: a reload step (a TLS step, a renewed certificate, a changed
    // parameter) reaches the servers in seconds.
    let mounted = build::mounted_digest(&cluster, certificate_version.as_deref());
    apply::refresh_mounts(&ctx.client, &namespace, &pods, &mounted).await?;
    fence(&ctx, &pgc, &views).await?;
    if let Some(statefulset) = &statefulset
        && primary.bootstrapped
        && primary.target_primary.is_none()
    {
        roll(&ctx, &pgc, statefulset, &pods, &primary.current_primary).await?;
    }

    // From the first time the primary is Ready, an empty PGDATA on the
    // primary means lost data, never a new cluster.
    let primary_ready = views
        .iter()
        .any(|p| p.name == primary.current_primary && p.ready && !p.terminating);
    if primary_ready && !primary.bootstrapped {
        primary.bootstrapped = true;
        let body = status::primary_patch(&primary, pgc.resource_version().as_deref());
        pgc = Arc::new(apply::apply_primary_status(&ctx.client, &pgc, &body).await?);
        ctx.publish(
            &pgc,
            EventType::Normal,
            "Bootstrapped",
            "Bootstrap",
            format!(
                "primary {} is ready: the cluster is initialized",
                primary.current_primary
            ),
        )
        .await;
    }

    // Scheduled base backups, once the cluster has a primary to back up.
    let next_backup = if primary.bootstrapped {
        let created = pgc.metadata.creation_timestamp.as_ref().map(|t| t.0);
        schedule::ensure_scheduled_backup(&ctx.client, &cluster, created, (ctx.now)()).await?
    } else {
        None
    };

    let written = write_observed(&ctx, &pgc, &pods, None).await?;
    let settled = if statefulset.is_none() || volumes.in_progress {
        // A resize: the StatefulSet comes back, the volumes grow.
        VOLUMES_CHANGING
    } else if written.phase == ordinal_crds::Phase::Healthy && cluster.tls == tls_settled {
        RESYNC
    } else {
        CONVERGING
    };
    // Back a second after the next scheduled run is due.
    Ok(Action::requeue(next_backup.map_or(settled, |next| {
        settled.min(next + Duration::from_secs(1))
    })))
}

/// Moves status.tls on by one step when the instances have all taken the
/// last one (see [`tls_phase`]), and returns it.
async fn advance_tls(
    ctx: &Context,
    pgc: &mut Arc<PostgresCluster>,
    pods: &[Pod],
    views: &[PodView],
) -> Result<ordinal_crds::TlsStatus, Error> {
    let wanted = pgc.server_tls_secret_name();
    let pods: Vec<tls_phase::PodTls> = pods
        .iter()
        .zip(views)
        .map(|(pod, view)| tls_phase::PodTls {
            name: view.name.clone(),
            mounts: build::mounted_tls_secret(pod),
            ready: view.ready,
        })
        .collect();
    let instances = pgc
        .status
        .as_ref()
        .map(|s| s.instances.as_slice())
        .unwrap_or_default();
    let recorded = pgc.tls_status().cloned();
    // tls.serverSecret changed on a cluster that requires TLS: is the new
    // Secret's CA the old one's?
    let ca_kept = match (&recorded, &wanted) {
        (
            Some(ordinal_crds::TlsStatus {
                phase: ordinal_crds::TlsPhase::Required,
                secret: Some(old),
            }),
            Some(wanted),
        ) if old != wanted => {
            apply::ca_kept(
                &ctx.client,
                &pgc.namespace().unwrap_or_default(),
                old,
                wanted,
            )
            .await?
        }
        _ => true,
    };
    let next = tls_phase::next(
        recorded.as_ref(),
        wanted.as_deref(),
        &pods,
        instances,
        ca_kept,
    );
    if recorded.as_ref() != Some(&next) {
        *pgc = Arc::new(
            apply::apply_status(
                &ctx.client,
                pgc,
                status::TLS_MANAGER,
                &status::tls_patch(&next),
            )
            .await?,
        );
        // The first record of a cluster already where its spec asks is
        // no news. A reason per step: kube's Recorder folds Events of one
        // reason into a series that keeps the first note.
        if recorded.is_some() || next != tls_phase::settled(wanted) {
            let reason = format!("TLS{}", next.phase.as_str());
            let note = tls_phase::describe(&next).to_owned();
            tracing::info!(%reason, %note, "TLS");
            ctx.publish(pgc, EventType::Normal, &reason, "TLS", note)
                .await;
        }
    }
    Ok(next)
}

/// The running pods' PostgreSQL major when `image` runs another one.
fn major_version_change(image: &str, pods: &[Pod]) -> Option<String> {
    let new = rolling::image_major(image)?;
    pods.iter().find_map(|pod| {
        let running = pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == "postgres")?
            .image
            .clone()?;
        let old = rolling::image_major(&running)?;
        (old != new).then(|| {
            format!(
                "spec.image {image} is PostgreSQL {new} but {} runs {running} (PostgreSQL {old}): \
                 a major upgrade needs pg_upgrade, which Ordinal does not run; set spec.image back to a {old}.x image",
                pod.name_any()
            )
        })
    })
}

/// Stops the postgres of each fenced instance that still runs it, by
/// replacing its pod (a clean shutdown): the new pod's guard waits, without
/// postgres, until the instance is unfenced. A fenced primary is not failed
/// over (the failover loop reads the same annotation).
async fn fence(ctx: &Context, pgc: &PostgresCluster, pods: &[PodView]) -> Result<(), Error> {
    let fenced = pgc.fenced_instances();
    let namespace = pgc.namespace().unwrap_or_default();
    for pod in pods
        .iter()
        .filter(|p| p.ready && !p.terminating && fenced.contains(&p.name))
    {
        apply::replace_pod(&ctx.client, &namespace, &pod.name).await?;
        ctx.publish(
            pgc,
            EventType::Normal,
            "InstanceFenced",
            "Fence",
            format!(
                "{} is fenced ({}): its postgres stops and stays stopped until it is unfenced",
                pod.name,
                names::ANNOTATION_FENCED
            ),
        )
        .await;
    }
    Ok(())
}

/// One step of a rolling update, if one is due (DESIGN §5.7).
async fn roll(
    ctx: &Context,
    pgc: &PostgresCluster,
    statefulset: &StatefulSet,
    pods: &[Pod],
    primary: &str,
) -> Result<(), Error> {
    let Some(revision) = statefulset
        .status
        .as_ref()
        .and_then(|s| s.update_revision.clone())
    else {
        return Ok(());
    };
    let lags = pgc
        .status
        .as_ref()
        .map(|s| s.instances.as_slice())
        .unwrap_or_default();
    let name = pgc.name_any();
    let revisions: Vec<rolling::PodRevision> = pods
        .iter()
        .filter_map(|pod| {
            let view = PodView::from_pod(pod);
            Some(rolling::PodRevision {
                ordinal: names::ordinal_of(&name, &view.name)?,
                revision: pod.labels().get("controller-revision-hash").cloned(),
                ready: view.ready,
                terminating: view.terminating,
                lag_bytes: lags
                    .iter()
                    .find(|i| i.pod == view.name)
                    .and_then(|i| i.lag_bytes),
                name: view.name,
            })
        })
        .collect();
    let namespace = pgc.namespace().unwrap_or_default();
    match rolling::next_step(
        &revisions,
        &revision,
        pgc.spec.update_strategy.partition,
        primary,
        pgc.spec.replicas,
    ) {
        rolling::Step::Done => {}
        rolling::Step::Wait(why) => tracing::info!(%why, "rolling update waits"),
        rolling::Step::Replace(pod) => {
            apply::replace_pod(&ctx.client, &namespace, &pod).await?;
            ctx.publish(
                pgc,
                EventType::Normal,
                "RollingUpdate",
                "Update",
                format!("replacing {pod} with the new pod template"),
            )
            .await;
        }
        rolling::Step::Switchover(to) => {
            apply::request_switchover(&ctx.client, pgc, &to).await?;
            ctx.publish(
                pgc,
                EventType::Normal,
                "RollingUpdate",
                "Update",
                format!("switching over to the updated replica {to}; the old primary {primary} is replaced last"),
            )
            .await;
        }
    }
    Ok(())
}

/// Computes and writes the reconciler-owned status.
/// A Secret the cluster cannot run without is missing or unusable: a
/// Warning Event and the status say so, and the error is returned.
async fn blocked_by_secret(
    ctx: &Context,
    pgc: &PostgresCluster,
    pods: &[k8s_openapi::api::core::v1::Pod],
    reason: &str,
    action: &str,
    error: Error,
) -> Result<Action, Error> {
    let message = error.to_string();
    ctx.publish(pgc, EventType::Warning, reason, action, message.clone())
        .await;
    write_observed(ctx, pgc, pods, Some(Blocker::MissingSecret(message))).await?;
    Err(error)
}

async fn write_observed(
    ctx: &Context,
    pgc: &PostgresCluster,
    pods: &[k8s_openapi::api::core::v1::Pod],
    blocker: Option<Blocker>,
) -> Result<status::ObservedStatus, Error> {
    let views: Vec<PodView> = pods.iter().map(PodView::from_pod).collect();
    let old = pgc.status.as_ref();
    let observed = Observed {
        cluster: &pgc.name_any(),
        generation: pgc.metadata.generation,
        desired: pgc.spec.replicas,
        pods: &views,
        current_primary: old.and_then(|s| s.current_primary.as_deref()),
        target_primary: old.and_then(|s| s.target_primary.as_deref()),
        bootstrapped: old.is_some_and(|s| s.bootstrapped),
        blocker,
    };
    let computed = status::compute(&observed, old, Time((ctx.now)()));
    apply::apply_observed_status(&ctx.client, pgc, &status::observed_patch(&computed)).await?;
    // An instance that cannot start (a restore that fails, data refused):
    // said once per new reason, in ordinal-init's words.
    let said = old
        .and_then(|s| s.condition(ordinal_crds::CONDITION_READY))
        .map(|c| c.message.as_str())
        .unwrap_or_default();
    for view in &views {
        if let Some(why) = &view.failing {
            let note = format!("{} cannot start: {why}", view.name);
            if !said.contains(&note) {
                ctx.publish(
                    pgc,
                    EventType::Warning,
                    "InstanceCannotStart",
                    "Start",
                    note,
                )
                .await;
            }
        }
    }
    Ok(computed)
}

#[cfg(test)]
mod tests;
