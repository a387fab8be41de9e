//! The split-brain sampler: asks every member of a cluster
//! `pg_is_in_recovery()` every 100 ms, through sessions it keeps open, and
//! records every moment at which two of them accepted writes.
//!
//! An answer is true of some moment between the query's sending and its
//! answer's arrival. Two members whose "writable" answers have overlapping
//! windows were writable at once, as far as anyone outside can tell: that
//! is a split brain. A handover (the old primary stopped, then the new one
//! promoted) gives disjoint windows — the windows are milliseconds wide on
//! the pod network, the fence confirmation between stop and promotion
//! takes longer. A member that does not answer (stopped, hung, restarting)
//! counts as unknown, never as safe; an answer slower than [`FRESH`] is
//! not counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use ordinal_crds::names;
use tokio::sync::watch;

use super::{Harness, PG_PORT, connect_pod};

/// How often each member is asked.
const EVERY: Duration = Duration::from_millis(100);
/// How long an answer holds; also the longest a sample may take.
pub const FRESH: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
struct Answer {
    sent: Instant,
    at: Instant,
    writable: bool,
    /// The pod's UID and address: a recreated pod is another instance.
    instance: String,
}

/// A moment with more than one writable instance.
#[derive(Clone, Debug)]
pub struct SplitBrain {
    pub at: Instant,
    pub writable: Vec<String>,
}

#[derive(Default)]
struct Shared {
    /// Every member's answers in order.
    history: BTreeMap<String, Vec<Answer>>,
    split: Vec<SplitBrain>,
    /// Answers in all.
    answers: u64,
}

impl Shared {
    /// Records `answer` of `pod`; a writable one whose window overlaps a
    /// writable answer of another member is a split brain.
    fn record(&mut self, pod: &str, answer: Answer) {
        self.answers += 1;
        if answer.writable {
            let mut others: Vec<String> = self
                .history
                .iter()
                .filter(|(other, _)| *other != pod)
                .filter_map(|(other, answers)| {
                    answers
                        .iter()
                        .rev()
                        .take_while(|a| a.at + Duration::from_secs(1) >= answer.sent)
                        .find(|a| a.writable && a.sent <= answer.at && answer.sent <= a.at)
                        .map(|a| format!("{other} ({})", a.instance))
                })
                .collect();
            if !others.is_empty() {
                others.push(format!("{pod} ({})", answer.instance));
                eprintln!("ordinal-e2e: SPLIT BRAIN: writable at once: {others:?}");
                self.split.push(SplitBrain {
                    at: answer.at,
                    writable: others,
                });
            }
        }
        self.history.entry(pod.to_owned()).or_default().push(answer);
    }
}

pub struct Sampler {
    shared: Arc<Mutex<Shared>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// What the sampler saw.
#[derive(Debug)]
pub struct SamplerReport {
    pub answers: u64,
    pub split: Vec<SplitBrain>,
    /// When each member answered "writable", as ranges of seconds from the
    /// start of sampling.
    pub writable_spans: BTreeMap<String, Vec<(f64, f64)>>,
}

impl Sampler {
    /// Starts sampling the pods `members` of `cluster`.
    pub async fn start(h: &Harness, cluster: &str, members: &[String]) -> Self {
        let password = h
            .superuser_password(cluster)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let direct = h.pod_network_reachable(cluster).await;
        Self::start_on(h, members, &password, direct).await
    }

    /// Starts sampling the pods `members` (any PostgreSQL) as `postgres`
    /// with `password`; `direct`: at their IPs, else through port-forwards.
    pub async fn start_on(h: &Harness, members: &[String], password: &str, direct: bool) -> Self {
        let password = password.to_owned();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (stop, stopped) = watch::channel(false);
        let tasks = members
            .iter()
            .map(|pod| {
                tokio::spawn(sample_member(
                    h.client.clone(),
                    h.namespace.clone(),
                    pod.clone(),
                    password.clone(),
                    direct,
                    Arc::clone(&shared),
                    stopped.clone(),
                ))
            })
            .collect();
        drop(stopped);
        eprintln!(
            "ordinal-e2e [{}] sampling {} every {EVERY:?} ({})",
            h.namespace,
            members.join(", "),
            if direct { "pod IPs" } else { "port-forwards" }
        );
        Self {
            shared,
            stop,
            tasks,
            started: Instant::now(),
        }
    }

    /// Moments with two writable instances so far.
    pub fn split(&self) -> Vec<SplitBrain> {
        self.shared.lock().unwrap().split.clone()
    }

