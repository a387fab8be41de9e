//! The volume plan, from what was seen.

use super::*;

fn volume(name: &str, requested: &str, capacity: &str) -> VolumeView {
    VolumeView {
        name: name.to_owned(),
        bound: true,
        requested: Some(requested.to_owned()),
        capacity: Some(capacity.to_owned()),
        class: Some("standard".to_owned()),
        resizing: None,
    }
}

fn class(expandable: bool, immediate: bool) -> ClassView {
    ClassView {
        name: "standard".to_owned(),
        expandable,
        immediate,
    }
}

fn seen<'a>(
    want: &'a str,
    template: Option<&'a str>,
    volumes: &'a [VolumeView],
    class: &'a ClassView,
) -> Seen<'a> {
    Seen {
        want,
        template,
        template_deleting: false,
        volumes,
        class: Some(class),
        class_name: Some("standard"),
        stranded: &[],
        primary: Some("db-0"),
    }
}

#[test]
fn unchanged_volumes_apply_the_spec_size() {
    let volumes = [
        volume("data-db-0", "1Gi", "1Gi"),
        volume("data-db-1", "1Gi", "1Gi"),
    ];
    let class = class(true, false);
    let plan = plan(&seen("1Gi", Some("1Gi"), &volumes, &class));
    assert_eq!(plan.statefulset, StatefulSetStep::Apply("1Gi".to_owned()));
    assert!(plan.expand.is_empty());
    assert!(plan.resized.ok, "{:?}", plan.resized);
    assert_eq!(plan.resized.reason, "AsRequested");
    assert!(plan.placement.ok);
    assert_eq!(plan.placement.reason, "WaitForFirstConsumer");
}

#[test]
fn a_bigger_size_grows_every_claim_then_recreates_the_statefulset() {
    let volumes = [
        volume("data-db-0", "1Gi", "1Gi"),
        volume("data-db-1", "1Gi", "1Gi"),
    ];
    let class = class(true, false);
    let plan = plan(&seen("2Gi", Some("1Gi"), &volumes, &class));
    assert_eq!(plan.expand, ["data-db-0", "data-db-1"]);
    assert_eq!(plan.statefulset, StatefulSetStep::Recreate);
    assert!(!plan.resized.ok);
    assert_eq!(plan.resized.reason, "Resizing");
    assert!(
        plan.resized.message.contains("0 of 2 done"),
        "{}",
        plan.resized.message
    );
}

#[test]
fn the_statefulset_waits_for_its_orphan_delete() {
    let volumes = [volume("data-db-0", "2Gi", "1Gi")];
    let class = class(true, false);
    let mut seen = seen("2Gi", Some("1Gi"), &volumes, &class);
    seen.template_deleting = true;
    let plan = plan(&seen);
    assert_eq!(plan.statefulset, StatefulSetStep::Wait);
    assert!(plan.expand.is_empty(), "asked already");
    assert_eq!(plan.resized.reason, "Resizing");
}

#[test]
fn a_re_created_statefulset_waits_for_the_claims_to_grow() {
    let mut volumes = [
        volume("data-db-0", "2Gi", "2Gi"),
        volume("data-db-1", "2Gi", "1Gi"),
    ];
    volumes[1].resizing = Some("FileSystemResizePending".to_owned());
    let class = class(true, false);
    let plan = plan(&seen("2Gi", Some("2Gi"), &volumes, &class));
    assert_eq!(plan.statefulset, StatefulSetStep::Apply("2Gi".to_owned()));
    assert!(plan.expand.is_empty());
    assert_eq!(plan.resized.reason, "Resizing");
    assert!(
        plan.resized
            .message
            .contains("1 of 2 done; waiting for data-db-1 (1Gi, FileSystemResizePending)"),
        "{}",
        plan.resized.message
    );

    volumes[1].capacity = Some("2048Mi".to_owned());
    let plan = plan_of(&volumes, &class);
    assert!(plan.resized.ok, "2048Mi is 2Gi: {:?}", plan.resized);
}

fn plan_of(volumes: &[VolumeView], class: &ClassView) -> Plan {
    plan(&seen("2Gi", Some("2Gi"), volumes, class))
}

