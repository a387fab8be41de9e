//! The Job of a PostgresBackup: `ordinal-init base-backup` in the
//! cluster's own image (installed from the operator's, as in the
//! StatefulSet's pods), reading from the instance the operator chose and
//! writing to the cluster's object store. Its manifest, or its error, is
//! the container's termination message, which the operator reads.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use ordinal_crds::{names, names::paths};

use super::statefulset::{
    BuildConfig, VOLUME_BACKUP, VOLUME_ORDINAL, VOLUME_REPLICATION, VOLUME_TLS, VOLUME_TMP,
    archive_env, backup_credentials_volume, empty_dir, env, install_container, mount,
    pod_security_context, restricted, secret_volume, tls_ca_volume, tls_env,
};
use crate::reconcile::validate::ValidCluster;

/// The container that takes the backup.
pub const BACKUP_CONTAINER: &str = "backup";
/// Where the kubelet reads the termination message from.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Labels of a backup Job and its pod. Not the cluster's selector labels:
/// its pod must never be taken for an instance (by the StatefulSet, the
/// Services, the PDB or the failover loop's pod watch).
pub fn backup_labels(cluster: &str, backup: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            names::LABEL_APP_NAME.to_owned(),
            names::BACKUP_APP_NAME.to_owned(),
        ),
        (
            names::LABEL_MANAGED_BY.to_owned(),
            names::MANAGED_BY.to_owned(),
        ),
        (names::LABEL_BACKUP.to_owned(), backup.to_owned()),
        (names::LABEL_BACKUP_OF.to_owned(), cluster.to_owned()),
    ])
}

/// `--keep N` and `--keep-days D` from `spec.backup.retention`.
fn retention_args(cluster: &ValidCluster) -> Vec<String> {
    let Some(retention) = cluster
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.retention.as_ref())
    else {
        return Vec::new();
    };
    let mut args = Vec::new();
    if let Some(keep) = retention.keep {
        args.extend(["--keep".to_owned(), keep.to_string()]);
    }
    if let Some(days) = retention.recovery_window_days {
        args.extend(["--keep-days".to_owned(), days.to_string()]);
    }
    args
}

/// The Job taking base backup `backup` of `cluster` from `host` (a pod's
/// DNS name under the headless Service), at `hostaddr` when known.
pub fn build_backup_job(
    cluster: &ValidCluster,
    config: &BuildConfig,
    backup: &str,
    owner: OwnerReference,
    host: &str,
    hostaddr: Option<&str>,
) -> Job {
    let labels = backup_labels(&cluster.name, backup);
    let mut vars = vec![env(
        names::env::REPLICATION_DIR,
        paths::REPLICATION_SECRET_DIR,
    )];
    vars.extend(archive_env(cluster));
    // pg_basebackup verifies the instance it reads from, once TLS is
    // required (before, libpq's default: TLS when offered).
    if cluster.tls_required() {
        vars.extend(tls_env(cluster));
    }
    // The backup's last segment is archived by the primary within
    // archive_timeout of its end: wait for two, and a minute.
    let wal_wait = cluster
        .spec
        .backup
        .as_ref()
        .map_or(180, |b| i64::from(b.archive_timeout_seconds) * 2 + 60);
    let install = install_container(config, false);
    let command = [
        paths::ORDINAL_INIT.to_owned(),
        "base-backup".to_owned(),
        "--host".to_owned(),
        host.to_owned(),
        "--port".to_owned(),
        names::POSTGRES_PORT.to_string(),
        "--backup".to_owned(),
        backup.to_owned(),
        "--wal-wait-seconds".to_owned(),
        wal_wait.to_string(),
        "--report".to_owned(),
        TERMINATION_LOG.to_owned(),
    ]
    .into_iter()
    .chain(
        hostaddr
            .into_iter()
            .flat_map(|addr| ["--hostaddr".to_owned(), addr.to_owned()]),
    )
    .chain(retention_args(cluster))
    .collect();
    let mut mounts = vec![
        mount(VOLUME_ORDINAL, paths::ORDINAL_DIR, true),
        mount(VOLUME_REPLICATION, paths::REPLICATION_SECRET_DIR, true),
        mount(VOLUME_BACKUP, paths::BACKUP_SECRET_DIR, true),
        mount(VOLUME_TMP, "/tmp", false),
    ];
    if cluster.tls_required() {
        mounts.push(mount(VOLUME_TLS, paths::TLS_DIR, true));
    }
    let take = tool_container(cluster, BACKUP_CONTAINER, command, vars, mounts);
    let mut volumes = vec![
        empty_dir(VOLUME_ORDINAL, None),
        secret_volume(VOLUME_REPLICATION, &cluster.replication_secret),
        empty_dir(VOLUME_TMP, None),
    ];
    volumes.extend(backup_credentials_volume(cluster));
    // The CA, not the servers' key.
    volumes.extend(tls_ca_volume(cluster).filter(|_| cluster.tls_required()));
    job(cluster, backup, labels, owner, install, take, volumes, None)
}

