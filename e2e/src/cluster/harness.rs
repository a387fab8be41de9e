//! The [`Harness`] guard: the test's namespace, from creation to deletion,
//! and access to its objects.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, Resource, ResourceExt};
use ordinal_crds::{PostgresCluster, PostgresClusterSpec, PostgresClusterStatus, names};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::dump::dump;
use super::operator::OperatorLease;
use super::{Config, FIELD_MANAGER, NAMESPACE_LABEL, OperatorMode, error_text};

/// One test's access to the cluster: its namespace, the client, the waits.
/// Dropping it cleans up (and dumps the namespace when the test failed).
pub struct Harness {
    pub client: Client,
    pub namespace: String,
    pub config: Config,
    /// Released after `Drop::drop` (fields drop after it): the dump still
    /// reads the log of the running operator.
    pub(super) operator: Option<OperatorLease>,
    pub(super) network_checked: AtomicBool,
    /// Cluster-scoped objects the test made (a StorageClass, a
    /// PersistentVolume): deleted with the namespace.
    cluster_scoped: std::sync::Mutex<Vec<(ApiResource, String)>>,
}

/// `ordinal-e2e-` and six random lowercase letters and digits.
fn namespace_name() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..6)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("ordinal-e2e-{suffix}")
}

/// A label value from a test name: at most 63 characters of `[a-z0-9_.-]`,
/// starting and ending with an alphanumeric character.
fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

impl Harness {
    /// Connects, checks the cluster is ready for the suite (CRD installed,
    /// operator running or spawned) and creates the test's namespace.
    pub async fn new(test: &str) -> Self {
        crate::init_logs();
        let handle = tokio::runtime::Handle::current();
        assert_eq!(
            handle.runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread,
            "cluster tests need #[tokio::test(flavor = \"multi_thread\")]: the harness cleans up in Drop with block_in_place"
        );
        let config = Config::from_env();
        let client = Client::try_default().await.unwrap_or_else(|e| {
            panic!("no Kubernetes cluster to test against (KUBECONFIG or the current context): {e}")
        });

        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd_name = format!("postgresclusters.{}", names::GROUP);
        match crds.get_opt(&crd_name).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!(
                "the CRD {crd_name} is not installed: kubectl apply -f deploy/crds/ (from the repository root)"
            ),
            Err(e) => panic!("cannot read the CRD {crd_name}: {}", error_text(&e)),
        }

        let operator = match config.operator {
            OperatorMode::External => None,
            OperatorMode::Spawn => {
                let others: Api<Pod> = Api::all(client.clone());
                if let Ok(list) = others
                    .list(&ListParams::default().labels("app.kubernetes.io/name=ordinal-operator"))
                    .await
                {
                    let running: Vec<String> = list
                        .items
                        .iter()
                        .filter(|p| {
                            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                        })
                        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                        .collect();
                    assert!(
                        running.is_empty(),
                        "an operator already runs in the cluster ({}): set ORDINAL_E2E_OPERATOR=external, \
                         or remove it — two operators would fight over the test clusters",
                        running.join(", ")
                    );
                }
                let lease = OperatorLease::acquire(&config);
                lease.wait_ready().await;
                Some(lease)
            }
        };

        let namespace = namespace_name();
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some(BTreeMap::from([
                    (NAMESPACE_LABEL.to_owned(), "true".to_owned()),
                    ("ordinal.dev/e2e-test".to_owned(), label_value(test)),
                    (
                        "app.kubernetes.io/created-by".to_owned(),
                        "ordinal-e2e".to_owned(),
                    ),
                    // The pods claim to pass the restricted standard.
                    (
                        "pod-security.kubernetes.io/enforce".to_owned(),
                        "restricted".to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {namespace}: {}", error_text(&e)));
        eprintln!(
            "ordinal-e2e: {test} runs in namespace {namespace} (operator: {:?}, postgres image {}, timeout {}s)",
            config.operator,
            config.postgres_image,
            config.timeout.as_secs()
        );
        Self {
            client,
            namespace,
            config,
            operator,
            network_checked: AtomicBool::new(false),
            cluster_scoped: std::sync::Mutex::default(),
        }
    }

    /// Creates the cluster-scoped object `obj`, deleted when the test ends.
    pub async fn create_cluster_scoped<K>(&self, obj: &K) -> K
    where
        K: Resource<Scope = ClusterResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
        <K as Resource>::DynamicType: Default,
    {
        let name = obj.name_any();
        if let Ok(mut made) = self.cluster_scoped.lock() {
            made.push((ApiResource::erase::<K>(&Default::default()), name.clone()));
        }
        Api::<K>::all(self.client.clone())
            .create(&PostParams::default(), obj)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "creating {} {name}: {}",
                    K::kind(&Default::default()),
                    error_text(&e)
                )
            })
    }

