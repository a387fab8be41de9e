//! The failover loop's seam in Kubernetes: members from a watch on the
//! cluster's pods (a deleted primary wakes the loop at once), the record in
//! the PostgresCluster's status (written with the resourceVersion it was
//! read at), routing by the pods' `ordinal.dev/role` label, fencing by
//! deleting the pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::{Api, Client, Resource, ResourceExt};
use ordinal_crds::{FailoverRecord, PostgresCluster, ReplicationMode, names};
use serde_json::json;

use super::decide;
use super::machine::Intent;
use super::pg;
use super::seam::{
    ClientTls, Credentials, Endpoint, FenceRequest, FenceState, Member, Observation, PodState,
    PoolerRole, Record, Report, Seam, SeamError, Settings,
};
use crate::reconcile::status::{PRIMARY_MANAGER, PrimaryStatus, primary_patch};

/// Field manager of what the failover loop reports (instances, maxLag, the
/// Failover condition).
pub const FAILOVER_MANAGER: &str = "ordinal-operator/failover";
pub const CONDITION_FAILOVER: &str = "FailoverReady";
/// Whether the primary's archive_command succeeds (with `spec.backup`).
pub const CONDITION_ARCHIVING: &str = "WalArchiving";

/// The `WalArchiving` condition from the primary's archiver: failing while
/// the file it last failed on is not archived since (the archiver retries
/// the same file until it succeeds).
pub fn archiving_condition(
    archive: &ordinal_crds::ArchiveStatus,
    primary: &str,
) -> (&'static str, &'static str, String) {
    let failing = archive
        .last_failed_wal
        .as_deref()
        .filter(|failed| archive.last_archived_wal.as_deref() < Some(*failed));
    match failing {
        Some(failed) => (
            "False",
            "ArchiveFailing",
            match &archive.last_error {
                Some(error) => format!(
                    "archive_command fails on {failed} ({} failures since {primary} started; \
                     WAL waits on {primary} for {} s): {error}",
                    archive.failures, archive.lag_seconds
                ),
                None => format!(
                    "archive_command fails on {failed} ({} failures since {primary} started); \
                     WAL waits on {primary} for {} s; the store's answer is in its log \
                     (kubectl logs {primary} -c postgres)",
                    archive.failures, archive.lag_seconds
                ),
            },
        ),
        None => (
            "True",
            "Archiving",
            match (&archive.last_archived_wal, &archive.last_archived_time) {
                (Some(wal), Some(at)) => format!("{primary} archived {wal} at {at}"),
                _ => format!("{primary} has nothing to archive yet"),
            },
        ),
    }
}

mod pods;
pub use pods::{PodFeed, PodWatch};

pub struct KubeSeam {
    client: Client,
    namespace: String,
    cluster: String,
    /// The shared cache of every cluster's pods.
    pods: Store<Pod>,
    /// This cluster's pod events: changes, deletions, stops watched.
    feed: Arc<PodFeed>,
    recorder: Recorder,
    /// The controller's cache of PostgresClusters: a steady look reads the
    /// cluster from it, not from the API server.
    cached: Option<Store<PostgresCluster>>,
    /// The record this seam last wrote (epoch, targetPrimary): a cached
    /// copy older than that is not used.
    written: Mutex<Option<(i64, Option<String>)>>,
    /// The credentials, and when they were read.
    credentials: Mutex<Option<CachedCredentials>>,
    /// The shared cache of the nodes (their Ready condition).
    nodes: Store<Node>,
}

/// How long the credentials read from the Secrets are used before they
/// are read again (at once after a probe is refused for them, when the
/// TLS phase they were read for has moved on, when a pooler was added or
/// removed, and while a new pooler's Secret is awaited).
const CREDENTIALS_FOR: Duration = Duration::from_secs(30);

/// Credentials, when they were read, and what of the cluster they follow:
/// its TLS phase and whether it has a pooler.
type CachedCredentials = (
    Credentials,
    Instant,
    (Option<ordinal_crds::TlsStatus>, bool),
);

/// See [`KubeSeam::watch_for_stop`].
type Stops = Arc<Mutex<HashMap<String, StopWatch>>>;
/// When the address first refused, the task trying it, when it started.
type StopWatch = (
    Arc<std::sync::OnceLock<Instant>>,
    tokio::task::JoinHandle<()>,
    Instant,
);
/// How often, and how long, the address of a primary being deleted is
/// tried: its postmaster stops listening a moment before the kubelet tears
/// its network down (the window is tens of milliseconds to a second).
/// Each try of an address that takes connections costs the postmaster a
/// fork (it forks to answer), hence not more often.
const STOP_WATCH_EVERY: Duration = Duration::from_millis(25);
/// How long a postmaster that took the connection has to answer a startup
/// message in a stop watch (it is tried again 25 ms later).
const STARTUP_ANSWER_WITHIN: Duration = Duration::from_millis(200);
const STOP_WATCH_FOR: Duration = Duration::from_secs(60);

/// Pods seen deleted from the API, by UID: their last state, and when.
type DeletedPods = Arc<Mutex<HashMap<String, (Arc<Pod>, Instant)>>>;

/// A pod deleted from the API while its containers may still have run (a
/// force delete) is taken as stopped this long after: the kubelet of a
/// Ready node kills what it no longer finds in the API well before.
const FORCE_DELETE_GRACE: Duration = Duration::from_secs(30);
/// The grace period an unplanned fence gives the old primary: a live
/// postmaster's fast shutdown fits in it; a hung one is killed after it.
const FENCE_GRACE_SECONDS: i64 = 1;

