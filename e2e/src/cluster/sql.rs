//! SQL access through port-forwards, routing through db-rw, and the SQL
//! checks of [`Harness`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use ordinal_crds::names;

use super::{CONNECT_TIMEOUT, Harness, PG_PORT, WRITES_TABLE, error_text, pod_ready};

impl Harness {
    /// The password of cluster `cluster`'s superuser (`postgres`).
    pub async fn superuser_password(&self, cluster: &str) -> Result<String, String> {
        let pgc = self
            .clusters()
            .get(cluster)
            .await
            .map_err(|e| error_text(&e))?;
        let secret_name = pgc.superuser_secret_name();
        let secret = self
            .api::<Secret>()
            .get(&secret_name)
            .await
            .map_err(|e| format!("Secret {secret_name}: {}", error_text(&e)))?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(names::SECRET_PASSWORD_KEY))
            .ok_or_else(|| format!("Secret {secret_name} has no {}", names::SECRET_PASSWORD_KEY))?;
        String::from_utf8(bytes.0.clone())
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("Secret {secret_name}: {e}"))
    }

    /// One attempt at a SQL session with `pod` of cluster `cluster`.
    pub async fn try_sql(
        &self,
        cluster: &str,
        pod: &str,
    ) -> Result<tokio_postgres::Client, String> {
        let password = self.superuser_password(cluster).await?;
        connect_pod(&self.client, &self.namespace, pod, &password).await
    }

    /// A SQL session with `pod`, retried until it works (or the timeout).
    pub async fn sql(&self, cluster: &str, pod: &str) -> tokio_postgres::Client {
        self.wait_until(&format!("SQL session with {pod}"), async || {
            self.try_sql(cluster, pod).await
        })
        .await
    }

    /// The pods db-rw routes to now: ready endpoints of its EndpointSlices.
    pub async fn rw_pods(&self, cluster: &str) -> Result<Vec<String>, String> {
        routed_pods(&self.client, &self.namespace, &names::rw_service(cluster)).await
    }

    /// The one pod db-rw routes to, and a SQL session with it.
    pub async fn sql_rw(&self, cluster: &str) -> (String, tokio_postgres::Client) {
        let password = self
            .superuser_password(cluster)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.sql_service(&names::rw_service(cluster), &password)
            .await
    }

    /// The one pod Service `service` routes to, and a SQL session with it
    /// as `postgres` with `password` (any PostgreSQL behind a Service: an
    /// Ordinal cluster's db-rw, or a peer's leader Service).
    pub async fn sql_service(
        &self,
        service: &str,
        password: &str,
    ) -> (String, tokio_postgres::Client) {
        self.wait_until(&format!("SQL session through {service}"), async || {
            let routed = routed_pods(&self.client, &self.namespace, service).await?;
            let [pod] = routed.as_slice() else {
                return Err(format!("{service} routes to {routed:?}"));
            };
            let client = connect_pod(&self.client, &self.namespace, pod, password).await?;
            Ok((pod.clone(), client))
        })
        .await
    }

    /// Until `pod` streams from the primary: it is Ready, in recovery, its
    /// WAL receiver streams, and the primary `primary` lists it streaming.
    pub async fn wait_streaming_replica(&self, cluster: &str, primary: &str, pod: &str) {
        self.wait_until(
            &format!("{pod} is a Ready replica streaming from {primary}"),
            async || {
                let p = self
                    .pods()
                    .get_opt(pod)
                    .await
                    .map_err(|e| error_text(&e))?
                    .ok_or_else(|| format!("{pod} does not exist"))?;
                if !pod_ready(&p) || p.metadata.deletion_timestamp.is_some() {
                    return Err(format!("{pod} is not Ready"));
                }
                let replica = self.try_sql(cluster, pod).await?;
                let row = replica
                    .query_one(
                        "SELECT pg_is_in_recovery(), \
                         (SELECT status FROM pg_stat_wal_receiver LIMIT 1)",
                        &[],
                    )
                    .await
                    .map_err(|e| format!("{pod}: {e}"))?;
                let in_recovery: bool = row.get(0);
                let receiver: Option<String> = row.get(1);
                if !in_recovery {
                    return Err(format!("{pod} is not in recovery: it accepts writes"));
                }
                if receiver.as_deref() != Some("streaming") {
                    return Err(format!("{pod}: WAL receiver {receiver:?}"));
                }
                let states = self.replication_states(cluster, primary).await?;
                match states.get(pod).map(String::as_str) {
                    Some("streaming") => Ok(()),
                    other => Err(format!(
                        "{primary}'s pg_stat_replication shows {pod} as {other:?}"
                    )),
                }
            },
        )
        .await;
    }

    /// `application_name → state` of `pg_stat_replication` on `primary`.
    pub async fn replication_states(
        &self,
        cluster: &str,
        primary: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        let client = self.try_sql(cluster, primary).await?;
        let rows = client
            .query(
                "SELECT application_name, coalesce(state, '') FROM pg_stat_replication",
                &[],
            )
            .await
            .map_err(|e| format!("{primary}: {e}"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    /// Physical replication slots on `primary`.
    pub async fn slots(&self, cluster: &str, primary: &str) -> Result<BTreeSet<String>, String> {
        let client = self.try_sql(cluster, primary).await?;
        let rows = client
            .query("SELECT slot_name::text FROM pg_replication_slots", &[])
            .await
            .map_err(|e| format!("{primary}: {e}"))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    /// Until the primary in quorum mode lists its synchronous standbys
    /// (`ANY k (...)`) and at least `k` of them confirm commits.
    pub async fn wait_quorum_active(&self, cluster: &str, primary: &str, k: usize) {
        self.wait_until(
            &format!("{primary} commits with a quorum of {k} synchronous standbys"),
            async || {
                let client = self.try_sql(cluster, primary).await?;
                let names: String = client
                    .query_one("SHOW synchronous_standby_names", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                if !names.starts_with(&format!("ANY {k} ")) {
                    return Err(format!("synchronous_standby_names = {names:?}"));
                }
                let quorum: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum' AND state = 'streaming'",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                if usize::try_from(quorum).unwrap_or(0) < k {
                    return Err(format!(
                        "{names}: only {quorum} quorum standbys stream"
                    ));
                }
                Ok(())
            },
        )
        .await;
    }

    /// The ids of `acked` missing from [`WRITES_TABLE`] on the pod db-rw
    /// routes to, and that pod.
    pub async fn missing_acked_rows(&self, cluster: &str, acked: &[i64]) -> (String, Vec<i64>) {
        let password = self
            .superuser_password(cluster)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.missing_rows_on(&names::rw_service(cluster), &password, acked)
            .await
    }

    /// The ids of `acked` missing from [`WRITES_TABLE`] on the pod
    /// `service` routes to, and that pod.
    pub async fn missing_rows_on(
        &self,
        service: &str,
        password: &str,
        acked: &[i64],
    ) -> (String, Vec<i64>) {
        let (pod, client) = self.sql_service(service, password).await;
        let rows = client
            .query(&format!("SELECT id FROM {WRITES_TABLE}"), &[])
            .await
            .unwrap_or_else(|e| panic!("reading {WRITES_TABLE} on {pod}: {e}"));
        let present: BTreeSet<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
        let missing = acked
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        (pod, missing)
    }

    /// Asserts that every id of `acked` is in [`WRITES_TABLE`] on the pod
    /// db-rw routes to; returns that pod.
    pub async fn assert_acked_rows_present(&self, cluster: &str, acked: &[i64]) -> String {
        let (pod, missing) = self.missing_acked_rows(cluster, acked).await;
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged rows are missing on the primary {pod} (first: {:?})",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(20)]
        );
        eprintln!(
            "ordinal-e2e [{}] all {} acknowledged rows are present on {pod}",
            self.namespace,
            acked.len()
        );
        pod
    }
}

/// A SQL session with `pod` through a port-forward, as `postgres`.
pub async fn connect_pod(
    client: &Client,
    namespace: &str,
    pod: &str,
    password: &str,
) -> Result<tokio_postgres::Client, String> {
    connect_pod_with(client, namespace, pod, password, None).await
}

/// As [`connect_pod`]; with `tls`, over TLS (required) that verifies the
/// server as the name given, with the connector given.
pub async fn connect_pod_with(
    client: &Client,
    namespace: &str,
    pod: &str,
    password: &str,
    tls: Option<(&ordinal_crds::pgtls::MakeRustlsConnect, &str)>,
) -> Result<tokio_postgres::Client, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut forward = tokio::time::timeout(CONNECT_TIMEOUT, pods.portforward(pod, &[PG_PORT]))
        .await
        .map_err(|_| format!("port-forward to {pod}: timed out"))?
        .map_err(|e| format!("port-forward to {pod}: {}", error_text(&e)))?;
    let stream = forward
        .take_stream(PG_PORT)
        .ok_or_else(|| format!("port-forward to {pod}: no stream for port {PG_PORT}"))?;
    let failed = forward.take_error(PG_PORT);
    let mut config = tokio_postgres::Config::new();
    config
        .user(names::SUPERUSER_NAME)
        .password(password)
        .dbname("postgres")
        .application_name("ordinal-e2e");
    let connecting = tokio::time::timeout(CONNECT_TIMEOUT, async move {
        match tls {
            None => {
                let (session, connection) = config
                    .connect_raw(stream, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| pg_error(&e))?;
                let driven: Driven = Box::pin(async move {
                    let _ = connection.await;
                });
                Ok::<_, String>((session, driven))
            }
            Some((connector, server_name)) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                connect_tls(&config, stream, connector, server_name).await
            }
        }
    });
    let forward_failed = async move {
        match failed {
            Some(failed) => failed
                .await
                .unwrap_or_else(|| "the port-forward closed".to_owned()),
            None => std::future::pending().await,
        }
    };
    let (session, connection) = tokio::select! {
        connected = connecting => match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(format!("{pod}: {e}")),
            Err(_) => return Err(format!("{pod}: connecting timed out")),
        },
        why = forward_failed => return Err(format!("port-forward to {pod}: {why}")),
    };
    tokio::spawn(async move {
        connection.await;
        // The forwarder's task ends with the websocket; keep it until then.
        drop(forward);
    });
    Ok(session)
}

