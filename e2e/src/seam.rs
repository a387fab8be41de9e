//! The failover loop's seam over local postgres processes: the local
//! `Cluster` plays the API server (the record lives here and in the state
//! file ordinal-init reads), the pods' processes play the pods, and a small
//! "kubelet" restarts a pod's container (through `ordinal-init run`, the
//! guard) when its process exits — as Kubernetes would.

// A test harness: a failure here is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ordinal_crds::{FailoverRecord, InstanceStatus, ReplicationMode, SynchronousSet};
use ordinal_operator::failover::machine::Intent;
use ordinal_operator::failover::seam::{
    Credentials, Endpoint, FenceRequest, FenceState, Member, Observation, PodState, PoolerRole,
    Record, Report, Seam, SeamError, Settings,
};
use tokio::sync::Notify;

use crate::local::{Cluster, Pod, REPLICATION_PASSWORD, SUPERUSER_PASSWORD};

/// What the API server would hold: the record and what the loop reported.
#[derive(Debug)]
pub struct State {
    pub current: String,
    pub target: Option<String>,
    pub epoch: i64,
    pub version: u64,
    pub switchover_to: Option<String>,
    /// How the recorded target is being promoted.
    pub pending: Option<ordinal_crds::PendingPromotion>,
    pub settings: Settings,
    pub instances: Vec<InstanceStatus>,
    pub blocked: Option<String>,
    /// The primary's LSN and the synchronous set, as the loop recorded them.
    pub primary_lsn: Option<u64>,
    pub synchronous: Option<SynchronousSet>,
    pub last_failover: Option<FailoverRecord>,
    /// Every published promotion, in order.
    pub promotions: Vec<FailoverRecord>,
    /// Pods the operator cannot reach (its own network trouble).
    pub partitioned: BTreeSet<String>,
    /// Pods the test keeps down (the kubelet does not restart them).
    pub held_down: BTreeSet<String>,
}

pub struct LocalSeam {
    /// Before `cluster`: fields drop in order, and the servers must stop
    /// before their directories are removed.
    pub pods: Vec<Arc<Pod>>,
    pub cluster: Cluster,
    pub state: Mutex<State>,
    changed: Arc<Notify>,
    stop_kubelet: Arc<AtomicBool>,
    /// A port nothing listens on: where a partitioned pod's probes go.
    blackhole: u16,
}

