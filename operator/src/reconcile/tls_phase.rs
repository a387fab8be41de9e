//! How TLS reaches the instances of a running cluster, one step at a time
//! (`status.tls`). A server with `ssl = on` and no certificate does not
//! start, and a standby with `sslmode=verify-full` cannot follow a primary
//! that offers no TLS: turned on all at once, TLS would break replication
//! until every pod had been replaced. So each step begins once every
//! instance has taken the one before:
//!
//! - **Mounting**: the pod template mounts the certificate; the rolling
//!   update replaces the pods (replicas first). The servers do not offer
//!   TLS yet.
//! - **Offered**: every pod mounts it. The ConfigMap turns `ssl` on and
//!   each server reloads; nothing requires TLS, so a server that has not
//!   reloaded yet breaks nothing.
//! - **Required**: every ready instance offers TLS (the failover loop's
//!   probe reads `ssl`). pg_hba requires TLS for replication, ordinal-init
//!   verifies the primary (`replication-sslmode` in the ConfigMap), and the
//!   failover loop re-points each running standby with
//!   `sslmode=verify-full`: no second rolling update.
//!
//! Turning TLS off walks back: Required → Offered (standbys re-pointed
//! without verification) → Off once no standby verifies its primary any
//! more (`ssl` off, and a rolling update drops the certificate).
//! A new cluster starts Required: its pods are created with everything.

use ordinal_crds::{InstanceStatus, TlsPhase, TlsStatus};

/// The state spec.tls asks for once every step is taken: Required with
/// `secret`, or Off.
pub fn settled(secret: Option<String>) -> TlsStatus {
    match secret {
        Some(secret) => TlsStatus {
            phase: TlsPhase::Required,
            secret: Some(secret),
        },
        None => TlsStatus::default(),
    }
}

/// What the next step needs to know of one pod of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTls {
    pub name: String,
    /// The Secret its TLS volume names, if it has one.
    pub mounts: Option<String>,
    pub ready: bool,
}

/// The TLS status to record. `recorded`: status.tls (None before the
/// first look, e.g. a cluster an older operator made). `wanted`: the
/// Secret spec.tls names (None: TLS off). `instances`: what the failover
/// loop last reported of each instance. `ca_kept`, when `wanted` is not
/// the recorded Secret: the wanted Secret's `ca.crt` holds every CA of the
/// recorded one's, so a pod mounting it verifies a server still on the old.
pub fn next(
    recorded: Option<&TlsStatus>,
    wanted: Option<&str>,
    pods: &[PodTls],
    instances: &[InstanceStatus],
    ca_kept: bool,
) -> TlsStatus {
    let status = |phase, secret: Option<&str>| TlsStatus {
        phase,
        secret: secret.map(str::to_owned),
    };
    let all_mount = |secret: &str| pods.iter().all(|p| p.mounts.as_deref() == Some(secret));
    let Some(recorded) = recorded else {
        // The first look: a new cluster (no pods), one made with TLS
        // (every pod mounts it: the older operator turned it on at once),
        // or one made without it.
        return match wanted {
            None => TlsStatus::default(),
            Some(secret) if all_mount(secret) => status(TlsPhase::Required, Some(secret)),
            Some(secret) => status(TlsPhase::Mounting, Some(secret)),
        };
    };
    let secret = recorded.secret.as_deref();
    match (wanted, recorded.phase) {
        (None, TlsPhase::Off | TlsPhase::Mounting) => TlsStatus::default(),
        (None, TlsPhase::Required) => status(TlsPhase::Offered, secret),
        (None, TlsPhase::Offered) => {
            // ssl goes off once no standby needs it to follow.
            let verifying = instances.iter().any(|i| {
                i.upstream_sslmode.as_deref() == Some("verify-full")
                    && pods.iter().any(|p| p.name == i.pod)
            });
            if verifying {
                recorded.clone()
            } else {
                TlsStatus::default()
            }
        }
        (Some(wanted), TlsPhase::Off) if pods.is_empty() => {
            status(TlsPhase::Required, Some(wanted))
        }
        (Some(wanted), TlsPhase::Off) => status(TlsPhase::Mounting, Some(wanted)),
        // Another Secret (tls.serverSecret changed). Signed by a CA the new
        // Secret's ca.crt still holds: a running cluster keeps requiring
        // TLS while a rolling update mounts it. By another CA: a standby
        // mounting the new CA could not verify a primary still serving the
        // old certificate, nor the reverse, so replication stops verifying
        // (Offered) until every pod mounts the new Secret. A cluster on its
        // way to TLS mounts the new Secret first.
        (Some(wanted), phase) if secret != Some(wanted) => match phase {
            TlsPhase::Required if ca_kept => status(TlsPhase::Required, Some(wanted)),
            TlsPhase::Required => status(TlsPhase::Offered, Some(wanted)),
            _ => status(TlsPhase::Mounting, Some(wanted)),
        },
        (Some(wanted), TlsPhase::Mounting) if all_mount(wanted) => {
            status(TlsPhase::Offered, Some(wanted))
        }
        (Some(wanted), TlsPhase::Offered) => {
            // A pod that is not ready may not have reloaded; it is waited
            // for. One that is not running starts with ssl on.
            let offered = pods.iter().filter(|p| p.ready).all(|p| {
                instances
                    .iter()
                    .any(|i| i.pod == p.name && i.ssl == Some(true))
            });
            if offered && all_mount(wanted) {
                status(TlsPhase::Required, Some(wanted))
            } else {
                recorded.clone()
            }
        }
        (Some(_), TlsPhase::Mounting | TlsPhase::Required) => recorded.clone(),
    }
}

