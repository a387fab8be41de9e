//! A real MinIO server for the backup tests, started on 127.0.0.1 with a
//! data directory of its own and stopped on drop. The binary is built
//! from its Go module by `scripts/minio.sh build` (e2e/minio/go.mod pins
//! the version); `ORDINAL_MINIO_BIN` names another.

// Test code: a server that cannot start fails the test that needs it.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::local::free_port;

pub struct Minio {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
}

/// Where `scripts/minio.sh build` puts the binary (scripts/lib/common.sh:
/// `$ORDINAL_CACHE_DIR`, else `$XDG_CACHE_HOME/ordinal`, else
/// `~/.cache/ordinal`, then `bin/`).
pub fn minio_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("ORDINAL_MINIO_BIN") {
        return bin.into();
    }
    cache_dir().join("bin/minio")
}

/// The scripts' cache of built tools.
pub fn cache_dir() -> PathBuf {
    std::env::var("ORDINAL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
                })
                .join("ordinal")
        })
}

fn healthy(address: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET /minio/health/live HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

impl Minio {
    /// Starts a server with one bucket, `ordinal-backups`.
    pub fn start() -> Self {
        let bin = minio_bin();
        assert!(
            bin.exists(),
            "no MinIO binary at {}: build it with scripts/minio.sh build (scripts/test.sh does)",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, console) = (free_port(), free_port());
        let address = format!("127.0.0.1:{port}");
        let access_key = "ordinal-test".to_owned();
        let secret_key = format!("{:032x}", rand::random::<u128>());
        let child = Command::new(&bin)
            .args(["server", "--quiet", "--address", &address])
            .arg("--console-address")
            .arg(format!("127.0.0.1:{console}"))
            .arg(dir.path().join("data"))
            .env("MINIO_ROOT_USER", &access_key)
            .env("MINIO_ROOT_PASSWORD", &secret_key)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start minio");
        let mut minio = Self {
            child,
            _dir: dir,
            endpoint: format!("http://{address}"),
            access_key,
            secret_key,
            bucket: "ordinal-backups".to_owned(),
        };
        let start = Instant::now();
        while !healthy(&address) {
            if let Ok(Some(status)) = minio.child.try_wait() {
                panic!("minio exited at start: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "minio did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        minio.make_bucket();
        minio
    }

    /// A bucket, made with a request signed by curl (object_store makes
    /// none: buckets belong to whoever runs the store). A server that is
    /// live may still be initializing its storage on a busy machine and
    /// answer 503: asked again for up to 60 s.
    fn make_bucket(&self) {
        let start = Instant::now();
        let code = loop {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "10",
                ])
                .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "-X", "PUT", "--user"])
                .arg(format!("{}:{}", self.access_key, self.secret_key))
                .arg(format!("{}/{}", self.endpoint, self.bucket))
                .output()
                .expect("curl (apt-get install curl)");
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            if code != "503" || start.elapsed() > Duration::from_secs(60) {
                break code;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert!(
            code == "200",
            "creating bucket {} answered {code}",
            self.bucket
        );
    }

    /// object_store's options for this server, with its credentials.
    pub fn options(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".to_owned(), self.endpoint.clone()),
            ("aws_region".to_owned(), "us-east-1".to_owned()),
            ("aws_allow_http".to_owned(), "true".to_owned()),
            (
                "aws_virtual_hosted_style_request".to_owned(),
                "false".to_owned(),
            ),
            ("aws_access_key_id".to_owned(), self.access_key.clone()),
            ("aws_secret_access_key".to_owned(), self.secret_key.clone()),
        ]
    }

    /// `s3://BUCKET/PREFIX`
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }
}

impl Drop for Minio {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
