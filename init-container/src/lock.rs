//! One postgres per PGDATA, whatever the kubelet does. A force-deleted pod's
//! container may still run while its replacement (same name, same volume)
//! starts on the same node; postgres' own `postmaster.pid` check cannot see
//! a postmaster in another PID and IPC namespace. An exclusive `flock` on a
//! file of the volume can: the kernel holds it for the open file, across
//! namespaces. The guard takes it before it looks at PGDATA, keeps it while
//! it supervises postgres and shares it with postgres (the descriptor is
//! inherited), so the lock is released only when the guard, its postmaster
//! and every process that started have exited (they all share the open
//! file).
//!
//! The pod's first init container (`install --wait-for-volume`) takes the
//! lock too, and lets it go: its completion tells the operator that every
//! process of an earlier instance on this node is gone — how a force
//! deletion is confirmed before a replica is promoted.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, Flock, FlockArg, fcntl};

use crate::settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the data volume's lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot keep the lock on {path} across exec")]
    Inherit {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// The held lock; dropping it releases the lock, unless it was shared with
/// postgres by [`DataLock::keep_across_exec`].
pub struct DataLock(Flock<File>);

pub fn path(settings: &Settings) -> PathBuf {
    settings.data_mount().join(LOCK_FILE)
}

/// Takes the lock, waiting as long as another process (an old container of
/// this pod) holds it.
pub async fn acquire(settings: &Settings) -> Result<DataLock, LockError> {
    acquire_at(path(settings)).await
}

/// Takes the lock on the data volume mounted at `mount`.
pub async fn acquire_in(mount: &std::path::Path) -> Result<DataLock, LockError> {
    acquire_at(mount.join(LOCK_FILE)).await
}

const LOCK_FILE: &str = ".ordinal.lock";

async fn acquire_at(path: PathBuf) -> Result<DataLock, LockError> {
    let started = Instant::now();
    let mut warned = Duration::ZERO;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                if started.elapsed() > Duration::from_millis(500) {
                    tracing::info!(waited = ?started.elapsed(), "took the data volume's lock");
                }
                return Ok(DataLock(lock));
            }
            Err((_, nix::Error::EWOULDBLOCK)) => {
                if started.elapsed() >= warned {
                    tracing::warn!(
                        path = %path.display(),
                        "another postgres of this pod still holds the data volume (an old container the kubelet has not stopped yet): waiting"
                    );
                    warned += Duration::from_secs(10);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err((_, source)) => {
                return Err(LockError::Lock {
                    path: path.clone(),
                    source,
                });
            }
        }
    }
}

impl DataLock {
    /// Lets the processes started from here on (postgres) inherit the lock,
    /// and keeps it for as long as this process runs: each holder keeps it
    /// until it exits.
    pub fn keep_across_exec(self, settings: &Settings) -> Result<(), LockError> {
        fcntl(&*self.0, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|source| {
            LockError::Inherit {
                path: path(settings),
                source,
            }
        })?;
        // Not dropped: dropping would unlock.
        std::mem::forget(self);
        Ok(())
    }
}
