//! AudioConf against real PostgreSQL and a real SMTP server: the email journey, refusals, links,
//! PIN uniqueness under concurrency, exhaustion, the IVR API, cancellation, SMTP outages.

use chrono::{Duration, Utc};
use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use rocket::figment::Figment;
use rocket::http::{ContentType, Header, Status};
use serde_json::{json, Value};
use tchap_portal::accounts::matrix::percent_encode as enc;
use tchap_portal::audioconf::booking::{self, BookError, NewConference, Period};
use tchap_portal::db::schema::{audioconf_conferences, audioconf_requests, outbox};
use tchap_portal::web::i18n::Lang;

use crate::common::smtp::{link_in, parse, SmtpServer};
use crate::common::{csrf_token, figment, runs_of, title, unescape, TestApp, TestDb};

pub(crate) const NUMBER: &str = "+33189000000";
pub(crate) const BRIDGE_SECRET: &str = "bridge-secret-for-tests-0123456789abcdef";

/// A portal with one number, a bridge, and its mail worker sending to `smtp`.
pub(crate) async fn app(smtp: &SmtpServer, tweak: impl FnOnce(Figment) -> Figment) -> TestApp {
    let db = TestDb::new().await;
    let fig = app_figment(smtp, &db);
    TestApp::with_figment(db, tweak(fig)).await
}

/// The settings of `app`: another instance made from them is another browser on the same portal.
pub(crate) fn app_figment(smtp: &SmtpServer, db: &TestDb) -> Figment {
    figment(db)
        .merge(("portal.audioconf.numbers", vec![NUMBER]))
        .merge((
            "portal.audioconf.bridges",
            json!([{"name": "test", "secret": BRIDGE_SECRET}]),
        ))
        .merge(("portal.mail.worker", true))
        .merge(("portal.mail.transport", "smtp"))
        .merge(("portal.mail.smtp_host", "127.0.0.1"))
        .merge(("portal.mail.smtp_port", smtp.port))
        .merge(("portal.mail.smtp_security", "none"))
        .merge(("portal.mail.smtp_timeout_secs", 3))
        .merge(("portal.mail.poll_secs", 1))
        .merge(("portal.mail.retry_base_secs", 1))
}

async fn get(app: &TestApp, path: &str) -> (Status, String) {
    let (status, _, body) = crate::common::get(&app.client, path).await;
    (status, body)
}

async fn post(app: &TestApp, path: &str, body: String) -> (Status, String) {
    let (status, _, body) = crate::common::post_form(&app.client, path, body).await;
    (status, body)
}

/// How many booking requests the database holds.
async fn requests_recorded(app: &TestApp) -> i64 {
    let mut conn = app.db.conn().await;
    audioconf_requests::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count the requests")
}

async fn request_link(app: &TestApp, email: &str, when: &str) -> (Status, String) {
    let (_, page) = get(app, "/audioconf").await;
    post(
        app,
        "/audioconf",
        format!(
            "csrf_token={}&email={}&{when}",
            csrf_token(&page),
            enc(email)
        ),
    )
    .await
}

pub(crate) async fn ivr(
    app: &TestApp,
    secret: &str,
    called: &str,
    pin: &str,
    caller: &str,
) -> (Status, Value, Option<String>) {
    let res = app
        .client
        .post("/api/v1/ivr/verify")
        .header(ContentType::JSON)
        .header(Header::new("Authorization", format!("Bearer {secret}")))
        .body(json!({"called": called, "pin": pin, "caller": caller}).to_string())
        .dispatch()
        .await;
    let status = res.status();
    let retry = res.headers().get_one("Retry-After").map(str::to_owned);
    let body =
        serde_json::from_str(&res.into_string().await.unwrap_or_default()).unwrap_or(Value::Null);
    (status, body, retry)
}