/// What PostgreSQL said, not only "db error".
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// A session's connection to drive (boxed: with and without TLS its type
/// differs).
type Driven = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A session over `stream` with TLS, verified by `connector` as `server_name`.
async fn connect_tls<S>(
    config: &tokio_postgres::Config,
    stream: S,
    connector: &ordinal_crds::pgtls::MakeRustlsConnect,
    server_name: &str,
) -> Result<(tokio_postgres::Client, Driven), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_postgres::tls::MakeTlsConnect;
    let tls = <ordinal_crds::pgtls::MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(
        &mut connector.clone(),
        server_name,
    )
    .map_err(|e| format!("TLS: {e}"))?;
    let (session, connection) = config
        .connect_raw(stream, tls)
        .await
        .map_err(|e| pg_error(&e))?;
    let driven: Driven = Box::pin(async move {
        let _ = connection.await;
    });
    Ok((session, driven))
}

/// The pods Service `service` routes to now: the ready endpoints of its
/// EndpointSlices (what kube-proxy programs), deduplicated and sorted.
pub async fn routed_pods(
    client: &Client,
    namespace: &str,
    service: &str,
) -> Result<Vec<String>, String> {
    let routed = routed_endpoints(client, namespace, service).await?;
    Ok(routed.into_keys().collect())
}

/// As [`routed_pods`], with each pod's address in the EndpointSlices.
pub async fn routed_endpoints(
    client: &Client,
    namespace: &str,
    service: &str,
) -> Result<BTreeMap<String, Option<String>>, String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(|e| error_text(&e))?;
    Ok(list
        .items
        .iter()
        .flat_map(|slice| slice.endpoints.iter())
        .filter(|ep| {
            let c = ep.conditions.as_ref();
            c.and_then(|c| c.ready) != Some(false) && c.and_then(|c| c.terminating) != Some(true)
        })
        .filter_map(|ep| {
            let target = ep.target_ref.as_ref()?;
            let name = (target.kind.as_deref() == Some("Pod"))
                .then(|| target.name.clone())
                .flatten()?;
            Some((name, ep.addresses.first().cloned()))
        })
        .collect())
}
