//! The failover rules as pure functions: when is the primary lost, which
//! replica takes over, what the instances' status is. No I/O, no clock.

use std::collections::BTreeMap;

use ordinal_crds::{ArchiveStatus, InstanceStatus, ReplicationMode, Role};

use super::pg::{self, InstanceProbe, ProbeError, ProbeFailure, format_lsn};
use super::seam::{Member, PodState, Settings};

/// A probe's outcome per member name.
pub type Probes = BTreeMap<String, Result<InstanceProbe, ProbeError>>;

/// How the recorded primary is doing.
#[derive(Clone, Debug, PartialEq)]
pub enum Detection {
    /// It answers as a primary.
    Healthy,
    /// It answers, but as a standby (e.g. it restarted before a promotion
    /// was published): it needs promoting, not replacing.
    RunsAsStandby,
    /// Something is wrong, but not confirmed: no failover (yet). Says why.
    Suspect(String),
    /// Lost, on confirmed evidence.
    Lost(Loss),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Its pod is being deleted: its fast shutdown streams the final WAL.
    Planned,
    /// Its pod is gone, not running, or on a NotReady node.
    PodDown(String),
    /// It failed `failureThreshold` probes and no replica streams from it.
    Unreachable(String),
    /// TCP reaches it, PostgreSQL does not answer: `failureThreshold`
    /// probes in a row. Replicas may still stream from its WAL senders.
    Hung(String),
}

impl Loss {
    pub fn reason(&self) -> String {
        match self {
            Self::Planned => "the primary's pod is being deleted (planned)".to_owned(),
            Self::PodDown(why) | Self::Unreachable(why) | Self::Hung(why) => why.clone(),
        }
    }
}

/// How the probes of the primary have gone lately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureStreak {
    /// Consecutive failed probes (counted once per check interval).
    pub failures: u32,
    /// Of those, the consecutive ones where TCP connected but PostgreSQL
    /// did not answer.
    pub no_answer: u32,
}

/// Decides whether the recorded primary is lost.
pub fn detect(
    primary_name: &str,
    members: &[Member],
    probes: &Probes,
    streak: FailureStreak,
    threshold: u32,
) -> Detection {
    let Some(primary) = members.iter().find(|m| m.name == primary_name) else {
        return Detection::Lost(Loss::PodDown(format!(
            "the pod of primary {primary_name} is gone"
        )));
    };
    match &primary.state {
        PodState::Terminating => return Detection::Lost(Loss::Planned),
        PodState::NotRunning(why) => {
            return Detection::Lost(Loss::PodDown(format!(
                "primary {primary_name} is not running: {why}"
            )));
        }
        // A crashed postmaster restarts in place: back in a second or two
        // with its data (crash recovery), nothing lost, no promotion. It
        // is given the probes a failure would be given before it is lost.
        PodState::Restarting(why) if streak.failures < threshold => {
            return Detection::Suspect(format!(
                "primary {primary_name} is restarting in place ({why}): {} of {threshold} probes failed",
                streak.failures
            ));
        }
        PodState::Restarting(why) => {
            return Detection::Lost(Loss::PodDown(format!(
                "primary {primary_name} did not come back from a restart in place within {threshold} probes: {why}"
            )));
        }
        PodState::NodeNotReady(node) if matches!(probes.get(primary_name), Some(Ok(p)) if !p.in_recovery) =>
        {
            // The node's kubelet is unreachable but postgres answers as the
            // primary: deleting the pod would not stop it, and promoting
            // another would make two writers.
            return Detection::Suspect(format!(
                "primary {primary_name} is on node {node}, which is NotReady, but it answers as the primary: no failover"
            ));
        }
        PodState::NodeNotReady(node) => {
            return Detection::Lost(Loss::PodDown(format!(
                "primary {primary_name} is on node {node}, which is NotReady"
            )));
        }
        PodState::Running => {}
    }
    let error = match probes.get(primary_name) {
        Some(Ok(p)) if !p.in_recovery => return Detection::Healthy,
        Some(Ok(_)) => return Detection::RunsAsStandby,
        Some(Err(e)) => e.clone(),
        None => ProbeError::new(ProbeFailure::Error, "not probed"),
    };
    if streak.failures < threshold {
        return Detection::Suspect(format!(
            "primary {primary_name} failed {} of {threshold} probes: {error}",
            streak.failures
        ));
    }
    if streak.no_answer >= threshold {
        // Positive evidence: the host answers TCP, the server does not.
        return Detection::Lost(Loss::Hung(format!(
            "primary {primary_name} accepts TCP connections but has not answered {} probes in a row ({error})",
            streak.no_answer
        )));
    }
    let replicas: Vec<(&str, &InstanceProbe)> = members
        .iter()
        .filter(|m| m.name != primary_name)
        .filter_map(|m| match probes.get(&m.name) {
            Some(Ok(p)) => Some((m.name.as_str(), p)),
            _ => None,
        })
        .collect();
    if replicas.is_empty() {
        return Detection::Suspect(format!(
            "primary {primary_name} and every replica are unreachable from the operator: \
             not failing over on the operator's own network trouble"
        ));
    }
    if let Some((name, _)) = replicas
        .iter()
        .find(|(_, p)| p.streams_from(&primary.stable))
    {
        return Detection::Suspect(format!(
            "primary {primary_name} is unreachable from the operator, but {name} still streams from it: no failover"
        ));
    }
    Detection::Lost(Loss::Unreachable(format!(
        "primary {primary_name} failed {} consecutive probes ({error}) and no replica streams from it",
        streak.failures
    )))
}

