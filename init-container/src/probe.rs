//! Readiness and liveness. Readiness: a primary accepts connections; a
//! replica streams and its replay lag is under maxReadyLagBytes. Liveness
//! fails for a server that does not answer at all, never for lag — and it
//! is where a primary fences itself (see [`isolation`]).
//!
//! `ordinal-init run` answers the kubelet over HTTP and runs the liveness
//! check on its own clock (`health.rs`); `ordinal-init probe` is the same
//! check once, for a person at `kubectl exec`.

use tokio::sync::OnceCell;
use tokio::sync::mpsc::UnboundedSender;
use tokio_postgres::error::SqlState;

use crate::settings::Settings;
use crate::sql;
use crate::state::StateSource;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    Ready,
    Live,
}

/// The verdict and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub why: String,
}

pub fn verdict(ok: bool, why: impl Into<String>) -> Verdict {
    Verdict {
        ok,
        why: why.into(),
    }
}

/// How a primary that must stop is stopped.
pub enum Fencer {
    /// `pg_ctl stop -m immediate`: a check run by hand.
    PgCtl,
    /// The supervisor is told why: it gives postgres an immediate shutdown
    /// and ends the container (`supervise.rs`).
    Supervisor(UnboundedSender<String>),
}

/// The checks of one pod, with what they keep between runs: the API
/// client of the isolation check and the way to fence.
pub struct Checker {
    settings: Settings,
    fencer: Fencer,
    state: OnceCell<StateSource>,
}

impl Checker {
    pub fn new(settings: Settings, fencer: Fencer) -> Self {
        Self {
            settings,
            fencer,
            state: OnceCell::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The verdict over a connection of its own.
    pub async fn probe(&self, probe: Probe) -> Verdict {
        if let Some(verdict) = preparing(&self.settings, probe) {
            return verdict;
        }
        match connect(&self.settings, probe).await {
            Ok(conn) => self.judge(&conn, probe).await,
            Err(verdict) => verdict,
        }
    }

    /// The verdict over `conn`, a connection to the local server.
    pub async fn judge(&self, conn: &sql::Conn, probe: Probe) -> Verdict {
        match probe {
            Probe::Live => self.live(conn).await,
            Probe::Ready => ready(&self.settings, conn).await,
        }
    }

    async fn live(&self, conn: &sql::Conn) -> Verdict {
        let row = conn
            .query_one(
                "SELECT pg_is_in_recovery(), \
                        (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'), \
                        (SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical')",
                &[],
            )
            .await;
        let row = match row {
            Ok(row) => row,
            Err(error) => return verdict(false, error.to_string()),
        };
        let in_recovery: bool = row.get(0);
        let streaming: i64 = row.get(1);
        let slots: i64 = row.get(2);
        // A primary with standbys to keep (their slots) and none streaming
        // from it checks that it still is the primary.
        if in_recovery || streaming > 0 || slots == 0 {
            isolation::clear(&self.settings);
            return verdict(true, "server answers");
        }
        isolation::check(self).await
    }
}

/// While the guard prepares PGDATA (a clone or a rewind under way) the
/// pod is alive and not ready.
pub fn preparing(settings: &Settings, probe: Probe) -> Option<Verdict> {
    crate::prepare::preparing(settings).then(|| {
        verdict(
            probe == Probe::Live,
            "the guard is preparing PGDATA (clone or rewind under way)",
        )
    })
}

/// A connection to the local server, or the verdict when there is none.
pub async fn connect(settings: &Settings, probe: Probe) -> Result<sql::Conn, Verdict> {
    match sql::local(&settings.socket_dir, settings.port).await {
        Ok(conn) => Ok(conn),
        Err(sql::SqlError::Connect { source, .. })
            if source.code() == Some(&SqlState::CANNOT_CONNECT_NOW) =>
        {
            // Starting up (crash recovery, a standby not yet consistent) or
            // shutting down: alive, not ready.
            Err(verdict(
                probe == Probe::Live,
                format!("server is not accepting connections yet: {source}"),
            ))
        }
        Err(error) => Err(verdict(false, format!("{error}: {}", source_text(&error)))),
    }
}

/// A primary that can tell it is not the primary any more (the status names
/// another), or that can reach neither the API server nor any standby for
/// `isolationSeconds`, stops at once: the operator may be promoting a
/// replica, and it promotes past an unreachable primary only after that
/// deadline (CloudNativePG's isolation check is the model).
pub mod isolation {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::{Checker, Fencer, Verdict, verdict};
    use crate::settings::Settings;
    use crate::state::StateSource;
    use crate::tools;

    /// How long the probe waits for the API server.
    const API_TIMEOUT: Duration = Duration::from_secs(2);

    fn marker(settings: &Settings) -> PathBuf {
        settings.socket_dir.join("ordinal-isolated-since")
    }

    pub fn clear(settings: &Settings) {
        let _ = std::fs::remove_file(marker(settings));
    }

    fn now() -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        u64::try_from(now).unwrap_or(u64::MAX)
    }

    /// Since when (unix milliseconds) this primary has been isolated, recorded
    /// at the first probe that saw it.
    fn isolated_since(settings: &Settings) -> u64 {
        let path = marker(settings);
        if let Some(since) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return since;
        }
        let since = now();
        let _ = std::fs::write(&path, since.to_string());
        since
    }

