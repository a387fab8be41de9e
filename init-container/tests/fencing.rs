//! The pod's own guards against two writable instances and bad data, on
//! real servers: a primary that is deposed or isolated stops itself (the
//! liveness check, by hand and on `ordinal-init run`'s own clock, with the
//! kubelet's probes answered over HTTP), two guards never run postgres on one PGDATA (the data
//! volume's lock), and an interrupted pg_rewind is never taken for a valid
//! data directory.

// Helpers outside #[test] functions panic on failure too: they are test code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use ordinal_e2e::local as common;

use std::time::{Duration, Instant};

use common::{Cluster, stderr, wait_until};

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_or_isolated_primary_stops_accepting_writes() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let db0 = cluster.bootstrapped_primary(10).await;
    db0.env("ORDINAL_ISOLATION_SECONDS", "2");

    // No standby to keep (no slot): nothing to check, whatever the status.
    cluster.set_state("db-1", true, 1);
    let out = db0.probe_output("live");
    assert!(out.status.success(), "{}", text(&out));
    cluster.set_state("db-0", true, 0);

    // A standby's slot: the primary has standbys to keep, none streams.
    db0.sql()
        .await
        .batch_execute("SELECT pg_create_physical_replication_slot('db_1')")
        .await
        .expect("slot");
    let out = db0.probe_output("live");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the status confirms the role"),
        "{}",
        text(&out)
    );

    // Deposed: the status names another primary.
    cluster.set_state("db-1", true, 1);
    let out = db0.probe_output("live");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("fenced: the status names db-1 as the primary"),
        "{}",
        text(&out)
    );
    wait_until("the deposed primary exits", Duration::from_secs(10), || {
        !db0.server_alive()
    });

    // A promotion under way to another pod: the same.
    cluster.set_state("db-0", true, 1);
    db0.start().expect("db-0 starts again as the primary");
    drop(db0.sql().await); // past crash recovery
    cluster.set_state_with_target("db-0", Some("db-1"), true, 2);
    let out = db0.probe_output("live");
    assert!(
        text(&out).contains("fenced: the operator is promoting db-1"),
        "{}",
        text(&out)
    );
    wait_until("the old primary exits", Duration::from_secs(10), || {
        !db0.server_alive()
    });

    // Isolated: the state cannot be read, no standby streams. Live until
    // isolationSeconds have passed, then stopped.
    cluster.set_state("db-0", true, 2);
    db0.start().expect("db-0 starts again as the primary");
    drop(db0.sql().await); // past crash recovery
    std::fs::write(&cluster.state_file, "not json").expect("break the state");
    let started = Instant::now();
    let out = db0.probe_output("live");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("primary isolated for"),
        "{}",
        text(&out)
    );
    assert!(db0.server_alive());
    wait_until(
        "the isolated primary fences itself",
        Duration::from_secs(20),
        || {
            let out = db0.probe_output("live");
            !out.status.success() && text(&out).contains("fenced: isolated for")
        },
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before isolationSeconds"
    );
    wait_until(
        "the isolated primary exits",
        Duration::from_secs(10),
        || !db0.server_alive(),
    );
    assert!(
        refuses_connections(db0.port).await,
        "writes are refused from then on"
    );
}

/// Whether the local server on `port` refuses connections (a fenced one).
async fn refuses_connections(port: u16) -> bool {
    tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres connect_timeout=2"),
        tokio_postgres::NoTls,
    )
    .await
    .is_err()
}

