//! The failover protocol as a state machine, in the shape of raft-rs: no
//! I/O here. The state is what is recorded (who is primary, the promotion
//! under way — in Kubernetes, the PostgresCluster's status) plus what the
//! loop remembers between looks ([`Memory`]); the input is the latest
//! observation (the members and their probes). [`next`] returns the one
//! action to take now; the driver (`driver.rs`) performs it, looks again,
//! and asks again.
//!
//! The rules, each one a unit test below and a real-cluster scenario:
//!
//! - **Detach before choosing.** After an unplanned loss the standbys that
//!   answer are cut off from the old primary first (empty
//!   `primary_conninfo`): it can collect no further acknowledgements, and
//!   their positions stop moving, so the one chosen holds at least what
//!   every other has and they can all follow it.
//! - **A planned loss is not detached**: a deleted primary's fast shutdown
//!   streams its final WAL to its standbys, and the target is promoted once
//!   it has it.
//! - **Record, then fence, then promote.** The intent (target, epoch) is
//!   recorded before the old primary is stopped, so a pod restarted
//!   meanwhile never starts writable; the target is promoted only once the
//!   old primary is confirmed stopped (or, unreachable, past the deadline
//!   at which it fenced itself).
//! - **Ready the target, then promote.** Before `pg_promote` the target
//!   is given the synchronous standbys it needs as primary (quorum mode:
//!   none of its commits is acknowledged by fewer than the quorum), and
//!   the other standbys are pointed at it, streaming from it as a standby:
//!   they follow its promotion on the same connection, so that the first
//!   commit on the new primary has its quorum at once.
//! - **Every standby follows the primary**: one following another host (or
//!   nobody) is re-pointed; one that cannot follow (a diverged timeline) is
//!   restarted, so that ordinal-init rewinds or re-clones it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ordinal_crds::ReplicationMode;

use super::decide::{self, Detection, FailureStreak, Loss, Probes};
use super::pg::ProbeFailure;
use super::seam::{Observation, PodState};

/// How long a standby may fail to follow the primary before it is
/// restarted (rewound or re-cloned by ordinal-init).
pub const REJOIN_AFTER: Duration = Duration::from_secs(10);
/// A planned promotion waits at most this long, once the old primary is
/// stopped, for the target to have received its final WAL.
pub const FINAL_WAL_WAIT: Duration = Duration::from_secs(5);
/// An unplanned promotion whose old primary was not detached (a hung one)
/// detaches its standbys if the stop is not confirmed within this long:
/// then the isolation deadline applies.
pub const DETACH_AFTER_FENCING: Duration = Duration::from_secs(5);
/// Said in the reason of a promotion moved to a standby further ahead
/// (see [`Action::Retarget`]): `<standby> holds more WAL than <target>`.
pub const RETARGETED: &str = "holds more WAL than";
/// Added to the isolation deadline: an isolated primary stops at the first
/// liveness check (every second, on `ordinal-init run`'s own clock) past
/// isolationSeconds, whose read of the API gives up after 2 s; the rest for
/// a check delayed by a busy node, and clocks.
pub const ISOLATION_MARGIN: Duration = Duration::from_secs(5);
/// How long an unfenced primary has to start (its pod was replaced when it
/// was fenced: a guard, then postgres) before its absence is a loss.
pub const UNFENCE_GRACE: Duration = Duration::from_secs(60);

/// What the loop remembers between looks. Plain data: the driver updates
/// it from each observation ([`Memory::observe`]).
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub streak: FailureStreak,
    /// When a failed probe of the primary was last counted: failures count
    /// once per check interval, however often pod events wake the loop.
    pub last_failure_at: Option<Instant>,
    /// When the primary first failed in the current streak.
    pub suspect_since: Option<Instant>,
    /// When the primary last answered.
    pub last_contact: Option<Instant>,
    /// Its last failed probe, said again while it is no longer probed.
    pub last_error: Option<super::pg::ProbeError>,
    /// The instance (pod UID, address) last seen serving as the primary:
    /// the one to fence, whatever pod carries its name by then.
    pub primary_instance: Option<(Option<String>, Option<String>)>,
    /// Its last WAL position seen (also kept in the status).
    pub last_primary_lsn: Option<u64>,
    /// Standbys not following the primary, since when.
    pub not_following_since: BTreeMap<String, Instant>,
    /// When the standbys were detached from a lost primary.
    pub detached_at: Option<Instant>,
    /// The epoch whose old primary is confirmed stopped.
    pub fenced_epoch: Option<i64>,
    /// When the fence of the promotion under way was confirmed.
    pub fenced_at: Option<Instant>,
    /// The epoch whose old primary is being fenced, since when.
    pub fence_started: Option<(i64, Instant)>,
    /// Whether the recorded primary was fenced (`ordinal.dev/fenced`) at
    /// the last look, and when its fence was lifted: it then starts again
    /// (its guard, then postgres), which is not a loss.
    pub primary_fenced: bool,
    pub unfenced_at: Option<Instant>,
}

