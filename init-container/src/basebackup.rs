//! Base backups to the cluster's object store, and their restore.
//!
//! `ordinal-init base-backup` runs in the Job the operator makes for a
//! PostgresBackup. It runs `pg_basebackup` against the instance the
//! operator chose (a streaming replica when one is healthy), with its tar
//! written to stdout, and streams it through zstd straight into a
//! multipart upload: no copy of the data is ever kept on a disk.
//!
//! Layout under the archive's prefix, beside `wal/`:
//!
//! - `base/<ID>/data.tar.zst`: PGDATA as `pg_basebackup -F tar` writes it
//!   (with its `backup_label` and `backup_manifest`), zstd with checksums;
//! - `base/<ID>/backup.json`: the [`Manifest`], written last and only once
//!   the WAL from the backup's start to its end is archived too — a backup
//!   with a manifest can be restored to a consistent state from the store
//!   alone (pgBackRest's archive check does the same).
//!
//! `<ID>` is the start time, `20261205T213000Z`: names sort by age.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::jiff::Timestamp;
use object_store::path::Path as ObjectPath;
use object_store::{PutMode, PutOptions, PutPayload, WriteMultipart};

use crate::wal::{Archive, WalError};

/// WAL segment size: Ordinal's initdb keeps PostgreSQL's default.
pub const WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
/// zstd level of base backups: as for WAL, a fast level.
const ZSTD_LEVEL: i32 = 3;
/// The size of one uploaded part (S3 wants at least 5 MiB but the last).
const PART_BYTES: usize = 16 * 1024 * 1024;
/// Parts uploaded at once: what is buffered in memory at most.
const PARTS_IN_FLIGHT: usize = 2;
/// The objects of one base backup.
const DATA_OBJECT: &str = "data.tar.zst";
const MANIFEST_OBJECT: &str = "backup.json";
const BASE_DIR: &str = "base";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot run {tool}")]
    Spawn {
        tool: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pg_basebackup from {host} failed ({status}): {stderr}")]
    Failed {
        host: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("pg_basebackup from {host} did not report its {what} (stderr: {stderr})")]
    NoPosition {
        host: String,
        what: &'static str,
        stderr: String,
    },
    #[error("cannot read pg_basebackup's output")]
    Read(#[source] std::io::Error),
    #[error("cannot compress the backup")]
    Compress(#[source] std::io::Error),
    #[error("cannot upload {location}")]
    Upload {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{location} exists already: a backup started in the same second")]
    Exists { location: String },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(
        "the backup ends in WAL segment {segment}, which was not archived within {waited:?}: \
         is the primary's archiving failing? (see its pg_stat_archiver and the cluster's conditions)"
    )]
    WalNotArchived { segment: String, waited: Duration },
    #[error("cannot read {location}")]
    Download {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{location} is not a backup manifest: {source}")]
    BadManifest {
        location: String,
        source: serde_json::Error,
    },
    #[error("the store holds no base backup{detail}")]
    NoBackup { detail: String },
    #[error("recovery from the backup failed: {why}; the end of its log:\n{log}")]
    Replay { why: String, log: String },
    #[error("the archive {archive} lacks WAL that backup {id} needs to be consistent: {segments}")]
    MissingWal {
        archive: String,
        id: String,
        segments: String,
    },
    #[error("cannot look for WAL segment {segment} in {archive}")]
    Lookup {
        segment: String,
        archive: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("{pgdata} is not empty: a backup is restored into an empty directory only")]
    NotEmpty { pgdata: PathBuf },
    #[error("cannot restore {location} into {pgdata}: {source}")]
    Unpack {
        location: String,
        pgdata: PathBuf,
        source: std::io::Error,
    },
}

pub use ordinal_crds::BackupManifest as Manifest;

/// Where a base backup is read from.
#[derive(Clone)]
pub struct Source {
    pub host: String,
    /// `host`'s address, when known: libpq connects there and still
    /// verifies the certificate against `host`.
    pub hostaddr: Option<String>,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// While TLS is on: pg_basebackup verifies `host` against this CA
    /// (`sslmode=verify-full`).
    pub tls_ca: Option<std::path::PathBuf>,
}

/// The name of the WAL segment holding byte `lsn` of timeline `timeline`.
pub fn segment_name(timeline: u32, lsn: u64) -> String {
    let segno = lsn / WAL_SEGMENT_SIZE;
    let per_id = 0x1_0000_0000 / WAL_SEGMENT_SIZE;
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// `0/3000028` → 0x3000028.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// What the backup's own files say: `backup_label` (where it starts, and
/// whether it was read from a standby) and `backup_manifest` (the WAL
/// range recovery needs to reach consistency).
#[derive(Debug, Default, PartialEq, Eq)]
struct Positions {
    begin_lsn: Option<u64>,
    begin_timeline: Option<u32>,
    from_standby: bool,
    end_lsn: Option<u64>,
    end_timeline: Option<u32>,
}

impl Positions {
    /// `START WAL LOCATION: 0/2000028 (file …)`, `START TIMELINE: 1`,
    /// `BACKUP FROM: standby`.
    fn read_label(&mut self, label: &str) {
        for line in label.lines() {
            if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
                self.begin_lsn = rest.split_whitespace().next().and_then(parse_lsn);
            } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
                self.begin_timeline = rest.trim().parse().ok();
            } else if let Some(rest) = line.strip_prefix("BACKUP FROM: ") {
                self.from_standby = rest.trim() == "standby";
            }
        }
    }

    /// The manifest's `WAL-Ranges`: the last range ends the backup.
    fn read_manifest(&mut self, manifest: &[u8]) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(manifest) else {
            return;
        };
        let ranges = value["WAL-Ranges"].as_array().cloned().unwrap_or_default();
        let last = ranges
            .iter()
            .max_by_key(|r| r["End-LSN"].as_str().and_then(parse_lsn));
        if let Some(range) = last {
            self.end_lsn = range["End-LSN"].as_str().and_then(parse_lsn);
            self.end_timeline = range["Timeline"]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok());
        }
    }
}

