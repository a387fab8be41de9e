//! The WAL archive of a cluster with `spec.backup`: where `ordinal-init
//! wal-push` (the archive_command) and `wal-fetch` (the restore_command)
//! find the store, and which keys of the credentials Secret they read.

use ordinal_crds::{AzureStore, BackupSpec, GcsStore, S3Store, names::paths};

use crate::reconcile::validate::ValidCluster;

/// The archive as the pods are told of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archive {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.
    pub url: String,
    /// object_store's options besides the credentials, `k=v,k=v`.
    pub options: String,
    /// The kind of store, for messages: `S3`, `GCS` or `Azure`.
    pub store: &'static str,
    /// The credentials Secret.
    pub secret: String,
    /// Keys of the credentials Secret, and the option each is mounted as.
    pub credentials: Vec<(&'static str, &'static str)>,
}

/// The archive of `cluster`, if it has one.
pub fn archive(cluster: &ValidCluster) -> Option<Archive> {
    let backup = cluster.spec.backup.as_ref()?;
    Some(archive_of(
        backup,
        &format!("{}/{}", cluster.namespace, cluster.name),
    ))
}

fn archive_of(backup: &BackupSpec, default_prefix: &str) -> Archive {
    store_of(
        Store {
            s3: backup.s3.as_ref(),
            gcs: backup.gcs.as_ref(),
            azure: backup.azure.as_ref(),
        },
        backup.prefix.as_deref().unwrap_or(default_prefix),
        &backup.credentials_secret,
    )
}

/// The store a cluster with `spec.bootstrap.recovery` is restored from.
pub fn recovery_source(cluster: &ValidCluster) -> Option<Archive> {
    let source = &cluster.spec.bootstrap.as_ref()?.recovery.as_ref()?.source;
    Some(store_of(
        Store {
            s3: source.s3.as_ref(),
            gcs: source.gcs.as_ref(),
            azure: source.azure.as_ref(),
        },
        &source.prefix,
        &source.credentials_secret,
    ))
}

/// One of the three kinds of store (the CRD admits exactly one).
struct Store<'a> {
    s3: Option<&'a S3Store>,
    gcs: Option<&'a GcsStore>,
    azure: Option<&'a AzureStore>,
}

fn store_of(store: Store<'_>, prefix: &str, secret: &str) -> Archive {
    if let Some(s3) = store.s3 {
        let mut options = vec![
            format!("aws_region={}", s3.region.as_deref().unwrap_or("us-east-1")),
            format!("aws_virtual_hosted_style_request={}", !s3.path_style),
        ];
        if let Some(endpoint) = &s3.endpoint {
            options.push(format!("aws_endpoint={endpoint}"));
            if endpoint.starts_with("http://") {
                options.push("aws_allow_http=true".to_owned());
            }
        }
        return Archive {
            url: format!("s3://{}/{prefix}", s3.bucket),
            options: options.join(","),
            store: "S3",
            secret: secret.to_owned(),
            credentials: vec![
                ("ACCESS_KEY_ID", "aws_access_key_id"),
                ("SECRET_ACCESS_KEY", "aws_secret_access_key"),
            ],
        };
    }
    if let Some(gcs) = store.gcs {
        return Archive {
            url: format!("gs://{}/{prefix}", gcs.bucket),
            options: String::new(),
            store: "GCS",
            secret: secret.to_owned(),
            credentials: vec![("SERVICE_ACCOUNT_KEY", "google_service_account_key")],
        };
    }
    let (account, container, endpoint) = store
        .azure
        .map(|a| {
            (
                a.account.as_str(),
                a.container.as_str(),
                a.endpoint.as_deref(),
            )
        })
        .unwrap_or_default();
    let mut options = vec![format!("azure_storage_account_name={account}")];
    if let Some(endpoint) = endpoint {
        options.push(format!("azure_storage_endpoint={endpoint}"));
        if endpoint.starts_with("http://") {
            options.push("azure_allow_http=true".to_owned());
        }
    }
    Archive {
        url: format!("az://{container}/{prefix}"),
        options: options.join(","),
        store: "Azure",
        secret: secret.to_owned(),
        credentials: vec![("STORAGE_ACCOUNT_KEY", "azure_storage_account_key")],
    }
}