    pub async fn check(checker: &Checker) -> Verdict {
        let settings = checker.settings();
        let read = async {
            let source = checker
                .state
                .get_or_try_init(|| StateSource::new(settings))
                .await?;
            source.read_once().await
        };
        match tokio::time::timeout(API_TIMEOUT, read).await {
            Ok(Ok(state)) => {
                clear(settings);
                let me = settings.pod.as_str();
                if state.target_primary.as_deref().is_some_and(|t| t != me) {
                    let target = state.target_primary.unwrap_or_default();
                    return fence(checker, &format!("the operator is promoting {target}")).await;
                }
                if state.current_primary != me && state.target_primary.as_deref() != Some(me) {
                    return fence(
                        checker,
                        &format!("the status names {} as the primary", state.current_primary),
                    )
                    .await;
                }
                verdict(
                    true,
                    "primary (no standby streams; the status confirms the role)",
                )
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {API_TIMEOUT:?}"),
                };
                let since = isolated_since(settings);
                let isolated = Duration::from_millis(now().saturating_sub(since));
                if isolated >= settings.isolation {
                    fence(
                        checker,
                        &format!(
                            "isolated for {}s: no standby streams and the API server cannot be reached ({why})",
                            isolated.as_secs()
                        ),
                    )
                    .await
                } else {
                    verdict(
                        true,
                        format!(
                            "primary isolated for {}s of {}s: no standby streams and the API server cannot be reached ({why})",
                            isolated.as_secs(),
                            settings.isolation.as_secs()
                        ),
                    )
                }
            }
        }
    }

    /// Stops the server now (immediate shutdown: no new write is accepted
    /// from this moment); the container ends with it and its guard decides
    /// the role again at the next start.
    async fn fence(checker: &Checker, why: &str) -> Verdict {
        tracing::error!(why, "this primary stops accepting writes");
        match &checker.fencer {
            Fencer::Supervisor(supervisor) => match supervisor.send(why.to_owned()) {
                Ok(()) => verdict(false, format!("fenced: {why}")),
                Err(_) => verdict(
                    false,
                    format!("fencing ({why}) failed: the supervisor is gone"),
                ),
            },
            Fencer::PgCtl => {
                let settings = checker.settings();
                let pgdata = settings.pgdata.to_string_lossy().into_owned();
                let stopped = tools::run(
                    &settings.tool("pg_ctl"),
                    &["stop", "-D", &pgdata, "-m", "immediate", "-W"],
                    None,
                )
                .await;
                match stopped {
                    Ok(_) => verdict(false, format!("fenced: {why}")),
                    Err(error) => verdict(false, format!("fencing ({why}) failed: {error}")),
                }
            }
        }
    }
}

async fn ready(settings: &Settings, conn: &sql::Conn) -> Verdict {
    let row = conn
        .query_one(
            "SELECT pg_is_in_recovery(), \
                    (SELECT status FROM pg_stat_wal_receiver), \
                    (SELECT pg_wal_lsn_diff(latest_end_lsn, pg_last_wal_replay_lsn())::bigint FROM pg_stat_wal_receiver)",
            &[],
        )
        .await;
    let row = match row {
        Ok(row) => row,
        Err(error) => return verdict(false, format!("{error}: {}", source_text(&error))),
    };
    let in_recovery: bool = row.get(0);
    if !in_recovery {
        return verdict(true, "primary accepts connections");
    }
    let status: Option<String> = row.get(1);
    let lag: Option<i64> = row.get(2);
    if status.as_deref() != Some("streaming") {
        return verdict(
            false,
            format!(
                "replica is not streaming (WAL receiver: {})",
                status.as_deref().unwrap_or("not running")
            ),
        );
    }
    match (settings.max_ready_lag_bytes, lag) {
        (Some(max), Some(lag)) if lag > max => verdict(
            false,
            format!("replica streams but lags {lag} bytes behind (maxReadyLagBytes {max})"),
        ),
        _ => verdict(
            true,
            format!("replica streams, {} bytes behind", lag.unwrap_or(0).max(0)),
        ),
    }
}

fn source_text(error: &sql::SqlError) -> String {
    std::error::Error::source(error)
        .map(ToString::to_string)
        .unwrap_or_default()
}