/// The unfolded content lines of an iCalendar text, as (name with parameters, value).
fn ics_lines(ics: &str) -> Vec<(String, String)> {
    ics.replace("\r\n ", "")
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn pin_on(page: &str) -> String {
    let start = page.find("id=\"pin\">").expect("the PIN on the page") + "id=\"pin\">".len();
    page[start..]
        .split('<')
        .next()
        .expect("pin")
        .replace(' ', "")
}

#[rocket::async_test]
async fn the_email_journey_from_request_to_cancellation() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| f).await;
    let (status, page) = get(&app, "/audioconf").await;
    assert_eq!(status, Status::Ok);
    assert_eq!(title(&page), "Réserver une audioconférence — Portail Tchap");

    let (status, page) = request_link(
        &app,
        "Camille.Durand@numerique.gouv.fr",
        "when=duration&duration=60",
    )
    .await;
    assert_eq!(status, Status::Ok, "{page}");
    assert!(
        page.contains("Un lien de confirmation a été envoyé à Camille.Durand@numerique.gouv.fr")
    );
    let mails = smtp.wait_for(1);
    assert_eq!(mails.len(), 1);
    let link_mail = parse(&mails[0]);
    assert_eq!(link_mail["subject"], "Confirmez votre audioconférence");
    assert_eq!(link_mail["to"], "Camille.Durand@numerique.gouv.fr");
    let link = link_in(&link_mail, "/audioconf/confirmer/");
    assert!(unescape(link_mail["html"].as_str().expect("html")).contains(&link));

    // Opening the link (as a mail scanner would, twice) books nothing: a page with one button.
    for _ in 0..2 {
        let (status, page) = get(&app, &link).await;
        assert_eq!(status, Status::Ok);
        assert_eq!(title(&page), "Confirmer la réservation — Portail Tchap");
    }
    let mut conn = app.db.conn().await;
    let count = || audioconf_conferences::table.count();
    assert_eq!(count().get_result::<i64>(&mut conn).await.expect("n"), 0);

    let (_, confirm_page) = get(&app, &link).await;
    let token = link.rsplit('/').next().expect("token");
    let (status, page) = post(
        &app,
        "/audioconf/confirmer",
        format!("csrf_token={}&token={token}", csrf_token(&confirm_page)),
    )
    .await;
    assert_eq!(status, Status::Ok, "{page}");
    assert_eq!(
        title(&page),
        "Votre audioconférence est prête — Portail Tchap"
    );
    assert!(page.contains("01 89 00 00 00"));
    assert!(page.contains("href=\"tel:+33189000000,,"));
    let pin = pin_on(&page);
    assert_eq!(pin.len(), 9, "9 digits by default");
    assert!(page.contains(&tchap_portal::audioconf::format::grouped(&pin)));

    // The details mail: subject with the day, number, PIN, tel: link, cancellation link, .ics.
    let mails = smtp.wait_for(2);
    let details = mails
        .iter()
        .map(|m| parse(m))
        .find(|m| {
            m["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with("Votre audioconférence du "))
        })
        .expect("details mail");
    let text = details["text"].as_str().expect("text");
    assert!(
        text.contains("01 89 00 00 00")
            && text.contains(&tchap_portal::audioconf::format::grouped(&pin))
    );
    assert!(text.contains(&format!("tel:+33189000000,,{pin}%23")));
    let attachments = details["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0]["filename"], "audioconference.ics");
    assert_eq!(attachments[0]["content_type"], "text/calendar");
    let ics = ics_lines(attachments[0]["body"].as_str().expect("ics"));
    let field = |name: &str| {
        ics.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} in the invite"))
    };
    assert_eq!(field("BEGIN"), "VCALENDAR");
    assert!(ics.iter().any(|(k, v)| k == "BEGIN" && v == "VEVENT"));
    let start = chrono::NaiveDateTime::parse_from_str(&field("DTSTART"), "%Y%m%dT%H%M%SZ")
        .expect("DTSTART in UTC");
    let end = chrono::NaiveDateTime::parse_from_str(&field("DTEND"), "%Y%m%dT%H%M%SZ")
        .expect("DTEND in UTC");
    assert_eq!(end - start, Duration::minutes(60));
    assert!(field("LOCATION").contains("01 89 00 00 00"));
    assert!(field("LOCATION").contains(&tchap_portal::audioconf::format::grouped(&pin)));
    assert!(field("DESCRIPTION").contains("#"));

    // The bridge accepts the PIN; the link cannot be used again.
    let (status, body, _) = ivr(&app, BRIDGE_SECRET, NUMBER, &pin, "+33600000001").await;
    assert_eq!(status, Status::Ok, "{body}");
    assert_eq!(body["participant_limit"], 50);
    assert!(body["conference_id"].as_str().is_some());
    let (status, page) = post(
        &app,
        "/audioconf/confirmer",
        format!("csrf_token={}&token={token}", csrf_token(&confirm_page)),
    )
    .await;
    assert_eq!(status, Status::Gone);
    assert!(page.contains("Ce lien a déjà été utilisé"));
    assert_eq!(count().get_result::<i64>(&mut conn).await.expect("n"), 1);

    // Cancel from the mail's link: a page, then a POST; the PIN stops working at once.
    let cancel = link_in(&details, "/audioconf/annuler/");
    let (status, page) = get(&app, &cancel).await;
    assert_eq!(status, Status::Ok);
    assert_eq!(title(&page), "Annuler l’audioconférence — Portail Tchap");
    let cancel_token = cancel.rsplit('/').next().expect("token");
    let (status, page) = post(
        &app,
        "/audioconf/annuler",
        format!("csrf_token={}&token={cancel_token}", csrf_token(&page)),
    )
    .await;
    assert_eq!(status, Status::Ok);
    assert!(page.contains("est fermée"));
    let (status, _, _) = ivr(&app, BRIDGE_SECRET, NUMBER, &pin, "+33600000001").await;
    assert_eq!(status, Status::NotFound);
    let mails = smtp.wait_for(3);
    assert!(mails
        .iter()
        .map(|m| parse(m))
        .any(|m| m["subject"] == "Audioconférence annulée"));
    let (status, _) = get(&app, &cancel).await;
    assert_eq!(status, Status::Gone, "already cancelled");
}

