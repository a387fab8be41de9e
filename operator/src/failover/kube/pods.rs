//! One watch of every pod Ordinal runs, shared by the controller and every
//! failover loop. A watch per cluster cost the operator an HTTP connection
//! to the API server per cluster (its buffers, its TLS state, its task):
//! at 10 clusters of 3 that was a quarter of the idle heap, and it grew
//! with every cluster. The shared cache holds each pod once, slimmed to
//! what is read of it. The nodes are watched beside them: whether the
//! primary's node is Ready was a GET of the whole Node every other second
//! per cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::{Node, NodeStatus, Pod, PodSpec};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use ordinal_crds::{PostgresCluster, names};
use tokio::sync::Notify;

use super::{DeletedPods, Stops, watch_for_stop};

/// What one cluster's failover loop is told of its pods: that something
/// changed, which pods were deleted (their last state), and the addresses
/// of deleted primaries watched for their postmaster to stop.
#[derive(Default)]
pub struct PodFeed {
    pub(super) changed: Notify,
    pub(super) deleted: DeletedPods,
    pub(super) stops: Stops,
}

impl Drop for PodFeed {
    fn drop(&mut self) {
        for (_, task, _) in self
            .stops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            task.abort();
        }
    }
}

impl PodFeed {
    /// Takes in one event of the cluster's pods.
    pub(super) fn on_event(&self, event: &watcher::Event<Pod>) {
        match event {
            // The primary's pod is being deleted: watch its address for
            // its postmaster to stop, from this moment on.
            watcher::Event::Apply(pod) => {
                if pod.metadata.deletion_timestamp.is_some()
                    && is_primary(pod)
                    && let Some(ip) = pod_ip(pod)
                {
                    watch_for_stop(&self.stops, ip);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.uid() {
                    let mut deleted = self.deleted.lock().unwrap_or_else(PoisonError::into_inner);
                    deleted.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(600));
                    deleted.insert(uid, (Arc::new(pod.clone()), Instant::now()));
                }
                // Or gone at once (a force delete): from the moment it is
                // recorded gone on (the fence compares the two).
                if is_primary(pod)
                    && let Some(ip) = pod_ip(pod)
                {
                    watch_for_stop(&self.stops, ip);
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => {}
        }
        self.changed.notify_one();
    }
}

fn is_primary(pod: &Pod) -> bool {
    pod.labels().get(names::LABEL_ROLE).map(String::as_str) == Some(names::ROLE_PRIMARY)
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.pod_ip.as_deref()
}

/// The feeds of the clusters whose loops run, by namespace and name.
type Feeds = Arc<Mutex<HashMap<(String, String), Weak<PodFeed>>>>;

/// The shared watch: a cache of every pod labelled with a cluster, and the
/// feeds of the running failover loops.
pub struct PodWatch {
    store: Store<Pod>,
    nodes: Store<Node>,
    feeds: Feeds,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl PodWatch {
    /// Watches every pod labelled `ordinal.dev/cluster`, in every namespace.
    /// Each event goes to its cluster's feed, if its loop runs, and to
    /// `triggers` as its cluster (the controller reconciles it: a recreated
    /// pod needs its role label at once).
    pub fn start(
        client: Client,
        triggers: Option<UnboundedSender<ObjectRef<PostgresCluster>>>,
    ) -> Self {
        let (store, writer) = reflector::store();
        let feeds = Feeds::default();
        let routed = Arc::clone(&feeds);
        let api: Api<Pod> = Api::all(client.clone());
        let config = watcher::Config::default().labels(names::LABEL_CLUSTER);
        let pods = tokio::spawn(async move {
            let pods = watcher(api, config).modify(slim);
            let stream = reflector::reflector(writer, pods).default_backoff();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                route(&routed, &event, triggers.as_ref());
            }
        });
        let (nodes, writer) = reflector::store();
        let api: Api<Node> = Api::all(client);
        let watching = tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default())
                .modify(slim_node)
                .default_backoff()
                .reflect(writer);
            futures::pin_mut!(stream);
            while stream.next().await.is_some() {}
        });
        Self {
            store,
            nodes,
            feeds,
            tasks: [pods, watching],
        }
    }

    /// The cache of nodes.
    pub fn nodes(&self) -> Store<Node> {
        self.nodes.clone()
    }

    /// The cache of pods (ready once the watch has listed them).
    pub fn store(&self) -> Store<Pod> {
        self.store.clone()
    }

    /// The feed of `namespace/cluster`: the one its loop holds, or a new one.
    pub fn feed(&self, namespace: &str, cluster: &str) -> Arc<PodFeed> {
        let mut feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        feeds.retain(|_, feed| feed.strong_count() > 0);
        let key = (namespace.to_owned(), cluster.to_owned());
        if let Some(feed) = feeds.get(&key).and_then(Weak::upgrade) {
            return feed;
        }
        let feed = Arc::new(PodFeed::default());
        feeds.insert(key, Arc::downgrade(&feed));
        feed
    }
}

