//! `ordinal-init run`'s health: the kubelet's probes answered over HTTP
//! (`/livez`, `/readyz` on [`names::HEALTH_PORT`]), and the liveness check
//! — where an isolated or deposed primary fences itself — run every second
//! on its own clock.
//!
//! Before, each probe was a command the kubelet ran in the container:
//! `runc exec`, a new process, a new SQL session, and, for an isolated
//! primary, a new API client, about once a second per pod. Served from the
//! running process over one kept session, a probe costs a query. And the
//! fencing no longer waits for the kubelet: a primary whose kubelet has
//! died, which ran no probe at all, still stops by itself.
//!
//! The server and the check run on a thread and runtime of their own, so
//! that nothing the supervisor does (a clone or a rewind in place) delays
//! them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use ordinal_crds::names;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::sync::{Mutex, watch};

use crate::InitError;
use crate::probe::{self, Checker, Fencer, Probe, Verdict, verdict};
use crate::settings::Settings;
use crate::sql;

/// How often the liveness check runs (the failover loop's isolation
/// margin counts on it).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A check that takes longer has failed: the server hangs. Under the
/// kubelet's probe timeout (5 s), above the isolation check's API read
/// (2 s).
const CHECK_WITHIN: Duration = Duration::from_secs(4);
/// A liveness verdict older than this is none: the check itself is stuck.
const STALE_AFTER: Duration = Duration::from_secs(10);

/// The checks and the one session they share.
struct Health {
    checker: Checker,
    session: Mutex<Option<sql::Conn>>,
    live: watch::Sender<Option<(Instant, Verdict)>>,
}

impl Health {
    /// A verdict over the kept session, opened again when it has closed.
    async fn check(&self, probe: Probe) -> Verdict {
        let settings = self.checker.settings();
        if let Some(verdict) = probe::preparing(settings, probe) {
            return verdict;
        }
        let mut session = self.session.lock().await;
        let checked = tokio::time::timeout(CHECK_WITHIN, async {
            let conn = match session.take() {
                Some(conn) if !conn.client.is_closed() => conn,
                _ => probe::connect(settings, probe).await?,
            };
            let verdict = self.checker.judge(&conn, probe).await;
            Ok::<_, Verdict>((conn, verdict))
        })
        .await;
        match checked {
            Ok(Ok((conn, verdict))) => {
                *session = Some(conn);
                verdict
            }
            Ok(Err(verdict)) => verdict,
            // The session is dropped: a server that hangs is asked again
            // over a new one.
            Err(_) => verdict(
                false,
                format!("the server did not answer within {CHECK_WITHIN:?}"),
            ),
        }
    }

    /// The liveness check, every [`CHECK_EVERY`]; a change of verdict is
    /// logged (the kubelet's event says only "statuscode: 503").
    async fn watch(self: Arc<Self>) {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_ok = None;
        loop {
            every.tick().await;
            let verdict = self.check(Probe::Live).await;
            if was_ok != Some(verdict.ok) {
                if verdict.ok {
                    tracing::info!(why = %verdict.why, "live");
                } else {
                    tracing::warn!(why = %verdict.why, "not live");
                }
                was_ok = Some(verdict.ok);
            }
            self.live.send_replace(Some((Instant::now(), verdict)));
        }
    }
}

fn answer(verdict: Verdict) -> (StatusCode, String) {
    let status = if verdict.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, verdict.why + "\n")
}

/// The last liveness verdict, if it is recent.
async fn live(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    let last = health.live.borrow().clone();
    answer(match last {
        Some((at, verdict)) if at.elapsed() < STALE_AFTER => verdict,
        Some((at, _)) => verdict(
            false,
            format!(
                "the liveness check has not finished for {}s",
                at.elapsed().as_secs()
            ),
        ),
        None => verdict(false, "the first liveness check has not finished"),
    })
}

/// Readiness, checked now.
async fn ready(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    answer(health.check(Probe::Ready).await)
}

fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route(names::HEALTH_LIVE_PATH, get(live))
        .route(names::HEALTH_READY_PATH, get(ready))
        .with_state(health)
}

/// Starts the probes' server and the liveness check, when the settings
/// give an address; returns what the check asks the supervisor to fence.
pub fn start(settings: &Settings) -> Result<Option<UnboundedReceiver<String>>, InitError> {
    let Some(address) = settings.health_address else {
        return Ok(None);
    };
    let failed = |source: std::io::Error| InitError::Health { address, source };
    // Bound here, so that a port in use is an error of the start.
    let listener = std::net::TcpListener::bind(address).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    let (fences, fenced) = unbounded_channel();
    let health = Arc::new(Health {
        checker: Checker::new(settings.clone(), Fencer::Supervisor(fences)),
        session: Mutex::new(None),
        live: watch::Sender::new(None),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    std::thread::Builder::new()
        .name("ordinal-health".to_owned())
        .spawn(move || runtime.block_on(serve(health, listener, address)))
        .map_err(failed)?;
    tracing::info!(%address, "serving the probes");
    Ok(Some(fenced))
}

async fn serve(health: Arc<Health>, listener: std::net::TcpListener, address: SocketAddr) {
    tokio::spawn(Arc::clone(&health).watch());
    let served = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => axum::serve(listener, router(health)).await,
        Err(error) => Err(error),
    };
    // The kubelet's probes now fail, and it restarts the container.
    if let Err(error) = served {
        tracing::error!(%address, %error, "the probes' server has stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_a_status_and_its_reason() {
        let (status, body) = answer(verdict(true, "server answers"));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "server answers\n");
        let (status, _) = answer(verdict(false, "no"));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
