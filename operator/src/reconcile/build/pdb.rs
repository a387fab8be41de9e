//! The PodDisruptionBudget: at most one voluntary disruption at a time by
//! default. A single-instance cluster gets none (it would block every drain).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{child_meta, selector_labels};
use crate::reconcile::validate::ValidCluster;

/// The PDB, or None when the cluster must not have one.
pub fn build_pdb(cluster: &ValidCluster) -> Option<PodDisruptionBudget> {
    let min_available = cluster.pdb_min_available?;
    Some(PodDisruptionBudget {
        metadata: child_meta(cluster, &cluster.name),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(min_available)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&cluster.name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cluster, valid};

    fn min_available(pdb: &PodDisruptionBudget) -> Option<IntOrString> {
        pdb.spec.as_ref().and_then(|s| s.min_available.clone())
    }

    #[test]
    fn defaults_to_replicas_minus_one() {
        let pdb = build_pdb(&valid(cluster().replicas(3).build())).expect("a PDB");
        assert_eq!(pdb.metadata.name.as_deref(), Some("db"));
        assert_eq!(min_available(&pdb), Some(IntOrString::Int(2)));
        let selector = pdb
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.match_labels);
        assert_eq!(selector, Some(selector_labels("db")));
    }

    #[test]
    fn honours_min_available() {
        let pdb = build_pdb(&valid(cluster().replicas(5).min_available(2).build())).expect("a PDB");
        assert_eq!(min_available(&pdb), Some(IntOrString::Int(2)));
    }

    #[test]
    fn none_for_a_single_instance() {
        assert!(build_pdb(&valid(cluster().replicas(1).build())).is_none());
    }
}
