//! HAProxy (IT_HAPROXY, Debian's package, installed by scripts/test) in front of portal
//! instances, run from the operators' own `deploy/haproxy.cfg`: [`test_config`] replaces only what
//! belongs to a machine (the listening addresses, the certificate, the servers, the log target, the
//! daemon, chroot and connection limit of `global`) and panics when a rule it expects is gone, so the shipped
//! rules (X-Real-IP, timeouts, health checks, retries, no stickiness) are the ones under test.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rocket::tokio::time::sleep;

use super::portal::tail;

/// The response header the test configuration adds: which server answered (test only).
pub const SERVED_BY: &str = "X-Served-By";

pub fn shipped_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy.cfg")
}

pub fn shipped() -> String {
    std::fs::read_to_string(shipped_path()).expect("deploy/haproxy.cfg")
}

/// Where a test HAProxy listens and keeps its files.
pub struct Site {
    pub https_port: u16,
    pub http_port: u16,
    /// Certificate and key, PEM, as `crt` wants them.
    pub pem: PathBuf,
    pub socket: PathBuf,
}

/// `deploy/haproxy.cfg` made to run on this machine in front of `servers` (name, port on
/// 127.0.0.1). Every replacement must apply; the rest is kept word for word.
pub fn test_config(shipped: &str, site: &Site, servers: &[(String, u16)]) -> String {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut applied: HashMap<&'static str, usize> = HashMap::new();
    for line in shipped.lines() {
        let t = line.trim();
        if !line.starts_with(char::is_whitespace) && !t.is_empty() && !t.starts_with('#') {
            section = t.to_owned();
            out.push(line.to_owned());
            if section == "backend portal" {
                // Test only: name the instance that answered, to show requests crossing them.
                out.push(format!("    http-response set-header {SERVED_BY} %s"));
                bump(&mut applied, "backend");
            }
            continue;
        }
        let words: Vec<&str> = t.split_whitespace().collect();
        match (section.as_str(), words.as_slice()) {
            ("global", ["log", "/dev/log", ..]) => {
                out.push("    log stdout format raw local0".into());
                bump(&mut applied, "log");
            }
            ("global", ["chroot" | "user" | "group" | "daemon", ..]) => {
                bump(&mut applied, "process")
            }
            // Twice as many file descriptors as connections: more than a test machine may grant.
            ("global", ["maxconn", _]) => {
                out.push("    maxconn 2000".into());
                bump(&mut applied, "maxconn");
            }
            ("global", ["stats", "socket", _, rest @ ..]) => {
                out.push(format!(
                    "    stats socket {} {}",
                    site.socket.display(),
                    rest.join(" ")
                ));
                bump(&mut applied, "socket");
            }
            ("frontend portal", ["bind", ":80"]) => {
                out.push(format!("    bind 127.0.0.1:{}", site.http_port));
                bump(&mut applied, "bind http");
            }
            ("frontend portal", ["bind", ":443", "ssl", "crt", _, rest @ ..]) => {
                out.push(format!(
                    "    bind 127.0.0.1:{} ssl crt {} {}",
                    site.https_port,
                    site.pem.display(),
                    rest.join(" ")
                ));
                bump(&mut applied, "bind https");
            }
            ("backend portal", ["server", ..]) => {
                if !applied.contains_key("servers") {
                    for (name, port) in servers {
                        out.push(format!("    server {name} 127.0.0.1:{port}"));
                    }
                }
                bump(&mut applied, "servers");
            }
            _ => out.push(line.to_owned()),
        }
    }
    for rule in [
        "log",
        "process",
        "maxconn",
        "socket",
        "bind http",
        "bind https",
        "backend",
        "servers",
    ] {
        assert!(
            applied.contains_key(rule),
            "deploy/haproxy.cfg changed: no line for the test's {rule:?} replacement (tests/it/common/haproxy.rs)"
        );
    }
    out.join("\n") + "\n"
}

