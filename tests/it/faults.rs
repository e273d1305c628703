//! PostgreSQL failing under a bounded load, each fault injected for real on a private cluster
//! (common/pg.rs): a restart, a stall (SIGSTOP of every server process), the loss of the primary
//! (its synchronous standby promoted) and the loss of the synchronous standby. Asserted is what
//! an agent or an operator would notice: answers are the page's own or 503, never a 500 or a
//! hang; none slower than the statement timeout plus a margin; the portal recovers without a
//! restart; every booking the agent was told about is stored and its mail delivered.
//!
//! The load: two portal instances on the cluster, an anonymous browser loading the booking form,
//! a logged-in agent loading "Mes services connectés" (a session lookup and a query), and three
//! browsers posting the booking form (a request row and its mail, in one transaction).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocket::figment::Figment;
use rocket::http::Status;
use rocket::local::asynchronous::Client;
use rocket::tokio;
use tchap_portal::accounts::matrix::percent_encode as enc;

use crate::audioconf::NUMBER;
use crate::common::pg::{PgCluster, DB};
use crate::common::smtp::SmtpServer;

/// `portal.db.statement_timeout_secs` in these tests.
const STATEMENT_TIMEOUT_SECS: u64 = 2;
/// No answer may take longer: the statement timeout plus a margin for the rest of the request.
const LIMIT: Duration = Duration::from_secs(STATEMENT_TIMEOUT_SECS + 2);
/// A request unanswered after this long is recorded as hung, and the load goes on.
const HUNG: Duration = Duration::from_secs(20);
/// Load before the fault, and after the fault ends.
const BEFORE: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(6);
/// Requests started this long after the fault ended must all succeed.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the stalled server stays stopped (longer than the statement timeout).
const STALL: Duration = Duration::from_secs(5);
/// How long the synchronous standby stays down: long enough for a booking to start and be
/// answered after the first ones (in flight when it went) were.
const STANDBY_DOWN: Duration = Duration::from_secs(8);

/// These tests assert timings: one at a time, so that they do not slow each other down.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    /// GET /audioconf, anonymous: needs no database.
    Page,
    /// GET /mes-services, logged in.
    Agent,
    /// POST /audioconf.
    Booking,
}

impl Kind {
    fn needs_db(self) -> bool {
        self != Kind::Page
    }

    fn pause(self) -> Duration {
        match self {
            Kind::Page | Kind::Agent => Duration::from_millis(40),
            // Bounded: about 30 bookings a second at most, all their mails drained in seconds.
            Kind::Booking => Duration::from_millis(80),
        }
    }
}

#[derive(Debug)]
struct Sample {
    kind: Kind,
    start: Duration,
    took: Duration,
    /// None: no answer within [`HUNG`].
    status: Option<u16>,
    email: Option<String>,
    /// A booking answered with "Un lien de confirmation a été envoyé à …".
    acknowledged: bool,
}

impl Sample {
    fn end(&self) -> Duration {
        self.start + self.took
    }

    fn line(&self) -> String {
        format!(
            "{:?} at {:.2}s took {:.2}s: {}",
            self.kind,
            self.start.as_secs_f64(),
            self.took.as_secs_f64(),
            self.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "no answer".into())
        )
    }
}

struct Portal {
    /// An anonymous browser, on the instance that runs the mail worker.
    anon: Client,
    /// A logged-in agent, on a second instance.
    agent: Client,
    token: String,
    smtp: SmtpServer,
}

fn settings(url: &str, smtp: &SmtpServer) -> Figment {
    tchap_portal::config::figment()
        .merge(("portal.database_url", url))
        .merge((
            "portal.matrix.homeserver",
            crate::common::matrix::homeserver(),
        ))
        .merge(("portal.db.pool_size", 4))
        .merge(("portal.db.timeout_secs", 1))
        .merge(("portal.db.statement_timeout_secs", STATEMENT_TIMEOUT_SECS))
        .merge(("portal.db.run_migrations", false))
        .merge(("portal.audioconf.numbers", vec![NUMBER]))
        .merge(("portal.audioconf.max_requests_per_ip", 1_000_000))
        .merge(("portal.mail.worker", true))
        .merge(("portal.mail.transport", "smtp"))
        .merge(("portal.mail.smtp_host", "127.0.0.1"))
        .merge(("portal.mail.smtp_port", smtp.port))
        .merge(("portal.mail.smtp_security", "none"))
        .merge(("portal.mail.smtp_timeout_secs", 3))
        .merge(("portal.mail.poll_secs", 1))
        .merge(("portal.mail.retry_base_secs", 1))
        // The default (60 s): the mails a worker had claimed when the database failed are given
        // back or recorded when it returns, not left to their leases.
        .merge(("portal.mail.lease_secs", 60))
}