/// Sends one event to its cluster's feed and trigger. A relist (InitDone)
/// may have changed any pod: every feed hears of it.
fn route(
    feeds: &Feeds,
    event: &watcher::Event<Pod>,
    triggers: Option<&UnboundedSender<ObjectRef<PostgresCluster>>>,
) {
    let pod = match event {
        watcher::Event::Apply(pod)
        | watcher::Event::Delete(pod)
        | watcher::Event::InitApply(pod) => pod,
        watcher::Event::InitDone => {
            let feeds: Vec<Arc<PodFeed>> = feeds
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .filter_map(Weak::upgrade)
                .collect();
            for feed in feeds {
                feed.on_event(event);
            }
            return;
        }
        watcher::Event::Init => return,
    };
    let (Some(namespace), Some(cluster)) =
        (pod.namespace(), pod.labels().get(names::LABEL_CLUSTER))
    else {
        return;
    };
    if let Some(triggers) = triggers {
        let _ = triggers.unbounded_send(ObjectRef::new(cluster).within(&namespace));
    }
    if matches!(event, watcher::Event::InitApply(_)) {
        return;
    }
    let feed = feeds
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&(namespace, cluster.clone()))
        .and_then(Weak::upgrade);
    if let Some(feed) = feed {
        feed.on_event(event);
    }
}

/// What is kept of a pod: its metadata without managedFields, its status,
/// and of its spec the node it runs on. The containers' specs (commands,
/// environment, probes, mounts) are most of a pod and nothing here reads
/// them from the cache.
fn slim(pod: &mut Pod) {
    crate::controller::forget_managed_fields(pod);
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    pod.spec = Some(PodSpec {
        node_name,
        ..PodSpec::default()
    });
}

/// What is kept of a node: its name and its conditions (a Node's status
/// also lists every image it holds, its addresses, its capacity...).
fn slim_node(node: &mut Node) {
    let conditions = node.status.as_mut().and_then(|s| s.conditions.take());
    node.metadata = kube::api::ObjectMeta {
        name: node.metadata.name.take(),
        resource_version: node.metadata.resource_version.take(),
        ..Default::default()
    };
    node.spec = None;
    node.status = Some(NodeStatus {
        conditions,
        ..NodeStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, cluster: &str, name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                "labels": {"ordinal.dev/cluster": cluster, "ordinal.dev/role": "primary"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "postgres", "image": "postgres:17"}]},
            "status": {"podIP": "198.19.255.254", "phase": "Running"},
        }))
        .unwrap()
    }

    #[test]
    fn a_cached_pod_keeps_its_node_labels_and_status_only() {
        let mut p = pod("ns", "db", "db-0");
        slim(&mut p);
        assert!(p.metadata.managed_fields.is_none());
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        assert!(spec.containers.is_empty());
        assert_eq!(p.labels()[names::LABEL_CLUSTER], "db");
        assert_eq!(pod_ip(&p), Some("198.19.255.254"));
    }

    #[test]
    fn a_cached_node_keeps_its_name_and_conditions_only() {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a", "labels": {"zone": "a"}},
            "status": {
                "conditions": [{"type": "Ready", "status": "False"}],
                "images": [{"names": ["postgres:17"], "sizeBytes": 1}],
            },
        }))
        .unwrap();
        slim_node(&mut node);
        assert_eq!(node.metadata.name.as_deref(), Some("node-a"));
        assert!(node.metadata.labels.is_none());
        let status = node.status.unwrap();
        assert!(status.images.is_none());
        assert_eq!(status.conditions.unwrap()[0].status, "False");
    }

    #[tokio::test]
    async fn events_reach_their_clusters_feed_and_trigger_and_no_other() {
        let feeds = Feeds::default();
        let db = Arc::new(PodFeed::default());
        let other = Arc::new(PodFeed::default());
        feeds
            .lock()
            .unwrap()
            .insert(("ns".into(), "db".into()), Arc::downgrade(&db));
        feeds
            .lock()
            .unwrap()
            .insert(("ns".into(), "other".into()), Arc::downgrade(&other));
        let (tx, mut rx) = futures::channel::mpsc::unbounded();

        route(
            &feeds,
            &watcher::Event::Delete(pod("ns", "db", "db-0")),
            Some(&tx),
        );

        assert!(db.deleted.lock().unwrap().contains_key("uid-db-0"));
        assert!(other.deleted.lock().unwrap().is_empty());
        // The deleted primary's address is watched for its stop.
        assert!(db.stops.lock().unwrap().contains_key("198.19.255.254"));
        tokio::time::timeout(Duration::from_secs(1), db.changed.notified())
            .await
            .unwrap();
        let trigger = rx.next().await.unwrap();
        assert_eq!(trigger.name, "db");
        assert_eq!(trigger.namespace.as_deref(), Some("ns"));

        // The same name in another namespace is another cluster.
        route(
            &feeds,
            &watcher::Event::Delete(pod("ns2", "db", "db-1")),
            None,
        );
        assert!(!db.deleted.lock().unwrap().contains_key("uid-db-1"));
    }

    #[tokio::test]
    async fn a_feed_lives_as_long_as_its_loop_holds_it() {
        let feeds = Feeds::default();
        let watch = PodWatch {
            store: reflector::store::<Pod>().0,
            nodes: reflector::store::<Node>().0,
            feeds: Arc::clone(&feeds),
            tasks: [tokio::spawn(async {}), tokio::spawn(async {})],
        };
        let a = watch.feed("ns", "db");
        let b = watch.feed("ns", "db");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        let c = watch.feed("ns", "db");
        assert_eq!(Arc::strong_count(&c), 1);
        assert_eq!(feeds.lock().unwrap().len(), 1);
    }
}
