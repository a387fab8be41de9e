//! Pod helpers: readiness, restarts and revision of a pod; exec into it,
//! and crashing, stopping or resuming its PostgreSQL from the node.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;
use kube::api::AttachParams;
use nix::sys::signal::Signal;
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

/// The ways a primary is lost, in the failover scenarios and the failover
/// benchmark ([`Harness::lose`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Loss {
    /// `kubectl delete pod`: the pod's graceful termination.
    Delete,
    /// `kubectl delete pod --grace-period=0 --force`.
    ForceDelete,
    /// `kill -9` of the postmaster from the node: the container restarts in
    /// place.
    Kill,
    /// `kill -STOP` of the postmaster: it hangs, connections hang.
    Hang,
}

impl Loss {
    /// A planned loss: the pod's graceful termination.
    pub fn planned(self) -> bool {
        self == Self::Delete
    }
}

impl Harness {
    /// Loses the primary `pod` the way `how` says (see [`Loss`]); the
    /// signals need the node's containerd state ([`Harness::signal_postgres`]).
    pub async fn lose(&self, pod: &str, how: Loss) {
        match how {
            Loss::Delete => self.delete_pod(pod).await,
            Loss::ForceDelete => self.force_delete_pod(pod).await,
            Loss::Kill => self
                .signal_postgres(pod, Signal::SIGKILL)
                .await
                .unwrap_or_else(|why| panic!("kill -9 of {pod}: {why}")),
            Loss::Hang => self
                .signal_postgres(pod, Signal::SIGSTOP)
                .await
                .unwrap_or_else(|why| panic!("kill -STOP of {pod}: {why}")),
        }
    }

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

    /// Which postgres runs in `pod` now: its container's restarts and its
    /// postmaster's PID (from `postmaster.pid`, None when it cannot be
    /// read). Either changes when postgres is started again — by the
    /// kubelet (a new container) or by ordinal-init in place.
    pub async fn postgres_instance(&self, pod: &str) -> Result<(i32, Option<String>), String> {
        let p = self.pods().get(pod).await.map_err(|e| error_text(&e))?;
        let pid = self
            .exec(
                pod,
                "postgres",
                &["sh", "-c", r#"head -n1 "$PGDATA/postmaster.pid""#],
            )
            .await
            .ok()
            .filter(ExecOutput::success)
            .map(|o| o.stdout.trim().to_owned())
            .filter(|pid| !pid.is_empty());
        Ok((postgres_restarts(&p), pid))
    }

    /// Crashes PostgreSQL in `pod` — `kill -9` of the postmaster — and
    /// waits until the crash shows (postgres started again, in place or in
    /// a new container, or the pod replaced).
    ///
    /// The postmaster is ordinal-init's child; the signal comes from the
    /// node ([`Harness::signal_postgres`]) when the suite has access to the
    /// node's containerd (`ORDINAL_E2E_CONTAINERD_STATE`, set by
    /// scripts/test.sh for the local cluster), else from inside the
    /// container. (Were postgres PID 1 of its container, the kernel would
    /// drop a SIGKILL sent from inside the namespace: then every other
    /// process of the container gets SIGKILL and the postmaster SIGQUIT,
    /// postgres' immediate shutdown.)
    pub async fn crash_postgres(&self, pod: &str) {
        let before = self
            .pods()
            .get(pod)
            .await
            .unwrap_or_else(|e| panic!("reading pod {pod}: {}", error_text(&e)));
        let uid = before.metadata.uid.clone();
        let restarts = postgres_restarts(&before);
        let instance = self.postgres_instance(pod).await.ok();
        if self.config.containerd_state.is_some() {
            self.signal_postgres(pod, Signal::SIGKILL)
                .await
                .unwrap_or_else(|why| panic!("kill -9 of postgres in {pod}: {why}"));
            eprintln!("ordinal-e2e: crash {pod}: kill -9 of the postmaster from the node");
        } else {
            self.crash_postgres_from_inside(pod).await;
        }
        self.wait_until(
            &format!("postgres in {pod} is down or started again (in place, in a new container, or in a new pod)"),
            async || match self.pods().get_opt(pod).await {
                Ok(None) => Ok(()),
                Ok(Some(p)) if p.metadata.uid != uid => Ok(()),
                Ok(Some(p)) if p.metadata.deletion_timestamp.is_some() => Ok(()),
                Ok(Some(p)) if postgres_restarts(&p) > restarts || postgres_not_running(&p) => {
                    Ok(())
                }
                Ok(Some(_)) => match self.postgres_instance(pod).await {
                    Ok(now) if instance.as_ref().is_some_and(|i| i.1.is_some() && *i != now) => {
                        Ok(())
                    }
                    now => Err(format!(
                        "{pod}: the same postgres still runs ({instance:?} before, {now:?} now)"
                    )),
                },
                Err(e) => Err(error_text(&e)),
            },
        )
        .await;
    }

    async fn crash_postgres_from_inside(&self, pod: &str) {
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
    }

    /// Sends `signal` to the postmaster of `pod` (the first process of its
    /// `postgres` container) from the node: `kill -9` for a crash,
    /// `kill -STOP` for a hung server, `kill -CONT` to release it. Needs
    /// the node's containerd state directory (`ORDINAL_E2E_CONTAINERD_STATE`).
    pub async fn signal_postgres(&self, pod: &str, signal: Signal) -> Result<(), String> {
        let state = self.config.containerd_state.as_ref().ok_or_else(|| {
            "ORDINAL_E2E_CONTAINERD_STATE is not set: the suite cannot reach the node's processes".to_owned()
        })?;
        let p = self.pods().get(pod).await.map_err(|e| error_text(&e))?;
        let id = postgres_status(&p)
            .and_then(|c| c.container_id.as_deref())
            .and_then(|id| id.strip_prefix("containerd://"))
            .ok_or_else(|| format!("{pod}: the postgres container has no containerd ID"))?;
        let file = state
            .join("io.containerd.runtime.v2.task/k8s.io")
            .join(id)
            .join("init.pid");
        let pid: i32 = std::fs::read_to_string(&file)
            .map_err(|e| format!("{}: {e}", file.display()))?
            .trim()
            .parse()
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let pid = postmaster_of(pid).ok_or_else(|| {
            format!("{pod}: no postmaster in the postgres container (first process {pid})")
        })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| format!("kill -{signal} {pid} ({pod}): {e}"))
    }
}

/// The postmaster of a container whose first process is `init`: `init`
/// itself when it is postgres (Ordinal's pods), else its child named
/// postgres (a supervisor's, such as Patroni's).
fn postmaster_of(init: i32) -> Option<i32> {
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    if comm(init).is_some_and(|c| c.trim() == "postgres") {
        return Some(init);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            // `pid (comm) state ppid …`: comm may hold spaces, so after ')'.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            ppid == Some(init) && comm(*pid).is_some_and(|c| c.trim() == "postgres")
        })
}
