//! The waits of [`Harness`]: polling a check until it holds, and until a
//! cluster is Ready.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use ordinal_crds::{PostgresClusterStatus, names};

use super::operator::operator_exited;
use super::{CHECK_TIMEOUT, Harness, PG_PORT, POLL, error_text, pod_ready};

impl Harness {
    /// Polls `check` until it returns Ok (its value is returned), at most the
    /// configured timeout; Err says why not yet and is shown on timeout.
    /// Fails at once when the spawned operator has exited.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        loop {
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(CHECK_TIMEOUT)
                .max(Duration::from_secs(1));
            let last = match tokio::time::timeout(budget, check()).await {
                Ok(Ok(value)) => {
                    eprintln!(
                        "ordinal-e2e [{}] {:>6.1}s  {what}",
                        self.namespace,
                        started.elapsed().as_secs_f64()
                    );
                    return value;
                }
                Ok(Err(why)) => why,
                Err(_) => format!("the check itself took longer than {budget:?}"),
            };
            if self.operator.is_some()
                && let Some(why) = operator_exited()
            {
                panic!("while waiting until {what}: {why}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {}s waiting until {what}; last observation: {last}",
                self.config.timeout.as_secs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until an Event of `reason` is on `kind` `name` (it is published
    /// just after the status that announces it).
    pub async fn wait_event(&self, kind: &str, name: &str, reason: &str) {
        self.wait_until(&format!("a {reason} Event on {kind} {name}"), async || {
            let reasons = self.event_reasons(kind, name).await;
            if reasons.iter().any(|r| r == reason) {
                Ok(())
            } else {
                Err(format!("{reasons:?}"))
            }
        })
        .await;
    }

    /// The reasons of the Events on `kind` `name` in the test's namespace.
    pub async fn event_reasons(&self, kind: &str, name: &str) -> Vec<String> {
        self.events(kind, name)
            .await
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    /// The Events on `kind` `name` in the test's namespace.
    pub async fn events(&self, kind: &str, name: &str) -> Vec<k8s_openapi::api::core::v1::Event> {
        self.api::<k8s_openapi::api::core::v1::Event>()
            .list(&kube::api::ListParams::default().fields(&format!(
                "involvedObject.kind={kind},involvedObject.name={name}"
            )))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// [`Self::wait_until`] for a yes/no condition.
    pub async fn wait_for(&self, what: &str, mut condition: impl AsyncFnMut() -> bool) {
        self.wait_until(what, async || {
            if condition().await {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        })
        .await;
    }

    /// Checks that `condition` stays Ok for `period` (polling), failing at
    /// the first Err: for "nothing else happens" assertions.
    pub async fn hold_for(
        &self,
        what: &str,
        period: Duration,
        mut condition: impl AsyncFnMut() -> Result<(), String>,
    ) {
        let until = Instant::now() + period;
        while Instant::now() < until {
            match tokio::time::timeout(CHECK_TIMEOUT, condition()).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => panic!("expected {what} for {period:?}, but: {why}"),
                Err(_) => panic!("expected {what}: a check took longer than {CHECK_TIMEOUT:?}"),
            }
            tokio::time::sleep(POLL).await;
        }
        eprintln!(
            "ordinal-e2e [{}] held {:>4}s  {what}",
            self.namespace,
            period.as_secs()
        );
    }

    /// Until `n` pods `<cluster>-0..n-1` are Ready and labelled by role (no
    /// others), and the status says so: `ready` "n/n", phase Healthy, the
    /// current generation observed, no promotion under way. In spawn mode it
    /// then checks once that this machine reaches pod IPs.
    pub async fn wait_ready(&self, cluster: &str, n: i32) -> PostgresClusterStatus {
        let status = self
            .wait_until(
                &format!("{cluster}: {n} pods Ready with role labels, status {n}/{n} Healthy"),
                async || self.ready_check(cluster, n).await,
            )
            .await;
        if let Some(primary) = &status.current_primary {
            self.check_pod_network(primary).await;
        }
        status
    }

    async fn ready_check(&self, cluster: &str, n: i32) -> Result<PostgresClusterStatus, String> {
        let pgc = self
            .clusters()
            .get(cluster)
            .await
            .map_err(|e| error_text(&e))?;
        let status = pgc.status.clone().ok_or("no status yet")?;
        if status.observed_generation != pgc.metadata.generation {
            return Err(format!(
                "status observes generation {:?}, the spec is at {:?}",
                status.observed_generation, pgc.metadata.generation
            ));
        }
        let primary = status
            .current_primary
            .clone()
            .ok_or("no currentPrimary in the status")?;
        if let Some(target) = &status.target_primary {
            return Err(format!("a promotion of {target} is under way"));
        }
        let want = format!("{n}/{n}");
        if status.ready.as_deref() != Some(want.as_str())
            || status.ready_replicas != n
            || status.phase != Some(ordinal_crds::Phase::Healthy)
        {
            return Err(format!(
                "status ready {:?} (readyReplicas {}), phase {:?}",
                status.ready, status.ready_replicas, status.phase
            ));
        }
        let pods = self.cluster_pods(cluster).await?;
        for pod in &pods {
            let name = pod.name_any();
            if names::ordinal_of(cluster, &name).is_some_and(|o| o >= n) {
                return Err(format!("{name} still exists"));
            }
        }
        for ordinal in 0..n {
            let name = names::pod(cluster, ordinal);
            let pod = pods
                .iter()
                .find(|p| p.name_any() == name)
                .ok_or_else(|| format!("{name} does not exist"))?;
            if pod.metadata.deletion_timestamp.is_some() {
                return Err(format!("{name} is terminating"));
            }
            if !pod_ready(pod) {
                return Err(format!("{name} is not Ready"));
            }
            let want = if name == primary {
                names::ROLE_PRIMARY
            } else {
                names::ROLE_REPLICA
            };
            let role = pod.labels().get(names::LABEL_ROLE);
            if role.map(String::as_str) != Some(want) {
                return Err(format!("{name} is labelled {role:?}, expected {want}"));
            }
        }
        Ok(status)
    }

    /// Spawn mode: the operator on this machine probes pods at their IPs.
    async fn check_pod_network(&self, pod: &str) {
        if self.operator.is_none() || self.network_checked.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(ip) = self
            .pods()
            .get_opt(pod)
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status?.pod_ip)
        else {
            return;
        };
        let Ok(addr) = ip.parse::<IpAddr>() else {
            return;
        };
        let reachable = matches!(
            tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(SocketAddr::new(addr, PG_PORT))
            )
            .await,
            Ok(Ok(_))
        );
        assert!(
            reachable,
            "this machine cannot reach pod {pod} at {ip}:{PG_PORT}, so the spawned operator cannot probe, \
             promote or keep slots. Run the tests where pod IPs are routable (in the cluster, on a node), \
             add a route (kind, Linux, one node: sudo ip route add <the node's podCIDR> via <the node container's IP>), \
             or deploy the operator (kubectl apply -k deploy/) and set ORDINAL_E2E_OPERATOR=external"
        );
    }
}