#[rocket::async_test]
async fn refused_domains_bad_input_and_limits_keep_the_input_and_explain() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| {
        f.merge(("portal.audioconf.max_requests_per_email", 2))
    })
    .await;

    let (status, page) = request_link(&app, "someone@gmail.com", "when=day&day=2000-01-01").await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(title(&page).starts_with("Erreur : "));
    assert!(page.contains("Choisissez un jour dans la liste."));
    let (status, page) = request_link(&app, "someone@gmail.com", "when=duration&duration=60").await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(page.contains("Les adresses du domaine « gmail.com » ne peuvent pas réserver"));
    assert!(
        page.contains("audioconf@portail.localhost"),
        "says whom to ask"
    );
    assert!(page.contains("value=\"someone@gmail.com\""), "input kept");
    assert!(page.contains("aria-describedby=\"email-erreur\""));
    // Suffix rules never fail open.
    let (status, _) = request_link(&app, "x@evilgouv.fr", "when=duration&duration=60").await;
    assert_eq!(status, Status::UnprocessableEntity);
    let (status, page) = request_link(&app, "not-an-address", "when=duration&duration=60").await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(page.contains("Saisissez une adresse électronique valide"));
    let (status, page) = request_link(&app, "a@agent.gouv.fr", "when=duration&duration=17").await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(page.contains("Choisissez une durée dans la liste."));
    assert_eq!(
        requests_recorded(&app).await,
        0,
        "nothing recorded for refused requests"
    );

    // The daily limit per address: the third request is refused with a message and 429.
    for _ in 0..2 {
        assert_eq!(
            request_link(&app, "a@agent.gouv.fr", "when=duration&duration=60")
                .await
                .0,
            Status::Ok
        );
    }
    let (status, page) = request_link(&app, "A@Agent.gouv.fr", "when=duration&duration=60").await;
    assert_eq!(status, Status::TooManyRequests);
    assert!(page.contains("a atteint le nombre de réservations autorisées"));

    // Bookings made from Tchap (no request, no link) count too: one in a room and one request
    // reach the limit of two for another address; a confirmed link is not counted twice.
    let settings = settings_of(&app);
    book_via(&app, &settings, "b@agent.gouv.fr", "room")
        .await
        .expect("booked in a room");
    book_via(&app, &settings, "c@agent.gouv.fr", "email")
        .await
        .expect("booked by a link");
    for (email, expected) in [
        ("b@agent.gouv.fr", Status::Ok),
        ("b@agent.gouv.fr", Status::TooManyRequests),
        ("c@agent.gouv.fr", Status::Ok),
        ("c@agent.gouv.fr", Status::Ok),
    ] {
        let (status, page) = request_link(&app, email, "when=duration&duration=60").await;
        assert_eq!(status, expected, "{email}");
        if expected == Status::TooManyRequests {
            assert!(page.contains("a atteint le nombre de réservations autorisées"));
        }
    }
}

#[rocket::async_test]
async fn the_daily_limit_per_client_address_counts_every_address_asked_for() {
    let smtp = SmtpServer::start();
    // One pooled connection: every request below runs on it.
    let app = app(&smtp, |f| {
        f.merge(("portal.audioconf.max_requests_per_ip", 2))
            .merge(("portal.db.pool_size", 1))
    })
    .await;
    for email in ["a@agent.gouv.fr", "b@agent.gouv.fr"] {
        let (status, _) = request_link(&app, email, "when=duration&duration=60").await;
        assert_eq!(status, Status::Ok, "{email}");
    }
    // A third address from the same network: refused with the network's message, input kept.
    let (status, page) = request_link(&app, "c@agent.gouv.fr", "when=duration&duration=60").await;
    assert_eq!(status, Status::TooManyRequests);
    assert!(page.contains("depuis votre réseau"));
    assert!(page.contains("value=\"c@agent.gouv.fr\""), "input kept");
    assert_eq!(
        requests_recorded(&app).await,
        2,
        "the refused request is not recorded"
    );
    // The count and the insert (request + mail) are raw SQL, kept prepared all the same.
    let prepared = app.prepared_runs().await;
    assert_eq!(runs_of(&prepared, "LIMIT $5"), 3, "three counts");
    assert_eq!(runs_of(&prepared, "INSERT INTO outbox"), 2, "two requests");
}

#[rocket::async_test]
async fn expired_and_unknown_links_say_so_and_book_nothing() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| f).await;
    request_link(&app, "a@agent.gouv.fr", "when=duration&duration=30").await;
    let link = link_in(&parse(&smtp.wait_for(1)[0]), "/audioconf/confirmer/");
    let mut conn = app.db.conn().await;
    diesel::update(audioconf_requests::table)
        .set(audioconf_requests::expires_at.eq(Utc::now() - Duration::minutes(1)))
        .execute(&mut conn)
        .await
        .expect("expire");
    let (status, page) = get(&app, &link).await;
    assert_eq!(status, Status::Gone);
    assert!(page.contains("Ce lien a expiré"));
    let (_, home) = get(&app, "/audioconf").await;
    let token = link.rsplit('/').next().expect("token");
    let (status, _) = post(
        &app,
        "/audioconf/confirmer",
        format!("csrf_token={}&token={token}", csrf_token(&home)),
    )
    .await;
    assert_eq!(status, Status::Gone);
    let (status, page) = get(&app, "/audioconf/confirmer/nope").await;
    assert_eq!(status, Status::NotFound);
    assert!(page.contains("Ce lien n’existe pas"));
    let n: i64 = audioconf_conferences::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("n");
    assert_eq!(n, 0);
}

pub(crate) async fn book_direct(
    app: &TestApp,
    settings: &tchap_portal::config::AudioconfSettings,
    i: usize,
) -> Result<booking::Created, BookError> {
    book_via(app, settings, &format!("agent{i}@agent.gouv.fr"), "email").await
}

/// Books at once for `email`, as a confirmed link (`via` "email") or Tchap ("tchap", "room") do.
pub(crate) async fn book_via(
    app: &TestApp,
    settings: &tchap_portal::config::AudioconfSettings,
    email: &str,
    via: &str,
) -> Result<booking::Created, BookError> {
    let keys = app
        .client
        .rocket()
        .state::<tchap_portal::crypto::Keys>()
        .expect("keys");
    let mailer = app
        .client
        .rocket()
        .state::<tchap_portal::mail::Mailer>()
        .expect("mailer");
    let mut conn = app.pool().get().await.expect("conn");
    booking::book(
        &mut conn,
        keys,
        settings,
        mailer,
        NewConference {
            email,
            period: Period::minutes(60, Utc::now()),
            via,
            lang: Lang::Fr,
        },
        Utc::now(),
    )
    .await
}

