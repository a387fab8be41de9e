//! The Kubernetes seam against a scripted API server: label patches, the
//! status compare-and-swap, pod deletion, Events.

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::{Exchange, cluster, pod, status_body, with_status};

const STATUS: &str = "/apis/ordinal.dev/v1alpha1/namespaces/ns/postgresclusters/db/status";
const CLUSTER: &str = "/apis/ordinal.dev/v1alpha1/namespaces/ns/postgresclusters/db";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

fn seam_with(pods: Vec<Pod>) -> (KubeSeam, crate::fixtures::ApiServer) {
    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let client = Client::new(service, "ns");
    let recorder = Recorder::new(client.clone(), Reporter::from("ordinal-operator"));
    let mut writer: Writer<Pod> = Writer::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in pods {
        writer.apply_watcher_event(&watcher::Event::InitApply(p));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // node-a, where the pods run, is Ready.
    let mut nodes: Writer<Node> = Writer::default();
    nodes.apply_watcher_event(&watcher::Event::Apply(
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .expect("node"),
    ));
    let seam = KubeSeam::with_store(
        client,
        recorder,
        "ns",
        "db",
        writer.as_reader(),
        nodes.as_reader(),
    );
    (seam, crate::fixtures::ApiServer::from_handle(handle))
}

fn record(version: &str) -> Record {
    Record {
        current_primary: Some("db-0".to_owned()),
        target_primary: None,
        epoch: 4,
        version: version.to_owned(),
        switchover_to: None,
        fenced: Vec::new(),
        pending: None,
        primary_lsn: None,
        synchronous: None,
    }
}

fn intent(planned: bool) -> Intent {
    Intent {
        from: "db-0".to_owned(),
        from_uid: Some("uid-0".to_owned()),
        from_ip: Some("198.18.0.9".to_owned()),
        to: "db-1".to_owned(),
        planned,
        reason: "primary db-0 is not running".to_owned(),
        old_primary_lsn: Some(0x3000148),
        chosen_lsn: Some(0x3000100),
        lost_bytes: Some(72),
    }
}

/// A pod of the store with its instance (UID, IP, node) and its postgres
/// container running or stopped.
fn instance(name: &str, uid: &str, running: bool) -> Pod {
    let state = if running {
        json!({"running": {}})
    } else {
        json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "labels": {"ordinal.dev/cluster": "db"}},
        "spec": {"containers": [{"name": "postgres"}], "nodeName": "node-a"},
        "status": {"phase": "Running", "podIP": "198.18.0.9", "containerStatuses": [{"name": "postgres", "image": "", "imageID": "", "ready": running, "restartCount": 0, "state": state}]}
    }))
    .expect("pod")
}

fn pod_json() -> Value {
    serde_json::to_value(instance("db-0", "uid-0", true)).expect("pod")
}

fn get_cluster(pgc: &PostgresCluster) -> Exchange {
    Exchange::get(CLUSTER).answer(200, serde_json::to_value(pgc).expect("cluster"))
}

fn event(reason: &'static str, note: &'static str) -> Exchange {
    Exchange::post(EVENTS).check(move |body| {
        assert_eq!(body["reason"], reason);
        let text = body["note"].as_str().unwrap_or_default();
        assert!(text.contains(note), "{text:?} lacks {note:?}");
    })
}

#[tokio::test]
async fn intent_is_recorded_with_the_fresh_version_and_the_old_instance() {
    let mut pgc = cluster().primary("db-0", true).build();
    if let Some(status) = pgc.status.as_mut() {
        status.last_failover = Some(previous_failover());
        status.epoch = 4;
    }
    let (seam, server) = seam_with(vec![instance("db-0", "uid-0", true)]);
    let server = server.run(vec![
        get_cluster(&pgc),
        Exchange::apply(STATUS, "ordinal-operator/primary")
            .check(|body: &Value| {
                assert_eq!(
                    body["status"]["lastFailover"]["to"], "db-0",
                    "the last failover is kept"
                );
                // The version just read, not the one the loop observed at:
                // only who is primary must not have moved.
                assert_eq!(body["metadata"]["resourceVersion"], "100");
                assert_eq!(body["status"]["currentPrimary"], "db-0");
                assert_eq!(body["status"]["targetPrimary"], "db-1");
                assert_eq!(
                    body["status"]["pendingPromotion"],
                    json!({"planned": false, "reason": "primary db-0 is not running",
                           "fromUid": "uid-0", "fromIp": "198.18.0.9",
                           "oldPrimaryLsn": "0/3000148", "chosenLsn": "0/3000100", "lostBytes": 72})
                );
                assert_eq!(body["status"]["epoch"], 5);
            })
            .answer_with(with_status(&pgc)),
        event(
            "FailoverStarted",
            "promoting db-1 in place of db-0 (epoch 5)",
        ),
    ]);
    let written = seam
        .record_intent(&record("99"), &intent(false))
        .await
        .expect("intent");
    assert_eq!(
        (written.epoch, written.target_primary.as_deref()),
        (5, Some("db-1"))
    );
    drop(seam);
    server.await.expect("server");
}

