//! Monitoring, proven against the real thing: promtool checks and
//! unit-tests the alert rules, and a real Prometheus scrapes the operator's
//! /metrics while a local real-PostgreSQL cluster runs under write load —
//! every `ordinal_*` query of the Grafana dashboard must return series.

// Helpers outside #[test] functions panic on failure too: they are test code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ordinal_crds::ReplicationMode;
use ordinal_e2e::scenario::{create_table, kill_primary_round, wait_for};
use ordinal_e2e::seam::LocalSeam;
use ordinal_e2e::workload::{Acks, writer};
use ordinal_operator::failover::FailoverLoop;
use ordinal_operator::http::{HttpState, serve};
use ordinal_operator::metrics::Metrics;
use serde_json::Value;
use tokio::sync::watch;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is installed (scripts/test.sh installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    promtool(
        &["check", "rules", "ordinal-rules.prometheus.yaml"],
        &deploy("prometheus"),
    );
    let out = promtool(
        &["test", "rules", "ordinal-rules.test.yaml"],
        &deploy("prometheus/tests"),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_prometheus_rule_holds_the_same_groups_and_every_alert_is_documented() {
    let plain: Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy("prometheus/ordinal-rules.prometheus.yaml")).expect("read"),
    )
    .expect("YAML");
    let cr: Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy("prometheus/ordinal-rules.yaml")).expect("read"),
    )
    .expect("YAML");
    assert_eq!(cr["kind"], "PrometheusRule");
    assert_eq!(cr["spec"]["groups"], plain["groups"]);
    // promtool checks the CRD's groups too.
    let dir = tempfile::tempdir().expect("tempdir");
    let extracted = dir.path().join("from-crd.yaml");
    std::fs::write(
        &extracted,
        serde_norway::to_string(&cr["spec"]).expect("YAML"),
    )
    .expect("write");
    promtool(
        &["check", "rules", extracted.to_str().expect("path")],
        dir.path(),
    );

    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README");
    let alerts: Vec<&str> = plain["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(alerts.len(), 15);
    for alert in alerts {
        let rule = plain["groups"][0]["rules"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["alert"] == alert))
            .expect("rule");
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{alert}: {key}"
            );
        }
        let anchor = format!("### Runbook: {alert}");
        assert!(
            readme.contains(&anchor),
            "README has no runbook section {anchor:?}"
        );
    }
    for (metric, _) in ordinal_operator::metrics::DOCUMENTED {
        assert!(
            readme.contains(metric),
            "README's Monitoring section does not list {metric}"
        );
    }
}

/// The dashboard's queries, with the variables set to match everything.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/ordinal-dashboard.json")).expect("read"),
    )
    .expect("JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            out.push((
                panel["title"].as_str().unwrap_or_default().to_owned(),
                expr.replace("$namespace", ".*").replace("$cluster", ".*"),
            ));
        }
    }
    out
}