pub(crate) fn settings_of(app: &TestApp) -> tchap_portal::config::AudioconfSettings {
    app.client
        .rocket()
        .state::<tchap_portal::config::Config>()
        .expect("config")
        .settings
        .audioconf
        .clone()
}

#[rocket::async_test]
async fn two_hundred_concurrent_bookings_on_one_number_get_distinct_pins() {
    let smtp = SmtpServer::start();
    // 1,000 PINs for 200 bookings at once: collisions happen, the constraint settles them.
    let app = std::sync::Arc::new(
        app(&smtp, |f| {
            f.merge(("portal.audioconf.pin_length", 3))
                .merge(("portal.db.pool_size", 16))
        })
        .await,
    );
    let settings = settings_of(&app);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let app = app.clone();
        let settings = settings.clone();
        tasks.push(rocket::tokio::spawn(async move {
            book_direct(&app, &settings, i).await.map(|c| c.pin)
        }));
    }
    let mut pins = std::collections::HashSet::new();
    for t in tasks {
        let pin = t.await.expect("task").expect("booked");
        assert!(pins.insert(pin), "a PIN given twice");
    }
    let mut conn = app.db.conn().await;
    let distinct: i64 = audioconf_conferences::table
        .select(diesel::dsl::count(audioconf_conferences::pin_hmac).aggregate_distinct())
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(distinct, 200, "every PIN distinct in the database");
    let mails: i64 = outbox::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("n");
    assert_eq!(mails, 200, "one details mail per booking");
}

#[rocket::async_test]
async fn an_exhausted_pool_books_nothing_and_keeps_the_link_usable() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| f.merge(("portal.audioconf.pin_length", 1))).await;
    let settings = settings_of(&app);
    for i in 0..10 {
        book_direct(&app, &settings, i)
            .await
            .expect("one of the 10 PINs");
    }
    assert!(matches!(
        book_direct(&app, &settings, 10).await,
        Err(BookError::Exhausted)
    ));

    // Through the pages: a clear message, the link still valid, nothing half-created.
    request_link(&app, "a@agent.gouv.fr", "when=duration&duration=30").await;
    let mails = smtp.wait_for(11);
    let link = mails
        .iter()
        .map(|m| parse(m))
        .find(|m| m["subject"] == "Confirmez votre audioconférence")
        .map(|m| link_in(&m, "/audioconf/confirmer/"))
        .expect("link mail");
    let (_, page) = get(&app, &link).await;
    let token = link.rsplit('/').next().expect("token");
    let mut conn = app.db.conn().await;
    let before: i64 = outbox::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("n");
    let (status, page) = post(
        &app,
        "/audioconf/confirmer",
        format!("csrf_token={}&token={token}", csrf_token(&page)),
    )
    .await;
    assert_eq!(status, Status::ServiceUnavailable);
    assert!(page.contains("Toutes les lignes sont occupées"));
    assert_eq!(
        outbox::table
            .count()
            .get_result::<i64>(&mut conn)
            .await
            .expect("n"),
        before
    );
    assert_eq!(
        audioconf_conferences::table
            .count()
            .get_result::<i64>(&mut conn)
            .await
            .expect("n"),
        10
    );
    assert_eq!(
        get(&app, &link).await.0,
        Status::Ok,
        "the link is still usable"
    );
}

#[rocket::async_test]
async fn the_ivr_needs_a_bridge_secret_and_locks_out_a_guessing_caller() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| f.merge(("portal.audioconf.ivr_max_failures", 3))).await;
    let created = book_direct(&app, &settings_of(&app), 0)
        .await
        .expect("booked");

    let (status, _, _) = ivr(&app, "wrong-secret", NUMBER, &created.pin, "+33600000002").await;
    assert_eq!(status, Status::Unauthorized);
    let (status, body, _) = ivr(
        &app,
        BRIDGE_SECRET,
        NUMBER,
        &format!(
            "{} #",
            tchap_portal::audioconf::format::grouped(&created.pin)
        ),
        "+33600000002",
    )
    .await;
    assert_eq!(status, Status::Ok, "spaces and # are ignored: {body}");
    assert_eq!(body["conference_id"], created.public_id.as_str());
    let wrong = if created.pin == "000000000" {
        "111111111"
    } else {
        "000000000"
    };
    for _ in 0..3 {
        assert_eq!(
            ivr(&app, BRIDGE_SECRET, NUMBER, wrong, "+33600000003")
                .await
                .0,
            Status::NotFound
        );
    }
    let (status, _, retry) = ivr(&app, BRIDGE_SECRET, NUMBER, &created.pin, "+33600000003").await;
    assert_eq!(
        status,
        Status::TooManyRequests,
        "locked out, even with the right PIN"
    );
    assert!(retry
        .and_then(|r| r.parse::<i64>().ok())
        .is_some_and(|s| s > 0));
    assert_eq!(
        ivr(&app, BRIDGE_SECRET, NUMBER, &created.pin, "+33600000004")
            .await
            .0,
        Status::Ok,
        "other callers are not"
    );
    assert_eq!(
        ivr(
            &app,
            BRIDGE_SECRET,
            "+33189000009",
            &created.pin,
            "+33600000004"
        )
        .await
        .0,
        Status::NotFound,
        "the PIN belongs to its number"
    );
}