/// The settings that make PostgreSQL archive to it and restore from it.
pub fn parameters(cluster: &ValidCluster) -> Vec<(&'static str, String)> {
    let Some(backup) = cluster.spec.backup.as_ref() else {
        return Vec::new();
    };
    vec![
        ("archive_mode", "on".to_owned()),
        (
            "archive_command",
            format!("{} wal-push %p %f", paths::ORDINAL_INIT),
        ),
        (
            "restore_command",
            format!("{} wal-fetch %f %p", paths::ORDINAL_INIT),
        ),
        (
            "archive_timeout",
            format!("{}s", backup.archive_timeout_seconds),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BackupSpec {
        BackupSpec {
            s3: None,
            gcs: None,
            azure: None,
            prefix: None,
            credentials_secret: "store".to_owned(),
            archive_timeout_seconds: 60,
            schedule: None,
            retention: None,
            verify: false,
        }
    }

    #[test]
    fn s3_with_an_endpoint_and_the_default_prefix() {
        let mut b = spec();
        b.s3 = Some(S3Store {
            bucket: "backups".to_owned(),
            endpoint: Some("http://198.18.255.1:9000".to_owned()),
            region: None,
            path_style: true,
        });
        let a = archive_of(&b, "ns/db");
        assert_eq!(a.url, "s3://backups/ns/db");
        assert_eq!(
            a.options,
            "aws_region=us-east-1,aws_virtual_hosted_style_request=false,aws_endpoint=http://198.18.255.1:9000,aws_allow_http=true"
        );
        assert_eq!(
            a.credentials[1],
            ("SECRET_ACCESS_KEY", "aws_secret_access_key")
        );
    }

    /// The pods of a cluster with `spec.backup`: PostgreSQL archives
    /// through ordinal-init, which finds the store in its environment and
    /// the credentials as files under the option names it reads.
    #[test]
    fn the_pods_archive_with_the_credentials_as_files() {
        use crate::fixtures::{build_config, cluster, valid};
        use crate::reconcile::build::{build_statefulset, postgresql_conf};

        let mut pgc = cluster().build();
        let mut b = spec();
        b.s3 = Some(S3Store {
            bucket: "backups".to_owned(),
            endpoint: None,
            region: Some("eu-west-3".to_owned()),
            path_style: false,
        });
        b.archive_timeout_seconds = 30;
        pgc.spec.backup = Some(b);
        let cluster = valid(pgc);

        let conf = postgresql_conf(&cluster);
        for line in [
            "archive_mode = 'on'",
            "archive_command = '/ordinal/ordinal-init wal-push %p %f'",
            "restore_command = '/ordinal/ordinal-init wal-fetch %f %p'",
            "archive_timeout = '30s'",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "{line} missing from\n{conf}"
            );
        }

        let sts = build_statefulset(&cluster, &build_config());
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let postgres = pod
            .containers
            .iter()
            .find(|c| c.name == "postgres")
            .unwrap();
        let env: std::collections::BTreeMap<_, _> = postgres
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["ORDINAL_BACKUP_URL"], "s3://backups/ns/db");
        assert_eq!(
            env["ORDINAL_BACKUP_OPTIONS"],
            "aws_region=eu-west-3,aws_virtual_hosted_style_request=true"
        );
        assert_eq!(env["ORDINAL_BACKUP_CREDENTIALS_DIR"], "/etc/ordinal/backup");
        assert!(
            postgres
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/etc/ordinal/backup" && m.read_only == Some(true))
        );
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "backup-credentials")
            .and_then(|v| v.secret.clone())
            .unwrap();
        assert_eq!(volume.secret_name.as_deref(), Some("store"));
        let items: Vec<(String, String)> = volume
            .items
            .unwrap()
            .into_iter()
            .map(|i| (i.key, i.path))
            .collect();
        assert_eq!(
            items,
            [
                ("ACCESS_KEY_ID".to_owned(), "aws_access_key_id".to_owned()),
                (
                    "SECRET_ACCESS_KEY".to_owned(),
                    "aws_secret_access_key".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn without_backup_nothing_is_archived() {
        use crate::fixtures::{build_config, cluster, valid};
        use crate::reconcile::build::{build_statefulset, postgresql_conf};
        let cluster = valid(cluster().build());
        assert!(!postgresql_conf(&cluster).contains("archive_command"));
        let sts = build_statefulset(&cluster, &build_config());
        let pod = sts.spec.unwrap().template.spec.unwrap();
        assert!(
            !pod.volumes
                .iter()
                .flatten()
                .any(|v| v.name == "backup-credentials")
        );
    }

    #[test]
    fn gcs_and_azure_with_a_prefix() {
        let mut b = spec();
        b.prefix = Some("prod/db".to_owned());
        b.gcs = Some(GcsStore {
            bucket: "b".to_owned(),
        });
        assert_eq!(archive_of(&b, "ns/db").url, "gs://b/prod/db");
        b.gcs = None;
        b.azure = Some(AzureStore {
            account: "acct".to_owned(),
            container: "wal".to_owned(),
            endpoint: None,
        });
        let a = archive_of(&b, "ns/db");
        assert_eq!(a.url, "az://wal/prod/db");
        assert_eq!(a.options, "azure_storage_account_name=acct");
        b.azure = Some(AzureStore {
            account: "devstoreaccount1".to_owned(),
            container: "wal".to_owned(),
            endpoint: Some("http://azurite:10000/devstoreaccount1".to_owned()),
        });
        assert_eq!(
            archive_of(&b, "ns/db").options,
            "azure_storage_account_name=devstoreaccount1,\
             azure_storage_endpoint=http://azurite:10000/devstoreaccount1,azure_allow_http=true"
        );
    }

    fn restoring(prefix: &str, backup_prefix: Option<&str>) -> ordinal_crds::PostgresCluster {
        use ordinal_crds::{BootstrapSpec, RecoverySource, RecoverySpec, RecoveryTargetSpec};
        let mut pgc = crate::fixtures::cluster().build();
        let s3 = S3Store {
            bucket: "backups".to_owned(),
            endpoint: Some("http://198.18.255.1:9000".to_owned()),
            region: None,
            path_style: true,
        };
        pgc.spec.bootstrap = Some(BootstrapSpec {
            recovery: Some(RecoverySpec {
                source: RecoverySource {
                    s3: Some(s3.clone()),
                    gcs: None,
                    azure: None,
                    prefix: prefix.to_owned(),
                    credentials_secret: "old-store".to_owned(),
                },
                backup: None,
                target: Some(RecoveryTargetSpec {
                    time: Some("2026-12-05T21:30:00Z".to_owned()),
                    lsn: None,
                    name: None,
                }),
            }),
        });
        let mut b = spec();
        b.s3 = Some(s3);
        b.prefix = backup_prefix.map(str::to_owned);
        pgc.spec.backup = Some(b);
        pgc
    }

    /// A cluster bootstrapped from a backup: its pods are told where to
    /// restore from and how far, with the source's credentials as files
    /// of their own; its own archive stays its own.
    #[test]
    fn a_restored_cluster_reads_the_source_and_archives_apart() {
        use crate::fixtures::{build_config, valid};
        use crate::reconcile::build::build_statefulset;

        let cluster = valid(restoring("ns/old", None));
        let sts = build_statefulset(&cluster, &build_config());
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let init = pod
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == "init")
            .unwrap();
        let env: std::collections::BTreeMap<&str, String> = init
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["ORDINAL_RECOVERY_URL"], "s3://backups/ns/old");
        assert_eq!(env["ORDINAL_BACKUP_URL"], "s3://backups/ns/db");
        assert_eq!(env["ORDINAL_RECOVERY_TARGET_TIME"], "2026-12-05T21:30:00Z");
        assert_eq!(
            env["ORDINAL_RECOVERY_CREDENTIALS_DIR"],
            "/etc/ordinal/recovery"
        );
        assert!(!env.contains_key("ORDINAL_RECOVERY_TARGET_LSN"));
        assert!(
            init.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/etc/ordinal/recovery")
        );
        let secrets: Vec<&str> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.as_deref())
            .collect();
        assert!(secrets.contains(&"old-store"), "{secrets:?}");

        // Restoring from the prefix it would archive to: refused.
        let problems = crate::reconcile::validate::validate(&restoring("ns/db", None))
            .unwrap()
            .unwrap_err();
        assert_eq!(problems[0].field, "bootstrap.recovery.source");
        assert!(
            problems[0].message.contains("s3://backups/ns/db"),
            "{problems:?}"
        );
        crate::reconcile::validate::validate(&restoring("ns/db", Some("ns/db-2")))
            .unwrap()
            .expect("a prefix of its own");
    }
}
