//! The `PostgresCluster` resource (`ordinal.dev/v1alpha1`).
//!
//! Validation lives here, in the schema the API server enforces at
//! admission: OpenAPI bounds and CEL rules (`x-kubernetes-validations`).
//! Every rule carries a message that says what is wrong and what to do.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::PostgresClusterStatus;

/// PostgreSQL parameters that Ordinal sets itself: replication, failover and
/// the pod layout depend on them, so a user value is refused at admission.
pub const OPERATOR_OWNED_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "include",
    "include_dir",
    "include_if_exists",
    "wal_level",
    "hot_standby",
    "wal_log_hints",
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "promote_trigger_file",
    "restore_command",
    "recovery_target",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_timeline",
    "recovery_target_xid",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
];

/// Default maximum lag, in bytes, of a replica that may still be promoted in
/// async mode: 16 MiB, one WAL segment.
pub const DEFAULT_MAX_LAG_BYTES_ON_FAILOVER: i64 = 16 * 1024 * 1024;

/// A PostgreSQL primary with streaming replicas, run on a StatefulSet.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ordinal.dev",
    version = "v1alpha1",
    kind = "PostgresCluster",
    plural = "postgresclusters",
    shortname = "pgc",
    category = "all",
    namespaced,
    status = "PostgresClusterStatus",
    derive = "PartialEq",
    doc = "A PostgreSQL primary with streaming replicas, managed by Ordinal.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Primary",
        type_ = "string",
        json_path = ".status.currentPrimary",
        description = "The pod that is the writable primary"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready instances / desired instances"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Creating, Healthy, Degraded or FailingOver"
    ),
    printcolumn(
        name = "Max Lag",
        type_ = "string",
        json_path = ".status.maxLag",
        description = "Largest replication lag among the replicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 50")
        .message("metadata.name must start with a letter, hold only lowercase letters, digits and '-', and be at most 50 characters: it names the StatefulSet, its pods, Services and PVCs"),
    validation = Rule::new("self.metadata.name != 'default'")
        .message("metadata.name must not be 'default': the cluster's ServiceAccount would take over the namespace's default ServiceAccount")
)]
#[x_kube(
    validation = Rule::new("self.replication.mode != 'quorum' || self.replication.quorum < self.replicas")
        .message("replication.quorum must be less than replicas: quorum mode needs at least quorum synchronous standbys besides the primary")
        .field_path(".replication.quorum"),
    validation = Rule::new("!has(self.podDisruptionBudget.minAvailable) || self.replicas == 1 || self.podDisruptionBudget.minAvailable < self.replicas")
        .message("podDisruptionBudget.minAvailable must be less than replicas, or no node could ever be drained")
        .field_path(".podDisruptionBudget.minAvailable"),
    validation = Rule::new("has(self.serviceName) == has(oldSelf.serviceName) && (!has(self.serviceName) || self.serviceName == oldSelf.serviceName)")
        .message("serviceName is immutable: the StatefulSet's governing Service cannot change after creation")
        .field_path(".serviceName")
)]
#[serde(rename_all = "camelCase")]
pub struct PostgresClusterSpec {
    /// Number of PostgreSQL instances: one primary and replicas-1 streaming replicas.
    #[serde(default = "default_replicas")]
    #[schemars(range(max = 99))]
    #[x_kube(validation = Rule::new("self >= 1").message("replicas must be at least 1"))]
    pub replicas: i32,

