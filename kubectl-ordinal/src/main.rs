//! `kubectl ordinal`: the day-2 commands of Ordinal's PostgreSQL clusters,
//! as a kubectl plugin (kubectl runs `kubectl-ordinal` from the PATH).
//!
//! ```text
//! kubectl ordinal status <cluster>               members, roles, lag, last failover, backups
//! kubectl ordinal switchover <cluster> <pod>     a planned switchover, waited for
//! kubectl ordinal restart <cluster>              a rolling restart: replicas, switchover, old primary
//! kubectl ordinal psql <cluster> [-- args]       psql on the primary (or --replica, --pod)
//! kubectl ordinal fence <cluster> <pod>          stop an instance's postgres, keep its pod and data
//! kubectl ordinal unfence <cluster> <pod>
//! ```
//!
//! Every command is a read or a small write of the PostgresCluster that the
//! operator acts on (an annotation), so the plugin never races the operator.

mod commands;
mod error;
mod status;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::Client;
use kube::config::{Config, KubeConfigOptions};

use crate::error::Error;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl ordinal",
    version,
    about = "Day-2 commands for Ordinal's PostgreSQL clusters"
)]
struct Cli {
    /// The namespace of the cluster; the context's namespace when unset.
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,

    /// The kubeconfig context to use; the current one when unset.
    #[arg(long, global = true)]
    context: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Members, roles, timeline, lag, the last failover, archiving and
    /// backups, in one table.
    Status {
        /// The PostgresCluster.
        cluster: String,
    },
    /// A planned switchover to a ready replica: it is promoted once it has
    /// every WAL record of the primary, which then rejoins as a replica.
    Switchover {
        cluster: String,
        /// The replica to promote (a pod of the cluster).
        pod: String,
        /// How long to wait for the new primary (0: do not wait).
        #[arg(long, default_value = "120", value_name = "SECONDS")]
        timeout: u64,
    },
    /// A rolling restart: each replica in turn, then a switchover to a
    /// restarted replica, then the old primary.
    Restart {
        cluster: String,
        /// How long to wait for every instance to be restarted and ready
        /// (0: do not wait).
        #[arg(long, default_value = "0", value_name = "SECONDS")]
        timeout: u64,
    },
    /// psql on the primary (or a replica), through `kubectl exec`.
    Psql {
        cluster: String,
        /// A ready replica instead of the primary.
        #[arg(long, conflicts_with = "pod")]
        replica: bool,
        /// This instance.
        #[arg(long)]
        pod: Option<String>,
        /// Arguments for psql, after `--` (e.g. `-- -c 'select 1'`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fence an instance: its postgres stops cleanly and stays stopped, its
    /// pod and volume stay; it takes no traffic and is never promoted.
    /// Fencing the primary stops writes: no failover replaces it.
    Fence {
        cluster: String,
        pod: String,
        /// How long to wait for its postgres to stop (0: do not wait).
        #[arg(long, default_value = "120", value_name = "SECONDS")]
        timeout: u64,
    },
    /// Lift a fence: the instance starts again.
    Unfence {
        cluster: String,
        pod: String,
        /// How long to wait for it to be ready (0: do not wait).
        #[arg(long, default_value = "300", value_name = "SECONDS")]
        timeout: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match Config::from_kubeconfig(&options).await {
        Ok(config) => config,
        // In a pod: its service account.
        Err(_) if cli.context.is_none() => Config::incluster().map_err(|source| Error::Config {
            why: source.to_string(),
        })?,
        Err(source) => {
            return Err(Error::Config {
                why: source.to_string(),
            });
        }
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|source| Error::Config {
        why: source.to_string(),
    })?;
    let ctx = commands::Ctx {
        client,
        namespace,
        context: cli.context,
    };
    let wait = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    match cli.command {
        Command::Status { cluster } => commands::status(&ctx, &cluster).await,
        Command::Switchover {
            cluster,
            pod,
            timeout,
        } => commands::switchover(&ctx, &cluster, &pod, wait(timeout)).await,
        Command::Restart { cluster, timeout } => {
            commands::restart(&ctx, &cluster, wait(timeout)).await
        }
        Command::Psql {
            cluster,
            replica,
            pod,
            args,
        } => commands::psql(&ctx, &cluster, replica, pod.as_deref(), &args).await,
        Command::Fence {
            cluster,
            pod,
            timeout,
        } => commands::fence(&ctx, &cluster, &pod, true, wait(timeout)).await,
        Command::Unfence {
            cluster,
            pod,
            timeout,
        } => commands::fence(&ctx, &cluster, &pod, false, wait(timeout)).await,
    }
}