impl Memory {
    /// Takes in what the probes say of the recorded primary and the
    /// standbys. `interval` is the check interval.
    pub fn observe(
        &mut self,
        obs: &Observation,
        probes: &Probes,
        interval: Duration,
        now: Instant,
    ) {
        let Some(primary) = obs.record.current_primary.as_deref() else {
            return;
        };
        // A fenced primary is stopped on purpose: its failures are no
        // evidence, before or after its fence is lifted.
        if obs.record.fenced.iter().any(|p| p == primary) {
            self.streak = FailureStreak::default();
            self.suspect_since = None;
            self.last_failure_at = None;
            self.last_error = None;
            self.primary_fenced = true;
            self.unfenced_at = None;
            return;
        }
        if std::mem::take(&mut self.primary_fenced) {
            self.unfenced_at = Some(now);
        }
        match probes.get(primary) {
            // Not probed (given up for lost): the streak stands.
            None => {}
            Some(Ok(p)) if !p.in_recovery => {
                if let Some(m) = obs.members.iter().find(|m| m.name == primary) {
                    self.primary_instance = Some((
                        m.instance.clone(),
                        m.probe_at.as_ref().map(|e| e.host.clone()),
                    ));
                }
                self.streak = FailureStreak::default();
                self.suspect_since = None;
                self.last_failure_at = None;
                self.last_contact = Some(now);
                self.unfenced_at = None;
                if p.current_lsn.is_some() {
                    self.last_primary_lsn = p.current_lsn.max(self.last_primary_lsn);
                }
            }
            result => {
                if let Some(Err(e)) = result {
                    self.last_error = Some(e.clone());
                }
                if self
                    .last_failure_at
                    .is_none_or(|t| now.duration_since(t) >= interval.mul_f64(0.9))
                {
                    self.streak.failures += 1;
                    self.streak.no_answer = match result {
                        Some(Err(e)) if e.failure == ProbeFailure::NoAnswer => {
                            self.streak.no_answer + 1
                        }
                        _ => 0,
                    };
                    self.last_failure_at = Some(now);
                }
                self.suspect_since.get_or_insert(now);
            }
        }
        // Standbys that do not follow the primary, and since when.
        let primary_at = obs
            .members
            .iter()
            .find(|m| m.name == primary)
            .map(|m| m.stable.clone());
        // Counted only while its postgres runs and answers as a standby: a
        // pod still cloning, starting or being replaced is not stuck, and a
        // replaced one starts counting afresh (counting through those had a
        // slow machine restart each new standby the moment it first
        // answered, before its WAL receiver had connected).
        let mut counted = Vec::new();
        for m in obs.members.iter().filter(|m| m.name != primary) {
            match (probes.get(&m.name), &primary_at) {
                (Some(Ok(p)), Some(at)) if p.streams_from(at) => {}
                (Some(Ok(p)), _) if p.in_recovery && m.state == PodState::Running => {
                    self.not_following_since
                        .entry(m.name.clone())
                        .or_insert(now);
                    counted.push(m.name.clone());
                }
                _ => {}
            }
        }
        self.not_following_since
            .retain(|name, _| counted.contains(name));
    }

    /// Forgets what belonged to the old primary once a new one is published.
    pub fn promoted(&mut self) {
        *self = Self::default();
    }
}

/// The promotion to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub from: String,
    /// The old primary's instance (pod UID) and address, as observed.
    pub from_uid: Option<String>,
    pub from_ip: Option<String>,
    pub to: String,
    pub planned: bool,
    pub reason: String,
    pub old_primary_lsn: Option<u64>,
    pub chosen_lsn: Option<u64>,
    pub lost_bytes: Option<i64>,
}

