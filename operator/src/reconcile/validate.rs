//! Second line of defence behind admission: a spec that slipped past the
//! CRD's rules (an old CRD, a disabled CEL feature gate) is refused here
//! with a message naming the field, and nothing is built from it.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use ordinal_crds::{
    OPERATOR_OWNED_PARAMETERS, PostgresCluster, PostgresClusterSpec, ReplicationMode, TlsStatus,
    names,
};

use crate::Error;
use crate::reconcile::build;

/// A cluster whose spec passed validation: what every builder takes.
#[derive(Clone, Debug)]
pub struct ValidCluster {
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    pub spec: PostgresClusterSpec,
    pub service_name: String,
    pub superuser_secret: String,
    pub replication_secret: String,
    /// TLS on the instances: the Secret they mount and how far TLS has
    /// reached them (status.tls; the reconciler moves it on, see
    /// [`super::tls_phase`]). Before any is recorded, what the spec asks for.
    pub tls: TlsStatus,
    pub pdb_min_available: Option<i32>,
    /// Pods the StatefulSet keeps: spec.replicas, but never fewer than the
    /// primary's ordinal + 1 — a scale-down waits until the failover loop
    /// has switched over to a pod that stays.
    pub statefulset_replicas: i32,
    /// The cluster's restart request ([`names::ANNOTATION_RESTARTED_AT`]),
    /// carried to the pod template.
    pub restarted_at: Option<String>,
}

impl ValidCluster {
    /// The Secret the pods mount, while they mount one.
    pub fn tls_secret(&self) -> Option<&str> {
        self.tls
            .secret
            .as_deref()
            .filter(|_| self.tls.phase.mounted())
    }

    /// Whether the servers offer TLS (`ssl = on`).
    pub fn tls_offered(&self) -> bool {
        self.tls_secret().is_some() && self.tls.phase.offered()
    }

    /// Whether replication requires TLS and verifies the primary.
    pub fn tls_required(&self) -> bool {
        self.tls_secret().is_some() && self.tls.phase.required()
    }
}

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The field, as a path under `spec` (`replication.quorum`).
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spec.{}: {}", self.field, self.message)
    }
}

/// Validates `pgc`. `Err(Error)` when the object itself is unusable (no
/// namespace or uid), `Ok(Err(problems))` when its spec is invalid.
pub fn validate(pgc: &PostgresCluster) -> Result<Result<ValidCluster, Vec<Invalid>>, Error> {
    let name = pgc.name_any();
    let namespace = pgc
        .namespace()
        .ok_or_else(|| Error::MissingNamespace { name: name.clone() })?;
    let owner = pgc
        .controller_owner_ref(&())
        .ok_or_else(|| Error::MissingUid {
            namespace: namespace.clone(),
            name: name.clone(),
        })?;
    let problems = problems(&name, &pgc.spec);
    if !problems.is_empty() {
        return Ok(Err(problems));
    }
    let primary_ordinal = pgc
        .status
        .as_ref()
        .and_then(|s| s.current_primary.as_deref())
        .and_then(|p| ordinal_crds::names::ordinal_of(&name, p));
    let cluster = ValidCluster {
        statefulset_replicas: primary_ordinal
            .map_or(pgc.spec.replicas, |o| pgc.spec.replicas.max(o + 1)),
        service_name: pgc.headless_service_name(),
        superuser_secret: pgc.superuser_secret_name(),
        replication_secret: pgc.replication_secret_name(),
        tls: pgc
            .tls_status()
            .cloned()
            .unwrap_or_else(|| super::tls_phase::settled(pgc.server_tls_secret_name())),
        pdb_min_available: pgc.pdb_min_available(),
        name,
        namespace,
        owner,
        spec: pgc.spec.clone(),
        restarted_at: pgc
            .annotations()
            .get(ordinal_crds::names::ANNOTATION_RESTARTED_AT)
            .cloned(),
    };
    // A restored cluster archives under a prefix of its own: its new
    // timeline's files would otherwise land beside the source's (and an
    // archived file is never overwritten, so archiving would fail).
    if let (Some(archive), Some(source)) = (
        build::backup::archive(&cluster),
        build::backup::recovery_source(&cluster),
    ) && archive.url == source.url
    {
        return Ok(Err(vec![Invalid {
            field: "bootstrap.recovery.source",
            message: format!(
                "the cluster would archive to {}, where it restores from: give spec.backup.prefix a path of its own",
                archive.url
            ),
        }]));
    }
    Ok(Ok(cluster))
}

