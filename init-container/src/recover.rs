//! A new primary bootstrapped from a backup (`spec.bootstrap.recovery`)
//! instead of initdb: the chosen base backup is unpacked from the source
//! store into a staging directory, a server on the Unix socket only
//! replays the source's archived WAL to the target (a time, an LSN, a
//! restore point, or the end of the archive) and is promoted onto a
//! timeline of its own; the new cluster's credentials replace the source's,
//! the source's `ALTER SYSTEM` settings (its standbys' names) are reset,
//! and the directory is renamed into place. A crash at any point leaves
//! either no PGDATA or a complete one, as for initdb.
//!
//! The source's archive is only read (`wal-fetch --recovery`); the new
//! cluster archives under its own prefix.

use std::path::Path;
use std::time::Duration;

use crate::basebackup::{self, BackupError};
use crate::bootstrap::{command_line, quote_ident, quote_literal, socket_only};
use crate::credentials::Credentials;
use crate::settings::{Recovery, RecoveryTarget, Settings};
use crate::wal::Archive;
use crate::{InitError, fsutil, sql, tools};

/// How long the replay may take at most before the pod gives up (and the
/// kubelet starts it again, from scratch).
const REPLAY_LIMIT: Duration = Duration::from_secs(6 * 3600);

pub async fn recover(
    settings: &Settings,
    credentials: &Credentials,
    recovery: &Recovery,
) -> Result<(), InitError> {
    let source = Archive::recovery_from_env()?;
    let before = match &recovery.target {
        RecoveryTarget::Time(t) => Some(*t),
        _ => None,
    };
    let chosen = basebackup::find(&source, recovery.backup.as_deref(), before).await?;
    basebackup::check_wal(&source, &chosen).await?;
    tracing::info!(
        id = %chosen.id,
        from = %source.url(),
        timeline = chosen.timeline,
        end_lsn = %chosen.end_lsn,
        target = ?recovery.target,
        "restoring a base backup"
    );

    let staging = settings.staging_dir("restore");
    fsutil::remove_staging(&staging)?;
    std::fs::create_dir_all(&staging).map_err(|source| fsutil::FsError::Write {
        path: staging.clone(),
        source,
    })?;
    basebackup::restore(&source, &chosen, &staging).await?;
    // Neither the source's role nor its positions: a standby's signal file
    // or a stale pid file (never in a pg_basebackup, but cheap to be sure).
    for stale in ["standby.signal", "postmaster.pid"] {
        fsutil::remove_file(&staging.join(stale))?;
    }
    fsutil::touch(&staging.join("recovery.signal"))?;
    replay(settings, &staging, credentials, recovery).await?;
    fsutil::rename_into_place(&staging, &settings.pgdata)?;
    tracing::info!(pgdata = %settings.pgdata.display(), "restored from the backup and promoted");
    Ok(())
}

/// The recovery settings for the staging server's command line (they beat
/// every configuration file, and are never written to one).
/// The target's text was checked when the settings were read (no quote
/// can reach the shell pg_ctl runs postgres through).
fn recovery_options(socket_dir: &Path, port: u16, recovery: &Recovery, init: &Path) -> Vec<String> {
    let mut options = socket_only(socket_dir, port);
    options.extend([
        format!(
            "restore_command='{} wal-fetch --recovery %f %p'",
            init.display()
        ),
        "recovery_target_action='promote'".to_owned(),
        "recovery_target_timeline='latest'".to_owned(),
        // The source's hot-standby minimums need not hold: nobody queries
        // this server before it is promoted.
        "hot_standby=off".to_owned(),
        // Commits made here (the new credentials) must not wait for the
        // source's synchronous standbys.
        "synchronous_standby_names=''".to_owned(),
        // The new cluster archives its own timeline from its first real
        // start: with archive_mode on and no command, the segments of this
        // run wait, ready, for it (a failing command would count failures).
        "archive_mode=on".to_owned(),
        "archive_command=''".to_owned(),
    ]);
    match &recovery.target {
        RecoveryTarget::Latest => {}
        // PostgreSQL reads a timestamp, not RFC 3339's T and Z.
        RecoveryTarget::Time(t) => options.push(format!(
            "recovery_target_time='{}'",
            t.strftime("%Y-%m-%d %H:%M:%S%.6f+00")
        )),
        RecoveryTarget::Lsn(l) => options.push(format!("recovery_target_lsn='{l}'")),
        RecoveryTarget::Name(n) => options.push(format!("recovery_target_name='{n}'")),
    }
    options
}

