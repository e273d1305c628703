//! Logging in with a Tchap account against the real Synapse, and every way it can go wrong.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rocket::http::{ContentType, Status};
use rocket::local::asynchronous::Client;
use tchap_portal::accounts::session::CurrentUser;
use tchap_portal::crypto::Keys;
use tchap_portal::db::schema::sessions;

use crate::common::hostile::Hostile;
use crate::common::matrix::{new_user, whoami};
use crate::common::{csrf_token, figment, form_token, title, TestApp, TestDb};

const PASSWORD: &str = "Correct-horse-42";

fn enc(s: &str) -> String {
    tchap_portal::accounts::matrix::percent_encode(s)
}

async fn post_login(
    client: &Client,
    identifier: &str,
    password: &str,
    next: &str,
) -> (Status, Option<String>, String) {
    let page = client
        .get("/connexion")
        .dispatch()
        .await
        .into_string()
        .await
        .expect("page");
    let token = csrf_token(&page);
    let res = client
        .post("/connexion")
        .header(ContentType::Form)
        .body(format!(
            "csrf_token={token}&identifier={}&password={}&next={}",
            enc(identifier),
            enc(password),
            enc(next)
        ))
        .dispatch()
        .await;
    let status = res.status();
    let location = res.headers().get_one("Location").map(str::to_owned);
    (
        status,
        location,
        res.into_string().await.unwrap_or_default(),
    )
}

#[rocket::async_test]
async fn an_agent_logs_in_and_out_with_a_tchap_account() {
    let app = TestApp::new().await;
    let (local, user_id) = new_user("alice", PASSWORD, Some("Alice Martin [DINUM]")).await;

    let (status, location, _) = post_login(&app.client, &user_id, PASSWORD, "/plan-du-site").await;
    assert_eq!(status, Status::SeeOther);
    assert_eq!(location.as_deref(), Some("/plan-du-site"));
    let cookie_1 = app
        .client
        .cookies()
        .get("session")
        .map(|c| c.value().to_owned())
        .expect("session cookie");

    let home = app
        .client
        .get("/")
        .dispatch()
        .await
        .into_string()
        .await
        .expect("home");
    assert!(
        home.contains("Alice Martin [DINUM]"),
        "the header shows who is logged in"
    );
    assert!(home.contains("Se déconnecter"));

    // The row keeps the Matrix token encrypted, and it works on the homeserver.
    let mut conn = app.db.conn().await;
    let row: CurrentUser = sessions::table
        .select(CurrentUser::as_select())
        .first(&mut conn)
        .await
        .expect("row");
    assert_eq!(row.matrix_user_id, user_id);
    assert!(
        !row.access_token_enc.windows(4).any(|w| w == b"syt_"),
        "token stored encrypted"
    );
    let keys = app.client.rocket().state::<Keys>().expect("keys");
    let token = row.access_token(keys).expect("decrypts");
    assert_eq!(whoami(&token).await, Ok(user_id.clone()));

    // Logging out ends the session here and revokes the token on the homeserver.
    let token_field = csrf_token(&home);
    let res = app
        .client
        .post("/deconnexion")
        .header(ContentType::Form)
        .body(format!("csrf_token={token_field}"))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther);
    let home = app
        .client
        .get("/")
        .dispatch()
        .await
        .into_string()
        .await
        .expect("home");
    assert!(home.contains("Se connecter") && !home.contains("Alice Martin"));
    assert_eq!(whoami(&token).await, Err(401));
    let left: i64 = sessions::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(left, 0);

    // A new login gets a new session id; the localpart alone works too.
    let (status, _, _) = post_login(&app.client, &local, PASSWORD, "/").await;
    assert_eq!(status, Status::SeeOther);
    let cookie_2 = app
        .client
        .cookies()
        .get("session")
        .map(|c| c.value().to_owned())
        .expect("session cookie");
    assert_ne!(cookie_1, cookie_2);
}

#[rocket::async_test]
async fn wrong_credentials_get_one_message_with_the_input_kept() {
    let app = TestApp::new().await;
    let (_, user_id) = new_user("bob", PASSWORD, None).await;
    for identifier in [user_id.as_str(), "@nobody-here:localhost"] {
        let (status, _, html) = post_login(&app.client, identifier, "wrong-password", "/").await;
        assert_eq!(status, Status::Ok);
        assert!(
            html.contains("L’adresse ou le mot de passe est incorrect"),
            "{html}"
        );
        assert!(
            html.contains(&format!("value=\"{identifier}\"")),
            "identifier kept"
        );
        assert!(title(&html).starts_with("Erreur : "));
        assert!(
            !html.contains("wrong-password"),
            "the password is never echoed"
        );
    }
}