/// The one thing to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to change. `blocked`: why a failover that is needed cannot
    /// proceed (reported in the status and an Event); `primary_up`: the
    /// primary answers, so its housekeeping runs.
    Steady {
        blocked: Option<String>,
        primary_up: bool,
    },
    /// Cut these standbys off from the lost primary.
    Detach { standbys: Vec<String> },
    /// Record the promotion.
    RecordIntent(Intent),
    /// Move the recorded promotion to another target (a new epoch, the
    /// same old primary, still fenced): once the old primary is stopped
    /// and no position moves, a standby further ahead than the target.
    Retarget(Intent),
    /// Stop the old primary, and say when it is seen stopped. `deadline`:
    /// past it, an old primary that cannot be reached has fenced itself.
    Fence {
        pod: String,
        planned: bool,
        deadline: Option<Instant>,
    },
    /// The promotion waits for something that takes a moment (a final WAL
    /// record, a fence): look again soon.
    Wait(String),
    /// Ready the target, then `pg_promote` it. Readied: it is given the
    /// `synchronous_standby_names` it needs as primary while still a
    /// standby (in effect from its first commit, so that no commit is
    /// acknowledged by fewer than the quorum; recorded first, as the union
    /// with the set in effect), and the `standbys` not following it yet are
    /// pointed at it, streaming from it as a standby (cascading): they
    /// follow its promotion on their connection, without a re-point after.
    Promote {
        pod: String,
        synchronous_standby_names: String,
        standbys: Vec<String>,
    },
    /// Route to the promoted target and record it as primary.
    Publish { pod: String },
    /// The recorded primary runs as a standby (it restarted before its
    /// promotion was published): promote it.
    PromoteRecorded { pod: String },
    /// Point these standbys at the primary.
    Repoint { standbys: Vec<String> },
    /// Restart a standby that cannot follow the primary.
    Rejoin { pod: String, why: String },
}

/// What [`next`] looks at.
pub struct View<'a> {
    pub obs: &'a Observation,
    pub probes: &'a Probes,
    pub memory: &'a Memory,
    pub now: Instant,
}

/// The next action.
pub fn next(v: &View<'_>) -> Action {
    let record = &v.obs.record;
    if let Some(target) = record.target_primary.as_deref() {
        return promotion(v, target);
    }
    let Some(primary) = record.current_primary.as_deref() else {
        return Action::Steady {
            blocked: None,
            primary_up: false,
        };
    };
    // A fenced primary is stopped on purpose: nothing replaces it.
    if v.obs.record.fenced.iter().any(|p| p == primary) {
        return steady_blocked(format!(
            "primary {primary} is fenced ({}): writes stop, and no failover replaces it until it is unfenced",
            ordinal_crds::names::ANNOTATION_FENCED
        ));
    }
    // A primary given up for lost is not probed: its last failure stands.
    let remembered;
    let probes = match (&v.memory.last_error, v.probes.contains_key(primary)) {
        (Some(error), false) => {
            let mut with = v.probes.clone();
            with.insert(primary.to_owned(), Err(error.clone()));
            remembered = with;
            &remembered
        }
        _ => v.probes,
    };
    let detection = decide::detect(
        primary,
        &v.obs.members,
        probes,
        v.memory.streak,
        v.obs.settings.failure_threshold,
    );
    match detection {
        Detection::Healthy => healthy(v, primary),
        Detection::RunsAsStandby => {
            let writable: Vec<&str> = v
                .probes
                .iter()
                .filter(|(name, p)| *name != primary && matches!(p, Ok(p) if !p.in_recovery))
                .map(|(name, _)| name.as_str())
                .collect();
            if writable.is_empty() {
                Action::PromoteRecorded {
                    pod: primary.to_owned(),
                }
            } else {
                Action::Steady {
                    blocked: Some(format!(
                        "recorded primary {primary} runs as a standby while {} accepts writes: not promoting",
                        writable.join(", ")
                    )),
                    primary_up: false,
                }
            }
        }
        Detection::Suspect(why) => Action::Steady {
            blocked: Some(why),
            primary_up: false,
        },
        Detection::Lost(loss) => match v.memory.unfenced_at {
            Some(at) if v.now.duration_since(at) < UNFENCE_GRACE => steady_blocked(format!(
                "{}, but its fence was lifted {}s ago: it is starting (failover after {}s)",
                loss.reason(),
                v.now.duration_since(at).as_secs(),
                UNFENCE_GRACE.as_secs()
            )),
            _ => lost(v, primary, loss),
        },
    }
}

fn steady_blocked(why: String) -> Action {
    Action::Steady {
        blocked: Some(why),
        primary_up: false,
    }
}

