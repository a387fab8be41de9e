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
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use ordinal_crds::{CONDITION_VOLUME_PLACEMENT, CONDITION_VOLUMES_RESIZED, PostgresClusterStatus};
use ordinal_e2e::cluster::{Harness, Writer};
use ordinal_operator::reconcile::build::tls;
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

/// The serial number of the certificate the server at `host` presents, as
/// `openssl s_client` in `pod` sees it, verifying it against the cluster's
/// CA: upper-case hex, no leading zeros.
async fn served_serial(h: &Harness, pod: &str, host: &str) -> Result<String, String> {
    let script = format!(
        "openssl s_client -starttls postgres -connect {host}:5432 -servername {host} \
         -verify_hostname {host} -CAfile /etc/ordinal/tls/ca.crt -verify_return_error \
         </dev/null 2>/dev/null | openssl x509 -noout -serial"
    );
    let out = h.exec(pod, "postgres", &["sh", "-c", &script]).await?;
    let serial = out
        .stdout
        .trim()
        .strip_prefix("serial=")
        .ok_or_else(|| format!("{pod} → {host}: no verified certificate ({out:?})"))?;
    Ok(normal_serial(serial))
}

fn normal_serial(serial: &str) -> String {
    serial
        .replace(':', "")
        .to_uppercase()
        .trim_start_matches('0')
        .to_owned()
}

/// The serial of a certificate as issued, as [`served_serial`] gives it.
fn serial_of(cert: &tls::ServerCert) -> String {
    normal_serial(
        &tls::cert_info(cert.cert_pem.as_bytes())
            .expect("certificate")
            .serial,
    )
}

/// The servers' certificate in the cluster's Secret: its serial and when
/// it expires.
async fn secret_certificate(h: &Harness, cluster: &str) -> Result<(String, i64), String> {
    let secret = h
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get(&ordinal_crds::names::server_tls_secret(cluster))
        .await
        .map_err(|e| e.to_string())?;
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .ok_or("no tls.crt")?;
    let info = tls::cert_info(&pem.0)?;
    Ok((normal_serial(&info.serial), info.not_after))
}

/// psql in `pod` (as the replication role, in replication mode) with the
/// connection options `options`: IDENTIFY_SYSTEM, and what came of it.
async fn replication_connection(
    h: &Harness,
    pod: &str,
    password: &str,
    options: &str,
) -> ordinal_e2e::cluster::ExecOutput {
    let conninfo =
        format!("{options} port=5432 user=streaming_replica dbname=postgres replication=true");
    let password = format!("PGPASSWORD={password}");
    h.exec(
        pod,
        "postgres",
        &["env", &password, "psql", &conninfo, "-c", "IDENTIFY_SYSTEM"],
    )
    .await
    .expect("exec")
}

