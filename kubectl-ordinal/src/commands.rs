//! The commands: each reads the PostgresCluster, checks that what is asked
//! makes sense now (with a sentence saying why not), writes one annotation
//! the operator acts on, and waits for the outcome when asked to.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use ordinal_crds::{PostgresBackup, PostgresCluster, Role, names};
use serde_json::json;

use crate::error::Error;
use crate::status;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(500);

pub struct Ctx {
    pub client: Client,
    pub namespace: String,
    pub context: Option<String>,
}

impl Ctx {
    fn clusters(&self) -> Api<PostgresCluster> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn cluster(&self, name: &str) -> Result<PostgresCluster, Error> {
        self.clusters()
            .get_opt(name)
            .await
            .map_err(|source| self.api_error("read", name, source))?
            .ok_or_else(|| Error::NoCluster {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
            })
    }

    async fn pods(&self, cluster: &str) -> Result<Vec<Pod>, Error> {
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&format!("{}={cluster}", names::LABEL_CLUSTER)))
            .await
            .map(|l| l.items)
            .map_err(|source| self.api_error("list the pods", cluster, source))
    }

    async fn annotate(&self, cluster: &str, key: &str, value: Option<&str>) -> Result<(), Error> {
        let body = json!({"metadata": {"annotations": {key: value}}});
        self.clusters()
            .patch(cluster, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map(|_| ())
            .map_err(|source| self.api_error("annotate", cluster, source))
    }

    fn api_error(&self, what: &'static str, name: &str, source: kube::Error) -> Error {
        Error::Api {
            what,
            namespace: self.namespace.clone(),
            name: name.to_owned(),
            source: Box::new(source),
        }
    }

    /// Polls `check` until it says Ok, at most `timeout`.
    async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> Result<Result<T, String>, Error>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        loop {
            let last = match check().await? {
                Ok(value) => return Ok(value),
                Err(last) => last,
            };
            if started.elapsed() >= timeout {
                return Err(Error::Timeout {
                    seconds: timeout.as_secs(),
                    what: what.to_owned(),
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

pub async fn status(ctx: &Ctx, cluster: &str) -> Result<std::process::ExitCode, Error> {
    let pgc = ctx.cluster(cluster).await?;
    let pods = ctx.pods(cluster).await?;
    // Backups are optional: a missing CRD or no right to list them is not
    // an error of the status.
    let backups = Api::<PostgresBackup>::namespaced(ctx.client.clone(), &ctx.namespace)
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|b| b.spec.cluster == cluster)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    print!(
        "{}",
        status::render(&pgc, &pods, &backups, Timestamp::now())
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Why `pod` cannot be switched over to now, if so.
pub fn switchover_refusal(pgc: &PostgresCluster, pod: &str) -> Option<String> {
    let name = pgc.name_any();
    let status = pgc.status.clone().unwrap_or_default();
    if let Some(target) = &status.target_primary {
        return Some(format!(
            "{target} is being promoted already: wait for it (kubectl ordinal status {name})"
        ));
    }
    if status.current_primary.as_deref() == Some(pod) {
        return Some(format!("{pod} is the primary of {name} already"));
    }
    let Some(instance) = status.instances.iter().find(|i| i.pod == pod) else {
        let members: Vec<&str> = status.instances.iter().map(|i| i.pod.as_str()).collect();
        return Some(format!(
            "{pod} is not an instance of {name} (instances: {})",
            members.join(", ")
        ));
    };
    if instance.role != Role::Replica || !instance.ready {
        return Some(format!(
            "{pod} is not a ready replica: only a replica that streams can take over without losing writes"
        ));
    }
    None
}

pub async fn switchover(
    ctx: &Ctx,
    cluster: &str,
    pod: &str,
    wait: Option<Duration>,
) -> Result<std::process::ExitCode, Error> {
    let pgc = ctx.cluster(cluster).await?;
    if let Some(why) = switchover_refusal(&pgc, pod) {
        return Err(Error::Refused(why));
    }
    let old = pgc
        .status
        .as_ref()
        .and_then(|s| s.current_primary.clone())
        .unwrap_or_default();
    ctx.annotate(cluster, names::ANNOTATION_SWITCHOVER_TO, Some(pod))
        .await?;
    println!("switchover of {cluster} to {pod} asked (the primary is {old})");
    let Some(timeout) = wait else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let started = Instant::now();
    let status = ctx
        .wait_until(&format!("{pod} is the primary"), timeout, async || {
            let status = ctx.cluster(cluster).await?.status.unwrap_or_default();
            let promoted = status.current_primary.as_deref() == Some(pod)
                && status.target_primary.is_none()
                && status
                    .instances
                    .iter()
                    .any(|i| i.pod == pod && i.role == Role::Primary && i.ready);
            if promoted {
                return Ok(Ok(status));
            }
            let waiting = status
                .condition("FailoverReady")
                .map(|c| format!("; FailoverReady: {}", c.message))
                .unwrap_or_default();
            Ok(Err(format!(
                "primary {:?}, promoting {:?}{waiting}",
                status.current_primary, status.target_primary
            )))
        })
        .await?;
    let timeline = status
        .instances
        .iter()
        .find(|i| i.pod == pod)
        .and_then(|i| i.timeline)
        .map(|t| format!(", timeline {t}"))
        .unwrap_or_default();
    println!(
        "{pod} is the primary{timeline} after {:.1}s; {old} rejoins as a replica",
        started.elapsed().as_secs_f64()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn restart(
    ctx: &Ctx,
    cluster: &str,
    wait: Option<Duration>,
) -> Result<std::process::ExitCode, Error> {
    let pgc = ctx.cluster(cluster).await?;
    if let Some(target) = pgc.status.as_ref().and_then(|s| s.target_primary.clone()) {
        return Err(Error::Refused(format!(
            "{target} is being promoted: restart once it is done"
        )));
    }
    let at = Timestamp::now();
    // Whole seconds: pods' creation times are.
    let at = Timestamp::from_second(at.as_second()).unwrap_or(at);
    let stamp = at.to_string();
    ctx.annotate(cluster, names::ANNOTATION_RESTARTED_AT, Some(&stamp))
        .await?;
    println!(
        "rolling restart of {cluster} asked at {stamp}: each replica, then a switchover to a restarted replica, then the old primary"
    );
    let Some(timeout) = wait else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let started = Instant::now();
    ctx.wait_until(
        "every instance is restarted and ready",
        timeout,
        async || {
            let pgc = ctx.cluster(cluster).await?;
            let pods = ctx.pods(cluster).await?;
            let stale: Vec<String> = pods
                .iter()
                .filter(|p| {
                    p.metadata
                        .creation_timestamp
                        .as_ref()
                        .is_none_or(|t| t.0 < at)
                })
                .map(ResourceExt::name_any)
                .collect();
            let status = pgc.status.unwrap_or_default();
            let healthy = status.phase == Some(ordinal_crds::Phase::Healthy);
            if stale.is_empty() && healthy && pods.len() as i32 >= pgc.spec.replicas {
                Ok(Ok(()))
            } else {
                Ok(Err(format!(
                    "not restarted yet: [{}]; phase {:?}",
                    stale.join(", "),
                    status.phase
                )))
            }
        },
    )
    .await?;
    println!(
        "{cluster} restarted in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// The instance a psql session goes to.
pub fn psql_target(
    pgc: &PostgresCluster,
    replica: bool,
    pod: Option<&str>,
) -> Result<String, Error> {
    let name = pgc.name_any();
    let status = pgc.status.clone().unwrap_or_default();
    if let Some(pod) = pod {
        if pgc.fenced_instances().iter().any(|p| p == pod) {
            return Err(Error::Refused(format!(
                "{pod} is fenced: its postgres is stopped (kubectl ordinal unfence {name} {pod})"
            )));
        }
        return if status.instances.iter().any(|i| i.pod == pod) {
            Ok(pod.to_owned())
        } else {
            Err(Error::Refused(format!(
                "{pod} is not an instance of {name}"
            )))
        };
    }
    if replica {
        let fenced = pgc.fenced_instances();
        return status
            .instances
            .iter()
            .find(|i| i.role == Role::Replica && i.ready && !fenced.contains(&i.pod))
            .map(|i| i.pod.clone())
            .ok_or_else(|| Error::Refused(format!("{name} has no ready replica")));
    }
    status
        .current_primary
        .ok_or_else(|| Error::Refused(format!("{name} has no primary yet")))
}

/// The kubectl command line of a psql session on `pod`.
pub fn psql_command(ctx: &Ctx, pod: &str, tty: bool, args: &[String]) -> Vec<String> {
    let mut command = Vec::new();
    if let Some(context) = &ctx.context {
        command.extend(["--context".to_owned(), context.clone()]);
    }
    command.extend([
        "-n".to_owned(),
        ctx.namespace.clone(),
        "exec".to_owned(),
        if tty { "-it" } else { "-i" }.to_owned(),
        pod.to_owned(),
        "-c".to_owned(),
        "postgres".to_owned(),
        "--".to_owned(),
        "psql".to_owned(),
        "-U".to_owned(),
        names::SUPERUSER_NAME.to_owned(),
    ]);
    command.extend(args.iter().cloned());
    command
}

pub async fn psql(
    ctx: &Ctx,
    cluster: &str,
    replica: bool,
    pod: Option<&str>,
    args: &[String],
) -> Result<std::process::ExitCode, Error> {
    let pgc = ctx.cluster(cluster).await?;
    let target = psql_target(&pgc, replica, pod)?;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let kubectl = std::env::var("ORDINAL_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let status = tokio::process::Command::new(kubectl)
        .args(psql_command(ctx, &target, tty, args))
        .status()
        .await
        .map_err(|source| Error::Kubectl { source })?;
    Ok(std::process::ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(1),
    ))
}

/// The fenced instances once `pod` is fenced (`on`) or unfenced; Err when
/// that makes no sense.
pub fn fenced_after(
    pgc: &PostgresCluster,
    pods: &[Pod],
    pod: &str,
    on: bool,
) -> Result<Vec<String>, Error> {
    let name = pgc.name_any();
    let mut fenced = pgc.fenced_instances();
    let member = pods.iter().any(|p| p.name_any() == pod)
        || pgc
            .status
            .as_ref()
            .is_some_and(|s| s.instances.iter().any(|i| i.pod == pod));
    if on && !member {
        return Err(Error::Refused(format!(
            "{pod} is not an instance of {name}"
        )));
    }
    if on {
        if !fenced.iter().any(|p| p == pod) {
            fenced.push(pod.to_owned());
        }
    } else {
        fenced.retain(|p| p != pod);
    }
    Ok(fenced)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn fence(
    ctx: &Ctx,
    cluster: &str,
    pod: &str,
    on: bool,
    wait: Option<Duration>,
) -> Result<std::process::ExitCode, Error> {
    let pgc = ctx.cluster(cluster).await?;
    let pods = ctx.pods(cluster).await?;
    let before = pgc.fenced_instances();
    let fenced = fenced_after(&pgc, &pods, pod, on)?;
    if fenced != before {
        let value = fenced.join(",");
        ctx.annotate(
            cluster,
            names::ANNOTATION_FENCED,
            (!fenced.is_empty()).then_some(value.as_str()),
        )
        .await?;
    }
    let primary = pgc.status.as_ref().and_then(|s| s.current_primary.clone());
    match (on, fenced == before) {
        (true, true) => println!("{pod} is fenced already"),
        (false, true) => println!("{pod} is not fenced"),
        (true, false) => println!("{pod} fenced: its postgres stops and stays stopped"),
        (false, false) => println!("{pod} unfenced: its postgres starts again"),
    }
    if on && primary.as_deref() == Some(pod) {
        eprintln!(
            "warning: {pod} is the primary of {cluster}: writes stop, and no failover replaces it until `kubectl ordinal unfence {cluster} {pod}`"
        );
    }
    let Some(timeout) = wait else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let started = Instant::now();
    let what = if on {
        format!("{pod}'s postgres is stopped")
    } else {
        format!("{pod} is ready")
    };
    ctx.wait_until(&what, timeout, async || {
        let pods = ctx.pods(cluster).await?;
        let found = pods.iter().find(|p| p.name_any() == pod);
        let (ready, terminating) = found.map_or((false, false), |p| {
            (pod_ready(p), p.metadata.deletion_timestamp.is_some())
        });
        let done = if on {
            !ready && !terminating
        } else {
            ready && !terminating
        };
        if done {
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "{pod}: {}",
                match (found, ready, terminating) {
                    (None, _, _) => "no pod",
                    (_, _, true) => "terminating",
                    (_, true, _) => "ready",
                    _ => "not ready",
                }
            )))
        }
    })
    .await?;
    println!("{what} ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
