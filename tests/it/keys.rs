//! Rotating `PORTAL_SECRET_KEY`: the new key seals what is new, the previous one still opens what
//! it sealed, `secrets reencrypt` moves everything to the new key, and nothing an agent or a
//! service keeps (a `sub`, a PIN) changes — neither with the upgrade that brings stable keys nor
//! with the rotation.

use base64::Engine;
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rocket::http::{ContentType, Cookie, Header, Status};
use rocket::local::asynchronous::Client;
use serde_json::{json, Value};
use tchap_portal::accounts::login::{token_aad, TOKEN_PURPOSE};
use tchap_portal::accounts::matrix::percent_encode as enc;
use tchap_portal::accounts::session;
use tchap_portal::audioconf::booking::{self, NewConference};
use tchap_portal::cli;
use tchap_portal::config::Config;
use tchap_portal::crypto::{self, Keys, Stable};
use tchap_portal::db::schema::{audioconf_conferences, sessions, stable_keys};
use tchap_portal::oidc::jwt;
use tchap_portal::web::i18n::Lang;

use crate::audioconf::BRIDGE_SECRET;
use crate::common::matrix::new_user;
use crate::common::{figment, TestDb};
use crate::oidc_flow::{decide, query};

const PASSWORD: &str = "Rotation-pass-42";
const RP: &str = "https://rp.example.gouv.fr/callback";

fn new_secret() -> String {
    base64::engine::general_purpose::STANDARD.encode(crypto::random_bytes(32).expect("random"))
}

fn secret_bytes(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64")
}

fn settings(db: &TestDb, secret: &str, previous: &[&str]) -> rocket::figment::Figment {
    figment(db)
        .merge(("portal.secret_key", secret))
        .merge((
            "portal.previous_secret_keys",
            previous.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ))
        .merge((
            "portal.audioconf.bridges",
            json!([{"name": "test", "secret": BRIDGE_SECRET}]),
        ))
}

async fn portal(db: &TestDb, secret: &str, previous: &[&str]) -> Client {
    let rocket = tchap_portal::build(settings(db, secret, previous)).expect("valid settings");
    Client::tracked(rocket).await.expect("the portal starts")
}