    /// PostgreSQL container image; the official `postgres` images and images
    /// built on them are supported. It names a tag (`postgres:17.2`) or a
    /// digest (`postgres@sha256:…`): an untagged image and `:latest` are
    /// refused, because they change under running pods. The tag's major
    /// version cannot change once the cluster exists.
    #[serde(default = "default_image")]
    #[schemars(length(max = 512))]
    #[x_kube(
        validation = Rule::new("size(self) > 0").message("image must not be empty"),
        validation = Rule::new(IMAGE_PINNED).message("image must name a tag (postgres:17.2) or a digest (postgres@sha256:...): an image without a tag is postgres:latest, which changes under running pods and breaks rolling updates"),
        validation = Rule::new(IMAGE_NOT_LATEST).message("image must not use the tag latest: it changes under running pods and breaks rolling updates; name a version such as postgres:17.2, or a digest"),
        validation = Rule::new(IMAGE_SAME_MAJOR).message("image cannot change the PostgreSQL major version (the tag's first number): the data files of one major version do not start on another, and Ordinal does not run pg_upgrade; keep this major, or move the data to a new cluster with pg_dump or logical replication")
    )]
    pub image: String,

    /// Pull policy of the PostgreSQL image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Persistent storage of each instance: one PVC per pod.
    pub storage: StorageSpec,

    /// CPU and memory of the `postgres` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// PostgreSQL configuration.
    #[serde(default)]
    pub postgresql: PostgresqlSpec,

    /// How the StatefulSet creates pods. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("podManagementPolicy is immutable: a StatefulSet cannot change it after creation"))]
    pub pod_management_policy: PodManagementPolicy,

    /// How pods spread over zones and nodes.
    #[serde(default)]
    pub topology: TopologySpec,

    /// The PodDisruptionBudget of the cluster.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,

    /// Streaming replication.
    #[serde(default)]
    pub replication: ReplicationSpec,

    /// Automatic failover.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// Rolling updates of the pods.
    #[serde(default)]
    pub update_strategy: UpdateStrategySpec,

    /// TLS of the PostgreSQL servers: on by default, with a certificate
    /// the operator issues from a per-cluster CA.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Who may reach the cluster's pods: NetworkPolicies, on by default.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// A PgBouncer pooler in front of the primary: a Deployment and the
    /// Service `<name>-pooler`. None when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler: Option<PoolerSpec>,

    /// Continuous WAL archiving to object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// How a new cluster gets its data: initdb (the default), or a restore
    /// from another cluster's backups. Read once, when the first primary
    /// is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("bootstrap is immutable: it was read when the cluster was created"))]
    pub bootstrap: Option<BootstrapSpec>,

    /// An existing Secret whose `password` key is the password of the
    /// `postgres` superuser; generated as `<name>-superuser` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$') && size(self) <= 253").message("superuserSecret must be a valid Secret name"))]
    #[schemars(length(max = 253))]
    pub superuser_secret: Option<String>,

    /// An existing Secret (keys `username`, `password`) with the replication
    /// role's credentials; generated as `<name>-replication` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$') && size(self) <= 253").message("replicationSecret must be a valid Secret name"))]
    #[schemars(length(max = 253))]
    pub replication_secret: Option<String>,

    /// Name of the headless Service that gives pods stable DNS names;
    /// `<name>-headless` when unset. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self) <= 63").message("serviceName must be a DNS label: lowercase letters, digits and '-', starting with a letter, at most 63 characters"))]
    #[schemars(length(max = 63))]
    pub service_name: Option<String>,
}

fn default_replicas() -> i32 {
    3
}

/// A digest pins an image whatever its tag says.
macro_rules! digest {
    () => {
        "self.matches('@sha256:[0-9a-f]{64}$')"
    };
}

/// A tag in the last path part (a registry's `:port` is not one).
const IMAGE_PINNED: &str = concat!(digest!(), " || self.matches('^([^/]+/)*[^/:@]+:[^/:@]+$')");

const IMAGE_NOT_LATEST: &str = concat!(digest!(), " || !self.matches(':latest$')");

/// The major version is the tag's leading number (`postgres:17.2-bookworm`
/// → `:17`), as the reconciler reads it: the last path part up to a digest,
/// then its first `:digits`. A tag without one (or a digest alone) says
/// nothing, and the reconciler's check stays the backstop.
const IMAGE_SAME_MAJOR: &str = "oldSelf.find('[^/@]+(@|$)').find(':[0-9]+') == '' || self.find('[^/@]+(@|$)').find(':[0-9]+') == '' || self.find('[^/@]+(@|$)').find(':[0-9]+') == oldSelf.find('[^/@]+(@|$)').find(':[0-9]+')";

fn default_image() -> String {
    "postgres:17".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Storage of each instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
        .message("storage.storageClassName is immutable: existing volumes cannot move to another StorageClass")
        .field_path(".storageClassName")
)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each instance's volume, as a Kubernetes quantity (e.g. `10Gi`).
    /// It can grow when the StorageClass allows volume expansion: Ordinal
    /// expands every PVC and reports it in the `VolumesResized` condition.
    /// It cannot shrink.
    #[x_kube(
        validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("storage.size must be a positive quantity such as 10Gi"),
        validation = Rule::new("!isQuantity(self) || !isQuantity(oldSelf) || !quantity(self).isLessThan(quantity(oldSelf))").message("storage.size cannot shrink: a volume never gets smaller; keep the current size or grow it")
    )]
    #[schemars(length(max = 64))]
    pub size: String,

    /// StorageClass of the volumes; the cluster default when unset. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,

    /// What happens to the PVCs when the cluster is deleted or scaled down.
    #[serde(default)]
    pub pvc_retention: PvcRetentionSpec,
}

