//! Admission rules, evaluated without an API server: the CEL rules and the
//! schema of the CRD YAML that `deploy/` installs, so that what is tested is
//! what the API server enforces.

use kube::core::cel::Validator;
use serde_json::{Value, json};

use super::*;

const CRD_YAML: &str = include_str!("../../deploy/crds/postgresclusters.ordinal.dev.yaml");

/// The openAPIV3Schema of the checked-in CRD file.
fn schema() -> Value {
    let crd: Value = serde_norway::from_str(CRD_YAML).expect("CRD YAML parses");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn cluster(spec: Value) -> Value {
    json!({
        "apiVersion": "ordinal.dev/v1alpha1",
        "kind": "PostgresCluster",
        "metadata": {"name": "db", "namespace": "ns"},
        "spec": spec,
    })
}

fn create(spec: Value) -> Result<(), String> {
    Validator::new()
        .validate(&schema(), &cluster(spec), None)
        .map_err(|e| e.to_string())
}

fn update(old: Value, new: Value) -> Result<(), String> {
    Validator::new()
        .validate(&schema(), &cluster(new), Some(&cluster(old)))
        .map_err(|e| e.to_string())
}

#[track_caller]
fn assert_rejected(result: Result<(), String>, message: &str) {
    match result {
        Ok(()) => panic!("expected rejection with {message:?}, but the object was accepted"),
        Err(e) => assert!(e.contains(message), "expected {message:?} in:\n{e}"),
    }
}

#[test]
fn checked_in_crd_is_the_generated_one() {
    let generated = crd_yaml().expect("CRD serializes");
    assert!(
        generated == CRD_YAML,
        "deploy/crds/postgresclusters.ordinal.dev.yaml is stale: run scripts/gen.sh"
    );
}

/// The API server estimates each rule's worst-case cost from the schema
/// bounds under the node it is attached to, and rejects the CRD when an
/// unbounded string, list or map could blow its budget. So every string
/// under a validated node has maxLength, every list maxItems, every map
/// maxProperties (metadata.name is bounded by the API server itself).
#[test]
fn every_field_a_rule_can_reach_is_bounded() {
    fn unbounded(node: &Value, path: &str, out: &mut Vec<String>) {
        if node["x-kubernetes-int-or-string"] == true || node.get("enum").is_some() {
            return;
        }
        match node["type"].as_str() {
            Some("string") if node.get("maxLength").is_none() => {
                out.push(format!("{path}: string without maxLength"))
            }
            Some("array") => {
                if node.get("maxItems").is_none() {
                    out.push(format!("{path}: list without maxItems"));
                }
                unbounded(&node["items"], &format!("{path}[]"), out);
            }
            Some("object") => {
                if node["additionalProperties"].is_object() {
                    if node.get("maxProperties").is_none() {
                        out.push(format!("{path}: map without maxProperties"));
                    }
                    unbounded(&node["additionalProperties"], &format!("{path}{{}}"), out);
                }
                // resources and networkPolicy's peers are Kubernetes
                // types that no rule reads.
                for (name, child) in node["properties"].as_object().into_iter().flatten() {
                    if name != "resources" && name != "clients" {
                        unbounded(child, &format!("{path}.{name}"), out);
                    }
                }
            }
            _ => {}
        }
    }
    fn walk(node: &Value, path: &str, out: &mut Vec<String>) {
        if node.get("x-kubernetes-validations").is_some() && !path.is_empty() {
            unbounded(node, path, out);
        }
        for (name, child) in node["properties"].as_object().into_iter().flatten() {
            if name != "resources" && name != "clients" {
                walk(child, &format!("{path}.{name}"), out);
            }
        }
    }
    let mut problems = Vec::new();
    walk(&schema()["properties"]["spec"], "spec", &mut problems);
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_rule_compiles() {
    let compiled = kube::core::cel::compile_schema(&schema());
    let errors: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "CEL rules that do not compile: {errors:?}"
    );
}

#[test]
fn crd_names_subresources_and_columns() {
    let crd: Value = serde_norway::from_str(CRD_YAML).expect("CRD YAML parses");
    assert_eq!(crd["metadata"]["name"], "postgresclusters.ordinal.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["pgc"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    assert_eq!(
        version["subresources"]["scale"],
        json!({
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        })
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Primary", "Ready", "Phase", "Max Lag", "Age"]);
}

#[test]
fn storage_and_size_are_required() {
    let schema = schema();
    let spec = &schema["properties"]["spec"];
    assert_eq!(spec["required"], json!(["storage"]));
    assert_eq!(spec["properties"]["storage"]["required"], json!(["size"]));
    assert_eq!(schema["required"], json!(["spec"]));
}

#[test]
fn bounds_are_in_the_schema() {
    let spec = &schema()["properties"]["spec"]["properties"];
    let bound = |v: &Value| v.as_f64().expect("numeric bound");
    assert_eq!(bound(&spec["replicas"]["maximum"]), 99.0);
    assert_eq!(
        bound(&spec["replication"]["properties"]["quorum"]["minimum"]),
        1.0
    );
    assert_eq!(
        bound(&spec["topology"]["properties"]["maxSkew"]["minimum"]),
        1.0
    );
    assert_eq!(
        bound(&spec["failover"]["properties"]["checkIntervalSeconds"]["minimum"]),
        1.0
    );
    assert_eq!(
        bound(&spec["updateStrategy"]["properties"]["partition"]["minimum"]),
        0.0
    );
    assert_eq!(
        spec["podManagementPolicy"]["enum"],
        json!(["OrderedReady", "Parallel"])
    );
    assert_eq!(
        spec["replication"]["properties"]["mode"]["enum"],
        json!(["async", "quorum"])
    );
}

#[test]
fn defaults_are_in_the_schema() {
    let spec = &schema()["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["default"], 3);
    assert_eq!(spec["image"]["default"], "postgres:17");
    assert_eq!(spec["podManagementPolicy"]["default"], "Parallel");
    assert_eq!(spec["failover"]["properties"]["enabled"]["default"], true);
    assert_eq!(
        spec["failover"]["properties"]["maxLagBytesOnFailover"]["default"],
        16 * 1024 * 1024
    );
    assert_eq!(
        spec["topology"]["properties"]["whenUnsatisfiable"]["default"],
        "ScheduleAnyway"
    );
    assert_eq!(
        spec["storage"]["properties"]["pvcRetention"]["properties"]["whenDeleted"]["default"],
        "Retain"
    );
}

#[test]
fn valid_specs_are_accepted() {
    create(json!({"storage": {"size": "10Gi"}})).expect("minimal spec");
    create(json!({
        "replicas": 5,
        "image": "postgres:17.2",
        "imagePullPolicy": "IfNotPresent",
        "storage": {"size": "500Mi", "storageClassName": "fast", "pvcRetention": {"whenDeleted": "Delete", "whenScaled": "Retain"}},
        "postgresql": {"parameters": {"shared_buffers": "256MB", "max_connections": "200", "pg_stat_statements.max": "1000"}, "pgHba": ["host all all 10.0.0.0/8 scram-sha-256"]},
        "podManagementPolicy": "OrderedReady",
        "topology": {"maxSkew": 2, "whenUnsatisfiable": "DoNotSchedule"},
        "podDisruptionBudget": {"minAvailable": 3},
        "replication": {"mode": "quorum", "quorum": 2, "maxReadyLagBytes": 1048576},
        "failover": {"enabled": true, "checkIntervalSeconds": 2, "failureThreshold": 5},
        "updateStrategy": {"partition": 3},
        "superuserSecret": "my-superuser",
        "serviceName": "db-pods",
    }))
    .expect("full spec");
    // A single instance needs no PDB, so its minAvailable is not compared.
    create(json!({"replicas": 1, "storage": {"size": "1Gi"}, "podDisruptionBudget": {"minAvailable": 1}}))
        .expect("single instance");
    // quorum is only read in quorum mode.
    create(json!({"replicas": 2, "storage": {"size": "1Gi"}, "replication": {"quorum": 4}}))
        .expect("async mode ignores quorum");
}

#[test]
fn backup_names_exactly_one_store_and_a_clean_prefix() {
    let spec = |backup: Value| json!({"storage": {"size": "1Gi"}, "backup": backup});
    let s3 = json!({"bucket": "backups", "endpoint": "http://minio:9000", "pathStyle": true});
    create(spec(json!({"s3": s3, "credentialsSecret": "store"}))).expect("s3");
    create(spec(
        json!({"gcs": {"bucket": "backups"}, "credentialsSecret": "store", "prefix": "prod/db-1"}),
    ))
    .expect("gcs with a prefix");
    assert_rejected(
        create(spec(json!({"credentialsSecret": "store"}))),
        "backup must name exactly one object store: s3, gcs or azure",
    );
    assert_rejected(
        create(spec(
            json!({"s3": s3, "gcs": {"bucket": "backups"}, "credentialsSecret": "store"}),
        )),
        "backup must name exactly one object store: s3, gcs or azure",
    );
    for prefix in [
        "/abs",
        "trailing/",
        "a//b",
        "sp ace",
        "../up",
        "a/./b",
        ".hidden",
    ] {
        assert_rejected(
            create(spec(
                json!({"s3": s3, "credentialsSecret": "store", "prefix": prefix}),
            )),
            "backup.prefix must be a path",
        );
    }
    assert_rejected(
        create(spec(json!({"s3": s3, "credentialsSecret": "Store_1"}))),
        "backup.credentialsSecret must be a valid Secret name",
    );
    let azure = |endpoint: &str| {
        json!({"azure": {"account": "devstoreaccount1", "container": "wal", "endpoint": endpoint},
               "credentialsSecret": "store"})
    };
    create(spec(azure("http://azurite:10000/devstoreaccount1"))).expect("azurite");
    create(spec(azure("https://acct.blob.core.chinacloudapi.cn"))).expect("a sovereign cloud");
    for endpoint in ["azurite:10000", "ftp://x", "http://"] {
        assert_rejected(
            create(spec(azure(endpoint))),
            "backup.azure.endpoint must be an http:// or https:// URL",
        );
    }
    // The range is OpenAPI's (the API server checks it, not CEL).
    let timeout = &schema()["properties"]["spec"]["properties"]["backup"]["properties"]["archiveTimeoutSeconds"];
    assert_eq!(timeout["minimum"].as_f64(), Some(10.0));
    assert_eq!(timeout["maximum"].as_f64(), Some(3600.0));
    assert_eq!(timeout["default"], 60);
}

#[test]
fn replicas_must_be_at_least_one() {
    assert_rejected(
        create(json!({"replicas": 0, "storage": {"size": "10Gi"}})),
        "replicas must be at least 1",
    );
}

#[test]
fn quorum_must_be_less_than_replicas() {
    let spec = |replicas, quorum| json!({"replicas": replicas, "storage": {"size": "1Gi"}, "replication": {"mode": "quorum", "quorum": quorum}});
    assert_rejected(
        create(spec(3, 3)),
        "replication.quorum must be less than replicas",
    );
    assert_rejected(
        create(spec(1, 1)),
        "replication.quorum must be less than replicas",
    );
    create(spec(3, 2)).expect("quorum 2 of 3");
    // Defaulted quorum (1) against a single instance.
    assert_rejected(
        create(
            json!({"replicas": 1, "storage": {"size": "1Gi"}, "replication": {"mode": "quorum"}}),
        ),
        "replication.quorum must be less than replicas",
    );
}

#[test]
fn storage_size_must_be_a_positive_quantity() {
    for size in ["ten gigs", "", "0", "-1Gi", "10 Gi"] {
        assert_rejected(
            create(json!({"storage": {"size": size}})),
            "storage.size must be a positive quantity",
        );
    }
    for size in ["1Gi", "500M", "1.5Ti", "1073741824"] {
        create(json!({"storage": {"size": size}})).expect(size);
    }
}

#[test]
fn storage_class_name_is_immutable() {
    let with = |class: Option<&str>| match class {
        Some(c) => json!({"storage": {"size": "1Gi", "storageClassName": c}}),
        None => json!({"storage": {"size": "1Gi"}}),
    };
    assert_rejected(
        update(with(Some("standard")), with(Some("fast"))),
        "storage.storageClassName is immutable",
    );
    assert_rejected(
        update(with(None), with(Some("fast"))),
        "storage.storageClassName is immutable",
    );
    assert_rejected(
        update(with(Some("fast")), with(None)),
        "storage.storageClassName is immutable",
    );
    update(with(Some("fast")), with(Some("fast"))).expect("unchanged class");
}

#[test]
fn storage_size_grows_but_never_shrinks() {
    let size = |s: &str| json!({"storage": {"size": s}});
    update(size("1Gi"), size("2Gi")).expect("growing");
    update(size("1Gi"), size("1024Mi")).expect("the same size, written another way");
    update(size("1Gi"), size("1Gi")).expect("unchanged");
    assert_rejected(
        update(size("2Gi"), size("1Gi")),
        "storage.size cannot shrink",
    );
    assert_rejected(
        update(size("1Gi"), size("1000Mi")),
        "storage.size cannot shrink",
    );
}

#[test]
fn images_name_a_tag_or_a_digest_never_latest() {
    let image = |i: &str| json!({"image": i, "storage": {"size": "1Gi"}});
    let digest = format!("@sha256:{}", "0123456789abcdef".repeat(4));
    for ok in [
        "postgres:17".to_owned(),
        "postgres:17.2-bookworm".to_owned(),
        "registry.example:5000/team/postgres:16.4".to_owned(),
        format!("postgres{digest}"),
        format!("registry.example:5000/postgres:latest{digest}"),
        format!("postgres:17{digest}"),
    ] {
        create(image(&ok)).unwrap_or_else(|e| panic!("{ok} refused: {e}"));
    }
    for untagged in [
        "postgres",
        "registry.example:5000/postgres",
        "ghcr.io/org/pg",
        "postgres:",
    ] {
        assert_rejected(create(image(untagged)), "image must name a tag");
    }
    for latest in ["postgres:latest", "registry.example:5000/postgres:latest"] {
        assert_rejected(create(image(latest)), "image must not use the tag latest");
    }
    // A short or malformed digest pins nothing.
    assert_rejected(
        create(image("postgres@sha256:abc")),
        "image must name a tag",
    );
}

#[test]
fn the_major_version_cannot_change() {
    let image = |i: &str| json!({"image": i, "storage": {"size": "1Gi"}});
    let digest = format!("@sha256:{}", "0123456789abcdef".repeat(4));
    for (old, new) in [
        ("postgres:17", "postgres:17.2"),
        ("postgres:17.2", "postgres:17.3-bookworm"),
        ("postgres:16", "registry.example:5000/mirror/postgres:16.8"),
        (
            "registry.example:5000/postgres:16",
            "registry.example:5000/postgres:16.1",
        ),
    ] {
        update(image(old), image(new)).unwrap_or_else(|e| panic!("{old} -> {new} refused: {e}"));
    }
    // A tag without a number, or a digest alone, says no major version:
    // the reconciler reads the running pods' instead.
    update(image("postgres:17"), image(&format!("postgres{digest}"))).expect("tag to digest");
    update(image(&format!("postgres{digest}")), image("postgres:16")).expect("digest to tag");
    for (old, new) in [
        ("postgres:16", "postgres:17"),
        ("postgres:17.2", "postgres:16.6-bookworm"),
        (
            "registry.example:5000/postgres:16",
            "registry.example:5000/postgres:17",
        ),
    ] {
        assert_rejected(
            update(image(old), image(new)),
            "image cannot change the PostgreSQL major version",
        );
    }
    let pinned = format!("postgres:17{digest}");
    assert_rejected(
        update(image("postgres:16"), image(&pinned)),
        "image cannot change the PostgreSQL major version",
    );
}

#[test]
fn statefulset_immutable_fields_are_immutable() {
    assert_rejected(
        update(
            json!({"storage": {"size": "1Gi"}}),
            json!({"storage": {"size": "1Gi"}, "podManagementPolicy": "OrderedReady"}),
        ),
        "podManagementPolicy is immutable",
    );
    assert_rejected(
        update(
            json!({"storage": {"size": "1Gi"}}),
            json!({"storage": {"size": "1Gi"}, "serviceName": "pods"}),
        ),
        "serviceName is immutable",
    );
    // Mutable fields stay mutable.
    update(
        json!({"storage": {"size": "1Gi"}}),
        json!({"storage": {"size": "1Gi"}, "replicas": 5, "image": "postgres:17.3", "storage": {"size": "1Gi", "pvcRetention": {"whenScaled": "Delete"}}}),
    )
    .expect("replicas, image and retention may change");
}

#[test]
fn operator_owned_parameters_are_refused() {
    for parameter in OPERATOR_OWNED_PARAMETERS {
        assert_rejected(
            create(
                json!({"storage": {"size": "1Gi"}, "postgresql": {"parameters": {*parameter: "x"}}}),
            ),
            "sets a parameter that Ordinal manages",
        );
    }
    create(json!({"storage": {"size": "1Gi"}, "postgresql": {"parameters": {"work_mem": "64MB"}}}))
        .expect("a user parameter");
}

#[test]
fn pg_hba_entries_are_single_lines() {
    assert_rejected(
        create(
            json!({"storage": {"size": "1Gi"}, "postgresql": {"pgHba": ["host all all 0.0.0.0/0 trust\nlocal all all trust"]}}),
        ),
        "without line breaks",
    );
}

#[test]
fn pdb_must_allow_a_disruption() {
    assert_rejected(
        create(
            json!({"replicas": 3, "storage": {"size": "1Gi"}, "podDisruptionBudget": {"minAvailable": 3}}),
        ),
        "podDisruptionBudget.minAvailable must be less than replicas",
    );
}

#[test]
fn names_must_fit_pod_and_service_names() {
    let named = |name: &str| {
        let mut obj = cluster(json!({"storage": {"size": "1Gi"}}));
        obj["metadata"]["name"] = json!(name);
        Validator::new()
            .validate(&schema(), &obj, None)
            .map_err(|e| e.to_string())
    };
    named("db").expect("short name");
    named("orders-db-2").expect("name with digits");
    for bad in ["1db", "db.prod", &"a".repeat(51)] {
        assert_rejected(named(bad), "metadata.name must start with a letter");
    }
    assert_rejected(named("default"), "must not be 'default'");
}

#[test]
fn secret_and_service_names_are_validated() {
    assert_rejected(
        create(json!({"storage": {"size": "1Gi"}, "superuserSecret": "Bad_Name"})),
        "superuserSecret must be a valid Secret name",
    );
    assert_rejected(
        create(json!({"storage": {"size": "1Gi"}, "serviceName": "db.pods"})),
        "serviceName must be a DNS label",
    );
}

#[test]
fn pdb_min_available_defaults_to_replicas_minus_one() {
    let spec: PostgresClusterSpec =
        serde_json::from_value(json!({"replicas": 3, "storage": {"size": "1Gi"}}))
            .expect("spec parses");
    let pgc = PostgresCluster::new("db", spec.clone());
    assert_eq!(pgc.pdb_min_available(), Some(2));
    let single = PostgresCluster::new(
        "db",
        PostgresClusterSpec {
            replicas: 1,
            ..spec.clone()
        },
    );
    assert_eq!(single.pdb_min_available(), None);
    let mut custom = PostgresCluster::new("db", spec);
    custom.spec.pod_disruption_budget.min_available = Some(1);
    assert_eq!(custom.pdb_min_available(), Some(1));
}

#[test]
fn spec_defaults_match_the_design() {
    let spec: PostgresClusterSpec =
        serde_json::from_value(json!({"storage": {"size": "1Gi"}})).expect("spec parses");
    assert_eq!(spec.replicas, 3);
    assert_eq!(spec.image, "postgres:17");
    assert_eq!(spec.pod_management_policy, PodManagementPolicy::Parallel);
    assert_eq!(spec.replication.mode, ReplicationMode::Async);
    assert_eq!(spec.replication.quorum, 1);
    assert!(spec.failover.enabled);
    assert_eq!(spec.failover.check_interval_seconds, 1);
    assert_eq!(spec.failover.failure_threshold, 3);
    assert_eq!(spec.failover.max_lag_bytes_on_failover, 16 << 20);
    assert_eq!(spec.topology.zone_key, "topology.kubernetes.io/zone");
    assert_eq!(spec.topology.node_key, "kubernetes.io/hostname");
    assert_eq!(spec.topology.max_skew, 1);
    assert_eq!(
        spec.topology.when_unsatisfiable,
        WhenUnsatisfiable::ScheduleAnyway
    );
    assert_eq!(
        spec.storage.pvc_retention.when_deleted,
        RetentionPolicy::Retain
    );
    assert_eq!(
        spec.storage.pvc_retention.when_scaled,
        RetentionPolicy::Retain
    );
    assert_eq!(spec.update_strategy.partition, 0);
}

#[test]
fn readme_crd_reference_is_current() {
    let readme = include_str!("../../README.md");
    let start = "<!-- crd-reference:start -->\n";
    let end = "<!-- crd-reference:end -->";
    let from = readme.find(start).expect("start marker") + start.len();
    let to = readme.find(end).expect("end marker");
    assert!(
        readme[from..to] == crd_reference(),
        "README.md's CRD reference is stale: run scripts/gen.sh"
    );
}

#[test]
fn examples_are_valid_clusters() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(examples).expect("deploy/examples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("example");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).expect("YAML");
            if value["kind"] != "PostgresCluster" {
                continue;
            }
            let mut value = value;
            value["metadata"]["namespace"] = json!("ns");
            Validator::new()
                .validate(&schema(), &value, None)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let _: PostgresCluster =
                serde_json::from_value(value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen > 0, "no PostgresCluster in deploy/examples");
}

const BACKUP_CRD_YAML: &str = include_str!("../../deploy/crds/postgresbackups.ordinal.dev.yaml");

fn backup_schema() -> Value {
    let crd: Value = serde_norway::from_str(BACKUP_CRD_YAML).expect("CRD YAML parses");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn backup(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ordinal.dev/v1alpha1",
        "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
    })
}

#[test]
fn checked_in_backup_crd_is_the_generated_one() {
    let generated = backup_crd_yaml().expect("CRD serializes");
    assert!(
        generated == BACKUP_CRD_YAML,
        "deploy/crds/postgresbackups.ordinal.dev.yaml is stale: run scripts/gen.sh"
    );
}

#[test]
fn a_backup_names_a_cluster_and_never_changes() {
    let validate = |old: Option<Value>, new: Value| {
        Validator::new()
            .validate(&backup_schema(), &new, old.as_ref())
            .map_err(|e| e.to_string())
    };
    let good = backup("nightly", json!({"cluster": "db"}));
    validate(None, good.clone()).expect("a backup of db");
    validate(
        None,
        backup("nightly", json!({"cluster": "db", "target": "Primary"})),
    )
    .expect("from the primary");
    assert_rejected(
        validate(None, backup("nightly", json!({"cluster": "Db_1"}))),
        "cluster must name a PostgresCluster",
    );
    assert_rejected(
        validate(Some(good), backup("nightly", json!({"cluster": "other"}))),
        "a PostgresBackup's spec is immutable",
    );
    assert_rejected(
        validate(None, backup("Nightly.1", json!({"cluster": "db"}))),
        "metadata.name must be a DNS label",
    );
}

#[test]
fn a_restore_names_one_store_at_most_one_target_and_never_changes() {
    let s3 = json!({"bucket": "backups", "endpoint": "http://minio:9000", "pathStyle": true});
    let spec =
        |recovery: Value| json!({"storage": {"size": "1Gi"}, "bootstrap": {"recovery": recovery}});
    let source = json!({"s3": s3, "prefix": "prod/db", "credentialsSecret": "store"});
    create(spec(json!({"source": source}))).expect("the latest");
    create(spec(
        json!({"source": source, "target": {"time": "2026-12-05T21:30:00.123Z"}}),
    ))
    .expect("a time");
    create(spec(
        json!({"source": source, "target": {"time": "2026-12-05T22:30:00+01:00"}}),
    ))
    .expect("a time with an offset");
    create(spec(
        json!({"source": source, "backup": "20261205T213000Z", "target": {"lsn": "0/3000028"}}),
    ))
    .expect("a backup and an LSN");
    create(spec(
        json!({"source": source, "target": {"name": "before-migration"}}),
    ))
    .expect("a restore point");
    assert_rejected(
        create(spec(
            json!({"source": {"prefix": "prod/db", "credentialsSecret": "store"}}),
        )),
        "bootstrap.recovery.source must name exactly one object store",
    );
    assert_rejected(
        create(spec(
            json!({"source": source, "target": {"time": "2026-12-05T21:30:00Z", "lsn": "0/3000028"}}),
        )),
        "bootstrap.recovery.target takes at most one of time, lsn and name",
    );
    for time in ["2026-12-05 21:30:00", "yesterday", "2026-12-05T21:30:00"] {
        assert_rejected(
            create(spec(json!({"source": source, "target": {"time": time}}))),
            "bootstrap.recovery.target.time must be an RFC 3339 time",
        );
    }
    assert_rejected(
        create(spec(
            json!({"source": source, "target": {"lsn": "3000028"}}),
        )),
        "bootstrap.recovery.target.lsn must be a WAL position",
    );
    assert_rejected(
        create(spec(json!({"source": source, "target": {"name": "it's"}}))),
        "bootstrap.recovery.target.name must be a restore point name",
    );
    assert_rejected(
        create(spec(json!({"source": source, "backup": "latest"}))),
        "bootstrap.recovery.backup must be a backup id",
    );
    assert_rejected(
        update(
            spec(json!({"source": source})),
            spec(json!({"source": source, "target": {"lsn": "0/3000028"}})),
        ),
        "bootstrap is immutable",
    );
}

#[test]
fn a_schedule_has_five_fields_and_retention_a_rule() {
    let spec = |extra: Value| {
        let mut backup = json!({"s3": {"bucket": "backups"}, "credentialsSecret": "store"});
        for (k, v) in extra.as_object().expect("object") {
            backup[k] = v.clone();
        }
        json!({"storage": {"size": "1Gi"}, "backup": backup})
    };
    create(spec(
        json!({"schedule": "0 3 * * *", "retention": {"keep": 7}}),
    ))
    .expect("daily, keep 7");
    create(spec(
        json!({"schedule": "@hourly", "retention": {"recoveryWindowDays": 14}}),
    ))
    .expect("hourly, two weeks");
    for schedule in ["0 3 * *", "daily", "0 3 * * * *"] {
        assert_rejected(
            create(spec(json!({"schedule": schedule}))),
            "backup.schedule must be a cron expression of five fields",
        );
    }
    assert_rejected(
        create(spec(json!({"retention": {}}))),
        "backup.retention needs keep, recoveryWindowDays or both",
    );
    let keep = &schema()["properties"]["spec"]["properties"]["backup"]["properties"]["retention"]["properties"]
        ["keep"];
    assert_eq!(keep["minimum"].as_f64(), Some(1.0));
}

#[test]
fn tls_is_on_by_default_and_its_options_need_it() {
    let spec: crate::PostgresClusterSpec =
        serde_json::from_value(json!({"storage": {"size": "1Gi"}})).expect("spec");
    assert!(spec.tls.enabled);
    assert!(!spec.tls.require_for_clients);
    create(json!({"storage": {"size": "1Gi"}, "tls": {"serverSecret": "pg-tls", "requireForClients": true}}))
        .expect("a user's certificate, required of clients");
    create(json!({"storage": {"size": "1Gi"}, "tls": {"enabled": false}})).expect("TLS off");
    for tls in [
        json!({"enabled": false, "serverSecret": "pg-tls"}),
        json!({"enabled": false, "requireForClients": true}),
    ] {
        assert_rejected(
            create(json!({"storage": {"size": "1Gi"}, "tls": tls})),
            "tls.serverSecret and tls.requireForClients need tls.enabled: true",
        );
    }
    assert_rejected(
        create(json!({"storage": {"size": "1Gi"}, "tls": {"serverSecret": "Bad_Name"}})),
        "tls.serverSecret must be a valid Secret name",
    );
}

#[test]
fn network_policy_is_on_by_default_and_takes_peers() {
    let spec: crate::PostgresClusterSpec =
        serde_json::from_value(json!({"storage": {"size": "1Gi"}})).expect("spec");
    assert!(spec.network_policy.enabled);
    assert!(spec.network_policy.clients.is_none());
    create(
        json!({"storage": {"size": "1Gi"}, "networkPolicy": {"clients": [
            {"namespaceSelector": {"matchLabels": {"team": "payments"}}},
            {"podSelector": {"matchLabels": {"app": "api"}}},
            {"ipBlock": {"cidr": "198.18.0.0/15"}}
        ]}}),
    )
    .expect("peers");
    create(json!({"storage": {"size": "1Gi"}, "networkPolicy": {"enabled": false}})).expect("off");
    create(json!({"storage": {"size": "1Gi"}, "pooler": {"poolMode": "session", "instances": 3}}))
        .expect("a session pooler");
    // Only transaction and session: statement mode breaks transactions.
    let pool_modes =
        &schema()["properties"]["spec"]["properties"]["pooler"]["properties"]["poolMode"]["enum"];
    assert_eq!(pool_modes, &json!(["transaction", "session"]));
}
