//! Pod helpers: readiness, restarts and revision of a pod; exec into it,
//! and crashing its PostgreSQL.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;
use kube::api::AttachParams;
use tokio::io::AsyncReadExt;

use super::{Harness, error_text};

/// What an exec printed, and the status the API server reported.
#[derive(Debug)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.status.as_deref() == Some("Success"))
    }
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn postgres_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "postgres")
}

/// Restarts of the `postgres` container of `pod`.
pub fn postgres_restarts(pod: &Pod) -> i32 {
    postgres_status(pod).map_or(0, |c| c.restart_count)
}

fn postgres_not_running(pod: &Pod) -> bool {
    postgres_status(pod)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_none())
}

/// The pod's `controller-revision-hash` (its StatefulSet revision).
pub fn pod_revision(pod: &Pod) -> Option<String> {
    pod.labels().get("controller-revision-hash").cloned()
}

impl Harness {
    /// Runs `command` in `container` of `pod` (kubectl exec).
    pub async fn exec(
        &self,
        pod: &str,
        container: &str,
        command: &[&str],
    ) -> Result<ExecOutput, String> {
        let params = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let run = async {
            let mut attached = self
                .pods()
                .exec(pod, command.to_vec(), &params)
                .await
                .map_err(|e| error_text(&e))?;
            let stdout = attached.stdout();
            let stderr = attached.stderr();
            let status = attached.take_status();
            let read = |half: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
                let mut buf = Vec::new();
                if let Some(mut half) = half {
                    let _ = half.read_to_end(&mut buf).await;
                }
                String::from_utf8_lossy(&buf).into_owned()
            };
            let (stdout, stderr) = tokio::join!(read(stdout), read(stderr));
            let status = match status {
                Some(status) => status.await,
                None => None,
            };
            let _ = attached.join().await;
            Ok(ExecOutput {
                stdout,
                stderr,
                status,
            })
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .map_err(|_| format!("exec in {pod}/{container} did not finish within 60s"))?
    }

    /// Crashes PostgreSQL in `pod` and waits until the crash shows (the
    /// container restarted, or the pod was replaced).
    ///
    /// Not a literal `kill -9 1`: postgres is PID 1 of its container
    /// (ordinal-init execs it), and the kernel drops SIGKILL sent to a PID
    /// namespace's init from inside the namespace — which is where exec
    /// runs. So every other process of the container (the backends,
    /// walsenders, checkpointer: everything holding unsent WAL) gets
    /// SIGKILL, and the postmaster SIGQUIT, postgres' immediate shutdown:
    /// no checkpoint, no final WAL to the standbys, crash recovery at the
    /// next start. Should the postmaster not be PID 1, it gets SIGKILL.
    pub async fn crash_postgres(&self, pod: &str) {
        let before = self
            .pods()
            .get(pod)
            .await
            .unwrap_or_else(|e| panic!("reading pod {pod}: {}", error_text(&e)));
        let uid = before.metadata.uid.clone();
        let restarts = postgres_restarts(&before);
        // Every process but PID 1 and this shell (dash has no reliable
        // `kill -1`), then the postmaster.
        let script = r#"read -r pid < "$PGDATA/postmaster.pid" || exit 3
echo "postmaster pid $pid"
if [ "$pid" = 1 ]; then
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = 1 ] || [ "$p" = "$$" ] || kill -KILL "$p" 2>/dev/null
  done
  kill -QUIT 1
else
  kill -KILL "$pid"
fi"#;
        // The container dies with postgres: the exec may end abruptly.
        match self.exec(pod, "postgres", &["sh", "-c", script]).await {
            Ok(out) => eprintln!(
                "ordinal-e2e: crash {pod}: {} {} ({:?})",
                out.stdout.trim(),
                out.stderr.trim(),
                out.status.and_then(|s| s.message)
            ),
            Err(why) => eprintln!("ordinal-e2e: crash {pod}: the exec ended with: {why}"),
        }
        self.wait_until(
            &format!("postgres in {pod} is down (container restarted or pod replaced)"),
            async || match self.pods().get_opt(pod).await {
                Ok(None) => Ok(()),
                Ok(Some(p)) if p.metadata.uid != uid => Ok(()),
                Ok(Some(p)) if p.metadata.deletion_timestamp.is_some() => Ok(()),
                Ok(Some(p)) if postgres_restarts(&p) > restarts || postgres_not_running(&p) => {
                    Ok(())
                }
                Ok(Some(p)) => Err(format!(
                    "{pod}: container postgres still running, restartCount {}",
                    postgres_restarts(&p)
                )),
                Err(e) => Err(error_text(&e)),
            },
        )
        .await;
    }
}
