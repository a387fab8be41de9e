//! Status of a `PostgresCluster`: written by the operator only.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types, following Kubernetes conventions.
pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_DEGRADED: &str = "Degraded";
/// Whether the newest verified base backup passed its verification
/// (`spec.backup.verify`); written by the backup controller.
pub const CONDITION_BACKUP_VERIFIED: &str = "BackupVerified";
/// Whether every data volume has `spec.storage.size`; False while they
/// grow, or when they cannot (written by the reconciler's volume step).
pub const CONDITION_VOLUMES_RESIZED: &str = "VolumesResized";
/// Whether the volumes are created where their pods can run: False for a
/// StorageClass that binds Immediately, or a pod stranded by its volume's
/// zone.
pub const CONDITION_VOLUME_PLACEMENT: &str = "VolumePlacement";

/// What the operator last observed of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Creating, Healthy, Degraded or FailingOver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The pod that is the primary: the single source of truth for roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,

    /// The pod being promoted while a failover or switchover is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,

    /// Why, and how, targetPrimary is being promoted: an operator restarted
    /// mid-way resumes it the same way (a planned one waits for the old
    /// primary's clean shutdown instead of killing it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_promotion: Option<PendingPromotion>,

    /// Increments on every promotion.
    #[serde(default)]
    pub epoch: i64,

    /// True once the first primary has been initialized: from then on an
    /// empty PGDATA on the primary means lost data, never a new cluster.
    #[serde(default)]
    pub bootstrapped: bool,

    /// Pods of the cluster (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,

    /// Pods that are Ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,

    /// Label selector of the pods (for the scale subresource and autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Largest replication lag, human readable, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<String>,

    /// One entry per instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"]))]
    pub instances: Vec<InstanceStatus>,

    /// The last WAL position seen on the primary, refreshed with the
    /// instances: a restarted operator still knows how far it had got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_lsn: Option<String>,

    /// The synchronous standbys and quorum in effect (quorum mode): what
    /// the failover rule counts over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<SynchronousSet>,

    /// The last failover or switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,

    /// The primary's WAL archiving (spec.backup), as the failover loop
    /// last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveStatus>,

    /// The cluster's base backups (its completed PostgresBackups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupsStatus>,

    /// How far TLS has reached the running instances (spec.tls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
}

/// TLS as the running instances have it. Turning TLS on (or off) on a
/// cluster that runs takes steps, each begun once every instance has
/// taken the one before, so that no connection ever needs what a server
/// does not offer yet: the certificate reaches every pod (a rolling
/// update), then every server offers TLS (a reload), then replication
/// requires it and verifies the primary (a reload and a re-point). Off,
/// the same steps in reverse.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    pub phase: TlsPhase,
    /// The Secret the instances mount (none while Off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TlsPhase {
    /// No certificate in the pods; the servers speak plaintext.
    #[default]
    Off,
    /// The pods are being replaced with ones that mount the certificate;
    /// the servers do not offer TLS yet.
    Mounting,
    /// Every server offers TLS; nothing requires it yet (or any more).
    Offered,
    /// Replication (and, with `tls.requireForClients`, every client)
    /// connects over TLS, and standbys verify their primary
    /// (`sslmode=verify-full`).
    Required,
}

impl TlsPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "Off",
            Self::Mounting => "Mounting",
            Self::Offered => "Offered",
            Self::Required => "Required",
        }
    }

    /// Whether the pods mount the certificate.
    pub fn mounted(self) -> bool {
        self != Self::Off
    }

    /// Whether the servers offer TLS (`ssl = on`).
    pub fn offered(self) -> bool {
        matches!(self, Self::Offered | Self::Required)
    }

    pub fn required(self) -> bool {
        self == Self::Required
    }
}