/// TLS is on by default, on the real cluster: the replica streams over TLS
/// with `sslmode=verify-full` against the cluster's CA; replication
/// without TLS is refused by pg_hba; verify-full fails for a name the
/// certificate does not hold. A certificate 29 days from expiry is renewed
/// by the operator and served by both instances without a restart and
/// without a lost write. `requireForClients` then refuses a client without
/// TLS, and a client verifying the CA and the -rw name gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_is_verified_and_renewed_without_a_restart() {
    let h = Harness::new("tls_is_verified_and_renewed_without_a_restart").await;
    let cluster = "sec";
    let spec = h.spec(2);
    h.apply(cluster, &spec).await;
    h.wait_ready(cluster, 2).await;
    h.wait_event("PostgresCluster", cluster, "CACreated").await;
    let (primary, session) = h.sql_rw(cluster).await;
    let replica = if primary == "sec-0" { "sec-1" } else { "sec-0" };
    h.wait_streaming_replica(cluster, &primary, replica).await;
    let ns = h.namespace.clone();
    let primary_dns = format!("{primary}.sec-headless.{ns}.svc");

    // Streaming over TLS, as verify-full.
    let row = session
        .query_one(
            "SELECT r.application_name, s.ssl, s.version FROM pg_stat_replication r \
             JOIN pg_stat_ssl s USING (pid)",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let (standby, ssl, version): (String, bool, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(standby, replica);
    assert!(ssl, "{replica} streams without TLS");
    eprintln!("{replica} streams over {version:?}");
    let conninfo: String = h
        .sql(cluster, replica)
        .await
        .query_one("SHOW primary_conninfo", &[])
        .await
        .expect("primary_conninfo")
        .get(0);
    assert!(
        conninfo.contains("sslmode=verify-full")
            && conninfo.contains("sslrootcert='/etc/ordinal/tls/ca.crt'"),
        "{conninfo}"
    );

    // pg_hba: replication only over TLS; verify-full checks the name.
    let replication_password = {
        let secret = h
            .api::<k8s_openapi::api::core::v1::Secret>()
            .get("sec-replication")
            .await
            .expect("replication secret");
        String::from_utf8(secret.data.expect("data")["password"].0.clone()).expect("utf-8")
    };
    let plain = replication_connection(
        &h,
        replica,
        &replication_password,
        &format!("host={primary_dns} sslmode=disable"),
    )
    .await;
    assert!(!plain.success(), "replication without TLS: {plain:?}");
    assert!(
        plain.stderr.contains("no pg_hba.conf entry") && plain.stderr.contains("no encryption"),
        "{plain:?}"
    );
    let verified = replication_connection(
        &h,
        replica,
        &replication_password,
        &format!("host={primary_dns} sslmode=verify-full sslrootcert=/etc/ordinal/tls/ca.crt"),
    )
    .await;
    assert!(verified.success(), "verify-full: {verified:?}");
    let primary_ip = h
        .pods()
        .get(&primary)
        .await
        .expect("primary pod")
        .status
        .and_then(|s| s.pod_ip)
        .expect("pod IP");
    let wrong_name = replication_connection(
        &h,
        replica,
        &replication_password,
        &format!("host={primary_ip} sslmode=verify-full sslrootcert=/etc/ordinal/tls/ca.crt"),
    )
    .await;
    assert!(!wrong_name.success(), "{wrong_name:?}");
    assert!(
        wrong_name.stderr.contains("does not match host name"),
        "{wrong_name:?}"
    );

    let (issued_serial, _) = secret_certificate(&h, cluster).await.expect("certificate");
    assert_eq!(
        served_serial(&h, replica, &primary_dns)
            .await
            .expect("served"),
        issued_serial
    );

    // A certificate 29 days from expiry, as one 61 days old would be.
    let before = pod_identities(&h, cluster).await;
    let writer = Writer::start(&h, cluster).await;
    writer.wait_more_acks(&h, 20).await;
    let ca_secret = h
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get("sec-ca")
        .await
        .expect("CA secret");
    let ca = tls::ca_of(&ca_secret).expect("CA");
    let pgc = h.cluster(cluster).await;
    let valid = ordinal_operator::reconcile::validate::validate(&pgc)
        .expect("object")
        .expect("spec");
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let old =
        tls::issue_server(&ca, &tls::server_names(&valid), now - 61 * 86_400).expect("certificate");
    let mut expiring = tls::server_secret(&valid, &old);
    expiring.metadata.owner_references = None;
    h.api::<k8s_openapi::api::core::v1::Secret>()
        .patch(
            "sec-server",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"data": serde_json::to_value(&expiring.data).unwrap()}),
            ),
        )
        .await
        .expect("expiring certificate");
    // Its serial as issued: a reconcile may renew it before it is read back.
    let expiring_serial = serial_of(&old);
    // The operator looks at the certificate at every reconcile (at least
    // every 5 minutes); an annotation asks for one now.
    h.clusters()
        .patch(
            cluster,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"e2e.ordinal.dev/poke": "renew"}}}),
            ),
        )
        .await
        .expect("annotate");
    let renewed = h
        .wait_until("the operator renews the certificate", async || {
            let (serial, not_after) = secret_certificate(&h, cluster).await?;
            if serial != expiring_serial && not_after - now > 80 * 86_400 {
                Ok(serial)
            } else {
                Err(format!(
                    "serial {serial}, expires in {} days",
                    (not_after - now) / 86_400
                ))
            }
        })
        .await;
    h.wait_until("a CertificateRenewed Event that says why", async || {
        let events = h.events("PostgresCluster", cluster).await;
        events
            .iter()
            .find(|e| e.reason.as_deref() == Some("CertificateRenewed"))
            .and_then(|e| e.message.clone())
            .filter(|m| m.contains("less than 30 days"))
            .ok_or_else(|| "no such Event yet".to_owned())
    })
    .await;
    let replica_dns = format!("{replica}.sec-headless.{ns}.svc");
    h.wait_until("both instances serve the renewed certificate", async || {
        let on_primary = served_serial(&h, replica, &primary_dns).await?;
        let on_replica = served_serial(&h, &primary, &replica_dns).await?;
        if on_primary == renewed && on_replica == renewed {
            Ok(())
        } else {
            Err(format!(
                "{primary} serves {on_primary}, {replica} serves {on_replica}, renewed {renewed}"
            ))
        }
    })
    .await;
    writer.wait_more_acks(&h, 20).await;
    let acks = writer.stop().await;
    assert_eq!(
        pod_identities(&h, cluster).await,
        before,
        "the same pods, never restarted, through the renewal"
    );
    h.wait_streaming_replica(cluster, &primary, replica).await;
    h.assert_acked_rows_present(cluster, &acks.ids).await;

    // TLS required of clients: pg_hba is reloaded, no restart.
    let mut required = spec.clone();
    required.tls.require_for_clients = true;
    h.apply(cluster, &required).await;
    let refused = h
        .wait_until("a client without TLS is refused", async || {
            match h.try_sql(cluster, &primary).await {
                Ok(_) => Err("a client without TLS still gets in".to_owned()),
                Err(e) if e.contains("no encryption") => Ok(e),
                Err(e) => Err(e),
            }
        })
        .await;
    eprintln!("without TLS: {refused}");
    let connector = ordinal_crds::pgtls::connector(ca.cert_pem.as_bytes()).expect("connector");
    let password = h.superuser_password(cluster).await.expect("password");
    let rw_name = format!("sec-rw.{ns}.svc");
    let client = ordinal_e2e::cluster::connect_pod_with(
        &h.client,
        &ns,
        &primary,
        &password,
        Some((&connector, &rw_name)),
    )
    .await
    .expect("a client verifying the CA and the -rw name");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(ssl);
    assert_eq!(
        pod_identities(&h, cluster).await,
        before,
        "requiring TLS of clients restarts nothing"
    );
}

