use std::time::Duration;

use super::*;
use crate::failover::pg::ProbeFailure;
use crate::failover::seam::Endpoint;

fn member(name: &str, state: PodState) -> Member {
    Member {
        name: name.to_owned(),
        ordinal: name
            .rsplit('-')
            .next()
            .and_then(|o| o.parse().ok())
            .unwrap_or(0),
        state,
        probe_at: Some(Endpoint {
            host: "127.0.0.1".to_owned(),
            port: 5432,
            hostaddr: None,
            tls_name: None,
        }),
        stable: Endpoint {
            host: format!("{name}.db-headless"),
            port: 5432,
            hostaddr: None,
            tls_name: None,
        },
        instance: Some(format!("uid-{name}")),
    }
}

fn primary(lsn: u64) -> Result<InstanceProbe, ProbeError> {
    Ok(InstanceProbe {
        in_recovery: false,
        current_lsn: Some(lsn),
        receive_lsn: None,
        replay_lsn: None,
        timeline: Some(1),
        receiver: None,
        replay_delay_seconds: None,
        synchronous_standby_names: String::new(),
        ..InstanceProbe::default()
    })
}

fn replica(received: u64, streaming: bool) -> Result<InstanceProbe, ProbeError> {
    Ok(InstanceProbe {
        in_recovery: true,
        current_lsn: None,
        receive_lsn: Some(received),
        replay_lsn: Some(received),
        timeline: Some(1),
        receiver: streaming.then(|| "streaming".to_owned()),
        replay_delay_seconds: Some(0.0),
        synchronous_standby_names: String::new(),
        upstream: Some("db-0.db-headless:5432".to_owned()),
        upstream_addr: None,
        upstream_sslmode: None,
        ssl: false,
        last_message_age: Some(0.5),
        standbys: Vec::new(),
        slots: None,
        archiver: None,
    })
}

fn streak(failures: u32) -> FailureStreak {
    FailureStreak {
        failures,
        no_answer: 0,
    }
}

fn down() -> Result<InstanceProbe, ProbeError> {
    Err(ProbeError::new(ProbeFailure::Refused, "connection refused"))
}

fn three(states: [PodState; 3]) -> Vec<Member> {
    let [a, b, c] = states;
    vec![member("db-0", a), member("db-1", b), member("db-2", c)]
}

fn running() -> Vec<Member> {
    three([PodState::Running, PodState::Running, PodState::Running])
}

fn probes(list: [(&str, Result<InstanceProbe, ProbeError>); 3]) -> Probes {
    list.into_iter().map(|(n, p)| (n.to_owned(), p)).collect()
}

fn settings(mode: ReplicationMode, quorum: i32) -> Settings {
    Settings {
        enabled: true,
        check_interval: Duration::from_secs(1),
        failure_threshold: 3,
        max_lag_bytes: 1000,
        mode,
        quorum,
        replicas: 3,
        isolation: Duration::from_secs(10),
        replication_tls: None,
    }
}

#[test]
fn a_healthy_primary_is_healthy() {
    let p = probes([
        ("db-0", primary(100)),
        ("db-1", replica(100, true)),
        ("db-2", replica(90, true)),
    ]);
    assert_eq!(
        detect("db-0", &running(), &p, streak(0), 3),
        Detection::Healthy
    );
}

#[test]
fn pod_evidence_is_enough() {
    let p = probes([
        ("db-0", down()),
        ("db-1", replica(100, true)),
        ("db-2", replica(90, true)),
    ]);
    let gone = vec![
        member("db-1", PodState::Running),
        member("db-2", PodState::Running),
    ];
    assert!(
        matches!(detect("db-0", &gone, &p, streak(1), 3), Detection::Lost(Loss::PodDown(w)) if w.contains("gone"))
    );
    let crashed = three([
        PodState::NotRunning("OOMKilled".into()),
        PodState::Running,
        PodState::Running,
    ]);
    assert!(
        matches!(detect("db-0", &crashed, &p, streak(1), 3), Detection::Lost(Loss::PodDown(w)) if w.contains("OOMKilled"))
    );
    let node = three([
        PodState::NodeNotReady("node-a".into()),
        PodState::Running,
        PodState::Running,
    ]);
    assert!(
        matches!(detect("db-0", &node, &p, streak(1), 3), Detection::Lost(Loss::PodDown(w)) if w.contains("node-a"))
    );
    let deleted = three([PodState::Terminating, PodState::Running, PodState::Running]);
    assert_eq!(
        detect("db-0", &deleted, &p, streak(0), 3),
        Detection::Lost(Loss::Planned)
    );
}