#[rocket::async_test]
async fn smtp_down_during_a_booking_still_confirms_and_the_mail_arrives_later() {
    let mut smtp = SmtpServer::start();
    let app = app(&smtp, |f| f).await;
    let today = tchap_portal::audioconf::format::paris_date(Utc::now());
    request_link(&app, "a@agent.gouv.fr", &format!("when=day&day={today}")).await;
    let link = link_in(&parse(&smtp.wait_for(1)[0]), "/audioconf/confirmer/");
    let (_, page) = get(&app, &link).await;
    smtp.stop();
    let token = link.rsplit('/').next().expect("token");
    let (status, page) = post(
        &app,
        "/audioconf/confirmer",
        format!("csrf_token={}&token={token}", csrf_token(&page)),
    )
    .await;
    assert_eq!(status, Status::Ok, "the agent gets the line at once");
    let pin = pin_on(&page);
    assert!(page.contains("Toute la journée du"));
    rocket::tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    smtp.restart();
    let mails = smtp.wait_for(2);
    let details: Vec<Value> = mails
        .iter()
        .map(|m| parse(m))
        .filter(|m| {
            m["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with("Votre audioconférence du "))
        })
        .collect();
    assert_eq!(details.len(), 1, "delivered once");
    assert!(details[0]["text"]
        .as_str()
        .expect("text")
        .contains(&tchap_portal::audioconf::format::grouped(&pin)));
    let ics = ics_lines(details[0]["attachments"][0]["body"].as_str().expect("ics"));
    assert!(
        ics.iter().any(|(k, _)| k == "DTSTART;VALUE=DATE"),
        "an all-day event"
    );
}

#[rocket::async_test]
async fn retention_erases_addresses_after_the_period_and_keeps_statistics() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| f).await;
    let settings = settings_of(&app);
    let created = book_direct(&app, &settings, 0).await.expect("booked");
    let mut conn = app.db.conn().await;
    diesel::update(audioconf_conferences::table.find(created.id))
        .set((
            audioconf_conferences::starts_at.eq(Utc::now() - Duration::days(40)),
            audioconf_conferences::ends_at.eq(Utc::now() - Duration::days(31)),
        ))
        .execute(&mut conn)
        .await
        .expect("age");
    let recent = book_direct(&app, &settings, 1).await.expect("booked");
    let (erased, _) = tchap_portal::audioconf::retention(&mut conn, &settings, Utc::now())
        .await
        .expect("job");
    assert_eq!(erased, 1);
    let rows: Vec<(i64, Option<String>, String)> = audioconf_conferences::table
        .select((
            audioconf_conferences::id,
            audioconf_conferences::email,
            audioconf_conferences::email_domain,
        ))
        .order(audioconf_conferences::id)
        .load(&mut conn)
        .await
        .expect("rows");
    assert_eq!(rows[0], (created.id, None, "agent.gouv.fr".into()));
    assert_eq!(rows[1].0, recent.id);
    assert!(rows[1].1.is_some(), "a recent conference keeps its address");
}

#[rocket::async_test]
async fn bad_ivr_requests_unknown_cancel_links_and_a_missing_number_pool_are_answered_plainly() {
    let smtp = SmtpServer::start();
    let portal = app(&smtp, |f| f).await;
    for body in [
        json!({"called": "0189000000", "pin": "123"}).to_string(),
        json!({"called": NUMBER, "pin": "12a"}).to_string(),
        "not json".to_owned(),
    ] {
        let res = portal
            .client
            .post("/api/v1/ivr/verify")
            .header(ContentType::JSON)
            .header(Header::new(
                "Authorization",
                format!("Bearer {BRIDGE_SECRET}"),
            ))
            .body(body.clone())
            .dispatch()
            .await;
        assert_eq!(res.status(), Status::BadRequest, "{body}");
    }
    let (status, page) = get(&portal, "/audioconf/annuler/inconnu").await;
    assert_eq!(status, Status::NotFound);
    assert!(page.contains("Ce lien n’existe pas"));

    // No numbers configured: the page says so and a booking is refused on the same page.
    let empty = app(&smtp, |f| {
        f.merge(("portal.audioconf.numbers", Vec::<String>::new()))
    })
    .await;
    let (_, page) = get(&empty, "/audioconf").await;
    assert!(page.contains("aucun numéro n’est configuré"));
    let (status, page) = request_link(&empty, "a@agent.gouv.fr", "when=duration&duration=60").await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(page.contains("aucun numéro n’est configuré"));
    assert!(page.contains("value=\"a@agent.gouv.fr\""));
    assert_eq!(requests_recorded(&empty).await, 0);
}

#[rocket::async_test]
async fn the_database_down_gives_503_pages_and_answers_never_500() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| f.merge(("portal.db.timeout_secs", 1))).await;
    let (_, page) = get(&app, "/audioconf").await;
    app.db.drop_now().await;
    let (status, html) = post(
        &app,
        "/audioconf",
        format!(
            "csrf_token={}&email=a%40agent.gouv.fr&when=duration&duration=60",
            csrf_token(&page)
        ),
    )
    .await;
    assert_eq!(status, Status::ServiceUnavailable);
    assert!(title(&html).contains("Portail Tchap"), "a DSFR error page");
    let (status, body, _) = ivr(&app, BRIDGE_SECRET, NUMBER, "123456789", "+33600000009").await;
    assert_eq!(status, Status::ServiceUnavailable);
    assert_eq!(body["error"], "temporarily_unavailable");
}