/// What a move to `status` does, for its Event.
pub fn describe(status: &TlsStatus) -> &'static str {
    match status.phase {
        TlsPhase::Off => "TLS is off: the servers no longer offer it",
        TlsPhase::Mounting => {
            "the pods are replaced with ones that mount the certificate; TLS is not offered yet"
        }
        TlsPhase::Offered => "every server offers TLS (a reload); replication does not require it",
        TlsPhase::Required => {
            "replication requires TLS and standbys verify their primary (sslmode=verify-full)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordinal_crds::Role;

    fn pod(name: &str, mounts: Option<&str>, ready: bool) -> PodTls {
        PodTls {
            name: name.to_owned(),
            mounts: mounts.map(str::to_owned),
            ready,
        }
    }

    fn instance(pod: &str, ssl: bool, upstream: Option<&str>) -> InstanceStatus {
        InstanceStatus {
            pod: pod.to_owned(),
            role: if upstream.is_some() {
                Role::Replica
            } else {
                Role::Primary
            },
            ready: true,
            lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            timeline: None,
            ip: None,
            ssl: Some(ssl),
            upstream_sslmode: upstream.map(str::to_owned),
        }
    }

    fn at(phase: TlsPhase) -> TlsStatus {
        TlsStatus {
            phase,
            secret: Some("db-server".to_owned()),
        }
    }

    const S: Option<&str> = Some("db-server");

    #[test]
    fn a_new_cluster_starts_where_the_spec_asks() {
        assert_eq!(next(None, S, &[], &[], true), at(TlsPhase::Required));
        assert_eq!(next(None, None, &[], &[], true), TlsStatus::default());
    }

    #[test]
    fn a_cluster_made_without_tls_mounts_the_certificate_first() {
        let pods = [pod("db-0", None, true), pod("db-1", None, true)];
        assert_eq!(next(None, S, &pods, &[], true), at(TlsPhase::Mounting));
        let off = TlsStatus::default();
        assert_eq!(
            next(Some(&off), S, &pods, &[], true),
            at(TlsPhase::Mounting)
        );
    }

    #[test]
    fn a_cluster_an_older_operator_made_with_tls_is_required_at_once() {
        let pods = [pod("db-0", S, true), pod("db-1", S, false)];
        assert_eq!(next(None, S, &pods, &[], true), at(TlsPhase::Required));
    }

    #[test]
    fn tls_is_offered_only_once_every_pod_mounts_the_certificate() {
        let mounting = at(TlsPhase::Mounting);
        let half = [pod("db-0", None, true), pod("db-1", S, true)];
        assert_eq!(next(Some(&mounting), S, &half, &[], true), mounting);
        let all = [pod("db-0", S, false), pod("db-1", S, true)];
        assert_eq!(
            next(Some(&mounting), S, &all, &[], true),
            at(TlsPhase::Offered)
        );
    }

    #[test]
    fn tls_is_required_only_once_every_ready_server_offers_it() {
        let offered = at(TlsPhase::Offered);
        let pods = [
            pod("db-0", S, true),
            pod("db-1", S, true),
            pod("db-2", S, false),
        ];
        let reloading = [
            instance("db-0", true, None),
            instance("db-1", false, Some("prefer")),
        ];
        assert_eq!(next(Some(&offered), S, &pods, &reloading, true), offered);
        // Not reported at all yet: waited for too.
        assert_eq!(
            next(Some(&offered), S, &pods, &reloading[..1], true),
            offered,
            "an instance the failover loop has not reported is waited for"
        );
        let reloaded = [
            instance("db-0", true, None),
            instance("db-1", true, Some("prefer")),
        ];
        assert_eq!(
            next(Some(&offered), S, &pods, &reloaded, true),
            at(TlsPhase::Required),
            "db-2 is not ready: it starts with ssl on"
        );
    }

    #[test]
    fn turning_tls_off_stops_requiring_it_before_the_servers_stop_offering_it() {
        let pods = [pod("db-0", S, true), pod("db-1", S, true)];
        let verifying = [
            instance("db-0", true, None),
            instance("db-1", true, Some("verify-full")),
        ];
        let required = at(TlsPhase::Required);
        let offered = next(Some(&required), None, &pods, &verifying, true);
        assert_eq!(offered, at(TlsPhase::Offered));
        assert_eq!(
            next(Some(&offered), None, &pods, &verifying, true),
            offered,
            "db-1 still verifies its primary: ssl stays on"
        );
        let repointed = [
            instance("db-0", true, None),
            instance("db-1", true, Some("prefer")),
        ];
        assert_eq!(
            next(Some(&offered), None, &pods, &repointed, true),
            TlsStatus::default()
        );
        // A pod gone is not waited for.
        assert_eq!(
            next(Some(&offered), None, &pods[..1], &verifying, true),
            TlsStatus::default()
        );
        assert_eq!(
            next(Some(&at(TlsPhase::Mounting)), None, &pods, &verifying, true),
            TlsStatus::default(),
            "never offered: nothing to walk back"
        );
    }

    #[test]
    fn another_secret_is_mounted_without_dropping_tls() {
        let other = Some("cert-manager-tls");
        let pods = [pod("db-0", S, true)];
        let required = next(Some(&at(TlsPhase::Required)), other, &pods, &[], true);
        assert_eq!(required.phase, TlsPhase::Required);
        assert_eq!(required.secret.as_deref(), other);
        let mounting = next(Some(&at(TlsPhase::Offered)), other, &pods, &[], true);
        assert_eq!(mounting.phase, TlsPhase::Mounting);
        assert_eq!(mounting.secret.as_deref(), other);
    }

    #[test]
    fn a_secret_of_another_ca_is_mounted_while_replication_does_not_verify() {
        let other = Some("cert-manager-tls");
        let old = [pod("db-0", S, true), pod("db-1", S, true)];
        let offered = next(Some(&at(TlsPhase::Required)), other, &old, &[], false);
        assert_eq!(offered.phase, TlsPhase::Offered);
        assert_eq!(offered.secret.as_deref(), other);
        // Every instance offers TLS, but db-1 still mounts the old Secret.
        let serving = [
            instance("db-0", true, None),
            instance("db-1", true, Some("prefer")),
        ];
        let half = [pod("db-0", other, true), pod("db-1", S, true)];
        assert_eq!(next(Some(&offered), other, &half, &serving, false), offered);
        // Every pod mounts the new one: replication verifies again.
        let all = [pod("db-0", other, true), pod("db-1", other, true)];
        let required = next(Some(&offered), other, &all, &serving, false);
        assert_eq!(required.phase, TlsPhase::Required);
        assert_eq!(required.secret.as_deref(), other);
    }

    #[test]
    fn settled_states_stay() {
        let pods = [pod("db-0", S, true)];
        let required = at(TlsPhase::Required);
        assert_eq!(next(Some(&required), S, &pods, &[], true), required);
        let off = TlsStatus::default();
        assert_eq!(next(Some(&off), None, &pods, &[], true), off);
    }
}