/// Mirrors the StatefulSet's persistentVolumeClaimRetentionPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcRetentionSpec {
    /// PVCs when the PostgresCluster is deleted.
    #[serde(default)]
    pub when_deleted: RetentionPolicy,
    /// PVCs of the removed pods when the cluster is scaled down.
    #[serde(default)]
    pub when_scaled: RetentionPolicy,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RetentionPolicy {
    /// Keep the PVCs: the data survives.
    #[default]
    Retain,
    /// Delete the PVCs with the pods.
    Delete,
}

impl RetentionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retain => "Retain",
            Self::Delete => "Delete",
        }
    }
}

/// PostgreSQL configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresqlSpec {
    /// postgresql.conf parameters, merged over Ordinal's safe defaults.
    /// Parameters that replication and failover depend on are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 256, "additionalProperties" = {"type": "string", "maxLength": 4096}))]
    #[x_kube(
        // One map lookup per parameter: bounded cost, whatever the map holds.
        validation = Rule::new("!('listen_addresses' in self) && !('port' in self) && !('unix_socket_directories' in self) && !('data_directory' in self) && !('config_file' in self) && !('hba_file' in self) && !('ident_file' in self) && !('external_pid_file' in self) && !('include' in self) && !('include_dir' in self) && !('include_if_exists' in self) && !('wal_level' in self) && !('hot_standby' in self) && !('wal_log_hints' in self) && !('primary_conninfo' in self) && !('primary_slot_name' in self) && !('synchronous_standby_names' in self) && !('promote_trigger_file' in self) && !('restore_command' in self) && !('recovery_target' in self) && !('recovery_target_action' in self) && !('recovery_target_inclusive' in self) && !('recovery_target_lsn' in self) && !('recovery_target_name' in self) && !('recovery_target_time' in self) && !('recovery_target_timeline' in self) && !('recovery_target_xid' in self) && !('ssl' in self) && !('ssl_cert_file' in self) && !('ssl_key_file' in self)")
            .message("postgresql.parameters sets a parameter that Ordinal manages (such as wal_level, hot_standby, primary_conninfo, synchronous_standby_names, port, include, recovery_target*, ssl, ssl_cert_file, ssl_key_file): remove it, Ordinal sets it for replication and failover to work")
    )]
    pub parameters: BTreeMap<String, String>,

    /// Extra pg_hba.conf lines, placed before Ordinal's own rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(l, !l.contains('\\n'))").message("postgresql.pgHba: each entry is one pg_hba.conf line, without line breaks"))]
    pub pg_hba: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PodManagementPolicy {
    /// Pods are created one at a time, each Ready before the next. A pod
    /// that is not Ready (a replica catching up) then blocks recreating the
    /// ones after it, the primary included.
    OrderedReady,
    /// Pods are created at once; replicas wait for their primary by
    /// themselves. The default: Ordinal orders what needs ordering.
    #[default]
    Parallel,
}

impl PodManagementPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderedReady => "OrderedReady",
            Self::Parallel => "Parallel",
        }
    }
}

/// Spreading of the pods over failure domains.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologySpec {
    /// Node label naming the zone.
    #[serde(default = "default_zone_key")]
    #[schemars(length(max = 316))]
    pub zone_key: String,
    /// Node label naming the node.
    #[serde(default = "default_node_key")]
    #[schemars(length(max = 316))]
    pub node_key: String,
    /// Largest allowed difference of pod counts between two zones or nodes.
    #[serde(default = "default_max_skew")]
    #[schemars(range(min = 1))]
    pub max_skew: i32,
    /// What the scheduler does when the spread cannot be met.
    #[serde(default)]
    pub when_unsatisfiable: WhenUnsatisfiable,
}

impl Default for TopologySpec {
    fn default() -> Self {
        Self {
            zone_key: default_zone_key(),
            node_key: default_node_key(),
            max_skew: default_max_skew(),
            when_unsatisfiable: WhenUnsatisfiable::default(),
        }
    }
}

