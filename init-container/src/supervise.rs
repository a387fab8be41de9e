//! `ordinal-init run`: the postgres container's main process. It runs the
//! guard (the role decision) and then postgres as its child, rather than
//! `exec`ing it, so that:
//!
//! - the kubelet's stop signal, whatever the image declares (SIGTERM unless
//!   it says otherwise), is a **fast** shutdown: it ends the sessions and
//!   streams the final WAL to the standbys. postgres' own SIGTERM is a
//!   smart shutdown that waits for every client. No preStop hook is needed,
//!   and the deletion of a primary starts its shutdown without the kubelet
//!   first running a command in the container (a few hundred milliseconds
//!   of every planned failover);
//! - a crashed postmaster (`kill -9`, an OOM kill) is started again at once,
//!   in place, after the guard has decided the role again — not after the
//!   kubelet's restart back-off (10 s, then 20 s, …), which turned a second
//!   crash within minutes into a failover. A postmaster that keeps crashing
//!   ([`MAX_RESTARTS`] within [`RESTART_WINDOW`]) ends the container, and
//!   the kubelet's back-off applies;
//! - as PID 1 it reaps the orphans of a crashed postmaster, and starts the
//!   next one only once every process of the last one is gone.
//!
//! A postmaster that exits cleanly (stopped by `pg_ctl`, as the liveness
//! probe stops an isolated primary) ends the container: the next start's
//! guard decides. The data volume's lock is held throughout, and shared
//! with postgres (see `lock.rs`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::InitError;
use crate::prepare;
use crate::settings::Settings;

/// At most this many restarts in place within [`RESTART_WINDOW`]; one more
/// crash ends the container.
pub const MAX_RESTARTS: usize = 3;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long the processes of a crashed postmaster may take to exit.
const ORPHANS_WITHIN: Duration = Duration::from_secs(10);

/// How postgres ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Killed(Signal),
}

impl Ending {
    fn from_status(status: WaitStatus) -> Option<Self> {
        match status {
            WaitStatus::Exited(_, code) => Some(Self::Exited(code)),
            WaitStatus::Signaled(_, signal, _) => Some(Self::Killed(signal)),
            _ => None,
        }
    }

    /// A crash, to be restarted in place, as opposed to a stop.
    pub fn crashed(self) -> bool {
        self != Self::Exited(0)
    }
}

/// What to do once postgres has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Start it again, in place.
    Restart,
    /// End the container with this code.
    Exit(i32),
}

/// The decision, pure: a stop that was asked for, or a clean exit, ends the
/// container; a crash is restarted in place unless `recent` restarts (the
/// times of the earlier ones) already fill the window.
pub fn next(ending: Ending, stop_asked: bool, recent: &VecDeque<Instant>, now: Instant) -> Next {
    let code = match ending {
        Ending::Exited(code) => code,
        Ending::Killed(signal) => 128 + signal as i32,
    };
    if stop_asked || !ending.crashed() {
        return Next::Exit(code);
    }
    let within = recent
        .iter()
        .filter(|t| now.duration_since(**t) < RESTART_WINDOW)
        .count();
    if within >= MAX_RESTARTS {
        Next::Exit(code.max(1))
    } else {
        Next::Restart
    }
}

/// The signal postgres is given for the one the container received:
/// SIGTERM and SIGINT are a fast shutdown, SIGQUIT an immediate one,
/// SIGHUP a reload.
pub fn forwarded(received: Signal) -> Signal {
    match received {
        Signal::SIGTERM | Signal::SIGINT => Signal::SIGINT,
        other => other,
    }
}

/// The program and its arguments, `postgres` resolved to the server
/// binaries the checks used.
fn resolve(settings: &Settings, command: &[String]) -> (PathBuf, Vec<String>) {
    let program = command.first().cloned().unwrap_or_default();
    let resolved = if program.contains('/') {
        PathBuf::from(&program)
    } else {
        settings.tool(&program)
    };
    (resolved, command.iter().skip(1).cloned().collect())
}

