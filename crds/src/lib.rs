//! The `PostgresCluster` custom resource and the names Ordinal shares between
//! the operator and the init binary.

mod backup;
mod cluster;
pub mod conninfo;
pub mod names;
#[cfg(feature = "postgres-tls")]
pub mod pgtls;
mod reference;
mod status;

pub use backup::*;
pub use cluster::*;
pub use reference::crd_reference;
pub use status::*;

use kube::{CustomResourceExt, ResourceExt};

/// The CRD as YAML: what `ordinal-operator crd` prints and
/// `deploy/crds/postgresclusters.ordinal.dev.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&PostgresCluster::crd())
}

/// The PostgresBackup CRD as YAML (`ordinal-operator crd --backup`,
/// `deploy/crds/postgresbackups.ordinal.dev.yaml`).
pub fn backup_crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&PostgresBackup::crd())
}

/// A byte count as people read it (`16.0MiB`, `512B`): lag, sizes.
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

impl PostgresCluster {
    /// The headless Service giving pods their stable DNS names.
    pub fn headless_service_name(&self) -> String {
        self.spec
            .service_name
            .clone()
            .unwrap_or_else(|| names::headless_service(&self.name_any()))
    }

    /// The Secret holding the superuser's credentials.
    pub fn superuser_secret_name(&self) -> String {
        self.spec
            .superuser_secret
            .clone()
            .unwrap_or_else(|| names::superuser_secret(&self.name_any()))
    }

    /// The Secret holding the replication role's credentials.
    pub fn replication_secret_name(&self) -> String {
        self.spec
            .replication_secret
            .clone()
            .unwrap_or_else(|| names::replication_secret(&self.name_any()))
    }

    /// The Secret with the servers' certificate (`tls.crt`, `tls.key`,
    /// `ca.crt`), None while TLS is off.
    pub fn server_tls_secret_name(&self) -> Option<String> {
        let tls = &self.spec.tls;
        tls.enabled.then(|| {
            tls.server_secret
                .clone()
                .unwrap_or_else(|| names::server_tls_secret(&self.name_any()))
        })
    }

    /// TLS as the reconciler last recorded it on the running instances
    /// (None before its first look).
    pub fn tls_status(&self) -> Option<&TlsStatus> {
        self.status.as_ref()?.tls.as_ref()
    }

    /// The instances fenced by [`names::ANNOTATION_FENCED`], in its order.
    pub fn fenced_instances(&self) -> Vec<String> {
        names::parse_fenced(self.annotations().get(names::ANNOTATION_FENCED))
    }

    /// The bootstrap primary: ordinal 0. Only used before any status exists.
    pub fn bootstrap_primary(&self) -> String {
        names::pod(&self.name_any(), 0)
    }

    /// minAvailable of the PodDisruptionBudget, or None when the cluster
    /// gets no PDB (a single instance: a PDB would block every drain).
    pub fn pdb_min_available(&self) -> Option<i32> {
        if self.spec.replicas <= 1 {
            return None;
        }
        Some(
            self.spec
                .pod_disruption_budget
                .min_available
                .unwrap_or(self.spec.replicas - 1),
        )
    }
}

#[cfg(test)]
mod tests;

/// The text under `key` of a Secret, without the trailing newline a
/// Secret written from a file often has; None when absent or not UTF-8.
pub fn secret_text(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    std::str::from_utf8(&bytes.0)
        .ok()
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
}