/// The TLS phase recorded in the status ("Off" before any).
async fn tls_phase(h: &Harness, cluster: &str) -> Result<String, String> {
    Ok(h.try_status(cluster)
        .await?
        .tls
        .map_or("none", |t| t.phase.as_str())
        .to_owned())
}

/// Every TLS phase the cluster's status goes through, in order, with its
/// time: a watch sees every write of the status, so a step that lasts a
/// moment is seen too.
struct PhaseWatch {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PhaseWatch {
    fn start(h: &Harness, cluster: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Instant)>::new()));
        let stream = watcher(
            h.clusters(),
            watcher::Config::default().fields(&format!("metadata.name={cluster}")),
        )
        .applied_objects();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(pgc)) = stream.next().await {
                let phase = pgc
                    .tls_status()
                    .map_or("none", |t| t.phase.as_str())
                    .to_owned();
                let mut seen = record.lock().unwrap();
                if seen.last().is_none_or(|(last, _)| *last != phase) {
                    seen.push((phase, Instant::now()));
                }
            }
        });
        Self { seen, task }
    }

    /// The phases seen after `from`, and when.
    fn since(&self, from: Instant) -> Vec<(String, f64)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at)| *at >= from)
            .map(|(phase, at)| (phase.clone(), at.duration_since(from).as_secs_f64()))
            .collect()
    }

    /// Waits until `phase` is seen after `from`; its seconds since `from`.
    async fn wait(&self, h: &Harness, phase: &str, from: Instant) -> f64 {
        h.wait_until(&format!("TLS phase {phase}"), async || {
            let since = self.since(from);
            since
                .iter()
                .find(|(p, _)| p == phase)
                .map(|(_, t)| *t)
                .ok_or_else(|| format!("phases since: {since:?}"))
        })
        .await
    }
}

impl Drop for PhaseWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Samples, every 250 ms, whether `pod`'s WAL receiver streams; the
/// longest run of samples in which it did not is the replication outage.
struct StreamWatch {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl StreamWatch {
    async fn start(h: &Harness, cluster: &str, pod: &str) -> Self {
        let client = h.sql(cluster, pod).await;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut down_since: Option<Instant> = None;
            while !*stopped.borrow() {
                let streaming = client
                    .query_one(
                        "SELECT COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false)",
                        &[],
                    )
                    .await
                    .is_ok_and(|row| row.get::<_, bool>(0));
                let now = Instant::now();
                match (streaming, down_since) {
                    (false, None) => down_since = Some(now),
                    (true, Some(since)) => {
                        longest = longest.max(now - since);
                        down_since = None;
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stopped.changed() => {}
                }
            }
            down_since.map_or(longest, |since| longest.max(since.elapsed()))
        });
        Self { stop, task }
    }

    /// The longest the replica did not stream.
    async fn stop(self) -> Duration {
        let _ = self.stop.send(true);
        self.task.await.expect("stream watch")
    }
}

/// The replica's replication connection as the primary sees it: its
/// application name and whether it is TLS; and the replica's
/// primary_conninfo.
async fn replication_tls(
    h: &Harness,
    cluster: &str,
    primary: &str,
    replica: &str,
) -> Result<(bool, String), String> {
    let on_primary = h.try_sql(cluster, primary).await?;
    let ssl: bool = on_primary
        .query_one(
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE r.application_name = $1 AND r.state = 'streaming'",
            &[&replica],
        )
        .await
        .map_err(|e| format!("{replica} does not stream from {primary}: {e}"))?
        .get(0);
    Ok((ssl, show(h, cluster, replica, "primary_conninfo").await?))
}

