//! Every write the reconciler makes: server-side apply under one field
//! manager (typed objects, forced, idempotent), Secrets created once, pods'
//! role labels, and the two status writers.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use ordinal_crds::{PostgresCluster, names};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;
use crate::reconcile::build::{self, build_generated_secret, generate_password};
use crate::reconcile::status::{PRIMARY_MANAGER, STATUS_MANAGER};
use crate::reconcile::validate::ValidCluster;

/// A namespaced Kubernetes object of a typed kind, as the reconciler reads,
/// applies and deletes them.
pub trait Namespaced:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + k8s_openapi::Resource
    + DeserializeOwned
    + Clone
    + Debug
{
}

impl<K> Namespaced for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + DeserializeOwned
        + Clone
        + Debug
{
}

/// Server-side applies `obj` (named and namespaced) under the field manager.
pub async fn apply<K: Namespaced + Serialize>(client: &Client, obj: &K) -> Result<K, Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    api.patch(
        &name,
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: <K as k8s_openapi::Resource>::KIND,
        namespace,
        name,
        source,
    })
}

/// Creates the generated Secrets that do not exist yet. An existing Secret
/// is never read beyond its existence and never overwritten; passwords are
/// never logged. A Secret the user named must exist.
pub async fn ensure_secrets(client: &Client, cluster: &ValidCluster) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cluster.namespace);
    let wanted = [
        (
            &cluster.superuser_secret,
            cluster.spec.superuser_secret.is_some(),
            "superuserSecret",
            names::SUPERUSER_NAME,
        ),
        (
            &cluster.replication_secret,
            cluster.spec.replication_secret.is_some(),
            "replicationSecret",
            names::REPLICATION_USER_NAME,
        ),
    ];
    for (secret, user_named, field, username) in wanted {
        let existing = api
            .get_metadata_opt(secret)
            .await
            .map_err(|source| Error::Get {
                kind: "Secret",
                namespace: cluster.namespace.clone(),
                name: secret.clone(),
                source,
            })?;
        if existing.is_some() {
            continue;
        }
        if user_named {
            return Err(Error::MissingSecret {
                namespace: cluster.namespace.clone(),
                name: cluster.name.clone(),
                field,
                secret: secret.clone(),
            });
        }
        let password = generate_password(&mut rand::rng());
        let obj = build_generated_secret(cluster, secret, username, &password);
        if create_secret(&api, cluster, &obj).await? {
            tracing::info!(secret = %secret, "generated credentials");
        }
    }
    if let Some(archive) = build::backup::archive(cluster) {
        ensure_store_secret(&api, cluster, &archive, "backup.credentialsSecret").await?;
    }
    if let Some(source) = build::backup::recovery_source(cluster) {
        ensure_store_secret(
            &api,
            cluster,
            &source,
            "bootstrap.recovery.source.credentialsSecret",
        )
        .await?;
    }
    Ok(())
}

/// The instances' NetworkPolicy while `spec.networkPolicy.enabled`; one
/// left from before is deleted when it is off (one read when there is none).
async fn apply_network_policy(
    client: &Client,
    cluster: &ValidCluster,
    config: &build::BuildConfig,
) -> Result<(), Error> {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    if cluster.spec.network_policy.enabled {
        apply(
            client,
            &build::network_policy::build_network_policy(
                cluster,
                config.operator_namespace.as_deref(),
            ),
        )
        .await?;
        return Ok(());
    }
    if owned::<NetworkPolicy>(client, cluster, &cluster.name).await? == Some(true) {
        delete_named::<NetworkPolicy>(client, cluster, &names::pooler(&cluster.name)).await?;
        delete_named::<NetworkPolicy>(client, cluster, &cluster.name).await?;
    }
    Ok(())
}