fn default_zone_key() -> String {
    "topology.kubernetes.io/zone".to_owned()
}
fn default_node_key() -> String {
    "kubernetes.io/hostname".to_owned()
}
fn default_max_skew() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum WhenUnsatisfiable {
    /// Keep the pod Pending until the spread can be met.
    DoNotSchedule,
    /// Schedule anyway, preferring the best spread.
    #[default]
    ScheduleAnyway,
}

impl WhenUnsatisfiable {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DoNotSchedule => "DoNotSchedule",
            Self::ScheduleAnyway => "ScheduleAnyway",
        }
    }
}

/// The PodDisruptionBudget. None is created for a single-instance cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Pods that must stay available during voluntary disruptions;
    /// replicas-1 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_available: Option<i32>,
}

/// Streaming replication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// `async`: commits return before standbys confirm; `quorum`: each commit
    /// waits for `quorum` standbys (`synchronous_standby_names = ANY n (...)`).
    #[serde(default)]
    pub mode: ReplicationMode,
    /// Synchronous standbys that must confirm each commit in quorum mode.
    #[serde(default = "default_quorum")]
    #[schemars(range(min = 1))]
    pub quorum: i32,
    /// A replica is Ready only while its replay lag is below this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_ready_lag_bytes: Option<i64>,
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        Self {
            mode: ReplicationMode::default(),
            quorum: default_quorum(),
            max_ready_lag_bytes: None,
        }
    }
}

fn default_quorum() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Asynchronous streaming: a failover may lose the last commits.
    #[default]
    Async,
    /// Quorum commit: no acknowledged commit is lost on failover.
    Quorum,
}

/// Automatic failover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Promote a replica when the primary is lost.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds between health checks of the instances.
    #[serde(default = "default_check_interval")]
    #[schemars(range(min = 1, max = 300))]
    pub check_interval_seconds: i32,
    /// Consecutive failed checks before the primary counts as lost.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
    /// In async mode, replicas further behind than this are never promoted.
    #[serde(default = "default_max_lag_on_failover")]
    #[schemars(range(min = 0))]
    pub max_lag_bytes_on_failover: i64,
    /// A primary that can reach neither the API server nor any standby for
    /// this long stops accepting writes by itself, so that a replica may be
    /// promoted safely when its node cannot be reached to stop it.
    #[serde(default = "default_isolation_seconds")]
    #[schemars(range(min = 2, max = 300))]
    pub isolation_seconds: i32,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            check_interval_seconds: default_check_interval(),
            failure_threshold: default_failure_threshold(),
            max_lag_bytes_on_failover: default_max_lag_on_failover(),
            isolation_seconds: default_isolation_seconds(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_check_interval() -> i32 {
    1
}
fn default_failure_threshold() -> i32 {
    3
}
fn default_isolation_seconds() -> i32 {
    10
}
fn default_max_lag_on_failover() -> i64 {
    DEFAULT_MAX_LAG_BYTES_ON_FAILOVER
}

/// TLS of the servers. Replication (streaming, pg_basebackup, pg_rewind)
/// always uses `sslmode=verify-full` against the CA while TLS is on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.enabled || (!has(self.serverSecret) && !self.requireForClients)")
        .message("tls.serverSecret and tls.requireForClients need tls.enabled: true")
)]
pub struct TlsSpec {
    /// Whether the servers speak TLS.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A `kubernetes.io/tls` Secret (keys `tls.crt`, `tls.key`, `ca.crt`;
    /// cert-manager writes these) with the servers' certificate, for
    /// example from a cert-manager `Certificate`. Its names must cover
    /// `*.<name>-headless.<namespace>.svc`, the name replicas verify. When
    /// unset the operator issues one from the CA in `<name>-ca` and renews
    /// it 30 days before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("tls.serverSecret must be a valid Secret name"))]
    pub server_secret: Option<String>,
    /// Refuse clients that do not use TLS (`hostssl` lines in pg_hba).
    /// Replication always needs TLS while TLS is on.
    #[serde(default)]
    pub require_for_clients: bool,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            server_secret: None,
            require_for_clients: false,
        }
    }
}

/// The NetworkPolicies of the cluster (`<name>`, and `<name>-pooler` with
/// a pooler): PostgreSQL's port takes the cluster's own instances, its
/// backup Jobs, its pooler and the operator, plus the `clients` named
/// here; the probe port (8008, health only) is open. Egress is not
/// restricted. They take effect where the cluster's network plugin
/// enforces NetworkPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Whether the operator makes the NetworkPolicies.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who else may connect to PostgreSQL (the instances, `-rw`, `-ro` and
    /// the pooler): NetworkPolicy peers (`podSelector`,
    /// `namespaceSelector`, `ipBlock`). Unset: every pod in the cluster's
    /// namespace. Empty: nobody else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            clients: None,
        }
    }
}

