//! Failover on a real cluster, under write load: each way a primary is lost,
//! in async and in quorum mode. Every scenario holds the safety rules to the
//! letter while it runs:
//!
//! - every member is asked `pg_is_in_recovery()` every 100 ms and the test
//!   fails when two members answer "writable" to queries whose windows
//!   (sent to answered) overlap ([`Sampler`]);
//! - in quorum mode no acknowledged commit is lost; in async mode a
//!   planned loss loses none either, and what an unplanned one loses is
//!   counted and must agree with `lastFailover.lostBytes`;
//! - every standby follows the new primary within 30 s of the promotion;
//! - db-rw never routes to two pods.
//!
//! A killed postmaster is not failed over: the kubelet restarts its
//! container in place and it serves again, as the same primary with all of
//! its data, within the probes a failure is given (Patroni and
//! CloudNativePG do the same).
//!
//! The write outage (the disruption to the first write acknowledged by the
//! new primary) is printed; the failover benchmark measures it properly.
//! See `cluster.rs` for how the suite runs.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use ordinal_crds::{ReplicationMode, names};
use ordinal_e2e::cluster::{Harness, Loss, Sampler, Writer};

const CLUSTER: &str = "db";
/// How long a standby may take to follow a new primary.
const FOLLOW_WITHIN: Duration = Duration::from_secs(30);

/// A 3-instance cluster in `mode` (quorum: ANY 1), Ready, sampled, with
/// the writer's first 100 commits acknowledged.
struct Running {
    h: Harness,
    status: ordinal_crds::PostgresClusterStatus,
    old: String,
    members: Vec<String>,
    sampler: Sampler,
    writer: Writer,
}

async fn running(test: &str, mode: ReplicationMode) -> Running {
    let h = Harness::new(test).await;
    let mut spec = h.spec(3);
    spec.replication.mode = mode;
    if mode == ReplicationMode::Quorum {
        spec.replication.quorum = 1;
    }
    h.apply(CLUSTER, &spec).await;
    let status = h.wait_ready(CLUSTER, 3).await;
    let old = status.current_primary.clone().expect("a primary");
    if mode == ReplicationMode::Quorum {
        h.wait_quorum_active(CLUSTER, &old, 1).await;
    }
    let members: Vec<String> = (0..3).map(|o| names::pod(CLUSTER, o)).collect();
    let sampler = Sampler::start(&h, CLUSTER, &members).await;
    let writer = Writer::start(&h, CLUSTER).await;
    writer.wait_more_acks(&h, 100).await;
    Running {
        h,
        status,
        old,
        members,
        sampler,
        writer,
    }
}

