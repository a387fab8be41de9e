//! Chaos against real PostgreSQL servers: the failover loop, driven through
//! the local seam, with a writer committing numbered rows and a sampler
//! checking that two instances never accept writes at once.

// Helpers outside #[test] functions panic on failure too: they are test code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ordinal_crds::ReplicationMode;
use ordinal_e2e::scenario::{
    Running, create_table, kill_primary_round, missing_rows, ready_cluster, wait_for,
    wait_streaming,
};
use ordinal_e2e::seam::LocalSeam;
use ordinal_e2e::workload::{Acks, sampler, writer};
use ordinal_operator::failover::Step;
use tokio::sync::watch;

/// One cluster at a time: the machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_the_primary_ten_times_in_quorum_mode() {
    let _serial = SERIAL.lock().await;
    ordinal_e2e::init_logs();
    let (seam, running) = ready_cluster(ReplicationMode::Quorum).await;

    let acks = Arc::new(Mutex::new(Acks::default()));
    let max_writable = Arc::new(Mutex::new((0, Vec::new())));
    let (stop, stopped) = watch::channel(false);
    let w = writer(Arc::clone(&seam), Arc::clone(&acks), stopped.clone());
    let s = sampler(Arc::clone(&seam), Arc::clone(&max_writable), stopped);
    wait_for("the writer commits", Duration::from_secs(30), async || {
        !acks.lock().unwrap().ids.is_empty()
    })
    .await;

    let mut seconds = Vec::new();
    for round in 1..=10 {
        seconds.push(kill_primary_round(&seam, &acks, round).await);
        let last = seam
            .state
            .lock()
            .unwrap()
            .last_failover
            .clone()
            .expect("lastFailover");
        assert_eq!(last.lost_bytes, Some(0), "quorum mode loses nothing");
    }
    let _ = stop.send(true);
    let _ = w.await;
    let _ = s.await;
    let seam = running.halt().await;

    let acked = acks.lock().unwrap().ids.clone();
    let missing = missing_rows(&seam, &acks).await;
    eprintln!(
        "10 failovers, kill → first acknowledged write: {seconds:.2?} s; {} rows acknowledged, {} missing",
        acked.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    let (max, who) = max_writable.lock().unwrap().clone();
    assert!(max <= 1, "two writable instances at once: {who:?}");
    assert_eq!(seam.state.lock().unwrap().promotions.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operators_own_network_trouble_never_fails_over() {
    let _serial = SERIAL.lock().await;
    ordinal_e2e::init_logs();
    let (seam, running) = ready_cluster(ReplicationMode::Async).await;
    // The operator can no longer reach the primary; the replicas still stream.
    seam.partition("db-0", true);
    wait_for(
        "the loop says why it waits",
        Duration::from_secs(30),
        async || {
            seam.state
                .lock()
                .unwrap()
                .blocked
                .as_deref()
                .is_some_and(|b| b.contains("still streams from it: no failover"))
        },
    )
    .await;
    // Well past failureThreshold (3) × checkInterval (1 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    {
        let state = seam.state.lock().unwrap();
        assert_eq!(state.current, "db-0");
        assert_eq!(state.epoch, 0);
        assert!(state.promotions.is_empty());
    }
    assert!(
        !seam.pod("db-0").in_recovery().await,
        "db-0 still the primary"
    );
    seam.partition("db-0", false);
    running.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_mode_waits_when_too_few_standbys_answer() {
    let _serial = SERIAL.lock().await;
    ordinal_e2e::init_logs();
    let (seam, running) = ready_cluster(ReplicationMode::Quorum).await;
    // db-2 is down and stays down; then the primary dies.
    seam.hold_down("db-2", true);
    seam.pod("db-2").stop();
    seam.hold_down("db-0", true);
    seam.pod("db-0").kill9();
    wait_for(
        "the loop says why it cannot promote",
        Duration::from_secs(30),
        async || {
            seam.state
                .lock()
                .unwrap()
                .blocked
                .as_deref()
                .is_some_and(|b| {
                    b.contains("only 1 of the synchronous standbys answer (db-1); 2 must")
                })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        seam.state.lock().unwrap().epoch,
        0,
        "no promotion without the quorum"
    );
    assert!(seam.pod("db-1").in_recovery().await);
    // db-2 returns (still following db-0's timeline): now two of two answer.
    seam.hold_down("db-2", false);
    wait_for(
        "db-1 or db-2 is promoted",
        Duration::from_secs(60),
        async || {
            let state = seam.state.lock().unwrap();
            state.current != "db-0" && state.target.is_none()
        },
    )
    .await;
    seam.hold_down("db-0", false);
    running.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loop_crashing_after_any_step_promotes_exactly_once() {
    let _serial = SERIAL.lock().await;
    ordinal_e2e::init_logs();
    let seam = LocalSeam::bootstrap(&ordinal_e2e::init_bin(), 3, ReplicationMode::Async, 1);
    create_table(&seam).await;
    for step in [Step::Intent, Step::Fence, Step::Promote, Step::Publish] {
        let old = seam.current();
        for pod in seam.pods.iter().filter(|p| p.name != old) {
            wait_streaming(&seam, &pod.name).await;
        }
        let epoch = seam.state.lock().unwrap().epoch;
        let promotions = seam.state.lock().unwrap().promotions.len();
        let crashing = Running::start(Arc::clone(&seam), Some(step));
        // The old primary stays down until the crashing loop has stopped:
        // restarted in place before the intent is recorded (the local
        // kubelet restarts it after 500 ms), it would rightly not be failed
        // over, and this test is about the crash after each step, not that
        // race (`cluster.rs` covers the restart in place).
        seam.hold_down(&old, true);
        seam.pod(&old).kill9();
        let result = tokio::time::timeout(Duration::from_secs(30), crashing.failover)
            .await
            .expect("the crashing loop ends");
        seam.hold_down(&old, false);
        assert!(
            matches!(result, Ok(Err(ordinal_operator::failover::FailoverError::Injected(s))) if s == step),
            "{step:?}: {result:?}"
        );
        // A new operator takes over and converges.
        let running = Running::start(Arc::clone(&seam), None);
        wait_for(
            &format!("after a crash at {step:?}, a new primary"),
            Duration::from_secs(30),
            async || {
                let state = seam.state.lock().unwrap();
                state.current != old && state.target.is_none()
            },
        )
        .await;
        let new = seam.current();
        {
            let state = seam.state.lock().unwrap();
            assert_eq!(
                state.epoch,
                epoch + 1,
                "{step:?}: exactly one promotion recorded"
            );
            assert_eq!(
                state.promotions.len(),
                promotions + 1,
                "{step:?}: published once"
            );
        }
        // The promoted instance switched timeline exactly once.
        let timeline: i64 = seam
            .pod(&new)
            .sql()
            .await
            .query_one(
                "SELECT timeline_id::bigint FROM pg_control_checkpoint()",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        assert!(timeline >= 1);
        assert!(!seam.pod(&new).in_recovery().await);
        wait_streaming(&seam, &old).await;
        running.halt().await;
    }
}

/// A writer committing through the routed primary, once it has committed
/// a few rows.
async fn start_writer(
    seam: &Arc<LocalSeam>,
) -> (
    Arc<Mutex<Acks>>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let acks = Arc::new(Mutex::new(Acks::default()));
    let (stop, stopped) = watch::channel(false);
    let w = writer(Arc::clone(seam), Arc::clone(&acks), stopped);
    wait_for("the writer commits", Duration::from_secs(30), async || {
        acks.lock().unwrap().ids.len() > 50
    })
    .await;
    (acks, stop, w)
}

/// Waits until db-2 is the published primary and acknowledges writes,
/// stops the writer, and returns the recorded failover.
async fn switched_over_to_db2(
    seam: &LocalSeam,
    acks: &Mutex<Acks>,
    stop: watch::Sender<bool>,
    w: tokio::task::JoinHandle<()>,
) -> ordinal_crds::FailoverRecord {
    wait_for("db-2 is the primary", Duration::from_secs(60), async || {
        let state = seam.state.lock().unwrap();
        state.current == "db-2" && state.target.is_none()
    })
    .await;
    let switched_at = Instant::now();
    wait_for("writes resume", Duration::from_secs(30), async || {
        acks.lock()
            .unwrap()
            .first_after(switched_at, "db-0")
            .is_some()
    })
    .await;
    let _ = stop.send(true);
    let _ = w.await;
    seam.state
        .lock()
        .unwrap()
        .last_failover
        .clone()
        .expect("lastFailover")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switchover_loses_nothing_and_the_old_primary_follows() {
    let _serial = SERIAL.lock().await;
    ordinal_e2e::init_logs();
    let (seam, running) = ready_cluster(ReplicationMode::Async).await;
    let (acks, stop, w) = start_writer(&seam).await;

    seam.request_switchover("db-2");
    let last = switched_over_to_db2(&seam, &acks, stop, w).await;
    assert_eq!((last.from.as_str(), last.to.as_str()), ("db-0", "db-2"));
    assert!(last.reason.contains("switchover"));
    let missing = missing_rows(&seam, &acks).await;
    assert!(
        missing.is_empty(),
        "a switchover lost acknowledged rows: {missing:?}"
    );
    // The old primary follows the new one.
    wait_streaming(&seam, "db-0").await;
    assert!(seam.pod("db-0").in_recovery().await);
    running.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switchover_interrupted_by_an_operator_crash_resumes_as_planned() {
    let _serial = SERIAL.lock().await;
    ordinal_e2e::init_logs();
    let (seam, running) = ready_cluster(ReplicationMode::Async).await;
    running.halt().await;
    let (acks, stop, w) = start_writer(&seam).await;

    // The operator records the switchover's intent, then dies.
    seam.request_switchover("db-2");
    let crashing = Running::start(Arc::clone(&seam), Some(Step::Intent));
    let result = tokio::time::timeout(Duration::from_secs(30), crashing.failover)
        .await
        .expect("the crashing loop ends");
    assert!(
        matches!(
            result,
            Ok(Err(ordinal_operator::failover::FailoverError::Injected(
                Step::Intent
            )))
        ),
        "{result:?}"
    );
    {
        let state = seam.state.lock().unwrap();
        assert_eq!(state.target.as_deref(), Some("db-2"));
        assert!(
            state.pending.as_ref().is_some_and(|p| p.planned),
            "the intent says planned"
        );
    }
    // A new operator resumes it the way it began: a clean shutdown of
    // db-0, its final WAL on db-2, then the promotion.
    let running = Running::start(Arc::clone(&seam), None);
    let last = switched_over_to_db2(&seam, &acks, stop, w).await;
    assert!(
        last.reason.contains("switchover") && last.reason.contains("resumed"),
        "{}",
        last.reason
    );
    assert_eq!(seam.state.lock().unwrap().epoch, 1, "one promotion");
    let missing = missing_rows(&seam, &acks).await;
    assert!(
        missing.is_empty(),
        "a resumed switchover lost acknowledged rows: {missing:?}"
    );
    wait_streaming(&seam, "db-0").await;
    running.halt().await;
}
