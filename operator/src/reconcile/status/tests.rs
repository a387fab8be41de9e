use super::*;
use crate::fixtures::now;

fn view(name: &str, ready: bool) -> PodView {
    PodView {
        name: name.to_owned(),
        ready,
        role: None,
        terminating: false,
        failing: None,
    }
}

fn observed<'a>(pods: &'a [PodView], bootstrapped: bool) -> Observed<'a> {
    Observed {
        cluster: "db",
        generation: Some(4),
        desired: 3,
        pods,
        current_primary: Some("db-0"),
        target_primary: None,
        bootstrapped,
        blocker: None,
    }
}

fn get<'a>(s: &'a ObservedStatus, type_: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition")
}

#[test]
fn new_cluster_is_creating() {
    let pods = [view("db-0", false)];
    let s = compute(&observed(&pods, false), None, Time(now()));
    assert_eq!(s.phase, Phase::Creating);
    assert_eq!(s.observed_generation, Some(4));
    assert_eq!(s.ready, "0/3");
    assert_eq!(get(&s, "Ready").status, "False");
    assert_eq!(get(&s, "Ready").reason, "PrimaryNotReady");
    assert_eq!(get(&s, "Progressing").status, "True");
    assert_eq!(get(&s, "Degraded").status, "False");
    assert_eq!(
        s.selector,
        "app.kubernetes.io/instance=db,app.kubernetes.io/name=postgresql,ordinal.dev/cluster=db"
    );
}

#[test]
fn all_ready_is_healthy() {
    let pods = [view("db-0", true), view("db-1", true), view("db-2", true)];
    let s = compute(&observed(&pods, true), None, Time(now()));
    assert_eq!(s.phase, Phase::Healthy);
    assert_eq!((s.replicas, s.ready_replicas), (3, 3));
    assert_eq!(get(&s, "Ready").status, "True");
    assert_eq!(get(&s, "Progressing").status, "False");
    assert_eq!(get(&s, "Degraded").status, "False");
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(4))
    );
}

#[test]
fn a_replica_down_is_degraded() {
    let pods = [view("db-0", true), view("db-1", false), view("db-2", true)];
    let s = compute(&observed(&pods, true), None, Time(now()));
    assert_eq!(s.phase, Phase::Degraded);
    assert_eq!(get(&s, "Ready").reason, "InstancesNotReady");
    assert_eq!(
        get(&s, "Ready").message,
        "2/3 instances ready; not ready: db-1"
    );
    assert_eq!(get(&s, "Degraded").status, "True");
}

#[test]
fn the_primary_down_is_degraded() {
    let pods = [view("db-0", false), view("db-1", true), view("db-2", true)];
    let s = compute(&observed(&pods, true), None, Time(now()));
    assert_eq!(s.phase, Phase::Degraded);
    assert_eq!(get(&s, "Degraded").reason, "PrimaryNotReady");
}

#[test]
fn scaling_up_is_creating_not_degraded() {
    let pods = [view("db-0", true), view("db-1", true), view("db-2", true)];
    let mut obs = observed(&pods, true);
    obs.desired = 5;
    let s = compute(&obs, None, Time(now()));
    assert_eq!(s.phase, Phase::Creating);
    assert_eq!(get(&s, "Progressing").reason, "Scaling");
    assert_eq!(get(&s, "Degraded").status, "False");
    assert_eq!(s.ready, "3/5");
}

#[test]
fn terminating_pods_do_not_count() {
    let mut gone = view("db-2", true);
    gone.terminating = true;
    let pods = [view("db-0", true), view("db-1", true), gone];
    let s = compute(&observed(&pods, true), None, Time(now()));
    assert_eq!((s.replicas, s.ready_replicas), (2, 2));
}

#[test]
fn a_promotion_under_way_is_failing_over() {
    let pods = [view("db-0", false), view("db-1", true), view("db-2", true)];
    let mut obs = observed(&pods, true);
    obs.target_primary = Some("db-1");
    assert_eq!(compute(&obs, None, Time(now())).phase, Phase::FailingOver);
}