fn manifest_location(archive: &Archive, id: &str) -> ObjectPath {
    archive.object(&[BASE_DIR, id, MANIFEST_OBJECT])
}

/// Takes a base backup of `source` into `archive` and returns its
/// manifest once the WAL it needs is archived too (waiting `wal_wait` at
/// most for that).
pub async fn take(
    archive: &Archive,
    pg_bin: &Path,
    source: &Source,
    backup: Option<&str>,
    wal_wait: Duration,
) -> Result<Manifest, BackupError> {
    let started = Timestamp::now();
    let id = started.strftime("%Y%m%dT%H%M%SZ").to_string();
    let manifest_at = manifest_location(archive, &id);
    let data_at = archive.object(&[BASE_DIR, &id, DATA_OBJECT]);
    if archive.store().head(&manifest_at).await.is_ok() {
        return Err(BackupError::Exists {
            location: archive.describe(&manifest_at),
        });
    }

    let upload_err = |source| BackupError::Upload {
        location: archive.describe(&data_at),
        source,
    };
    let upload = archive
        .store()
        .put_multipart(&data_at)
        .await
        .map_err(upload_err)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);

    // pg_basebackup, the tar reading and the compression run on a thread
    // of their own; compressed parts come back here to be uploaded, at most
    // PARTS_IN_FLIGHT at a time (backpressure all the way to the server).
    let (parts, mut received) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let reader = {
        let (tool, source) = (pg_bin.join("pg_basebackup"), source.clone());
        tokio::task::spawn_blocking(move || read_backup(&tool, &source, &parts))
    };
    let mut upload_failed = None;
    while let Some(part) = received.recv().await {
        if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            upload_failed = Some(e);
            break;
        }
        writer.write(&part);
    }
    // Dropping the receiver stops the reader at its next part.
    drop(received);
    let read = reader
        .await
        .map_err(|e| BackupError::Read(std::io::Error::other(e)));
    let read = match (read, upload_failed) {
        (_, Some(e)) => {
            let _ = writer.abort().await;
            return Err(upload_err(e));
        }
        (Ok(Ok(read)), None) => read,
        (Err(e) | Ok(Err(e)), None) => {
            let _ = writer.abort().await;
            return Err(e);
        }
    };
    writer.finish().await.map_err(upload_err)?;

    let no_position = |what| BackupError::NoPosition {
        host: source.host.clone(),
        what,
        stderr: read.stderr.trim().to_owned(),
    };
    let p = &read.positions;
    let (Some(begin_lsn), Some(timeline)) = (p.begin_lsn, p.begin_timeline) else {
        return Err(no_position("start point (backup_label)"));
    };
    let (Some(end_lsn), Some(end_timeline)) = (p.end_lsn, p.end_timeline) else {
        return Err(no_position("end point (backup_manifest)"));
    };
    let end_wal = segment_name(end_timeline, end_lsn.saturating_sub(1).max(begin_lsn));
    wait_for_wal(archive, &end_wal, wal_wait).await?;

    let manifest = Manifest {
        id,
        backup: backup.map(str::to_owned),
        source: source.host.clone(),
        from_standby: p.from_standby,
        timeline,
        begin_lsn: format_lsn(begin_lsn),
        end_lsn: format_lsn(end_lsn),
        begin_wal: segment_name(timeline, begin_lsn),
        end_wal,
        started_at: started.to_string(),
        completed_at: Timestamp::now().to_string(),
        data_bytes: read.data_bytes,
        stored_bytes: read.stored_bytes,
        pruned: Vec::new(),
    };
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::Compress(std::io::Error::other(format!("manifest: {e}"))))?;
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    archive
        .store()
        .put_opts(&manifest_at, PutPayload::from(body), create)
        .await
        .map_err(|source| match source {
            object_store::Error::AlreadyExists { .. } => BackupError::Exists {
                location: archive.describe(&manifest_at),
            },
            source => BackupError::Upload {
                location: archive.describe(&manifest_at),
                source,
            },
        })?;
    Ok(manifest)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// What reading the backup gave.
