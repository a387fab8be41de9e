//! The NetworkPolicies of `spec.networkPolicy`: `<name>` over the instances
//! and, with a pooler, `<name>-pooler` over PgBouncer's pods. Ingress only:
//! PostgreSQL's port takes the cluster's instances (replication, clone,
//! rewind), its backup Jobs, its pooler and the operator (probes,
//! promotion), plus the clients the spec names (by default every pod of
//! the namespace); the health port, which serves only `/livez` and
//! `/readyz`, is open. Traffic from the pod's own node (the kubelet's
//! probes) is always allowed by NetworkPolicy's definition.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ordinal_crds::names;

use super::child_meta;
use super::pooler::pooler_selector;
use super::selector_labels;
use crate::reconcile::validate::ValidCluster;

/// The label the operator's pods carry (deploy/operator/deployment.yaml).
pub const OPERATOR_APP_NAME: &str = "ordinal-operator";

fn pods(labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        end_port: None,
    }
}

/// The clients of `spec.networkPolicy.clients`: every pod of the
/// namespace when unset.
fn clients(cluster: &ValidCluster) -> Vec<NetworkPolicyPeer> {
    cluster
        .spec
        .network_policy
        .clients
        .clone()
        .unwrap_or_else(|| vec![pods(BTreeMap::new())])
}

/// The operator's pods, in `namespace` (where it runs; None when it runs
/// outside the cluster, as a node process, which NetworkPolicy lets in).
fn operator(namespace: Option<&str>) -> Option<NetworkPolicyPeer> {
    let namespace = namespace?;
    Some(NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                namespace.to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                names::LABEL_APP_NAME.to_owned(),
                OPERATOR_APP_NAME.to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        ip_block: None,
    })
}

fn policy(
    cluster: &ValidCluster,
    name: String,
    selected: BTreeMap<String, String>,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: child_meta(cluster, name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selected),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

/// `<name>`, over the instances.
pub fn build_network_policy(
    cluster: &ValidCluster,
    operator_namespace: Option<&str>,
) -> NetworkPolicy {
    let mut own = vec![
        pods(selector_labels(&cluster.name)),
        pods(BTreeMap::from([(
            names::LABEL_BACKUP_OF.to_owned(),
            cluster.name.clone(),
        )])),
        pods(pooler_selector(&cluster.name)),
    ];
    own.extend(operator(operator_namespace));
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(own),
        ports: Some(vec![tcp(names::POSTGRES_PORT)]),
    }];
    let clients = clients(cluster);
    if !clients.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(clients),
            ports: Some(vec![tcp(names::POSTGRES_PORT)]),
        });
    }
    ingress.push(NetworkPolicyIngressRule {
        from: None,
        ports: Some(vec![tcp(names::HEALTH_PORT)]),
    });
    policy(
        cluster,
        cluster.name.clone(),
        selector_labels(&cluster.name),
        ingress,
    )
}

/// `<name>-pooler`, over PgBouncer's pods: the clients only.
pub fn build_pooler_network_policy(cluster: &ValidCluster) -> NetworkPolicy {
    let clients = clients(cluster);
    let ingress = if clients.is_empty() {
        vec![]
    } else {
        vec![NetworkPolicyIngressRule {
            from: Some(clients),
            ports: Some(vec![tcp(names::POSTGRES_PORT)]),
        }]
    };
    policy(
        cluster,
        names::pooler(&cluster.name),
        pooler_selector(&cluster.name),
        ingress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cluster, valid};

    fn from(rule: &NetworkPolicyIngressRule) -> Vec<BTreeMap<String, String>> {
        rule.from
            .iter()
            .flatten()
            .map(|p| {
                let mut labels = p
                    .pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone())
                    .unwrap_or_default();
                if let Some(ns) = p
                    .namespace_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone())
                {
                    labels.extend(ns);
                }
                labels
            })
            .collect()
    }

    #[test]
    fn the_instances_take_their_own_the_operator_and_the_namespace() {
        let policy = build_network_policy(&valid(cluster().build()), Some("ordinal-system"));
        assert_eq!(policy.metadata.name.as_deref(), Some("db"));
        let spec = policy.spec.expect("spec");
        assert_eq!(
            spec.pod_selector.expect("selector").match_labels,
            Some(selector_labels("db"))
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        assert!(spec.egress.is_none());
        let ingress = spec.ingress.expect("ingress");
        assert_eq!(ingress.len(), 3);
        let own = from(&ingress[0]);
        assert_eq!(own[0], selector_labels("db"));
        assert_eq!(own[1]["ordinal.dev/backup-of"], "db");
        assert_eq!(own[2]["ordinal.dev/pooler"], "db");
        assert_eq!(own[3]["app.kubernetes.io/name"], "ordinal-operator");
        assert_eq!(own[3]["kubernetes.io/metadata.name"], "ordinal-system");
        // The namespace's pods, by default.
        assert_eq!(from(&ingress[1]), vec![BTreeMap::new()]);
        assert_eq!(
            ingress[1].ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(5432))
        );
        // Health, open.
        assert!(ingress[2].from.is_none());
        assert_eq!(
            ingress[2].ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(8008))
        );
    }

    #[test]
    fn named_clients_replace_the_namespace_and_none_means_none() {
        let mut pgc = cluster().build();
        pgc.spec.network_policy.clients = Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("team".to_owned(), "a".to_owned())])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]);
        let cluster_a = valid(pgc.clone());
        let ingress = build_network_policy(&cluster_a, None)
            .spec
            .expect("spec")
            .ingress
            .expect("ingress");
        assert_eq!(
            from(&ingress[0]).len(),
            3,
            "no operator peer outside the cluster"
        );
        assert_eq!(from(&ingress[1])[0]["team"], "a");
        let pooler = build_pooler_network_policy(&cluster_a).spec.expect("spec");
        assert_eq!(
            pooler.pod_selector.expect("selector").match_labels,
            Some(pooler_selector("db"))
        );
        assert_eq!(from(&pooler.ingress.expect("ingress")[0])[0]["team"], "a");

        pgc.spec.network_policy.clients = Some(vec![]);
        let closed = valid(pgc);
        let ingress = build_network_policy(&closed, None)
            .spec
            .expect("spec")
            .ingress
            .expect("ingress");
        assert_eq!(ingress.len(), 2, "own pods and health only");
        assert!(
            build_pooler_network_policy(&closed)
                .spec
                .expect("spec")
                .ingress
                .expect("ingress")
                .is_empty()
        );
    }
}
