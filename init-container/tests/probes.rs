//! Readiness and liveness on real servers: a primary, a streaming replica,
//! a lagging replica and a stopped server.

// Helpers outside #[test] functions panic on failure too: they are test code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use ordinal_e2e::local as common;

use std::time::Duration;

use common::{Cluster, wait_until};

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_semantics() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let db0 = cluster.pod(0);
    let db1 = cluster.pod(1);
    db1.env("ORDINAL_MAX_READY_LAG_BYTES", "1048576");
    cluster.set_state("db-0", false, 0);
    assert!(db0.init().status.success());

    // Stopped server: neither live nor ready.
    let out = db0.probe_output("live");
    assert!(!out.status.success());
    assert!(!db0.probe("ready"));

    db0.start().expect("db-0 starts");
    let out = db0.probe_output("ready");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "primary accepts connections");
    assert!(db0.probe("live"));
    db0.sql()
        .await
        .batch_execute("CREATE TABLE t (id bigint, pad text)")
        .await
        .expect("create");
    cluster.set_state("db-0", true, 0);

    assert!(db1.init().status.success());
    db1.start().expect("db-1 starts");
    wait_until("db-1 streams and is ready", Duration::from_secs(30), || {
        db1.probe("ready")
    });
    assert!(text(&db1.probe_output("ready")).starts_with("replica streams"));

    // Lagging: replay paused while the primary writes 16 MiB.
    db1.sql()
        .await
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause");
    db0.sql()
        .await
        .batch_execute("INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 16000) g")
        .await
        .expect("write");
    wait_until(
        "db-1 lags and is not ready",
        Duration::from_secs(30),
        || !db1.probe("ready"),
    );
    let out = db1.probe_output("ready");
    assert!(
        text(&out).contains("lags") && text(&out).contains("maxReadyLagBytes 1048576"),
        "{}",
        text(&out)
    );
    assert!(db1.probe("live"), "lag never fails liveness");

    db1.sql()
        .await
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume");
    wait_until("db-1 caught up and ready", Duration::from_secs(30), || {
        db1.probe("ready")
    });

    // The primary goes away: the replica stops streaming, is not ready, is live.
    db0.stop();
    wait_until(
        "db-1 not ready without a primary",
        Duration::from_secs(30),
        || !db1.probe("ready"),
    );
    assert!(text(&db1.probe_output("ready")).contains("not streaming"));
    assert!(db1.probe("live"));

    // The preStop hook: a fast shutdown, the server process exits.
    let out = db1.stop_hook();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("db-1's server exits", Duration::from_secs(30), || {
        !db1.server_alive()
    });
    assert!(!db1.probe("live"));
    assert!(!db1.probe("ready"));
}
