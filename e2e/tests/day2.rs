//! Day-2 operations on a real Kubernetes cluster: growing the volumes of a
//! running cluster, the image rules of admission, and a volume that strands
//! its pod (an Immediate StorageClass, a volume pinned where no node can run
//! the pod) — said in a condition and an Event, and fixed the way they say.
//!
//! Runs like `tests/cluster.rs` (see there): `scripts/test.sh` runs it on the
//! local cluster, whose StorageClass `standard` allows expansion (its
//! provisioner is also the volumes' resizer, e2e/kube/resizer.go).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use ordinal_crds::{CONDITION_VOLUME_PLACEMENT, CONDITION_VOLUMES_RESIZED, PostgresClusterStatus};
use ordinal_e2e::cluster::{Harness, Writer};
use ordinal_operator::reconcile::volumes::{VolumeView, template_size};
use serde_json::json;

/// The cluster's StorageClass and provisioner (scripts/cluster.sh).
const PROVISIONER: &str = "ordinal.dev/local-path";

/// The condition `type_` of a status as (status, reason, message).
fn condition(status: &PostgresClusterStatus, type_: &str) -> Option<(String, String, String)> {
    status
        .condition(type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the condition `type_` of `cluster` has `status` and `reason`;
/// returns its message.
async fn wait_condition(
    h: &Harness,
    cluster: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    h.wait_until(
        &format!("{cluster}: {type_} {status} ({reason})"),
        async || {
            let s = h.try_status(cluster).await?;
            match condition(&s, type_) {
                Some((st, re, message)) if st == status && re == reason => Ok(message),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// The storage request and capacity of a claim, as the operator reads them.
async fn claim_size(h: &Harness, claim: &str) -> (Option<String>, Option<String>) {
    let pvc = h
        .api::<PersistentVolumeClaim>()
        .get(claim)
        .await
        .expect("claim");
    let seen = VolumeView::from_pvc(&pvc);
    (seen.requested, seen.capacity)
}

/// Refused by admission with `message` in the API server's answer.
#[track_caller]
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>, message: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{what}: {status:?}");
            assert!(
                status.message.contains(message),
                "{what}: the API server's message {:?} lacks {message:?}",
                status.message
            );
            println!("ordinal-e2e: {what} refused: {}", status.message);
        }
        other => panic!("{what}: expected a 422 from admission, got {other:?}"),
    }
}

/// Pod uid and postgres restarts, per pod.
async fn pod_identities(h: &Harness, cluster: &str) -> BTreeMap<String, (String, i32)> {
    h.cluster_pods(cluster)
        .await
        .expect("pods")
        .iter()
        .map(|p| {
            (
                p.name_any(),
                (
                    p.uid().unwrap_or_default(),
                    ordinal_e2e::cluster::postgres_restarts(p),
                ),
            )
        })
        .collect()
}

/// `storage.size` grows from 1Gi to 2Gi on a running cluster under write
/// load: every claim is grown, the StatefulSet is re-created with the new
/// claim size while its pods keep running (same pods, no restart), the
/// `VolumesResized` condition goes Resizing → AsRequested with Events, and
/// no acknowledged write is lost. Shrinking, and a major-version image
/// change, are refused at admission; untagged and `:latest` images too.
/// A StorageClass without expansion leaves everything as it was and says
/// how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_grow_in_place_and_bad_changes_are_refused() {
    let h = Harness::new("volumes_grow_in_place_and_bad_changes_are_refused").await;
    let cluster = "grow";
    let spec = h.spec(2);
    h.apply(cluster, &spec).await;
    h.wait_ready(cluster, 2).await;
    let message = wait_condition(
        &h,
        cluster,
        CONDITION_VOLUMES_RESIZED,
        "True",
        "AsRequested",
    )
    .await;
    assert!(message.contains("every volume has 1Gi"), "{message}");
    wait_condition(
        &h,
        cluster,
        CONDITION_VOLUME_PLACEMENT,
        "True",
        "WaitForFirstConsumer",
    )
    .await;

    let before = pod_identities(&h, cluster).await;
    let old_sts = h.statefulset(cluster).await.expect("statefulset");
    let writer = Writer::start(&h, cluster).await;

    // Grow.
    let mut bigger = spec.clone();
    bigger.storage.size = "2Gi".to_owned();
    h.apply(cluster, &bigger).await;
    h.wait_event("PostgresCluster", cluster, "VolumeExpansion")
        .await;
    h.wait_until("both claims have 2Gi, asked and granted", async || {
        let mut said = Vec::new();
        for ordinal in 0..2 {
            let claim = format!("data-{cluster}-{ordinal}");
            let (requested, capacity) = claim_size(&h, &claim).await;
            if requested.as_deref() != Some("2Gi") || capacity.as_deref() != Some("2Gi") {
                said.push(format!("{claim}: {requested:?}/{capacity:?}"));
            }
        }
        if said.is_empty() {
            Ok(())
        } else {
            Err(said.join(", "))
        }
    })
    .await;
    let new_sts = h
        .wait_until(
            "the StatefulSet is re-created with 2Gi claims",
            async || {
                let sts = h.statefulset(cluster).await?;
                if sts.uid() != old_sts.uid() && template_size(&sts).as_deref() == Some("2Gi") {
                    Ok(sts)
                } else {
                    Err(format!(
                        "uid {:?}, claim size {:?}",
                        sts.uid(),
                        template_size(&sts)
                    ))
                }
            },
        )
        .await;
    let message = wait_condition(
        &h,
        cluster,
        CONDITION_VOLUMES_RESIZED,
        "True",
        "AsRequested",
    )
    .await;
    assert!(message.contains("every volume has 2Gi"), "{message}");
    h.wait_event("PostgresCluster", cluster, "VolumesResized")
        .await;
    h.wait_ready(cluster, 2).await;
    let after = pod_identities(&h, cluster).await;
    assert_eq!(
        before, after,
        "the same pods, never restarted, through the resize"
    );
    // The new StatefulSet owns the pods again.
    for pod in h.cluster_pods(cluster).await.expect("pods") {
        let owner = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .cloned();
        assert_eq!(
            owner.map(|o| o.uid),
            new_sts.uid(),
            "{} is adopted by the new StatefulSet",
            pod.name_any()
        );
    }
    // The setting that follows the volume's size is reloaded, not restarted.
    let primary = h.status(cluster).await.current_primary.expect("a primary");
    let session = h.sql(cluster, &primary).await;
    h.wait_until(
        "the primary's max_slot_wal_keep_size follows the new size (reloaded)",
        async || {
            let value: String = session
                .query_one("SHOW max_slot_wal_keep_size", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if value == "512MB" { Ok(()) } else { Err(value) }
        },
    )
    .await;
    assert_eq!(
        before,
        pod_identities(&h, cluster).await,
        "still the same pods"
    );
    let acks = writer.stop().await;
    assert!(
        acks.ids.len() > 10,
        "the writer wrote through the resize: {}",
        acks.ids.len()
    );
    h.assert_acked_rows_present(cluster, &acks.ids).await;
    println!(
        "ordinal-e2e: grew 2 volumes 1Gi -> 2Gi with {} acknowledged writes, no pod restarted",
        acks.ids.len()
    );

    // Refused at admission, with the rule's message.
    let mut smaller = bigger.clone();
    smaller.storage.size = "1Gi".to_owned();
    refused(
        "storage.size 2Gi -> 1Gi",
        h.try_apply(cluster, &smaller).await,
        "storage.size cannot shrink",
    );
    let mut major = bigger.clone();
    let image = &h.config.postgres_image;
    let (repo, tag) = image.rsplit_once(':').expect("a tagged image");
    let other_major = if tag.starts_with("17") { "16" } else { "17" };
    major.image = format!("{repo}:{other_major}");
    refused(
        &format!("image {image} -> {}", major.image),
        h.try_apply(cluster, &major).await,
        "image cannot change the PostgreSQL major version",
    );
    for (bad, message) in [
        (repo.to_owned(), "image must name a tag"),
        (
            format!("{repo}:latest"),
            "image must not use the tag latest",
        ),
    ] {
        let mut spec = bigger.clone();
        spec.image = bad.clone();
        refused(
            &format!("image {bad} (update)"),
            h.try_apply(cluster, &spec).await,
            message,
        );
        refused(
            &format!("image {bad} (create)"),
            h.try_apply("other", &spec).await,
            message,
        );
    }

    // A class that cannot expand: nothing changes, the condition says why.
    let fixed = format!("fixed-{}", h.namespace);
    h.create_cluster_scoped(
        &serde_json::from_value::<StorageClass>(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": fixed},
            "provisioner": PROVISIONER,
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        }))
        .expect("StorageClass"),
    )
    .await;
    let stuck = "stuck";
    let mut spec = h.spec(1);
    spec.storage.storage_class_name = Some(fixed.clone());
    h.apply(stuck, &spec).await;
    h.wait_ready(stuck, 1).await;
    let mut grown = spec.clone();
    grown.storage.size = "2Gi".to_owned();
    h.apply(stuck, &grown).await;
    let message = wait_condition(
        &h,
        stuck,
        CONDITION_VOLUMES_RESIZED,
        "False",
        "ExpansionNotAllowed",
    )
    .await;
    assert!(
        message.contains(&format!(
            "StorageClass {fixed} does not allow volume expansion"
        )) && message.contains("Set storage.size back to 1Gi"),
        "{message}"
    );
    h.wait_event("PostgresCluster", stuck, "ExpansionNotAllowed")
        .await;
    let sts = h.statefulset(stuck).await.expect("statefulset");
    assert_eq!(
        template_size(&sts).as_deref(),
        Some("1Gi"),
        "the StatefulSet is left as it was"
    );
    assert_eq!(
        claim_size(&h, "data-stuck-0").await.0.as_deref(),
        Some("1Gi")
    );
    h.wait_ready(stuck, 1).await;
    println!("ordinal-e2e: a class without expansion: {message}");
}

/// A StorageClass that binds Immediately is said at once; a replica whose
/// volume is pinned to a node that does not exist (a zone without room)
/// stays Pending, and the `VolumePlacement` condition, an Event and the
/// `ordinal_instance_unschedulable` metric say so with the fix. Following
/// the fix (delete the claim, then the pod) brings the replica back,
/// cloned from the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranded_volume_is_said_with_a_fix_that_works() {
    let h = Harness::new("a_stranded_volume_is_said_with_a_fix_that_works").await;

    // A class binding on creation: said before any pod is placed. (The
    // local provisioner refuses such claims, as a zonal driver would place
    // them blindly: the pod stays Pending.)
    let immediate = format!("immediate-{}", h.namespace);
    h.create_cluster_scoped(
        &serde_json::from_value::<StorageClass>(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": immediate},
            "provisioner": PROVISIONER,
            "volumeBindingMode": "Immediate",
        }))
        .expect("StorageClass"),
    )
    .await;
    let mut spec = h.spec(1);
    spec.storage.storage_class_name = Some(immediate.clone());
    h.apply("eager", &spec).await;
    let message = wait_condition(
        &h,
        "eager",
        CONDITION_VOLUME_PLACEMENT,
        "False",
        "ImmediateBinding",
    )
    .await;
    assert!(
        message.contains(&format!(
            "StorageClass {immediate} binds volumes when they are created"
        )),
        "{message}"
    );
    assert!(
        message.contains("volumeBindingMode: WaitForFirstConsumer"),
        "{message}"
    );
    h.wait_event("PostgresCluster", "eager", "ImmediateBinding")
        .await;
    h.wait_until("ordinal_instance_unschedulable says eager-0", async || {
        let metrics = h.operator_metrics().await;
        let series = format!("ordinal_instance_unschedulable{{cluster=\"eager\",namespace=\"{}\",pod=\"eager-0\"}} 1", h.namespace);
        if metrics.contains(&series) { Ok(()) } else { Err(format!("no {series}")) }
    })
    .await;
    h.clusters()
        .delete("eager", &DeleteParams::default())
        .await
        .expect("delete eager");

    // A replica's claim made beforehand on a volume pinned to a node that
    // is not there: the scheduler finds a volume node affinity conflict.
    let cluster = "zl";
    let pv_name = format!("pinned-{}", h.namespace);
    let claim = format!("data-{cluster}-1");
    let class = h
        .config
        .storage_class
        .clone()
        .unwrap_or_else(|| "standard".to_owned());
    h.create_cluster_scoped(
        &serde_json::from_value::<PersistentVolume>(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": class,
                "local": {"path": "/nonexistent/zone-b"},
                "claimRef": {"namespace": h.namespace, "name": claim},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-b"]}
                ]}]}},
            },
        }))
        .expect("PersistentVolume"),
    )
    .await;
    h.api::<PersistentVolumeClaim>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": class,
                    "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }))
            .expect("claim"),
        )
        .await
        .expect("create the pinned claim");

    // Bound before the pod exists: the scheduler's first attempt sees the
    // conflict (an unschedulable pod is retried only every few minutes).
    h.wait_until(&format!("{claim} is bound to {pv_name}"), async || {
        let pvc = h
            .api::<PersistentVolumeClaim>()
            .get(&claim)
            .await
            .map_err(|e| e.to_string())?;
        match pvc.status.and_then(|s| s.phase) {
            Some(phase) if phase == "Bound" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    h.apply(cluster, &h.spec(2)).await;
    let message = wait_condition(
        &h,
        cluster,
        CONDITION_VOLUME_PLACEMENT,
        "False",
        "VolumeNodeAffinityConflict",
    )
    .await;
    assert!(
        message.contains(&format!(
            "{cluster}-1 cannot be scheduled: its volume {claim} is pinned to topology.kubernetes.io/zone in (zone-b), where no node can run it"
        )),
        "{message}"
    );
    assert!(
        message.contains("didn't match PersistentVolume's node affinity"),
        "the scheduler's words: {message}"
    );
    assert!(
        message.contains(&format!("delete the claim {claim} and then the pod")),
        "{message}"
    );
    h.wait_event("PostgresCluster", cluster, "VolumeNodeAffinityConflict")
        .await;
    println!("ordinal-e2e: {message}");

    // The fix, as said: the claim, then the pod.
    h.api::<PersistentVolumeClaim>()
        .delete(&claim, &DeleteParams::default())
        .await
        .expect("delete the claim");
    h.delete_pod(&format!("{cluster}-1")).await;
    h.wait_ready(cluster, 2).await;
    wait_condition(
        &h,
        cluster,
        CONDITION_VOLUME_PLACEMENT,
        "True",
        "WaitForFirstConsumer",
    )
    .await;
    let pod: Pod = h.pods().get(&format!("{cluster}-1")).await.expect("pod");
    assert!(pod.meta().deletion_timestamp.is_none());
    h.wait_until("the unschedulable series of zl-1 is gone", async || {
        let metrics = h.operator_metrics().await;
        let series = format!("ordinal_instance_unschedulable{{cluster=\"{cluster}\",namespace=\"{}\",pod=\"{cluster}-1\"}}", h.namespace);
        if metrics.contains(&series) { Err(format!("{series} still there")) } else { Ok(()) }
    })
    .await;
}