impl LocalSeam {
    /// A bootstrapped cluster of `n` pods: db-0 primary, the others
    /// streaming replicas, every one started through ordinal-init.
    pub fn bootstrap(init_bin: &str, n: u32, mode: ReplicationMode, quorum: i32) -> Arc<Self> {
        let cluster = Cluster::new(init_bin);
        let pods: Vec<Arc<Pod>> = (0..n).map(|i| Arc::new(cluster.pod(i))).collect();
        cluster.set_state("db-0", false, 0);
        let out = pods[0].init();
        assert!(
            out.status.success(),
            "db-0 init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pods[0].start().expect("db-0 starts");
        cluster.set_state("db-0", true, 0);
        for pod in &pods[1..] {
            let out = pod.init();
            assert!(
                out.status.success(),
                "{} init: {}",
                pod.name,
                String::from_utf8_lossy(&out.stderr)
            );
            pod.start().expect("replica starts");
        }
        let blackhole = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let seam = Arc::new(Self {
            cluster,
            pods,
            state: Mutex::new(State {
                current: "db-0".to_owned(),
                target: None,
                epoch: 0,
                version: 1,
                switchover_to: None,
                pending: None,
                settings: Settings {
                    enabled: true,
                    check_interval: Duration::from_secs(1),
                    failure_threshold: 3,
                    max_lag_bytes: 16 << 20,
                    mode,
                    quorum,
                    replicas: n as i32,
                    isolation: Duration::from_secs(10),
                    replication_tls: None,
                },
                instances: Vec::new(),
                blocked: None,
                primary_lsn: None,
                synchronous: None,
                last_failover: None,
                promotions: Vec::new(),
                partitioned: BTreeSet::new(),
                held_down: BTreeSet::new(),
            }),
            changed: Arc::new(Notify::new()),
            stop_kubelet: Arc::new(AtomicBool::new(false)),
            blackhole,
        });
        seam.start_kubelet();
        seam
    }

    pub fn pod(&self, name: &str) -> &Arc<Pod> {
        self.pods.iter().find(|p| p.name == name).expect("pod")
    }

    pub fn current(&self) -> String {
        self.state.lock().unwrap().current.clone()
    }

    /// Where clients are routed (the -rw Service): nowhere while a
    /// promotion is under way, else the published primary.
    pub fn routed_primary(&self) -> Option<Arc<Pod>> {
        let state = self.state.lock().unwrap();
        if state.target.is_some() {
            return None;
        }
        Some(self.pod(&state.current).clone())
    }

    pub fn partition(&self, pod: &str, cut: bool) {
        let mut state = self.state.lock().unwrap();
        if cut {
            state.partitioned.insert(pod.to_owned());
        } else {
            state.partitioned.remove(pod);
        }
    }

    /// Keeps a pod down (stopped, not restarted) or lets it come back.
    pub fn hold_down(&self, pod: &str, down: bool) {
        let mut state = self.state.lock().unwrap();
        if down {
            state.held_down.insert(pod.to_owned());
        } else {
            state.held_down.remove(pod);
        }
    }

    pub fn request_switchover(&self, to: &str) {
        self.state.lock().unwrap().switchover_to = Some(to.to_owned());
        self.changed.notify_one();
    }

    fn write_state_file(&self, state: &State) {
        self.cluster.set_state_with_target(
            &state.current,
            state.target.as_deref(),
            true,
            state.epoch,
        );
    }

    /// Restarts a pod's container when its process exits, unless the test
    /// holds it down; wakes the loop on every exit (a pod event).
    fn start_kubelet(self: &Arc<Self>) {
        // A weak reference: the kubelet must not keep the cluster (and its
        // servers) alive once the test has dropped it.
        let weak = Arc::downgrade(self);
        let n = self.pods.len();
        std::thread::spawn(move || {
            let mut down_since: Vec<Option<Instant>> = vec![None; n];
            let attempts: Arc<Vec<std::sync::atomic::AtomicU32>> = Arc::new(
                (0..n)
                    .map(|_| std::sync::atomic::AtomicU32::new(0))
                    .collect(),
            );
            let restarting: Arc<Vec<AtomicBool>> =
                Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
            loop {
                let Some(seam) = weak.upgrade() else { return };
                if seam.stop_kubelet.load(Ordering::Relaxed) {
                    return;
                }
                for (i, pod) in seam.pods.iter().enumerate() {
                    if restarting[i].load(Ordering::Relaxed) {
                        continue;
                    }
                    if pod.server_alive() {
                        if down_since[i].take().is_some() {
                            seam.changed.notify_one();
                        }
                        continue;
                    }
                    let since = *down_since[i].get_or_insert_with(|| {
                        seam.changed.notify_one();
                        Instant::now()
                    });
                    let held = seam.state.lock().unwrap().held_down.contains(&pod.name);
                    // CrashLoopBackOff, shortened: 0.5 s, 1 s, 2 s, capped at 4 s.
                    let backoff =
                        Duration::from_millis(500 << attempts[i].load(Ordering::Relaxed).min(3));
                    if held || since.elapsed() < backoff {
                        continue;
                    }
                    down_since[i] = None;
                    restarting[i].store(true, Ordering::Relaxed);
                    let (pod, changed) = (Arc::clone(pod), Arc::clone(&seam.changed));
                    let (attempts, restarting) = (Arc::clone(&attempts), Arc::clone(&restarting));
                    std::thread::spawn(move || {
                        match pod.start() {
                            Ok(()) => attempts[i].store(0, Ordering::Relaxed),
                            Err(_) => {
                                attempts[i].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        restarting[i].store(false, Ordering::Relaxed);
                        changed.notify_one();
                    });
                }
                drop(seam);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }

    fn conflict(&self, version: &str) -> SeamError {
        SeamError::Conflict {
            cluster: "db".to_owned(),
            version: version.to_owned(),
        }
    }
}

impl Drop for LocalSeam {
    fn drop(&mut self) {
        self.stop_kubelet.store(true, Ordering::Relaxed);
    }
}

impl Seam for LocalSeam {
    async fn observe(&self) -> Result<Observation, SeamError> {
        let state = self.state.lock().unwrap();
        let members = self
            .pods
            .iter()
            .enumerate()
            .map(|(i, pod)| Member {
                name: pod.name.clone(),
                ordinal: i as i32,
                state: if pod.server_alive() {
                    PodState::Running
                } else {
                    PodState::NotRunning("postgres exited".to_owned())
                },
                probe_at: Some(Endpoint {
                    host: "127.0.0.1".to_owned(),
                    port: if state.partitioned.contains(&pod.name) {
                        self.blackhole
                    } else {
                        pod.port
                    },
                    hostaddr: None,
                    tls_name: None,
                }),
                stable: Endpoint {
                    host: "127.0.0.1".to_owned(),
                    port: pod.port,
                    hostaddr: None,
                    tls_name: None,
                },
                instance: Some(pod.name.clone()),
            })
            .collect();
        Ok(Observation {
            namespace: "local".to_owned(),
            cluster: "db".to_owned(),
            members,
            record: Record {
                current_primary: Some(state.current.clone()),
                target_primary: state.target.clone(),
                epoch: state.epoch,
                version: state.version.to_string(),
                switchover_to: state.switchover_to.clone(),
                fenced: Vec::new(),
                pending: state.pending.clone(),
                primary_lsn: state.primary_lsn,
                synchronous: state.synchronous.clone(),
            },
            settings: state.settings.clone(),
        })
    }

    async fn credentials(&self) -> Result<Credentials, SeamError> {
        Ok(Credentials {
            superuser_password: SUPERUSER_PASSWORD.to_owned(),
            replication_user: "streaming_replica".to_owned(),
            replication_password: REPLICATION_PASSWORD.to_owned(),
            tls: None,
            pooler: PoolerRole::Absent,
        })
    }

    async fn record_intent(&self, record: &Record, intent: &Intent) -> Result<Record, SeamError> {
        let mut state = self.state.lock().unwrap();
        // Only who is primary must not have moved since it was read.
        if Some(&state.current) != record.current_primary.as_ref()
            || state.target != record.target_primary
            || state.epoch != record.epoch
        {
            return Err(self.conflict(&record.version));
        }
        state.target = Some(intent.to.clone());
        state.pending = Some(ordinal_crds::PendingPromotion {
            planned: intent.planned,
            reason: intent.reason.clone(),
            old_primary_lsn: intent
                .old_primary_lsn
                .map(ordinal_operator::failover::pg::format_lsn),
            chosen_lsn: intent
                .chosen_lsn
                .map(ordinal_operator::failover::pg::format_lsn),
            lost_bytes: intent.lost_bytes,
            ..ordinal_crds::PendingPromotion::default()
        });
        state.epoch += 1;
        state.version += 1;
        self.write_state_file(&state);
        Ok(Record {
            current_primary: Some(state.current.clone()),
            target_primary: state.target.clone(),
            epoch: state.epoch,
            version: state.version.to_string(),
            switchover_to: state.switchover_to.clone(),
            fenced: Vec::new(),
            pending: state.pending.clone(),
            primary_lsn: state.primary_lsn,
            synchronous: state.synchronous.clone(),
        })
    }

    /// The local "kubelet" stops a process at once and for sure: the
    /// fence is confirmed when the kill returns.
    async fn fence(&self, request: &FenceRequest) -> Result<FenceState, SeamError> {
        let pod = self.pod(&request.pod).clone();
        let planned = request.planned;
        tokio::task::spawn_blocking(move || if planned { pod.stop() } else { pod.kill9() })
            .await
            .map_err(|e| SeamError::Failed {
                cluster: "db".to_owned(),
                action: "fence",
                message: e.to_string(),
            })?;
        Ok(FenceState::Stopped(if planned {
            "stopped cleanly".to_owned()
        } else {
            "killed".to_owned()
        }))
    }

    async fn restart(&self, pod: &str, _why: &str) -> Result<(), SeamError> {
        // Stopped; the kubelet starts it again through the guard.
        let pod = self.pod(pod).clone();
        tokio::task::spawn_blocking(move || pod.stop())
            .await
            .map_err(|e| SeamError::Failed {
                cluster: "db".to_owned(),
                action: "restart",
                message: e.to_string(),
            })
    }

    async fn publish(&self, record: &Record, outcome: &FailoverRecord) -> Result<(), SeamError> {
        let mut state = self.state.lock().unwrap();
        if state.version.to_string() != record.version {
            return Err(self.conflict(&record.version));
        }
        state.current = outcome.to.clone();
        state.target = None;
        state.pending = None;
        state.version += 1;
        if state.switchover_to.as_deref() == Some(outcome.to.as_str()) {
            state.switchover_to = None;
        }
        state.last_failover = Some(outcome.clone());
        state.promotions.push(outcome.clone());
        self.write_state_file(&state);
        Ok(())
    }

    async fn report(&self, report: &Report) -> Result<(), SeamError> {
        let mut state = self.state.lock().unwrap();
        state.instances = report.instances.clone();
        state.blocked = report.blocked.clone();
        state.primary_lsn = report.primary_lsn;
        if let Some(set) = &report.synchronous {
            state.synchronous = Some(set.clone());
        }
        Ok(())
    }

    async fn changed(&self) {
        self.changed.notified().await;
    }
}