/// The password of PgBouncer's `auth_user`, from its generated Secret
/// (made on first use; the failover loop gives the role this password).
async fn ensure_pooler_auth(client: &Client, cluster: &ValidCluster) -> Result<String, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cluster.namespace);
    let name = names::pooler_auth_secret(&cluster.name);
    let read = |found: Option<Secret>| {
        found
            .as_ref()
            .and_then(|s| ordinal_crds::secret_text(s, names::SECRET_PASSWORD_KEY))
    };
    let get = || async {
        api.get_opt(&name).await.map_err(|source| Error::Get {
            kind: "Secret",
            namespace: cluster.namespace.clone(),
            name: name.clone(),
            source,
        })
    };
    if let Some(password) = read(get().await?) {
        return Ok(password);
    }
    let password = generate_password(&mut rand::rng());
    let secret = build::pooler::build_pooler_auth_secret(cluster, &password);
    if create_secret(&api, cluster, &secret).await? {
        return Ok(password);
    }
    // Made by a concurrent reconcile (or one without the key, which is
    // said): use theirs.
    read(get().await?).ok_or_else(|| Error::MissingSecretKeys {
        namespace: cluster.namespace.clone(),
        name: cluster.name.clone(),
        field: "pooler",
        secret: name.clone(),
        store: "pooler",
        keys: names::SECRET_PASSWORD_KEY.to_owned(),
    })
}

/// Creates `secret`, made by the operator once and never overwritten:
/// false when it exists already (a concurrent reconcile made it), whose
/// Secret is kept.
async fn create_secret(
    api: &Api<Secret>,
    cluster: &ValidCluster,
    secret: &Secret,
) -> Result<bool, Error> {
    match api.create(&PostParams::default(), secret).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(source) => Err(Error::Create {
            kind: "Secret",
            namespace: cluster.namespace.clone(),
            name: secret.name_any(),
            source,
        }),
    }
}
/// The pooler of `spec.pooler`: its ConfigMap, Secret (the lookup role's
/// password, see [`ensure_pooler_auth`]), Service and Deployment. When
/// `spec.pooler` is unset, a pooler left from before is deleted (one read
/// when there is none).
pub async fn apply_pooler(
    client: &Client,
    cluster: &ValidCluster,
    config: &build::BuildConfig,
) -> Result<(), Error> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    let name = names::pooler(&cluster.name);
    let Some(pooler) = &cluster.spec.pooler else {
        // Only the cluster's own (a PgBouncer of the user's may share the
        // name); the Deployment last, so that a failed delete is tried
        // again at the next reconcile.
        if owned::<Deployment>(client, cluster, &name).await? == Some(true) {
            delete_named::<Service>(client, cluster, &name).await?;
            delete_named::<ConfigMap>(client, cluster, &name).await?;
            delete_named::<Secret>(client, cluster, &name).await?;
            delete_named::<Secret>(client, cluster, &names::pooler_auth_secret(&cluster.name))
                .await?;
            delete_named::<k8s_openapi::api::networking::v1::NetworkPolicy>(client, cluster, &name)
                .await?;
            delete_named::<Deployment>(client, cluster, &name).await?;
            tracing::info!(pooler = %name, "spec.pooler is unset: the pooler is deleted");
        }
        return Ok(());
    };
    let password = ensure_pooler_auth(client, cluster).await?;
    apply(
        client,
        &build::pooler::build_pooler_config_map(cluster, pooler),
    )
    .await?;
    apply(
        client,
        &build::pooler::build_pooler_secret(cluster, &password),
    )
    .await?;
    apply(client, &build::pooler::build_pooler_service(cluster)).await?;
    apply(
        client,
        &build::pooler::build_pooler_deployment(cluster, pooler, config),
    )
    .await?;
    if cluster.spec.network_policy.enabled {
        apply(
            client,
            &build::network_policy::build_pooler_network_policy(cluster),
        )
        .await?;
    }
    Ok(())
}