#[tokio::test]
async fn a_record_superseded_by_another_promotion_conflicts_instead_of_overwriting() {
    let mut pgc = cluster().primary("db-0", true).build();
    if let Some(status) = pgc.status.as_mut() {
        status.epoch = 5;
    }
    let mut older = pgc.clone();
    if let Some(status) = older.status.as_mut() {
        status.epoch = 4;
    }
    let (seam, server) = seam_with(vec![]);
    let server = server.run(vec![
        // Read at epoch 4, the status is at epoch 5 now: nothing is written.
        get_cluster(&pgc),
        // Epoch 4 still, but another writer wins the race: read again.
        get_cluster(&older),
        Exchange::apply(STATUS, "ordinal-operator/primary")
            .answer(409, status_body(409, "Conflict")),
        get_cluster(&pgc),
    ]);
    let err = seam
        .record_intent(&record("99"), &intent(false))
        .await
        .expect_err("superseded");
    assert!(matches!(err, SeamError::Conflict { .. }), "{err}");
    let err = seam
        .record_intent(&record("99"), &intent(false))
        .await
        .expect_err("superseded while retrying");
    assert!(matches!(err, SeamError::Conflict { .. }), "{err}");
    drop(seam);
    server.await.expect("server");
}

fn fence_request(planned: bool) -> FenceRequest {
    FenceRequest {
        pod: "db-0".to_owned(),
        planned,
        uid: Some("uid-0".to_owned()),
        ip: None,
        deadline: None,
        last_answer: None,
        intent_at: None,
        hung: false,
    }
}

#[tokio::test]
async fn fencing_removes_the_route_then_stops_the_pod_and_waits_to_see_it_stopped() {
    let unlabel = || {
        Exchange::new_patch("/api/v1/namespaces/ns/pods/db-0")
            .check(|body| {
                assert_eq!(
                    body,
                    &json!({"metadata": {"labels": {"ordinal.dev/role": null}}})
                )
            })
            .answer(200, pod_json())
    };
    let (seam, server) = seam_with(vec![instance("db-0", "uid-0", true)]);
    let server = server.run(vec![
        unlabel(),
        // A short grace: a live postmaster shuts down, a hung one is killed.
        Exchange::delete("/api/v1/namespaces/ns/pods/db-0")
            .check(|body| assert_eq!(body["gracePeriodSeconds"], 1))
            .answer(200, pod_json()),
    ]);
    let state = seam.fence(&fence_request(false)).await.expect("fence");
    assert!(matches!(state, FenceState::Pending(_)), "{state:?}");
    drop(seam);
    server.await.expect("server");

    // A stopped container in a pod nobody deleted (a crash the kubelet
    // restarts in place) proves nothing: it is deleted, and waited for.
    let (seam, server) = seam_with(vec![instance("db-0", "uid-0", false)]);
    let server = server.run(vec![
        unlabel(),
        Exchange::delete("/api/v1/namespaces/ns/pods/db-0")
            .check(|body| assert_eq!(body["preconditions"]["uid"], "uid-0"))
            .answer(200, pod_json()),
    ]);
    let state = seam.fence(&fence_request(false)).await.expect("fence");
    assert!(matches!(state, FenceState::Pending(_)), "{state:?}");
    drop(seam);
    server.await.expect("server");

    // Deleted, but the stop the status shows is from before the deletion.
    let (seam, server) = seam_with(vec![stopped_after(1_000, 999)]);
    let server = server.run(vec![unlabel()]);
    let state = seam.fence(&fence_request(false)).await.expect("fence");
    assert!(matches!(state, FenceState::Pending(_)), "{state:?}");
    drop(seam);
    server.await.expect("server");

    // Its container stopped after the deletion: fenced.
    let (seam, server) = seam_with(vec![stopped_after(1_000, 1_001)]);
    let server = server.run(vec![unlabel()]);
    let state = seam.fence(&fence_request(false)).await.expect("fence");
    assert!(matches!(state, FenceState::Stopped(_)), "{state:?}");
    drop(seam);
    server.await.expect("server");

    // A crash-looping container stopped before the deletion, and the
    // kubelet has since given the pod a terminal phase: it stopped every
    // container and restarts none. Fenced.
    let mut terminal = stopped_after(1_000, 999);
    if let Some(status) = terminal.status.as_mut() {
        status.phase = Some("Failed".to_owned());
    }
    let (seam, server) = seam_with(vec![terminal]);
    let server = server.run(vec![unlabel()]);
    let state = seam.fence(&fence_request(false)).await.expect("fence");
    assert!(
        matches!(&state, FenceState::Stopped(how) if how.contains("terminal phase")),
        "{state:?}"
    );
    drop(seam);
    server.await.expect("server");
}

