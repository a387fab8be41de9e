//! Scenario building blocks shared by the chaos tests and the failover
//! benchmark: a running failover loop, waits on conditions (never sleeps as
//! assertions), and the kill-the-primary round.

// A test harness: a failure here is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ordinal_operator::failover::{FailoverError, FailoverLoop, Step};
use tokio::sync::watch;

use crate::seam::LocalSeam;
use crate::workload::Acks;

pub async fn wait_for(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Running {
    pub seam: Arc<LocalSeam>,
    stop: watch::Sender<bool>,
    pub failover: tokio::task::JoinHandle<Result<(), FailoverError>>,
}

impl Running {
    pub fn start(seam: Arc<LocalSeam>, crash_after: Option<Step>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let mut l = FailoverLoop::new(Arc::clone(&seam), None);
        l.crash_after = crash_after;
        let failover = tokio::spawn(l.run(stopped));
        Self {
            seam,
            stop,
            failover,
        }
    }

    pub async fn halt(self) -> Arc<LocalSeam> {
        let _ = self.stop.send(true);
        let _ = self.failover.await;
        self.seam
    }
}

pub async fn create_table(seam: &LocalSeam) {
    seam.pod(&seam.current())
        .sql()
        .await
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .await
        .expect("create table");
}

/// Until the primary lists its synchronous standbys (quorum mode).
pub async fn wait_for_quorum_setting(seam: &LocalSeam) {
    wait_for(
        "the primary has synchronous standbys",
        Duration::from_secs(30),
        async || {
            let primary = seam.pod(&seam.current()).clone();
            let row = primary
                .sql()
                .await
                .query_one("SHOW synchronous_standby_names", &[])
                .await;
            row.map(|r| r.get::<_, String>(0).starts_with("ANY"))
                .unwrap_or(false)
        },
    )
    .await;
}

/// Until `pod` is a standby streaming from the primary.
pub async fn wait_streaming(seam: &LocalSeam, pod: &str) {
    let pod = pod.to_owned();
    wait_for(
        &format!("{pod} streams from the primary"),
        Duration::from_secs(90),
        async || {
            let primary = seam.pod(&seam.current()).clone();
            let Ok(rows) = tokio::time::timeout(Duration::from_secs(2), primary.sql()).await else {
                return false;
            };
            rows.query_opt(
            "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
            &[&pod],
        )
        .await
        .map(|r| r.is_some())
        .unwrap_or(false)
        },
    )
    .await;
}

/// Three pods (db-0 primary), table `t`, a failover loop running, and the
/// cluster ready to fail over: every replica streams and, in quorum mode,
/// the primary lists its synchronous standbys.
pub async fn ready_cluster(mode: ordinal_crds::ReplicationMode) -> (Arc<LocalSeam>, Running) {
    let seam = LocalSeam::bootstrap(&crate::init_bin(), 3, mode, 1);
    create_table(&seam).await;
    let running = Running::start(Arc::clone(&seam), None);
    if mode == ordinal_crds::ReplicationMode::Quorum {
        wait_for_quorum_setting(&seam).await;
    }
    for pod in ["db-1", "db-2"] {
        wait_streaming(&seam, pod).await;
    }
    (seam, running)
}

/// Kills the primary's postmaster (kill -9) and waits until a replica is
/// published, a write is acknowledged by it, and the old primary streams
/// again as a replica. Returns the seconds from the kill to that first
/// acknowledged write on the new primary.
pub async fn kill_primary_round(seam: &LocalSeam, acks: &Mutex<Acks>, round: usize) -> f64 {
    let old = seam.current();
    let epoch = seam.state.lock().unwrap().epoch;
    for pod in seam.pods.iter().filter(|p| p.name != old) {
        wait_streaming(seam, &pod.name).await;
    }
    let killed_at = Instant::now();
    seam.pod(&old).kill9();
    wait_for(
        &format!("round {round}: a replica replaces {old}"),
        Duration::from_secs(30),
        async || {
            let state = seam.state.lock().unwrap();
            state.current != old && state.target.is_none()
        },
    )
    .await;
    wait_for(
        &format!("round {round}: the new primary acknowledges a write"),
        Duration::from_secs(30),
        async || acks.lock().unwrap().first_after(killed_at, &old).is_some(),
    )
    .await;
    let first = acks
        .lock()
        .unwrap()
        .first_after(killed_at, &old)
        .expect("ack");
    assert_eq!(
        seam.state.lock().unwrap().epoch,
        epoch + 1,
        "exactly one promotion per kill"
    );
    wait_streaming(seam, &old).await;
    assert!(
        seam.pod(&old).in_recovery().await,
        "{old} came back as a replica"
    );
    first.duration_since(killed_at).as_secs_f64()
}

/// Acknowledged ids that the current primary does not hold.
pub async fn missing_rows(seam: &LocalSeam, acks: &Mutex<Acks>) -> Vec<i64> {
    let acked = acks.lock().unwrap().ids.clone();
    let present = seam.pod(&seam.current()).ids().await;
    acked
        .into_iter()
        .filter(|id| present.binary_search(id).is_err())
        .collect()
}