/// Whether `name` of kind `K` exists (None: it does not) and is the
/// cluster's own (the cluster is its controller): one of the user's may
/// share the name, and is never deleted.
async fn owned<K: Namespaced>(
    client: &Client,
    cluster: &ValidCluster,
    name: &str,
) -> Result<Option<bool>, Error> {
    let api: Api<K> = Api::namespaced(client.clone(), &cluster.namespace);
    let found = api
        .get_metadata_opt(name)
        .await
        .map_err(|source| Error::Get {
            kind: <K as k8s_openapi::Resource>::KIND,
            namespace: cluster.namespace.clone(),
            name: name.to_owned(),
            source,
        })?;
    Ok(found.map(|o| {
        o.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == cluster.owner.uid && r.controller == Some(true))
    }))
}

/// Deletes `name` of kind `K` in the cluster's namespace (the cluster's
/// own, as [`owned`] said); gone already is fine.
async fn delete_named<K: Namespaced>(
    client: &Client,
    cluster: &ValidCluster,
    name: &str,
) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(client.clone(), &cluster.namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            kind: <K as k8s_openapi::Resource>::KIND,
            namespace: cluster.namespace.clone(),
            name: name.to_owned(),
            source,
        }),
    }
}

/// What [`ensure_tls`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsChange {
    /// A new CA was made (a new cluster).
    CaCreated,
    /// The server certificate was issued, and why.
    Issued(build::tls::Renewal),
}

impl TlsChange {
    /// The Event that says it: its reason and note. Renewed apart from
    /// issued: an Event series keeps its first note, and a renewal says why.
    pub fn event(&self, cluster: &str) -> (&'static str, String) {
        match self {
            Self::CaCreated => (
                "CACreated",
                format!(
                    "made the cluster's CA in Secret {}",
                    names::ca_secret(cluster)
                ),
            ),
            Self::Issued(why) => (
                if *why == build::tls::Renewal::Missing {
                    "CertificateIssued"
                } else {
                    "CertificateRenewed"
                },
                format!(
                    "issued the servers' certificate in Secret {} ({} days): {why}",
                    names::server_tls_secret(cluster),
                    build::tls::SERVER_VALID_DAYS
                ),
            ),
        }
    }
}

