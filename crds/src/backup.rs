//! The `PostgresBackup` resource (`ordinal.dev/v1alpha1`): one base backup
//! of a PostgresCluster into the object store its `spec.backup` names.
//! `kubectl apply` one and watch its phase; the operator runs it as a Job.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One base backup of a PostgresCluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "ordinal.dev",
    version = "v1alpha1",
    kind = "PostgresBackup",
    plural = "postgresbackups",
    shortname = "pgb",
    category = "all",
    namespaced,
    status = "PostgresBackupStatus",
    derive = "PartialEq",
    doc = "One base backup of a PostgresCluster into its object store, taken by Ordinal.",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".spec.cluster",
        description = "The PostgresCluster backed up"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Completed or Failed"
    ),
    printcolumn(
        name = "Instance",
        type_ = "string",
        json_path = ".status.instance",
        description = "The instance it was read from"
    ),
    printcolumn(
        name = "Size",
        type_ = "string",
        json_path = ".status.size",
        description = "PGDATA's size / stored (compressed)"
    ),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.verification.phase",
        description = "Restored and checked (spec.backup.verify): Running, Passed or Failed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63")
        .message("metadata.name must be a DNS label (lowercase letters, digits and '-', at most 63 characters): it names the backup's Job")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a PostgresBackup's spec is immutable: create another PostgresBackup"))]
#[serde(rename_all = "camelCase")]
pub struct PostgresBackupSpec {
    /// The PostgresCluster to back up, in the same namespace. It must have
    /// `spec.backup` (the object store).
    #[schemars(length(min = 1, max = 50))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("cluster must name a PostgresCluster: lowercase letters, digits and '-', starting with a letter"))]
    pub cluster: String,
    /// Where to read it from: `PreferStandby` (a healthy streaming replica
    /// when there is one, sparing the primary) or `Primary`.
    #[serde(default)]
    pub target: BackupTarget,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BackupTarget {
    #[default]
    PreferStandby,
    Primary,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    /// Waiting for the cluster (it does not exist yet, or has no primary).
    Pending,
    /// The Job runs.
    Running,
    /// In the store, with the WAL it needs: it can be restored.
    Completed,
    /// It did not complete; `message` says why. A new PostgresBackup tries again.
    Failed,
}

/// What the operator observed of the backup.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresBackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// Why it is pending, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The Job that takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The pod it is read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Whether that pod was a standby when the backup started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_standby: Option<bool>,
    /// The backup's id in the store (`base/<id>/` under the cluster's prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Where it is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// The WAL position where it starts, and where recovery from it is
    /// consistent at the earliest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begin_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begin_wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_wal: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// PGDATA's size, and the compressed size in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// Both, for people: `120MiB/9MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// The backup restored in a throwaway pod and checked
    /// (`spec.backup.verify` of the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VerificationPhase {
    /// The verification Job runs.
    Running,
    /// Restored, replayed to a consistent point and every check passed.
    Passed,
    /// The restore or a check failed: `message` says which and why.
    Failed,
}

/// What the verification of a base backup found.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationStatus {
    pub phase: VerificationPhase,
    /// The Job that restores and checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// The measured restore time: download and unpack, then WAL replay
    /// to the archive's end (what a restore of this backup to "latest"
    /// costs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_milliseconds: Option<u64>,
    /// The checks that ran, with what they covered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl VerificationStatus {
    pub fn finished(&self) -> bool {
        self.phase != VerificationPhase::Running
    }
}

/// What `ordinal-init verify-backup` reports (its container's termination
/// message): the verification's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationReport {
    pub id: String,
    pub passed: bool,
    /// Download and unpack, then replay to the archive's end; None when the
    /// restore itself failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl PostgresBackupStatus {
    /// Completed or Failed: nothing more will happen.
    pub fn finished(&self) -> bool {
        matches!(
            self.phase,
            Some(BackupPhase::Completed | BackupPhase::Failed)
        )
    }
}

/// What one base backup holds, as `ordinal-init base-backup` records it in
/// the store (`base/<id>/backup.json`) and reports it to the operator (its
/// container's termination message).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupManifest {
    pub id: String,
    /// The PostgresBackup it was taken for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// The instance it was read from, and whether it was a standby.
    pub source: String,
    #[serde(default)]
    pub from_standby: bool,
    pub timeline: u32,
    pub begin_lsn: String,
    pub end_lsn: String,
    /// The WAL segments recovery needs, first and last.
    pub begin_wal: String,
    pub end_wal: String,
    /// RFC 3339.
    pub started_at: String,
    pub completed_at: String,
    /// PGDATA's size, and the compressed object's.
    pub data_bytes: u64,
    pub stored_bytes: u64,
    /// In the report only: the base backups the retention policy deleted
    /// after this one completed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
}