/// PgBouncer in front of `<name>-rw`. Clients connect to `<name>-pooler`
/// as they would to `<name>-rw`, with the same users and passwords. In
/// `transaction` mode a failover or switchover is a pause for clients
/// between transactions, not a broken connection: PgBouncer connects to
/// the new primary behind `<name>-rw` (a transaction in flight fails).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolerSpec {
    /// Pods of the pooler's Deployment.
    #[serde(default = "default_pooler_instances")]
    #[schemars(range(min = 1, max = 20))]
    pub instances: i32,
    /// `transaction` (the default: a server connection per transaction,
    /// which lets clients ride through a failover) or `session`.
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Server connections per user and database (`default_pool_size`).
    #[serde(default = "default_pool_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub default_pool_size: i32,
    /// Client connections each pod accepts (`max_client_conn`).
    #[serde(default = "default_max_client_connections")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_client_connections: i32,
    /// The PgBouncer image (its `pgbouncer` on the PATH, run as uid 999);
    /// the operator's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,
    /// CPU and memory of the `pgbouncer` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_pooler_instances() -> i32 {
    2
}
fn default_pool_size() -> i32 {
    20
}
fn default_max_client_connections() -> i32 {
    1000
}

/// How PgBouncer shares server connections.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    #[default]
    Transaction,
    Session,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transaction => "transaction",
            Self::Session => "session",
        }
    }
}

/// Continuous WAL archiving to an object store: every WAL segment the
/// primary completes (and at least every `archiveTimeoutSeconds` while it
/// writes) is compressed and uploaded by `ordinal-init wal-push`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.s3), has(self.gcs), has(self.azure)].filter(x, x).size() == 1")
        .message("backup must name exactly one object store: s3, gcs or azure")
)]
pub struct BackupSpec {
    /// An S3-compatible store (AWS S3, MinIO, Ceph RGW...). The credentials
    /// Secret holds `ACCESS_KEY_ID` and `SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Store>,
    /// Google Cloud Storage. The credentials Secret holds
    /// `SERVICE_ACCOUNT_KEY` (the JSON key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsStore>,
    /// Azure Blob Storage. The credentials Secret holds
    /// `STORAGE_ACCOUNT_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureStore>,
    /// The path under the bucket; `<namespace>/<name>` when unset. Two
    /// clusters must not share one: an archived file is never overwritten,
    /// so the second cluster's archiving fails (loudly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$')").message("backup.prefix must be a path of letters, digits, '.', '_' and '-' separated by single '/', without a leading or trailing '/', no part starting with '.'"))]
    pub prefix: Option<String>,
    /// The Secret with the store's credentials (mounted as files, never in
    /// the environment).
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("backup.credentialsSecret must be a valid Secret name"))]
    pub credentials_secret: String,
    /// A WAL segment is archived at least this often while the primary
    /// writes: the most a lost volume set can cost (the RPO).
    #[serde(default = "default_archive_timeout")]
    #[schemars(range(min = 10, max = 3600))]
    pub archive_timeout_seconds: i32,
    /// Base backups on a schedule: a five-field cron expression, in UTC
    /// (`0 3 * * *`: every day at 03:00), or `@daily`, `@hourly`… Each run
    /// is a PostgresBackup named `<cluster>-<yyyymmddhhmm>`; a run missed
    /// while the operator was down is taken once, late, not every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(validation = Rule::new("self.matches('^@[a-z]+$') || self.matches('^\\\\S+(\\\\s+\\\\S+){4}$')").message("backup.schedule must be a cron expression of five fields (minute hour day-of-month month day-of-week, in UTC) or @hourly, @daily, @weekly, @monthly, @yearly"))]
    pub schedule: Option<String>,
    /// Which base backups to keep, checked after each backup: the base
    /// backups beyond it, and the WAL older than the oldest one kept, are
    /// deleted from the store. Everything is kept when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// Restore each new base backup in a throwaway pod, replay the archived
    /// WAL to its end and run PostgreSQL's own checks (`pg_amcheck`
    /// on every table and index, `pg_checksums` on every page); the
    /// result and the measured restore time go to the PostgresBackup's
    /// `status.verification`, and a failure to the cluster's
    /// `BackupVerified` condition. Turned on, it verifies the newest
    /// backup at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
}