#[test]
fn an_invalid_spec_is_degraded_with_its_message() {
    let pods = [view("db-0", true)];
    let mut obs = observed(&pods, true);
    obs.blocker = Some(Blocker::InvalidSpec(
        "spec.replicas: must be at least 1, got 0".to_owned(),
    ));
    let s = compute(&obs, None, Time(now()));
    assert_eq!(s.phase, Phase::Degraded);
    let degraded = get(&s, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert_eq!(degraded.message, "spec.replicas: must be at least 1, got 0");
}

#[test]
fn transition_times_move_only_on_flips() {
    let earlier = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("ts"));
    let pods = [view("db-0", true), view("db-1", true), view("db-2", true)];
    let first = compute(&observed(&pods, true), None, earlier.clone());
    let old = PostgresClusterStatus {
        conditions: first.conditions.clone(),
        ..PostgresClusterStatus::default()
    };
    // Same observation later: times kept.
    let again = compute(&observed(&pods, true), Some(&old), Time(now()));
    assert!(
        again
            .conditions
            .iter()
            .all(|c| c.last_transition_time == earlier)
    );
    // db-1 goes down: Ready and Degraded flip, Progressing flips too.
    let down = [view("db-0", true), view("db-1", false), view("db-2", true)];
    let flipped = compute(&observed(&down, true), Some(&old), Time(now()));
    assert_eq!(get(&flipped, "Ready").last_transition_time, Time(now()));
    assert_eq!(get(&flipped, "Degraded").last_transition_time, Time(now()));
}

#[test]
fn primary_patch_carries_the_precondition() {
    let p = PrimaryStatus {
        current_primary: "db-0".to_owned(),
        target_primary: None,
        epoch: 0,
        bootstrapped: false,
        pending: None,
    };
    let body = primary_patch(&p, Some("42"));
    assert_eq!(body["metadata"]["resourceVersion"], "42");
    assert_eq!(body["status"]["currentPrimary"], "db-0");
    assert_eq!(body["status"]["epoch"], 0);
    assert!(body["status"].get("targetPrimary").is_none());
}

#[test]
fn observed_patch_never_touches_primary_fields() {
    let pods = [view("db-0", true)];
    let s = compute(&observed(&pods, true), None, Time(now()));
    let body = observed_patch(&s);
    for field in [
        "currentPrimary",
        "targetPrimary",
        "epoch",
        "bootstrapped",
        "lastFailover",
        "instances",
    ] {
        assert!(body["status"].get(field).is_none(), "{field}");
    }
}

#[test]
fn initial_primary_choices() {
    use super::InitialPrimary::*;
    assert_eq!(
        initial_primary("db", &[], None, &[]),
        New("db-0".to_owned())
    );
    let mut labelled = view("db-2", true);
    labelled.role = Some("primary".to_owned());
    assert_eq!(
        initial_primary("db", &[view("db-0", true), labelled], None, &[]),
        Adopt("db-2".to_owned())
    );
    let volumes = vec!["data-db-0".to_owned(), "data-db-1".to_owned()];
    assert!(matches!(
        initial_primary("db", &[], None, &volumes),
        Ask(why) if why.contains("data-db-0, data-db-1") && why.contains("ordinal.dev/primary")
    ));
    assert_eq!(
        initial_primary("db", &[], Some("db-1"), &volumes),
        Adopt("db-1".to_owned())
    );
}

/// An instance whose init container keeps failing: the status says why,
/// in ordinal-init's own words.
#[test]
fn an_instance_that_cannot_start_says_why() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-0"},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {"name": "install", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"terminated": {"exitCode": 0}}},
                {"name": "init", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "message":
                    "2026-12-06T01:00:00Z  INFO restoring a base backup\n2026-12-06T01:00:02Z ERROR recovery from the backup failed: the archive lacks 000000010000000000000003\n"}}}
            ]
        }
    }))
    .expect("pod");
    let failing = PodView::from_pod(&pod);
    assert_eq!(
        failing.failing.as_deref(),
        Some("recovery from the backup failed: the archive lacks 000000010000000000000003")
    );
    let status = compute(&observed(&[failing], false), None, Time(now()));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY)
        .expect("Ready");
    assert!(
        ready
            .message
            .contains("db-0 cannot start: recovery from the backup failed: the archive lacks"),
        "{}",
        ready.message
    );
    // Running again (the kubelet's next try): no longer said.
    let mut retried = pod.clone();
    if let Some(s) = retried.status.as_mut()
        && let Some(c) = s.init_container_statuses.as_mut()
    {
        c[1].state = serde_json::from_value(serde_json::json!({"running": {}})).ok();
    }
    assert_eq!(init_failure(&retried), None);
}
