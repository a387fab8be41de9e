//! Leader election: several operator replicas, one at work. The replicas
//! contend for a `coordination.k8s.io` Lease (kube-lease-manager, with
//! server-side apply); the holder runs the controller and the failover
//! loops, the others wait as hot standbys, serving their health and
//! metrics endpoints. A leader that loses its Lease stops at once (the
//! process exits and is restarted as a candidate): two operators never act
//! on the same clusters knowingly. A leader that stops releases the Lease,
//! so a standby takes over within a second or two; one that vanishes
//! (a lost node) is replaced once the Lease expires.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Name of the Lease, in the operator's namespace.
pub const LEASE_NAME: &str = "ordinal-operator-leader";
/// How long a Lease holds without renewal: a leader that vanishes is
/// replaced after at most this plus [`LEASE_GRACE`].
pub const LEASE_DURATION: Duration = Duration::from_secs(10);
/// Renewal margin: the holder renews this long before the Lease expires.
pub const LEASE_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot set up leader election on Lease {namespace}/{LEASE_NAME}: {source}")]
    Setup {
        namespace: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("leader election on Lease {namespace}/{LEASE_NAME} stopped before this replica led")]
    Stopped { namespace: String },
    #[error("lost the Lease {namespace}/{LEASE_NAME}: stopping, so that only the new leader acts")]
    Lost { namespace: String },
}

/// A replica's place in the election.
pub struct Election {
    namespace: String,
    leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Election {
    /// Joins the election as `identity` (the pod's name).
    pub async fn join(
        client: Client,
        namespace: &str,
        identity: &str,
    ) -> Result<Self, LeaderError> {
        let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_DURATION.as_secs())
            .with_grace(LEASE_GRACE.as_secs())
            .build()
            .await
            .map_err(|source| LeaderError::Setup {
                namespace: namespace.to_owned(),
                source,
            })?;
        let (leading, task) = manager.watch().await;
        Ok(Self {
            namespace: namespace.to_owned(),
            leading,
            task,
        })
    }

    /// Waits until this replica holds the Lease.
    pub async fn lead(&mut self) -> Result<(), LeaderError> {
        self.leading
            .wait_for(|leading| *leading)
            .await
            .map(|_| ())
            .map_err(|_| LeaderError::Stopped {
                namespace: self.namespace.clone(),
            })
    }

    /// Resolves when this replica no longer holds the Lease.
    pub async fn lost(&mut self) {
        let _ = self.leading.wait_for(|leading| !*leading).await;
    }

    /// Leaves the election, releasing the Lease if held.
    pub async fn leave(self) {
        drop(self.leading);
        match self.task.await {
            Ok(Ok(manager)) => {
                if let Err(error) = manager.release().await {
                    tracing::warn!(%error, "cannot release the leader Lease");
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "leader election ended with an error"),
            Err(error) => tracing::warn!(%error, "leader election task failed"),
        }
    }
}
