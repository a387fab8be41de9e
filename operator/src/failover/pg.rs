//! The PostgreSQL side of the failover loop, shared by every seam: probe an
//! instance, keep the primary's slots and synchronous standbys, promote,
//! re-point replicas. Short timeouts everywhere: one dead instance never
//! slows the loop down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use ordinal_crds::names;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::seam::{ClientTls, Credentials, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A new session (not a probe's) is set up within this long or not at all.
const SESSION_WITHIN: Duration = Duration::from_secs(2);
const STATEMENT_TIMEOUT_MS: u32 = 2000;
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// From TCP connection to an authenticated session.
const STARTUP_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to {target}: {}", detail(source))]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what} on {target} failed: {}", detail(source))]
    Query {
        target: String,
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{target} did not answer within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("pg_promote on {target} did not finish promoting")]
    NotPromoted { target: String },
}

/// The server's message when there is one ("db error" says nothing).
fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Why a probe got no answer: the difference between a server that is
/// gone, one that hangs, and a network that does not reach it is what
/// tells a lost primary from the operator's own trouble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeFailure {
    /// The TCP connection was refused: nothing listens at the address.
    Refused,
    /// No TCP connection (timed out, no route): the network does not reach it.
    Unreachable,
    /// TCP connected, but the server did not answer in time: the host is
    /// there and PostgreSQL hangs (a stopped postmaster, a stuck server).
    NoAnswer,
    /// It answered with an error (starting up, shutting down, auth…).
    Error,
}

/// A failed probe: how, and what was said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeError {
    pub failure: ProbeFailure,
    pub message: String,
}

impl ProbeError {
    pub fn new(failure: ProbeFailure, message: impl Into<String>) -> Self {
        Self {
            failure,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A standby as the primary sees it (`pg_stat_replication`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbyReport {
    pub name: String,
    pub state: String,
    pub flush_lsn: Option<u64>,
}

/// What one probe saw.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct InstanceProbe {
    pub in_recovery: bool,
    /// Primary: current WAL position. Replica: None.
    pub current_lsn: Option<u64>,
    /// Replica: WAL received (flushed) and replayed.
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub timeline: Option<i64>,
    /// Replica: WAL receiver status ("streaming", …), None when not running.
    pub receiver: Option<String>,
    /// Replica: seconds since the last replayed transaction when it has
    /// not replayed all it received, else 0.
    pub replay_delay_seconds: Option<f64>,
    /// Primary: `synchronous_standby_names` as in effect.
    pub synchronous_standby_names: String,
    /// Replica: the `host:port` of its `primary_conninfo` ("" when it
    /// follows nobody: detached).
    pub upstream: Option<String>,
    /// Replica: the `hostaddr` of its `primary_conninfo`, when it names one.
    pub upstream_addr: Option<String>,
    /// Replica: the `sslmode` of its `primary_conninfo` (`prefer`, libpq's
    /// default, when it names none; None when it follows nobody).
    pub upstream_sslmode: Option<String>,
    /// Whether the server offers TLS (`ssl = on`).
    pub ssl: bool,
    /// Replica: seconds since its WAL receiver last heard from the primary.
    pub last_message_age: Option<f64>,
    /// Primary: its standbys.
    pub standbys: Vec<StandbyReport>,
    /// Primary: its physical replication slots, and whether each is in
    /// use (the housekeeping needs no query of its own when nothing is to
    /// change).
    pub slots: Option<Vec<(String, bool)>>,
    /// Primary with WAL archiving on: its archiver.
    pub archiver: Option<Archiver>,
}

/// A primary's WAL archiver, as `pg_stat_archiver` and its
/// `archive_status` directory show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Archiver {
    /// Failed attempts since the server's statistics began.
    pub failed: i64,
    pub last_archived_wal: Option<String>,
    /// Unix seconds.
    pub last_archived_at: Option<i64>,
    pub last_failed_wal: Option<String>,
    /// How long the oldest segment waiting to be archived has waited (0:
    /// none waits).
    pub lag_seconds: f64,
    /// What `ordinal-init wal-push` said when it last failed (the store's
    /// answer), while a failure is recorded.
    pub last_error: Option<String>,
}

impl InstanceProbe {
    /// The furthest WAL position this instance holds.
    pub fn wal_position(&self) -> Option<u64> {
        self.current_lsn.or(self.receive_lsn.max(self.replay_lsn))
    }

    pub fn streaming(&self) -> bool {
        self.receiver.as_deref() == Some("streaming")
    }

    /// Whether this replica streams from `primary` and heard from it lately:
    /// a WAL receiver asks for a reply after half of wal_receiver_timeout
    /// (5 s), so a live primary is heard from every few seconds.
    pub fn streams_from(&self, primary: &Endpoint) -> bool {
        self.in_recovery
            && self.streaming()
            && self.follows(primary)
            && self
                .last_message_age
                .is_none_or(|age| age < STALE_UPSTREAM_SECONDS)
    }
}

impl InstanceProbe {
    /// Whether this replica verifies its primary's certificate
    /// (`sslmode=verify-full`).
    pub fn verifies_upstream(&self) -> bool {
        self.upstream_sslmode.as_deref() == Some("verify-full")
    }

    /// Whether this replica's primary_conninfo points at `primary`.
    /// When both name an address, it must be the same: a standby pointed
    /// at a pod recreated since (a new address) follows nobody.
    pub fn follows(&self, primary: &Endpoint) -> bool {
        self.upstream.as_deref() == Some(primary.address().as_str())
            && match (&self.upstream_addr, &primary.hostaddr) {
                (Some(theirs), Some(now)) => theirs == now,
                _ => true,
            }
    }
}

/// A replica that heard nothing from its primary for this long has lost it.
pub const STALE_UPSTREAM_SECONDS: f64 = 4.0;

/// `0/3000148` → 50331976.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Every call to an instance is bounded: one that hangs never stalls the
/// loop (and with it the failover of the cluster).
async fn bounded<T>(
    endpoint: &Endpoint,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, PgError>>,
) -> Result<T, PgError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(PgError::Timeout {
                target: format!("{}:{}", endpoint.host, endpoint.port),
                timeout,
            })
        })
}