#[rocket::async_test]
async fn a_booking_stuck_behind_a_lock_answers_503_once_the_statement_timeout_cancels_it() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| f.merge(("portal.db.statement_timeout_secs", 1))).await;
    let form = |page: &str| {
        format!(
            "csrf_token={}&email=a%40agent.gouv.fr&when=duration&duration=60",
            csrf_token(page)
        )
    };
    let (_, page) = get(&app, "/audioconf").await;
    // Something else holds the table (a long migration, a manual fix) in an open transaction.
    let mut locker = app.db.conn().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE audioconf_requests IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let started = std::time::Instant::now();
    let (status, html) = post(&app, "/audioconf", form(&page)).await;
    let waited = started.elapsed();
    assert_eq!(status, Status::ServiceUnavailable, "{html}");
    // PostgreSQL's statement_timeout ended the wait (the client-side watchdog would take 2 s).
    assert!(
        waited >= std::time::Duration::from_millis(900)
            && waited < std::time::Duration::from_millis(1800),
        "answered after {waited:?}"
    );
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    assert_eq!(requests_recorded(&app).await, 0, "nothing recorded");
    // The lock gone, the same request goes through on the same pool.
    let (_, page) = get(&app, "/audioconf").await;
    let (status, html) = post(&app, "/audioconf", form(&page)).await;
    assert_eq!(status, Status::Ok, "{html}");
    assert_eq!(requests_recorded(&app).await, 1);
}

/// The portal on a real port (the relying party's back channel calls it: discovery, token, JWKS,
/// userinfo) and a local client on the same settings and database for the agent's browser.
async fn tchap_app(smtp: &SmtpServer) -> (TestApp, String, Figment) {
    let db = TestDb::new().await;
    let port = crate::common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let fig = figment(&db)
        .merge(("port", port))
        .merge(("portal.public_url", base.clone()))
        .merge(("portal.audioconf.numbers", vec![NUMBER]))
        .merge(("portal.mail.transport", "smtp"))
        .merge(("portal.mail.smtp_host", "127.0.0.1"))
        .merge(("portal.mail.smtp_port", smtp.port))
        .merge(("portal.mail.smtp_security", "none"))
        .merge(("portal.mail.poll_secs", 1));
    crate::common::launch(fig.clone(), port).await;
    let browser = TestApp::with_figment(db, fig.clone().merge(("portal.mail.worker", true))).await;
    (browser, base, fig)
}

/// Presses "Se connecter avec Tchap" on the booking form; returns the redirect to the issuer.
async fn start_with_tchap(app: &TestApp, when: &str) -> String {
    let (_, page) = get(app, "/audioconf").await;
    let res = app
        .client
        .post("/audioconf/tchap")
        .header(ContentType::Form)
        .body(format!("csrf_token={}&email=&{when}", csrf_token(&page)))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther);
    res.headers()
        .get_one("Location")
        .expect("to the issuer")
        .to_owned()
}

fn path_of<'a>(url: &'a str, base: &str) -> &'a str {
    url.strip_prefix(base).expect("an address of this portal")
}

#[rocket::async_test]
async fn booking_with_tchap_uses_the_verified_email_and_refuses_replays_and_refusals() {
    use crate::common::matrix::{new_user, set_email};
    use crate::oidc_flow::{decide, query};
    let smtp = SmtpServer::start();
    let (app, base, _) = tchap_app(&smtp).await;
    let (_, user_id) = new_user("resa", "Resa-pass-42", Some("Inès Roy [DINUM]")).await;
    set_email(&user_id, "ines.roy@numerique.gouv.fr").await;
    crate::common::log_in(&app.client, &user_id, "Resa-pass-42").await;

    let (_, page) = get(&app, "/audioconf").await;
    assert!(page.contains("formaction=\"/audioconf/tchap\""));
    assert!(page.contains("Se connecter avec Tchap"));

    // Out to the portal's own provider, with nonce and PKCE.
    let to_issuer = start_with_tchap(&app, "when=duration&duration=60").await;
    assert!(to_issuer.starts_with(&format!("{base}/authorize?")));
    let q = query(&to_issuer);
    assert_eq!(q["client_id"], "portail-audioconf");
    assert_eq!(q["redirect_uri"], format!("{base}/audioconf/tchap/retour"));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "openid email");
    assert!(q["nonce"].len() >= 43 && q["code_challenge"].len() == 43 && !q["state"].is_empty());

    // The consent page shows the address that will be shared.
    let (status, consent) = get(&app, path_of(&to_issuer, &base)).await;
    assert_eq!(status, Status::Ok);
    assert!(consent.contains("AudioConf (Portail Tchap)"));
    assert!(consent.contains("ines.roy@numerique.gouv.fr"));
    let back = decide(&app.client, &consent, "approve").await;
    assert!(back.starts_with(&format!("{base}/audioconf/tchap/retour?code=")));

    // Back: verified, booked for that address, shown, and mailed.
    let (status, details) = get(&app, path_of(&back, &base)).await;
    assert_eq!(status, Status::Ok, "{details}");
    let pin = pin_on(&details);
    assert_eq!(pin.len(), 9);
    assert!(details.contains("ines.roy@numerique.gouv.fr"));
    let mut conn = app.db.conn().await;
    let (email, via): (Option<String>, String) = audioconf_conferences::table
        .select((audioconf_conferences::email, audioconf_conferences::via))
        .first(&mut conn)
        .await
        .expect("one conference");
    assert_eq!(
        (email.as_deref(), via.as_str()),
        (Some("ines.roy@numerique.gouv.fr"), "tchap")
    );
    let mails = smtp.wait_for(1);
    let mail = parse(&mails[0]);
    assert_eq!(mail["to"], "ines.roy@numerique.gouv.fr");
    assert!(mail["text"].as_str().expect("text").contains(&format!(
        "{} {} {}",
        &pin[..3],
        &pin[3..6],
        &pin[6..]
    )));
    assert_eq!(mail["attachments"][0]["filename"], "audioconference.ics");

    // The same answer again (reload, or replayed by someone else) books nothing.
    let (status, again) = get(&app, path_of(&back, &base)).await;
    assert_eq!(status, Status::BadRequest);
    assert!(again.contains("n’a pas abouti"));
    let count = || audioconf_conferences::table.count();
    assert_eq!(count().get_result::<i64>(&mut conn).await.expect("n"), 1);

    // Refusing at the provider comes back to the form with the choice kept, nothing booked.
    let to_issuer = start_with_tchap(&app, "when=duration&duration=120").await;
    let (_, consent) = get(
        &app,
        &format!("{}&prompt=consent", path_of(&to_issuer, &base)),
    )
    .await;
    let back = decide(&app.client, &consent, "refuse").await;
    assert!(back.contains("error=access_denied"));
    let (status, page) = get(&app, path_of(&back, &base)).await;
    assert_eq!(status, Status::Ok);
    assert!(page.contains("Vous n’avez pas autorisé l’accès"));
    assert!(page.contains("value=\"120\" selected"));
    assert_eq!(count().get_result::<i64>(&mut conn).await.expect("n"), 1);

    // A bad choice never leaves the form.
    let (_, form) = get(&app, "/audioconf").await;
    let (status, page) = post(
        &app,
        "/audioconf/tchap",
        format!("csrf_token={}&when=duration&duration=7", csrf_token(&form)),
    )
    .await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(title(&page).starts_with("Erreur"));
}

