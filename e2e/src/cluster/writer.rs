//! The write load: numbered commits through db-rw, and their
//! acknowledgements.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use ordinal_crds::names;
use tokio::sync::watch;

use super::sampler::connect_ip;
use super::{Harness, WRITES_TABLE, connect_pod, routed_endpoints};

/// A client's patience, as in the measurements the failover issue
/// reports: a connection (TCP and startup) within 1 s, a commit within 2 s;
/// past that, the write is not acknowledged and the next one starts afresh.
const WRITE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
use crate::workload::Acks;

/// Commits numbered rows (`INSERT INTO e2e_writes`) one transaction at a
/// time through db-rw — the pod its EndpointSlices route to, re-resolved
/// every second and after every error — and records which commits were
/// acknowledged, when, and by which pod. An id is never retried: an
/// unacknowledged insert may have committed.
pub struct Writer {
    acks: Arc<Mutex<Acks>>,
    /// Resolutions where db-rw routed to more than one pod.
    split_routes: Arc<Mutex<Vec<Vec<String>>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn copy_acks(a: &Acks) -> Acks {
    Acks {
        ids: a.ids.clone(),
        at: a.at.clone(),
        by: a.by.clone(),
        errors: a.errors,
    }
}

impl Writer {
    /// Creates the table through db-rw and starts writing.
    pub async fn start(h: &Harness, cluster: &str) -> Self {
        let password = h
            .superuser_password(cluster)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self::start_on(h, &names::rw_service(cluster), &password).await
    }

    /// Creates the table and starts writing through Service `service`
    /// (the pod it routes to), as `postgres` with `password`, on one session
    /// kept while it works.
    pub async fn start_on(h: &Harness, service: &str, password: &str) -> Self {
        Self::start_with(h, service, password, false).await
    }