/// Everything wrong with `spec` of cluster `name`.
pub fn problems(name: &str, spec: &PostgresClusterSpec) -> Vec<Invalid> {
    let mut out = Vec::new();
    let mut bad = |field, message: String| out.push(Invalid { field, message });

    if spec.replicas < 1 {
        bad(
            "replicas",
            format!("must be at least 1, got {}", spec.replicas),
        );
    }
    if spec.image.trim().is_empty() {
        bad("image", "must not be empty".to_owned());
    }
    if !is_positive_quantity(&spec.storage.size) {
        bad(
            "storage.size",
            format!(
                "{:?} is not a positive quantity such as 10Gi",
                spec.storage.size
            ),
        );
    }
    if spec.replication.mode == ReplicationMode::Quorum {
        if spec.replication.quorum < 1 {
            bad(
                "replication.quorum",
                format!("must be at least 1, got {}", spec.replication.quorum),
            );
        } else if spec.replication.quorum >= spec.replicas {
            bad(
                "replication.quorum",
                format!(
                    "quorum {} needs at least {} replicas (quorum standbys plus the primary), got {}",
                    spec.replication.quorum,
                    spec.replication.quorum + 1,
                    spec.replicas
                ),
            );
        }
    }
    if let Some(schedule) = spec.backup.as_ref().and_then(|b| b.schedule.as_deref())
        && let Err(why) = crate::reconcile::schedule::parse(schedule)
    {
        bad("backup.schedule", why);
    }
    let owned: Vec<&str> = spec
        .postgresql
        .parameters
        .keys()
        .map(String::as_str)
        .filter(|k| OPERATOR_OWNED_PARAMETERS.contains(k))
        .collect();
    if !owned.is_empty() {
        bad(
            "postgresql.parameters",
            format!(
                "{} {} managed by Ordinal for replication and failover; remove {}",
                owned.join(", "),
                if owned.len() == 1 { "is" } else { "are" },
                if owned.len() == 1 { "it" } else { "them" }
            ),
        );
    }
    let bad_names: Vec<String> = spec
        .postgresql
        .parameters
        .keys()
        .filter(|k| !is_parameter_name(k))
        .map(|k| format!("{k:?}"))
        .collect();
    if !bad_names.is_empty() {
        bad(
            "postgresql.parameters",
            format!(
                "{} not a parameter name (lowercase letters, digits, '_' and '.')",
                bad_names.join(", ")
            ),
        );
    }
    let bad_values: Vec<&str> = spec
        .postgresql
        .parameters
        .iter()
        .filter(|(_, v)| v.chars().any(char::is_control))
        .map(|(k, _)| k.as_str())
        .collect();
    if !bad_values.is_empty() {
        bad(
            "postgresql.parameters",
            format!(
                "the value of {} holds a line break or control character",
                bad_values.join(", ")
            ),
        );
    }
    if spec.postgresql.pg_hba.iter().any(|l| l.contains('\n')) {
        bad(
            "postgresql.pgHba",
            "each entry must be a single line".to_owned(),
        );
    }
    if let Some(min) = spec.pod_disruption_budget.min_available
        && spec.replicas > 1
        && (min < 0 || min >= spec.replicas)
    {
        bad(
            "podDisruptionBudget.minAvailable",
            format!(
                "must be between 0 and replicas-1 ({}), got {min}",
                spec.replicas - 1
            ),
        );
    }
    if spec.topology.max_skew < 1 {
        bad(
            "topology.maxSkew",
            format!("must be at least 1, got {}", spec.topology.max_skew),
        );
    }
    if spec.failover.check_interval_seconds < 1 {
        bad(
            "failover.checkIntervalSeconds",
            "must be at least 1".to_owned(),
        );
    }
    if spec.failover.failure_threshold < 1 {
        bad("failover.failureThreshold", "must be at least 1".to_owned());
    }
    if spec.update_strategy.partition < 0 {
        bad(
            "updateStrategy.partition",
            "must not be negative".to_owned(),
        );
    }
    if let Some(service) = &spec.service_name {
        let taken = [names::rw_service(name), names::ro_service(name)];
        if taken.contains(service) {
            bad(
                "serviceName",
                format!(
                    "{service} is the name of the cluster's {} Service",
                    if service.ends_with(names::SUFFIX_RW) {
                        "read-write"
                    } else {
                        "read-only"
                    }
                ),
            );
        }
    }
    out
}

