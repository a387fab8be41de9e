//! `ordinal-init reload-on-change`: runs a program (PgBouncer in the
//! pooler's pods) and sends it SIGHUP when one of the watched files
//! changes — its configuration, its credentials, the certificate the
//! kubelet updates in place — so a change or a renewal is taken without a
//! restart and without dropping a client. The container's stop signal
//! (SIGTERM) reaches the program as SIGINT: PgBouncer's safe shutdown,
//! which lets transactions finish (its own SIGTERM waits, since 1.23, for
//! every client to leave, which pooled applications never do). Its exit
//! code is the program's.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use crate::supervise::config_changed;

/// How often the watched files are compared with what the program read.
const CHECK_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `command` until it exits; SIGHUPs it when a file of `watched`
/// changes. Returns its exit code (128 + the signal when a signal ended it).
pub async fn run(watched: &[PathBuf], command: &[String]) -> Result<i32, ReloadError> {
    let (program, args) = command.split_first().ok_or_else(|| ReloadError::Spawn {
        program: String::new(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command"),
    })?;
    let io = |what: &'static str| move |source| ReloadError::Io { what, source };
    let mut term = signal(SignalKind::terminate()).map_err(io("handle SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("handle SIGINT"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(io("handle SIGHUP"))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .spawn()
        .map_err(|source| ReloadError::Spawn {
            program: program.clone(),
            source,
        })?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let send = |signal: Signal| {
        if let Some(pid) = pid {
            let _ = kill(pid, signal);
        }
    };
    let mut seen = None;
    config_changed(watched, &mut seen);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    let status: ExitStatus = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(io("wait for the program"))?,
            _ = term.recv() => send(Signal::SIGINT),
            _ = int.recv() => send(Signal::SIGINT),
            _ = hup.recv() => send(Signal::SIGHUP),
            _ = tick.tick() => {
                if config_changed(watched, &mut seen) {
                    tracing::info!(program, "a watched file changed: reloading");
                    send(Signal::SIGHUP);
                }
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_program_is_reloaded_when_a_file_changes_and_its_code_is_returned() {
        let dir = tempfile::tempdir().expect("dir");
        let watched = dir.path().join("pgbouncer.ini");
        let log = dir.path().join("hups");
        std::fs::write(&watched, "a").expect("write");
        // A shell that counts its SIGHUPs, and exits 7 after two.
        let script = format!(
            "n=0; trap 'n=$((n+1)); echo $n >> {log}; [ $n -ge 2 ] && exit 7' HUP; \
             while true; do sleep 0.2; done",
            log = log.display()
        );
        let command = vec!["sh".to_owned(), "-c".to_owned(), script];
        let files = vec![watched.clone()];
        let running = tokio::spawn(async move { run(&files, &command).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        std::fs::write(&watched, "b").expect("write");
        tokio::time::sleep(CHECK_EVERY + Duration::from_secs(1)).await;
        assert_eq!(std::fs::read_to_string(&log).unwrap_or_default(), "1\n");
        std::fs::write(&watched, "c").expect("write");
        let code = tokio::time::timeout(CHECK_EVERY * 3, running)
            .await
            .expect("the program exits")
            .expect("task")
            .expect("run");
        assert_eq!(code, 7);
    }
}