fn config(endpoint: &Endpoint, password: &str) -> Config {
    let mut config = Config::new();
    match (&endpoint.tls_name, endpoint.host.parse::<IpAddr>()) {
        // Dial the address, verify the name: libpq's host and hostaddr.
        (Some(name), Ok(addr)) => config.host(name).hostaddr(addr),
        _ => config.host(&endpoint.host),
    };
    config
        .port(endpoint.port)
        .user(names::SUPERUSER_NAME)
        .password(password)
        .dbname("postgres")
        .application_name("ordinal-operator")
        .connect_timeout(CONNECT_TIMEOUT)
        // A peer that vanishes mid-query (its node died) fails the call in
        // seconds, not after the kernel's retransmission timeout.
        .tcp_user_timeout(Duration::from_secs(5))
        .keepalives_idle(Duration::from_secs(5))
        .options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
    config
}

fn ssl_mode(tls: &ClientTls) -> SslMode {
    if tls.required {
        SslMode::Require
    } else {
        SslMode::Prefer
    }
}

/// A new session, given [`SESSION_WITHIN`] for the whole of it — TCP, the
/// startup message and authentication. (The connect timeout of the
/// configuration covers TCP alone: a postmaster that hangs after the
/// kernel took the connection would hold the caller for as long as the
/// call's own bound, and the loop's next look with it.)
async fn connect(endpoint: &Endpoint, credentials: &Credentials) -> Result<Client, PgError> {
    let target = format!("{}:{}", endpoint.host, endpoint.port);
    let mut config = config(endpoint, &credentials.superuser_password);
    let connected = match &credentials.tls {
        Some(tls) => {
            config.ssl_mode(ssl_mode(tls));
            tokio::time::timeout(SESSION_WITHIN, async {
                let (client, connection) = config.connect(tls.connect.clone()).await?;
                tokio::spawn(connection);
                Ok(client)
            })
            .await
        }
        None => {
            tokio::time::timeout(SESSION_WITHIN, async {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(connection);
                Ok(client)
            })
            .await
        }
    };
    match connected {
        Ok(connected) => connected.map_err(|source| PgError::Connect { target, source }),
        Err(_) => Err(PgError::Timeout {
            target,
            timeout: SESSION_WITHIN,
        }),
    }
}

/// A TCP connection to an instance, with the failure classified.
async fn tcp_classified(endpoint: &Endpoint) -> Result<tokio::net::TcpStream, ProbeError> {
    let target = endpoint.address();
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
    )
    .await;
    match tcp {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(ProbeError::new(
            ProbeFailure::Refused,
            format!("{target}: connection refused"),
        )),
        Ok(Err(e)) => Err(ProbeError::new(
            ProbeFailure::Unreachable,
            format!("{target}: {e}"),
        )),
        Err(_) => Err(ProbeError::new(
            ProbeFailure::Unreachable,
            format!("{target}: no TCP connection within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

fn no_answer(target: &str) -> ProbeError {
    ProbeError::new(
        ProbeFailure::NoAnswer,
        format!("{target}: connected, but PostgreSQL did not answer within {STARTUP_TIMEOUT:?}"),
    )
}

/// A session for a probe, with the failure classified: TCP first (refused,
/// unreachable), then PostgreSQL's startup (no answer, error).
async fn connect_classified(
    endpoint: &Endpoint,
    credentials: &Credentials,
) -> Result<Client, ProbeError> {
    let target = endpoint.address();
    let stream = tcp_classified(endpoint).await?;
    let mut config = config(endpoint, &credentials.superuser_password);
    let startup = match &credentials.tls {
        Some(tls) => {
            config.ssl_mode(ssl_mode(tls));
            let tls = MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(
                &mut tls.connect.clone(),
                endpoint.server_name(),
            )
            .map_err(|e| ProbeError::new(ProbeFailure::Error, format!("{target}: TLS: {e}")))?;
            tokio::time::timeout(STARTUP_TIMEOUT, async {
                let (client, connection) = config.connect_raw(stream, tls).await?;
                tokio::spawn(connection);
                Ok::<_, tokio_postgres::Error>(client)
            })
            .await
        }
        None => {
            tokio::time::timeout(STARTUP_TIMEOUT, async {
                let (client, connection) = config.connect_raw(stream, NoTls).await?;
                tokio::spawn(connection);
                Ok(client)
            })
            .await
        }
    };
    match startup {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(source)) => Err(ProbeError::new(
            ProbeFailure::Error,
            format!("{target}: {}", detail(&source)),
        )),
        Err(_) => Err(no_answer(&target)),
    }
}

/// The startup message of the protocol (3.0) for the superuser on
/// database postgres.
fn startup_message() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608_i32.to_be_bytes());
    for (key, value) in [
        ("user", names::SUPERUSER_NAME),
        ("database", "postgres"),
        ("application_name", "ordinal-operator-ping"),
    ] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    message
}

/// Whether the postmaster takes new connections: it forks a backend for
/// a startup message, which asks for authentication (or refuses). A
/// stopped or stuck postmaster leaves the message unanswered, while the
/// sessions it forked before may still serve queries.
pub async fn ping_postmaster(endpoint: &Endpoint) -> Result<(), ProbeError> {
    let target = endpoint.address();
    let mut stream = tcp_classified(endpoint).await?;
    match tokio::time::timeout(STARTUP_TIMEOUT, startup_exchange(&mut stream)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProbeError::new(
            ProbeFailure::Error,
            format!("{target}: the server closed the connection before answering"),
        )),
        Ok(Err(e)) => Err(ProbeError::new(
            ProbeFailure::Error,
            format!("{target}: {e}"),
        )),
        Err(_) => Err(no_answer(&target)),
    }
}