/// The Job verifying base backup `id` of `cluster` for PostgresBackup
/// `backup`: `ordinal-init verify-backup` restores it under a scratch
/// volume and checks it, in the cluster's own image; it reads the store
/// and nothing else (no instance, no replication credentials).
pub fn build_verify_job(
    cluster: &ValidCluster,
    config: &BuildConfig,
    backup: &str,
    id: &str,
    owner: OwnerReference,
) -> Job {
    let name = verify_job_name(backup);
    let labels = backup_labels(&cluster.name, backup);
    let install = install_container(config, false);
    let command = [
        paths::ORDINAL_INIT,
        "verify-backup",
        "--id",
        id,
        "--dir",
        VERIFY_DIR,
        "--report",
        TERMINATION_LOG,
    ]
    .map(str::to_owned)
    .to_vec();
    let check = tool_container(
        cluster,
        VERIFY_CONTAINER,
        command,
        archive_env(cluster),
        vec![
            mount(VOLUME_ORDINAL, paths::ORDINAL_DIR, true),
            mount(VOLUME_BACKUP, paths::BACKUP_SECRET_DIR, true),
            mount(VOLUME_TMP, "/tmp", false),
            mount(VOLUME_VERIFY, VERIFY_DIR, false),
        ],
    );
    let mut volumes = vec![
        empty_dir(VOLUME_ORDINAL, None),
        empty_dir(VOLUME_TMP, None),
        empty_dir(VOLUME_VERIFY, None),
    ];
    volumes.extend(backup_credentials_volume(cluster));
    job(
        cluster,
        &name,
        labels,
        owner,
        install,
        check,
        volumes,
        Some(VERIFY_DEADLINE_SECONDS),
    )
}

