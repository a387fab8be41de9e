//! The reconciler against a scripted API server: every request it sends,
//! in order, with its field manager and the key fields of its body.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use ordinal_crds::PostgresCluster;
use serde_json::{Value, json};

use super::reconcile;
use crate::Error;
use crate::fixtures::{
    Exchange, cluster, labels_of, mock_context, pod, pod_list, status_body, with_status,
};

const NS: &str = "/api/v1/namespaces/ns";
const STATUS: &str = "/apis/ordinal.dev/v1alpha1/namespaces/ns/postgresclusters/db/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
const OPERATOR: &str = "ordinal-operator";

/// db-0 the Ready primary, db-1 and db-2 Ready replicas.
fn healthy_pods() -> [k8s_openapi::api::core::v1::Pod; 3] {
    [
        pod("db-0", true, Some("primary")),
        pod("db-1", true, Some("replica")),
        pod("db-2", true, Some("replica")),
    ]
}

fn list_pods(pods: &[k8s_openapi::api::core::v1::Pod]) -> Exchange {
    let list = pod_list(pods);
    Exchange::get(format!("{NS}/pods")).answer(200, list)
}

fn list_volumes(names: &[&str]) -> Exchange {
    let items: Vec<Value> = names
        .iter()
        .map(|n| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": n, "namespace": "ns"}}))
        .collect();
    Exchange::get(format!("{NS}/persistentvolumeclaims")).answer(
        200,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": items}),
    )
}

fn event(reason: &'static str, note: &'static str) -> Exchange {
    Exchange::post(EVENTS).check(move |body| {
        assert_eq!(body["reason"], reason);
        assert_eq!(body["regarding"]["kind"], "PostgresCluster");
        assert_eq!(body["regarding"]["name"], "db");
        let text = body["note"].as_str().unwrap_or_default();
        assert!(text.contains(note), "event note {text:?} lacks {note:?}");
    })
}

fn owned_and_labelled(body: &Value) {
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "PostgresCluster");
    assert_eq!(owner["name"], "db");
    assert_eq!(owner["controller"], true);
    let labels = labels_of(body);
    assert_eq!(labels["app.kubernetes.io/managed-by"], "ordinal");
    assert_eq!(labels["ordinal.dev/cluster"], "db");
}

/// Secrets that exist already: only the credentials' existence is read,
/// then the cluster's CA and its current server certificate.
fn secrets_exist() -> Vec<Exchange> {
    let mut script = credentials_exist();
    script.extend(certificates_current());
    script
}

/// The generated credentials exist: only their existence is read.
fn credentials_exist() -> Vec<Exchange> {
    ["db-superuser", "db-replication"]
        .into_iter()
        .map(|s| {
            Exchange::get(format!("{NS}/secrets/{s}")).answer(
                200,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": s, "namespace": "ns"}}),
            )
        })
        .collect()
}

/// The CA and a server certificate it issued at the tests' clock: nothing
/// to renew.
fn certificates_current() -> Vec<Exchange> {
    use crate::reconcile::build::tls;
    let valid = crate::fixtures::valid(cluster().build());
    let now = crate::fixtures::now().as_second();
    let ca = tls::issue_ca("ns", "db", now).expect("CA");
    let server = tls::issue_server(&ca, &tls::server_names(&valid), now).expect("certificate");
    vec![
        Exchange::get(format!("{NS}/secrets/db-ca")).answer(
            200,
            serde_json::to_value(tls::ca_secret(&valid, &ca)).expect("json"),
        ),
        Exchange::get(format!("{NS}/secrets/db-server")).answer(
            200,
            serde_json::to_value(tls::server_secret(&valid, &server)).expect("json"),
        ),
    ]
}

const STATEFULSET: &str = "/apis/apps/v1/namespaces/ns/statefulsets/db";
const STORAGE_CLASSES: &str = "/apis/storage.k8s.io/v1/storageclasses";

fn storage_class(name: &str, expandable: bool, binding: &str) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
           "metadata": {"name": name, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
           "provisioner": "ordinal.dev/local-path", "allowVolumeExpansion": expandable,
           "volumeBindingMode": binding})
}

fn claim(name: &str, requested: &str, capacity: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": name, "namespace": "ns", "labels": {"ordinal.dev/cluster": "db"}},
           "spec": {"storageClassName": "standard", "volumeName": format!("pv-{name}"),
                    "resources": {"requests": {"storage": requested}}},
           "status": {"phase": "Bound", "capacity": {"storage": capacity}}})
}

/// The StatefulSet as the API server has it, with a claim template of `size`.
fn existing_statefulset(size: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": "db", "namespace": "ns", "uid": "sts-uid", "resourceVersion": "7"},
           "spec": {"selector": {}, "serviceName": "db-headless", "template": {},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"},
                        "spec": {"resources": {"requests": {"storage": size}}}}]}})
}

/// The volume step's reads: the StatefulSet (None: not there), the
/// claims and the StorageClasses.
fn volumes_read(
    statefulset: Option<Value>,
    claims: Vec<Value>,
    classes: Vec<Value>,
) -> Vec<Exchange> {
    vec![
        match statefulset {
            Some(sts) => Exchange::get(STATEFULSET).answer(200, sts),
            None => Exchange::get(STATEFULSET).not_found(),
        },
        Exchange::get(format!("{NS}/persistentvolumeclaims")).answer(
            200,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {}, "items": claims}),
        ),
        Exchange::get(STORAGE_CLASSES).answer(
            200,
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClassList", "metadata": {}, "items": classes}),
        ),
    ]
}

