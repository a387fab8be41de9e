//! Generated credentials: created once when missing, never overwritten and
//! never logged. The pods read them as mounted files.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ordinal_crds::names;
use rand::Rng;
use rand::distr::Alphanumeric;

use super::child_meta;
use crate::reconcile::validate::ValidCluster;

/// Length of generated passwords: 32 alphanumerics, about 190 bits.
const PASSWORD_LEN: usize = 32;

/// A random password from `rng`.
pub fn generate_password(rng: &mut impl Rng) -> String {
    rng.sample_iter(&Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// A `kubernetes.io/basic-auth` Secret named `name` for PostgreSQL role `username`.
///
/// Not owned by the cluster: the PVCs outlive a deleted cluster by default
/// (`pvcRetention.whenDeleted: Retain`), and a cluster recreated over them
/// must find the passwords its data was initialized with.
pub fn build_generated_secret(
    cluster: &ValidCluster,
    name: &str,
    username: &str,
    password: &str,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            owner_references: None,
            ..child_meta(cluster, name)
        },
        type_: Some("kubernetes.io/basic-auth".to_owned()),
        data: Some(BTreeMap::from([
            (
                names::SECRET_USERNAME_KEY.to_owned(),
                ByteString(username.as_bytes().to_vec()),
            ),
            (
                names::SECRET_PASSWORD_KEY.to_owned(),
                ByteString(password.as_bytes().to_vec()),
            ),
        ])),
        immutable: Some(true),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cluster, valid};

    #[test]
    fn passwords_are_random_and_long() {
        let mut rng = rand::rng();
        let a = generate_password(&mut rng);
        let b = generate_password(&mut rng);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn secret_has_basic_auth_layout() {
        let s = build_generated_secret(&valid(cluster().build()), "db-superuser", "postgres", "pw");
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        let data = s.data.expect("data");
        assert_eq!(data["username"].0, b"postgres");
        assert_eq!(data["password"].0, b"pw");
        assert_eq!(
            s.metadata.owner_references, None,
            "outlives the cluster, like its PVCs"
        );
        let labels = s.metadata.labels.expect("labels");
        assert_eq!(labels["ordinal.dev/cluster"], "db");
    }
}
