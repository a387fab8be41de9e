//! The driver of the failover state machine: it observes, probes, asks
//! [`machine::next`] what to do, does it, and looks again. Small on
//! purpose: every decision is in the machine.

use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use ordinal_crds::{
    FailoverPhases, FailoverRecord, InstanceStatus, ReplicationMode, SynchronousSet,
};
use tokio::sync::watch;

use super::decide::{self, Probes};
use super::machine::{self, Action, Intent, Memory, View};
use super::pg;
use super::seam::{
    Credentials, Endpoint, FenceRequest, FenceState, Member, Observation, PoolerRole, Report, Seam,
    SeamError,
};
use super::{FailoverError, Step, Tick};
use crate::metrics::Metrics;

/// Looks, and actions, in one tick at most: a promotion takes a handful.
const MAX_STEPS: usize = 24;
/// While a promotion waits (a fence, a final WAL record), how soon the
/// loop looks again.
const BUSY_POLL: Duration = Duration::from_millis(50);
/// status.instances is written when what a person reads changes (role,
/// readiness, lag or not), and at least this often so that lag figures
/// and the recorded primary LSN stay current, without a status write per
/// probe.
const REPORT_REFRESH: Duration = Duration::from_secs(10);

/// When each phase of the promotion under way began and ended.
#[derive(Clone, Debug, Default)]
struct Timing {
    decided: Option<Instant>,
    detect: Duration,
    decide: Duration,
    fence: Duration,
    promote: Duration,
    promoted_lsn: Option<u64>,
    /// When this loop recorded the intent (wall clock).
    intent_at: Option<std::time::SystemTime>,
}

/// What a report is compared by: the instances as a person reads them,
/// why a failover waits, the synchronous set, the archive's failures.
type ReportKey = (
    Vec<InstanceStatus>,
    Option<String>,
    Option<SynchronousSet>,
    Option<(i64, Option<String>)>,
);
/// The figures a report refreshes while they move.
type ReportFigures = (
    Vec<InstanceStatus>,
    Option<u64>,
    Option<ordinal_crds::ArchiveStatus>,
);

pub struct FailoverLoop<S> {
    seam: S,
    metrics: Option<Metrics>,
    /// Test hook: fail with [`FailoverError::Injected`] right after a step.
    pub crash_after: Option<Step>,
    memory: Memory,
    /// The recorded primary LSN was read into memory.
    restored: bool,
    timing: Timing,
    interval: Duration,
    probe_seconds: f64,
    last_report: Option<ReportKey>,
    last_report_at: Option<Instant>,
    /// The figures last written (positions, lags): an idle cluster's do
    /// not move, and are not written again.
    last_figures: Option<ReportFigures>,
    /// Why the loop was last blocked (logged when it changes).
    last_blocked: Option<String>,
    /// The probes' sessions, kept between looks.
    sessions: pg::Sessions,
    /// The epoch whose promotion target was readied in advance.
    readied: Option<i64>,
    /// The primary instance (pod UID) the pooler's lookup role was last
    /// set up on (with its password) or dropped from (None).
    pooler_role: Option<(String, Option<String>)>,
}

/// How long after detaching its standbys a lost primary is not probed.
const GIVE_UP_AFTER_DETACH: Duration = Duration::from_secs(5);

impl<S: Seam> FailoverLoop<S> {
    pub fn new(seam: S, metrics: Option<Metrics>) -> Self {
        Self {
            seam,
            metrics,
            crash_after: None,
            memory: Memory::default(),
            restored: false,
            timing: Timing::default(),
            interval: Duration::from_secs(1),
            probe_seconds: 0.0,
            last_report: None,
            last_report_at: None,
            last_figures: None,
            last_blocked: None,
            sessions: pg::Sessions::default(),
            readied: None,
            pooler_role: None,
        }
    }

