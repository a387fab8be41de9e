//! `ordinal-operator`: runs the operator, or prints its CRD.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand, ValueEnum};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use ordinal_crds::names;
use ordinal_operator::Context;
use ordinal_operator::controller;
use ordinal_operator::http::{self, HttpState};
use ordinal_operator::leader::{self, Election};
use ordinal_operator::metrics::Metrics;
use ordinal_operator::reconcile::build::BuildConfig;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "Runs PostgreSQL primary-replica clusters on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the current kube context (the default).
    Run,
    /// Print the PostgresCluster CRD as YAML.
    Crd {
        /// Print the README's field reference (Markdown) instead.
        #[arg(long)]
        reference: bool,
        /// Print the PostgresBackup CRD instead.
        #[arg(long, conflicts_with = "reference")]
        backup: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ORDINAL_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Image holding ordinal-init, run as the pods' `install` init container.
    #[arg(long, env = "ORDINAL_INIT_IMAGE", default_value = concat!("ghcr.io/ordinal-dev/ordinal:", env!("CARGO_PKG_VERSION")))]
    init_image: String,
    /// Pull policy of the init image (Always, IfNotPresent, Never).
    #[arg(long, env = "ORDINAL_INIT_IMAGE_PULL_POLICY")]
    init_image_pull_policy: Option<String>,
    /// The PgBouncer image of a `spec.pooler` that names none.
    #[arg(long, env = "ORDINAL_POOLER_IMAGE", default_value = ordinal_operator::reconcile::build::DEFAULT_POOLER_IMAGE)]
    pooler_image: String,
    /// Log format.
    #[arg(long, env = "ORDINAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Name reported in Events (the operator pod's name when in a cluster),
    /// and this replica's identity in the leader election.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ordinal-system")]
    lease_namespace: String,
    /// Run without leader election (one replica only: two would act on the
    /// same clusters).
    #[arg(long, env = "ORDINAL_NO_LEADER_ELECTION")]
    no_leader_election: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Crd {
            reference: false,
            backup: false,
        } => {
            print!("{}", ordinal_crds::crd_yaml()?);
            Ok(())
        }
        Command::Crd {
            reference: false,
            backup: true,
        } => {
            print!("{}", ordinal_crds::backup_crd_yaml()?);
            Ok(())
        }
        Command::Crd {
            reference: true, ..
        } => {
            print!("{}", ordinal_crds::crd_reference());
            Ok(())
        }
        Command::Run => run(cli.run).await,
    }
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }

    let client = Client::try_default().await?;
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("ordinal-operator-{}", std::process::id()));
    let reporter = Reporter {
        controller: names::CONTROLLER_NAME.to_owned(),
        instance: args.pod_name,
    };
    let metrics = Metrics::new()?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client, reporter),
        metrics.clone(),
        BuildConfig {
            init_image: args.init_image,
            init_image_pull_policy: args.init_image_pull_policy,
            pooler_image: args.pooler_image,
            // Its pods may reach PostgreSQL through the NetworkPolicies.
            operator_namespace: Some(args.lease_namespace.clone()),
        },
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let state = HttpState {
        metrics,
        ready: ready.clone(),
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(args.metrics_addr, state, async {
        let _ = http_stopped.await;
    }));
    let result = if args.no_leader_election {
        let result = controller::run(ctx.clone(), ready).await;
        ctx.stop_failover_loops().await;
        result.map_err(Into::into)
    } else {
        // Stops the failover loops itself, before it releases the Lease.
        lead(&ctx, ready, &args.lease_namespace, &identity).await
    };
    let _ = stop_http.send(());
    if let Ok(Err(error)) = server.await {
        tracing::warn!(%error, "metrics server failed");
    }
    result
}

/// Waits for the Lease, then runs the controller until a signal or until
/// the Lease is lost (the process then exits, and is restarted as a
/// candidate). A standby is ready (its endpoints serve) while it waits.
async fn lead(
    ctx: &Arc<Context>,
    ready: Arc<AtomicBool>,
    namespace: &str,
    identity: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut election = Election::join(ctx.client.clone(), namespace, identity).await?;
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        namespace,
        lease = leader::LEASE_NAME,
        identity,
        "waiting to lead"
    );
    tokio::select! {
        led = election.lead() => led?,
        _ = shutdown_signal() => {
            election.leave().await;
            return Ok(());
        }
    }
    tracing::info!(namespace, lease = leader::LEASE_NAME, identity, "leading");
    let outcome = tokio::select! {
        result = controller::run(ctx.clone(), ready) => result.map_err(Into::into),
        () = election.lost() => Err(leader::LeaderError::Lost {
            namespace: namespace.to_owned(),
        }
        .into()),
    };
    ctx.stop_failover_loops().await;
    election.leave().await;
    outcome
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