/// A retention policy: a backup is kept when either rule keeps it, and the
/// newest is always kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.keep) || has(self.recoveryWindowDays)")
        .message("backup.retention needs keep, recoveryWindowDays or both")
)]
pub struct RetentionSpec {
    /// Keep the newest N base backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: Option<i32>,
    /// Keep what a restore to any moment of the last N days needs: every
    /// backup completed in the window, and the newest one before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub recovery_window_days: Option<i32>,
}

fn default_archive_timeout() -> i32 {
    60
}

/// An S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Store {
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// The endpoint of a store other than AWS (`http://minio.minio:9000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub endpoint: Option<String>,
    /// The region; `us-east-1` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which MinIO and most
    /// stores other than AWS need; virtual-hosted style when false.
    #[serde(default)]
    pub path_style: bool,
}

/// A Google Cloud Storage bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsStore {
    #[schemars(length(min = 3, max = 222))]
    pub bucket: String,
}

/// An Azure Blob Storage container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureStore {
    #[schemars(length(min = 3, max = 24))]
    pub account: String,
    #[schemars(length(min = 3, max = 63))]
    pub container: String,
    /// The account's blob endpoint, for a store other than Azure's public
    /// cloud (a sovereign cloud, Azure Stack, a private endpoint, or
    /// Azurite: `http://azurite:10000/devstoreaccount1`);
    /// `https://<account>.blob.core.windows.net` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#]+(/[^?#]*)?$')").message("backup.azure.endpoint must be an http:// or https:// URL"))]
    pub endpoint: Option<String>,
}

/// How a new cluster gets its data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Restore from the base backups and WAL archive another cluster wrote
    /// (its `spec.backup`), then run as a new cluster on a timeline of its
    /// own, archiving under its own prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoverySpec>,
}

/// A restore: where from, which backup, how far.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverySpec {
    /// The store and prefix the source cluster archived to; only read.
    pub source: RecoverySource,
    /// A base backup's id (a PostgresBackup's `status.id`); when unset, the
    /// latest one complete before the target time (or the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{8}T[0-9]{6}Z$')").message("bootstrap.recovery.backup must be a backup id such as 20261205T213000Z (a PostgresBackup's status.id)"))]
    #[schemars(length(max = 16))]
    pub backup: Option<String>,
    /// How far to replay the source's WAL; to the end of its archive when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RecoveryTargetSpec>,
}

/// The store a cluster is restored from: as in `spec.backup`, but the
/// prefix must be given (it is the source cluster's).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.s3), has(self.gcs), has(self.azure)].filter(x, x).size() == 1")
        .message("bootstrap.recovery.source must name exactly one object store: s3, gcs or azure")
)]
pub struct RecoverySource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Store>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsStore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureStore>,
    /// The source cluster's prefix (its `spec.backup.prefix`, by default
    /// `<namespace>/<name>`).
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$')").message("bootstrap.recovery.source.prefix must be a path of letters, digits, '.', '_' and '-' separated by single '/', without a leading or trailing '/', no part starting with '.'"))]
    pub prefix: String,
    /// The Secret with the store's credentials, as for `spec.backup`.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("bootstrap.recovery.source.credentialsSecret must be a valid Secret name"))]
    pub credentials_secret: String,
}

/// Where replay stops (at most one): the new cluster is promoted there.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.time), has(self.lsn), has(self.name)].filter(x, x).size() <= 1")
        .message("bootstrap.recovery.target takes at most one of time, lsn and name")
)]
pub struct RecoveryTargetSpec {
    /// An RFC 3339 time (`2026-12-05T21:30:00Z`): commits after it are not
    /// replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$')").message("bootstrap.recovery.target.time must be an RFC 3339 time such as 2026-12-05T21:30:00Z"))]
    pub time: Option<String>,
    /// A WAL position (`0/3000028`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 17))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$')").message("bootstrap.recovery.target.lsn must be a WAL position such as 0/3000028"))]
    pub lsn: Option<String>,
    /// A restore point made with `pg_create_restore_point()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_.:-]+$')").message("bootstrap.recovery.target.name must be a restore point name of letters, digits, '-', '_', '.' and ':'"))]
    pub name: Option<String>,
}

/// Rolling updates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategySpec {
    /// Canary: only pods with an ordinal >= partition are updated.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub partition: i32,
}
