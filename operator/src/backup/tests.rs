use super::*;
use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
};
use ordinal_crds::{InstanceStatus, PendingPromotion};

fn instance(pod: &str, role: Role, ready: bool, lag: Option<i64>) -> InstanceStatus {
    InstanceStatus {
        pod: pod.to_owned(),
        role,
        ready,
        lsn: None,
        lag_bytes: lag,
        lag_seconds: None,
        timeline: Some(1),
        ip: None,
        ssl: None,
        upstream_sslmode: None,
    }
}

fn cluster_status() -> PostgresClusterStatus {
    PostgresClusterStatus {
        current_primary: Some("db-0".to_owned()),
        instances: vec![
            instance("db-0", Role::Primary, true, None),
            instance("db-1", Role::Replica, true, Some(4096)),
            instance("db-2", Role::Replica, true, Some(0)),
            instance("db-3", Role::Replica, false, Some(0)),
        ],
        ..PostgresClusterStatus::default()
    }
}

#[test]
fn a_backup_reads_from_the_ready_replica_that_lags_least() {
    let status = cluster_status();
    assert_eq!(
        choose_source(&status, BackupTarget::PreferStandby).as_deref(),
        Some("db-2")
    );
    assert_eq!(
        choose_source(&status, BackupTarget::Primary).as_deref(),
        Some("db-0")
    );
    // No ready replica: the primary.
    let mut alone = status.clone();
    for i in &mut alone.instances {
        if i.role == Role::Replica {
            i.ready = false;
        }
    }
    assert_eq!(
        choose_source(&alone, BackupTarget::PreferStandby).as_deref(),
        Some("db-0")
    );
    // Not while a promotion is under way, nor without a primary.
    let mut promoting = status.clone();
    promoting.pending_promotion = Some(PendingPromotion::default());
    assert_eq!(choose_source(&promoting, BackupTarget::PreferStandby), None);
    let mut none = status;
    none.current_primary = None;
    assert_eq!(choose_source(&none, BackupTarget::Primary), None);
}

fn job(condition: Option<&str>) -> Job {
    Job {
        status: Some(JobStatus {
            conditions: condition.map(|type_| {
                vec![JobCondition {
                    type_: type_.to_owned(),
                    status: "True".to_owned(),
                    message: Some("Job has reached the specified backoff limit".to_owned()),
                    ..JobCondition::default()
                }]
            }),
            ..JobStatus::default()
        }),
        ..Job::default()
    }
}