struct Read {
    positions: Positions,
    data_bytes: u64,
    stored_bytes: u64,
    stderr: String,
}

/// Runs pg_basebackup (its tar on stdout), reads the tar for its label
/// and manifest while every byte goes through zstd, and sends the
/// compressed parts to `parts`. Blocking: runs on its own thread.
fn read_backup(
    tool: &Path,
    source: &Source,
    parts: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<Read, BackupError> {
    let port = source.port.to_string();
    let args = [
        "-h",
        &source.host,
        "-p",
        &port,
        "-U",
        &source.user,
        "-D",
        "-",
        "-F",
        "tar",
        "-X",
        "none",
        "-c",
        "fast",
        "-w",
    ];
    tracing::info!(tool = %tool.display(), ?args, "taking a base backup");
    let mut command = std::process::Command::new(tool);
    if let Some(addr) = &source.hostaddr {
        command.env("PGHOSTADDR", addr);
    }
    if let Some(ca) = &source.tls_ca {
        command
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", ca);
    }
    let mut child = command
        .args(args)
        .env("PGPASSWORD", &source.password)
        .env("PGAPPNAME", "ordinal-base-backup")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BackupError::Spawn {
            tool: tool.to_owned(),
            source,
        })?;
    // stderr is read beside the data, or a chatty pg_basebackup would
    // block on a full pipe.
    let stderr_thread = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        })
    });
    let scanned = match child.stdout.take() {
        Some(stdout) => scan(stdout, parts),
        None => Err(BackupError::Read(std::io::Error::other("no stdout"))),
    };
    if scanned.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(BackupError::Read)?;
    let stderr = stderr_thread
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!("{line}");
    }
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(BackupError::Failed {
            host: source.host.clone(),
            status,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    let (positions, data_bytes, stored_bytes) = scanned?;
    Ok(Read {
        positions,
        data_bytes,
        stored_bytes,
        stderr,
    })
}

/// Everything read goes through the encoder; full parts go to the upload.
struct Tee<R> {
    inner: R,
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    parts: tokio::sync::mpsc::Sender<Vec<u8>>,
    read: u64,
    stored: u64,
}

impl<R: std::io::Read> std::io::Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.encoder.write_all(&buf[..n])?;
        self.read += n as u64;
        if self.encoder.get_ref().len() >= PART_BYTES {
            let part = std::mem::take(self.encoder.get_mut());
            self.send(part)?;
        }
        Ok(n)
    }
}

