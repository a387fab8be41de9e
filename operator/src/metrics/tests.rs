use std::collections::BTreeSet;

use ordinal_crds::{FailoverPhases, FailoverRecord, InstanceStatus, Role};

use super::*;

fn instance(pod: &str, role: Role) -> InstanceStatus {
    InstanceStatus {
        pod: pod.to_owned(),
        role,
        ready: role != Role::Unknown,
        lsn: Some("0/3000000".to_owned()),
        lag_bytes: Some(if role == Role::Primary { 0 } else { 128 }),
        lag_seconds: Some(0.0),
        timeline: Some(2),
        ip: None,
        ssl: None,
        upstream_sslmode: None,
    }
}

fn record() -> FailoverRecord {
    FailoverRecord {
        time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
        from: "db-0".to_owned(),
        to: "db-1".to_owned(),
        reason: "test".to_owned(),
        duration_seconds: 0.5,
        old_primary_lsn: None,
        promoted_lsn: None,
        lost_bytes: Some(0),
        phases: FailoverPhases::default(),
    }
}

fn families(m: &Metrics) -> BTreeSet<(String, String)> {
    m.registry
        .gather()
        .iter()
        .filter(|f| !f.get_metric().is_empty())
        .map(|f| {
            (
                f.name().to_owned(),
                format!("{:?}", f.get_field_type()).to_lowercase(),
            )
        })
        .collect()
}

fn fed() -> Metrics {
    let m = Metrics::new().expect("metrics");
    m.observe_reconcile("ns", "db", 0.01, Some("apply"));
    m.observe_instances(
        "ns",
        "db",
        3,
        0.004,
        &[
            instance("db-0", Role::Primary),
            instance("db-1", Role::Replica),
            instance("db-2", Role::Replica),
        ],
    );
    m.record_failover("ns", "db", &record());
    m.record_backup("ns", "db", 1_796_000_000.0, 42.5);
    m.record_verification("ns", "db", 1_796_000_000.0, true, Some(3.25));
    m.observe_archiver("ns", "db", Some(&archiver(3, 12.0)));
    m.observe_unschedulable("ns", "db", &["db-1".to_owned()]);
    m.observe_certificate("ns", "db", Some(1_807_776_000));
    m
}

#[test]
fn the_certificate_expiry_is_a_series_while_tls_is_on() {
    let m = Metrics::new().expect("metrics");
    m.observe_certificate("ns", "db", Some(1_807_776_000));
    assert!(m.render().contains(
        "ordinal_tls_certificate_expiry_timestamp_seconds{cluster=\"db\",namespace=\"ns\"} 1807776000"
    ));
    m.observe_certificate("ns", "db", None);
    assert!(
        !m.render()
            .contains("ordinal_tls_certificate_expiry_timestamp_seconds{")
    );
    m.observe_certificate("ns", "db", Some(1));
    m.forget_cluster("ns", "db");
    assert!(
        !m.render()
            .contains("ordinal_tls_certificate_expiry_timestamp_seconds{")
    );
}

fn archiver(failed: i64, lag_seconds: f64) -> crate::failover::pg::Archiver {
    crate::failover::pg::Archiver {
        failed,
        lag_seconds,
        ..Default::default()
    }
}

/// The archiver's own count is history at the first look, and starts
/// again at 0 on another primary: the counter only ever adds what failed
/// since the last look.
#[test]
fn archive_failures_count_what_failed_since_the_last_look() {
    let m = Metrics::new().expect("metrics");
    let failures = || m.archive_failures.with_label_values(&["ns", "db"]).get();
    m.observe_archiver("ns", "db", Some(&archiver(7, 0.0)));
    assert_eq!(failures(), 0);
    m.observe_archiver("ns", "db", Some(&archiver(9, 30.0)));
    assert_eq!(failures(), 2);
    // A promoted replica counts from 0.
    m.observe_archiver("ns", "db", Some(&archiver(1, 0.0)));
    assert_eq!(failures(), 3);
    m.observe_archiver("ns", "db", None);
    assert_eq!(failures(), 3);
    assert!(
        m.render()
            .contains("ordinal_wal_archive_lag_seconds{cluster=\"db\",namespace=\"ns\"} 0")
    );
}

