//! The StatefulSet: stable pod names, one PVC per pod, and the pod layout of
//! DESIGN §3: `install` copies ordinal-init into a shared emptyDir, `init`
//! prepares PGDATA for the pod's role, `postgres` runs the guard that execs
//! postgres.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ordinal_crds::{names, names::paths};

use super::{child_meta, labels, selector_labels};
use crate::reconcile::validate::ValidCluster;

/// The uid and gid of the postgres user in the official postgres images.
pub const POSTGRES_UID: i64 = 999;

/// Operator-wide settings the StatefulSet needs (from flags, not the spec).
#[derive(Clone, Debug)]
pub struct BuildConfig {
    /// Image holding `ordinal-init` (the operator's own image).
    pub init_image: String,
    pub init_image_pull_policy: Option<String>,
    /// PgBouncer's image, for a pooler that names none.
    pub pooler_image: String,
    /// The operator's namespace when it runs in the cluster: its pods may
    /// reach PostgreSQL through the NetworkPolicy.
    pub operator_namespace: Option<String>,
}

pub(super) const VOLUME_ORDINAL: &str = "ordinal";
const VOLUME_CONFIG: &str = "config";
const VOLUME_SUPERUSER: &str = "superuser";
pub(super) const VOLUME_REPLICATION: &str = "replication";
const VOLUME_RUN: &str = "run";
const VOLUME_SHM: &str = "shm";
pub(super) const VOLUME_TMP: &str = "tmp";
pub(super) const VOLUME_BACKUP: &str = "backup-credentials";
const VOLUME_RECOVERY: &str = "recovery-credentials";
pub(super) const VOLUME_TLS: &str = "tls";

/// Where the `install` container's image keeps the binary.
pub(super) const IMAGE_ORDINAL_INIT: &str = "/usr/local/bin/ordinal-init";

pub fn build_statefulset(cluster: &ValidCluster, config: &BuildConfig) -> StatefulSet {
    let spec = &cluster.spec;
    let retention = &spec.storage.pvc_retention;
    StatefulSet {
        metadata: child_meta(cluster, &cluster.name),
        spec: Some(StatefulSetSpec {
            replicas: Some(cluster.statefulset_replicas),
            service_name: Some(cluster.service_name.clone()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&cluster.name)),
                ..LabelSelector::default()
            },
            pod_management_policy: Some(spec.pod_management_policy.as_str().to_owned()),
            // The operator replaces pods itself, replicas first and the
            // primary last after a switchover; the StatefulSet controller's
            // own order (highest ordinal down) ignores which pod is primary.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(retention.when_deleted.as_str().to_owned()),
                    when_scaled: Some(retention.when_scaled.as_str().to_owned()),
                },
            ),
            volume_claim_templates: Some(vec![volume_claim_template(cluster)]),
            template: pod_template(cluster, config),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn volume_claim_template(cluster: &ValidCluster) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(names::VOLUME_DATA.to_owned()),
            labels: Some(labels(&cluster.name)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: cluster.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(cluster.spec.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The liveness probe's period: the kubelet restarts a server that stops
/// answering. (The isolation check runs every second on its own clock in
/// `ordinal-init run`, whatever the kubelet does.)
pub const LIVENESS_PERIOD_SECONDS: i32 = 2;

fn pod_template(cluster: &ValidCluster, config: &BuildConfig) -> PodTemplateSpec {
    let conf_hash = super::template_hash(cluster);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&cluster.name)),
            annotations: Some(
                [(names::ANNOTATION_CONFIG_HASH.to_owned(), conf_hash)]
                    .into_iter()
                    .chain(
                        cluster
                            .restarted_at
                            .clone()
                            .map(|at| (names::ANNOTATION_RESTARTED_AT.to_owned(), at)),
                    )
                    .collect(),
            ),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(cluster.name.clone()),
            automount_service_account_token: Some(true),
            // postgres' fast shutdown sends the final WAL to the standbys;
            // give it time to finish before the kubelet kills it.
            termination_grace_period_seconds: Some(60),
            enable_service_links: Some(false),
            security_context: Some(pod_security_context()),
            init_containers: Some(vec![
                install_container(config, true),
                init_container(cluster),
            ]),
            containers: vec![postgres_container(cluster)],
            volumes: Some(volumes(cluster)),
            topology_spread_constraints: Some(topology_spread(cluster)),
            affinity: Some(anti_affinity(cluster)),
            ..PodSpec::default()
        }),
    }
}