impl<R> Tee<R> {
    fn send(&mut self, part: Vec<u8>) -> std::io::Result<()> {
        self.stored += part.len() as u64;
        self.parts
            .blocking_send(part)
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

fn scan(
    stdout: impl std::io::Read,
    parts: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(Positions, u64, u64), BackupError> {
    let mut encoder =
        zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(BackupError::Compress)?;
    encoder
        .include_checksum(true)
        .map_err(BackupError::Compress)?;
    let mut tee = Tee {
        inner: std::io::BufReader::with_capacity(1024 * 1024, stdout),
        encoder,
        parts: parts.clone(),
        read: 0,
        stored: 0,
    };
    let mut positions = Positions::default();
    {
        let mut tar = tar::Archive::new(&mut tee);
        for entry in tar.entries().map_err(BackupError::Read)? {
            let mut entry = entry.map_err(BackupError::Read)?;
            let path = entry.path().map_err(BackupError::Read)?.into_owned();
            let mut content = Vec::new();
            if path == Path::new("backup_label") {
                std::io::Read::read_to_end(&mut entry, &mut content).map_err(BackupError::Read)?;
                positions.read_label(&String::from_utf8_lossy(&content));
            } else if path == Path::new("backup_manifest") {
                std::io::Read::read_to_end(&mut entry, &mut content).map_err(BackupError::Read)?;
                positions.read_manifest(&content);
            }
        }
    }
    // The tar's end blocks, and anything after them.
    std::io::copy(&mut tee, &mut std::io::sink()).map_err(BackupError::Read)?;
    let Tee {
        encoder,
        parts: _,
        read,
        stored,
        ..
    } = tee;
    let rest = encoder.finish().map_err(BackupError::Compress)?;
    let stored = stored + rest.len() as u64;
    parts
        .blocking_send(rest)
        .map_err(|_| BackupError::Read(std::io::Error::other("the upload stopped")))?;
    Ok((positions, read, stored))
}

/// Waits until WAL segment `segment` is archived.
async fn wait_for_wal(archive: &Archive, segment: &str, wait: Duration) -> Result<(), BackupError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut logged = false;
    loop {
        if archive.contains(segment).await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BackupError::WalNotArchived {
                segment: segment.to_owned(),
                waited: wait,
            });
        }
        if !logged {
            tracing::info!(
                segment,
                "waiting for the backup's last WAL segment to be archived"
            );
            logged = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every complete base backup in `archive`, oldest first.
pub async fn list(archive: &Archive) -> Result<Vec<Manifest>, BackupError> {
    let base = archive.object(&[BASE_DIR]);
    let listing_err = |source| BackupError::Download {
        location: archive.describe(&base),
        source,
    };
    let objects: Vec<object_store::ObjectMeta> = archive
        .store()
        .list(Some(&base))
        .try_collect()
        .await
        .map_err(listing_err)?;
    let mut manifests = Vec::new();
    for object in objects
        .iter()
        .filter(|o| o.location.filename() == Some(MANIFEST_OBJECT))
    {
        manifests.push(read_manifest(archive, &object.location).await?);
    }
    manifests.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(manifests)
}

async fn read_manifest(archive: &Archive, location: &ObjectPath) -> Result<Manifest, BackupError> {
    let download = |source| BackupError::Download {
        location: archive.describe(location),
        source,
    };
    let body = archive
        .store()
        .get(location)
        .await
        .map_err(download)?
        .bytes()
        .await
        .map_err(download)?;
    serde_json::from_slice(&body).map_err(|source| BackupError::BadManifest {
        location: archive.describe(location),
        source,
    })
}

/// Which backup a restore starts from: the latest one, or the latest that
/// was complete before `before` (a recovery target time must come after
/// the backup's end, or recovery cannot stop there).
pub fn choose(backups: &[Manifest], before: Option<Timestamp>) -> Option<&Manifest> {
    backups
        .iter()
        .filter(|m| match before {
            None => true,
            Some(t) => m
                .completed_at
                .parse::<Timestamp>()
                .is_ok_and(|completed| completed < t),
        })
        .max_by(|a, b| a.id.cmp(&b.id))
}

/// The base backup a restore starts from: the one with id `id`, else the
/// latest complete before `before` (else the latest); when there is none,
/// an error that says which was looked for, and where.
pub async fn find(
    archive: &Archive,
    id: Option<&str>,
    before: Option<Timestamp>,
) -> Result<Manifest, BackupError> {
    let backups = list(archive).await?;
    let chosen = match id {
        Some(id) => backups.iter().find(|m| m.id == id),
        None => choose(&backups, before),
    };
    chosen.cloned().ok_or_else(|| BackupError::NoBackup {
        detail: match (id, before) {
            (Some(id), _) => format!(" with id {id} in {}", archive.url()),
            (None, Some(t)) => format!(" in {} complete before {t}", archive.url()),
            (None, None) => format!(" in {}", archive.url()),
        },
    })
}

/// Which base backups a retention policy deletes (oldest first): those no
/// rule keeps. `keep`: the newest N; `window`: every backup completed
/// within it before `now`, and the newest one before it (a restore to the
/// window's first moment starts there). The newest is always kept;
/// without a rule, every one is.
pub fn expired(
    backups: &[Manifest],
    keep: Option<usize>,
    window: Option<Duration>,
    now: Timestamp,
) -> Vec<&Manifest> {
    if keep.is_none() && window.is_none() {
        return Vec::new();
    }
    let mut sorted: Vec<&Manifest> = backups.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let n = sorted.len();
    let completed = |m: &Manifest| m.completed_at.parse::<Timestamp>().ok();
    let window_start = window.and_then(|w| {
        now.checked_sub(k8s_openapi::jiff::SignedDuration::try_from(w).ok()?)
            .ok()
    });
    // The newest backup completed before the window opened.
    let anchor = window_start.and_then(|start| {
        sorted
            .iter()
            .rposition(|m| completed(m).is_some_and(|c| c < start))
    });
    sorted
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            let newest = *i + 1 == n;
            let by_count = keep.is_some_and(|k| *i + k >= n);
            let by_window = window_start
                .is_some_and(|start| completed(m).is_none_or(|c| c >= start) || anchor == Some(*i));
            !(newest || by_count || by_window)
        })
        .map(|(_, m)| *m)
        .collect()
}

/// Whether archived WAL file `name` (without `.zst`) lies wholly before
/// segment `oldest` (a kept backup's first): no restore from a kept backup
/// reads it. History files are always kept (they are small, and every
/// later timeline's recovery reads them).
fn wal_before(name: &str, oldest: &str) -> bool {
    let position = |n: &str| n.get(8..24).map(str::to_owned);
    if name.ends_with(".history") {
        return false;
    }
    match (position(name), position(oldest)) {
        (Some(p), Some(o)) => name.len() >= 24 && p < o,
        _ => false,
    }
}

/// What a retention run deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub backups: Vec<String>,
    pub wal_files: usize,
}