/// A pod the scheduler places again loses its series; a deleted
/// cluster loses them all.
#[test]
fn unschedulable_pods_have_a_series_while_they_are() {
    let m = Metrics::new().expect("metrics");
    let series = |pod: &str| {
        format!("ordinal_instance_unschedulable{{cluster=\"db\",namespace=\"ns\",pod=\"{pod}\"}} 1")
    };
    m.observe_unschedulable("ns", "db", &["db-1".to_owned(), "db-2".to_owned()]);
    assert!(m.render().contains(&series("db-1")));
    assert!(m.render().contains(&series("db-2")));
    m.observe_unschedulable("ns", "db", &["db-2".to_owned()]);
    assert!(!m.render().contains(&series("db-1")));
    assert!(m.render().contains(&series("db-2")));
    m.forget_cluster("ns", "db");
    assert!(!m.render().contains("ordinal_instance_unschedulable{"));
}

#[test]
fn exposes_exactly_the_documented_series() {
    let m = fed();
    let expected: BTreeSet<(String, String)> = DOCUMENTED
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(families(&m), expected);
    for family in m.registry.gather() {
        assert!(!family.help().is_empty(), "{} has help", family.name());
        for metric in family.get_metric() {
            let labels: Vec<&str> = metric.get_label().iter().map(|l| l.name()).collect();
            assert!(
                labels.starts_with(&["cluster", "namespace"]),
                "{}: {labels:?}",
                family.name()
            );
        }
    }
    let page = m.render();
    assert!(
        page.contains(
            "ordinal_instance_is_primary{cluster=\"db\",namespace=\"ns\",pod=\"db-0\"} 1"
        )
    );
    assert!(page.contains(
        "ordinal_replication_lag_bytes{cluster=\"db\",namespace=\"ns\",pod=\"db-1\"} 128"
    ));
    assert!(page.contains("ordinal_cluster_replicas_ready{cluster=\"db\",namespace=\"ns\"} 3"));
    assert!(page.contains("ordinal_failovers_total{cluster=\"db\",namespace=\"ns\"} 1"));
    assert!(page.contains(
        "ordinal_reconcile_errors_total{cluster=\"db\",namespace=\"ns\",reason=\"apply\"} 1"
    ));
    assert!(page.contains(
        "ordinal_reconcile_errors_total{cluster=\"db\",namespace=\"ns\",reason=\"status\"} 0"
    ));
    assert!(
        page.contains(
            "ordinal_wal_lsn_bytes{cluster=\"db\",namespace=\"ns\",pod=\"db-0\"} 50331648"
        )
    );
}

#[test]
fn a_removed_pod_loses_its_series() {
    let m = fed();
    m.observe_instances(
        "ns",
        "db",
        2,
        0.004,
        &[
            instance("db-0", Role::Primary),
            instance("db-1", Role::Replica),
        ],
    );
    let page = m.render();
    assert!(!page.contains("pod=\"db-2\""), "{page}");
    assert!(page.contains("pod=\"db-1\""));
}

#[test]
fn a_deleted_cluster_loses_every_series() {
    let m = fed();
    m.observe_instances("other", "pg", 1, 0.004, &[instance("pg-0", Role::Primary)]);
    m.forget_cluster("ns", "db");
    let page = m.render();
    assert!(!page.contains("cluster=\"db\""), "{page}");
    assert!(page.contains("cluster=\"pg\""), "other clusters stay");
}

#[test]
fn an_unknown_instance_is_down_without_lag_series() {
    let m = Metrics::new().expect("metrics");
    let mut down = instance("db-1", Role::Unknown);
    down.lag_bytes = None;
    down.lag_seconds = None;
    m.observe_instances(
        "ns",
        "db",
        2,
        0.004,
        &[instance("db-0", Role::Primary), down],
    );
    let page = m.render();
    assert!(page.contains("ordinal_instance_up{cluster=\"db\",namespace=\"ns\",pod=\"db-1\"} 0"));
    assert!(
        !page.contains(
            "ordinal_replication_lag_bytes{cluster=\"db\",namespace=\"ns\",pod=\"db-1\"}"
        )
    );
    assert!(page.contains("ordinal_cluster_replicas_ready{cluster=\"db\",namespace=\"ns\"} 1"));
}

#[test]
fn an_unknown_loss_leaves_no_lost_bytes_series() {
    let m = fed();
    let series = "ordinal_failover_lost_bytes{cluster=\"db\",namespace=\"ns\"}";
    assert!(m.render().contains(&format!("{series} 0")));
    let unknown = FailoverRecord {
        lost_bytes: None,
        ..record()
    };
    m.record_failover("ns", "db", &unknown);
    let page = m.render();
    assert!(
        !page.contains(series),
        "no stale 0 after an unknown loss: {page}"
    );
    assert!(page.contains("ordinal_failovers_total{cluster=\"db\",namespace=\"ns\"} 2"));
}