impl Portal {
    /// Two instances on `url` (migrated), an agent logged in on the second.
    async fn start(url: &str) -> Portal {
        let smtp = SmtpServer::start();
        let fig = settings(url, &smtp);
        let anon = Client::tracked(tchap_portal::build(fig.clone()).expect("settings"))
            .await
            .expect("the portal starts");
        let agent = Client::tracked(
            tchap_portal::build(fig.merge(("portal.mail.worker", false))).expect("settings"),
        )
        .await
        .expect("the second instance starts");
        let (_, user_id) = crate::common::matrix::new_user("fault", "Fault-pass-42", None).await;
        crate::common::log_in(&agent, &user_id, "Fault-pass-42").await;
        let token = crate::common::form_token(&anon, "/audioconf").await;
        Portal {
            anon,
            agent,
            token,
            smtp,
        }
    }

    async fn request(&self, kind: Kind, email: Option<&str>) -> (Status, bool) {
        match kind {
            Kind::Page => (
                crate::common::get_raw(&self.anon, "/audioconf").await.0,
                false,
            ),
            Kind::Agent => (
                crate::common::get_raw(&self.agent, "/mes-services").await.0,
                false,
            ),
            Kind::Booking => {
                let email = email.unwrap_or_default();
                let (status, _, page) = crate::common::post_form(
                    &self.anon,
                    "/audioconf",
                    format!(
                        "csrf_token={}&email={}&when=duration&duration=60",
                        self.token,
                        enc(email)
                    ),
                )
                .await;
                let told =
                    page.contains(&format!("Un lien de confirmation a été envoyé à {email}"));
                (status, status == Status::Ok && told)
            }
        }
    }
}

/// One browser's loop until `stop`: a request, a short pause, again.
async fn browse(
    portal: &Portal,
    kind: Kind,
    t0: Instant,
    stop: &AtomicBool,
    next: &AtomicUsize,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    // Bounded even if the driver never says stop.
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(90) {
        let email = (kind == Kind::Booking).then(|| {
            format!(
                "panne{}@agent.gouv.fr",
                next.fetch_add(1, Ordering::Relaxed)
            )
        });
        let start = t0.elapsed();
        let answer = tokio::time::timeout(HUNG, portal.request(kind, email.as_deref())).await;
        let took = t0.elapsed() - start;
        let (status, acknowledged) = match answer {
            Ok((status, ack)) => (Some(status.code), ack),
            Err(_) => (None, false),
        };
        samples.push(Sample {
            kind,
            start,
            took,
            status,
            email,
            acknowledged,
        });
        tokio::time::sleep(kind.pause()).await;
    }
    samples
}

/// When the fault was injected and when it ended, since the load started.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Duration,
    to: Duration,
}

/// Runs the load, `fault` (blocking, on its own thread) after [`BEFORE`], then [`AFTER`] more.
async fn under_load<F>(portal: &Portal, fault: F) -> (Vec<Sample>, Window)
where
    F: FnOnce(Instant) -> Window + Send + 'static,
{
    let t0 = Instant::now();
    let stop = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let driver = async {
        tokio::time::sleep(BEFORE).await;
        let window = tokio::task::spawn_blocking(move || fault(t0))
            .await
            .expect("the fault ran");
        tokio::time::sleep(AFTER).await;
        stop.store(true, Ordering::Relaxed);
        window
    };
    let (a, b, c, d, e, window) = tokio::join!(
        browse(portal, Kind::Page, t0, &stop, &next),
        browse(portal, Kind::Agent, t0, &stop, &next),
        browse(portal, Kind::Booking, t0, &stop, &next),
        browse(portal, Kind::Booking, t0, &stop, &next),
        browse(portal, Kind::Booking, t0, &stop, &next),
        driver
    );
    let mut all: Vec<Sample> = [a, b, c, d, e].into_iter().flatten().collect();
    all.sort_by_key(|s| s.start);
    (all, window)
}

/// Counts by kind and status, and the slowest answer of each kind.
fn summary(samples: &[Sample], window: Window) -> String {
    let mut by: BTreeMap<(Kind, String), usize> = BTreeMap::new();
    let mut slowest: BTreeMap<Kind, Duration> = BTreeMap::new();
    for s in samples {
        let status = s
            .status
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into());
        *by.entry((s.kind, status)).or_default() += 1;
        let m = slowest.entry(s.kind).or_default();
        *m = (*m).max(s.took);
    }
    let acknowledged = samples.iter().filter(|s| s.acknowledged).count();
    format!(
        "fault from {:.2}s to {:.2}s; answers {by:?}; slowest {slowest:?}; {acknowledged} bookings acknowledged",
        window.from.as_secs_f64(),
        window.to.as_secs_f64()
    )
}

