//! Server-side sessions: found by their cookie, ended by idle or absolute expiry.

use chrono::{Duration, Utc};
use tchap_portal::accounts::session::{self, NewLogin};
use tchap_portal::config::SessionSettings;

use crate::common::TestDb;

fn login<'a>() -> NewLogin<'a> {
    NewLogin {
        matrix_user_id: "@alice:localhost",
        device_id: "PORTAL1",
        homeserver_url: "http://127.0.0.1:8008",
        access_token_enc: b"sealed",
        display_name: Some("Alice Martin [DINUM]"),
        emails: &[],
        amr: &["pwd"],
    }
}

#[rocket::async_test]
async fn a_session_lives_until_idle_or_absolute_expiry() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    let settings = SessionSettings {
        idle_minutes: 30,
        absolute_hours: 12,
    };
    let t0 = Utc::now();
    let (_, cookie) = session::create(&mut conn, &login(), &settings, t0)
        .await
        .expect("created");
    let (_, other) = session::create(&mut conn, &login(), &settings, t0)
        .await
        .expect("created");
    assert_ne!(cookie, other, "each login gets a new id");

    let found = session::find(&mut conn, &cookie, &settings, t0 + Duration::minutes(20))
        .await
        .expect("query");
    assert_eq!(
        found.map(|u| u.matrix_user_id),
        Some("@alice:localhost".to_owned())
    );
    assert!(session::find(&mut conn, "not-a-session", &settings, t0)
        .await
        .expect("query")
        .is_none());

    // Activity at 20 min keeps it alive at 45 min; 31 idle minutes after that end it.
    assert!(
        session::find(&mut conn, &cookie, &settings, t0 + Duration::minutes(45))
            .await
            .expect("q")
            .is_some()
    );
    assert!(
        session::find(&mut conn, &cookie, &settings, t0 + Duration::minutes(77))
            .await
            .expect("q")
            .is_none()
    );

    // Active all along, it still ends at the absolute limit.
    let mut t = t0;
    while t < t0 + Duration::hours(12) - Duration::minutes(20) {
        t += Duration::minutes(20);
        assert!(
            session::find(&mut conn, &other, &settings, t)
                .await
                .expect("q")
                .is_some(),
            "{t}"
        );
    }
    assert!(
        session::find(&mut conn, &other, &settings, t0 + Duration::hours(12))
            .await
            .expect("q")
            .is_none()
    );
    assert_eq!(
        session::purge_expired(&mut conn, &settings, t0 + Duration::hours(13))
            .await
            .expect("purge"),
        2
    );
}