    /// The pooler's lookup role on the primary, once per primary instance
    /// and wanted state: set up (again after a failure) while there is a
    /// pooler; dropped once there is none, tried once (a role a user gave
    /// objects of their own stays, with a warning).
    async fn keep_pooler_role(
        &mut self,
        obs: &Observation,
        primary: &str,
        at: &Endpoint,
        credentials: &Credentials,
    ) {
        let password = match &credentials.pooler {
            PoolerRole::Pending => return,
            PoolerRole::Absent => None,
            PoolerRole::Password(password) => Some(password.clone()),
        };
        let instance = member(obs, primary)
            .ok()
            .and_then(|m| m.instance.clone())
            .unwrap_or_default();
        let done = (instance, password);
        if self.pooler_role.as_ref() == Some(&done) {
            return;
        }
        let (namespace, cluster) = (&obs.namespace, &obs.cluster);
        match &done.1 {
            Some(password) => match pg::ensure_pooler_role(at, credentials, password).await {
                Ok(()) => {
                    tracing::info!(%namespace, %cluster, primary, "the pooler's lookup role is set up");
                    self.pooler_role = Some(done);
                }
                Err(error) => {
                    tracing::warn!(%namespace, %cluster, %error, "setting up the pooler's lookup role failed")
                }
            },
            None => {
                match pg::drop_pooler_role(at, credentials).await {
                    Ok(true) => {
                        tracing::info!(%namespace, %cluster, primary, "the pooler is gone: its lookup role is dropped")
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%namespace, %cluster, %error, "dropping the removed pooler's lookup role failed")
                    }
                }
                self.pooler_role = Some(done);
            }
        }
    }

    pub fn seam(&self) -> &S {
        &self.seam
    }

    /// Runs until `stop` flips to true or the cluster is gone.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), FailoverError> {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let pause = match self.tick().await {
                Ok(Tick::Busy(_)) => BUSY_POLL,
                // Looks start an interval apart: a probe that waited for a
                // hung primary's answer already took part of it.
                Ok(_) => self
                    .interval
                    .saturating_sub(Duration::from_secs_f64(self.probe_seconds)),
                Err(FailoverError::Seam(SeamError::Gone { cluster })) => {
                    tracing::info!(%cluster, "cluster gone: failover loop stops");
                    return Ok(());
                }
                Err(error @ FailoverError::Injected(_)) => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, "failover loop tick failed");
                    self.interval.min(Duration::from_millis(500))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.seam.changed() => {}
                _ = stop.changed() => {}
            }
        }
    }

    fn check(&self, step: Step) -> Result<(), FailoverError> {
        if self.crash_after == Some(step) {
            return Err(FailoverError::Injected(step));
        }
        Ok(())
    }

    /// Looks at the cluster and does what it calls for, step after step,
    /// until it is steady or waits.
    pub async fn tick(&mut self) -> Result<Tick, FailoverError> {
        let mut promoted: Option<Box<FailoverRecord>> = None;
        for _ in 0..MAX_STEPS {
            let obs = self.seam.observe().await?;
            self.interval = obs.settings.check_interval;
            if !self.restored {
                self.memory.last_primary_lsn = obs.record.primary_lsn;
                self.restored = true;
            }
            let credentials = self.seam.credentials().await?;
            let probing = Instant::now();
            // A primary given up for lost is not waited for (a hung one
            // costs every look its probe's whole timeout): once its standbys
            // are detached, during an unplanned promotion, once fenced.
            let planned = obs.record.pending.as_ref().is_some_and(|p| p.planned);
            let given_up = match obs.record.target_primary {
                Some(_) => !planned || self.memory.fenced_epoch == Some(obs.record.epoch),
                // For a while: a failover that cannot go on after all
                // looks at the primary again.
                None => self
                    .memory
                    .detached_at
                    .is_some_and(|t| t.elapsed() < GIVE_UP_AFTER_DETACH),
            };
            let old = obs.record.current_primary.as_deref();
            let to_probe: Vec<Member> = obs
                .members
                .iter()
                .filter(|m| !(given_up && Some(m.name.as_str()) == old))
                .cloned()
                .collect();
            self.sessions.retain(
                &to_probe
                    .iter()
                    .filter_map(|m| Some(m.probe_at.as_ref()?.address()))
                    .collect::<Vec<_>>(),
            );
            let probes = probe_kept(&to_probe, &credentials, &self.sessions, old).await;
            if probes.values().any(|p| {
                p.as_ref()
                    .is_err_and(|e| e.message.contains("password authentication failed"))
            }) {
                self.seam.forget_credentials();
            }
            self.probe_seconds = probing.elapsed().as_secs_f64();
            let now = Instant::now();
            self.memory.observe(&obs, &probes, self.interval, now);
            let action = machine::next(&View {
                obs: &obs,
                probes: &probes,
                memory: &self.memory,
                now,
            });
            match action {
                Action::Steady {
                    blocked,
                    primary_up,
                } => {
                    let synchronous = if primary_up {
                        self.housekeeping(&obs, &probes, &credentials).await?
                    } else {
                        None
                    };
                    if let Some(why) = &blocked
                        && self.last_blocked.as_ref() != Some(why)
                    {
                        tracing::info!(namespace = %obs.namespace, cluster = %obs.cluster, "{why}");
                    }
                    self.last_blocked = blocked.clone();
                    self.report(&obs, &probes, blocked.clone(), synchronous)
                        .await?;
                    if let Some(record) = promoted {
                        return Ok(Tick::Promoted(record));
                    }
                    return Ok(match (blocked, obs.record.current_primary) {
                        (Some(why), _) => Tick::Waiting(why),
                        (None, None) => Tick::Idle,
                        (None, Some(_)) => Tick::Healthy,
                    });
                }
                Action::Detach { standbys } => {
                    tracing::warn!(namespace = %obs.namespace, cluster = %obs.cluster, standbys = ?standbys, "detaching the standbys from the lost primary");
                    self.timing.detect = self
                        .memory
                        .suspect_since
                        .map(|t| now.duration_since(t))
                        .unwrap_or_default();
                    let detaching = standbys.iter().filter_map(|name| {
                        let at = member(&obs, name).ok()?.probe_at.clone()?;
                        let credentials = &credentials;
                        Some(async move {
                            if let Err(error) = pg::detach(&at, credentials).await {
                                tracing::warn!(pod = %name, %error, "cannot detach");
                            }
                        })
                    });
                    join_all(detaching).await;
                    self.memory.detached_at = Some(Instant::now());
                }
                Action::RecordIntent(intent) => {
                    self.record_intent(&obs, &intent, now).await?;
                    self.check(Step::Intent)?;
                }
                Action::Retarget(intent) => {
                    tracing::warn!(
                        namespace = %obs.namespace,
                        cluster = %obs.cluster,
                        from = ?obs.record.target_primary,
                        to = %intent.to,
                        position = ?intent.chosen_lsn.map(pg::format_lsn),
                        "another standby holds more WAL than the promotion target: promoting it instead"
                    );
                    let written = self.seam.record_intent(&obs.record, &intent).await?;
                    // The same old primary, already stopped: the fence holds.
                    if self.memory.fenced_epoch == Some(obs.record.epoch) {
                        self.memory.fenced_epoch = Some(written.epoch);
                    }
                }
                Action::Fence {
                    pod,
                    planned,
                    deadline,
                } => {
                    let pending = obs.record.pending.clone().unwrap_or_default();
                    let request = FenceRequest {
                        pod: pod.clone(),
                        planned,
                        uid: pending.from_uid,
                        ip: pending.from_ip,
                        deadline,
                        last_answer: self.memory.last_contact,
                        intent_at: self.timing.intent_at,
                        hung: !planned
                            && self
                                .memory
                                .last_error
                                .as_ref()
                                .is_some_and(|e| e.failure == pg::ProbeFailure::NoAnswer),
                    };
                    let started = match self.memory.fence_started {
                        Some((epoch, since)) if epoch == obs.record.epoch => since,
                        _ => {
                            self.memory.fence_started = Some((obs.record.epoch, now));
                            now
                        }
                    };
                    match self.seam.fence(&request).await? {
                        FenceState::Stopped(how) => {
                            tracing::info!(namespace = %obs.namespace, cluster = %obs.cluster, pod, how, "old primary fenced");
                            self.memory.fenced_epoch = Some(obs.record.epoch);
                            self.memory.fenced_at = Some(Instant::now());
                            self.timing.fence = started.elapsed();
                            self.check(Step::Fence)?;
                        }
                        FenceState::Pending(why) => {
                            self.ready_in_advance(&obs, &probes, &credentials).await;
                            self.report(&obs, &probes, Some(why.clone()), None).await?;
                            return Ok(Tick::Busy(why));
                        }
                    }
                }
                Action::Wait(why) => {
                    self.ready_in_advance(&obs, &probes, &credentials).await;
                    self.report(&obs, &probes, Some(why.clone()), None).await?;
                    return Ok(Tick::Busy(why));
                }
                Action::Promote {
                    pod,
                    synchronous_standby_names,
                    standbys,
                } => {
                    let m = member(&obs, &pod)?;
                    let at = m
                        .probe_at
                        .clone()
                        .ok_or_else(|| FailoverError::NoAddress { pod: pod.clone() })?;
                    self.timing.promoted_lsn = probes
                        .get(&pod)
                        .and_then(|p| p.as_ref().ok())
                        .and_then(|p| p.wal_position());
                    let started = Instant::now();
                    self.ready_and_promote(
                        &obs,
                        &pod,
                        &at,
                        &synchronous_standby_names,
                        &standbys,
                        &probes,
                        &credentials,
                    )
                    .await?;
                    self.timing.promote = started.elapsed();
                    tracing::info!(namespace = %obs.namespace, cluster = %obs.cluster, pod, "promoted");
                    self.check(Step::Promote)?;
                    // pg_promote(wait => true) returned true: the target
                    // has left recovery, what the next look would see.
                    promoted = Some(Box::new(self.publish(&obs, &pod, &probes).await?));
                }
                Action::Publish { pod } => {
                    promoted = Some(Box::new(self.publish(&obs, &pod, &probes).await?));
                }
                Action::PromoteRecorded { pod } => {
                    let at = member(&obs, &pod)?
                        .probe_at
                        .clone()
                        .ok_or_else(|| FailoverError::NoAddress { pod: pod.clone() })?;
                    tracing::warn!(namespace = %obs.namespace, cluster = %obs.cluster, primary = %pod, "the recorded primary runs as a standby: promoting it");
                    pg::promote(&at, &credentials).await?;
                }
                Action::Repoint { standbys } => {
                    if let Some(primary) = obs.record.current_primary.as_deref() {
                        self.repoint(&obs, &standbys, primary, &credentials).await;
                    }
                }
                Action::Rejoin { pod, why } => {
                    tracing::warn!(namespace = %obs.namespace, cluster = %obs.cluster, pod, why, "restarting a standby that cannot follow");
                    self.seam.restart(&pod, &why).await?;
                    self.memory.not_following_since.remove(&pod);
                    self.report(&obs, &probes, None, None).await?;
                    return Ok(Tick::Healthy);
                }
            }
        }
        Ok(Tick::Busy(
            "the promotion takes more steps than one look allows".to_owned(),
        ))
    }

    async fn record_intent(
        &mut self,
        obs: &Observation,
        intent: &Intent,
        now: Instant,
    ) -> Result<(), FailoverError> {
        tracing::warn!(
            cluster = %obs.cluster,
            from = %intent.from,
            to = %intent.to,
            planned = intent.planned,
            position = ?intent.chosen_lsn.map(pg::format_lsn),
            reason = %intent.reason,
            "failing over"
        );
        if self.timing.detect.is_zero() {
            self.timing.detect = self
                .memory
                .suspect_since
                .map(|t| now.duration_since(t))
                .unwrap_or_default();
        }
        let decided = Instant::now();
        self.seam.record_intent(&obs.record, intent).await?;
        self.timing.intent_at = Some(std::time::SystemTime::now());
        self.timing.decided = Some(decided);
        self.timing.decide = decided.duration_since(now);
        Ok(())
    }

    /// The record of a finished promotion: what was decided (from the
    /// recorded intent) and how long each phase took.
    fn outcome(&self, obs: &Observation, to: &str, probes: &Probes) -> FailoverRecord {
        let pending = obs.record.pending.clone().unwrap_or_default();
        let from = obs.record.current_primary.clone().unwrap_or_default();
        let old_lsn = pending
            .old_primary_lsn
            .as_deref()
            .and_then(decide::parse_lsn)
            .or(self.memory.last_primary_lsn);
        let promoted_lsn = self
            .timing
            .promoted_lsn
            .or(pending.chosen_lsn.as_deref().and_then(decide::parse_lsn))
            .or_else(|| {
                probes
                    .get(to)
                    .and_then(|p| p.as_ref().ok())
                    .and_then(|p| p.wal_position())
            });
        // What the promotion left behind, whatever the mode promised: an
        // old primary seen further than the promoted position lost that
        // WAL. Otherwise nothing acknowledged is lost after a planned stop
        // (the final WAL was waited for) or in quorum mode; after an
        // unplanned loss in async mode what the old primary wrote after it
        // was last seen is unknown, and said so.
        let seen_lost = match (old_lsn, promoted_lsn) {
            (Some(old), Some(new)) => Some(old.saturating_sub(new) as i64),
            _ => None,
        };
        let guaranteed = pending.planned || obs.settings.mode == ReplicationMode::Quorum;
        let lost_bytes = match seen_lost {
            Some(n) if n > 0 => Some(n),
            _ if guaranteed => Some(0),
            _ => None,
        };
        let elapsed = self.timing.decided.map(|t| t.elapsed()).unwrap_or_default();
        let reason = if self.timing.decided.is_some() {
            pending.reason.clone()
        } else {
            format!("{} (resumed after an operator restart)", pending.reason)
        };
        FailoverRecord {
            time: Time(Timestamp::now()),
            from,
            to: to.to_owned(),
            reason,
            duration_seconds: (self.timing.detect + self.timing.decide + elapsed).as_secs_f64(),
            old_primary_lsn: old_lsn.map(pg::format_lsn),
            promoted_lsn: promoted_lsn.map(pg::format_lsn),
            lost_bytes,
            phases: FailoverPhases {
                detect: self.timing.detect.as_secs_f64(),
                decide: self.timing.decide.as_secs_f64(),
                fence: self.timing.fence.as_secs_f64(),
                promote: self.timing.promote.as_secs_f64(),
                publish: 0.0,
            },
        }
    }

    /// Points `standbys` at `primary` (the primary, or the promotion
    /// target about to be one).
    async fn repoint(
        &self,
        obs: &Observation,
        standbys: &[String],
        primary: &str,
        credentials: &Credentials,
    ) {
        let Ok(primary) = member(obs, primary) else {
            return;
        };
        let repoints = standbys.iter().filter_map(|name| {
            let m = member(obs, name).ok()?;
            let at = m.probe_at.clone()?;
            Some(async move {
                match pg::repoint(&at, &m.name, &primary.stable, credentials).await {
                    Ok(()) => tracing::info!(pod = %m.name, primary = %primary.name, "re-pointed"),
                    Err(error) => tracing::info!(pod = %m.name, %error, "not re-pointed now; ordinal-init re-points it at its next start"),
                }
            })
        });
        join_all(repoints).await;
    }

    /// Publishes the promoted target, and returns the failover's record.
    async fn publish(
        &mut self,
        obs: &Observation,
        pod: &str,
        probes: &Probes,
    ) -> Result<FailoverRecord, FailoverError> {
        let mut outcome = self.outcome(obs, pod, probes);
        let publishing = Instant::now();
        self.seam.publish(&obs.record, &outcome).await?;
        outcome.phases.publish = publishing.elapsed().as_secs_f64();
        outcome.duration_seconds += outcome.phases.publish;
        self.check(Step::Publish)?;
        if let Some(metrics) = &self.metrics {
            metrics.record_failover(&obs.namespace, &obs.cluster, &outcome);
        }
        tracing::warn!(
            cluster = %obs.cluster,
            from = %outcome.from,
            to = %outcome.to,
            seconds = outcome.duration_seconds,
            lost_bytes = ?outcome.lost_bytes,
            "failover complete"
        );
        self.memory.promoted();
        self.memory.last_primary_lsn = self.timing.promoted_lsn;
        self.timing = Timing::default();
        Ok(outcome)
    }

    /// While a promotion waits (for the old primary's stop, for its final
    /// WAL), its target, still a standby, is readied for it once: in quorum
    /// mode the synchronous set it will use is recorded (the union, as in
    /// [`Self::ready_and_promote`]) and set on it, and it gets the other
    /// standbys' slots. A standby ignores `synchronous_standby_names` and
    /// serves no slot until it is promoted, so nothing changes now; the
    /// promotion then finds all of it done and has only `pg_promote` to
    /// do. What fails here is done again there.
    async fn ready_in_advance(
        &mut self,
        obs: &Observation,
        probes: &Probes,
        credentials: &Credentials,
    ) {
        let Some(target) = obs.record.target_primary.as_deref() else {
            return;
        };
        if self.readied == Some(obs.record.epoch) {
            return;
        }
        let Some(probe) = probes.get(target).and_then(|p| p.as_ref().ok()) else {
            return;
        };
        let Some(at) = member(obs, target).ok().and_then(|m| m.probe_at.clone()) else {
            return;
        };
        if !probe.in_recovery {
            return;
        }
        self.readied = Some(obs.record.epoch);
        let expected = decide::expected_standbys(&obs.cluster, target, obs.settings.replicas);
        if obs.settings.mode == ReplicationMode::Quorum {
            let why = format!("readying {target} for its promotion");
            if let Err(error) = self.record_target_set(obs, probes, &expected, why).await {
                tracing::warn!(namespace = %obs.namespace, cluster = %obs.cluster, %error, "cannot record the promotion target's synchronous set yet");
                return;
            }
            let names = machine::target_synchronous_standby_names(obs, target);
            if probe.synchronous_standby_names != names
                && let Err(error) =
                    pg::set_synchronous_standby_names(&at, credentials, &names).await
            {
                tracing::warn!(namespace = %obs.namespace, cluster = %obs.cluster, pod = target, %error, "cannot set the promotion target's synchronous standbys yet");
            }
        }
        if let Err(error) = pg::ensure_slots(&at, credentials, &expected).await {
            tracing::warn!(namespace = %obs.namespace, cluster = %obs.cluster, pod = target, %error, "cannot create the promotion target's slots yet");
        }
        tracing::info!(namespace = %obs.namespace, cluster = %obs.cluster, pod = target, "promotion target readied in advance");
    }

    /// Readies the promotion target and promotes it (see
    /// [`Action::Promote`]). In quorum mode the synchronous set it will use
    /// is recorded first (the union with the set in effect, so that the
    /// next failover counts every member that may acknowledge), then set on
    /// it before `pg_promote` — a target that cannot be given it is not
    /// promoted. Beside that, the target gets the other standbys' slots and
    /// they are pointed at it: they follow it from before or just after its
    /// promotion, and nothing waits for them but the first quorum commit.
    /// What does not work here is done again by the housekeeping and
    /// re-pointing of the new primary.
    #[allow(clippy::too_many_arguments)]
    async fn ready_and_promote(
        &mut self,
        obs: &Observation,
        target: &str,
        at: &super::seam::Endpoint,
        synchronous_standby_names: &str,
        standbys: &[String],
        probes: &Probes,
        credentials: &Credentials,
    ) -> Result<(), FailoverError> {
        let quorum = obs.settings.mode == ReplicationMode::Quorum;
        let expected = decide::expected_standbys(&obs.cluster, target, obs.settings.replicas);
        if quorum {
            self.record_target_set(obs, probes, &expected, format!("promoting {target}"))
                .await?;
        }
        let has = probes
            .get(target)
            .and_then(|p| p.as_ref().ok())
            .is_some_and(|p| p.synchronous_standby_names == synchronous_standby_names);
        let promoting = async {
            if !has
                && let Err(error) =
                    pg::set_synchronous_standby_names(at, credentials, synchronous_standby_names)
                        .await
            {
                if quorum {
                    // Promoted without it, its commits would be acknowledged
                    // by fewer than the quorum.
                    return Err(FailoverError::from(error));
                }
                tracing::warn!(namespace = %obs.namespace, cluster = %obs.cluster, pod = target, %error, "cannot set the promotion target's synchronous standbys");
            }
            pg::promote(at, credentials).await?;
            Ok(())
        };
        // The slots first, then the standbys: each streams through its slot
        // from its first connection.
        let following = async {
            if let Err(error) = pg::ensure_slots(at, credentials, &expected).await {
                tracing::warn!(namespace = %obs.namespace, cluster = %obs.cluster, pod = target, %error, "cannot create the promotion target's slots");
            }
            self.repoint(obs, standbys, target, credentials).await;
        };
        let (promoted, ()) = tokio::join!(promoting, following);
        promoted?;
        tracing::info!(namespace = %obs.namespace, cluster = %obs.cluster, pod = target, synchronous_standby_names, standbys = ?standbys, "promotion target readied and promoted");
        Ok(())
    }

    /// Records, in quorum mode, the synchronous set a promotion target will
    /// use — the union of the recorded set with its `expected` standbys, so
    /// that the next failover counts every member that may acknowledge —
    /// unless it is recorded already. `why` is the report's blocked reason.
    async fn record_target_set(
        &mut self,
        obs: &Observation,
        probes: &Probes,
        expected: &[String],
        why: String,
    ) -> Result<(), SeamError> {
        let recorded = obs.record.synchronous.as_ref();
        let set = decide::union_synchronous_set(recorded, None, expected, obs.settings.quorum);
        if recorded == Some(&set) {
            return Ok(());
        }
        self.seam
            .report(&Report {
                instances: decide::instances(&obs.members, probes),
                blocked: Some(why),
                primary_lsn: self.memory.last_primary_lsn,
                synchronous: Some(set),
                archive: decide::archiver(probes).map(decide::archive_status),
            })
            .await
    }

    /// Slots and synchronous standbys on the primary. Returns the
    /// synchronous set to record when it changed. A set that grows is
    /// recorded before the primary uses it: a commit acknowledged by a new
    /// member alone must be counted by the failover rule at once.
    async fn housekeeping(
        &mut self,
        obs: &Observation,
        probes: &Probes,
        credentials: &Credentials,
    ) -> Result<Option<SynchronousSet>, FailoverError> {
        let Some(primary) = obs.record.current_primary.as_deref() else {
            return Ok(None);
        };
        let Some(at) = member(obs, primary).ok().and_then(|m| m.probe_at.clone()) else {
            return Ok(None);
        };
        let Some(Ok(probe)) = probes.get(primary) else {
            return Ok(None);
        };
        let quorum = obs.settings.mode == ReplicationMode::Quorum;
        let expected = decide::expected_standbys(&obs.cluster, primary, obs.settings.replicas);
        let wanted =
            pg::synchronous_standby_names(quorum.then_some(obs.settings.quorum), &expected);
        let recorded = obs.record.synchronous.clone();
        if quorum && wanted != probe.synchronous_standby_names {
            let covered = recorded.as_ref().is_some_and(|r| {
                r.standbys.iter().all(|s| s != primary)
                    && r.quorum <= obs.settings.quorum
                    && expected.iter().all(|s| r.standbys.contains(s))
            });
            if !covered {
                // Record the union first; apply on the next look.
                let union = decide::union_synchronous_set(
                    recorded.as_ref(),
                    Some(primary),
                    &expected,
                    obs.settings.quorum,
                );
                return Ok(Some(union));
            }
        }
        let keep = decide::standbys(primary, &obs.members, obs.settings.replicas);
        let gone: Vec<String> = (obs.settings.replicas..obs.settings.replicas + 64)
            .map(|o| ordinal_crds::names::pod(&obs.cluster, o))
            .filter(|p| !obs.members.iter().any(|m| m.name == *p))
            .collect();
        match pg::housekeeping(
            &self.sessions,
            &at,
            credentials,
            probe,
            &pg::Housekeeping {
                cluster: &obs.cluster,
                keep_slots_for: &keep,
                drop_slots_of: &gone,
                sync: &wanted,
            },
        )
        .await
        {
            Ok(changes) if !changes.is_empty() => {
                tracing::info!(namespace = %obs.namespace, cluster = %obs.cluster, primary, changes = ?changes, "primary housekeeping");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(namespace = %obs.namespace, cluster = %obs.cluster, %error, "primary housekeeping failed")
            }
        }
        self.keep_pooler_role(obs, primary, &at, credentials).await;
        if !quorum {
            return Ok(None);
        }
        // The set in effect, as the primary says.
        let (k, names) = pg::parse_synchronous_standby_names(&probe.synchronous_standby_names);
        let Some(k) = k else {
            return Ok(None);
        };
        let flushed = probe
            .standbys
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.flush_lsn?)))
            .collect();
        let next = decide::next_synchronous_set(
            recorded.as_ref(),
            primary,
            k,
            &names,
            probe.current_lsn,
            &flushed,
        );
        Ok((recorded.as_ref() != Some(&next)).then_some(next))
    }

    /// Reports the instances (and why a failover waits) when they changed.
    async fn report(
        &mut self,
        obs: &Observation,
        probes: &Probes,
        blocked: Option<String>,
        synchronous: Option<SynchronousSet>,
    ) -> Result<(), FailoverError> {
        let instances = decide::instances(&obs.members, probes);
        let archiver = decide::archiver(probes);
        if let Some(metrics) = &self.metrics {
            metrics.observe_instances(
                &obs.namespace,
                &obs.cluster,
                obs.settings.replicas,
                self.probe_seconds,
                &instances,
            );
            metrics.observe_archiver(&obs.namespace, &obs.cluster, archiver);
        }
        let archive = archiver.map(decide::archive_status);
        // Positions move with every write: compare what a person reads.
        let summary: Vec<InstanceStatus> = instances
            .iter()
            .map(|i| InstanceStatus {
                lsn: None,
                lag_bytes: i.lag_bytes.map(|b| if b > 0 { 1 } else { 0 }),
                lag_seconds: None,
                ..i.clone()
            })
            .collect();
        // A new archive failure is reported at once; the lag and the last
        // archived file with the figures.
        let failing = archive
            .as_ref()
            .map(|a| (a.failures, a.last_failed_wal.clone()));
        let key = (summary, blocked.clone(), synchronous.clone(), failing);
        let figures = (
            instances.clone(),
            self.memory.last_primary_lsn,
            archive.clone(),
        );
        // The figures are refreshed every REPORT_REFRESH while they move.
        let fresh = self
            .last_report_at
            .is_some_and(|t| t.elapsed() < REPORT_REFRESH)
            || self.last_figures.as_ref() == Some(&figures);
        if synchronous.is_none() && self.last_report.as_ref() == Some(&key) && fresh {
            return Ok(());
        }
        self.seam
            .report(&Report {
                instances,
                blocked,
                primary_lsn: self.memory.last_primary_lsn,
                synchronous,
                archive,
            })
            .await?;
        self.last_report = Some(key);
        self.last_report_at = Some(Instant::now());
        self.last_figures = Some(figures);
        Ok(())
    }
}

pub(super) fn member<'a>(obs: &'a Observation, name: &str) -> Result<&'a Member, FailoverError> {
    obs.members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| FailoverError::NoAddress {
            pod: name.to_owned(),
        })
}

/// Probes every member at once, each on a fresh session.
pub async fn probe_all(members: &[Member], credentials: &Credentials) -> Probes {
    probe_kept(members, credentials, &pg::Sessions::default(), None).await
}

/// Probes every member at once on the sessions kept in `sessions`; the
/// postmaster of `primary` is also asked for a new connection.
async fn probe_kept(
    members: &[Member],
    credentials: &Credentials,
    sessions: &pg::Sessions,
    primary: Option<&str>,
) -> Probes {
    let probes = members.iter().map(|m| async move {
        let result = match &m.probe_at {
            Some(at) => {
                pg::probe_kept(sessions, at, credentials, primary == Some(m.name.as_str())).await
            }
            None => Err(pg::ProbeError::new(
                pg::ProbeFailure::Unreachable,
                "no address yet",
            )),
        };
        (m.name.clone(), result)
    });
    join_all(probes).await.into_iter().collect()
}