/// The primary answers: standbys that do not follow it, a switchover asked
/// for, a primary scaled away.
fn healthy(v: &View<'_>, primary: &str) -> Action {
    let obs = v.obs;
    let Some(host) = obs
        .members
        .iter()
        .find(|m| m.name == primary)
        .map(|m| &m.stable)
    else {
        return Action::Steady {
            blocked: None,
            primary_up: true,
        };
    };
    let primary_timeline = v
        .probes
        .get(primary)
        .and_then(|p| p.as_ref().ok())
        .and_then(|p| p.timeline);
    let standbys = obs
        .members
        .iter()
        .filter(|m| m.name != primary && m.state == PodState::Running)
        .filter_map(|m| match v.probes.get(&m.name) {
            Some(Ok(p)) if p.in_recovery => Some((m, p)),
            _ => None,
        });
    let mut repoint = Vec::new();
    for (m, p) in standbys {
        // A standby that verifies its primary while TLS is not required
        // (or the other way round) is re-pointed too: TLS reaches a
        // running standby that way, without a restart.
        let tls_changed = obs
            .settings
            .replication_tls
            .is_some_and(|required| required != p.verifies_upstream());
        if !p.follows(host) || tls_changed {
            repoint.push(m.name.clone());
            continue;
        }
        let stuck_for = v
            .memory
            .not_following_since
            .get(&m.name)
            .map(|t| v.now.duration_since(*t))
            .unwrap_or_default();
        // Streaming from the right host but on another timeline, or not
        // streaming at all: it cannot follow (a fork before its position).
        if stuck_for >= REJOIN_AFTER && (!p.streaming() || p.timeline != primary_timeline) {
            return Action::Rejoin {
                pod: m.name.clone(),
                why: format!(
                    "{} has not followed primary {primary} for {}s (WAL receiver {}, timeline {} where the primary is on {})",
                    m.name,
                    stuck_for.as_secs(),
                    p.receiver.as_deref().unwrap_or("stopped"),
                    p.timeline.map_or("unknown".to_owned(), |t| t.to_string()),
                    primary_timeline.map_or("unknown".to_owned(), |t| t.to_string()),
                ),
            };
        }
    }
    if !repoint.is_empty() {
        return Action::Repoint { standbys: repoint };
    }
    let requested = obs.record.switchover_to.clone().filter(|to| to != primary);
    let scaled_away =
        || decide::scale_down_target(primary, &obs.members, v.probes, obs.settings.replicas);
    if let Some(to) = requested.or_else(scaled_away) {
        let ready = obs
            .members
            .iter()
            .any(|m| m.name == to && m.state == PodState::Running)
            && matches!(v.probes.get(&to), Some(Ok(p)) if p.streams_from(host));
        if !ready {
            return Action::Steady {
                blocked: Some(format!(
                    "switchover to {to} refused: it is not a streaming replica"
                )),
                primary_up: true,
            };
        }
        let (from_uid, from_ip) = old_instance(v, primary);
        return Action::RecordIntent(Intent {
            from: primary.to_owned(),
            from_uid,
            from_ip,
            to: to.clone(),
            planned: true,
            reason: format!("switchover from {primary} to {to}"),
            old_primary_lsn: v.memory.last_primary_lsn,
            chosen_lsn: None,
            lost_bytes: Some(0),
        });
    }
    Action::Steady {
        blocked: None,
        primary_up: true,
    }
}

/// The old primary's instance to fence: the one last seen serving, else
/// the pod there now.
fn old_instance(v: &View<'_>, primary: &str) -> (Option<String>, Option<String>) {
    v.memory.primary_instance.clone().unwrap_or_else(|| {
        let m = v.obs.members.iter().find(|m| m.name == primary);
        (
            m.and_then(|m| m.instance.clone()),
            m.and_then(|m| m.probe_at.as_ref()).map(|e| e.host.clone()),
        )
    })
}

