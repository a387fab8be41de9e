//! What is in PGDATA: nothing, a valid data directory (primary or standby,
//! on which timeline), or something that is not a data directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::settings::Settings;

/// A valid data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    /// `standby.signal` is present: it starts as a standby.
    pub standby: bool,
    /// The timeline its data was replayed on (pg_control).
    pub timeline: u32,
    /// Major version from PG_VERSION.
    pub major: u32,
    /// `Database system identifier`: one per initdb.
    pub system_id: String,
    /// `Database cluster state` (e.g. "shut down", "in production").
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pgdata {
    /// Missing or empty.
    Empty,
    Valid(DataDir),
    /// Not empty, but not a usable data directory (e.g. a half-written
    /// one from a foreign tool). Never deleted; moved aside when replaced.
    Foreign(String),
}

#[derive(Debug, thiserror::Error)]
pub enum PgdataError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pg_controldata failed on {path}: {stderr}")]
    ControlData { path: PathBuf, stderr: String },
    #[error("cannot run {tool}")]
    Spawn {
        tool: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Inspects PGDATA.
pub fn inspect(settings: &Settings) -> Result<Pgdata, PgdataError> {
    let dir = &settings.pgdata;
    let read_err = |source| PgdataError::Read {
        path: dir.clone(),
        source,
    };
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pgdata::Empty),
        Err(e) => return Err(read_err(e)),
    };
    if entries.next().is_none() {
        return Ok(Pgdata::Empty);
    }
    let version = match std::fs::read_to_string(dir.join("PG_VERSION")) {
        Ok(v) => v,
        Err(_) => return Ok(Pgdata::Foreign("PG_VERSION is missing".to_owned())),
    };
    let Ok(major) = version.trim().parse::<u32>() else {
        return Ok(Pgdata::Foreign(format!(
            "PG_VERSION holds {:?}",
            version.trim()
        )));
    };
    if !dir.join("global/pg_control").exists() {
        return Ok(Pgdata::Foreign("global/pg_control is missing".to_owned()));
    }
    let control = control_data(settings, dir)?;
    let field = |key: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let control_timeline = [
        field("Latest checkpoint's TimeLineID"),
        field("Min recovery ending loc's timeline"),
    ]
    .iter()
    .filter_map(|v| v.parse::<u32>().ok())
    .max()
    .unwrap_or(1);
    // The timeline the data was replayed on, from pg_control. Not the
    // newest history file in pg_wal: a standby's WAL receiver fetches the
    // new primary's history file as soon as it connects, even when the
    // standby replayed past the fork point and cannot follow.
    let timeline = control_timeline;
    Ok(Pgdata::Valid(DataDir {
        standby: dir.join("standby.signal").exists(),
        timeline,
        major,
        system_id: field("Database system identifier"),
        state: field("Database cluster state"),
    }))
}

fn control_data(settings: &Settings, dir: &Path) -> Result<String, PgdataError> {
    let tool = settings.tool("pg_controldata");
    let out = Command::new(&tool)
        .arg("-D")
        .arg(dir)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| PgdataError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(PgdataError::ControlData {
            path: dir.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