/// db-0 deleted (1 s grace) at `deleted` (unix seconds), its postgres
/// container terminated at `finished`.
fn stopped_after(deleted: i64, finished: i64) -> Pod {
    let at = |s: i64| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(s).expect("time"),
        )
    };
    let mut pod = instance("db-0", "uid-0", false);
    pod.metadata.deletion_timestamp = Some(at(deleted + 1));
    pod.metadata.deletion_grace_period_seconds = Some(1);
    if let Some(t) = pod
        .status
        .as_mut()
        .and_then(|s| s.container_statuses.as_mut())
        .and_then(|c| c.first_mut())
        .and_then(|c| c.state.as_mut())
        .and_then(|s| s.terminated.as_mut())
    {
        t.finished_at = Some(at(finished));
    }
    pod
}

#[tokio::test]
async fn a_force_deleted_primary_is_not_taken_as_stopped() {
    // The pod object is gone (a force delete), and a new pod of the same
    // name runs: the old server may still run, nothing proves it stopped.
    let (seam, server) = seam_with(vec![instance("db-0", "uid-new", true)]);
    let server = server.run(vec![
        Exchange::new_patch("/api/v1/namespaces/ns/pods/db-0").answer(200, pod_json()),
    ]);
    let state = seam.fence(&fence_request(false)).await.expect("fence");
    assert!(
        matches!(&state, FenceState::Pending(why) if why.contains("may still run")),
        "{state:?}"
    );
    drop(seam);
    server.await.expect("server");
}

#[tokio::test]
async fn a_planned_fence_lets_the_pod_shut_down_cleanly() {
    let mut deleting = instance("db-0", "uid-0", true);
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    deleting.metadata.deletion_grace_period_seconds = Some(30);
    let (seam, server) = seam_with(vec![deleting]);
    // No second delete: its own grace period runs.
    let server = server.run(vec![
        Exchange::new_patch("/api/v1/namespaces/ns/pods/db-0").answer(200, pod_json()),
    ]);
    let state = seam.fence(&fence_request(true)).await.expect("fence");
    assert!(matches!(state, FenceState::Pending(_)), "{state:?}");
    drop(seam);
    server.await.expect("server");
}

#[tokio::test]
async fn publishing_routes_to_the_new_primary_and_records_the_failover() {
    // The intent was written at 101; the reconciler's phase moved the
    // object on to 102 since: the intent is what is checked.
    let mut pgc = cluster().primary("db-0", true).build();
    pgc.metadata.resource_version = Some("102".to_owned());
    if let Some(status) = pgc.status.as_mut() {
        status.target_primary = Some("db-1".to_owned());
        status.epoch = 5;
    }
    let (seam, server) = seam_with(vec![]);
    let server = server.run(vec![
        Exchange::new_patch("/api/v1/namespaces/ns/pods/db-1").check(|body| {
            assert_eq!(
                body["metadata"]["labels"],
                json!({"ordinal.dev/role": "primary"})
            )
        }),
        get_cluster(&pgc),
        Exchange::apply(STATUS, "ordinal-operator/primary")
            .check(|body| {
                assert_eq!(body["metadata"]["resourceVersion"], "102");
                assert_eq!(body["status"]["currentPrimary"], "db-1");
                assert!(
                    body["status"].get("targetPrimary").is_none(),
                    "targetPrimary cleared"
                );
                assert!(body["status"].get("pendingPromotion").is_none());
                assert_eq!(body["status"]["epoch"], 5);
                assert_eq!(body["status"]["lastFailover"]["from"], "db-0");
                assert_eq!(body["status"]["lastFailover"]["lostBytes"], 0);
                assert!(
                    body["status"]["lastFailover"]["phases"]["publish"]
                        .as_f64()
                        .is_some()
                );
            })
            .answer_with(with_status(&pgc)),
        get_cluster(&pgc),
        event("FailoverComplete", "db-1 promoted in place of db-0"),
    ]);
    let mut rec = record("101");
    rec.epoch = 5;
    rec.target_primary = Some("db-1".to_owned());
    let mut outcome = previous_failover();
    outcome.from = "db-0".to_owned();
    outcome.to = "db-1".to_owned();
    outcome.reason = "primary db-0 is not running".to_owned();
    seam.publish(&rec, &outcome).await.expect("publish");
    drop(seam);
    server.await.expect("server");
}