/// What a postmaster's backend answers to a startup message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartupAnswer {
    /// It asks for authentication, or refuses for another reason.
    Answered,
    /// "the database system is shutting down": a postmaster in that state
    /// accepts no connection again and exits once it has stopped.
    ShuttingDown,
}

/// Sends a startup message on `stream` and reads the answer whole, then
/// closes the connection before authenticating: PostgreSQL logs nothing
/// for a client that leaves at that point (psql does the same before it
/// prompts for a password), and no password is hashed on either side.
/// (Closed with unread bytes, the socket would be reset, and the server
/// log "could not receive data from client" at every look.)
pub async fn startup_exchange(
    stream: &mut tokio::net::TcpStream,
) -> std::io::Result<StartupAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&startup_message()).await?;
    // One message: its type, its length (itself included), its body.
    let mut header = [0_u8; 5];
    stream.read_exact(&mut header).await?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let mut body = vec![0_u8; (length.saturating_sub(4) as usize).min(MAX_ANSWER)];
    stream.read_exact(&mut body).await?;
    stream.shutdown().await?;
    Ok(if header[0] == b'E' && is_shutting_down(&body) {
        StartupAnswer::ShuttingDown
    } else {
        StartupAnswer::Answered
    })
}

/// The longest answer to a startup message read whole: an authentication
/// request is a few dozen bytes, an error a few hundred.
const MAX_ANSWER: usize = 8192;

/// Whether an ErrorResponse's fields say "the database system is shutting
/// down" (SQLSTATE 57P03, which is also "starting up" and "not yet
/// accepting connections": the message tells them apart; a server whose
/// messages are translated is simply not recognized).
fn is_shutting_down(fields: &[u8]) -> bool {
    let mut code = None;
    let mut message = None;
    for field in fields.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', value)) => code = Some(value),
            Some((b'M', value)) => message = Some(value),
            _ => {}
        }
    }
    code == Some(b"57P03".as_slice())
        && message.is_some_and(|m| m.windows(13).any(|w| w == b"shutting down"))
}

/// Probe sessions kept open between looks, by address: a look costs each
/// instance one query, not a connection (a fork and a password hash).
#[derive(Default)]
pub struct Sessions(std::sync::Mutex<HashMap<String, Session>>);

/// A kept session, and the probe's statement prepared on it: a look is one
/// round trip, and the server plans the probe once per session, not once
/// a second.
pub struct Session {
    client: Client,
    probe: Option<Statement>,
}

impl Session {
    fn new(client: Client) -> Self {
        Self {
            client,
            probe: None,
        }
    }
}

impl Sessions {
    fn take(&self, key: &str) -> Option<Session> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .filter(|s| !s.client.is_closed())
    }

    fn keep(&self, key: String, session: Session) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, session);
    }

    /// Closes the sessions to addresses not in `keep`.
    pub fn retain(&self, keep: &[String]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| keep.contains(k));
    }
}

fn query_err(
    endpoint: &Endpoint,
    what: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    let target = format!("{}:{}", endpoint.host, endpoint.port);
    move |source| PgError::Query {
        target,
        what,
        source,
    }
}

const PROBE_SQL: &str = "\
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint,
       pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,
       CASE WHEN pg_is_in_recovery()
            THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver)::bigint,
                          (SELECT timeline_id FROM pg_control_checkpoint())::bigint)
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,
       (SELECT status FROM pg_stat_wal_receiver),
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8
            ELSE COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 0) END,
       current_setting('synchronous_standby_names'),
       CASE WHEN pg_is_in_recovery() THEN current_setting('primary_conninfo') END,
       (SELECT extract(epoch FROM now() - last_msg_receipt_time)::float8 FROM pg_stat_wal_receiver),
       CASE WHEN NOT pg_is_in_recovery() THEN
            (SELECT string_agg(application_name || ' ' || state || ' ' ||
                               COALESCE(pg_wal_lsn_diff(flush_lsn, '0/0')::bigint::text, '-'), ',')
               FROM pg_stat_replication) END,
       CASE WHEN NOT pg_is_in_recovery() THEN
            (SELECT COALESCE(string_agg(slot_name || ' ' || active, ','), '')
               FROM pg_replication_slots WHERE slot_type = 'physical') END,
       CASE WHEN NOT pg_is_in_recovery() AND current_setting('archive_mode') <> 'off' THEN
            (SELECT failed_count FROM pg_stat_archiver) END,
       CASE WHEN NOT pg_is_in_recovery() AND current_setting('archive_mode') <> 'off' THEN
            (SELECT last_archived_wal || ' ' || extract(epoch FROM last_archived_time)::bigint
               FROM pg_stat_archiver) END,
       CASE WHEN NOT pg_is_in_recovery() AND current_setting('archive_mode') <> 'off' THEN
            (SELECT last_failed_wal FROM pg_stat_archiver) END,
       CASE WHEN NOT pg_is_in_recovery() AND current_setting('archive_mode') <> 'off' THEN
            COALESCE((SELECT extract(epoch FROM now() - min(modification))::float8
                        FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), 0) END,
       CASE WHEN NOT pg_is_in_recovery() AND current_setting('archive_mode') <> 'off'
                 AND (SELECT failed_count > 0 FROM pg_stat_archiver) THEN
            pg_read_file(current_setting('data_directory') || '/../ordinal-archive-error',
                         0, 1000, true) END,
       current_setting('ssl') = 'on'";

