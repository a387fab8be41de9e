//! The operator's Prometheus metrics.

use ordinal_crds::{FailoverRecord, InstanceStatus, Role};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Metrics fed by the controller.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconcile_duration: HistogramVec,
    pub reconcile_errors: IntCounterVec,
    pub instance_up: IntGaugeVec,
    pub instance_is_primary: IntGaugeVec,
    pub lag_bytes: IntGaugeVec,
    pub lag_seconds: GaugeVec,
    pub timeline: IntGaugeVec,
    pub wal_lsn_bytes: IntGaugeVec,
    pub failovers: IntCounterVec,
    pub last_failover_seconds: GaugeVec,
    pub failover_phase_seconds: HistogramVec,
    pub failover_lost_bytes: IntGaugeVec,
}

const INSTANCE: &[&str] = &["namespace", "cluster", "pod"];
const CLUSTER: &[&str] = &["namespace", "cluster"];

impl Metrics {
    /// Creates and registers the metrics. Fails only on a programming error
    /// (a duplicate or malformed metric), at start-up.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "ordinal_reconcile_duration_seconds",
                "Duration of one reconcile of a PostgresCluster",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["namespace", "cluster"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "ordinal_reconcile_errors_total",
                "Reconciles of a PostgresCluster that failed, by reason",
            ),
            &["namespace", "cluster", "reason"],
        )?;
        let instance_up = IntGaugeVec::new(
            Opts::new(
                "ordinal_instance_up",
                "1 when the operator's probe of the instance succeeds",
            ),
            INSTANCE,
        )?;
        let instance_is_primary = IntGaugeVec::new(
            Opts::new(
                "ordinal_instance_is_primary",
                "1 when the instance runs as the writable primary",
            ),
            INSTANCE,
        )?;
        let lag_bytes = IntGaugeVec::new(
            Opts::new(
                "ordinal_replication_lag_bytes",
                "Primary's current WAL position minus the replica's replayed position",
            ),
            INSTANCE,
        )?;
        let lag_seconds = GaugeVec::new(
            Opts::new(
                "ordinal_replication_lag_seconds",
                "0 when the replica replayed all it received, else the age of its last replayed transaction",
            ),
            INSTANCE,
        )?;
        let timeline = IntGaugeVec::new(
            Opts::new("ordinal_instance_timeline", "Timeline of the instance"),
            INSTANCE,
        )?;
        let wal_lsn_bytes = IntGaugeVec::new(
            Opts::new(
                "ordinal_wal_lsn_bytes",
                "WAL position of the instance (current on the primary, received on replicas) in bytes",
            ),
            INSTANCE,
        )?;
        let failovers = IntCounterVec::new(
            Opts::new(
                "ordinal_failovers_total",
                "Promotions (failovers and switchovers) of the cluster",
            ),
            CLUSTER,
        )?;
        let last_failover_seconds = GaugeVec::new(
            Opts::new(
                "ordinal_last_failover_duration_seconds",
                "Duration of the last failover, from the first sign of trouble to the published primary",
            ),
            CLUSTER,
        )?;
        let failover_phase_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ordinal_failover_phase_seconds",
                "Duration of each failover phase",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            &["namespace", "cluster", "phase"],
        )?;
        let failover_lost_bytes = IntGaugeVec::new(
            Opts::new(
                "ordinal_failover_lost_bytes",
                "Upper bound of the WAL bytes lost at the last failover (0 in quorum mode)",
            ),
            CLUSTER,
        )?;
        for collector in [
            Box::new(reconcile_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(instance_up.clone()),
            Box::new(instance_is_primary.clone()),
            Box::new(lag_bytes.clone()),
            Box::new(lag_seconds.clone()),
            Box::new(timeline.clone()),
            Box::new(wal_lsn_bytes.clone()),
            Box::new(failovers.clone()),
            Box::new(last_failover_seconds.clone()),
            Box::new(failover_phase_seconds.clone()),
            Box::new(failover_lost_bytes.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(Self {
            registry,
            reconcile_duration,
            reconcile_errors,
            instance_up,
            instance_is_primary,
            lag_bytes,
            lag_seconds,
            timeline,
            wal_lsn_bytes,
            failovers,
            last_failover_seconds,
            failover_phase_seconds,
            failover_lost_bytes,
        })
    }

    /// Removes every series of a deleted cluster.
    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        let _ = self
            .reconcile_duration
            .remove_label_values(&[namespace, cluster]);
        let _ = self
            .failover_lost_bytes
            .remove_label_values(&[namespace, cluster]);
        let _ = self.failovers.remove_label_values(&[namespace, cluster]);
        let _ = self
            .last_failover_seconds
            .remove_label_values(&[namespace, cluster]);
        for phase in ["detect", "decide", "fence", "promote", "publish"] {
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

    /// Sets the per-instance series from the failover loop's probes.
    pub fn observe_instances(&self, namespace: &str, cluster: &str, instances: &[InstanceStatus]) {
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

    /// Counts a promotion and its phases.
    pub fn record_failover(&self, namespace: &str, cluster: &str, record: &FailoverRecord) {
        let labels = [namespace, cluster];
        self.failovers.with_label_values(&labels).inc();
        self.last_failover_seconds
            .with_label_values(&labels)
            .set(record.duration_seconds);
        let p = &record.phases;
        for (phase, seconds) in [
            ("detect", p.detect),
            ("decide", p.decide),
            ("fence", p.fence),
            ("promote", p.promote),
            ("publish", p.publish),
        ] {
            self.failover_phase_seconds
                .with_label_values(&[namespace, cluster, phase])
                .observe(seconds);
        }
        if let Some(lost) = record.lost_bytes {
            self.failover_lost_bytes
                .with_label_values(&labels)
                .set(lost);
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
mod tests {
    use super::*;

    #[test]
    fn exposes_reconcile_series_and_forgets_deleted_clusters() {
        let m = Metrics::new().expect("metrics");
        m.reconcile_duration
            .with_label_values(&["ns", "db"])
            .observe(0.01);
        m.reconcile_errors
            .with_label_values(&["ns", "db", "apply"])
            .inc();
        let page = m.render();
        assert!(page.contains(
            "ordinal_reconcile_duration_seconds_count{cluster=\"db\",namespace=\"ns\"} 1"
        ));
        assert!(page.contains(
            "ordinal_reconcile_errors_total{cluster=\"db\",namespace=\"ns\",reason=\"apply\"} 1"
        ));
        m.forget_cluster("ns", "db");
        let page = m.render();
        assert!(!page.contains("cluster=\"db\""), "{page}");
    }
}
