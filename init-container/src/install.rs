//! `install DIR`: copies this binary into DIR (the emptyDir shared with the
//! postgres containers), so that the postgres image can run it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot find the running ordinal-init binary")]
    CurrentExe(#[source] io::Error),
    #[error("cannot copy {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Copies the running binary to `dir/ordinal-init`, atomically: a pod
/// killed mid-copy leaves no half-written binary under the final name.
pub fn install(dir: &Path) -> Result<PathBuf, InstallError> {
    let from = std::env::current_exe().map_err(InstallError::CurrentExe)?;
    let to = dir.join("ordinal-init");
    let partial = dir.join(".ordinal-init.partial");
    let copy = || -> io::Result<()> {
        fs::copy(&from, &partial)?;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))?;
        fs::rename(&partial, &to)
    };
    copy().map_err(|source| InstallError::Copy {
        from: from.clone(),
        to: to.clone(),
        source,
    })?;
    Ok(to)
}
