//! The operator's Prometheus metrics.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Metrics fed by the controller.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconcile_duration: HistogramVec,
    pub reconcile_errors: IntCounterVec,
}

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
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        Ok(Self {
            registry,
            reconcile_duration,
            reconcile_errors,
        })
    }

    /// Removes every series of a deleted cluster.
    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        let _ = self
            .reconcile_duration
            .remove_label_values(&[namespace, cluster]);
        for reason in crate::Error::CATEGORIES {
            let _ = self
                .reconcile_errors
                .remove_label_values(&[namespace, cluster, reason]);
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
