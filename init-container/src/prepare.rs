//! The shared core of `init` and `run`: read the state, inspect PGDATA,
//! decide, act. Every step is idempotent, so a pod killed at any moment
//! comes back right on its next start.

use std::time::Duration;

use ordinal_crds::names;

use crate::credentials::Credentials;
use crate::decide::{Plan, decide};
use crate::pgdata::{self, Pgdata};
use crate::replica::{self, Primary};
use crate::settings::Settings;
use crate::state::{ClusterState, StateSource};
use crate::{InitError, bootstrap, fsutil, recover, tools};

/// Marks, for the postgres container's probes, that its guard is still
/// preparing PGDATA (a clone or a rewind can outlast the startup probe).
/// Removed when dropped.
pub struct Preparing(std::path::PathBuf);

impl Preparing {
    pub fn mark(settings: &Settings) -> Self {
        let path = marker_path(settings);
        let _ = std::fs::write(&path, std::process::id().to_string());
        Self(path)
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn marker_path(settings: &Settings) -> std::path::PathBuf {
    settings.data_mount().join(".ordinal-preparing")
}

/// True while a guard of this container prepares PGDATA.
pub fn preparing(settings: &Settings) -> bool {
    std::fs::read_to_string(marker_path(settings))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// How often a fenced instance looks whether it still is.
const FENCE_POLL: Duration = Duration::from_secs(2);

/// The cluster state, once this instance is not fenced: a fenced one
/// (`ordinal.dev/fenced`) starts no postgres and touches no data until it
/// is unfenced; its pod stays alive and not ready.
async fn wait_while_fenced(
    settings: &Settings,
    source: &StateSource,
) -> Result<ClusterState, InitError> {
    let mut state = source.read().await?;
    let mut said = false;
    while state.fenced.contains(&settings.pod) {
        if !said {
            tracing::warn!(
                pod = %settings.pod,
                "this instance is fenced ({}): postgres stays stopped until it is unfenced (kubectl ordinal unfence)",
                names::ANNOTATION_FENCED
            );
            said = true;
        }
        tokio::time::sleep(FENCE_POLL).await;
        state = source.read().await?;
    }
    if said {
        tracing::info!(pod = %settings.pod, "unfenced: starting");
    }
    Ok(state)
}

/// Prepares PGDATA for this pod's role. Returns the plan that was carried out.
pub async fn prepare(settings: &Settings) -> Result<Plan, InitError> {
    let source = StateSource::new(settings).await?;
    let state = wait_while_fenced(settings, &source).await?;
    let credentials = Credentials::read(&settings.superuser_dir, &settings.replication_dir)?;
    let marker = replica::rewind_marker(settings);
    if marker.exists() {
        // pg_rewind was interrupted: the directory is not a valid one.
        if settings.pgdata.exists() {
            fsutil::set_aside(&settings.pgdata, "pg_rewind was interrupted")?;
        }
        fsutil::remove_file(&marker)?;
    }
    let data = pgdata::inspect(settings)?;
    let server_major = tools::server_major(&settings.pg_bin).await?;
    let me = settings.pod.as_str();
    let mut endpoint = source.endpoint(&state.current_primary)?;
    endpoint.hostaddr = state.primary_address.clone();
    let primary = Primary {
        name: &state.current_primary,
        endpoint,
        tls_ca: settings.replication_ca(),
    };
    // A pod that is not the primary but holds data compares it with the
    // primary's (timeline, system identifier).
    let primary_info = match &data {
        Pgdata::Valid(_) if state.current_primary != me => {
            replica::primary_info(&primary, &credentials).await
        }
        _ => None,
    };
    let primary_timeline = primary_info.as_ref().map(|p| p.timeline);
    let plan = decide(me, &state, &data, server_major, primary_info);
    tracing::info!(
        pod = me,
        current_primary = %state.current_primary,
        epoch = state.epoch,
        bootstrapped = state.bootstrapped,
        pgdata = %describe(&data),
        primary_timeline = ?primary_timeline,
        plan = ?plan,
        "{}",
        explain(me, &state.current_primary, &data, &plan, settings.recovery.is_some())
    );

    match &plan {
        Plan::Initdb => match &settings.recovery {
            Some(recovery) => recover::recover(settings, &credentials, recovery).await?,
            None => bootstrap::bootstrap(settings, &credentials).await?,
        },
        Plan::RefuseLostPrimary => {
            return Err(InitError::LostPrimary {
                pod: me.to_owned(),
                cluster: settings.cluster.clone(),
                pgdata: settings.pgdata.clone(),
            });
        }
        Plan::RefusePromotionUnderWay { target } => {
            return Err(InitError::PromotionUnderWay {
                pod: me.to_owned(),
                target: target.clone(),
            });
        }
        Plan::RefuseMajorVersion { data, server } => {
            return Err(InitError::MajorVersion {
                pgdata: settings.pgdata.clone(),
                data: *data,
                server: *server,
            });
        }
        Plan::StartPrimary | Plan::StartStandbyAwaitingPromotion => {}
        Plan::RefuseUnvouchedData { reason } => {
            return Err(InitError::UnvouchedData {
                pod: me.to_owned(),
                reason: reason.clone(),
            });
        }
        Plan::Clone { set_aside } => {
            replica::wait_for_primary(&primary, &credentials, settings.primary_wait).await?;
            if let Some(why) = set_aside {
                fsutil::set_aside(&settings.pgdata, why)?;
            }
            replica::clone(settings, &primary, &credentials).await?;
        }
        Plan::Rewind { .. } => {
            replica::wait_for_primary(&primary, &credentials, settings.primary_wait).await?;
            replica::rewind(settings, &primary, &credentials).await?
        }
        Plan::Follow => replica::follow(settings, &primary, &credentials).await?,
    }
    fsutil::restrict(&settings.pgdata)?;
    Ok(plan)
}

fn describe(data: &Pgdata) -> String {
    match data {
        Pgdata::Empty => "empty".to_owned(),
        Pgdata::Foreign(why) => format!("not a data directory ({why})"),
        Pgdata::Valid(d) => format!(
            "{} on timeline {} (PostgreSQL {}, {})",
            if d.standby { "standby" } else { "primary" },
            d.timeline,
            d.major,
            d.state
        ),
    }
}

/// One sentence a person reads in `kubectl logs`.
fn explain(me: &str, primary: &str, data: &Pgdata, plan: &Plan, restore: bool) -> String {
    let who = if me == primary {
        "currentPrimary".to_owned()
    } else {
        format!("not currentPrimary ({primary})")
    };
    let action = match plan {
        Plan::Initdb if restore => {
            "restore a new cluster from a backup (spec.bootstrap.recovery)".to_owned()
        }
        Plan::Initdb => "initdb a new cluster".to_owned(),
        Plan::RefuseLostPrimary => "refuse: the primary's data is gone".to_owned(),
        Plan::RefuseMajorVersion { data, server } => {
            format!("refuse: PGDATA is PostgreSQL {data}, the image is {server}")
        }
        Plan::RefusePromotionUnderWay { target } => {
            format!("refuse: the operator is promoting {target}; wait for it")
        }
        Plan::StartPrimary => "start as primary".to_owned(),
        Plan::StartStandbyAwaitingPromotion => {
            "start as standby until the operator promotes it".to_owned()
        }
        Plan::Clone { set_aside: None } => "pg_basebackup from the primary".to_owned(),
        Plan::Clone {
            set_aside: Some(why),
        } => format!("{why}: move it aside, pg_basebackup"),
        Plan::Rewind { reason } => format!("{reason} → pg_rewind"),
        Plan::Follow => "follow the primary as a standby".to_owned(),
        Plan::RefuseUnvouchedData { reason } => format!("refuse: {reason}"),
    };
    format!("{me}: {who}, PGDATA {} → {action}", describe(data))
}