fn pod(message: &str) -> Pod {
    Pod {
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: BACKUP_CONTAINER.to_owned(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        message: Some(message.to_owned()),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

#[test]
fn the_job_outcome_carries_its_report() {
    assert_eq!(outcome(&job(None), &[], BACKUP_CONTAINER), Outcome::Running);
    assert_eq!(
        outcome(
            &job(Some("Complete")),
            &[pod("{\"id\":\"x\"}\n")],
            BACKUP_CONTAINER
        ),
        Outcome::Succeeded(Some("{\"id\":\"x\"}".to_owned()))
    );
    assert_eq!(
        outcome(
            &job(Some("Failed")),
            &[pod(
                "cannot upload s3://b/p/base/x/data.tar.zst: 403 Forbidden"
            )],
            BACKUP_CONTAINER
        ),
        Outcome::Failed("cannot upload s3://b/p/base/x/data.tar.zst: 403 Forbidden".to_owned())
    );
    // A pod gone (deleted, or never scheduled): the Job's own reason.
    assert_eq!(
        outcome(&job(Some("Failed")), &[], BACKUP_CONTAINER),
        Outcome::Failed("the Job failed: Job has reached the specified backoff limit".to_owned())
    );
}

#[test]
fn a_completed_status_says_what_and_where() {
    let manifest = BackupManifest {
        id: "20261205T213000Z".to_owned(),
        backup: Some("nightly".to_owned()),
        source: "198.18.0.12".to_owned(),
        from_standby: true,
        timeline: 2,
        begin_lsn: "0/6000028".to_owned(),
        end_lsn: "0/6000138".to_owned(),
        begin_wal: "000000020000000000000006".to_owned(),
        end_wal: "000000020000000000000006".to_owned(),
        started_at: "2026-12-05T21:30:00Z".to_owned(),
        completed_at: "2026-12-05T21:30:42Z".to_owned(),
        data_bytes: 31_457_280,
        stored_bytes: 4_404_019,
        pruned: Vec::new(),
    };
    let status = completed_status(
        PostgresBackupStatus {
            phase: Some(BackupPhase::Running),
            instance: Some("db-1".to_owned()),
            ..PostgresBackupStatus::default()
        },
        &manifest,
        Some("s3://backups/ns/db".to_owned()),
    );
    assert_eq!(status.phase, Some(BackupPhase::Completed));
    assert_eq!(status.instance.as_deref(), Some("db-1"));
    assert_eq!(
        status.location.as_deref(),
        Some("s3://backups/ns/db/base/20261205T213000Z/")
    );
    assert_eq!(status.size.as_deref(), Some("30.0MiB/4.2MiB"));
    assert_eq!(status.from_standby, Some(true));
    assert!(status.finished());
    assert_eq!(human_bytes(512), "512B");
}

#[test]
fn the_cluster_counts_its_completed_backups() {
    let backup = |name: &str, cluster: &str, phase, completed: Option<&str>| {
        let mut b = PostgresBackup::new(
            name,
            ordinal_crds::PostgresBackupSpec {
                cluster: cluster.to_owned(),
                target: BackupTarget::PreferStandby,
            },
        );
        b.status = Some(PostgresBackupStatus {
            phase: Some(phase),
            completed_at: completed.map(str::to_owned),
            ..PostgresBackupStatus::default()
        });
        b
    };
    let all = [
        backup(
            "b2",
            "db",
            BackupPhase::Completed,
            Some("2026-12-02T00:00:00Z"),
        ),
        backup(
            "b1",
            "db",
            BackupPhase::Completed,
            Some("2026-12-01T00:00:00Z"),
        ),
        backup("b3", "db", BackupPhase::Failed, None),
        backup(
            "x",
            "other",
            BackupPhase::Completed,
            Some("2026-12-03T00:00:00Z"),
        ),
    ];
    let s = summarize(&all, "db");
    assert_eq!(s.completed, 2);
    assert_eq!(s.last_backup.as_deref(), Some("b2"));
    assert_eq!(
        s.first_recoverability_point.as_deref(),
        Some("2026-12-01T00:00:00Z")
    );
    assert_eq!(summarize(&all, "none"), BackupsStatus::default());
}

fn verified(name: &str, completed: &str, phase: VerificationPhase) -> PostgresBackup {
    let mut b = PostgresBackup::new(
        name,
        ordinal_crds::PostgresBackupSpec {
            cluster: "db".to_owned(),
            target: BackupTarget::PreferStandby,
        },
    );
    b.status = Some(PostgresBackupStatus {
        phase: Some(BackupPhase::Completed),
        completed_at: Some(completed.to_owned()),
        verification: Some(VerificationStatus {
            phase,
            job: Some(format!("{name}-verify")),
            started_at: None,
            completed_at: None,
            restore_milliseconds: Some(3250),
            checks: vec!["pg_checksums: 12 page(s), every checksum matches".to_owned()],
            message: (phase == VerificationPhase::Failed)
                .then(|| "pg_amcheck found corruption: heap table t".to_owned()),
        }),
        ..PostgresBackupStatus::default()
    });
    b
}

#[test]
fn a_verification_reads_its_report_or_the_jobs_words() {
    let running = VerificationStatus {
        phase: VerificationPhase::Running,
        job: Some("b-verify".to_owned()),
        started_at: Some("2026-12-06T01:00:00Z".to_owned()),
        completed_at: None,
        restore_milliseconds: None,
        checks: Vec::new(),
        message: None,
    };
    let now = "2026-12-06T01:01:00Z";
    assert_eq!(
        verification_result(&running, Outcome::Running, now),
        running
    );
    let passed = verification_result(
        &running,
        Outcome::Succeeded(Some(
            r#"{"id":"x","passed":true,"restoreSeconds":2.3456,"checks":["pg_amcheck: ok"]}"#
                .to_owned(),
        )),
        now,
    );
    assert_eq!(passed.phase, VerificationPhase::Passed);
    assert_eq!(passed.restore_milliseconds, Some(2346));
    assert_eq!(passed.checks, ["pg_amcheck: ok"]);
    assert_eq!(passed.completed_at.as_deref(), Some(now));
    let failed = verification_result(
        &running,
        Outcome::Failed(
            r#"{"id":"x","passed":false,"message":"the archive lacks WAL"}"#.to_owned(),
        ),
        now,
    );
    assert_eq!(failed.phase, VerificationPhase::Failed);
    assert_eq!(failed.message.as_deref(), Some("the archive lacks WAL"));
    // Killed before it could report (its deadline, an eviction).
    let killed = verification_result(
        &running,
        Outcome::Failed("the Job failed: Job was active longer than specified deadline".to_owned()),
        now,
    );
    assert_eq!(killed.phase, VerificationPhase::Failed);
    assert!(killed.message.unwrap_or_default().contains("deadline"));
    // A report that says passed from a Job that failed is not a pass.
    let odd = verification_result(
        &running,
        Outcome::Failed(r#"{"id":"x","passed":true}"#.to_owned()),
        now,
    );
    assert_eq!(odd.phase, VerificationPhase::Failed);
    assert!(odd.message.is_some());
}

#[test]
fn the_newest_verification_sets_the_clusters_condition() {
    let now = Time("2026-12-06T02:00:00Z".parse().expect("time"));
    let older_pass = verified("b1", "2026-12-05T00:00:00Z", VerificationPhase::Passed);
    let newer_fail = verified("b2", "2026-12-06T00:00:00Z", VerificationPhase::Failed);
    let running = verified("b3", "2026-12-06T01:00:00Z", VerificationPhase::Running);
    let all = [older_pass.clone(), newer_fail, running];
    assert_eq!(newest_completed(&all, "db"), Some("b3"));
    assert_eq!(newest_completed(&all, "other"), None);
    let failed = verified_condition(&all, "db", None, now.clone()).expect("a condition");
    assert_eq!(failed.type_, CONDITION_BACKUP_VERIFIED);
    assert_eq!(failed.status, "False");
    assert_eq!(failed.reason, "VerificationFailed");
    assert!(failed.message.contains("b2") && failed.message.contains("corruption"));
    assert_eq!(failed.last_transition_time, now);
    let passed =
        verified_condition(&[older_pass], "db", Some(&failed), now.clone()).expect("a condition");
    assert_eq!(passed.status, "True");
    assert!(passed.message.contains("in 3.2 s"), "{}", passed.message);
    // Unchanged status: the transition time stays.
    let earlier = Condition {
        last_transition_time: Time("2026-12-01T00:00:00Z".parse().expect("time")),
        ..passed.clone()
    };
    let again = verified_condition(
        &[verified(
            "b4",
            "2026-12-07T00:00:00Z",
            VerificationPhase::Passed,
        )],
        "db",
        Some(&earlier),
        now,
    )
    .expect("a condition");
    assert_eq!(again.last_transition_time, earlier.last_transition_time);
    assert_eq!(
        verified_condition(&[], "db", None, Time(Timestamp::UNIX_EPOCH)),
        None
    );
}