/// The `host:port` a libpq conninfo string points at (port 5432 when it
/// names none), "" when it names no host.
pub fn conninfo_address(conninfo: &str) -> String {
    let value = |key: &str| conninfo_value(conninfo, key);
    match value("host").filter(|h| !h.is_empty()) {
        Some(host) => format!(
            "{host}:{}",
            value("port").unwrap_or_else(|| "5432".to_owned())
        ),
        None => String::new(),
    }
}

/// The value of `key` in a libpq conninfo string of the shape Ordinal
/// writes (single-quoted values hold no quote: names and addresses).
pub fn conninfo_value(conninfo: &str, key: &str) -> Option<String> {
    let start = conninfo
        .match_indices(&format!("{key}="))
        .find(|(i, _)| *i == 0 || conninfo.as_bytes()[i - 1] == b' ')?
        .0;
    let rest = &conninfo[start + key.len() + 1..];
    Some(match rest.strip_prefix('\'') {
        Some(quoted) => quoted.split('\'').next().unwrap_or_default().to_owned(),
        None => rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
    })
}

fn parse_standbys(list: Option<String>) -> Vec<StandbyReport> {
    list.unwrap_or_default()
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.split(' ');
            let name = parts.next()?.to_owned();
            let state = parts.next()?.to_owned();
            let flush_lsn = parts
                .next()
                .and_then(|l| l.parse::<i64>().ok())
                .map(|l| l.max(0) as u64);
            (!name.is_empty()).then_some(StandbyReport {
                name,
                state,
                flush_lsn,
            })
        })
        .collect()
}

/// Probes one instance: role, WAL positions, timeline, WAL receiver, whom
/// it follows, its standbys.
pub async fn probe(
    endpoint: &Endpoint,
    credentials: &Credentials,
) -> Result<InstanceProbe, ProbeError> {
    probe_kept(&Sessions::default(), endpoint, credentials, false).await
}

/// [`probe`] on the session kept for `endpoint` in `sessions` (opened,
/// and kept, when there is none). `postmaster`: also check that the
/// postmaster takes new connections ([`ping_postmaster`]), which a kept
/// session does not show — the primary's clients need it.
pub async fn probe_kept(
    sessions: &Sessions,
    endpoint: &Endpoint,
    credentials: &Credentials,
    postmaster: bool,
) -> Result<InstanceProbe, ProbeError> {
    let target = endpoint.address();
    let run = async {
        let kept = sessions.take(&target);
        if kept.is_some() && postmaster {
            ping_postmaster(endpoint).await?;
        }
        if let Some(mut session) = kept
            && let Ok(probe) = query_probe(&mut session, &target).await
        {
            sessions.keep(target.clone(), session);
            return Ok(probe);
        }
        // No session, or the kept one failed: a fresh one says why.
        let client = connect_classified(endpoint, credentials).await?;
        let mut session = Session::new(client);
        let probe = query_probe(&mut session, &target).await?;
        sessions.keep(target.clone(), session);
        Ok(probe)
    };
    tokio::time::timeout(PROBE_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| {
            Err(ProbeError::new(
                ProbeFailure::NoAnswer,
                format!("{target}: the probe did not finish within {PROBE_TIMEOUT:?}"),
            ))
        })
}

async fn query_probe(session: &mut Session, target: &str) -> Result<InstanceProbe, ProbeError> {
    let failed = |e: tokio_postgres::Error| {
        ProbeError::new(
            ProbeFailure::Error,
            format!("probe on {target} failed: {}", detail(&e)),
        )
    };
    let statement = match &session.probe {
        Some(statement) => statement.clone(),
        None => {
            let statement = session.client.prepare(PROBE_SQL).await.map_err(failed)?;
            session.probe = Some(statement.clone());
            statement
        }
    };
    let row = session
        .client
        .query_one(&statement, &[])
        .await
        .map_err(failed)?;
    let lsn = |i: usize| row.get::<_, Option<i64>>(i).map(|v| v.max(0) as u64);
    let conninfo: Option<String> = row.get(8);
    Ok(InstanceProbe {
        in_recovery: row.get(0),
        current_lsn: lsn(1),
        receive_lsn: lsn(2),
        replay_lsn: lsn(3),
        timeline: row.get(4),
        receiver: row.get(5),
        replay_delay_seconds: row.get(6),
        synchronous_standby_names: row.get(7),
        upstream: conninfo.as_deref().map(conninfo_address),
        upstream_addr: conninfo
            .as_deref()
            .and_then(|c| conninfo_value(c, "hostaddr")),
        upstream_sslmode: conninfo
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| conninfo_value(c, "sslmode").unwrap_or_else(|| "prefer".to_owned())),
        ssl: row.get(17),
        last_message_age: row.get(9),
        standbys: parse_standbys(row.get(10)),
        slots: row
            .get::<_, Option<String>>(11)
            .map(|list| parse_slots(&list)),
        archiver: row.get::<_, Option<i64>>(12).map(|failed| {
            let last: Option<String> = row.get(13);
            let (wal, at) = last
                .as_deref()
                .and_then(|l| l.split_once(' '))
                .map_or((None, None), |(wal, at)| {
                    (Some(wal.to_owned()), at.parse::<i64>().ok())
                });
            Archiver {
                failed,
                last_archived_wal: wal,
                last_archived_at: at,
                last_failed_wal: row.get(14),
                lag_seconds: row.get::<_, Option<f64>>(15).unwrap_or(0.0).max(0.0),
                last_error: row
                    .get::<_, Option<String>>(16)
                    .map(|e| e.trim().to_owned())
                    .filter(|e| !e.is_empty()),
            }
        }),
    })
}

/// `name active,…` (`active` as `true`/`false`) into pairs.
fn parse_slots(list: &str) -> Vec<(String, bool)> {
    list.split(',')
        .filter_map(|entry| {
            let (name, active) = entry.split_once(' ')?;
            (!name.is_empty()).then(|| (name.to_owned(), active == "true"))
        })
        .collect()
}

