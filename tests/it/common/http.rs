//! A browser over real HTTP (reqwest, which the portal already depends on, without its cookie
//! feature): keeps the cookies the portal sets, follows no redirect by itself, and tells which
//! instance answered (HAProxy's test-only `X-Served-By`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::haproxy::SERVED_BY;

pub struct Browser {
    pub http: reqwest::Client,
    base: String,
    jar: Mutex<BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    /// The instance that answered ("" when HAProxy answered itself).
    pub server: String,
    /// The body as sent (entities kept).
    pub body: String,
}

impl Answer {
    /// The body with Tera's entities decoded, as a reader sees the text.
    pub fn text(&self) -> String {
        super::unescape(&self.body)
    }
}

/// An HTTP client trusting `ca` (PEM), without redirects, every request bounded by 60 s (a hang
/// is a failure, not a stuck test).
pub fn client(ca: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca).expect("certificate"))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        // Like a browser, close an idle connection before HAProxy does (`timeout http-keep-alive`
        // 10 s), rather than race it with a new request.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

impl Browser {
    pub fn new(base: &str, ca: &[u8]) -> Browser {
        Browser {
            http: client(ca),
            base: base.trim_end_matches('/').to_owned(),
            jar: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Result<Answer, String> {
        self.send(self.http.get(self.url(path))).await
    }

    /// A form POST (`application/x-www-form-urlencoded`).
    pub async fn post_form(&self, path: &str, body: String) -> Result<Answer, String> {
        self.send(
            self.http
                .post(self.url(path))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
    }

    /// Sends with this browser's cookies and keeps the ones the answer sets.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Answer, String> {
        let cookie = {
            let jar = self.jar.lock().expect("jar");
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let req = if cookie.is_empty() {
            req
        } else {
            req.header("Cookie", cookie)
        };
        let res = req.send().await.map_err(|e| format!("{e:?}"))?;
        {
            let mut jar = self.jar.lock().expect("jar");
            for set in res.headers().get_all("Set-Cookie") {
                let Ok(set) = set.to_str() else { continue };
                let mut parts = set.split(';');
                let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                    continue;
                };
                let expired = parts.any(|a| {
                    let a = a.trim().to_ascii_lowercase();
                    a == "max-age=0" || a.starts_with("max-age=-") || a.contains("1970")
                });
                if expired || value.is_empty() {
                    jar.remove(name.trim());
                } else {
                    jar.insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
        }
        let status = res.status().as_u16();
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let location = header("Location");
        let server = header(SERVED_BY).unwrap_or_default();
        let body = res.text().await.map_err(|e| format!("{e:?}"))?;
        Ok(Answer {
            status,
            location,
            server,
            body,
        })
    }
}
