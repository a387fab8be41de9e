//! The idle cost of the operator on the real cluster: N PostgresClusters
//! of I instances each, every instance probed every second by the failover
//! loops, nothing failing. Measured on the node, from the leader's
//! process: CPU time over a window (the `schedstat` of each of its
//! threads, as a share of one core) and resident memory (`VmRSS`, the highest sample). The
//! standby replica (leader election) is measured too: it only waits for
//! the Lease. A benchmark that prints figures, not a timed test.
//!
//! ```text
//! scripts/bench-idle.sh                              # 30 clusters of 3
//! ORDINAL_BENCH_CLUSTERS=100 scripts/bench-idle.sh   # the goal's size, if the machine holds it
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ORDINAL_BENCH_CLUSTERS` | 30 | PostgresClusters |
//! | `ORDINAL_BENCH_INSTANCES` | 3 | instances of each |
//! | `ORDINAL_BENCH_WINDOW_SECONDS` | 120 | the measured window, once every cluster is Healthy |

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use ordinal_e2e::cluster::Harness;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The process of the `ordinal-operator` container of pod `uid` on this
/// node: its cgroup path names the pod (cgroupfs: `pod<uid>`; systemd:
/// `pod<uid with _>`).
fn operator_pid(uid: &str) -> Option<u32> {
    let systemd = uid.replace('-', "_");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.trim().starts_with("ordinal-operat") {
            continue;
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cgroup.contains(uid) || cgroup.contains(&systemd) {
            return Some(pid);
        }
    }
    None
}

/// Nanoseconds on CPU so far, of every thread (each thread's
/// `schedstat`: the process's own file counts its main thread only).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| {
            std::fs::read_to_string(task.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// When the process started (clock ticks since boot, `stat`'s field 22):
/// a restarted operator is another process, whose CPU count starts again.
fn started_at(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let clusters = env_or("ORDINAL_BENCH_CLUSTERS", 30) as usize;
    let instances = env_or("ORDINAL_BENCH_INSTANCES", 3) as i32;
    let window = Duration::from_secs(env_or("ORDINAL_BENCH_WINDOW_SECONDS", 120));
    let h = Harness::new("bench-idle").await;

    let started = Instant::now();
    let names: Vec<String> = (0..clusters).map(|i| format!("idle{i}")).collect();
    for name in &names {
        let mut spec = h.spec(instances);
        spec.failover.check_interval_seconds = 1;
        h.apply(name, &spec).await;
    }
    for name in &names {
        h.wait_ready(name, instances).await;
    }
    println!(
        "ordinal-bench: {clusters} clusters of {instances} Healthy in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    // Let the start-up settle (reconciles of the new clusters, the first
    // status writes).
    tokio::time::sleep(Duration::from_secs(30)).await;

    let leases: Api<Lease> = Api::namespaced(h.client.clone(), "ordinal-system");
    let leader = leases
        .get("ordinal-operator-leader")
        .await
        .ok()
        .and_then(|l| l.spec?.holder_identity)
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "ordinal-system");
    let operators = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=ordinal-operator"))
        .await
        .expect("the operator's pods");
    let mut measured: Vec<(String, bool, u32)> = operators
        .items
        .iter()
        .filter_map(|p| {
            let name = p.name_any();
            let pid = operator_pid(&p.uid()?)?;
            Some((name.clone(), leader.starts_with(&name), pid))
        })
        .collect();
    measured.sort_by_key(|(_, leads, _)| !leads);
    assert!(
        measured.iter().any(|(_, leads, _)| *leads),
        "the leader {leader:?} runs no ordinal-operator process on this node ({measured:?}): run the operator in the cluster (kubectl apply -k deploy/)"
    );

    let before: Vec<u64> = measured.iter().map(|(_, _, pid)| cpu_ns(*pid)).collect();
    let starts: Vec<Option<u64>> = measured
        .iter()
        .map(|(_, _, pid)| started_at(*pid))
        .collect();
    let mut rss_max = vec![0_u64; measured.len()];
    let t0 = Instant::now();
    while t0.elapsed() < window {
        for (i, (_, _, pid)) in measured.iter().enumerate() {
            rss_max[i] = rss_max[i].max(rss_kib(*pid));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    for (i, (name, _, pid)) in measured.iter().enumerate() {
        let now = started_at(*pid);
        assert!(
            now.is_some() && now == starts[i],
            "{name}'s operator process (pid {pid}) ended or restarted during the window: no valid figure (a lost Lease exits the leader; see its previous log)"
        );
    }
    let total = clusters * instances as usize;
    println!();
    println!(
        "| operator replica | clusters × instances | probed per second | CPU, % of one core | resident memory |"
    );
    println!("|---|---|---|---|---|");
    let mut leader_cpu = 0.0;
    let mut leader_rss = 0.0;
    for (i, (name, leads, pid)) in measured.iter().enumerate() {
        let cpu = (cpu_ns(*pid).saturating_sub(before[i])) as f64 / 1e9 / elapsed * 100.0;
        let rss = rss_max[i] as f64 / 1024.0;
        if *leads {
            leader_cpu = cpu;
            leader_rss = rss;
        }
        println!(
            "| {name} ({}) | {clusters} × {instances} | {} | {cpu:.1} % | {rss:.1} MiB |",
            if *leads { "leader" } else { "standby" },
            if *leads { total } else { 0 },
        );
    }
    println!();
    println!(
        "ordinal-bench: leader {:.3} % of a core per probed instance; linear at 300 instances: {:.1} % (goal ≤ 10 %), over {elapsed:.0}s",
        leader_cpu / total as f64,
        leader_cpu / total as f64 * 300.0
    );
    println!(
        "ordinal-bench: leader resident memory {leader_rss:.1} MiB (goal ≤ 40 MiB at 300 instances)"
    );
}
