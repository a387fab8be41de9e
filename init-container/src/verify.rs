//! `ordinal-init verify-backup`: a base backup restored in a throwaway
//! pod and checked, which is the only proof that it can be restored.
//!
//! 1. The backup is unpacked from the store into a scratch directory,
//!    exactly as a restore does.
//! 2. A server on the Unix socket only replays the archived WAL from the
//!    backup's start to the archive's end (`wal-fetch`, read only), as a
//!    restore to "latest" does, and is promoted: the restore time is
//!    measured up to here.
//! 3. `pg_amcheck` checks every table and B-tree index of every database
//!    (heap pages, tuples, index structure and that every heap tuple is
//!    indexed).
//! 4. After a clean shutdown, `pg_checksums --check` reads every page of
//!    every relation against its checksum (on since bootstrap).
//!
//! Nothing is written to the store: the server archives nothing and the
//! scratch directory goes with the pod.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use ordinal_crds::VerificationReport;

use crate::basebackup;
use crate::bootstrap::{command_line, socket_only};
use crate::recover::start_promoted;
use crate::wal::Archive;
use crate::{InitError, fsutil};

/// The port of the throwaway server (on its own socket directory).
const PORT: u16 = 5432;
/// A report is a termination message, which the kubelet cuts at 4 kB.
const MESSAGE_LIMIT: usize = 2500;

/// Why a check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot run {tool}")]
    Spawn {
        tool: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pg_amcheck found corruption: {found}")]
    Corrupt { found: String },
    #[error("pg_checksums found {bad} page(s) whose checksum does not match: {found}")]
    BadChecksums { bad: String, found: String },
    #[error("{tool} failed ({status}): {output}")]
    Failed {
        tool: &'static str,
        status: std::process::ExitStatus,
        output: String,
    },
}