/// Applies the retention policy to the store: the expired base backups
/// (their manifest first, so a half-deleted one is never listed), then the
/// WAL before the oldest backup kept.
pub async fn prune(
    archive: &Archive,
    keep: Option<usize>,
    window: Option<Duration>,
    now: Timestamp,
) -> Result<Pruned, BackupError> {
    let backups = list(archive).await?;
    let expired: Vec<&Manifest> = expired(&backups, keep, window, now);
    let mut pruned = Pruned::default();
    let delete = |location: ObjectPath| async move {
        match archive.store().delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(BackupError::Upload {
                location: archive.describe(&location),
                source,
            }),
        }
    };
    for m in &expired {
        delete(manifest_location(archive, &m.id)).await?;
        delete(archive.object(&[BASE_DIR, &m.id, DATA_OBJECT])).await?;
        tracing::info!(id = %m.id, "base backup deleted by the retention policy");
        pruned.backups.push(m.id.clone());
    }
    let Some(oldest) = backups
        .iter()
        .filter(|m| !expired.iter().any(|e| e.id == m.id))
        .min_by(|a, b| a.id.cmp(&b.id))
    else {
        return Ok(pruned);
    };
    let wal = archive.object(&["wal"]);
    let objects: Vec<object_store::ObjectMeta> = archive
        .store()
        .list(Some(&wal))
        .try_collect()
        .await
        .map_err(|source| BackupError::Download {
            location: archive.describe(&wal),
            source,
        })?;
    for object in objects {
        let Some(name) = object
            .location
            .filename()
            .and_then(|f| f.strip_suffix(".zst"))
        else {
            continue;
        };
        if wal_before(name, &oldest.begin_wal) {
            delete(object.location.clone()).await?;
            pruned.wal_files += 1;
        }
    }
    if pruned.wal_files > 0 {
        tracing::info!(
            files = pruned.wal_files,
            before = %oldest.begin_wal,
            "WAL no kept backup needs deleted by the retention policy"
        );
    }
    Ok(pruned)
}

/// Fails, naming them, when WAL segments of the backup's own range are
/// missing from the archive: a restore could never be consistent, and
/// PostgreSQL would only say "could not locate required checkpoint record".
pub async fn check_wal(archive: &Archive, backup: &Manifest) -> Result<(), BackupError> {
    let missing = missing_wal(archive, backup).await?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(BackupError::MissingWal {
        archive: archive.url().to_string(),
        id: backup.id.clone(),
        segments: missing.join(", "),
    })
}

