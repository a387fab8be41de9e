//! Scenarios against a real Kubernetes cluster: what a user of Ordinal sees
//! — the objects of a cluster, failovers under write load, scaling through
//! the scale subresource, a canary rolling update, admission and deletion.
//!
//! The suite needs a cluster (`KUBECONFIG` or the current context) with the
//! CRD installed, and takes minutes, so it is a test target of its own
//! behind the `cluster` feature. Each test runs in a namespace of its own,
//! deleted afterwards; a failing test prints the namespace's state and logs
//! first (see `ordinal_e2e::cluster` for the harness and its environment
//! variables).
//!
//! # Running it
//!
//! `scripts/test.sh` runs it in every CI run on the local single-node
//! cluster (`scripts/cluster.sh`), with the operator installed by
//! `kubectl apply -k deploy/`. By hand, on that cluster:
//!
//! ```sh
//! scripts/quickstart.sh                      # the cluster, the images, Ordinal installed
//! eval "$(scripts/cluster.sh env)"
//! ORDINAL_E2E_OPERATOR=external ORDINAL_E2E_POSTGRES_IMAGE=ordinal.local/postgres:17 \
//!   ORDINAL_E2E_CONTAINERD_STATE=/run/ordinal-cluster/containerd \
//!   cargo test -p ordinal-e2e --features cluster --test cluster -- --test-threads=1 --nocapture
//! ```
//!
//! # Running it on kind
//!
//! ```sh
//! kind create cluster --name ordinal
//! # The Ordinal image (operator + ordinal-init), tagged with the crate version:
//! docker build -f deploy/Dockerfile -t ghcr.io/ordinal-dev/ordinal:0.1.0 .
//! kind load docker-image ghcr.io/ordinal-dev/ordinal:0.1.0 --name ordinal
//! # Optional, saves pulls from Docker Hub in every test:
//! docker pull postgres:17 && kind load docker-image postgres:17 --name ordinal
//! kubectl apply -k deploy/ && kubectl -n ordinal-system rollout status deploy/ordinal-operator
//! ORDINAL_E2E_OPERATOR=external cargo test -p ordinal-e2e --features cluster --test cluster -- --test-threads=1 --nocapture
//! ```
//!
//! Without `ORDINAL_E2E_CONTAINERD_STATE` (kind's nodes are containers),
//! the crash scenario stops postgres from inside its container (see
//! `Harness::crash_postgres`). `ORDINAL_E2E_OPERATOR=spawn` runs
//! `target/<profile>/ordinal-operator` on the test machine instead, which
//! must then reach pod IPs (true on the local cluster; on kind, route the
//! node's pod CIDR to it).
//!
//! `--nocapture` shows the progress lines and the measured failover times;
//! `ORDINAL_E2E_KEEP=1` keeps the namespace of a failed test;
//! `ORDINAL_E2E_TIMEOUT_SECONDS` (600) bounds every wait.

// Helpers outside #[test] functions panic on failure too: they are test code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use ordinal_crds::{
    Phase, PostgresCluster, PostgresClusterSpec, ReplicationMode, RetentionPolicy, Role as PgRole,
    names,
};
use ordinal_e2e::cluster::{Harness, OperatorMode, Writer, pod_ready, pod_revision};
use serde_json::json;

const CLUSTER: &str = "db";

fn pod(ordinal: i32) -> String {
    names::pod(CLUSTER, ordinal)
}

/// The labels selecting the pods of `cluster` (no role).
fn selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::LABEL_APP_NAME.to_owned(), names::APP_NAME.to_owned()),
        (names::LABEL_INSTANCE.to_owned(), cluster.to_owned()),
        (names::LABEL_CLUSTER.to_owned(), cluster.to_owned()),
    ])
}

/// The labels on every object of `cluster`.
fn labels(cluster: &str) -> BTreeMap<String, String> {
    let mut labels = selector(cluster);
    labels.insert(
        names::LABEL_MANAGED_BY.to_owned(),
        names::MANAGED_BY.to_owned(),
    );
    labels
}

/// Whether `meta` names `pgc` as its controlling owner.
fn owned_by(meta: &ObjectMeta, pgc: &PostgresCluster) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        o.kind == "PostgresCluster"
            && o.name == pgc.name_any()
            && Some(&o.uid) == pgc.meta().uid.as_ref()
            && o.controller == Some(true)
    })
}