/// The pod runs as the postgres user of the official images.
pub(super) fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(POSTGRES_UID),
        run_as_group: Some(POSTGRES_UID),
        fs_group: Some(POSTGRES_UID),
        // Recursive chown/chmod of a large PGDATA at every start is
        // slow and loosens the 0700 mode postgres insists on.
        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The restricted Pod Security Standard, per container.
pub(super) fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

pub(super) fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// What `ordinal-init` needs to know: who it is and where things are.
fn ordinal_env(cluster: &ValidCluster) -> Vec<EnvVar> {
    use names::env as e;
    let mut vars = vec![
        env_field(e::POD_NAME, "metadata.name"),
        env_field(e::POD_NAMESPACE, "metadata.namespace"),
        env(e::CLUSTER, &cluster.name),
        env(e::SERVICE, &cluster.service_name),
        env(e::PGDATA, paths::PGDATA),
        env(e::PGHOST, paths::RUN_DIR),
        env(e::PGPORT, &names::POSTGRES_PORT.to_string()),
        env(e::SUPERUSER_DIR, paths::SUPERUSER_SECRET_DIR),
        env(e::REPLICATION_DIR, paths::REPLICATION_SECRET_DIR),
        env(
            e::ISOLATION_SECONDS,
            &cluster.spec.failover.isolation_seconds.to_string(),
        ),
        env(
            e::MAX_READY_LAG_BYTES,
            &cluster
                .spec
                .replication
                .max_ready_lag_bytes
                .map(|b| b.to_string())
                .unwrap_or_default(),
        ),
    ];
    vars.extend(archive_env(cluster));
    vars.extend(tls_env(cluster));
    // A new primary restores from here instead of initdb.
    if let Some(recovery) = cluster
        .spec
        .bootstrap
        .as_ref()
        .and_then(|b| b.recovery.as_ref())
        && let Some(source) = super::backup::recovery_source(cluster)
    {
        vars.extend([
            env(e::RECOVERY_URL, &source.url),
            env(e::RECOVERY_OPTIONS, &source.options),
            env(e::RECOVERY_CREDENTIALS_DIR, paths::RECOVERY_SECRET_DIR),
        ]);
        let target = recovery.target.as_ref();
        for (name, value) in [
            (e::RECOVERY_BACKUP, recovery.backup.as_ref()),
            (
                e::RECOVERY_TARGET_TIME,
                target.and_then(|t| t.time.as_ref()),
            ),
            (e::RECOVERY_TARGET_LSN, target.and_then(|t| t.lsn.as_ref())),
            (
                e::RECOVERY_TARGET_NAME,
                target.and_then(|t| t.name.as_ref()),
            ),
        ] {
            if let Some(value) = value {
                vars.push(env(name, value));
            }
        }
    }
    vars
}

/// The CA replication connections verify the primary against, while the
/// pods mount the certificate. ordinal-init verifies only once the
/// ConfigMap's `replication-sslmode` says `verify-full`.
pub(super) fn tls_env(cluster: &ValidCluster) -> Option<EnvVar> {
    cluster
        .tls_secret()
        .map(|_| env(names::env::TLS_CA, paths::TLS_CA))
}

/// The servers' certificate, key and CA, while TLS is on. Mode 0440 and
/// root-owned (group: the pod's fsGroup): postgres accepts a key file
/// owned by root and readable by its group. Not through subPath, which
/// the kubelet never updates: a renewed certificate reaches the running
/// pod.
pub(super) fn tls_volume(cluster: &ValidCluster) -> Option<Volume> {
    cluster
        .tls_secret()
        .map(|secret| secret_volume(VOLUME_TLS, secret))
}

/// The Secret a pod of the cluster mounts as its TLS volume, if any.
pub fn mounted_tls_secret(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == VOLUME_TLS)?
        .secret
        .as_ref()?
        .secret_name
        .clone()
}

/// The CA alone (no key), for pods that only verify the instances (the
/// backup Job).
pub(super) fn tls_ca_volume(cluster: &ValidCluster) -> Option<Volume> {
    let mut volume = tls_volume(cluster)?;
    if let Some(source) = volume.secret.as_mut() {
        source.items = Some(vec![KeyToPath {
            key: names::TLS_CA_KEY.to_owned(),
            path: names::TLS_CA_KEY.to_owned(),
            mode: None,
        }]);
    }
    Some(volume)
}