impl KubeSeam {
    /// The seam of `namespace/cluster`, fed by the shared pod watch.
    /// `cached`: the controller's cache of PostgresClusters, if any.
    pub fn new(
        client: Client,
        recorder: Recorder,
        pods: &PodWatch,
        namespace: &str,
        cluster: &str,
        cached: Option<Store<PostgresCluster>>,
    ) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            pods: pods.store(),
            nodes: pods.nodes(),
            feed: pods.feed(namespace, cluster),
            recorder,
            cached,
            written: Mutex::default(),
            credentials: Mutex::default(),
        }
    }

    /// See [`watch_for_stop`].
    fn watch_for_stop(&self, ip: &str) -> Option<Instant> {
        watch_for_stop(&self.feed.stops, ip)
    }

    /// A seam over a given pod store (tests).
    pub fn with_store(
        client: Client,
        recorder: Recorder,
        namespace: &str,
        cluster: &str,
        pods: Store<Pod>,
        nodes: Store<Node>,
    ) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            pods,
            nodes,
            feed: Arc::default(),
            recorder,
            cached: None,
            written: Mutex::default(),
            credentials: Mutex::default(),
        }
    }

    fn failed(&self, action: &'static str, error: impl std::fmt::Display) -> SeamError {
        SeamError::Failed {
            cluster: format!("{}/{}", self.namespace, self.cluster),
            action,
            message: error.to_string(),
        }
    }

    fn clusters(&self) -> Api<PostgresCluster> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The cluster for a look: the controller's cached copy when it is at
    /// least as new as what this seam wrote and no promotion is under way
    /// (then every read is fresh), else read from the API server.
    async fn cluster_for_look(&self) -> Result<Arc<PostgresCluster>, SeamError> {
        let cached = self.cached.as_ref().and_then(|store| {
            store.get(&reflector::ObjectRef::new(&self.cluster).within(&self.namespace))
        });
        let written = self
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(pgc) = cached {
            let (epoch, target_primary) = pgc
                .status
                .as_ref()
                .map_or((0, None), |s| (s.epoch, s.target_primary.as_ref()));
            let current = match &written {
                Some((written_epoch, target)) => {
                    epoch > *written_epoch
                        || (epoch == *written_epoch && target_primary == target.as_ref())
                }
                None => true,
            };
            if current && target_primary.is_none() {
                return Ok(pgc);
            }
        }
        self.cluster_object().await.map(Arc::new)
    }

    fn wrote(&self, epoch: i64, target: Option<String>) {
        *self.written.lock().unwrap_or_else(PoisonError::into_inner) = Some((epoch, target));
    }

    /// Reads the passwords from the Secrets of `pgc`.
    async fn read_credentials(&self, pgc: &PostgresCluster) -> Result<Credentials, SeamError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let read = |secret: Secret, key: &str| ordinal_crds::secret_text(&secret, key);
        let superuser = api
            .get(&pgc.superuser_secret_name())
            .await
            .map_err(|e| self.failed("read the superuser Secret", e))?;
        let replication = api
            .get(&pgc.replication_secret_name())
            .await
            .map_err(|e| self.failed("read the replication Secret", e))?;
        let missing = |what| {
            self.failed(
                "read credentials",
                format!("the {what} Secret has no password"),
            )
        };
        let tls = self.read_client_tls(&api, pgc).await?;
        // The pooler's lookup role: its Secret is made by the reconciler
        // with the pooler, so it may not exist yet.
        let pooler = match &pgc.spec.pooler {
            Some(_) => api
                .get_opt(&names::pooler_auth_secret(&self.cluster))
                .await
                .map_err(|e| self.failed("read the pooler's Secret", e))?
                .and_then(|s| read(s, names::SECRET_PASSWORD_KEY))
                .map_or(PoolerRole::Pending, PoolerRole::Password),
            None => PoolerRole::Absent,
        };
        Ok(Credentials {
            tls,
            pooler,
            superuser_password: read(superuser, names::SECRET_PASSWORD_KEY)
                .ok_or_else(|| missing("superuser"))?,
            replication_user: read(replication.clone(), names::SECRET_USERNAME_KEY)
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| names::REPLICATION_USER_NAME.to_owned()),
            replication_password: read(replication, names::SECRET_PASSWORD_KEY)
                .ok_or_else(|| missing("replication"))?,
        })
    }

    /// How the loop's sessions use TLS: the CAs of the Secret the pods
    /// mount and of any other Secret a pod still mounts (while
    /// `tls.serverSecret` changes, pods serve either certificate), and
    /// whether TLS is required yet. A cluster with no TLS phase recorded
    /// (the reconciler has not looked since an upgrade) may run with or
    /// without TLS: its sessions use TLS when offered, and a Secret not
    /// made yet is no error.
    async fn read_client_tls(
        &self,
        api: &Api<Secret>,
        pgc: &PostgresCluster,
    ) -> Result<Option<ClientTls>, SeamError> {
        let (secret, required, optional) = match pgc.tls_status() {
            Some(tls) => (
                tls.secret.clone().filter(|_| tls.phase.mounted()),
                tls.phase.required(),
                false,
            ),
            None => (pgc.server_tls_secret_name(), false, true),
        };
        let Some(name) = secret else {
            return Ok(None);
        };
        let secret = match api.get_opt(&name).await {
            Ok(Some(secret)) => secret,
            Ok(None) if optional => return Ok(None),
            Ok(None) => {
                return Err(self.failed("read the TLS Secret", format!("Secret {name} not found")));
            }
            Err(e) => return Err(self.failed("read the TLS Secret", e)),
        };
        let mut bundle = secret
            .data
            .as_ref()
            .and_then(|d| d.get(names::TLS_CA_KEY))
            .ok_or_else(|| {
                self.failed(
                    "read credentials",
                    format!("the TLS Secret {name} has no {}", names::TLS_CA_KEY),
                )
            })?
            .0
            .clone();
        let mut others: Vec<String> = self
            .pods
            .state()
            .iter()
            .filter(|p| self.is_ours(p))
            .filter_map(|p| crate::reconcile::build::mounted_tls_secret(p))
            .filter(|mounted| *mounted != name)
            .collect();
        others.sort();
        others.dedup();
        for other in others {
            // Best effort: a Secret already deleted is served by no pod
            // that will be asked again.
            if let Ok(Some(found)) = api.get_opt(&other).await
                && let Some(ca) = ordinal_crds::secret_text(&found, names::TLS_CA_KEY)
            {
                bundle.push(b'\n');
                bundle.extend_from_slice(ca.as_bytes());
            }
        }
        let connect = ordinal_crds::pgtls::connector(&bundle)
            .map_err(|e| self.failed("read the TLS Secret's CA", e))?;
        Ok(Some(ClientTls { connect, required }))
    }

    async fn cluster_object(&self) -> Result<PostgresCluster, SeamError> {
        match self.clusters().get(&self.cluster).await {
            Ok(pgc) => Ok(pgc),
            Err(kube::Error::Api(e)) if e.code == 404 => Err(SeamError::Gone {
                cluster: format!("{}/{}", self.namespace, self.cluster),
            }),
            Err(e) => Err(self.failed("read the PostgresCluster", e)),
        }
    }

    async fn publish_event(
        &self,
        pgc: &PostgresCluster,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            // The API server refuses a note over 1 kB (the Event is lost).
            note: Some(note.chars().take(1000).collect()),
            action: "Failover".to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &pgc.object_ref(&())).await {
            tracing::warn!(%error, reason, "failed to publish an event");
        }
    }

    /// Sets (Some) or removes (None) the role label of a pod, by merge
    /// patch: unlike an apply, it never creates a pod that is gone, and a
    /// pod that is gone needs no label removed.
    async fn label(&self, pod: &str, role: Option<&str>) -> Result<(), SeamError> {
        let body = json!({ "metadata": { "labels": { names::LABEL_ROLE: role } } });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = PatchParams {
            field_manager: Some(names::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match api.patch(pod, &params, &Patch::Merge(&body)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(self.failed("label a pod", e)),
        }
    }

    /// Writes who is primary, guarded by `version`; `last` is the
    /// lastFailover to keep or record (this manager owns it: omitting it
    /// would erase it).
    async fn write_primary(
        &self,
        version: &str,
        primary: &PrimaryStatus,
        last: Option<&FailoverRecord>,
    ) -> Result<(), SeamError> {
        let mut body = primary_patch(primary, Some(version));
        if let Some(last) = last {
            body["status"]["lastFailover"] =
                serde_json::to_value(last).map_err(|e| self.failed("encode lastFailover", e))?;
        }
        match self
            .clusters()
            .patch_status(
                &self.cluster,
                &PatchParams::apply(PRIMARY_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(self.conflict(version)),
            Err(e) => Err(self.failed("write the primary to the status", e)),
        }
    }

    /// The pod `name` as the watch last saw it.
    fn pod(&self, name: &str) -> Option<Arc<Pod>> {
        self.pods
            .get(&reflector::ObjectRef::new(name).within(&self.namespace))
            .filter(|p| self.is_ours(p))
    }

    /// Whether a pod of the shared cache (every cluster's) is this
    /// cluster's: in its namespace, with its label.
    fn is_ours(&self, pod: &Pod) -> bool {
        pod.metadata.namespace.as_deref() == Some(self.namespace.as_str())
            && pod.labels().get(names::LABEL_CLUSTER) == Some(&self.cluster)
    }

    /// Deletes a pod, with the given grace period (None: the pod's own).
    async fn delete_pod(&self, pod: &str, grace: Option<i64>) -> Result<(), SeamError> {
        self.delete_instance(pod, None, grace).await
    }

    /// Deletes pod `pod`, only if it still is instance `uid` when given: a
    /// replacement under the same name is never deleted for its predecessor.
    async fn delete_instance(
        &self,
        pod: &str,
        uid: Option<&str>,
        grace: Option<i64>,
    ) -> Result<(), SeamError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut params = DeleteParams::default();
        if let Some(seconds) = grace.and_then(|g| u32::try_from(g).ok()) {
            params = params.grace_period(seconds);
        }
        if let Some(uid) = uid {
            params.preconditions = Some(kube::api::Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            });
        }
        match api.delete(pod, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            // The precondition failed: that instance is gone already.
            Err(kube::Error::Api(e)) if e.code == 409 && uid.is_some() => Ok(()),
            Err(e) => Err(self.failed("delete a pod", e)),
        }
    }

    fn conflict(&self, version: &str) -> SeamError {
        SeamError::Conflict {
            cluster: format!("{}/{}", self.namespace, self.cluster),
            version: version.to_owned(),
        }
    }

    /// Whether `node` is Ready, as the node watch last saw it; None when
    /// unknown.
    fn node_ready(&self, node: &str) -> Option<bool> {
        self.nodes
            .get(&reflector::ObjectRef::new(node))?
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status == "True")
    }

    /// Makes the pods' role labels follow the record: the labels route the
    /// -rw and -ro Services. Not while a promotion is under way.
    async fn route(&self, record: &Record, pods: &[Arc<Pod>]) {
        if record.target_primary.is_some() {
            return;
        }
        let Some(primary) = record.current_primary.as_deref() else {
            return;
        };
        for pod in pods {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = pod.name_any();
            let want = if name == primary {
                names::ROLE_PRIMARY
            } else {
                names::ROLE_REPLICA
            };
            if pod.labels().get(names::LABEL_ROLE).map(String::as_str) != Some(want) {
                match self.label(&name, Some(want)).await {
                    Ok(()) => tracing::info!(pod = %name, role = want, "labelled"),
                    Err(error) => tracing::warn!(pod = %name, %error, "cannot label"),
                }
            }
        }
    }
}

