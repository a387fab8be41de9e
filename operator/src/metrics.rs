//! The operator's Prometheus metrics (DESIGN §6). Series of a deleted pod
//! or cluster are removed, not left stale.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use ordinal_crds::{FailoverRecord, InstanceStatus, Role};
use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

const INSTANCE: &[&str] = &["namespace", "cluster", "pod"];
const CLUSTER: &[&str] = &["namespace", "cluster"];
const PHASES: [&str; 5] = ["detect", "decide", "fence", "promote", "publish"];

/// The pods with series, per (namespace, cluster).
type PodsByCluster = HashMap<(String, String), BTreeSet<String>>;

/// Every metric Ordinal exposes, with its type: the documented list.
pub const DOCUMENTED: &[(&str, &str)] = &[
    ("ordinal_instance_up", "gauge"),
    ("ordinal_instance_is_primary", "gauge"),
    ("ordinal_replication_lag_bytes", "gauge"),
    ("ordinal_replication_lag_seconds", "gauge"),
    ("ordinal_instance_timeline", "gauge"),
    ("ordinal_wal_lsn_bytes", "gauge"),
    ("ordinal_cluster_replicas_desired", "gauge"),
    ("ordinal_cluster_replicas_ready", "gauge"),
    ("ordinal_failovers_total", "counter"),
    ("ordinal_last_failover_duration_seconds", "gauge"),
    ("ordinal_failover_phase_seconds", "histogram"),
    ("ordinal_failover_lost_bytes", "gauge"),
    ("ordinal_reconcile_duration_seconds", "histogram"),
    ("ordinal_reconcile_errors_total", "counter"),
    ("ordinal_probe_duration_seconds", "histogram"),
    ("ordinal_backup_last_success_timestamp_seconds", "gauge"),
    ("ordinal_backup_duration_seconds", "gauge"),
    ("ordinal_backup_verification_passed", "gauge"),
    ("ordinal_backup_restore_seconds", "gauge"),
    ("ordinal_wal_archive_lag_seconds", "gauge"),
    ("ordinal_wal_archive_failures_total", "counter"),
    ("ordinal_instance_unschedulable", "gauge"),
    ("ordinal_tls_certificate_expiry_timestamp_seconds", "gauge"),
];

/// Metrics fed by the controller and the failover loops.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconcile_duration: HistogramVec,
    pub reconcile_errors: IntCounterVec,
    pub probe_duration: HistogramVec,
    pub instance_up: IntGaugeVec,
    pub instance_is_primary: IntGaugeVec,
    pub lag_bytes: IntGaugeVec,
    pub lag_seconds: GaugeVec,
    pub timeline: IntGaugeVec,
    pub wal_lsn_bytes: IntGaugeVec,
    pub replicas_desired: IntGaugeVec,
    pub replicas_ready: IntGaugeVec,
    pub failovers: IntCounterVec,
    pub last_failover_seconds: GaugeVec,
    pub failover_phase_seconds: HistogramVec,
    pub failover_lost_bytes: IntGaugeVec,
    pub backup_last_success: GaugeVec,
    pub backup_duration: GaugeVec,
    pub verification_passed: IntGaugeVec,
    pub restore_seconds: GaugeVec,
    /// The completion time of the backup whose verification sets the
    /// two series above, per (namespace, cluster).
    verified_seen: Arc<Mutex<HashMap<(String, String), f64>>>,
    pub archive_lag: GaugeVec,
    pub archive_failures: IntCounterVec,
    /// The archiver's failed_count last seen, per (namespace, cluster).
    archive_failed_seen: Arc<Mutex<HashMap<(String, String), i64>>>,
    pub unschedulable: IntGaugeVec,
    pub certificate_expiry: IntGaugeVec,
    /// The pods with an unschedulable series, per (namespace, cluster).
    unschedulable_seen: Arc<Mutex<PodsByCluster>>,
    /// The pods with series, per (namespace, cluster).
    pods: Arc<Mutex<PodsByCluster>>,
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