/// Where the cluster's archive is, for ordinal-init (none without one).
pub(super) fn archive_env(cluster: &ValidCluster) -> Vec<EnvVar> {
    use names::env as e;
    super::backup::archive(cluster)
        .map(|archive| {
            vec![
                env(e::BACKUP_URL, &archive.url),
                env(e::BACKUP_OPTIONS, &archive.options),
                env(e::BACKUP_CREDENTIALS_DIR, paths::BACKUP_SECRET_DIR),
            ]
        })
        .unwrap_or_default()
}

/// The mounts of the containers that run postgres tools.
fn postgres_mounts(cluster: &ValidCluster) -> Vec<VolumeMount> {
    let mut mounts = vec![
        mount(names::VOLUME_DATA, paths::DATA_MOUNT, false),
        mount(VOLUME_ORDINAL, paths::ORDINAL_DIR, true),
        mount(VOLUME_CONFIG, paths::CONFIG_DIR, true),
        mount(VOLUME_SUPERUSER, paths::SUPERUSER_SECRET_DIR, true),
        mount(VOLUME_REPLICATION, paths::REPLICATION_SECRET_DIR, true),
        mount(VOLUME_RUN, paths::RUN_DIR, false),
        mount(VOLUME_TMP, "/tmp", false),
    ];
    if super::backup::recovery_source(cluster).is_some() {
        mounts.push(mount(VOLUME_RECOVERY, paths::RECOVERY_SECRET_DIR, true));
    }
    if cluster.tls_secret().is_some() {
        mounts.push(mount(VOLUME_TLS, paths::TLS_DIR, true));
    }
    mounts
}