/// `SHOW setting` on `pod`.
async fn show(h: &Harness, cluster: &str, pod: &str, setting: &str) -> Result<String, String> {
    h.try_sql(cluster, pod)
        .await?
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .map(|row| row.get(0))
        .map_err(|e| format!("{pod}: SHOW {setting}: {e}"))
}

/// `SHOW ssl` on `pod`.
async fn serves_tls(h: &Harness, cluster: &str, pod: &str) -> Result<bool, String> {
    Ok(show(h, cluster, pod, "ssl").await? == "on")
}

/// The primary of the 2-instance cluster `cluster` (through its -rw
/// Service), and the other instance.
async fn late_roles(h: &Harness, cluster: &str) -> (String, &'static str) {
    let (primary, _) = h.sql_rw(cluster).await;
    let replica = if primary == "late-0" {
        "late-1"
    } else {
        "late-0"
    };
    (primary, replica)
}

/// TLS turned on, then off, for a cluster that runs, under write load.
/// On: one rolling update mounts the certificate (Mounting), a reload
/// makes every server offer TLS (Offered), then replication requires it
/// and the running standby is re-pointed with verify-full (Required) —
/// the same pods as at Offered, no second rolling update, and the standby
/// streams throughout the reloads and the re-point. Off walks back:
/// Offered (the standby re-pointed without verification), Off (ssl off,
/// a rolling update drops the certificate). No acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_is_turned_on_and_off_for_a_running_cluster() {
    let h = Harness::new("tls_is_turned_on_and_off_for_a_running_cluster").await;
    let cluster = "late";
    let mut spec = h.spec(2);
    spec.tls.enabled = false;
    h.apply(cluster, &spec).await;
    h.wait_ready(cluster, 2).await;
    assert_eq!(tls_phase(&h, cluster).await.as_deref(), Ok("Off"));
    let phases = PhaseWatch::start(&h, cluster);
    let writer = Writer::start(&h, cluster).await;
    writer.wait_more_acks(&h, 20).await;

    // On.
    let on = Instant::now();
    spec.tls.enabled = true;
    h.apply(cluster, &spec).await;
    let mounting = phases.wait(&h, "Mounting", on).await;
    let offered = phases.wait(&h, "Offered", on).await;
    let at_offered = pod_identities(&h, cluster).await;
    let (primary, replica) = late_roles(&h, cluster).await;
    h.wait_streaming_replica(cluster, &primary, replica).await;
    let watch = StreamWatch::start(&h, cluster, replica).await;
    let required = phases.wait(&h, "Required", on).await;
    let (ssl, conninfo) = h
        .wait_until(
            &format!("{replica} streams over TLS, verifying {primary}"),
            async || {
                let (ssl, conninfo) = replication_tls(&h, cluster, &primary, replica).await?;
                if ssl && conninfo.contains("sslmode=verify-full") {
                    Ok((ssl, conninfo))
                } else {
                    Err(format!("ssl {ssl}, primary_conninfo {conninfo}"))
                }
            },
        )
        .await;
    let repointed = on.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outage = watch.stop().await;
    eprintln!(
        "TLS on: Mounting {mounting:.1}s, Offered {offered:.1}s, Required {required:.1}s, \
         {replica} verifies {primary} at {repointed:.1}s (ssl {ssl}); \
         longest replication outage from Offered on: {:.1}s",
        outage.as_secs_f64()
    );
    assert!(
        conninfo.contains("sslrootcert='/etc/ordinal/tls/ca.crt'"),
        "{conninfo}"
    );
    for pod in [primary.as_str(), replica] {
        assert_eq!(serves_tls(&h, cluster, pod).await, Ok(true), "{pod}");
    }
    assert_eq!(
        pod_identities(&h, cluster).await,
        at_offered,
        "Offered and Required are reloads: the same pods, never restarted"
    );
    assert!(
        outage < Duration::from_secs(5),
        "{replica} stopped streaming for {outage:?} while TLS became required"
    );
    let steps: Vec<String> = phases.since(on).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        steps,
        ["Mounting", "Offered", "Required"],
        "one step at a time"
    );
    let reasons = h.event_reasons("PostgresCluster", cluster).await;
    for reason in ["TLSMounting", "TLSOffered", "TLSRequired"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} in {reasons:?}"
        );
    }

    // Off.
    let off = Instant::now();
    let watch = StreamWatch::start(&h, cluster, replica).await;
    spec.tls.enabled = false;
    h.apply(cluster, &spec).await;
    let off_at = phases.wait(&h, "Off", off).await;
    let outage = watch.stop().await;
    let conninfo = h
        .wait_until("the standby follows without verifying", async || {
            let (primary, replica) = late_roles(&h, cluster).await;
            let (_, conninfo) = replication_tls(&h, cluster, &primary, replica).await?;
            if conninfo.contains("verify-full") {
                Err(conninfo)
            } else {
                Ok(conninfo)
            }
        })
        .await;
    // The rolling update that drops the certificate.
    h.wait_until("no pod mounts the certificate", async || {
        let pods = h.cluster_pods(cluster).await?;
        match pods.iter().find(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|v| v.iter().any(|v| v.name == "tls"))
        }) {
            Some(p) => Err(format!("{} still mounts it", p.name_any())),
            None if pods.len() == 2 => Ok(()),
            None => Err(format!("{} pods", pods.len())),
        }
    })
    .await;
    h.wait_ready(cluster, 2).await;
    let (primary, replica) = late_roles(&h, cluster).await;
    h.wait_streaming_replica(cluster, &primary, replica).await;
    for pod in [primary.as_str(), replica] {
        assert_eq!(serves_tls(&h, cluster, pod).await, Ok(false), "{pod}");
    }
    let steps = phases.since(off);
    eprintln!(
        "TLS off: {steps:?}; longest replication outage until Off ({off_at:.1}s): {:.1}s; \
         primary_conninfo without verify-full: {}",
        outage.as_secs_f64(),
        !conninfo.contains("sslmode")
    );
    assert_eq!(
        steps.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["Offered", "Off"],
        "TLS stops being required before the servers stop offering it"
    );
    assert!(
        outage < Duration::from_secs(5),
        "the standby stopped streaming for {outage:?} while TLS stopped being required"
    );
    writer.wait_more_acks(&h, 20).await;
    let acks = writer.stop().await;
    h.assert_acked_rows_present(cluster, &acks.ids).await;
}