/// An `ordinal-init` command in the cluster's own image (installed from
/// the operator's). Its report is the termination message; a crash before
/// it leaves the log's last lines instead.
fn tool_container(
    cluster: &ValidCluster,
    name: &str,
    command: Vec<String>,
    env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    mounts: Vec<k8s_openapi::api::core::v1::VolumeMount>,
) -> Container {
    Container {
        name: name.to_owned(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: cluster
            .spec
            .image_pull_policy
            .map(|p| p.as_str().to_owned()),
        command: Some(command),
        env: Some(env),
        volume_mounts: Some(mounts),
        security_context: Some(restricted()),
        termination_message_path: Some(TERMINATION_LOG.to_owned()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// The verification Job of PostgresBackup `backup`: `<backup>-verify`,
/// its name shortened to fit the 63 characters of a label value.
pub fn verify_job_name(backup: &str) -> String {
    let mut base: String = backup.chars().take(63 - VERIFY_SUFFIX.len()).collect();
    while base.ends_with('-') {
        base.pop();
    }
    format!("{base}{VERIFY_SUFFIX}")
}

const VERIFY_SUFFIX: &str = "-verify";
/// The container that restores and checks a backup.
pub const VERIFY_CONTAINER: &str = "verify";
/// The scratch volume a backup is restored into.
const VOLUME_VERIFY: &str = "scratch";
const VERIFY_DIR: &str = "/verify";
/// A verification that has not finished in six hours is stopped (and
/// Failed): the same bound as a restore's replay.
const VERIFY_DEADLINE_SECONDS: i64 = 6 * 3600;

/// A one-pod Job of the cluster, owned by a PostgresBackup, never retried:
/// a failure is said on the PostgresBackup, and the next one tries again.
#[allow(clippy::too_many_arguments)]
fn job(
    cluster: &ValidCluster,
    name: &str,
    labels: BTreeMap<String, String>,
    owner: OwnerReference,
    install: Container,
    main: Container,
    volumes: Vec<k8s_openapi::api::core::v1::Volume>,
    deadline_seconds: Option<i64>,
) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(cluster.namespace.clone()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: deadline_seconds,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security_context()),
                    init_containers: Some(vec![install]),
                    containers: vec![main],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{build_config, cluster, s3_backup, valid};
    use ordinal_crds::BackupSpec;

    #[test]
    fn a_backup_job_is_no_instance_and_reads_what_it_needs_as_files() {
        let mut pgc = cluster().build();
        pgc.spec.backup = Some(BackupSpec {
            archive_timeout_seconds: 30,
            retention: Some(ordinal_crds::RetentionSpec {
                keep: Some(3),
                recovery_window_days: None,
            }),
            ..s3_backup()
        });
        let cluster = valid(pgc);
        let owner = OwnerReference {
            api_version: "ordinal.dev/v1alpha1".to_owned(),
            kind: "PostgresBackup".to_owned(),
            name: "nightly".to_owned(),
            uid: "u".to_owned(),
            controller: Some(true),
            ..OwnerReference::default()
        };
        let job = build_backup_job(
            &cluster,
            &build_config(),
            "nightly",
            owner,
            "db-1.db-headless.ns.svc",
            Some("198.18.0.7"),
        );
        let spec = job.spec.expect("spec");
        assert_eq!(spec.backoff_limit, Some(0));
        let template_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        // Never selected as one of the cluster's instances.
        assert!(!template_labels.contains_key(names::LABEL_CLUSTER));
        assert_eq!(template_labels[names::LABEL_BACKUP], "nightly");
        let pod = spec.template.spec.expect("pod");
        let take = &pod.containers[0];
        let command = take.command.clone().expect("command").join(" ");
        assert_eq!(
            command,
            "/ordinal/ordinal-init base-backup --host db-1.db-headless.ns.svc --port 5432 \
             --backup nightly --wal-wait-seconds 120 --report /dev/termination-log \
             --hostaddr 198.18.0.7 --keep 3"
        );
        assert_eq!(
            take.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let env: Vec<String> = take
            .env
            .iter()
            .flatten()
            .map(|e| format!("{}={}", e.name, e.value.clone().unwrap_or_default()))
            .collect();
        assert!(
            env.contains(&"ORDINAL_BACKUP_URL=s3://backups/ns/db".to_owned()),
            "{env:?}"
        );
        assert!(!env.iter().any(|e| e.contains("SECRET")), "{env:?}");
        let volumes: Vec<&str> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.as_deref())
            .collect();
        // The server certificate's CA: pg_basebackup verifies the instance.
        assert_eq!(volumes, ["db-replication", "store", "db-server"]);
        // Of the servers' Secret, the CA only: never the private key.
        let tls = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "tls")
            .and_then(|v| v.secret.as_ref())
            .expect("tls volume");
        let items: Vec<&str> = tls.items.iter().flatten().map(|i| i.key.as_str()).collect();
        assert_eq!(items, ["ca.crt"]);
        assert!(env.contains(&"ORDINAL_TLS_CA=/etc/ordinal/tls/ca.crt".to_owned()));
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn a_verify_job_reads_only_the_store_into_a_scratch_volume() {
        let mut pgc = cluster().build();
        pgc.spec.backup = Some(BackupSpec {
            verify: true,
            ..s3_backup()
        });
        let cluster = valid(pgc);
        let backup = "a".repeat(63);
        let job = build_verify_job(
            &cluster,
            &build_config(),
            &backup,
            "20261206T010203Z",
            OwnerReference::default(),
        );
        let name = job.metadata.name.clone().expect("name");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("a-verify"), "{name}");
        assert_eq!(verify_job_name("nightly"), "nightly-verify");
        let spec = job.spec.expect("spec");
        assert_eq!(spec.active_deadline_seconds, Some(6 * 3600));
        let pod = spec.template.spec.expect("pod");
        let check = &pod.containers[0];
        assert_eq!(check.name, VERIFY_CONTAINER);
        assert_eq!(
            check.command.clone().expect("command").join(" "),
            "/ordinal/ordinal-init verify-backup --id 20261206T010203Z --dir /verify \
             --report /dev/termination-log"
        );
        let secrets: Vec<&str> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.as_deref())
            .collect();
        assert_eq!(secrets, ["store"], "no replication credentials");
        let mounts: Vec<&str> = check
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&"/verify"), "{mounts:?}");
    }
}
