//! Failover benchmark: kills the primary's postmaster N times under a
//! continuous writer and prints the time from each kill to the first write
//! acknowledged by the new primary (p50 / p90 / max), and the acknowledged
//! rows lost. A benchmark that prints figures, not a timed test.
//!
//!   cargo build --release -p ordinal-init
//!   cargo bench -p ordinal-e2e --bench failover
//!
//! ORDINAL_BENCH_KILLS (default 10) and ORDINAL_BENCH_MODES (default
//! "quorum,async") tune it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ordinal_crds::ReplicationMode;
use ordinal_e2e::scenario::{kill_primary_round, missing_rows, ready_cluster, wait_for};
use ordinal_e2e::workload::{Acks, writer};
use tokio::sync::watch;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn run(mode: ReplicationMode, kills: usize) {
    let (seam, running) = ready_cluster(mode).await;
    let acks = Arc::new(Mutex::new(Acks::default()));
    let (stop, stopped) = watch::channel(false);
    let w = writer(Arc::clone(&seam), Arc::clone(&acks), stopped);
    wait_for("the writer commits", Duration::from_secs(30), async || {
        !acks.lock().unwrap().ids.is_empty()
    })
    .await;

    let mut to_write = Vec::new();
    let mut loop_seconds = Vec::new();
    for round in 1..=kills {
        to_write.push(kill_primary_round(&seam, &acks, round).await);
        let last = seam
            .state
            .lock()
            .unwrap()
            .last_failover
            .clone()
            .expect("lastFailover");
        loop_seconds.push(last.duration_seconds);
    }
    let _ = stop.send(true);
    let _ = w.await;
    let seam = running.halt().await;
    let missing = missing_rows(&seam, &acks).await;
    let acked = acks.lock().unwrap().ids.len();
    let lost_bound: i64 = seam
        .state
        .lock()
        .unwrap()
        .promotions
        .iter()
        .filter_map(|p| p.lost_bytes)
        .sum();

    to_write.sort_by(f64::total_cmp);
    loop_seconds.sort_by(f64::total_cmp);
    let mode = if mode == ReplicationMode::Quorum {
        "quorum (ANY 1)"
    } else {
        "async"
    };
    println!(
        "failover benchmark: {mode}, 3 instances, {kills} kills (kill -9 of the primary's postmaster), checkInterval 1 s"
    );
    println!(
        "  kill → first write acknowledged by the new primary: p50 {:.2} s, p90 {:.2} s, max {:.2} s",
        percentile(&to_write, 50.0),
        percentile(&to_write, 90.0),
        to_write[to_write.len() - 1]
    );
    println!(
        "  detection → new primary published (lastFailover.durationSeconds): p50 {:.3} s, max {:.3} s",
        percentile(&loop_seconds, 50.0),
        loop_seconds[loop_seconds.len() - 1]
    );
    println!(
        "  rows: {acked} acknowledged, {} lost; lastFailover.lostBytes summed: {lost_bound} bytes (0 by guarantee in quorum mode; in async mode only what the operator saw, a lower bound)",
        missing.len()
    );
}

fn main() {
    let kills: usize = std::env::var("ORDINAL_BENCH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(10);
    let modes = std::env::var("ORDINAL_BENCH_MODES").unwrap_or_else(|_| "quorum,async".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    for mode in modes.split(',') {
        let mode = match mode.trim() {
            "quorum" => ReplicationMode::Quorum,
            "async" => ReplicationMode::Async,
            other => panic!("unknown mode {other:?}: quorum or async"),
        };
        runtime.block_on(run(mode, kills));
    }
}