    /// The API of a namespaced kind in the test's namespace.
    /// The operator's `/metrics` pages: the spawned one's, or those of
    /// every pod of the one running in the cluster (only the leader's
    /// carry cluster series), read at the pods' addresses.
    pub async fn operator_metrics(&self) -> String {
        if let Some(operator) = &self.operator {
            return operator.metrics().await.unwrap_or_default();
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "ordinal-system");
        let Ok(list) = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=ordinal-operator"))
            .await
        else {
            return String::new();
        };
        let mut text = String::new();
        for pod in list.items {
            let Some(ip) = pod
                .status
                .and_then(|s| s.pod_ip)
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            else {
                continue;
            };
            let addr = std::net::SocketAddr::new(ip, 8080);
            text.push_str(
                &super::operator::http_get_body(addr, "/metrics")
                    .await
                    .unwrap_or_default(),
            );
        }
        text
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn clusters(&self) -> Api<PostgresCluster> {
        self.api()
    }

    pub fn pods(&self) -> Api<Pod> {
        self.api()
    }

    /// A spec like deploy/examples/cluster.yaml: `replicas` instances of the
    /// configured image, 1Gi volumes of the configured StorageClass.
    pub fn spec(&self, replicas: i32) -> PostgresClusterSpec {
        let mut storage = json!({ "size": "1Gi" });
        if let Some(class) = &self.config.storage_class {
            storage["storageClassName"] = json!(class);
        }
        serde_json::from_value(json!({
            "replicas": replicas,
            "image": self.config.postgres_image,
            "storage": storage,
        }))
        .expect("a PostgresCluster spec")
    }

    /// Server-side applies the PostgresCluster `name` with `spec`.
    pub async fn try_apply(
        &self,
        name: &str,
        spec: &PostgresClusterSpec,
    ) -> Result<PostgresCluster, kube::Error> {
        let pgc = PostgresCluster::new(name, spec.clone());
        self.clusters()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&pgc),
            )
            .await
    }

    pub async fn apply(&self, name: &str, spec: &PostgresClusterSpec) -> PostgresCluster {
        self.try_apply(name, spec)
            .await
            .unwrap_or_else(|e| panic!("applying PostgresCluster {name}: {}", error_text(&e)))
    }

    pub async fn cluster(&self, name: &str) -> PostgresCluster {
        self.clusters()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading PostgresCluster {name}: {}", error_text(&e)))
    }

    pub async fn status(&self, name: &str) -> PostgresClusterStatus {
        self.cluster(name).await.status.unwrap_or_default()
    }

    /// The status, or why it cannot be read (for use inside waits).
    pub async fn try_status(&self, name: &str) -> Result<PostgresClusterStatus, String> {
        self.clusters()
            .get(name)
            .await
            .map(|c| c.status.unwrap_or_default())
            .map_err(|e| format!("reading PostgresCluster {name}: {}", error_text(&e)))
    }

    /// The pods of cluster `cluster` (by the `ordinal.dev/cluster` label).
    pub async fn cluster_pods(&self, cluster: &str) -> Result<Vec<Pod>, String> {
        self.pods()
            .list(&ListParams::default().labels(&format!("{}={cluster}", names::LABEL_CLUSTER)))
            .await
            .map(|l| l.items)
            .map_err(|e| error_text(&e))
    }

    /// Deletes pod `pod` (default grace period: a planned stop).
    pub async fn delete_pod(&self, pod: &str) {
        self.pods()
            .delete(pod, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting pod {pod}: {}", error_text(&e)));
    }

    /// Deletes pod `pod` at once (`kubectl delete pod --grace-period=0
    /// --force`): the pod object goes, whatever its containers do.
    pub async fn force_delete_pod(&self, pod: &str) {
        self.pods()
            .delete(pod, &DeleteParams::default().grace_period(0))
            .await
            .unwrap_or_else(|e| panic!("force-deleting pod {pod}: {}", error_text(&e)));
    }

    /// The StatefulSet of cluster `cluster`.
    pub async fn statefulset(&self, cluster: &str) -> Result<StatefulSet, String> {
        self.api::<StatefulSet>()
            .get(cluster)
            .await
            .map_err(|e| error_text(&e))
    }

    /// Whether the namespaced object `name` of kind `K` exists (and is not
    /// being deleted).
    pub async fn exists<K>(&self, name: &str) -> Result<bool, String>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        <K as Resource>::DynamicType: Default,
    {
        match self.api::<K>().get_opt(name).await {
            Ok(Some(obj)) => Ok(obj.meta().deletion_timestamp.is_none()),
            Ok(None) => Ok(false),
            Err(e) => Err(error_text(&e)),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            eprintln!(
                "ordinal-e2e: no tokio runtime to clean up namespace {}: delete it by hand",
                self.namespace
            );
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            eprintln!(
                "ordinal-e2e: not a multi-thread runtime, cannot clean up namespace {}: delete it by hand",
                self.namespace
            );
            return;
        }
        let client = self.client.clone();
        let namespace = self.namespace.clone();
        let keep = self.config.keep;
        let log = self.operator.as_ref().map(|o| o.log.clone());
        let cluster_scoped = self
            .cluster_scoped
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default();
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                if failed {
                    let dumped = tokio::time::timeout(
                        Duration::from_secs(180),
                        dump(&client, &namespace, log.as_deref()),
                    )
                    .await;
                    if dumped.is_err() {
                        eprintln!("ordinal-e2e: the dump of {namespace} took over 180s: cut short");
                    }
                }
                if failed && keep {
                    eprintln!(
                        "ordinal-e2e: ORDINAL_E2E_KEEP=1: namespace {namespace} is kept \
                         (kubectl delete namespace {namespace} when done)"
                    );
                    return;
                }
                for (resource, name) in cluster_scoped {
                    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
                    match tokio::time::timeout(
                        Duration::from_secs(30),
                        api.delete(&name, &DeleteParams::background()),
                    )
                    .await
                    {
                        Ok(Ok(_)) | Ok(Err(kube::Error::Api(_))) => {}
                        Ok(Err(e)) => eprintln!(
                            "ordinal-e2e: cannot delete {} {name}: {}",
                            resource.kind,
                            error_text(&e)
                        ),
                        Err(_) => {
                            eprintln!("ordinal-e2e: deleting {} {name} timed out", resource.kind)
                        }
                    }
                }
                let namespaces: Api<Namespace> = Api::all(client);
                match tokio::time::timeout(
                    Duration::from_secs(30),
                    namespaces.delete(&namespace, &DeleteParams::background()),
                )
                .await
                {
                    Ok(Ok(_)) => eprintln!("ordinal-e2e: deleting namespace {namespace}"),
                    Ok(Err(e)) => eprintln!(
                        "ordinal-e2e: cannot delete namespace {namespace}: {}",
                        error_text(&e)
                    ),
                    Err(_) => eprintln!("ordinal-e2e: deleting namespace {namespace} timed out"),
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("a_test::name"), "a_test--name");
        assert_eq!(label_value("--x--"), "x");
        assert!(label_value(&"a".repeat(100)).len() <= 63);
    }

    #[test]
    fn namespaces_are_dns_labels() {
        let ns = namespace_name();
        assert!(ns.starts_with("ordinal-e2e-"));
        assert_eq!(ns.len(), "ordinal-e2e-".len() + 6);
        assert!(
            ns.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }
}