async fn failover_case(test: &str, mode: ReplicationMode, how: Loss) {
    let Running {
        h,
        status,
        old,
        members,
        sampler,
        writer,
    } = running(test, mode).await;

    let t0 = Instant::now();
    eprintln!(
        "ordinal-e2e: {how:?} of {old} at {}",
        k8s_openapi::jiff::Timestamp::now()
    );
    h.lose(&old, how).await;
    let new = h
        .wait_until(
            &format!("a replica is published as primary in place of {old} ({how:?})"),
            async || {
                let s = h.try_status(CLUSTER).await?;
                match (&s.current_primary, &s.target_primary) {
                    (Some(p), None) if *p != old => Ok(p.clone()),
                    (p, t) => Err(format!("currentPrimary {p:?}, targetPrimary {t:?}")),
                }
            },
        )
        .await;
    let promoted_at = Instant::now();
    let (first_ack, by) = h
        .wait_until(
            &format!("writes are acknowledged through db-rw again after {how:?} of {old}"),
            async || {
                writer.first_ack_after(t0, &old).ok_or_else(|| {
                    format!(
                        "{} acknowledged so far, none after the disruption",
                        writer.acked()
                    )
                })
            },
        )
        .await;
    assert_eq!(by, new, "the first write after the failover went to {by}");
    println!(
        "ordinal-e2e: {mode:?} {how:?} of {old}: write outage {:.2}s (to the first write acknowledged by {new})",
        first_ack.duration_since(t0).as_secs_f64()
    );
    if how == Loss::Hang {
        // Whatever the operator did to it, a stopped process is released
        // so that a pod that was not deleted can be seen for what it is.
        let _ = h.signal_postgres(&old, Signal::SIGCONT).await;
    }

    // The standby that was not promoted follows within FOLLOW_WITHIN.
    for other in members.iter().filter(|m| **m != new && **m != old) {
        let following = tokio::time::timeout(
            FOLLOW_WITHIN.saturating_sub(promoted_at.elapsed()),
            h.wait_streaming_replica(CLUSTER, &new, other),
        )
        .await;
        assert!(
            following.is_ok(),
            "{other} does not stream from the new primary {new} within {FOLLOW_WITHIN:?} of the promotion"
        );
    }
    // The old primary comes back as a standby of the new one.
    h.wait_streaming_replica(CLUSTER, &new, &old).await;
    println!(
        "ordinal-e2e: {old} streams from {new} {:.1}s after the promotion",
        promoted_at.elapsed().as_secs_f64()
    );

    let after = h.wait_ready(CLUSTER, 3).await;
    assert_eq!(after.current_primary.as_deref(), Some(new.as_str()));
    let record = after.last_failover.clone().expect("status.lastFailover");
    assert_eq!(
        after.epoch,
        ordinal_e2e::cluster::epoch_after_one_failover(status.epoch, &record),
        "exactly one promotion: {record:?}"
    );
    assert_eq!(
        (record.from.as_str(), record.to.as_str()),
        (old.as_str(), new.as_str())
    );
    let p = &record.phases;
    println!(
        "ordinal-e2e: lastFailover {} → {} in {:.2}s (detect {:.2}, decide {:.2}, fence {:.2}, promote {:.2}, publish {:.2}; {}); old primary at {:?}, promoted at {:?}, lost bytes {:?}",
        record.from,
        record.to,
        record.duration_seconds,
        p.detect,
        p.decide,
        p.fence,
        p.promote,
        p.publish,
        record.reason,
        record.old_primary_lsn,
        record.promoted_lsn,
        record.lost_bytes
    );

    writer.wait_more_acks(&h, 50).await;
    let split_routes = writer.split_routes();
    let acks = writer.stop().await;
    let (_, missing) = h.missing_acked_rows(CLUSTER, &acks.ids).await;
    println!(
        "ordinal-e2e: {} writes acknowledged, {} missing after the failover",
        acks.ids.len(),
        missing.len()
    );
    let report = sampler.stop().await;
    report.assert_never_two_writable();
    assert!(
        split_routes.is_empty(),
        "db-rw routed to several pods: {split_routes:?}"
    );
    if mode == ReplicationMode::Quorum || how.planned() {
        assert!(
            missing.is_empty(),
            "{} acknowledged commits lost ({mode:?}, {how:?}): {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        assert_eq!(record.lost_bytes, Some(0), "{record:?}");
    } else if !missing.is_empty() {
        // Unplanned, async: lost WAL is reported as known (> 0) or unknown,
        // never as none.
        assert_ne!(
            record.lost_bytes,
            Some(0),
            "{} acknowledged commits are lost, but lastFailover says none",
            missing.len()
        );
    }
}

/// A killed postmaster: ordinal-init starts it again in place and it serves
/// again as the same primary, with every acknowledged commit (its own WAL),
/// no promotion, never beside another writable instance; the standbys
/// follow it again.
async fn restart_case(test: &str, mode: ReplicationMode) {
    let Running {
        h,
        status,
        old,
        members,
        sampler,
        writer,
    } = running(test, mode).await;
    let before = h
        .postgres_instance(&old)
        .await
        .expect("the postgres of the primary");
    assert!(before.1.is_some(), "{old}: no postmaster.pid: {before:?}");

    let t0 = Instant::now();
    eprintln!(
        "ordinal-e2e: Kill of {old} at {}",
        k8s_openapi::jiff::Timestamp::now()
    );
    h.lose(&old, Loss::Kill).await;
    h.wait_until(
        &format!("{old} restarts in place and acknowledges writes again"),
        async || {
            let now = h.postgres_instance(&old).await?;
            if now == before || now.1.is_none() {
                return Err(format!("postgres {now:?}, {before:?} before the kill"));
            }
            let gap = writer.longest_gap_since(t0).unwrap_or_default();
            let back = writer.acks_after_by(t0 + gap, &old);
            (back > 0 && gap >= Duration::from_millis(100))
                .then_some(())
                .ok_or(format!(
                    "postgres {now:?}, no write acknowledged by {old} since"
                ))
        },
    )
    .await;
    let restarted = h
        .postgres_instance(&old)
        .await
        .expect("the postgres of the primary");
    assert_eq!(
        restarted.0, before.0,
        "{old}: postgres was started again by the kubelet (a new container), not by ordinal-init in place"
    );
    let outage = writer.longest_gap_since(t0).unwrap_or_default();
    println!(
        "ordinal-e2e: {mode:?} Kill of {old}: restarted in place, write outage {:.2}s (the longest gap between acknowledged writes)",
        outage.as_secs_f64()
    );
    for other in members.iter().filter(|m| **m != old) {
        let following = tokio::time::timeout(
            FOLLOW_WITHIN,
            h.wait_streaming_replica(CLUSTER, &old, other),
        )
        .await;
        assert!(
            following.is_ok(),
            "{other} does not stream from {old} again within {FOLLOW_WITHIN:?}"
        );
    }
    let after = h.wait_ready(CLUSTER, 3).await;
    assert_eq!(after.current_primary.as_deref(), Some(old.as_str()));
    assert_eq!(after.epoch, status.epoch, "no promotion");
    assert_eq!(after.last_failover, status.last_failover, "no failover");

    writer.wait_more_acks(&h, 50).await;
    let split_routes = writer.split_routes();
    let acks = writer.stop().await;
    let (_, missing) = h.missing_acked_rows(CLUSTER, &acks.ids).await;
    println!(
        "ordinal-e2e: {} writes acknowledged, {} missing after the restart",
        acks.ids.len(),
        missing.len()
    );
    let report = sampler.stop().await;
    report.assert_never_two_writable();
    assert!(
        split_routes.is_empty(),
        "db-rw routed to several pods: {split_routes:?}"
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged commits lost by a restart in place ({mode:?}): {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_postmaster_restarts_in_place_async() {
    restart_case(
        "killed_postmaster_restarts_in_place_async",
        ReplicationMode::Async,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_postmaster_restarts_in_place_quorum() {
    restart_case(
        "killed_postmaster_restarts_in_place_quorum",
        ReplicationMode::Quorum,
    )
    .await;
}

macro_rules! failover_tests {
    ($($name:ident: $mode:ident, $how:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            failover_case(stringify!($name), ReplicationMode::$mode, Loss::$how).await;
        }
    )*};
}

failover_tests! {
    graceful_delete_of_the_primary_async: Async, Delete;
    graceful_delete_of_the_primary_quorum: Quorum, Delete;
    force_delete_of_the_primary_async: Async, ForceDelete;
    force_delete_of_the_primary_quorum: Quorum, ForceDelete;
    hung_postmaster_async: Async, Hang;
    hung_postmaster_quorum: Quorum, Hang;
}