#[rocket::async_test]
async fn booking_with_tchap_verifies_the_id_token_and_rejects_a_tampered_one() {
    use crate::common::matrix::{new_user, set_email};
    use crate::oidc_flow::{decide, query};
    use rocket_oauth2::TokenResponse;
    use tchap_portal::audioconf::tchap::{self, Issuer, RpError, Tchap};
    use tchap_portal::crypto::{b64url, b64url_decode, sha256};
    let smtp = SmtpServer::start();
    let (app, base, fig) = tchap_app(&smtp).await;
    let config = tchap_portal::config::Config::from_figment(&fig).expect("config");
    let (_, user_id) = new_user("jeton", "Jeton-pass-42", None).await;
    set_email(&user_id, "jeton@numerique.gouv.fr").await;
    crate::common::log_in(&app.client, &user_id, "Jeton-pass-42").await;

    // A real code for the portal's own AudioConf client, with our nonce and verifier.
    let verifier = "v".repeat(50);
    let redirect = format!("{base}/audioconf/tchap/retour");
    let (_, consent) = get(
        &app,
        &format!(
            "/authorize?response_type=code&client_id=portail-audioconf&redirect_uri={}&scope=openid%20email&state=s&nonce=the-nonce&code_challenge={}&code_challenge_method=S256",
            enc(&redirect),
            b64url(&sha256(verifier.as_bytes()))
        ),
    )
    .await;
    let code = query(&decide(&app.client, &consent, "approve").await)["code"].clone();
    let keys = tchap_portal::crypto::Keys::new(&config.secret_key);
    let res = reqwest::Client::new()
        .post(format!("{base}/token"))
        .basic_auth("portail-audioconf", Some(tchap::dev_client_secret(&keys)))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .expect("token");
    assert!(res.status().is_success(), "{}", res.status());
    let body: Value = res.json().await.expect("json");
    let tokens = |body: &Value| -> TokenResponse<Tchap> {
        TokenResponse::<()>::try_from(body.clone())
            .expect("token response")
            .cast()
    };

    // Verified over the portal's discovery, JWKS and userinfo endpoints.
    let issuer = Issuer::from_config(&config).expect("offered in development");
    assert_eq!(
        issuer
            .verified_email(&tokens(&body), "the-nonce")
            .await
            .expect("verified"),
        "jeton@numerique.gouv.fr"
    );
    assert!(matches!(
        issuer.verified_email(&tokens(&body), "another-nonce").await,
        Err(RpError::IdToken("nonce"))
    ));

    // Tampered: claims changed under the original signature, a signature from another key, none.
    let id_token = body["id_token"].as_str().expect("id_token").to_owned();
    let parts: Vec<&str> = id_token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&b64url_decode(parts[1]).expect("b64")).expect("claims");
    claims["aud"] = json!("someone-else");
    let forged_claims = format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_string().as_bytes()),
        parts[2]
    );
    let none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let (kid, _, der) = tchap_portal::oidc::keys::generate("RS256").expect("key");
    let foreign = tchap_portal::oidc::keys::SigningKey {
        kid,
        alg: "RS256",
        pkey: openssl::pkey::PKey::private_key_from_der(&der).expect("der"),
    };
    let claims: Value =
        serde_json::from_slice(&b64url_decode(parts[1]).expect("b64")).expect("claims");
    let foreign_signed =
        tchap_portal::oidc::jwt::sign(&foreign, &claims, Some("JWT")).expect("sign");
    for bad in [forged_claims, none, foreign_signed] {
        let mut b = body.clone();
        b["id_token"] = json!(bad);
        assert!(
            matches!(
                issuer.verified_email(&tokens(&b), "the-nonce").await,
                Err(RpError::IdToken(_))
            ),
            "refused: {bad}"
        );
    }
    // Signed by the issuer's own key, still refused: a `crit` header, another kind of token (a
    // signed userinfo answer), an audience beyond this client even with `azp` naming it.
    let key = app
        .client
        .rocket()
        .state::<tchap_portal::oidc::keys::KeyRing>()
        .expect("ring")
        .get("RS256")
        .expect("the issuer's RS256 key");
    let mut wide = claims.clone();
    wide["aud"] = json!(["portail-audioconf", "autre-service"]);
    wide["azp"] = json!("portail-audioconf");
    let sign = tchap_portal::oidc::jwt::sign;
    for (why, token) in [
        (
            "crit",
            crate::oidc_flow::signed_with_header(
                &key,
                json!({"alg": "RS256", "kid": key.kid, "typ": "JWT", "crit": ["exp"], "exp": 0}),
                &claims,
            ),
        ),
        (
            "typ",
            sign(&key, &claims, Some(tchap_portal::oidc::jwt::USERINFO_TYP)).expect("sign"),
        ),
        ("aud", sign(&key, &wide, Some("JWT")).expect("sign")),
    ] {
        let mut b = body.clone();
        b["id_token"] = json!(token);
        match issuer.verified_email(&tokens(&b), "the-nonce").await {
            Err(RpError::IdToken(w)) => assert_eq!(w, why),
            other => panic!("{why}: {other:?}"),
        }
    }
    // The same claims under the same key, as an ID token: accepted.
    let mut b = body.clone();
    b["id_token"] = json!(sign(&key, &claims, Some("JWT")).expect("sign"));
    assert!(issuer
        .verified_email(&tokens(&b), "the-nonce")
        .await
        .is_ok());

    let mut b = body.clone();
    b.as_object_mut().expect("object").remove("id_token");
    assert!(issuer
        .verified_email(&tokens(&b), "the-nonce")
        .await
        .is_err());
}

