//! Several portal instances as operators run them: real `tchap-portal serve` processes on one
//! PostgreSQL database, behind HAProxy started from `deploy/haproxy.cfg`, with a real SMTP server
//! and Synapse. Journeys crossing instances, a first start of two instances on an empty database,
//! a rolling restart under load, a mail worker killed in the middle of a burst, and the shipped
//! HAProxy rules themselves (X-Real-IP, slow headers, `haproxy -c`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rocket::tokio::time::sleep;
use serde_json::{json, Value};
use tchap_portal::accounts::matrix::percent_encode as enc;
use tchap_portal::db::schema::{audioconf_conferences, audioconf_requests};
use tchap_portal::oidc::jwt;

use crate::common::cluster::Cluster;
use crate::common::haproxy;
use crate::common::http::{Answer, Browser};
use crate::common::matrix::{call, create_room, new_user, token_of};
use crate::common::portal::{cluster_env, secret_key, set, tail, Portal};
use crate::common::smtp::{link_in, parse, SmtpServer};
use crate::common::{csrf_token, field, unescape, TestDb};

const PASSWORD: &str = "Grappe-pass-42";
const RP: &str = "https://rp.example.gouv.fr/callback";
const VERIFIER: &str = "cluster-test-verifier-long-enough-0123456789-abcdefghijklmnop";

/// Which instance answered each step of a journey.
#[derive(Default)]
struct Trace(Vec<(String, String)>);

impl Trace {
    /// Records the step and checks its status.
    fn step(&mut self, step: &str, res: Result<Answer, String>, status: u16) -> Answer {
        let res = res.unwrap_or_else(|e| panic!("{step}: {e}"));
        assert_eq!(
            res.status,
            status,
            "{step} (served by {}): {}",
            res.server,
            res.text()
        );
        assert!(
            !res.server.is_empty(),
            "{step}: no instance named in {}",
            haproxy::SERVED_BY
        );
        self.0.push((step.to_owned(), res.server.clone()));
        res
    }

    /// Every step was answered by another instance than the step before it.
    fn assert_crossing(&self, instances: usize) {
        let shown: Vec<String> = self.0.iter().map(|(s, i)| format!("{s} → {i}")).collect();
        eprintln!("instances answering, step by step: {shown:?}");
        for pair in self.0.windows(2) {
            assert_ne!(
                pair[0].1, pair[1].1,
                "{:?} then {:?} on the same instance: {shown:#?}",
                pair[0].0, pair[1].0
            );
        }
        let servers: BTreeSet<&String> = self.0.iter().map(|(_, i)| i).collect();
        assert_eq!(servers.len(), instances, "{shown:#?}");
    }
}

/// The raw mails sent to `to` so far.
fn mails_to(smtp: &SmtpServer, to: &str) -> Vec<String> {
    smtp.messages()
        .into_iter()
        .filter(|m| {
            m.lines()
                .take_while(|l| !l.is_empty())
                .any(|l| l.starts_with("To:") && l.contains(to))
        })
        .collect()
}