/// Whether Secret `new`'s `ca.crt` holds every CA certificate of Secret
/// `old`'s, in `namespace`: then a pod mounting `new` verifies a server
/// still serving `old`'s certificate. A Secret gone or without `ca.crt`
/// keeps nothing.
pub async fn ca_kept(
    client: &Client,
    namespace: &str,
    old: &str,
    new: &str,
) -> Result<bool, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut cas = Vec::new();
    for name in [old, new] {
        let found = api.get_opt(name).await.map_err(|source| Error::Get {
            kind: "Secret",
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
        cas.push(found.and_then(|s| ordinal_crds::secret_text(&s, names::TLS_CA_KEY)));
    }
    Ok(match (&cas[0], &cas[1]) {
        (Some(old), Some(new)) => build::tls::holds_every_ca(old.as_bytes(), new.as_bytes()),
        _ => false,
    })
}

/// The certificates of `cluster`. With `tls.serverSecret` the user's Secret
/// must exist with its three keys; otherwise the cluster's CA is made once
/// (or a CA the user put in `<name>-ca` is used) and the server
/// certificate is issued when [`build::tls::renewal`] says so. `now` is in
/// unix seconds.
pub async fn ensure_tls(
    client: &Client,
    cluster: &ValidCluster,
    now: i64,
) -> Result<Certificates, Error> {
    let tls = &cluster.spec.tls;
    if !tls.enabled {
        return Ok(Certificates::default());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), &cluster.namespace);
    let get = |name: String| {
        let api = api.clone();
        async move {
            api.get_opt(&name).await.map_err(|source| Error::Get {
                kind: "Secret",
                namespace: cluster.namespace.clone(),
                name,
                source,
            })
        }
    };
    if let Some(secret) = &tls.server_secret {
        let Some(found) = get(secret.clone()).await? else {
            return Err(Error::MissingSecret {
                namespace: cluster.namespace.clone(),
                name: cluster.name.clone(),
                field: "tls.serverSecret",
                secret: secret.clone(),
            });
        };
        let missing: Vec<&str> = [names::TLS_CERT_KEY, names::TLS_KEY_KEY, names::TLS_CA_KEY]
            .into_iter()
            .filter(|key| !found.data.as_ref().is_some_and(|d| d.contains_key(*key)))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Tls {
                namespace: cluster.namespace.clone(),
                name: cluster.name.clone(),
                secret: secret.clone(),
                problem: format!(
                    "it lacks {}: tls.serverSecret names a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt (a cert-manager Certificate writes all three)",
                    missing.join(", ")
                ),
            });
        }
        // The names the cluster's own connections verify.
        let lacking = found
            .data
            .as_ref()
            .and_then(|d| d.get(names::TLS_CERT_KEY))
            .map(|pem| build::tls::cert_info(&pem.0))
            .transpose()
            .map_err(|why| Error::Tls {
                namespace: cluster.namespace.clone(),
                name: cluster.name.clone(),
                secret: secret.clone(),
                problem: format!("its tls.crt cannot be read: {why}"),
            })?
            .map(|info| {
                build::tls::verified_names(cluster)
                    .into_iter()
                    .filter(|n| !info.dns_names.contains(n))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !lacking.is_empty() {
            return Err(Error::Tls {
                namespace: cluster.namespace.clone(),
                name: cluster.name.clone(),
                secret: secret.clone(),
                problem: format!(
                    "its certificate lacks the names {}, which the replicas (and the pooler) verify",
                    lacking.join(", ")
                ),
            });
        }
        return Ok(Certificates {
            changes: Vec::new(),
            version: found.resource_version(),
            not_after: certificate_expiry(&found),
        });
    }

    let mut changes = Vec::new();
    let ca_name = names::ca_secret(&cluster.name);
    let tls_failed = |secret: &str, problem: String| Error::Tls {
        namespace: cluster.namespace.clone(),
        name: cluster.name.clone(),
        secret: secret.to_owned(),
        problem,
    };
    let ca = match get(ca_name.clone()).await? {
        Some(found) => build::tls::ca_of(&found).ok_or_else(|| {
            tls_failed(
                &ca_name,
                format!(
                    "it lacks {} or {}: give it both (PEM), or delete it and the operator makes a new CA",
                    names::TLS_CA_KEY,
                    names::CA_KEY_KEY
                ),
            )
        })?,
        None => {
            let ca = build::tls::issue_ca(&cluster.namespace, &cluster.name, now)
                .map_err(|e| tls_failed(&ca_name, e.to_string()))?;
            if create_secret(&api, cluster, &build::tls::ca_secret(cluster, &ca)).await? {
                changes.push(TlsChange::CaCreated);
                ca
            } else {
                // Made by a concurrent reconcile: use theirs.
                get(ca_name.clone())
                    .await?
                    .as_ref()
                    .and_then(build::tls::ca_of)
                    .ok_or_else(|| tls_failed(&ca_name, "it changed while read".to_owned()))?
            }
        }
    };
    let server_name = names::server_tls_secret(&cluster.name);
    let present = get(server_name.clone()).await?;
    let wanted = build::tls::server_names(cluster);
    let mut version = present.as_ref().and_then(ResourceExt::resource_version);
    let mut not_after = present.as_ref().and_then(certificate_expiry);
    if let Some(why) = build::tls::renewal(present.as_ref(), &ca.cert_pem, &wanted, now) {
        let cert = build::tls::issue_server(&ca, &wanted, now)
            .map_err(|e| tls_failed(&server_name, e.to_string()))?;
        let secret = build::tls::server_secret(cluster, &cert);
        not_after = certificate_expiry(&secret);
        version = apply(client, &secret).await?.resource_version();
        changes.push(TlsChange::Issued(why));
    }
    Ok(Certificates {
        changes,
        version,
        not_after,
    })
}

/// When the certificate in a `kubernetes.io/tls` Secret expires.
fn certificate_expiry(secret: &Secret) -> Option<i64> {
    let pem = secret.data.as_ref()?.get(names::TLS_CERT_KEY)?;
    build::tls::cert_info(&pem.0)
        .ok()
        .map(|info| info.not_after)
}

