//! Pure builders: a validated cluster in, plain Kubernetes objects out.
//! No client, no environment, no clock.

pub mod backup;
mod config_map;
pub mod job;
pub mod network_policy;
mod pdb;
pub mod pooler;
mod rbac;
mod secret;
mod service;
mod statefulset;
pub mod tls;

pub use config_map::{
    build_config_map, config_hash, mounted_digest, postgresql_conf, template_hash,
};
pub use job::{build_backup_job, build_verify_job};
pub use pdb::build_pdb;
pub use rbac::{build_role, build_role_binding, build_service_account};
pub use secret::{build_generated_secret, generate_password};
pub use service::{build_headless_service, build_ro_service, build_rw_service};
pub use statefulset::{BuildConfig, build_statefulset, mounted_tls_secret};

/// PgBouncer from Debian's package (`deploy/pgbouncer.Dockerfile`).
pub const DEFAULT_POOLER_IMAGE: &str = "ghcr.io/ordinal-dev/pgbouncer:1.24";

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ordinal_crds::names;

use crate::reconcile::validate::ValidCluster;

/// Labels selecting the pods of a cluster: immutable once the StatefulSet
/// exists, so they never grow.
pub fn selector_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::LABEL_APP_NAME.to_owned(), names::APP_NAME.to_owned()),
        (names::LABEL_INSTANCE.to_owned(), cluster.to_owned()),
        (names::LABEL_CLUSTER.to_owned(), cluster.to_owned()),
    ])
}

/// Labels on every object Ordinal creates.
pub fn labels(cluster: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cluster);
    labels.insert(
        names::LABEL_MANAGED_BY.to_owned(),
        names::MANAGED_BY.to_owned(),
    );
    labels
}

/// `a=b,c=d`: the selector as the scale subresource and `kubectl -l` take it.
pub fn selector_string(cluster: &str) -> String {
    selector_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of a child object `name`: namespace, labels, owner.
pub fn child_meta(cluster: &ValidCluster, name: impl Into<String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(cluster.namespace.clone()),
        labels: Some(labels(&cluster.name)),
        owner_references: Some(vec![cluster.owner.clone()]),
        ..ObjectMeta::default()
    }
}
