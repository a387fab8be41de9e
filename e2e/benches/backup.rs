//! Backup benchmark: base backup and restore throughput of `ordinal-init`
//! to and from a real MinIO (built from its Go module, on loopback),
//! against `pg_basebackup` to a local directory and `tar -x` of its tar on
//! the same data (the local limit), and the latency of one WAL segment's
//! push. A benchmark that prints figures, not a timed test.
//!
//!   scripts/minio.sh build
//!   cargo build --release -p ordinal-init
//!   cargo bench -p ordinal-e2e --bench backup
//!
//! ORDINAL_BENCH_SCALE (pgbench scale, default 30: about 450 MiB) and
//! ORDINAL_BENCH_PUSHES (default 20) tune it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use ordinal_e2e::local::{Cluster, Pod, chown_to_postgres, chown_tree_to_postgres, stderr};
use ordinal_e2e::minio::Minio;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn timed(what: &str, run: impl FnOnce() -> Output) -> Duration {
    let started = Instant::now();
    let out = run();
    let took = started.elapsed();
    assert!(out.status.success(), "{what}: {}", stderr(&out));
    took
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn empty_dir(pod: &Pod, name: &str) -> std::path::PathBuf {
    let dir = pod.data_mount.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    chown_to_postgres(&dir);
    dir
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1_048_576.0 / took.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scale = env_number("ORDINAL_BENCH_SCALE", 30);
    let pushes = env_number("ORDINAL_BENCH_PUSHES", 20);
    let minio = Minio::start();
    let init = ordinal_e2e::init_bin();
    let cluster = Cluster::new(&init);
    let db0 = cluster.pod(0);

    // The store, as the operator names it to the pods.
    let creds = db0.data_mount.join("backup-credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let mut options = Vec::new();
    for (k, v) in minio.options() {
        if k.contains("access_key") || k.contains("secret") {
            std::fs::write(creds.join(&k), &v).unwrap();
        } else {
            options.push(format!("{k}={v}"));
        }
    }
    chown_tree_to_postgres(&creds);
    db0.env("ORDINAL_BACKUP_URL", &minio.url("bench"));
    db0.env("ORDINAL_BACKUP_OPTIONS", &options.join(","));
    db0.env(
        "ORDINAL_BACKUP_CREDENTIALS_DIR",
        &creds.display().to_string(),
    );

    cluster.set_state("db-0", false, 0);
    let out = db0.init();
    assert!(out.status.success(), "init: {}", stderr(&out));
    {
        use std::io::Write;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(db0.config_dir.join("postgresql.conf"))
            .unwrap();
        writeln!(
            conf,
            "archive_mode = on\narchive_command = '{init} wal-push %p %f'\nmax_wal_size = '2GB'"
        )
        .unwrap();
    }
    db0.start().expect("db-0 starts");
    cluster.set_state("db-0", true, 0);
    let socket = db0.socket_dir.display().to_string();
    let port = db0.port.to_string();
    eprintln!("ordinal-bench: pgbench -i -s {scale}");
    timed("pgbench -i", || {
        db0.tool("pgbench")
            .args([
                "-i",
                "-q",
                "-s",
                &scale.to_string(),
                "-h",
                &socket,
                "-p",
                &port,
                "-U",
                "postgres",
                "postgres",
            ])
            .output()
            .unwrap()
    });

    // pg_basebackup to a local directory, as a tar: the local limit.
    let local = empty_dir(&db0, "local-backup");
    let local_took = timed("pg_basebackup", || {
        db0.tool("pg_basebackup")
            .args([
                "-D",
                &local.display().to_string(),
                "-F",
                "tar",
                "-X",
                "none",
                "-c",
                "fast",
            ])
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .env("PGPASSWORD", ordinal_e2e::local::SUPERUSER_PASSWORD)
            .output()
            .unwrap()
    });
    let data_bytes = dir_bytes(&local);

    // ordinal-init base-backup to MinIO: read, compressed and uploaded at
    // once (its WAL-archived wait is included: the primary switches
    // segments at the backup's end and archives it at once).
    let report = db0.data_mount.join("report.json");
    let ours_took = timed("ordinal-init base-backup", || {
        db0.init_command()
            .args([
                "base-backup",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--report",
            ])
            .arg(&report)
            .output()
            .unwrap()
    });
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let stored = manifest["storedBytes"].as_u64().unwrap();
    let id = manifest["id"].as_str().unwrap().to_owned();

    // Restore: tar -x of the local tar, against base-restore from MinIO.
    let untarred = empty_dir(&db0, "local-restore");
    let untar_took = timed("tar -x", || {
        std::process::Command::new("tar")
            .arg("-xf")
            .arg(local.join("base.tar"))
            .arg("-C")
            .arg(&untarred)
            .output()
            .unwrap()
    });
    let restored = empty_dir(&db0, "restored");
    let restore_took = timed("ordinal-init base-restore", || {
        db0.init_command()
            .args(["base-restore", "--id", &id])
            .arg(&restored)
            .output()
            .unwrap()
    });

    // WAL push: one real 16 MiB segment's content, pushed under names of a
    // timeline nobody uses, one after the other (as the archiver does).
    let segment = std::fs::read_dir(db0.pgdata.join("pg_wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 24)
        })
        .expect("a WAL segment");
    let copy = db0.data_mount.join("segment");
    std::fs::copy(&segment, &copy).unwrap();
    chown_to_postgres(&copy);
    let mut latencies: Vec<f64> = (0..pushes)
        .map(|i| {
            let name = format!("0000007F00000000{:08X}", i + 1);
            timed("wal-push", || {
                db0.init_command()
                    .args(["wal-push", &copy.display().to_string(), &name])
                    .output()
                    .unwrap()
            })
            .as_secs_f64()
                * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);

    println!();
    println!(
        "Backup benchmark: PGDATA {:.0} MiB (pgbench scale {scale}), stored {:.0} MiB by ordinal-init (zstd {:.1}×), MinIO on loopback",
        data_bytes as f64 / 1_048_576.0,
        stored as f64 / 1_048_576.0,
        data_bytes as f64 / stored as f64
    );
    println!("| operation | local limit | ordinal-init ↔ MinIO | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| base backup | pg_basebackup -F tar to a directory: {:.1} s, {:.0} MB/s | base-backup: {:.1} s, {:.0} MB/s | {:.2} |",
        local_took.as_secs_f64(),
        mb_per_s(data_bytes, local_took),
        ours_took.as_secs_f64(),
        mb_per_s(data_bytes, ours_took),
        mb_per_s(data_bytes, ours_took) / mb_per_s(data_bytes, local_took)
    );
    println!(
        "| restore | tar -x of that tar: {:.1} s, {:.0} MB/s | base-restore: {:.1} s, {:.0} MB/s | {:.2} |",
        untar_took.as_secs_f64(),
        mb_per_s(data_bytes, untar_took),
        restore_took.as_secs_f64(),
        mb_per_s(data_bytes, restore_took),
        mb_per_s(data_bytes, restore_took) / mb_per_s(data_bytes, untar_took)
    );
    println!(
        "| WAL push, one 16 MiB segment ({pushes} pushes) | – | p50 {:.0} ms, max {:.0} ms | – |",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert_eq!(
        dir_bytes(&restored) / 1_048_576,
        dir_bytes(&untarred) / 1_048_576,
        "the restore holds what pg_basebackup read"
    );
}