#[tokio::test]
async fn observing_routes_pods_by_the_fresh_record() {
    // After a failover db-1 is primary; db-0 came back still labelled primary.
    let pgc = cluster().primary("db-1", true).build();
    // The shared cache holds other clusters' pods too: a cluster of the
    // same name in another namespace, another cluster's pod in this one.
    let mut elsewhere = pod("db-2", true, Some("primary"));
    elsewhere.metadata.namespace = Some("other".to_owned());
    let mut another = pod("db-3", true, Some("primary"));
    another
        .metadata
        .labels
        .get_or_insert_default()
        .insert("ordinal.dev/cluster".to_owned(), "db-x".to_owned());
    let (seam, server) = seam_with(vec![
        pod("db-0", true, Some("primary")),
        pod("db-1", true, None),
        elsewhere,
        another,
    ]);
    let server = server.run(vec![
        get_cluster(&pgc),
        Exchange::new_patch("/api/v1/namespaces/ns/pods/db-0").check(|body| {
            assert_eq!(
                body["metadata"]["labels"],
                json!({"ordinal.dev/role": "replica"})
            )
        }),
        Exchange::new_patch("/api/v1/namespaces/ns/pods/db-1").check(|body| {
            assert_eq!(
                body["metadata"]["labels"],
                json!({"ordinal.dev/role": "primary"})
            )
        }),
    ]);
    let obs = seam.observe().await.expect("observe");
    assert_eq!(obs.record.current_primary.as_deref(), Some("db-1"));
    assert_eq!(obs.members.len(), 2);
    assert_eq!(obs.members[0].stable.host, "db-0.db-headless.ns.svc");
    drop(seam);
    server.await.expect("server");
}

#[tokio::test]
async fn publishing_a_superseded_promotion_is_refused() {
    // Another operator re-decided: targetPrimary now names db-2.
    let mut pgc = cluster().primary("db-0", true).build();
    if let Some(status) = pgc.status.as_mut() {
        status.target_primary = Some("db-2".to_owned());
        status.epoch = 6;
    }
    let (seam, server) = seam_with(vec![]);
    let server = server.run(vec![
        Exchange::new_patch("/api/v1/namespaces/ns/pods/db-1"),
        get_cluster(&pgc),
    ]);
    let mut rec = record("101");
    rec.epoch = 5;
    let mut outcome = previous_failover();
    outcome.from = "db-0".to_owned();
    outcome.to = "db-1".to_owned();
    let err = seam.publish(&rec, &outcome).await.expect_err("superseded");
    assert!(matches!(err, SeamError::Conflict { .. }), "{err}");
    drop(seam);
    server.await.expect("server");
}

fn previous_failover() -> FailoverRecord {
    FailoverRecord {
        time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
        from: "db-2".to_owned(),
        to: "db-0".to_owned(),
        reason: "an earlier failover".to_owned(),
        duration_seconds: 1.0,
        old_primary_lsn: None,
        promoted_lsn: None,
        lost_bytes: Some(0),
        phases: ordinal_crds::FailoverPhases::default(),
    }
}

#[tokio::test]
async fn a_deleted_cluster_ends_the_loop() {
    let (seam, server) = seam_with(vec![]);
    let server = server.run(vec![Exchange::get(CLUSTER).not_found()]);
    assert!(matches!(seam.observe().await, Err(SeamError::Gone { .. })));
    drop(seam);
    server.await.expect("server");
}