/// What every fault test asserts about the answers; returns the problems found.
fn check_answers(samples: &[Sample], window: Window) -> Vec<String> {
    let mut problems = Vec::new();
    for s in samples {
        match s.status {
            Some(200) if s.kind != Kind::Booking || s.acknowledged => {}
            Some(503) => {}
            _ => problems.push(format!("not the page nor 503: {}", s.line())),
        }
        if s.took > LIMIT {
            problems.push(format!("slower than {LIMIT:?}: {}", s.line()));
        }
    }
    // Recovered without a restart: everything succeeds again once the database is back.
    let settled = window.to + SETTLE;
    for kind in [Kind::Agent, Kind::Booking] {
        let after: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.kind == kind && s.start >= settled)
            .collect();
        if after.is_empty() {
            problems.push(format!(
                "no {kind:?} request started {SETTLE:?} after the fault ended"
            ));
        }
        for s in after.iter().filter(|s| s.status != Some(200)) {
            problems.push(format!(
                "not recovered {SETTLE:?} after the fault: {}",
                s.line()
            ));
        }
    }
    problems
}

/// The recipients of every mail the SMTP server received, with how many each got.
fn recipients(smtp: &SmtpServer) -> HashMap<String, usize> {
    let mut got = HashMap::new();
    for raw in smtp.messages() {
        for line in raw.lines().take_while(|l| !l.is_empty()) {
            if let Some(to) = line.strip_prefix("X-RcptTo: ") {
                for r in to.split(", ") {
                    *got.entry(r.trim().to_owned()).or_default() += 1;
                }
            }
        }
    }
    got
}

/// Every acknowledged booking stored on `cluster` and its mail delivered (waiting for the mail
/// worker); mails delivered twice are counted, at most `faults` of them allowed (one per
/// interruption of the worker, the mail it had in hand). Returns the problems found.
async fn check_bookings(
    samples: &[Sample],
    cluster: Arc<PgCluster>,
    smtp: &SmtpServer,
    faults: usize,
) -> (Vec<String>, String) {
    let told: Vec<String> = samples
        .iter()
        .filter(|s| s.acknowledged)
        .filter_map(|s| s.email.clone())
        .collect();
    let mut problems = Vec::new();
    if told.is_empty() {
        problems.push("no booking acknowledged at all".to_owned());
    }
    let stored = tokio::task::spawn_blocking(move || {
        cluster.psql(
            DB,
            "SELECT email FROM audioconf_requests WHERE email IS NOT NULL",
        )
    })
    .await
    .expect("query the requests");
    let stored: std::collections::HashSet<&str> = stored.lines().collect();
    let missing: Vec<&String> = told
        .iter()
        .filter(|e| !stored.contains(e.as_str()))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} acknowledged bookings missing from the database: {missing:?}",
            missing.len(),
            told.len()
        ));
    }
    let t = Instant::now();
    let deadline = t + Duration::from_secs(60);
    let mut got = recipients(smtp);
    while told.iter().any(|e| !got.contains_key(e)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = recipients(smtp);
    }
    // A little longer, for a mail sent again after an interruption.
    tokio::time::sleep(Duration::from_secs(2)).await;
    got = recipients(smtp);
    let undelivered: Vec<&String> = told.iter().filter(|e| !got.contains_key(*e)).collect();
    if !undelivered.is_empty() {
        problems.push(format!(
            "{} of {} acknowledged bookings without their mail after 60 s: {undelivered:?}",
            undelivered.len(),
            told.len()
        ));
    }
    let mut twice: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    twice.sort();
    if twice.len() > faults {
        problems.push(format!(
            "{} mails delivered more than once (at most {faults}), e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(8)]
        ));
    }
    let mails = format!(
        "{} mails delivered to {} addresses in {:.1}s, {} twice",
        got.values().sum::<usize>(),
        got.len(),
        t.elapsed().as_secs_f64(),
        twice.len()
    );
    (problems, mails)
}

fn verdict(name: &str, summary: String, mails: String, problems: Vec<String>) {
    eprintln!("{name}: {summary}; {mails}");
    assert!(
        problems.is_empty(),
        "{name}: {summary}; {mails}\n{}",
        problems.join("\n")
    );
}

/// A private cluster with the portal's database migrated.
async fn migrated() -> Arc<PgCluster> {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("the cluster starts");
    tchap_portal::db::migrate(&cluster.url(DB))
        .await
        .expect("migrated");
    Arc::new(cluster)
}

/// A migrated primary and its synchronous streaming standby: a commit returns once the standby
/// has it. Set on the primary after the copy, so that a promoted standby does not wait for a
/// standby of its own.
async fn synchronous_pair() -> (Arc<PgCluster>, Arc<PgCluster>) {
    let primary = migrated().await;
    let from = primary.clone();
    let standby = tokio::task::spawn_blocking(move || {
        let standby = PgCluster::standby_of(&from);
        from.configure("synchronous_standby_names", "*");
        from.wait_for_sync_standby();
        standby
    })
    .await
    .expect("the standby streams");
    (primary, Arc::new(standby))
}