#[test]
fn a_primary_restarting_in_place_gets_the_threshold_before_it_is_lost() {
    let p = probes([
        ("db-0", down()),
        ("db-1", replica(100, false)),
        ("db-2", replica(90, false)),
    ]);
    let restarting = three([
        PodState::Restarting("container postgres: Error".into()),
        PodState::Running,
        PodState::Running,
    ]);
    // The kubelet brings it back with its data: no promotion meanwhile.
    assert!(matches!(
        detect("db-0", &restarting, &p, streak(2), 3),
        Detection::Suspect(w) if w.contains("restarting in place")
    ));
    // Not back within the threshold: lost.
    assert!(matches!(
        detect("db-0", &restarting, &p, streak(3), 3),
        Detection::Lost(Loss::PodDown(w)) if w.contains("did not come back")
    ));
}

#[test]
fn probe_failures_need_the_threshold_and_the_replicas_confirmation() {
    let lost = probes([
        ("db-0", down()),
        ("db-1", replica(100, false)),
        ("db-2", replica(90, false)),
    ]);
    assert!(
        matches!(detect("db-0", &running(), &lost, streak(2), 3), Detection::Suspect(w) if w.contains("2 of 3"))
    );
    assert!(matches!(
        detect("db-0", &running(), &lost, streak(3), 3),
        Detection::Lost(Loss::Unreachable(_))
    ));
    // A replica still streams from it: the operator's own trouble.
    let partitioned = probes([
        ("db-0", down()),
        ("db-1", replica(100, true)),
        ("db-2", replica(90, false)),
    ]);
    assert!(matches!(
        detect("db-0", &running(), &partitioned, streak(10), 3),
        Detection::Suspect(w) if w.contains("db-1 still streams")
    ));
    // Nobody answers: the operator is the one cut off.
    let alone = probes([("db-0", down()), ("db-1", down()), ("db-2", down())]);
    assert!(matches!(
        detect("db-0", &running(), &alone, streak(10), 3),
        Detection::Suspect(w) if w.contains("operator's own network trouble")
    ));
}

#[test]
fn a_primary_running_as_standby_is_promoted_not_replaced() {
    let p = probes([
        ("db-0", replica(100, false)),
        ("db-1", replica(100, false)),
        ("db-2", replica(90, false)),
    ]);
    assert_eq!(
        detect("db-0", &running(), &p, streak(0), 3),
        Detection::RunsAsStandby
    );
}

#[test]
fn async_chooses_the_highest_position_then_the_lowest_ordinal() {
    let s = settings(ReplicationMode::Async, 1);
    let p = probes([
        ("db-0", down()),
        ("db-1", replica(90, false)),
        ("db-2", replica(100, false)),
    ]);
    let c = choose("db-0", &running(), &p, &s, Some(100), &Quorum::default()).expect("choice");
    assert_eq!(
        (c.candidate.as_str(), c.position, c.lost_bytes),
        ("db-2", 100, Some(0))
    );
    let tie = probes([
        ("db-0", down()),
        ("db-1", replica(100, false)),
        ("db-2", replica(100, false)),
    ]);
    assert_eq!(
        choose("db-0", &running(), &tie, &s, Some(120), &Quorum::default())
            .expect("choice")
            .candidate,
        "db-1"
    );
    assert_eq!(
        choose("db-0", &running(), &tie, &s, Some(120), &Quorum::default())
            .expect("choice")
            .lost_bytes,
        Some(20)
    );
}

#[test]
fn async_skips_replicas_too_far_behind() {
    let s = settings(ReplicationMode::Async, 1);
    let p = probes([
        ("db-0", down()),
        ("db-1", replica(5000, false)),
        ("db-2", replica(100, false)),
    ]);
    // db-2 is 9900 behind the last primary position: never promoted.
    assert_eq!(
        choose("db-0", &running(), &p, &s, Some(5500), &Quorum::default())
            .expect("choice")
            .candidate,
        "db-1"
    );
    let far = probes([
        ("db-0", down()),
        ("db-1", replica(10, false)),
        ("db-2", replica(100, false)),
    ]);
    let why =
        choose("db-0", &running(), &far, &s, Some(5500), &Quorum::default()).expect_err("too far");
    assert!(
        why.contains("maxLagBytesOnFailover (1000)") && why.contains("db-2 (5400 bytes behind)"),
        "{why}"
    );
    // Without a last position (operator restarted), the best is taken.
    assert_eq!(
        choose("db-0", &running(), &far, &s, None, &Quorum::default())
            .expect("choice")
            .lost_bytes,
        None
    );
}