/// The volume conditions' write, checked for their status and reasons.
fn volume_conditions(
    pgc: &PostgresCluster,
    resized: (&'static str, &'static str),
    placement: (&'static str, &'static str),
) -> Exchange {
    Exchange::apply(STATUS, "ordinal-operator/volumes")
        .answer_with(with_status(pgc))
        .check(move |body| {
            let conditions = body["status"]["conditions"].as_array().expect("conditions");
            let found: Vec<(&str, &str, &str)> = conditions
                .iter()
                .map(|c| {
                    (
                        c["type"].as_str().unwrap_or_default(),
                        c["status"].as_str().unwrap_or_default(),
                        c["reason"].as_str().unwrap_or_default(),
                    )
                })
                .collect();
            assert_eq!(
                found,
                [
                    ("VolumesResized", resized.0, resized.1),
                    ("VolumePlacement", placement.0, placement.1)
                ]
            );
            assert!(
                body["status"].get("phase").is_none(),
                "only the volume conditions"
            );
        })
}

/// A new cluster's volume step: nothing to grow, the default class binds
/// on first consumer.
fn volumes_settled() -> Vec<Exchange> {
    let mut script = volumes_read(
        None,
        vec![],
        vec![storage_class("standard", true, "WaitForFirstConsumer")],
    );
    script.push(volume_conditions(
        &cluster().build(),
        ("True", "AsRequested"),
        ("True", "WaitForFirstConsumer"),
    ));
    script
}

/// The children, applied in order; `replicas` and `min_available` are the
/// values the StatefulSet and the PDB must carry (no PDB when None).
fn children(replicas: i32, min_available: Option<i32>) -> Vec<Exchange> {
    let mut script = volumes_settled();
    script.extend(objects(replicas, min_available));
    script
}

