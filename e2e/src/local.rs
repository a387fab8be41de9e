//! A local stand-in for a StatefulSet: each "pod" is a directory with its
//! own PGDATA, configuration, socket and port on 127.0.0.1; the cluster
//! state is a JSON file. `ordinal-init` runs as the `postgres` user (initdb
//! and postgres refuse root), exactly as in a pod. Servers are stopped when
//! their `Pod` is dropped, also when a test fails.

// A test harness: a failure here is a test failure, so it panics with
// the reason.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use serde_json::json;

pub const SUPERUSER_PASSWORD: &str = "super'secret\\pw";
pub const REPLICATION_PASSWORD: &str = "repl-pw-42";

/// The uid/gid to run PostgreSQL as: `postgres` when we are root.
fn run_as() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = User::from_name("postgres")
        .expect("read passwd")
        .expect("the postgres user exists (Debian's postgresql package creates it; scripts/test.sh installs it)");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

pub fn chown_to_postgres(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

/// [`chown_to_postgres`] of `path` and everything under it.
pub fn chown_tree_to_postgres(path: &Path) {
    chown_to_postgres(path);
    if path.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            chown_tree_to_postgres(&entry.path());
        }
    }
}

fn mkdir(path: &Path, mode: u32) {
    std::fs::create_dir_all(path).expect("mkdir");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    chown_to_postgres(path);
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    chown_to_postgres(path);
}

/// The PostgreSQL bin directory the tests (and ordinal-init) use.
pub fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("ORDINAL_PG_BIN") {
        return dir.into();
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql (run scripts/test.sh)")
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    majors.sort();
    majors
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
        .1
}

/// A free port for a test server, below the kernel's ephemeral range.
///
/// A port the kernel hands out for `bind(0)` comes from the ephemeral
/// range, where an outgoing connection of another test (a probe, a
/// replication stream, pg_basebackup) can take it as its source port
/// between this pick and the server's own bind: "Address already in use".
/// Ports below the range are never taken that way; a counter shared by the
/// tests of this process, from a random start, keeps them apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12000, 65535);
    let (base, span) = (10000, low - 10000);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let start = rand::random_range(0..span);
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{low}");
}

/// Waits until `f` holds, or panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Cluster {
    pub root: tempfile::TempDir,
    init_bin: PathBuf,
    pub state_file: PathBuf,
    superuser_dir: PathBuf,
    replication_dir: PathBuf,
    endpoints: Arc<Mutex<BTreeMap<String, u16>>>,
}

impl Cluster {
    /// A cluster whose pods run the `ordinal-init` binary at `init_bin`.
    pub fn new(init_bin: impl Into<PathBuf>) -> Self {
        let root = tempfile::Builder::new()
            .prefix("ordinal-")
            .tempdir()
            .expect("tempdir");
        mkdir(root.path(), 0o755);
        let superuser_dir = root.path().join("superuser");
        let replication_dir = root.path().join("replication");
        mkdir(&superuser_dir, 0o750);
        mkdir(&replication_dir, 0o750);
        write(&superuser_dir.join("username"), "postgres", 0o440);
        write(&superuser_dir.join("password"), SUPERUSER_PASSWORD, 0o440);
        write(
            &replication_dir.join("username"),
            "streaming_replica",
            0o440,
        );
        write(
            &replication_dir.join("password"),
            REPLICATION_PASSWORD,
            0o440,
        );
        Self {
            state_file: root.path().join("state.json"),
            init_bin: init_bin.into(),
            root,
            superuser_dir,
            replication_dir,
            endpoints: Arc::default(),
        }
    }

    /// Writes status.currentPrimary etc. (and every pod's address).
    pub fn set_state(&self, primary: &str, bootstrapped: bool, epoch: i64) {
        self.set_state_with_target(primary, None, bootstrapped, epoch);
    }