const RESTARTS: usize = 3;

#[rocket::async_test]
async fn postgresql_restarted_under_load_gives_503s_then_recovers_and_loses_no_booking() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pg = migrated().await;
    let portal = Portal::start(&pg.url(DB)).await;
    let server = pg.clone();
    // Three times, a second apart: each restart catches other requests mid-transaction.
    let (samples, window) = under_load(&portal, move |t0| {
        let from = t0.elapsed();
        for i in 0..RESTARTS {
            if i > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            server.restart();
        }
        Window {
            from,
            to: t0.elapsed(),
        }
    })
    .await;
    let summary = summary(&samples, window);
    let mut problems = check_answers(&samples, window);
    let (more, mails) = check_bookings(&samples, pg.clone(), &portal.smtp, RESTARTS).await;
    problems.extend(more);
    verdict("restart", summary, mails, problems);
}

#[rocket::async_test]
async fn postgresql_stalled_under_load_gives_503s_within_the_timeout_then_recovers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pg = migrated().await;
    let portal = Portal::start(&pg.url(DB)).await;
    let server = pg.clone();
    let (samples, window) = under_load(&portal, move |t0| {
        server.pause();
        let from = t0.elapsed();
        std::thread::sleep(STALL);
        let to = t0.elapsed();
        server.resume();
        Window { from, to }
    })
    .await;
    let summary = summary(&samples, window);
    let mut problems = check_answers(&samples, window);
    // While stalled, a request that needs the database can only be told 503.
    for kind in [Kind::Agent, Kind::Booking] {
        let during: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.kind == kind && s.start >= window.from && s.end() <= window.to)
            .collect();
        if during.is_empty() {
            problems.push(format!("no {kind:?} request answered while stalled"));
        }
        for s in during.iter().filter(|s| s.status != Some(503)) {
            problems.push(format!("not 503 while stalled: {}", s.line()));
        }
    }
    // The pages that need no database are served meanwhile.
    let pages = samples
        .iter()
        .filter(|s| !s.kind.needs_db() && s.start >= window.from && s.end() <= window.to)
        .count();
    if pages == 0 {
        problems.push("no page without the database served while stalled".into());
    }
    let (more, mails) = check_bookings(&samples, pg.clone(), &portal.smtp, 1).await;
    problems.extend(more);
    verdict("stall", summary, mails, problems);
}

#[rocket::async_test]
async fn the_primary_lost_under_load_the_promoted_standby_serves_and_keeps_every_booking() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (primary, standby) = synchronous_pair().await;
    let url = format!(
        "postgres://portal@{},{}/{DB}?target_session_attrs=read-write",
        primary.host(),
        standby.host()
    );
    let portal = Portal::start(&url).await;
    let (old, new) = (primary.clone(), standby.clone());
    let (samples, window) = under_load(&portal, move |t0| {
        let from = t0.elapsed();
        old.stop("immediate");
        new.promote();
        Window {
            from,
            to: t0.elapsed(),
        }
    })
    .await;
    let summary = summary(&samples, window);
    let mut problems = check_answers(&samples, window);
    let (more, mails) = check_bookings(&samples, standby.clone(), &portal.smtp, 1).await;
    problems.extend(more);
    verdict("failover", summary, mails, problems);
}

#[rocket::async_test]
async fn the_synchronous_standby_lost_under_load_writes_answer_503_then_resume() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (primary, standby) = synchronous_pair().await;
    let portal = Portal::start(&primary.url(DB)).await;
    let (main, lost) = (primary.clone(), standby.clone());
    // Every commit on the primary now waits for a standby that is not there (no timeout of
    // PostgreSQL's ends that wait): the portal must give up on its own.
    let (samples, window) = under_load(&portal, move |t0| {
        lost.stop("immediate");
        let from = t0.elapsed();
        std::thread::sleep(STANDBY_DOWN);
        let to = t0.elapsed();
        lost.start_again();
        main.wait_for_sync_standby();
        Window { from, to }
    })
    .await;
    let summary = summary(&samples, window);
    let mut problems = check_answers(&samples, window);
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.kind == Kind::Booking && s.start >= window.from && s.end() <= window.to)
        .collect();
    if during.is_empty() {
        problems.push("no booking answered while the standby was down".into());
    }
    for s in during.iter().filter(|s| s.status != Some(503)) {
        problems.push(format!("not 503 without the standby: {}", s.line()));
    }
    let (more, mails) = check_bookings(&samples, primary.clone(), &portal.smtp, 1).await;
    problems.extend(more);
    verdict("standby lost", summary, mails, problems);
}
