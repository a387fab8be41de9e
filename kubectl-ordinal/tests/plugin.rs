//! `kubectl ordinal` against a real cluster, run the way users run it: as
//! a kubectl plugin (`kubectl ordinal …`, found on the PATH), under write
//! load. Needs what `e2e/tests/cluster.rs` needs (see there); CI runs it
//! in `scripts/test.sh` with `--features cluster`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use kube::ResourceExt;
use ordinal_e2e::cluster::{Harness, Writer};

const CLUSTER: &str = "cli";

/// Runs `kubectl ordinal <args>` with this build's plugin first on the PATH.
async fn kubectl_ordinal(h: &Harness, args: &[&str]) -> Output {
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-ordinal"));
    let dir = plugin.parent().expect("the plugin's directory");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The namespace first: what follows `--` is psql's.
    let output = tokio::process::Command::new("kubectl")
        .args(["ordinal", "-n", &h.namespace])
        .args(args)
        .env("PATH", path)
        .output()
        .await
        .expect("kubectl runs (scripts/cluster.sh env puts it on the PATH)");
    eprintln!(
        "$ kubectl ordinal {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn pod_uids(h: &Harness) -> BTreeMap<String, String> {
    h.cluster_pods(CLUSTER)
        .await
        .expect("pods")
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect()
}

/// status, psql on the primary and a replica, a switchover (and its
/// refusal), and a rolling restart that replaces every pod — while a writer
/// writes through `-rw`, none of whose acknowledged rows is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_ordinal_status_psql_switchover_and_restart() {
    let h = Harness::new("kubectl_ordinal_status_psql_switchover_and_restart").await;
    h.apply(CLUSTER, &h.spec(2)).await;
    h.wait_ready(CLUSTER, 2).await;
    let writer = Writer::start(&h, CLUSTER).await;

    let status = kubectl_ordinal(&h, &["status", CLUSTER]).await;
    assert!(status.status.success());
    let text = stdout(&status);
    assert!(
        text.starts_with(&format!(
            "Cluster {}/{CLUSTER}: Healthy, 2/2 ready",
            h.namespace
        )),
        "{text}"
    );
    let row = |pod: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{pod} ")))
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("cli-0"), ["cli-0", "primary", "yes"], "{text}");
    assert_eq!(row("cli-1"), ["cli-1", "replica", "yes"], "{text}");

    let on_primary = kubectl_ordinal(
        &h,
        &["psql", CLUSTER, "--", "-tAc", "select pg_is_in_recovery()"],
    )
    .await;
    assert!(on_primary.status.success());
    assert_eq!(stdout(&on_primary).trim(), "f");
    let on_replica = kubectl_ordinal(
        &h,
        &[
            "psql",
            CLUSTER,
            "--replica",
            "--",
            "-tAc",
            "select pg_is_in_recovery()",
        ],
    )
    .await;
    assert_eq!(stdout(&on_replica).trim(), "t");
    // psql's own exit code comes back.
    let failing =
        kubectl_ordinal(&h, &["psql", CLUSTER, "--", "-c", "select * from nowhere"]).await;
    assert!(!failing.status.success());

    let switched = kubectl_ordinal(&h, &["switchover", CLUSTER, "cli-1"]).await;
    assert!(switched.status.success());
    assert!(
        stdout(&switched).contains("cli-1 is the primary"),
        "{}",
        stdout(&switched)
    );
    assert_eq!(
        h.status(CLUSTER).await.current_primary.as_deref(),
        Some("cli-1")
    );
    let again = kubectl_ordinal(&h, &["switchover", CLUSTER, "cli-1"]).await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("cli-1 is the primary of cli already"),
        "{again:?}"
    );
    h.wait_ready(CLUSTER, 2).await;

    let before = pod_uids(&h).await;
    let restarted = kubectl_ordinal(&h, &["restart", CLUSTER, "--timeout", "400"]).await;
    assert!(restarted.status.success());
    let after = pod_uids(&h).await;
    for (pod, uid) in &before {
        assert_ne!(
            after.get(pod),
            Some(uid),
            "{pod} was replaced by the restart"
        );
    }
    h.wait_ready(CLUSTER, 2).await;

    let acks = writer.stop().await;
    assert!(acks.ids.len() > 10, "the writer wrote: {}", acks.ids.len());
    h.assert_acked_rows_present(CLUSTER, &acks.ids).await;
    println!(
        "ordinal-e2e: kubectl ordinal switchover and restart with {} acknowledged writes, none lost",
        acks.ids.len()
    );
}