    /// Like `set_state`, with `status.targetPrimary` (a promotion under way).
    pub fn set_state_with_target(
        &self,
        primary: &str,
        target: Option<&str>,
        bootstrapped: bool,
        epoch: i64,
    ) {
        let endpoints: BTreeMap<String, String> = self
            .endpoints
            .lock()
            .expect("endpoints")
            .iter()
            .map(|(pod, port)| (pod.clone(), format!("127.0.0.1:{port}")))
            .collect();
        let state = json!({
            "currentPrimary": primary,
            "targetPrimary": target,
            "bootstrapped": bootstrapped,
            "epoch": epoch,
            "endpoints": endpoints,
        });
        write(&self.state_file, &state.to_string(), 0o644);
    }

    /// Pod `db-<ordinal>`, with its own port and directories.
    pub fn pod(&self, ordinal: u32) -> Pod {
        let name = format!("db-{ordinal}");
        let port = free_port();
        self.endpoints
            .lock()
            .expect("endpoints")
            .insert(name.clone(), port);
        let dir = self.root.path().join(&name);
        let data_mount = dir.join("data");
        let config_dir = dir.join("config");
        let socket_dir = dir.join("run");
        mkdir(&dir, 0o755);
        mkdir(&data_mount, 0o750);
        mkdir(&config_dir, 0o755);
        mkdir(&socket_dir, 0o700);
        // What the operator's ConfigMap holds, for this pod's port.
        let conf = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             hba_file = '{config}/pg_hba.conf'\n\
             wal_level = 'replica'\n\
             hot_standby = 'on'\n\
             wal_log_hints = 'on'\n\
             max_wal_senders = '10'\n\
             max_replication_slots = '10'\n\
             hot_standby_feedback = 'on'\n\
             wal_receiver_status_interval = '1s'\n\
             wal_receiver_timeout = '5s'\n\
             wal_retrieve_retry_interval = '1s'\n\
             shared_buffers = '16MB'\n\
             max_connections = '30'\n\
             logging_collector = 'off'\n\
             dynamic_shared_memory_type = 'posix'\n",
            socket = socket_dir.display(),
            config = config_dir.display(),
        );
        write(&config_dir.join("postgresql.conf"), &conf, 0o644);
        write(
            &config_dir.join("pg_hba.conf"),
            "local all all peer\n\
             host replication all 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
            0o644,
        );
        // Rewrite the state with the new endpoint, keeping the rest.
        if let Ok(text) = std::fs::read_to_string(&self.state_file) {
            let mut state: serde_json::Value = serde_json::from_str(&text).expect("state");
            state["endpoints"][&name] = json!(format!("127.0.0.1:{port}"));
            write(&self.state_file, &state.to_string(), 0o644);
        }
        Pod {
            init_bin: self.init_bin.clone(),
            name,
            port,
            pgdata: data_mount.join("pgdata"),
            data_mount,
            config_dir,
            socket_dir,
            state_file: self.state_file.clone(),
            superuser_dir: self.superuser_dir.clone(),
            replication_dir: self.replication_dir.clone(),
            extra_env: Mutex::default(),
            server: Mutex::new(None),
        }
    }
}

impl Cluster {
    /// db-0, initialized and started as the primary through ordinal-init,
    /// with table `t` holding ids 1..=rows; the cluster then recorded as
    /// bootstrapped.
    pub async fn bootstrapped_primary(&self, rows: i64) -> Pod {
        let db0 = self.pod(0);
        self.set_state("db-0", false, 0);
        let out = db0.init();
        assert!(out.status.success(), "db-0 init: {}", stderr(&out));
        db0.start().expect("db-0 starts");
        db0.sql()
            .await
            .execute(
                "CREATE TABLE t AS SELECT generate_series(1, $1::bigint) AS id",
                &[&rows],
            )
            .await
            .expect("create table t");
        db0.sql()
            .await
            .batch_execute("ALTER TABLE t ADD PRIMARY KEY (id)")
            .await
            .expect("primary key");
        self.set_state("db-0", true, 0);
        db0
    }
}