/// The Secret each pod of `cluster` mounts as its certificate.
async fn mounted_secrets(h: &Harness, cluster: &str) -> Result<BTreeMap<String, String>, String> {
    Ok(h.cluster_pods(cluster)
        .await?
        .iter()
        .map(|p| {
            let mounted = ordinal_operator::reconcile::build::mounted_tls_secret(p);
            (p.name_any(), mounted.unwrap_or_default())
        })
        .collect())
}

/// `tls.serverSecret` of a running cluster changed to a certificate from
/// another CA (a move to cert-manager), under write load. A standby
/// mounting the new CA cannot verify a primary still serving the old
/// certificate, so replication stops verifying (Offered) while one rolling
/// update mounts the new Secret, then requires TLS again (Required); the
/// failover loop, which trusts both CAs meanwhile, switches over to a
/// rolled pod. Both servers then serve the new certificate, the standby
/// verifies its primary with the new CA, and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_certificate_from_another_ca_replaces_the_old_without_an_outage() {
    let h = Harness::new("a_server_certificate_from_another_ca_replaces_the_old_without_an_outage")
        .await;
    let cluster = "swap";
    let mut spec = h.spec(2);
    h.apply(cluster, &spec).await;
    h.wait_ready(cluster, 2).await;
    h.wait_until("TLS required", async || {
        match tls_phase(&h, cluster).await? {
            phase if phase == "Required" => Ok(()),
            phase => Err(phase),
        }
    })
    .await;

    // The user's Secret: a certificate for the cluster's names from a CA
    // of their own.
    let pgc = h.cluster(cluster).await;
    let valid = ordinal_operator::reconcile::validate::validate(&pgc)
        .expect("object")
        .expect("spec");
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let their_ca = tls::issue_ca(&h.namespace, "theirs", now).expect("CA");
    let theirs = tls::issue_server(&their_ca, &tls::server_names(&valid), now).expect("cert");
    let mut secret = tls::server_secret(&valid, &theirs);
    secret.metadata.name = Some("swap-theirs".to_owned());
    secret.metadata.owner_references = None;
    secret.metadata.labels = None;
    h.api::<k8s_openapi::api::core::v1::Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("the user's Secret");
    let their_serial = serial_of(&theirs);

    let phases = PhaseWatch::start(&h, cluster);
    let writer = Writer::start(&h, cluster).await;
    writer.wait_more_acks(&h, 20).await;
    let change = Instant::now();
    spec.tls.server_secret = Some("swap-theirs".to_owned());
    h.apply(cluster, &spec).await;
    let offered = phases.wait(&h, "Offered", change).await;
    let required = phases.wait(&h, "Required", change).await;
    let mounts = mounted_secrets(&h, cluster).await.expect("pods");
    assert!(
        mounts.values().all(|m| m == "swap-theirs"),
        "Required before every pod mounts the new Secret: {mounts:?}"
    );
    h.wait_ready(cluster, 2).await;
    let (primary, _) = h.sql_rw(cluster).await;
    let replica = if primary == "swap-0" {
        "swap-1"
    } else {
        "swap-0"
    };
    h.wait_until(
        &format!("{replica} streams over TLS, verifying {primary} with the new CA"),
        async || {
            let (ssl, conninfo) = replication_tls(&h, cluster, &primary, replica).await?;
            let verifies = conninfo.contains("sslmode=verify-full")
                && conninfo.contains("sslrootcert='/etc/ordinal/tls/ca.crt'");
            if ssl && verifies {
                Ok(())
            } else {
                Err(format!("ssl {ssl}, verify-full {verifies}"))
            }
        },
    )
    .await;
    let verified = change.elapsed().as_secs_f64();
    let ns = h.namespace.clone();
    let primary_dns = format!("{primary}.swap-headless.{ns}.svc");
    let replica_dns = format!("{replica}.swap-headless.{ns}.svc");
    // Asked by name from the other pod: a pod just replaced may still
    // resolve to its old address for a few seconds (DNS caching), and
    // openssl then waits on a connection that never opens.
    for (from, host) in [(replica, &primary_dns), (primary.as_str(), &replica_dns)] {
        h.wait_until(
            &format!("{host} serves the user's certificate, verified with their CA"),
            async || {
                let serial = served_serial(&h, from, host).await?;
                if serial == their_serial {
                    Ok(())
                } else {
                    Err(format!("{host} serves {serial}, not {their_serial}"))
                }
            },
        )
        .await;
    }
    writer.wait_more_acks(&h, 20).await;
    let acks = writer.stop().await;
    h.assert_acked_rows_present(cluster, &acks.ids).await;
    let steps = phases.since(change);
    eprintln!(
        "tls.serverSecret from another CA: {steps:?}; Offered {offered:.1}s, Required \
         {required:.1}s, {replica} verifies {primary} (verify-full) at {verified:.1}s; {} writes \
         acknowledged, none lost",
        acks.ids.len()
    );
    assert_eq!(
        steps.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["Offered", "Required"],
        "replication stops verifying while the pods change CA, then verifies again"
    );
}

