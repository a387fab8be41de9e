//! A brand-new primary: initdb (with data checksums) into a staging
//! directory, create the replication role, then rename into place. A crash
//! at any point leaves either no PGDATA or a complete one.

use std::path::Path;

use crate::credentials::Credentials;
use crate::settings::Settings;
use crate::sql;
use crate::tools;
use crate::{InitError, fsutil};

pub async fn bootstrap(settings: &Settings, credentials: &Credentials) -> Result<(), InitError> {
    let staging = settings.staging_dir("initdb");
    fsutil::remove_staging(&staging)?;
    let pwfile = Credentials::superuser_password_file(&settings.superuser_dir);
    let staging_str = staging.to_string_lossy();
    let pwfile_arg = format!("--pwfile={}", pwfile.display());
    tools::run(
        &settings.tool("initdb"),
        &[
            "-D",
            &staging_str,
            "--data-checksums",
            "--username",
            sql::SUPERUSER,
            &pwfile_arg,
            "--encoding=UTF8",
            "--locale=C",
            // Only this bootstrap uses the generated pg_hba.conf: the running
            // server reads the operator's (hba_file). The staging server
            // listens on no TCP address.
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ],
        None,
    )
    .await?;
    create_roles(settings, &staging, credentials).await?;
    fsutil::rename_into_place(&staging, &settings.pgdata)?;
    tracing::info!(pgdata = %settings.pgdata.display(), "initialized a new cluster");
    Ok(())
}

/// Starts the staging server on the Unix socket only, creates the
/// replication role, stops it.
async fn create_roles(
    settings: &Settings,
    staging: &Path,
    credentials: &Credentials,
) -> Result<(), InitError> {
    let pg_ctl = settings.tool("pg_ctl");
    let staging_str = staging.to_string_lossy();
    let options = command_line(&socket_only(&settings.socket_dir, settings.port));
    let log = staging.join("bootstrap.log");
    let log_str = log.to_string_lossy();
    tools::run(
        &pg_ctl,
        &[
            "start",
            "-w",
            "-t",
            "120",
            "-D",
            &staging_str,
            "-l",
            &log_str,
            "-o",
            &options,
        ],
        None,
    )
    .await?;
    let result = async {
        let conn = sql::local(&settings.socket_dir, settings.port).await?;
        // Role names and passwords cannot be bind parameters in utility
        // statements: quote them.
        let statement = format!(
            "CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}",
            quote_ident(&credentials.replication_user),
            quote_literal(&credentials.replication_password)
        );
        conn.client
            .batch_execute(&statement)
            .await
            .map_err(|source| sql::SqlError::Query {
                target: conn.target.clone(),
                query: "CREATE ROLE <replication user>",
                source,
            })?;
        Ok::<_, InitError>(())
    }
    .await;
    let stopped = tools::run(
        &pg_ctl,
        &["stop", "-w", "-m", "fast", "-D", &staging_str],
        None,
    )
    .await;
    result?;
    stopped?;
    // The log is of the staging server only; it does not belong in PGDATA.
    let _ = std::fs::remove_file(&log);
    Ok(())
}

/// The settings of a staging server (a bootstrap's, a restore's): on
/// this pod's Unix socket only, no TCP address, so nobody but ordinal-init
/// reaches it before it becomes PGDATA.
pub fn socket_only(socket_dir: &Path, port: u16) -> Vec<String> {
    vec![
        "listen_addresses=''".to_owned(),
        format!("unix_socket_directories='{}'", socket_dir.display()),
        format!("port={port}"),
    ]
}

/// Settings as postgres' command line, for `pg_ctl -o`.
pub fn command_line(settings: &[String]) -> String {
    settings
        .iter()
        .map(|s| format!("-c {s}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("stream\"ing"), "\"stream\"\"ing\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