fn has_labels(meta: &ObjectMeta, want: &BTreeMap<String, String>) -> bool {
    let have = meta.labels.clone().unwrap_or_default();
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// Until the object `name` of kind `K` no longer exists at all.
async fn wait_gone<K>(h: &Harness, kind: &str, name: &str)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    h.wait_until(&format!("{kind} {name} is gone"), async || {
        match h.api::<K>().get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(obj)) => Err(format!(
                "{kind} {name} exists (deleting: {})",
                obj.meta().deletion_timestamp.is_some()
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

/// The PVC `name` exists, is Bound and is not being deleted.
async fn assert_pvc_kept(h: &Harness, name: &str) {
    let pvc = h
        .api::<PersistentVolumeClaim>()
        .get_opt(name)
        .await
        .expect("read the PVC")
        .unwrap_or_else(|| panic!("PVC {name} was deleted"));
    assert!(
        pvc.metadata.deletion_timestamp.is_none(),
        "PVC {name} is being deleted"
    );
    assert_eq!(
        pvc.status.and_then(|s| s.phase).as_deref(),
        Some("Bound"),
        "PVC {name} is not Bound"
    );
}

async fn show(h: &Harness, cluster: &str, pod: &str, parameter: &str) -> String {
    let session = h.sql(cluster, pod).await;
    session
        .query_one(&format!("SHOW {parameter}"), &[])
        .await
        .unwrap_or_else(|e| panic!("SHOW {parameter} on {pod}: {e}"))
        .get(0)
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_come_up_with_the_documented_shape() {
    let h = Harness::new("three_replicas_come_up_with_the_documented_shape").await;
    h.apply(CLUSTER, &h.spec(3)).await;
    let status = h.wait_ready(CLUSTER, 3).await;
    let pgc = h.cluster(CLUSTER).await;

    // Status: the printer columns and the scale subresource's fields.
    assert_eq!(status.current_primary.as_deref(), Some("db-0"));
    assert_eq!(status.target_primary, None);
    assert_eq!(status.ready.as_deref(), Some("3/3"));
    assert_eq!(status.phase, Some(Phase::Healthy));
    assert_eq!(status.ready_replicas, 3);
    assert_eq!(status.replicas, 3);
    assert_eq!(status.epoch, 0, "no promotion happened yet");
    assert!(status.last_failover.is_none(), "{:?}", status.last_failover);
    assert!(status.bootstrapped);
    let selector_pairs: BTreeMap<String, String> = status
        .selector
        .as_deref()
        .expect("status.selector")
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(selector_pairs, selector(CLUSTER));
    for (type_, want) in [("Ready", "True"), ("Degraded", "False")] {
        let c = status
            .condition(type_)
            .unwrap_or_else(|| panic!("condition {type_}: {:?}", status.conditions));
        assert_eq!(c.status, want, "condition {type_}: {c:?}");
    }

    // The StatefulSet.
    let sts = h.statefulset(CLUSTER).await.expect("StatefulSet db");
    assert!(owned_by(&sts.metadata, &pgc), "StatefulSet owner: {sts:?}");
    assert!(has_labels(&sts.metadata, &labels(CLUSTER)));
    let spec = sts.spec.clone().expect("StatefulSet spec");
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("db-headless"));
    assert_eq!(
        spec.update_strategy.and_then(|u| u.type_).as_deref(),
        Some("OnDelete")
    );
    assert_eq!(spec.selector.match_labels, Some(selector(CLUSTER)));
    let claims = spec.volume_claim_templates.expect("volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].metadata.name.as_deref(), Some(names::VOLUME_DATA));
    let request = claims[0]
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone());
    assert_eq!(request.as_deref(), Some("1Gi"));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .expect("persistentVolumeClaimRetentionPolicy");
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(
        !template_labels.contains_key(names::LABEL_ROLE),
        "the pod template must not claim a role: {template_labels:?}"
    );
    let pod_spec = spec.template.spec.expect("pod template spec");
    let init: Vec<&str> = pod_spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["install", "init"]);
    let postgres = pod_spec
        .containers
        .iter()
        .find(|c| c.name == "postgres")
        .expect("container postgres");
    assert_eq!(
        postgres.image.as_deref(),
        Some(h.config.postgres_image.as_str())
    );
    if h.config.operator == OperatorMode::Spawn {
        let install = pod_spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == "install")
            .expect("init container install");
        assert_eq!(
            install.image.as_deref(),
            Some(h.config.ordinal_image.as_str())
        );
    }

    // The Services.
    let services = h.api::<Service>();
    let headless = services
        .get("db-headless")
        .await
        .expect("Service db-headless");
    assert!(owned_by(&headless.metadata, &pgc));
    let hs = headless.spec.expect("spec");
    assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
    assert_eq!(hs.publish_not_ready_addresses, Some(true));
    assert_eq!(hs.selector, Some(selector(CLUSTER)));
    for (name, role) in [
        (names::rw_service(CLUSTER), names::ROLE_PRIMARY),
        (names::ro_service(CLUSTER), names::ROLE_REPLICA),
    ] {
        let svc = services.get(&name).await.expect("role Service");
        assert!(owned_by(&svc.metadata, &pgc), "{name} owner");
        let s = svc.spec.expect("spec");
        let mut want = selector(CLUSTER);
        want.insert(names::LABEL_ROLE.to_owned(), role.to_owned());
        assert_eq!(s.selector, Some(want), "{name} selector");
        assert_ne!(
            s.cluster_ip.as_deref(),
            Some("None"),
            "{name} is not headless"
        );
        let ports: Vec<i32> = s.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, [names::POSTGRES_PORT], "{name} ports");
    }

    // The PodDisruptionBudget: replicas - 1.
    let pdb = h
        .api::<PodDisruptionBudget>()
        .get(CLUSTER)
        .await
        .expect("PodDisruptionBudget db");
    assert!(owned_by(&pdb.metadata, &pgc));
    let pdb_spec = pdb.spec.expect("spec");
    assert_eq!(pdb_spec.min_available, Some(IntOrString::Int(2)));
    assert_eq!(
        pdb_spec.selector.and_then(|s| s.match_labels),
        Some(selector(CLUSTER))
    );

    // Configuration, credentials, RBAC.
    let config = h
        .api::<ConfigMap>()
        .get(&names::config_map(CLUSTER))
        .await
        .expect("ConfigMap db-config");
    assert!(owned_by(&config.metadata, &pgc));
    let data = config.data.unwrap_or_default();
    assert!(data.contains_key(names::CONFIG_POSTGRESQL_CONF), "{data:?}");
    assert!(data.contains_key(names::CONFIG_PG_HBA), "{data:?}");
    for (secret, user) in [
        (names::superuser_secret(CLUSTER), names::SUPERUSER_NAME),
        (
            names::replication_secret(CLUSTER),
            names::REPLICATION_USER_NAME,
        ),
    ] {
        let s = h.api::<Secret>().get(&secret).await.expect("Secret");
        assert!(
            !owned_by(&s.metadata, &pgc),
            "{secret} must outlive the cluster: not owned by it"
        );
        let d = s.data.unwrap_or_default();
        let username = d
            .get(names::SECRET_USERNAME_KEY)
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned());
        assert_eq!(username.as_deref(), Some(user), "{secret} username");
        assert!(
            d.get(names::SECRET_PASSWORD_KEY)
                .is_some_and(|p| p.0.len() >= 16),
            "{secret} has a generated password"
        );
    }
    let sa = h
        .api::<ServiceAccount>()
        .get(CLUSTER)
        .await
        .expect("ServiceAccount");
    let role = h.api::<Role>().get(CLUSTER).await.expect("Role");
    let binding = h
        .api::<RoleBinding>()
        .get(CLUSTER)
        .await
        .expect("RoleBinding");
    assert!(owned_by(&sa.metadata, &pgc));
    assert!(owned_by(&role.metadata, &pgc));
    assert!(owned_by(&binding.metadata, &pgc));

    // The pods and their roles.
    let pods = h.cluster_pods(CLUSTER).await.expect("pods");
    assert_eq!(pods.len(), 3);
    for p in &pods {
        let name = p.name_any();
        let want = if name == "db-0" {
            names::ROLE_PRIMARY
        } else {
            names::ROLE_REPLICA
        };
        assert_eq!(
            p.labels().get(names::LABEL_ROLE).map(String::as_str),
            Some(want),
            "{name} role label"
        );
        assert!(pod_ready(p), "{name} Ready");
    }

    // Replication as PostgreSQL sees it.
    for replica in ["db-1", "db-2"] {
        h.wait_streaming_replica(CLUSTER, "db-0", replica).await;
    }
    let states = h.replication_states(CLUSTER, "db-0").await.expect("states");
    assert_eq!(
        states.keys().map(String::as_str).collect::<Vec<_>>(),
        ["db-1", "db-2"],
        "pg_stat_replication on db-0: {states:?}"
    );
    let slots = h.slots(CLUSTER, "db-0").await.expect("slots");
    for slot in ["db_1", "db_2"] {
        assert!(slots.contains(slot), "slot {slot} on db-0: {slots:?}");
    }

    // What the failover loop reports per instance.
    h.wait_until(
        "status.instances lists db-0 primary, db-1 and db-2 ready replicas",
        async || {
            let s = h.try_status(CLUSTER).await?;
            let mut roles: Vec<(String, PgRole, bool)> = s
                .instances
                .iter()
                .map(|i| (i.pod.clone(), i.role, i.ready))
                .collect();
            roles.sort_by(|a, b| a.0.cmp(&b.0));
            let want = vec![
                ("db-0".to_owned(), PgRole::Primary, true),
                ("db-1".to_owned(), PgRole::Replica, true),
                ("db-2".to_owned(), PgRole::Replica, true),
            ];
            if roles == want && s.max_lag.is_some() {
                Ok(())
            } else {
                Err(format!("instances {roles:?}, maxLag {:?}", s.max_lag))
            }
        },
    )
    .await;

    // The Services route by role.
    h.wait_until("db-rw routes to db-0 and db-ro to db-1, db-2", async || {
        let rw = h.rw_pods(CLUSTER).await?;
        let ro =
            ordinal_e2e::cluster::routed_pods(&h.client, &h.namespace, &names::ro_service(CLUSTER))
                .await?;
        if rw == ["db-0"] && ro == ["db-1", "db-2"] {
            Ok(())
        } else {
            Err(format!("db-rw → {rw:?}, db-ro → {ro:?}"))
        }
    })
    .await;

    // A row written through db-rw reaches both replicas; replicas refuse writes.
    let (primary, session) = h.sql_rw(CLUSTER).await;
    assert_eq!(primary, "db-0");
    session
        .batch_execute(
            "CREATE TABLE shape (id int PRIMARY KEY, note text NOT NULL);
             INSERT INTO shape VALUES (1, 'written through db-rw');",
        )
        .await
        .expect("write through db-rw");
    for replica in ["db-1", "db-2"] {
        h.wait_until(&format!("the row is visible on {replica}"), async || {
            let s = h.try_sql(CLUSTER, replica).await?;
            let rows = s
                .query("SELECT note FROM shape WHERE id = 1", &[])
                .await
                .map_err(|e| e.to_string())?;
            match rows.first().map(|r| r.get::<_, String>(0)) {
                Some(note) if note == "written through db-rw" => Ok(()),
                other => Err(format!("{replica}: {other:?}")),
            }
        })
        .await;
        let s = h.sql(CLUSTER, replica).await;
        let refused = s
            .execute("INSERT INTO shape VALUES (2, 'on a replica')", &[])
            .await
            .expect_err("a replica must refuse writes");
        assert!(
            refused.to_string().contains("read-only")
                || refused
                    .as_db_error()
                    .is_some_and(|e| e.code().code() == "25006"),
            "{replica}: {refused}"
        );
    }
}

// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// `kubectl delete pod` of the primary: a planned loss.
    DeletePod,
}

/// Disrupts the primary `old` under the running writer and checks the
/// failover: another pod is published as primary (exactly one promotion),
/// writes are acknowledged again through db-rw, `old` comes back as a
/// streaming replica, and no acknowledged row is lost. Returns the new primary.
async fn failover_round(h: &Harness, writer: &Writer, old: &str, how: Disruption) -> String {
    let before = h.status(CLUSTER).await;
    assert_eq!(before.current_primary.as_deref(), Some(old));
    let t0 = Instant::now();
    match how {
        Disruption::DeletePod => h.delete_pod(old).await,
    }

    let new = h
        .wait_until(
            &format!("a replica is published as primary in place of {old}"),
            async || {
                let s = h.try_status(CLUSTER).await?;
                match (&s.current_primary, &s.target_primary) {
                    (Some(p), None) if p != old => Ok(p.clone()),
                    (p, t) => Err(format!("currentPrimary {p:?}, targetPrimary {t:?}")),
                }
            },
        )
        .await;
    let (first_ack, by) = h
        .wait_until(
            &format!("writes are acknowledged through db-rw again after {how:?} of {old}"),
            async || {
                writer.first_ack_after(t0, old).ok_or_else(|| {
                    format!(
                        "{} acknowledged so far, none after the disruption",
                        writer.acked()
                    )
                })
            },
        )
        .await;
    assert_eq!(
        by, new,
        "the first write after the failover was acknowledged by {by}, not the new primary {new}"
    );
    println!(
        "ordinal-e2e: {how:?} of primary {old}: {new} acknowledged the first write {:.2}s later",
        first_ack.duration_since(t0).as_secs_f64()
    );

    let after = h.status(CLUSTER).await;
    let record = after.last_failover.clone().expect("status.lastFailover");
    assert_eq!(
        after.epoch,
        ordinal_e2e::cluster::epoch_after_one_failover(before.epoch, &record),
        "exactly one promotion: epoch {} → {} ({})",
        before.epoch,
        after.epoch,
        record.reason
    );
    assert_eq!(record.from, old);
    assert_eq!(record.to, new);
    assert_eq!(
        record.lost_bytes,
        Some(0),
        "quorum mode loses no WAL: {record:?}"
    );
    assert!(!record.reason.is_empty());
    println!(
        "ordinal-e2e: lastFailover: {} → {} in {:.2}s ({}); phases detect {:.2}s, decide {:.2}s, fence {:.2}s, promote {:.2}s, publish {:.2}s",
        record.from,
        record.to,
        record.duration_seconds,
        record.reason,
        record.phases.detect,
        record.phases.decide,
        record.phases.fence,
        record.phases.promote,
        record.phases.publish
    );

    // The old primary comes back, as a replica of the new one.
    let status = h.wait_ready(CLUSTER, 3).await;
    assert_eq!(status.current_primary.as_deref(), Some(new.as_str()));
    assert_eq!(status.epoch, after.epoch, "no further promotion");
    h.wait_streaming_replica(CLUSTER, &new, old).await;
    for ordinal in 0..3 {
        let replica = pod(ordinal);
        if replica != new && replica != old {
            h.wait_streaming_replica(CLUSTER, &new, &replica).await;
        }
    }
    h.wait_quorum_active(CLUSTER, &new, 1).await;

    // Writes go on, and nothing acknowledged was lost.
    writer.wait_more_acks(h, 50).await;
    let acks = writer.acks();
    let checked_on = h.assert_acked_rows_present(CLUSTER, &acks.ids).await;
    assert_eq!(checked_on, new);
    new
}

