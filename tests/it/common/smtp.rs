//! A real SMTP server over TCP (aiosmtpd from the test virtualenv) that keeps mail in a Maildir.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SmtpServer {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        let dir = std::env::temp_dir().join(format!("tchap-smtp-{}", super::free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = SmtpServer {
            port: super::free_port(),
            dir,
            child: None,
        };
        s.restart();
        s
    }

    /// Starts it (again) on the same port and folder.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(super::env("IT_PYTHON"))
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{}", self.port),
            ])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every mail received so far, raw.
    /// The mails received, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut found = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) {
                for e in entries.flatten() {
                    let modified = e.metadata().and_then(|m| m.modified()).ok();
                    if let Ok(s) = std::fs::read_to_string(e.path()) {
                        found.push((modified, e.file_name(), s));
                    }
                }
            }
        }
        found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        found.into_iter().map(|(_, _, s)| s).collect()
    }

    /// Waits for `n` mails (the worker sends in the background).
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.messages();
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A mail as its reader sees it, decoded by Python's standard `email` package (a real MIME
/// parser): {"subject", "to", "text", "html", "attachments": [{"filename", "content_type", "body"}]}.
pub fn parse(raw: &str) -> serde_json::Value {
    const SCRIPT: &str = r#"
import sys, json, email
from email import policy
m = email.message_from_string(sys.stdin.read(), policy=policy.default)
out = {"subject": str(m["subject"]), "to": str(m["to"]), "text": "", "html": "", "attachments": []}
for part in m.walk():
    if part.is_multipart():
        continue
    if part.get_filename():
        out["attachments"].append({"filename": part.get_filename(), "content_type": part.get_content_type(),
                                   "body": part.get_payload(decode=True).decode("utf-8")})
    elif part.get_content_type() == "text/plain":
        out["text"] = part.get_content()
    elif part.get_content_type() == "text/html":
        out["html"] = part.get_content()
print(json.dumps(out))
"#;
    use std::io::Write;
    let mut child = Command::new(super::env("IT_PYTHON"))
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(raw.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parse mail");
    serde_json::from_slice(&out.stdout).expect("parsed mail")
}

/// The path of the link starting with `path` in a parsed mail's text part.
pub fn link_in(mail: &serde_json::Value, path: &str) -> String {
    let text = mail["text"].as_str().expect("text part");
    let start = text.find(path).expect("the link in the mail");
    let token = text[start + path.len()..]
        .split_whitespace()
        .next()
        .expect("token");
    format!("{path}{token}")
}
