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
    let (restored, _) = recover_to(&db0, &base, &between).await;
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
    let log_text = std::fs::read_to_string(base.with_extension("log")).unwrap_or_default();
    assert!(log_text.contains("restored log file"), "{log_text}");
    let out = db0
        .tool("pg_ctl")
        .args(["stop", "-m", "fast", "-D", &base.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Starts the server of data directory `dir` (a restored base backup) on a
/// port of its own with `pod`'s configuration, recovering from the archive
/// to `time` (as PostgreSQL writes a time) and promoted there; returns a
/// session with it and its port.
async fn recover_to(pod: &Pod, dir: &std::path::Path, time: &str) -> (tokio_postgres::Client, u16) {
    let init = env!("CARGO_BIN_EXE_ordinal-init");
    let port = ordinal_e2e::local::free_port();
    std::fs::write(dir.join("recovery.signal"), "").unwrap();
    let conf = std::fs::read_to_string(pod.config_dir.join("postgresql.conf"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("port") && !l.starts_with("archive"))
        .collect::<Vec<_>>()
        .join("\n");
    let restore_conf = dir.with_extension("conf");
    std::fs::write(
        &restore_conf,
        format!(
            "{conf}\nport = {port}\nrestore_command = '{init} wal-fetch %f %p'\n\
             recovery_target_time = '{time}'\nrecovery_target_action = 'promote'\n"
        ),
    )
    .unwrap();
    ordinal_e2e::local::chown_tree_to_postgres(dir);
    ordinal_e2e::local::chown_to_postgres(&restore_conf);
    let log = dir.with_extension("log");
    std::fs::write(&log, "").unwrap();
    ordinal_e2e::local::chown_to_postgres(&log);
    let out = pod
        .tool("pg_ctl")
        .args(["start", "-w", "-t", "120", "-D"])
        .arg(dir)
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
    let client = pod.sql_at(port).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
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
    (client, port)
}

/// Waits until `pod` has archived WAL segment `segment` or later.
async fn wait_archived(pod: &Pod, segment: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = archived(pod).await;
        if done.2.as_deref() >= Some(segment) {
            assert_eq!(done.1, 0, "archive failures: {done:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{segment} not archived within 60 s: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ordinal-init base-backup` reads a base backup from a streaming
/// replica (sparing the primary), streams it compressed into MinIO and
/// records its manifest only once the WAL it needs is archived too;
/// `ordinal-init base-restore` unpacks it into an empty directory, and the
/// server recovers from the archive to a moment between two commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_backup_from_a_replica_restores_to_a_point_in_time() {
    let minio = Minio::start();
    let init = env!("CARGO_BIN_EXE_ordinal-init");
    let cluster = Cluster::new(init);
    let db0 = cluster.pod(0);
    let db1 = cluster.pod(1);
    let creds = credentials(&minio, &db0.data_mount);
    for pod in [&db0, &db1] {
        backup_env(pod, &minio, "cluster-b", &creds);
    }
    cluster.set_state("db-0", false, 0);
    let out = db0.init();
    assert!(out.status.success(), "init: {}", stderr(&out));
    // A short archive_timeout: the backup's last segment, on a standby,
    // is archived when the primary switches segments.
    append_conf(
        &db0,
        &format!(
            "archive_mode = on\narchive_command = '{init} wal-push %p %f'\narchive_timeout = 5"
        ),
    );
    db0.start().expect("db-0 starts");
    let sql = db0.sql().await;
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, pad text); \
         INSERT INTO t SELECT i, repeat('x', 500) FROM generate_series(1, 1000) i",
    )
    .await
    .unwrap();
    cluster.set_state("db-0", true, 0);
    let out = db1.init();
    assert!(out.status.success(), "db-1 init: {}", stderr(&out));
    db1.start().expect("db-1 starts");
    assert!(db1.in_recovery().await);

    let report = db1.data_mount.join("report.json");
    let out = db1
        .init_command()
        .args(["base-backup", "--host", "127.0.0.1", "--port"])
        .arg(db1.port.to_string())
        .args([
            "--backup",
            "nightly",
            "--wal-wait-seconds",
            "60",
            "--report",
        ])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "base-backup: {}", stderr(&out));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(manifest["backup"], "nightly", "{manifest}");
    assert_eq!(manifest["timeline"], 1, "{manifest}");
    let data = manifest["dataBytes"].as_u64().unwrap();
    let stored = manifest["storedBytes"].as_u64().unwrap();
    assert!(data > 20_000_000, "{manifest}");
    assert!(stored < data / 2, "compressed: {manifest}");
    // Recorded complete only with its WAL in the archive.
    let end_wal = manifest["endWal"].as_str().unwrap().to_owned();
    let fetched = db1.data_mount.join("end-wal");
    let out = db1
        .init_command()
        .args(["wal-fetch", &end_wal, &fetched.display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the backup's end segment: {}",
        stderr(&out)
    );

    // After the backup: a commit before a known moment, one after.
    sql.batch_execute("INSERT INTO t SELECT i, 'after' FROM generate_series(1001, 1500) i")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The moment, as PostgreSQL writes it and as RFC 3339 (the CRD's).
    let (between, between_rfc3339): (String, String) = sql
        .query_one(
            "SELECT now()::text, to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sql.batch_execute("INSERT INTO t SELECT i, 'late' FROM generate_series(1501, 2000) i")
        .await
        .unwrap();
    let last: String = sql
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    wait_archived(&db0, &last).await;

    // A directory that is not empty is refused, whatever it holds.
    let out = db1
        .init_command()
        .args(["base-restore"])
        .arg(&db1.pgdata)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));

    let restored = db1.data_mount.join("restored");
    std::fs::create_dir(&restored).unwrap();
    ordinal_e2e::local::chown_to_postgres(&restored);
    let out = db1
        .init_command()
        .args(["base-restore"])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(out.status.success(), "base-restore: {}", stderr(&out));
    let label = std::fs::read_to_string(restored.join("backup_label")).unwrap();
    assert!(label.contains("BACKUP FROM: standby"), "{label}");
    // PostgreSQL's own check of the restored files against the backup's
    // manifest (the WAL is checked by the recovery itself).
    let out = db1
        .tool("pg_verifybackup")
        .args(["--no-parse-wal", "--quiet"])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_verifybackup: {}", stderr(&out));

    let (client, _) = recover_to(&db1, &restored, &between).await;
    let (count, max): (i64, Option<i32>) = client
        .query_one("SELECT count(*), max(id) FROM t", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (count, max),
        (1500, Some(1500)),
        "rows after recovery to {between}"
    );
    let _ = db1
        .tool("pg_ctl")
        .args(["stop", "-m", "fast", "-D"])
        .arg(&restored)
        .output();

    // The same by `ordinal-init init`, as spec.bootstrap.recovery asks
    // for it: new clusters restored from cluster-b's store, to the time
    // between the commits and to the end of the archive, each promoted
    // onto a timeline of its own. A target no backup precedes is refused
    // with a message that says so.
    for (target, rows) in [(Some(between_rfc3339.as_str()), 1500), (None, 2000)] {
        let restored = Cluster::new(init);
        let pod = restored.pod(0);
        recovery_env(&pod, &minio, "cluster-b", &creds);
        if let Some(t) = target {
            pod.env("ORDINAL_RECOVERY_TARGET_TIME", t);
        }
        // Archiving, as a restored cluster does, under a prefix of its own.
        let own = format!("cluster-b-restored-{rows}");
        backup_env(&pod, &minio, &own, &creds);
        append_conf(
            &pod,
            &format!("archive_mode = on\narchive_command = '{init} wal-push %p %f'"),
        );
        restored.set_state("db-0", false, 0);
        let out = pod.init();
        assert!(out.status.success(), "restore by init: {}", stderr(&out));
        assert!(
            stderr(&out).contains("restore a new cluster from a backup"),
            "{}",
            stderr(&out)
        );
        pod.start().expect("the restored primary starts");
        assert!(!pod.in_recovery().await, "promoted");
        let sql = pod.sql().await;
        let (count, timeline): (i64, i32) = sql
            .query_one(
                "SELECT (SELECT count(*) FROM t), (SELECT timeline_id FROM pg_control_checkpoint())",
                &[],
            )
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!(count, rows, "restored to {target:?}");
        assert!(timeline >= 2, "a timeline of its own: {timeline}");
        // It archives its own timeline (the history file, the segments
        // of the recovery's end), and nothing has failed, then or before.
        let last: String = sql
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .unwrap()
            .get(0);
        wait_archived(&pod, &last).await;
        let history = pod.data_mount.join("history");
        let out = pod
            .init_command()
            .args(["wal-fetch", &format!("{timeline:08X}.history")])
            .arg(&history)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{own} holds the new timeline's history: {}",
            stderr(&out)
        );
        // Nothing of the source's ALTER SYSTEM settings remains.
        let auto = std::fs::read_to_string(pod.pgdata.join("postgresql.auto.conf")).unwrap();
        assert!(!auto.contains("primary_conninfo"), "{auto}");
    }
    let early = Cluster::new(init);
    let pod = early.pod(0);
    recovery_env(&pod, &minio, "cluster-b", &creds);
    pod.env("ORDINAL_RECOVERY_TARGET_TIME", "2020-01-01T00:00:00Z");
    early.set_state("db-0", false, 0);
    let out = pod.init();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no base backup") && stderr(&out).contains("complete before"),
        "{}",
        stderr(&out)
    );
    assert!(!pod.pgdata.exists(), "nothing left in place of PGDATA");
}

/// The store to restore from, as the operator names it to the pods of a
/// cluster with spec.bootstrap.recovery.
fn recovery_env(pod: &Pod, minio: &Minio, prefix: &str, creds: &std::path::Path) {
    let options: Vec<String> = minio
        .options()
        .into_iter()
        .filter(|(k, _)| !k.contains("access_key") && !k.contains("secret"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pod.env("ORDINAL_RECOVERY_URL", &minio.url(prefix));
    pod.env("ORDINAL_RECOVERY_OPTIONS", &options.join(","));
    pod.env(
        "ORDINAL_RECOVERY_CREDENTIALS_DIR",
        &creds.display().to_string(),
    );
}

/// `ordinal-init verify-backup` on a real backup: it restores it, replays
/// to consistency and passes PostgreSQL's checks; the same backup with one
/// page of a table changed in the store fails them (by checksum), and with
/// a WAL segment it needs missing it fails to restore. Each failure says
/// what it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_backup_passes_and_a_corrupt_or_incomplete_one_fails() {
    use object_store::ObjectStore;
    let minio = Minio::start();
    let init = env!("CARGO_BIN_EXE_ordinal-init");
    let cluster = Cluster::new(init);
    let db0 = cluster.pod(0);
    let creds = credentials(&minio, &db0.data_mount);
    backup_env(&db0, &minio, "cluster-v", &creds);
    let sql = archiving_primary(&cluster, &db0, 1000).await;
    sql.batch_execute("CHECKPOINT").await.unwrap();
    let file: String = sql
        .query_one("SELECT pg_relation_filepath('t')", &[])
        .await
        .unwrap()
        .get(0);

    let report = db0.data_mount.join("backup.json");
    let out = db0
        .init_command()
        .args(["base-backup", "--host", "127.0.0.1", "--port"])
        .arg(db0.port.to_string())
        .args(["--wal-wait-seconds", "60", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "base-backup: {}", stderr(&out));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let id = manifest["id"].as_str().unwrap().to_owned();

    let verify = |name: &str| {
        let scratch = db0.data_mount.join(name);
        std::fs::create_dir(&scratch).unwrap();
        ordinal_e2e::local::chown_to_postgres(&scratch);
        let report = scratch.join("report.json");
        let out = db0
            .init_command()
            .args(["verify-backup", "--id", &id, "--dir"])
            .arg(&scratch)
            .arg("--report")
            .arg(&report)
            .output()
            .unwrap();
        let text = std::fs::read_to_string(&report).unwrap_or_default();
        let result: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("report {text:?} ({e}): {}", stderr(&out)));
        (out, result)
    };
    let (out, passed) = verify("verify-good");
    assert!(out.status.success(), "verify-backup: {}", stderr(&out));
    assert_eq!(passed["passed"], true, "{passed}");
    assert_eq!(passed["id"], id.as_str(), "{passed}");
    assert!(passed["restoreSeconds"].as_f64().unwrap() > 0.0, "{passed}");
    let checks = passed["checks"].to_string();
    assert!(
        checks.contains("pg_amcheck") && checks.contains("pg_checksums"),
        "{passed}"
    );

    // One byte of the table's first page changed in the stored backup
    // (the tar is stored whole, so the file's bytes are found by offset).
    let options: Vec<(String, String)> = minio.options();
    let url = url::Url::parse(&minio.url("cluster-v")).unwrap();
    let (store, prefix) = object_store::parse_url_opts(&url, options).unwrap();
    let data = prefix
        .child("base")
        .child(id.as_str())
        .child("data.tar.zst");
    let original = store.get(&data).await.unwrap().bytes().await.unwrap();
    let mut tar_bytes = zstd::decode_all(&original[..]).unwrap();
    let offset = {
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let entry = archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().to_string_lossy() == file)
            .unwrap_or_else(|| panic!("{file} is not in the backup"));
        usize::try_from(entry.raw_file_position()).unwrap()
    };
    // Past the page header and line pointers: a tuple's bytes.
    tar_bytes[offset + 6000] ^= 0xff;
    let corrupt = zstd::encode_all(&tar_bytes[..], 3).unwrap();
    store.put(&data, corrupt.into()).await.unwrap();
    let (out, failed) = verify("verify-corrupt");
    assert!(!out.status.success(), "a corrupt backup passed: {failed}");
    assert_eq!(failed["passed"], false, "{failed}");
    let message = failed["message"].as_str().unwrap_or_default();
    eprintln!("verification failed as expected: {message}");
    assert!(
        message.contains("corruption") || message.contains("checksum"),
        "{failed}"
    );
    assert!(failed["restoreSeconds"].as_f64().is_some(), "{failed}");

    // The backup whole again, but its first WAL segment gone.
    store.put(&data, original.into()).await.unwrap();
    let begin_wal = manifest["beginWal"].as_str().unwrap();
    let segment = prefix
        .child("wal")
        .child(&begin_wal[..16])
        .child(format!("{begin_wal}.zst"));
    store.head(&segment).await.expect("the segment is archived");
    store.delete(&segment).await.unwrap();
    let (out, failed) = verify("verify-no-wal");
    assert!(
        !out.status.success(),
        "a backup without its WAL passed: {failed}"
    );
    let message = failed["message"].as_str().unwrap_or_default();
    eprintln!("verification failed as expected: {message}");
    assert!(
        message.contains(&format!("lacks WAL that backup {id} needs"))
            && message.contains(begin_wal),
        "{failed}"
    );
    assert!(failed["restoreSeconds"].is_null(), "{failed}");
}

/// db-0 initialized as the primary, archiving with `ordinal-init wal-push`
/// (a short archive_timeout), with table `t` of `rows` rows.
async fn archiving_primary(cluster: &Cluster, db0: &Pod, rows: i32) -> tokio_postgres::Client {
    let init = env!("CARGO_BIN_EXE_ordinal-init");
    cluster.set_state("db-0", false, 0);
    let out = db0.init();
    assert!(out.status.success(), "init: {}", stderr(&out));
    append_conf(
        db0,
        &format!(
            "archive_mode = on\narchive_command = '{init} wal-push %p %f'\narchive_timeout = 5"
        ),
    );
    db0.start().expect("db-0 starts");
    let sql = db0.sql().await;
    sql.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, pad text); \
         INSERT INTO t SELECT i, repeat('x', 500) FROM generate_series(1, {rows}) i"
    ))
    .await
    .unwrap();
    sql
}

