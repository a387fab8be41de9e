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
    stat_after_name(pid)?.get(19)?.parse().ok()
}

/// The fields of `/proc/<pid>/stat` from the third on (the state): the
/// command name before them, in parentheses, may hold spaces.
fn stat_after_name(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
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

/// CPU ticks (`USER_HZ`, 100 a second) of every process named by one of
/// `names`, with those of the children they waited for (`stat`'s utime,
/// stime, cutime, cstime): the kubelet, and containerd with its shims,
/// whose children are the `runc` of every container start and every exec
/// probe. A process is named by its command name's start, or by its first
/// argument (`scripts/cluster.sh` runs every Kubernetes component from one
/// binary: `ordinal-kube kubelet …`).
fn ticks_of(names: &[&str]) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let first_arg = cmdline
                .split(|b| *b == 0)
                .nth(1)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            if !names
                .iter()
                .any(|n| comm.trim().starts_with(n) || first_arg == *n)
            {
                return None;
            }
            // Fields 14–17 of stat.
            Some(
                stat_after_name(pid)?
                    .iter()
                    .skip(11)
                    .take(4)
                    .filter_map(|f| f.parse::<u64>().ok())
                    .sum::<u64>(),
            )
        })
        .sum()
}

/// Nanoseconds on CPU of every process in the pods' cgroup (postgres, the
/// operator, what the probes run in the containers), cgroup v1 or v2.
fn pods_cpu_ns() -> u64 {
    if let Some(ns) = std::fs::read_to_string("/sys/fs/cgroup/cpuacct/kubepods/cpuacct.usage")
        .ok()
        .and_then(|t| t.trim().parse().ok())
    {
        return ns;
    }
    for path in [
        "/sys/fs/cgroup/kubepods/cpu.stat",
        "/sys/fs/cgroup/kubepods.slice/cpu.stat",
    ] {
        if let Some(usec) = std::fs::read_to_string(path).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))?
                .trim()
                .parse::<u64>()
                .ok()
        }) {
            return usec * 1000;
        }
    }
    0
}

/// The node's busy CPU time so far, in ticks (`/proc/stat`: all but idle
/// and iowait).
fn node_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?.to_owned();
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let all: u64 = fields.iter().take(8).sum();
            let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
            Some(all - idle)
        })
        .unwrap_or(0)
}

/// What the node spends, sampled at the start and the end of the window.
#[derive(Clone, Copy)]
struct NodeCpu {
    busy: u64,
    pods_ns: u64,
    kubelet: u64,
    control_plane: u64,
    containerd: u64,
}

impl NodeCpu {
    fn now() -> Self {
        Self {
            busy: node_busy_ticks(),
            pods_ns: pods_cpu_ns(),
            kubelet: ticks_of(&["kubelet"]),
            control_plane: ticks_of(&["kube-apiserver", "etcd"]),
            containerd: ticks_of(&["containerd"]),
        }
    }
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
    let node_before = NodeCpu::now();
    let t0 = Instant::now();
    while t0.elapsed() < window {
        for (i, (_, _, pid)) in measured.iter().enumerate() {
            rss_max[i] = rss_max[i].max(rss_kib(*pid));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let node_after = NodeCpu::now();
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
    // The node's side of the same window: what every probed instance costs
    // besides the operator (postgres, the kubelet's probes, containerd).
    let share = |ticks: u64| ticks as f64 / 100.0 / elapsed * 100.0;
    let busy = share(node_after.busy.saturating_sub(node_before.busy));
    let pods =
        node_after.pods_ns.saturating_sub(node_before.pods_ns) as f64 / 1e9 / elapsed * 100.0;
    let kubelet = share(node_after.kubelet.saturating_sub(node_before.kubelet));
    let control_plane = share(
        node_after
            .control_plane
            .saturating_sub(node_before.control_plane),
    );
    let containerd = share(node_after.containerd.saturating_sub(node_before.containerd));
    println!();
    println!("| node, same window | CPU, % of one core | per instance |");
    println!("|---|---|---|");
    for (what, cpu) in [
        ("whole node (busy)", busy),
        ("pods (postgres, operator, in-container probes)", pods),
        ("kubelet", kubelet),
        ("API server and etcd", control_plane),
        ("containerd and its shims (with runc)", containerd),
    ] {
        println!("| {what} | {cpu:.1} % | {:.3} % |", cpu / total as f64);
    }
    println!();
    println!(
        "ordinal-bench: leader resident memory {leader_rss:.1} MiB (goal ≤ 40 MiB at 300 instances)"
    );
}