/// The pod is in a terminal phase (Failed or Succeeded). The kubelet gives
/// a pod whose restart policy is Always a terminal phase only once it is
/// terminal — deleted or evicted — and it has seen every container of it
/// stopped (its SyncTerminatingPod); it restarts none of them after that,
/// and a phase never leaves Failed or Succeeded. A crash-looping
/// container's stop, older than the deletion, is so confirmed without
/// waiting for the pod to be gone or replaced. (The pod garbage collector
/// also marks pods Failed, on a node that is gone or declared out of
/// service: there, what stopped them is the node's own end.)
pub fn pod_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

/// The pod's postgres container stopped after its deletion was asked for:
/// a terminated state from before (a crash the kubelet is restarting in
/// place) proves nothing, since a container may have started since that the
/// status does not show yet. Container timestamps have whole seconds: the
/// stop must fall in a later second than the request.
pub fn pod_stopped_after_deletion(pod: &Pod) -> bool {
    let Some(deleted) = pod.metadata.deletion_timestamp.as_ref() else {
        return false;
    };
    let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
    let requested = deleted.0.as_second() - grace;
    postgres_status(pod)
        .and_then(|c| c.state.as_ref())
        .filter(|state| state.running.is_none())
        .and_then(|state| state.terminated.as_ref())
        .and_then(|t| t.finished_at.as_ref())
        .is_some_and(|finished| finished.0.as_second() > requested)
}

