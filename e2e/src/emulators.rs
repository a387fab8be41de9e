//! Azure Blob Storage as a real server on 127.0.0.1 for the backup tests:
//! Azurite, Microsoft's own emulator, with a data directory of its own,
//! stopped on drop. `scripts/emulators.sh build` installs it in the cache
//! (scripts/test.sh does).
//!
//! Google Cloud Storage has no such server here: object_store speaks
//! GCS's XML API, which the upstream fake-gcs-server does not serve
//! (object_store's own CI runs a fork that is only published as a
//! container image).

// Test code: a server that cannot start fails the test that needs it.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::local::free_port;
use crate::minio::cache_dir;

/// Azurite's well-known development account and key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The container the server is started with.
pub const BUCKET: &str = "ordinal-backups";

fn wait_listening(child: &mut Child, port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not listen within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Azurite's blob service with container [`BUCKET`].
pub struct Azurite {
    child: Child,
    _dir: tempfile::TempDir,
    /// The account's blob endpoint: `http://127.0.0.1:PORT/devstoreaccount1`.
    pub endpoint: String,
}

impl Azurite {
    pub fn start() -> Self {
        let home = cache_dir().join("azurite");
        let bin: PathBuf = home.join("node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "no Azurite at {}: install it with scripts/emulators.sh build (scripts/test.sh does)",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut child = Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path())
            .args(["--silent", "--skipApiVersionCheck"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite (node)");
        wait_listening(&mut child, port, "azurite");
        let endpoint = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}");
        let out = Command::new("node")
            .arg(home.join("create-container.js"))
            .args([&endpoint, AZURITE_ACCOUNT, AZURITE_KEY, BUCKET])
            .current_dir(&home)
            .output()
            .expect("node");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            child,
            _dir: dir,
            endpoint,
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