    /// Stops sampling and reports.
    pub async fn stop(self) -> SamplerReport {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
        let shared = self.shared.lock().unwrap();
        let writable_spans = shared
            .history
            .iter()
            .map(|(pod, answers)| (pod.clone(), spans(self.started, answers)))
            .collect();
        SamplerReport {
            answers: shared.answers,
            split: shared.split.clone(),
            writable_spans,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SamplerReport {
    /// Panics when two instances were writable at the same moment, with
    /// when each member was writable.
    pub fn assert_never_two_writable(&self) {
        assert!(self.answers > 0, "the sampler got no answer at all");
        if let Some(first) = self.split.first() {
            panic!(
                "{} moments with more than one writable instance (first: {:?}); writable spans (seconds from the start of sampling): {:?}",
                self.split.len(),
                first.writable,
                self.writable_spans
            );
        }
    }
}

/// Writable spans: consecutive writable answers, from the first to the last.
fn spans(started: Instant, answers: &[Answer]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut open: Option<(f64, f64)> = None;
    for Answer { at, writable, .. } in answers {
        let t = at.duration_since(started).as_secs_f64();
        match (writable, open.as_mut()) {
            (true, Some(span)) => span.1 = t,
            (true, None) => open = Some((t, t)),
            (false, Some(_)) => out.extend(open.take()),
            (false, None) => {}
        }
    }
    out.extend(open);
    out
}

async fn sample_member(
    client: Client,
    namespace: String,
    pod: String,
    password: String,
    direct: bool,
    shared: Arc<Mutex<Shared>>,
    mut stop: watch::Receiver<bool>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut session: Option<(String, tokio_postgres::Client)> = None;
    loop {
        let round = Instant::now();
        // The instance now: a pod recreated under the same name, or given
        // another address, is a new session.
        let instance = match tokio::time::timeout(FRESH, pods.get_opt(&pod)).await {
            Ok(Ok(Some(p))) => p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .map(|ip| (format!("{}@{ip}", short_uid(&p)), ip)),
            _ => None,
        };
        match instance {
            None => session = None,
            Some((id, ip)) => {
                if session
                    .as_ref()
                    .is_some_and(|(s, c)| *s != id || c.is_closed())
                {
                    session = None;
                }
                if session.is_none() {
                    let connecting = async {
                        if direct {
                            connect_ip(&ip, &password).await
                        } else {
                            connect_pod(&client, &namespace, &pod, &password).await
                        }
                    };
                    if let Ok(Ok(c)) = tokio::time::timeout(FRESH, connecting).await {
                        session = Some((id.clone(), c));
                    }
                }
                if let Some((_, c)) = session.as_ref() {
                    let sent = Instant::now();
                    match tokio::time::timeout(
                        FRESH,
                        c.query_one("SELECT NOT pg_is_in_recovery()", &[]),
                    )
                    .await
                    {
                        Ok(Ok(row)) => {
                            let writable: bool = row.get(0);
                            let answer = Answer {
                                sent,
                                at: Instant::now(),
                                writable,
                                instance: id,
                            };
                            shared.lock().unwrap().record(&pod, answer);
                        }
                        Ok(Err(_)) => session = None,
                        // Hung: keep the session, it may answer later.
                        Err(_) => {}
                    }
                }
            }
        }
        let pause = EVERY.saturating_sub(round.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

fn short_uid(pod: &Pod) -> String {
    pod.uid().unwrap_or_default().chars().take(8).collect()
}

/// A session straight to a pod's address (the test machine is on the pod
/// network, as on the local cluster).
pub(super) async fn connect_ip(ip: &str, password: &str) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(ip)
        .port(PG_PORT)
        .user(names::SUPERUSER_NAME)
        .password(password)
        .dbname("postgres")
        .application_name("ordinal-e2e-sampler")
        .connect_timeout(FRESH);
    let (session, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("{ip}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(session)
}

impl Harness {
    /// Whether this machine reaches the pods of `cluster` at their IPs
    /// (true on a node or the local cluster; false on kind from outside).
    pub async fn pod_network_reachable(&self, cluster: &str) -> bool {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let Ok(list) = pods
            .list(&ListParams::default().labels(&format!("{}={cluster}", names::LABEL_CLUSTER)))
            .await
        else {
            return false;
        };
        for pod in list.items {
            let Some(ip) = pod.status.and_then(|s| s.pod_ip) else {
                continue;
            };
            let reached = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect((ip.as_str(), PG_PORT)),
            )
            .await;
            return matches!(reached, Ok(Ok(_)));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(base: Instant, from_ms: u64, to_ms: u64, writable: bool) -> Answer {
        Answer {
            sent: base + Duration::from_millis(from_ms),
            at: base + Duration::from_millis(to_ms),
            writable,
            instance: "uid@ip".to_owned(),
        }
    }

    #[test]
    fn overlapping_writable_windows_are_a_split_brain_and_a_handover_is_not() {
        let t = Instant::now();
        let mut s = Shared::default();
        // Handover: db-0 writable until 105 ms, db-1 writable from 150 ms.
        s.record("db-0", answer(t, 100, 105, true));
        s.record("db-1", answer(t, 100, 104, false));
        s.record("db-1", answer(t, 150, 152, true));
        assert!(s.split.is_empty());
        // db-0 comes back writable beside db-1.
        s.record("db-0", answer(t, 200, 210, true));
        s.record("db-1", answer(t, 205, 206, true));
        assert_eq!(s.split.len(), 1, "{:?}", s.split);
        assert_eq!(s.answers, 5);
    }
}
