//! Every rule of the state machine, one test each: what it decides from a
//! recorded state and an observation.

use std::time::{Duration, Instant};

use ordinal_crds::{PendingPromotion, ReplicationMode};

use super::*;
use crate::failover::pg::{InstanceProbe, ProbeError, ProbeFailure};
use crate::failover::seam::{Endpoint, Member, Observation, PodState, Record, Settings};

const HOST0: &str = "db-0.db-headless:5432";

fn member(name: &str, state: PodState) -> Member {
    Member {
        name: name.to_owned(),
        ordinal: name[3..].parse().unwrap_or(0),
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

fn settings(mode: ReplicationMode) -> Settings {
    Settings {
        enabled: true,
        check_interval: Duration::from_secs(1),
        failure_threshold: 3,
        max_lag_bytes: 1 << 20,
        mode,
        quorum: if mode == ReplicationMode::Quorum {
            1
        } else {
            0
        },
        replicas: 3,
        isolation: Duration::from_secs(10),
        replication_tls: None,
    }
}

fn record(primary: &str) -> Record {
    Record {
        current_primary: Some(primary.to_owned()),
        target_primary: None,
        epoch: 3,
        version: "1".to_owned(),
        switchover_to: None,
        fenced: Vec::new(),
        pending: None,
        primary_lsn: None,
        synchronous: None,
    }
}

fn observation(states: [PodState; 3], mode: ReplicationMode) -> Observation {
    let [a, b, c] = states;
    Observation {
        namespace: "ns".to_owned(),
        cluster: "db".to_owned(),
        members: vec![member("db-0", a), member("db-1", b), member("db-2", c)],
        record: record("db-0"),
        settings: settings(mode),
    }
}

fn running(mode: ReplicationMode) -> Observation {
    observation(
        [PodState::Running, PodState::Running, PodState::Running],
        mode,
    )
}

fn primary(lsn: u64) -> Result<InstanceProbe, ProbeError> {
    Ok(InstanceProbe {
        in_recovery: false,
        current_lsn: Some(lsn),
        timeline: Some(1),
        ..InstanceProbe::default()
    })
}

/// A standby at `lsn` streaming from db-0.
fn streaming(lsn: u64) -> Result<InstanceProbe, ProbeError> {
    Ok(InstanceProbe {
        in_recovery: true,
        receive_lsn: Some(lsn),
        replay_lsn: Some(lsn),
        timeline: Some(1),
        receiver: Some("streaming".to_owned()),
        upstream: Some(HOST0.to_owned()),
        last_message_age: Some(0.2),
        ..InstanceProbe::default()
    })
}

/// A standby at `lsn` that follows nobody: detached.
fn detached(lsn: u64) -> Result<InstanceProbe, ProbeError> {
    Ok(InstanceProbe {
        in_recovery: true,
        receive_lsn: Some(lsn),
        replay_lsn: Some(lsn),
        timeline: Some(1),
        upstream: Some(String::new()),
        ..InstanceProbe::default()
    })
}

fn down() -> Result<InstanceProbe, ProbeError> {
    Err(ProbeError::new(ProbeFailure::Refused, "connection refused"))
}

fn probes(list: [Result<InstanceProbe, ProbeError>; 3]) -> Probes {
    ["db-0", "db-1", "db-2"]
        .into_iter()
        .map(str::to_owned)
        .zip(list)
        .collect()
}

fn decide(obs: &Observation, probes: &Probes, memory: &Memory) -> Action {
    next(&View {
        obs,
        probes,
        memory,
        now: Instant::now(),
    })
}

fn intent_of(action: Action) -> Intent {
    match action {
        Action::RecordIntent(intent) => intent,
        other => panic!("expected an intent, got {other:?}"),
    }
}

#[test]
fn a_healthy_cluster_is_steady() {
    let obs = running(ReplicationMode::Async);
    let p = probes([primary(100), streaming(100), streaming(90)]);
    assert_eq!(
        decide(&obs, &p, &Memory::default()),
        Action::Steady {
            blocked: None,
            primary_up: true
        }
    );
}

#[test]
fn a_standby_that_follows_nobody_or_another_host_is_repointed() {
    let obs = running(ReplicationMode::Async);
    let mut elsewhere = streaming(90).expect("probe");
    elsewhere.upstream = Some("db-1.db-headless:5432".to_owned());
    let p = probes([primary(100), detached(100), Ok(elsewhere)]);
    assert_eq!(
        decide(&obs, &p, &Memory::default()),
        Action::Repoint {
            standbys: vec!["db-1".to_owned(), "db-2".to_owned()]
        }
    );
}

#[test]
fn standbys_are_repointed_when_tls_becomes_required_or_stops_being() {
    let verifying = || {
        let mut p = streaming(100).expect("probe");
        p.upstream_sslmode = Some("verify-full".to_owned());
        Ok(p)
    };
    let plain = || {
        let mut p = streaming(100).expect("probe");
        p.upstream_sslmode = Some("prefer".to_owned());
        Ok(p)
    };
    let mut obs = running(ReplicationMode::Async);
    let p = probes([primary(100), verifying(), plain()]);
    // No TLS phase recorded yet: each standby is left as it follows.
    assert!(matches!(
        decide(&obs, &p, &Memory::default()),
        Action::Steady { .. }
    ));
    obs.settings.replication_tls = Some(true);
    assert_eq!(
        decide(&obs, &p, &Memory::default()),
        Action::Repoint {
            standbys: vec!["db-2".to_owned()]
        }
    );
    obs.settings.replication_tls = Some(false);
    assert_eq!(
        decide(&obs, &p, &Memory::default()),
        Action::Repoint {
            standbys: vec!["db-1".to_owned()]
        }
    );
}

#[test]
fn a_standby_that_cannot_follow_is_rejoined_after_a_while() {
    let obs = running(ReplicationMode::Async);
    // db-2 points at db-0 but its WAL receiver cannot stream (a timeline
    // forked before its position): not streaming, on the old timeline.
    let mut stuck = streaming(120).expect("probe");
    stuck.receiver = None;
    let mut p = probes([primary(100), streaming(100), Ok(stuck)]);
    if let Some(Ok(primary)) = p.get_mut("db-0") {
        primary.timeline = Some(2);
    }
    let now = Instant::now();
    let mut memory = Memory::default();
    memory.observe(&obs, &p, Duration::from_secs(1), now);
    assert!(memory.not_following_since.contains_key("db-2"));
    assert!(!memory.not_following_since.contains_key("db-1"));
    // Not yet: a standby reconnecting takes a moment.
    assert!(matches!(
        decide(&obs, &p, &memory),
        Action::Steady { blocked: None, .. }
    ));
    memory
        .not_following_since
        .insert("db-2".to_owned(), now - REJOIN_AFTER);
    assert!(matches!(
        decide(&obs, &p, &memory),
        Action::Rejoin { pod, why } if pod == "db-2" && why.contains("timeline 1 where the primary is on 2")
    ));
}

#[test]
fn a_standby_counts_as_stuck_only_while_it_runs_and_answers() {
    let mut stuck = streaming(100).expect("probe");
    stuck.receiver = None;
    let start = Instant::now();
    let mut memory = Memory::default();
    // db-2 clones for a minute (its pod is not running, nothing answers).
    let cloning = observation(
        [
            PodState::Running,
            PodState::Running,
            PodState::NotRunning("pod phase Pending".to_owned()),
        ],
        ReplicationMode::Async,
    );
    let no_answer = Err(ProbeError::new(ProbeFailure::Refused, "refused"));
    let p = probes([primary(100), streaming(100), no_answer]);
    memory.observe(&cloning, &p, Duration::from_secs(1), start);
    memory.observe(
        &cloning,
        &p,
        Duration::from_secs(1),
        start + Duration::from_secs(60),
    );
    assert!(!memory.not_following_since.contains_key("db-2"));
    // It runs, and its WAL receiver has not connected yet: counted from now.
    let obs = running(ReplicationMode::Async);
    let p = probes([primary(100), streaming(100), Ok(stuck)]);
    let now = start + Duration::from_secs(61);
    memory.observe(&obs, &p, Duration::from_secs(1), now);
    assert_eq!(memory.not_following_since.get("db-2"), Some(&now));
    assert!(matches!(
        decide(&obs, &p, &memory),
        Action::Steady { blocked: None, .. }
    ));
    // Restarted (its pod replaced): the count starts again when it runs.
    memory.observe(
        &cloning,
        &probes([primary(100), streaming(100), no_answer_again()]),
        Duration::from_secs(1),
        now + Duration::from_secs(5),
    );
    assert!(!memory.not_following_since.contains_key("db-2"));
}

fn no_answer_again() -> Result<InstanceProbe, ProbeError> {
    Err(ProbeError::new(ProbeFailure::Refused, "refused"))
}

#[test]
fn an_unplanned_loss_detaches_the_standbys_before_choosing() {
    let obs = observation(
        [
            PodState::NotRunning("container postgres: Error".to_owned()),
            PodState::Running,
            PodState::Running,
        ],
        ReplicationMode::Async,
    );
    // db-2 received more than db-1; both still have a WAL receiver.
    let attached = probes([down(), streaming(100), streaming(120)]);
    assert_eq!(
        decide(&obs, &attached, &Memory::default()),
        Action::Detach {
            standbys: vec!["db-1".to_owned(), "db-2".to_owned()]
        }
    );
    // Detached, their positions no longer move: the one ahead is chosen,
    // so the other can follow it (never promoted behind another standby).
    let frozen = probes([down(), detached(100), detached(120)]);
    let memory = Memory {
        last_primary_lsn: Some(130),
        ..Memory::default()
    };
    let intent = intent_of(decide(&obs, &frozen, &memory));
    assert_eq!(
        (intent.to.as_str(), intent.planned, intent.chosen_lsn),
        ("db-2", false, Some(120))
    );
    assert_eq!(intent.lost_bytes, Some(10));
    assert_eq!(intent.old_primary_lsn, Some(130));
}

#[test]
fn a_planned_loss_is_not_detached_its_final_wal_streams() {
    let obs = observation(
        [PodState::Terminating, PodState::Running, PodState::Running],
        ReplicationMode::Async,
    );
    // Still shutting down: it answers, the standbys stream from it.
    let p = probes([primary(100), streaming(100), streaming(95)]);
    let intent = intent_of(decide(&obs, &p, &Memory::default()));
    assert_eq!((intent.to.as_str(), intent.planned), ("db-1", true));
}

#[test]
fn quorum_mode_does_not_detach_when_it_could_not_choose() {
    let obs = observation(
        [
            PodState::NotRunning("pod phase Failed".to_owned()),
            PodState::Running,
            PodState::Running,
        ],
        ReplicationMode::Quorum,
    );
    // ANY 1 of 2: both standbys must answer; db-2 does not.
    let p = probes([down(), streaming(100), down()]);
    assert!(matches!(
        decide(&obs, &p, &Memory::default()),
        Action::Steady { blocked: Some(why), .. } if why.contains("only 1 of the synchronous standbys answer")
    ));
}

#[test]
fn quorum_mode_never_says_nothing_was_lost_below_the_last_position_seen() {
    let obs = observation(
        [
            PodState::NotRunning("pod phase Failed".to_owned()),
            PodState::Running,
            PodState::Running,
        ],
        ReplicationMode::Quorum,
    );
    let p = probes([down(), detached(100), detached(90)]);
    let memory = Memory {
        last_primary_lsn: Some(150),
        ..Memory::default()
    };
    let intent = intent_of(decide(&obs, &p, &memory));
    assert_eq!((intent.to.as_str(), intent.lost_bytes), ("db-1", Some(50)));
}

#[test]
fn quorum_is_counted_over_the_recorded_set() {
    let mut obs = observation(
        [
            PodState::NotRunning("pod phase Failed".to_owned()),
            PodState::Running,
            PodState::Running,
        ],
        ReplicationMode::Quorum,
    );
    // Scaled down from 5: commits may rest on db-3 or db-4 alone until the
    // remaining standbys caught up.
    obs.record.synchronous = Some(ordinal_crds::SynchronousSet {
        quorum: 1,
        standbys: ["db-1", "db-2", "db-3", "db-4"].map(str::to_owned).to_vec(),
        shrunk_at: Some("0/64".to_owned()),
    });
    let p = probes([down(), detached(100), detached(90)]);
    assert!(matches!(
        decide(&obs, &p, &Memory::default()),
        Action::Steady { blocked: Some(why), .. } if why.contains("ANY 1 of 4")
    ));
}

#[test]
fn a_hung_primary_is_failed_over_although_its_wal_senders_still_stream() {
    let obs = running(ReplicationMode::Async);
    let hung = || Err(ProbeError::new(ProbeFailure::NoAnswer, "no answer"));
    let p = probes([hung(), streaming(100), streaming(100)]);
    let mut memory = Memory::default();
    let start = Instant::now();
    for second in 0..3 {
        memory.observe(
            &obs,
            &p,
            Duration::from_secs(1),
            start + Duration::from_secs(second),
        );
    }
    assert_eq!(memory.streak.failures, 3);
    assert_eq!(memory.streak.no_answer, 3);
    // Its sessions may still commit, and the standbys still receive that:
    // it is stopped first, not cut off (what it committed meanwhile would
    // be lost), and the intent is recorded at once.
    let intent = intent_of(decide(&obs, &p, &memory));
    assert!(!intent.planned);
    assert!(
        intent.reason.contains("has not answered 3 probes"),
        "{}",
        intent.reason
    );
    // Once no standby streams from it, the rule is the usual one.
    let p = probes([hung(), detached(100), streaming(100)]);
    let mut stale = streaming(100);
    if let Ok(s) = &mut stale {
        s.last_message_age = Some(30.0);
    }
    let p2 = probes([hung(), stale, detached(90)]);
    assert!(matches!(decide(&obs, &p2, &memory), Action::Detach { .. }));
    assert!(matches!(decide(&obs, &p, &memory), Action::RecordIntent(_)));
}

#[test]
fn a_hung_primary_not_seen_stopped_soon_is_cut_off_after_all() {
    let obs = promoting(false);
    let now = Instant::now();
    let mut memory = Memory {
        last_contact: Some(now - Duration::from_secs(4)),
        fence_started: Some((4, now)),
        ..Memory::default()
    };
    let p = probes([down(), streaming(100), streaming(90)]);
    // Not detached: the stop must be confirmed, no deadline stands in.
    assert_eq!(
        decide(&obs, &p, &memory),
        Action::Fence {
            pod: "db-0".to_owned(),
            planned: false,
            deadline: None,
        }
    );
    // Not confirmed within DETACH_AFTER_FENCING: the standbys are detached,
    // and then the isolation deadline applies.
    memory.fence_started = Some((4, now - DETACH_AFTER_FENCING));
    assert_eq!(
        decide(&obs, &p, &memory),
        Action::Detach {
            standbys: vec!["db-1".to_owned(), "db-2".to_owned()]
        }
    );
    memory.detached_at = Some(now);
    let detached_probes = probes([down(), detached(100), detached(90)]);
    assert_eq!(
        decide(&obs, &detached_probes, &memory),
        Action::Fence {
            pod: "db-0".to_owned(),
            planned: false,
            deadline: Some(now + Duration::from_secs(10) + ISOLATION_MARGIN),
        }
    );
}

#[test]
fn a_standby_further_ahead_than_the_target_is_promoted_instead() {
    for mode in [ReplicationMode::Async, ReplicationMode::Quorum] {
        let mut obs = promoting(true);
        obs.settings = settings(mode);
        obs.record.pending = Some(PendingPromotion {
            planned: true,
            reason: "the primary's pod is being deleted (planned)".to_owned(),
            from_uid: Some("uid-db-0".to_owned()),
            from_ip: Some("198.18.0.9".to_owned()),
            old_primary_lsn: Some("0/64".to_owned()),
            chosen_lsn: Some("0/5A".to_owned()),
            lost_bytes: Some(0),
        });
        let memory = Memory {
            fenced_epoch: Some(4),
            fenced_at: Some(Instant::now() - FINAL_WAL_WAIT),
            ..Memory::default()
        };
        // The old primary's last WAL reached db-2, not db-1: promoted, db-1
        // would fork before db-2's position (db-2 could not follow it) and,
        // in quorum mode, a commit only db-2 acknowledged would be lost.
        let p = probes([down(), detached(0x90), detached(0xA0)]);
        let Action::Retarget(intent) = decide(&obs, &p, &memory) else {
            panic!("expected a retarget");
        };
        assert_eq!(intent.to, "db-2");
        assert_eq!(intent.from, "db-0");
        assert_eq!(intent.from_uid.as_deref(), Some("uid-db-0"));
        assert_eq!(intent.chosen_lsn, Some(0xA0));
        assert!(intent.planned);
        assert!(
            intent
                .reason
                .contains("db-2 holds more WAL than db-1 (0/A0 > 0/90)"),
            "{}",
            intent.reason
        );
        // Equal or behind: no change.
        let p = probes([down(), detached(0xA0), detached(0xA0)]);
        assert!(matches!(decide(&obs, &p, &memory), Action::Promote { .. }));
    }
}

#[test]
fn no_promotion_while_a_standby_still_receives_the_old_primarys_last_wal() {
    let obs = promoting(false);
    let mut memory = Memory {
        fenced_epoch: Some(4),
        fenced_at: Some(Instant::now()),
        ..Memory::default()
    };
    // The target has it all, but db-2 still streams from db-0: its position
    // may still pass the target's.
    let p = probes([down(), detached(100), streaming(90)]);
    assert!(matches!(decide(&obs, &p, &memory), Action::Wait(why) if why.contains("db-2")));
    memory.fenced_at = Some(Instant::now() - FINAL_WAL_WAIT);
    assert!(matches!(decide(&obs, &p, &memory), Action::Promote { .. }));
}

#[test]
fn a_primary_given_up_for_lost_and_no_longer_probed_stays_lost_for_the_same_reason() {
    let obs = running(ReplicationMode::Async);
    let hung = || {
        Err(ProbeError::new(
            ProbeFailure::NoAnswer,
            "did not answer within 1.5s",
        ))
    };
    let p = probes([hung(), streaming(100), streaming(100)]);
    let mut memory = Memory::default();
    let start = Instant::now();
    for second in 0..3 {
        memory.observe(
            &obs,
            &p,
            Duration::from_secs(1),
            start + Duration::from_secs(second),
        );
    }
    // Detached; the driver stops probing the primary.
    let mut unprobed = probes([hung(), detached(100), detached(100)]);
    unprobed.remove("db-0");
    memory.observe(
        &obs,
        &unprobed,
        Duration::from_secs(1),
        start + Duration::from_secs(4),
    );
    assert_eq!(memory.streak.no_answer, 3, "the streak stands");
    let intent = intent_of(decide(&obs, &unprobed, &memory));
    assert!(
        intent.reason.contains("did not answer within 1.5s"),
        "{}",
        intent.reason
    );
    assert!(!intent.planned);
}

#[test]
fn the_intent_names_the_instance_last_seen_serving_not_its_replacement() {
    let obs = running(ReplicationMode::Async);
    let mut memory = Memory::default();
    let start = Instant::now();
    let ok = probes([primary(100), streaming(100), streaming(100)]);
    memory.observe(&obs, &ok, Duration::from_secs(1), start);
    // Force-deleted: a replacement pod under the same name, Pending.
    let mut after = observation(
        [
            PodState::NotRunning("pod phase Pending".to_owned()),
            PodState::Running,
            PodState::Running,
        ],
        ReplicationMode::Async,
    );
    after.members[0].instance = Some("uid-replacement".to_owned());
    after.members[0].probe_at = None;
    let p = probes([down(), detached(100), detached(100)]);
    memory.observe(
        &after,
        &p,
        Duration::from_secs(1),
        start + Duration::from_secs(1),
    );
    let intent = intent_of(decide(&after, &p, &memory));
    assert_eq!(intent.from_uid.as_deref(), Some("uid-db-0"));
    assert_eq!(intent.from_ip.as_deref(), Some("127.0.0.1"));
}

#[test]
fn failures_count_once_per_check_interval() {
    let obs = running(ReplicationMode::Async);
    let p = probes([down(), streaming(100), streaming(100)]);
    let mut memory = Memory::default();
    let start = Instant::now();
    for ms in [0, 100, 200, 300] {
        memory.observe(
            &obs,
            &p,
            Duration::from_secs(1),
            start + Duration::from_millis(ms),
        );
    }
    assert_eq!(memory.streak.failures, 1);
    memory.observe(
        &obs,
        &p,
        Duration::from_secs(1),
        start + Duration::from_millis(1000),
    );
    assert_eq!(memory.streak.failures, 2);
    assert_eq!(memory.streak.no_answer, 0);
    let ok = probes([primary(200), streaming(200), streaming(200)]);
    memory.observe(
        &obs,
        &ok,
        Duration::from_secs(1),
        start + Duration::from_secs(2),
    );
    assert_eq!(memory.streak.failures, 0);
    assert_eq!(memory.last_primary_lsn, Some(200));
    assert!(memory.last_contact.is_some());
}

fn promoting(planned: bool) -> Observation {
    let mut obs = running(ReplicationMode::Async);
    obs.record.target_primary = Some("db-1".to_owned());
    obs.record.epoch = 4;
    obs.record.pending = Some(PendingPromotion {
        planned,
        reason: "test".to_owned(),
        ..PendingPromotion::default()
    });
    obs
}

#[test]
fn a_recorded_promotion_fences_then_promotes_then_publishes() {
    let obs = promoting(false);
    let contact = Instant::now();
    let mut memory = Memory {
        last_contact: Some(contact),
        detached_at: Some(contact),
        ..Memory::default()
    };
    let p = probes([down(), detached(100), detached(90)]);
    assert_eq!(
        decide(&obs, &p, &memory),
        Action::Fence {
            pod: "db-0".to_owned(),
            planned: false,
            deadline: Some(contact + Duration::from_secs(10) + ISOLATION_MARGIN),
        }
    );
    memory.fenced_epoch = Some(4);
    memory.fenced_at = Some(Instant::now());
    // db-2, detached, is pointed at db-1 before the promotion.
    assert_eq!(
        decide(&obs, &p, &memory),
        Action::Promote {
            pod: "db-1".to_owned(),
            synchronous_standby_names: String::new(),
            standbys: vec!["db-2".to_owned()],
        }
    );
    let promoted = probes([down(), primary(100), detached(90)]);
    assert_eq!(
        decide(&obs, &promoted, &memory),
        Action::Publish {
            pod: "db-1".to_owned()
        }
    );
}

#[test]
fn the_fence_of_an_older_promotion_does_not_count() {
    let obs = promoting(false);
    let memory = Memory {
        fenced_epoch: Some(3),
        ..Memory::default()
    };
    let p = probes([down(), detached(100), detached(90)]);
    assert!(matches!(decide(&obs, &p, &memory), Action::Fence { .. }));
}

#[test]
fn a_planned_promotion_waits_briefly_for_the_final_wal() {
    let obs = promoting(true);
    let mut memory = Memory {
        fenced_epoch: Some(4),
        fenced_at: Some(Instant::now()),
        last_primary_lsn: Some(120),
        ..Memory::default()
    };
    // Still receiving from db-0, and behind what db-0 had.
    let p = probes([down(), streaming(100), streaming(90)]);
    assert!(matches!(decide(&obs, &p, &memory), Action::Wait(_)));
    // Not for ever.
    memory.fenced_at = Some(Instant::now() - FINAL_WAL_WAIT);
    assert!(matches!(decide(&obs, &p, &memory), Action::Promote { .. }));
    // Or the old primary's WAL senders are done.
    memory.fenced_at = Some(Instant::now());
    let caught_up = probes([down(), detached(120), detached(120)]);
    assert!(matches!(
        decide(&obs, &caught_up, &memory),
        Action::Promote { .. }
    ));
}

#[test]
fn a_recorded_primary_running_as_standby_is_promoted_unless_another_writes() {
    let obs = running(ReplicationMode::Async);
    let p = probes([detached(100), streaming(100), streaming(90)]);
    assert_eq!(
        decide(&obs, &p, &Memory::default()),
        Action::PromoteRecorded {
            pod: "db-0".to_owned()
        }
    );
    let two = probes([detached(100), primary(100), streaming(90)]);
    assert!(matches!(
        decide(&obs, &two, &Memory::default()),
        Action::Steady { blocked: Some(why), .. } if why.contains("db-1 accepts writes")
    ));
}

#[test]
fn a_switchover_is_a_planned_promotion_to_a_streaming_replica() {
    let mut obs = running(ReplicationMode::Async);
    obs.record.switchover_to = Some("db-2".to_owned());
    let p = probes([primary(100), streaming(100), streaming(100)]);
    let intent = intent_of(decide(&obs, &p, &Memory::default()));
    assert_eq!(
        (intent.to.as_str(), intent.planned, intent.lost_bytes),
        ("db-2", true, Some(0))
    );
    let lagging = probes([primary(100), streaming(100), detached(50)]);
    assert!(matches!(
        decide(&obs, &lagging, &Memory::default()),
        Action::Repoint { .. }
    ));
}

#[test]
fn a_disabled_failover_only_says_why() {
    let mut obs = observation(
        [
            PodState::NotRunning("pod phase Failed".to_owned()),
            PodState::Running,
            PodState::Running,
        ],
        ReplicationMode::Async,
    );
    obs.settings.enabled = false;
    let p = probes([down(), streaming(100), streaming(90)]);
    assert!(matches!(
        decide(&obs, &p, &Memory::default()),
        Action::Steady { blocked: Some(why), .. } if why.contains("disabled")
    ));
}

#[test]
fn a_fenced_primary_is_never_failed_over() {
    // Fenced: its pod was replaced, its postgres stays stopped.
    let mut obs = observation(
        [
            PodState::NotRunning("pod phase Pending".to_owned()),
            PodState::Running,
            PodState::Running,
        ],
        ReplicationMode::Async,
    );
    obs.record.fenced = vec!["db-0".to_owned()];
    let p = probes([down(), detached(100), detached(90)]);
    let memory = Memory {
        streak: decide::FailureStreak {
            failures: 10,
            no_answer: 10,
        },
        ..Memory::default()
    };
    assert!(matches!(
        decide(&obs, &p, &memory),
        Action::Steady { blocked: Some(why), .. } if why.contains("primary db-0 is fenced")
    ));
    // Unfenced, the same loss is failed over.
    obs.record.fenced.clear();
    assert!(!matches!(decide(&obs, &p, &memory), Action::Steady { .. }));
}

#[test]
fn an_unfenced_primary_has_time_to_start_before_it_is_lost() {
    let mut obs = observation(
        [
            PodState::NotRunning("pod phase Pending".to_owned()),
            PodState::Running,
            PodState::Running,
        ],
        ReplicationMode::Async,
    );
    let p = probes([down(), detached(100), detached(90)]);
    let start = Instant::now();
    let mut memory = Memory::default();
    obs.record.fenced = vec!["db-0".to_owned()];
    for i in 0..10 {
        memory.observe(
            &obs,
            &p,
            Duration::from_secs(1),
            start + Duration::from_secs(i),
        );
    }
    assert_eq!(
        memory.streak,
        decide::FailureStreak::default(),
        "no evidence while fenced"
    );
    obs.record.fenced.clear();
    let lifted = start + Duration::from_secs(10);
    for i in 0..10 {
        memory.observe(
            &obs,
            &p,
            Duration::from_secs(1),
            lifted + Duration::from_secs(i),
        );
    }
    let at = |t: Instant| {
        next(&View {
            obs: &obs,
            probes: &p,
            memory: &memory,
            now: t,
        })
    };
    assert!(matches!(
        at(lifted + Duration::from_secs(10)),
        Action::Steady { blocked: Some(why), .. } if why.contains("its fence was lifted 10s ago")
    ));
    assert!(
        !matches!(at(lifted + UNFENCE_GRACE), Action::Steady { .. }),
        "still down after the grace: failed over"
    );
}

#[test]
fn the_operators_own_network_trouble_never_detaches_anything() {
    // The operator reaches nobody: no evidence, no action.
    let obs = running(ReplicationMode::Async);
    let p = probes([down(), down(), down()]);
    let memory = Memory {
        streak: decide::FailureStreak {
            failures: 10,
            no_answer: 0,
        },
        ..Memory::default()
    };
    assert!(matches!(
        decide(&obs, &p, &memory),
        Action::Steady {
            blocked: Some(_),
            ..
        }
    ));
}

/// A standby at `lsn` streaming from db-1 (cascading, before its promotion).
fn streaming_from_db1(lsn: u64) -> Result<InstanceProbe, ProbeError> {
    let mut p = streaming(lsn)?;
    p.upstream = Some("db-1.db-headless:5432".to_owned());
    Ok(p)
}

#[test]
fn the_target_gets_its_quorum_before_it_is_promoted() {
    let mut obs = promoting(false);
    obs.settings = settings(ReplicationMode::Quorum);
    let memory = Memory {
        fenced_epoch: Some(4),
        fenced_at: Some(Instant::now()),
        ..Memory::default()
    };
    // db-2 already streams from db-1; db-1 has no synchronous standbys yet:
    // promoted so, it would acknowledge commits that no standby has.
    let p = probes([down(), detached(100), streaming_from_db1(90)]);
    assert_eq!(
        decide(&obs, &p, &memory),
        Action::Promote {
            pod: "db-1".to_owned(),
            synchronous_standby_names: r#"ANY 1 ("db-0", "db-2")"#.to_owned(),
            standbys: Vec::new(),
        }
    );
}

#[test]
fn the_old_primary_is_not_pointed_at_the_target_before_the_promotion() {
    let obs = promoting(true);
    let memory = Memory {
        fenced_epoch: Some(4),
        fenced_at: Some(Instant::now()),
        ..Memory::default()
    };
    // db-0 answers as a standby (restarted): it is fenced, and ordinal-init
    // points it at the new primary; only db-2 is readied.
    let p = probes([detached(100), detached(100), detached(100)]);
    assert_eq!(
        decide(&obs, &p, &memory),
        Action::Promote {
            pod: "db-1".to_owned(),
            synchronous_standby_names: String::new(),
            standbys: vec!["db-2".to_owned()],
        }
    );
}
