use super::*;
use crate::fixtures::{build_config, cluster, valid};
use ordinal_crds::{ImagePullPolicy, RetentionPolicy, WhenUnsatisfiable};

fn sts(c: ordinal_crds::PostgresCluster) -> StatefulSet {
    build_statefulset(&valid(c), &build_config())
}

fn spec(s: &StatefulSet) -> &StatefulSetSpec {
    s.spec.as_ref().expect("spec")
}

fn pod(s: &StatefulSet) -> &PodSpec {
    spec(s).template.spec.as_ref().expect("pod spec")
}

fn command(c: &Container) -> Vec<&str> {
    c.command.iter().flatten().map(String::as_str).collect()
}

#[test]
fn shape_of_a_default_cluster() {
    let s = sts(cluster().build());
    assert_eq!(s.metadata.name.as_deref(), Some("db"));
    let spec = spec(&s);
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("db-headless"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(
        spec.update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref()),
        Some("OnDelete")
    );
    assert_eq!(spec.selector.match_labels, Some(selector_labels("db")));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .expect("retention");
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
}

#[test]
fn one_data_claim_per_pod() {
    let s = sts(cluster().size("10Gi").build());
    let claims = spec(&s).volume_claim_templates.as_ref().expect("claims");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
    let claim = claims[0].spec.as_ref().expect("claim spec");
    assert_eq!(claim.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
    assert_eq!(claim.storage_class_name, None);
    let requests = claim
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .expect("requests");
    assert_eq!(requests["storage"], Quantity("10Gi".to_owned()));
}

#[test]
fn storage_class_and_retention_delete() {
    let mut c = cluster().build();
    c.spec.storage.storage_class_name = Some("fast".to_owned());
    c.spec.storage.pvc_retention.when_deleted = RetentionPolicy::Delete;
    c.spec.storage.pvc_retention.when_scaled = RetentionPolicy::Delete;
    let s = sts(c);
    let claims = spec(&s).volume_claim_templates.as_ref().expect("claims");
    assert_eq!(
        claims[0]
            .spec
            .as_ref()
            .and_then(|c| c.storage_class_name.as_deref()),
        Some("fast")
    );
    let retention = spec(&s)
        .persistent_volume_claim_retention_policy
        .as_ref()
        .expect("retention");
    assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
    assert_eq!(retention.when_scaled.as_deref(), Some("Delete"));
}

#[test]
fn single_replica_and_ordered_ready_policy() {
    let mut c = cluster().replicas(1).build();
    c.spec.pod_management_policy = ordinal_crds::PodManagementPolicy::OrderedReady;
    let s = sts(c);
    assert_eq!(spec(&s).replicas, Some(1));
    assert_eq!(
        spec(&s).pod_management_policy.as_deref(),
        Some("OrderedReady")
    );
}

#[test]
fn custom_service_name_governs_the_pods() {
    let s = sts(cluster().service_name("pods").build());
    assert_eq!(spec(&s).service_name.as_deref(), Some("pods"));
    let env = pod(&s).containers[0].env.as_ref().expect("env");
    assert!(
        env.iter()
            .any(|e| e.name == "ORDINAL_SERVICE" && e.value.as_deref() == Some("pods"))
    );
}

#[test]
fn three_containers_run_ordinal_init() {
    let s = sts(cluster().build());
    let pod = pod(&s);
    let init = pod.init_containers.as_ref().expect("init containers");
    assert_eq!(init.len(), 2);
    assert_eq!(init[0].name, "install");
    assert_eq!(
        init[0].image.as_deref(),
        Some("ghcr.io/ordinal-dev/ordinal:test")
    );
    assert_eq!(
        command(&init[0]),
        [
            "/usr/local/bin/ordinal-init",
            "install",
            "/ordinal",
            "--wait-for-volume",
            "/var/lib/postgresql/data"
        ]
    );
    // The install container holds the data volume, for its lock.
    assert!(
        init[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "data" && m.mount_path == "/var/lib/postgresql/data")
    );
    assert_eq!(init[1].name, "init");
    assert_eq!(init[1].image.as_deref(), Some("postgres:17"));
    assert_eq!(command(&init[1]), ["/ordinal/ordinal-init", "init"]);
    assert_eq!(pod.containers.len(), 1);
    let postgres = &pod.containers[0];
    assert_eq!(postgres.name, "postgres");
    assert_eq!(
        command(postgres),
        [
            "/ordinal/ordinal-init",
            "run",
            "--",
            "postgres",
            "-D",
            "/var/lib/postgresql/data/pgdata",
            "-c",
            "config_file=/etc/ordinal/config/postgresql.conf"
        ]
    );
    // The probes are GETs that `ordinal-init run` answers, on the port it
    // is told to serve them on: no command run in the container per probe.
    let probe = |p: &Option<Probe>| -> (String, String) {
        let get = p
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("an HTTP probe");
        assert!(p.as_ref().is_some_and(|p| p.exec.is_none()));
        let port = match get.port {
            IntOrString::Int(port) => port.to_string(),
            IntOrString::String(name) => name,
        };
        (port, get.path.unwrap_or_default())
    };
    let on = |path: &str| ("8008".to_owned(), path.to_owned());
    assert_eq!(probe(&postgres.readiness_probe), on("/readyz"));
    assert_eq!(probe(&postgres.liveness_probe), on("/livez"));
    assert_eq!(probe(&postgres.startup_probe), on("/livez"));
    let health_env = postgres
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ORDINAL_HEALTH_ADDRESS")
        .and_then(|e| e.value.clone());
    assert_eq!(health_env.as_deref(), Some("0.0.0.0:8008"));
    assert!(
        postgres
            .ports
            .iter()
            .flatten()
            .any(|p| p.container_port == 8008 && p.name.as_deref() == Some("health"))
    );
}

#[test]
fn pgdata_is_a_subdirectory_of_the_mount() {
    let s = sts(cluster().build());
    let postgres = &pod(&s).containers[0];
    let data = postgres
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "data")
        .expect("data mount");
    assert_eq!(data.mount_path, "/var/lib/postgresql/data");
    let env = postgres.env.as_ref().expect("env");
    let pgdata = env
        .iter()
        .find(|e| e.name == "PGDATA")
        .and_then(|e| e.value.as_deref());
    assert_eq!(pgdata, Some("/var/lib/postgresql/data/pgdata"));
}

