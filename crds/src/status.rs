//! Status of a `PostgresCluster`: written by the operator only.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types, following Kubernetes conventions.
pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_DEGRADED: &str = "Degraded";

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

    /// The last failover or switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
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

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
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
}

/// A promotion recorded but not published yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingPromotion {
    /// The old primary shuts down cleanly (switchover, deleted pod).
    pub planned: bool,
    pub reason: String,
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
    /// WAL bytes lost by the promotion as far as the operator knows: 0 in
    /// quorum mode (a guarantee) and for switchovers; in async mode the gap
    /// between the old primary's last position the operator saw and the
    /// promoted one — commits after the operator's last probe of a crashed
    /// primary may be lost too.
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