/// The replica to promote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub candidate: String,
    /// The WAL position it holds.
    pub position: u64,
    /// Upper bound of the WAL that may be lost: the last primary position
    /// seen minus the candidate's, when known (never below 0). In quorum
    /// mode no acknowledged commit is in it.
    pub lost_bytes: Option<i64>,
}

/// The standbys a quorum is counted over, and its `k`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quorum {
    pub k: i32,
    pub standbys: Vec<String>,
}

/// Chooses the replica with the highest WAL position (tie: lowest ordinal)
/// among the running standbys that answer. Async mode skips candidates
/// more than `max_lag_bytes` behind the last primary position seen. Quorum
/// mode (`ANY k` of the n standbys in `quorum`) proceeds only when at least
/// n-k+1 of them answer: then one of them holds every acknowledged commit.
/// Err says why no candidate.
pub fn choose(
    primary_name: &str,
    members: &[Member],
    probes: &Probes,
    settings: &Settings,
    last_primary_lsn: Option<u64>,
    quorum: &Quorum,
) -> Result<Choice, String> {
    let mut candidates: Vec<(&Member, u64)> = members
        .iter()
        .filter(|m| m.name != primary_name && m.state == PodState::Running)
        .filter_map(|m| match probes.get(&m.name) {
            Some(Ok(p)) if p.in_recovery => Some((m, p.wal_position()?)),
            _ => None,
        })
        .collect();
    // Highest position first, then lowest ordinal.
    candidates.sort_by(|(a, pa), (b, pb)| pb.cmp(pa).then(a.ordinal.cmp(&b.ordinal)));
    let lag = |position: u64| last_primary_lsn.map(|last| last.saturating_sub(position) as i64);

    match settings.mode {
        ReplicationMode::Quorum => {
            let n = quorum.standbys.len();
            let k = usize::try_from(quorum.k.max(1)).unwrap_or(1);
            let answering: Vec<&str> = candidates
                .iter()
                .map(|(m, _)| m.name.as_str())
                .filter(|name| quorum.standbys.iter().any(|s| s == name))
                .collect();
            let needed = n.saturating_sub(k) + 1;
            if n == 0 || answering.len() < needed {
                return Err(format!(
                    "quorum mode (ANY {k} of {n}): only {} of the synchronous standbys answer ({}); {needed} must, \
                     so that one of them surely holds every acknowledged commit",
                    answering.len(),
                    if answering.is_empty() {
                        "none".to_owned()
                    } else {
                        answering.join(", ")
                    }
                ));
            }
            let (best, position) = candidates
                .first()
                .ok_or_else(|| "no replica answers".to_owned())?;
            Ok(Choice {
                candidate: best.name.clone(),
                position: *position,
                lost_bytes: lag(*position),
            })
        }
        ReplicationMode::Async => {
            let too_far: Vec<String> = candidates
                .iter()
                .filter(|(_, pos)| lag(*pos).is_some_and(|l| l > settings.max_lag_bytes))
                .map(|(m, pos)| format!("{} ({} bytes behind)", m.name, lag(*pos).unwrap_or(0)))
                .collect();
            match candidates
                .iter()
                .find(|(_, pos)| lag(*pos).is_none_or(|l| l <= settings.max_lag_bytes))
            {
                Some((m, position)) => Ok(Choice {
                    candidate: m.name.clone(),
                    position: *position,
                    lost_bytes: lag(*position),
                }),
                None if too_far.is_empty() => Err("no replica answers as a standby".to_owned()),
                None => Err(format!(
                    "every replica is further behind than failover.maxLagBytesOnFailover ({}): {}",
                    settings.max_lag_bytes,
                    too_far.join(", ")
                )),
            }
        }
    }
}

