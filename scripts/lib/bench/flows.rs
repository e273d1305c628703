//! Load driver of `scripts/bench` for what wrk cannot do: whole OpenID Connect authorization-code
//! flows, each one `authorize` (a logged-in session whose consent is remembered) → code →
//! `token` (client_secret_basic, PKCE S256) → `userinfo`, by N clients at once for a fixed time.
//! The same driver runs against the portal and against the peer (node oidc-provider): endpoints
//! come from discovery. Before measuring, one session is made the way a browser would: the login
//! form is filled when the provider shows one, the consent form approved; then every client
//! shares that session's cookies.
//!
//! Usage: bench-flows ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI IDENTIFIER PASSWORD
//!        CLIENTS WARMUP_SECS SECS
//! Prints one JSON line: {"flows", "secs", "per_sec", "p50_ms", "p99_ms", "errors"}; with
//! CLIENTS = 0, makes one flow and prints {"access_token"} (for the userinfo load).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Target {
    client: reqwest::Client,
    authorize: String,
    token: String,
    userinfo: String,
    client_id: String,
    secret: String,
    redirect: String,
    /// The issuer as discovery names it, and the address it is reached at here (they differ when
    /// the portal runs with its release settings: an https:// public URL, served on loopback).
    public: String,
    base: String,
    cookies: Mutex<BTreeMap<String, String>>,
}

fn arg(n: usize) -> String {
    std::env::args()
        .nth(n)
        .unwrap_or_else(|| panic!("argument {n} missing (see the usage at the top of flows.rs)"))
}

fn enc(s: &str) -> String {
    tchap_portal::accounts::matrix::percent_encode(s)
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#x2F;", "/")
        .replace("&amp;", "&")
}

/// The hidden fields of the first form posting to `action`, and that form's absolute URL.
fn hidden_fields(html: &str, action: &str) -> Option<Vec<(String, String)>> {
    let start = html.find(&format!("action=\"{action}\""))?;
    let form = &html[start
        ..html[start..]
            .find("</form>")
            .map_or(html.len(), |e| start + e)];
    let attr = |tag: &str, name: &str| {
        let key = format!("{name}=\"");
        tag.find(&key).map(|i| {
            let rest = &tag[i + key.len()..];
            unescape(&rest[..rest.find('"').unwrap_or(rest.len())])
        })
    };
    Some(
        form.split("<input")
            .skip(1)
            .filter(|tag| tag.contains("type=\"hidden\""))
            .filter_map(|tag| Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default())))
            .collect(),
    )
}

impl Target {
    fn cookie_header(&self) -> String {
        let jar = self.cookies.lock().expect("jar");
        jar.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&self, res: &reqwest::Response) {
        let mut jar = self.cookies.lock().expect("jar");
        for c in res.headers().get_all(SET_COOKIE) {
            let Ok(c) = c.to_str() else { continue };
            let pair = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                jar.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
    }

    fn absolute(&self, base: &str, location: &str) -> String {
        if let Some(path) = location.strip_prefix(&self.public) {
            format!("{}{path}", self.base)
        } else if location.starts_with("http") {
            location.to_owned()
        } else {
            let origin: String = base.split('/').take(3).collect::<Vec<_>>().join("/");
            format!("{origin}{location}")
        }
    }

    /// GET `url` with the session's cookies, following redirects on the provider until the
    /// redirect URI; answers the code. With `setup`, logs in and approves when asked.
    async fn code(&self, challenge: &str, setup: Option<(&str, &str)>) -> Result<String, Error> {
        let mut url = format!(
            "{}?response_type=code&client_id={}&redirect_uri={}&scope=openid%20email%20profile\
             &state=bench-state&nonce=bench-nonce&code_challenge={challenge}&code_challenge_method=S256",
            self.authorize,
            enc(&self.client_id),
            enc(&self.redirect)
        );
        let mut form: Option<Vec<(String, String)>> = None;
        for _ in 0..12 {
            let req = match form.take() {
                Some(fields) => self.client.post(&url).form(&fields),
                None => self.client.get(&url),
            };
            let res = req.header(COOKIE, self.cookie_header()).send().await?;
            if setup.is_some() {
                self.keep_cookies(&res);
            }
            if let Some(loc) = res.headers().get(LOCATION) {
                let next = self.absolute(&url, loc.to_str()?);
                if let Some(query) = next.strip_prefix(&format!("{}?", self.redirect)) {
                    return query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("code="))
                        .map(tchap_portal::oidc::token::url_decode)
                        .ok_or_else(|| format!("no code in {next}").into());
                }
                url = next;
                continue;
            }
            let status = res.status();
            let page = res.text().await?;
            let Some((identifier, password)) = setup else {
                return Err(format!("{status} at {url} (consent not remembered?)").into());
            };
            // The portal's login form, then its consent form.
            if let Some(mut fields) = hidden_fields(&page, "/connexion") {
                fields.push(("identifier".into(), identifier.into()));
                fields.push(("password".into(), password.into()));
                url = self.absolute(&url, "/connexion");
                form = Some(fields);
            } else if let Some(mut fields) = hidden_fields(&page, "/authorize/consent") {
                fields.push(("decision".into(), "approve".into()));
                url = self.absolute(&url, "/authorize/consent");
                form = Some(fields);
            } else {
                return Err(format!("{status} at {url}: no form to go on with").into());
            }
        }
        Err("too many redirects".into())
    }

