//! A new cluster: the primary bootstraps, two replicas clone and stream;
//! an interrupted clone is never taken for a valid PGDATA; a bootstrapped
//! cluster whose primary lost its data refuses to start; no state, no start.

// Helpers outside #[test] functions panic on failure too: they are test code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use ordinal_e2e::local as common;

use std::time::Duration;

use common::{Cluster, stderr, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_a_primary_and_stream_to_two_replicas() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let db0 = cluster.pod(0);
    let db1 = cluster.pod(1);
    let db2 = cluster.pod(2);
    cluster.set_state("db-0", false, 0);

    let out = db0.init();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("db-0: currentPrimary, PGDATA empty → initdb a new cluster"));
    db0.start().expect("db-0 starts");
    assert!(!db0.in_recovery().await, "db-0 is the writable primary");
    let primary = db0.sql().await;
    let checksums: String = primary
        .query_one("SHOW data_checksums", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(checksums, "on");
    primary
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
        )
        .await
        .expect("write");
    cluster.set_state("db-0", true, 0);

    for replica in [&db1, &db2] {
        let out = replica.init();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(
                "not currentPrimary (db-0), PGDATA empty → pg_basebackup from the primary"
            )
        );
        assert!(replica.pgdata.join("standby.signal").exists());
        assert!(
            !replica.data_mount.join("pgdata.clone").exists(),
            "staging renamed away"
        );
        replica.start().expect("replica starts");
        assert!(replica.in_recovery().await, "{} is a standby", replica.name);
    }

    // The primary streams to both, through their slots, by application_name.
    wait_until("both replicas stream", Duration::from_secs(30), || {
        futures_lite(async {
            let rows = primary
                .query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1", &[])
                .await
                .expect("pg_stat_replication");
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                == ["db-1", "db-2"]
        })
    });
    let slots: Vec<(String, bool)> = primary
        .query(
            "SELECT slot_name, active FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
        .expect("slots")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        slots,
        [("db_1".to_owned(), true), ("db_2".to_owned(), true)]
    );

    // Rows written on the primary appear on the replicas.
    primary
        .batch_execute("INSERT INTO t SELECT generate_series(101, 250)")
        .await
        .expect("write");
    for replica in [&db1, &db2] {
        let expected: Vec<i64> = (1..=250).collect();
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen = replica.ids().await;
            if seen == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, expected, "{} has every row", replica.name);
    }

    // Probes: the primary and streaming replicas are ready and live.
    for pod in [&db0, &db1, &db2] {
        assert!(pod.probe("ready"), "{} ready", pod.name);
        assert!(pod.probe("live"), "{} live", pod.name);
    }

    // A restart of every container re-runs the guard: same roles.
    for pod in [&db1, &db0] {
        pod.stop();
        pod.start().expect("restart");
    }
    assert!(!db0.in_recovery().await);
    assert!(db1.in_recovery().await);
}

/// Blocks on a future from inside the multi-threaded test runtime.
fn futures_lite<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_clone_is_never_accepted() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let db0 = cluster.bootstrapped_primary(10).await;
    let db1 = cluster.pod(1);

    // A clone killed midway: pg_basebackup had written part of the files
    // into the staging directory when the pod died.
    let staging = db1.data_mount.join("pgdata.clone");
    let out = db1
        .tool("pg_basebackup")
        .args([
            "-D",
            staging.to_str().expect("path"),
            "-h",
            "127.0.0.1",
            "-p",
            &db0.port.to_string(),
            "-U",
            "postgres",
            "-X",
            "none",
            "-c",
            "fast",
        ])
        .env("PGPASSWORD", common::SUPERUSER_PASSWORD)
        .output()
        .expect("pg_basebackup");
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_file(staging.join("global/pg_control")).expect("truncate the copy");
    assert!(!db1.pgdata.exists());

    let out = db1.init();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("removed an unfinished staging directory"));
    assert!(!staging.exists());
    db1.start().expect("db-1 starts from a complete clone");
    assert!(db1.in_recovery().await);
    assert_eq!(db1.ids().await, (1..=10).collect::<Vec<i64>>());

    // A second init of a valid replica changes nothing but its settings.
    db1.stop();
    let out = db1.init();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("→ follow the primary as a standby"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_init_comes_back_right() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let _db0 = cluster.bootstrapped_primary(200_000).await;
    let db1 = cluster.pod(1);

    // Kill ordinal-init (and its pg_basebackup) as soon as the clone begins.
    let staging = db1.data_mount.join("pgdata.clone");
    let mut init = db1.spawn_init();
    let mut interrupted = false;
    for _ in 0..5000 {
        if staging.exists() {
            let group = nix::unistd::Pid::from_raw(init.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            interrupted = true;
            break;
        }
        if init.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = init.wait();
    assert!(
        !db1.pgdata.exists(),
        "a killed clone never leaves a PGDATA behind"
    );
    eprintln!("clone interrupted midway: {interrupted}");

    let out = db1.init();
    assert!(out.status.success(), "{}", stderr(&out));
    if interrupted {
        assert!(
            stderr(&out).contains("removed an unfinished staging directory"),
            "{}",
            stderr(&out)
        );
    }
    db1.start().expect("db-1 starts");
    assert_eq!(db1.ids().await.len(), 200000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrapped_cluster_never_initdbs_over_a_lost_primary() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let db0 = cluster.pod(0);
    cluster.set_state("db-0", true, 3);
    let out = db0.init();
    assert!(!out.status.success());
    let log = stderr(&out);
    assert!(
        log.contains("the primary's data is gone. Refusing to initdb over a live cluster"),
        "{log}"
    );
    assert!(!db0.pgdata.exists(), "nothing created");
    assert!(!db0.data_mount.join("pgdata.initdb").exists());
    // The guard refuses too: postgres never starts.
    let err = db0.start().expect_err("run refuses");
    assert!(err.contains("Refusing to initdb"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_state_means_no_start() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let db0 = cluster.pod(0);
    db0.env("ORDINAL_STATE_TIMEOUT_SECONDS", "2");
    // No state file at all.
    let out = db0.init();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("gave up reading the cluster state"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("cannot read the state file"),
        "{}",
        stderr(&out)
    );
    assert!(!db0.pgdata.exists());
    // A state without a primary (the operator has not chosen one).
    std::fs::write(&cluster.state_file, r#"{"bootstrapped": false}"#).expect("write");
    let out = db0.init();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has no status.currentPrimary yet"),
        "{}",
        stderr(&out)
    );
    // Garbage.
    std::fs::write(&cluster.state_file, "not json").expect("write");
    let err = db0.start().expect_err("run does not start");
    assert!(err.contains("is not valid"), "{err}");
    assert!(!db0.pgdata.exists());
}