/// The quorum commits are acknowledged under: `recorded` (the set in
/// effect, kept in the status) when known, else every expected standby
/// with the spec's k (more standbys make the rule stricter, never looser).
pub fn quorum_in_effect(
    recorded: Option<&ordinal_crds::SynchronousSet>,
    cluster: &str,
    primary: &str,
    settings: &Settings,
) -> Quorum {
    let standbys: Vec<String> = recorded
        .map(|set| {
            set.standbys
                .iter()
                .filter(|s| *s != primary)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    match recorded {
        Some(set) if !standbys.is_empty() => Quorum {
            k: set.quorum.min(settings.quorum.max(1)),
            standbys,
        },
        _ => Quorum {
            k: settings.quorum.max(1),
            standbys: expected_standbys(cluster, primary, settings.replicas),
        },
    }
}

/// The synchronous set to record after seeing the primary's setting
/// (`k` of `ANY k (names)`) at LSN `primary_lsn`: a growing or equal set is
/// recorded as it is; a shrinking one keeps the members it lost until every
/// remaining member has flushed as far as the primary was when it shrank.
pub fn next_synchronous_set(
    recorded: Option<&ordinal_crds::SynchronousSet>,
    primary: &str,
    k: i32,
    in_effect: &[String],
    primary_lsn: Option<u64>,
    flushed: &BTreeMap<String, u64>,
) -> ordinal_crds::SynchronousSet {
    let fresh = || ordinal_crds::SynchronousSet {
        quorum: k,
        standbys: in_effect.to_vec(),
        shrunk_at: None,
    };
    // A set recorded under an earlier primary names the current one: what
    // it acknowledged, the current primary holds.
    let old = recorded.map(|r| ordinal_crds::SynchronousSet {
        standbys: r
            .standbys
            .iter()
            .filter(|s| *s != primary)
            .cloned()
            .collect(),
        ..r.clone()
    });
    let Some(old) = old.as_ref() else {
        return fresh();
    };
    let removed: Vec<&String> = old
        .standbys
        .iter()
        .filter(|s| !in_effect.contains(s))
        .collect();
    if removed.is_empty() {
        return ordinal_crds::SynchronousSet {
            quorum: k,
            ..fresh()
        };
    }
    let shrunk_at = old.shrunk_at.as_deref().and_then(parse_lsn).or(primary_lsn);
    let caught_up = shrunk_at.is_some_and(|at| {
        in_effect
            .iter()
            .all(|s| flushed.get(s).is_some_and(|f| *f >= at))
    });
    if caught_up {
        return fresh();
    }
    let mut standbys = old.standbys.clone();
    for s in in_effect {
        if !standbys.contains(s) {
            standbys.push(s.clone());
        }
    }
    standbys.sort();
    ordinal_crds::SynchronousSet {
        quorum: k.min(old.quorum),
        standbys,
        shrunk_at: shrunk_at.map(format_lsn),
    }
}

/// `0/3000148` → 50331976.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// When the primary's pod is scaled away (its ordinal is not below
/// spec.replicas), the streaming replica that stays and holds the most WAL
/// takes over by switchover.
pub fn scale_down_target(
    primary: &str,
    members: &[Member],
    probes: &Probes,
    replicas: i32,
) -> Option<String> {
    let ordinal = members.iter().find(|m| m.name == primary)?.ordinal;
    if ordinal < replicas {
        return None;
    }
    members
        .iter()
        .filter(|m| m.ordinal < replicas && m.state == PodState::Running)
        .filter_map(|m| match probes.get(&m.name) {
            Some(Ok(p)) if p.in_recovery && p.streaming() => {
                Some((m, p.wal_position().unwrap_or(0)))
            }
            _ => None,
        })
        .max_by(|(a, pa), (b, pb)| pa.cmp(pb).then(b.ordinal.cmp(&a.ordinal)))
        .map(|(m, _)| m.name.clone())
}

/// The standbys a primary should list as synchronous: the members that are
/// not the primary and whose ordinal is below spec.replicas, by ordinal.
pub fn standbys(primary_name: &str, members: &[Member], replicas: i32) -> Vec<String> {
    let mut names: Vec<(i32, String)> = members
        .iter()
        .filter(|m| m.name != primary_name && m.ordinal < replicas)
        .map(|m| (m.ordinal, m.name.clone()))
        .collect();
    names.sort();
    names.into_iter().map(|(_, n)| n).collect()
}

/// The synchronous set to record before a new one (`expected`, `ANY
/// quorum`) is put in effect: the union with the set `recorded`, less
/// `without` (a primary, which is no standby of itself), and the smaller
/// k, so that a failover counts every member that may have acknowledged
/// a commit under either.
pub fn union_synchronous_set(
    recorded: Option<&ordinal_crds::SynchronousSet>,
    without: Option<&str>,
    expected: &[String],
    quorum: i32,
) -> ordinal_crds::SynchronousSet {
    let mut standbys: Vec<String> = recorded
        .map(|r| {
            r.standbys
                .iter()
                .filter(|s| Some(s.as_str()) != without)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for s in expected {
        if !standbys.contains(s) {
            standbys.push(s.clone());
        }
    }
    standbys.sort();
    ordinal_crds::SynchronousSet {
        quorum: recorded.map_or(quorum, |r| r.quorum.min(quorum)),
        standbys,
        shrunk_at: recorded.and_then(|r| r.shrunk_at.clone()),
    }
}

/// Every pod name of ordinal < replicas except the primary: the standbys
/// the quorum is counted over, whether or not their pods exist right now.
pub fn expected_standbys(cluster: &str, primary_name: &str, replicas: i32) -> Vec<String> {
    (0..replicas)
        .map(|o| ordinal_crds::names::pod(cluster, o))
        .filter(|p| p != primary_name)
        .collect()
}

/// status.instances from the probes. Lag: bytes = primary's current
/// position minus the replica's replayed one; seconds = 0 when it replayed
/// all it received, else the age of its last replayed transaction.
pub fn instances(members: &[Member], probes: &Probes) -> Vec<InstanceStatus> {
    let primary_lsn = probes
        .values()
        .filter_map(|p| p.as_ref().ok())
        .filter(|p| !p.in_recovery)
        .filter_map(|p| p.current_lsn)
        .max();
    let mut out: Vec<InstanceStatus> = members
        .iter()
        .map(|m| match probes.get(&m.name) {
            Some(Ok(p)) => InstanceStatus {
                pod: m.name.clone(),
                role: if p.in_recovery {
                    Role::Replica
                } else {
                    Role::Primary
                },
                ready: !p.in_recovery || p.streaming(),
                lsn: p.wal_position().map(format_lsn),
                lag_bytes: match (p.in_recovery, primary_lsn, p.replay_lsn) {
                    (false, _, _) => Some(0),
                    (true, Some(primary), Some(replay)) => {
                        Some(primary.saturating_sub(replay) as i64)
                    }
                    _ => None,
                },
                lag_seconds: if p.in_recovery {
                    p.replay_delay_seconds
                } else {
                    Some(0.0)
                },
                timeline: p.timeline,
                ip: m.stable.hostaddr.clone(),
                ssl: Some(p.ssl),
                upstream_sslmode: p.upstream_sslmode.clone(),
            },
            _ => InstanceStatus {
                pod: m.name.clone(),
                role: Role::Unknown,
                ready: false,
                lsn: None,
                lag_bytes: None,
                lag_seconds: None,
                timeline: None,
                ip: m.stable.hostaddr.clone(),
                ssl: None,
                upstream_sslmode: None,
            },
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

/// The largest lag, for `kubectl get` (e.g. "0", "12KiB", "3MiB").
/// The archiver of the writable primary among `probes`, if it archives.
pub fn archiver(probes: &Probes) -> Option<&pg::Archiver> {
    probes
        .values()
        .filter_map(|p| p.as_ref().ok())
        .find(|p| !p.in_recovery)
        .and_then(|p| p.archiver.as_ref())
}

/// The archiver as the cluster's status shows it.
pub fn archive_status(archiver: &pg::Archiver) -> ArchiveStatus {
    ArchiveStatus {
        last_archived_wal: archiver.last_archived_wal.clone(),
        last_archived_time: archiver
            .last_archived_at
            .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
            .map(|t| t.to_string()),
        lag_seconds: archiver.lag_seconds as i64,
        failures: archiver.failed,
        last_failed_wal: archiver.last_failed_wal.clone(),
        last_error: archiver.last_error.clone(),
    }
}

pub fn max_lag(instances: &[InstanceStatus]) -> Option<String> {
    let max = instances.iter().filter_map(|i| i.lag_bytes).max()?;
    Some(human_bytes(max))
}

pub use ordinal_crds::human_bytes;

#[cfg(test)]
mod tests;