/// How long a promotion may take to end recovery.
const PROMOTE_WITHIN: Duration = Duration::from_secs(60);

/// Promotes a standby and waits until it accepts writes. Idempotent: an
/// instance that is no longer in recovery is left as it is.
pub async fn promote(endpoint: &Endpoint, credentials: &Credentials) -> Result<(), PgError> {
    // Waits up to 60 s for the promotion itself.
    bounded(
        endpoint,
        Duration::from_secs(90),
        promote_unbounded(endpoint, credentials),
    )
    .await
}

async fn promote_unbounded(endpoint: &Endpoint, credentials: &Credentials) -> Result<(), PgError> {
    let client = connect(endpoint, credentials).await?;
    if !in_recovery(&client, endpoint).await? {
        return Ok(());
    }
    // pg_promote(wait => true) looks every 100 ms; this session looks
    // every 10, on a connection already made.
    let signalled: bool = client
        .query_one("SELECT pg_promote(wait => false)", &[])
        .await
        .map_err(query_err(endpoint, "pg_promote"))?
        .get(0);
    let started = Instant::now();
    while signalled && started.elapsed() < PROMOTE_WITHIN {
        if !in_recovery(&client, endpoint).await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(PgError::NotPromoted {
        target: format!("{}:{}", endpoint.host, endpoint.port),
    })
}

async fn in_recovery(client: &Client, endpoint: &Endpoint) -> Result<bool, PgError> {
    Ok(client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(query_err(endpoint, "pg_is_in_recovery"))?
        .get(0))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The primary_conninfo of `replica` following the primary at `primary`;
/// the same shape ordinal-init writes.
pub fn primary_conninfo(primary: &Endpoint, replica: &str, credentials: &Credentials) -> String {
    ordinal_crds::conninfo::primary_conninfo(
        &primary.host,
        primary.hostaddr.as_deref(),
        primary.port,
        credentials.replication_ca(),
        &credentials.replication_user,
        &credentials.replication_password,
        replica,
    )
}

/// Points a running standby at a new primary (ALTER SYSTEM + reload: the
/// WAL receiver reconnects with the new setting).
pub async fn repoint(
    replica_at: &Endpoint,
    replica: &str,
    primary: &Endpoint,
    credentials: &Credentials,
) -> Result<(), PgError> {
    bounded(
        replica_at,
        Duration::from_secs(10),
        repoint_unbounded(replica_at, replica, primary, credentials),
    )
    .await
}

async fn repoint_unbounded(
    replica_at: &Endpoint,
    replica: &str,
    primary: &Endpoint,
    credentials: &Credentials,
) -> Result<(), PgError> {
    let conninfo = primary_conninfo(primary, replica, credentials);
    set_primary_conninfo(replica_at, credentials, &conninfo).await
}

/// `ALTER SYSTEM SET primary_conninfo` and a reload: the standby's WAL
/// receiver restarts on the new value (stops on an empty one).
async fn set_primary_conninfo(
    replica_at: &Endpoint,
    credentials: &Credentials,
    conninfo: &str,
) -> Result<(), PgError> {
    let client = connect(replica_at, credentials).await?;
    // Separate statements: ALTER SYSTEM cannot run in the implicit
    // transaction of a multi-statement query.
    client
        .batch_execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = {}",
            quote_literal(conninfo)
        ))
        .await
        .map_err(query_err(replica_at, "ALTER SYSTEM SET primary_conninfo"))?;
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(query_err(replica_at, "pg_reload_conf"))
}

/// The role and function PgBouncer looks passwords up with, on the
/// primary (`verifier`: the role's SCRAM verifier, never the password).
/// Idempotent. The function returns a role's verifier only to
/// [`names::POOLER_AUTH_USER`], who can do nothing else; the pooler never
/// holds the superuser's password.
pub fn pooler_role_sql(verifier: &str) -> String {
    let user = names::POOLER_AUTH_USER;
    let lookup = names::POOLER_LOOKUP;
    let schema = lookup.split('.').next().unwrap_or("ordinal");
    format!(
        "DO $$ BEGIN \
           IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{user}') THEN \
             CREATE ROLE {user} LOGIN; \
           END IF; \
         END $$; \
         ALTER ROLE {user} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
           PASSWORD {verifier}; \
         CREATE SCHEMA IF NOT EXISTS {schema}; \
         REVOKE ALL ON SCHEMA {schema} FROM PUBLIC; \
         GRANT USAGE ON SCHEMA {schema} TO {user}; \
         CREATE OR REPLACE FUNCTION {lookup}(name text) \
           RETURNS TABLE (usename name, passwd text) \
           LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog \
           AS $f$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = name $f$; \
         REVOKE ALL ON FUNCTION {lookup}(text) FROM PUBLIC; \
         GRANT EXECUTE ON FUNCTION {lookup}(text) TO {user};",
        verifier = quote_literal(verifier),
    )
}

/// Sets up [`pooler_role_sql`] on the primary at `primary_at` for
/// `password`.
pub async fn ensure_pooler_role(
    primary_at: &Endpoint,
    credentials: &Credentials,
    password: &str,
) -> Result<(), PgError> {
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    bounded(primary_at, Duration::from_secs(15), async {
        let client = connect(primary_at, credentials).await?;
        client
            .batch_execute(&pooler_role_sql(&verifier))
            .await
            .map_err(query_err(primary_at, "set up the pooler's lookup role"))
    })
    .await
}

/// Drops what [`pooler_role_sql`] made but the schema (which may hold a
/// user's objects): the lookup function, the role's privileges, the role.
pub fn drop_pooler_role_sql() -> String {
    let user = names::POOLER_AUTH_USER;
    let lookup = names::POOLER_LOOKUP;
    format!("DROP FUNCTION IF EXISTS {lookup}(text); DROP OWNED BY {user}; DROP ROLE {user};")
}

