//! The failover loop (DESIGN §5): one per PostgresCluster. Every
//! `checkIntervalSeconds`, and at once on any change of a member, it probes
//! the instances, keeps the primary's housekeeping, and promotes the best
//! replica when the primary is lost on confirmed evidence — recording its
//! intent first, so that a restarted operator resumes instead of repeating.

pub mod decide;
pub mod kube;
pub mod pg;
pub mod seam;

use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use ordinal_crds::{FailoverPhases, FailoverRecord, InstanceStatus, ReplicationMode};
use tokio::sync::watch;

use crate::metrics::Metrics;
use decide::{Detection, Loss, Probes};
use pg::PgError;
use seam::{Credentials, Member, Observation, Seam, SeamError};

/// A step of a promotion, for fault injection in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Intent,
    Fence,
    Promote,
    Publish,
}

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error(transparent)]
    Seam(#[from] SeamError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("{pod} has no address to reach it at")]
    NoAddress { pod: String },
    #[error("fault injected after step {0:?}")]
    Injected(Step),
}

/// What one tick did.
#[derive(Clone, Debug, PartialEq)]
pub enum Tick {
    /// No primary recorded yet.
    Idle,
    Healthy,
    /// Not failing over; says why.
    Waiting(String),
    Promoted(Box<FailoverRecord>),
}

/// What the loop remembers between ticks.
#[derive(Default)]
struct Memory {
    failures: u32,
    suspect_since: Option<Instant>,
    last_primary_lsn: Option<u64>,
    /// The synchronous standbys last seen on the primary.
    sync_standbys: Vec<String>,
    last_report: Option<(Vec<InstanceStatus>, Option<String>)>,
    last_report_at: Option<Instant>,
    interval: Option<Duration>,
    /// How long the last round of probes took.
    probe_seconds: f64,
    /// When a failed probe of the primary was last counted: failures are
    /// counted once per check interval, however often pod events wake the
    /// loop.
    last_failure_at: Option<Instant>,
    /// `k` of the `ANY k (…)` in effect on the primary, as last seen.
    sync_quorum: Option<i32>,
}

pub struct FailoverLoop<S> {
    seam: S,
    metrics: Option<Metrics>,
    /// Test hook: fail with [`FailoverError::Injected`] right after a step.
    pub crash_after: Option<Step>,
    memory: Memory,
}

/// How long a planned loss waits for the replicas to settle once the old
/// primary stopped answering.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a switchover waits for the old primary's clean shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(90);
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// status.instances is written when what a person reads changes (role,
/// readiness, lag or not), and at least this often so that lag figures
/// (MAX LAG, the rolling update's catch-up check) stay current, without a
/// status write per probe.
const REPORT_REFRESH: Duration = Duration::from_secs(10);