/// The `n`th mail sent to `to` (1 for the first), parsed, once it arrived.
async fn mail_to(smtp: &SmtpServer, to: &str, n: usize, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(raw) = mails_to(smtp, to).get(n - 1) {
            return Some(parse(raw));
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep(Duration::from_millis(100)).await;
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn migrations_count() -> usize {
    std::fs::read_dir("migrations")
        .expect("migrations folder")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count()
}

#[rocket::async_test]
async fn two_instances_behind_haproxy_serve_each_journey_across_them() {
    let smtp = SmtpServer::start();
    let db = TestDb::new().await;
    let cluster = Cluster::start("journeys", &db.url, &smtp, 2, |_| {}).await;
    let mut t = Trace::default();

    // The login: the form from one instance, posted to the other, the session known to both.
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin [DINUM]")).await;
    let agent = cluster.browser();
    let page = t.step("login page", agent.get("/connexion?force=1").await, 200);
    let login = t.step(
        "login",
        agent
            .post_form(
                "/connexion",
                format!(
                    "csrf_token={}&identifier={}&password={}",
                    csrf_token(&page.body),
                    enc(&alice),
                    enc(PASSWORD)
                ),
            )
            .await,
        303,
    );
    assert!(login.location.is_some());
    let list = t.step("room list", agent.get("/discussions").await, 200);
    assert!(
        list.text().contains("Alice Martin"),
        "logged in on the other instance"
    );

    // A chat message: the room page from one instance, sent through the other.
    let token = token_of(&alice, PASSWORD).await;
    let room = create_room(&token, json!({"name": "Grappe", "preset": "public_chat"})).await;
    let room_path = format!("/discussions/{}", enc(&room));
    t.step("room list again", agent.get("/discussions").await, 200);
    let page = t.step("room page", agent.get(&room_path).await, 200);
    t.step(
        "send a message",
        agent
            .post_form(
                &format!("{room_path}/envoyer"),
                format!(
                    "csrf_token={}&nonce={}&message={}",
                    csrf_token(&page.body),
                    field(&page.body, "nonce"),
                    enc("Bonjour depuis deux instances")
                ),
            )
            .await,
        303,
    );
    let page = t.step("room page after sending", agent.get(&room_path).await, 200);
    assert!(page.text().contains("Bonjour depuis deux instances"));
    let history = call(
        "GET",
        &token,
        &format!("/rooms/{}/messages?dir=b&limit=20", enc(&room)),
        json!({}),
    )
    .await;
    let sent = history["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["content"]["body"] == "Bonjour depuis deux instances")
        .count();
    assert_eq!(sent, 1, "sent once: {history}");

    // Tchap Identité: authorization on one instance, consent on the other, the code exchanged and
    // the ID token checked against the JWKS as another instance publishes it, userinfo.
    let mut conn = db.conn().await;
    let (client_id, secret) =
        crate::common::confidential_client(&mut conn, "Démarches simplifiées", RP).await;
    let challenge =
        tchap_portal::crypto::b64url(&tchap_portal::crypto::sha256(VERIFIER.as_bytes()));
    let consent = t.step(
        "authorize",
        agent
            .get(&format!(
                "/authorize?response_type=code&client_id={}&redirect_uri={}&scope=openid%20email&state=st1&nonce=n1&code_challenge={challenge}&code_challenge_method=S256",
                client_id,
                enc(RP)
            ))
            .await,
        200,
    );
    let back = t.step(
        "consent",
        agent
            .post_form(
                "/authorize/consent",
                format!(
                    "csrf_token={}&authz={}&decision=approve",
                    csrf_token(&consent.body),
                    enc(&unescape(&field(&consent.body, "authz")))
                ),
            )
            .await,
        303,
    );
    let location = back.location.expect("back to the service");
    assert!(location.starts_with(RP), "{location}");
    let q = crate::oidc_flow::query(&location);
    assert_eq!(q["state"], "st1");
    let service = cluster.browser();
    let tokens = t.step(
        "token",
        service
            .send(
                service
                    .http
                    .post(service.url("/token"))
                    .basic_auth(&client_id, Some(&secret))
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(format!(
                        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={VERIFIER}",
                        enc(&q["code"]),
                        enc(RP)
                    )),
            )
            .await,
        200,
    );
    let tokens: Value = serde_json::from_str(&tokens.body).expect("token JSON");
    let jwks = t.step("jwks", service.get("/jwks.json").await, 200);
    let claims = jwt::verify(
        tokens["id_token"].as_str().expect("id_token"),
        &serde_json::from_str(&jwks.body).expect("JWKS"),
        jwt::Expect::IdToken,
    )
    .expect("the ID token verifies with the JWKS of the other instance");
    assert_eq!(claims["iss"], cluster.haproxy.url());
    assert_eq!(claims["nonce"], "n1");
    let userinfo = t.step(
        "userinfo",
        service
            .send(
                service
                    .http
                    .get(service.url("/userinfo"))
                    .bearer_auth(tokens["access_token"].as_str().expect("access_token")),
            )
            .await,
        200,
    );
    let userinfo: Value = serde_json::from_str(&userinfo.body).expect("userinfo JSON");
    assert_eq!(userinfo["sub"], claims["sub"]);

    // AudioConf: the link requested on one instance, confirmed from its mail on the other.
    let booker = cluster.browser();
    let page = t.step("booking page", booker.get("/audioconf").await, 200);
    let email = "camille.durand@grappe.gouv.fr";
    let sent = t.step(
        "booking request",
        booker
            .post_form(
                "/audioconf",
                format!(
                    "csrf_token={}&email={}&when=duration&duration=60",
                    csrf_token(&page.body),
                    enc(email)
                ),
            )
            .await,
        200,
    );
    assert!(sent.text().contains("Un lien de confirmation a été envoyé"));
    let mail = mail_to(&smtp, email, 1, Duration::from_secs(30))
        .await
        .expect("the link mail");
    let link = link_in(&mail, "/audioconf/confirmer/");
    let confirm = t.step("confirmation page", booker.get(&link).await, 200);
    let token = link.rsplit('/').next().expect("token");
    let done = t.step(
        "confirmation",
        booker
            .post_form(
                "/audioconf/confirmer",
                format!("csrf_token={}&token={token}", csrf_token(&confirm.body)),
            )
            .await,
        200,
    );
    assert!(done.text().contains("Votre audioconférence est prête"));
    let booked: i64 = audioconf_conferences::table
        .filter(audioconf_conferences::email.eq(email))
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(booked, 1);
    let details = mail_to(&smtp, email, 2, Duration::from_secs(30))
        .await
        .expect("the details mail");
    assert!(details["subject"]
        .as_str()
        .is_some_and(|s| s.starts_with("Votre audioconférence du ")));

    t.assert_crossing(2);
}

#[rocket::async_test]
async fn two_instances_started_together_on_an_empty_database_migrate_it_once_and_serve() {
    let smtp = SmtpServer::start();
    let db = TestDb::empty().await;
    // Both processes are started before either is waited for.
    let cluster = Cluster::start("empty", &db.url, &smtp, 2, |_| {}).await;
    let mut conn = db.conn().await;
    let recorded: Count = diesel::sql_query("SELECT count(*) AS n FROM __diesel_schema_migrations")
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(recorded.n as usize, migrations_count());
    // Log lines are written every 100 ms.
    sleep(Duration::from_millis(300)).await;
    let migrated: Vec<&str> = cluster
        .portals
        .iter()
        .filter(|p| p.log_text().contains("migrations applied"))
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        migrated.len(),
        1,
        "one instance applies the migrations: {migrated:?}"
    );

    let b = cluster.browser();
    let mut t = Trace::default();
    for _ in 0..2 {
        t.step("booking page", b.get("/audioconf").await, 200);
        t.step("login page", b.get("/connexion").await, 200);
    }
    t.assert_crossing(2);
}

/// What the load saw: requests made, and every failure (step, status or error, instance).
#[derive(Default)]
struct Tally {
    /// When the load started (failures say when they happened).
    started: Option<Instant>,
    requests: usize,
    failures: Vec<String>,
    servers: BTreeMap<String, usize>,
    /// Booking requests acknowledged (the page said the link was sent): their addresses.
    requested: Vec<String>,
    /// Bookings confirmed (the page showed the conference): their addresses.
    booked: Vec<String>,
}

impl Tally {
    fn record(&mut self, step: &str, res: &Result<Answer, String>, expected: u16, took: Duration) {
        self.requests += 1;
        let at = self.started.map(|s| s.elapsed()).unwrap_or_default();
        match res {
            Ok(a) if a.status == expected => {
                *self.servers.entry(a.server.clone()).or_default() += 1;
            }
            Ok(a) => self.failures.push(format!(
                "{step}: {} from {:?} after {took:?}, at {at:?}",
                a.status, a.server
            )),
            Err(e) => self
                .failures
                .push(format!("{step}: {e} after {took:?}, at {at:?}")),
        }
    }
}

async fn timed(
    tally: &Mutex<Tally>,
    step: &str,
    expected: u16,
    fut: impl std::future::Future<Output = Result<Answer, String>>,
) -> Option<Answer> {
    let started = Instant::now();
    let res = fut.await;
    let mut t = tally.lock().expect("tally");
    t.record(step, &res, expected, started.elapsed());
    res.ok().filter(|a| a.status == expected)
}

/// One booker: requests a link, waits for its mail, confirms it; again until `stop`.
async fn booker(
    cluster_url: String,
    ca: Vec<u8>,
    id: usize,
    smtp: Arc<SmtpServer>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let b = Browser::new(&cluster_url, &ca);
    let mut n = 0;
    while !AtomicBool::load(&stop, Ordering::Relaxed) {
        n += 1;
        let email = format!("agent{id}x{n}@grappe.gouv.fr");
        let Some(page) = timed(&tally, "GET /audioconf", 200, b.get("/audioconf")).await else {
            continue;
        };
        let Some(sent) = timed(
            &tally,
            "POST /audioconf",
            200,
            b.post_form(
                "/audioconf",
                format!(
                    "csrf_token={}&email={}&when=duration&duration=30",
                    csrf_token(&page.body),
                    enc(&email)
                ),
            ),
        )
        .await
        else {
            continue;
        };
        if !sent.text().contains("Un lien de confirmation a été envoyé") {
            tally
                .lock()
                .expect("tally")
                .failures
                .push(format!("POST /audioconf for {email}: no acknowledgement"));
            continue;
        }
        tally.lock().expect("tally").requested.push(email.clone());
        let Some(mail) = mail_to(&smtp, &email, 1, Duration::from_secs(60)).await else {
            tally
                .lock()
                .expect("tally")
                .failures
                .push(format!("no link mail for {email}"));
            continue;
        };
        let link = link_in(&mail, "/audioconf/confirmer/");
        let Some(confirm) = timed(&tally, "GET confirmation", 200, b.get(&link)).await else {
            continue;
        };
        let token = link.rsplit('/').next().unwrap_or_default().to_owned();
        if let Some(done) = timed(
            &tally,
            "POST confirmation",
            200,
            b.post_form(
                "/audioconf/confirmer",
                format!("csrf_token={}&token={token}", csrf_token(&confirm.body)),
            ),
        )
        .await
        {
            let mut t = tally.lock().expect("tally");
            if done.text().contains("Votre audioconférence est prête") {
                t.booked.push(email);
            } else {
                t.failures
                    .push(format!("confirmation of {email}: no conference shown"));
            }
        }
    }
}

/// One reader: pages that read the database, one after the other, until `stop`.
async fn reader(cluster_url: String, ca: Vec<u8>, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    let b = Browser::new(&cluster_url, &ca);
    while !AtomicBool::load(&stop, Ordering::Relaxed) {
        for path in [
            "/audioconf",
            "/connexion",
            "/.well-known/openid-configuration",
            "/jwks.json",
        ] {
            timed(&tally, path, 200, b.get(path)).await;
        }
    }
}

#[rocket::async_test]
async fn a_rolling_restart_under_load_fails_no_request_and_loses_no_booking() {
    let smtp = Arc::new(SmtpServer::start());
    let db = TestDb::new().await;
    let mut cluster = Cluster::start("rolling", &db.url, &smtp, 2, |_| {}).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally {
        started: Some(Instant::now()),
        ..Tally::default()
    }));
    let load_started = Instant::now();
    let url = cluster.haproxy.url();
    let ca = cluster.haproxy.ca.clone();
    let mut clients = Vec::new();
    for id in 0..3 {
        clients.push(rocket::tokio::spawn(booker(
            url.clone(),
            ca.clone(),
            id,
            smtp.clone(),
            stop.clone(),
            tally.clone(),
        )));
        clients.push(rocket::tokio::spawn(reader(
            url.clone(),
            ca.clone(),
            stop.clone(),
            tally.clone(),
        )));
    }
    sleep(Duration::from_secs(3)).await;

    // One instance at a time: SIGTERM, out of HAProxy, exited, started again, back in HAProxy.
    let mut steps = Vec::new();
    for name in ["portal1", "portal2"] {
        let started = Instant::now();
        cluster.portal(name).terminate();
        let out = cluster
            .haproxy
            .wait_status(name, "DOWN", Duration::from_secs(15))
            .await;
        let (status, stopped) = cluster
            .portal(name)
            .wait_exit(Duration::from_secs(60))
            .await;
        // Drain, then out at once: HAProxy keeps no idle connection to the instance that would
        // hold it for Rocket's whole grace (15 s; `option http-server-close`).
        let since_sigterm = started.elapsed();
        assert!(
            since_sigterm < Duration::from_secs(10),
            "{name} exited {since_sigterm:?} after SIGTERM"
        );
        assert!(status.success(), "{name} exits cleanly: {status}");
        let log = cluster.portal(name).log_text();
        let stopping: Vec<&str> = log
            .lines()
            .skip_while(|l| !l.contains("stopping"))
            .filter(|l| !l.contains("\"target\":\"request\""))
            .collect();
        eprintln!("{name} stopping: {stopping:#?}");
        // PORTAL_DRAIN_SECS, not the debug profile's 0 from Rocket.toml.
        assert!(
            cluster.portal(name).log_text().contains("\"drain_secs\":5"),
            "{name} drained for 5 s"
        );
        cluster.portal(name).start();
        cluster
            .portal(name)
            .wait_ready(Duration::from_secs(60))
            .await;
        cluster
            .haproxy
            .wait_status(name, "UP", Duration::from_secs(20))
            .await;
        steps.push(format!(
            "{name}: SIGTERM at {:?}, out of HAProxy {out:?} after, exited {stopped:?} later, back in HAProxy after {:?}",
            started - load_started,
            started.elapsed()
        ));
        sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }

    let t = std::mem::take(&mut *tally.lock().expect("tally"));
    eprintln!(
        "rolling restart: {} requests, by instance {:?}, {} link requests, {} bookings; {steps:#?}",
        t.requests,
        t.servers,
        t.requested.len(),
        t.booked.len()
    );
    assert!(t.failures.is_empty(), "failed requests: {:#?}", t.failures);
    assert!(t.requests > 100, "a real load: {} requests", t.requests);
    assert!(
        !t.booked.is_empty(),
        "bookings were made during the restart"
    );

    // Everything acknowledged is in the database. A used request's address is erased by the
    // retention job (run at each start): its conference stands for it.
    let mut conn = db.conn().await;
    let requests: Vec<Option<String>> = audioconf_requests::table
        .select(audioconf_requests::email)
        .load(&mut conn)
        .await
        .expect("requests");
    let conferences: Vec<Option<String>> = audioconf_conferences::table
        .select(audioconf_conferences::email)
        .load(&mut conn)
        .await
        .expect("conferences");
    let count = |rows: &[Option<String>], email: &str| {
        rows.iter().filter(|e| e.as_deref() == Some(email)).count()
    };
    assert!(
        requests.len() >= t.requested.len(),
        "{} request rows",
        requests.len()
    );
    let missing: Vec<&String> = t
        .requested
        .iter()
        .filter(|e| count(&requests, e) + count(&conferences, e) == 0)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged requests missing: {missing:?}"
    );
    for email in &t.booked {
        assert_eq!(count(&conferences, email), 1, "the booking of {email}");
    }
}

