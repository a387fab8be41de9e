//! The headless Service (stable pod DNS) and the `-rw` / `-ro` Services.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ordinal_crds::names;

use super::{child_meta, selector_labels};
use crate::reconcile::validate::ValidCluster;

fn postgres_port() -> ServicePort {
    ServicePort {
        name: Some(names::POSTGRES_PORT_NAME.to_owned()),
        port: names::POSTGRES_PORT,
        target_port: Some(IntOrString::String(names::POSTGRES_PORT_NAME.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// Governs the StatefulSet: `db-0.db-headless.ns.svc` resolves before the pod
/// is Ready (publishNotReadyAddresses), so replicas can clone from a primary
/// that is not Ready yet.
pub fn build_headless_service(cluster: &ValidCluster) -> Service {
    Service {
        metadata: child_meta(cluster, &cluster.service_name),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&cluster.name)),
            ports: Some(vec![postgres_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn role_service(
    cluster: &ValidCluster,
    name: String,
    role: &str,
    publish_not_ready: bool,
) -> Service {
    let mut selector = selector_labels(&cluster.name);
    selector.insert(names::LABEL_ROLE.to_owned(), role.to_owned());
    Service {
        metadata: child_meta(cluster, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            publish_not_ready_addresses: publish_not_ready.then_some(true),
            selector: Some(selector),
            ports: Some(vec![postgres_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Read-write: the pod labelled primary by the operator, whether Ready or
/// not. The label alone routes: the operator removes it before it fences
/// the pod and promotes another, and gives it only to a promoted pod.
/// Readiness would add nothing but its delay — a primary restarted in
/// place after a crash serves again as soon as its postgres listens, not a
/// readiness probe and an endpoint update later; and clients of a primary
/// that is down get the same refusal either way.
pub fn build_rw_service(cluster: &ValidCluster) -> Service {
    role_service(
        cluster,
        names::rw_service(&cluster.name),
        names::ROLE_PRIMARY,
        true,
    )
}

/// Read-only: the pods labelled replica by the operator, once Ready (a
/// replica is Ready when it streams and is not too far behind).
pub fn build_ro_service(cluster: &ValidCluster) -> Service {
    role_service(
        cluster,
        names::ro_service(&cluster.name),
        names::ROLE_REPLICA,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cluster, valid};

    #[test]
    fn headless_service_publishes_not_ready_pods() {
        let svc = build_headless_service(&valid(cluster().build()));
        assert_eq!(svc.metadata.name.as_deref(), Some("db-headless"));
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector, Some(selector_labels("db")));
        assert_eq!(spec.ports.expect("ports")[0].port, 5432);
    }

    #[test]
    fn custom_service_name_is_used() {
        let svc = build_headless_service(&valid(cluster().service_name("pods").build()));
        assert_eq!(svc.metadata.name.as_deref(), Some("pods"));
    }

    #[test]
    fn rw_and_ro_select_by_role() {
        let c = valid(cluster().build());
        let rw = build_rw_service(&c);
        let ro = build_ro_service(&c);
        assert_eq!(rw.metadata.name.as_deref(), Some("db-rw"));
        assert_eq!(ro.metadata.name.as_deref(), Some("db-ro"));
        let role = |s: Service| {
            s.spec
                .and_then(|s| s.selector)
                .and_then(|s| s.get(names::LABEL_ROLE).cloned())
        };
        let not_ready = |s: &Service| s.spec.as_ref().and_then(|s| s.publish_not_ready_addresses);
        assert_eq!(
            not_ready(&rw),
            Some(true),
            "db-rw routes by the label alone"
        );
        assert_eq!(not_ready(&ro), None, "db-ro routes to Ready replicas only");
        assert_eq!(role(rw).as_deref(), Some("primary"));
        assert_eq!(role(ro).as_deref(), Some("replica"));
    }

    #[test]
    fn services_are_owned_and_labelled() {
        let svc = build_rw_service(&valid(cluster().build()));
        let owners = svc.metadata.owner_references.expect("owners");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "PostgresCluster");
        assert_eq!(owners[0].controller, Some(true));
        let labels = svc.metadata.labels.expect("labels");
        assert_eq!(labels["app.kubernetes.io/name"], "postgresql");
        assert_eq!(labels["app.kubernetes.io/instance"], "db");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "ordinal");
        assert_eq!(labels["ordinal.dev/cluster"], "db");
    }
}