impl<S: Seam> FailoverLoop<S> {
    pub fn new(seam: S, metrics: Option<Metrics>) -> Self {
        Self {
            seam,
            metrics,
            crash_after: None,
            memory: Memory::default(),
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
            match self.tick().await {
                Ok(_) => {}
                Err(FailoverError::Seam(SeamError::Gone { cluster })) => {
                    tracing::info!(%cluster, "cluster gone: failover loop stops");
                    return Ok(());
                }
                Err(error @ FailoverError::Injected(_)) => return Err(error),
                Err(error) => tracing::warn!(%error, "failover loop tick failed"),
            }
            let interval = self.memory.interval.unwrap_or(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
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

    /// One look at the cluster, and whatever it calls for.
    pub async fn tick(&mut self) -> Result<Tick, FailoverError> {
        let obs = self.seam.observe().await?;
        self.memory.interval = Some(obs.settings.check_interval);
        let credentials = self.seam.credentials().await?;
        if let Some(target) = obs.record.target_primary.clone() {
            return self.resume(&obs, &target, &credentials).await;
        }
        let probing = Instant::now();
        let probes = probe_all(&obs.members, &credentials).await;
        self.memory.probe_seconds = probing.elapsed().as_secs_f64();
        let Some(primary) = obs.record.current_primary.clone() else {
            self.report(&obs, &probes, None).await?;
            return Ok(Tick::Idle);
        };
        match probes.get(&primary) {
            Some(Ok(p)) if !p.in_recovery => {
                self.memory.failures = 0;
                self.memory.suspect_since = None;
                self.memory.last_primary_lsn = p.current_lsn;
                let (k, standbys) =
                    pg::parse_synchronous_standby_names(&p.synchronous_standby_names);
                self.memory.sync_standbys = standbys;
                self.memory.sync_quorum = k;
                self.memory.last_failure_at = None;
            }
            _ => {
                let interval = obs.settings.check_interval.mul_f64(0.9);
                if self
                    .memory
                    .last_failure_at
                    .is_none_or(|t| t.elapsed() >= interval)
                {
                    self.memory.failures += 1;
                    self.memory.last_failure_at = Some(Instant::now());
                }
                self.memory.suspect_since.get_or_insert_with(Instant::now);
            }
        }
        let detection = decide::detect(
            &primary,
            &obs.members,
            &probes,
            self.memory.failures,
            obs.settings.failure_threshold,
        );
        match detection {
            Detection::Healthy => {
                self.housekeeping(&obs, &primary, &credentials).await;
                let requested = obs.record.switchover_to.clone().filter(|to| *to != primary);
                let scaled_away = || {
                    decide::scale_down_target(
                        &primary,
                        &obs.members,
                        &probes,
                        obs.settings.replicas,
                    )
                };
                if let Some(to) = requested.or_else(scaled_away) {
                    return self
                        .switchover(&obs, &primary, &to, &probes, &credentials)
                        .await;
                }
                self.report(&obs, &probes, None).await?;
                Ok(Tick::Healthy)
            }
            Detection::RunsAsStandby => {
                self.promote_recorded(&obs, &primary, &probes, &credentials)
                    .await
            }
            Detection::Suspect(why) => {
                tracing::info!(cluster = %obs.cluster, "{why}");
                self.report(&obs, &probes, Some(&why)).await?;
                Ok(Tick::Waiting(why))
            }
            Detection::Lost(loss) => self.lost(&obs, &primary, loss, probes, &credentials).await,
        }
    }

    async fn lost(
        &mut self,
        obs: &Observation,
        primary: &str,
        loss: Loss,
        mut probes: Probes,
        credentials: &Credentials,
    ) -> Result<Tick, FailoverError> {
        if !obs.settings.enabled {
            let why = format!(
                "{}; automatic failover is disabled (spec.failover.enabled=false)",
                loss.reason()
            );
            self.report(obs, &probes, Some(&why)).await?;
            return Ok(Tick::Waiting(why));
        }
        let planned = loss == Loss::Planned;
        if planned {
            if matches!(probes.get(primary), Some(Ok(_))) {
                let why = format!("primary {primary} is shutting down: waiting for its final WAL");
                self.report(obs, &probes, Some(&why)).await?;
                return Ok(Tick::Waiting(why));
            }
            probes = settle(&obs.members, primary, credentials, SETTLE_TIMEOUT).await;
        }
        let decided_at = Instant::now();
        let sync = self.sync_standbys(obs, primary);
        // Commits were acknowledged under the k in effect on the primary; a
        // larger k in the spec, not applied yet, must not loosen the rule.
        let mut settings = obs.settings.clone();
        if let Some(k) = self.memory.sync_quorum {
            settings.quorum = settings.quorum.min(k);
        }
        let choice = decide::choose(
            primary,
            &obs.members,
            &probes,
            &settings,
            self.memory.last_primary_lsn,
            &sync,
        );
        let choice = match choice {
            Ok(choice) => choice,
            Err(why) => {
                let why = format!("{}, but no replica can be promoted: {why}", loss.reason());
                tracing::warn!(cluster = %obs.cluster, "{why}");
                self.report(obs, &probes, Some(&why)).await?;
                return Ok(Tick::Waiting(why));
            }
        };
        let detect = self
            .memory
            .suspect_since
            .map(|t| decided_at.duration_since(t))
            .unwrap_or_default();
        tracing::warn!(
            cluster = %obs.cluster,
            from = primary,
            to = %choice.candidate,
            position = %pg::format_lsn(choice.position),
            reason = %loss.reason(),
            "failing over"
        );
        self.promote(
            obs,
            Promotion {
                from: primary.to_owned(),
                to: choice.candidate.clone(),
                reason: loss.reason(),
                planned,
                old_lsn: self.memory.last_primary_lsn,
                promoted_lsn: Some(choice.position),
                lost_bytes: choice.lost_bytes,
                detect,
                decide: decided_at.elapsed(),
            },
            credentials,
        )
        .await
    }

    /// The standbys the quorum is counted over: as last seen on the
    /// primary, else every expected standby (more standbys make the rule
    /// stricter, never looser).
    fn sync_standbys(&self, obs: &Observation, primary: &str) -> Vec<String> {
        if obs.settings.mode != ReplicationMode::Quorum {
            return Vec::new();
        }
        if self.memory.sync_standbys.is_empty() {
            decide::expected_standbys(&obs.cluster, primary, obs.settings.replicas)
        } else {
            self.memory.sync_standbys.clone()
        }
    }

    /// Intent, fence, promote, publish, re-point: each step recorded or
    /// idempotent, so a crash anywhere resumes rather than repeats.
    async fn promote(
        &mut self,
        obs: &Observation,
        p: Promotion,
        credentials: &Credentials,
    ) -> Result<Tick, FailoverError> {
        let started = Instant::now();
        let record = self
            .seam
            .record_intent(&obs.record, &p.to, &p.reason, p.planned)
            .await?;
        self.check(Step::Intent)?;

        let fence_started = Instant::now();
        self.seam.fence(&p.from, p.planned).await?;
        let mut promoted_lsn = p.promoted_lsn;
        if p.planned {
            // The old primary shuts down cleanly: wait until it is gone and
            // the target has what it streamed last.
            let settled = settle(&obs.members, &p.from, credentials, SHUTDOWN_TIMEOUT).await;
            promoted_lsn = settled
                .get(&p.to)
                .and_then(|r| r.as_ref().ok())
                .and_then(|r| r.wal_position())
                .or(promoted_lsn);
        }
        let fence = fence_started.elapsed();
        self.check(Step::Fence)?;

        let promote_started = Instant::now();
        let at = member(obs, &p.to)?
            .probe_at
            .clone()
            .ok_or_else(|| FailoverError::NoAddress { pod: p.to.clone() })?;
        pg::promote(&at, credentials).await?;
        let promote = promote_started.elapsed();
        self.check(Step::Promote)?;

        let before = p.detect + p.decide;
        // The duration so far; the seam adds its publish phase (routing)
        // before it writes the record.
        let outcome = FailoverRecord {
            time: Time(Timestamp::now()),
            from: p.from.clone(),
            to: p.to.clone(),
            reason: p.reason.clone(),
            duration_seconds: (before + started.elapsed()).as_secs_f64(),
            old_primary_lsn: p.old_lsn.map(pg::format_lsn),
            promoted_lsn: promoted_lsn.map(pg::format_lsn),
            lost_bytes: p.lost_bytes,
            phases: FailoverPhases {
                detect: p.detect.as_secs_f64(),
                decide: p.decide.as_secs_f64(),
                fence: fence.as_secs_f64(),
                promote: promote.as_secs_f64(),
                publish: 0.0,
            },
        };
        self.finish(obs, &record, outcome, credentials, Some((started, before)))
            .await
    }

    /// Publishes a promotion, re-points the others, counts it, forgets
    /// what was remembered of the old primary. `timing` (start, time spent
    /// before it) completes the duration with the publish phase.
    async fn finish(
        &mut self,
        obs: &Observation,
        record: &seam::Record,
        mut outcome: FailoverRecord,
        credentials: &Credentials,
        timing: Option<(Instant, Duration)>,
    ) -> Result<Tick, FailoverError> {
        let publish_started = Instant::now();
        self.seam.publish(record, &outcome).await?;
        if let Some((started, before)) = timing {
            outcome.phases.publish = publish_started.elapsed().as_secs_f64();
            outcome.duration_seconds = (before + started.elapsed()).as_secs_f64();
        }
        self.check(Step::Publish)?;
        self.after_promotion(obs, &outcome.to, credentials).await;
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
        self.memory = Memory {
            interval: self.memory.interval,
            ..Memory::default()
        };
        Ok(Tick::Promoted(Box::new(outcome)))
    }

    /// A promotion was recorded but not published (the operator restarted
    /// mid-way): fence, promote and publish again — each is idempotent.
    async fn resume(
        &mut self,
        obs: &Observation,
        target: &str,
        credentials: &Credentials,
    ) -> Result<Tick, FailoverError> {
        let from = obs.record.current_primary.clone().unwrap_or_default();
        tracing::warn!(cluster = %obs.cluster, from = %from, to = target, "resuming a promotion under way");
        let started = Instant::now();
        // The same way the promotion began: a planned one lets the old
        // primary finish its clean shutdown and waits for its final WAL.
        let planned = obs.record.pending.as_ref().is_some_and(|p| p.planned);
        if !from.is_empty() && from != target {
            self.seam.fence(&from, planned).await?;
            if planned {
                settle(&obs.members, &from, credentials, SHUTDOWN_TIMEOUT).await;
            }
        }
        self.check(Step::Fence)?;
        let at = member(obs, target)?
            .probe_at
            .clone()
            .ok_or_else(|| FailoverError::NoAddress {
                pod: target.to_owned(),
            })?;
        pg::promote(&at, credentials).await?;
        self.check(Step::Promote)?;
        let outcome = FailoverRecord {
            time: Time(Timestamp::now()),
            from,
            to: target.to_owned(),
            reason: match &obs.record.pending {
                Some(p) => format!("{} (resumed after an operator restart)", p.reason),
                None => {
                    "resumed a promotion the operator had recorded before it restarted".to_owned()
                }
            },
            duration_seconds: started.elapsed().as_secs_f64(),
            old_primary_lsn: None,
            promoted_lsn: None,
            lost_bytes: None,
            phases: FailoverPhases::default(),
        };
        self.finish(obs, &obs.record, outcome, credentials, None)
            .await
    }

    /// The recorded primary runs as a standby (it restarted before a
    /// promotion could finish): promote it, unless another instance writes.
    async fn promote_recorded(
        &mut self,
        obs: &Observation,
        primary: &str,
        probes: &Probes,
        credentials: &Credentials,
    ) -> Result<Tick, FailoverError> {
        let writable: Vec<&String> = probes
            .iter()
            .filter(|(name, p)| *name != primary && matches!(p, Ok(p) if !p.in_recovery))
            .map(|(name, _)| name)
            .collect();
        if !writable.is_empty() {
            let why = format!(
                "recorded primary {primary} runs as a standby while {} accepts writes: not promoting",
                writable
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.report(obs, probes, Some(&why)).await?;
            return Ok(Tick::Waiting(why));
        }
        let at =
            member(obs, primary)?
                .probe_at
                .clone()
                .ok_or_else(|| FailoverError::NoAddress {
                    pod: primary.to_owned(),
                })?;
        tracing::warn!(cluster = %obs.cluster, primary, "the recorded primary runs as a standby: promoting it");
        pg::promote(&at, credentials).await?;
        self.after_promotion(obs, primary, credentials).await;
        Ok(Tick::Healthy)
    }

    /// A planned switchover to `to`: the primary shuts down cleanly (its
    /// final WAL reaches the streaming target), then `to` is promoted.
    async fn switchover(
        &mut self,
        obs: &Observation,
        primary: &str,
        to: &str,
        probes: &Probes,
        credentials: &Credentials,
    ) -> Result<Tick, FailoverError> {
        let ready = obs
            .members
            .iter()
            .any(|m| m.name == to && m.state == seam::PodState::Running)
            && matches!(probes.get(to), Some(Ok(p)) if p.in_recovery && p.streaming());
        if !ready {
            let why = format!("switchover to {to} refused: it is not a streaming replica");
            self.report(obs, probes, Some(&why)).await?;
            return Ok(Tick::Waiting(why));
        }
        tracing::info!(cluster = %obs.cluster, from = primary, to, "switchover");
        let promotion = Promotion {
            from: primary.to_owned(),
            to: to.to_owned(),
            reason: format!("switchover from {primary} to {to}"),
            planned: true,
            old_lsn: self.memory.last_primary_lsn,
            promoted_lsn: None,
            lost_bytes: Some(0),
            detect: Duration::ZERO,
            decide: Duration::ZERO,
        };
        self.promote(obs, promotion, credentials).await
    }

    /// Re-points the other replicas at the new primary and gives it its
    /// slots and synchronous standbys. Best effort: a replica missed here
    /// is re-pointed by ordinal-init when it restarts.
    async fn after_promotion(
        &mut self,
        obs: &Observation,
        new_primary: &str,
        credentials: &Credentials,
    ) {
        let Ok(primary) = member(obs, new_primary) else {
            return;
        };
        let repoints = obs
            .members
            .iter()
            .filter(|m| m.name != new_primary && m.state == seam::PodState::Running)
            .filter_map(|m| Some((m, m.probe_at.as_ref()?)))
            .map(|(m, at)| async move {
                if let Err(error) = pg::repoint(at, &m.name, &primary.stable, credentials).await {
                    tracing::info!(pod = %m.name, %error, "not re-pointed now; ordinal-init re-points it at its next start");
                }
            });
        join_all(repoints).await;
        self.housekeeping(obs, new_primary, credentials).await;
    }

    /// Slots and synchronous standbys on the primary.
    async fn housekeeping(&mut self, obs: &Observation, primary: &str, credentials: &Credentials) {
        let Some(at) = member(obs, primary).ok().and_then(|m| m.probe_at.clone()) else {
            return;
        };
        let keep = decide::standbys(primary, &obs.members, obs.settings.replicas);
        let gone: Vec<String> = (obs.settings.replicas..obs.settings.replicas + 64)
            .map(|o| ordinal_crds::names::pod(&obs.cluster, o))
            .filter(|p| !obs.members.iter().any(|m| m.name == *p))
            .collect();
        let quorum = (obs.settings.mode == ReplicationMode::Quorum).then_some(obs.settings.quorum);
        let wanted = pg::synchronous_standby_names(
            quorum,
            &decide::expected_standbys(&obs.cluster, primary, obs.settings.replicas),
        );
        match pg::housekeeping(&at, credentials, &obs.cluster, &keep, &gone, &wanted).await {
            Ok(changes) if !changes.is_empty() => {
                tracing::info!(cluster = %obs.cluster, primary, changes = ?changes, "primary housekeeping");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(cluster = %obs.cluster, %error, "primary housekeeping failed")
            }
        }
    }

    /// Reports instances (and why a failover waits) when they changed.
    async fn report(
        &mut self,
        obs: &Observation,
        probes: &Probes,
        blocked: Option<&str>,
    ) -> Result<(), FailoverError> {
        let instances = decide::instances(&obs.members, probes);
        if let Some(metrics) = &self.metrics {
            metrics.observe_instances(
                &obs.namespace,
                &obs.cluster,
                obs.settings.replicas,
                self.memory.probe_seconds,
                &instances,
            );
        }
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
        let key = (summary, blocked.map(str::to_owned));
        let fresh = self
            .memory
            .last_report_at
            .is_some_and(|t| t.elapsed() < REPORT_REFRESH);
        if self.memory.last_report.as_ref() == Some(&key) && fresh {
            return Ok(());
        }
        self.seam.report(&instances, blocked).await?;
        self.memory.last_report = Some(key);
        self.memory.last_report_at = Some(Instant::now());
        Ok(())
    }
}

/// What a promotion carries from the decision to the record.
struct Promotion {
    from: String,
    to: String,
    reason: String,
    planned: bool,
    old_lsn: Option<u64>,
    promoted_lsn: Option<u64>,
    lost_bytes: Option<i64>,
    detect: Duration,
    decide: Duration,
}

fn member<'a>(obs: &'a Observation, name: &str) -> Result<&'a Member, FailoverError> {
    obs.members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| FailoverError::NoAddress {
            pod: name.to_owned(),
        })
}

/// Probes every member at once.
pub async fn probe_all(members: &[Member], credentials: &Credentials) -> Probes {
    let probes = members.iter().map(|m| async move {
        let result = match &m.probe_at {
            Some(at) => pg::probe(at, credentials).await.map_err(|e| e.to_string()),
            None => Err("no address yet".to_owned()),
        };
        (m.name.clone(), result)
    });
    join_all(probes).await.into_iter().collect()
}

/// After the old primary stopped (or while it shuts down): waits, bounded
/// by `timeout`, until it no longer answers and the replicas' positions
/// stop moving, so the final WAL it streamed is counted.
async fn settle(
    members: &[Member],
    primary: &str,
    credentials: &Credentials,
    timeout: Duration,
) -> Probes {
    let deadline = Instant::now() + timeout;
    let positions = |p: &Probes| -> Vec<Option<u64>> {
        p.iter()
            .filter(|(n, _)| *n != primary)
            .map(|(_, r)| r.as_ref().ok().and_then(|p| p.wal_position()))
            .collect()
    };
    let mut probes = probe_all(members, credentials).await;
    loop {
        tokio::time::sleep(SETTLE_POLL).await;
        let next = probe_all(members, credentials).await;
        let primary_gone = !matches!(next.get(primary), Some(Ok(_)));
        let still_streaming = next
            .iter()
            .any(|(n, r)| n != primary && r.as_ref().is_ok_and(|p| p.streaming()));
        let same = positions(&next) == positions(&probes);
        probes = next;
        if (primary_gone && same && !still_streaming) || Instant::now() > deadline {
            return probes;
        }
    }
}
