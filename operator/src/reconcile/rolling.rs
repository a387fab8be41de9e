//! Rolling updates without unplanned failovers, as a pure decision. The
//! StatefulSet uses `OnDelete`: the operator replaces pods itself — replicas
//! first, highest ordinal first, only ordinals >= the partition, each Ready
//! and caught up before the next — then switches over to an updated replica
//! and replaces the old primary last.

/// What the decision needs to know of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRevision {
    pub name: String,
    pub ordinal: i32,
    /// The pod's `controller-revision-hash`.
    pub revision: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    /// Replay lag in bytes as last probed (None: unknown).
    pub lag_bytes: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Every pod in scope runs the current template.
    Done,
    /// Not now; says why.
    Wait(String),
    /// Delete this pod: the StatefulSet recreates it from the new template.
    Replace(String),
    /// Switch over to this updated replica; the old primary is replaced next.
    Switchover(String),
}

/// A replica is caught up when its lag is known and at most this.
pub const CAUGHT_UP_BYTES: i64 = 16 * 1024 * 1024;

/// The next step of a rolling update to `update_revision` of a cluster of
/// `replicas` (spec.replicas) pods.
pub fn next_step(
    pods: &[PodRevision],
    update_revision: &str,
    partition: i32,
    primary: &str,
    replicas: i32,
) -> Step {
    let outdated =
        |p: &&PodRevision| p.ordinal >= partition && p.revision.as_deref() != Some(update_revision);
    let mut stale: Vec<&PodRevision> = pods.iter().filter(outdated).collect();
    if stale.is_empty() {
        return Step::Done;
    }
    if let Some(p) = pods.iter().find(|p| p.terminating) {
        return Step::Wait(format!("{} is being replaced", p.name));
    }
    // A pod deleted a moment ago may be missing from the list before it is
    // recreated: never take a second one down meanwhile.
    if let Some(missing) = (0..replicas).find(|o| !pods.iter().any(|p| p.ordinal == *o)) {
        return Step::Wait(format!("the pod of ordinal {missing} does not exist yet"));
    }
    // An outdated replica that is not ready serves nothing: replacing it
    // first costs no availability, and is how a template that broke its
    // pods (a wrong image, a crash at start) is rolled back — else its
    // unready pods would hold the update forever (Kubernetes' "forced
    // rollback" needs a person to delete them).
    if let Some(p) = stale.iter().find(|p| !p.ready && p.name != primary) {
        return Step::Replace(p.name.clone());
    }
    if let Some(p) = pods.iter().find(|p| !p.ready) {
        return Step::Wait(format!("{} is not ready", p.name));
    }
    if let Some(p) = pods
        .iter()
        .find(|p| p.name != primary && p.lag_bytes.is_none_or(|l| l > CAUGHT_UP_BYTES))
    {
        return Step::Wait(format!("{} has not caught up with the primary", p.name));
    }
    stale.sort_by_key(|p| std::cmp::Reverse(p.ordinal));
    if let Some(replica) = stale.iter().find(|p| p.name != primary) {
        return Step::Replace(replica.name.clone());
    }
    // Only the primary is left: hand over to the updated replica with the
    // least lag (tie: lowest ordinal), then it is an ordinary replica.
    let updated = pods
        .iter()
        .filter(|p| p.name != primary && p.revision.as_deref() == Some(update_revision))
        .min_by_key(|p| (p.lag_bytes.unwrap_or(i64::MAX), p.ordinal));
    match updated {
        Some(to) => Step::Switchover(to.name.clone()),
        // Only a single-instance cluster replaces its primary in place.
        None if replicas == 1 => Step::Replace(primary.to_owned()),
        None => Step::Wait(format!(
            "no updated replica to switch over to (partition {partition} keeps the others on the old template)"
        )),
    }
}