impl Metrics {
    /// Creates and registers the metrics. Fails only on a programming error
    /// (a duplicate or malformed metric), at start-up.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let m = Self {
            reconcile_duration: HistogramVec::new(
                HistogramOpts::new(
                    "ordinal_reconcile_duration_seconds",
                    "Duration of one reconcile of a PostgresCluster",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                CLUSTER,
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "ordinal_reconcile_errors_total",
                    "Reconciles of a PostgresCluster that failed, by reason",
                ),
                &["namespace", "cluster", "reason"],
            )?,
            probe_duration: HistogramVec::new(
                HistogramOpts::new(
                    "ordinal_probe_duration_seconds",
                    "Duration of one round of probes of every instance of a cluster",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                CLUSTER,
            )?,
            instance_up: gauge(
                "ordinal_instance_up",
                "1 when the operator's probe of the instance succeeds",
                INSTANCE,
            )?,
            instance_is_primary: gauge(
                "ordinal_instance_is_primary",
                "1 when the instance runs as the writable primary",
                INSTANCE,
            )?,
            lag_bytes: gauge(
                "ordinal_replication_lag_bytes",
                "Primary's current WAL position minus the replica's replayed position",
                INSTANCE,
            )?,
            lag_seconds: GaugeVec::new(
                Opts::new(
                    "ordinal_replication_lag_seconds",
                    "0 when the replica replayed all it received, else the age of its last replayed transaction",
                ),
                INSTANCE,
            )?,
            timeline: gauge(
                "ordinal_instance_timeline",
                "Timeline of the instance",
                INSTANCE,
            )?,
            wal_lsn_bytes: gauge(
                "ordinal_wal_lsn_bytes",
                "WAL position of the instance (current on the primary, received on replicas) in bytes",
                INSTANCE,
            )?,
            replicas_desired: gauge(
                "ordinal_cluster_replicas_desired",
                "Instances the cluster should have (spec.replicas)",
                CLUSTER,
            )?,
            replicas_ready: gauge(
                "ordinal_cluster_replicas_ready",
                "Instances that are ready: the primary, and replicas that stream",
                CLUSTER,
            )?,
            failovers: IntCounterVec::new(
                Opts::new(
                    "ordinal_failovers_total",
                    "Promotions (failovers and switchovers) of the cluster",
                ),
                CLUSTER,
            )?,
            last_failover_seconds: GaugeVec::new(
                Opts::new(
                    "ordinal_last_failover_duration_seconds",
                    "Duration of the last failover, from the first sign of trouble to the published primary",
                ),
                CLUSTER,
            )?,
            failover_phase_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "ordinal_failover_phase_seconds",
                    "Duration of each failover phase",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
                &["namespace", "cluster", "phase"],
            )?,
            failover_lost_bytes: gauge(
                "ordinal_failover_lost_bytes",
                "WAL bytes known lost at the last failover (0 in quorum mode)",
                CLUSTER,
            )?,
            backup_last_success: GaugeVec::new(
                Opts::new(
                    "ordinal_backup_last_success_timestamp_seconds",
                    "When the cluster's last completed base backup (a PostgresBackup) completed, in Unix seconds",
                ),
                CLUSTER,
            )?,
            backup_duration: GaugeVec::new(
                Opts::new(
                    "ordinal_backup_duration_seconds",
                    "Duration of the cluster's last completed base backup, its WAL archived included",
                ),
                CLUSTER,
            )?,
            verification_passed: gauge(
                "ordinal_backup_verification_passed",
                "1 when the newest verified base backup of the cluster passed its verification (restored and checked in a throwaway pod), 0 when it failed",
                CLUSTER,
            )?,
            restore_seconds: GaugeVec::new(
                Opts::new(
                    "ordinal_backup_restore_seconds",
                    "The restore time measured by the newest verification: download, unpack and WAL replay to the archive's end",
                ),
                CLUSTER,
            )?,
            verified_seen: Arc::default(),
            archive_lag: GaugeVec::new(
                Opts::new(
                    "ordinal_wal_archive_lag_seconds",
                    "How long the primary's oldest WAL segment waiting to be archived has waited (0: none waits)",
                ),
                CLUSTER,
            )?,
            archive_failures: IntCounterVec::new(
                Opts::new(
                    "ordinal_wal_archive_failures_total",
                    "Failed attempts of the primary's archive_command, as pg_stat_archiver counts them",
                ),
                CLUSTER,
            )?,
            archive_failed_seen: Arc::default(),
            unschedulable: gauge(
                "ordinal_instance_unschedulable",
                "1 while the scheduler cannot place the instance's pod (PodScheduled False, Unschedulable); absent otherwise",
                INSTANCE,
            )?,
            unschedulable_seen: Arc::default(),
            certificate_expiry: gauge(
                "ordinal_tls_certificate_expiry_timestamp_seconds",
                "When the servers' certificate expires (unix seconds); absent while TLS is off",
                CLUSTER,
            )?,
            pods: Arc::default(),
            registry,
        };
        for collector in m.collectors() {
            m.registry.register(collector)?;
        }
        Ok(m)
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.reconcile_duration.clone()),
            Box::new(self.certificate_expiry.clone()),
            Box::new(self.reconcile_errors.clone()),
            Box::new(self.probe_duration.clone()),
            Box::new(self.instance_up.clone()),
            Box::new(self.instance_is_primary.clone()),
            Box::new(self.lag_bytes.clone()),
            Box::new(self.lag_seconds.clone()),
            Box::new(self.timeline.clone()),
            Box::new(self.wal_lsn_bytes.clone()),
            Box::new(self.replicas_desired.clone()),
            Box::new(self.replicas_ready.clone()),
            Box::new(self.failovers.clone()),
            Box::new(self.last_failover_seconds.clone()),
            Box::new(self.failover_phase_seconds.clone()),
            Box::new(self.failover_lost_bytes.clone()),
            Box::new(self.backup_last_success.clone()),
            Box::new(self.backup_duration.clone()),
            Box::new(self.verification_passed.clone()),
            Box::new(self.restore_seconds.clone()),
            Box::new(self.archive_lag.clone()),
            Box::new(self.archive_failures.clone()),
            Box::new(self.unschedulable.clone()),
        ]
    }

    /// Records one reconcile: its duration and, when it failed, the reason.
    pub fn observe_reconcile(
        &self,
        namespace: &str,
        cluster: &str,
        seconds: f64,
        error: Option<&str>,
    ) {
        self.reconcile_duration
            .with_label_values(&[namespace, cluster])
            .observe(seconds);
        // Every reason starts at 0, so that rate() sees the first error.
        for reason in crate::Error::CATEGORIES {
            let counter = self
                .reconcile_errors
                .with_label_values(&[namespace, cluster, reason]);
            if error == Some(reason) {
                counter.inc();
            }
        }
    }

    /// Sets the per-instance and per-cluster series from one round of the
    /// failover loop's probes; series of pods no longer there are removed.
    pub fn observe_instances(
        &self,
        namespace: &str,
        cluster: &str,
        desired: i32,
        probe_seconds: f64,
        instances: &[InstanceStatus],
    ) {
        self.probe_duration
            .with_label_values(&[namespace, cluster])
            .observe(probe_seconds);
        self.replicas_desired
            .with_label_values(&[namespace, cluster])
            .set(i64::from(desired));
        self.replicas_ready
            .with_label_values(&[namespace, cluster])
            .set(instances.iter().filter(|i| i.ready).count() as i64);
        // Every counter of a known cluster exists from the start at 0, so
        // that increase() sees the first failover.
        self.failovers.with_label_values(&[namespace, cluster]);
        let current: BTreeSet<String> = instances.iter().map(|i| i.pod.clone()).collect();
        let gone: Vec<String> = match self.pods.lock() {
            Ok(mut pods) => {
                let known = pods
                    .entry((namespace.to_owned(), cluster.to_owned()))
                    .or_default();
                let gone = known.difference(&current).cloned().collect();
                *known = current;
                gone
            }
            Err(_) => Vec::new(),
        };
        for pod in gone {
            self.remove_instance(namespace, cluster, &pod);
        }
        for i in instances {
            let labels = [namespace, cluster, i.pod.as_str()];
            self.instance_up
                .with_label_values(&labels)
                .set(i64::from(i.role != Role::Unknown));
            self.instance_is_primary
                .with_label_values(&labels)
                .set(i64::from(i.role == Role::Primary));
            match (i.lag_bytes, i.lag_seconds) {
                (Some(bytes), Some(seconds)) => {
                    self.lag_bytes.with_label_values(&labels).set(bytes);
                    self.lag_seconds.with_label_values(&labels).set(seconds);
                }
                _ => {
                    let _ = self.lag_bytes.remove_label_values(&labels);
                    let _ = self.lag_seconds.remove_label_values(&labels);
                }
            }
            if let Some(t) = i.timeline {
                self.timeline.with_label_values(&labels).set(t);
            }
            if let Some(lsn) = i.lsn.as_deref().and_then(parse_lsn) {
                self.wal_lsn_bytes
                    .with_label_values(&labels)
                    .set(lsn as i64);
            }
        }
    }

    fn remove_instance(&self, namespace: &str, cluster: &str, pod: &str) {
        let labels = [namespace, cluster, pod];
        let _ = self.instance_up.remove_label_values(&labels);
        let _ = self.instance_is_primary.remove_label_values(&labels);
        let _ = self.lag_bytes.remove_label_values(&labels);
        let _ = self.lag_seconds.remove_label_values(&labels);
        let _ = self.timeline.remove_label_values(&labels);
        let _ = self.wal_lsn_bytes.remove_label_values(&labels);
    }

    /// Counts a promotion and its phases.
    pub fn record_failover(&self, namespace: &str, cluster: &str, record: &FailoverRecord) {
        let labels = [namespace, cluster];
        self.failovers.with_label_values(&labels).inc();
        self.last_failover_seconds
            .with_label_values(&labels)
            .set(record.duration_seconds);
        let p = &record.phases;
        for (phase, seconds) in PHASES
            .iter()
            .zip([p.detect, p.decide, p.fence, p.promote, p.publish])
        {
            self.failover_phase_seconds
                .with_label_values(&[namespace, cluster, phase])
                .observe(seconds);
        }
        // Unknown (an unplanned loss in async mode with nothing seen
        // beyond the promoted position): no series, rather than a value
        // left from an earlier failover or a 0 that claims nothing was lost.
        match record.lost_bytes {
            Some(lost) => self
                .failover_lost_bytes
                .with_label_values(&labels)
                .set(lost),
            None => {
                let _ = self.failover_lost_bytes.remove_label_values(&labels);
            }
        }
    }

    /// Removes every series of a deleted cluster.
    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        let pods = self
            .pods
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&(namespace.to_owned(), cluster.to_owned())))
            .unwrap_or_default();
        for pod in pods {
            self.remove_instance(namespace, cluster, &pod);
        }
        let labels = [namespace, cluster];
        let _ = self.reconcile_duration.remove_label_values(&labels);
        let _ = self.probe_duration.remove_label_values(&labels);
        let _ = self.replicas_desired.remove_label_values(&labels);
        let _ = self.replicas_ready.remove_label_values(&labels);
        let _ = self.failovers.remove_label_values(&labels);
        let _ = self.last_failover_seconds.remove_label_values(&labels);
        let _ = self.failover_lost_bytes.remove_label_values(&labels);
        let _ = self.backup_last_success.remove_label_values(&labels);
        let _ = self.backup_duration.remove_label_values(&labels);
        let _ = self.verification_passed.remove_label_values(&labels);
        let _ = self.restore_seconds.remove_label_values(&labels);
        if let Ok(mut seen) = self.verified_seen.lock() {
            seen.remove(&(namespace.to_owned(), cluster.to_owned()));
        }
        let _ = self.archive_lag.remove_label_values(&labels);
        let _ = self.archive_failures.remove_label_values(&labels);
        if let Ok(mut seen) = self.archive_failed_seen.lock() {
            seen.remove(&(namespace.to_owned(), cluster.to_owned()));
        }
        self.observe_unschedulable(namespace, cluster, &[]);
        self.observe_certificate(namespace, cluster, None);
        for phase in PHASES {
            let _ = self
                .failover_phase_seconds
                .remove_label_values(&[namespace, cluster, phase]);
        }
        for reason in crate::Error::CATEGORIES {
            let _ = self
                .reconcile_errors
                .remove_label_values(&[namespace, cluster, reason]);
        }
    }

    /// When the servers' certificate expires (unix seconds); None removes
    /// the series (TLS off).
    pub fn observe_certificate(&self, namespace: &str, cluster: &str, not_after: Option<i64>) {
        let labels = [namespace, cluster];
        match not_after {
            Some(at) => self.certificate_expiry.with_label_values(&labels).set(at),
            None => {
                let _ = self.certificate_expiry.remove_label_values(&labels);
            }
        }
    }

    /// The cluster's pods the scheduler cannot place now: their series is
    /// 1, the others' removed.
    pub fn observe_unschedulable(&self, namespace: &str, cluster: &str, pods: &[String]) {
        let Ok(mut seen) = self.unschedulable_seen.lock() else {
            return;
        };
        let key = (namespace.to_owned(), cluster.to_owned());
        let now: BTreeSet<String> = pods.iter().cloned().collect();
        for gone in seen
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|p| !now.contains(*p))
        {
            let _ = self
                .unschedulable
                .remove_label_values(&[namespace, cluster, gone]);
        }
        for pod in &now {
            self.unschedulable
                .with_label_values(&[namespace, cluster, pod])
                .set(1);
        }
        if now.is_empty() {
            seen.remove(&key);
        } else {
            seen.insert(key, now);
        }
    }

    /// The primary's archiver, from a round of probes: the lag as it is,
    /// and the failures it counted since the last round (its count starts
    /// again at 0 when the server restarts or a replica is promoted).
    pub fn observe_archiver(
        &self,
        namespace: &str,
        cluster: &str,
        archiver: Option<&crate::failover::pg::Archiver>,
    ) {
        let Some(archiver) = archiver else {
            return;
        };
        let labels = [namespace, cluster];
        self.archive_lag
            .with_label_values(&labels)
            .set(archiver.lag_seconds);
        let counter = self.archive_failures.with_label_values(&labels);
        let Ok(mut seen) = self.archive_failed_seen.lock() else {
            return;
        };
        let last = seen.insert((namespace.to_owned(), cluster.to_owned()), archiver.failed);
        let new = match last {
            Some(last) if archiver.failed >= last => archiver.failed - last,
            // Counted from 0 again (another primary, a restart).
            Some(_) => archiver.failed,
            // The first look: a counter starts at 0, not at the history.
            None => 0,
        };
        counter.inc_by(new.max(0) as u64);
    }

    /// A completed base backup of the cluster: the latest one sets the
    /// series (a restarted operator sets them again from the
    /// PostgresBackups it finds).
    pub fn record_backup(&self, namespace: &str, cluster: &str, completed: f64, seconds: f64) {
        let last = self
            .backup_last_success
            .with_label_values(&[namespace, cluster]);
        if completed >= last.get() {
            last.set(completed);
            self.backup_duration
                .with_label_values(&[namespace, cluster])
                .set(seconds);
        }
    }

    /// A finished verification of a base backup completed at `completed`
    /// (Unix seconds): the newest backup's sets the series.
    pub fn record_verification(
        &self,
        namespace: &str,
        cluster: &str,
        completed: f64,
        passed: bool,
        restore_seconds: Option<f64>,
    ) {
        let Ok(mut seen) = self.verified_seen.lock() else {
            return;
        };
        let key = (namespace.to_owned(), cluster.to_owned());
        if seen.get(&key).is_some_and(|&newest| newest > completed) {
            return;
        }
        seen.insert(key, completed);
        let labels = [namespace, cluster];
        self.verification_passed
            .with_label_values(&labels)
            .set(i64::from(passed));
        match restore_seconds {
            Some(seconds) => self.restore_seconds.with_label_values(&labels).set(seconds),
            None => {
                let _ = self.restore_seconds.remove_label_values(&labels);
            }
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a metric family error
        // would be a programming error, and an empty page says so.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `1/2A` → 4294967338.
fn parse_lsn(lsn: &str) -> Option<u64> {
    let (hi, lo) = lsn.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests;
