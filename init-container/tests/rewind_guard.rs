//! After a failover the old primary must come back as a replica: pg_rewind
//! when it diverged, a fresh clone (the old data kept aside) when rewind is
//! impossible, and never a writable start unless it is currentPrimary.

// Helpers outside #[test] functions panic on failure too: they are test code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use ordinal_e2e::local as common;

use std::time::Duration;

use common::{Cluster, Pod, stderr};

async fn write_rows(pod: &Pod, from: i64, to: i64) {
    pod.sql()
        .await
        .execute(
            "INSERT INTO t SELECT generate_series($1::bigint, $2::bigint)",
            &[&from, &to],
        )
        .await
        .expect("insert");
}

/// db-0 primary with rows 1..=10, db-1 streaming from it.
async fn primary_and_replica(cluster: &Cluster) -> (Pod, Pod) {
    let db0 = cluster.bootstrapped_primary(10).await;
    let db1 = cluster.pod(1);
    assert!(db1.init().status.success());
    db1.start().expect("db-1 starts");
    let expected: Vec<i64> = (1..=10).collect();
    for _ in 0..100 {
        if db1.ids().await == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(db1.ids().await, expected);
    (db0, db1)
}

async fn promote(pod: &Pod) {
    let promoted: bool = pod
        .sql()
        .await
        .query_one("SELECT pg_promote(true, 60)", &[])
        .await
        .expect("pg_promote")
        .get(0);
    assert!(promoted);
}

async fn streaming_to(primary: &Pod, replica: &str) -> bool {
    primary
        .sql()
        .await
        .query_opt(
            "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
            &[&replica],
        )
        .await
        .expect("pg_stat_replication")
        .is_some()
}

async fn wait_streaming(primary: &Pod, replica: &str) {
    for _ in 0..300 {
        if streaming_to(primary, replica).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{replica} never streamed from {}", primary.name);
}

/// db-0 and db-1 after a failover that db-0 diverged from: db-1 promoted
/// with rows 11..=20, db-0 started writable behind everyone's back with
/// rows 1000..=1010 and stopped again; db-1 running and recorded primary.
async fn diverged(cluster: &Cluster) -> (Pod, Pod) {
    let (db0, db1) = primary_and_replica(cluster).await;
    db0.stop();
    promote(&db1).await;
    write_rows(&db1, 11, 20).await;
    db0.start_unguarded();
    assert!(!db0.in_recovery().await);
    write_rows(&db0, 1000, 1010).await;
    db0.stop();
    cluster.set_state("db-1", true, 1);
    (db0, db1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_old_primary_is_rewound() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    // Failover: db-0 stops, db-1 is promoted and takes writes; db-0
    // comes back writable behind everyone's back and diverges.
    let (db0, db1) = diverged(&cluster).await;

    let out = db0.init();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("db-0: not currentPrimary (db-1), PGDATA primary on timeline 1")
            && log.contains("→ pg_rewind"),
        "{log}"
    );
    assert!(
        log.contains("rewound: now a standby of the primary"),
        "{log}"
    );
    assert!(
        !db0.data_mount
            .read_dir()
            .expect("mount")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("aside"))
    );

    db0.start().expect("db-0 starts as a replica");
    assert!(db0.in_recovery().await, "db-0 is a standby now");
    wait_streaming(&db1, "db-0").await;
    let expected: Vec<i64> = (1..=20).collect();
    for _ in 0..100 {
        if db0.ids().await == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        db0.ids().await,
        expected,
        "diverged rows gone, new rows arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_of_another_system_is_kept_aside_and_cloned_afresh() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let (db0, db1) = primary_and_replica(&cluster).await;
    db1.stop();
    db0.stop();
    // The new primary is a different database system altogether (its own
    // initdb): pg_rewind cannot work across systems.
    let db2 = cluster.pod(2);
    cluster.set_state("db-2", false, 1);
    assert!(db2.init().status.success());
    db2.start().expect("db-2 starts");
    db2.sql()
        .await
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .await
        .expect("create");
    write_rows(&db2, 500, 505).await;
    cluster.set_state("db-2", true, 1);

    let out = db0.init();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("PGDATA belongs to another database system")
            && log.contains("move it aside, pg_basebackup"),
        "{log}"
    );
    let aside: Vec<_> = db0
        .data_mount
        .read_dir()
        .expect("mount")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pgdata.aside-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old PGDATA is moved aside");
    assert!(
        aside[0].path().join("PG_VERSION").exists(),
        "and kept whole"
    );
    assert!(aside[0].path().join("global/pg_control").exists());

    db0.start().expect("db-0 starts from the fresh clone");
    assert!(db0.in_recovery().await);
    assert_eq!(db0.ids().await, (500..=505).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_restarts_as_a_replica_through_the_guard() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let (db0, db1) = primary_and_replica(&cluster).await;
    // kill -9: the container restarts, init containers do not run again.
    db0.kill9();
    promote(&db1).await;
    write_rows(&db1, 11, 15).await;
    cluster.set_state("db-1", true, 1);

    db0.start().expect("the guard rewinds and starts db-0");
    assert!(
        db0.in_recovery().await,
        "never writable: db-1 is currentPrimary"
    );
    wait_streaming(&db1, "db-0").await;
    let expected: Vec<i64> = (1..=15).collect();
    for _ in 0..100 {
        if db0.ids().await == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(db0.ids().await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_primary_never_starts_writable_when_the_primary_is_unreachable() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let (db0, db1) = primary_and_replica(&cluster).await;
    db0.stop();
    db1.stop();
    // The operator named db-1 but it is down: db-0 may not start at all.
    cluster.set_state("db-1", true, 1);
    db0.env("ORDINAL_STATE_TIMEOUT_SECONDS", "2");
    db0.env("ORDINAL_PRIMARY_WAIT_SECONDS", "2");
    let err = db0.start().expect_err("the guard refuses");
    assert!(err.contains("cannot connect to 127.0.0.1"), "{err}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", db0.port)).is_err(),
        "nothing listens"
    );
    // Its data is untouched: still a primary's, on timeline 1.
    assert!(!db0.pgdata.join("standby.signal").exists());
    assert!(db0.pgdata.join("PG_VERSION").exists());
    assert!(!db0.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_named_primary_with_standby_data_waits_for_promotion() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let (db0, db1) = primary_and_replica(&cluster).await;
    db0.stop();
    db1.stop();
    // The operator recorded db-1 as the target but has not promoted it yet.
    cluster.set_state("db-1", true, 1);
    db1.start().expect("db-1 starts");
    assert!(db1.in_recovery().await, "only the operator promotes");
    assert!(
        !db1.probe("ready"),
        "a standby with no primary to stream from is not ready"
    );
    assert!(db1.probe("live"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarting_during_its_replacement_does_not_start() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let (db0, _db1) = primary_and_replica(&cluster).await;
    db0.kill9();
    // The operator recorded its intent to promote db-1 and has not
    // published yet: db-0 is still currentPrimary, but must stay down.
    cluster.set_state_with_target("db-0", Some("db-1"), true, 1);
    db0.env("ORDINAL_STATE_TIMEOUT_SECONDS", "2");
    let err = db0.start().expect_err("the guard refuses");
    assert!(err.contains("the operator is promoting db-1"), "{err}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", db0.port)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_pg_rewind_fails_the_old_data_is_kept_aside_and_cloned_afresh() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let (db0, _db1) = diverged(&cluster).await;
    // The old primary's WAL since the fork is gone (recycled, or a disk
    // mishap): pg_rewind cannot find where the histories diverged.
    for entry in db0
        .pgdata
        .join("pg_wal")
        .read_dir()
        .expect("pg_wal")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            std::fs::remove_file(entry.path()).expect("remove WAL segment");
        }
    }

    let out = db0.init();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("pg_rewind failed: setting PGDATA aside and cloning afresh"),
        "{log}"
    );
    let aside: Vec<_> = db0
        .data_mount
        .read_dir()
        .expect("mount")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pgdata.aside-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old PGDATA is moved aside, not deleted");
    assert!(aside[0].path().join("global/pg_control").exists());
    db0.start().expect("db-0 starts from the fresh clone");
    assert!(db0.in_recovery().await);
    assert_eq!(db0.ids().await, (1..=20).collect::<Vec<i64>>());
}