/// `work_mem`, `pg_stat_statements.max`: what postgresql.conf accepts as a name.
fn is_parameter_name(k: &str) -> bool {
    k.starts_with(|c: char| c.is_ascii_lowercase())
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

/// The bytes a valid quantity (`10Gi`, `500M`, `1e9`) stands for.
pub fn quantity_bytes(s: &str) -> Option<f64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    if !is_positive_quantity(s) {
        return None;
    }
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, f)| s.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((s, 1.0));
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// A Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1073741824`) above zero.
fn is_positive_quantity(s: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|suffix| s.strip_suffix(suffix).filter(|n| !n.is_empty()));
    let Some(number) = number else { return false };
    // Decimal exponent form (1e9) is a quantity too.
    let mantissa = number.split_once(['e', 'E']).map_or(number, |(m, exp)| {
        if exp
            .trim_start_matches(['+', '-'])
            .bytes()
            .all(|b| b.is_ascii_digit())
            && !exp.is_empty()
        {
            m
        } else {
            ""
        }
    });
    let mantissa = mantissa.strip_prefix('+').unwrap_or(mantissa);
    let valid = !mantissa.is_empty()
        && mantissa.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && mantissa.bytes().filter(|&b| b == b'.').count() <= 1
        && mantissa.bytes().any(|b| b.is_ascii_digit());
    valid && mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cluster;

    #[test]
    fn quantities() {
        for ok in [
            "1Gi",
            "10Gi",
            "500M",
            "1.5Ti",
            "1073741824",
            "1e9",
            "+1Gi",
            "0.5Gi",
        ] {
            assert!(is_positive_quantity(ok), "{ok}");
        }
        for bad in [
            "", "0", "0Gi", "-1Gi", "ten", "10 Gi", "Gi", "1.2.3Gi", "1e", "10GB",
        ] {
            assert!(!is_positive_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn a_valid_spec_has_no_problems() {
        assert!(problems("db", &cluster().build().spec).is_empty());
    }

    #[test]
    fn each_problem_names_its_field() {
        let fields = |pgc: PostgresCluster| -> Vec<&'static str> {
            problems("db", &pgc.spec)
                .into_iter()
                .map(|p| p.field)
                .collect()
        };
        assert_eq!(fields(cluster().replicas(0).build()), ["replicas"]);
        assert_eq!(
            fields(cluster().replicas(3).quorum(3).build()),
            ["replication.quorum"]
        );
        assert_eq!(fields(cluster().size("lots").build()), ["storage.size"]);
        assert_eq!(
            fields(cluster().parameter("wal_level", "minimal").build()),
            ["postgresql.parameters"]
        );
        assert_eq!(
            fields(cluster().service_name("db-rw").build()),
            ["serviceName"]
        );
        assert_eq!(
            fields(cluster().parameter("Work Mem", "1MB").build()),
            ["postgresql.parameters"]
        );
        assert_eq!(
            fields(
                cluster()
                    .parameter("work_mem", "1MB\nwal_level = minimal")
                    .build()
            ),
            ["postgresql.parameters"]
        );
        assert_eq!(
            fields(cluster().min_available(3).build()),
            ["podDisruptionBudget.minAvailable"]
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let p = problems(
            "db",
            &cluster()
                .parameter("wal_level", "minimal")
                .parameter("port", "1")
                .build()
                .spec,
        );
        assert_eq!(
            p[0].to_string(),
            "spec.postgresql.parameters: port, wal_level are managed by Ordinal for replication and failover; remove them"
        );
        let p = problems("db", &cluster().replicas(2).quorum(2).build().spec);
        assert_eq!(
            p[0].to_string(),
            "spec.replication.quorum: quorum 2 needs at least 3 replicas (quorum standbys plus the primary), got 2"
        );
    }
}
