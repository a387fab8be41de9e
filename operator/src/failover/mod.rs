//! The failover loop (DESIGN §5): one per PostgresCluster. Every
//! `checkIntervalSeconds`, and at once on any change of a member, it probes
//! the instances, keeps the primary's housekeeping, and promotes the best
//! replica when the primary is lost on confirmed evidence — recording its
//! intent first, so that a restarted operator resumes instead of repeating.
//!
//! `machine.rs` decides (a pure state machine), `driver.rs` does what it
//! decides, `seam.rs` is the platform's side (Kubernetes in `kube.rs`, local
//! processes in the e2e crate), `pg.rs` the PostgreSQL side, `decide.rs`
//! the rules the machine is made of.

pub mod decide;
mod driver;
pub mod kube;
pub mod machine;
pub mod pg;
pub mod seam;

use ordinal_crds::FailoverRecord;

pub use driver::{FailoverLoop, probe_all};
use pg::PgError;
use seam::SeamError;

/// A step of a promotion, for fault injection in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Intent,
    Fence,
    Promote,
    Publish,
}

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error(transparent)]
    Seam(#[from] SeamError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("{pod} has no address to reach it at")]
    NoAddress { pod: String },
    #[error("fault injected after step {0:?}")]
    Injected(Step),
}

/// What one tick did.
#[derive(Clone, Debug, PartialEq)]
pub enum Tick {
    /// No primary recorded yet.
    Idle,
    Healthy,
    /// Not failing over; says why.
    Waiting(String),
    Promoted(Box<FailoverRecord>),
    /// A promotion is under way and waits a moment (a fence, a final WAL
    /// record): look again soon.
    Busy(String),
}