/// Restores base backup `id` (the newest when None) of `archive` under
/// `work` and checks it. A failed restore or check is a report that did
/// not pass, not an error: only what keeps the report from being written
/// at all is.
pub async fn verify(
    archive: &Archive,
    pg_bin: &Path,
    work: &Path,
    id: Option<&str>,
) -> VerificationReport {
    let started = Instant::now();
    let mut report = VerificationReport {
        id: id.unwrap_or_default().to_owned(),
        passed: false,
        restore_seconds: None,
        checks: Vec::new(),
        message: None,
    };
    let outcome = async {
        let chosen = basebackup::find(archive, id, None).await?;
        report.id.clone_from(&chosen.id);
        tracing::info!(id = %chosen.id, from = %archive.url(), "verifying a base backup");
        // Said at once and by name, rather than by the replay's
        // "could not locate required checkpoint record".
        basebackup::check_wal(archive, &chosen).await?;
        let pgdata = work.join("data");
        let socket_dir = work.join("socket");
        fsutil::remove_staging(&pgdata)?;
        for dir in [&pgdata, &socket_dir] {
            std::fs::create_dir_all(dir).map_err(|source| fsutil::FsError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        basebackup::restore(archive, &chosen, &pgdata).await?;
        for stale in ["standby.signal", "postmaster.pid"] {
            fsutil::remove_file(&pgdata.join(stale))?;
        }
        fsutil::touch(&pgdata.join("recovery.signal"))?;
        let pg_ctl = pg_bin.join("pg_ctl");
        let init = std::env::current_exe().map_err(|source| InitError::Exec {
            program: "ordinal-init (its own path)".to_owned(),
            source,
        })?;
        let log = work.join("verify.log");
        let conn = start_promoted(
            &pg_ctl,
            &pgdata,
            &log,
            &socket_dir,
            PORT,
            &command_line(&replay_options(&socket_dir, &init)),
        )
        .await?;
        let restored = started.elapsed().as_secs_f64();
        report.restore_seconds = Some(restored);
        tracing::info!(seconds = restored, "restored and consistent");
        let databases: i64 = conn
            .client
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datallowconn",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or_default();
        drop(conn);
        let checked = amcheck(pg_bin, &socket_dir).await;
        let pgdata_str = pgdata.to_string_lossy();
        let stopped = crate::tools::run(
            &pg_ctl,
            &["stop", "-w", "-t", "600", "-m", "fast", "-D", &pgdata_str],
            None,
        )
        .await;
        checked?;
        report.checks.push(format!(
            "pg_amcheck: every table and B-tree index of {databases} database(s), heap tuples indexed"
        ));
        stopped?;
        let blocks = checksums(pg_bin, &pgdata).await?;
        report.checks.push(format!(
            "pg_checksums: {blocks} page(s), every checksum matches"
        ));
        Ok::<_, InitError>(())
    }
    .await;
    match outcome {
        Ok(()) => report.passed = true,
        Err(error) => {
            let message = crate::report(&error);
            tracing::error!("verification failed: {message}");
            report.message = Some(truncate(&message, MESSAGE_LIMIT));
        }
    }
    report
}

/// The replay's settings, on the command line: to the archive's end,
/// promoted, archiving nothing, waiting for no standby.
fn replay_options(socket_dir: &Path, init: &Path) -> Vec<String> {
    let mut options = socket_only(socket_dir, PORT);
    options.extend([
        format!("restore_command='{} wal-fetch %f %p'", init.display()),
        // No target: to the archive's end, as a restore to "latest". A
        // target of 'immediate' fails a backup of an idle standby that
        // ended on a segment's first byte: recovery is consistent there
        // but, with no record after it yet, "ended before the target".
        "recovery_target_timeline='latest'".to_owned(),
        "hot_standby=off".to_owned(),
        "primary_conninfo=''".to_owned(),
        "synchronous_standby_names=''".to_owned(),
        "archive_mode=off".to_owned(),
        // The pod's memory, not the instance's.
        "shared_buffers='64MB'".to_owned(),
    ]);
    options
}

/// A check's exit status and output (stdout and stderr together: a
/// corruption report is on stdout).
async fn run_check(
    tool: &Path,
    args: &[&str],
) -> Result<(std::process::ExitStatus, String), VerifyError> {
    tracing::info!(tool = %tool.display(), ?args, "checking");
    let out = tokio::process::Command::new(tool)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| VerifyError::Spawn {
            tool: tool.to_owned(),
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status, text))
}

/// `pg_amcheck` on every database: exit 2 is corruption, 1 an error.
async fn amcheck(pg_bin: &Path, socket_dir: &Path) -> Result<(), VerifyError> {
    let host = socket_dir.to_string_lossy();
    let port = PORT.to_string();
    let (status, output) = run_check(
        &pg_bin.join("pg_amcheck"),
        &[
            "--host",
            &host,
            "--port",
            &port,
            "--username",
            crate::sql::SUPERUSER,
            "--all",
            "--install-missing",
            "--heapallindexed",
            "--no-password",
        ],
    )
    .await?;
    match status.code() {
        Some(0) => Ok(()),
        Some(2) => Err(VerifyError::Corrupt {
            found: first_lines(&output),
        }),
        _ => Err(VerifyError::Failed {
            tool: "pg_amcheck",
            status,
            output: first_lines(&output),
        }),
    }
}

/// `pg_checksums --check` on the cleanly stopped data directory: the
/// number of pages read.
async fn checksums(pg_bin: &Path, pgdata: &Path) -> Result<u64, VerifyError> {
    let pgdata_str = pgdata.to_string_lossy();
    let (status, output) = run_check(
        &pg_bin.join("pg_checksums"),
        &["--check", "-D", &pgdata_str],
    )
    .await?;
    let field = |name: &str| {
        output
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    match (status.success(), field("Bad checksums:")) {
        (true, _) => Ok(field("Blocks scanned:").unwrap_or_default()),
        (false, Some(bad)) if bad > 0 => Err(VerifyError::BadChecksums {
            bad: bad.to_string(),
            found: first_lines(&output),
        }),
        _ => Err(VerifyError::Failed {
            tool: "pg_checksums",
            status,
            output: first_lines(&output),
        }),
    }
}

/// The first lines of a check's output, enough to name what it found.
fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(8)
        .collect();
    truncate(&lines.join(" | "), 1200)
}

fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_goes_to_the_archives_end_and_writes_nowhere() {
        let options = replay_options(
            Path::new("/verify/socket"),
            Path::new("/ordinal/ordinal-init"),
        );
        for expected in [
            "listen_addresses=''",
            "recovery_target_timeline='latest'",
            "archive_mode=off",
            "restore_command='/ordinal/ordinal-init wal-fetch %f %p'",
        ] {
            assert!(
                options.contains(&expected.to_owned()),
                "{expected}: {options:?}"
            );
        }
    }

    #[test]
    fn long_output_is_cut_on_a_character() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
        let lines = first_lines("a\n\nb\nc\nd\ne\nf\ng\nh\ni\n");
        assert_eq!(lines, "a | b | c | d | e | f | g | h");
    }
}
