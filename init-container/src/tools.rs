//! Running PostgreSQL's own tools: arguments logged (never passwords), the
//! password handed over in the child's environment only, stderr kept for
//! the error message.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {tool}")]
    Spawn {
        tool: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        tool: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs `tool args…`, with `password` as PGPASSWORD when given. Returns stdout.
pub async fn run(tool: &Path, args: &[&str], password: Option<&str>) -> Result<String, ToolError> {
    let name = tool
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tracing::info!(tool = %name, args = ?args, "running");
    let mut command = Command::new(tool);
    command
        .args(args)
        .env("LC_ALL", "C")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match password {
        Some(p) => command.env("PGPASSWORD", p),
        None => command.env_remove("PGPASSWORD"),
    };
    let out = command.output().await.map_err(|source| ToolError::Spawn {
        tool: tool.to_path_buf(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(ToolError::Failed {
            tool: name,
            status: out.status,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        tracing::debug!(tool = %name, "{line}");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The major version of the server binaries (`postgres --version`).
pub async fn server_major(bin: &Path) -> Result<u32, ToolError> {
    let tool = bin.join("postgres");
    let out = run(&tool, &["--version"], None).await?;
    // "postgres (PostgreSQL) 17.2 (Debian 17.2-1.pgdg120+1)"
    out.split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| ToolError::Failed {
            tool: "postgres".to_owned(),
            status: std::process::ExitStatus::default(),
            stderr: format!("unexpected --version output {out:?}"),
        })
}