    /// One whole flow; answers its access token, or an error when any step fails.
    async fn flow(&self, verifier: &str, challenge: &str) -> Result<String, Error> {
        let code = self.code(challenge, None).await?;
        let res = self
            .client
            .post(&self.token)
            .basic_auth(enc(&self.client_id), Some(enc(&self.secret)))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &self.redirect),
                ("code_verifier", verifier),
            ])
            .send()
            .await?;
        if !res.status().is_success() {
            return Err(format!("token: {} {}", res.status(), res.text().await?).into());
        }
        let tokens: Value = res.json().await?;
        let access = tokens["access_token"]
            .as_str()
            .ok_or("no access token")?
            .to_owned();
        let res = self
            .client
            .get(&self.userinfo)
            .bearer_auth(&access)
            .send()
            .await?;
        if !res.status().is_success() {
            return Err(format!("userinfo: {}", res.status()).into());
        }
        let info: Value = res.json().await?;
        info["sub"].as_str().ok_or("no sub in userinfo")?;
        Ok(access)
    }
}

fn main() -> Result<(), Error> {
    let runtime = rocket::tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Error> {
    let issuer = arg(1);
    let clients: usize = arg(7).parse()?;
    let warmup = Duration::from_secs(arg(8).parse()?);
    let secs = Duration::from_secs(arg(9).parse()?);
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .pool_max_idle_per_host(clients * 2)
        .build()?;
    let discovery: Value = client
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await?
        .json()
        .await?;
    let public = discovery["issuer"].as_str().ok_or("no issuer")?.to_owned();
    let endpoint = |k: &str| -> Result<String, Error> {
        let url = discovery[k].as_str().ok_or(format!("no {k}"))?;
        Ok(match url.strip_prefix(&public) {
            Some(path) => format!("{issuer}{path}"),
            None => url.to_owned(),
        })
    };
    let target = Arc::new(Target {
        client,
        authorize: endpoint("authorization_endpoint")?,
        token: endpoint("token_endpoint")?,
        userinfo: endpoint("userinfo_endpoint")?,
        client_id: arg(2),
        secret: arg(3),
        redirect: arg(4),
        public: public.clone(),
        base: issuer.clone(),
        cookies: Mutex::new(BTreeMap::new()),
    });
    let verifier = tchap_portal::crypto::b64url(&tchap_portal::crypto::random_bytes(32)?);
    let challenge =
        tchap_portal::crypto::b64url(&tchap_portal::crypto::sha256(verifier.as_bytes()));
    let (identifier, password) = (arg(5), arg(6));
    // The session and the remembered consent, then one whole flow to check it all works.
    target
        .code(&challenge, Some((&identifier, &password)))
        .await?;
    let access = target.flow(&verifier, &challenge).await?;
    if clients == 0 {
        // Only an access token was asked for (userinfo is measured with wrk).
        println!("{}", json!({ "access_token": access }));
        return Ok(());
    }

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (target, measuring, stop, errors) = (
            target.clone(),
            measuring.clone(),
            stop.clone(),
            errors.clone(),
        );
        let (verifier, challenge) = (verifier.clone(), challenge.clone());
        tasks.push(rocket::tokio::spawn(async move {
            let mut times = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = target.flow(&verifier, &challenge).await;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    match ok {
                        Ok(_) => times.push(t.elapsed()),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("flow failed: {e}");
                            }
                        }
                    }
                }
            }
            times
        }));
    }
    rocket::tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    rocket::tokio::time::sleep(secs).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await?);
    }
    times.sort();
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        json!({
            "flows": times.len(),
            "secs": elapsed,
            "per_sec": times.len() as f64 / elapsed,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "errors": errors.load(Ordering::Relaxed),
        })
    );
    Ok(())
}