    /// As [`Writer::start_on`]; `fresh`: a new connection for every write,
    /// as the clients of the failover measurements do (a session opened
    /// before a failure may go on committing on a hung primary whose
    /// postmaster takes no new connection).
    pub async fn start_with(h: &Harness, service: &str, password: &str, fresh: bool) -> Self {
        let (pod, session) = h.sql_service(service, password).await;
        session
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {WRITES_TABLE} \
                 (id bigint PRIMARY KEY, pod text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .unwrap_or_else(|e| panic!("creating {WRITES_TABLE} on {pod}: {e}"));
        let next: i64 = session
            .query_one(
                &format!("SELECT coalesce(max(id), 0) + 1 FROM {WRITES_TABLE}"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("reading {WRITES_TABLE} on {pod}: {e}"))
            .get(0);
        let password = password.to_owned();
        // Whether this machine reaches pod addresses (the local cluster).
        let address = routed_endpoints(&h.client, &h.namespace, service)
            .await
            .ok()
            .and_then(|r| r.get(&pod).cloned().flatten());
        let direct = match address {
            Some(ip) => matches!(
                tokio::time::timeout(
                    WRITE_CONNECT_TIMEOUT,
                    tokio::net::TcpStream::connect((ip.as_str(), super::PG_PORT)),
                )
                .await,
                Ok(Ok(_))
            ),
            None => false,
        };
        let acks = Arc::new(Mutex::new(Acks::default()));
        let split_routes = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(write_loop(
            h.client.clone(),
            h.namespace.clone(),
            service.to_owned(),
            password,
            next,
            Arc::clone(&acks),
            Arc::clone(&split_routes),
            direct,
            fresh,
            stopped,
        ));
        Self {
            acks,
            split_routes,
            stop,
            task,
        }
    }

    /// A copy of what was acknowledged so far.
    pub fn acks(&self) -> Acks {
        copy_acks(&self.acks.lock().unwrap())
    }

    pub fn acked(&self) -> usize {
        self.acks.lock().unwrap().ids.len()
    }

    /// The first acknowledgement after `t` by a pod other than `not_by`.
    pub fn first_ack_after(&self, t: Instant, not_by: &str) -> Option<(Instant, String)> {
        let a = self.acks.lock().unwrap();
        a.at.iter()
            .zip(&a.by)
            .find(|(at, by)| **at > t && by.as_str() != not_by)
            .map(|(at, by)| (*at, by.clone()))
    }

    /// The write outage around `t`: the longest gap between consecutive
    /// acknowledgements from the last one before `t` to the last so far.
    pub fn longest_gap_since(&self, t: Instant) -> Option<Duration> {
        let a = self.acks.lock().unwrap();
        let from = a.at.iter().rposition(|at| *at <= t)?;
        a.at[from..]
            .windows(2)
            .map(|pair| pair[1].duration_since(pair[0]))
            .max()
    }

    /// Acknowledgements after `t` by `by`.
    pub fn acks_after_by(&self, t: Instant, by: &str) -> usize {
        let a = self.acks.lock().unwrap();
        a.at.iter()
            .zip(&a.by)
            .filter(|(at, b)| **at > t && b.as_str() == by)
            .count()
    }

    /// Resolutions in which db-rw routed to two pods or more.
    pub fn split_routes(&self) -> Vec<Vec<String>> {
        self.split_routes.lock().unwrap().clone()
    }

    /// Until `n` more commits are acknowledged than now.
    pub async fn wait_more_acks(&self, h: &Harness, n: usize) {
        let target = self.acked() + n;
        h.wait_until(
            &format!("the writer has {target} acknowledged commits"),
            async || {
                let a = self.acks.lock().unwrap();
                if a.ids.len() >= target {
                    Ok(())
                } else {
                    Err(format!("{} acknowledged, {} errors", a.ids.len(), a.errors))
                }
            },
        )
        .await;
    }

    /// Stops writing; returns every acknowledgement.
    pub async fn stop(mut self) -> Acks {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .is_err()
        {
            eprintln!("ordinal-e2e: the writer did not stop within 30s");
        }
        copy_acks(&self.acks.lock().unwrap())
    }
}

impl Drop for Writer {
    /// A failed test drops a running writer: stop it at once.
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    client: Client,
    namespace: String,
    service: String,
    password: String,
    mut next: i64,
    acks: Arc<Mutex<Acks>>,
    split_routes: Arc<Mutex<Vec<Vec<String>>>>,
    direct: bool,
    fresh: bool,
    mut stop: watch::Receiver<bool>,
) {
    const RESOLVE_EVERY: Duration = Duration::from_secs(1);
    let statement = format!("INSERT INTO {WRITES_TABLE} (id, pod) VALUES ($1, $2)");
    let mut session: Option<(String, tokio_postgres::Client)> = None;
    let mut resolved_at: Option<Instant> = None;
    // The pod the Service routes to (and its address), re-read every
    // second and after every failure.
    let mut route: Option<(String, Option<String>)> = None;
    // ORDINAL_E2E_WRITER_TRACE=1: each failed step, and the first
    // acknowledgement after failures, on stderr (where an outage goes).
    let tracing = std::env::var_os("ORDINAL_E2E_WRITER_TRACE").is_some();
    let mut failing = false;
    let trace = |what: String| {
        if tracing {
            eprintln!(
                "ordinal-e2e writer {} {what}",
                k8s_openapi::jiff::Timestamp::now()
            );
        }
    };
    let pause = async |stop: &mut watch::Receiver<bool>, ms: u64| {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = stop.changed() => {}
        }
    };
    while !*stop.borrow() {
        let stale = resolved_at.is_none_or(|t| t.elapsed() >= RESOLVE_EVERY);
        if route.is_none() || stale {
            let routed = match routed_endpoints(&client, &namespace, &service).await {
                Ok(routed) => routed,
                Err(e) => {
                    trace(format!("resolving {service}: {e}"));
                    failing = true;
                    route = None;
                    acks.lock().unwrap().errors += 1;
                    pause(&mut stop, 200).await;
                    continue;
                }
            };
            resolved_at = Some(Instant::now());
            if routed.len() > 1 {
                split_routes
                    .lock()
                    .unwrap()
                    .push(routed.keys().cloned().collect());
            }
            if routed.len() != 1 {
                trace(format!("{service} routes to {:?}", routed.keys()));
                failing = true;
                session = None;
                route = None;
                pause(&mut stop, 100).await;
                continue;
            }
            route = routed.into_iter().next();
        }
        let Some((pod, ip)) = route.clone() else {
            continue;
        };
        if session.as_ref().is_none_or(|(p, _)| *p != pod) {
            // Straight to the pod's address where this machine reaches it
            // (the local cluster), else through a port-forward.
            let connecting = async {
                match (&ip, direct) {
                    (Some(ip), true) => connect_ip(ip, &password).await,
                    _ => connect_pod(&client, &namespace, &pod, &password).await,
                }
            };
            session = match tokio::time::timeout(WRITE_CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(s)) => Some((pod.clone(), s)),
                other => {
                    trace(format!(
                        "connecting to {pod}: {}",
                        match other {
                            Ok(Err(e)) => e,
                            _ => "timed out".to_owned(),
                        }
                    ));
                    failing = true;
                    route = None;
                    acks.lock().unwrap().errors += 1;
                    pause(&mut stop, 200).await;
                    continue;
                }
            };
        }
        let Some((pod, db)) = session.as_ref() else {
            continue;
        };
        let id = next;
        next += 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, pod];
        let insert = db.execute(&statement, &params);
        let outcome = tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, insert) => r,
            _ = stop.changed() => break,
        };
        match outcome {
            Ok(Ok(_)) => {
                if failing {
                    trace(format!("acknowledged by {pod}"));
                    failing = false;
                }
                let mut a = acks.lock().unwrap();
                a.ids.push(id);
                a.at.push(Instant::now());
                a.by.push(pod.clone());
                drop(a);
                if fresh {
                    session = None;
                }
            }
            // Not acknowledged: it may or may not have committed.
            other => {
                trace(format!(
                    "insert on {pod}: {}",
                    match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    }
                ));
                failing = true;
                acks.lock().unwrap().errors += 1;
                session = None;
                route = None;
                pause(&mut stop, 100).await;
            }
        }
    }
}
