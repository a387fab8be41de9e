use k8s_openapi::jiff::Timestamp;
use ordinal_crds::{PostgresBackup, PostgresCluster};
use serde_json::json;

use super::*;

fn now() -> Timestamp {
    "2026-12-06T04:00:00Z".parse().expect("time")
}

fn cluster() -> PostgresCluster {
    serde_json::from_value(json!({
        "apiVersion": "ordinal.dev/v1alpha1", "kind": "PostgresCluster",
        "metadata": {"name": "db", "namespace": "prod"},
        "spec": {"replicas": 3, "image": "postgres:17.2", "storage": {"size": "10Gi"},
                 "replication": {"mode": "quorum", "quorum": 1},
                 "backup": {"s3": {"bucket": "b"}, "credentialsSecret": "store"}},
        "status": {
            "phase": "Healthy", "ready": "3/3", "currentPrimary": "db-1", "epoch": 2,
            "primaryLsn": "0/5000060",
            "synchronous": {"quorum": 1, "standbys": ["db-0", "db-2"]},
            "instances": [
                {"pod": "db-0", "role": "Replica", "ready": true, "lsn": "0/5000060", "lagBytes": 0, "lagSeconds": 0.0, "timeline": 2},
                {"pod": "db-1", "role": "Primary", "ready": true, "lsn": "0/5000060", "timeline": 2},
                {"pod": "db-2", "role": "Replica", "ready": false, "lsn": "0/4000000", "lagBytes": 16777312, "lagSeconds": 12.25, "timeline": 2},
            ],
            "lastFailover": {"time": "2026-12-06T03:55:00Z", "from": "db-0", "to": "db-1",
                             "reason": "primary db-0 was deleted", "durationSeconds": 1.8,
                             "lostBytes": 0,
                             "phases": {"detect": 0.1, "decide": 0.2, "fence": 0.3, "promote": 0.9, "publish": 0.3}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "AllInstancesReady",
                            "message": "3/3 instances ready", "lastTransitionTime": "2026-12-06T03:56:00Z"}],
            "archive": {"lastArchivedWal": "000000020000000000000005", "lastArchivedTime": "2026-12-06T03:59:00Z", "lagSeconds": 0, "failures": 0},
            "backups": {"completed": 1, "firstRecoverabilityPoint": "2026-12-06T01:00:00Z"},
            "tls": {"phase": "Offered", "secret": "db-server"}
        }
    }))
    .expect("cluster")
}

fn pod(name: &str, node: &str, phase: &str, restarts: i32) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "prod"},
        "spec": {"nodeName": node, "containers": [{"name": "postgres"}]},
        "status": {"phase": phase, "containerStatuses": [{"name": "postgres", "restartCount": restarts, "ready": true, "image": "i", "imageID": ""}]}
    }))
    .expect("pod")
}

fn backup(name: &str, started: &str, phase: &str) -> PostgresBackup {
    serde_json::from_value(json!({
        "apiVersion": "ordinal.dev/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": {"cluster": "db"},
        "status": {"phase": phase, "id": "20261206T010000Z", "startedAt": started,
                   "completedAt": "2026-12-06T01:00:30Z", "dataBytes": 24117248,
                   "verification": {"phase": "Passed"}}
    }))
    .expect("backup")
}

#[test]
fn the_report_says_members_roles_lag_failover_and_backups() {
    let pods = [
        pod("db-0", "node-a", "Running", 0),
        pod("db-1", "node-b", "Running", 1),
        pod("db-2", "node-c", "Running", 0),
        pod("db-3", "node-a", "Pending", 0),
    ];
    let report = render(
        &cluster(),
        &pods,
        &[backup("nightly", "2026-12-06T01:00:00Z", "Completed")],
        now(),
    );
    println!("{report}");
    assert!(
        report.starts_with("Cluster prod/db: Healthy, 3/3 ready\n"),
        "{report}"
    );
    assert!(
        report.contains("Replication   quorum, quorum 1 of [db-0, db-2]"),
        "{report}"
    );
    // The table's columns line up.
    let lines: Vec<&str> = report.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("NAME"))
        .expect("header");
    let lag = lines[header].find("LAG").expect("LAG column");
    assert!(
        lines[header + 1].starts_with("db-0   replica   yes"),
        "{report}"
    );
    assert_eq!(&lines[header + 1][lag..lag + 2], "0B");
    assert!(
        lines[header + 2].starts_with("db-1   primary   yes"),
        "{report}"
    );
    assert!(
        lines[header + 2].contains("Running, 1 restarts"),
        "{report}"
    );
    assert!(lines[header + 3].contains("16.0MiB / 12.2s"), "{report}");
    assert!(
        lines[header + 4].starts_with("db-3   -"),
        "a pod the probes have not seen: {report}"
    );
    assert!(lines[header + 4].contains("Pending"), "{report}");
    assert!(
        report.contains(
            "db-0 -> db-1 at 2026-12-06T03:55:00Z (5m0s ago), 1.8s: primary db-0 was deleted"
        ),
        "{report}"
    );
    assert!(report.contains("no WAL lost; detect 0.1s"), "{report}");
    assert!(
        report.contains("Ready   True   AllInstancesReady   3/3 instances ready"),
        "{report}"
    );
    assert!(
        report.contains("WAL archive: last 000000020000000000000005 at 2026-12-06T03:59:00Z (60s ago), 0 failures"),
        "{report}"
    );
    assert!(
        report.contains("nightly   Completed   20261206T010000Z"),
        "{report}"
    );
    assert!(report.contains("23.0MiB   Passed"), "{report}");
    assert!(
        report.contains("TLS           offered, not required, Secret db-server (being turned on)"),
        "{report}"
    );
}

#[test]
fn a_new_cluster_says_what_it_lacks() {
    let pgc: PostgresCluster = serde_json::from_value(json!({
        "apiVersion": "ordinal.dev/v1alpha1", "kind": "PostgresCluster",
        "metadata": {"name": "db", "namespace": "prod"},
        "spec": {"storage": {"size": "1Gi"}}
    }))
    .expect("cluster");
    let report = render(&pgc, &[], &[], now());
    assert!(
        report.starts_with("Cluster prod/db: Unknown, 0/3 ready"),
        "{report}"
    );
    assert!(report.contains("Primary       -"), "{report}");
    assert!(
        report.contains("TLS           on (not observed yet)"),
        "{report}"
    );
    assert!(report.contains("Last failover\n  none"), "{report}");
    assert!(
        !report.contains("Backups"),
        "no backup configured: {report}"
    );
}

#[test]
fn sizes_and_ages_read_like_kubectl() {
    assert_eq!(bytes(512), "512B");
    assert_eq!(bytes(1536), "1.5KiB");
    assert_eq!(bytes(10 * 1024 * 1024 * 1024), "10.0GiB");
    let t = |s: &str| s.parse::<Timestamp>().expect("time");
    assert_eq!(ago(t("2026-12-06T03:59:30Z"), now()), "30s ago");
    assert_eq!(ago(t("2026-12-06T01:30:00Z"), now()), "2h30m ago");
    assert_eq!(ago(t("2026-12-01T00:00:00Z"), now()), "5d4h ago");
    assert_eq!(
        ago(t("2026-12-06T04:00:10Z"), now()),
        "0s ago",
        "a clock ahead is now"
    );
}
