//! A client workload for chaos tests: a writer committing numbered rows
//! through the routed primary (the -rw Service) and recording which commits
//! were acknowledged, and a sampler watching that never two instances
//! accept writes at once.

// A test harness: a failure here is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::watch;

use crate::local::SUPERUSER_PASSWORD;
use crate::seam::LocalSeam;

async fn connect(port: u16) -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres")
        .connect_timeout(Duration::from_millis(500))
        .connect(tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// Acknowledged commits, with the time each was acknowledged.
#[derive(Default)]
pub struct Acks {
    pub ids: Vec<i64>,
    pub at: Vec<Instant>,
    /// The pod that acknowledged each commit.
    pub by: Vec<String>,
    pub errors: u64,
}

impl Acks {
    /// The first acknowledgement after `t` by a pod other than `not_by`.
    pub fn first_after(&self, t: Instant, not_by: &str) -> Option<Instant> {
        self.at
            .iter()
            .zip(&self.by)
            .find(|(a, by)| **a > t && by.as_str() != not_by)
            .map(|(a, _)| *a)
    }
}

/// Writes `INSERT INTO t VALUES (n)` for n = 1, 2, … until stopped, each in
/// its own transaction, through whichever pod is routed as primary.
pub fn writer(
    seam: Arc<LocalSeam>,
    acks: Arc<Mutex<Acks>>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut next: i64 = 1;
        let mut conn: Option<(String, tokio_postgres::Client)> = None;
        while !*stop.borrow() {
            let Some(primary) = seam.routed_primary() else {
                conn = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if conn.as_ref().is_none_or(|(name, _)| *name != primary.name) {
                conn = connect(primary.port)
                    .await
                    .map(|c| (primary.name.clone(), c));
                if conn.is_none() {
                    acks.lock().unwrap().errors += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
            let Some((_, client)) = conn.as_ref() else {
                continue;
            };
            let id = next;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let insert = client.execute("INSERT INTO t (id) VALUES ($1)", &params);
            let outcome = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(5), insert) => r,
                _ = stop.changed() => break,
            };
            match outcome {
                Ok(Ok(_)) => {
                    let mut a = acks.lock().unwrap();
                    a.ids.push(next);
                    a.at.push(Instant::now());
                    a.by.push(primary.name.clone());
                }
                // Not acknowledged: it may or may not have committed.
                _ => {
                    acks.lock().unwrap().errors += 1;
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            next += 1;
        }
    })
}

/// Samples every pod at once, about every 20 ms, and records the largest
/// number of pods that answered `pg_is_in_recovery() = false` in a sample.
pub fn sampler(
    seam: Arc<LocalSeam>,
    max_writable: Arc<Mutex<(usize, Vec<String>)>>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ports: Vec<(String, u16)> =
            seam.pods.iter().map(|p| (p.name.clone(), p.port)).collect();
        let mut clients: Vec<Option<tokio_postgres::Client>> = ports.iter().map(|_| None).collect();
        while !*stop.borrow() {
            for (i, (_, port)) in ports.iter().enumerate() {
                if clients[i].as_ref().is_none_or(|c| c.is_closed()) {
                    clients[i] = connect(*port).await;
                }
            }
            let answers = join_all(clients.iter().map(|c| async move {
                match c {
                    Some(c) => tokio::time::timeout(
                        Duration::from_millis(500),
                        c.query_one("SELECT pg_is_in_recovery()", &[]),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|row| !row.get::<_, bool>(0)),
                    None => None,
                }
            }))
            .await;
            let writable: Vec<String> = answers
                .iter()
                .zip(&ports)
                .filter(|(w, _)| **w == Some(true))
                .map(|(_, (name, _))| name.clone())
                .collect();
            {
                let mut max = max_writable.lock().unwrap();
                if writable.len() > max.0 {
                    *max = (writable.len(), writable);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = stop.changed() => break,
            }
        }
    })
}
