//! Scheduled base backups (`spec.backup.schedule`): each run of the cron
//! expression is one PostgresBackup named after its minute, created by the
//! cluster's reconcile (the name makes it idempotent: a second reconcile in
//! the same minute finds it exists). Only the latest run due is created: a
//! run missed while the operator was down is taken once, late, as a
//! CronJob with a starting deadline does, never one per missed run.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use ordinal_crds::{BackupTarget, PostgresBackup, PostgresBackupSpec, names};

use crate::Error;
use crate::reconcile::validate::ValidCluster;

/// What the schedule asks for now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The PostgresBackup of the latest run due, if one is (None before the
    /// cluster's first run).
    pub backup: Option<String>,
    /// How long until the next run.
    pub next_in: Duration,
}

/// Parses a schedule as the CRD admits it (5 fields or a @nickname).
pub fn parse(schedule: &str) -> Result<Cron, String> {
    Cron::from_str(schedule).map_err(|e| format!("{schedule:?} is not a cron expression: {e}"))
}

fn utc(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

/// The run of `schedule` due at `now` for cluster `name` created at
/// `created`: the latest run at or before `now` and after `created`.
pub fn due(schedule: &Cron, name: &str, created: Timestamp, now: Timestamp) -> Option<Due> {
    let now = utc(now)?;
    let created = utc(created)?;
    let last = schedule.find_previous_occurrence(&now, true).ok();
    let next = schedule.find_next_occurrence(&now, false).ok()?;
    let backup = last
        .filter(|last| *last >= created)
        .map(|last| format!("{name}-{}", last.format("%Y%m%d%H%M")));
    Some(Due {
        backup,
        next_in: (next - now).to_std().unwrap_or_default(),
    })
}

/// Creates the PostgresBackup of the run due, if any; returns how long
/// until the next run (None: no schedule).
pub async fn ensure_scheduled_backup(
    client: &Client,
    cluster: &ValidCluster,
    created: Option<Timestamp>,
    now: Timestamp,
) -> Result<Option<Duration>, Error> {
    let Some(schedule) = cluster
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.schedule.as_deref())
    else {
        return Ok(None);
    };
    // The reconciler's validation refused a schedule that does not parse.
    let Ok(cron) = parse(schedule) else {
        return Ok(None);
    };
    let Some(due) = due(&cron, &cluster.name, created.unwrap_or(now), now) else {
        return Ok(None);
    };
    if let Some(name) = &due.backup {
        let mut backup = PostgresBackup::new(
            name,
            PostgresBackupSpec {
                cluster: cluster.name.clone(),
                target: BackupTarget::PreferStandby,
            },
        );
        backup.metadata = ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(cluster.namespace.clone()),
            labels: Some(
                [
                    (
                        names::LABEL_MANAGED_BY.to_owned(),
                        names::MANAGED_BY.to_owned(),
                    ),
                    (names::LABEL_BACKUP_OF.to_owned(), cluster.name.clone()),
                ]
                .into(),
            ),
            // Deleted with the cluster; the store keeps the data.
            owner_references: Some(vec![cluster.owner.clone()]),
            ..ObjectMeta::default()
        };
        let api: Api<PostgresBackup> = Api::namespaced(client.clone(), &cluster.namespace);
        match api.create(&PostParams::default(), &backup).await {
            Ok(_) => tracing::info!(backup = %name, "scheduled backup created"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => {
                return Err(Error::Create {
                    kind: "PostgresBackup",
                    namespace: cluster.namespace.clone(),
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    Ok(Some(due.next_in))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a time")
    }

    #[test]
    fn each_run_is_one_backup_named_after_its_minute() {
        let daily = parse("0 3 * * *").expect("daily");
        let created = at("2026-12-01T12:00:00Z");
        // Before the first run after creation: nothing yet.
        let before = due(&daily, "db", created, at("2026-12-01T20:00:00Z")).expect("due");
        assert_eq!(before.backup, None);
        assert_eq!(before.next_in, Duration::from_secs(7 * 3600));
        // At the run and after it, the same name: created once.
        for now in [
            "2026-12-02T03:00:00Z",
            "2026-12-02T03:00:40Z",
            "2026-12-02T09:00:00Z",
        ] {
            let d = due(&daily, "db", created, at(now)).expect("due");
            assert_eq!(d.backup.as_deref(), Some("db-202612020300"), "at {now}");
        }
        // Missed runs (the operator was down for days): only the latest.
        let late = due(&daily, "db", created, at("2026-12-05T02:59:00Z")).expect("due");
        assert_eq!(late.backup.as_deref(), Some("db-202612040300"));
        assert_eq!(late.next_in, Duration::from_secs(60));
    }

    #[test]
    fn a_bad_schedule_is_refused_with_its_text() {
        assert!(parse("@daily").is_ok());
        assert!(parse("*/5 * * * *").is_ok());
        let e = parse("61 * * * *").expect_err("minute 61");
        assert!(e.contains("\"61 * * * *\""), "{e}");
        assert!(parse("0 3 * *").is_err());
    }
}
