//! The operator's errors: each says what failed and on which object.

use std::time::Duration;

/// Errors of one reconcile of a PostgresCluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PostgresCluster {name} has no namespace")]
    MissingNamespace { name: String },

    #[error("PostgresCluster {namespace}/{name} has no uid yet, so children cannot be owned by it")]
    MissingUid { namespace: String, name: String },

    #[error("failed to apply {kind} {namespace}/{name}")]
    Apply {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to read {kind} {namespace}/{name}")]
    Get {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to read {kind} {name}")]
    GetClusterScoped {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to list StorageClasses for PostgresCluster {namespace}/{name}")]
    ListStorageClasses {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to create {kind} {namespace}/{name}")]
    Create {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to delete {kind} {namespace}/{name}")]
    Delete {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to list pods of PostgresCluster {namespace}/{name}")]
    ListPods {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to list the volumes of PostgresCluster {namespace}/{name}")]
    ListVolumes {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to write the status of PostgresCluster {namespace}/{name}")]
    WriteStatus {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error(
        "Secret {namespace}/{secret} named by spec.{field} of PostgresCluster {name} does not exist"
    )]
    MissingSecret {
        namespace: String,
        name: String,
        field: &'static str,
        secret: String,
    },

    #[error(
        "Secret {namespace}/{secret} named by spec.{field} of PostgresCluster {name} lacks the key(s) {keys}, which the {store} store needs"
    )]
    MissingSecretKeys {
        namespace: String,
        name: String,
        field: &'static str,
        secret: String,
        store: &'static str,
        keys: String,
    },

    #[error(
        "the TLS Secret {namespace}/{secret} of PostgresCluster {name} is not usable: {problem}"
    )]
    Tls {
        namespace: String,
        name: String,
        secret: String,
        problem: String,
    },
}

impl Error {
    /// Every value [`Error::category`] returns.
    pub const CATEGORIES: &[&'static str] = &[
        "invalid_object",
        "apply",
        "read",
        "create",
        "delete",
        "status",
        "missing_secret",
    ];

    /// A short category, used as the `reason` label of the error counter.
    pub fn category(&self) -> &'static str {
        match self {
            Self::MissingNamespace { .. } | Self::MissingUid { .. } => "invalid_object",
            Self::Apply { .. } => "apply",
            Self::Get { .. }
            | Self::GetClusterScoped { .. }
            | Self::ListStorageClasses { .. }
            | Self::ListPods { .. }
            | Self::ListVolumes { .. } => "read",
            Self::Create { .. } => "create",
            Self::Delete { .. } => "delete",
            Self::WriteStatus { .. } => "status",
            Self::MissingSecret { .. } | Self::MissingSecretKeys { .. } | Self::Tls { .. } => {
                "missing_secret"
            }
        }
    }

    /// How long to wait before the first retry: a missing user Secret waits
    /// for the user, API trouble retries soon.
    pub fn base_retry(&self) -> Duration {
        match self {
            Self::MissingSecret { .. } => Duration::from_secs(30),
            Self::MissingNamespace { .. } | Self::MissingUid { .. } => Duration::from_secs(60),
            _ => Duration::from_secs(1),
        }
    }
}