/// The primary is lost: detach (unplanned), choose, record.
fn lost(v: &View<'_>, primary: &str, loss: Loss) -> Action {
    let obs = v.obs;
    if !obs.settings.enabled {
        return steady_blocked(format!(
            "{}; automatic failover is disabled (spec.failover.enabled=false)",
            loss.reason()
        ));
    }
    let quorum = decide::quorum_in_effect(
        obs.record.synchronous.as_ref(),
        &obs.cluster,
        primary,
        &obs.settings,
    );
    let choice = decide::choose(
        primary,
        &obs.members,
        v.probes,
        &obs.settings,
        v.memory.last_primary_lsn,
        &quorum,
    );
    let choice = match choice {
        Ok(choice) => choice,
        Err(why) => {
            return steady_blocked(format!(
                "{}, but no replica can be promoted: {why}",
                loss.reason()
            ));
        }
    };
    let planned = loss == Loss::Planned;
    // A hung primary whose WAL senders still stream: its sessions may still
    // commit, and its standbys still receive those commits. Cutting them
    // off now would lose (async) what it commits until it is stopped; it is
    // stopped first instead (the fence is positive: its container is
    // killed), and the standby furthest ahead once no position moves is
    // promoted (see [`Action::Retarget`]).
    let fence_first = matches!(loss, Loss::Hung(_)) && !streaming_from(v, primary).is_empty();
    if !planned && !fence_first {
        // Standbys still attached to the lost primary: cut them off first,
        // then choose among positions that no longer move.
        let attached = attached_standbys(v, primary);
        if !attached.is_empty() {
            return Action::Detach { standbys: attached };
        }
    }
    let (from_uid, from_ip) = old_instance(v, primary);
    Action::RecordIntent(Intent {
        from: primary.to_owned(),
        from_uid,
        from_ip,
        to: choice.candidate,
        planned,
        reason: loss.reason(),
        old_primary_lsn: v.memory.last_primary_lsn,
        chosen_lsn: Some(choice.position),
        lost_bytes: if obs.settings.mode == ReplicationMode::Quorum && planned {
            Some(0)
        } else {
            choice.lost_bytes
        },
    })
}

/// A promotion is recorded: fence the old primary, promote, publish.
fn promotion(v: &View<'_>, target: &str) -> Action {
    let obs = v.obs;
    let record = &obs.record;
    let from = record.current_primary.clone().unwrap_or_default();
    let planned = record.pending.as_ref().is_some_and(|p| p.planned);
    if !from.is_empty() && from != target && v.memory.fenced_epoch != Some(record.epoch) {
        // An old primary stopped before its standbys are detached (a hung
        // one, see `lost`) is fenced only by a confirmed stop: it could
        // still reach its standbys, so it does not fence itself. Should
        // the stop not be confirmed soon, they are detached after all.
        let attached = attached_standbys(v, &from);
        let fencing_for = v
            .memory
            .fence_started
            .filter(|(epoch, _)| *epoch == record.epoch)
            .map(|(_, t)| v.now.duration_since(t))
            .unwrap_or_default();
        let not_detached = !planned && v.memory.detached_at.is_none();
        if not_detached && fencing_for >= DETACH_AFTER_FENCING && !attached.is_empty() {
            return Action::Detach { standbys: attached };
        }
        // An old primary that cannot be reached may be promoted past once
        // it has fenced itself: isolated from the API server and from its
        // standbys (detached) for isolationSeconds.
        let deadline = if not_detached {
            None
        } else {
            let last_heard = v.memory.last_contact.max(v.memory.detached_at);
            last_heard.map(|t| t + obs.settings.isolation + ISOLATION_MARGIN)
        };
        return Action::Fence {
            pod: from,
            planned,
            deadline,
        };
    }
    match v.probes.get(target) {
        Some(Ok(p)) if p.in_recovery => {
            // The old primary is stopped, but its WAL senders may still be
            // sending what it wrote last (a fast shutdown sends everything
            // to its standbys before it ends): wait for them, briefly.
            let receiving = streaming_from(v, &from);
            let waited = v
                .memory
                .fenced_at
                .map(|t| v.now.duration_since(t))
                .unwrap_or_default();
            if !receiving.is_empty() && waited < FINAL_WAL_WAIT {
                return Action::Wait(format!(
                    "{} still receiving the final WAL of {from}",
                    receiving.join(", ")
                ));
            }
            // Now that no position moves, the target must hold at least
            // what every other standby has: one further ahead could not
            // follow it (its timeline forks before that standby's
            // position), and in quorum mode may hold the only copy of an
            // acknowledged commit. The furthest is promoted instead.
            if let Some(retarget) = retarget(v, target, p, &from) {
                return retarget;
            }
            Action::Promote {
                pod: target.to_owned(),
                synchronous_standby_names: target_synchronous_standby_names(obs, target),
                standbys: cascade(v, target, &from),
            }
        }
        Some(Ok(_)) => Action::Publish {
            pod: target.to_owned(),
        },
        Some(Err(e)) => Action::Wait(format!("promotion target {target} does not answer: {e}")),
        None => Action::Wait(format!("promotion target {target} has no pod")),
    }
}