/// Starts trying `ip` (the address of a primary being deleted) every few
/// milliseconds, unless it is tried already, and returns when it first
/// said its postmaster is shutting down or refused connections, if it has.
/// A postmaster shutting down has ended its sessions and accepts no
/// connection again; one that stopped listening has finished its
/// shutdown. The kubelet tears the pod's network down within moments of
/// the exit, after which the address only times out — so a look now and
/// then would miss it. Started as soon as the pod is seen terminating.
fn watch_for_stop(stops: &Stops, ip: &str) -> Option<Instant> {
    let mut stops = stops.lock().unwrap_or_else(PoisonError::into_inner);
    // Forget watches long over (what they saw is of no use by then).
    stops.retain(|_, (_, task, started)| {
        !task.is_finished() || started.elapsed() < 2 * STOP_WATCH_FOR
    });
    if let Some((refused, _, _)) = stops.get(ip) {
        return refused.get().copied();
    }
    let refused = Arc::new(std::sync::OnceLock::new());
    let seen = Arc::clone(&refused);
    let address = ip.to_owned();
    let task = tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < STOP_WATCH_FOR {
            if let Address::Refused | Address::ShuttingDown = address_state(&address).await {
                let _ = seen.set(Instant::now());
                return;
            }
            tokio::time::sleep(STOP_WATCH_EVERY).await;
        }
    });
    stops.insert(ip.to_owned(), (refused, task, Instant::now()));
    None
}

/// Whether the fence may take the old primary's address refusing
/// connections, once its pod is being deleted, for its stop: planned (it
/// was serving a moment ago), or hung (see [`FenceRequest::hung`]).
fn watches_for_stop(request: &FenceRequest) -> bool {
    (request.planned
        && request
            .last_answer
            .is_some_and(|t| t.elapsed() < PLANNED_STOP_SEEN_WITHIN))
        || (!request.planned && request.hung)
}

/// Whether the pod's postgres container, as it is now, started after
/// `intent_at` (whole seconds, as the kubelet reports them): its
/// ordinal-init then found the promotion recorded and refused to start it
/// as primary; every earlier instance of the container has exited (a
/// container restarts only once the last one exited, and the processes of
/// a container end with its first). The crash of a primary restarted in
/// place is so confirmed without waiting for the kubelet to kill it.
pub fn restarted_after(pod: &Pod, intent_at: std::time::SystemTime) -> bool {
    let Ok(since) = intent_at.duration_since(std::time::UNIX_EPOCH) else {
        return false;
    };
    // The first whole second at or after the intent.
    let after =
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX) + i64::from(since.subsec_nanos() > 0);
    let Some(c) = postgres_status(pod) else {
        return false;
    };
    let Some(state) = c.state.as_ref() else {
        return false;
    };
    let started = if let Some(running) = &state.running {
        running.started_at.as_ref()
    } else if let Some(terminated) = &state.terminated {
        terminated.started_at.as_ref()
    } else {
        // Waiting to be restarted: the last instance that ran.
        c.last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.started_at.as_ref())
    };
    started.is_some_and(|t| t.0.as_second() >= after)
}

/// The status of the pod's postgres container.
fn postgres_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "postgres")
}

pub fn pod_stopped(pod: &Pod) -> bool {
    postgres_status(pod)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|state| state.running.is_none() && state.terminated.is_some())
}

/// The pod's postgres container has run, or runs.
fn postgres_ever_started(pod: &Pod) -> bool {
    postgres_status(pod).is_some_and(|c| {
        let state = c.state.as_ref();
        state.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            || c.last_state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some())
    })
}

/// The pod's install container has finished: it took the data volume's
/// lock (and let it go), so no earlier instance of the pod on its node runs.
pub fn volume_lock_taken(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == names::INSTALL_CONTAINER))
        .is_some_and(|c| {
            let done = |s: Option<&k8s_openapi::api::core::v1::ContainerState>| {
                s.and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == 0)
            };
            done(c.state.as_ref()) || done(c.last_state.as_ref())
        })
}