#[test]
fn the_dashboard_has_the_panels_people_look_for() {
    let titles: Vec<String> = dashboard_queries().into_iter().map(|(t, _)| t).collect();
    for wanted in [
        "Replicas desired vs ready",
        "Primary",
        "Replication lag (bytes)",
        "Replication lag (seconds)",
        "Failovers",
        "Last failover duration",
        "Instance up by ordinal",
        "Pod restarts by ordinal (kube-state-metrics)",
        "PVC usage % (kubelet)",
        "Reconcile latency (p99)",
        "Reconcile errors",
        "Last base backup age",
        "WAL archive lag",
        "WAL archive failures",
        "Certificate expires in",
    ] {
        assert!(titles.iter().any(|t| t == wanted), "no panel {wanted:?}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// A Prometheus server on loopback, stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ordinal-operator\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed (scripts/test.sh installs it)");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// The result vector of an instant query.
    fn query(&self, query: &str) -> Vec<Value> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return Vec::new();
        };
        let request =
            format!("GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return Vec::new();
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        assert_ne!(value["status"], "error", "query {query:?} failed: {body}");
        value["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn scalar(&self, query: &str) -> Option<f64> {
        self.query(query).first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_answers_every_dashboard_query() {
    ordinal_e2e::init_logs();
    // Quorum mode, so that the WAL lost at the failover is known (0) and
    // its panel has a series: after an unplanned loss in async mode it is
    // unknown and the series is absent.
    let seam = LocalSeam::bootstrap(&ordinal_e2e::init_bin(), 3, ReplicationMode::Quorum, 1);
    create_table(&seam).await;

    // The operator's metrics endpoint, fed by a real failover loop.
    let metrics = Metrics::new().expect("metrics");
    let metrics_port = free_port();
    let (stop_http, http_stopped) = watch::channel(false);
    let state = HttpState {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let mut http_stop = http_stopped.clone();
    let http = tokio::spawn(serve(
        ([127, 0, 0, 1], metrics_port).into(),
        state,
        async move {
            let _ = http_stop.changed().await;
        },
    ));
    let (stop_loop, loop_stopped) = watch::channel(false);
    let failover =
        tokio::spawn(FailoverLoop::new(Arc::clone(&seam), Some(metrics.clone())).run(loop_stopped));
    // No API server here, so no controller: record reconciles the way the
    // controller does, so that the reconcile panels have their series.
    metrics.observe_reconcile("local", "db", 0.012, None);
    metrics.observe_reconcile("local", "db", 0.020, Some("apply"));
    // Nor backups, nor archiving here (backup.rs sees their series on the
    // real cluster): record them the way the backup controller and the
    // failover loop do, so that their panels' queries are checked.
    metrics.record_backup("local", "db", 1_796_000_000.0, 12.5);
    metrics.record_verification("local", "db", 1_796_000_000.0, true, Some(3.2));
    metrics.observe_certificate("local", "db", Some(1_807_776_000));
    metrics.observe_archiver(
        "local",
        "db",
        Some(&ordinal_operator::failover::pg::Archiver::default()),
    );

    let prometheus = Prometheus::start(metrics_port);
    let acks = Arc::new(Mutex::new(Acks::default()));
    let (stop_writer, writer_stopped) = watch::channel(false);
    let w = writer(Arc::clone(&seam), Arc::clone(&acks), writer_stopped);
    wait_for(
        "Prometheus scrapes the operator",
        Duration::from_secs(60),
        async || prometheus.scalar("sum(ordinal_instance_up)") == Some(3.0),
    )
    .await;
    assert_eq!(
        prometheus.scalar(r#"up{job="ordinal-operator"}"#),
        Some(1.0)
    );
    assert_eq!(prometheus.scalar("sum(ordinal_failovers_total)"), Some(0.0));

    // A forced failover under load.
    kill_primary_round(&seam, &acks, 1).await;
    wait_for(
        "Prometheus sees the failover",
        Duration::from_secs(30),
        async || prometheus.scalar("sum(ordinal_failovers_total)") == Some(1.0),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut empty = Vec::new();
    for (panel, expr) in dashboard_queries() {
        if !expr.contains("ordinal_") {
            continue; // kube-state-metrics and kubelet series: not ours
        }
        if prometheus.query(&expr).is_empty() {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without series:\n{}",
        empty.join("\n")
    );
    for result in prometheus
        .query("ordinal_replication_lag_bytes")
        .iter()
        .chain(&prometheus.query("ordinal_replication_lag_seconds"))
    {
        let value: f64 = result["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("a number");
        assert!(value >= 0.0 && value.is_finite(), "lag {value} in {result}");
    }
    assert!(
        prometheus
            .scalar("sum(increase(ordinal_failovers_total[5m]))")
            .is_some_and(|v| v > 0.0),
        "the failover counter increased"
    );
    assert_eq!(
        prometheus.scalar("count(ordinal_instance_is_primary == 1)"),
        Some(1.0)
    );

    let _ = stop_writer.send(true);
    let _ = w.await;
    let _ = stop_loop.send(true);
    let _ = failover.await;
    let _ = stop_http.send(true);
    let _ = http.await;
}
