//! The portal as operators run it: the `tchap-portal serve` binary (IT_PORTAL_BIN, built by
//! scripts/test) as a real process on a free port, configured through its environment like
//! scripts/run does, started, stopped with SIGTERM (graceful) or SIGKILL, and started again.
//! Each process writes its output to a log file in the cluster's folder; when a test fails, the
//! tail of every log is printed.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rocket::tokio::time::sleep;

/// A folder for a cluster's logs and files: kept (and printed) when the test fails, removed
/// otherwise.
pub struct Workdir {
    pub path: PathBuf,
}

impl Workdir {
    pub fn new(tag: &str) -> Workdir {
        let path = std::env::temp_dir().join(format!(
            "tchap-cluster-{tag}-{}",
            super::matrix::random_tag()
        ));
        std::fs::create_dir_all(&path).expect("cluster folder");
        Workdir { path }
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One portal process. Its settings are kept, so [`Portal::start`] after a stop runs the same
/// instance again (same port, same log, appended).
pub struct Portal {
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Portal {
    /// An instance named `name` whose log goes to `dir/<name>.log`, with `env` (DATABASE_URL,
    /// PORTAL_*, …) on top of ROCKET_ADDRESS/ROCKET_PORT; not started yet.
    pub fn new(dir: &Path, name: &str, env: Vec<(String, String)>) -> Portal {
        Portal {
            name: name.to_owned(),
            port: super::free_port(),
            log: dir.join(format!("{name}.log")),
            env,
            child: None,
        }
    }

    /// Starts the process (without waiting for it to be ready). Only the variables given are set
    /// (and PATH, HOME): a PORTAL_* variable of the test's own environment would be an unknown
    /// setting, or a different one.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("portal log");
        let mut cmd = Command::new(super::env("IT_PORTAL_BIN"));
        cmd.arg("serve")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("ROCKET_ADDRESS", "127.0.0.1")
            .env("ROCKET_PORT", self.port.to_string())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start tchap-portal"));
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Waits until `/readyz` answers 200 (panics, with the log's tail, if the process exits or
    /// `within` passes).
    pub async fn wait_ready(&mut self, within: Duration) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(res) = http.get(format!("{}/readyz", self.url())).send().await {
                if res.status() == 200 {
                    return;
                }
            }
            if !self.running() {
                panic!(
                    "{} exited before it was ready:\n{}",
                    self.name,
                    tail(&self.log, 40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {within:?}:\n{}",
                self.name,
                tail(&self.log, 40)
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM: the graceful stop a service manager asks for.
    pub fn terminate(&mut self) {
        let pid = self.pid().expect("a running instance");
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM {pid}");
    }

    /// Waits for the process to exit by itself; returns its status and how long it took.
    pub async fn wait_exit(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let child = self.child.as_mut().expect("a started instance");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "{} still running {within:?} after it was asked to stop:\n{}",
                self.name,
                tail(&self.log, 40)
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: a crash, nothing finishes.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} ({}) last lines:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
    }
}

/// The environment of an instance of a cluster: its database, the default homeserver (the test
/// Synapse), a mail worker sending to `smtp_port`, HAProxy on loopback trusted for X-Real-IP,
/// `public_url` as the address agents use, and `secret_key` shared by every instance.
pub fn cluster_env(
    database_url: &str,
    public_url: &str,
    secret_key: &str,
    smtp_port: u16,
) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url.to_owned()),
        ("PORTAL_PUBLIC_URL", public_url.to_owned()),
        // Release's drain (debug builds stop at once): HAProxy's checks (2 × 1 s) take a stopping
        // instance out before it stops listening.
        ("PORTAL_DRAIN_SECS", "5".to_owned()),
        ("PORTAL_SECRET_KEY", secret_key.to_owned()),
        ("PORTAL_PROXY__TRUSTED", r#"["127.0.0.1"]"#.to_owned()),
        ("PORTAL_MATRIX__HOMESERVER", super::matrix::homeserver()),
        ("PORTAL_DB__POOL_SIZE", "6".to_owned()),
        ("PORTAL_MAIL__WORKER", "true".to_owned()),
        ("PORTAL_MAIL__TRANSPORT", "smtp".to_owned()),
        ("PORTAL_MAIL__SMTP_HOST", "127.0.0.1".to_owned()),
        ("PORTAL_MAIL__SMTP_PORT", smtp_port.to_string()),
        ("PORTAL_MAIL__SMTP_SECURITY", "none".to_owned()),
        ("PORTAL_MAIL__SMTP_TIMEOUT_SECS", "5".to_owned()),
        ("PORTAL_MAIL__POLL_SECS", "1".to_owned()),
        ("PORTAL_MAIL__RETRY_BASE_SECS", "1".to_owned()),
        (
            "PORTAL_AUDIOCONF__NUMBERS",
            r#"["+33189000000"]"#.to_owned(),
        ),
        // Every test client comes from 127.0.0.1: the per-address limit would stop a load.
        (
            "PORTAL_AUDIOCONF__MAX_REQUESTS_PER_IP",
            "1000000".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Sets (or replaces) `key` in an environment list.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
}

/// A fresh secret key for a cluster (base64 of 32 random bytes, like `openssl rand -base64 32`).
pub fn secret_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).expect("random bytes");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