/// What [`ensure_tls`] did, and the version of the servers' Secret now.
#[derive(Debug, Default)]
pub struct Certificates {
    pub changes: Vec<TlsChange>,
    /// The servers' Secret's resourceVersion: it changes with the
    /// certificate (None while TLS is off).
    pub version: Option<String>,
    /// When the servers' certificate expires (unix seconds).
    pub not_after: Option<i64>,
}

/// Has the kubelet rewrite each pod's mounted ConfigMap and Secrets now,
/// not at its next periodic sync of the pod (a minute or more): a change
/// of a pod's annotations makes the kubelet sync the pod, and a sync
/// refreshes its ConfigMap and Secret volumes. `digest` names what they
/// should hold; a pod annotated with it already is left alone, and so is
/// a pod being deleted.
pub async fn refresh_mounts(
    client: &Client,
    namespace: &str,
    pods: &[Pod],
    digest: &str,
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for pod in pods {
        let current = pod.annotations().get(names::ANNOTATION_MOUNTED);
        if pod.metadata.deletion_timestamp.is_some() || current.map(String::as_str) == Some(digest)
        {
            continue;
        }
        let body =
            serde_json::json!({"metadata": {"annotations": {names::ANNOTATION_MOUNTED: digest}}});
        match api
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => {}
            // Gone since it was listed: its replacement mounts what is current.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Apply {
                    kind: "Pod",
                    namespace: namespace.to_owned(),
                    name: pod.name_any(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A store's credentials Secret exists with the keys its store needs: a
/// missing key would leave the pods unable to mount it.
async fn ensure_store_secret(
    api: &Api<Secret>,
    cluster: &ValidCluster,
    archive: &build::backup::Archive,
    field: &'static str,
) -> Result<(), Error> {
    let secret = &archive.secret;
    let found = api.get_opt(secret).await.map_err(|source| Error::Get {
        kind: "Secret",
        namespace: cluster.namespace.clone(),
        name: secret.clone(),
        source,
    })?;
    let Some(found) = found else {
        return Err(Error::MissingSecret {
            namespace: cluster.namespace.clone(),
            name: cluster.name.clone(),
            field,
            secret: secret.clone(),
        });
    };
    let has = |key: &str| {
        found.data.as_ref().is_some_and(|d| d.contains_key(key))
            || found
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(key))
    };
    let missing: Vec<&str> = archive
        .credentials
        .iter()
        .map(|(key, _)| *key)
        .filter(|key| !has(key))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::MissingSecretKeys {
        namespace: cluster.namespace.clone(),
        name: cluster.name.clone(),
        field,
        secret: secret.clone(),
        store: archive.store,
        keys: missing.join(", "),
    })
}

/// Applies every child object, in dependency order: identity, config,
/// Services (DNS must resolve before pods clone), PDB, StatefulSet (with
/// `claim_size`, when given).
pub async fn apply_children(
    client: &Client,
    cluster: &ValidCluster,
    config: &build::BuildConfig,
    claim_size: Option<&str>,
) -> Result<Option<StatefulSet>, Error> {
    apply(client, &build::build_service_account(cluster)).await?;
    apply(client, &build::build_role(cluster)).await?;
    apply(client, &build::build_role_binding(cluster)).await?;
    apply(client, &build::build_config_map(cluster)).await?;
    apply(client, &build::build_headless_service(cluster)).await?;
    apply(client, &build::build_rw_service(cluster)).await?;
    apply(client, &build::build_ro_service(cluster)).await?;
    match build::build_pdb(cluster) {
        Some(pdb) => {
            apply(client, &pdb).await?;
        }
        None => delete_pdb(client, cluster).await?,
    }
    apply_network_policy(client, cluster, config).await?;
    // The claim size the volume step chose: the StatefulSet's own until its
    // volumes have grown and it is re-created; none while it is deleted.
    let statefulset = match claim_size {
        Some(size) if size == cluster.spec.storage.size => {
            Some(apply(client, &build::build_statefulset(cluster, config)).await?)
        }
        Some(size) => {
            let mut kept = cluster.clone();
            kept.spec.storage.size = size.to_owned();
            Some(apply(client, &build::build_statefulset(&kept, config)).await?)
        }
        None => None,
    };
    // The pooler last: one that cannot be applied (a quota, an admission
    // webhook) holds up nothing of the database's own.
    apply_pooler(client, cluster, config).await?;
    Ok(statefulset)
}

/// Deletes a pod so that the StatefulSet recreates it from the current
/// template (a rolling-update step; the pod shuts down cleanly).
pub async fn replace_pod(client: &Client, namespace: &str, pod: &str) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match api.delete(pod, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            kind: "Pod",
            namespace: namespace.to_owned(),
            name: pod.to_owned(),
            source,
        }),
    }
}

