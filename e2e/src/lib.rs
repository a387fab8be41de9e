//! End-to-end tests of Ordinal.
//!
//! Two kinds, one crate:
//! - local chaos tests against real PostgreSQL servers started on
//!   127.0.0.1 (`tests/chaos.rs`, `tests/monitoring.rs`);
//! - the real-cluster suite against the cluster of `KUBECONFIG`
//!   (`tests/cluster.rs`, `tests/failover.rs`, behind the `cluster`
//!   feature), which `scripts/test.sh` runs on the local cluster that
//!   `scripts/cluster.sh` starts;
//!
//! and the benchmarks of `benches/`. Both kinds run in every CI run.

pub mod cluster;
pub mod emulators;
pub mod local;
pub mod minio;
pub mod scenario;
pub mod seam;
pub mod workload;

/// The `ordinal-init` binary of this build (`target/<profile>/ordinal-init`).
/// `cargo test --workspace` builds it (ordinal-init has tests of its own);
/// `scripts/test.sh` builds it first in any case.
pub fn init_bin() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test binary> → target/<profile>/ordinal-init
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join("ordinal-init"))
        .unwrap_or_default();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p ordinal-init` (scripts/test.sh does)",
        bin.display()
    );
    bin.display().to_string()
}

/// Logs of the code under test on the test's output (`--nocapture` shows
/// them; `RUST_LOG` filters). Safe to call from every test.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}
