//! Every name Ordinal gives to a Kubernetes object, label, annotation or
//! path lives here, so that the operator, the init binary and the tests agree.

/// API group of the PostgresCluster resource.
pub const GROUP: &str = "ordinal.dev";
/// Field manager of every server-side apply the operator sends.
pub const FIELD_MANAGER: &str = "ordinal-operator";
/// Name the operator reports itself as (Events, leader identity).
pub const CONTROLLER_NAME: &str = "ordinal-operator";

/// `app.kubernetes.io/name` value on every object.
pub const APP_NAME: &str = "postgresql";
/// `app.kubernetes.io/managed-by` value on every object.
pub const MANAGED_BY: &str = "ordinal";

pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The cluster a child object belongs to.
pub const LABEL_CLUSTER: &str = "ordinal.dev/cluster";
/// `primary` or `replica`; set on pods by the operator only, never in the
/// StatefulSet template, so that a pod never claims a role by itself.
pub const LABEL_ROLE: &str = "ordinal.dev/role";
/// Label the StatefulSet controller puts on each pod with the pod's name.
pub const LABEL_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";

/// On a backup Job and its pod: the PostgresBackup, and its cluster (not
/// `ordinal.dev/cluster`, which makes a pod one of the cluster's instances).
pub const LABEL_BACKUP: &str = "ordinal.dev/backup";
pub const LABEL_BACKUP_OF: &str = "ordinal.dev/backup-of";
/// `app.kubernetes.io/name` of backup Jobs.
pub const BACKUP_APP_NAME: &str = "ordinal-backup";

pub const ROLE_PRIMARY: &str = "primary";
pub const ROLE_REPLICA: &str = "replica";

/// Annotation on a PostgresCluster naming the pod whose data to adopt as
/// the primary, when the cluster has volumes but no recorded primary.
pub const ANNOTATION_PRIMARY: &str = "ordinal.dev/primary";
/// Annotation on a PostgresCluster asking for a planned switchover to a pod.
pub const ANNOTATION_SWITCHOVER_TO: &str = "ordinal.dev/switchover-to";
/// Annotation on a PostgresCluster naming the fenced instances (pod names,
/// comma-separated; set by `kubectl ordinal fence`): their postgres is
/// stopped and stays stopped, their pods and volumes stay, they are never
/// promoted, and a fenced primary is not failed over.
pub const ANNOTATION_FENCED: &str = "ordinal.dev/fenced";
/// Annotation on a PostgresCluster asking for a rolling restart (set by
/// `kubectl ordinal restart`); copied to the pod template, where a new
/// value is a new revision that the rolling update rolls out: replicas
/// first, a switchover, the old primary last. The key `kubectl rollout
/// restart` uses on a Deployment's template.
pub const ANNOTATION_RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// Annotation on the pod template: hash of the configuration that needs a
/// restart, so that a changed configuration shows as a changed template.
pub const ANNOTATION_CONFIG_HASH: &str = "ordinal.dev/config-hash";
/// On each pod: a digest of the ConfigMap and certificate it should have
/// mounted. The operator sets it when they change, which makes the kubelet
/// refresh the pod's volumes at once.
pub const ANNOTATION_MOUNTED: &str = "ordinal.dev/mounted";

pub const SUFFIX_HEADLESS: &str = "-headless";
pub const SUFFIX_RW: &str = "-rw";
pub const SUFFIX_RO: &str = "-ro";
pub const SUFFIX_CONFIG: &str = "-config";
pub const SUFFIX_SUPERUSER: &str = "-superuser";
pub const SUFFIX_REPLICATION: &str = "-replication";
/// The cluster's CA (`ca.crt`, `ca.key`), never mounted in a pod.
pub const SUFFIX_CA: &str = "-ca";
/// The PgBouncer pooler's Deployment, Service, ConfigMap and Secret.
pub const SUFFIX_POOLER: &str = "-pooler";
/// The pooler's pods: `app.kubernetes.io/name`, and the cluster they serve
/// (never [`LABEL_CLUSTER`], which marks the instances).
pub const POOLER_APP_NAME: &str = "pgbouncer";
pub const LABEL_POOLER: &str = "ordinal.dev/pooler";
/// Keys of the pooler's ConfigMap and Secret.
pub const POOLER_INI: &str = "pgbouncer.ini";
pub const POOLER_USERLIST: &str = "userlist.txt";
/// The servers' certificate the operator issues (`tls.crt`, `tls.key`, `ca.crt`).
pub const SUFFIX_SERVER_TLS: &str = "-server";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const TLS_CA_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";

