//! A replica's data: clone from the primary (pg_basebackup into staging,
//! renamed into place only when complete), rewind a diverged one
//! (pg_rewind, or set it aside and clone afresh), and point a standby at the
//! primary (primary_conninfo with application_name and slot).

use std::path::Path;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use ordinal_crds::names;

use crate::credentials::Credentials;
use crate::decide::PrimaryInfo;
use crate::pgdata::{self, Pgdata};
use crate::settings::Settings;
use crate::sql;
use crate::state::Endpoint;
use crate::tools;
use crate::{InitError, autoconf, fsutil};

/// The primary, as this pod sees it.
pub struct Primary<'a> {
    pub name: &'a str,
    pub endpoint: Endpoint,
    /// While TLS is on: the CA it is verified against.
    pub tls_ca: Option<&'a Path>,
}

impl Primary<'_> {
    /// libpq's `host=… [hostaddr=…] port=… [sslmode=verify-full sslrootcert=…]`.
    fn server(&self) -> String {
        ordinal_crds::conninfo::server(
            &self.endpoint.host,
            self.endpoint.hostaddr.as_deref(),
            self.endpoint.port,
            self.tls_ca.and_then(Path::to_str),
        )
    }
}

async fn superuser_conn(
    primary: &Primary<'_>,
    credentials: &Credentials,
) -> Result<sql::Conn, InitError> {
    Ok(sql::remote(
        &primary.endpoint,
        primary.tls_ca,
        sql::SUPERUSER,
        &credentials.superuser_password,
    )
    .await?)
}

/// The primary's timeline and system identifier, when it answers as a primary.
pub async fn primary_info(primary: &Primary<'_>, credentials: &Credentials) -> Option<PrimaryInfo> {
    let query = async {
        let conn = superuser_conn(primary, credentials).await?;
        let row = conn
            .query_one(
                "SELECT pg_is_in_recovery(), \
                        CASE WHEN pg_is_in_recovery() THEN NULL \
                             ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END, \
                        (SELECT system_identifier::text FROM pg_control_system())",
                &[],
            )
            .await?;
        let in_recovery: bool = row.get(0);
        let timeline: Option<String> = row.get(1);
        let system: String = row.get(2);
        Ok::<_, InitError>((in_recovery, timeline, system))
    };
    match query.await {
        Ok((false, Some(hex), system)) => Some(PrimaryInfo {
            timeline: u32::from_str_radix(&hex, 16).ok()?,
            system_id: system.parse().ok()?,
        }),
        Ok(_) => {
            tracing::info!(
                primary = primary.name,
                "the primary is still a standby (awaiting promotion)"
            );
            None
        }
        Err(error) => {
            tracing::warn!(primary = primary.name, error = %error, "cannot ask the primary");
            None
        }
    }
}

