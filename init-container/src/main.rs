//! `ordinal-init`: runs inside every PostgreSQL pod and makes it a primary
//! or a replica according to `status.currentPrimary` (DESIGN §4).
//!
//! - `install DIR`: copy this binary into the shared emptyDir;
//! - `init`: prepare PGDATA for the pod's role (init container);
//! - `run -- postgres …`: the same check at every container start, then
//!   postgres under supervision (`supervise.rs`);
//! - `probe ready|live`: the checks `run` answers the kubelet's probes with
//!   (`health.rs`), once, for a person at `kubectl exec`;
//! - `wal-push PATH NAME`, `wal-fetch NAME PATH`: PostgreSQL's
//!   archive_command and restore_command, to and from object storage
//!   (`wal.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod autoconf;
mod basebackup;
mod bootstrap;
mod credentials;
mod decide;
mod fsutil;
mod health;
mod install;
mod lock;
mod pgdata;
mod prepare;
mod probe;
mod recover;
mod reload;
mod replica;
mod settings;
mod sql;
mod state;
mod supervise;
mod tools;
mod verify;
mod wal;

use settings::Settings;

/// Everything that can stop a pod from starting, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    #[error(transparent)]
    Reload(#[from] reload::ReloadError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error(transparent)]
    Pgdata(#[from] pgdata::PgdataError),
    #[error(transparent)]
    Tool(#[from] tools::ToolError),
    #[error(transparent)]
    Sql(#[from] sql::SqlError),
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
    #[error(transparent)]
    AutoConf(#[from] autoconf::AutoConfError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(
        "{pod} is the primary of {cluster} (status.currentPrimary) and the cluster was initialized before, \
         but {pgdata} is empty: the primary's data is gone. Refusing to initdb over a live cluster. \
         Restore the volume, or let the operator fail over to a replica."
    )]
    LostPrimary {
        pod: String,
        cluster: String,
        pgdata: PathBuf,
    },
    #[error(
        "{pod} is still recorded as the primary, but the operator is promoting {target} \
         (status.targetPrimary): not starting until the promotion is published"
    )]
    PromotionUnderWay { pod: String, target: String },
    #[error(
        "{pgdata} holds PostgreSQL {data} data but the image runs PostgreSQL {server}: \
         a major upgrade needs pg_upgrade; set spec.image back to a {data}.x image"
    )]
    MajorVersion {
        pgdata: PathBuf,
        data: u32,
        server: u32,
    },
    #[error(
        "{pod}: {reason}. Refusing to rewind data the cluster never vouched for; \
         if this data is the cluster's, name its primary with the annotation ordinal.dev/primary"
    )]
    UnvouchedData { pod: String, reason: String },
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    #[error(transparent)]
    Backup(#[from] basebackup::BackupError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error("cannot serve the probes on {address}")]
    Health {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot exec {program}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Parser)]