/// The `config_file` postgres is started with (`-c config_file=…`), if any.
fn config_file(args: &[String]) -> Option<PathBuf> {
    args.iter()
        .find_map(|a| a.strip_prefix("config_file="))
        .map(PathBuf::from)
}

/// How often the mounted configuration is compared with the one postgres
/// last read.
const CONFIG_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The files a reload re-reads: the `config_file` and the pg_hba.conf
/// beside it (both from the ConfigMap), and while TLS is on the
/// certificate, key and CA beside the CA file (postgres reloads its TLS
/// files on SIGHUP: a renewed certificate is served without a restart).
fn watched_files(config: Option<PathBuf>, tls_ca: Option<&Path>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(config) = config {
        if let Some(dir) = config.parent() {
            files.push(dir.join(ordinal_crds::names::CONFIG_PG_HBA));
        }
        files.push(config);
    }
    if let Some(ca) = tls_ca {
        let dir = ca.parent().unwrap_or(Path::new("/"));
        files.push(ca.to_owned());
        files.push(dir.join(ordinal_crds::names::TLS_CERT_KEY));
        files.push(dir.join(ordinal_crds::names::TLS_KEY_KEY));
    }
    files
}

/// Whether the watched files changed since `seen` (updating it): the
/// kubelet rewrites a mounted ConfigMap or Secret in place when it
/// changes, and a reload (SIGHUP) applies what can be applied without a
/// restart (the operator restarts the pods for the rest, through the pod
/// template).
pub(crate) fn config_changed(paths: &[PathBuf], seen: &mut Option<Vec<u8>>) -> bool {
    let mut now = Vec::new();
    let mut read_any = false;
    for path in paths {
        let content = std::fs::read(path).ok();
        read_any |= content.is_some();
        let content = content.unwrap_or_default();
        now.extend_from_slice(&(content.len() as u64).to_be_bytes());
        now.extend_from_slice(&content);
    }
    if !read_any {
        return false;
    }
    let changed = seen.as_ref().is_some_and(|s| *s != now);
    *seen = Some(now);
    changed
}

/// The next fence the liveness check asks for (`health.rs`); never, when
/// there is no check.
async fn fence_asked(fences: &mut Option<UnboundedReceiver<String>>) -> String {
    if let Some(receiver) = fences
        && let Some(why) = receiver.recv().await
    {
        return why;
    }
    std::future::pending().await
}