/// Asks the failover loop for a planned switchover to `pod`.
pub async fn request_switchover(
    client: &Client,
    pgc: &PostgresCluster,
    pod: &str,
) -> Result<(), Error> {
    let namespace = pgc.namespace().unwrap_or_default();
    let api: Api<PostgresCluster> = Api::namespaced(client.clone(), &namespace);
    let body =
        serde_json::json!({"metadata": {"annotations": {names::ANNOTATION_SWITCHOVER_TO: pod}}});
    api.patch(
        &pgc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&body),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Apply {
        kind: "PostgresCluster",
        namespace,
        name: pgc.name_any(),
        source,
    })
}

/// A single-instance cluster has no PDB: remove ours if it exists. A PDB
/// of that name that is not ours is left alone.
async fn delete_pdb(client: &Client, cluster: &ValidCluster) -> Result<(), Error> {
    match owned::<PodDisruptionBudget>(client, cluster, &cluster.name).await? {
        None => Ok(()),
        Some(false) => {
            tracing::warn!(pdb = %cluster.name, "a PodDisruptionBudget of this name is not ours: left alone");
            Ok(())
        }
        Some(true) => {
            delete_named::<PodDisruptionBudget>(client, cluster, &cluster.name).await?;
            tracing::info!(pdb = %cluster.name, "removed the PodDisruptionBudget of a single-instance cluster");
            Ok(())
        }
    }
}

/// The pods of the cluster.
pub async fn list_pods(client: &Client, namespace: &str, cluster: &str) -> Result<Vec<Pod>, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = build::selector_string(cluster);
    api.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .map_err(|source| Error::ListPods {
            namespace: namespace.to_owned(),
            name: cluster.to_owned(),
            source,
        })
}

/// Names of the cluster's data volumes (PVCs from the volumeClaimTemplate).
pub async fn list_data_volumes(
    client: &Client,
    namespace: &str,
    cluster: &str,
) -> Result<Vec<String>, Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let selector = build::selector_string(cluster);
    let mut names: Vec<String> = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListVolumes {
            namespace: namespace.to_owned(),
            name: cluster.to_owned(),
            source,
        })?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    Ok(names)
}

pub(crate) async fn apply_status(
    client: &Client,
    pgc: &PostgresCluster,
    manager: &str,
    body: &Value,
) -> Result<PostgresCluster, Error> {
    let namespace = pgc.namespace().unwrap_or_default();
    let api: Api<PostgresCluster> = Api::namespaced(client.clone(), &namespace);
    api.patch_status(
        &pgc.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|source| Error::WriteStatus {
        namespace,
        name: pgc.name_any(),
        source,
    })
}

/// Writes the reconciler-owned status.
pub async fn apply_observed_status(
    client: &Client,
    pgc: &PostgresCluster,
    body: &Value,
) -> Result<PostgresCluster, Error> {
    apply_status(client, pgc, STATUS_MANAGER, body).await
}

/// Writes who is primary; the body carries the resourceVersion precondition.
pub async fn apply_primary_status(
    client: &Client,
    pgc: &PostgresCluster,
    body: &Value,
) -> Result<PostgresCluster, Error> {
    apply_status(client, pgc, PRIMARY_MANAGER, body).await
}