pub struct Pod {
    init_bin: PathBuf,
    pub name: String,
    pub port: u16,
    pub pgdata: PathBuf,
    pub data_mount: PathBuf,
    pub config_dir: PathBuf,
    pub socket_dir: PathBuf,
    state_file: PathBuf,
    superuser_dir: PathBuf,
    replication_dir: PathBuf,
    extra_env: Mutex<Vec<(String, String)>>,
    server: Mutex<Option<Child>>,
}

impl Pod {
    /// Sets an extra environment variable for ordinal-init.
    pub fn env(&self, key: &str, value: &str) {
        self.extra_env
            .lock()
            .expect("env")
            .push((key.to_owned(), value.to_owned()));
    }

    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("POD_NAME", &self.name)
            .env("POD_NAMESPACE", "test")
            .env("ORDINAL_CLUSTER", "db")
            .env("PGDATA", &self.pgdata)
            .env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("ORDINAL_SUPERUSER_DIR", &self.superuser_dir)
            .env("ORDINAL_REPLICATION_DIR", &self.replication_dir)
            .env("ORDINAL_STATE_FILE", &self.state_file)
            .env("ORDINAL_STATE_TIMEOUT_SECONDS", "20")
            .env("ORDINAL_PG_BIN", pg_bin())
            .current_dir(&self.data_mount);
        for (k, v) in self.extra_env.lock().expect("env").iter() {
            command.env(k, v);
        }
        if let Some((uid, gid)) = run_as() {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn ordinal_init(&self) -> Command {
        self.command(&self.init_bin)
    }

    /// `ordinal-init init`.
    pub fn init(&self) -> Output {
        let out = self
            .ordinal_init()
            .arg("init")
            .output()
            .expect("run ordinal-init init");
        eprintln!(
            "--- {} init ({}):\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `ordinal-init init` in its own process group, not waited for.
    pub fn spawn_init(&self) -> Child {
        self.ordinal_init()
            .arg("init")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ordinal-init init")
    }

    fn run_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--".into(),
            "postgres".into(),
            "-D".into(),
            self.pgdata.display().to_string(),
            "-c".into(),
            format!("config_file={}/postgresql.conf", self.config_dir.display()),
        ]
    }

    /// `ordinal-init run -- postgres …` (the postgres container), waiting
    /// until the server answers. Err with the log when it does not start.
    pub fn start(&self) -> Result<(), String> {
        let log = self.data_mount.join(format!("{}.log", self.name));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        chown_to_postgres(&log);
        // Spawned under the lock, so that a concurrent kill (a fence) sees
        // either no process or this one, never a process it misses.
        {
            let mut server = self.server.lock().expect("server");
            // In a process group of its own, which a kill -9 takes whole.
            let child = self
                .ordinal_init()
                .args(self.run_args())
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("log"))
                .stderr(file)
                .spawn()
                .expect("spawn ordinal-init run");
            *server = Some(child);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let live = self.probe_output("live");
            if live.status.success() && !String::from_utf8_lossy(&live.stdout).contains("preparing")
            {
                return Ok(());
            }
            let exited = self
                .server
                .lock()
                .expect("server")
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                *self.server.lock().expect("server") = None;
                return Err(format!(
                    "{} exited {status}:\n{}",
                    self.name,
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not start:\n{}",
                    self.name,
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A second `ordinal-init run` for this pod, not waited for and not
    /// this pod's server: a force-deleted pod's replacement starting while
    /// the old container still runs.
    pub fn spawn_run(&self) -> Child {
        self.ordinal_init()
            .args(self.run_args())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ordinal-init run")
    }

    /// The postgres server directly, bypassing the guard: what a buggy
    /// operator or a person with a shell might do.
    pub fn start_unguarded(&self) {
        let postgres = pg_bin().join("postgres");
        let log = self.data_mount.join(format!("{}-unguarded.log", self.name));
        let file = std::fs::File::create(&log).expect("log file");
        let mut args = self.run_args();
        args.drain(..3);
        let child = self
            .command(&postgres)
            .args(args)
            .process_group(0)
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("spawn postgres");
        *self.server.lock().expect("server") = Some(child);
        wait_until(
            &format!("{} answers", self.name),
            Duration::from_secs(60),
            || self.probe("live"),
        );
    }

    /// Signals the server: `ordinal-init run`, which passes a stop on to
    /// postgres, or for SIGKILL its whole process group — the guard and its
    /// postmaster, as a container's end takes every process in it (the
    /// backends end once their postmaster is gone).
    fn signal(&self, signal: Signal) -> bool {
        let mut server = self.server.lock().expect("server");
        let Some(child) = server.as_mut() else {
            return false;
        };
        let pid = child.id() as i32;
        let target = if signal == Signal::SIGKILL { -pid } else { pid };
        let _ = kill(Pid::from_raw(target), signal);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                *server = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The kubelet's stop: ordinal-init turns it into a fast shutdown.
    pub fn stop(&self) {
        if !self.signal(Signal::SIGINT) {
            self.signal(Signal::SIGKILL);
        }
    }

    /// kill -9 of the instance: the guard and its postmaster at once.
    pub fn kill9(&self) {
        let postmaster = std::fs::read_to_string(self.pgdata.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
        self.signal(Signal::SIGKILL);
        // A container's processes are gone with it. Here the killed
        // postmaster is an orphan until PID 1 reaps it (this machine's
        // does so every ~2 s), and PostgreSQL takes a zombie named in
        // postmaster.pid for a live postmaster: wait until it is reaped.
        if let Some(pid) = postmaster {
            wait_until(
                "the killed postmaster is reaped",
                Duration::from_secs(30),
                || !Path::new(&format!("/proc/{pid}")).exists(),
            );
        }
    }

    /// `ordinal-init stop`, the preStop hook.
    pub fn stop_hook(&self) -> Output {
        self.ordinal_init()
            .arg("stop")
            .output()
            .expect("run ordinal-init stop")
    }

    /// The server process has not exited (reaps it when it has).
    pub fn server_alive(&self) -> bool {
        let mut server = self.server.lock().expect("server");
        match server.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                *server = None;
                false
            }
            None => false,
        }
    }

    pub fn is_running(&self) -> bool {
        self.server.lock().expect("server").is_some()
    }

    /// `ordinal-init probe <kind>` succeeds.
    pub fn probe(&self, kind: &str) -> bool {
        self.probe_output(kind).status.success()
    }

    pub fn probe_output(&self, kind: &str) -> Output {
        self.ordinal_init()
            .args(["probe", kind])
            .output()
            .expect("run probe")
    }

    /// A superuser connection over TCP, retried while the server is still
    /// starting (a standby accepts connections once consistent).
    pub async fn sql(&self) -> tokio_postgres::Client {
        self.sql_at(self.port).await
    }

    /// A superuser session with a server of this pod's data on `port` (a
    /// copy of it restored elsewhere).
    pub async fn sql_at(&self, port: u16) -> tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let connected = tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user("postgres")
                .password(SUPERUSER_PASSWORD)
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(5))
                .connect(tokio_postgres::NoTls)
                .await;
            match connected {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    return client;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("connect to {}: {e:?}; retrying", self.name);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("connect to {}: {e:?}", self.name),
            }
        }
    }

    /// `ordinal-init` with this pod's environment, as the postgres user.
    pub fn init_command(&self) -> Command {
        self.ordinal_init()
    }

    /// A PostgreSQL tool, run as the postgres user.
    pub fn tool(&self, name: &str) -> Command {
        self.command(&pg_bin().join(name))
    }

    pub async fn in_recovery(&self) -> bool {
        self.sql()
            .await
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("query")
            .get(0)
    }

    /// Ids in table `t`, sorted.
    pub async fn ids(&self) -> Vec<i64> {
        self.sql()
            .await
            .query("SELECT id FROM t ORDER BY id", &[])
            .await
            .expect("select")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Output of a command as text, for assertions.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