/// Whether `pod`'s postgres container runs (a fenced instance's guard
/// waits in its init container; no postgres is started).
async fn postgres_runs(h: &Harness, pod: &str) -> bool {
    let pods = h.cluster_pods(CLUSTER).await.expect("pods");
    pods.iter()
        .filter(|p| p.name_any() == pod)
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .any(|c| c.name == "postgres" && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// Ok while `primary` is the primary and nothing is being promoted.
async fn primary_stays(h: &Harness, primary: &str) -> Result<(), String> {
    let status = h.try_status(CLUSTER).await?;
    if status.current_primary.as_deref() != Some(primary) || status.target_primary.is_some() {
        return Err(format!(
            "primary {:?}, promoting {:?}",
            status.current_primary, status.target_primary
        ));
    }
    Ok(())
}

/// psql on a fenced instance is refused by the plugin, with the way out.
async fn psql_refused_as_fenced(h: &Harness, pod: &str) {
    let output = kubectl_ordinal(
        h,
        &["psql", CLUSTER, "--pod", pod, "--", "-tAc", "select 1"],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{pod} is fenced: its postgres is stopped")),
        "{stderr}"
    );
}

/// fence and unfence: a fenced replica's postgres stops and stays stopped
/// while its pod stays, writes go on; a fenced primary stops the writes
/// and no failover replaces it (never two writable instances); unfenced,
/// each comes back with every acknowledged row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_ordinal_fence_and_unfence() {
    let h = Harness::new("kubectl_ordinal_fence_and_unfence").await;
    h.apply(CLUSTER, &h.spec(2)).await;
    h.wait_ready(CLUSTER, 2).await;
    let primary = h.status(CLUSTER).await.current_primary.expect("a primary");
    let replica = if primary == "cli-0" { "cli-1" } else { "cli-0" };
    let writer = Writer::start(&h, CLUSTER).await;

    // A replica.
    let fenced = kubectl_ordinal(&h, &["fence", CLUSTER, replica]).await;
    assert!(fenced.status.success());
    assert!(stdout(&fenced).contains(&format!("{replica}'s postgres is stopped")));
    h.hold_for(
        "the fenced replica stays stopped, its pod stays, the primary stays",
        std::time::Duration::from_secs(15),
        async || {
            let pods = h.cluster_pods(CLUSTER).await?;
            let pod = pods
                .iter()
                .find(|p| p.name_any() == replica)
                .ok_or("the fenced pod is gone")?;
            if ordinal_e2e::cluster::pod_ready(pod) {
                return Err(format!("{replica} is ready"));
            }
            primary_stays(&h, &primary).await
        },
    )
    .await;
    assert!(
        !postgres_runs(&h, replica).await,
        "a fenced instance runs no postgres"
    );
    psql_refused_as_fenced(&h, replica).await;
    let during = writer.acked();
    let unfenced = kubectl_ordinal(&h, &["unfence", CLUSTER, replica]).await;
    assert!(unfenced.status.success());
    h.wait_ready(CLUSTER, 2).await;
    assert!(
        writer.acked() > during,
        "writes went on while a replica was fenced"
    );

    // The primary: writes stop, nothing is promoted.
    let fenced = kubectl_ordinal(&h, &["fence", CLUSTER, &primary]).await;
    assert!(fenced.status.success());
    assert!(
        String::from_utf8_lossy(&fenced.stderr)
            .contains("writes stop, and no failover replaces it")
    );
    h.hold_for(
        "no failover replaces a fenced primary",
        std::time::Duration::from_secs(20),
        async || primary_stays(&h, &primary).await,
    )
    .await;
    assert!(
        !postgres_runs(&h, &primary).await,
        "the fenced primary runs no postgres"
    );
    psql_refused_as_fenced(&h, &primary).await;
    let recovering = kubectl_ordinal(
        &h,
        &[
            "psql",
            CLUSTER,
            "--pod",
            replica,
            "--",
            "-tAc",
            "select pg_is_in_recovery()",
        ],
    )
    .await;
    assert_eq!(
        stdout(&recovering).trim(),
        "t",
        "the replica was not promoted"
    );
    let unfenced = kubectl_ordinal(&h, &["unfence", CLUSTER, &primary]).await;
    assert!(unfenced.status.success());
    h.wait_ready(CLUSTER, 2).await;
    assert_eq!(
        h.status(CLUSTER).await.current_primary.as_deref(),
        Some(primary.as_str())
    );

    let acks = writer.stop().await;
    h.assert_acked_rows_present(CLUSTER, &acks.ids).await;
    println!(
        "ordinal-e2e: fenced a replica and the primary under write load: {} acknowledged writes, none lost, no promotion",
        acks.ids.len()
    );
}
