//! The outbox against a real SMTP server: delivery, and no mail lost while SMTP is down.

use chrono::{Duration, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tchap_portal::config::MailSettings;
use tchap_portal::db::schema::outbox;
use tchap_portal::mail::transport::Transport;
use tchap_portal::mail::{enqueue, worker, Mail, Mailer};

use crate::common::smtp::SmtpServer;
use crate::common::TestApp;

fn smtp_settings(app: &TestApp, port: u16) -> MailSettings {
    let config = app
        .client
        .rocket()
        .state::<tchap_portal::config::Config>()
        .expect("config");
    let mut s = config.settings.mail.clone();
    s.transport = tchap_portal::config::MailTransport::Smtp;
    s.smtp_host = Some("127.0.0.1".into());
    s.smtp_port = Some(port);
    s.smtp_security = tchap_portal::config::SmtpSecurity::None;
    s.smtp_timeout_secs = 3;
    s
}

async fn queue_test_mail(app: &TestApp, to: &str) -> String {
    let mailer = app.client.rocket().state::<Mailer>().expect("mailer");
    let mut conn = app.db.conn().await;
    enqueue(&mut conn, mailer, Mail::test(to), Utc::now())
        .await
        .expect("queued")
}

#[rocket::async_test]
async fn a_queued_mail_reaches_the_smtp_server_with_text_and_html() {
    let app = TestApp::new().await;
    let smtp = SmtpServer::start();
    let settings = smtp_settings(&app, smtp.port);
    let transport = Transport::from_settings(&settings).expect("transport");
    let message_id = queue_test_mail(&app, "alice@example.gouv.fr").await;

    let batch = worker::run_once(app.pool(), &transport, &settings, Utc::now())
        .await
        .expect("run");
    assert_eq!(batch.sent, 1);
    let mails = smtp.wait_for(1);
    assert_eq!(mails.len(), 1);
    let raw = &mails[0];
    assert!(raw.contains("To: alice@example.gouv.fr"), "{raw}");
    assert!(raw.contains(&format!("Message-ID: {message_id}")));
    assert!(raw.contains("Content-Type: text/plain; charset=utf-8"));
    assert!(raw.contains("Content-Type: text/html; charset=utf-8"));
    assert!(
        raw.contains("Subject: =?utf-8?") || raw.contains("Subject: Courriel de test"),
        "{raw}"
    );

    // Sent once: the next pass finds nothing to do.
    let batch = worker::run_once(app.pool(), &transport, &settings, Utc::now())
        .await
        .expect("run");
    assert_eq!(batch, worker::Batch::default());
    let mut conn = app.db.conn().await;
    let status: String = outbox::table
        .select(outbox::status)
        .first(&mut conn)
        .await
        .expect("row");
    assert_eq!(status, "sent");
}

#[rocket::async_test]
async fn mail_survives_an_smtp_outage_and_is_delivered_once() {
    let app = TestApp::new().await;
    let mut smtp = SmtpServer::start();
    let settings = smtp_settings(&app, smtp.port);
    let transport = Transport::from_settings(&settings).expect("transport");

    smtp.stop();
    queue_test_mail(&app, "bob@example.gouv.fr").await;
    let now = Utc::now();
    let batch = worker::run_once(app.pool(), &transport, &settings, now)
        .await
        .expect("run");
    assert_eq!(batch.retried, 1, "SMTP down: the mail waits");
    let mut conn = app.db.conn().await;
    let (status, attempts, next, error): (String, i32, chrono::DateTime<Utc>, Option<String>) =
        outbox::table
            .select((
                outbox::status,
                outbox::attempts,
                outbox::next_attempt_at,
                outbox::last_error,
            ))
            .first(&mut conn)
            .await
            .expect("row");
    assert_eq!((status.as_str(), attempts), ("pending", 1));
    assert!(next > now, "retried later, not in a loop");
    assert!(error.is_some());

    // Not due yet: nothing happens even with SMTP back.
    smtp.restart();
    let batch = worker::run_once(app.pool(), &transport, &settings, now)
        .await
        .expect("run");
    assert_eq!(batch, worker::Batch::default());
    // Once due, it is delivered, exactly once.
    let later = next + Duration::seconds(1);
    assert_eq!(
        worker::run_once(app.pool(), &transport, &settings, later)
            .await
            .expect("run")
            .sent,
        1
    );
    assert_eq!(
        worker::run_once(app.pool(), &transport, &settings, later)
            .await
            .expect("run")
            .sent,
        0
    );
    let mails = smtp.wait_for(1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(smtp.messages().len(), 1, "{mails:?}");
}

#[rocket::async_test]
async fn a_mail_that_cannot_be_sent_for_too_long_is_marked_failed() {
    let app = TestApp::new().await;
    let mut smtp = SmtpServer::start();
    let settings = smtp_settings(&app, smtp.port);
    let transport = Transport::from_settings(&settings).expect("transport");
    smtp.stop();
    queue_test_mail(&app, "carol@example.gouv.fr").await;
    let too_late = Utc::now() + Duration::hours(settings.max_age_hours + 1);
    let batch = worker::run_once(app.pool(), &transport, &settings, too_late)
        .await
        .expect("run");
    assert_eq!(batch.failed, 1);
    let mut conn = app.db.conn().await;
    let status: String = outbox::table
        .select(outbox::status)
        .first(&mut conn)
        .await
        .expect("row");
    assert_eq!(status, "failed");
}

#[rocket::async_test]
async fn the_worker_started_with_the_portal_delivers_on_its_own() {
    let smtp = SmtpServer::start();
    let db = crate::common::TestDb::new().await;
    let fig = crate::common::figment(&db)
        .merge(("portal.mail.worker", true))
        .merge(("portal.mail.transport", "smtp"))
        .merge(("portal.mail.smtp_host", "127.0.0.1"))
        .merge(("portal.mail.smtp_port", smtp.port))
        .merge(("portal.mail.smtp_security", "none"));
    let app = TestApp::with_figment(db, fig).await;
    queue_test_mail(&app, "dan@example.gouv.fr").await;
    app.client
        .rocket()
        .state::<Mailer>()
        .expect("mailer")
        .wake
        .notify_one();
    let mails = smtp.wait_for(1);
    assert_eq!(mails.len(), 1, "the background worker sent the mail");
}

#[rocket::async_test]
async fn sent_mails_leave_the_outbox_after_the_keeping_time_and_others_stay() {
    let db = crate::common::TestDb::new().await;
    let mut conn = db.conn().await;
    let now = Utc::now();
    for (id, status, sent_at) in [
        ("old-sent", "sent", Some(now - Duration::hours(30))),
        ("new-sent", "sent", Some(now - Duration::hours(2))),
        ("pending", "pending", None),
        ("failed", "failed", None),
    ] {
        diesel::insert_into(outbox::table)
            .values((
                outbox::message_id.eq(id),
                outbox::kind.eq("test"),
                outbox::sender.eq("a@portail.localhost"),
                outbox::recipients.eq(vec![Some("b@agent.gouv.fr".to_owned())]),
                outbox::raw.eq(b"PIN 123 456 789".to_vec()),
                outbox::status.eq(status),
                outbox::attempts.eq(0),
                outbox::next_attempt_at.eq(now - Duration::days(3)),
                outbox::created_at.eq(now - Duration::days(3)),
                outbox::sent_at.eq(sent_at),
            ))
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    let purged = tchap_portal::mail::purge_sent(&mut conn, now - Duration::hours(24))
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    let mut left: Vec<String> = outbox::table
        .select(outbox::message_id)
        .load(&mut conn)
        .await
        .expect("rows");
    left.sort();
    assert_eq!(left, ["failed", "new-sent", "pending"]);
}

#[rocket::async_test]
async fn a_mail_held_by_a_dead_worker_is_taken_over_when_its_lease_runs_out() {
    let app = TestApp::new().await;
    let smtp = SmtpServer::start();
    let settings = smtp_settings(&app, smtp.port);
    let transport = Transport::from_settings(&settings).expect("transport");
    let message_id = queue_test_mail(&app, "erin@example.gouv.fr").await;
    // Another instance claimed it, then died: its lease still runs for two seconds.
    let mut conn = app.db.conn().await;
    diesel::sql_query(
        "UPDATE outbox SET lease_owner = 'other-host/1/dead', \
         lease_until = clock_timestamp() + interval '2 seconds'",
    )
    .execute(&mut conn)
    .await
    .expect("lease");

    let batch = worker::run_once(app.pool(), &transport, &settings, Utc::now())
        .await
        .expect("run");
    assert_eq!(batch, worker::Batch::default(), "held by another worker");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(smtp.messages().is_empty());

    rocket::tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let batch = worker::run_once(app.pool(), &transport, &settings, Utc::now())
        .await
        .expect("run");
    assert_eq!(batch.sent, 1, "taken over once the lease ran out");
    let mails = smtp.wait_for(1);
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains(&message_id));
    let (status, owner): (String, Option<String>) = outbox::table
        .select((outbox::status, outbox::lease_owner))
        .first(&mut conn)
        .await
        .expect("row");
    assert_eq!(
        (status.as_str(), owner),
        ("sent", None),
        "sent, lease given back"
    );
}

#[rocket::async_test]
async fn many_queued_mails_go_out_once_each_over_several_lanes() {
    let app = TestApp::new().await;
    let smtp = SmtpServer::start();
    let mut settings = smtp_settings(&app, smtp.port);
    settings.smtp_connections = 3;
    let transport = Transport::from_settings(&settings).expect("transport");
    let mut ids = Vec::new();
    for i in 0..45 {
        ids.push(queue_test_mail(&app, &format!("agent.{i}@example.gouv.fr")).await);
    }
    // Two workers at once (two instances' passes) on the same outbox.
    let (a, b) = rocket::tokio::join!(
        worker::run_once(app.pool(), &transport, &settings, Utc::now()),
        worker::run_once(app.pool(), &transport, &settings, Utc::now()),
    );
    let (a, b) = (a.expect("run a"), b.expect("run b"));
    assert_eq!(a.sent + b.sent, 45, "{a:?} {b:?}");
    smtp.wait_for(45);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mails = smtp.messages();
    assert_eq!(mails.len(), 45, "each mail exactly once");
    for id in &ids {
        let copies = mails.iter().filter(|m| m.contains(id.as_str())).count();
        assert_eq!(copies, 1, "{id}");
    }
}