/// The children after the volume step.
fn objects(replicas: i32, min_available: Option<i32>) -> Vec<Exchange> {
    let apply = |path: String| Exchange::apply(path, OPERATOR).check(owned_and_labelled);
    let mut script = vec![
        apply(format!("{NS}/serviceaccounts/db")),
        apply("/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/db".to_owned()),
        apply("/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings/db".to_owned()),
        Exchange::apply(format!("{NS}/configmaps/db-config"), OPERATOR).check(|body| {
            owned_and_labelled(body);
            let conf = body["data"]["postgresql.conf"].as_str().unwrap_or_default();
            assert!(conf.contains("wal_level = 'replica'"));
        }),
        Exchange::apply(format!("{NS}/services/db-headless"), OPERATOR).check(|body| {
            owned_and_labelled(body);
            assert_eq!(body["spec"]["clusterIP"], "None");
            assert_eq!(body["spec"]["publishNotReadyAddresses"], true);
        }),
        Exchange::apply(format!("{NS}/services/db-rw"), OPERATOR).check(|body| {
            owned_and_labelled(body);
            assert_eq!(body["spec"]["selector"]["ordinal.dev/role"], "primary");
        }),
        Exchange::apply(format!("{NS}/services/db-ro"), OPERATOR).check(|body| {
            owned_and_labelled(body);
            assert_eq!(body["spec"]["selector"]["ordinal.dev/role"], "replica");
        }),
    ];
    script.push(match min_available {
        Some(min) => Exchange::apply(
            "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/db",
            OPERATOR,
        )
        .check(move |body| {
            owned_and_labelled(body);
            assert_eq!(body["spec"]["minAvailable"], min);
        }),
        None => Exchange::get("/apis/policy/v1/namespaces/ns/poddisruptionbudgets/db").not_found(),
    });
    script.push(
        Exchange::apply(
            "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/db",
            OPERATOR,
        )
        .check(owned_and_labelled),
    );
    script.push(
        Exchange::apply("/apis/apps/v1/namespaces/ns/statefulsets/db", OPERATOR).check(
            move |body| {
                owned_and_labelled(body);
                assert_eq!(body["spec"]["replicas"], replicas);
                assert_eq!(body["spec"]["serviceName"], "db-headless");
                assert_eq!(body["spec"]["updateStrategy"]["type"], "OnDelete");
                assert_eq!(
                    body["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
                    "data"
                );
                let template_labels = &body["spec"]["template"]["metadata"]["labels"];
                assert!(template_labels.get("ordinal.dev/role").is_none());
            },
        ),
    );
    // No pooler, and none left from before: after the StatefulSet.
    script.push(Exchange::get("/apis/apps/v1/namespaces/ns/deployments/db-pooler").not_found());
    script
}

fn observed_status(pgc: &PostgresCluster, phase: &'static str, ready: &'static str) -> Exchange {
    Exchange::apply(STATUS, "ordinal-operator/status")
        .answer_with(with_status(pgc))
        .check(move |body| {
            let status = &body["status"];
            assert_eq!(status["phase"], phase);
            assert_eq!(status["ready"], ready);
            assert_eq!(status["observedGeneration"], 1);
            let types: Vec<&str> = status["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .filter_map(|c| c["type"].as_str())
                .collect();
            assert_eq!(types, ["Ready", "Progressing", "Degraded"]);
            assert!(
                status.get("currentPrimary").is_none(),
                "the status manager must not own currentPrimary"
            );
        })
}

async fn run(pgc: PostgresCluster, script: Vec<Exchange>) -> Result<Action, Error> {
    let (ctx, server) = mock_context();
    let server = server.run(script);
    let result = reconcile(Arc::new(pgc), ctx.clone()).await;
    drop(ctx);
    server.await.expect("scripted API server");
    result
}

#[tokio::test]
async fn new_cluster_chooses_db_0_then_builds_everything() {
    let pgc = cluster().build();
    let mut script = vec![
        list_pods(&[]),
        list_volumes(&[]),
        Exchange::apply(STATUS, "ordinal-operator/primary")
            .check(|body| {
                assert_eq!(body["status"]["currentPrimary"], "db-0");
                assert_eq!(body["status"]["epoch"], 0);
                assert_eq!(body["status"]["bootstrapped"], false);
                assert_eq!(body["metadata"]["resourceVersion"], "100");
            })
            .answer_with(with_status(&pgc)),
        event("PrimaryChosen", "db-0 will initialize the cluster"),
    ];
    for secret in ["db-superuser", "db-replication"] {
        script.push(Exchange::get(format!("{NS}/secrets/{secret}")).not_found());
        script.push(Exchange::post(format!("{NS}/secrets")).check(move |body| {
            assert_eq!(body["metadata"]["name"], secret);
            assert_eq!(body["type"], "kubernetes.io/basic-auth");
            assert_eq!(body["immutable"], true);
            assert!(
                body["data"]["password"]
                    .as_str()
                    .is_some_and(|p| !p.is_empty())
            );
            assert!(
                body["metadata"].get("ownerReferences").is_none(),
                "credentials outlive the cluster like its PVCs"
            );
            assert_eq!(labels_of(body)["ordinal.dev/cluster"], "db");
        }));
    }
    // A new cluster's CA, then the servers' certificate it signs.
    script.extend([
        Exchange::get(format!("{NS}/secrets/db-ca")).not_found(),
        Exchange::post(format!("{NS}/secrets")).check(|body| {
            owned_and_labelled(body);
            assert_eq!(body["metadata"]["name"], "db-ca");
            assert!(body["data"]["ca.crt"].is_string());
            assert!(body["data"]["ca.key"].is_string());
        }),
        Exchange::get(format!("{NS}/secrets/db-server")).not_found(),
        Exchange::apply(format!("{NS}/secrets/db-server"), OPERATOR).check(|body| {
            owned_and_labelled(body);
            assert_eq!(body["type"], "kubernetes.io/tls");
            for key in ["tls.crt", "tls.key", "ca.crt"] {
                assert!(body["data"][key].is_string(), "{key}");
            }
        }),
        event("CACreated", "made the cluster's CA in Secret db-ca"),
        event(
            "CertificateIssued",
            "issued the servers' certificate in Secret db-server (90 days): there is none",
        ),
    ]);
    // A new cluster's pods are made with everything: TLS is required at once.
    script.push(tls_recorded(&pgc, "Required"));
    script.extend(children(3, Some(2)));
    script.push(observed_status(&pgc, "Creating", "0/3"));
    let action = run(pgc, script).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
}

/// Each pod's annotation set to what it should mount now, so that the
/// kubelet refreshes its ConfigMap and certificate at once.
fn mounts_refreshed(cluster: &PostgresCluster, pods: &[&str]) -> Vec<Exchange> {
    let valid = crate::fixtures::valid(cluster.clone());
    let digest = crate::reconcile::build::mounted_digest(&valid, None);
    assert_ne!(
        digest,
        crate::reconcile::build::mounted_digest(
            &crate::fixtures::valid(self::cluster().build()),
            None
        ),
        "the pods' mounts are stale"
    );
    pods.iter()
        .map(|pod| {
            let digest = digest.clone();
            Exchange::new_patch(format!("{NS}/pods/{pod}")).check(move |body| {
                assert_eq!(
                    body["metadata"]["annotations"]["ordinal.dev/mounted"],
                    digest
                );
                assert_eq!(
                    body.as_object().map(|o| o.len()),
                    Some(1),
                    "only the annotation: {body}"
                );
            })
        })
        .collect()
}

/// status.tls written by its own field manager.
fn tls_recorded(pgc: &PostgresCluster, phase: &'static str) -> Exchange {
    Exchange::apply(STATUS, "ordinal-operator/tls")
        .check(move |body| {
            assert_eq!(body["status"]["tls"]["phase"], phase);
            assert_eq!(body["status"]["tls"]["secret"], "db-server");
            assert_eq!(
                body["status"].as_object().map(|s| s.len()),
                Some(1),
                "only status.tls: {body}"
            );
        })
        .answer_with(with_status(pgc))
}

/// The children, with the ConfigMap's TLS settings checked.
fn children_with_tls(ssl: &'static str, hba: &'static str, sslmode: &'static str) -> Vec<Exchange> {
    let mut script = volumes_settled();
    let mut objects = objects(3, Some(2));
    objects[3] =
        Exchange::apply(format!("{NS}/configmaps/db-config"), OPERATOR).check(move |body| {
            let conf = body["data"]["postgresql.conf"].as_str().unwrap_or_default();
            assert!(conf.contains(&format!("ssl = '{ssl}'")), "{conf}");
            let hba_conf = body["data"]["pg_hba.conf"].as_str().unwrap_or_default();
            assert!(
                hba_conf.contains(&format!("{hba} replication")),
                "{hba_conf}"
            );
            assert_eq!(body["data"]["replication-sslmode"], sslmode);
        });
    script.extend(objects);
    script
}

#[tokio::test]
async fn a_cluster_made_without_tls_mounts_the_certificate_before_the_servers_offer_it() {
    // An operator upgrade over a cluster made before TLS: no phase
    // recorded, no pod mounts a certificate.
    let mut pgc = cluster().primary("db-0", true).build();
    if let Some(status) = pgc.status.as_mut() {
        status.tls = None;
    }
    let pods = healthy_pods();
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    script.push(tls_recorded(&pgc, "Mounting"));
    script.push(event("TLSMounting", "mount the certificate"));
    script.extend(children_with_tls("off", "host   ", "prefer"));
    let mut mounting = pgc.clone();
    if let Some(status) = mounting.status.as_mut() {
        status.tls = Some(ordinal_crds::TlsStatus {
            phase: ordinal_crds::TlsPhase::Mounting,
            secret: Some("db-server".to_owned()),
        });
    }
    script.extend(mounts_refreshed(&mounting, &["db-0", "db-1", "db-2"]));
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    let action = run(pgc, script).await.expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(10)),
        "looked at again soon: TLS is not where the spec asks"
    );
}