#[command(
    version,
    about = "Decides a PostgreSQL pod's role and prepares its data directory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy this binary into DIR (the emptyDir shared with postgres containers).
    Install {
        dir: PathBuf,
        /// First wait until no earlier instance of this pod holds the data
        /// volume mounted here (its lock).
        #[arg(long)]
        wait_for_volume: Option<PathBuf>,
    },
    /// Prepare PGDATA for this pod's role.
    Init,
    /// Re-check the role, then run the command (postgres and its
    /// arguments) under supervision: the container's stop signal is a fast
    /// shutdown, and a crash restarts it in place after the same checks.
    Run {
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run the command (PgBouncer, in the pooler's pods), passing the
    /// stop signals on, and SIGHUP it when a watched file changes.
    ReloadOnChange {
        #[arg(long = "watch")]
        watch: Vec<PathBuf>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Fast shutdown of the local server: postgres' own SIGTERM is a smart
    /// shutdown that waits for every client, while a fast one ends sessions
    /// and streams the final WAL to the standbys before exiting. (The
    /// preStop hook of pods made by earlier versions; `run` now turns the
    /// container's stop signal into it.)
    Stop,
    /// Exit 0 when the local server is ready (or live), 1 otherwise.
    Probe {
        #[arg(value_enum)]
        probe: probe::Probe,
    },
    /// Archive a WAL file to the backup destination (archive_command =
    /// 'ordinal-init wal-push %p %f'): compressed, never overwriting.
    WalPush { path: PathBuf, name: String },
    /// Restore a WAL file from the backup destination (restore_command =
    /// 'ordinal-init wal-fetch %f %p'); exit 1 when the archive has none.
    WalFetch {
        name: String,
        path: PathBuf,
        /// From the store a new cluster is restored from (ORDINAL_RECOVERY_*),
        /// not the cluster's own archive.
        #[arg(long)]
        recovery: bool,
    },
    /// Take a base backup of the instance at HOST into the backup
    /// destination, streamed (the Job of a PostgresBackup runs this).
    BaseBackup {
        /// The instance to read it from (a streaming replica, or the
        /// primary): its DNS name, which TLS verifies.
        #[arg(long)]
        host: String,
        /// Its address, connected to without a name lookup.
        #[arg(long)]
        hostaddr: Option<String>,
        #[arg(long, default_value_t = 5432)]
        port: u16,
        /// The PostgresBackup it is taken for, recorded in its manifest.
        #[arg(long)]
        backup: Option<String>,
        /// How long to wait for the backup's last WAL segment to be archived.
        #[arg(long, default_value_t = 180)]
        wal_wait_seconds: u64,
        /// Where to write the manifest as JSON (the container's
        /// termination message, which the operator reads).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Retention, applied once the backup is complete: keep the newest N.
        #[arg(long)]
        keep: Option<usize>,
        /// Retention: keep what a restore to any moment of the last D days needs.
        #[arg(long)]
        keep_days: Option<u64>,
    },
    /// Apply a retention policy to the backup destination now (the backup
    /// Job does after each backup): delete the base backups it does not
    /// keep, and the WAL before the oldest one kept.
    Prune {
        /// Keep the newest N base backups.
        #[arg(long)]
        keep: Option<usize>,
        /// Keep what a restore to any moment of the last D days needs.
        #[arg(long)]
        keep_days: Option<u64>,
    },
    /// Unpack a base backup from the backup destination into the empty
    /// directory PGDATA: the latest one, or the latest complete before
    /// --before (RFC 3339), or the one named by --id. Recovery from the
    /// WAL archive is then PostgreSQL's (recovery.signal, restore_command).
    BaseRestore {
        pgdata: PathBuf,
        #[arg(long)]
        before: Option<String>,
        #[arg(long, conflicts_with = "before")]
        id: Option<String>,
    },
    /// Restore a base backup from the backup destination under DIR (a
    /// scratch volume), replay its WAL to the first consistent point and
    /// check it (pg_amcheck, pg_checksums); exit 1 unless it passed. The
    /// Job of a verified PostgresBackup runs this.
    VerifyBackup {
        /// The backup's id; the newest when unset.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the result as JSON (the container's termination
        /// message, which the operator reads).
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORDINAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Install {
            dir,
            wait_for_volume,
        } => install_after(&dir, wait_for_volume.as_deref()),
        Command::Init => with_runtime(init()).map_err(|e| report(&e)),
        Command::ReloadOnChange { watch, command } => {
            return match with_runtime(async { Ok(reload::run(&watch, &command).await?) }) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(error) => {
                    tracing::error!("{}", report(&error));
                    ExitCode::FAILURE
                }
            };
        }
        Command::Run { command } => {
            let supervised = with_runtime(async {
                let settings = Settings::from_env()?;
                // Served from the start: a clone or a rewind in the guard
                // is alive, not ready.
                let fences = health::start(&settings)?;
                let lock = prepare_run(&settings).await?;
                lock.keep_across_exec(&settings)?;
                supervise::supervise(&settings, &command, fences).await
            });
            return match supervised {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(error) => {
                    tracing::error!("{}", report(&error));
                    ExitCode::FAILURE
                }
            };
        }
        Command::Stop => with_runtime(stop()).map_err(|e| report(&e)),
        Command::Probe { probe } => return run_probe(probe),
        Command::WalPush { path, name } => return wal_push(&path, &name),
        Command::WalFetch {
            name,
            path,
            recovery,
        } => return wal_fetch(&name, &path, recovery),
        Command::BaseBackup {
            host,
            hostaddr,
            port,
            backup,
            wal_wait_seconds,
            report,
            keep,
            keep_days,
        } => base_backup(
            host,
            hostaddr,
            port,
            backup.as_deref(),
            Duration::from_secs(wal_wait_seconds),
            report.as_deref(),
            Retention {
                keep,
                window: keep_days.map(|d| Duration::from_secs(d * 86_400)),
            },
        ),
        Command::Prune { keep, keep_days } => with_runtime(async {
            let archive = wal::Archive::from_env()?;
            let pruned = basebackup::prune(
                &archive,
                keep,
                keep_days.map(|d| Duration::from_secs(d * 86_400)),
                k8s_openapi::jiff::Timestamp::now(),
            )
            .await?;
            println!(
                "deleted {} base backup(s) {:?} and {} WAL file(s)",
                pruned.backups.len(),
                pruned.backups,
                pruned.wal_files
            );
            Ok(())
        })
        .map_err(|e| report(&e)),
        Command::BaseRestore { pgdata, before, id } => {
            with_runtime(base_restore(&pgdata, before.as_deref(), id.as_deref()))
                .map_err(|e| report(&e))
        }
        Command::VerifyBackup { id, dir, report } => {
            verify_backup(id.as_deref(), &dir, report.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn install_after(dir: &std::path::Path, volume: Option<&std::path::Path>) -> Result<(), String> {
    if let Some(mount) = volume {
        // Taken and let go: no earlier instance of this pod still runs.
        with_runtime(async { Ok(lock::acquire_in(mount).await?) }).map_err(|e| report(&e))?;
        tracing::info!(volume = %mount.display(), "no earlier instance holds the data volume");
    }
    let path = install::install(dir).map_err(|e| e.to_string())?;
    tracing::info!(path = %path.display(), "installed");
    Ok(())
}

fn with_runtime<T>(
    f: impl std::future::Future<Output = Result<T, InitError>>,
) -> Result<T, InitError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| InitError::Exec {
            program: "tokio runtime".to_owned(),
            source,
        })?
        .block_on(f)
}

/// The error and its causes on one line.
fn report(error: &InitError) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

async fn init() -> Result<(), InitError> {
    let settings = Settings::from_env()?;
    let _lock = lock::acquire(&settings).await?;
    prepare::prepare(&settings).await?;
    Ok(())
}

/// Asks for a fast shutdown and returns at once: the container ends when
/// postgres has exited, and a hook still waiting then would be killed with
/// it (the kubelet's "PreStopHook failed", exit 137, at every deletion).
async fn stop() -> Result<(), InitError> {
    let settings = Settings::from_env()?;
    let pgdata = settings.pgdata.to_string_lossy().into_owned();
    tools::run(
        &settings.tool("pg_ctl"),
        &["stop", "-D", &pgdata, "-m", "fast", "-W"],
        None,
    )
    .await?;
    Ok(())
}

/// The guard of every container start: the data volume's lock, then the
/// same checks as the init container.
async fn prepare_run(settings: &Settings) -> Result<lock::DataLock, InitError> {
    let _preparing = prepare::Preparing::mark(settings);
    let lock = lock::acquire(settings).await?;
    prepare::prepare(settings).await?;
    Ok(lock)
}

/// A fresh single-threaded runtime for one WAL command.
fn wal_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn wal_push(path: &std::path::Path, name: &str) -> ExitCode {
    let started = std::time::Instant::now();
    let pushed = wal_runtime().and_then(|rt| {
        rt.block_on(async {
            let archive = wal::Archive::from_env()?;
            archive.push(path, name).await
        })
        .map_err(|e| e.to_string())
    });
    record_push_error(pushed.as_ref().err());
    match pushed {
        Ok(wal::Pushed::Uploaded { bytes }) => {
            tracing::info!(
                name,
                bytes,
                seconds = started.elapsed().as_secs_f64(),
                "archived"
            );
            ExitCode::SUCCESS
        }
        Ok(wal::Pushed::AlreadyArchived) => {
            tracing::info!(name, "archived before, with the same content");
            ExitCode::SUCCESS
        }
        Err(message) => {
            tracing::error!(name, "{message}");
            ExitCode::FAILURE
        }
    }
}

/// Where the archiver's last failure is kept, beside PGDATA (the archive
/// command runs in PGDATA): the operator's probe reads it
/// (`pg_read_file`) into `status.archive.lastError` and the `WalArchiving`
/// condition, so that the store's answer is said where people look. Only
/// when run by PostgreSQL's archiver, in a data directory.
const ARCHIVE_ERROR_FILE: &str = "../ordinal-archive-error";

fn record_push_error(error: Option<&String>) {
    if !std::path::Path::new("PG_VERSION").exists() {
        return;
    }
    let file = std::path::Path::new(ARCHIVE_ERROR_FILE);
    let written = match error {
        Some(message) => std::fs::write(file, message.chars().take(1000).collect::<String>()),
        None => match std::fs::remove_file(file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
    };
    if let Err(error) = written {
        tracing::warn!(%error, "cannot record the archiver's last failure beside PGDATA");
    }
}

fn wal_fetch(name: &str, path: &std::path::Path, recovery: bool) -> ExitCode {
    let fetched = match wal_runtime() {
        Ok(rt) => rt.block_on(async {
            let archive = if recovery {
                wal::Archive::recovery_from_env()?
            } else {
                wal::Archive::from_env()?
            };
            archive.fetch(name, path).await
        }),
        Err(message) => {
            tracing::error!(name, "{message}");
            return ExitCode::FAILURE;
        }
    };
    match fetched {
        Ok(true) => ExitCode::SUCCESS,
        // Not an error: recovery asks for files past the archive's end.
        Ok(false) => ExitCode::FAILURE,
        // An archived file that is corrupt must never be taken for the end
        // of the archive (recovery would end early and lose what follows):
        // an exit status above 125 makes PostgreSQL stop recovery.
        Err(message @ wal::WalError::Corrupt { .. }) => {
            tracing::error!(name, "{message}");
            ExitCode::from(126)
        }
        // The store cannot be reached: PostgreSQL tries again later (a
        // standby streams meanwhile).
        Err(message) => {
            tracing::error!(name, "{message}");
            ExitCode::FAILURE
        }
    }
}

/// `base-backup`'s retention policy.
struct Retention {
    keep: Option<usize>,
    window: Option<Duration>,
}

/// `base-backup`: the backup, then its manifest as the report (or the
/// error, which the operator then shows on the PostgresBackup).
fn base_backup(
    host: String,
    hostaddr: Option<String>,
    port: u16,
    backup: Option<&str>,
    wal_wait: Duration,
    report_to: Option<&std::path::Path>,
    retention: Retention,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let taken = with_runtime(async {
        let archive = wal::Archive::from_env()?;
        let pg_bin = settings::pg_bin_dir()?;
        let dir = std::env::var_os(ordinal_crds::names::env::REPLICATION_DIR).map_or_else(
            || ordinal_crds::names::paths::REPLICATION_SECRET_DIR.into(),
            PathBuf::from,
        );
        let (user, password) = credentials::Credentials::replication(&dir)?;
        let source = basebackup::Source {
            host,
            hostaddr,
            port,
            user,
            password,
            tls_ca: std::env::var_os(ordinal_crds::names::env::TLS_CA).map(PathBuf::from),
        };
        let mut manifest = basebackup::take(&archive, &pg_bin, &source, backup, wal_wait).await?;
        // The backup is complete whatever happens now: a failed cleanup is
        // said, and tried again after the next backup.
        match basebackup::prune(
            &archive,
            retention.keep,
            retention.window,
            k8s_openapi::jiff::Timestamp::now(),
        )
        .await
        {
            Ok(pruned) => manifest.pruned = pruned.backups,
            Err(error) => tracing::error!(
                "the retention policy could not be applied: {}",
                report(&InitError::from(error))
            ),
        }
        Ok(manifest)
    })
    .map_err(|e| report(&e));
    let text = match &taken {
        Ok(manifest) => {
            tracing::info!(
                id = %manifest.id,
                data_bytes = manifest.data_bytes,
                stored_bytes = manifest.stored_bytes,
                seconds = started.elapsed().as_secs_f64(),
                "base backup complete"
            );
            serde_json::to_string(manifest).unwrap_or_default()
        }
        Err(message) => message.clone(),
    };
    if let Some(path) = report_to
        && let Err(error) = std::fs::write(path, text)
    {
        tracing::warn!(path = %path.display(), %error, "cannot write the report");
    }
    taken.map(drop)
}

/// `verify-backup`: the backup restored and checked, the result as the
/// report; an error only when it could not even be tried.
fn verify_backup(
    id: Option<&str>,
    dir: &std::path::Path,
    report_to: Option<&std::path::Path>,
) -> Result<(), String> {
    let verified = with_runtime(async {
        let archive = wal::Archive::from_env()?;
        let pg_bin = settings::pg_bin_dir()?;
        Ok(verify::verify(&archive, &pg_bin, dir, id).await)
    })
    .map_err(|e| report(&e));
    let text = match &verified {
        Ok(result) => serde_json::to_string(result).unwrap_or_default(),
        Err(message) => message.clone(),
    };
    if let Some(path) = report_to
        && let Err(error) = std::fs::write(path, text)
    {
        tracing::warn!(path = %path.display(), %error, "cannot write the report");
    }
    match verified? {
        result if result.passed => {
            tracing::info!(id = %result.id, restore_seconds = ?result.restore_seconds, checks = ?result.checks, "the backup passed its verification");
            Ok(())
        }
        result => Err(format!(
            "backup {} failed its verification: {}",
            result.id,
            result.message.unwrap_or_default()
        )),
    }
}

/// `base-restore`: the chosen backup, unpacked.
async fn base_restore(
    pgdata: &std::path::Path,
    before: Option<&str>,
    id: Option<&str>,
) -> Result<(), InitError> {
    let archive = wal::Archive::from_env()?;
    let before = before
        .map(|t| {
            t.parse::<k8s_openapi::jiff::Timestamp>().map_err(|e| {
                basebackup::BackupError::NoBackup {
                    detail: format!(": --before {t:?} is not an RFC 3339 time ({e})"),
                }
            })
        })
        .transpose()?;
    let chosen = basebackup::find(&archive, id, before).await?;
    tracing::info!(id = %chosen.id, end_lsn = %chosen.end_lsn, "restoring base backup");
    basebackup::restore(&archive, &chosen, pgdata).await?;
    Ok(())
}

fn run_probe(kind: probe::Probe) -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let verdict = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(probe::Checker::new(settings, probe::Fencer::PgCtl).probe(kind)));
    match verdict {
        Ok(v) if v.ok => {
            println!("{}", v.why);
            ExitCode::SUCCESS
        }
        Ok(v) => {
            println!("{}", v.why);
            ExitCode::FAILURE
        }
        Err(error) => {
            println!("cannot start the probe: {error}");
            ExitCode::FAILURE
        }
    }
}