/// The store as the pods are told of it: a URL, object_store's options,
/// and a credentials directory with one file per secret option.
fn store_env(pod: &Pod, url: &str, options: &[(&str, &str)], secrets: &[(&str, &str)]) {
    let creds = pod.data_mount.join("store-credentials");
    std::fs::create_dir_all(&creds).unwrap();
    for (name, value) in secrets {
        std::fs::write(creds.join(name), value).unwrap();
    }
    ordinal_e2e::local::chown_tree_to_postgres(&creds);
    let options: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pod.env("ORDINAL_BACKUP_URL", url);
    pod.env("ORDINAL_BACKUP_OPTIONS", &options.join(","));
    pod.env(
        "ORDINAL_BACKUP_CREDENTIALS_DIR",
        &creds.display().to_string(),
    );
}

/// Archiving, a base backup and its verification by restoring, against
/// the store of `pod`'s environment: what every kind of store must do.
async fn archive_backup_and_verify(cluster: &Cluster, db0: &Pod, store: &str) {
    let sql = archiving_primary(cluster, db0, 20000).await;
    let segment: String = sql
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    wait_archived(db0, &segment).await;

    // Read back whole; never overwritten: the same file again is fine,
    // another under its name is refused.
    let fetched = db0.data_mount.join("fetched-wal");
    let out = db0
        .init_command()
        .args(["wal-fetch", &segment])
        .arg(&fetched)
        .output()
        .unwrap();
    assert!(out.status.success(), "{store} wal-fetch: {}", stderr(&out));
    assert_eq!(std::fs::metadata(&fetched).unwrap().len(), 16 << 20);
    let push = |path: &std::path::Path| {
        db0.init_command()
            .arg("wal-push")
            .arg(path)
            .arg(&segment)
            .output()
            .unwrap()
    };
    let again = push(&fetched);
    assert!(
        again.status.success(),
        "{store} re-push: {}",
        stderr(&again)
    );
    let mut other = std::fs::read(&fetched).unwrap();
    other[100] ^= 0xff;
    let changed = db0.data_mount.join("changed-wal");
    std::fs::write(&changed, other).unwrap();
    ordinal_e2e::local::chown_to_postgres(&changed);
    let refused = push(&changed);
    assert!(
        !refused.status.success(),
        "{store}: a different file under an archived name was accepted"
    );
    assert!(
        stderr(&refused).contains("other content"),
        "{store}: {}",
        stderr(&refused)
    );

    let report = db0.data_mount.join("backup.json");
    let out = db0
        .init_command()
        .args(["base-backup", "--host", "127.0.0.1", "--port"])
        .arg(db0.port.to_string())
        .args(["--wal-wait-seconds", "60", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{store} base-backup: {}",
        stderr(&out)
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let scratch = db0.data_mount.join("verify");
    std::fs::create_dir(&scratch).unwrap();
    ordinal_e2e::local::chown_to_postgres(&scratch);
    let report = scratch.join("report.json");
    let out = db0
        .init_command()
        .args(["verify-backup", "--dir"])
        .arg(&scratch)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{store} report ({e}): {}", stderr(&out)));
    assert_eq!(result["passed"], true, "{store}: {result}");
    assert_eq!(result["id"], manifest["id"], "{store}: {result}");
    let (_, failed, _) = archived(db0).await;
    assert_eq!(failed, 0, "{store}: archive failures");
}

/// Azure Blob Storage, through Azurite: the options are those the
/// operator gives a `spec.backup.azure` with an `endpoint`, the key is the
/// Secret's `STORAGE_ACCOUNT_KEY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_and_backups_work_on_azure_blob_storage() {
    use ordinal_e2e::emulators::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, BUCKET};
    let azurite = Azurite::start();
    let cluster = Cluster::new(env!("CARGO_BIN_EXE_ordinal-init"));
    let db0 = cluster.pod(0);
    store_env(
        &db0,
        &format!("az://{BUCKET}/cluster-a"),
        &[
            ("azure_storage_account_name", AZURITE_ACCOUNT),
            ("azure_storage_endpoint", &azurite.endpoint),
            ("azure_allow_http", "true"),
        ],
        &[("azure_storage_account_key", AZURITE_KEY)],
    );
    archive_backup_and_verify(&cluster, &db0, "Azure").await;
}
