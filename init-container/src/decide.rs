//! The decision table of DESIGN §4, as one pure function: who this pod is,
//! what the cluster says and what PGDATA holds → what to do.

use crate::pgdata::{DataDir, Pgdata};
use crate::state::ClusterState;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// New cluster, this pod is the primary: initdb, create roles.
    Initdb,
    /// This pod is the primary but its data is gone after the cluster was
    /// initialized: refuse, never initdb over a live cluster.
    RefuseLostPrimary,
    /// This pod is still named primary, but the operator is promoting
    /// another: it must not start writable; wait for the promotion.
    RefusePromotionUnderWay { target: String },
    /// Refuse: PGDATA is of another PostgreSQL major version.
    RefuseMajorVersion { data: u32, server: u32 },
    /// Start as the primary.
    StartPrimary,
    /// This pod is named primary but its data is a standby's: start as a
    /// standby; only the operator promotes.
    StartStandbyAwaitingPromotion,
    /// Clone from the primary. `set_aside` holds why the current PGDATA
    /// must be moved aside first (never deleted).
    Clone { set_aside: Option<String> },
    /// A former primary, or a standby on another timeline than the primary:
    /// pg_rewind from the primary, then follow it.
    Rewind { reason: String },
    /// A standby on the primary's timeline: refresh primary_conninfo.
    Follow,
    /// The cluster was never bootstrapped, yet this pod, which is not the
    /// primary, holds data that would have to be rewound: refuse rather
    /// than rewrite data whose history nobody vouched for.
    RefuseUnvouchedData { reason: String },
}

/// What the current primary reported, when this pod needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryInfo {
    pub timeline: u32,
    /// `pg_control_system().system_identifier`: one per initdb.
    pub system_id: u64,
}