/// Name of the volumeClaimTemplate; PVCs are `data-<cluster>-<ordinal>`.
pub const VOLUME_DATA: &str = "data";
/// Keys of the generated Secrets (basic-auth Secret layout).
pub const SECRET_USERNAME_KEY: &str = "username";
pub const SECRET_PASSWORD_KEY: &str = "password";
/// PostgreSQL role names written into generated Secrets.
pub const SUPERUSER_NAME: &str = "postgres";
pub const REPLICATION_USER_NAME: &str = "streaming_replica";
/// The role PgBouncer looks passwords up as (`auth_user`): it may only
/// call [`POOLER_LOOKUP`], never read a table.
pub const POOLER_AUTH_USER: &str = "ordinal_pooler";
/// The SECURITY DEFINER function PgBouncer's `auth_query` calls, in the
/// `postgres` database.
pub const POOLER_LOOKUP: &str = "ordinal.pooler_lookup";

/// The PostgreSQL port every instance listens on.
pub const POSTGRES_PORT: i32 = 5432;
pub const POSTGRES_PORT_NAME: &str = "postgresql";
/// `ordinal-init run` answers the kubelet's probes over HTTP on this port
/// (no command run in the container per probe).
pub const HEALTH_PORT: i32 = 8008;
pub const HEALTH_PORT_NAME: &str = "health";
/// The probes' paths on [`HEALTH_PORT`].
pub const HEALTH_LIVE_PATH: &str = "/livez";
pub const HEALTH_READY_PATH: &str = "/readyz";

/// Paths inside the postgres pod.
pub mod paths {
    /// emptyDir shared by the `install` and `init` containers and `postgres`.
    pub const ORDINAL_DIR: &str = "/ordinal";
    /// The init binary as installed into [`ORDINAL_DIR`].
    pub const ORDINAL_INIT: &str = "/ordinal/ordinal-init";
    /// Mount point of the data volume.
    pub const DATA_MOUNT: &str = "/var/lib/postgresql/data";
    /// PGDATA: a subdirectory of the mount, so that a fresh volume's
    /// `lost+found` or root ownership never gets in postgres' way.
    pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
    /// The ConfigMap (postgresql.conf fragment and pg_hba.conf).
    pub const CONFIG_DIR: &str = "/etc/ordinal/config";
    /// Superuser credentials, mounted as files.
    pub const SUPERUSER_SECRET_DIR: &str = "/etc/ordinal/superuser";
    /// Replication credentials, mounted as files.
    pub const REPLICATION_SECRET_DIR: &str = "/etc/ordinal/replication";
    /// Unix socket directory (writable under a read-only root filesystem).
    pub const RUN_DIR: &str = "/var/run/postgresql";
    /// The backup store's credentials, mounted as files named after
    /// object_store's options.
    pub const BACKUP_SECRET_DIR: &str = "/etc/ordinal/backup";
    /// The same, of the store a new cluster is restored from.
    pub const RECOVERY_SECRET_DIR: &str = "/etc/ordinal/recovery";
    /// The servers' certificate, key and CA (the TLS Secret).
    pub const TLS_DIR: &str = "/etc/ordinal/tls";
    /// The pooler's pgbouncer.ini (ConfigMap) and userlist.txt (Secret).
    pub const POOLER_CONFIG_DIR: &str = "/etc/ordinal/pooler";
    pub const POOLER_AUTH_DIR: &str = "/etc/ordinal/pooler-auth";
    pub const TLS_CERT: &str = "/etc/ordinal/tls/tls.crt";
    pub const TLS_KEY: &str = "/etc/ordinal/tls/tls.key";
    pub const TLS_CA: &str = "/etc/ordinal/tls/ca.crt";
}