/// Waits (with backoff, up to `timeout`) until the primary accepts a
/// connection: replicas of a new cluster start before their primary does.
pub async fn wait_for_primary(
    primary: &Primary<'_>,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<(), InitError> {
    let started = Instant::now();
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match superuser_conn(primary, credentials).await {
            Ok(_) => return Ok(()),
            Err(error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                if started.elapsed() + delay > timeout {
                    return Err(error);
                }
                tracing::info!(primary = primary.name, error = %error, retry_in = ?delay, "waiting for the primary");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Makes sure the primary keeps a physical slot for `pod`, so that it
/// retains the WAL this replica still needs.
async fn ensure_slot(
    primary: &Primary<'_>,
    credentials: &Credentials,
    slot: &str,
) -> Result<(), InitError> {
    let conn = superuser_conn(primary, credentials).await?;
    let exists = conn
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .is_some();
    if !exists {
        conn.execute(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&slot],
        )
        .await?;
        tracing::info!(slot, primary = primary.name, "created the replication slot");
    }
    Ok(())
}

/// Clones PGDATA from the primary.
pub async fn clone(
    settings: &Settings,
    primary: &Primary<'_>,
    credentials: &Credentials,
) -> Result<(), InitError> {
    let slot = names::slot_name(&settings.pod);
    ensure_slot(primary, credentials, &slot).await?;
    let staging = settings.staging_dir("clone");
    fsutil::remove_staging(&staging)?;
    let staging_str = staging.to_string_lossy();
    let server = primary.server();
    tools::run(
        &settings.tool("pg_basebackup"),
        &[
            "-D",
            &staging_str,
            "-d",
            &server,
            "-U",
            &credentials.replication_user,
            "--no-password",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--slot",
            &slot,
        ],
        Some(&credentials.replication_password),
    )
    .await?;
    configure_standby(settings, &staging, primary, credentials)?;
    fsutil::rename_into_place(&staging, &settings.pgdata)?;
    tracing::info!(primary = primary.name, "cloned from the primary");
    Ok(())
}

/// Rewinds a diverged PGDATA to follow the primary; when pg_rewind cannot,
/// moves PGDATA aside (kept) and clones afresh.
pub async fn rewind(
    settings: &Settings,
    primary: &Primary<'_>,
    credentials: &Credentials,
) -> Result<(), InitError> {
    match try_rewind(settings, primary, credentials).await {
        Ok(()) => {
            configure_standby(settings, &settings.pgdata, primary, credentials)?;
            let slot = names::slot_name(&settings.pod);
            ensure_slot(primary, credentials, &slot).await?;
            tracing::info!(
                primary = primary.name,
                "rewound: now a standby of the primary"
            );
            Ok(())
        }
        // The primary cannot be reached: nothing was changed, try later.
        Err(error @ InitError::Sql(_)) => Err(error),
        Err(error) => {
            tracing::warn!(error = %error, "pg_rewind failed: setting PGDATA aside and cloning afresh");
            fsutil::set_aside(&settings.pgdata, "pg_rewind failed")?;
            fsutil::remove_file(&rewind_marker(settings))?;
            clone(settings, primary, credentials).await
        }
    }
}

/// pg_rewind needs a cleanly shut down target. It recovers a crashed
/// primary by itself (single-user mode), but single-user mode cannot run a
/// standby: start a crashed standby on the Unix socket only until it is
/// consistent, then stop it cleanly.
async fn clean_shutdown_of_a_crashed_standby(settings: &Settings) -> Result<(), InitError> {
    let Pgdata::Valid(d) = pgdata::inspect(settings)? else {
        return Ok(());
    };
    if !d.standby || d.state.starts_with("shut down") {
        return Ok(());
    }
    tracing::info!(state = %d.state, "the standby was not shut down cleanly: recovering it before pg_rewind");
    let pg_ctl = settings.tool("pg_ctl");
    let pgdata = settings.pgdata.to_string_lossy();
    let options = format!(
        "-c listen_addresses='' -c unix_socket_directories='{}' -c port={} -c hot_standby=on",
        settings.socket_dir.display(),
        settings.port
    );
    let log = settings.staging_dir("recovery.log");
    let log = log.to_string_lossy();
    tools::run(
        &pg_ctl,
        &[
            "start", "-w", "-t", "600", "-D", &pgdata, "-l", &log, "-o", &options,
        ],
        None,
    )
    .await?;
    tools::run(&pg_ctl, &["stop", "-w", "-m", "fast", "-D", &pgdata], None).await?;
    Ok(())
}

async fn try_rewind(
    settings: &Settings,
    primary: &Primary<'_>,
    credentials: &Credentials,
) -> Result<(), InitError> {
    if let Err(error) = clean_shutdown_of_a_crashed_standby(settings).await {
        tracing::warn!(error = %error, "could not recover the standby; pg_rewind will tell");
    }
    // A just-promoted primary's control file names its new timeline only
    // after a checkpoint; without one pg_rewind would see no divergence.
    let conn = superuser_conn(primary, credentials).await?;
    conn.execute("CHECKPOINT", &[]).await?;
    drop(conn);
    let source = format!(
        "{} user={} dbname=postgres connect_timeout=10",
        primary.server(),
        ordinal_crds::conninfo::quote(sql::SUPERUSER)
    );
    let target = format!("--target-pgdata={}", settings.pgdata.display());
    let source_arg = format!("--source-server={source}");
    // pg_rewind changes PGDATA in place: one interrupted half way leaves a
    // directory that looks valid and is not. The marker says so to the next
    // start, which sets it aside and clones afresh.
    let marker = rewind_marker(settings);
    fsutil::touch(&marker)?;
    tools::run(
        &settings.tool("pg_rewind"),
        &[&target, &source_arg],
        Some(&credentials.superuser_password),
    )
    .await?;
    fsutil::remove_file(&marker)?;
    Ok(())
}

/// Present while pg_rewind runs (and after it failed or was interrupted).
pub fn rewind_marker(settings: &Settings) -> std::path::PathBuf {
    settings.data_mount().join(".ordinal-rewinding")
}

/// Points PGDATA at `dir` at the primary: standby.signal, primary_conninfo
/// (application_name = pod name, host = the primary's stable DNS name, at
/// its pod IP when the status gives it) and
/// primary_slot_name.
pub fn configure_standby(
    settings: &Settings,
    dir: &Path,
    primary: &Primary<'_>,
    credentials: &Credentials,
) -> Result<(), InitError> {
    let conninfo = ordinal_crds::conninfo::primary_conninfo(
        &primary.endpoint.host,
        primary.endpoint.hostaddr.as_deref(),
        primary.endpoint.port,
        primary.tls_ca.and_then(Path::to_str),
        &credentials.replication_user,
        &credentials.replication_password,
        &settings.pod,
    );
    let slot = names::slot_name(&settings.pod);
    autoconf::set(
        dir,
        &[
            ("primary_conninfo", &conninfo),
            ("primary_slot_name", &slot),
            ("recovery_target_timeline", "latest"),
        ],
    )?;
    fsutil::touch(&dir.join("standby.signal"))?;
    Ok(())
}

/// Refreshes a standby's settings and, when the primary answers, its slot.
pub async fn follow(
    settings: &Settings,
    primary: &Primary<'_>,
    credentials: &Credentials,
) -> Result<(), InitError> {
    configure_standby(settings, &settings.pgdata, primary, credentials)?;
    let slot = names::slot_name(&settings.pod);
    if let Err(error) = ensure_slot(primary, credentials, &slot).await {
        tracing::warn!(error = %error, "cannot make sure of the replication slot now; the operator keeps slots too");
    }
    Ok(())
}