/// PostgreSQL crashes in the primary `primary`'s pod under the running
/// writer: the kubelet restarts it in place and it serves again as the same
/// primary (no promotion), the replicas follow it, nothing acknowledged is
/// lost.
async fn crash_round(h: &Harness, writer: &Writer, primary: &str) {
    let before = h.status(CLUSTER).await;
    let t0 = Instant::now();
    h.crash_postgres(primary).await;
    h.wait_until(
        &format!("{primary} acknowledges writes again after its crash"),
        async || {
            let gap = writer.longest_gap_since(t0).unwrap_or_default();
            (writer.acks_after_by(t0 + gap, primary) > 0 && gap >= Duration::from_millis(100))
                .then_some(())
                .ok_or(format!("{} acknowledged so far", writer.acked()))
        },
    )
    .await;
    println!(
        "ordinal-e2e: Crash of primary {primary}: restarted in place, write outage {:.2}s",
        writer
            .longest_gap_since(t0)
            .unwrap_or_default()
            .as_secs_f64()
    );
    let status = h.wait_ready(CLUSTER, 3).await;
    assert_eq!(status.current_primary.as_deref(), Some(primary));
    assert_eq!(status.epoch, before.epoch, "no promotion after a crash");
    for ordinal in 0..3 {
        let replica = pod(ordinal);
        if replica != primary {
            h.wait_streaming_replica(CLUSTER, primary, &replica).await;
        }
    }
    h.wait_quorum_active(CLUSTER, primary, 1).await;
    writer.wait_more_acks(h, 50).await;
    let acks = writer.acks();
    h.assert_acked_rows_present(CLUSTER, &acks.ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_db0_promotes_a_replica_under_write_load() {
    let h = Harness::new("deleting_db0_promotes_a_replica_under_write_load").await;
    let mut spec = h.spec(3);
    spec.replication.mode = ReplicationMode::Quorum;
    spec.replication.quorum = 1;
    h.apply(CLUSTER, &spec).await;
    let status = h.wait_ready(CLUSTER, 3).await;
    assert_eq!(status.current_primary.as_deref(), Some("db-0"));
    // Commits count only once they wait for a standby.
    h.wait_quorum_active(CLUSTER, "db-0", 1).await;

    let writer = Writer::start(&h, CLUSTER).await;
    writer.wait_more_acks(&h, 100).await;

    // 1. The primary's pod is deleted (drain, kubectl delete pod).
    let second = failover_round(&h, &writer, "db-0", Disruption::DeletePod).await;
    // 2. PostgreSQL crashes on the new primary: it restarts in place and
    // serves again, with all its data; no promotion.
    crash_round(&h, &writer, &second).await;

    let split = writer.split_routes();
    assert!(
        split.is_empty(),
        "db-rw routed to several pods at once: {split:?}"
    );
    let writer_acks = writer.stop().await;
    println!(
        "ordinal-e2e: {} writes acknowledged, {} not acknowledged (errors, reconnects)",
        writer_acks.ids.len(),
        writer_acks.errors
    );
    h.assert_acked_rows_present(CLUSTER, &writer_acks.ids).await;
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_3_5_3_through_the_scale_subresource() {
    let h = Harness::new("scaling_3_5_3_through_the_scale_subresource").await;
    let mut spec = h.spec(3);
    spec.storage.pvc_retention.when_scaled = RetentionPolicy::Delete;
    h.apply(CLUSTER, &spec).await;
    let status = h.wait_ready(CLUSTER, 3).await;
    let primary = status.current_primary.clone().expect("a primary");
    assert_eq!(primary, "db-0");

    let scale_to = async |n: i32| {
        let scale = h
            .clusters()
            .patch_scale(
                CLUSTER,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": n } })),
            )
            .await
            .unwrap_or_else(|e| panic!("patching the scale subresource to {n}: {e}"));
        assert_eq!(scale.spec.and_then(|s| s.replicas), Some(n));
        assert_eq!(h.cluster(CLUSTER).await.spec.replicas, n);
    };
    let scale_reports = async |n: i32| {
        h.wait_until(
            &format!("the scale subresource reports {n} replicas"),
            async || {
                let scale = h
                    .clusters()
                    .get_scale(CLUSTER)
                    .await
                    .map_err(|e| e.to_string())?;
                let spec = scale.spec.and_then(|s| s.replicas);
                let status = scale.status.as_ref().map(|s| s.replicas);
                let selector = scale.status.and_then(|s| s.selector);
                if spec == Some(n) && status == Some(n) && selector.is_some() {
                    Ok(())
                } else {
                    Err(format!(
                        "spec {spec:?}, status {status:?}, selector {selector:?}"
                    ))
                }
            },
        )
        .await;
    };

    // 3 → 5
    scale_to(5).await;
    h.wait_ready(CLUSTER, 5).await;
    for ordinal in 1..5 {
        h.wait_streaming_replica(CLUSTER, &primary, &pod(ordinal))
            .await;
    }
    let slots = h.slots(CLUSTER, &primary).await.expect("slots");
    for slot in ["db_1", "db_2", "db_3", "db_4"] {
        assert!(slots.contains(slot), "slot {slot} on {primary}: {slots:?}");
    }
    for ordinal in 0..5 {
        assert_pvc_kept(&h, &names::data_pvc(CLUSTER, ordinal)).await;
    }
    scale_reports(5).await;
    assert_eq!(
        h.statefulset(CLUSTER)
            .await
            .expect("StatefulSet")
            .spec
            .and_then(|s| s.replicas),
        Some(5)
    );

    // 5 → 3
    scale_to(3).await;
    for ordinal in [3, 4] {
        wait_gone::<Pod>(&h, "pod", &pod(ordinal)).await;
    }
    let status = h.wait_ready(CLUSTER, 3).await;
    assert_eq!(status.current_primary.as_deref(), Some(primary.as_str()));
    h.wait_until(
        &format!("{primary} dropped the slots of db-3 and db-4"),
        async || {
            let slots = h.slots(CLUSTER, &primary).await?;
            let gone = !slots.contains("db_3") && !slots.contains("db_4");
            let kept = slots.contains("db_1") && slots.contains("db_2");
            if gone && kept {
                Ok(())
            } else {
                Err(format!("slots {slots:?}"))
            }
        },
    )
    .await;
    for ordinal in [3, 4] {
        wait_gone::<PersistentVolumeClaim>(&h, "PVC", &names::data_pvc(CLUSTER, ordinal)).await;
    }
    for ordinal in 0..3 {
        assert_pvc_kept(&h, &names::data_pvc(CLUSTER, ordinal)).await;
    }
    for ordinal in [1, 2] {
        h.wait_streaming_replica(CLUSTER, &primary, &pod(ordinal))
            .await;
    }
    scale_reports(3).await;
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_with_a_partition_canary() {
    let h = Harness::new("rolling_update_with_a_partition_canary").await;
    let spec = h.spec(3);
    h.apply(CLUSTER, &spec).await;
    let status = h.wait_ready(CLUSTER, 3).await;
    assert_eq!(status.current_primary.as_deref(), Some("db-0"));
    let epoch0 = status.epoch;
    let old_work_mem = show(&h, CLUSTER, "db-0", "work_mem").await;
    assert_ne!(old_work_mem, "8MB", "the test changes work_mem to 8MB");

    let writer = Writer::start(&h, CLUSTER).await;
    writer.wait_more_acks(&h, 50).await;

    let sts = h.statefulset(CLUSTER).await.expect("StatefulSet");
    let rev0 = sts
        .status
        .and_then(|s| s.update_revision)
        .expect("updateRevision");
    let pods0: BTreeMap<String, Pod> = h
        .cluster_pods(CLUSTER)
        .await
        .expect("pods")
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    for (name, p) in &pods0 {
        assert_eq!(pod_revision(p).as_deref(), Some(rev0.as_str()), "{name}");
    }
    let uid = |name: &str| pods0[name].metadata.uid.clone();

    // The canary: a template change (work_mem) with partition 2.
    let mut canary: PostgresClusterSpec = spec.clone();
    canary.update_strategy.partition = 2;
    canary
        .postgresql
        .parameters
        .insert("work_mem".to_owned(), "8MB".to_owned());
    h.apply(CLUSTER, &canary).await;
    let rev1 = h
        .wait_until("the StatefulSet has a new update revision", async || {
            let sts = h.statefulset(CLUSTER).await?;
            let s = sts.status.clone().unwrap_or_default();
            match s.update_revision {
                Some(r) if r != rev0 && s.observed_generation == sts.metadata.generation => Ok(r),
                other => Err(format!("updateRevision {other:?}")),
            }
        })
        .await;
    h.wait_until("db-2 runs the update revision and is Ready", async || {
        let p = h
            .pods()
            .get_opt("db-2")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("db-2 does not exist")?;
        let revision = pod_revision(&p);
        if p.metadata.uid != uid("db-2")
            && revision.as_deref() == Some(rev1.as_str())
            && pod_ready(&p)
            && p.metadata.deletion_timestamp.is_none()
        {
            Ok(())
        } else {
            Err(format!(
                "db-2 revision {revision:?}, ready {}",
                pod_ready(&p)
            ))
        }
    })
    .await;
    h.wait_ready(CLUSTER, 3).await;
    h.wait_streaming_replica(CLUSTER, "db-0", "db-2").await;
    assert_eq!(show(&h, CLUSTER, "db-2", "work_mem").await, "8MB");
    h.hold_for(
        "db-0 and db-1 to stay the same pods on the old revision, db-0 primary, no promotion",
        Duration::from_secs(20),
        async || {
            for name in ["db-0", "db-1"] {
                let p = h
                    .pods()
                    .get_opt(name)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{name} is gone"))?;
                if p.metadata.uid != uid(name) || p.metadata.deletion_timestamp.is_some() {
                    return Err(format!("{name} was replaced"));
                }
                if pod_revision(&p).as_deref() != Some(rev0.as_str()) {
                    return Err(format!("{name} runs {:?}", pod_revision(&p)));
                }
            }
            let s = h.try_status(CLUSTER).await?;
            if s.current_primary.as_deref() != Some("db-0") || s.epoch != epoch0 {
                return Err(format!(
                    "primary {:?}, epoch {} (was {epoch0})",
                    s.current_primary, s.epoch
                ));
            }
            Ok(())
        },
    )
    .await;

    // The rest: partition 0.
    let mut full = canary.clone();
    full.update_strategy.partition = 0;
    h.apply(CLUSTER, &full).await;
    let mut order: Vec<String> = vec!["db-2".to_owned()];
    h.wait_until(
        "db-0, db-1 and db-2 run the update revision and are Ready",
        async || {
            let pods = h.cluster_pods(CLUSTER).await?;
            let mut waiting = Vec::new();
            for ordinal in 0..3 {
                let name = pod(ordinal);
                let Some(p) = pods.iter().find(|p| p.name_any() == name) else {
                    waiting.push(format!("{name} missing"));
                    continue;
                };
                let updated = pod_revision(p).as_deref() == Some(rev1.as_str());
                if updated && !order.contains(&name) {
                    order.push(name.clone());
                }
                if !updated || !pod_ready(p) || p.metadata.deletion_timestamp.is_some() {
                    waiting.push(format!(
                        "{name} ({:?}, ready {})",
                        pod_revision(p),
                        pod_ready(p)
                    ));
                }
            }
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(format!("waiting for {}", waiting.join(", ")))
            }
        },
    )
    .await;
    let status = h.wait_ready(CLUSTER, 3).await;
    let primary = status.current_primary.clone().expect("a primary");

    assert_eq!(
        order,
        ["db-2", "db-1", "db-0"],
        "replicas first, highest ordinal first, the old primary last"
    );
    let pods1 = h.cluster_pods(CLUSTER).await.expect("pods");
    let created_at = |name: &str| {
        pods1
            .iter()
            .find(|p| p.name_any() == name)
            .and_then(|p| p.metadata.creation_timestamp.clone())
            .map(|t| t.0)
            .unwrap_or_else(|| panic!("{name} has no creationTimestamp"))
    };
    assert!(
        created_at("db-0") >= created_at("db-1") && created_at("db-1") >= created_at("db-2"),
        "the old primary was replaced last"
    );
    for name in ["db-0", "db-1", "db-2"] {
        assert_ne!(
            pods1
                .iter()
                .find(|p| p.name_any() == name)
                .and_then(|p| p.metadata.uid.clone()),
            uid(name),
            "{name} was replaced"
        );
    }

    assert_ne!(primary, "db-0", "the primary moved to an updated replica");
    assert_eq!(
        status.epoch,
        epoch0 + 1,
        "exactly one promotion (the switchover)"
    );
    let record = status.last_failover.clone().expect("status.lastFailover");
    assert!(
        record.reason.contains("switchover"),
        "the promotion was a switchover: {record:?}"
    );
    assert_eq!(record.from, "db-0");
    assert_eq!(record.to, primary);
    assert_eq!(record.lost_bytes, Some(0), "{record:?}");
    for ordinal in 0..3 {
        let name = pod(ordinal);
        assert_eq!(show(&h, CLUSTER, &name, "work_mem").await, "8MB", "{name}");
        if name != primary {
            h.wait_streaming_replica(CLUSTER, &primary, &name).await;
        }
    }

    let switched = Instant::now();
    h.wait_until(
        &format!("writes are acknowledged by {primary}"),
        async || {
            if writer.acks_after_by(switched, &primary) > 0 {
                Ok(())
            } else {
                Err(format!("{} acknowledged so far", writer.acked()))
            }
        },
    )
    .await;
    let split = writer.split_routes();
    assert!(
        split.is_empty(),
        "db-rw routed to several pods at once: {split:?}"
    );
    let acks = writer.stop().await;
    h.assert_acked_rows_present(CLUSTER, &acks.ids).await;
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_spec_is_rejected_with_the_cel_message() {
    let h = Harness::new("an_invalid_spec_is_rejected_with_the_cel_message").await;
    let no_replicas = h.spec(0);
    let mut quorum_too_big = h.spec(3);
    quorum_too_big.replication.mode = ReplicationMode::Quorum;
    quorum_too_big.replication.quorum = 3;

    let rejected =
        |what: &str, result: Result<PostgresCluster, kube::Error>, message: &str| match result {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {status:?}");
                assert_eq!(status.reason, "Invalid", "{what}: {status:?}");
                assert!(
                    status.message.contains(message),
                    "{what}: the API server's message {:?} lacks {message:?}",
                    status.message
                );
                println!("ordinal-e2e: {what} refused: {}", status.message);
            }
            Err(other) => panic!("{what}: expected a 422 from admission, got {other}"),
            Ok(pgc) => panic!("{what}: the API server accepted it: {pgc:?}"),
        };
    let cases = [
        (
            "replicas 0",
            "zero",
            &no_replicas,
            "replicas must be at least 1",
        ),
        (
            "quorum 3 of replicas 3",
            "quorum",
            &quorum_too_big,
            "replication.quorum must be less than replicas",
        ),
    ];
    for (what, name, spec, message) in cases {
        rejected(
            &format!("server-side apply of {what}"),
            h.try_apply(name, spec).await,
            message,
        );
        rejected(
            &format!("create of {what}"),
            h.clusters()
                .create(
                    &PostParams::default(),
                    &PostgresCluster::new(name, spec.clone()),
                )
                .await,
            message,
        );
    }

    // The same object with a valid spec passes admission (dry run only):
    // the refusals above are the rules', not a broken request.
    let valid = PostgresCluster::new("valid", h.spec(3));
    h.clusters()
        .patch(
            "valid",
            &PatchParams::apply(ordinal_e2e::cluster::FIELD_MANAGER).dry_run(),
            &Patch::Apply(&valid),
        )
        .await
        .expect("a valid spec passes admission");

    // Nothing was created.
    let clusters = h
        .clusters()
        .list(&Default::default())
        .await
        .expect("list PostgresClusters");
    assert!(
        clusters.items.is_empty(),
        "no PostgresCluster may exist: {:?}",
        clusters
            .items
            .iter()
            .map(|c| c.name_any())
            .collect::<Vec<_>>()
    );
    let statefulsets = h
        .api::<StatefulSet>()
        .list(&Default::default())
        .await
        .expect("list StatefulSets");
    assert!(statefulsets.items.is_empty());
    let secrets = h
        .api::<Secret>()
        .list(&Default::default())
        .await
        .expect("list Secrets");
    assert!(
        secrets
            .items
            .iter()
            .all(|s| !s.name_any().ends_with(names::SUFFIX_SUPERUSER)),
        "no credentials were generated"
    );
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_the_cluster_removes_owned_objects_and_keeps_pvcs_by_policy() {
    const EPHEMERAL: &str = "scratch";
    let h =
        Harness::new("deleting_the_cluster_removes_owned_objects_and_keeps_pvcs_by_policy").await;
    // "db" keeps its volumes (the default, Retain); "scratch" deletes them.
    h.apply(CLUSTER, &h.spec(2)).await;
    let mut scratch = h.spec(2);
    scratch.storage.pvc_retention.when_deleted = RetentionPolicy::Delete;
    h.apply(EPHEMERAL, &scratch).await;
    h.wait_ready(CLUSTER, 2).await;
    h.wait_ready(EPHEMERAL, 2).await;

    for cluster in [CLUSTER, EPHEMERAL] {
        let pgc = h.cluster(cluster).await;
        let sts = h.statefulset(cluster).await.expect("StatefulSet");
        assert!(
            owned_by(&sts.metadata, &pgc),
            "{cluster}: StatefulSet owner"
        );
        for svc in [
            names::headless_service(cluster),
            names::rw_service(cluster),
            names::ro_service(cluster),
        ] {
            let s = h.api::<Service>().get(&svc).await.expect("Service");
            assert!(owned_by(&s.metadata, &pgc), "{svc} owner");
        }
        let pdb = h
            .api::<PodDisruptionBudget>()
            .get(cluster)
            .await
            .expect("PDB");
        assert!(owned_by(&pdb.metadata, &pgc));
        assert_eq!(
            pdb.spec.and_then(|s| s.min_available),
            Some(IntOrString::Int(1))
        );
        let cm = h
            .api::<ConfigMap>()
            .get(&names::config_map(cluster))
            .await
            .expect("ConfigMap");
        assert!(owned_by(&cm.metadata, &pgc));
        for ordinal in 0..2 {
            assert_pvc_kept(&h, &names::data_pvc(cluster, ordinal)).await;
        }
    }

    for cluster in [CLUSTER, EPHEMERAL] {
        h.clusters()
            .delete(cluster, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting PostgresCluster {cluster}: {e}"));
    }
    for cluster in [CLUSTER, EPHEMERAL] {
        wait_gone::<PostgresCluster>(&h, "PostgresCluster", cluster).await;
        // Garbage collection of everything the cluster owned.
        wait_gone::<StatefulSet>(&h, "StatefulSet", cluster).await;
        for svc in [
            names::headless_service(cluster),
            names::rw_service(cluster),
            names::ro_service(cluster),
        ] {
            wait_gone::<Service>(&h, "Service", &svc).await;
        }
        wait_gone::<PodDisruptionBudget>(&h, "PodDisruptionBudget", cluster).await;
        wait_gone::<ConfigMap>(&h, "ConfigMap", &names::config_map(cluster)).await;
        wait_gone::<ServiceAccount>(&h, "ServiceAccount", cluster).await;
        wait_gone::<Role>(&h, "Role", cluster).await;
        wait_gone::<RoleBinding>(&h, "RoleBinding", cluster).await;
        for ordinal in 0..2 {
            wait_gone::<Pod>(&h, "pod", &names::pod(cluster, ordinal)).await;
        }
    }
    // whenDeleted: Delete — the StatefulSet owned the PVCs.
    for ordinal in 0..2 {
        wait_gone::<PersistentVolumeClaim>(&h, "PVC", &names::data_pvc(EPHEMERAL, ordinal)).await;
    }
    // whenDeleted: Retain (default) — the volumes and the credentials their
    // data was initialized with outlive the cluster, everything else is gone.
    for ordinal in 0..2 {
        assert_pvc_kept(&h, &names::data_pvc(CLUSTER, ordinal)).await;
    }
    for secret in [
        names::superuser_secret(CLUSTER),
        names::replication_secret(CLUSTER),
    ] {
        assert!(
            h.exists::<Secret>(&secret).await.expect("read the Secret"),
            "Secret {secret} outlives the cluster"
        );
    }
}

/// The operator's replicas: the holder of the Lease leads; delete it
/// (gracefully, then by force) and the standby takes over within 15 s,
/// and works: a new cluster comes up. Needs the operator of `deploy/`
/// (`ORDINAL_E2E_OPERATOR=external`, as scripts/test.sh runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_operator_takes_over_within_15_seconds() {
    use k8s_openapi::api::coordination::v1::Lease;
    const OPERATOR_NAMESPACE: &str = "ordinal-system";
    const LEASE: &str = "ordinal-operator-leader";
    const TAKE_OVER_WITHIN: Duration = Duration::from_secs(15);
    let h = Harness::new("the_standby_operator_takes_over_within_15_seconds").await;
    if h.config.operator == OperatorMode::Spawn {
        eprintln!(
            "ordinal-e2e: a spawned operator runs alone, without leader election: nothing to hand over (run with ORDINAL_E2E_OPERATOR=external)"
        );
        return;
    }
    let leases: kube::Api<Lease> = kube::Api::namespaced(h.client.clone(), OPERATOR_NAMESPACE);
    let pods: kube::Api<Pod> = kube::Api::namespaced(h.client.clone(), OPERATOR_NAMESPACE);
    let selector = "app.kubernetes.io/name=ordinal-operator";
    // The holder, once it is one of two Ready replicas (not terminating).
    let leader = async || -> Result<String, String> {
        let lease = leases.get(LEASE).await.map_err(|e| e.to_string())?;
        let holder = lease
            .spec
            .and_then(|s| s.holder_identity)
            .ok_or("the Lease has no holder")?;
        let list = pods
            .list(&kube::api::ListParams::default().labels(selector))
            .await
            .map_err(|e| e.to_string())?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .map(|p| p.name_any())
            .collect();
        if !ready.contains(&holder) {
            return Err(format!(
                "holder {holder} is not a Ready replica ({ready:?})"
            ));
        }
        Ok(holder)
    };

    for force in [false, true] {
        let old = h
            .wait_until("an operator replica leads", async || leader().await)
            .await;
        h.wait_until("two operator replicas are Ready", async || {
            let list = pods
                .list(&kube::api::ListParams::default().labels(selector))
                .await
                .map_err(|e| e.to_string())?;
            let ready = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
                .count();
            (ready == 2)
                .then_some(())
                .ok_or(format!("{ready} Ready replicas"))
        })
        .await;
        let params = if force {
            DeleteParams::default().grace_period(0)
        } else {
            DeleteParams::default()
        };
        let t0 = Instant::now();
        pods.delete(&old, &params)
            .await
            .unwrap_or_else(|e| panic!("deleting the leader {old}: {e}"));
        let new = h
            .wait_until("another replica takes the Lease", async || {
                let lease = leases.get(LEASE).await.map_err(|e| e.to_string())?;
                match lease.spec.and_then(|s| s.holder_identity) {
                    Some(holder) if holder != old => Ok(holder),
                    other => Err(format!("holder {other:?}")),
                }
            })
            .await;
        let took = t0.elapsed();
        println!(
            "ordinal-e2e: operator leader {old} → {new} in {:.1}s ({})",
            took.as_secs_f64(),
            if force {
                "force delete"
            } else {
                "graceful delete"
            }
        );
        assert!(
            took <= TAKE_OVER_WITHIN,
            "the standby took {took:?} to take over from {old}"
        );
    }
    // The new leader works.
    h.apply(CLUSTER, &h.spec(1)).await;
    h.wait_ready(CLUSTER, 1).await;
}