/// Environment variables the StatefulSet sets and `ordinal-init` reads.
pub mod env {
    pub const POD_NAME: &str = "POD_NAME";
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    pub const CLUSTER: &str = "ORDINAL_CLUSTER";
    pub const SERVICE: &str = "ORDINAL_SERVICE";
    pub const PGDATA: &str = "PGDATA";
    pub const PGHOST: &str = "PGHOST";
    pub const PGPORT: &str = "PGPORT";
    pub const SUPERUSER_DIR: &str = "ORDINAL_SUPERUSER_DIR";
    pub const REPLICATION_DIR: &str = "ORDINAL_REPLICATION_DIR";
    pub const MAX_READY_LAG_BYTES: &str = "ORDINAL_MAX_READY_LAG_BYTES";
    pub const ISOLATION_SECONDS: &str = "ORDINAL_ISOLATION_SECONDS";
    /// Where `ordinal-init run` serves its probes (`0.0.0.0:8008` in a
    /// pod); unset, it serves none.
    pub const HEALTH_ADDRESS: &str = "ORDINAL_HEALTH_ADDRESS";
    /// The WAL archive (`ordinal-init wal-push` / `wal-fetch`).
    pub const BACKUP_URL: &str = "ORDINAL_BACKUP_URL";
    pub const BACKUP_OPTIONS: &str = "ORDINAL_BACKUP_OPTIONS";
    pub const BACKUP_CREDENTIALS_DIR: &str = "ORDINAL_BACKUP_CREDENTIALS_DIR";
    /// The store a new cluster is restored from (spec.bootstrap.recovery),
    /// read only.
    pub const RECOVERY_URL: &str = "ORDINAL_RECOVERY_URL";
    pub const RECOVERY_OPTIONS: &str = "ORDINAL_RECOVERY_OPTIONS";
    pub const RECOVERY_CREDENTIALS_DIR: &str = "ORDINAL_RECOVERY_CREDENTIALS_DIR";
    /// Which backup, and how far to replay: at most one target is set.
    pub const RECOVERY_BACKUP: &str = "ORDINAL_RECOVERY_BACKUP";
    pub const RECOVERY_TARGET_TIME: &str = "ORDINAL_RECOVERY_TARGET_TIME";
    pub const RECOVERY_TARGET_LSN: &str = "ORDINAL_RECOVERY_TARGET_LSN";
    pub const RECOVERY_TARGET_NAME: &str = "ORDINAL_RECOVERY_TARGET_NAME";
    /// The CA file replication connections verify the primary against
    /// (`sslmode=verify-full`); unset while TLS is off.
    pub const TLS_CA: &str = "ORDINAL_TLS_CA";
}

/// The pod's first init container: it copies ordinal-init and waits for
/// the data volume's lock.
pub const INSTALL_CONTAINER: &str = "install";
/// The init container that runs `ordinal-init init`.
pub const INIT_CONTAINER: &str = "init";

/// Keys of the ConfigMap.
pub const CONFIG_POSTGRESQL_CONF: &str = "postgresql.conf";
pub const CONFIG_PG_HBA: &str = "pg_hba.conf";
/// How ordinal-init connects to the primary: `verify-full` or `prefer`.
pub const CONFIG_REPLICATION_SSLMODE: &str = "replication-sslmode";