#[rocket::async_test]
async fn empty_fields_are_named_and_linked_from_the_summary() {
    let app = TestApp::new().await;
    let (status, _, html) = post_login(&app.client, "", "", "/").await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(html.contains("href=\"#identifier\"") && html.contains("href=\"#password\""));
    assert!(html.contains("aria-describedby=\"identifier-erreur\""));
    assert!(html.contains("id=\"password-erreur\""));
    assert!(html.contains("Saisissez votre mot de passe."));
}

#[rocket::async_test]
async fn repeated_failures_are_throttled_with_retry_after() {
    let app = TestApp::new().await;
    let (_, user_id) = new_user("carol", PASSWORD, None).await;
    for _ in 0..5 {
        assert_eq!(
            post_login(&app.client, &user_id, "nope", "/").await.0,
            Status::Ok
        );
    }
    let page = app
        .client
        .get("/connexion")
        .dispatch()
        .await
        .into_string()
        .await
        .expect("page");
    let res = app
        .client
        .post("/connexion")
        .header(ContentType::Form)
        .body(format!(
            "csrf_token={}&identifier={}&password={PASSWORD}",
            csrf_token(&page),
            enc(&user_id)
        ))
        .dispatch()
        .await;
    assert_eq!(
        res.status(),
        Status::TooManyRequests,
        "even the right password waits"
    );
    let retry: i64 = res
        .headers()
        .get_one("Retry-After")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(retry > 0 && retry <= 15 * 60);
    assert!(res
        .into_string()
        .await
        .expect("body")
        .contains("Trop de tentatives"));
}

#[rocket::async_test]
async fn a_homeserver_down_or_silent_gives_a_clear_page_with_the_input_kept() {
    // Down: nothing listens. Silent: it accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let down_url = format!("http://127.0.0.1:{}", crate::common::free_port());
    for url in [down_url, silent_url] {
        let db = TestDb::new().await;
        let fig = figment(&db)
            .merge(("portal.matrix.homeserver", url.clone()))
            .merge(("portal.matrix.timeout_secs", 1));
        let app = TestApp::with_figment(db, fig).await;
        let (status, _, html) = post_login(&app.client, "@dave:localhost", PASSWORD, "/").await;
        assert_eq!(status, Status::ServiceUnavailable, "{url}");
        assert!(html.contains("Tchap ne répond pas"), "{url}");
        assert!(html.contains("value=\"@dave:localhost\""));
        assert!(
            html.contains("<form method=\"post\" action=\"/connexion\""),
            "the retry is the same form"
        );
    }
    drop(silent);
}

#[rocket::async_test]
async fn an_expired_tchap_account_gets_its_own_message_and_no_session() {
    let app = TestApp::new().await;
    let (_, user_id) = new_user("expired", PASSWORD, None).await;
    crate::common::matrix::expire(&user_id).await;
    let (status, location, html) = post_login(&app.client, &user_id, PASSWORD, "/").await;
    assert_eq!((status, location), (Status::Ok, None));
    assert!(html.contains("Votre compte Tchap a expiré"), "{html}");
    assert!(title(&html).starts_with("Erreur : "));
    assert!(
        html.contains(&format!("value=\"{user_id}\"")),
        "identifier kept"
    );
    let mut conn = app.db.conn().await;
    let n: i64 = sessions::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(n, 0, "no session for an expired account");
}

/// The number of sessions in a test's database.
async fn session_count(db: &TestDb) -> i64 {
    let mut conn = db.conn().await;
    sessions::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count")
}

#[rocket::async_test]
async fn a_matrix_id_of_a_server_not_configured_is_refused_without_asking_it() {
    let hostile = Hostile::start("@admin:localhost", "localhost").await;
    let app = TestApp::new().await;
    for identifier in [
        format!("@agent:127.0.0.1:{}", hostile.port),
        "@agent:evil.example".to_owned(),
    ] {
        let (status, location, html) = post_login(&app.client, &identifier, PASSWORD, "/").await;
        assert_eq!((status, location), (Status::UnprocessableEntity, None));
        assert!(
            html.contains("pas sur un serveur Tchap accepté"),
            "{identifier}: {html}"
        );
        assert!(
            html.contains(&format!("value=\"{identifier}\"")),
            "input kept"
        );
        assert!(
            html.contains("aria-describedby=\"identifier-"),
            "tied to the field"
        );
    }
    assert_eq!(hostile.seen(), Vec::<String>::new(), "nothing was fetched");
    assert_eq!(session_count(&app.db).await, 0);
}

