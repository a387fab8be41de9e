//! Backups on a real Kubernetes cluster: WAL archiving to a real MinIO
//! (built from its Go module, `scripts/minio.sh up` serves it on the
//! node's address, which pods reach) under write load, through a failover.
//!
//! Needs what the cluster suite needs (see tests/cluster.rs) and the
//! server's endpoint and credentials in the environment, as `eval
//! "$(scripts/minio.sh env)"` exports them (`scripts/test.sh` does).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{ListParams, ObjectMeta, PostParams};
use ordinal_crds::{
    BackupPhase, BackupSpec, BackupTarget, BootstrapSpec, CONDITION_BACKUP_VERIFIED,
    PostgresBackup, PostgresBackupSpec, PostgresBackupStatus, PostgresClusterSpec,
    PostgresClusterStatus, RecoverySource, RecoverySpec, RecoveryTargetSpec, RetentionSpec,
    S3Store, VerificationPhase, VerificationStatus, names,
};
use ordinal_e2e::cluster::{Harness, Loss};

const CLUSTER: &str = "db";

fn minio_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start MinIO with scripts/minio.sh up and eval \"$(scripts/minio.sh env)\"")
    })
}

/// `pg_stat_archiver` of `pod`: archived, failed, the last archived file.
async fn archiver(h: &Harness, pod: &str) -> Result<(i64, i64, Option<String>), String> {
    let sql = h.try_sql(CLUSTER, pod).await?;
    let row = sql
        .query_one(
            "SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// Switches to a new WAL segment on `pod` and waits until it is archived;
/// returns the segment's name.
async fn switch_and_wait_archived(h: &Harness, pod: &str) -> String {
    let sql = h.sql(CLUSTER, pod).await;
    let segment: String = sql
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .expect("pg_switch_wal")
        .get(0);
    h.wait_until(&format!("{pod} archives {segment}"), async || {
        let (archived, failed, last) = archiver(h, pod).await?;
        if failed > 0 {
            panic!("{pod}: {failed} archive failures (last archived {last:?})");
        }
        match last {
            Some(last) if archived > 0 && last.as_str() >= segment.as_str() => Ok(()),
            other => Err(format!("{archived} archived, the last {other:?}")),
        }
    })
    .await;
    segment
}

/// Fetches WAL file `name` from the archive inside `pod` (its
/// restore_command) and returns its size.
async fn fetch_in(h: &Harness, pod: &str, name: &str) -> usize {
    let out = h
        .exec(
            pod,
            "postgres",
            &[
                "sh",
                "-c",
                &format!("/ordinal/ordinal-init wal-fetch {name} /tmp/fetched && wc -c < /tmp/fetched && rm /tmp/fetched"),
            ],
        )
        .await
        .expect("exec wal-fetch");
    assert!(out.success(), "wal-fetch {name} in {pod}: {}", out.stderr);
    out.stdout.trim().parse().expect("a size")
}

/// A spec of `replicas` instances archiving to MinIO under a prefix of
/// the test's own, with its credentials Secret created.
async fn backed_up(
    h: &Harness,
    replicas: i32,
    archive_timeout_seconds: i32,
) -> PostgresClusterSpec {
    let endpoint = minio_env("ORDINAL_MINIO_ENDPOINT");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("store".to_owned()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            [
                (
                    "ACCESS_KEY_ID".to_owned(),
                    minio_env("ORDINAL_MINIO_ACCESS_KEY"),
                ),
                (
                    "SECRET_ACCESS_KEY".to_owned(),
                    minio_env("ORDINAL_MINIO_SECRET_KEY"),
                ),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    match h
        .api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
    {
        Ok(_) => {}
        // Made for another cluster of the test.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("the credentials Secret: {e}"),
    }

    let mut spec = h.spec(replicas);
    spec.backup = Some(BackupSpec {
        s3: Some(S3Store {
            bucket: minio_env("ORDINAL_MINIO_BUCKET"),
            endpoint: Some(endpoint),
            region: None,
            path_style: true,
        }),
        gcs: None,
        azure: None,
        // Each test namespace archives under a prefix of its own.
        prefix: Some(format!("e2e/{}", h.namespace)),
        credentials_secret: "store".to_owned(),
        archive_timeout_seconds,
        schedule: None,
        retention: None,
        verify: false,
    });
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_is_archived_under_write_load_and_after_a_failover() {
    let h = Harness::new("wal_is_archived_under_write_load_and_after_a_failover").await;
    let spec = backed_up(&h, 2, 60).await;
    h.apply(CLUSTER, &spec).await;
    let status = h.wait_ready(CLUSTER, 2).await;
    let primary = status.current_primary.expect("a primary");
    let replica = if primary == "db-0" { "db-1" } else { "db-0" };

    // Under write load: every completed segment reaches the store, and a
    // replica's restore_command reads it back whole.
    let (_, sql) = h.sql_rw(CLUSTER).await;
    sql.batch_execute("CREATE TABLE t (id bigserial PRIMARY KEY, pad text)")
        .await
        .expect("create");
    for _ in 0..3 {
        sql.batch_execute(
            "INSERT INTO t (pad) SELECT repeat('x', 500) FROM generate_series(1, 20000)",
        )
        .await
        .expect("insert");
    }
    let segment = switch_and_wait_archived(&h, &primary).await;
    assert_eq!(fetch_in(&h, replica, &segment).await, 16 << 20);

    // A failover: the promoted replica archives its new timeline's
    // history file and its segments.
    h.lose(&primary, Loss::Delete).await;
    let new_primary = h
        .wait_until("a replica promoted", async || {
            let status = h.try_status(CLUSTER).await?;
            match status.current_primary {
                Some(p) if p != primary && status.target_primary.is_none() => Ok(p),
                other => Err(format!("primary {other:?}")),
            }
        })
        .await;
    let (_, sql) = h.sql_rw(CLUSTER).await;
    sql.batch_execute("INSERT INTO t (pad) SELECT repeat('y', 500) FROM generate_series(1, 20000)")
        .await
        .expect("insert after the failover");
    let segment = switch_and_wait_archived(&h, &new_primary).await;
    assert!(
        segment.starts_with("00000002"),
        "{segment} is not on timeline 2"
    );
    assert!(fetch_in(&h, &new_primary, "00000002.history").await > 0);
}

/// Creates PostgresBackup `name` of `cluster`, from a standby if one is ready.
async fn request_backup(h: &Harness, name: &str, cluster: &str) {
    request_backup_from(h, name, cluster, BackupTarget::PreferStandby).await;
}

async fn request_backup_from(h: &Harness, name: &str, cluster: &str, target: BackupTarget) {
    let backup = PostgresBackup::new(
        name,
        PostgresBackupSpec {
            cluster: cluster.to_owned(),
            target,
        },
    );
    h.api::<PostgresBackup>()
        .create(&PostParams::default(), &backup)
        .await
        .unwrap_or_else(|e| panic!("create PostgresBackup {name}: {e}"));
}

/// Waits until PostgresBackup `name` is finished and returns its status.
async fn finished(h: &Harness, name: &str) -> PostgresBackupStatus {
    h.wait_until(&format!("PostgresBackup {name} finishes"), async || {
        let backup = h
            .api::<PostgresBackup>()
            .get(name)
            .await
            .map_err(|e| e.to_string())?;
        match backup.status {
            Some(status) if status.finished() => Ok(status),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// A PostgresBackup is read from the streaming replica, streamed into the
/// store, and recorded Completed only with the WAL it needs archived; what
/// the store holds restores into a directory that PostgreSQL's own
/// pg_verifybackup checks against the backup's manifest, file by file. A
/// backup of a cluster that does not exist waits and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_base_backup_is_read_from_a_replica_and_restores() {
    let h = Harness::new("a_base_backup_is_read_from_a_replica_and_restores").await;
    let spec = backed_up(&h, 2, 10).await;
    h.apply(CLUSTER, &spec).await;
    let status = h.wait_ready(CLUSTER, 2).await;
    let primary = status.current_primary.expect("a primary");
    let replica = if primary == "db-0" { "db-1" } else { "db-0" };
    h.wait_streaming_replica(CLUSTER, &primary, replica).await;
    let (_, sql) = h.sql_rw(CLUSTER).await;
    sql.batch_execute(
        "CREATE TABLE t (id bigserial PRIMARY KEY, pad text); \
         INSERT INTO t (pad) SELECT repeat('x', 500) FROM generate_series(1, 20000)",
    )
    .await
    .expect("write");

    let backups = h.api::<PostgresBackup>();
    request_backup(&h, "first", CLUSTER).await;
    request_backup(&h, "orphan", "nope").await;

    let done = finished(&h, "first").await;
    assert_eq!(done.phase, Some(BackupPhase::Completed), "{done:?}");
    assert_eq!(done.instance.as_deref(), Some(replica), "{done:?}");
    assert_eq!(done.from_standby, Some(true), "{done:?}");
    assert!(done.data_bytes.unwrap_or(0) > 10 << 20, "{done:?}");
    assert!(done.stored_bytes < done.data_bytes, "{done:?}");
    assert!(
        done.location
            .as_deref()
            .is_some_and(|l| l.ends_with(&format!("/base/{}/", done.id.as_deref().unwrap_or("?")))),
        "{done:?}"
    );
    // The cluster's status and the operator's metrics say so too.
    let cluster = h
        .wait_until("status.backups and status.archive", async || {
            let status = h.try_status(CLUSTER).await?;
            match (&status.backups, &status.archive) {
                (Some(b), Some(a)) if b.completed == 1 && a.last_archived_wal.is_some() => {
                    Ok(status)
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    let archiving = cluster
        .condition("WalArchiving")
        .expect("a WalArchiving condition");
    assert_eq!(archiving.status, "True", "{archiving:?}");
    let summary = cluster.backups.expect("backups");
    assert_eq!(summary.last_backup.as_deref(), Some("first"));
    assert_eq!(summary.first_recoverability_point, done.completed_at);
    assert_eq!(cluster.archive.expect("archive").failures, 0);
    let labels = format!("{{cluster=\"{CLUSTER}\",namespace=\"{}\"}}", h.namespace);
    let page = h.operator_metrics().await;
    for series in [
        "ordinal_backup_last_success_timestamp_seconds",
        "ordinal_backup_duration_seconds",
        "ordinal_wal_archive_lag_seconds",
    ] {
        assert!(
            page.contains(&format!("{series}{labels}")),
            "{series}{labels} not in the operator's metrics"
        );
    }
    assert!(
        page.contains(&format!("ordinal_wal_archive_failures_total{labels} 0")),
        "no archive failure counted"
    );

    let orphan = backups
        .get("orphan")
        .await
        .expect("get")
        .status
        .unwrap_or_default();
    assert_eq!(orphan.phase, Some(BackupPhase::Pending), "{orphan:?}");
    assert!(
        orphan
            .message
            .as_deref()
            .is_some_and(|m| m.contains("does not exist")),
        "{orphan:?}"
    );

    // What the store holds is a whole backup: unpacked in a pod (its
    // /tmp), it matches its own manifest, and its first and last WAL
    // segments are in the archive.
    let script = format!(
        "set -e; rm -rf /tmp/restored; mkdir -m 700 /tmp/restored; \
         /ordinal/ordinal-init base-restore --id {id} /tmp/restored; \
         pg_verifybackup --no-parse-wal --quiet /tmp/restored; \
         grep 'BACKUP FROM' /tmp/restored/backup_label; \
         /ordinal/ordinal-init wal-fetch {begin} /tmp/begin; /ordinal/ordinal-init wal-fetch {end} /tmp/end; \
         rm -rf /tmp/restored /tmp/begin /tmp/end",
        id = done.id.as_deref().expect("an id"),
        begin = done.begin_wal.as_deref().expect("a first segment"),
        end = done.end_wal.as_deref().expect("a last segment"),
    );
    let out = h
        .exec(&primary, "postgres", &["sh", "-c", &script])
        .await
        .expect("exec");
    assert!(
        out.success(),
        "restore and verify: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("BACKUP FROM: standby"),
        "{}",
        out.stdout
    );
}

/// `SELECT id FROM t ORDER BY id` through the cluster's primary.
async fn ids(h: &Harness, cluster: &str) -> Vec<i64> {
    let status = h.status(cluster).await;
    let primary = status.current_primary.expect("a primary");
    h.sql(cluster, &primary)
        .await
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A new cluster with `spec.bootstrap.recovery` (and an archive of its own).
async fn restore(
    h: &Harness,
    name: &str,
    replicas: i32,
    source_prefix: &str,
    time: Option<&str>,
) -> PostgresClusterStatus {
    let spec = restore_spec(h, name, replicas, source_prefix, time).await;
    h.apply(name, &spec).await;
    h.wait_ready(name, replicas).await
}

/// The spec of a new cluster restored from `source_prefix`.
async fn restore_spec(
    h: &Harness,
    name: &str,
    replicas: i32,
    source_prefix: &str,
    time: Option<&str>,
) -> PostgresClusterSpec {
    let mut spec = backed_up(h, replicas, 10).await;
    let own = spec.backup.as_mut().expect("backup");
    let source = own.clone();
    own.prefix = Some(format!("{source_prefix}-{name}"));
    spec.bootstrap = Some(BootstrapSpec {
        recovery: Some(RecoverySpec {
            source: RecoverySource {
                s3: source.s3,
                gcs: None,
                azure: None,
                prefix: source_prefix.to_owned(),
                credentials_secret: source.credentials_secret,
            },
            backup: None,
            target: time.map(|t| RecoveryTargetSpec {
                time: Some(t.to_owned()),
                lsn: None,
                name: None,
            }),
        }),
    });
    spec
}

/// Point-in-time recovery on the real cluster: a new cluster bootstrapped
/// from the source's base backup and archive to a moment between two
/// known commits holds exactly the rows committed before it, streams to
/// its replica and archives its own timeline; after the source cluster and
/// its volumes are deleted, another restores to the end of the archive
/// and holds every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_cluster_restores_to_a_point_in_time_and_after_its_source_is_gone() {
    let h = Harness::new("a_new_cluster_restores_to_a_point_in_time_and_after_its_source_is_gone")
        .await;
    let spec = backed_up(&h, 2, 10).await;
    let prefix = spec
        .backup
        .as_ref()
        .and_then(|b| b.prefix.clone())
        .expect("prefix");
    h.apply(CLUSTER, &spec).await;
    let status = h.wait_ready(CLUSTER, 2).await;
    let primary = status.current_primary.expect("a primary");
    let (_, sql) = h.sql_rw(CLUSTER).await;
    sql.batch_execute(
        "CREATE TABLE t (id bigint PRIMARY KEY, pad text); \
         INSERT INTO t SELECT i, repeat('a', 200) FROM generate_series(1, 1000) i",
    )
    .await
    .expect("before the backup");
    request_backup(&h, "base", CLUSTER).await;
    let done = finished(&h, "base").await;
    assert_eq!(done.phase, Some(BackupPhase::Completed), "{done:?}");

    // Commits after the backup, one before a known moment, one after.
    sql.batch_execute("INSERT INTO t SELECT i, 'b' FROM generate_series(1001, 1500) i")
        .await
        .expect("after the backup");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let between: String = sql
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .expect("now")
        .get(0);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sql.batch_execute("INSERT INTO t SELECT i, 'c' FROM generate_series(1501, 2000) i")
        .await
        .expect("after the moment");
    switch_and_wait_archived(&h, &primary).await;
    drop(sql);

    let pitr = restore(&h, "pitr", 2, &prefix, Some(&between)).await;
    assert_eq!(
        ids(&h, "pitr").await,
        (1..=1500).collect::<Vec<i64>>(),
        "restored to {between}"
    );
    let pitr_primary = pitr.current_primary.expect("a primary");
    // Its own timeline, archived under its own prefix.
    let timeline: i32 = h
        .sql("pitr", &pitr_primary)
        .await
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .expect("timeline")
        .get(0);
    assert!(timeline >= 2, "timeline {timeline}");
    let sql = h.sql("pitr", &pitr_primary).await;
    let segment: String = sql
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .expect("switch")
        .get(0);
    h.wait_until(&format!("pitr archives {segment}"), async || {
        let row = h
            .try_sql("pitr", &pitr_primary)
            .await?
            .query_one(
                "SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let (archived, failed, last): (i64, i64, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(failed, 0, "archive failures of the restored cluster");
        match last {
            Some(last) if archived > 0 && last >= segment => Ok(()),
            other => Err(format!("{archived} archived, the last {other:?}")),
        }
    })
    .await;

    // The source, and its volumes, gone.
    h.clusters()
        .delete(CLUSTER, &Default::default())
        .await
        .expect("delete the source cluster");
    h.wait_for("the source's pods are gone", async || {
        h.cluster_pods(CLUSTER).await.is_ok_and(|p| p.is_empty())
    })
    .await;
    let pvcs = h.api::<PersistentVolumeClaim>();
    pvcs.delete_collection(
        &Default::default(),
        &ListParams::default().labels(&format!("{}={CLUSTER}", names::LABEL_CLUSTER)),
    )
    .await
    .expect("delete the source's volumes");
    h.wait_for("the source's volumes are gone", async || {
        pvcs.list(&ListParams::default().labels(&format!("{}={CLUSTER}", names::LABEL_CLUSTER)))
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await;
    restore(&h, "latest", 1, &prefix, None).await;
    assert_eq!(ids(&h, "latest").await, (1..=2000).collect::<Vec<i64>>());
}

/// Wrong store credentials: the cluster still runs, its status and the
/// operator's metrics count the archiver's failures and name the file, and
/// a PostgresBackup fails with the store's own refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_store_credentials_are_reported_and_lose_nothing() {
    let h = Harness::new("wrong_store_credentials_are_reported_and_lose_nothing").await;
    let mut spec = backed_up(&h, 1, 10).await;
    let wrong = Secret {
        metadata: ObjectMeta {
            name: Some("wrong".to_owned()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            [
                ("ACCESS_KEY_ID".to_owned(), "nobody".to_owned()),
                ("SECRET_ACCESS_KEY".to_owned(), "not-the-key".to_owned()),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    h.api::<Secret>()
        .create(&PostParams::default(), &wrong)
        .await
        .expect("the wrong Secret");
    spec.backup.as_mut().expect("backup").credentials_secret = "wrong".to_owned();
    let primary = writes_go_on(&h, &spec).await;

    let archive = h
        .wait_until("status.archive counts failures", async || {
            let status = h.try_status(CLUSTER).await?;
            match status.archive {
                Some(a) if a.failures > 0 && a.last_failed_wal.is_some() => Ok(a),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert!(archive.last_archived_wal.is_none(), "{archive:?}");
    let condition = archiving_fails(&h, "").await;
    assert_eq!(condition.reason, "ArchiveFailing");
    // The store's own answer, as wal-push left it for the probe.
    assert!(condition.message.contains("Access Key"), "{condition:?}");
    h.wait_event("PostgresCluster", CLUSTER, "WalArchivingFailing")
        .await;
    let labels = format!("{{cluster=\"{CLUSTER}\",namespace=\"{}\"}}", h.namespace);
    h.wait_until("the failures reach the metrics", async || {
        let page = h.operator_metrics().await;
        let counted = page
            .lines()
            .find(|l| l.starts_with(&format!("ordinal_wal_archive_failures_total{labels}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        match counted {
            Some(n) if n > 0.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The segment waits on the primary, not lost.
    wal_waits_on(&h, &primary).await;

    request_backup(&h, "refused", CLUSTER).await;
    let refused = finished(&h, "refused").await;
    assert_eq!(refused.phase, Some(BackupPhase::Failed), "{refused:?}");
    let message = refused.message.unwrap_or_default();
    assert!(
        message.contains("cannot upload") && message.contains("Access Key"),
        "{message}"
    );
    assert_eq!(
        refused.instance.as_deref(),
        Some(primary.as_str()),
        "no replica: the primary"
    );
}

/// The scheduled PostgresBackups of `cluster`, Completed ones with their
/// ids, oldest first.
async fn scheduled(h: &Harness) -> Vec<(String, Option<BackupPhase>, Option<String>)> {
    let mut list: Vec<_> = h
        .api::<PostgresBackup>()
        .list(&ListParams::default().labels(&format!("{}={CLUSTER}", names::LABEL_BACKUP_OF)))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|b| {
            let status = b.status.clone().unwrap_or_default();
            (b.metadata.name.unwrap_or_default(), status.phase, status.id)
        })
        .collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list
}

/// `spec.backup.schedule` every minute with `retention.keep: 1`: a
/// PostgresBackup per run, named after its minute; once the second one is
/// complete, the first is gone from the store (its backup and the WAL
/// before the kept one) and its PostgresBackup deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_backups_run_and_retention_prunes_the_store() {
    let h = Harness::new("scheduled_backups_run_and_retention_prunes_the_store").await;
    let mut spec = backed_up(&h, 2, 10).await;
    let backup = spec.backup.as_mut().expect("backup");
    backup.schedule = Some("* * * * *".to_owned());
    backup.retention = Some(RetentionSpec {
        keep: Some(1),
        recovery_window_days: None,
    });
    h.apply(CLUSTER, &spec).await;
    let status = h.wait_ready(CLUSTER, 2).await;
    let primary = status.current_primary.expect("a primary");
    let (_, sql) = h.sql_rw(CLUSTER).await;
    sql.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .expect("write");

    let first = h
        .wait_until("a scheduled backup completes", async || {
            match scheduled(&h).await.as_slice() {
                [(name, Some(BackupPhase::Completed), Some(id)), ..] => {
                    Ok((name.clone(), id.clone()))
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert!(
        first.0.starts_with("db-") && first.0.len() == "db-".len() + 12,
        "{first:?} is named after its minute"
    );
    let first_end = h
        .api::<PostgresBackup>()
        .get(&first.0)
        .await
        .expect("get")
        .status
        .and_then(|s| s.begin_wal)
        .expect("the first backup's first segment");
    // WAL after the first backup, and a checkpoint: a backup read from a
    // standby starts at the last checkpoint it replayed, so the second
    // starts in a later segment and the first's segments become unneeded.
    sql.batch_execute("INSERT INTO t SELECT generate_series(1001, 2000); CHECKPOINT")
        .await
        .expect("write");
    switch_and_wait_archived(&h, &primary).await;

    let second = h
        .wait_until(
            "the next run completes and prunes the first",
            async || match scheduled(&h).await.as_slice() {
                [(name, Some(BackupPhase::Completed), Some(id))] if *name != first.0 => {
                    Ok((name.clone(), id.clone()))
                }
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    assert!(second.0 > first.0, "{second:?} after {first:?}");
    let kept_begin = h
        .api::<PostgresBackup>()
        .get(&second.0)
        .await
        .expect("get")
        .status
        .and_then(|s| s.begin_wal)
        .expect("the kept backup's first segment");
    assert!(kept_begin > first_end, "{kept_begin} after {first_end}");
    // In the store: the first backup is gone, and the WAL it began with;
    // the second restores.
    let script = format!(
        "cd /tmp; if /ordinal/ordinal-init base-restore --id {old} /tmp/none 2>&1; then exit 3; fi; \
         if /ordinal/ordinal-init wal-fetch {old_wal} /tmp/old-wal; then exit 4; fi; \
         /ordinal/ordinal-init wal-fetch {kept_begin} /tmp/kept-wal || exit 5; \
         rm -rf /tmp/kept; mkdir -m 700 /tmp/kept; /ordinal/ordinal-init base-restore --id {kept} /tmp/kept; \
         pg_verifybackup --no-parse-wal --quiet /tmp/kept; rm -rf /tmp/kept",
        old = first.1,
        old_wal = first_end,
        kept = second.1,
    );
    let out = h
        .exec(&primary, "postgres", &["sh", "-c", &script])
        .await
        .expect("exec");
    assert!(
        out.success(),
        "the store after pruning ({:?}): {}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("no base backup with id"),
        "{}",
        out.stdout
    );
    let summary = h.status(CLUSTER).await.backups.expect("status.backups");
    assert_eq!(summary.completed, 1, "{summary:?}");
}

/// The test's own prefix of the MinIO bucket, as the test host reaches it.
fn store(h: &Harness) -> (Box<dyn object_store::ObjectStore>, object_store::path::Path) {
    let url = url::Url::parse(&format!(
        "s3://{}/e2e/{}",
        minio_env("ORDINAL_MINIO_BUCKET"),
        h.namespace
    ))
    .expect("url");
    object_store::parse_url_opts(
        &url,
        [
            ("aws_endpoint", minio_env("ORDINAL_MINIO_ENDPOINT")),
            ("aws_region", "us-east-1".to_owned()),
            ("aws_allow_http", "true".to_owned()),
            ("aws_virtual_hosted_style_request", "false".to_owned()),
            ("aws_access_key_id", minio_env("ORDINAL_MINIO_ACCESS_KEY")),
            (
                "aws_secret_access_key",
                minio_env("ORDINAL_MINIO_SECRET_KEY"),
            ),
        ],
    )
    .expect("the store")
}

/// Waits until PostgresBackup `name`'s verification is finished.
async fn verified(h: &Harness, name: &str) -> VerificationStatus {
    h.wait_until(&format!("PostgresBackup {name} is verified"), async || {
        let backup = h
            .api::<PostgresBackup>()
            .get(name)
            .await
            .map_err(|e| e.to_string())?;
        match backup.status.and_then(|s| s.verification) {
            Some(v) if v.finished() => Ok(v),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// `spec.backup.verify`: turned on, the newest backup is restored in a
/// throwaway pod and checked. One whose WAL was deleted from the store
/// fails, naming the segment, on the PostgresBackup, in an Event on it and
/// on the cluster, in the cluster's BackupVerified condition and in the
/// metric the alert reads; the next backup is restored, passes
/// pg_amcheck and pg_checksums, and its measured restore time is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_are_verified_by_restoring_them_and_a_broken_one_is_said() {
    let h = Harness::new("backups_are_verified_by_restoring_them_and_a_broken_one_is_said").await;
    let mut spec = backed_up(&h, 2, 10).await;
    h.apply(CLUSTER, &spec).await;
    let status = h.wait_ready(CLUSTER, 2).await;
    let primary = status.current_primary.expect("a primary");
    let (_, sql) = h.sql_rw(CLUSTER).await;
    sql.batch_execute(
        "CREATE TABLE t (id bigserial PRIMARY KEY, pad text); \
         CREATE INDEX ON t (pad); \
         INSERT INTO t (pad) SELECT md5(i::text) FROM generate_series(1, 20000) i",
    )
    .await
    .expect("write");

    request_backup(&h, "broken", CLUSTER).await;
    let broken = finished(&h, "broken").await;
    assert_eq!(broken.phase, Some(BackupPhase::Completed), "{broken:?}");
    assert_eq!(broken.verification, None, "verify is off: {broken:?}");
    // The store loses the backup's first segment.
    let begin_wal = broken.begin_wal.clone().expect("a first segment");
    let (store, prefix) = store(&h);
    let segment = prefix
        .child("wal")
        .child(&begin_wal[..16])
        .child(format!("{begin_wal}.zst"));
    store.delete(&segment).await.expect("delete the segment");

    // Turned on: the newest backup, the broken one, is verified at once.
    spec.backup.as_mut().expect("backup").verify = true;
    h.apply(CLUSTER, &spec).await;
    let failed = verified(&h, "broken").await;
    assert_eq!(failed.phase, VerificationPhase::Failed, "{failed:?}");
    eprintln!("verification of the first backup: {failed:?}");
    let message = failed.message.clone().unwrap_or_default();
    assert!(
        message.contains("lacks WAL") && message.contains(&begin_wal),
        "{failed:?}"
    );
    let condition = h
        .wait_until("BackupVerified is False", async || {
            let status = h.try_status(CLUSTER).await?;
            match status.condition(CONDITION_BACKUP_VERIFIED) {
                Some(c) if c.status == "False" => Ok(c.clone()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert_eq!(condition.reason, "VerificationFailed");
    assert!(condition.message.contains(&begin_wal), "{condition:?}");
    h.wait_event("PostgresBackup", "broken", "BackupVerificationFailed")
        .await;
    h.wait_event("PostgresCluster", CLUSTER, "BackupVerificationFailed")
        .await;
    let labels = format!("{{cluster=\"{CLUSTER}\",namespace=\"{}\"}}", h.namespace);
    let page = h.operator_metrics().await;
    assert!(
        page.contains(&format!("ordinal_backup_verification_passed{labels} 0")),
        "the failed verification in the operator's metrics"
    );

    // A new backup from the primary (a checkpoint of its own, past the
    // lost segment) is verified as soon as it completes.
    sql.batch_execute("INSERT INTO t (pad) SELECT md5(i::text) FROM generate_series(1, 5000) i")
        .await
        .expect("write");
    request_backup_from(&h, "good", CLUSTER, BackupTarget::Primary).await;
    let good = finished(&h, "good").await;
    assert_eq!(good.phase, Some(BackupPhase::Completed), "{good:?}");
    assert_eq!(good.instance.as_deref(), Some(primary.as_str()));
    let passed = verified(&h, "good").await;
    assert_eq!(passed.phase, VerificationPhase::Passed, "{passed:?}");
    eprintln!("verification of the second backup: {passed:?}");
    assert!(passed.restore_milliseconds.unwrap_or(0) > 0, "{passed:?}");
    let checks = passed.checks.join("; ");
    assert!(
        checks.contains("pg_amcheck") && checks.contains("pg_checksums"),
        "{passed:?}"
    );
    h.wait_until("BackupVerified is True", async || {
        let status = h.try_status(CLUSTER).await?;
        match status.condition(CONDITION_BACKUP_VERIFIED) {
            Some(c) if c.status == "True" && c.message.contains("good") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let page = h.operator_metrics().await;
    assert!(
        page.contains(&format!("ordinal_backup_verification_passed{labels} 1")),
        "the passed verification in the operator's metrics"
    );
    assert!(page.contains(&format!("ordinal_backup_restore_seconds{labels}")));
    // The broken one stays as it was found.
    let broken = h
        .api::<PostgresBackup>()
        .get("broken")
        .await
        .expect("get")
        .status
        .and_then(|s| s.verification)
        .expect("verification");
    assert_eq!(broken.phase, VerificationPhase::Failed);
}

/// A restore from an archive that lost a WAL segment its backup needs:
/// the new cluster's pod cannot start, and the cluster's Ready condition
/// and an Event say why, naming the segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_whose_wal_is_missing_says_which_segment() {
    let h = Harness::new("a_restore_whose_wal_is_missing_says_which_segment").await;
    let spec = backed_up(&h, 1, 10).await;
    h.apply(CLUSTER, &spec).await;
    h.wait_ready(CLUSTER, 1).await;
    let (_, sql) = h.sql_rw(CLUSTER).await;
    sql.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .expect("write");
    request_backup_from(&h, "base", CLUSTER, BackupTarget::Primary).await;
    let base = finished(&h, "base").await;
    assert_eq!(base.phase, Some(BackupPhase::Completed), "{base:?}");
    let begin_wal = base.begin_wal.clone().expect("a first segment");
    let (store, prefix) = store(&h);
    store
        .delete(
            &prefix
                .child("wal")
                .child(&begin_wal[..16])
                .child(format!("{begin_wal}.zst")),
        )
        .await
        .expect("delete the segment");

    let source_prefix = spec
        .backup
        .as_ref()
        .and_then(|b| b.prefix.clone())
        .expect("the source's prefix");
    let copy = restore_spec(&h, "copy", 1, &source_prefix, None).await;
    h.apply("copy", &copy).await;
    let ready = h
        .wait_until("the restore's failure in the status", async || {
            let status = h.try_status("copy").await?;
            match status.condition(ordinal_crds::CONDITION_READY) {
                Some(c) if c.message.contains("copy-0 cannot start") => Ok(c.clone()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    eprintln!("Ready: {}", ready.message);
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("lacks WAL") && ready.message.contains(&begin_wal),
        "{ready:?}"
    );
    h.wait_event("PostgresCluster", "copy", "InstanceCannotStart")
        .await;
    // Nothing was made of it: no data directory, no primary bootstrapped.
    let status = h.status("copy").await;
    assert!(!status.bootstrapped, "{status:?}");
}

/// Creates cluster `db` of one instance from `spec` (whose store refuses
/// the archive), writes and switches WAL segments: the writes go on.
/// Returns the primary.
async fn writes_go_on(h: &Harness, spec: &PostgresClusterSpec) -> String {
    h.apply(CLUSTER, spec).await;
    let status = h.wait_ready(CLUSTER, 1).await;
    let primary = status.current_primary.expect("a primary");
    let (_, sql) = h.sql_rw(CLUSTER).await;
    sql.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1); SELECT pg_switch_wal()")
        .await
        .expect("writes go on");
    primary
}

/// Waits until the `WalArchiving` condition of `db` is False with a
/// message that contains `said`, and returns it.
async fn archiving_fails(
    h: &Harness,
    said: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let condition = h
        .wait_until(
            &format!("WalArchiving is False, saying {said:?}"),
            async || {
                let status = h.try_status(CLUSTER).await?;
                match status.condition("WalArchiving") {
                    Some(c) if c.status == "False" && c.message.contains(said) => Ok(c.clone()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    eprintln!("WalArchiving: {}", condition.message);
    condition
}

/// The WAL not yet archived waits on `primary` (`.ready`), not lost.
async fn wal_waits_on(h: &Harness, primary: &str) {
    let ready = h
        .exec(
            primary,
            "postgres",
            &["sh", "-c", "ls $PGDATA/pg_wal/archive_status"],
        )
        .await
        .expect("exec");
    assert!(ready.stdout.contains(".ready"), "{}", ready.stdout);
}

/// A request signed with MinIO's root credentials, by curl.
fn minio_admin(method: &str, path: &str, body: Option<&str>) -> String {
    let mut command = std::process::Command::new("curl");
    command
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "10",
            "-X",
            method,
        ])
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!(
            "{}:{}",
            minio_env("ORDINAL_MINIO_ACCESS_KEY"),
            minio_env("ORDINAL_MINIO_SECRET_KEY")
        ));
    if let Some(body) = body {
        // MinIO's admin API wants the payload's hash signed.
        let out = std::process::Command::new("sh")
            .args(["-c", "printf '%s' \"$0\" | sha256sum | cut -d' ' -f1", body])
            .output()
            .expect("sha256sum");
        let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        command
            .args(["-H", &format!("x-amz-content-sha256: {hash}")])
            .args(["-H", "Content-Type: application/json", "--data", body]);
    }
    let out = command
        .arg(format!("{}{path}", minio_env("ORDINAL_MINIO_ENDPOINT")))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A full store (a bucket whose hard quota every upload exceeds): the
/// cluster runs on, and its WalArchiving condition says so in MinIO's
/// words; the WAL waits on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_store_is_said_in_the_status() {
    let h = Harness::new("a_full_store_is_said_in_the_status").await;
    let bucket = format!("full-{}", h.namespace);
    let made = minio_admin("PUT", &format!("/{bucket}"), None);
    assert!(made.ends_with("200"), "create bucket {bucket}: {made}");
    let quota = minio_admin(
        "PUT",
        &format!("/minio/admin/v3/set-bucket-quota?bucket={bucket}"),
        Some(r#"{"quota":1,"quotatype":"hard"}"#),
    );
    assert!(quota.ends_with("200"), "set the quota: {quota}");

    let mut spec = backed_up(&h, 1, 10).await;
    if let Some(s3) = spec.backup.as_mut().and_then(|b| b.s3.as_mut()) {
        s3.bucket.clone_from(&bucket);
    }
    let primary = writes_go_on(&h, &spec).await;
    archiving_fails(&h, "quota").await;
    let archive = h.status(CLUSTER).await.archive.expect("status.archive");
    assert!(
        archive
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("Bucket quota exceeded")),
        "{archive:?}"
    );
    wal_waits_on(&h, &primary).await;
}

/// A store that cannot be reached (nothing listens at its endpoint): the
/// cluster runs on, and once the upload has given up retrying, its
/// WalArchiving condition says so, naming the endpoint; the WAL waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_store_is_said_in_the_status() {
    let h = Harness::new("an_unreachable_store_is_said_in_the_status").await;
    let mut spec = backed_up(&h, 1, 10).await;
    if let Some(s3) = spec.backup.as_mut().and_then(|b| b.s3.as_mut()) {
        // The node's address, on a port nothing listens on.
        s3.endpoint = Some("http://198.18.255.1:9".to_owned());
    }
    let primary = writes_go_on(&h, &spec).await;
    let condition = archiving_fails(&h, "").await;
    assert!(
        condition.message.contains("cannot upload") && condition.message.contains("198.18.255.1:9"),
        "{condition:?}"
    );
    h.wait_event("PostgresCluster", CLUSTER, "WalArchivingFailing")
        .await;
    wal_waits_on(&h, &primary).await;
}