/// Decides what this pod does. `primary` is None when the primary could not
/// be asked (it only matters for a standby, see [`Plan::Follow`]).
pub fn decide(
    me: &str,
    state: &ClusterState,
    pgdata: &Pgdata,
    server_major: u32,
    primary: Option<PrimaryInfo>,
) -> Plan {
    if let Pgdata::Valid(DataDir { major, .. }) = pgdata
        && *major != server_major
    {
        return Plan::RefuseMajorVersion {
            data: *major,
            server: server_major,
        };
    }
    let is_primary = state.current_primary == me;
    if is_primary && let Some(target) = state.target_primary.as_ref().filter(|t| t.as_str() != me) {
        return Plan::RefusePromotionUnderWay {
            target: target.clone(),
        };
    }
    // The pod being promoted: its data is what the operator chose; it
    // never rewinds or re-clones it. If it was promoted already, the old
    // primary has been fenced (the intent and the fence come first), so
    // it starts as the primary it now is.
    if !is_primary
        && state.target_primary.as_deref() == Some(me)
        && let Pgdata::Valid(d) = pgdata
    {
        return if d.standby {
            Plan::StartStandbyAwaitingPromotion
        } else {
            Plan::StartPrimary
        };
    }
    match (is_primary, pgdata) {
        (true, Pgdata::Empty) if state.bootstrapped => Plan::RefuseLostPrimary,
        (true, Pgdata::Empty) => Plan::Initdb,
        (true, Pgdata::Foreign(_)) => Plan::RefuseLostPrimary,
        (true, Pgdata::Valid(d)) if d.standby => Plan::StartStandbyAwaitingPromotion,
        (true, Pgdata::Valid(_)) => Plan::StartPrimary,
        (false, Pgdata::Empty) => Plan::Clone { set_aside: None },
        (false, Pgdata::Foreign(why)) => Plan::Clone {
            set_aside: Some(format!("PGDATA is not a valid data directory ({why})")),
        },
        (false, Pgdata::Valid(d)) => {
            let system = d.system_id.parse::<u64>().ok();
            if let (Some(p), Some(mine)) = (primary.as_ref(), system)
                && p.system_id != mine
            {
                return Plan::Clone {
                    set_aside: Some(format!(
                        "PGDATA belongs to another database system ({mine}) than primary {} ({})",
                        state.current_primary, p.system_id
                    )),
                };
            }
            let rewind = if !d.standby {
                Some(format!(
                    "PGDATA was a primary (timeline {}) but {} is the primary now",
                    d.timeline, state.current_primary
                ))
            } else {
                match primary {
                    Some(p) if p.timeline != d.timeline => Some(format!(
                        "PGDATA is on timeline {} but primary {} is on timeline {}",
                        d.timeline, state.current_primary, p.timeline
                    )),
                    // Same timeline, or the primary cannot be asked now:
                    // follow it; recovery_target_timeline=latest catches up.
                    _ => None,
                }
            };
            match rewind {
                Some(reason) if !state.bootstrapped => Plan::RefuseUnvouchedData {
                    reason: format!("{reason}, and the cluster is not bootstrapped"),
                },
                Some(reason) => Plan::Rewind { reason },
                None => Plan::Follow,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(primary: &str, bootstrapped: bool) -> ClusterState {
        ClusterState {
            current_primary: primary.to_owned(),
            target_primary: None,
            bootstrapped,
            epoch: 1,
            primary_address: None,
            fenced: Vec::new(),
        }
    }

    fn data(standby: bool, timeline: u32) -> Pgdata {
        Pgdata::Valid(DataDir {
            standby,
            timeline,
            major: 17,
            system_id: "7300000000000000001".to_owned(),
            state: "shut down".to_owned(),
        })
    }

    fn tl(timeline: u32) -> Option<PrimaryInfo> {
        Some(PrimaryInfo {
            timeline,
            system_id: 7300000000000000001,
        })
    }

    #[test]
    fn primary_rows() {
        let me = "db-0";
        assert_eq!(
            decide(me, &state(me, false), &Pgdata::Empty, 17, None),
            Plan::Initdb
        );
        assert_eq!(
            decide(me, &state(me, true), &Pgdata::Empty, 17, None),
            Plan::RefuseLostPrimary
        );
        assert_eq!(
            decide(me, &state(me, true), &Pgdata::Foreign("x".into()), 17, None),
            Plan::RefuseLostPrimary
        );
        assert_eq!(
            decide(me, &state(me, true), &data(false, 3), 17, None),
            Plan::StartPrimary
        );
        assert_eq!(
            decide(me, &state(me, true), &data(true, 3), 17, None),
            Plan::StartStandbyAwaitingPromotion
        );
    }

    #[test]
    fn replica_rows() {
        let me = "db-1";
        let s = state("db-0", true);
        assert_eq!(
            decide(me, &s, &Pgdata::Empty, 17, None),
            Plan::Clone { set_aside: None }
        );
        assert!(matches!(
            decide(me, &s, &Pgdata::Foreign("PG_VERSION is missing".into()), 17, None),
            Plan::Clone { set_aside: Some(why) } if why.contains("PG_VERSION is missing")
        ));
        assert!(matches!(
            decide(me, &s, &data(false, 2), 17, tl(2)),
            Plan::Rewind { .. }
        ));
        assert!(matches!(
            decide(me, &s, &data(false, 2), 17, None),
            Plan::Rewind { .. }
        ));
        assert!(matches!(
            decide(me, &s, &data(true, 3), 17, tl(2)),
            Plan::Rewind { .. }
        ));
        assert!(matches!(
            decide(me, &s, &data(true, 1), 17, tl(2)),
            Plan::Rewind { .. }
        ));
        assert_eq!(decide(me, &s, &data(true, 2), 17, tl(2)), Plan::Follow);
        assert_eq!(decide(me, &s, &data(true, 2), 17, None), Plan::Follow);
    }

    #[test]
    fn data_of_another_system_is_set_aside_and_cloned() {
        let other = Some(PrimaryInfo {
            timeline: 1,
            system_id: 42,
        });
        for standby in [true, false] {
            assert!(matches!(
                decide("db-1", &state("db-0", true), &data(standby, 1), 17, other.clone()),
                Plan::Clone { set_aside: Some(why) } if why.contains("another database system")
            ));
        }
    }

    #[test]
    fn unbootstrapped_clusters_never_rewind() {
        let s = state("db-0", false);
        assert!(matches!(
            decide("db-1", &s, &data(false, 1), 17, tl(1)),
            Plan::RefuseUnvouchedData { .. }
        ));
        assert!(matches!(
            decide("db-1", &s, &data(true, 2), 17, tl(1)),
            Plan::RefuseUnvouchedData { .. }
        ));
        // A replica cloned before the operator saw the primary Ready follows.
        assert_eq!(decide("db-1", &s, &data(true, 1), 17, tl(1)), Plan::Follow);
    }

    #[test]
    fn never_writable_unless_named_primary() {
        // Whatever PGDATA holds, a pod that is not currentPrimary never gets
        // StartPrimary or Initdb.
        let s = state("db-0", false);
        for pgdata in [
            Pgdata::Empty,
            Pgdata::Foreign("x".into()),
            data(false, 1),
            data(true, 1),
        ] {
            for primary in [None, tl(1), tl(5)] {
                let plan = decide("db-1", &s, &pgdata, 17, primary);
                assert!(
                    !matches!(plan, Plan::StartPrimary | Plan::Initdb),
                    "{pgdata:?} → {plan:?}"
                );
            }
        }
    }

    #[test]
    fn a_primary_being_replaced_never_starts() {
        let mut s = state("db-0", true);
        s.target_primary = Some("db-1".to_owned());
        for pgdata in [Pgdata::Empty, data(false, 1), data(true, 1)] {
            assert_eq!(
                decide("db-0", &s, &pgdata, 17, None),
                Plan::RefusePromotionUnderWay {
                    target: "db-1".to_owned()
                }
            );
        }
        // The target keeps its data: a standby awaits its promotion, an
        // already promoted one starts as the primary (db-0 was fenced).
        assert_eq!(
            decide("db-1", &s, &data(true, 1), 17, tl(1)),
            Plan::StartStandbyAwaitingPromotion
        );
        assert_eq!(
            decide("db-1", &s, &data(false, 2), 17, tl(1)),
            Plan::StartPrimary
        );
        // It never rewinds onto the old primary, even on another timeline.
        assert!(!matches!(
            decide("db-1", &s, &data(false, 2), 17, tl(1)),
            Plan::Rewind { .. }
        ));
    }

    #[test]
    fn major_version_mismatch_is_refused() {
        assert_eq!(
            decide("db-0", &state("db-0", true), &data(false, 1), 18, None),
            Plan::RefuseMajorVersion {
                data: 17,
                server: 18
            }
        );
    }

    #[test]
    fn rewind_reasons_say_why() {
        let plan = decide("db-2", &state("db-1", true), &data(true, 3), 17, tl(2));
        assert_eq!(
            plan,
            Plan::Rewind {
                reason: "PGDATA is on timeline 3 but primary db-1 is on timeline 2".to_owned()
            }
        );
    }
}