#[test]
fn quorum_needs_n_minus_k_plus_one_standbys() {
    let list = vec!["db-1".to_owned(), "db-2".to_owned()];
    let s = settings(ReplicationMode::Quorum, 1);
    let both = probes([
        ("db-0", down()),
        ("db-1", replica(90, false)),
        ("db-2", replica(100, false)),
    ]);
    let c = choose(
        "db-0",
        &running(),
        &both,
        &s,
        Some(100),
        &Quorum {
            k: 1,
            standbys: list.clone(),
        },
    )
    .expect("choice");
    assert_eq!((c.candidate.as_str(), c.lost_bytes), ("db-2", Some(0)));
    // Below the last primary position: never "no WAL lost".
    let c = choose(
        "db-0",
        &running(),
        &both,
        &s,
        Some(150),
        &Quorum {
            k: 1,
            standbys: list.clone(),
        },
    )
    .expect("choice");
    assert_eq!(c.lost_bytes, Some(50));
    // ANY 1 of 2: both must answer.
    let one = probes([
        ("db-0", down()),
        ("db-1", replica(90, false)),
        ("db-2", down()),
    ]);
    let why = choose(
        "db-0",
        &running(),
        &one,
        &s,
        Some(100),
        &Quorum {
            k: 1,
            standbys: list.clone(),
        },
    )
    .expect_err("too few");
    assert!(
        why.contains("only 1 of the synchronous standbys answer (db-1); 2 must"),
        "{why}"
    );
    // ANY 2 of 2: one suffices, it has every acknowledged commit.
    let s2 = settings(ReplicationMode::Quorum, 2);
    assert_eq!(
        choose(
            "db-0",
            &running(),
            &one,
            &s2,
            None,
            &Quorum {
                k: 2,
                standbys: list.clone()
            }
        )
        .expect("choice")
        .candidate,
        "db-1"
    );
}

#[test]
fn terminating_or_primary_members_are_never_candidates() {
    let s = settings(ReplicationMode::Async, 1);
    let members = three([PodState::Running, PodState::Terminating, PodState::Running]);
    let p = probes([
        ("db-0", down()),
        ("db-1", replica(100, false)),
        ("db-2", replica(50, false)),
    ]);
    assert_eq!(
        choose("db-0", &members, &p, &s, None, &Quorum::default())
            .expect("choice")
            .candidate,
        "db-2"
    );
    let writable = probes([("db-0", down()), ("db-1", primary(100)), ("db-2", down())]);
    assert!(choose("db-0", &running(), &writable, &s, None, &Quorum::default()).is_err());
}

#[test]
fn instance_status_and_lag() {
    let p = probes([
        ("db-0", primary(1000)),
        ("db-1", replica(1000, true)),
        ("db-2", down()),
    ]);
    let mut lagging = replica(600, true).expect("probe");
    lagging.replay_lsn = Some(400);
    lagging.replay_delay_seconds = Some(2.5);
    let mut p = p;
    p.insert("db-2".to_owned(), Ok(lagging));
    let list = instances(&running(), &p);
    assert_eq!(list[0].role, Role::Primary);
    assert_eq!(list[0].lag_bytes, Some(0));
    assert_eq!(list[0].lsn.as_deref(), Some("0/3E8"));
    assert_eq!(
        (list[1].role, list[1].lag_bytes, list[1].ready),
        (Role::Replica, Some(0), true)
    );
    assert_eq!(
        (list[2].lag_bytes, list[2].lag_seconds),
        (Some(600), Some(2.5))
    );
    assert_eq!(max_lag(&list).as_deref(), Some("600B"));
    let unknown = instances(
        &running(),
        &probes([("db-0", down()), ("db-1", down()), ("db-2", down())]),
    );
    assert!(unknown.iter().all(|i| i.role == Role::Unknown && !i.ready));
}

#[test]
fn standby_lists() {
    assert_eq!(standbys("db-1", &running(), 3), ["db-0", "db-2"]);
    assert_eq!(standbys("db-0", &running(), 2), ["db-1"]);
    assert_eq!(expected_standbys("db", "db-2", 3), ["db-0", "db-1"]);
    assert_eq!(human_bytes(16 * 1024 * 1024), "16.0MiB");
}

#[test]
fn a_primary_scaled_away_hands_over_to_a_pod_that_stays() {
    let p = probes([
        ("db-0", replica(100, true)),
        ("db-1", replica(120, true)),
        ("db-2", primary(130)),
    ]);
    assert_eq!(
        scale_down_target("db-2", &running(), &p, 2).as_deref(),
        Some("db-1")
    );
    assert_eq!(scale_down_target("db-2", &running(), &p, 3), None);
    let lagging = probes([
        ("db-0", replica(100, true)),
        ("db-1", replica(120, false)),
        ("db-2", primary(130)),
    ]);
    assert_eq!(
        scale_down_target("db-2", &running(), &lagging, 2).as_deref(),
        Some("db-0")
    );
}

#[test]
fn a_primary_that_answers_is_never_lost_to_a_notready_node() {
    let node = three([
        PodState::NodeNotReady("node-a".into()),
        PodState::Running,
        PodState::Running,
    ]);
    let answering = probes([
        ("db-0", primary(100)),
        ("db-1", replica(100, true)),
        ("db-2", replica(90, true)),
    ]);
    assert!(
        matches!(detect("db-0", &node, &answering, streak(0), 3), Detection::Suspect(w) if w.contains("answers as the primary"))
    );
}