/// Drops the lookup role of a pooler that was removed, when the primary at
/// `primary_at` has it: whether it had.
pub async fn drop_pooler_role(
    primary_at: &Endpoint,
    credentials: &Credentials,
) -> Result<bool, PgError> {
    bounded(primary_at, Duration::from_secs(15), async {
        let client = connect(primary_at, credentials).await?;
        let exists = client
            .query_opt(
                "SELECT FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&names::POOLER_AUTH_USER],
            )
            .await
            .map_err(query_err(primary_at, "look up the pooler's lookup role"))?
            .is_some();
        if exists {
            client
                .batch_execute(&drop_pooler_role_sql())
                .await
                .map_err(query_err(primary_at, "drop the pooler's lookup role"))?;
        }
        Ok(exists)
    })
    .await
}

/// Cuts a standby off from its primary: an empty primary_conninfo, and a
/// reload, so that its WAL receiver stops and its position stops moving.
/// It follows a primary again when re-pointed.
pub async fn detach(replica_at: &Endpoint, credentials: &Credentials) -> Result<(), PgError> {
    bounded(
        replica_at,
        Duration::from_secs(5),
        set_primary_conninfo(replica_at, credentials, ""),
    )
    .await
}

/// Sets `synchronous_standby_names` on an instance (a standby keeps it
/// for when it is promoted).
pub async fn set_synchronous_standby_names(
    at: &Endpoint,
    credentials: &Credentials,
    value: &str,
) -> Result<(), PgError> {
    bounded(at, Duration::from_secs(5), async {
        let client = connect(at, credentials).await?;
        alter_synchronous_standby_names(&client, at, value).await
    })
    .await
}

async fn alter_synchronous_standby_names(
    client: &tokio_postgres::Client,
    at: &Endpoint,
    value: &str,
) -> Result<(), PgError> {
    client
        .batch_execute(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = {}",
            quote_literal(value)
        ))
        .await
        .map_err(query_err(at, "ALTER SYSTEM SET synchronous_standby_names"))?;
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(query_err(at, "pg_reload_conf"))
}

/// `ANY k ("db-1", "db-2")`, or '' in async mode or without standbys.
pub fn synchronous_standby_names(quorum: Option<i32>, standbys: &[String]) -> String {
    match quorum {
        Some(k) if !standbys.is_empty() => {
            let list: Vec<String> = standbys
                .iter()
                .map(|s| format!("\"{}\"", s.replace('"', "")))
                .collect();
            format!("ANY {k} ({})", list.join(", "))
        }
        _ => String::new(),
    }
}

/// `k` and the standby names of an `ANY k (…)` setting (None and empty
/// when unset).
pub fn parse_synchronous_standby_names(setting: &str) -> (Option<i32>, Vec<String>) {
    let Some(open) = setting.find('(') else {
        return (None, Vec::new());
    };
    let k = setting[..open]
        .split_whitespace()
        .find_map(|w| w.parse::<i32>().ok());
    let close = setting.rfind(')').unwrap_or(setting.len());
    let names = setting[open + 1..close.max(open + 1)]
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    (k, names)
}

/// Keeps the primary's housekeeping: one physical slot per replica, slots
/// of vanished members dropped, synchronous_standby_names as wanted.
/// Returns what it changed, for the log. Runs on the primary's kept probe
/// session when there is one: a fresh connection each look cost a fork on
/// the primary and a SCRAM password hash here, a quarter of the operator's
/// idle CPU.
pub async fn housekeeping(
    sessions: &Sessions,
    primary_at: &Endpoint,
    credentials: &Credentials,
    seen: &InstanceProbe,
    wanted: &Housekeeping<'_>,
) -> Result<Vec<String>, PgError> {
    bounded(
        primary_at,
        Duration::from_secs(15),
        housekeeping_unbounded(sessions, primary_at, credentials, seen, wanted),
    )
    .await
}

/// What the primary should have: the slots of `keep_slots_for`, none of
/// `drop_slots_of`'s (of `cluster`), and `sync` in effect.
pub struct Housekeeping<'a> {
    pub cluster: &'a str,
    pub keep_slots_for: &'a [String],
    pub drop_slots_of: &'a [String],
    pub sync: &'a str,
}

/// The changes `wanted` needs on a primary whose probe saw `seen`: the
/// synchronous standbys to set, the slots to create and to drop (a slot in
/// use is never dropped). Pure: no query when there is nothing to do.
fn housekeeping_plan(
    seen_sync: &str,
    existing: &[(String, bool)],
    wanted: &Housekeeping<'_>,
) -> (Option<String>, Vec<String>, Vec<String>) {
    let sync = (seen_sync != wanted.sync).then(|| wanted.sync.to_owned());
    let create = wanted
        .keep_slots_for
        .iter()
        .map(|pod| names::slot_name(pod))
        .filter(|slot| !existing.iter().any(|(s, _)| s == slot))
        .collect();
    let prefix = names::slot_name(&format!("{}-", wanted.cluster));
    let drop = wanted
        .drop_slots_of
        .iter()
        .map(|pod| names::slot_name(pod))
        .filter(|slot| {
            slot.starts_with(&prefix) && existing.iter().any(|(s, active)| s == slot && !active)
        })
        .collect();
    (sync, create, drop)
}