/// The PostgreSQL major version an image runs, from its tag
/// (`postgres:17.2-bookworm` → 17); None when the tag does not say.
pub fn image_major(image: &str) -> Option<u32> {
    let name = image.rsplit('/').next().unwrap_or(image);
    let tag = name.split_once(':')?.1;
    let tag = tag.split('@').next()?;
    let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|m| (9..100).contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "rev-2";

    fn pod(ordinal: i32, revision: &str) -> PodRevision {
        PodRevision {
            name: format!("db-{ordinal}"),
            ordinal,
            revision: Some(revision.to_owned()),
            ready: true,
            terminating: false,
            lag_bytes: Some(0),
        }
    }

    fn cluster(revisions: [&str; 3]) -> Vec<PodRevision> {
        revisions
            .iter()
            .enumerate()
            .map(|(i, r)| pod(i as i32, r))
            .collect()
    }

    #[test]
    fn replicas_first_highest_ordinal_first() {
        let pods = cluster(["rev-1", "rev-1", "rev-1"]);
        assert_eq!(
            next_step(&pods, NEW, 0, "db-0", 3),
            Step::Replace("db-2".to_owned())
        );
        let pods = cluster(["rev-1", "rev-1", NEW]);
        assert_eq!(
            next_step(&pods, NEW, 0, "db-0", 3),
            Step::Replace("db-1".to_owned())
        );
        // The primary is db-1: db-2 then db-0, db-1 last.
        let pods = cluster(["rev-1", "rev-1", "rev-1"]);
        assert_eq!(
            next_step(&pods, NEW, 0, "db-1", 3),
            Step::Replace("db-2".to_owned())
        );
        let pods = cluster(["rev-1", "rev-1", NEW]);
        assert_eq!(
            next_step(&pods, NEW, 0, "db-1", 3),
            Step::Replace("db-0".to_owned())
        );
    }

    #[test]
    fn the_primary_goes_last_through_one_switchover() {
        let mut pods = cluster(["rev-1", NEW, NEW]);
        pods[1].lag_bytes = Some(500);
        pods[2].lag_bytes = Some(100);
        assert_eq!(
            next_step(&pods, NEW, 0, "db-0", 3),
            Step::Switchover("db-2".to_owned())
        );
        // After the switchover db-0 is a replica like any other.
        assert_eq!(
            next_step(&pods, NEW, 0, "db-2", 3),
            Step::Replace("db-0".to_owned())
        );
    }

    #[test]
    fn an_outdated_replica_that_is_not_ready_goes_first() {
        // The template broke db-2 (a wrong image); it is set right again:
        // db-2, on the broken revision, never gets ready by itself.
        let mut pods = cluster([NEW, NEW, "rev-broken"]);
        pods[2].ready = false;
        pods[2].lag_bytes = None;
        assert_eq!(
            next_step(&pods, NEW, 0, "db-0", 3),
            Step::Replace("db-2".to_owned())
        );
        // Never the primary: the failover loop answers for it.
        let mut pods = cluster(["rev-broken", NEW, NEW]);
        pods[0].ready = false;
        assert_eq!(
            next_step(&pods, NEW, 0, "db-0", 3),
            Step::Wait("db-0 is not ready".to_owned())
        );
        // Nor one the partition keeps.
        let mut pods = cluster(["rev-1", "rev-1", NEW]);
        pods[1].ready = false;
        assert_eq!(next_step(&pods, NEW, 2, "db-0", 3), Step::Done);
    }

    #[test]
    fn one_pod_at_a_time_each_ready_and_caught_up() {
        let mut pods = cluster(["rev-1", "rev-1", NEW]);
        pods[2].ready = false;
        assert_eq!(
            next_step(&pods, NEW, 0, "db-0", 3),
            Step::Wait("db-2 is not ready".to_owned())
        );
        pods[2].ready = true;
        pods[2].lag_bytes = Some(CAUGHT_UP_BYTES + 1);
        assert_eq!(
            next_step(&pods, NEW, 0, "db-0", 3),
            Step::Wait("db-2 has not caught up with the primary".to_owned())
        );
        pods[2].lag_bytes = None;
        assert!(
            matches!(next_step(&pods, NEW, 0, "db-0", 3), Step::Wait(_)),
            "unknown lag waits"
        );
        pods[2].lag_bytes = Some(0);
        pods[1].terminating = true;
        assert_eq!(
            next_step(&pods, NEW, 0, "db-0", 3),
            Step::Wait("db-1 is being replaced".to_owned())
        );
    }

    #[test]
    fn the_partition_is_a_canary() {
        let pods = cluster(["rev-1", "rev-1", "rev-1"]);
        assert_eq!(
            next_step(&pods, NEW, 2, "db-0", 3),
            Step::Replace("db-2".to_owned())
        );
        let pods = cluster(["rev-1", "rev-1", NEW]);
        assert_eq!(
            next_step(&pods, NEW, 2, "db-0", 3),
            Step::Done,
            "ordinals below 2 stay"
        );
        // The primary inside the canary with no updated replica: wait.
        let pods = cluster(["rev-1", "rev-1", "rev-1"]);
        assert!(
            matches!(next_step(&pods, NEW, 2, "db-2", 3), Step::Wait(w) if w.contains("partition 2"))
        );
    }

    #[test]
    fn done_when_everything_is_current() {
        assert_eq!(
            next_step(&cluster([NEW, NEW, NEW]), NEW, 0, "db-0", 3),
            Step::Done
        );
        // A not-ready pod does not matter once nothing is left to replace.
        let mut pods = cluster([NEW, NEW, NEW]);
        pods[1].ready = false;
        assert_eq!(next_step(&pods, NEW, 0, "db-0", 3), Step::Done);
    }

    #[test]
    fn a_single_instance_is_replaced_in_place() {
        let pods = vec![pod(0, "rev-1")];
        assert_eq!(
            next_step(&pods, NEW, 0, "db-0", 1),
            Step::Replace("db-0".to_owned())
        );
    }

    #[test]
    fn a_missing_pod_is_waited_for() {
        // db-2 was just deleted and is not recreated yet: the primary, the
        // only other stale pod, must not go too.
        let pods = vec![pod(0, "rev-1"), pod(1, NEW)];
        assert!(matches!(
            next_step(&pods, NEW, 0, "db-0", 3),
            Step::Wait(w) if w.contains("ordinal 2")
        ));
        // Nor is a two-pod cluster's primary replaced without a switchover.
        let pods = vec![pod(0, "rev-1")];
        assert!(matches!(next_step(&pods, NEW, 0, "db-0", 2), Step::Wait(_)));
    }

    #[test]
    fn majors_from_image_tags() {
        assert_eq!(image_major("postgres:17"), Some(17));
        assert_eq!(image_major("postgres:16.4-bookworm"), Some(16));
        assert_eq!(
            image_major("registry.example:5000/team/postgres:15.8@sha256:abc"),
            Some(15)
        );
        assert_eq!(image_major("postgres:latest"), None);
        assert_eq!(image_major("postgres"), None);
        assert_eq!(image_major("ghcr.io/org/pg:9.6"), Some(9));
    }
}