#[test]
fn a_class_without_expansion_changes_nothing_and_says_how_to_fix_it() {
    let volumes = [volume("data-db-0", "1Gi", "1Gi")];
    let class = class(false, false);
    let plan = plan(&seen("2Gi", Some("1Gi"), &volumes, &class));
    assert_eq!(plan.statefulset, StatefulSetStep::Apply("1Gi".to_owned()));
    assert!(plan.expand.is_empty());
    assert!(!plan.resized.ok);
    assert_eq!(plan.resized.reason, "ExpansionNotAllowed");
    assert!(
        plan.resized.message.contains(
            "StorageClass standard does not allow volume expansion (allowVolumeExpansion is not true). Set storage.size back to 1Gi"
        ),
        "{}",
        plan.resized.message
    );
}

#[test]
fn a_smaller_size_keeps_the_volumes() {
    let volumes = [volume("data-db-0", "2Gi", "2Gi")];
    let class = class(true, false);
    let plan = plan(&seen("1Gi", Some("2Gi"), &volumes, &class));
    assert_eq!(plan.statefulset, StatefulSetStep::Apply("2Gi".to_owned()));
    assert!(plan.expand.is_empty());
    assert_eq!(plan.resized.reason, "CannotShrink");
}

#[test]
fn retained_smaller_claims_grow_without_a_new_statefulset() {
    // Recreated over retained volumes after storage.size grew.
    let volumes = [
        volume("data-db-0", "1Gi", "1Gi"),
        volume("data-db-1", "2Gi", "2Gi"),
    ];
    let class = class(true, false);
    let plan = plan(&seen("2Gi", None, &volumes, &class));
    assert_eq!(plan.statefulset, StatefulSetStep::Apply("2Gi".to_owned()));
    assert_eq!(plan.expand, ["data-db-0"]);
    assert_eq!(plan.resized.reason, "Resizing");
}

#[test]
fn unbound_claims_are_neither_grown_nor_counted() {
    let mut volumes = [
        volume("data-db-0", "1Gi", "1Gi"),
        volume("data-db-1", "1Gi", ""),
    ];
    volumes[1].bound = false;
    volumes[1].capacity = None;
    let class = class(true, false);
    let plan = plan(&seen("1Gi", Some("1Gi"), &volumes, &class));
    assert!(plan.resized.ok, "{:?}", plan.resized);
    let plan = plan_of(&volumes, &class);
    assert_eq!(plan.expand, ["data-db-0"]);
}

#[test]
fn an_immediate_class_is_said_with_the_fix() {
    let class = class(true, true);
    let plan = plan(&seen("1Gi", Some("1Gi"), &[], &class));
    assert!(!plan.placement.ok);
    assert_eq!(plan.placement.reason, "ImmediateBinding");
    assert!(
        plan.placement
            .message
            .contains("volumeBindingMode: WaitForFirstConsumer")
    );
}

#[test]
fn a_pod_stranded_by_its_volume_is_named_with_the_fix_for_its_role() {
    let class = class(true, false);
    let stranded = [
        StrandedPod {
            pod: "db-1".to_owned(),
            claim: "data-db-1".to_owned(),
            pinned_to: Some("topology.kubernetes.io/zone in (b)".to_owned()),
            scheduler: "0/3 nodes are available: 3 node(s) had volume node affinity conflict."
                .to_owned(),
        },
        StrandedPod {
            pod: "db-0".to_owned(),
            claim: "data-db-0".to_owned(),
            pinned_to: None,
            scheduler: "volume node affinity conflict".to_owned(),
        },
    ];
    let mut seen = seen("1Gi", Some("1Gi"), &[], &class);
    seen.stranded = &stranded;
    let plan = plan(&seen);
    assert!(!plan.placement.ok);
    assert_eq!(plan.placement.reason, "VolumeNodeAffinityConflict");
    let message = &plan.placement.message;
    assert!(
        message.contains("db-1 cannot be scheduled: its volume data-db-1 is pinned to topology.kubernetes.io/zone in (b), where no node can run it"),
        "{message}"
    );
    assert!(
        message.contains("as db-1 is a replica, delete the claim data-db-1 and then the pod"),
        "{message}"
    );
    assert!(
        message.contains("it is the primary's volume: never delete it"),
        "{message}"
    );
    assert!(!message.contains("delete the claim data-db-0"), "{message}");
}