#[test]
fn pods_pass_the_restricted_pod_security_standard() {
    let s = sts(cluster().build());
    let pod = pod(&s);
    let psc = pod.security_context.as_ref().expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(999));
    assert_eq!(psc.fs_group, Some(999));
    assert_eq!(
        psc.fs_group_change_policy.as_deref(),
        Some("OnRootMismatch")
    );
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
        let sc = c
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()]),
            "{}",
            c.name
        );
        assert!(
            c.security_context
                .as_ref()
                .and_then(|s| s.capabilities.as_ref())
                .and_then(|c| c.add.as_ref())
                .is_none()
        );
    }
}

#[test]
fn secrets_are_files_never_env_vars() {
    let s = sts(cluster().build());
    let pod = pod(&s);
    for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
        for e in c.env.iter().flatten() {
            let from_secret = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref());
            assert!(
                from_secret.is_none(),
                "{} reads {} from a secret",
                c.name,
                e.name
            );
        }
        assert!(c.env_from.is_none());
    }
    let secrets: Vec<(&str, Option<&str>)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.secret.as_ref()?.secret_name.as_deref())))
        .collect();
    assert_eq!(
        secrets,
        [
            ("superuser", Some("db-superuser")),
            ("replication", Some("db-replication")),
            ("tls", Some("db-server"))
        ]
    );
    let postgres = &pod.containers[0];
    let mounted: Vec<&str> = postgres
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name == "superuser" || m.name == "replication")
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(
        mounted,
        ["/etc/ordinal/superuser", "/etc/ordinal/replication"]
    );
}

#[test]
fn user_secrets_are_mounted() {
    let mut c = cluster().build();
    c.spec.superuser_secret = Some("mine".to_owned());
    let s = sts(c);
    assert!(
        pod(&s).volumes.iter().flatten().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("mine"))
    );
}

#[test]
fn template_never_carries_a_role() {
    let s = sts(cluster().build());
    let labels = spec(&s)
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    assert!(!labels.contains_key(names::LABEL_ROLE));
    assert_eq!(labels, super::labels("db"));
}

#[test]
fn spread_over_zones_and_nodes() {
    let mut c = cluster().build();
    c.spec.topology.max_skew = 2;
    c.spec.topology.when_unsatisfiable = WhenUnsatisfiable::DoNotSchedule;
    let s = sts(c);
    let pod = pod(&s);
    let constraints = pod
        .topology_spread_constraints
        .as_ref()
        .expect("constraints");
    let keys: Vec<&str> = constraints
        .iter()
        .map(|c| c.topology_key.as_str())
        .collect();
    assert_eq!(
        keys,
        ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    );
    for c in constraints {
        assert_eq!(c.max_skew, 2);
        assert_eq!(c.when_unsatisfiable, "DoNotSchedule");
        assert_eq!(
            c.label_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(selector_labels("db"))
        );
    }
    let preferred = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .expect("preferred anti-affinity");
    assert_eq!(
        preferred[0].pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
}

#[test]
fn config_changes_change_the_template() {
    let hash = |c| {
        sts(c)
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get(names::ANNOTATION_CONFIG_HASH).cloned())
            .expect("hash")
    };
    assert_ne!(
        hash(cluster().build()),
        hash(cluster().parameter("shared_buffers", "1GB").build())
    );
}