/// Whether a standby may still take WAL from an upstream: one is set, or
/// none is known and its WAL receiver runs. A detached one (its upstream
/// emptied) whose receiver is still winding down is not detached again.
fn still_attached(p: &super::pg::InstanceProbe) -> bool {
    match p.upstream.as_deref() {
        Some(u) => !u.is_empty(),
        None => p.receiver.is_some(),
    }
}

/// The running standbys that may still take WAL from `from` (see
/// [`still_attached`]): the ones to detach from it.
fn attached_standbys(v: &View<'_>, from: &str) -> Vec<String> {
    standbys_answering(v, from)
        .filter(|(_, p)| still_attached(p))
        .filter(|(name, _)| {
            v.obs
                .members
                .iter()
                .any(|m| m.name == *name && m.state == PodState::Running)
        })
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// The standbys that still stream from `from` (and heard from it lately).
fn streaming_from<'a>(v: &'a View<'_>, from: &'a str) -> Vec<&'a str> {
    let Some(host) = v
        .obs
        .members
        .iter()
        .find(|m| m.name == from)
        .map(|m| &m.stable)
    else {
        return Vec::new();
    };
    standbys_answering(v, from)
        .filter(|(_, p)| p.streams_from(host))
        .map(|(name, _)| name)
        .collect()
}

/// The standbys that answer as standbys (any but the old primary), with
/// their probes.
fn standbys_answering<'a>(
    v: &'a View<'_>,
    from: &'a str,
) -> impl Iterator<Item = (&'a str, &'a super::pg::InstanceProbe)> {
    v.obs
        .members
        .iter()
        .filter(move |m| m.name != from)
        .filter_map(|m| match v.probes.get(&m.name) {
            Some(Ok(p)) if p.in_recovery => Some((m.name.as_str(), p)),
            _ => None,
        })
}

/// A promotion moved to the standby furthest ahead, when it is further
/// than the target (see [`Action::Retarget`]).
fn retarget(
    v: &View<'_>,
    target: &str,
    probe: &super::pg::InstanceProbe,
    from: &str,
) -> Option<Action> {
    let have = probe.wal_position()?;
    let (name, position) = standbys_answering(v, from)
        .filter(|(name, _)| *name != target)
        .filter_map(|(name, p)| Some((name, p.wal_position()?)))
        .max_by_key(|(_, position)| *position)?;
    if position <= have {
        return None;
    }
    let pending = v.obs.record.pending.clone().unwrap_or_default();
    let old = pending
        .old_primary_lsn
        .as_deref()
        .and_then(decide::parse_lsn)
        .or(v.memory.last_primary_lsn);
    let lost_bytes = match (old, pending.lost_bytes) {
        (Some(old), _) => Some(old.saturating_sub(position) as i64),
        (None, known) => known,
    };
    let reason = format!(
        "{}; {name} {RETARGETED} {target} ({} > {})",
        pending.reason,
        super::pg::format_lsn(position),
        super::pg::format_lsn(have)
    );
    Some(Action::Retarget(Intent {
        from: from.to_owned(),
        from_uid: pending.from_uid,
        from_ip: pending.from_ip,
        to: name.to_owned(),
        planned: pending.planned,
        reason,
        old_primary_lsn: old,
        chosen_lsn: Some(position),
        lost_bytes,
    }))
}

/// `synchronous_standby_names` for `target` as the primary: in quorum
/// mode `ANY k` of every other member (the old primary too: it returns as
/// a standby), else none.
pub fn target_synchronous_standby_names(obs: &Observation, target: &str) -> String {
    let quorum = obs.settings.mode == ReplicationMode::Quorum;
    let expected = decide::expected_standbys(&obs.cluster, target, obs.settings.replicas);
    super::pg::synchronous_standby_names(quorum.then_some(obs.settings.quorum), &expected)
}

/// The standbys to point at the promotion target before it is promoted:
/// running, answering, not the old primary, not already following it.
fn cascade(v: &View<'_>, target: &str, from: &str) -> Vec<String> {
    let Some(host) = v
        .obs
        .members
        .iter()
        .find(|m| m.name == target)
        .map(|m| &m.stable)
    else {
        return Vec::new();
    };
    v.obs
        .members
        .iter()
        .filter(|m| m.name != target && m.name != from && m.state == PodState::Running)
        .filter(
            |m| matches!(v.probes.get(&m.name), Some(Ok(p)) if p.in_recovery && !p.follows(host)),
        )
        .map(|m| m.name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
