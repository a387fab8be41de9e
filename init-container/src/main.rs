//! `ordinal-init`: runs inside every PostgreSQL pod.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod install;

#[derive(Parser)]
#[command(
    version,
    about = "Decides a PostgreSQL pod's role and prepares its data directory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy this binary into DIR (the emptyDir shared with postgres containers).
    Install { dir: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Install { dir } => match install::install(&dir) {
            Ok(path) => {
                tracing::info!(path = %path.display(), "installed");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(error = %error, source = ?std::error::Error::source(&error).map(ToString::to_string), "install failed");
                ExitCode::FAILURE
            }
        },
    }
}