/// The agent approves the service and the service redeems the code: (`sub` of the verified ID
/// token, access token).
async fn sign_in_at_service(portal: &Client, client_id: &str, secret: &str) -> (String, String) {
    let res = portal
        .get(format!(
            "/authorize?response_type=code&client_id={client_id}&redirect_uri={}&scope=openid&state=s&nonce=n",
            enc(RP)
        ))
        .dispatch()
        .await;
    let loc = if res.status() == Status::Ok {
        let page = res.into_string().await.expect("consent page");
        decide(portal, &page, "approve").await
    } else {
        res.headers()
            .get_one("Location")
            .expect("redirect")
            .to_owned()
    };
    let code = query(&loc)["code"].clone();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
    let res = portal
        .post("/token")
        .header(ContentType::Form)
        .header(Header::new("Authorization", format!("Basic {basic}")))
        .body(format!(
            "grant_type=authorization_code&code={code}&redirect_uri={}",
            enc(RP)
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    let t: Value = serde_json::from_str(&res.into_string().await.expect("body")).expect("json");
    let jwks: Value = serde_json::from_str(
        &portal
            .get("/jwks.json")
            .dispatch()
            .await
            .into_string()
            .await
            .expect("jwks"),
    )
    .expect("json");
    let claims = jwt::verify(
        t["id_token"].as_str().expect("id_token"),
        &jwks,
        jwt::Expect::IdToken,
    )
    .expect("the ID token verifies");
    (
        claims["sub"].as_str().expect("sub").to_owned(),
        t["access_token"].as_str().expect("at").to_owned(),
    )
}

async fn userinfo_sub(portal: &Client, access_token: &str) -> String {
    let res = portal
        .get("/userinfo")
        .header(Header::new(
            "Authorization",
            format!("Bearer {access_token}"),
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    let info: Value = serde_json::from_str(&res.into_string().await.expect("body")).expect("json");
    info["sub"].as_str().expect("sub").to_owned()
}

/// The room list with a session cookie: it reads the agent's sealed Matrix token to sync.
async fn room_list(portal: &Client, session: &Cookie<'static>) -> (Status, Option<String>) {
    let res = portal
        .get("/discussions")
        .cookie(session.clone())
        .dispatch()
        .await;
    (
        res.status(),
        res.headers().get_one("Location").map(str::to_owned),
    )
}

/// Whether the telephony bridge's PIN check finds the conference (the PIN's stored HMAC).
async fn pin_accepted(portal: &Client, number: &str, pin: &str) -> bool {
    let res = portal
        .post("/api/v1/ivr/verify")
        .header(ContentType::JSON)
        .header(Header::new(
            "Authorization",
            format!("Bearer {BRIDGE_SECRET}"),
        ))
        .body(json!({"called": number, "pin": pin, "caller": "+33600000009"}).to_string())
        .dispatch()
        .await;
    res.status() == Status::Ok
}

/// Whether the cancellation page shows the PIN (sealed in the database).
async fn cancel_page_shows(portal: &Client, cancel_token: &str, pin: &str) -> bool {
    let res = portal
        .get(format!("/audioconf/annuler/{cancel_token}"))
        .dispatch()
        .await;
    let status = res.status();
    let page = res.into_string().await.unwrap_or_default();
    let grouped = tchap_portal::audioconf::format::grouped(pin);
    status == Status::Ok && page.contains(&grouped)
}

/// Sends the login form empty with a CSRF cookie and token: 422 when the token is accepted.
async fn send_form(portal: &Client, csrf_cookie: &Cookie<'static>, token: &str) -> Status {
    portal
        .post("/connexion")
        .header(ContentType::Form)
        .cookie(csrf_cookie.clone())
        .body(format!("csrf_token={token}&identifier=&password="))
        .dispatch()
        .await
        .status()
}

fn counts_line<'a>(report: &'a str, what: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("a line for {what} in {report}"))
}

#[rocket::async_test]
async fn a_rotated_secret_key_keeps_subjects_sessions_and_pins_and_reencrypt_retires_it() {
    let db = TestDb::new().await;
    let (k0, k1, k2) = (new_secret(), new_secret(), new_secret());

    // Before: a service, an agent signed in there, a booked conference, all under k0.
    let before = portal(&db, &k0, &[]).await;
    let mut conn = db.conn().await;
    let (rp_id, rp_secret) = crate::common::confidential_client(&mut conn, "Démarches", RP).await;
    let (_, user_id) = new_user("rotation", PASSWORD, None).await;
    crate::common::log_in(&before, &user_id, PASSWORD).await;
    let (sub, access_token) = sign_in_at_service(&before, &rp_id, &rp_secret).await;
    let session_cookie = before
        .cookies()
        .get(session::cookie_name(false))
        .expect("a session cookie")
        .clone()
        .into_owned();
    assert_eq!(room_list(&before, &session_cookie).await.0, Status::Ok);
    let created = {
        let r = before.rocket();
        let config = r.state::<Config>().expect("config");
        let mut pooled = r
            .state::<tchap_portal::db::Db>()
            .expect("db")
            .get()
            .await
            .expect("conn");
        let now = Utc::now();
        booking::book(
            &mut pooled,
            r.state::<Keys>().expect("keys"),
            &config.settings.audioconf,
            r.state::<tchap_portal::mail::Mailer>().expect("mailer"),
            NewConference {
                email: "rotation@agent.gouv.fr",
                period: booking::Period::minutes(60, now),
                via: "email",
                lang: Lang::Fr,
            },
            now,
        )
        .await
        .expect("booked")
    };
    assert!(pin_accepted(&before, &created.number, &created.pin).await);
    // A form shown before the rotation (its CSRF cookie and token), sent later.
    let form = before
        .get("/connexion?force=1")
        .dispatch()
        .await
        .into_string()
        .await
        .expect("login page");
    let form_token = crate::common::csrf_token(&form);
    let csrf_cookie = before
        .cookies()
        .get(tchap_portal::web::csrf::cookie_name(false))
        .expect("a CSRF cookie")
        .clone()
        .into_owned();

    // The `sub` is what the portal derived before stable keys existed: an upgrade changes none.
    let legacy = Keys::new(&secret_bytes(&k0));
    let legacy_sub = crypto::b64url(
        &legacy
            .stable(Stable::SubjectPairwise)
            .mac(format!("{}|{user_id}", rp_id).as_bytes()),
    );
    assert_eq!(sub, legacy_sub);
    // As before the migration: no stable keys yet, and the upgrade comes with a rotation.
    diesel::delete(stable_keys::table)
        .execute(&mut conn)
        .await
        .expect("forget the stable keys");

    // k1 is the secret now, k0 still opens and verifies.
    let rotated = portal(&db, &k1, &[&k0]).await;
    assert_eq!(
        userinfo_sub(&rotated, &access_token).await,
        sub,
        "same sub for the token issued before"
    );
    assert_eq!(
        room_list(&rotated, &session_cookie).await.0,
        Status::Ok,
        "the Matrix token sealed under k0 still opens"
    );
    assert!(pin_accepted(&rotated, &created.number, &created.pin).await);
    assert_eq!(
        send_form(&rotated, &csrf_cookie, &form_token).await,
        Status::UnprocessableEntity,
        "the form signed under k0 is accepted (and answered: fields missing)"
    );
    assert!(cancel_page_shows(&rotated, &created.cancel_token, &created.pin).await);
    crate::common::log_in(&rotated, &user_id, PASSWORD).await;
    let (again, _) = sign_in_at_service(&rotated, &rp_id, &rp_secret).await;
    assert_eq!(again, sub, "a new sign-in after the rotation: same sub");

    // Everything moves to k1, batch after batch; a second run has nothing left to do.
    let fig = settings(&db, &k1, &[&k0]);
    let report = cli::run(
        &["secrets", "reencrypt", "--batch", "1"].map(String::from),
        &fig,
    )
    .await
    .expect("reencrypt");
    // The stable keys were written again at the upgrade, from k0 but sealed under k1 already.
    assert!(
        counts_line(&report, "stable keys").ends_with(
            ": 0 re-encrypted, 7 already under secret_key, 0 unreadable, 0 changed meanwhile"
        ),
        "{report}"
    );
    assert!(counts_line(&report, "signing keys").starts_with("signing keys: 2 re-encrypted"));
    assert!(counts_line(&report, "Matrix access tokens").starts_with(
        "Matrix access tokens (sessions): 1 re-encrypted, 1 already under secret_key"
    ));
    assert!(counts_line(&report, "AudioConf PINs").starts_with("AudioConf PINs: 1 re-encrypted"));
    assert!(!report.contains("warning"), "{report}");
    let again = cli::run(&["secrets", "reencrypt"].map(String::from), &fig)
        .await
        .expect("reencrypt again");
    assert_eq!(again.matches(": 0 re-encrypted").count(), 4, "{again}");

    // k0 retired: the new secret alone opens everything and the same agent is the same `sub`.
    let after = portal(&db, &k1, &[]).await;
    assert_eq!(
        send_form(&after, &csrf_cookie, &form_token).await,
        Status::Forbidden,
        "once k0 is retired, its forms are refused with the CSRF page, not a 500"
    );
    assert_eq!(userinfo_sub(&after, &access_token).await, sub);
    assert_eq!(room_list(&after, &session_cookie).await.0, Status::Ok);
    assert!(pin_accepted(&after, &created.number, &created.pin).await);
    assert!(cancel_page_shows(&after, &created.cancel_token, &created.pin).await);

    // A secret nobody configured: the portal refuses to start and says which setting to fix.
    let err = tchap_portal::secrets::load(&mut conn, &Keys::new(&secret_bytes(&k2)))
        .await
        .expect_err("the stable keys do not open");
    assert!(err.to_string().contains("previous_secret_keys"), "{err}");
    let unknown = tchap_portal::build(settings(&db, &k2, &[])).expect("valid settings");
    let Err(refused) = Client::tracked(unknown).await else {
        panic!("started with a secret that opens nothing");
    };
    // Reading the kind marks the error handled (Rocket aborts on an unread launch error).
    assert!(matches!(
        refused.kind(),
        rocket::error::ErrorKind::FailedFairings(_)
    ));

    // A session sealed under a secret no longer configured: it ends, the agent logs in again.
    let (session_id, device): (i64, String) = sessions::table
        .filter(sessions::matrix_user_id.eq(&user_id))
        .order(sessions::id)
        .select((sessions::id, sessions::device_id))
        .first(&mut conn)
        .await
        .expect("the first session");
    let lost = Keys::new(&secret_bytes(&k2))
        .encrypt(TOKEN_PURPOSE, b"syt_lost", &token_aad(&user_id, &device))
        .expect("seal");
    diesel::update(sessions::table.filter(sessions::id.eq(session_id)))
        .set(sessions::access_token_enc.eq(lost))
        .execute(&mut conn)
        .await
        .expect("seal under k2");
    let report = cli::run(&["secrets", "reencrypt"].map(String::from), &fig)
        .await
        .expect("reencrypt reports, does not fail");
    assert!(
        counts_line(&report, "Matrix access tokens").contains("1 unreadable"),
        "{report}"
    );
    assert!(report.contains("warning: 1 value(s) open with no configured key"));
    let (status, location) = room_list(&after, &session_cookie).await;
    assert_eq!(status, Status::SeeOther, "not a 500");
    assert_eq!(
        location.as_deref(),
        Some("/connexion?next=%2Fdiscussions&fin=1")
    );
    // A PIN sealed under such a secret: 503 (the log names the setting to fix), not 500; the
    // bridge still finds the conference by the PIN's HMAC.
    let lost = Keys::new(&secret_bytes(&k2))
        .encrypt(
            booking::PIN_ENC_PURPOSE,
            created.pin.as_bytes(),
            &booking::pin_aad(&created.public_id),
        )
        .expect("seal");
    diesel::update(audioconf_conferences::table.filter(audioconf_conferences::id.eq(created.id)))
        .set(audioconf_conferences::pin_enc.eq(lost))
        .execute(&mut conn)
        .await
        .expect("seal under k2");
    let res = after
        .get(format!("/audioconf/annuler/{}", created.cancel_token))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::ServiceUnavailable);
    assert!(pin_accepted(&after, &created.number, &created.pin).await);
}
