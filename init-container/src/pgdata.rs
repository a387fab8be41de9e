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
    /// The newest timeline this directory knows of.
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
    let timeline = control_timeline.max(newest_history_timeline(&dir.join("pg_wal")));
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

/// The highest timeline with a history file (`0000000N.history`) in pg_wal:
/// a promotion writes it at once, before its first checkpoint updates
/// pg_control, so a primary killed right after promotion still shows it.
fn newest_history_timeline(pg_wal: &Path) -> u32 {
    std::fs::read_dir(pg_wal)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let hex = name.to_str()?.strip_suffix(".history")?;
            u32::from_str_radix(hex, 16).ok()
        })
        .max()
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_give_the_timeline() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(newest_history_timeline(dir.path()), 1);
        for name in [
            "00000002.history",
            "0000000A.history",
            "000000010000000000000001",
        ] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        assert_eq!(newest_history_timeline(dir.path()), 10);
    }
}