/// Names of the objects of cluster `cluster`.
pub fn headless_service(cluster: &str) -> String {
    format!("{cluster}{SUFFIX_HEADLESS}")
}
pub fn rw_service(cluster: &str) -> String {
    format!("{cluster}{SUFFIX_RW}")
}
pub fn ro_service(cluster: &str) -> String {
    format!("{cluster}{SUFFIX_RO}")
}
pub fn config_map(cluster: &str) -> String {
    format!("{cluster}{SUFFIX_CONFIG}")
}
pub fn superuser_secret(cluster: &str) -> String {
    format!("{cluster}{SUFFIX_SUPERUSER}")
}
pub fn replication_secret(cluster: &str) -> String {
    format!("{cluster}{SUFFIX_REPLICATION}")
}
pub fn pooler(cluster: &str) -> String {
    format!("{cluster}{SUFFIX_POOLER}")
}
/// The generated credentials of [`POOLER_AUTH_USER`].
pub fn pooler_auth_secret(cluster: &str) -> String {
    format!("{cluster}{SUFFIX_POOLER}-auth")
}
pub fn ca_secret(cluster: &str) -> String {
    format!("{cluster}{SUFFIX_CA}")
}
pub fn server_tls_secret(cluster: &str) -> String {
    format!("{cluster}{SUFFIX_SERVER_TLS}")
}
/// Name of the pod with `ordinal` in cluster `cluster`.
pub fn pod(cluster: &str, ordinal: i32) -> String {
    format!("{cluster}-{ordinal}")
}
/// Name of the data PVC of pod `<cluster>-<ordinal>`.
pub fn data_pvc(cluster: &str, ordinal: i32) -> String {
    format!("{VOLUME_DATA}-{cluster}-{ordinal}")
}

/// The physical replication slot of pod `pod` on the primary: slot names
/// allow only lowercase letters, digits and underscores.
pub fn slot_name(pod: &str) -> String {
    pod.replace(['-', '.'], "_")
}

/// The ordinal of pod `pod` in cluster `cluster`, if the pod belongs to it.
pub fn ordinal_of(cluster: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(cluster)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// Stable DNS name of a pod through the headless Service:
/// `db-0.db-headless.ns.svc` (cluster domain left to the resolver's search path).
pub fn pod_dns(pod: &str, service: &str, namespace: &str) -> String {
    format!("{pod}.{service}.{namespace}.svc")
}

/// The pod names of an [`ANNOTATION_FENCED`] value: comma-separated,
/// blanks ignored, each once.
pub fn parse_fenced(value: Option<&String>) -> Vec<String> {
    let mut pods: Vec<String> = Vec::new();
    for pod in value.map(String::as_str).unwrap_or_default().split(',') {
        let pod = pod.trim();
        if !pod.is_empty() && !pods.iter().any(|p| p == pod) {
            pods.push(pod.to_owned());
        }
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_parse_only_for_own_pods() {
        assert_eq!(ordinal_of("db", "db-0"), Some(0));
        assert_eq!(ordinal_of("db", "db-12"), Some(12));
        assert_eq!(ordinal_of("db", "db-x"), None);
        assert_eq!(ordinal_of("db", "db-"), None);
        assert_eq!(ordinal_of("db", "dbx-1"), None);
        assert_eq!(ordinal_of("db", "db-other-1"), None);
        assert_eq!(ordinal_of("db-other", "db-other-1"), Some(1));
    }

    #[test]
    fn names_follow_the_design() {
        assert_eq!(headless_service("db"), "db-headless");
        assert_eq!(rw_service("db"), "db-rw");
        assert_eq!(ro_service("db"), "db-ro");
        assert_eq!(data_pvc("db", 2), "data-db-2");
        assert_eq!(slot_name("orders-db-2"), "orders_db_2");
        assert_eq!(
            pod_dns("db-0", "db-headless", "ns"),
            "db-0.db-headless.ns.svc"
        );
    }

    #[test]
    fn fenced_instances_are_a_comma_separated_list() {
        let value = |v: &str| parse_fenced(Some(&v.to_owned()));
        assert_eq!(value("db-1"), ["db-1"]);
        assert_eq!(value(" db-2 ,db-1,,db-2 "), ["db-2", "db-1"]);
        assert!(value("").is_empty());
        assert!(parse_fenced(None).is_empty());
    }
}