fn bump(applied: &mut HashMap<&'static str, usize>, rule: &'static str) {
    *applied.entry(rule).or_default() += 1;
}

/// A self-signed certificate for 127.0.0.1 (openssl's command): (key + certificate PEM for
/// HAProxy, certificate PEM for clients to trust).
pub fn self_signed(dir: &Path) -> (PathBuf, Vec<u8>) {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert_pem = std::fs::read(&cert).expect("cert");
    let mut pem = cert_pem.clone();
    pem.extend(std::fs::read(&key).expect("key"));
    let path = dir.join("portail.pem");
    std::fs::write(&path, pem).expect("pem");
    (path, cert_pem)
}

/// `haproxy -c -f path`: Ok, or HAProxy's complaint.
pub fn check(path: &Path) -> Result<(), String> {
    let out = Command::new(super::env("IT_HAPROXY"))
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub struct HaProxy {
    pub site: Site,
    /// The certificate clients trust (PEM).
    pub ca: Vec<u8>,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl HaProxy {
    /// HAProxy from deploy/haproxy.cfg on `https_port` in front of `servers`, its files in
    /// `dir`; returns once it listens.
    pub fn start(dir: &Path, https_port: u16, servers: &[(String, u16)]) -> HaProxy {
        let (pem, ca) = self_signed(dir);
        let site = Site {
            https_port,
            http_port: super::free_port(),
            pem,
            socket: dir.join("haproxy.sock"),
        };
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, test_config(&shipped(), &site, servers)).expect("config");
        if let Err(e) = check(&config) {
            panic!("haproxy -c refuses {}:\n{e}", config.display());
        }
        let log = dir.join("haproxy.log");
        let file = std::fs::File::create(&log).expect("haproxy log");
        let child = Command::new(super::env("IT_HAPROXY"))
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start haproxy");
        let mut h = HaProxy {
            site,
            ca,
            config,
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", h.site.https_port)).is_err()
            || !h.site.socket.exists()
        {
            let exited = h.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "HAProxy did not start:\n{}",
                tail(&h.log, 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        h
    }

    /// The address agents use.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.site.https_port)
    }

    /// One command on the runtime API (the `stats socket`), e.g. "show stat".
    pub fn command(&self, command: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(&self.site.socket)
            .expect("HAProxy's stats socket");
        s.write_all(format!("{command}\n").as_bytes())
            .expect("command");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("answer");
        out
    }

    /// `show stat` of the backend's servers: server name → its columns by name (status, wretr,
    /// wredis, hrsp_5xx, …).
    pub fn servers(&self) -> HashMap<String, HashMap<String, String>> {
        let text = self.command("show stat");
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .map(str::to_owned)
            .collect();
        lines
            .map(|l| {
                header
                    .iter()
                    .cloned()
                    .zip(l.split(',').map(str::to_owned))
                    .collect::<HashMap<_, _>>()
            })
            .filter(|row| {
                row.get("pxname").map(String::as_str) == Some("portal")
                    && !matches!(
                        row.get("svname").map(String::as_str),
                        Some("BACKEND" | "FRONTEND") | None
                    )
            })
            .map(|row| (row["svname"].clone(), row))
            .collect()
    }

    /// The health of `server` as HAProxy sees it: "UP", "DOWN", "UP 1/2", …
    pub fn status(&self, server: &str) -> String {
        self.servers()
            .get(server)
            .and_then(|r| r.get("status").cloned())
            .unwrap_or_default()
    }

    /// Waits until HAProxy's health checks say `server` is `state` ("UP" or "DOWN" exactly).
    pub async fn wait_status(&self, server: &str, state: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let now = self.status(server);
            if now == state {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{server} still {now:?} after {within:?}, not {state}:\n{}",
                tail(&self.log, 20)
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- HAProxy ({}) last lines:\n{}",
                self.log.display(),
                tail(&self.log, 30)
            );
        }
    }
}