/// The WAL segments a backup needs to be consistent: from the one holding
/// its start to the one holding the last byte before its end (an end on a
/// segment's first byte needs nothing of that segment, which may not even
/// be written yet: `end_wal`, which the backup waited for, says the same).
/// Across a timeline switch (a backup of a standby during a promotion)
/// only the first and the last.
fn needed_wal(backup: &Manifest) -> Vec<String> {
    let same_timeline = backup.begin_wal.get(..8) == backup.end_wal.get(..8);
    match (
        same_timeline,
        parse_lsn(&backup.begin_lsn),
        parse_lsn(&backup.end_lsn),
    ) {
        (true, Some(begin), Some(end)) if end >= begin => {
            let first = begin / WAL_SEGMENT_SIZE;
            let last = end.saturating_sub(1).max(begin) / WAL_SEGMENT_SIZE;
            (first..=last)
                .map(|segno| segment_name(backup.timeline, segno * WAL_SEGMENT_SIZE))
                .collect()
        }
        _ => vec![backup.begin_wal.clone(), backup.end_wal.clone()],
    }
}

/// The segments of [`needed_wal`] that are not in the archive.
async fn missing_wal(archive: &Archive, backup: &Manifest) -> Result<Vec<String>, BackupError> {
    let mut missing = Vec::new();
    for segment in needed_wal(backup) {
        // A name that is no segment's (a damaged manifest) is no WAL.
        let Ok(location) = archive.location(&segment) else {
            missing.push(segment);
            continue;
        };
        match archive.store().head(&location).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => missing.push(segment),
            Err(source) => {
                return Err(BackupError::Lookup {
                    segment,
                    archive: archive.url().to_string(),
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(missing)
}

/// Unpacks base backup `manifest` into the empty directory `pgdata`,
/// streamed from the store (no copy of the archive on disk).
pub async fn restore(
    archive: &Archive,
    manifest: &Manifest,
    pgdata: &Path,
) -> Result<(), BackupError> {
    let not_empty = std::fs::read_dir(pgdata)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if not_empty {
        return Err(BackupError::NotEmpty {
            pgdata: pgdata.to_owned(),
        });
    }
    let location = archive.object(&[BASE_DIR, &manifest.id, DATA_OBJECT]);
    let described = archive.describe(&location);
    let stream = archive
        .store()
        .get(&location)
        .await
        .map_err(|source| BackupError::Download {
            location: described.clone(),
            source,
        })?
        .into_stream()
        .map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let target = pgdata.to_owned();
    let unpack_err = |source| BackupError::Unpack {
        location: described.clone(),
        pgdata: pgdata.to_owned(),
        source,
    };
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let decoder = zstd::stream::read::Decoder::new(reader)?;
        let mut tar = tar::Archive::new(decoder);
        tar.set_preserve_permissions(true);
        tar.set_overwrite(false);
        tar.unpack(&target)
    })
    .await
    .map_err(|e| unpack_err(std::io::Error::other(e)))?
    .map_err(unpack_err)?;
    // PostgreSQL insists on 0700 (or 0750) for PGDATA.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700)).map_err(unpack_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_and_positions() {
        assert_eq!(segment_name(1, 0x2000028), "000000010000000000000002");
        assert_eq!(segment_name(2, 0x1_FF00_0000), "0000000200000001000000FF");
        assert_eq!(parse_lsn("1/FF000000"), Some(0x1_FF00_0000));
        assert_eq!(format_lsn(0x1_FF00_0028), "1/FF000028");
        let mut p = Positions::default();
        p.read_label(
            "START WAL LOCATION: 0/6000028 (file 000000030000000000000006)\n\
             CHECKPOINT LOCATION: 0/6000060\n\
             BACKUP METHOD: streamed\n\
             BACKUP FROM: standby\n\
             START TIME: 2026-12-05 21:17:30 UTC\n\
             START TIMELINE: 3\n",
        );
        p.read_manifest(
            br#"{ "PostgreSQL-Backup-Manifest-Version": 1, "Files": [],
                  "WAL-Ranges": [
                    { "Timeline": 3, "Start-LSN": "0/6000028", "End-LSN": "0/6FFFFF0" },
                    { "Timeline": 4, "Start-LSN": "0/6FFFFF0", "End-LSN": "0/7000138" } ] }"#,
        );
        assert_eq!(
            p,
            Positions {
                begin_lsn: Some(0x6000028),
                begin_timeline: Some(3),
                from_standby: true,
                end_lsn: Some(0x7000138),
                end_timeline: Some(4),
            }
        );
    }

    #[test]
    fn the_wal_a_backup_needs_ends_before_its_end() {
        let mut backup = manifest("b", "2026-12-06T02:37:13Z");
        backup.begin_lsn = "0/2000028".to_owned();
        backup.begin_wal = "000000010000000000000002".to_owned();
        // Ended on the first byte of segment 3 (a standby right after the
        // primary switched segments): segment 3 is not needed.
        backup.end_lsn = "0/3000000".to_owned();
        backup.end_wal = "000000010000000000000002".to_owned();
        assert_eq!(needed_wal(&backup), ["000000010000000000000002"]);
        backup.end_lsn = "0/4000100".to_owned();
        backup.end_wal = "000000010000000000000004".to_owned();
        assert_eq!(
            needed_wal(&backup),
            [
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000004"
            ]
        );
        // Across a timeline switch: the ends only.
        backup.end_wal = "000000020000000000000004".to_owned();
        assert_eq!(
            needed_wal(&backup),
            ["000000010000000000000002", "000000020000000000000004"]
        );
    }

    fn manifest(id: &str, completed_at: &str) -> Manifest {
        Manifest {
            id: id.to_owned(),
            backup: None,
            source: "db-1".to_owned(),
            from_standby: true,
            timeline: 1,
            begin_lsn: "0/2000028".to_owned(),
            end_lsn: "0/2000100".to_owned(),
            begin_wal: segment_name(1, 0x2000028),
            end_wal: segment_name(1, 0x20000FF),
            started_at: completed_at.to_owned(),
            completed_at: completed_at.to_owned(),
            data_bytes: 1,
            stored_bytes: 1,
            pruned: Vec::new(),
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_what_the_window_needs() {
        let backups = [
            manifest("20261201T000000Z", "2026-12-01T00:01:00Z"),
            manifest("20261202T000000Z", "2026-12-02T00:01:00Z"),
            manifest("20261203T000000Z", "2026-12-03T00:01:00Z"),
            manifest("20261204T000000Z", "2026-12-04T00:01:00Z"),
        ];
        let now: Timestamp = "2026-12-04T12:00:00Z".parse().expect("now");
        let ids = |v: Vec<&Manifest>| v.into_iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        assert!(expired(&backups, None, None, now).is_empty(), "no policy");
        assert_eq!(
            ids(expired(&backups, Some(2), None, now)),
            ["20261201T000000Z", "20261202T000000Z"]
        );
        // A 1.5-day window opens 2026-12-03T00:00: the backup of the 3rd is
        // in it; the one of the 2nd is the newest before it (kept).
        let window = Some(Duration::from_secs(36 * 3600));
        assert_eq!(
            ids(expired(&backups, None, window, now)),
            ["20261201T000000Z"]
        );
        // Either rule keeps: the union (keep 1 alone would delete three).
        assert_eq!(
            ids(expired(&backups, Some(1), window, now)),
            ["20261201T000000Z"]
        );
        // The newest survives any policy.
        assert_eq!(expired(&backups, Some(1), None, now).len(), 3);
        assert!(wal_before(
            "000000010000000000000003",
            "000000020000000000000004"
        ));
        assert!(wal_before(
            "000000010000000000000003.partial",
            "000000010000000000000004"
        ));
        assert!(!wal_before(
            "000000020000000000000004",
            "000000010000000000000004"
        ));
        assert!(!wal_before("00000002.history", "000000030000000000000009"));
    }

    #[test]
    fn a_restore_starts_from_the_latest_backup_complete_before_its_target() {
        let backups = [
            manifest("20261201T000000Z", "2026-12-01T00:01:00Z"),
            manifest("20261202T000000Z", "2026-12-02T00:01:00Z"),
        ];
        assert_eq!(
            choose(&backups, None).map(|m| m.id.as_str()),
            Some("20261202T000000Z")
        );
        let t = |s: &str| s.parse::<Timestamp>().ok();
        assert_eq!(
            choose(&backups, t("2026-12-02T00:00:30Z")).map(|m| m.id.as_str()),
            Some("20261201T000000Z")
        );
        // A target inside the only backup: none can reach it.
        assert_eq!(choose(&backups, t("2026-12-01T00:00:30Z")), None);
    }
}
