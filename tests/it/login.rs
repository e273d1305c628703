//! Logging in with a Tchap account against the real Synapse, and every way it can go wrong.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rocket::http::{ContentType, Status};
use rocket::local::asynchronous::Client;
use tchap_portal::accounts::session::CurrentUser;
use tchap_portal::crypto::Keys;
use tchap_portal::db::schema::sessions;

use crate::common::matrix::{new_user, whoami};
use crate::common::{csrf_token, figment, title, TestApp, TestDb};

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
