//! The file-system steps that make every operation crash-safe: staging
//! directories, atomic renames, moving data aside (never deleting it).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot remove the unfinished staging directory {path}")]
    RemoveStaging {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set mode 0700 on {path}")]
    Chmod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Removes a staging directory left by an interrupted clone or initdb. It
/// never became PGDATA (only a complete one is renamed into place), so it
/// holds no data of the cluster.
pub fn remove_staging(path: &Path) -> Result<(), FsError> {
    match fs::remove_dir_all(path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "removed an unfinished staging directory from an interrupted run");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FsError::RemoveStaging {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Renames a complete staging directory to PGDATA (an empty PGDATA
/// directory, e.g. created by hand, is replaced).
pub fn rename_into_place(staging: &Path, pgdata: &Path) -> Result<(), FsError> {
    if pgdata.exists()
        && fs::read_dir(pgdata)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    {
        let _ = fs::remove_dir(pgdata);
    }
    fs::rename(staging, pgdata).map_err(|source| FsError::Rename {
        from: staging.to_path_buf(),
        to: pgdata.to_path_buf(),
        source,
    })?;
    restrict(pgdata)
}

/// Moves PGDATA aside to `<pgdata>.aside-<unix seconds>-<nanoseconds>`;
/// returns the new path.
pub fn set_aside(pgdata: &Path, why: &str) -> Result<PathBuf, FsError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let name = pgdata
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pgdata".to_owned());
    let to = pgdata.with_file_name(format!(
        "{name}.aside-{}-{:09}",
        now.as_secs(),
        now.subsec_nanos()
    ));
    fs::rename(pgdata, &to).map_err(|source| FsError::Rename {
        from: pgdata.to_path_buf(),
        to: to.clone(),
        source,
    })?;
    tracing::warn!(from = %pgdata.display(), to = %to.display(), why, "moved PGDATA aside (kept, not deleted)");
    Ok(to)
}

/// postgres refuses a data directory readable by others; the kubelet's
/// fsGroup handling may have loosened it.
pub fn restrict(pgdata: &Path) -> Result<(), FsError> {
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700)).map_err(|source| {
        FsError::Chmod {
            path: pgdata.to_path_buf(),
            source,
        }
    })
}

/// Creates an empty file (e.g. standby.signal).
pub fn touch(path: &Path) -> Result<(), FsError> {
    fs::write(path, b"").map_err(|source| FsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes a file; one already gone is fine.
pub fn remove_file(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FsError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}
