//! WAL archiving to a real S3-compatible server (MinIO, built from its Go
//! module) by PostgreSQL's own archiver, through `ordinal-init wal-push`,
//! and point-in-time recovery from it through `ordinal-init wal-fetch`:
//! a base backup restored to a moment between two known commits has the
//! first and not the second.

// Helpers outside #[test] functions panic on failure too: they are test code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ordinal_e2e::local::{Cluster, Pod, stderr};
use ordinal_e2e::minio::Minio;

fn backup_env(pod: &Pod, minio: &Minio, prefix: &str, creds: &std::path::Path) {
    let options: Vec<String> = minio
        .options()
        .into_iter()
        .filter(|(k, _)| !k.contains("access_key") && !k.contains("secret"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pod.env("ORDINAL_BACKUP_URL", &minio.url(prefix));
    pod.env("ORDINAL_BACKUP_OPTIONS", &options.join(","));
    pod.env(
        "ORDINAL_BACKUP_CREDENTIALS_DIR",
        &creds.display().to_string(),
    );
}

/// The credentials as a mounted Secret holds them: a file per key.
fn credentials(minio: &Minio, dir: &std::path::Path) -> std::path::PathBuf {
    let creds = dir.join("backup-credentials");
    std::fs::create_dir_all(&creds).unwrap();
    for (k, v) in minio.options() {
        if k.contains("access_key") || k.contains("secret") {
            std::fs::write(creds.join(k), format!("{v}\n")).unwrap();
        }
    }
    ordinal_e2e::local::chown_tree_to_postgres(&creds);
    creds
}

fn append_conf(pod: &Pod, lines: &str) {
    use std::io::Write;
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(pod.config_dir.join("postgresql.conf"))
        .expect("postgresql.conf");
    writeln!(conf, "{lines}").unwrap();
}

async fn archived(pod: &Pod) -> (i64, i64, Option<String>) {
    let row = pod
        .sql()
        .await
        .query_one(
            "SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_archives_to_minio_and_recovers_to_a_point_in_time() {
    let minio = Minio::start();
    let init = env!("CARGO_BIN_EXE_ordinal-init");
    let cluster = Cluster::new(init);
    let db0 = cluster.pod(0);
    let creds = credentials(&minio, &db0.data_mount);
    backup_env(&db0, &minio, "cluster-a", &creds);
    cluster.set_state("db-0", false, 0);
    let out = db0.init();
    assert!(out.status.success(), "init: {}", stderr(&out));
    append_conf(
        &db0,
        &format!(
            "archive_mode = on\narchive_command = '{init} wal-push %p %f'\narchive_timeout = 60"
        ),
    );
    db0.start().expect("db-0 starts");
    cluster.set_state("db-0", true, 0);

    // A base backup, without WAL: recovery must fetch every record from
    // the archive.
    let base = db0.data_mount.join("base");
    let out = db0
        .tool("pg_basebackup")
        .args([
            "-D",
            &base.display().to_string(),
            "-X",
            "none",
            "-c",
            "fast",
        ])
        .args(["-h", "127.0.0.1", "-U", "postgres"])
        .env("PGPASSWORD", ordinal_e2e::local::SUPERUSER_PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_basebackup: {}", stderr(&out));

    let sql = db0.sql().await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT now())")
        .await
        .unwrap();
    sql.batch_execute("INSERT INTO t (id) SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    // The moment between the two commits, by the server's clock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let between: String = sql
        .query_one("SELECT now()::text", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sql.batch_execute("INSERT INTO t (id) SELECT generate_series(1001, 2000)")
        .await
        .unwrap();
    let last: String = sql
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let done = archived(&db0).await;
        if done.2.as_deref() >= Some(last.as_str()) {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "{last} not archived within 60 s: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done.1, 0, "archive failures: {done:?}");
    assert!(done.0 >= 2, "{done:?}");

    // Pushing the same segment again (PostgreSQL retries after a failure
    // it saw) succeeds; other content under its name is refused.
    let copy = db0.data_mount.join(&last);
    let bytes: Vec<u8> = sql
        .query_one("SELECT pg_read_binary_file('pg_wal/' || $1)", &[&last])
        .await
        .unwrap()
        .get(0);
    std::fs::write(&copy, &bytes).unwrap();
    ordinal_e2e::local::chown_to_postgres(&copy);
    let push = |path: &std::path::Path| {
        db0.init_command()
            .args(["wal-push", &path.display().to_string(), &last])
            .output()
            .unwrap()
    };
    let again = push(&copy);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("archived before"),
        "{}",
        stderr(&again)
    );
    let mut other = bytes.clone();
    other[4096] ^= 0xff;
    std::fs::write(&copy, &other).unwrap();
    let refused = push(&copy);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("exists already with other content"),
        "{}",
        stderr(&refused)
    );

    // What the archive holds is the segment as written.
    let fetched = db0.data_mount.join("fetched");
    let out = db0
        .init_command()
        .args(["wal-fetch", &last, &fetched.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "wal-fetch: {}", stderr(&out));
    assert_eq!(std::fs::read(&fetched).unwrap(), bytes);
    // A segment never archived: exit 1, the end of the archive.
    let out = db0
        .init_command()
        .args([
            "wal-fetch",
            "0000000100000000000000FF",
            &fetched.display().to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // Point-in-time recovery of the base backup, on another port, to the
    // moment between the commits.
    let port = ordinal_e2e::local::free_port();
    std::fs::write(base.join("recovery.signal"), "").unwrap();
    let conf = std::fs::read_to_string(db0.config_dir.join("postgresql.conf"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("port") && !l.starts_with("archive"))
        .collect::<Vec<_>>()
        .join("\n");
    let restore_conf = base.join("restore.conf");
    std::fs::write(
        &restore_conf,
        format!(
            "{conf}\nport = {port}\nrestore_command = '{init} wal-fetch %f %p'\n\
             recovery_target_time = '{between}'\nrecovery_target_action = 'promote'\n"
        ),
    )
    .unwrap();
    ordinal_e2e::local::chown_tree_to_postgres(&base);
    let log = db0.data_mount.join("restored.log");
    std::fs::write(&log, "").unwrap();
    ordinal_e2e::local::chown_to_postgres(&log);
    let out = db0
        .tool("pg_ctl")
        .args([
            "start",
            "-w",
            "-t",
            "120",
            "-D",
            &base.display().to_string(),
        ])
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(format!("-c config_file={}", restore_conf.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restored server: {}\n{}",
        stderr(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let restored = db0.sql_at(port).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while restored
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "the restored server was not promoted within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (count, max): (i64, Option<i32>) = restored
        .query_one("SELECT count(*), max(id) FROM t", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (count, max),
        (1000, Some(1000)),
        "rows after recovery to {between}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log_text.contains("restored log file"), "{log_text}");
    let out = db0
        .tool("pg_ctl")
        .args(["stop", "-m", "fast", "-D", &base.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