#[rocket::async_test]
async fn statistics_show_thirty_days_as_a_chart_and_a_table_and_top_domains_to_admins() {
    use crate::common::matrix::new_user;
    let smtp = SmtpServer::start();
    let (_, admin) = new_user("stats", "Stats-pass-42", None).await;
    let app = app(&smtp, |f| f.merge(("portal.admins", vec![admin.clone()]))).await;
    let settings = settings_of(&app);
    for i in 0..3 {
        book_direct(&app, &settings, i).await.expect("booked");
    }
    let mut conn = app.db.conn().await;
    // One booked two days ago, one 40 days ago (outside the 30 days).
    for (id_rank, days) in [(1, 2), (2, 40)] {
        diesel::sql_query(format!(
            "UPDATE audioconf_conferences SET created_at = now() - interval '{days} days' \
             WHERE id = (SELECT id FROM audioconf_conferences ORDER BY id OFFSET {id_rank} LIMIT 1)"
        ))
        .execute(&mut conn)
        .await
        .expect("moved back");
    }
    let today = tchap_portal::audioconf::format::paris_date(Utc::now());
    let row = |d: chrono::NaiveDate| format!("<time datetime=\"{d}\">");
    let (status, page) = get(&app, "/audioconf/statistiques").await;
    assert_eq!(status, Status::Ok);
    assert_eq!(title(&page), "Statistiques d’AudioConf — Portail Tchap");
    assert_eq!(page.matches("<rect ").count(), 30, "one bar per day");
    assert_eq!(
        page.matches("<time datetime=").count(),
        30,
        "one row per day"
    );
    assert!(page.contains("role=\"img\" aria-labelledby=\"chart-title chart-desc\""));
    assert!(page.contains("2 audioconférence(s) réservée(s)"));
    for (d, n) in [
        (today, 1),
        (today - Duration::days(2), 1),
        (today - Duration::days(1), 0),
    ] {
        let at = page.find(&row(d)).expect("the day's row");
        let cells = &page[at..at + 120];
        assert!(
            cells.contains(&format!("</time></td><td>{n}</td>")),
            "{d}: {n} in {cells}"
        );
    }
    assert!(
        !page.contains("Domaines les plus actifs"),
        "not for everyone"
    );
    assert!(!page.contains("agent.gouv.fr"));

    crate::common::log_in(&app.client, &admin, "Stats-pass-42").await;
    let (_, page) = get(&app, "/audioconf/statistiques").await;
    assert!(page.contains("Domaines les plus actifs"));
    assert!(page.contains("<td>agent.gouv.fr</td><td>2</td>"));
}

#[rocket::async_test]
async fn an_unreachable_tchap_issuer_keeps_the_choice_and_says_so_and_no_client_means_no_button() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| {
        f.merge(("portal.audioconf.tchap.issuer", "http://127.0.0.1:9"))
            .merge(("portal.audioconf.tchap.client_id", "audioconf"))
            .merge((
                "portal.audioconf.tchap.client_secret",
                "a-secret-from-the-provider",
            ))
    })
    .await;
    let res = app.client.get("/audioconf").dispatch().await;
    let csp = res
        .headers()
        .get_one("Content-Security-Policy")
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("form-action 'self' http://127.0.0.1:9"),
        "the form may go on to the issuer: {csp}"
    );
    let page = unescape(&res.into_string().await.expect("page"));
    assert!(page.contains("formaction=\"/audioconf/tchap\""));
    let (status, page) = post(
        &app,
        "/audioconf/tchap",
        format!(
            "csrf_token={}&when=duration&duration=120",
            csrf_token(&page)
        ),
    )
    .await;
    assert_eq!(status, Status::ServiceUnavailable);
    assert!(page.contains("La connexion avec Tchap est indisponible"));
    assert!(
        page.contains("value=\"120\" selected"),
        "the choice is kept"
    );

    // Another issuer and no client registered there: the button is not offered.
    let app = app_without_client(&smtp).await;
    let (_, page) = get(&app, "/audioconf").await;
    assert!(!page.contains("formaction"));
}

async fn app_without_client(smtp: &SmtpServer) -> TestApp {
    app(smtp, |f| {
        f.merge((
            "portal.audioconf.tchap.issuer",
            "https://id.example.gouv.fr",
        ))
    })
    .await
}
