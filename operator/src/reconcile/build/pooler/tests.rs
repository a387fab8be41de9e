use super::*;
use crate::fixtures::{build_config, cluster, valid};

fn pooled() -> (ValidCluster, PoolerSpec) {
    let mut pgc = cluster().build();
    pgc.spec.pooler = Some(serde_json::from_value(serde_json::json!({})).expect("defaults"));
    let valid = valid(pgc);
    let pooler = valid.spec.pooler.clone().expect("pooler");
    (valid, pooler)
}

fn setting<'a>(ini: &'a str, key: &str) -> Option<&'a str> {
    ini.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
}

#[test]
fn pgbouncer_follows_the_rw_service_and_verifies_it() {
    let (cluster, pooler) = pooled();
    assert_eq!(pooler.instances, 2);
    assert_eq!(pooler.pool_mode, ordinal_crds::PoolMode::Transaction);
    let ini = pgbouncer_ini(&cluster, &pooler);
    assert!(ini.contains("* = host=db-rw.ns.svc port=5432"), "{ini}");
    assert_eq!(setting(&ini, "pool_mode"), Some("transaction"));
    assert_eq!(setting(&ini, "server_login_retry"), Some("1"));
    assert_eq!(setting(&ini, "server_tls_sslmode"), Some("verify-full"));
    assert_eq!(
        setting(&ini, "server_tls_ca_file"),
        Some("/etc/ordinal/tls/ca.crt")
    );
    assert_eq!(setting(&ini, "client_tls_sslmode"), Some("prefer"));
    assert_eq!(
        setting(&ini, "auth_file"),
        Some("/etc/ordinal/pooler-auth/userlist.txt")
    );

    let mut required = cluster.clone();
    required.spec.tls.require_for_clients = true;
    let ini = pgbouncer_ini(&required, &pooler);
    assert_eq!(setting(&ini, "client_tls_sslmode"), Some("require"));

    let mut off = cluster.clone();
    off.tls = ordinal_crds::TlsStatus::default();
    let ini = pgbouncer_ini(&off, &pooler);
    assert_eq!(setting(&ini, "client_tls_sslmode"), Some("disable"));
    assert!(!ini.contains("server_tls_ca_file"));

    // While TLS is being turned on, the servers may not offer it yet.
    let mut offered = cluster.clone();
    offered.tls.phase = ordinal_crds::TlsPhase::Offered;
    assert_eq!(pgbouncer_ini(&offered, &pooler), ini);
}

#[test]
fn the_userlist_quotes_the_password() {
    let (cluster, _) = pooled();
    let secret = build_pooler_secret(&cluster, "p\"w");
    let userlist = &secret.data.expect("data")["userlist.txt"].0;
    assert_eq!(
        String::from_utf8_lossy(userlist),
        "\"ordinal_pooler\" \"p\"\"w\"\n",
        "the lookup role's password, never the superuser's"
    );
    assert_eq!(secret.metadata.name.as_deref(), Some("db-pooler"));
}

#[test]
fn the_pooler_pods_are_not_instances() {
    let (cluster, pooler) = pooled();
    let deployment = build_pooler_deployment(&cluster, &pooler, &build_config());
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let labels = spec
        .template
        .metadata
        .expect("meta")
        .labels
        .expect("labels");
    assert!(
        !labels.contains_key(names::LABEL_CLUSTER),
        "the failover loop and the instance Services select that label"
    );
    assert_eq!(labels[names::LABEL_APP_NAME], "pgbouncer");
    let pod = spec.template.spec.expect("pod");
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("ordinal.local/pgbouncer:test")
    );
    let command = container.command.clone().expect("command");
    assert_eq!(command[..2], ["/ordinal/ordinal-init", "reload-on-change"]);
    for watched in [
        "/etc/ordinal/pooler/pgbouncer.ini",
        "/etc/ordinal/pooler-auth/userlist.txt",
        "/etc/ordinal/tls/tls.crt",
    ] {
        assert!(
            command.iter().any(|c| c == watched),
            "{watched}: {command:?}"
        );
    }
    assert_eq!(
        command[command.len() - 2..],
        ["pgbouncer", "/etc/ordinal/pooler/pgbouncer.ini"]
    );
    assert_eq!(pod.init_containers.expect("install")[0].name, "install");
    let service = build_pooler_service(&cluster);
    assert_eq!(
        service.spec.expect("spec").selector,
        Some(pooler_selector("db"))
    );

    let mut own = pooler.clone();
    own.image = Some("registry.example/pgbouncer:1.24.1".to_owned());
    let deployment = build_pooler_deployment(&cluster, &own, &build_config());
    let pod = deployment.spec.expect("spec").template.spec.expect("pod");
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/pgbouncer:1.24.1")
    );
}