#[test]
fn a_restart_request_is_a_new_template() {
    let annotations = |c| {
        sts(c)
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .unwrap_or_default()
    };
    assert!(!annotations(cluster().build()).contains_key(names::ANNOTATION_RESTARTED_AT));
    let mut asked = cluster().build();
    asked.metadata.annotations = Some(
        [(
            names::ANNOTATION_RESTARTED_AT.to_owned(),
            "2026-12-06T04:00:00Z".to_owned(),
        )]
        .into(),
    );
    assert_eq!(
        annotations(asked)
            .get(names::ANNOTATION_RESTARTED_AT)
            .map(String::as_str),
        Some("2026-12-06T04:00:00Z")
    );
}

#[test]
fn image_and_pull_policy_come_from_the_spec() {
    let mut c = cluster().build();
    c.spec.image = "registry.example/postgres:17.2".to_owned();
    c.spec.image_pull_policy = Some(ImagePullPolicy::Always);
    let s = sts(c);
    let pod = pod(&s);
    for c in pod
        .init_containers
        .iter()
        .flatten()
        .skip(1)
        .chain(&pod.containers)
    {
        assert_eq!(c.image.as_deref(), Some("registry.example/postgres:17.2"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    }
}

#[test]
fn a_scale_down_never_removes_the_primary() {
    // db-4 is primary; scaling to 3 keeps 5 pods until it has moved.
    let s = sts(cluster().replicas(3).primary("db-4", true).build());
    assert_eq!(spec(&s).replicas, Some(5));
    let s = sts(cluster().replicas(3).primary("db-1", true).build());
    assert_eq!(spec(&s).replicas, Some(3));
}

#[test]
fn the_image_holds_the_binaries_where_the_pods_run_them() {
    let dockerfile = include_str!("../../../../../deploy/Dockerfile");
    assert!(dockerfile.contains(&format!(
        "COPY --from=build /out/ordinal-init {IMAGE_ORDINAL_INIT}"
    )));
    let deployment = include_str!("../../../../../deploy/operator/deployment.yaml");
    assert!(deployment.contains("command: [\"/usr/local/bin/ordinal-operator\", \"run\"]"));
    assert!(
        dockerfile
            .contains("COPY --from=build /out/ordinal-operator /usr/local/bin/ordinal-operator")
    );
}

#[test]
fn turning_tls_on_replaces_each_pod_once() {
    use ordinal_crds::TlsPhase::*;
    let template = |phase| {
        let mut c = valid(cluster().build());
        c.tls.phase = phase;
        build_statefulset(&c, &build_config())
            .spec
            .expect("spec")
            .template
    };
    let mounting = template(Mounting);
    assert!(
        mounting
            .spec
            .as_ref()
            .and_then(|p| p.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.name == "tls")),
        "the first step mounts the certificate"
    );
    assert_eq!(mounting, template(Offered), "Offered is a reload");
    assert_eq!(mounting, template(Required), "Required is a reload");
    assert_ne!(mounting, template(Off));
}

#[test]
fn the_tls_secret_is_mounted_whole_where_postgres_and_ordinal_init_read_it() {
    let sts = build_statefulset(&valid(cluster().build()), &build_config());
    let pod = sts.spec.expect("spec").template.spec.expect("pod");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "tls")
        .expect("tls volume");
    let secret = volume.secret.as_ref().expect("secret");
    assert_eq!(secret.secret_name.as_deref(), Some("db-server"));
    // Root-owned, group-readable: postgres accepts the key file, and no
    // subPath or item list, so a renewed certificate reaches the pod.
    assert_eq!(secret.default_mode, Some(0o440));
    assert!(secret.items.is_none());
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        if container.name == "install" {
            continue;
        }
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "tls")
            .unwrap_or_else(|| panic!("{} mounts the certificate", container.name));
        assert_eq!(mount.mount_path, "/etc/ordinal/tls");
        assert!(mount.sub_path.is_none());
        let env = container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "ORDINAL_TLS_CA");
        assert_eq!(
            env.and_then(|e| e.value.as_deref()),
            Some("/etc/ordinal/tls/ca.crt")
        );
    }

    let mut off = cluster().build();
    off.spec.tls.enabled = false;
    let sts = build_statefulset(&valid(off), &build_config());
    let pod = sts.spec.expect("spec").template.spec.expect("pod");
    assert!(!pod.volumes.iter().flatten().any(|v| v.name == "tls"));
    assert!(
        !pod.containers[0]
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "ORDINAL_TLS_CA")
    );
}