#[tokio::test]
async fn tls_is_required_once_every_server_reports_it_offered() {
    let mut pgc = rolling_cluster("db-0");
    if let Some(status) = pgc.status.as_mut() {
        status.tls = Some(ordinal_crds::TlsStatus {
            phase: ordinal_crds::TlsPhase::Offered,
            secret: Some("db-server".to_owned()),
        });
        for instance in &mut status.instances {
            instance.ssl = Some(true);
        }
    }
    let pods = healthy_pods().map(|mut pod| {
        if let Some(spec) = pod.spec.as_mut() {
            spec.volumes = Some(vec![k8s_openapi::api::core::v1::Volume {
                name: "tls".to_owned(),
                secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
                    secret_name: Some("db-server".to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
        }
        pod
    });
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    script.push(tls_recorded(&pgc, "Required"));
    script.push(event("TLSRequired", "replication requires TLS"));
    script.extend(children_with_tls("on", "hostssl", "verify-full"));
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn unchanged_healthy_cluster_only_reapplies() {
    let pgc = cluster().primary("db-0", true).build();
    let pods = healthy_pods();
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    script.extend(children(3, Some(2)));
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    let action = run(pgc, script).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn scaled_cluster_resizes_statefulset_and_pdb() {
    let pgc = cluster().replicas(5).primary("db-0", true).build();
    let pods = healthy_pods();
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    script.extend(children(5, Some(4)));
    script.push(observed_status(&pgc, "Creating", "3/5"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn single_instance_has_no_pdb() {
    let pgc = cluster().replicas(1).primary("db-0", true).build();
    let mut script = vec![list_pods(&[pod("db-0", true, Some("primary"))])];
    script.extend(secrets_exist());
    script.extend(children(1, None));
    script.push(observed_status(&pgc, "Healthy", "1/1"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn primary_ready_marks_the_cluster_bootstrapped() {
    let pgc = cluster().primary("db-0", false).build();
    let pods = [pod("db-0", true, Some("primary"))];
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    script.extend(children(3, Some(2)));
    script.push(
        Exchange::apply(STATUS, "ordinal-operator/primary")
            .check(|body| {
                assert_eq!(body["status"]["bootstrapped"], true);
                assert_eq!(body["status"]["currentPrimary"], "db-0");
                assert_eq!(body["metadata"]["resourceVersion"], "100");
            })
            .answer_with(with_status(&pgc)),
    );
    script.push(event("Bootstrapped", "primary db-0 is ready"));
    script.push(observed_status(&pgc, "Creating", "1/3"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn invalid_spec_changes_nothing_and_says_why() {
    let pgc = cluster().quorum(3).primary("db-0", true).build();
    let script = vec![
        event(
            "InvalidSpec",
            "spec.replication.quorum: quorum 3 needs at least 4 replicas",
        ),
        list_pods(&[]),
        Exchange::apply(STATUS, "ordinal-operator/status")
            .answer_with(with_status(&pgc))
            .check(|body| {
                let status = &body["status"];
                assert_eq!(status["phase"], "Degraded");
                let degraded = status["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
                    .expect("Degraded condition");
                assert_eq!(degraded["status"], "True");
                assert_eq!(degraded["reason"], "InvalidSpec");
                assert!(
                    degraded["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("spec.replication.quorum")
                );
            }),
    ];
    let action = run(pgc, script).await.expect("reconcile");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn missing_user_secret_is_reported() {
    let pgc = cluster()
        .superuser_secret("mine")
        .primary("db-0", true)
        .build();
    let script = vec![
        list_pods(&[]),
        Exchange::get(format!("{NS}/secrets/mine")).not_found(),
        event(
            "MissingSecret",
            "Secret ns/mine named by spec.superuserSecret",
        ),
        Exchange::apply(STATUS, "ordinal-operator/status")
            .answer_with(with_status(&pgc))
            .check(|body| assert_eq!(body["status"]["phase"], "Degraded")),
    ];
    let err = run(pgc, script).await.expect_err("missing secret");
    assert!(
        matches!(
            err,
            Error::MissingSecret {
                field: "superuserSecret",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn api_error_stops_the_pipeline_with_the_object_named() {
    let pgc = cluster().primary("db-0", true).build();
    let mut script = vec![list_pods(&[])];
    script.extend(secrets_exist());
    let mut kids = children(3, Some(2));
    kids.pop().expect("the pooler read, never reached");
    let sts = kids.pop().expect("statefulset exchange");
    script.extend(kids);
    script.push(sts.answer(500, status_body(500, "InternalError")));
    let err = run(pgc, script).await.expect_err("API error");
    assert!(
        matches!(
            err,
            Error::Apply {
                kind: "StatefulSet",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.to_string(), "failed to apply StatefulSet ns/db");
    assert_eq!(err.category(), "apply");
}

#[tokio::test]
async fn stale_bootstrap_write_conflicts_instead_of_overwriting() {
    let pgc = cluster().build();
    let script = vec![
        list_pods(&[]),
        list_volumes(&[]),
        Exchange::apply(STATUS, "ordinal-operator/primary")
            .answer(409, status_body(409, "Conflict")),
    ];
    let err = run(pgc, script).await.expect_err("conflict");
    assert!(matches!(err, Error::WriteStatus { .. }), "{err}");
}

#[tokio::test]
async fn existing_volumes_without_a_recorded_primary_wait_for_a_person() {
    // Recreated over retained volumes: whose data is the latest is unknown.
    let pgc = cluster().build();
    let script = vec![
        list_pods(&[]),
        list_volumes(&["data-db-0", "data-db-1", "data-db-2"]),
        event(
            "ExistingVolumes",
            "annotate the cluster with ordinal.dev/primary",
        ),
        Exchange::apply(STATUS, "ordinal-operator/status")
            .answer_with(with_status(&pgc))
            .check(|body| {
                assert_eq!(body["status"]["phase"], "Degraded");
                let degraded = body["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
                    .expect("Degraded");
                assert_eq!(degraded["reason"], "ExistingVolumes");
                assert!(body["status"].get("currentPrimary").is_none());
            }),
    ];
    let action = run(pgc, script).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn the_primary_annotation_adopts_existing_data() {
    let mut pgc = cluster().build();
    pgc.metadata.annotations = Some([("ordinal.dev/primary".to_owned(), "db-2".to_owned())].into());
    let mut script = vec![
        list_pods(&[]),
        list_volumes(&["data-db-0", "data-db-1", "data-db-2"]),
        Exchange::apply(STATUS, "ordinal-operator/primary")
            .check(|body| {
                assert_eq!(body["status"]["currentPrimary"], "db-2");
                assert_eq!(
                    body["status"]["bootstrapped"], true,
                    "existing data: never initdb"
                );
            })
            .answer_with(with_status(&pgc)),
        event(
            "PrimaryChosen",
            "db-2 is the primary: its existing data is adopted",
        ),
    ];
    script.extend(secrets_exist());
    // Answered with the primary recorded before.
    script.push(tls_recorded(
        &cluster().primary("db-2", true).build(),
        "Required",
    ));
    script.extend(children(3, Some(2)));
    // Adopted data is bootstrapped: a primary that is not up is Degraded.
    script.push(observed_status(&pgc, "Degraded", "0/3"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn a_pdb_that_is_not_ours_is_left_alone() {
    let pgc = cluster().replicas(1).primary("db-0", true).build();
    let mut script = vec![list_pods(&[pod("db-0", true, Some("primary"))])];
    script.extend(secrets_exist());
    let mut kids = children(1, None);
    let pooler = kids.pop().expect("pooler");
    let sts = kids.pop().expect("statefulset");
    let network_policy = kids.pop().expect("network policy");
    kids.pop();
    script.extend(kids);
    // Someone else's PDB named like the cluster: read, never deleted.
    script.push(
        Exchange::get("/apis/policy/v1/namespaces/ns/poddisruptionbudgets/db").answer(
            200,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                   "metadata": {"name": "db", "namespace": "ns",
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "other", "uid": "other-uid"}]}}),
        ),
    );
    script.push(network_policy);
    script.push(sts);
    script.push(pooler);
    script.push(observed_status(&pgc, "Healthy", "1/1"));
    run(pgc, script).await.expect("reconcile");
}

fn with_revision(
    mut p: k8s_openapi::api::core::v1::Pod,
    revision: &str,
) -> k8s_openapi::api::core::v1::Pod {
    p.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("controller-revision-hash".to_owned(), revision.to_owned());
    p
}

/// A healthy cluster whose StatefulSet answers with update revision rev-2.
fn rolling_cluster(primary: &str) -> PostgresCluster {
    let mut pgc = cluster().primary(primary, true).build();
    if let Some(status) = pgc.status.as_mut() {
        status.instances = ["db-0", "db-1", "db-2"]
            .iter()
            .map(|p| ordinal_crds::InstanceStatus {
                pod: (*p).to_owned(),
                role: ordinal_crds::Role::Replica,
                ready: true,
                lsn: None,
                lag_bytes: Some(0),
                lag_seconds: Some(0.0),
                timeline: Some(1),
                ip: None,
                ssl: None,
                upstream_sslmode: None,
            })
            .collect();
    }
    pgc
}

fn children_with_revision(revision: &'static str) -> Vec<Exchange> {
    let mut kids = children(3, Some(2));
    let pooler = kids.pop().expect("pooler");
    let sts = kids.pop().expect("statefulset");
    kids.push(sts.answer_with(move |body| {
        let mut body = body.clone();
        body["status"] = json!({"replicas": 3, "updateRevision": revision});
        (200, body)
    }));
    kids.push(pooler);
    kids
}

#[tokio::test]
async fn a_rolling_update_replaces_the_highest_replica_first() {
    let pgc = rolling_cluster("db-0");
    let pods = [
        with_revision(pod("db-0", true, Some("primary")), "rev-1"),
        with_revision(pod("db-1", true, Some("replica")), "rev-1"),
        with_revision(pod("db-2", true, Some("replica")), "rev-1"),
    ];
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    script.extend(children_with_revision("rev-2"));
    script.push(Exchange::delete(format!("{NS}/pods/db-2")).check(|body| {
        assert!(
            body.get("gracePeriodSeconds").is_none_or(Value::is_null),
            "a clean shutdown"
        );
    }));
    script.push(event(
        "RollingUpdate",
        "replacing db-2 with the new pod template",
    ));
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn a_rolling_update_switches_over_before_replacing_the_primary() {
    let pgc = rolling_cluster("db-0");
    let pods = [
        with_revision(pod("db-0", true, Some("primary")), "rev-1"),
        with_revision(pod("db-1", true, Some("replica")), "rev-2"),
        with_revision(pod("db-2", true, Some("replica")), "rev-2"),
    ];
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    script.extend(children_with_revision("rev-2"));
    script.push(
        Exchange::new_patch("/apis/ordinal.dev/v1alpha1/namespaces/ns/postgresclusters/db")
            .check(|body| {
                assert_eq!(
                    body["metadata"]["annotations"]["ordinal.dev/switchover-to"],
                    "db-1"
                )
            })
            .answer_with(with_status(&rolling_cluster("db-0"))),
    );
    script.push(event(
        "RollingUpdate",
        "switching over to the updated replica db-1",
    ));
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn a_major_version_change_is_refused() {
    let mut pgc = cluster().primary("db-0", true).build();
    pgc.spec.image = "postgres:18".to_owned();
    let pods = [pod("db-0", true, Some("primary"))];
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    script.push(event(
        "MajorVersionChange",
        "a major upgrade needs pg_upgrade",
    ));
    script.push(
        Exchange::apply(STATUS, "ordinal-operator/status")
            .answer_with(with_status(&pgc))
            .check(|body| {
                let degraded = body["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
                    .expect("Degraded");
                assert_eq!(degraded["reason"], "MajorVersionChange");
                assert!(
                    degraded["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("PostgreSQL 17")
                );
            }),
    );
    let action = run(pgc, script).await.expect("reconcile");
    assert_eq!(
        action,
        Action::await_change(),
        "nothing is applied until the image is fixed"
    );
}

#[tokio::test]
async fn a_backup_secret_without_its_keys_is_reported() {
    let mut pgc = cluster().primary("db-0", true).build();
    pgc.spec.backup = Some(crate::fixtures::s3_backup());
    let mut script = vec![list_pods(&[])];
    script.extend(credentials_exist());
    script.extend([
        Exchange::get(format!("{NS}/secrets/store")).answer(
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "store", "namespace": "ns"},
                   "data": {"ACCESS_KEY_ID": "a2V5"}}),
        ),
        event(
            "MissingSecret",
            "Secret ns/store named by spec.backup.credentialsSecret of PostgresCluster db lacks the key(s) SECRET_ACCESS_KEY, which the S3 store needs",
        ),
        Exchange::apply(STATUS, "ordinal-operator/status")
            .answer_with(with_status(&pgc))
            .check(|body| assert_eq!(body["status"]["phase"], "Degraded")),
    ]);
    let err = run(pgc, script).await.expect_err("missing key");
    assert!(matches!(err, Error::MissingSecretKeys { .. }), "{err}");
}

#[tokio::test]
async fn a_bigger_storage_size_grows_the_claims_and_recreates_the_statefulset() {
    let mut pgc = cluster().primary("db-0", true).build();
    pgc.spec.storage.size = "2Gi".to_owned();
    let pods = [
        pod("db-0", true, Some("primary")),
        pod("db-1", true, Some("replica")),
    ];
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    script.extend(volumes_read(
        Some(existing_statefulset("1Gi")),
        vec![
            claim("data-db-0", "1Gi", "1Gi"),
            claim("data-db-1", "1Gi", "1Gi"),
        ],
        vec![storage_class("standard", true, "WaitForFirstConsumer")],
    ));
    for name in ["data-db-0", "data-db-1"] {
        script.push(
            Exchange::new_patch(format!("{NS}/persistentvolumeclaims/{name}")).check(|body| {
                assert_eq!(body["spec"]["resources"]["requests"]["storage"], "2Gi");
            }),
        );
    }
    script.push(Exchange::delete(STATEFULSET).check(|body| {
        assert_eq!(body["propagationPolicy"], "Orphan", "the pods keep running");
        assert_eq!(body["preconditions"]["uid"], "sts-uid");
        assert_eq!(body["preconditions"]["resourceVersion"], "7");
    }));
    script.push(event(
        "VolumeExpansion",
        "growing the volumes from 1Gi to 2Gi: asked of data-db-0, data-db-1",
    ));
    script.push(volume_conditions(
        &pgc,
        ("False", "Resizing"),
        ("True", "WaitForFirstConsumer"),
    ));
    // Every other child, but not the StatefulSet: it is being deleted.
    let mut kids = objects(3, Some(2));
    let pooler = kids.pop().expect("pooler");
    kids.pop().expect("statefulset");
    script.extend(kids);
    script.push(pooler);
    script.extend(mounts_refreshed(&pgc, &["db-0", "db-1"]));
    script.push(observed_status(&pgc, "Creating", "2/3"));
    let action = run(pgc, script).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(3)));
}

#[tokio::test]
async fn the_new_statefulset_carries_the_new_claim_size() {
    let mut pgc = cluster().primary("db-0", true).build();
    pgc.spec.storage.size = "2Gi".to_owned();
    let pods = [pod("db-0", true, Some("primary"))];
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    // Deleted: the claims asked 2Gi, one has it.
    script.extend(volumes_read(
        None,
        vec![
            claim("data-db-0", "2Gi", "2Gi"),
            claim("data-db-1", "2Gi", "1Gi"),
        ],
        vec![storage_class("standard", true, "WaitForFirstConsumer")],
    ));
    script.push(volume_conditions(
        &pgc,
        ("False", "Resizing"),
        ("True", "WaitForFirstConsumer"),
    ));
    let mut kids = objects(3, Some(2));
    let pooler = kids.pop().expect("pooler");
    let sts = kids.pop().expect("statefulset");
    script.extend(kids);
    script.push(sts.check(|body| {
        assert_eq!(
            body["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "2Gi"
        );
    }));
    script.push(pooler);
    script.extend(mounts_refreshed(&pgc, &["db-0"]));
    script.push(observed_status(&pgc, "Creating", "1/3"));
    let action = run(pgc, script).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(3)));
}

#[tokio::test]
async fn a_class_without_expansion_keeps_the_statefulset_and_says_why() {
    let mut pgc = cluster().replicas(1).primary("db-0", true).build();
    pgc.spec.storage.size = "2Gi".to_owned();
    let mut script = vec![list_pods(&[pod("db-0", true, Some("primary"))])];
    script.extend(secrets_exist());
    script.extend(volumes_read(
        Some(existing_statefulset("1Gi")),
        vec![claim("data-db-0", "1Gi", "1Gi")],
        vec![storage_class("standard", false, "WaitForFirstConsumer")],
    ));
    script.push(volume_conditions(
        &pgc,
        ("False", "ExpansionNotAllowed"),
        ("True", "WaitForFirstConsumer"),
    ));
    script.push(event(
        "ExpansionNotAllowed",
        "StorageClass standard does not allow volume expansion",
    ));
    let mut kids = objects(1, None);
    let pooler = kids.pop().expect("pooler");
    let sts = kids.pop().expect("statefulset");
    script.extend(kids);
    script.push(sts.check(|body| {
        assert_eq!(
            body["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "1Gi",
            "a StatefulSet's claim template cannot change in place"
        );
    }));
    script.push(pooler);
    script.extend(mounts_refreshed(&pgc, &["db-0"]));
    script.push(observed_status(&pgc, "Healthy", "1/1"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn an_immediate_storage_class_is_a_warning_with_the_fix() {
    let pgc = cluster().replicas(1).primary("db-0", true).build();
    let mut script = vec![list_pods(&[pod("db-0", true, Some("primary"))])];
    script.extend(secrets_exist());
    script.extend(volumes_read(
        None,
        vec![],
        vec![storage_class("standard", true, "Immediate")],
    ));
    script.push(volume_conditions(
        &pgc,
        ("True", "AsRequested"),
        ("False", "ImmediateBinding"),
    ));
    script.push(event(
        "ImmediateBinding",
        "volumeBindingMode: WaitForFirstConsumer",
    ));
    script.extend(objects(1, None));
    script.push(observed_status(&pgc, "Healthy", "1/1"));
    run(pgc, script).await.expect("reconcile");
}

/// A server certificate of the cluster's CA that expires at `not_after`
/// (issued 90 days before).
fn certificates_expiring_at(not_after: i64) -> Vec<Exchange> {
    use crate::reconcile::build::tls;
    let valid = crate::fixtures::valid(cluster().build());
    let issued = not_after - tls::SERVER_VALID_DAYS * 86_400;
    let ca = tls::issue_ca("ns", "db", issued).expect("CA");
    let server = tls::issue_server(&ca, &tls::server_names(&valid), issued).expect("certificate");
    vec![
        Exchange::get(format!("{NS}/secrets/db-ca")).answer(
            200,
            serde_json::to_value(tls::ca_secret(&valid, &ca)).expect("json"),
        ),
        Exchange::get(format!("{NS}/secrets/db-server")).answer(
            200,
            serde_json::to_value(tls::server_secret(&valid, &server)).expect("json"),
        ),
    ]
}

#[tokio::test]
async fn a_certificate_thirty_days_from_expiry_is_renewed_in_place() {
    let pgc = cluster().primary("db-0", true).build();
    let pods = healthy_pods();
    let now = crate::fixtures::now().as_second();
    let mut script = vec![list_pods(&pods)];
    script.extend(credentials_exist());
    script.extend(certificates_expiring_at(now + 29 * 86_400));
    script.extend([
        Exchange::apply(format!("{NS}/secrets/db-server"), OPERATOR).check(move |body| {
            use crate::reconcile::build::tls;
            let pem = |key: &str| {
                let b64 = body["data"][key].as_str().expect("key");
                let bytes: k8s_openapi::ByteString =
                    serde_json::from_value(json!(b64)).expect("base64");
                bytes.0
            };
            let info = tls::cert_info(&pem("tls.crt")).expect("certificate");
            assert_eq!(info.not_after, now + tls::SERVER_VALID_DAYS * 86_400);
        }),
        event("CertificateRenewed", "less than 30 days from now"),
    ]);
    // The same Secret, updated: the pods are not touched.
    script.extend(children(3, Some(2)));
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn a_certificate_with_time_left_is_kept() {
    let pgc = cluster().primary("db-0", true).build();
    let pods = healthy_pods();
    let now = crate::fixtures::now().as_second();
    let mut script = vec![list_pods(&pods)];
    script.extend(credentials_exist());
    script.extend(certificates_expiring_at(now + 31 * 86_400));
    script.extend(children(3, Some(2)));
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn a_user_tls_secret_without_its_key_is_reported() {
    let mut pgc = cluster().primary("db-0", true).build();
    pgc.spec.tls.server_secret = Some("pg-tls".to_owned());
    let mut script = vec![list_pods(&[])];
    script.extend(credentials_exist());
    script.extend([
        Exchange::get(format!("{NS}/secrets/pg-tls")).answer(
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg-tls", "namespace": "ns"},
                   "type": "kubernetes.io/tls", "data": {"tls.crt": "eA==", "ca.crt": "eA=="}}),
        ),
        event(
            "TLSSecretInvalid",
            "the TLS Secret ns/pg-tls of PostgresCluster db is not usable: it lacks tls.key",
        ),
        Exchange::apply(STATUS, "ordinal-operator/status")
            .answer_with(with_status(&pgc))
            .check(|body| assert_eq!(body["status"]["phase"], "Degraded")),
    ]);
    let err = run(pgc, script).await.expect_err("missing key");
    assert!(matches!(err, Error::Tls { .. }), "{err}");
}

#[tokio::test]
async fn without_tls_no_certificate_is_read() {
    let mut pgc = cluster().primary("db-0", true).build();
    pgc.spec.tls.enabled = false;
    if let Some(status) = pgc.status.as_mut() {
        status.tls = Some(ordinal_crds::TlsStatus::default());
    }
    let pods = healthy_pods();
    let mut script = vec![list_pods(&pods)];
    script.extend(credentials_exist());
    script.extend(children(3, Some(2)));
    script.extend(mounts_refreshed(&pgc, &["db-0", "db-1", "db-2"]));
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn a_pooler_is_applied_with_its_lookup_roles_password_and_removed_when_unset() {
    let mut pgc = cluster().primary("db-0", true).build();
    pgc.spec.pooler = Some(serde_json::from_value(json!({"instances": 1})).expect("pooler"));
    let pods = healthy_pods();
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    let mut kids = children(3, Some(2));
    kids.pop().expect("no pooler read");
    let sts = kids.pop().expect("statefulset");
    script.extend(kids);
    script.push(sts);
    script.extend([
        // The lookup role's Secret, made on first use.
        Exchange::get(format!("{NS}/secrets/db-pooler-auth")).not_found(),
        Exchange::post(format!("{NS}/secrets")).check(|body| {
            assert_eq!(body["metadata"]["name"], "db-pooler-auth");
            assert_eq!(body["type"], "kubernetes.io/basic-auth");
            assert_eq!(body["immutable"], true);
            assert_eq!(body["metadata"]["ownerReferences"][0]["name"], "db");
            // "ordinal_pooler", base64.
            assert_eq!(body["data"]["username"], "b3JkaW5hbF9wb29sZXI=");
        }),
        Exchange::apply(format!("{NS}/configmaps/db-pooler"), OPERATOR).check(|body| {
            let ini = body["data"]["pgbouncer.ini"].as_str().unwrap_or_default();
            assert!(ini.contains("host=db-rw.ns.svc"), "{ini}");
            assert!(ini.contains("auth_user = ordinal_pooler"), "{ini}");
            assert!(ini.contains("auth_dbname = postgres"), "{ini}");
        }),
        Exchange::apply(format!("{NS}/secrets/db-pooler"), OPERATOR).check(|body| {
            let userlist = body["data"]["userlist.txt"].as_str().unwrap_or_default();
            // `"ordinal_pooler" "`, base64: the lookup role, not postgres.
            assert!(
                userlist.starts_with("Im9yZGluYWxfcG9vbGVyIiAi"),
                "{userlist}"
            );
        }),
        Exchange::apply(format!("{NS}/services/db-pooler"), OPERATOR),
        Exchange::apply(
            "/apis/apps/v1/namespaces/ns/deployments/db-pooler",
            OPERATOR,
        )
        .check(|body| {
            assert_eq!(body["spec"]["replicas"], 1);
            assert!(
                body["spec"]["template"]["metadata"]["labels"]
                    .get("ordinal.dev/cluster")
                    .is_none()
            );
        }),
        Exchange::apply(
            "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/db-pooler",
            OPERATOR,
        ),
    ]);
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    run(pgc.clone(), script).await.expect("reconcile");

    // Unset: the pooler found is deleted.
    pgc.spec.pooler = None;
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    let mut kids = children(3, Some(2));
    kids.pop().expect("pooler read");
    let sts = kids.pop().expect("statefulset");
    script.extend(kids);
    script.push(sts);
    script.push(
        Exchange::get("/apis/apps/v1/namespaces/ns/deployments/db-pooler").answer(
            200,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                   "metadata": {"name": "db-pooler", "namespace": "ns",
                                "ownerReferences": [{"apiVersion": "ordinal.dev/v1alpha1", "kind": "PostgresCluster",
                                                     "name": "db", "uid": "7d3b2c1a-0000-4000-8000-000000000001",
                                                     "controller": true}]}}),
        ),
    );
    // The Deployment last: a failed delete is tried again.
    for path in [
        format!("{NS}/services/db-pooler"),
        format!("{NS}/configmaps/db-pooler"),
        format!("{NS}/secrets/db-pooler"),
        format!("{NS}/secrets/db-pooler-auth"),
        "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/db-pooler".to_owned(),
        "/apis/apps/v1/namespaces/ns/deployments/db-pooler".to_owned(),
    ] {
        script.push(Exchange::delete(path));
    }
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn a_pooler_named_like_the_cluster_but_not_its_own_is_left_alone() {
    let pgc = cluster().primary("db-0", true).build();
    let pods = healthy_pods();
    let mut script = vec![list_pods(&pods)];
    script.extend(secrets_exist());
    let mut kids = children(3, Some(2));
    kids.pop().expect("pooler read");
    let sts = kids.pop().expect("statefulset");
    script.extend(kids);
    script.push(sts);
    // The user's own PgBouncer: read, never deleted.
    script.push(
        Exchange::get("/apis/apps/v1/namespaces/ns/deployments/db-pooler").answer(
            200,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                   "metadata": {"name": "db-pooler", "namespace": "ns"}}),
        ),
    );
    script.push(observed_status(&pgc, "Healthy", "3/3"));
    run(pgc, script).await.expect("reconcile");
}

#[tokio::test]
async fn a_user_certificate_without_the_pods_names_is_reported() {
    use crate::reconcile::build::tls;
    let mut pgc = cluster().primary("db-0", true).build();
    pgc.spec.tls.server_secret = Some("pg-tls".to_owned());
    let now = crate::fixtures::now().as_second();
    let ca = tls::issue_ca("ns", "db", now).expect("CA");
    let cert = tls::issue_server(&ca, &["db.example.com".to_owned()], now).expect("cert");
    let mut secret = tls::server_secret(&crate::fixtures::valid(cluster().build()), &cert);
    secret.metadata.name = Some("pg-tls".to_owned());
    let mut script = vec![list_pods(&[])];
    script.extend(credentials_exist());
    script.extend([
        Exchange::get(format!("{NS}/secrets/pg-tls"))
            .answer(200, serde_json::to_value(&secret).expect("json")),
        event(
            "TLSSecretInvalid",
            "its certificate lacks the names *.db-headless.ns.svc",
        ),
        Exchange::apply(STATUS, "ordinal-operator/status")
            .answer_with(with_status(&pgc))
            .check(|body| assert_eq!(body["status"]["phase"], "Degraded")),
    ]);
    let err = run(pgc, script).await.expect_err("names");
    assert!(matches!(err, Error::Tls { .. }), "{err}");
}
