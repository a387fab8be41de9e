//! Connections to PostgreSQL: the local server over its Unix socket, the
//! primary over TCP. Short timeouts: a probe or a decision never hangs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls, Statement};

use crate::state::Endpoint;

pub const SUPERUSER: &str = ordinal_crds::names::SUPERUSER_NAME;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot set up TLS to {target} with the CA {ca}: {reason}")]
    Tls {
        target: String,
        ca: std::path::PathBuf,
        reason: String,
    },
    #[error("query on {target} failed: {query}")]
    Query {
        target: String,
        query: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A connection, a name for it in errors, and the statements prepared on
/// it: a session kept for the probes (`health.rs`) runs each query once a
/// second or two, planned once.
pub struct Conn {
    pub client: Client,
    pub target: String,
    prepared: Mutex<HashMap<&'static str, Statement>>,
}

async fn connect(config: Config, target: String, ca: Option<&Path>) -> Result<Conn, SqlError> {
    let connected = match ca {
        None => config.connect(NoTls).await.map(|(client, connection)| {
            spawn_connection(connection);
            client
        }),
        Some(ca) => {
            let tls = std::fs::read(ca)
                .map_err(|e| e.to_string())
                .and_then(|pem| ordinal_crds::pgtls::connector(&pem).map_err(|e| e.to_string()))
                .map_err(|reason| SqlError::Tls {
                    target: target.clone(),
                    ca: ca.to_owned(),
                    reason,
                })?;
            let mut config = config;
            config.ssl_mode(SslMode::Require);
            config.connect(tls).await.map(|(client, connection)| {
                spawn_connection(connection);
                client
            })
        }
    };
    let client = connected.map_err(|source| SqlError::Connect {
        target: target.clone(),
        source,
    })?;
    Ok(Conn {
        client,
        target,
        prepared: Mutex::default(),
    })
}

fn spawn_connection<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection closed");
        }
    });
}

/// The local server, as the superuser, over the Unix socket (peer auth).
pub async fn local(socket_dir: &Path, port: u16) -> Result<Conn, SqlError> {
    let mut config = Config::new();
    config
        .host_path(socket_dir)
        .port(port)
        .user(SUPERUSER)
        .dbname("postgres")
        .application_name("ordinal-init")
        .connect_timeout(CONNECT_TIMEOUT);
    connect(
        config,
        format!("local server ({})", socket_dir.display()),
        None,
    )
    .await
}

/// A remote server, as `user` with `password`; over TLS verified against
/// `ca` (`verify-full`: the certificate names `endpoint.host`) when given.
pub async fn remote(
    endpoint: &Endpoint,
    ca: Option<&Path>,
    user: &str,
    password: &str,
) -> Result<Conn, SqlError> {
    let mut config = Config::new();
    config.host(&endpoint.host);
    if let Some(addr) = endpoint
        .hostaddr
        .as_deref()
        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
    {
        config.hostaddr(addr);
    }
    config
        .port(endpoint.port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .application_name("ordinal-init")
        .connect_timeout(CONNECT_TIMEOUT);
    connect(config, format!("{}:{}", endpoint.host, endpoint.port), ca).await
}

impl Conn {
    /// `query`, prepared on this connection the first time.
    async fn statement(&self, query: &'static str) -> Result<Statement, SqlError> {
        let known = self
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(query)
            .cloned();
        if let Some(statement) = known {
            return Ok(statement);
        }
        let statement = self
            .client
            .prepare(query)
            .await
            .map_err(|source| self.query_error(query, source))?;
        self.prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(query, statement.clone());
        Ok(statement)
    }

    pub async fn execute(
        &self,
        query: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, SqlError> {
        let statement = self.statement(query).await?;
        self.client
            .execute(&statement, params)
            .await
            .map_err(|source| self.query_error(query, source))
    }

    pub async fn query_one(
        &self,
        query: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, SqlError> {
        let statement = self.statement(query).await?;
        self.client
            .query_one(&statement, params)
            .await
            .map_err(|source| self.query_error(query, source))
    }

    pub async fn query_opt(
        &self,
        query: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, SqlError> {
        let statement = self.statement(query).await?;
        self.client
            .query_opt(&statement, params)
            .await
            .map_err(|source| self.query_error(query, source))
    }

    fn query_error(&self, query: &'static str, source: tokio_postgres::Error) -> SqlError {
        SqlError::Query {
            target: self.target.clone(),
            query,
            source,
        }
    }
}