enum Address {
    /// Nothing listens there: the host answers, the port is closed.
    Refused,
    /// Its postmaster is shutting down: it accepts no connection again.
    ShuttingDown,
    /// No route to it: gone, or on the other side of a partition.
    Unreachable,
    /// Something may still listen (it connects, or it does not say).
    Open,
}

/// A planned stop is confirmed by a closed address only if the primary
/// answered this recently (it was serving, not restarting).
const PLANNED_STOP_SEEN_WITHIN: Duration = Duration::from_secs(5);

/// Whether anything still listens on PostgreSQL's port at `ip`, and
/// whether that is a postmaster shutting down.
async fn address_state(ip: &str) -> Address {
    let connect = tokio::net::TcpStream::connect((ip, names::POSTGRES_PORT as u16));
    match tokio::time::timeout(Duration::from_millis(500), connect).await {
        Ok(Ok(mut stream)) => {
            let answer =
                tokio::time::timeout(STARTUP_ANSWER_WITHIN, pg::startup_exchange(&mut stream));
            match answer.await {
                Ok(Ok(pg::StartupAnswer::ShuttingDown)) => Address::ShuttingDown,
                _ => Address::Open,
            }
        }
        Err(_) => Address::Open,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Address::Refused,
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable
            ) =>
        {
            Address::Unreachable
        }
        Ok(Err(_)) => Address::Open,
    }
}

/// What the spec says the loop should do.
pub fn settings_of(pgc: &PostgresCluster) -> Settings {
    let spec = &pgc.spec;
    Settings {
        enabled: spec.failover.enabled,
        check_interval: std::time::Duration::from_secs(
            u64::try_from(spec.failover.check_interval_seconds.max(1)).unwrap_or(1),
        ),
        failure_threshold: u32::try_from(spec.failover.failure_threshold.max(1)).unwrap_or(1),
        max_lag_bytes: spec.failover.max_lag_bytes_on_failover,
        mode: spec.replication.mode,
        quorum: if spec.replication.mode == ReplicationMode::Quorum {
            spec.replication.quorum
        } else {
            0
        },
        replicas: spec.replicas,
        isolation: std::time::Duration::from_secs(
            u64::try_from(spec.failover.isolation_seconds.max(1)).unwrap_or(10),
        ),
        replication_tls: pgc.tls_status().map(|tls| tls.phase.required()),
    }
}

/// The pod's state as the loop sees it; `node_ready` is None when unknown.
pub fn pod_state(pod: &Pod, node_ready: Option<bool>) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Terminating;
    }
    if node_ready == Some(false) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        return PodState::NodeNotReady(node);
    }
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    if phase != "Running" {
        return PodState::NotRunning(format!("pod phase {phase}"));
    }
    let postgres = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "postgres"));
    match postgres.and_then(|c| c.state.as_ref()) {
        Some(state) if state.running.is_some() => PodState::Running,
        Some(state) => {
            let why = state
                .waiting
                .as_ref()
                .and_then(|w| w.reason.clone())
                .or_else(|| state.terminated.as_ref().and_then(|t| t.reason.clone()))
                .unwrap_or_else(|| "not running".to_owned());
            // Crash looping: the kubelet waits before each restart.
            if why == "CrashLoopBackOff" {
                PodState::NotRunning(format!("container postgres: {why}"))
            } else {
                PodState::Restarting(format!("container postgres: {why}"))
            }
        }
        None => PodState::NotRunning("container postgres has no state yet".to_owned()),
    }
}