async fn housekeeping_unbounded(
    sessions: &Sessions,
    primary_at: &Endpoint,
    credentials: &Credentials,
    seen: &InstanceProbe,
    wanted: &Housekeeping<'_>,
) -> Result<Vec<String>, PgError> {
    let target = primary_at.address();
    let mut session = sessions.take(&target);
    // The probe lists the slots of a primary; an instance still in
    // recovery is asked.
    let asked;
    let existing = match &seen.slots {
        Some(slots) => slots.as_slice(),
        None => {
            let opened = session_or_connect(session.take(), primary_at, credentials).await?;
            asked = physical_slots(&opened.client, primary_at).await?;
            session = Some(opened);
            asked.as_slice()
        }
    };
    let (sync, create, drop) = housekeeping_plan(&seen.synchronous_standby_names, existing, wanted);
    if sync.is_none() && create.is_empty() && drop.is_empty() {
        if let Some(session) = session {
            sessions.keep(target, session);
        }
        return Ok(Vec::new());
    }
    let session = session_or_connect(session, primary_at, credentials).await?;
    let client = &session.client;
    let mut changes = Vec::new();
    // The synchronous standbys first: a slot error must not leave a
    // quorum cluster committing asynchronously.
    if let Some(sync) = sync {
        alter_synchronous_standby_names(client, primary_at, &sync).await?;
        changes.push(format!("synchronous_standby_names = '{sync}'"));
    }
    for slot in create {
        changes.push(create_slot(client, primary_at, &slot).await?);
    }
    for slot in drop {
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(query_err(primary_at, "drop slot"))?;
        changes.push(format!("dropped slot {slot}"));
    }
    sessions.keep(target, session);
    Ok(changes)
}

/// `kept`, or a new session to `at` when there is none.
async fn session_or_connect(
    kept: Option<Session>,
    at: &Endpoint,
    credentials: &Credentials,
) -> Result<Session, PgError> {
    match kept {
        Some(session) => Ok(session),
        None => Ok(Session::new(connect(at, credentials).await?)),
    }
}