/// Runs postgres under supervision until the container is to end; returns
/// its exit code. The guard has run and the lock is held (inherited by
/// postgres). A fence asked for by the liveness check is an immediate
/// shutdown, and the container ends.
pub async fn supervise(
    settings: &Settings,
    command: &[String],
    mut fences: Option<UnboundedReceiver<String>>,
) -> Result<i32, InitError> {
    // Orphans of postgres come back to this process when it is not PID 1
    // (local runs), as they do to PID 1 in a container.
    if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(%error, "cannot become a subreaper: orphans of a crashed postgres are not waited for");
    }
    let failed = |what: &'static str| {
        move |source: std::io::Error| InitError::Exec {
            program: what.to_owned(),
            source,
        }
    };
    let mut term = signal(SignalKind::terminate()).map_err(failed("SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(failed("SIGINT handler"))?;
    let mut quit = signal(SignalKind::quit()).map_err(failed("SIGQUIT handler"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(failed("SIGHUP handler"))?;
    let mut child = signal(SignalKind::child()).map_err(failed("SIGCHLD handler"))?;
    let (program, args) = resolve(settings, command);
    let watched = watched_files(config_file(&args), settings.tls_ca.as_deref());
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    loop {
        // A fence asked for while no postgres ran was for the last one:
        // this one's role was decided again since.
        if let Some(receiver) = fences.as_mut() {
            while receiver.try_recv().is_ok() {}
        }
        tracing::info!(program = %program.display(), "starting");
        let postmaster = Command::new(&program)
            .args(&args)
            .spawn()
            .map_err(|source| InitError::Exec {
                program: program.display().to_string(),
                source,
            })?;
        let pid = Pid::from_raw(postmaster.id() as i32);
        let mut stop_asked = false;
        let mut config_seen = None;
        config_changed(&watched, &mut config_seen);
        let mut config_checked = Instant::now();
        let ending = loop {
            let received = tokio::select! {
                _ = term.recv() => Some(Signal::SIGTERM),
                _ = int.recv() => Some(Signal::SIGINT),
                _ = quit.recv() => Some(Signal::SIGQUIT),
                _ = hup.recv() => Some(Signal::SIGHUP),
                _ = child.recv() => None,
                why = fence_asked(&mut fences) => {
                    tracing::error!(%why, "fencing: immediate shutdown, and the container ends");
                    Some(Signal::SIGQUIT)
                }
                // A missed SIGCHLD is caught up with.
                () = tokio::time::sleep(Duration::from_secs(1)) => None,
            };
            if config_checked.elapsed() >= CONFIG_CHECK_EVERY {
                config_checked = Instant::now();
                if !stop_asked && config_changed(&watched, &mut config_seen) {
                    tracing::info!(
                        "the configuration or the certificate changed: postgres reloads it"
                    );
                    let _ = kill(pid, Signal::SIGHUP);
                }
            }
            if let Some(received) = received {
                let to = forwarded(received);
                stop_asked |= to != Signal::SIGHUP;
                tracing::info!(received = %received, forwarded = %to, "signal for postgres");
                let _ = kill(pid, to);
            }
            if let Some(ending) = reap(pid) {
                break ending;
            }
        };
        wait_for_orphans().await;
        let now = Instant::now();
        match next(ending, stop_asked, &restarts, now) {
            Next::Exit(code) => {
                if ending.crashed() && !stop_asked {
                    tracing::error!(
                        ?ending,
                        restarts = restarts.len(),
                        "postgres keeps crashing: the container ends, the kubelet restarts it"
                    );
                } else {
                    tracing::info!(?ending, "postgres has stopped");
                }
                return Ok(code);
            }
            Next::Restart => {
                tracing::warn!(
                    ?ending,
                    "postgres crashed: deciding the role again and restarting it in place"
                );
                restarts.push_back(now);
                while restarts.len() > MAX_RESTARTS {
                    restarts.pop_front();
                }
                // The guard again: a promotion recorded meanwhile, or
                // another primary, is found here. A stop asked for while it
                // runs ends the container.
                let _preparing = prepare::Preparing::mark(settings);
                tokio::select! {
                    prepared = prepare::prepare(settings) => { prepared?; }
                    _ = term.recv() => return Ok(0),
                    _ = int.recv() => return Ok(0),
                    _ = quit.recv() => return Ok(0),
                }
            }
        }
    }
}

/// Reaps every child that has ended; returns how `postmaster` ended when it
/// has.
fn reap(postmaster: Pid) -> Option<Ending> {
    let mut ended = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return ended,
            Ok(status) => {
                if status.pid() == Some(postmaster) {
                    ended = Ending::from_status(status);
                }
            }
        }
    }
}

/// Waits until no child is left (the backends of a crashed postmaster end
/// on their own once it is gone): a new postmaster refuses a data directory
/// whose shared memory is still attached.
async fn wait_for_orphans() {
    let started = Instant::now();
    while started.elapsed() < ORPHANS_WITHIN {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(nix::Error::ECHILD) => return,
            Ok(WaitStatus::StillAlive) => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => {}
        }
    }
    tracing::warn!(waited = ?ORPHANS_WITHIN, "processes of the last postgres are still running");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_or_a_clean_exit_ends_the_container() {
        let now = Instant::now();
        let none = VecDeque::new();
        assert_eq!(next(Ending::Exited(0), true, &none, now), Next::Exit(0));
        assert_eq!(next(Ending::Exited(0), false, &none, now), Next::Exit(0));
        // Asked to stop, it may still end badly: that is no crash to restart.
        assert_eq!(
            next(Ending::Killed(Signal::SIGKILL), true, &none, now),
            Next::Exit(137)
        );
    }

    #[test]
    fn a_crash_restarts_in_place_until_the_window_is_full() {
        let now = Instant::now();
        let mut recent = VecDeque::new();
        let crash = Ending::Killed(Signal::SIGKILL);
        assert_eq!(next(crash, false, &recent, now), Next::Restart);
        assert_eq!(next(Ending::Exited(1), false, &recent, now), Next::Restart);
        for _ in 0..MAX_RESTARTS {
            recent.push_back(now);
        }
        assert_eq!(next(crash, false, &recent, now), Next::Exit(137));
        assert_eq!(next(Ending::Exited(1), false, &recent, now), Next::Exit(1));
        // Restarts older than the window do not count.
        let later = now + RESTART_WINDOW + Duration::from_secs(1);
        assert_eq!(next(crash, false, &recent, later), Next::Restart);
    }

    #[test]
    fn the_kubelets_stop_is_a_fast_shutdown() {
        assert_eq!(forwarded(Signal::SIGTERM), Signal::SIGINT);
        assert_eq!(forwarded(Signal::SIGINT), Signal::SIGINT);
        assert_eq!(forwarded(Signal::SIGQUIT), Signal::SIGQUIT);
        assert_eq!(forwarded(Signal::SIGHUP), Signal::SIGHUP);
    }

    #[test]
    fn a_changed_configuration_file_is_seen_once() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("postgresql.conf");
        std::fs::write(&path, "a = 1\n").expect("write");
        let args = vec![
            "-D".to_owned(),
            "/x".to_owned(),
            "-c".to_owned(),
            format!("config_file={}", path.display()),
        ];
        let config = config_file(&args);
        assert_eq!(config.as_ref(), Some(&path));
        let watched = watched_files(config, None);
        let mut seen = None;
        assert!(!config_changed(&watched, &mut seen), "the first read");
        assert!(!config_changed(&watched, &mut seen));
        std::fs::write(&path, "a = 2\n").expect("write");
        assert!(config_changed(&watched, &mut seen));
        assert!(!config_changed(&watched, &mut seen));
        // pg_hba.conf beside it, which a reload re-reads too.
        std::fs::write(
            dir.path().join("pg_hba.conf"),
            "hostssl all all all scram-sha-256\n",
        )
        .expect("write");
        assert!(config_changed(&watched, &mut seen));
        assert!(!config_changed(&watched, &mut seen));
        assert!(
            !config_changed(&[], &mut seen),
            "no config_file: nothing to watch"
        );
    }

    #[test]
    fn a_renewed_certificate_is_a_change() {
        let dir = tempfile::tempdir().expect("dir");
        let conf = dir.path().join("postgresql.conf");
        std::fs::write(&conf, "a = 1\n").expect("write");
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).expect("dir");
        for file in ["ca.crt", "tls.crt", "tls.key"] {
            std::fs::write(tls.join(file), "old").expect("write");
        }
        let watched = watched_files(Some(conf), Some(&tls.join("ca.crt")));
        assert_eq!(watched.len(), 5);
        let mut seen = None;
        assert!(!config_changed(&watched, &mut seen));
        std::fs::write(tls.join("tls.crt"), "new").expect("write");
        assert!(config_changed(&watched, &mut seen));
        std::fs::write(tls.join("tls.key"), "new").expect("write");
        assert!(config_changed(&watched, &mut seen));
        assert!(!config_changed(&watched, &mut seen));
    }
}
