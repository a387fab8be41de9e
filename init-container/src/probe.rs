//! Readiness and liveness, run by the kubelet in the postgres container.
//! Readiness: a primary accepts connections; a replica streams and its
//! replay lag is under maxReadyLagBytes. Liveness fails only for a server
//! that does not answer at all, never for lag.

use tokio_postgres::error::SqlState;

use crate::settings::Settings;
use crate::sql;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    Ready,
    Live,
}

/// The verdict and why, for the kubelet's event on failure.
pub struct Verdict {
    pub ok: bool,
    pub why: String,
}

fn verdict(ok: bool, why: impl Into<String>) -> Verdict {
    Verdict {
        ok,
        why: why.into(),
    }
}

pub async fn probe(settings: &Settings, probe: Probe) -> Verdict {
    if crate::prepare::preparing(settings) {
        return verdict(
            probe == Probe::Live,
            "the guard is preparing PGDATA (clone or rewind under way)",
        );
    }
    let conn = match sql::local(&settings.socket_dir, settings.port).await {
        Ok(conn) => conn,
        Err(sql::SqlError::Connect { source, .. })
            if source.code() == Some(&SqlState::CANNOT_CONNECT_NOW) =>
        {
            // Starting up (crash recovery, a standby not yet consistent) or
            // shutting down: alive, not ready.
            return verdict(
                probe == Probe::Live,
                format!("server is not accepting connections yet: {source}"),
            );
        }
        Err(error) => return verdict(false, format!("{error}: {}", source_text(&error))),
    };
    match probe {
        Probe::Live => match conn.query_one("SELECT 1", &[]).await {
            Ok(_) => verdict(true, "server answers"),
            Err(error) => verdict(false, error.to_string()),
        },
        Probe::Ready => ready(settings, &conn).await,
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
