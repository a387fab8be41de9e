//! The seam between the failover loop and the world: observe the members,
//! record the intent, fence, publish. Kubernetes implements it for real
//! (`kube.rs`); the e2e crate implements it with local postgres processes,
//! so the same loop is chaos-tested in CI against real servers.

use std::future::Future;
use std::time::{Duration, Instant};

use ordinal_crds::{FailoverRecord, InstanceStatus, ReplicationMode, SynchronousSet};

use super::machine::Intent;

/// How to reach a PostgreSQL server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The address `host` stands for, when known: connected to without a
    /// name lookup (see `ordinal_crds::conninfo::server`).
    pub hostaddr: Option<String>,
    /// The name TLS verifies when `host` is an address (a pod's IP): the
    /// pod's name under the headless Service, which the server's
    /// certificate holds (libpq's `verify-full` with `hostaddr`).
    pub tls_name: Option<String>,
}

impl Endpoint {
    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The name the server's certificate must hold.
    pub fn server_name(&self) -> &str {
        self.tls_name.as_deref().unwrap_or(&self.host)
    }
}

/// What the platform says of a member's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// The postgres container runs.
    Running,
    /// The pod exists but postgres does not run (pending, failed, crash
    /// looping). The string says why.
    NotRunning(String),
    /// The pod runs but its postgres container has just stopped (a crash):
    /// the kubelet restarts it in place, and it comes back as the same
    /// instance with its data. The string says why it stopped.
    Restarting(String),
    /// The pod is being deleted (drain, `kubectl delete pod`): a planned
    /// loss, its fast shutdown streams the final WAL to the standbys.
    Terminating,
    /// The pod's node is NotReady: its containers cannot be trusted to run.
    NodeNotReady(String),
}

/// One instance of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub ordinal: i32,
    pub state: PodState,
    /// Where the operator probes it (the pod IP in Kubernetes); None when
    /// it has no address yet.
    pub probe_at: Option<Endpoint>,
    /// Where replicas stream from it (the stable DNS name in Kubernetes).
    pub stable: Endpoint,
    /// Which instance this is (the pod's UID): a pod recreated under the
    /// same name is another one.
    pub instance: Option<String>,
}

/// What the failover loop reads of the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub enabled: bool,
    pub check_interval: Duration,
    pub failure_threshold: u32,
    pub max_lag_bytes: i64,
    pub mode: ReplicationMode,
    pub quorum: i32,
    /// spec.replicas: pods with an ordinal below it are members.
    pub replicas: i32,
    /// How long an isolated primary takes to stop accepting writes by itself.
    pub isolation: Duration,
    /// Whether standbys follow their primary over TLS and verify it (TLS
    /// phase Required): one that does not is re-pointed (or one that does,
    /// when false). None (no TLS phase recorded yet) leaves them be.
    pub replication_tls: Option<bool>,
}

/// Who is primary, as recorded (status), with the version that guards the
/// next write (resourceVersion in Kubernetes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub current_primary: Option<String>,
    pub target_primary: Option<String>,
    pub epoch: i64,
    pub version: String,
    /// A planned switchover asked for (annotation `ordinal.dev/switchover-to`).
    pub switchover_to: Option<String>,
    /// The fenced instances (annotation `ordinal.dev/fenced`).
    pub fenced: Vec<String>,
    /// How the recorded target is being promoted (see `PendingPromotion`).
    pub pending: Option<ordinal_crds::PendingPromotion>,
    /// The primary's last WAL position, as recorded.
    pub primary_lsn: Option<u64>,
    /// The synchronous set commits were acknowledged under, as recorded.
    pub synchronous: Option<SynchronousSet>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub namespace: String,
    pub cluster: String,
    pub members: Vec<Member>,
    pub record: Record,
    pub settings: Settings,
}

/// Stopping the old primary of a promotion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceRequest {
    pub pod: String,
    /// It is shutting down cleanly (a deleted pod, a switchover): let it.
    pub planned: bool,
    /// The instance to see stopped (pod UID and IP when it was decided);
    /// a pod recreated under the same name is another instance.
    pub uid: Option<String>,
    pub ip: Option<String>,
    /// Past this, an old primary that cannot be reached has fenced itself.
    pub deadline: Option<Instant>,
    /// When the old primary last answered the loop's probe.
    pub last_answer: Option<Instant>,
    /// When the promotion was recorded (wall clock), if this loop did it.
    pub intent_at: Option<std::time::SystemTime>,
    /// It was lost hung: its address took connections that PostgreSQL
    /// never answered. The instance seen then was alive when the promotion
    /// was recorded, so any container started after it finds the promotion.
    pub hung: bool,
}

/// Where a fence stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceState {
    /// The old primary is seen stopped; says how it was seen.
    Stopped(String),
    /// Not yet; says why.
    Pending(String),
}

/// What the loop reports of the instances.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub instances: Vec<InstanceStatus>,
    /// Why a failover cannot proceed (None: it can, or none is needed).
    pub blocked: Option<String>,
    /// The primary's WAL position, and the synchronous set in effect, to
    /// record when they changed (None: leave as recorded).
    pub primary_lsn: Option<u64>,
    pub synchronous: Option<SynchronousSet>,
    /// The primary's WAL archiving, when it archives.
    pub archive: Option<ordinal_crds::ArchiveStatus>,
}

