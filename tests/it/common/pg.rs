//! A private PostgreSQL cluster for one test, to break on purpose: initdb in a temporary folder,
//! its own port on 127.0.0.1, then restart, stop, stall (SIGSTOP of every process of the cluster)
//! and a streaming standby to promote. The binaries come from `IT_PG_BIN` (set by scripts/test).
//! Every method blocks: call them from `spawn_blocking` while a load runs on the test's runtime.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct PgCluster {
    pub port: u16,
    /// The temporary folder: `data/`, the server's `log`, its Unix socket.
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Running,
    Stopped,
    /// SIGSTOPped: these processes get a SIGCONT.
    Paused(Vec<i32>),
}

/// The database every cluster here gets, migrated by the portal's own migrations.
pub const DB: &str = "portal";
const USER: &str = "portal";

fn bin(program: &str) -> PathBuf {
    Path::new(&super::env("IT_PG_BIN")).join(program)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A PostgreSQL program, run as the `postgres` user when the tests run as root (the server
/// refuses to run as root; scripts/test creates that user).
fn as_pg(program: &str) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin(program));
        c
    } else {
        Command::new(bin(program))
    };
    // A folder that user can enter (the project's may not be).
    c.current_dir(std::env::temp_dir());
    c
}

/// Runs `cmd`; panics with its output (and the server's log, if any) when it fails.
fn run(mut cmd: Command, what: &str, log: Option<&Path>) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        let log = log
            .and_then(|l| std::fs::read_to_string(l).ok())
            .map(|l| {
                let lines: Vec<&str> = l.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            })
            .unwrap_or_default();
        panic!(
            "{what} failed ({}):\n{}{}\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A folder of its own for a cluster, owned by the user the server runs as.
fn new_folder() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tchap-pg-{}-{}",
        std::process::id(),
        super::free_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cluster folder");
    if is_root() {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("id postgres");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("the postgres user exists (scripts/test creates it)")
        };
        std::os::unix::fs::chown(&dir, Some(id("-u")), Some(id("-g"))).expect("chown");
    }
    dir
}

impl PgCluster {
    /// A new cluster (trust authentication for `portal` on 127.0.0.1, fsync off), started, with
    /// an empty database `portal`.
    pub fn start() -> PgCluster {
        let dir = new_folder();
        let mut initdb = as_pg("initdb");
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"])
            .arg("--no-sync");
        run(initdb, "initdb", None);
        let cluster = PgCluster::on(dir);
        cluster.start_server();
        cluster.psql("postgres", &format!("CREATE DATABASE {DB}"));
        cluster
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`: it follows the primary's WAL),
    /// started on a port of its own.
    pub fn standby_of(primary: &PgCluster) -> PgCluster {
        let dir = new_folder();
        let mut backup = as_pg("pg_basebackup");
        backup
            .args(["-h", "127.0.0.1", "-U", USER, "-p"])
            .arg(primary.port.to_string())
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run(backup, "pg_basebackup", None);
        let cluster = PgCluster::on(dir);
        cluster.start_server();
        cluster
    }

    fn on(dir: PathBuf) -> PgCluster {
        PgCluster {
            port: super::free_port(),
            dir,
            state: Mutex::new(State::Stopped),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// The URL of a database of this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// `host:port`, for a multi-host URL.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn set_state(&self, state: State) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut c = as_pg("pg_ctl");
        c.arg("-D").arg(self.data()).args(args);
        c
    }

    /// The server's options (pg_ctl passes them through a shell, hence the quotes).
    fn options(&self) -> String {
        format!(
            "-c listen_addresses=127.0.0.1 -p {} -k '{}' -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        )
    }

    fn start_server(&self) {
        let log = self.log();
        let mut c = self.pg_ctl(&["-w", "-t", "60", "-o", &self.options(), "-l"]);
        c.arg(&log).arg("start").stdout(Stdio::null());
        run(c, "pg_ctl start", Some(&log));
        self.set_state(State::Running);
    }

    /// Stops the server: `fast` (clients disconnected, a clean shutdown) or `immediate` (as if
    /// the machine were lost).
    pub fn stop(&self, mode: &str) {
        self.resume();
        run(
            self.pg_ctl(&["-m", mode, "-w", "-t", "60", "stop"]),
            "pg_ctl stop",
            Some(&self.log()),
        );
        self.set_state(State::Stopped);
    }

    /// A fast restart (clients disconnected, the server back on the same port); returns how long
    /// it took.
    pub fn restart(&self) -> Duration {
        let t = Instant::now();
        self.stop("fast");
        self.start_server();
        t.elapsed()
    }

    /// Starts a server stopped by [`PgCluster::stop`] again.
    pub fn start_again(&self) {
        assert_eq!(self.state(), State::Stopped, "the server is stopped");
        self.start_server();
    }

    fn postmaster_pid(&self) -> i32 {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .expect("postmaster.pid: the server runs");
        pid.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid in postmaster.pid")
    }

    /// Stalls the whole server with SIGSTOP: the postmaster first (no new backend is forked
    /// after it), then every process it started (backends, walsenders, background workers).
    /// Connections are still accepted by the kernel, and nothing answers.
    pub fn pause(&self) {
        assert_eq!(self.state(), State::Running, "the server runs");
        let pm = self.postmaster_pid();
        signal("STOP", &[pm]);
        let children = children_of(pm);
        signal("STOP", &children);
        let mut all = children;
        all.push(pm);
        self.set_state(State::Paused(all));
    }

    /// SIGCONT to every process [`PgCluster::pause`] stopped (a no-op unless paused).
    pub fn resume(&self) {
        if let State::Paused(pids) = self.state() {
            signal("CONT", &pids);
            self.set_state(State::Running);
        }
    }

    /// Promotes a standby to primary; returns once it accepts writes.
    pub fn promote(&self) {
        run(
            self.pg_ctl(&["-w", "-t", "60", "promote"]),
            "pg_ctl promote",
            Some(&self.log()),
        );
    }

    /// Sets a server setting with `ALTER SYSTEM` (kept in this cluster's data folder, not in a
    /// standby copied before) and reloads the configuration.
    pub fn configure(&self, name: &str, value: &str) {
        self.psql("postgres", &format!("ALTER SYSTEM SET {name} = '{value}'"));
        self.psql("postgres", "SELECT pg_reload_conf()");
    }

    /// Runs SQL through psql (as the `portal` superuser); returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(bin("psql"))
            .args(["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"])
            .args(["-d", &self.url(db), "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?} on port {}: {}",
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until a standby streams synchronously from this primary.
    pub fn wait_for_sync_standby(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = self.psql(
                "postgres",
                "SELECT string_agg(sync_state, ',') FROM pg_stat_replication WHERE state = 'streaming'",
            );
            if state.split(',').any(|s| s == "sync") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no synchronous standby after 30 s (pg_stat_replication: {state:?})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the server's log, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.resume();
        if self.state() != State::Stopped {
            let _ = self
                .pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(sig: &str, pids: &[i32]) {
    if pids.is_empty() {
        return;
    }
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(|p| p.to_string()))
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pids:?}");
}

/// The processes whose parent is `parent` (from /proc).
fn children_of(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}