/// WAL archiving on the primary. The last archived file bounds what a
/// restore can reach: it is the last recoverability point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    /// RFC 3339: the last recoverability point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_time: Option<String>,
    /// How long the oldest segment waiting to be archived has waited, in
    /// whole seconds (0: none waits).
    #[serde(default)]
    pub lag_seconds: i64,
    /// Failed attempts since the primary's statistics began.
    #[serde(default)]
    pub failures: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
    /// What the last failed attempt said: the store's own answer (wrong
    /// credentials, unreachable, full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The base backups of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupsStatus {
    /// Completed base backups.
    #[serde(default)]
    pub completed: i32,
    /// The PostgresBackup completed last, and when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<String>,
    /// The end of the oldest completed base backup (RFC 3339): the
    /// earliest moment a restore can reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_recoverability_point: Option<String>,
}

impl PostgresClusterStatus {
    /// The condition of type `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Not every instance has been Ready yet.
    Creating,
    /// Every instance is Ready and the primary is known.
    Healthy,
    /// Something needs attention: see the conditions.
    Degraded,
    /// A promotion is under way.
    FailingOver,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "Creating",
            Self::Healthy => "Healthy",
            Self::Degraded => "Degraded",
            Self::FailingOver => "FailingOver",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Role {
    Primary,
    Replica,
    Unknown,
}

/// What the operator last observed of one instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    pub pod: String,
    pub role: Role,
    pub ready: bool,
    /// Current (primary) or replayed (replica) WAL position, e.g. `0/3000148`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// Primary's current LSN minus this replica's replayed LSN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// 0 when the replica replayed all it received, else the age of the last
    /// replayed transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// The pod's IP address as the operator last saw it: replicas connect
    /// to their primary at this address rather than through its DNS name,
    /// which the cluster's DNS may serve stale for 30 s after the pod is
    /// recreated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub ip: Option<String>,
    /// Whether the server offers TLS (its `ssl` setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl: Option<bool>,
    /// Replica: the `sslmode` it follows its primary with (`verify-full`,
    /// or libpq's default `prefer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub upstream_sslmode: Option<String>,
}

/// A promotion recorded but not published yet: the failover's state, from
/// which a restarted operator resumes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingPromotion {
    /// The old primary shuts down cleanly (switchover, deleted pod).
    pub planned: bool,
    pub reason: String,
    /// The instance of the old primary whose stop the promotion waits for:
    /// its pod's UID and IP when the promotion was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ip: Option<String>,
    /// Last LSN seen on the old primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary_lsn: Option<String>,
    /// The LSN the target held when it was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_lsn: Option<String>,
    /// Upper bound of the WAL lost, as known when the target was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_bytes: Option<i64>,
}

/// The synchronous standbys commits are acknowledged by (quorum mode).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SynchronousSet {
    /// `k` of `ANY k (…)`: the smallest in effect while it changes.
    pub quorum: i32,
    /// Every standby an acknowledged commit may rest on: while a shrinking
    /// set catches up, the old set's members stay in it.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub standbys: Vec<String>,
    /// The primary's LSN when the set last shrank: the members removed
    /// leave it once every remaining one has flushed this far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrunk_at: Option<String>,
}

/// A record of the last promotion.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    pub time: Time,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub duration_seconds: f64,
    /// Last LSN seen on the old primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary_lsn: Option<String>,
    /// LSN of the promoted replica when it was promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_lsn: Option<String>,
    /// WAL lost by the promotion: the bytes the old primary was seen to
    /// have and the promoted one lacks, when there are any; else 0 when
    /// nothing acknowledged can be lost (a planned stop whose final WAL was
    /// received, or quorum mode); absent when unknown (an unplanned loss in
    /// async mode: what the old primary wrote after the operator last saw
    /// it may be lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_bytes: Option<i64>,
    /// Seconds spent in each phase: detect, decide, fence, promote, publish.
    #[serde(default)]
    pub phases: FailoverPhases,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverPhases {
    pub detect: f64,
    pub decide: f64,
    pub fence: f64,
    pub promote: f64,
    pub publish: f64,
}
