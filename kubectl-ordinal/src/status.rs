//! `kubectl ordinal status`: one screen that says how a cluster is, from
//! its status (written by the operator and its failover loop), its pods and
//! its PostgresBackups.

use std::fmt::Write as _;
use std::io::Write as _;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use ordinal_crds::{BackupPhase, PostgresBackup, PostgresCluster, Role};
use tabwriter::TabWriter;

/// `rows` as columns aligned the way kubectl aligns them.
fn table(rows: &[Vec<String>]) -> String {
    let mut tw = TabWriter::new(Vec::new()).padding(3);
    for row in rows {
        let _ = writeln!(tw, "{}", row.join("\t"));
    }
    let _ = tw.flush();
    String::from_utf8(tw.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// `1.5MiB`, as the operator writes sizes in the status.
pub fn bytes(n: u64) -> String {
    ordinal_crds::human_bytes(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `3m12s ago`, like kubectl's AGE.
pub fn ago(then: Timestamp, now: Timestamp) -> String {
    let seconds = now.as_second().saturating_sub(then.as_second()).max(0);
    let text = match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 48 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    };
    format!("{text} ago")
}

fn when(text: &str, now: Timestamp) -> String {
    match text.parse::<Timestamp>() {
        Ok(t) => format!("{text} ({})", ago(t, now)),
        Err(_) => text.to_owned(),
    }
}

fn or_dash(value: Option<String>) -> String {
    value
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "-".to_owned())
}

/// The whole report.
/// TLS as the instances have it (status.tls), and where it is going.
fn tls_fact(pgc: &PostgresCluster) -> String {
    use ordinal_crds::TlsPhase;
    let spec = &pgc.spec.tls;
    let Some(tls) = pgc.tls_status() else {
        return if spec.enabled {
            "on (not observed yet)"
        } else {
            "off"
        }
        .to_owned();
    };
    let mut out = match tls.phase {
        TlsPhase::Off => "off".to_owned(),
        TlsPhase::Mounting => "mounting the certificate (not offered yet)".to_owned(),
        TlsPhase::Offered => "offered, not required".to_owned(),
        TlsPhase::Required => "required for replication, verify-full".to_owned(),
    };
    if spec.enabled && spec.require_for_clients && tls.phase == TlsPhase::Required {
        out.push_str(" and clients");
    }
    if let Some(secret) = tls.secret.as_ref().filter(|_| tls.phase.mounted()) {
        out.push_str(&format!(", Secret {secret}"));
    }
    match (spec.enabled, tls.phase) {
        (true, TlsPhase::Required) | (false, TlsPhase::Off) => {}
        (true, _) => out.push_str(" (being turned on)"),
        (false, _) => out.push_str(" (being turned off)"),
    }
    out
}

pub fn render(
    pgc: &PostgresCluster,
    pods: &[Pod],
    backups: &[PostgresBackup],
    now: Timestamp,
) -> String {
    let mut out = String::new();
    let status = pgc.status.clone().unwrap_or_default();
    let spec = &pgc.spec;
    let phase = status
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Unknown".to_owned());
    let _ = writeln!(
        out,
        "Cluster {}/{}: {phase}, {} ready",
        pgc.namespace().unwrap_or_default(),
        pgc.name_any(),
        status
            .ready
            .clone()
            .unwrap_or_else(|| format!("0/{}", spec.replicas)),
    );
    let mut facts = vec![
        vec![
            "Primary".to_owned(),
            or_dash(status.current_primary.clone()),
        ],
        vec!["Image".to_owned(), spec.image.clone()],
        vec![
            "Replication".to_owned(),
            match &status.synchronous {
                Some(sync) => format!(
                    "{:?}, quorum {} of [{}]",
                    spec.replication.mode,
                    sync.quorum,
                    sync.standbys.join(", ")
                ),
                None => format!("{:?}", spec.replication.mode),
            }
            .to_lowercase(),
        ],
        vec![
            "Storage".to_owned(),
            format!(
                "{} per instance ({})",
                spec.storage.size,
                spec.storage
                    .storage_class_name
                    .as_deref()
                    .unwrap_or("default StorageClass")
            ),
        ],
    ];
    facts.push(vec!["TLS".to_owned(), tls_fact(pgc)]);
    if let Some(pooler) = &spec.pooler {
        facts.push(vec![
            "Pooler".to_owned(),
            format!(
                "{} PgBouncer, {} pooling, Service {}",
                pooler.instances,
                format!("{:?}", pooler.pool_mode).to_lowercase(),
                ordinal_crds::names::pooler(&pgc.name_any())
            ),
        ]);
    }
    if let Some(target) = &status.target_primary {
        facts.push(vec!["Promoting".to_owned(), target.clone()]);
    }
    if let Some(lsn) = &status.primary_lsn {
        facts.push(vec!["Primary LSN".to_owned(), lsn.clone()]);
    }
    out.push_str(&table(&facts));

    // Instances: the failover loop's last probe, with each pod's state.
    out.push_str("\nInstances\n");
    let mut rows = vec![
        [
            "NAME", "ROLE", "READY", "TIMELINE", "LSN", "LAG", "NODE", "POD",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect::<Vec<_>>(),
    ];
    let mut names: Vec<String> = status.instances.iter().map(|i| i.pod.clone()).collect();
    for pod in pods {
        if !names.contains(&pod.name_any()) {
            names.push(pod.name_any());
        }
    }
    names.sort_by_key(|n| {
        n.rsplit('-')
            .next()
            .and_then(|o| o.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    });
    for name in names {
        let instance = status.instances.iter().find(|i| i.pod == name);
        let pod = pods.iter().find(|p| p.name_any() == name);
        let role = match instance.map(|i| i.role) {
            Some(Role::Primary) => "primary",
            Some(Role::Replica) => "replica",
            _ => "-",
        };
        let lag = instance
            .and_then(|i| {
                if i.role == Role::Primary {
                    return None;
                }
                Some(match (i.lag_bytes, i.lag_seconds) {
                    (Some(b), Some(s)) => format!("{} / {s:.1}s", bytes(b.max(0) as u64)),
                    (Some(b), None) => bytes(b.max(0) as u64),
                    _ => "unknown".to_owned(),
                })
            })
            .unwrap_or_else(|| "-".to_owned());
        let pod_state = match pod {
            None => "missing".to_owned(),
            Some(p) if p.metadata.deletion_timestamp.is_some() => "Terminating".to_owned(),
            Some(p) => {
                let status = p.status.as_ref();
                let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
                let restarts: i32 = status
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(|c| c.iter().map(|c| c.restart_count).sum())
                    .unwrap_or(0);
                if restarts > 0 {
                    format!("{phase}, {restarts} restarts")
                } else {
                    phase
                }
            }
        };
        rows.push(vec![
            name.clone(),
            role.to_owned(),
            instance
                .map(|i| if i.ready { "yes" } else { "no" })
                .unwrap_or("-")
                .to_owned(),
            or_dash(instance.and_then(|i| i.timeline).map(|t| t.to_string())),
            or_dash(instance.and_then(|i| i.lsn.clone())),
            lag,
            or_dash(pod.and_then(|p| p.spec.as_ref()?.node_name.clone())),
            pod_state,
        ]);
    }
    out.push_str(&table(&rows));

    out.push_str("\nLast failover\n");
    match &status.last_failover {
        None => out.push_str("  none\n"),
        Some(f) => {
            let _ = writeln!(
                out,
                "  {} -> {} at {} ({}), {:.1}s: {}",
                f.from,
                f.to,
                f.time.0,
                ago(f.time.0, now),
                f.duration_seconds,
                f.reason
            );
            let lost = match f.lost_bytes {
                Some(0) => "no WAL lost".to_owned(),
                Some(n) => format!("{} of WAL lost", bytes(n.max(0) as u64)),
                None => "WAL lost unknown".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {lost}; detect {:.1}s, decide {:.1}s, fence {:.1}s, promote {:.1}s, publish {:.1}s",
                f.phases.detect,
                f.phases.decide,
                f.phases.fence,
                f.phases.promote,
                f.phases.publish
            );
        }
    }

    out.push_str("\nConditions\n");
    let mut rows = Vec::new();
    for c in &status.conditions {
        rows.push(vec![
            format!("  {}", c.type_),
            c.status.clone(),
            c.reason.clone(),
            c.message.chars().take(160).collect(),
        ]);
    }
    out.push_str(&table(&rows));

    if spec.backup.is_some() || !backups.is_empty() {
        out.push_str("\nBackups\n");
        if let Some(archive) = &status.archive {
            let _ = writeln!(
                out,
                "  WAL archive: last {} at {}, {} failures{}",
                or_dash(archive.last_archived_wal.clone()),
                archive
                    .last_archived_time
                    .as_deref()
                    .map(|t| when(t, now))
                    .unwrap_or_else(|| "-".to_owned()),
                archive.failures,
                archive
                    .last_error
                    .as_deref()
                    .map(|e| format!("; last error: {}", e.chars().take(160).collect::<String>()))
                    .unwrap_or_default()
            );
        }
        if let Some(summary) = &status.backups {
            let _ = writeln!(
                out,
                "  {} completed; recoverable from {}",
                summary.completed,
                or_dash(summary.first_recoverability_point.clone())
            );
        }
        let mut sorted: Vec<&PostgresBackup> = backups.iter().collect();
        sorted.sort_by_key(|b| {
            b.status
                .as_ref()
                .and_then(|s| s.started_at.clone())
                .unwrap_or_default()
        });
        let mut rows = vec![
            ["  NAME", "PHASE", "ID", "COMPLETED", "SIZE", "VERIFIED"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        ];
        for b in sorted.iter().rev().take(10) {
            let s = b.status.clone().unwrap_or_default();
            rows.push(vec![
                format!("  {}", b.name_any()),
                match s.phase {
                    Some(BackupPhase::Failed) => format!(
                        "Failed: {}",
                        s.message
                            .unwrap_or_default()
                            .chars()
                            .take(80)
                            .collect::<String>()
                    ),
                    Some(p) => format!("{p:?}"),
                    None => "-".to_owned(),
                },
                or_dash(s.id.clone()),
                s.completed_at
                    .as_deref()
                    .map(|t| when(t, now))
                    .unwrap_or_else(|| "-".to_owned()),
                or_dash(s.data_bytes.map(bytes)),
                or_dash(s.verification.as_ref().map(|v| format!("{:?}", v.phase))),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests;