/// The Message-IDs of raw mails, with how many times each arrived.
fn message_ids(mails: &[String]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for m in mails {
        let id = m
            .lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("message-id"))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("a Message-ID in {m}"));
        *ids.entry(id).or_default() += 1;
    }
    ids
}

#[rocket::async_test]
async fn a_mail_worker_killed_in_a_burst_loses_no_mail_and_sends_at_most_one_twice_per_lane() {
    const MAILS: usize = 300;
    const LEASE_SECS: u64 = 3;
    // Mails sent at once per worker, each on its SMTP connection (the default, 1): a worker killed
    // between the SMTP server's acceptance and the commit marking a mail sent can send that mail
    // twice, so at most one mail per lane.
    const LANES: usize = 1;
    let smtp = SmtpServer::start();
    let db = TestDb::new().await;
    // An instance without a worker takes the bookings: the mails wait in the outbox.
    let cluster = Cluster::start("burst", &db.url, &smtp, 1, |env| {
        set(env, "PORTAL_MAIL__WORKER", "false")
    })
    .await;
    let mut tasks = Vec::new();
    for worker in 0..10 {
        // A browser each: a form's token belongs to its browser's cookie.
        let b = cluster.browser();
        tasks.push(rocket::tokio::spawn(async move {
            for i in (worker..MAILS).step_by(10) {
                let page = b.get("/audioconf").await.expect("booking page");
                let sent = b
                    .post_form(
                        "/audioconf",
                        format!(
                            "csrf_token={}&email=agent{i}%40rafale.gouv.fr&when=duration&duration=30",
                            csrf_token(&page.body)
                        ),
                    )
                    .await
                    .expect("booking request");
                assert_eq!(sent.status, 200, "{}", sent.text());
            }
        }));
    }
    for t in tasks {
        t.await.expect("queued");
    }
    assert!(smtp.messages().is_empty(), "nothing sent yet");

    // Two workers start on the burst; one is killed once mails flow.
    let key = cluster.secret_key.clone();
    let mut workers: Vec<Portal> = ["worker1", "worker2"]
        .iter()
        .map(|name| {
            let mut env = cluster_env(&db.url, &cluster.haproxy.url(), &key, smtp.port);
            // A lease must outlast three SMTP timeouts: short ones, for a short test.
            set(&mut env, "PORTAL_MAIL__SMTP_TIMEOUT_SECS", "1");
            set(&mut env, "PORTAL_MAIL__LEASE_SECS", &LEASE_SECS.to_string());
            set(
                &mut env,
                "PORTAL_MAIL__SMTP_CONNECTIONS",
                &LANES.to_string(),
            );
            Portal::new(&cluster.dir.path, name, env)
        })
        .collect();
    for w in &mut workers {
        w.start();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while smtp.messages().len() < 20 {
        for w in &mut workers {
            assert!(w.running(), "{} stopped:\n{}", w.name, tail(&w.log, 20));
        }
        assert!(Instant::now() < deadline, "the workers send nothing");
        sleep(Duration::from_millis(5)).await;
    }
    let pid = workers[0].pid().expect("worker1 runs");
    workers[0].kill();
    let at_kill = smtp.messages().len();
    // What the dead worker held (lease owner "host/pid/random"): taken over once its leases end.
    let mut conn = db.conn().await;
    let held: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM outbox WHERE status = 'pending' AND lease_owner LIKE $1",
    )
    .bind::<diesel::sql_types::Text, _>(format!("%/{pid}/%"))
    .get_result(&mut conn)
    .await
    .expect("leases");

    let deadline = Instant::now() + Duration::from_secs(90);
    let ids = loop {
        let ids = message_ids(&smtp.messages());
        if ids.len() >= MAILS || Instant::now() > deadline {
            break ids;
        }
        sleep(Duration::from_millis(200)).await;
    };
    // A little longer: a duplicate still on its way would be counted too.
    sleep(Duration::from_secs(LEASE_SECS + 1)).await;
    let mails = smtp.messages();
    let ids = if mails.len() > ids.values().sum::<usize>() {
        message_ids(&mails)
    } else {
        ids
    };
    let twice: Vec<(&String, &usize)> = ids.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "burst: {MAILS} queued, {at_kill} received when worker1 was killed holding {} leases, {} distinct received, sent twice: {twice:?}",
        held.n,
        ids.len()
    );
    assert!(held.n > 0, "worker1 was killed holding mails");
    assert_eq!(
        ids.len(),
        MAILS,
        "every mail arrived\n{}",
        tail(&workers[1].log, 20)
    );
    let unsent: Count =
        diesel::sql_query("SELECT count(*) AS n FROM outbox WHERE status <> 'sent'")
            .get_result(&mut conn)
            .await
            .expect("outbox");
    assert_eq!(unsent.n, 0, "every mail marked sent");
    assert!(
        twice.len() <= LANES && twice.iter().all(|(_, n)| **n == 2),
        "at most one mail twice per lane of the killed worker: {twice:?}"
    );
}