/// Replays to the target, sets the new cluster's credentials, stops.
async fn replay(
    settings: &Settings,
    staging: &Path,
    credentials: &Credentials,
    recovery: &Recovery,
) -> Result<(), InitError> {
    let pg_ctl = settings.tool("pg_ctl");
    let staging_str = staging.to_string_lossy();
    let init = std::env::current_exe().map_err(|source| InitError::Exec {
        program: "ordinal-init (its own path)".to_owned(),
        source,
    })?;
    let options = command_line(&recovery_options(
        &settings.socket_dir,
        settings.port,
        recovery,
        &init,
    ));
    let log = settings.data_mount().join("restore.log");
    let conn = start_promoted(
        &pg_ctl,
        staging,
        &log,
        &settings.socket_dir,
        settings.port,
        &options,
    )
    .await?;
    let result = async {
        // The source's passwords are not this cluster's; the source's
        // ALTER SYSTEM settings (its standbys' names) do not apply here.
        // One at a time: a multi-statement string is one transaction, and
        // ALTER SYSTEM runs outside any.
        let statements = [
            "ALTER SYSTEM RESET ALL".to_owned(),
            format!(
                "ALTER ROLE {} WITH PASSWORD {}",
                quote_ident(sql::SUPERUSER),
                quote_literal(&credentials.superuser_password)
            ),
            format!(
                "DO $$ BEGIN \
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN \
                     CREATE ROLE {} WITH LOGIN REPLICATION; \
                   END IF; \
                 END $$",
                quote_literal(&credentials.replication_user),
                quote_ident(&credentials.replication_user)
            ),
            format!(
                "ALTER ROLE {} WITH LOGIN REPLICATION PASSWORD {}",
                quote_ident(&credentials.replication_user),
                quote_literal(&credentials.replication_password)
            ),
            "CHECKPOINT".to_owned(),
        ];
        for statement in &statements {
            conn.client
                .batch_execute(statement)
                .await
                .map_err(|source| sql::SqlError::Query {
                    target: conn.target.clone(),
                    query: "the new cluster's credentials and settings (ALTER ROLE, ALTER SYSTEM RESET ALL)",
                    source,
                })?;
        }
        Ok::<_, InitError>(())
    }
    .await;
    let stopped = tools::run(
        &pg_ctl,
        &["stop", "-w", "-t", "600", "-m", "fast", "-D", &staging_str],
        None,
    )
    .await;
    result?;
    stopped?;
    let _ = std::fs::remove_file(&log);
    Ok(())
}

/// Starts the staging server in `staging` with `options` (its command
/// line), and waits until it has replayed to its target and is promoted:
/// with hot_standby off it refuses connections until then, and pg_ctl
/// says at once when it stops instead (a target the archive does not
/// reach, a missing or corrupt segment), with its log's end.
pub(crate) async fn start_promoted(
    pg_ctl: &Path,
    staging: &Path,
    log: &Path,
    socket_dir: &Path,
    port: u16,
    options: &str,
) -> Result<sql::Conn, InitError> {
    let staging_str = staging.to_string_lossy();
    let log_str = log.to_string_lossy();
    let limit = REPLAY_LIMIT.as_secs().to_string();
    let started = tools::run(
        pg_ctl,
        &[
            "start",
            "-w",
            "-t",
            &limit,
            "-D",
            &staging_str,
            "-l",
            &log_str,
            "-o",
            options,
        ],
        None,
    )
    .await;
    if let Err(error) = started {
        // Stopped if it still runs (the time limit).
        stop_immediately(pg_ctl, staging).await;
        return Err(BackupError::Replay {
            why: error.to_string(),
            log: log_tail(log),
        }
        .into());
    }
    let deadline = tokio::time::Instant::now() + REPLAY_LIMIT;
    loop {
        if let Ok(conn) = sql::local(socket_dir, port).await
            && let Ok(row) = conn
                .client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
            && !row.get::<_, bool>(0)
        {
            return Ok(conn);
        }
        let running = tools::run(pg_ctl, &["status", "-D", &staging_str], None)
            .await
            .is_ok();
        if !running || tokio::time::Instant::now() >= deadline {
            if running {
                stop_immediately(pg_ctl, staging).await;
            }
            return Err(BackupError::Replay {
                why: if running {
                    format!("not promoted within {REPLAY_LIMIT:?}")
                } else {
                    "the server stopped during recovery".to_owned()
                },
                log: log_tail(log),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An immediate stop of the staging server, whatever it was doing: its
/// directory is thrown away or started again from scratch.
async fn stop_immediately(pg_ctl: &Path, staging: &Path) {
    let staging_str = staging.to_string_lossy();
    let _ = tools::run(
        pg_ctl,
        &["stop", "-m", "immediate", "-D", &staging_str],
        None,
    )
    .await;
}

/// The last lines of a server's log, for an error.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_goes_on_the_command_line() {
        let options = |target| {
            recovery_options(
                Path::new("/var/run/postgresql"),
                5432,
                &Recovery {
                    backup: None,
                    target,
                },
                Path::new("/ordinal/ordinal-init"),
            )
        };
        let latest = options(RecoveryTarget::Latest);
        assert!(latest.contains(
            &"restore_command='/ordinal/ordinal-init wal-fetch --recovery %f %p'".to_owned()
        ));
        assert!(
            !latest
                .iter()
                .any(|o| o.starts_with("recovery_target_time="))
        );
        let named = options(RecoveryTarget::Name("before-migration".to_owned()));
        assert!(named.contains(&"recovery_target_name='before-migration'".to_owned()));
        let time = options(RecoveryTarget::Time(
            "2026-12-05T22:30:00.25+01:00".parse().expect("a time"),
        ));
        assert!(
            time.contains(&"recovery_target_time='2026-12-05 21:30:00.250000+00'".to_owned()),
            "{time:?}"
        );
    }
}
