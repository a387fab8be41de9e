//! The failure dump: what `kubectl describe` and `kubectl logs` would show
//! of the test's namespace, printed when a test fails.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStatus, Event, PersistentVolumeClaim, Pod,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, LogParams};
use kube::{Api, Client, ResourceExt};
use ordinal_crds::{PostgresCluster, names};

use super::operator::tail_lines;
use super::{error_text, pod_revision};

fn ts(t: Option<&Timestamp>) -> String {
    t.map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn state_text(state: Option<&ContainerState>) -> String {
    let Some(state) = state else {
        return "unknown".to_owned();
    };
    if let Some(r) = &state.running {
        return format!("running since {}", ts(r.started_at.as_ref().map(|t| &t.0)));
    }
    if let Some(w) = &state.waiting {
        return format!(
            "waiting ({}): {}",
            w.reason.as_deref().unwrap_or("-"),
            w.message.as_deref().unwrap_or("")
        );
    }
    if let Some(t) = &state.terminated {
        return format!(
            "terminated ({}, exit {}{}) at {}: {}",
            t.reason.as_deref().unwrap_or("-"),
            t.exit_code,
            t.signal
                .map(|s| format!(", signal {s}"))
                .unwrap_or_default(),
            ts(t.finished_at.as_ref().map(|t| &t.0)),
            t.message.as_deref().unwrap_or("")
        );
    }
    "unknown".to_owned()
}

fn container_line(kind: &str, c: &ContainerStatus) -> String {
    let mut line = format!(
        "    {kind} {}: ready={} restarts={} image={} state={}",
        c.name,
        c.ready,
        c.restart_count,
        c.image,
        state_text(c.state.as_ref())
    );
    if c.last_state
        .as_ref()
        .is_some_and(|s| s.terminated.is_some())
    {
        line.push_str(&format!(
            "\n      last state: {}",
            state_text(c.last_state.as_ref())
        ));
    }
    line
}

pub(super) async fn dump(client: &Client, ns: &str, operator_log: Option<&Path>) {
    let clusters: Api<PostgresCluster> = Api::namespaced(client.clone(), ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    eprintln!("\n========== ordinal-e2e: the test failed; namespace {ns} ==========");

    eprintln!("\n---------- PostgresClusters ----------");
    match clusters.list(&ListParams::default()).await {
        Ok(list) if list.items.is_empty() => eprintln!("(none)"),
        Ok(list) => {
            for mut pgc in list.items {
                pgc.metadata.managed_fields = None;
                match serde_norway::to_string(&pgc) {
                    Ok(yaml) => eprintln!("{yaml}---"),
                    Err(e) => eprintln!("(cannot print {}: {e})", pgc.name_any()),
                }
            }
        }
        Err(e) => eprintln!("(cannot list PostgresClusters: {})", error_text(&e)),
    }

    eprintln!("\n---------- StatefulSets ----------");
    match statefulsets.list(&ListParams::default()).await {
        Ok(list) => {
            for sts in list.items {
                let spec = sts.spec.as_ref();
                let status = sts.status.as_ref();
                eprintln!(
                    "{}: replicas {:?}, ready {:?}, current {:?}, updated {:?}, currentRevision {:?}, updateRevision {:?}, generation {:?} (observed {:?})",
                    sts.name_any(),
                    spec.and_then(|s| s.replicas),
                    status.and_then(|s| s.ready_replicas),
                    status.and_then(|s| s.current_replicas),
                    status.and_then(|s| s.updated_replicas),
                    status.and_then(|s| s.current_revision.clone()),
                    status.and_then(|s| s.update_revision.clone()),
                    sts.metadata.generation,
                    status.and_then(|s| s.observed_generation),
                );
            }
        }
        Err(e) => eprintln!("(cannot list StatefulSets: {})", error_text(&e)),
    }

    eprintln!("\n---------- PersistentVolumeClaims ----------");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    match pvcs.list(&ListParams::default()).await {
        Ok(list) => {
            for pvc in list.items {
                eprintln!(
                    "{}: phase {:?}, volume {:?}, class {:?}, deleting {}",
                    pvc.name_any(),
                    pvc.status.as_ref().and_then(|s| s.phase.clone()),
                    pvc.spec.as_ref().and_then(|s| s.volume_name.clone()),
                    pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()),
                    pvc.metadata.deletion_timestamp.is_some()
                );
            }
        }
        Err(e) => eprintln!("(cannot list PVCs: {})", error_text(&e)),
    }

    eprintln!("\n---------- Pods ----------");
    let pod_list = match pods.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            eprintln!("(cannot list pods: {})", error_text(&e));
            Vec::new()
        }
    };
    for pod in &pod_list {
        let status = pod.status.as_ref();
        eprintln!(
            "pod {}: phase {}, node {}, ip {}, role {}, revision {}, uid {}, created {}{}",
            pod.name_any(),
            status.and_then(|s| s.phase.as_deref()).unwrap_or("-"),
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("-"),
            status.and_then(|s| s.pod_ip.as_deref()).unwrap_or("-"),
            pod.labels()
                .get(names::LABEL_ROLE)
                .map_or("-", String::as_str),
            pod_revision(pod).unwrap_or_else(|| "-".to_owned()),
            pod.metadata.uid.as_deref().unwrap_or("-"),
            ts(pod.metadata.creation_timestamp.as_ref().map(|t| &t.0)),
            pod.metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| format!(", deleting since {}", t.0))
                .unwrap_or_default(),
        );
        for c in status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
        {
            eprintln!(
                "    condition {}={} {} {}",
                c.type_,
                c.status,
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or("")
            );
        }
        for c in status
            .and_then(|s| s.init_container_statuses.as_ref())
            .into_iter()
            .flatten()
        {
            eprintln!("{}", container_line("init", c));
        }
        for c in status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
        {
            eprintln!("{}", container_line("container", c));
        }
    }

    eprintln!("\n---------- Events (oldest first) ----------");
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    match events.list(&ListParams::default()).await {
        Ok(list) => {
            let mut items = list.items;
            let when = |e: &Event| -> Option<Timestamp> {
                e.last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or_else(|| e.event_time.as_ref().map(|t| t.0))
                    .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
                    .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
            };
            items.sort_by_key(|e| when(e));
            for e in &items {
                eprintln!(
                    "{} {} {}/{} {}: {}{}",
                    ts(when(e).as_ref()),
                    e.type_.as_deref().unwrap_or("-"),
                    e.involved_object.kind.as_deref().unwrap_or("-"),
                    e.involved_object.name.as_deref().unwrap_or("-"),
                    e.reason.as_deref().unwrap_or("-"),
                    e.message.as_deref().unwrap_or(""),
                    e.count
                        .filter(|c| *c > 1)
                        .map(|c| format!(" (x{c})"))
                        .unwrap_or_default()
                );
            }
        }
        Err(e) => eprintln!("(cannot list Events: {})", error_text(&e)),
    }

    for pod in &pod_list {
        let name = pod.name_any();
        let spec = pod.spec.as_ref();
        let containers: Vec<String> = spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .chain(spec.map(|s| s.containers.iter()).into_iter().flatten())
            .map(|c| c.name.clone())
            .collect();
        for container in containers {
            let restarted = pod
                .status
                .as_ref()
                .and_then(|s| {
                    s.container_statuses
                        .iter()
                        .chain(s.init_container_statuses.iter())
                        .flatten()
                        .find(|c| c.name == container)
                })
                .is_some_and(|c| c.restart_count > 0);
            let mut runs = vec![(false, 100)];
            if restarted {
                runs.insert(0, (true, 50));
            }
            for (previous, lines) in runs {
                let params = LogParams {
                    container: Some(container.clone()),
                    tail_lines: Some(lines),
                    previous,
                    ..LogParams::default()
                };
                let which = if previous { " (previous instance)" } else { "" };
                eprintln!(
                    "\n---------- logs {name}/{container}{which}, last {lines} lines ----------"
                );
                match tokio::time::timeout(Duration::from_secs(20), pods.logs(&name, &params)).await
                {
                    Ok(Ok(text)) if text.is_empty() => eprintln!("(empty)"),
                    Ok(Ok(text)) => eprintln!("{}", text.trim_end()),
                    Ok(Err(e)) => eprintln!("(no logs: {})", error_text(&e)),
                    Err(_) => eprintln!("(reading the logs timed out)"),
                }
            }
        }
    }

    if let Some(path) = operator_log {
        eprintln!(
            "\n---------- spawned operator log {}, last 300 lines ----------",
            path.display()
        );
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in tail_lines(&text, 300) {
                    eprintln!("{line}");
                }
            }
            Err(e) => eprintln!("(cannot read it: {e})"),
        }
    } else {
        operator_pod_logs(client).await;
    }
    eprintln!("\n========== ordinal-e2e: end of the dump of {ns} ==========\n");
}

/// The end of the log of every operator pod in the cluster (an operator
/// installed with `kubectl apply -k deploy/`).
async fn operator_pod_logs(client: &Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = match pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=ordinal-operator"))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            eprintln!("\n(cannot list the operator's pods: {})", error_text(&e));
            return;
        }
    };
    for pod in list {
        let (name, ns) = (pod.name_any(), pod.namespace().unwrap_or_default());
        eprintln!("\n---------- operator log {ns}/{name}, last 300 lines ----------");
        let params = LogParams {
            tail_lines: Some(300),
            ..LogParams::default()
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match tokio::time::timeout(Duration::from_secs(20), api.logs(&name, &params)).await {
            Ok(Ok(text)) => eprintln!("{}", text.trim_end()),
            Ok(Err(e)) => eprintln!("(no logs: {})", error_text(&e)),
            Err(_) => eprintln!("(reading the logs timed out)"),
        }
    }
}