/// Copies ordinal-init into the shared emptyDir. In an instance's pod it
/// waits for the data volume's lock first: its completion proves to the
/// failover loop that an earlier instance of this pod (one force-deleted,
/// whose containers may have outlived it in the API) has stopped. A pod
/// without the data volume (a backup's) does not wait.
pub(super) fn install_container(config: &BuildConfig, with_data: bool) -> Container {
    let mut command = vec![
        IMAGE_ORDINAL_INIT.to_owned(),
        "install".to_owned(),
        paths::ORDINAL_DIR.to_owned(),
    ];
    let mut mounts = vec![mount(VOLUME_ORDINAL, paths::ORDINAL_DIR, false)];
    if with_data {
        command.extend(["--wait-for-volume".to_owned(), paths::DATA_MOUNT.to_owned()]);
        mounts.push(mount(names::VOLUME_DATA, paths::DATA_MOUNT, false));
    }
    Container {
        name: names::INSTALL_CONTAINER.to_owned(),
        image: Some(config.init_image.clone()),
        image_pull_policy: config.init_image_pull_policy.clone(),
        command: Some(command),
        volume_mounts: Some(mounts),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

fn init_container(cluster: &ValidCluster) -> Container {
    Container {
        name: names::INIT_CONTAINER.to_owned(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: cluster
            .spec
            .image_pull_policy
            .map(|p| p.as_str().to_owned()),
        command: Some(vec![paths::ORDINAL_INIT.to_owned(), "init".to_owned()]),
        env: Some(ordinal_env(cluster)),
        volume_mounts: Some(postgres_mounts(cluster)),
        security_context: Some(restricted()),
        resources: cluster.spec.resources.clone(),
        // Its error (the log's last line) is what the cluster's status
        // says of an instance that cannot start.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// A GET of `path` on the port where `ordinal-init run` answers the
/// probes: no command run in the container per probe.
fn health_get(path: &str) -> Option<HTTPGetAction> {
    Some(HTTPGetAction {
        path: Some(path.to_owned()),
        port: IntOrString::Int(names::HEALTH_PORT),
        scheme: Some("HTTP".to_owned()),
        ..HTTPGetAction::default()
    })
}

fn postgres_container(cluster: &ValidCluster) -> Container {
    let mut mounts = postgres_mounts(cluster);
    mounts.push(mount(VOLUME_SHM, "/dev/shm", false));
    // The archive_command runs here.
    if cluster.spec.backup.is_some() {
        mounts.push(mount(VOLUME_BACKUP, paths::BACKUP_SECRET_DIR, true));
    }
    Container {
        name: "postgres".to_owned(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: cluster
            .spec
            .image_pull_policy
            .map(|p| p.as_str().to_owned()),
        command: Some(vec![
            paths::ORDINAL_INIT.to_owned(),
            "run".to_owned(),
            "--".to_owned(),
            "postgres".to_owned(),
            "-D".to_owned(),
            paths::PGDATA.to_owned(),
            "-c".to_owned(),
            format!(
                "config_file={}/{}",
                paths::CONFIG_DIR,
                names::CONFIG_POSTGRESQL_CONF
            ),
        ]),
        env: Some(
            ordinal_env(cluster)
                .into_iter()
                .chain([env(
                    names::env::HEALTH_ADDRESS,
                    &format!("0.0.0.0:{}", names::HEALTH_PORT),
                )])
                .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some(names::POSTGRES_PORT_NAME.to_owned()),
                container_port: names::POSTGRES_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(names::HEALTH_PORT_NAME.to_owned()),
                container_port: names::HEALTH_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        resources: cluster.spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(restricted()),
        // The probes are answered by `ordinal-init run` (its health.rs).
        // Crash recovery after an unclean stop can take minutes: the
        // startup probe holds liveness off until the server answers (30
        // minutes at most). Every second: a primary restarted in place
        // after a crash serves again once it passes, and readiness follows.
        startup_probe: Some(Probe {
            http_get: health_get(names::HEALTH_LIVE_PATH),
            period_seconds: Some(1),
            timeout_seconds: Some(5),
            failure_threshold: Some(1800),
            ..Probe::default()
        }),
        // The verdict of the liveness check `ordinal-init run` makes every
        // second, which is also where an isolated or deposed primary stops
        // itself (its probe.rs).
        liveness_probe: Some(Probe {
            http_get: health_get(names::HEALTH_LIVE_PATH),
            period_seconds: Some(LIVENESS_PERIOD_SECONDS),
            timeout_seconds: Some(5),
            failure_threshold: Some(15),
            ..Probe::default()
        }),
        // No preStop hook: `ordinal-init run` turns the kubelet's stop
        // signal into postgres' fast shutdown (it ends sessions and streams
        // the final WAL to the standbys, so a deleted primary loses
        // nothing), with no command to run in the container first.
        readiness_probe: Some(Probe {
            http_get: health_get(names::HEALTH_READY_PATH),
            period_seconds: Some(2),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        ..Container::default()
    }
}

pub(super) fn empty_dir(name: &str, medium: Option<&str>) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(str::to_owned),
            size_limit: None,
        }),
        ..Volume::default()
    }
}

/// A ConfigMap's keys as read-only files.
pub(super) fn config_map_volume(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            default_mode: Some(0o444),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Secrets are files readable by the postgres group only, never env vars.
pub(super) fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn volumes(cluster: &ValidCluster) -> Vec<Volume> {
    let mut volumes = vec![
        empty_dir(VOLUME_ORDINAL, None),
        config_map_volume(VOLUME_CONFIG, &names::config_map(&cluster.name)),
        secret_volume(VOLUME_SUPERUSER, &cluster.superuser_secret),
        secret_volume(VOLUME_REPLICATION, &cluster.replication_secret),
        empty_dir(VOLUME_RUN, None),
        empty_dir(VOLUME_SHM, Some("Memory")),
        empty_dir(VOLUME_TMP, None),
    ];
    volumes.extend(backup_credentials_volume(cluster));
    volumes.extend(tls_volume(cluster));
    volumes.extend(
        super::backup::recovery_source(cluster)
            .map(|source| credentials_volume(VOLUME_RECOVERY, &source)),
    );
    volumes
}

/// The store's credentials, each key under the option name ordinal-init
/// reads it as.
pub(super) fn backup_credentials_volume(cluster: &ValidCluster) -> Option<Volume> {
    let archive = super::backup::archive(cluster)?;
    Some(credentials_volume(VOLUME_BACKUP, &archive))
}

fn credentials_volume(name: &str, archive: &super::backup::Archive) -> Volume {
    let mut volume = secret_volume(name, &archive.secret);
    if let Some(source) = volume.secret.as_mut() {
        source.items = Some(
            archive
                .credentials
                .iter()
                .map(|(key, file)| KeyToPath {
                    key: (*key).to_owned(),
                    path: (*file).to_owned(),
                    mode: None,
                })
                .collect(),
        );
    }
    volume
}

fn topology_spread(cluster: &ValidCluster) -> Vec<TopologySpreadConstraint> {
    let topology = &cluster.spec.topology;
    [&topology.zone_key, &topology.node_key]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            topology_key: key.clone(),
            max_skew: topology.max_skew,
            when_unsatisfiable: topology.when_unsatisfiable.as_str().to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&cluster.name)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// Prefer one instance per node, so that losing a node loses one instance.
fn anti_affinity(cluster: &ValidCluster) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: cluster.spec.topology.node_key.clone(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(&cluster.name)),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

#[cfg(test)]
mod tests;
