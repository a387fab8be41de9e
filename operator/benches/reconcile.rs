//! Reconcile throughput and memory: runs the real `reconcile` of many
//! PostgresClusters against an in-process API server that answers every
//! request at once, and prints reconciles per second (the operator's own
//! cost, without network or API-server latency) and the resident memory.
//!
//!   cargo bench -p ordinal-operator --bench reconcile
//!
//! ORDINAL_BENCH_CLUSTERS (default 200) and ORDINAL_BENCH_ROUNDS (default 10)
//! tune it. A benchmark that prints figures, not a timed test.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource};
use ordinal_crds::{PostgresCluster, PostgresClusterSpec, PostgresClusterStatus};
use ordinal_operator::Context;
use ordinal_operator::metrics::Metrics;
use ordinal_operator::reconcile::build::BuildConfig;
use serde_json::{Value, json};

fn cluster(i: usize) -> PostgresCluster {
    let spec: PostgresClusterSpec =
        serde_json::from_value(json!({"storage": {"size": "10Gi"}})).unwrap();
    let mut pgc = PostgresCluster::new(&format!("db{i}"), spec);
    pgc.meta_mut().namespace = Some("bench".to_owned());
    pgc.meta_mut().uid = Some(format!("00000000-0000-4000-8000-{i:012}"));
    pgc.meta_mut().generation = Some(1);
    pgc.meta_mut().resource_version = Some("1".to_owned());
    pgc.status = Some(PostgresClusterStatus {
        current_primary: Some(format!("db{i}-0")),
        bootstrapped: true,
        ..PostgresClusterStatus::default()
    });
    pgc
}

/// The API server's answer: lists are empty, reads find metadata, writes
/// echo their body, status writes return the cluster.
async fn answer(request: Request<Body>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let name = path.rsplit('/').next().unwrap_or_default().to_owned();
    let reply = if method == Method::GET
        && (path.ends_with("/pods") || path.ends_with("/persistentvolumeclaims"))
    {
        json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []})
    } else if method == Method::GET {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": name, "namespace": "bench"}})
    } else if path.ends_with("/status") {
        let cluster_name = path.split('/').rev().nth(1).unwrap_or_default();
        let i: usize = cluster_name.trim_start_matches("db").parse().unwrap_or(0);
        let mut obj = serde_json::to_value(cluster(i)).unwrap();
        obj["status"] = body["status"].clone();
        obj
    } else {
        body
    };
    Ok(Response::builder()
        .status(200)
        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
        .unwrap())
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let clusters: usize = std::env::var("ORDINAL_BENCH_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rounds: usize = std::env::var("ORDINAL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let rss_start = resident_kib();
        let service = tower::service_fn(answer);
        let client = Client::new(service, "bench");
        let recorder = Recorder::new(client.clone(), Reporter::from("ordinal-operator"));
        let mut ctx = Context::new(
            client,
            recorder,
            Metrics::new().unwrap(),
            BuildConfig {
                init_image: "ghcr.io/ordinal-dev/ordinal:bench".to_owned(),
                init_image_pull_policy: None,
                pooler_image: "ordinal.local/pgbouncer:test".to_owned(),
                operator_namespace: Some("ordinal-system".to_owned()),
            },
        );
        ctx.run_failover_loops = false;
        let ctx = Arc::new(ctx);
        let objects: Vec<Arc<PostgresCluster>> = (0..clusters).map(|i| Arc::new(cluster(i))).collect();
        // Warm-up round.
        for pgc in &objects {
            ordinal_operator::reconcile::reconcile(pgc.clone(), ctx.clone()).await.unwrap();
        }
        let started = Instant::now();
        for _ in 0..rounds {
            for pgc in &objects {
                ordinal_operator::reconcile::reconcile(pgc.clone(), ctx.clone()).await.unwrap();
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let total = clusters * rounds;
        println!("reconcile benchmark: {clusters} clusters × {rounds} rounds = {total} reconciles (13 API requests each: pods, 2 Secrets, 9 applies, status — answered in-process)");
        println!(
            "  {:.0} reconciles/s, {:.0} µs per reconcile (one task, sequential)",
            total as f64 / seconds,
            seconds * 1e6 / total as f64
        );
        println!(
            "  resident memory: {} KiB at start, {} KiB after (operator code, {clusters} cluster objects, metrics)",
            rss_start,
            resident_kib()
        );
    });
}