#[rocket::async_test]
async fn a_configured_homeserver_is_believed_only_for_its_own_users() {
    // The hostile server is configured as `evil.test`: it may vouch for `@…:evil.test` only.
    // It is also the discovery server, and names itself for every address.
    let hostile = Hostile::start("@admin:localhost", "evil.test").await;
    let db = TestDb::new().await;
    let fig = figment(&db)
        .merge((
            "portal.matrix.homeservers",
            vec![serde_json::json!({"server_name": "evil.test", "url": hostile.url})],
        ))
        .merge((
            "portal.matrix.discovery_homeservers",
            vec![hostile.url.clone()],
        ));
    let app = TestApp::with_figment(db, fig).await;
    let forged = [
        // Another server's user (the default homeserver's administrator, say).
        ("@agent:evil.test", "@admin:localhost"),
        // Another account of its own.
        ("@agent:evil.test", "@ministre:evil.test"),
        ("agent@ministere.gouv.fr", "@admin:localhost"),
        // Not a user ID at all.
        ("@agent:evil.test", "@agent:evil.test\u{0}"),
        ("@agent:evil.test", "admin"),
    ];
    for (identifier, answered) in forged {
        hostile.set_login_user_id(answered);
        let (status, location, html) = post_login(&app.client, identifier, PASSWORD, "/").await;
        assert_eq!(
            (status, location),
            (Status::BadGateway, None),
            "{identifier} answered as {answered:?}"
        );
        assert!(html.contains("répondu pour un autre compte"), "{html}");
        assert_eq!(session_count(&app.db).await, 0, "{answered:?}");
    }
    assert!(
        !hostile
            .seen()
            .iter()
            .any(|p| p.contains("/profile/") || p.contains("/3pid")),
        "nothing more is asked of a server that lied"
    );
    // The same server answering for the account typed is believed.
    hostile.set_login_user_id("@agent:evil.test");
    let (status, location, _) = post_login(&app.client, "@agent:evil.test", PASSWORD, "/").await;
    assert_eq!((status, location.as_deref()), (Status::SeeOther, Some("/")));
    assert_eq!(session_count(&app.db).await, 1);
}

#[rocket::async_test]
async fn email_discovery_leads_only_to_configured_homeservers() {
    let elsewhere = Hostile::start("@admin:localhost", "").await;
    let discovery = Hostile::start("", &format!("127.0.0.1:{}", elsewhere.port)).await;
    let db = TestDb::new().await;
    let fig = figment(&db).merge((
        "portal.matrix.discovery_homeservers",
        vec![discovery.url.clone()],
    ));
    let app = TestApp::with_figment(db, fig).await;
    let (_, user_id) = new_user("discovered", PASSWORD, None).await;
    let address = format!("{}@agent.gouv.fr", crate::common::matrix::random_tag());
    crate::common::matrix::set_email(&user_id, &address).await;

    let (status, _, html) = post_login(&app.client, &address, PASSWORD, "/").await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(html.contains("pas sur un serveur Tchap accepté"), "{html}");
    assert!(html.contains(&format!("value=\"{address}\"")));
    assert_eq!(discovery.seen(), vec!["/_matrix/identity/api/v1/info"]);
    assert_eq!(
        elsewhere.seen(),
        Vec::<String>::new(),
        "the unlisted server is never asked"
    );
    assert_eq!(session_count(&app.db).await, 0);

    // Named a configured server (the test Synapse, `localhost`), the same address logs in there.
    discovery.set_info_hs("localhost");
    let (status, location, _) = post_login(&app.client, &address, PASSWORD, "/").await;
    assert_eq!((status, location.as_deref()), (Status::SeeOther, Some("/")));
    let mut conn = app.db.conn().await;
    let who: String = sessions::table
        .select(sessions::matrix_user_id)
        .first(&mut conn)
        .await
        .expect("session");
    assert_eq!(who, user_id);
}

#[rocket::async_test]
async fn failures_count_for_the_account_however_it_is_spelled() {
    let app = TestApp::new().await;
    let (local, user_id) = new_user("spelled", PASSWORD, None).await;
    let address = format!("{local}@agent.gouv.fr");
    crate::common::matrix::set_email(&user_id, &address).await;
    // One login with the address: the portal learns which account it belongs to.
    let (status, _, _) = post_login(&app.client, &address, PASSWORD, "/").await;
    assert_eq!(status, Status::SeeOther);
    let other = app.another_browser().await;
    // Each attempt from another client address: only the account can tie them together.
    let mut n = 0;
    let mut attempt = |spelling: String, password: &'static str| {
        n += 1;
        let peer: std::net::SocketAddr = format!("198.51.100.{n}:5000").parse().expect("addr");
        let other = &other;
        async move {
            let token = form_token(other, "/connexion").await;
            let res = other
                .post("/connexion")
                .remote(peer)
                .header(ContentType::Form)
                .body(format!(
                    "csrf_token={token}&identifier={}&password={password}",
                    enc(&spelling)
                ))
                .dispatch()
                .await;
            (res.status(), res.into_string().await.unwrap_or_default())
        }
    };
    for spelling in [&local, &user_id, &address, &local.to_uppercase(), &user_id] {
        let (status, html) = attempt(spelling.clone(), "wrong").await;
        assert_eq!(status, Status::Ok, "{spelling}: {html}");
    }
    for spelling in [&local, &user_id, &address] {
        let (status, html) = attempt(spelling.clone(), PASSWORD).await;
        assert_eq!(status, Status::TooManyRequests, "{spelling}");
        assert!(html.contains("Trop de tentatives"));
    }
}

