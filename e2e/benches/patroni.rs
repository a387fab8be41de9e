//! The failover benchmark on the real cluster, Ordinal beside Patroni.
//!
//! Each way a primary is lost — `kubectl delete pod`, `--grace-period=0
//! --force`, `kill -9` of the postmaster from the node, `kill -STOP` of it
//! (hung) — in async and in quorum mode (Patroni: `synchronous_mode`),
//! several runs each, against a 3-member Ordinal cluster and a 3-member
//! Patroni cluster (Debian's `patroni` package, Kubernetes DCS, its
//! defaults) on the same cluster in the same run, one at a time. The same
//! writer commits numbered rows through each one's leader Service (db-rw,
//! Patroni's leader Endpoints) and the same sampler asks every member
//! `pg_is_in_recovery()` every 100 ms. Printed per case: the write outage
//! (disruption → first acknowledged write) p50 and max, acknowledged rows
//! lost, moments with two writable members, and the Ordinal/Patroni ratio
//! of the p50s. A benchmark that prints figures, not a timed test.
//!
//! ```text
//! scripts/cluster.sh up && eval "$(scripts/cluster.sh env)"
//! scripts/images.sh import pause postgres ordinal patroni
//! kubectl apply --server-side -k deploy/
//! ORDINAL_E2E_OPERATOR=external ORDINAL_E2E_CONTAINERD_STATE=/run/ordinal-cluster/containerd \
//!   ORDINAL_E2E_POSTGRES_IMAGE=ordinal.local/postgres:17 ORDINAL_BENCH_PATRONI_IMAGE=<image> \
//!   cargo bench -p ordinal-e2e --features cluster --bench patroni
//! ```
//! (`scripts/bench-failover.sh` does all of that.)
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ORDINAL_BENCH_RUNS` | 5 | runs per case and system |
//! | `ORDINAL_BENCH_CASES` | `delete,force,kill,hang` | the cases |
//! | `ORDINAL_BENCH_MODES` | `async,quorum` | the modes |
//! | `ORDINAL_BENCH_SYSTEMS` | `ordinal,patroni` | the systems |
//! | `ORDINAL_BENCH_CAP_SECONDS` | 60 | an outage longer than this counts as "none within" it |
//! | `ORDINAL_BENCH_PATRONI_IMAGE` | (required for patroni) | the Patroni image |

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;
use nix::sys::signal::Signal;
use ordinal_crds::{ReplicationMode, names};
use ordinal_e2e::cluster::{Harness, Loss, Sampler, Writer, connect_pod, pod_ready, routed_pods};

const ORDINAL_CLUSTER: &str = "db";
const PATRONI_CLUSTER: &str = "pt";
const PATRONI_MANIFEST: &str = include_str!("../patroni/patroni.yaml");
/// How long the cluster may take to be whole again after a run.
const HEAL_WITHIN: Duration = Duration::from_secs(240);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    Ordinal,
    Patroni,
}

fn parse_case(s: &str) -> Option<Loss> {
    match s {
        "delete" => Some(Loss::Delete),
        "force" => Some(Loss::ForceDelete),
        "kill" => Some(Loss::Kill),
        "hang" => Some(Loss::Hang),
        _ => None,
    }
}

fn label(case: Loss) -> &'static str {
    match case {
        Loss::Delete => "`kubectl delete pod`",
        Loss::ForceDelete => "`--grace-period=0 --force`",
        Loss::Kill => "postmaster `kill -9`",
        Loss::Hang => "postmaster hung (`kill -STOP`)",
    }
}

/// A deployed cluster of either system, as the writer and sampler see it.
struct Deployed {
    system: System,
    /// The Service routing to the leader.
    service: String,
    password: String,
    members: Vec<String>,
}

#[derive(Default)]
struct Run {
    /// None: no write acknowledged within the cap.
    outage: Option<f64>,
    lost: usize,
    split: usize,
    /// Ordinal's own account of a failover it made in this run
    /// (`status.lastFailover`): where the time went.
    phases: Option<String>,
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn deploy(h: &Harness, system: System, mode: ReplicationMode) -> Deployed {
    match system {
        System::Ordinal => {
            let mut spec = h.spec(3);
            spec.replication.mode = mode;
            if mode == ReplicationMode::Quorum {
                spec.replication.quorum = 1;
            }
            h.apply(ORDINAL_CLUSTER, &spec).await;
            let status = h.wait_ready(ORDINAL_CLUSTER, 3).await;
            if mode == ReplicationMode::Quorum {
                let primary = status.current_primary.clone().expect("a primary");
                h.wait_quorum_active(ORDINAL_CLUSTER, &primary, 1).await;
            }
            Deployed {
                system,
                service: names::rw_service(ORDINAL_CLUSTER),
                password: h
                    .superuser_password(ORDINAL_CLUSTER)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
                members: (0..3).map(|o| names::pod(ORDINAL_CLUSTER, o)).collect(),
            }
        }
        System::Patroni => {
            let image = std::env::var("ORDINAL_BENCH_PATRONI_IMAGE")
                .expect("ORDINAL_BENCH_PATRONI_IMAGE names the Patroni image (scripts/images.sh import patroni)");
            let manifest = patroni_manifest(&image, mode == ReplicationMode::Quorum);
            apply_manifest(h, &manifest).await;
            Deployed {
                system,
                service: PATRONI_CLUSTER.to_owned(),
                password: patroni_password(),
                members: (0..3).map(|o| format!("{PATRONI_CLUSTER}-{o}")).collect(),
            }
        }
    }
}

fn patroni_password() -> String {
    // The Secret of e2e/patroni/patroni.yaml.
    let docs = serde_norway::Deserializer::from_str(PATRONI_MANIFEST);
    for doc in docs {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(doc).expect("patroni.yaml is YAML");
        if value["kind"] == "Secret" {
            return value["stringData"]["superuser-password"]
                .as_str()
                .expect("the Patroni Secret has stringData.superuser-password")
                .to_owned();
        }
    }
    panic!("patroni.yaml has no Secret");
}

/// e2e/patroni/patroni.yaml with the image, and synchronous_mode on for
/// the quorum comparison.
fn patroni_manifest(image: &str, synchronous: bool) -> String {
    let text = PATRONI_MANIFEST.replace("PATRONI_IMAGE", image);
    if synchronous {
        text.replace("PATRONI_SYNCHRONOUS_MODE_VALUE", "true")
    } else {
        text.replace("PATRONI_SYNCHRONOUS_MODE_VALUE", "false")
    }
}

/// Server-side applies every document of `manifest` into the harness's
/// namespace.
async fn apply_manifest(h: &Harness, manifest: &str) {
    for doc in serde_norway::Deserializer::from_str(manifest) {
        let mut object: DynamicObject =
            serde::Deserialize::deserialize(doc).expect("a Kubernetes object");
        let Some(types) = object.types.clone() else {
            continue;
        };
        let gvk = GroupVersionKind::try_from(&types).expect("apiVersion and kind");
        let (resource, _) = pinned_kind(&h.client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discovering {gvk:?}: {e}"));
        object.metadata.namespace = Some(h.namespace.clone());
        let name = object.metadata.name.clone().expect("a name");
        let api: Api<DynamicObject> =
            Api::namespaced_with(h.client.clone(), &h.namespace, &resource);
        api.patch(
            &name,
            &PatchParams::apply("ordinal-bench").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {} {name}: {e}", types.kind));
    }
}

/// The one pod the leader Service routes to.
async fn leader(h: &Harness, d: &Deployed) -> Result<String, String> {
    let routed = routed_pods(&h.client, &h.namespace, &d.service).await?;
    match routed.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(format!("{} routes to {other:?}", d.service)),
    }
}

/// Whole: every member Ready, one leader routed, and it streams to both
/// others. The same check for both systems.
async fn whole(h: &Harness, d: &Deployed) -> Result<String, String> {
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), &h.namespace);
    for m in &d.members {
        let pod = pods
            .get_opt(m)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{m} has no pod"))?;
        if !pod_ready(&pod) {
            return Err(format!("{m} is not Ready"));
        }
    }
    let primary = leader(h, d).await?;
    let session = connect_pod(&h.client, &h.namespace, &primary, &d.password).await?;
    let streaming: i64 = session
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await
        .map_err(|e| format!("{primary}: {e}"))?
        .get(0);
    if streaming < 2 {
        return Err(format!("{primary} streams to {streaming} standbys"));
    }
    Ok(primary)
}

/// Until every member is back (the leader streams to both standbys); Err
/// after [`HEAL_WITHIN`], saying what is missing.
async fn wait_whole(h: &Harness, d: &Deployed) -> Result<String, String> {
    let started = Instant::now();
    loop {
        match whole(h, d).await {
            Ok(primary) => return Ok(primary),
            Err(why) if started.elapsed() > HEAL_WITHIN => {
                return Err(format!(
                    "{:?} is not whole after {HEAL_WITHIN:?}: {why}",
                    d.system
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The write outage around `t0`: the longest gap between consecutive
/// acknowledgements from the last one before `t0` on, and whether writes
/// were acknowledged again after it (false: the gap is still open, counted
/// up to now).
fn outage_since(at: &[Instant], t0: Instant) -> Option<(f64, bool)> {
    let from = at.iter().rposition(|t| *t <= t0)?;
    let mut longest = 0.0_f64;
    let mut closed = true;
    for pair in at[from..].windows(2) {
        longest = longest.max(pair[1].duration_since(pair[0]).as_secs_f64());
    }
    // Still waiting since the last acknowledgement?
    if let Some(last) = at.last() {
        let open = last.elapsed().as_secs_f64();
        if open > longest {
            longest = open;
            closed = false;
        }
    }
    // Resumed means: a gap of at least a moment closed after t0 (not just
    // the writes that went on before the disruption took effect).
    let disrupted = at[from..]
        .windows(2)
        .any(|p| p[1] > t0 && p[1].duration_since(p[0]) >= Duration::from_millis(300));
    Some((longest, closed && disrupted))
}

/// Ordinal's last failover record, as `time` and a line of its phases.
async fn last_failover(h: &Harness, d: &Deployed) -> Option<(String, String)> {
    if d.system != System::Ordinal {
        return None;
    }
    let record = h.status(ORDINAL_CLUSTER).await.last_failover?;
    let p = &record.phases;
    let line = format!(
        "{} -> {} ({}): detect {:.2} s, decide {:.2} s, fence {:.2} s, promote {:.2} s, publish {:.2} s",
        record.from, record.to, record.reason, p.detect, p.decide, p.fence, p.promote, p.publish
    );
    Some((record.time.0.to_string(), line))
}

/// One loss of the primary and what came of it; Err when the system did
/// not heal afterwards (the run is not counted: its rows cannot be checked).
async fn run_once(h: &Harness, d: &Deployed, case: Loss, cap: Duration) -> Result<Run, String> {
    let primary = wait_whole(h, d).await?;
    let before = last_failover(h, d).await.map(|(time, _)| time);
    let sampler = Sampler::start_on(h, &d.members, &d.password, true).await;
    // A fresh connection for every write, as a client pool that reconnects
    // would: a session kept from before the failure could go on committing
    // on a hung primary (its backends run; its postmaster takes nothing new).
    let writer = Writer::start_with(h, &d.service, &d.password, true).await;
    writer.wait_more_acks(h, 30).await;
    let t0 = Instant::now();
    h.lose(&primary, case).await;
    // Until a write is acknowledged again after the writes stopped, or the
    // cap: the old primary may acknowledge a few more first.
    let mut resumed = false;
    while t0.elapsed() < cap && !resumed {
        tokio::time::sleep(Duration::from_millis(50)).await;
        resumed = outage_since(&writer.acks().at, t0).is_some_and(|(_, back)| back);
    }
    if case == Loss::Hang {
        let _ = h.signal_postgres(&primary, Signal::SIGCONT).await;
    }
    if let Err(why) = wait_whole(h, d).await {
        writer.stop().await;
        sampler.stop().await;
        return Err(why);
    }
    writer.wait_more_acks(h, 10).await;
    let acks = writer.stop().await;
    let outage = outage_since(&acks.at, t0)
        .filter(|(gap, _)| *gap <= cap.as_secs_f64())
        .map(|(gap, _)| gap);
    let (_, missing) = h.missing_rows_on(&d.service, &d.password, &acks.ids).await;
    let report = sampler.stop().await;
    let phases = last_failover(h, d)
        .await
        .filter(|(time, _)| Some(time) != before.as_ref())
        .map(|(_, line)| line);
    Ok(Run {
        outage,
        lost: missing.len(),
        split: report.split.len(),
        phases,
    })
}

struct Summary {
    p50: Option<f64>,
    max: Option<f64>,
    lost: usize,
    split: usize,
    runs: usize,
    none: usize,
}

fn summarize(runs: &[Run]) -> Summary {
    let mut outages: Vec<f64> = runs.iter().filter_map(|r| r.outage).collect();
    outages.sort_by(f64::total_cmp);
    let none = runs.len() - outages.len();
    // The median; a run with no write within the cap ranks above every
    // measured one (so a median that falls on it is "none within").
    let n = runs.len();
    let p50 = if n == 0 {
        None
    } else if n % 2 == 1 {
        outages.get(n / 2).copied()
    } else {
        match (outages.get(n / 2 - 1), outages.get(n / 2)) {
            (Some(a), Some(b)) => Some((a + b) / 2.0),
            _ => None,
        }
    };
    Summary {
        p50,
        max: if none > 0 {
            None
        } else {
            outages.last().copied()
        },
        lost: runs.iter().map(|r| r.lost).sum(),
        split: runs.iter().map(|r| r.split).sum(),
        runs: runs.len(),
        none,
    }
}

fn seconds(v: Option<f64>, cap: Duration) -> String {
    match v {
        Some(v) => format!("{v:.2} s"),
        None => format!("> {} s", cap.as_secs()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let runs = env_number("ORDINAL_BENCH_RUNS", 5) as usize;
    let cap = Duration::from_secs(env_number("ORDINAL_BENCH_CAP_SECONDS", 60));
    let cases: Vec<Loss> = env_list("ORDINAL_BENCH_CASES", "delete,force,kill,hang")
        .iter()
        .map(|c| parse_case(c).unwrap_or_else(|| panic!("unknown case {c}")))
        .collect();
    let modes: Vec<ReplicationMode> = env_list("ORDINAL_BENCH_MODES", "async,quorum")
        .iter()
        .map(|m| match m.as_str() {
            "async" => ReplicationMode::Async,
            "quorum" => ReplicationMode::Quorum,
            other => panic!("unknown mode {other}"),
        })
        .collect();
    let systems: Vec<System> = env_list("ORDINAL_BENCH_SYSTEMS", "ordinal,patroni")
        .iter()
        .map(|s| match s.as_str() {
            "ordinal" => System::Ordinal,
            "patroni" => System::Patroni,
            other => panic!("unknown system {other}"),
        })
        .collect();

    let mut results: BTreeMap<(String, Loss, System), Vec<Run>> = BTreeMap::new();
    // Runs after which the system did not heal: not counted, and the
    // system is deployed again (a peer that stays broken would otherwise
    // end the whole benchmark).
    let mut unhealed: BTreeMap<(String, Loss, System), usize> = BTreeMap::new();
    for &mode in &modes {
        for &system in &systems {
            let name = format!("bench-{system:?}-{mode:?}").to_lowercase();
            let mut h = Harness::new(&name).await;
            let mut d = deploy(&h, system, mode).await;
            for &case in &cases {
                for run in 1..=runs {
                    let r = match run_once(&h, &d, case, cap).await {
                        Ok(r) => r,
                        Err(why) => {
                            println!(
                                "ordinal-bench: {system:?} {mode:?} {case:?} run {run}: not counted, {why}; deployed again"
                            );
                            *unhealed
                                .entry((format!("{mode:?}").to_lowercase(), case, system))
                                .or_default() += 1;
                            drop(d);
                            drop(h);
                            h = Harness::new(&name).await;
                            d = deploy(&h, system, mode).await;
                            continue;
                        }
                    };
                    println!(
                        "ordinal-bench: {system:?} {mode:?} {case:?} run {run}: outage {}, {} acknowledged rows lost, {} moments with two writable",
                        seconds(r.outage, cap),
                        r.lost,
                        r.split
                    );
                    if let Some(phases) = &r.phases {
                        println!("ordinal-bench:   failover {phases}");
                    }
                    results
                        .entry((format!("{mode:?}").to_lowercase(), case, system))
                        .or_default()
                        .push(r);
                }
            }
        }
    }

    println!();
    println!(
        "| mode | failure of the primary | Ordinal p50 / max | Patroni p50 / max | ratio (p50) | rows lost (O / P) | two writable (O / P) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &mode in &modes {
        let mode = format!("{mode:?}").to_lowercase();
        for &case in &cases {
            let get = |s: System| results.get(&(mode.clone(), case, s)).map(|r| summarize(r));
            let (o, p) = (get(System::Ordinal), get(System::Patroni));
            let cell = |s: &Option<Summary>, system: System| {
                let broken = unhealed
                    .get(&(mode.clone(), case, system))
                    .map_or(String::new(), |n| format!(" ({n} did not heal)"));
                match s {
                    Some(s) => format!(
                        "{} / {}{}{broken}",
                        seconds(s.p50, cap),
                        seconds(s.max, cap),
                        if s.none > 0 {
                            format!(
                                " ({} of {} none within {} s)",
                                s.none,
                                s.runs,
                                cap.as_secs()
                            )
                        } else {
                            String::new()
                        }
                    ),
                    None => format!("—{broken}"),
                }
            };
            let ratio = match (&o, &p) {
                (Some(o), Some(p)) => match (o.p50, p.p50) {
                    (Some(a), Some(b)) => format!("{:.2}", a / b),
                    (Some(a), None) => format!("< {:.2}", a / cap.as_secs_f64()),
                    _ => "—".to_owned(),
                },
                _ => "—".to_owned(),
            };
            let count = |s: &Option<Summary>, f: fn(&Summary) -> usize| {
                s.as_ref().map_or("—".to_owned(), |s| f(s).to_string())
            };
            println!(
                "| {mode} | {} | {} | {} | {ratio} | {} / {} | {} / {} |",
                label(case),
                cell(&o, System::Ordinal),
                cell(&p, System::Patroni),
                count(&o, |s| s.lost),
                count(&p, |s| s.lost),
                count(&o, |s| s.split),
                count(&p, |s| s.split),
            );
        }
    }
}