#[test]
fn pod_states() {
    let running: Pod = serde_json::from_value(json!({
        "metadata": {"name": "db-0"},
        "spec": {"containers": [], "nodeName": "node-a"},
        "status": {"phase": "Running", "containerStatuses": [{"name": "postgres", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}
    }))
    .expect("pod");
    assert_eq!(pod_state(&running, Some(true)), PodState::Running);
    assert_eq!(
        pod_state(&running, Some(false)),
        PodState::NodeNotReady("node-a".to_owned())
    );
    let mut crashed = running.clone();
    crashed
        .status
        .as_mut()
        .expect("status")
        .container_statuses
        .as_mut()
        .expect("statuses")[0]
        .state = serde_json::from_value(json!({"waiting": {"reason": "CrashLoopBackOff"}})).ok();
    assert_eq!(
        pod_state(&crashed, None),
        PodState::NotRunning("container postgres: CrashLoopBackOff".to_owned())
    );
    let mut restarting = running.clone();
    restarting
        .status
        .as_mut()
        .expect("status")
        .container_statuses
        .as_mut()
        .expect("statuses")[0]
        .state =
        serde_json::from_value(json!({"terminated": {"exitCode": 137, "reason": "Error"}})).ok();
    assert_eq!(
        pod_state(&restarting, None),
        PodState::Restarting("container postgres: Error".to_owned())
    );
    let mut deleted = running.clone();
    deleted.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    assert_eq!(pod_state(&deleted, Some(true)), PodState::Terminating);
    let mut pending = running;
    pending.status.as_mut().expect("status").phase = Some("Pending".to_owned());
    assert_eq!(
        pod_state(&pending, None),
        PodState::NotRunning("pod phase Pending".to_owned())
    );
}

#[test]
fn a_container_restarted_after_the_intent_confirms_the_fence() {
    use std::time::{Duration, UNIX_EPOCH};
    let with_state = |state: Value, last: Option<Value>| -> Pod {
        let mut status = json!({"name": "postgres", "image": "", "imageID": "", "ready": false, "restartCount": 1, "state": state});
        if let Some(last) = last {
            status["lastState"] = last;
        }
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "uid": "uid-0"},
            "spec": {"containers": [], "nodeName": "node-a"},
            "status": {"phase": "Running", "containerStatuses": [status]}
        }))
        .expect("pod")
    };
    let second = |s: i64| {
        k8s_openapi::jiff::Timestamp::from_second(s)
            .expect("time")
            .to_string()
    };
    // The intent was written at 100.4 s.
    let intent = UNIX_EPOCH + Duration::from_millis(100_400);
    // Started in the intent's second: maybe before it, when its
    // ordinal-init may have started it as primary.
    let same = with_state(json!({"running": {"startedAt": second(100)}}), None);
    assert!(!restarted_after(&same, intent));
    // The next second: after it.
    let after = with_state(json!({"running": {"startedAt": second(101)}}), None);
    assert!(restarted_after(&after, intent));
    // Refused and exited, waiting to be restarted: the last run counts.
    let waiting = with_state(
        json!({"waiting": {"reason": "CrashLoopBackOff"}}),
        Some(json!({"terminated": {"exitCode": 1, "startedAt": second(101)}})),
    );
    assert!(restarted_after(&waiting, intent));
    let earlier = with_state(
        json!({"waiting": {"reason": "CrashLoopBackOff"}}),
        Some(json!({"terminated": {"exitCode": 1, "startedAt": second(99)}})),
    );
    assert!(!restarted_after(&earlier, intent));
}

#[test]
fn archiving_fails_while_the_file_it_failed_on_is_not_archived() {
    let mut archive = ordinal_crds::ArchiveStatus {
        last_archived_wal: Some("000000010000000000000004".to_owned()),
        last_archived_time: Some("2026-12-06T01:00:00Z".to_owned()),
        lag_seconds: 0,
        failures: 0,
        last_failed_wal: None,
        last_error: None,
    };
    let (status, reason, message) = archiving_condition(&archive, "db-0");
    assert_eq!((status, reason), ("True", "Archiving"));
    assert!(message.contains("db-0 archived 000000010000000000000004"));
    archive.failures = 7;
    archive.lag_seconds = 95;
    archive.last_failed_wal = Some("000000010000000000000005".to_owned());
    let (status, reason, message) = archiving_condition(&archive, "db-0");
    assert_eq!((status, reason), ("False", "ArchiveFailing"));
    assert!(
        message.contains("fails on 000000010000000000000005 (7 failures")
            && message.contains("for 95 s"),
        "{message}"
    );
    // The store's answer, when wal-push left it.
    archive.last_error = Some("cannot upload: Bucket quota exceeded".to_owned());
    let (_, _, message) = archiving_condition(&archive, "db-0");
    assert!(
        message.ends_with("for 95 s): cannot upload: Bucket quota exceeded"),
        "{message}"
    );
    // It got through since: archiving again.
    archive.last_archived_wal = Some("000000010000000000000006".to_owned());
    assert_eq!(archiving_condition(&archive, "db-0").0, "True");
    // Nothing archived yet, and failing.
    archive.last_archived_wal = None;
    assert_eq!(archiving_condition(&archive, "db-0").0, "False");
}