/// A failed login from the TCP peer `peer` whose proxy header claims `198.51.100.<n>`.
async fn spoofed_attempt(client: &Client, peer: std::net::SocketAddr, n: usize) -> Status {
    let token = form_token(client, "/connexion").await;
    client
        .post("/connexion")
        .remote(peer)
        .header(rocket::http::Header::new(
            "X-Real-IP",
            format!("198.51.100.{n}"),
        ))
        .header(ContentType::Form)
        .body(format!(
            "csrf_token={token}&identifier=nobody{n}&password=wrong"
        ))
        .dispatch()
        .await
        .status()
}

/// `/metrics` asked from `peer`, whose proxy header claims the loopback address.
async fn metrics_claiming_loopback(client: &Client, peer: std::net::SocketAddr) -> Status {
    client
        .get("/metrics")
        .remote(peer)
        .header(rocket::http::Header::new("X-Real-IP", "127.0.0.1"))
        .dispatch()
        .await
        .status()
}

#[rocket::async_test]
async fn the_proxy_header_is_believed_only_from_a_configured_proxy() {
    let peer: std::net::SocketAddr = "203.0.113.9:5000".parse().expect("addr");
    // Not a proxy: each request claims another address; all count for the peer.
    let app = TestApp::new().await;
    let mut statuses = vec![];
    for n in 0..7 {
        statuses.push(spoofed_attempt(&app.client, peer, n).await);
    }
    assert_eq!(
        &statuses[5..],
        &[Status::TooManyRequests; 2],
        "{statuses:?}"
    );
    assert_eq!(
        metrics_claiming_loopback(&app.client, peer).await,
        Status::Forbidden,
        "a spoofed loopback reads no metrics"
    );

    // A configured proxy: its header is the client's address.
    let db = TestDb::new().await;
    let fig = figment(&db).merge(("portal.proxy.trusted", vec!["203.0.113.0/24"]));
    let app = TestApp::with_figment(db, fig).await;
    for n in 0..7 {
        assert_ne!(
            spoofed_attempt(&app.client, peer, n).await,
            Status::TooManyRequests
        );
    }
    assert_eq!(
        metrics_claiming_loopback(&app.client, peer).await,
        Status::Ok,
        "the proxy says the client is local"
    );
}

#[rocket::async_test]
async fn hostile_characters_in_the_login_form_never_break_it() {
    let app = TestApp::new().await;
    let token = form_token(&app.client, "/connexion").await;
    for (identifier, next) in [
        ("%00", "%00"),
        ("agent%00%01", "/%09/evil.example"),
        ("%40agent%00%3Alocalhost", "/%0d%0a/evil.example"),
        ("agent", "%2F%09%2Fevil.example"),
        ("agent", "/\\evil.example"),
    ] {
        let res = app
            .client
            .post("/connexion")
            .header(ContentType::Form)
            .body(format!(
                "csrf_token={token}&identifier={identifier}&password=x%00y&next={next}"
            ))
            .dispatch()
            .await;
        assert!(
            res.status().code < 500,
            "{identifier} {next}: {}",
            res.status()
        );
        let html = res.into_string().await.unwrap_or_default();
        assert!(!html.contains('\0'), "{identifier}");
        assert!(
            !html.contains("name=\"next\" value=\"/\t") && !html.contains("evil.example\""),
            "{next}: the way back is a local path"
        );
    }
    for next in [
        "/%09/evil.example",
        "/%0A/evil.example",
        "%2F%2Fevil.example",
        "//evil.example",
    ] {
        for path in [
            format!("/langue/en?next={next}"),
            format!("/connexion?next={next}"),
        ] {
            let res = app.client.get(path.clone()).dispatch().await;
            assert!(res.status().code < 500, "{path}: {}", res.status());
            let location = res.headers().get_one("Location").unwrap_or("/").to_owned();
            assert!(
                location.starts_with('/') && !location.starts_with("//"),
                "{path} → {location}"
            );
        }
    }
}