#[rocket::async_test]
async fn the_shipped_haproxy_configuration_is_valid_overwrites_x_real_ip_and_cuts_slow_clients() {
    let shipped = haproxy::shipped();
    // No stickiness, the client's address from the connection, health on /readyz, retries.
    for rule in [
        "balance roundrobin",
        "http-request set-header X-Real-IP %[src]",
        "http-check send meth GET uri /readyz",
        "option redispatch",
        "retries 3",
        "timeout http-request",
        "timeout client",
        "timeout server",
        "option http-buffer-request",
        "option http-server-close",
    ] {
        assert!(shipped.contains(rule), "deploy/haproxy.cfg: {rule}");
    }
    for sticky in ["cookie ", "stick ", "balance source", "X-Forwarded-For"] {
        assert!(!shipped.contains(sticky), "deploy/haproxy.cfg: {sticky}");
    }
    // `haproxy -c` on the file as shipped; only its certificate path names a file of ours.
    let dir = crate::common::portal::Workdir::new("check");
    let (pem, _) = haproxy::self_signed(&dir.path);
    let as_shipped = dir.path.join("as-shipped.cfg");
    std::fs::write(
        &as_shipped,
        shipped.replace("/etc/haproxy/certs/portail.pem", &pem.display().to_string()),
    )
    .expect("write");
    haproxy::check(&as_shipped).expect("haproxy -c accepts deploy/haproxy.cfg");

    // X-Real-IP: whatever a client sends, the portal sees the connection's address.
    let smtp = SmtpServer::start();
    let db = TestDb::new().await;
    let cluster = Cluster::start("proxy", &db.url, &smtp, 1, |_| {}).await;
    let b = cluster.browser();
    let direct = reqwest::Client::new();
    for (i, spoof) in ["", "203.0.113.9", "198.51.100.7, 203.0.113.9"]
        .iter()
        .enumerate()
    {
        let page = b.get("/audioconf").await.expect("page");
        let mut req = b
            .http
            .post(b.url("/audioconf"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!(
                "csrf_token={}&email=ip{i}%40grappe.gouv.fr&when=duration&duration=30",
                csrf_token(&page.body)
            ));
        if !spoof.is_empty() {
            req = req
                .header("X-Real-IP", *spoof)
                .header("X-Real-IP", "192.0.2.1");
        }
        let res = b.send(req).await.expect("booking request");
        assert_eq!(res.status, 200, "{}", res.text());
    }
    // Control: straight to the instance from a trusted address, the header is believed.
    let portal_url = cluster.portals[0].url();
    let page = direct
        .get(format!("{portal_url}/audioconf"))
        .send()
        .await
        .expect("page");
    let cookies: Vec<String> = page
        .headers()
        .get_all("Set-Cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect();
    let body = page.text().await.expect("body");
    let res = direct
        .post(format!("{portal_url}/audioconf"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Cookie", cookies.join("; "))
        .header("X-Real-IP", "203.0.113.9")
        .body(format!(
            "csrf_token={}&email=ip9%40grappe.gouv.fr&when=duration&duration=30",
            csrf_token(&body)
        ))
        .send()
        .await
        .expect("direct request");
    assert_eq!(res.status(), 200);
    let mut conn = db.conn().await;
    let rows: Vec<(Option<String>, Vec<u8>)> = audioconf_requests::table
        .select((audioconf_requests::email, audioconf_requests::ip_hmac))
        .load(&mut conn)
        .await
        .expect("requests");
    let ip_of = |email: &str| {
        rows.iter()
            .find(|(e, _)| e.as_deref() == Some(email))
            .map(|(_, ip)| ip.clone())
            .unwrap_or_else(|| panic!("the request of {email}"))
    };
    let through_haproxy = ip_of("ip0@grappe.gouv.fr");
    assert_eq!(
        ip_of("ip1@grappe.gouv.fr"),
        through_haproxy,
        "X-Real-IP overwritten"
    );
    assert_eq!(
        ip_of("ip2@grappe.gouv.fr"),
        through_haproxy,
        "every X-Real-IP overwritten"
    );
    assert_ne!(
        ip_of("ip9@grappe.gouv.fr"),
        through_haproxy,
        "control: a believed header counts"
    );

    // Headers that never end, and a body that stops coming: HAProxy answers 408 after
    // `timeout http-request` (the body too, with `option http-buffer-request`); the portal never
    // holds the connection.
    let limit = shipped
        .lines()
        .find_map(|l| l.trim().strip_prefix("timeout http-request "))
        .and_then(|v| v.trim().strip_suffix('s'))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("timeout http-request in seconds");
    let port = cluster.haproxy.site.http_port;
    let slow = |start: &'static [u8]| {
        std::thread::spawn(move || {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(limit + 10)))
                .expect("timeout");
            let started = Instant::now();
            conn.write_all(start).expect("write");
            let mut answer = String::new();
            let _ = conn.read_to_string(&mut answer);
            (answer, started.elapsed())
        })
    };
    let headers = slow(b"GET /audioconf HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: sl");
    let body = slow(
        b"POST /audioconf HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\ncsrf_token=",
    );
    for (what, slow) in [("headers", headers), ("body", body)] {
        let (answer, took) = slow.join().expect("slow client");
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "slow {what}: {answer:?} after {took:?}"
        );
        assert!(
            took >= Duration::from_secs(limit - 1) && took < Duration::from_secs(limit + 3),
            "slow {what} cut after {took:?}, timeout {limit} s"
        );
    }

    // Plain HTTP is sent to HTTPS.
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!(
            "http://127.0.0.1:{}/audioconf",
            cluster.haproxy.site.http_port
        ))
        .send()
        .await
        .expect("http");
    assert_eq!(res.status(), 301);
}