/// Credentials the loop needs: the superuser to probe and promote, the
/// replication role to re-point replicas.
#[derive(Clone)]
pub struct Credentials {
    pub superuser_password: String,
    pub replication_user: String,
    pub replication_password: String,
    /// While the pods mount a certificate: the operator's connections
    /// trust the cluster's CA and verify the pod's name (`verify-full`).
    pub tls: Option<ClientTls>,
    /// The pooler's lookup role, which the loop keeps on the primary.
    pub pooler: PoolerRole,
}

/// The pooler's lookup role, as the cluster wants it.
#[derive(Clone, PartialEq, Eq)]
pub enum PoolerRole {
    /// No pooler: a role left from one is dropped.
    Absent,
    /// A pooler whose password Secret the reconciler has not made yet.
    Pending,
    /// A pooler: the role logs in with this password.
    Password(String),
}

/// How the loop's sessions use TLS.
#[derive(Clone)]
pub struct ClientTls {
    pub connect: ordinal_crds::pgtls::MakeRustlsConnect,
    /// TLS phase Required: sessions require TLS, and standbys follow with
    /// `sslmode=verify-full`. Before (or after), a session uses TLS when
    /// the server offers it (libpq's `prefer`): while TLS is being turned
    /// on or off, servers differ for as long as their reloads.
    pub required: bool,
}

impl Credentials {
    /// The CA standbys verify their primary against, while TLS is required.
    pub fn replication_ca(&self) -> Option<&'static str> {
        self.tls
            .as_ref()
            .filter(|tls| tls.required)
            .map(|_| ordinal_crds::names::paths::TLS_CA)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("replication_user", &self.replication_user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeamError {
    /// Someone else wrote the record since it was read: re-observe.
    #[error("the record of {cluster} changed since it was read (version {version})")]
    Conflict { cluster: String, version: String },
    /// The cluster no longer exists: the loop ends.
    #[error("cluster {cluster} is gone")]
    Gone { cluster: String },
    #[error("{action} failed for {cluster}: {message}")]
    Failed {
        cluster: String,
        action: &'static str,
        message: String,
    },
}

/// The effects of the failover loop. Each is idempotent: a loop restarted
/// after a crash repeats the step it was in.
pub trait Seam: Send + Sync {
    /// The members, the record and the settings, now.
    fn observe(&self) -> impl Future<Output = Result<Observation, SeamError>> + Send;

    fn credentials(&self) -> impl Future<Output = Result<Credentials, SeamError>> + Send;

    /// The credentials were refused: read them again at the next look
    /// (for seams that keep them).
    fn forget_credentials(&self) {}

    /// Records the promotion (`targetPrimary`, `epoch + 1`, how and why,
    /// the old primary's instance, phase FailingOver), only if who is
    /// primary did not change since `record` was read. Returns the record
    /// as written.
    fn record_intent(
        &self,
        record: &Record,
        intent: &Intent,
    ) -> impl Future<Output = Result<Record, SeamError>> + Send;

    /// Makes sure the old primary no longer serves: no clients routed to
    /// it, its server stopped — and says whether it is seen stopped. Called
    /// again until it is.
    fn fence(
        &self,
        request: &FenceRequest,
    ) -> impl Future<Output = Result<FenceState, SeamError>> + Send;

    /// Restarts a standby's pod (ordinal-init rewinds or re-clones it).
    fn restart(&self, pod: &str, why: &str) -> impl Future<Output = Result<(), SeamError>> + Send;

    /// Publishes the new primary: routing, `currentPrimary = to`, no
    /// `targetPrimary`, `lastFailover`, an Event — only if the record is
    /// still at `record.version`. `outcome.duration_seconds` covers the
    /// failover up to this step; the seam adds the time its routing took
    /// (`phases.publish`) before writing `lastFailover`.
    fn publish(
        &self,
        record: &Record,
        outcome: &FailoverRecord,
    ) -> impl Future<Output = Result<(), SeamError>> + Send;

    /// What the probes saw, and why a failover cannot proceed.
    fn report(&self, report: &Report) -> impl Future<Output = Result<(), SeamError>> + Send;

    /// Resolves when a member changed (a pod event): the loop wakes at once
    /// instead of waiting for the next tick.
    fn changed(&self) -> impl Future<Output = ()> + Send;
}

/// A shared seam is a seam (the loop owns its seam; tests keep a handle).
impl<T: Seam> Seam for std::sync::Arc<T> {
    fn observe(&self) -> impl Future<Output = Result<Observation, SeamError>> + Send {
        T::observe(self)
    }
    fn credentials(&self) -> impl Future<Output = Result<Credentials, SeamError>> + Send {
        T::credentials(self)
    }
    fn forget_credentials(&self) {
        T::forget_credentials(self)
    }
    fn record_intent(
        &self,
        record: &Record,
        intent: &Intent,
    ) -> impl Future<Output = Result<Record, SeamError>> + Send {
        T::record_intent(self, record, intent)
    }
    fn fence(
        &self,
        request: &FenceRequest,
    ) -> impl Future<Output = Result<FenceState, SeamError>> + Send {
        T::fence(self, request)
    }
    fn restart(&self, pod: &str, why: &str) -> impl Future<Output = Result<(), SeamError>> + Send {
        T::restart(self, pod, why)
    }
    fn publish(
        &self,
        record: &Record,
        outcome: &FailoverRecord,
    ) -> impl Future<Output = Result<(), SeamError>> + Send {
        T::publish(self, record, outcome)
    }
    fn report(&self, report: &Report) -> impl Future<Output = Result<(), SeamError>> + Send {
        T::report(self, report)
    }
    fn changed(&self) -> impl Future<Output = ()> + Send {
        T::changed(self)
    }
}
