//! Server-side sessions: found by their cookie, ended by idle or absolute expiry.

use chrono::{Duration, Utc};
use tchap_portal::accounts::matrix::MatrixClient;
use tchap_portal::accounts::session::{self, NewLogin};
use tchap_portal::config::SessionSettings;
use tchap_portal::crypto::Keys;

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
    let config =
        tchap_portal::config::Config::from_figment(&crate::common::figment(&db)).expect("settings");
    let matrix = MatrixClient::new(&config).expect("client");
    let keys = Keys::new(&config.secret_key);
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
        tchap_portal::accounts::purge_expired(
            &mut conn,
            &settings,
            &matrix,
            &keys,
            t0 + Duration::hours(13)
        )
        .await
        .expect("purge"),
        2
    );
}

#[rocket::async_test]
async fn an_expired_session_s_device_is_logged_out_on_the_homeserver() {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use tchap_portal::db::schema::sessions;
    let app = crate::common::TestApp::new().await;
    let (_, user_id) = crate::common::matrix::new_user("expiring", "Expiring-pass-42", None).await;
    crate::common::log_in(&app.client, &user_id, "Expiring-pass-42").await;
    let config = app
        .client
        .rocket()
        .state::<tchap_portal::config::Config>()
        .expect("config");
    let keys = Keys::new(&config.secret_key);
    let matrix = app.client.rocket().state::<MatrixClient>().expect("client");
    let mut conn = app.db.conn().await;
    let user: session::CurrentUser = sessions::table
        .select(session::CurrentUser::as_select())
        .first(&mut conn)
        .await
        .expect("session");
    let token = user.access_token(&keys).expect("token");
    assert_eq!(
        crate::common::matrix::whoami(&token).await,
        Ok(user_id.clone())
    );

    // Not expired yet: nothing goes, the device stays.
    let settings = &config.settings.session;
    let now = Utc::now();
    let purged = tchap_portal::accounts::purge_expired(&mut conn, settings, matrix, &keys, now)
        .await
        .expect("purge");
    assert_eq!(purged, 0);
    assert!(crate::common::matrix::whoami(&token).await.is_ok());

    // Idle past its limit: the device is logged out, then the row goes.
    let later = now + Duration::minutes(settings.idle_minutes + 1);
    let purged = tchap_portal::accounts::purge_expired(&mut conn, settings, matrix, &keys, later)
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    assert_eq!(crate::common::matrix::whoami(&token).await, Err(401));
}

/// Pages behind the `CurrentUser` and `Admin` guards, and a form that needs the agent.
#[rocket::async_test]
async fn with_the_database_gone_a_logged_in_agent_gets_503_not_the_login_page() {
    let (_, user_id) = crate::common::matrix::new_user("dbdown", "Dbdown-pass-42", None).await;
    let db = crate::common::TestDb::new().await;
    let fig = crate::common::figment(&db)
        .merge(("portal.admins", vec![user_id.clone()]))
        .merge(("portal.db.timeout_secs", 1));
    let app = crate::common::TestApp::with_figment(db, fig).await;
    crate::common::log_in(&app.client, &user_id, "Dbdown-pass-42").await;
    assert_eq!(
        app.client
            .get("/discussions/nouveau")
            .dispatch()
            .await
            .status(),
        rocket::http::Status::Ok
    );
    let token = crate::common::form_token(&app.client, "/").await;
    app.db.drop_now().await;
    for path in ["/discussions/nouveau", "/admin/services", "/mes-services"] {
        let res = app.client.get(path).dispatch().await;
        assert_eq!(
            res.status(),
            rocket::http::Status::ServiceUnavailable,
            "{path}: {:?}",
            res.headers().get_one("Location")
        );
    }
    let res = app
        .client
        .post("/mes-services/some-service/retirer")
        .header(rocket::http::ContentType::Form)
        .body(format!("csrf_token={token}"))
        .dispatch()
        .await;
    assert_eq!(res.status(), rocket::http::Status::ServiceUnavailable);
}

#[rocket::async_test]
async fn an_expired_session_whose_homeserver_is_down_is_kept_for_another_try_then_given_up() {
    use tchap_portal::accounts::login::{token_aad, TOKEN_PURPOSE};
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    let config = tchap_portal::config::Config::from_figment(
        &crate::common::figment(&db).merge(("portal.matrix.timeout_secs", 1)),
    )
    .expect("settings");
    let matrix = MatrixClient::new(&config).expect("client");
    let keys = Keys::new(&config.secret_key);
    let settings = &config.settings.session;
    // Nothing listens there: the logout cannot reach the device.
    let down = format!("http://127.0.0.1:{}", crate::common::free_port());
    let sealed = keys
        .encrypt(
            TOKEN_PURPOSE,
            b"syt_token",
            &token_aad("@alice:localhost", "PORTAL1"),
        )
        .expect("seal");
    let t0 = Utc::now();
    session::create(
        &mut conn,
        &NewLogin {
            homeserver_url: &down,
            access_token_enc: &sealed,
            ..login()
        },
        settings,
        t0,
    )
    .await
    .expect("created");
    let ended = t0 + Duration::minutes(settings.idle_minutes + 1);
    use tchap_portal::accounts::purge_expired;
    assert_eq!(
        purge_expired(&mut conn, settings, &matrix, &keys, ended)
            .await
            .expect("purge"),
        0,
        "kept: its device is still logged in"
    );
    assert_eq!(
        purge_expired(
            &mut conn,
            settings,
            &matrix,
            &keys,
            ended + Duration::days(8)
        )
        .await
        .expect("purge"),
        1,
        "given up a week after it ended"
    );
}
