use ordinal_crds::PostgresCluster;
use serde_json::json;

use super::*;

fn cluster(target: Option<&str>) -> PostgresCluster {
    serde_json::from_value(json!({
        "apiVersion": "ordinal.dev/v1alpha1", "kind": "PostgresCluster",
        "metadata": {"name": "db", "namespace": "prod"},
        "spec": {"storage": {"size": "1Gi"}},
        "status": {
            "currentPrimary": "db-0", "targetPrimary": target,
            "instances": [
                {"pod": "db-0", "role": "Primary", "ready": true},
                {"pod": "db-1", "role": "Replica", "ready": true},
                {"pod": "db-2", "role": "Replica", "ready": false},
            ]
        }
    }))
    .expect("cluster")
}

#[test]
fn a_switchover_goes_only_to_a_ready_replica() {
    let pgc = cluster(None);
    assert_eq!(switchover_refusal(&pgc, "db-1"), None);
    let said = |pod| switchover_refusal(&pgc, pod).unwrap_or_default();
    assert_eq!(said("db-0"), "db-0 is the primary of db already");
    assert!(
        said("db-2").starts_with("db-2 is not a ready replica"),
        "{}",
        said("db-2")
    );
    assert_eq!(
        said("db-7"),
        "db-7 is not an instance of db (instances: db-0, db-1, db-2)"
    );
    let promoting = cluster(Some("db-1"));
    assert!(
        switchover_refusal(&promoting, "db-1")
            .unwrap_or_default()
            .starts_with("db-1 is being promoted already")
    );
}

#[test]
fn psql_goes_to_the_primary_a_ready_replica_or_the_pod_named() {
    let pgc = cluster(None);
    let target = |replica, pod| psql_target(&pgc, replica, pod).map_err(|e| e.to_string());
    assert_eq!(target(false, None), Ok("db-0".to_owned()));
    assert_eq!(target(true, None), Ok("db-1".to_owned()));
    assert_eq!(target(false, Some("db-2")), Ok("db-2".to_owned()));
    assert_eq!(
        target(false, Some("db-9")),
        Err("db-9 is not an instance of db".to_owned())
    );
    let mut fenced = cluster(None);
    fenced.metadata.annotations =
        Some([(names::ANNOTATION_FENCED.to_owned(), "db-1".to_owned())].into());
    assert_eq!(
        psql_target(&fenced, false, Some("db-1")).map_err(|e| e.to_string()),
        Err("db-1 is fenced: its postgres is stopped (kubectl ordinal unfence db db-1)".to_owned())
    );
    assert!(
        psql_target(&fenced, true, None).is_err(),
        "db-2 is not ready, db-1 fenced"
    );
}

#[tokio::test]
async fn psql_runs_in_the_postgres_container_through_kubectl_exec() {
    let ctx = Ctx {
        // Never used: the command line is built, not run.
        client: kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:9".parse().expect("url"),
        ))
        .expect("client"),
        namespace: "prod".to_owned(),
        context: Some("staging".to_owned()),
    };
    let args = ["-c".to_owned(), "select 1".to_owned()];
    assert_eq!(
        psql_command(&ctx, "db-1", false, &args),
        [
            "--context",
            "staging",
            "-n",
            "prod",
            "exec",
            "-i",
            "db-1",
            "-c",
            "postgres",
            "--",
            "psql",
            "-U",
            "postgres",
            "-c",
            "select 1"
        ]
    );
    assert_eq!(psql_command(&ctx, "db-1", true, &[])[5], "-it");
}

#[test]
fn fencing_adds_and_unfencing_removes_one_instance() {
    let mut pgc = cluster(None);
    assert_eq!(
        fenced_after(&pgc, &[], "db-1", true).expect("fence"),
        ["db-1"]
    );
    assert_eq!(
        fenced_after(&pgc, &[], "db-9", true).map_err(|e| e.to_string()),
        Err("db-9 is not an instance of db".to_owned())
    );
    pgc.metadata.annotations =
        Some([(names::ANNOTATION_FENCED.to_owned(), "db-2, db-1".to_owned())].into());
    assert_eq!(
        fenced_after(&pgc, &[], "db-1", true).expect("again"),
        ["db-2", "db-1"]
    );
    assert_eq!(
        fenced_after(&pgc, &[], "db-1", false).expect("unfence"),
        ["db-2"]
    );
    assert_eq!(
        fenced_after(&pgc, &[], "db-7", false).expect("not fenced"),
        ["db-2", "db-1"]
    );
}