/// A GET of `path` on the local `port`, as the kubelet's probe: the status
/// code and the body; None when nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(6))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Some((status, body.trim().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_answers_the_probes_and_fences_on_its_own_clock() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let db0 = cluster.bootstrapped_primary(10).await;
    db0.stop();
    wait_until("db-0 stops", Duration::from_secs(30), || {
        !db0.server_alive()
    });
    let port = common::free_port();
    db0.env("ORDINAL_HEALTH_ADDRESS", &format!("127.0.0.1:{port}"));
    db0.env("ORDINAL_ISOLATION_SECONDS", "2");
    db0.start().expect("db-0 starts with its probes served");

    wait_until("/livez answers", Duration::from_secs(10), || {
        get(port, "/livez").is_some_and(|(status, _)| status == 200)
    });
    assert_eq!(
        get(port, "/readyz"),
        Some((200, "primary accepts connections".to_owned()))
    );
    assert_eq!(get(port, "/nothing").map(|(status, _)| status), Some(404));

    // A standby's slot, none streaming: the check reads the status, which
    // confirms the role.
    db0.sql()
        .await
        .batch_execute("SELECT pg_create_physical_replication_slot('db_1')")
        .await
        .expect("slot");
    wait_until(
        "the status confirms the role",
        Duration::from_secs(10),
        || {
            get(port, "/livez").is_some_and(|(status, body)| {
                status == 200 && body.contains("the status confirms the role")
            })
        },
    );

    // Deposed: nobody probes, and still the primary stops by itself within
    // a check or two, and its container ends.
    let deposed = Instant::now();
    cluster.set_state("db-1", true, 1);
    wait_until(
        "the deposed primary stops by itself",
        Duration::from_secs(10),
        || !db0.server_alive(),
    );
    eprintln!("deposed primary stopped after {:?}", deposed.elapsed());
    assert!(get(port, "/livez").is_none(), "its probes end with it");

    // Isolated: the state cannot be read. Live (and saying so) until
    // isolationSeconds have passed, then stopped, unasked.
    cluster.set_state("db-0", true, 1);
    db0.start().expect("db-0 starts again as the primary");
    drop(db0.sql().await); // past crash recovery
    wait_until("/livez answers again", Duration::from_secs(10), || {
        get(port, "/livez").is_some_and(|(status, _)| status == 200)
    });
    std::fs::write(&cluster.state_file, "not json").expect("break the state");
    let isolated = Instant::now();
    let mut said_isolated = false;
    wait_until(
        "the isolated primary stops by itself",
        Duration::from_secs(20),
        || {
            if let Some((200, body)) = get(port, "/livez") {
                said_isolated |= body.contains("primary isolated for");
            }
            !db0.server_alive()
        },
    );
    assert!(
        said_isolated,
        "/livez said it was isolated before it stopped"
    );
    assert!(
        isolated.elapsed() >= Duration::from_secs(2),
        "not before isolationSeconds"
    );
    assert!(
        refuses_connections(db0.port).await,
        "writes are refused from then on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guards_never_run_postgres_on_one_data_directory() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let db0 = cluster.bootstrapped_primary(10).await;
    // The replacement of a force-deleted pod, while the old one still runs:
    // it waits for the data volume's lock. Without the lock its guard would
    // exec postgres at once, which exits on the postmaster.pid it finds.
    let mut second = db0.spawn_run();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        second.try_wait().expect("wait").is_none(),
        "the second guard must wait while the first postgres runs"
    );
    assert!(db0.server_alive());
    // The old container stops: the second takes over the same data.
    db0.stop();
    wait_until(
        "the second guard's postgres answers",
        Duration::from_secs(30),
        || db0.probe("live"),
    );
    assert!(second.try_wait().expect("wait").is_none());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if second.try_wait().expect("wait").is_none() {
        let _ = second.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rewind_is_set_aside_and_cloned_afresh() {
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let _db0 = cluster.bootstrapped_primary(100).await;
    let db1 = cluster.pod(1);
    let out = db1.init();
    assert!(out.status.success(), "db-1 clones: {}", stderr(&out));
    // pg_rewind was running when the container was killed.
    std::fs::write(db1.data_mount.join(".ordinal-rewinding"), b"").expect("marker");
    let out = db1.init();
    assert!(out.status.success(), "db-1 init: {}", stderr(&out));
    assert!(
        stderr(&out).contains("pg_rewind was interrupted"),
        "{}",
        stderr(&out)
    );
    let aside = std::fs::read_dir(&db1.data_mount)
        .expect("data mount")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pgdata.aside-"))
        .count();
    assert_eq!(aside, 1, "the old PGDATA is kept aside");
    assert!(!db1.data_mount.join(".ordinal-rewinding").exists());
    db1.start().expect("db-1 starts from the fresh clone");
    wait_until("db-1 streams", Duration::from_secs(30), || {
        db1.probe("ready")
    });
    assert_eq!(db1.ids().await.len(), 100);
}