#[test]
fn a_hung_primary_is_lost_even_while_its_wal_senders_stream() {
    let hung = || {
        Err(ProbeError::new(
            ProbeFailure::NoAnswer,
            "connected, no answer",
        ))
    };
    let p = probes([
        ("db-0", hung()),
        ("db-1", replica(100, true)),
        ("db-2", replica(90, true)),
    ]);
    let streak = |failures, no_answer| FailureStreak {
        failures,
        no_answer,
    };
    assert!(matches!(
        detect("db-0", &running(), &p, streak(2, 2), 3),
        Detection::Suspect(_)
    ));
    assert!(matches!(
        detect("db-0", &running(), &p, streak(3, 3), 3),
        Detection::Lost(Loss::Hung(_))
    ));
    // Unreachable, not hung: the streaming replicas say it is alive.
    assert!(matches!(
        detect("db-0", &running(), &p, streak(3, 1), 3),
        Detection::Suspect(w) if w.contains("still streams")
    ));
}

#[test]
fn a_replica_that_heard_nothing_lately_does_not_vouch_for_the_primary() {
    let mut stale = replica(100, true).expect("probe");
    stale.last_message_age = Some(30.0);
    let p = probes([
        ("db-0", down()),
        ("db-1", Ok(stale)),
        ("db-2", replica(90, false)),
    ]);
    assert!(matches!(
        detect("db-0", &running(), &p, streak(3), 3),
        Detection::Lost(Loss::Unreachable(_))
    ));
}

#[test]
fn a_synchronous_set_that_shrinks_is_counted_whole_until_caught_up() {
    let names = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let old = ordinal_crds::SynchronousSet {
        quorum: 1,
        standbys: names(&["db-1", "db-2", "db-3", "db-4"]),
        shrunk_at: None,
    };
    let flushed: BTreeMap<String, u64> = [("db-1".to_owned(), 90), ("db-2".to_owned(), 120)].into();
    // 5 → 3 instances: db-3 and db-4 stay counted while db-1 is behind.
    let next = next_synchronous_set(
        Some(&old),
        "db-0",
        1,
        &names(&["db-1", "db-2"]),
        Some(100),
        &flushed,
    );
    assert_eq!(next.standbys, names(&["db-1", "db-2", "db-3", "db-4"]));
    assert_eq!(next.shrunk_at.as_deref(), Some("0/64"));
    // Once both flushed past the shrink point, the set is the new one.
    let caught: BTreeMap<String, u64> = [("db-1".to_owned(), 100), ("db-2".to_owned(), 120)].into();
    let done = next_synchronous_set(
        Some(&next),
        "db-0",
        1,
        &names(&["db-1", "db-2"]),
        Some(130),
        &caught,
    );
    assert_eq!(done.standbys, names(&["db-1", "db-2"]));
    assert_eq!(done.shrunk_at, None);
    // The union is what the quorum rule counts over.
    let s = settings(ReplicationMode::Quorum, 1);
    let q = quorum_in_effect(Some(&next), "db", "db-0", &s);
    assert_eq!(q.standbys.len(), 4);
    assert_eq!(parse_lsn("1/10"), Some((1 << 32) + 0x10));
    // After a failover to db-1, a set recorded under db-0 is not a shrink.
    let before = ordinal_crds::SynchronousSet {
        quorum: 1,
        standbys: names(&["db-1", "db-2"]),
        shrunk_at: None,
    };
    let after = next_synchronous_set(
        Some(&before),
        "db-1",
        1,
        &names(&["db-0", "db-2"]),
        Some(10),
        &BTreeMap::new(),
    );
    assert_eq!(after.standbys, names(&["db-0", "db-2"]));
}

#[test]
fn the_recorded_union_keeps_every_member_that_may_acknowledge() {
    let recorded = ordinal_crds::SynchronousSet {
        quorum: 1,
        standbys: vec!["db-1".to_owned(), "db-2".to_owned()],
        shrunk_at: None,
    };
    let expected = vec!["db-0".to_owned(), "db-2".to_owned()];
    // db-1 becomes primary: no standby of itself.
    let set = union_synchronous_set(Some(&recorded), Some("db-1"), &expected, 2);
    assert_eq!(set.standbys, ["db-0", "db-2"]);
    assert_eq!(set.quorum, 1, "the smaller k of the two");
    let kept = union_synchronous_set(Some(&recorded), None, &expected, 1);
    assert_eq!(kept.standbys, ["db-0", "db-1", "db-2"]);
    let fresh = union_synchronous_set(None, None, &expected, 1);
    assert_eq!(fresh.standbys, ["db-0", "db-2"]);
}
