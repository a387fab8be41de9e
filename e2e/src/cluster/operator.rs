//! The spawned operator, shared by the tests running at the same time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Config;

struct OperatorProcess {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
}

struct SharedOperator {
    users: usize,
    process: Option<OperatorProcess>,
    /// A test failed while this process ran: keep its log file.
    failed: bool,
}

/// One operator process for every test running at the same time: two
/// operators would fight over the same clusters.
static OPERATOR: Mutex<SharedOperator> = Mutex::new(SharedOperator {
    users: 0,
    process: None,
    failed: false,
});

fn shared_operator() -> std::sync::MutexGuard<'static, SharedOperator> {
    OPERATOR.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `target/<profile>/ordinal-operator`, next to this test binary's `deps/`.
fn operator_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("ordinal-operator"))
        .expect("the test binary lives in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: build it with the same profile first (`cargo build -p ordinal-operator`), \
         or run an operator in the cluster and set ORDINAL_E2E_OPERATOR=external",
        bin.display()
    );
    bin
}

fn free_local_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free local port");
    listener.local_addr().expect("the free port's address")
}

pub(super) fn tail_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// A test's claim on the spawned operator: released (the process stopped
/// when nobody uses it any more) on drop.
pub(super) struct OperatorLease {
    pub(super) log: PathBuf,
    addr: SocketAddr,
    keep: bool,
}

impl OperatorLease {
    pub(super) fn acquire(config: &Config) -> Self {
        let mut shared = shared_operator();
        if let Some(process) = shared.process.as_mut()
            && let Ok(Some(status)) = process.child.try_wait()
        {
            let log = std::fs::read_to_string(&process.log).unwrap_or_default();
            panic!(
                "the spawned operator exited ({status}); its log {}:\n{}",
                process.log.display(),
                tail_lines(&log, 100).join("\n")
            );
        }
        if shared.process.is_none() {
            let bin = operator_bin();
            let addr = free_local_port();
            let log = std::env::temp_dir().join(format!(
                "ordinal-e2e-operator-{}-{}.log",
                std::process::id(),
                addr.port()
            ));
            let file = std::fs::File::create(&log).expect("create the operator's log file");
            let child = Command::new(&bin)
                .arg("run")
                .env("ORDINAL_INIT_IMAGE", &config.ordinal_image)
                .env("ORDINAL_METRICS_ADDR", addr.to_string())
                .env("ORDINAL_LOG_FORMAT", "text")
                // One spawned operator, beside no other (checked above).
                .env("ORDINAL_NO_LEADER_ELECTION", "true")
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info,kube=warn".to_owned()),
                )
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("clone the log file handle"))
                .stderr(file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            eprintln!(
                "ordinal-e2e: spawned {} (pid {}, metrics on {addr}, init image {}, log {})",
                bin.display(),
                child.id(),
                config.ordinal_image,
                log.display()
            );
            shared.process = Some(OperatorProcess { child, log, addr });
            shared.failed = false;
        }
        shared.users += 1;
        let process = shared.process.as_ref().expect("just spawned");
        Self {
            log: process.log.clone(),
            addr: process.addr,
            keep: config.keep,
        }
    }

    /// Until the operator answers 200 on /readyz (its controller started).
    pub(super) async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(why) = operator_exited() {
                panic!("{why}");
            }
            if http_get_status(self.addr, "/readyz").await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the spawned operator did not become ready on {} within 60s; its log:\n{}",
                self.addr,
                tail_lines(&std::fs::read_to_string(&self.log).unwrap_or_default(), 100).join("\n")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for OperatorLease {
    fn drop(&mut self) {
        let mut shared = shared_operator();
        if std::thread::panicking() {
            shared.failed = true;
        }
        shared.users = shared.users.saturating_sub(1);
        if shared.users > 0 {
            return;
        }
        let failed = shared.failed;
        let Some(mut process) = shared.process.take() else {
            return;
        };
        drop(shared);
        // A graceful stop first (the operator stops its failover loops).
        if let Ok(pid) = i32::try_from(process.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(process.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = process.child.kill();
        let _ = process.child.wait();
        if failed || self.keep {
            eprintln!(
                "ordinal-e2e: the operator's log is kept in {}",
                process.log.display()
            );
        } else {
            let _ = std::fs::remove_file(&process.log);
        }
    }
}

/// Some(why) when the spawned operator has exited.
pub(super) fn operator_exited() -> Option<String> {
    let mut shared = shared_operator();
    let process = shared.process.as_mut()?;
    let status = process.child.try_wait().ok()??;
    let log = std::fs::read_to_string(&process.log).unwrap_or_default();
    Some(format!(
        "the spawned operator exited ({status}); the end of its log {}:\n{}",
        process.log.display(),
        tail_lines(&log, 100).join("\n")
    ))
}

impl OperatorLease {
    /// The spawned operator's `/metrics` page.
    pub(super) async fn metrics(&self) -> Option<String> {
        http_get_body(self.addr, "/metrics").await
    }
}

/// The body of `GET path` on `addr`, None when it does not answer.
pub(super) async fn http_get_body(addr: SocketAddr, path: &str) -> Option<String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// The status code of `GET path` on `addr`, None when it does not answer.
async fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}
