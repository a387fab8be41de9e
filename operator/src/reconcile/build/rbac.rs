//! The pods' identity: a ServiceAccount whose Role lets `ordinal-init` read
//! its own PostgresCluster (to learn who the primary is) and nothing else.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use ordinal_crds::names;

use super::child_meta;
use crate::reconcile::validate::ValidCluster;

pub fn build_service_account(cluster: &ValidCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(cluster, &cluster.name),
        ..ServiceAccount::default()
    }
}

pub fn build_role(cluster: &ValidCluster) -> Role {
    Role {
        metadata: child_meta(cluster, &cluster.name),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![names::GROUP.to_owned()]),
            resources: Some(vec!["postgresclusters".to_owned()]),
            resource_names: Some(vec![cluster.name.clone()]),
            verbs: vec!["get".to_owned()],
            ..PolicyRule::default()
        }]),
    }
}

pub fn build_role_binding(cluster: &ValidCluster) -> RoleBinding {
    RoleBinding {
        metadata: child_meta(cluster, &cluster.name),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: cluster.name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: cluster.name.clone(),
            namespace: Some(cluster.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cluster, valid};

    #[test]
    fn pods_may_only_get_their_own_cluster() {
        let role = build_role(&valid(cluster().build()));
        let rules = role.rules.expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].api_groups, Some(vec!["ordinal.dev".to_owned()]));
        assert_eq!(
            rules[0].resources,
            Some(vec!["postgresclusters".to_owned()])
        );
        assert_eq!(rules[0].resource_names, Some(vec!["db".to_owned()]));
        assert_eq!(rules[0].verbs, ["get"]);
    }

    #[test]
    fn binding_ties_the_service_account_to_the_role() {
        let c = valid(cluster().build());
        let binding = build_role_binding(&c);
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(binding.role_ref.name, "db");
        let subject = &binding.subjects.expect("subjects")[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("ServiceAccount", "db")
        );
        assert_eq!(subject.namespace.as_deref(), Some("ns"));
        assert_eq!(
            build_service_account(&c).metadata.name.as_deref(),
            Some("db")
        );
    }
}