/// Asks for a switchover to `to` and waits until it is the primary.
async fn switch_over(h: &Harness, cluster: &str, to: &str) {
    h.clusters()
        .patch(
            cluster,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"ordinal.dev/switchover-to": to}}}),
            ),
        )
        .await
        .expect("ask for a switchover");
    h.wait_until(&format!("{to} is the primary"), async || {
        let status = h.try_status(cluster).await?;
        if status.current_primary.as_deref() == Some(to) && status.target_primary.is_none() {
            Ok(())
        } else {
            Err(format!(
                "{:?} → {:?}",
                status.current_primary, status.target_primary
            ))
        }
    })
    .await;
}

/// The pooler's one Ready pod.
async fn pooler_pod(h: &Harness, cluster: &str) -> String {
    h.wait_until(&format!("{cluster}'s pooler has a Ready pod"), async || {
        let pods = h
            .pods()
            .list(
                &kube::api::ListParams::default().labels(&format!("ordinal.dev/pooler={cluster}")),
            )
            .await
            .map_err(|e| e.to_string())?;
        pods.items
            .iter()
            .find(|p| ordinal_e2e::cluster::pod_ready(p) && p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .ok_or_else(|| format!("{} pods, none Ready", pods.items.len()))
    })
    .await
}

/// `spec.pooler` on the real cluster: PgBouncer in front of -rw, reached
/// through its pod, with TLS verified as `<name>-pooler.<ns>.svc`. While
/// the primary is switched over, a session idle through it keeps its
/// connection and reads on from the new primary; a session writing every
/// 20 ms loses at most the transaction in flight (PgBouncer then ends that
/// client, which reconnects once); writes go on, and every acknowledged
/// write is there. Unsetting `spec.pooler` removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pooler_rides_through_a_switchover() {
    let h = Harness::new("the_pooler_rides_through_a_switchover").await;
    let cluster = "pool";
    let mut spec = h.spec(2);
    spec.pooler = Some(serde_json::from_value(json!({"instances": 1})).expect("pooler"));
    h.apply(cluster, &spec).await;
    h.wait_ready(cluster, 2).await;
    let pod = pooler_pod(&h, cluster).await;
    let password = h.superuser_password(cluster).await.expect("password");
    let ns = h.namespace.clone();

    // The pooler holds the password of its lookup role only: never the
    // superuser's, which it looks up (as a verifier) like any role's.
    let userlist = h
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get("pool-pooler")
        .await
        .expect("pooler Secret")
        .data
        .expect("data")["userlist.txt"]
        .0
        .clone();
    let userlist = String::from_utf8(userlist).expect("utf-8");
    assert!(userlist.starts_with("\"ordinal_pooler\" "), "{userlist}");
    assert!(
        !userlist.contains(&password),
        "the superuser's password is in the pooler's userlist"
    );

    // TLS to the pooler, verified against the cluster's CA for its name.
    let ca_secret = h
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get("pool-ca")
        .await
        .expect("CA secret");
    let ca = tls::ca_of(&ca_secret).expect("CA");
    let connector = ordinal_crds::pgtls::connector(ca.cert_pem.as_bytes()).expect("connector");
    let pooler_name = format!("pool-pooler.{ns}.svc");
    let session = h
        .wait_until("a TLS session through the pooler", async || {
            ordinal_e2e::cluster::connect_pod_with(
                &h.client,
                &ns,
                &pod,
                &password,
                Some((&connector, &pooler_name)),
            )
            .await
        })
        .await;
    session
        .batch_execute("CREATE TABLE pooled (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        .await
        .expect("create table");
    let (old_primary, _) = h.sql_rw(cluster).await;
    let new_primary = if old_primary == "pool-0" {
        "pool-1"
    } else {
        "pool-0"
    };
    h.wait_streaming_replica(cluster, &old_primary, new_primary)
        .await;

    // A session idle through the switchover, and one writing in a loop.
    let connect = async || {
        h.wait_until("a session through the pooler", async || {
            ordinal_e2e::cluster::connect_pod(&h.client, &ns, &pod, &password).await
        })
        .await
    };
    let idle = connect().await;
    idle.query_one("SELECT 1", &[]).await.expect("idle session");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let writing = async {
        let mut session = session;
        let (mut acked, mut failed, mut reopened) = (Vec::new(), Vec::new(), 0);
        let mut id: i64 = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            id += 1;
            match session
                .execute("INSERT INTO pooled (id) VALUES ($1)", &[&id])
                .await
            {
                Ok(_) => acked.push(id),
                Err(e) => {
                    let said = e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                    failed.push(format!("{id}: {said}"));
                    // PgBouncer ends a client whose transaction was on the
                    // server that went away.
                    if session.is_closed() {
                        reopened += 1;
                        session = connect().await;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        (acked, failed, reopened)
    };
    let switching = async {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        switch_over(&h, cluster, new_primary).await;
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let ((acked, failed, reopened), ()) = tokio::join!(writing, switching);
    eprintln!(
        "through the pooler: {} writes acknowledged, {} failed {failed:?}, the writing session re-opened {reopened} time(s)",
        acked.len(),
        failed.len(),
    );
    // The idle session rode through: same connection, now on the new primary.
    assert!(!idle.is_closed(), "the idle client's session was closed");
    let (after, primary_now): (i64, bool) = {
        let row = idle
            .query_one(
                "SELECT (SELECT count(*) FROM pooled WHERE at > now() - interval '4 seconds'), \
                 NOT pg_is_in_recovery()",
                &[],
            )
            .await
            .expect("the idle session reads on after the switchover");
        (row.get(0), row.get(1))
    };
    assert!(primary_now, "the idle session is on the new primary");
    assert!(
        after > 0,
        "no write through the pooler after the switchover"
    );
    assert!(
        failed.len() <= 2 && reopened <= 1,
        "at most the transaction in flight fails: {failed:?}, re-opened {reopened}"
    );
    let client = h.sql(cluster, new_primary).await;
    let present: Vec<i64> = client
        .query("SELECT id FROM pooled", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let present: std::collections::BTreeSet<i64> = present.into_iter().collect();
    let lost: Vec<&i64> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged through the pooler, then lost: {lost:?}"
    );

    // Unset: the pooler goes, and so do its lookup role and function.
    let lookup_role = "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = 'ordinal_pooler') \
                       + (SELECT count(*) FROM pg_proc WHERE proname = 'pooler_lookup')";
    let before: i64 = client
        .query_one(lookup_role, &[])
        .await
        .expect("the pooler's role")
        .get(0);
    assert_eq!(
        before, 2,
        "the pooler's role and function are on the primary"
    );
    spec.pooler = None;
    h.apply(cluster, &spec).await;
    h.wait_until("the pooler's objects are deleted", async || {
        let deployment = h
            .exists::<k8s_openapi::api::apps::v1::Deployment>("pool-pooler")
            .await?;
        let service = h
            .exists::<k8s_openapi::api::core::v1::Service>("pool-pooler")
            .await?;
        if deployment || service {
            Err(format!("deployment {deployment}, service {service}"))
        } else {
            Ok(())
        }
    })
    .await;
    h.wait_until("the pooler's lookup role is dropped", async || {
        let left: i64 = client
            .query_one(lookup_role, &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} of the role and its function left"))
        }
    })
    .await;
}

/// A pod of the postgres image that idles, to run psql from, with `labels`.
async fn client_pod(h: &Harness, name: &str, labels: serde_json::Value) -> String {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "securityContext": {"runAsUser": 999, "runAsGroup": 999, "runAsNonRoot": true,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "postgres",
                "image": h.config.postgres_image,
                "command": ["sleep", "3600"],
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .expect("client pod");
    h.pods()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create the client pod");
    h.wait_until(&format!("{name} runs"), async || {
        let pod = h.pods().get(name).await.map_err(|e| e.to_string())?;
        if ordinal_e2e::cluster::pod_ready(&pod) {
            Ok(())
        } else {
            Err("not Ready".to_owned())
        }
    })
    .await;
    name.to_owned()
}

/// `SELECT 1` from `pod` through `host`, as the superuser, within 4 s.
async fn psql_from(h: &Harness, pod: &str, host: &str, password: &str) -> Result<(), String> {
    let conninfo = format!("host={host} user=postgres dbname=postgres connect_timeout=4");
    let password = format!("PGPASSWORD={password}");
    let out = h
        .exec(
            pod,
            "postgres",
            &["env", &password, "psql", &conninfo, "-tAc", "SELECT 1"],
        )
        .await?;
    if out.success() && out.stdout.trim() == "1" {
        Ok(())
    } else {
        Err(format!("{}{}", out.stdout, out.stderr).trim().to_owned())
    }
}

/// `spec.networkPolicy` on the real cluster, enforced by kube-router: the
/// cluster forms and switches over under its policy (the operator and the
/// instances reach each other); by default any pod of the namespace
/// reaches `-rw`; with `clients` naming a label, a pod without it is
/// dropped and a pod with it gets in, through `-rw` and the pooler.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_network_policy_admits_the_cluster_and_the_named_clients() {
    let h = Harness::new("the_network_policy_admits_the_cluster_and_the_named_clients").await;
    let cluster = "np";
    let mut spec = h.spec(2);
    spec.pooler = Some(serde_json::from_value(json!({"instances": 1})).expect("pooler"));
    h.apply(cluster, &spec).await;
    h.wait_ready(cluster, 2).await;
    assert!(
        h.exists::<k8s_openapi::api::networking::v1::NetworkPolicy>(cluster)
            .await
            .expect("read"),
        "the instances' NetworkPolicy"
    );
    let password = h.superuser_password(cluster).await.expect("password");
    let stranger = client_pod(&h, "stranger", json!({"app": "psql"})).await;
    let friend = client_pod(
        &h,
        "friend",
        json!({"app": "psql", "ordinal-e2e/client": "yes"}),
    )
    .await;
    let rw = format!("np-rw.{}.svc", h.namespace);
    let pooler = format!("np-pooler.{}.svc", h.namespace);
    h.wait_until(
        "by default, any pod of the namespace reaches -rw",
        async || psql_from(&h, &stranger, &rw, &password).await,
    )
    .await;

    // Only the pods labelled ordinal-e2e/client=yes.
    spec.network_policy.clients = Some(vec![
        serde_json::from_value(
            json!({"podSelector": {"matchLabels": {"ordinal-e2e/client": "yes"}}}),
        )
        .expect("peer"),
    ]);
    h.apply(cluster, &spec).await;
    let refused = h
        .wait_until("a pod without the label is dropped", async || {
            match psql_from(&h, &stranger, &rw, &password).await {
                Ok(()) => Err("it still gets in".to_owned()),
                // kube-router drops or rejects the packets.
                Err(e) if e.contains("timeout expired") || e.contains("Connection refused") => {
                    Ok(e)
                }
                Err(e) => Err(e),
            }
        })
        .await;
    eprintln!("without the label: {refused}");
    for host in [&rw, &pooler] {
        h.wait_until(&format!("the labelled pod reaches {host}"), async || {
            psql_from(&h, &friend, host, &password).await
        })
        .await;
    }
    assert!(
        psql_from(&h, &stranger, &pooler, &password).await.is_err(),
        "the pooler admits the named clients only"
    );

    // Under the policy, the operator still reaches the instances: a
    // switchover completes and the old primary streams from the new one.
    let (old_primary, _) = h.sql_rw(cluster).await;
    let new_primary = if old_primary == "np-0" {
        "np-1"
    } else {
        "np-0"
    };
    h.wait_streaming_replica(cluster, &old_primary, new_primary)
        .await;
    switch_over(&h, cluster, new_primary).await;
    h.wait_streaming_replica(cluster, new_primary, &old_primary)
        .await;
    h.wait_until("the labelled pod reaches the new primary", async || {
        psql_from(&h, &friend, &rw, &password).await
    })
    .await;
}