impl Seam for KubeSeam {
    async fn observe(&self) -> Result<Observation, SeamError> {
        // Until the pod watch has listed once, an empty store would read as
        // "every pod is gone".
        if tokio::time::timeout(
            std::time::Duration::from_secs(30),
            self.pods.wait_until_ready(),
        )
        .await
        .is_err()
        {
            return Err(self.failed(
                "watch the pods",
                "the pod watch has not listed the pods yet",
            ));
        }
        let pgc = self.cluster_for_look().await?;
        let none = Default::default();
        let status = pgc.status.as_ref().unwrap_or(&none);
        let record = Record {
            current_primary: status.current_primary.clone(),
            target_primary: status.target_primary.clone(),
            epoch: status.epoch,
            version: pgc.resource_version().unwrap_or_default(),
            pending: status.pending_promotion.clone(),
            primary_lsn: status.primary_lsn.as_deref().and_then(decide::parse_lsn),
            synchronous: status.synchronous.clone(),
            switchover_to: pgc
                .annotations()
                .get(names::ANNOTATION_SWITCHOVER_TO)
                .cloned(),
            fenced: pgc.fenced_instances(),
        };
        let mut pods: Vec<(i32, Arc<Pod>)> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| self.is_ours(p))
            .filter_map(|p| Some((names::ordinal_of(&self.cluster, &p.name_any())?, p)))
            .collect();
        // By ordinal: the store's order is arbitrary.
        pods.sort_by_key(|(o, _)| *o);
        let pods: Vec<Arc<Pod>> = pods.into_iter().map(|(_, p)| p).collect();
        self.route(&record, &pods).await;
        // Only the primary's node is looked up: its loss is what matters.
        let primary_node = pods
            .iter()
            .find(|p| Some(p.name_any()) == record.current_primary)
            .and_then(|p| p.spec.as_ref()?.node_name.clone());
        let primary_node_ready = match &primary_node {
            Some(node) => self.node_ready(node),
            None => None,
        };
        let service = pgc.headless_service_name();
        let members = pods
            .iter()
            .map(|pod| {
                let name = pod.name_any();
                let is_primary = Some(&name) == record.current_primary.as_ref();
                Member {
                    ordinal: names::ordinal_of(&self.cluster, &name).unwrap_or(0),
                    state: pod_state(pod, if is_primary { primary_node_ready } else { None }),
                    probe_at: pod
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_ip.clone())
                        .map(|ip| Endpoint {
                            host: ip,
                            port: names::POSTGRES_PORT as u16,
                            hostaddr: None,
                            tls_name: Some(names::pod_dns(&name, &service, &self.namespace)),
                        }),
                    stable: Endpoint {
                        host: names::pod_dns(&name, &service, &self.namespace),
                        port: names::POSTGRES_PORT as u16,
                        hostaddr: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
                        tls_name: None,
                    },
                    instance: pod.uid(),
                    name,
                }
            })
            .collect();
        Ok(Observation {
            namespace: self.namespace.clone(),
            cluster: self.cluster.clone(),
            members,
            record,
            settings: settings_of(&pgc),
        })
    }

    async fn credentials(&self) -> Result<Credentials, SeamError> {
        let pgc = self.cluster_for_look().await?;
        let follows = (pgc.tls_status().cloned(), pgc.spec.pooler.is_some());
        if let Some((credentials, at, read_for)) = self
            .credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            && at.elapsed() < CREDENTIALS_FOR
            && read_for == follows
            && credentials.pooler != PoolerRole::Pending
        {
            return Ok(credentials);
        }
        let credentials = self.read_credentials(&pgc).await?;
        *self
            .credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some((credentials.clone(), Instant::now(), follows));
        Ok(credentials)
    }

    fn forget_credentials(&self) {
        *self
            .credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    async fn record_intent(&self, record: &Record, intent: &Intent) -> Result<Record, SeamError> {
        let primary = PrimaryStatus {
            current_primary: intent.from.clone(),
            target_primary: Some(intent.to.clone()),
            epoch: record.epoch + 1,
            bootstrapped: true,
            pending: Some(ordinal_crds::PendingPromotion {
                planned: intent.planned,
                reason: intent.reason.clone(),
                // The instance that was observed, not whatever pod has its
                // name now (a force-deleted pod's replacement appears at once).
                from_uid: intent.from_uid.clone(),
                from_ip: intent.from_ip.clone(),
                old_primary_lsn: intent.old_primary_lsn.map(pg::format_lsn),
                chosen_lsn: intent.chosen_lsn.map(pg::format_lsn),
                lost_bytes: intent.lost_bytes,
            }),
        };
        // Other writers (the reconciler's phase, the instances) move the
        // resourceVersion all the time: what must not have moved is who is
        // primary. Re-read, check it, write with the fresh version.
        let mut attempt = 0;
        let written = loop {
            let fresh = self.cluster_object().await?;
            let status = fresh.status.clone().unwrap_or_default();
            if status.current_primary != record.current_primary
                || status.target_primary != record.target_primary
                || status.epoch != record.epoch
            {
                return Err(self.conflict(&record.version));
            }
            let version = fresh.resource_version().unwrap_or_default();
            let last = status.last_failover.clone();
            match self.write_primary(&version, &primary, last.as_ref()).await {
                Err(SeamError::Conflict { .. }) if attempt < 5 => attempt += 1,
                Err(error) => return Err(error),
                Ok(()) => break fresh,
            }
        };
        self.wrote(primary.epoch, primary.target_primary.clone());
        self.publish_event(
            &written,
            EventType::Warning,
            "FailoverStarted",
            format!(
                "promoting {} in place of {} (epoch {}): {}",
                intent.to, intent.from, primary.epoch, intent.reason
            ),
        )
        .await;
        Ok(Record {
            current_primary: Some(intent.from.clone()),
            target_primary: Some(intent.to.clone()),
            epoch: primary.epoch,
            version: String::new(),
            switchover_to: record.switchover_to.clone(),
            fenced: record.fenced.clone(),
            pending: primary.pending.clone(),
            primary_lsn: record.primary_lsn,
            synchronous: record.synchronous.clone(),
        })
    }

    async fn fence(&self, request: &FenceRequest) -> Result<FenceState, SeamError> {
        // First stop routing clients to it, then stop it.
        self.label(&request.pod, None).await?;
        let now = self.pod(&request.pod);
        // An intent that did not name the instance (recorded by an older
        // operator) takes the pod there now for it.
        let same_instance = now
            .as_ref()
            .is_some_and(|p| request.uid.is_none() || p.uid().as_deref() == request.uid.as_deref());
        // A pod whose postgres never started is no instance to stop (the
        // replacement of a force-deleted one, named by an intent recorded
        // without its UID): never delete it, look for the old one below.
        if let Some(pod) = now.filter(|p| same_instance && postgres_ever_started(p)) {
            if pod_terminal(&pod) {
                return Ok(FenceState::Stopped(
                    "its pod is in a terminal phase: the kubelet has stopped its containers and restarts none".to_owned(),
                ));
            }
            if pod_stopped_after_deletion(&pod) {
                return Ok(FenceState::Stopped(
                    "its postgres container stopped after its pod was deleted".to_owned(),
                ));
            }
            if !request.planned
                && let Some(at) = request.intent_at
                && restarted_after(&pod, at)
            {
                return Ok(FenceState::Stopped(
                    "its postgres container restarted after the promotion was recorded: ordinal-init found it and does not start it as primary".to_owned(),
                ));
            }
            let grace = pod.metadata.deletion_grace_period_seconds;
            let shorten = !request.planned && grace.is_none_or(|g| g > FENCE_GRACE_SECONDS);
            if pod.metadata.deletion_timestamp.is_none() || shorten {
                self.delete_instance(
                    &request.pod,
                    pod.uid().as_deref(),
                    (!request.planned).then_some(FENCE_GRACE_SECONDS),
                )
                .await?;
            }
            // A primary being deleted that was serving a moment ago, whose
            // postmaster now says it is shutting down (a fast shutdown has
            // begun: it accepts no connection again and exits) or whose
            // address refuses connections (it has exited); the kubelet starts
            // no container in a terminating pod. Seen well before the kubelet
            // reports the container stopped (its relist runs once a second).
            // Its final WAL is waited for before the promotion (machine.rs). Likewise a
            // hung one once the kubelet has killed it: it was alive when the
            // promotion was recorded, so a container started since finds it
            // and does not start as primary.
            if watches_for_stop(request)
                && pod.metadata.deletion_timestamp.is_some()
                && let Some(ip) = &request.ip
                && self.watch_for_stop(ip).is_some()
            {
                return Ok(FenceState::Stopped(format!(
                    "it is being deleted and its address {ip} refused connections, or said its postmaster is shutting down"
                )));
            }
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if let Some(node) = node
                && self.node_ready(&node) == Some(false)
            {
                return Ok(match request.deadline {
                    Some(deadline) if Instant::now() >= deadline => FenceState::Stopped(format!(
                        "its node {node} is NotReady and the isolation deadline has passed: it has stopped by itself"
                    )),
                    _ => FenceState::Pending(format!(
                        "{} is on node {node}, which is NotReady: waiting for it to stop by itself (isolation)",
                        request.pod
                    )),
                });
            }
            return Ok(FenceState::Pending(format!(
                "waiting for the old primary {} to stop",
                request.pod
            )));
        }
        // The instance is gone from the API. Gone after its containers
        // stopped (the kubelet's own final delete) proves it stopped; a
        // force delete proves nothing, so look at its address.
        let last = request.uid.as_ref().and_then(|uid| {
            self.feed
                .deleted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(uid)
                .cloned()
        });
        if let Some((pod, _)) = &last
            && (pod_stopped_after_deletion(pod) || pod_terminal(pod))
        {
            return Ok(FenceState::Stopped(
                "its pod was deleted once its containers had stopped".to_owned(),
            ));
        }
        // Its replacement on the same node got the data volume's lock,
        // which every process of the old instance held until it exited.
        let old_node = last
            .as_ref()
            .and_then(|(p, _)| p.spec.as_ref())
            .and_then(|s| s.node_name.clone());
        if let (Some(node), Some(replacement)) = (old_node, self.pod(&request.pod))
            && replacement
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                == Some(node.as_str())
            && volume_lock_taken(&replacement)
        {
            return Ok(FenceState::Stopped(format!(
                "its replacement on node {node} took the data volume's lock, which the old instance held until its last process exited"
            )));
        }
        // Its address was watched while it was being deleted (above), and
        // refused connections before the pod went; or, watched from when
        // its pod was seen gone (a force delete: the kubelet stops its
        // containers and starts none), after.
        if let Some(ip) = &request.ip
            && let Some(at) = self.watch_for_stop(ip)
        {
            let gone = last.as_ref().map(|(_, gone)| *gone);
            if watches_for_stop(request) && gone.is_some_and(|gone| at <= gone) {
                return Ok(FenceState::Stopped(format!(
                    "its address {ip} refused connections, or said its postmaster is shutting down, while it was being deleted"
                )));
            }
            if gone.is_some_and(|gone| at > gone) {
                return Ok(FenceState::Stopped(format!(
                    "its pod is gone and its address {ip} then refused connections, or said its postmaster is shutting down"
                )));
            }
        }
        if let Some(ip) = &request.ip {
            match address_state(ip).await {
                Address::Refused => {
                    return Ok(FenceState::Stopped(format!(
                        "its pod is gone and its address {ip} refuses connections"
                    )));
                }
                Address::ShuttingDown => {
                    return Ok(FenceState::Stopped(format!(
                        "its pod is gone and the postmaster at {ip} is shutting down"
                    )));
                }
                // No route to it: gone from this node's network, or on a node
                // cut off from this one, where it fences itself by the deadline.
                Address::Unreachable if request.deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Ok(FenceState::Stopped(format!(
                        "its pod is gone, its address {ip} is unreachable and the isolation deadline has passed"
                    )));
                }
                Address::Unreachable | Address::Open => {}
            }
        }
        match last {
            Some((_, since)) if since.elapsed() >= FORCE_DELETE_GRACE => Ok(FenceState::Stopped(
                format!("its pod was deleted {}s ago", since.elapsed().as_secs()),
            )),
            _ => Ok(FenceState::Pending(format!(
                "the pod of the old primary {} is gone but its server may still run: waiting for its address to close",
                request.pod
            ))),
        }
    }

    async fn restart(&self, pod: &str, why: &str) -> Result<(), SeamError> {
        self.delete_pod(pod, None).await?;
        let pgc = self.cluster_object().await?;
        self.publish_event(
            &pgc,
            EventType::Warning,
            "StandbyRejoining",
            format!("restarting {pod} so that it rewinds or re-clones from the primary: {why}"),
        )
        .await;
        Ok(())
    }

    async fn publish(&self, record: &Record, outcome: &FailoverRecord) -> Result<(), SeamError> {
        let started = Instant::now();
        self.label(&outcome.to, Some(names::ROLE_PRIMARY)).await?;
        let mut outcome = outcome.clone();
        outcome.phases.publish = started.elapsed().as_secs_f64();
        outcome.duration_seconds += outcome.phases.publish;
        let primary = PrimaryStatus {
            current_primary: outcome.to.clone(),
            target_primary: None,
            epoch: record.epoch,
            bootstrapped: true,
            pending: None,
        };
        // Other writers (the reconciler's phase) move the resourceVersion
        // between the intent and now: what must not have moved is the
        // intent itself. Re-read, check it, write with the fresh version.
        let mut attempt = 0;
        loop {
            let fresh = self.cluster_object().await?;
            let status = fresh.status.clone().unwrap_or_default();
            if status.target_primary.as_deref() != Some(outcome.to.as_str())
                || status.epoch != record.epoch
            {
                return Err(self.conflict(&record.version));
            }
            let version = fresh.resource_version().unwrap_or_default();
            match self.write_primary(&version, &primary, Some(&outcome)).await {
                Err(SeamError::Conflict { .. }) if attempt < 5 => attempt += 1,
                other => break other?,
            }
        }
        self.wrote(primary.epoch, None);
        let pgc = self.cluster_object().await?;
        if record.switchover_to.as_deref() == Some(outcome.to.as_str()) {
            let body =
                json!({"metadata": {"annotations": {names::ANNOTATION_SWITCHOVER_TO: null}}});
            if let Err(error) = self
                .clusters()
                .patch(&self.cluster, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                tracing::warn!(%error, "cannot remove the switchover annotation");
            }
        }
        let lost = match outcome.lost_bytes {
            Some(0) => "no acknowledged commit lost".to_owned(),
            Some(bytes) => format!("at least {bytes} bytes of WAL lost"),
            None => "unknown WAL lost: what the old primary wrote after it was last seen did not reach the new one (async mode)".to_owned(),
        };
        self.publish_event(
            &pgc,
            EventType::Warning,
            "FailoverComplete",
            format!(
                "{} promoted in place of {} in {:.2}s ({}); old primary at {}, promoted at {}; {lost}; \
                 phases: detect {:.2}s, decide {:.2}s, fence {:.2}s, promote {:.2}s, publish {:.2}s",
                outcome.to,
                outcome.from,
                outcome.duration_seconds,
                outcome.reason,
                outcome.old_primary_lsn.as_deref().unwrap_or("unknown"),
                outcome.promoted_lsn.as_deref().unwrap_or("unknown"),
                outcome.phases.detect,
                outcome.phases.decide,
                outcome.phases.fence,
                outcome.phases.promote,
                outcome.phases.publish,
            ),
        )
        .await;
        Ok(())
    }

    async fn report(&self, report: &Report) -> Result<(), SeamError> {
        let instances = &report.instances;
        let blocked = report.blocked.as_deref();
        let pgc = self.cluster_object().await?;
        let old = pgc
            .status
            .as_ref()
            .and_then(|s| s.condition(CONDITION_FAILOVER))
            .cloned();
        let (status, reason, message) = match blocked {
            Some(why) => ("False", "Waiting", why.to_owned()),
            None => (
                "True",
                "AsExpected",
                "the failover loop sees the primary and can promote a replica".to_owned(),
            ),
        };
        let transition = match &old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
        };
        let body = json!({
            "apiVersion": "ordinal.dev/v1alpha1",
            "kind": "PostgresCluster",
            "status": {
                "instances": instances,
                "maxLag": decide::max_lag(instances),
                "primaryLsn": report.primary_lsn.map(pg::format_lsn),
                // This manager owns the field: omitting it would remove it.
                "synchronous": report
                    .synchronous
                    .clone()
                    .or_else(|| pgc.status.as_ref().and_then(|s| s.synchronous.clone())),
                "conditions": [{
                    "type": CONDITION_FAILOVER,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": transition,
                    "observedGeneration": pgc.metadata.generation,
                }],
            }
        });
        let mut body = body;
        // Present only while the primary archives (no null in an apply).
        let old_archiving = pgc
            .status
            .as_ref()
            .and_then(|s| s.condition(CONDITION_ARCHIVING))
            .cloned();
        let mut archiving_failed = None;
        if let Some(archive) = &report.archive {
            body["status"]["archive"] = json!(archive);
            let primary = pgc
                .status
                .as_ref()
                .and_then(|s| s.current_primary.clone())
                .unwrap_or_else(|| "the primary".to_owned());
            let (status, reason, message) = archiving_condition(archive, &primary);
            let flipped = old_archiving.as_ref().is_none_or(|c| c.status != status);
            if flipped && status == "False" {
                archiving_failed = Some(message.clone());
            }
            let transition = match &old_archiving {
                Some(c) if !flipped => c.last_transition_time.clone(),
                _ => k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ),
            };
            if let Some(conditions) = body["status"]["conditions"].as_array_mut() {
                conditions.push(json!({
                    "type": CONDITION_ARCHIVING,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": transition,
                    "observedGeneration": pgc.metadata.generation,
                }));
            }
        } else if let Some(old) = &old_archiving
            && pgc.spec.backup.is_some()
            && let Some(conditions) = body["status"]["conditions"].as_array_mut()
        {
            // The primary was not read this round: kept as it was.
            conditions.push(json!(old));
        }
        self.clusters()
            .patch_status(
                &self.cluster,
                &PatchParams::apply(FAILOVER_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| self.failed("report instances", e))?;
        if let Some(why) = blocked
            && old.is_none_or(|c| c.message != why)
        {
            self.publish_event(&pgc, EventType::Warning, "FailoverWaiting", why.to_owned())
                .await;
        }
        if let Some(why) = archiving_failed {
            self.publish_event(&pgc, EventType::Warning, "WalArchivingFailing", why)
                .await;
        }
        Ok(())
    }

    async fn changed(&self) {
        self.feed.changed.notified().await;
    }
}

#[cfg(test)]
mod tests;