/// The settings of `deploy/tchap-portal.env.example` as systemd reads them (`KEY=VALUE`, single
/// quotes around a value removed, comments skipped).
fn shipped_env() -> Vec<(String, String)> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tchap-portal.env.example");
    std::fs::read_to_string(path)
        .expect("deploy/tchap-portal.env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[rocket::async_test]
async fn the_shipped_environment_file_and_unit_start_an_instance_in_release() {
    // The unit runs the release profile with the environment file: every variable of the example
    // must be a setting the portal knows, and together they must pass release's checks. Only the
    // machine's addresses, the database and the secret (empty in the example) are ours.
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tchap-portal.service"),
    )
    .expect("deploy/tchap-portal.service");
    for line in [
        "Environment=ROCKET_PROFILE=release",
        "EnvironmentFile=/etc/tchap-portal/portal.env",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "User=tchap-portal",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "tchap-portal.service: {line}"
        );
    }
    let db = TestDb::new().await;
    let mut env = shipped_env();
    let names: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
    for needed in [
        "PORTAL_SECRET_KEY",
        "DATABASE_URL",
        "PORTAL_PUBLIC_URL",
        "PORTAL_PROXY__TRUSTED",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "the example sets {needed}"
        );
    }
    set(&mut env, "ROCKET_PROFILE", "release");
    set(&mut env, "DATABASE_URL", &db.url);
    set(&mut env, "PORTAL_SECRET_KEY", &secret_key());
    set(&mut env, "PORTAL_MAIL__SMTP_HOST", "127.0.0.1");
    env.retain(|(k, _)| k != "ROCKET_ADDRESS" && k != "ROCKET_PORT");
    let dir = crate::common::portal::Workdir::new("release");
    let mut portal = Portal::new(&dir.path, "release", env);
    portal.start();
    portal.wait_ready(Duration::from_secs(60)).await;
    // Release answers with HSTS.
    let res = reqwest::Client::new()
        .get(format!("{}/connexion", portal.url()))
        .send()
        .await
        .expect("page");
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("strict-transport-security"));
    res.text().await.expect("the page, read to its end");
    // Nothing in flight: the drain (5 s in release), then the exit.
    portal.terminate();
    let (status, took) = portal.wait_exit(Duration::from_secs(60)).await;
    eprintln!("release instance: stopped {took:?} after SIGTERM");
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(8),
        "drained 5 s, then stopped: {took:?}"
    );
}