/// The physical replication slots of an instance, and whether each is in
/// use.
async fn physical_slots(
    client: &tokio_postgres::Client,
    at: &Endpoint,
) -> Result<Vec<(String, bool)>, PgError> {
    Ok(client
        .query(
            "SELECT slot_name::text, active FROM pg_replication_slots WHERE slot_type = 'physical'",
            &[],
        )
        .await
        .map_err(query_err(at, "list slots"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Creates the slot of each of `pods` that `existing` lacks; says which.
async fn create_missing_slots(
    client: &tokio_postgres::Client,
    at: &Endpoint,
    existing: &[(String, bool)],
    pods: &[String],
) -> Result<Vec<String>, PgError> {
    let mut created = Vec::new();
    for pod in pods {
        let slot = names::slot_name(pod);
        if !existing.iter().any(|(s, _)| *s == slot) {
            created.push(create_slot(client, at, &slot).await?);
        }
    }
    Ok(created)
}

/// Creates physical slot `slot` (reserving WAL at once); says so.
async fn create_slot(
    client: &tokio_postgres::Client,
    at: &Endpoint,
    slot: &str,
) -> Result<String, PgError> {
    client
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&slot],
        )
        .await
        .map_err(query_err(at, "create slot"))?;
    Ok(format!("created slot {slot}"))
}

/// Gives a promotion target, still a standby, the slots of the standbys
/// that will follow it: a standby pointed at it streams through its slot
/// at once (slots survive the promotion), instead of failing on a missing
/// slot and retrying a wal_retrieve_retry_interval later — which, in
/// quorum mode, the new primary's first commits would wait for.
pub async fn ensure_slots(
    at: &Endpoint,
    credentials: &Credentials,
    pods: &[String],
) -> Result<Vec<String>, PgError> {
    bounded(at, Duration::from_secs(5), async {
        let client = connect(at, credentials).await?;
        let existing = physical_slots(&client, at).await?;
        create_missing_slots(&client, at, &existing, pods).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::seam::PoolerRole;

    #[test]
    fn shutting_down_is_told_from_the_other_refusals() {
        let error = |code: &str, message: &str| {
            format!("SFATAL\0VFATAL\0C{code}\0M{message}\0Fpostmaster.c\0\0").into_bytes()
        };
        assert!(is_shutting_down(&error(
            "57P03",
            "the database system is shutting down"
        )));
        assert!(!is_shutting_down(&error(
            "57P03",
            "the database system is starting up"
        )));
        assert!(!is_shutting_down(&error(
            "57P03",
            "the database system is not yet accepting connections"
        )));
        assert!(!is_shutting_down(&error(
            "28P01",
            "password authentication failed: shutting down"
        )));
        assert!(!is_shutting_down(b""));
    }

    #[test]
    fn a_standby_pointed_at_a_recreated_pod_follows_nobody() {
        let primary = |addr: Option<&str>| Endpoint {
            host: "db-1.db-headless.ns.svc".to_owned(),
            port: 5432,
            hostaddr: addr.map(str::to_owned),
            tls_name: None,
        };
        let standby = |conninfo: &str| InstanceProbe {
            in_recovery: true,
            upstream: Some(conninfo_address(conninfo)),
            upstream_addr: conninfo_value(conninfo, "hostaddr"),
            ..InstanceProbe::default()
        };
        let by_address = standby("host='db-1.db-headless.ns.svc' hostaddr='198.18.0.7' port=5432");
        assert!(by_address.follows(&primary(Some("198.18.0.7"))));
        assert!(!by_address.follows(&primary(Some("198.18.0.9"))));
        assert!(by_address.follows(&primary(None)));
        // By name only (written before addresses were known): the name decides.
        let by_name = standby("host='db-1.db-headless.ns.svc' port=5432");
        assert!(by_name.follows(&primary(Some("198.18.0.9"))));
        assert!(!by_name.follows(&Endpoint {
            host: "db-2.db-headless.ns.svc".to_owned(),
            port: 5432,
            hostaddr: None,
            tls_name: None,
        }));
    }

    #[test]
    fn slots_are_read_from_the_probe() {
        assert_eq!(
            parse_slots("db_1 true,db_2 false"),
            [("db_1".to_owned(), true), ("db_2".to_owned(), false)]
        );
        assert!(parse_slots("").is_empty());
    }

    #[test]
    fn housekeeping_plans_only_what_differs() {
        let keep = ["db-1".to_owned(), "db-2".to_owned()];
        let gone = ["db-3".to_owned(), "db-4".to_owned()];
        let wanted = Housekeeping {
            cluster: "db",
            keep_slots_for: &keep,
            drop_slots_of: &gone,
            sync: "ANY 1 (db-1, db-2)",
        };
        let slot = |name: &str, active: bool| (name.to_owned(), active);
        // All as wanted: nothing to do, so no query at all.
        let steady = [slot("db_1", true), slot("db_2", true)];
        assert_eq!(
            housekeeping_plan("ANY 1 (db-1, db-2)", &steady, &wanted),
            (None, vec![], vec![])
        );
        // A missing slot, a gone member's idle slot, one still in use, and
        // another cluster's slot of the same shape (never dropped).
        let drifted = [
            slot("db_1", true),
            slot("db_3", false),
            slot("db_4", true),
            slot("other_3", false),
        ];
        assert_eq!(
            housekeeping_plan("", &drifted, &wanted),
            (
                Some("ANY 1 (db-1, db-2)".to_owned()),
                vec!["db_2".to_owned()],
                vec!["db_3".to_owned()]
            )
        );
    }

    #[test]
    fn lsn_formatting() {
        assert_eq!(format_lsn(0x3000148), "0/3000148");
        assert_eq!(format_lsn((1 << 32) + 0x10), "1/10");
    }

    #[test]
    fn standby_names_round_trip() {
        let names = vec!["db-1".to_owned(), "db-2".to_owned()];
        let setting = synchronous_standby_names(Some(1), &names);
        assert_eq!(setting, "ANY 1 (\"db-1\", \"db-2\")");
        assert_eq!(
            parse_synchronous_standby_names(&setting),
            (Some(1), names.clone())
        );
        assert_eq!(
            parse_synchronous_standby_names("ANY 2 (\"db-0\", \"db-2\")"),
            (Some(2), vec!["db-0".to_owned(), "db-2".to_owned()])
        );
        assert_eq!(synchronous_standby_names(None, &names), "");
        assert_eq!(synchronous_standby_names(Some(1), &[]), "");
        assert_eq!(parse_synchronous_standby_names(""), (None, Vec::new()));
    }

    #[test]
    fn conninfo_addresses() {
        assert_eq!(
            conninfo_address("host='db-1.db-headless.ns.svc' port=5432 application_name='x'"),
            "db-1.db-headless.ns.svc:5432"
        );
        assert_eq!(
            conninfo_address("port=6000 host=10.1.2.3 user=x"),
            "10.1.2.3:6000"
        );
        assert_eq!(conninfo_address("host=h"), "h:5432");
        assert_eq!(conninfo_address("passfile=/x"), "");
        assert_eq!(conninfo_address(""), "");
        assert_eq!(
            conninfo_value("host='h' hostaddr='198.18.0.7' port=5432", "hostaddr").as_deref(),
            Some("198.18.0.7")
        );
        assert_eq!(conninfo_value("host='h' port=5432", "hostaddr"), None);
    }

    #[test]
    fn standby_reports() {
        assert_eq!(
            parse_standbys(Some("db-1 streaming 100,db-2 catchup -".to_owned())),
            vec![
                StandbyReport {
                    name: "db-1".to_owned(),
                    state: "streaming".to_owned(),
                    flush_lsn: Some(100)
                },
                StandbyReport {
                    name: "db-2".to_owned(),
                    state: "catchup".to_owned(),
                    flush_lsn: None
                },
            ]
        );
        assert!(parse_standbys(None).is_empty());
    }

    #[test]
    fn the_pooler_lookup_role_gets_a_verifier_and_one_function() {
        let verifier = postgres_protocol::password::scram_sha_256(b"it's");
        assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
        let sql = pooler_role_sql(&verifier);
        assert!(
            sql.contains(&format!("PASSWORD '{verifier}'")),
            "the verifier, quoted, never the password: {sql}"
        );
        assert!(!sql.contains("it's"));
        assert!(sql.contains("NOSUPERUSER"));
        assert!(sql.contains("SECURITY DEFINER SET search_path = pg_catalog"));
        assert!(sql.contains("REVOKE ALL ON FUNCTION ordinal.pooler_lookup(text) FROM PUBLIC"));
        assert!(
            sql.contains("GRANT EXECUTE ON FUNCTION ordinal.pooler_lookup(text) TO ordinal_pooler")
        );
    }

    #[test]
    fn the_removed_pooler_s_role_goes_with_its_function_and_privileges() {
        assert_eq!(
            drop_pooler_role_sql(),
            "DROP FUNCTION IF EXISTS ordinal.pooler_lookup(text); \
             DROP OWNED BY ordinal_pooler; DROP ROLE ordinal_pooler;"
        );
    }

    #[test]
    fn conninfo_quotes_values() {
        let creds = Credentials {
            superuser_password: "x".to_owned(),
            replication_user: "streaming_replica".to_owned(),
            replication_password: "p'w".to_owned(),
            tls: None,
            pooler: PoolerRole::Absent,
        };
        let endpoint = Endpoint {
            host: "db-1.db-headless.ns.svc".to_owned(),
            port: 5432,
            hostaddr: Some("198.18.0.7".to_owned()),
            tls_name: None,
        };
        assert_eq!(
            primary_conninfo(&endpoint, "db-2", &creds),
            "host='db-1.db-headless.ns.svc' hostaddr='198.18.0.7' port=5432 user='streaming_replica' password='p\\'w' application_name='db-2' connect_timeout=5"
        );
    }
}
