//! The authorization-code flow as a state service and an agent meet it, after the OpenID
//! Foundation's Basic OP plan (test names follow it).

use base64::Engine;
use chrono::Utc;
use rocket::http::{ContentType, Header, Status};
use rocket::local::asynchronous::Client;
use serde_json::Value;
use tchap_portal::accounts::matrix::percent_encode as enc;
use tchap_portal::oidc::clients::{self, NewClient};
use tchap_portal::oidc::jwt;
use tchap_portal::oidc::keys::{KeyRing, SigningKey};

use crate::common::matrix::new_user;
use crate::common::{csrf_token, figment, runs_of, title, unescape, TestApp, TestDb};

const PASSWORD: &str = "Correct-horse-42";
const RP: &str = "https://rp.example.gouv.fr/callback";
const RP_BYE: &str = "https://rp.example.gouv.fr/au-revoir";
const PUBLIC_RP: &str = "http://127.0.0.1:9999/cb";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-long-enough-verifier";

struct Rp {
    id: String,
    secret: String,
    public_id: String,
}

async fn setup() -> (TestApp, Rp, String) {
    setup_on(TestApp::new().await).await
}

async fn setup_on(app: TestApp) -> (TestApp, Rp, String) {
    let mut conn = app.db.conn().await;
    let new = |public: bool, uri: &str| NewClient {
        name: "Démarches simplifiées".into(),
        redirect_uris: vec![uri.into()],
        post_logout_redirect_uris: vec![RP_BYE.into()],
        public,
        subject_type: "pairwise".into(),
        id_token_alg: "RS256".into(),
        userinfo_signed: false,
    };
    let (c, secret) = clients::add(&mut conn, &new(false, RP), Utc::now())
        .await
        .expect("client");
    let (p, _) = clients::add(&mut conn, &new(true, PUBLIC_RP), Utc::now())
        .await
        .expect("public client");
    let (_, user_id) = new_user("agent", PASSWORD, Some("Alice Martin [DINUM]")).await;
    login(&app.client, &user_id).await;
    (
        app,
        Rp {
            id: c.client_id,
            secret: secret.expect("secret"),
            public_id: p.client_id,
        },
        user_id,
    )
}

async fn login(client: &Client, user_id: &str) {
    crate::common::log_in(client, user_id, PASSWORD).await;
}

fn challenge() -> String {
    tchap_portal::crypto::b64url(&tchap_portal::crypto::sha256(VERIFIER.as_bytes()))
}

pub(crate) fn query(location: &str) -> std::collections::HashMap<String, String> {
    let q = location.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), tchap_portal::oidc::token::url_decode(v)))
        .collect()
}

/// GET /authorize; returns (status, Location, body).
async fn authorize(client: &Client, params: &str) -> (Status, String, String) {
    let res = client.get(format!("/authorize?{params}")).dispatch().await;
    let loc = res.headers().get_one("Location").unwrap_or("").to_owned();
    (
        res.status(),
        loc,
        res.into_string().await.unwrap_or_default(),
    )
}

/// Answers the consent page; returns the redirect back to the service.
pub(crate) async fn decide(client: &Client, consent_page: &str, decision: &str) -> String {
    let authz_marker = "name=\"authz\" value=\"";
    let start = consent_page.find(authz_marker).expect("authz field") + authz_marker.len();
    let authz = unescape(consent_page[start..].split('"').next().expect("authz"));
    let res = client
        .post("/authorize/consent")
        .header(ContentType::Form)
        .body(format!(
            "csrf_token={}&authz={}&decision={decision}",
            csrf_token(consent_page),
            enc(&authz)
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther);
    res.headers()
        .get_one("Location")
        .expect("redirect")
        .to_owned()
}

fn basic(id: &str, secret: &str) -> Header<'static> {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    Header::new("Authorization", format!("Basic {b}"))
}

async fn token(
    client: &Client,
    auth: Option<Header<'static>>,
    body: String,
) -> (Status, Value, Option<String>) {
    let mut req = client.post("/token").header(ContentType::Form).body(body);
    if let Some(h) = auth {
        req = req.header(h);
    }
    let res = req.dispatch().await;
    let status = res.status();
    assert_eq!(res.headers().get_one("Cache-Control"), Some("no-store"));
    let www = res.headers().get_one("WWW-Authenticate").map(str::to_owned);
    (
        status,
        serde_json::from_str(&res.into_string().await.unwrap_or_default()).unwrap_or(Value::Null),
        www,
    )
}

async fn code_for(app: &TestApp, rp: &Rp, extra: &str) -> String {
    let (status, loc, body) = authorize(
        &app.client,
        &format!("response_type=code&client_id={}&redirect_uri={}&scope=openid%20profile%20email%20tchap&state=s1&nonce=n1{extra}", rp.id, enc(RP)),
    )
    .await;
    let loc = if status == Status::Ok {
        decide(&app.client, &body, "approve").await
    } else {
        loc
    };
    let q = query(&loc);
    q.get("code")
        .unwrap_or_else(|| panic!("a code in {loc}"))
        .clone()
}

async fn exchange(app: &TestApp, rp: &Rp, code: &str) -> (Status, Value) {
    let (s, v, _) = token(
        &app.client,
        Some(basic(&rp.id, &rp.secret)),
        format!(
            "grant_type=authorization_code&code={code}&redirect_uri={}",
            enc(RP)
        ),
    )
    .await;
    (s, v)
}

async fn jwks(app: &TestApp) -> Value {
    serde_json::from_str(
        &app.client
            .get("/jwks.json")
            .dispatch()
            .await
            .into_string()
            .await
            .expect("jwks"),
    )
    .expect("json")
}

async fn userinfo_get(app: &TestApp, at: &str) -> (Status, Value) {
    let res = app
        .client
        .get("/userinfo")
        .header(Header::new("Authorization", format!("Bearer {at}")))
        .dispatch()
        .await;
    let s = res.status();
    (
        s,
        serde_json::from_str(&res.into_string().await.unwrap_or_default()).unwrap_or(Value::Null),
    )
}

#[rocket::async_test]
async fn oidcc_server_happy_flow_with_consent_showing_the_values() {
    let (app, rp, user_id) = setup().await;
    let (status, _, page) = authorize(
        &app.client,
        &format!("response_type=code&client_id={}&redirect_uri={}&scope=openid%20profile%20email%20tchap&state=xyz&nonce=n-0S6", rp.id, enc(RP)),
    )
    .await;
    assert_eq!(status, Status::Ok);
    let page = unescape(&page);
    assert_eq!(
        title(&page),
        "Partager vos informations avec Démarches simplifiées — Portail Tchap"
    );
    for shown in [
        "https://rp.example.gouv.fr",
        "Prénom</span> : Alice",
        "Nom</span> : Martin",
        "Administration</span> : DINUM",
        &format!("Identifiant Tchap</span> : {user_id}"),
        "aucune adresse vérifiée",
    ] {
        assert!(page.contains(shown), "consent page shows {shown}");
    }
    let loc = decide(&app.client, &page, "approve").await;
    assert!(loc.starts_with(RP));
    let q = query(&loc);
    assert_eq!(q.get("state").map(String::as_str), Some("xyz"));
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some("http://127.0.0.1:8000")
    );

    let (status, t) = exchange(&app, &rp, &q["code"]).await;
    assert_eq!(status, Status::Ok, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    let claims = jwt::verify(
        t["id_token"].as_str().expect("id_token"),
        &jwks(&app).await,
        jwt::Expect::IdToken,
    )
    .expect("signature verifies");
    assert_eq!(claims["iss"], "http://127.0.0.1:8000");
    assert_eq!(claims["aud"], rp.id);
    assert_eq!(claims["nonce"], "n-0S6");
    assert_eq!(claims["acr"], "eidas1");
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    assert!(claims["exp"].as_i64() > claims["iat"].as_i64());
    assert!(claims["auth_time"].as_i64().is_some() && claims["sid"].as_str().is_some());
    let at = t["access_token"].as_str().expect("at");
    let expected_at_hash =
        tchap_portal::crypto::b64url(&tchap_portal::crypto::sha256(at.as_bytes())[..16]);
    assert_eq!(claims["at_hash"], expected_at_hash);
    let sub = claims["sub"].as_str().expect("sub").to_owned();
    assert!(!sub.contains("agent"), "pairwise subject reveals nothing");

    // userinfo: GET with header, POST with header, POST with body.
    let (s, info) = userinfo_get(&app, at).await;
    assert_eq!(s, Status::Ok);
    assert_eq!(info["sub"], sub.as_str());
    assert_eq!(info["given_name"], "Alice");
    assert_eq!(info["family_name"], "Martin");
    assert_eq!(info["organization"], "DINUM");
    assert_eq!(info["matrix_user_id"], user_id.as_str());
    let res = app
        .client
        .post("/userinfo")
        .header(Header::new("Authorization", format!("Bearer {at}")))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    let res = app
        .client
        .post("/userinfo")
        .header(ContentType::Form)
        .body(format!("access_token={at}"))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    let body: Value = serde_json::from_str(&res.into_string().await.expect("body")).expect("json");
    assert_eq!(body["sub"], sub.as_str());
}

#[rocket::async_test]
async fn oidcc_codereuse_fails_and_revokes_what_the_code_gave() {
    let (app, rp, _) = setup().await;
    let code = code_for(&app, &rp, "").await;
    let (s, t) = exchange(&app, &rp, &code).await;
    assert_eq!(s, Status::Ok);
    let (s, e) = exchange(&app, &rp, &code).await;
    assert_eq!(s, Status::BadRequest);
    assert_eq!(e["error"], "invalid_grant");
    let (s, _) = userinfo_get(&app, t["access_token"].as_str().expect("at")).await;
    assert_eq!(
        s,
        Status::Unauthorized,
        "tokens from the first use are revoked"
    );
}

#[rocket::async_test]
async fn oidcc_ensure_registered_redirect_uri_and_known_client() {
    let (app, rp, _) = setup().await;
    for params in [
        format!(
            "response_type=code&client_id={}&redirect_uri={}&scope=openid",
            rp.id,
            enc("https://evil.example/cb")
        ),
        format!(
            "response_type=code&client_id={}&redirect_uri={}&scope=openid",
            rp.id,
            enc("https://rp.example.gouv.fr/callback/")
        ),
        format!(
            "response_type=code&client_id=unknown&redirect_uri={}&scope=openid",
            enc(RP)
        ),
    ] {
        let (status, loc, body) = authorize(&app.client, &params).await;
        assert_eq!(status, Status::BadRequest, "{params}");
        assert!(loc.is_empty(), "never redirected");
        assert!(body.contains("Connexion impossible"));
    }
}

#[rocket::async_test]
async fn oidcc_errors_go_back_to_the_service_with_state_and_iss() {
    let (app, rp, _) = setup().await;
    let base = format!("client_id={}&redirect_uri={}&state=st", rp.id, enc(RP));
    for (params, error) in [
        (format!("{base}&response_type=token&scope=openid"), "unsupported_response_type"),
        (format!("{base}&response_type=code&scope=profile"), "invalid_scope"),
        (format!("{base}&response_type=code&scope=openid&request=eyJ"), "request_not_supported"),
        (format!("{base}&response_type=code&scope=openid&request_uri=https%3A%2F%2Fx"), "request_uri_not_supported"),
        (format!("{base}&response_type=code&scope=openid&code_challenge={}&code_challenge_method=plain", challenge()), "invalid_request"),
    ] {
        let (status, loc, _) = authorize(&app.client, &params).await;
        assert_eq!(status, Status::SeeOther, "{params}");
        let q = query(&loc);
        assert_eq!(q.get("error").map(String::as_str), Some(error), "{params}");
        assert_eq!(q.get("state").map(String::as_str), Some("st"));
        assert_eq!(q.get("iss").map(String::as_str), Some("http://127.0.0.1:8000"));
    }
    // Unknown parameters, acr_values and a missing nonce are fine.
    let code = code_for(&app, &rp, "&foo=bar&acr_values=eidas1").await;
    assert!(!code.is_empty());
}

#[rocket::async_test]
async fn oidcc_prompt_none_and_login_and_max_age() {
    let (app, rp, user_id) = setup().await;
    let base = format!(
        "response_type=code&client_id={}&redirect_uri={}&scope=openid&state=p",
        rp.id,
        enc(RP)
    );
    // Logged in, not yet approved: consent_required.
    let (_, loc, _) = authorize(&app.client, &format!("{base}&prompt=none")).await;
    assert_eq!(
        query(&loc).get("error").map(String::as_str),
        Some("consent_required")
    );
    let code = code_for(&app, &rp, "").await;
    assert!(!code.is_empty());
    // Logged in and approved: a code without any page.
    let (_, loc, _) = authorize(&app.client, &format!("{base}&prompt=none")).await;
    assert!(query(&loc).contains_key("code"), "{loc}");
    // max_age=10000: no new login.
    let (_, loc, _) = authorize(&app.client, &format!("{base}&max_age=10000")).await;
    assert!(query(&loc).contains_key("code"));
    // prompt=login and max_age=1 (after a second): back to the login form, then on.
    for extra in ["&prompt=login", "&max_age=1"] {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let (status, loc, _) = authorize(&app.client, &format!("{base}{extra}")).await;
        assert_eq!(status, Status::SeeOther);
        assert!(loc.starts_with("/connexion?"), "{extra}: {loc}");
        assert!(loc.contains("force=1"));
        let next = query(&loc)["next"].clone();
        login(&app.client, &user_id).await;
        let (_, loc, _) = authorize(&app.client, next.trim_start_matches("/authorize?")).await;
        assert!(
            query(&loc).contains_key("code"),
            "{extra}: after logging in again: {loc}"
        );
    }
    // Not logged in: login_required.
    let anonymous =
        Client::tracked(tchap_portal::build(crate::common::figment(&app.db)).expect("app"))
            .await
            .expect("client");
    let (_, loc, _) = authorize(&anonymous, &format!("{base}&prompt=none")).await;
    assert_eq!(
        query(&loc).get("error").map(String::as_str),
        Some("login_required")
    );
    // login_hint fills the login form.
    let (_, loc, _) = authorize(
        &anonymous,
        &format!("{base}&login_hint={}", enc("alice@example.gouv.fr")),
    )
    .await;
    let page = anonymous
        .get(loc)
        .dispatch()
        .await
        .into_string()
        .await
        .expect("login page");
    assert!(page.contains("value=\"alice@example.gouv.fr\""));
}

#[rocket::async_test]
async fn oidcc_ui_locales_and_refusal() {
    let (app, rp, _) = setup().await;
    let (_, _, page) = authorize(
        &app.client,
        &format!("response_type=code&client_id={}&redirect_uri={}&scope=openid%20email&state=r&ui_locales=en", rp.id, enc(RP)),
    )
    .await;
    assert!(page.contains("<html lang=\"en\"") && page.contains("Share your information with"));
    let loc = decide(&app.client, &page, "refuse").await;
    let q = query(&loc);
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"));
    assert_eq!(q.get("state").map(String::as_str), Some("r"));
}

#[rocket::async_test]
async fn consent_is_remembered_until_more_is_asked() {
    let (app, rp, _) = setup().await;
    let ask = |scope: &str| {
        format!(
            "response_type=code&client_id={}&redirect_uri={}&scope={scope}",
            rp.id,
            enc(RP)
        )
    };
    let (status, _, page) = authorize(&app.client, &ask("openid%20profile")).await;
    assert_eq!(status, Status::Ok);
    decide(&app.client, &page, "approve").await;
    let (status, loc, _) = authorize(&app.client, &ask("openid%20profile")).await;
    assert_eq!(status, Status::SeeOther);
    assert!(query(&loc).contains_key("code"), "remembered");
    let (status, _, page) = authorize(&app.client, &ask("openid%20profile%20tchap")).await;
    assert_eq!(status, Status::Ok, "more is asked: consent again");
    assert!(page.contains("Identifiant Tchap"));
    let (status, _, _) = authorize(&app.client, &format!("{}&prompt=consent", ask("openid"))).await;
    assert_eq!(status, Status::Ok, "prompt=consent asks again");
}

#[rocket::async_test]
async fn oidcc_pkce_and_public_clients() {
    let (app, rp, _) = setup().await;
    let public = |extra: &str| {
        format!(
            "response_type=code&client_id={}&redirect_uri={}&scope=openid{extra}",
            rp.public_id,
            enc(PUBLIC_RP)
        )
    };
    let (_, loc, _) = authorize(&app.client, &public("")).await;
    assert_eq!(
        query(&loc).get("error").map(String::as_str),
        Some("invalid_request"),
        "public client without PKCE"
    );
    let (_, _, page) = authorize(
        &app.client,
        &public(&format!(
            "&code_challenge={}&code_challenge_method=S256",
            challenge()
        )),
    )
    .await;
    let code = query(&decide(&app.client, &page, "approve").await)["code"].clone();
    let body = |verifier: &str| {
        format!("grant_type=authorization_code&code={code}&redirect_uri={}&client_id={}&code_verifier={verifier}", enc(PUBLIC_RP), rp.public_id)
    };
    let (s, e, _) = token(
        &app.client,
        None,
        body("wrong-verifier-wrong-verifier-wrong-verifier-00"),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::BadRequest, Some("invalid_grant"))
    );
    // The failed attempt used the code up; the approval is remembered, so a new code comes at once.
    let (_, loc, _) = authorize(
        &app.client,
        &public(&format!(
            "&code_challenge={}&code_challenge_method=S256",
            challenge()
        )),
    )
    .await;
    let code = query(&loc)["code"].clone();
    let (s, t, _) = token(&app.client, None, format!("grant_type=authorization_code&code={code}&redirect_uri={}&client_id={}&code_verifier={VERIFIER}", enc(PUBLIC_RP), rp.public_id)).await;
    assert_eq!(s, Status::Ok, "valid PKCE succeeds: {t}");
}

#[rocket::async_test]
async fn oidcc_client_secret_post_and_wrong_secret() {
    let (app, rp, _) = setup().await;
    let code = code_for(&app, &rp, "").await;
    let (s, e, www) = token(&app.client, None, format!("grant_type=authorization_code&code={code}&redirect_uri={}&client_id={}&client_secret=nope", enc(RP), rp.id)).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::Unauthorized, Some("invalid_client"))
    );
    assert!(www.is_some_and(|w| w.starts_with("Basic")));
    let code = code_for(&app, &rp, "").await;
    let (s, t, _) = token(&app.client, None, format!("grant_type=authorization_code&code={code}&redirect_uri={}&client_id={}&client_secret={}", enc(RP), rp.id, rp.secret)).await;
    assert_eq!(s, Status::Ok, "{t}");
}

#[rocket::async_test]
async fn oidcc_refresh_token_rotates_and_reuse_revokes_the_family() {
    let (app, rp, _) = setup().await;
    let code = code_for(&app, &rp, "").await;
    let (_, first) = exchange(&app, &rp, &code).await;
    let refresh = |rt: &str| format!("grant_type=refresh_token&refresh_token={rt}");
    let (s, second, _) = token(
        &app.client,
        Some(basic(&rp.id, &rp.secret)),
        refresh(first["refresh_token"].as_str().expect("rt")),
    )
    .await;
    assert_eq!(s, Status::Ok, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let claims = jwt::verify(
        second["id_token"].as_str().expect("id"),
        &jwks(&app).await,
        jwt::Expect::IdToken,
    )
    .expect("verifies");
    assert!(claims.get("nonce").is_none(), "no nonce on refresh");
    assert_eq!(
        userinfo_get(&app, second["access_token"].as_str().expect("at"))
            .await
            .0,
        Status::Ok
    );
    // The first refresh token again: refused, and everything of the family stops working.
    let (s, e, _) = token(
        &app.client,
        Some(basic(&rp.id, &rp.secret)),
        refresh(first["refresh_token"].as_str().expect("rt")),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::BadRequest, Some("invalid_grant"))
    );
    let (s, _, _) = token(
        &app.client,
        Some(basic(&rp.id, &rp.secret)),
        refresh(second["refresh_token"].as_str().expect("rt")),
    )
    .await;
    assert_eq!(s, Status::BadRequest);
    assert_eq!(
        userinfo_get(&app, second["access_token"].as_str().expect("at"))
            .await
            .0,
        Status::Unauthorized
    );
}

#[rocket::async_test]
async fn userinfo_refuses_missing_and_bad_tokens_with_www_authenticate() {
    let (app, _, _) = setup().await;
    let res = app.client.get("/userinfo").dispatch().await;
    assert_eq!(res.status(), Status::Unauthorized);
    assert!(res
        .headers()
        .get_one("WWW-Authenticate")
        .is_some_and(|w| w.starts_with("Bearer")));
    let (s, e) = userinfo_get(&app, "not-a-token").await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::Unauthorized, Some("invalid_token"))
    );
}

#[rocket::async_test]
async fn agents_review_what_was_shared_and_revoke_a_service() {
    let (app, rp, _) = setup().await;
    let code = code_for(&app, &rp, "").await;
    let (_, t) = exchange(&app, &rp, &code).await;
    let at = t["access_token"].as_str().expect("at").to_owned();
    let rt = t["refresh_token"].as_str().expect("rt").to_owned();
    // A second sign-in (remembered consent) adds a line to the history.
    let _ = code_for(&app, &rp, "").await;

    let page = unescape(
        &app.client
            .get("/mes-services")
            .dispatch()
            .await
            .into_string()
            .await
            .expect("page"),
    );
    assert_eq!(title(&page), "Mes services connectés — Portail Tchap");
    assert!(page.contains("Démarches simplifiées") && page.contains("https://rp.example.gouv.fr"));
    for claim in ["Prénom", "Nom", "Identifiant Tchap", "Administration"] {
        assert!(page.contains(&format!("<li>{claim}</li>")), "lists {claim}");
    }
    assert!(
        page.contains("Historique des partages (2)"),
        "two shares in the history"
    );
    assert!(page.contains("Premier partage : "));

    let res = app
        .client
        .post(format!("/mes-services/{}/retirer", rp.id))
        .header(ContentType::Form)
        .body(format!("csrf_token={}", csrf_token(&page)))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther);
    let loc = res.headers().get_one("Location").expect("back").to_owned();
    let page = app
        .client
        .get(loc)
        .dispatch()
        .await
        .into_string()
        .await
        .expect("page");
    assert!(page.contains("Votre accord pour Démarches simplifiées est retiré"));
    assert!(page.contains("aucun service"), "no longer listed");

    // The service lost its access, and must ask again.
    assert_eq!(userinfo_get(&app, &at).await.0, Status::Unauthorized);
    let (s, _, _) = token(
        &app.client,
        Some(basic(&rp.id, &rp.secret)),
        format!("grant_type=refresh_token&refresh_token={rt}"),
    )
    .await;
    assert_eq!(s, Status::BadRequest);
    let (status, _, _) = authorize(
        &app.client,
        &format!(
            "response_type=code&client_id={}&redirect_uri={}&scope=openid",
            rp.id,
            enc(RP)
        ),
    )
    .await;
    assert_eq!(status, Status::Ok, "the consent page again");
}

#[rocket::async_test]
async fn oidcc_authorize_by_post_from_the_services_form() {
    let (app, rp, _) = setup().await;
    // A service's auto-submitted form carries no CSRF token of ours: /authorize accepts it.
    let res = app
        .client
        .post("/authorize")
        .header(ContentType::Form)
        .body(format!(
            "response_type=code&client_id={}&redirect_uri={}&scope=openid%20profile&state=post",
            rp.id,
            enc(RP)
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    let page = res.into_string().await.expect("consent page");
    assert!(page.contains("Partager vos informations avec"));
    let q = query(&decide(&app.client, &page, "approve").await);
    assert_eq!(q.get("state").map(String::as_str), Some("post"));
    assert!(q.contains_key("code"));
}

#[rocket::async_test]
async fn es256_id_tokens_and_signed_userinfo_for_clients_registered_for_them() {
    let (app, _, user_id) = setup().await;
    let mut conn = app.db.conn().await;
    let (c, secret) = clients::add(
        &mut conn,
        &NewClient {
            name: "ProConnect-like".into(),
            redirect_uris: vec![RP.into()],
            post_logout_redirect_uris: vec![],
            public: false,
            subject_type: "public".into(),
            id_token_alg: "ES256".into(),
            userinfo_signed: true,
        },
        Utc::now(),
    )
    .await
    .expect("client");
    let rp = Rp {
        id: c.client_id.clone(),
        secret: secret.expect("secret"),
        public_id: String::new(),
    };
    let code = code_for(&app, &rp, "").await;
    let (s, t) = exchange(&app, &rp, &code).await;
    assert_eq!(s, Status::Ok, "{t}");
    let id_token = t["id_token"].as_str().expect("id_token");
    let header: Value = serde_json::from_slice(
        &tchap_portal::crypto::b64url_decode(id_token.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(header["alg"], "ES256");
    let keys = jwks(&app).await;
    let claims =
        jwt::verify(id_token, &keys, jwt::Expect::IdToken).expect("ES256 signature verifies");

    let res = app
        .client
        .get("/userinfo")
        .header(Header::new(
            "Authorization",
            format!("Bearer {}", t["access_token"].as_str().expect("at")),
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    assert_eq!(
        res.content_type().map(|c| c.to_string()),
        Some("application/jwt".into())
    );
    let signed = res.into_string().await.expect("jwt");
    let info =
        jwt::verify(&signed, &keys, jwt::Expect::Userinfo).expect("signed userinfo verifies");
    assert!(
        matches!(
            jwt::verify(&signed, &keys, jwt::Expect::IdToken),
            Err(jwt::JwtError::WrongType)
        ),
        "a signed userinfo answer does not pass for an ID token"
    );
    assert_eq!(info["aud"], c.client_id.as_str());
    assert_eq!(info["iss"], "http://127.0.0.1:8000");
    assert_eq!(info["sub"], claims["sub"]);
    assert_eq!(info["matrix_user_id"], user_id.as_str());
}

#[rocket::async_test]
async fn oidcc_codereuse_30seconds_fails_and_revokes_what_the_code_gave() {
    use diesel_async::RunQueryDsl;
    let (app, rp, _) = setup().await;
    let code = code_for(&app, &rp, "").await;
    let (s, t) = exchange(&app, &rp, &code).await;
    assert_eq!(s, Status::Ok);
    let at = t["access_token"].as_str().expect("at");
    assert_eq!(userinfo_get(&app, at).await.0, Status::Ok);
    // 30 seconds later, as the OpenID Foundation's test waits: moved back in the database.
    let mut conn = app.db.conn().await;
    diesel::sql_query(
        "UPDATE oidc_codes SET used_at = used_at - interval '30 seconds', \
         expires_at = expires_at - interval '30 seconds'",
    )
    .execute(&mut conn)
    .await
    .expect("time passes");
    let (s, e) = exchange(&app, &rp, &code).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::BadRequest, Some("invalid_grant"))
    );
    assert_eq!(userinfo_get(&app, at).await.0, Status::Unauthorized);
    let (s, e, _) = token(
        &app.client,
        Some(basic(&rp.id, &rp.secret)),
        format!(
            "grant_type=refresh_token&refresh_token={}",
            t["refresh_token"].as_str().expect("rt")
        ),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::BadRequest, Some("invalid_grant"))
    );
}

async fn post_form(
    app: &TestApp,
    path: &str,
    auth: Option<Header<'static>>,
    body: String,
) -> (Status, Value) {
    let mut req = app
        .client
        .post(path.to_owned())
        .header(ContentType::Form)
        .body(body);
    if let Some(h) = auth {
        req = req.header(h);
    }
    let res = req.dispatch().await;
    let status = res.status();
    assert_eq!(
        res.headers().get_one("Cache-Control"),
        Some("no-store"),
        "{path}"
    );
    (
        status,
        serde_json::from_str(&res.into_string().await.unwrap_or_default()).unwrap_or(Value::Null),
    )
}

/// A second confidential client, to check that clients cannot touch each other's tokens.
async fn other_client(app: &TestApp) -> (String, String) {
    let mut conn = app.db.conn().await;
    crate::common::confidential_client(
        &mut conn,
        "Autre service",
        "https://autre.example.gouv.fr/cb",
    )
    .await
}

#[rocket::async_test]
async fn revocation_ends_an_access_token_or_a_whole_grant() {
    let (app, rp, _) = setup().await;
    let (other_id, other_secret) = other_client(&app).await;
    let (_, t) = exchange(&app, &rp, &code_for(&app, &rp, "").await).await;
    let at = t["access_token"].as_str().expect("at").to_owned();
    let rt = t["refresh_token"].as_str().expect("rt").to_owned();

    // Without client authentication: refused; by another client: refused, and nothing changes.
    let (s, e) = post_form(&app, "/revoke", None, format!("token={at}")).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::Unauthorized, Some("invalid_client"))
    );
    let (s, e) = post_form(
        &app,
        "/revoke",
        Some(basic(&other_id, &other_secret)),
        format!("token={at}"),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::BadRequest, Some("invalid_request"))
    );
    assert_eq!(userinfo_get(&app, &at).await.0, Status::Ok);
    // Unknown tokens are answered 200 (RFC 7009 §2.2); unknown hints are refused.
    let (s, _) = post_form(
        &app,
        "/revoke",
        Some(basic(&rp.id, &rp.secret)),
        "token=nope".into(),
    )
    .await;
    assert_eq!(s, Status::Ok);
    let (s, e) = post_form(
        &app,
        "/revoke",
        Some(basic(&rp.id, &rp.secret)),
        format!("token={at}&token_type_hint=id_token"),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::BadRequest, Some("unsupported_token_type"))
    );

    // The access token: it stops working, the refresh token still works.
    let (s, _) = post_form(
        &app,
        "/revoke",
        Some(basic(&rp.id, &rp.secret)),
        format!("token={at}&token_type_hint=access_token"),
    )
    .await;
    assert_eq!(s, Status::Ok);
    assert_eq!(userinfo_get(&app, &at).await.0, Status::Unauthorized);
    let (s, next, _) = token(
        &app.client,
        Some(basic(&rp.id, &rp.secret)),
        format!("grant_type=refresh_token&refresh_token={rt}"),
    )
    .await;
    assert_eq!(s, Status::Ok, "{next}");

    // The refresh token (client_secret_post this time): the whole grant ends.
    let at2 = next["access_token"].as_str().expect("at");
    let rt2 = next["refresh_token"].as_str().expect("rt");
    let (s, _) = post_form(
        &app,
        "/revoke",
        None,
        format!(
            "token={rt2}&client_id={}&client_secret={}",
            rp.id,
            enc(&rp.secret)
        ),
    )
    .await;
    assert_eq!(s, Status::Ok);
    assert_eq!(userinfo_get(&app, at2).await.0, Status::Unauthorized);
    let (s, e, _) = token(
        &app.client,
        Some(basic(&rp.id, &rp.secret)),
        format!("grant_type=refresh_token&refresh_token={rt2}"),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::BadRequest, Some("invalid_grant"))
    );
}

#[rocket::async_test]
async fn introspection_describes_live_tokens_to_their_client_only() {
    let (app, rp, _) = setup().await;
    let (other_id, other_secret) = other_client(&app).await;
    let (_, t) = exchange(&app, &rp, &code_for(&app, &rp, "").await).await;
    let at = t["access_token"].as_str().expect("at");
    let id_claims = jwt::verify(
        t["id_token"].as_str().expect("id"),
        &jwks(&app).await,
        jwt::Expect::IdToken,
    )
    .expect("verifies");

    let (s, info) = post_form(
        &app,
        "/introspect",
        Some(basic(&rp.id, &rp.secret)),
        format!("token={at}"),
    )
    .await;
    assert_eq!(s, Status::Ok);
    assert_eq!(info["active"], true);
    assert_eq!(info["client_id"], rp.id.as_str());
    assert_eq!(
        info["sub"], id_claims["sub"],
        "the same pairwise subject as the ID token"
    );
    assert_eq!(info["scope"], "openid email profile tchap");
    assert_eq!(info["token_type"], "Bearer");
    assert!(info["exp"].as_i64() > Some(Utc::now().timestamp()));
    let (_, info) = post_form(
        &app,
        "/introspect",
        Some(basic(&rp.id, &rp.secret)),
        format!("token={}", t["refresh_token"].as_str().expect("rt")),
    )
    .await;
    assert_eq!(
        (info["active"].as_bool(), info["token_type"].as_str()),
        (Some(true), Some("refresh_token"))
    );

    // Another client learns nothing; a public client cannot introspect; junk is inactive.
    let (s, info) = post_form(
        &app,
        "/introspect",
        Some(basic(&other_id, &other_secret)),
        format!("token={at}"),
    )
    .await;
    assert_eq!(
        (s, info),
        (Status::Ok, serde_json::json!({"active": false}))
    );
    let (s, e) = post_form(
        &app,
        "/introspect",
        None,
        format!("token={at}&client_id={}", rp.public_id),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::Unauthorized, Some("invalid_client"))
    );
    let (_, info) = post_form(
        &app,
        "/introspect",
        Some(basic(&rp.id, &rp.secret)),
        "token=junk".into(),
    )
    .await;
    assert_eq!(info, serde_json::json!({"active": false}));
    let (s, e) = post_form(
        &app,
        "/introspect",
        Some(basic(&rp.id, &rp.secret)),
        String::new(),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::BadRequest, Some("invalid_request"))
    );

    // Revoked: inactive.
    post_form(
        &app,
        "/revoke",
        Some(basic(&rp.id, &rp.secret)),
        format!("token={at}"),
    )
    .await;
    let (_, info) = post_form(
        &app,
        "/introspect",
        Some(basic(&rp.id, &rp.secret)),
        format!("token={at}"),
    )
    .await;
    assert_eq!(info, serde_json::json!({"active": false}));
}

/// A token signed by `key` (RS256) under `header` exactly as given: headers `jwt::sign` never writes.
pub(crate) fn signed_with_header(key: &SigningKey, header: Value, claims: &Value) -> String {
    let b64 = tchap_portal::crypto::b64url;
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key.pkey)
        .expect("signer");
    signer.update(input.as_bytes()).expect("update");
    format!("{input}.{}", b64(&signer.sign_to_vec().expect("sign")))
}

fn header_of(token: &str) -> Value {
    let h = token.split('.').next().expect("header");
    serde_json::from_slice(&tchap_portal::crypto::b64url_decode(h).expect("b64")).expect("json")
}

fn claims_of(token: &str) -> Value {
    let p = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&tchap_portal::crypto::b64url_decode(p).expect("b64")).expect("json")
}

/// Only an ID token of this portal ends a session without asking: not another kind of token it
/// signs for the same agent and service, nor one whose header asks for an extension (`crit`).
#[rocket::async_test]
async fn id_token_hint_must_be_an_id_token_without_crit() {
    let (app, rp, _) = setup().await;
    let (_, t) = exchange(&app, &rp, &code_for(&app, &rp, "").await).await;
    let id_token = t["id_token"].as_str().expect("id_token").to_owned();
    let claims = claims_of(&id_token);
    let key = app
        .client
        .rocket()
        .state::<KeyRing>()
        .expect("ring")
        .get("RS256")
        .expect("the portal's RS256 key");
    // A signed userinfo answer for the same agent and service, as the portal signs it now and as
    // it did before it had a `typ` of its own.
    let info = serde_json::json!({
        "sub": claims["sub"], "iss": claims["iss"], "aud": claims["aud"], "iat": claims["iat"],
        "name": "Alice Martin",
    });
    let userinfo = jwt::sign(&key, &info, Some(jwt::USERINFO_TYP)).expect("sign");
    let userinfo_untyped = jwt::sign(&key, &info, Some("JWT")).expect("sign");
    let logout_token = jwt::sign(&key, &claims, Some("logout+jwt")).expect("sign");
    let with_crit = signed_with_header(
        &key,
        serde_json::json!({"alg": "RS256", "kid": key.kid, "typ": "JWT", "crit": ["exp"], "exp": 0}),
        &claims,
    );
    for (what, hint) in [
        ("signed userinfo", userinfo),
        ("signed userinfo without its typ", userinfo_untyped),
        ("logout token", logout_token),
        ("crit header", with_crit),
    ] {
        let res = app
            .client
            .get(format!(
                "/logout?id_token_hint={hint}&post_logout_redirect_uri={}",
                enc(RP_BYE)
            ))
            .dispatch()
            .await;
        assert_eq!(res.status(), Status::BadRequest, "{what}");
        assert!(logged_in(&app).await, "{what}: still logged in");
    }
    // The ID token itself, signed by the same key: the agent is logged out and goes back.
    let res = app
        .client
        .get(format!(
            "/logout?id_token_hint={id_token}&post_logout_redirect_uri={}",
            enc(RP_BYE)
        ))
        .dispatch()
        .await;
    assert_eq!(res.headers().get_one("Location"), Some(RP_BYE));
    assert!(!logged_in(&app).await);
}

/// `keys rotate` publishes the new key at once and signs with it only once the delay has passed,
/// so a service that read the JWKS just after the rotation never meets an unknown `kid`.
#[rocket::async_test]
async fn a_rotated_signing_key_is_published_first_and_signs_after_the_delay() {
    let db = TestDb::new().await;
    let fig = figment(&db).merge(("portal.oidc.key_publish_before_use_secs", 3));
    let (app, rp, _) = setup_on(TestApp::with_figment(db, fig.clone()).await).await;
    let id_token = |t: &Value| t["id_token"].as_str().expect("id_token").to_owned();
    let (_, t) = exchange(&app, &rp, &code_for(&app, &rp, "").await).await;
    let old_kid = header_of(&id_token(&t))["kid"].clone();

    let out = tchap_portal::cli::run(&["keys".to_owned(), "rotate".to_owned()], &fig)
        .await
        .expect("rotated");
    let rotated_at = std::time::Instant::now();
    let new_rs256 = out
        .lines()
        .find_map(|l| l.strip_prefix("new signing keys: "))
        .and_then(|kids| kids.split(", ").next())
        .expect("the new kids")
        .to_owned();
    // This instance reads the rotation, as its refresh every minute does.
    let ring = app.client.rocket().state::<KeyRing>().expect("ring");
    let keys = app
        .client
        .rocket()
        .state::<tchap_portal::crypto::Keys>()
        .expect("keys");
    let mut conn = app.pool().get().await.expect("conn");
    ring.refresh(&mut conn, keys, Utc::now())
        .await
        .expect("refresh");
    drop(conn);

    let (_, t) = exchange(&app, &rp, &code_for(&app, &rp, "").await).await;
    assert_eq!(
        header_of(&id_token(&t))["kid"],
        old_kid,
        "still the old key"
    );
    // A service reads the JWKS now (after the portal's one-second cache) and keeps it.
    rocket::tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let cached = jwks(&app).await;
    let kids: Vec<&Value> = cached["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert_eq!(kids.len(), 4, "old and new keys published");
    assert!(kids.contains(&&old_kid) && kids.contains(&&Value::from(new_rs256.clone())));

    let wait = std::time::Duration::from_millis(3100).saturating_sub(rotated_at.elapsed());
    rocket::tokio::time::sleep(wait).await;
    let (_, t) = exchange(&app, &rp, &code_for(&app, &rp, "").await).await;
    let token = id_token(&t);
    assert_eq!(
        header_of(&token)["kid"],
        new_rs256.as_str(),
        "the new key signs"
    );
    jwt::verify(&token, &cached, jwt::Expect::IdToken)
        .expect("the JWKS the service kept already holds the new key");
}

async fn logged_in(app: &TestApp) -> bool {
    app.client.get("/mes-services").dispatch().await.status() == Status::Ok
}

#[rocket::async_test]
async fn oidcc_rp_initiated_logout_with_id_token_hint_goes_back_with_state() {
    let (app, rp, _) = setup().await;
    let (_, t) = exchange(&app, &rp, &code_for(&app, &rp, "").await).await;
    let hint = t["id_token"].as_str().expect("id_token").to_owned();

    // A redirect that is not registered: an error page, no redirect, still logged in.
    let res = app
        .client
        .get(format!(
            "/logout?id_token_hint={hint}&post_logout_redirect_uri={}",
            enc("https://evil.example/")
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::BadRequest);
    let page = unescape(&res.into_string().await.expect("page"));
    assert!(
        title(&page).starts_with("Déconnexion impossible"),
        "{}",
        title(&page)
    );
    assert!(logged_in(&app).await);
    // A tampered hint: refused the same way.
    let mut parts: Vec<&str> = hint.split('.').collect();
    let forged =
        tchap_portal::crypto::b64url(br#"{"iss":"http://127.0.0.1:8000","aud":"x","sub":"y"}"#);
    parts[1] = &forged;
    let res = app
        .client
        .get(format!("/logout?id_token_hint={}", parts.join(".")))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::BadRequest);
    assert!(logged_in(&app).await);

    // The real hint for this agent: logged out at once, back at the service with its state.
    let res = app
        .client
        .get(format!(
            "/logout?id_token_hint={hint}&post_logout_redirect_uri={}&state=bye-1",
            enc(RP_BYE)
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther);
    assert_eq!(
        res.headers().get_one("Location"),
        Some(format!("{RP_BYE}?state=bye-1").as_str())
    );
    assert!(!logged_in(&app).await, "the portal session has ended");
    // Once logged out, the same request just goes back.
    let res = app
        .client
        .get(format!(
            "/logout?id_token_hint={hint}&post_logout_redirect_uri={}",
            enc(RP_BYE)
        ))
        .dispatch()
        .await;
    assert_eq!(res.headers().get_one("Location"), Some(RP_BYE));
}

#[rocket::async_test]
async fn rp_initiated_logout_without_hint_asks_the_agent_first() {
    let (app, rp, _) = setup().await;
    let res = app
        .client
        .get(format!(
            "/logout?client_id={}&post_logout_redirect_uri={}&state=s-9",
            rp.id,
            enc(RP_BYE)
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    let csp = res
        .headers()
        .get_one("Content-Security-Policy")
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("form-action 'self' https://rp.example.gouv.fr"),
        "{csp}"
    );
    let page = unescape(&res.into_string().await.expect("page"));
    assert_eq!(title(&page), "Se déconnecter de Tchap — Portail Tchap");
    assert!(page.contains("Le service Démarches simplifiées demande"));
    assert!(
        logged_in(&app).await,
        "nothing happens before the agent confirms"
    );

    // Confirming without the page's token is refused (CSRF), with it the agent goes back.
    let body = format!(
        "client_id={}&post_logout_redirect_uri={}&state=s-9",
        rp.id,
        enc(RP_BYE)
    );
    let res = app
        .client
        .post("/logout/confirmer")
        .header(ContentType::Form)
        .body(body.clone())
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Forbidden);
    assert!(logged_in(&app).await);
    let res = app
        .client
        .post("/logout/confirmer")
        .header(ContentType::Form)
        .body(format!("csrf_token={}&{body}", csrf_token(&page)))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther);
    assert_eq!(
        res.headers().get_one("Location"),
        Some(format!("{RP_BYE}?state=s-9").as_str())
    );
    assert!(!logged_in(&app).await);

    // An unknown service: an error page, no redirect.
    let res = app
        .client
        .get(format!(
            "/logout?client_id=inconnu&post_logout_redirect_uri={}",
            enc(RP_BYE)
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::BadRequest);
    assert!(res.headers().get_one("Location").is_none());

    // Without any service: a page saying so.
    let (_, user_id) = new_user("agent", PASSWORD, None).await;
    login(&app.client, &user_id).await;
    let page = app
        .client
        .get("/logout")
        .dispatch()
        .await
        .into_string()
        .await
        .expect("page");
    let res = app
        .client
        .post("/logout/confirmer")
        .header(ContentType::Form)
        .body(format!("csrf_token={}", csrf_token(&page)))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    let page = unescape(&res.into_string().await.expect("page"));
    assert_eq!(title(&page), "Vous êtes déconnecté — Portail Tchap");
    assert!(!logged_in(&app).await);
}

#[rocket::async_test]
async fn discovery_announces_revocation_introspection_and_logout() {
    let app = TestApp::new().await;
    let doc: Value = serde_json::from_str(
        &app.client
            .get("/.well-known/openid-configuration")
            .dispatch()
            .await
            .into_string()
            .await
            .expect("doc"),
    )
    .expect("json");
    for (field, path, method) in [
        ("revocation_endpoint", "/revoke", "POST"),
        ("introspection_endpoint", "/introspect", "POST"),
        ("end_session_endpoint", "/logout", "GET"),
    ] {
        let url = doc[field].as_str().unwrap_or_else(|| panic!("{field}"));
        assert_eq!(url, format!("http://127.0.0.1:8000{path}"));
        let res = if method == "POST" {
            app.client
                .post(path)
                .header(ContentType::Form)
                .body("token=x")
                .dispatch()
                .await
        } else {
            app.client.get(path).dispatch().await
        };
        assert_ne!(res.status(), Status::NotFound, "{field} is served");
    }
}

/// The statements of an authorization, a code's redemption and userinfo (raw SQL) are prepared
/// once per connection and reused, and a whole flow needs one connection at a time.
#[rocket::async_test]
async fn whole_flows_reuse_their_prepared_statements_on_one_connection() {
    let db = TestDb::new().await;
    let fig = figment(&db).merge(("portal.db.pool_size", 1));
    let (app, rp, _) = setup_on(TestApp::with_figment(db, fig).await).await;
    for _ in 0..2 {
        let code = code_for(&app, &rp, "").await;
        let (status, tokens) = exchange(&app, &rp, &code).await;
        assert_eq!(status, Status::Ok, "{tokens}");
        let at = tokens["access_token"].as_str().expect("access token");
        let (status, info) = userinfo_get(&app, at).await;
        assert_eq!(status, Status::Ok);
        assert_eq!(info["given_name"], "Alice", "{info}");
    }
    let prepared = app.prepared_runs().await;
    assert_eq!(
        runs_of(&prepared, "INSERT INTO oidc_grants"),
        2,
        "two codes"
    );
    assert_eq!(
        runs_of(&prepared, "UPDATE oidc_codes"),
        2,
        "two redemptions"
    );
    assert_eq!(
        runs_of(&prepared, "FROM oidc_tokens t"),
        2,
        "two userinfo answers"
    );
}

/// Every way a token request can fail to match its code gets its own description, issues no
/// token and spends the code; a code past its minute is refused as expired.
#[rocket::async_test]
async fn a_refused_exchange_says_why_issues_nothing_and_spends_the_code() {
    use diesel_async::RunQueryDsl;
    let (app, rp, _) = setup().await;
    let pkce = format!("&code_challenge={}&code_challenge_method=S256", challenge());
    let by_rp = |code: &str, redirect: &str, verifier: Option<&str>| {
        let mut body = format!(
            "grant_type=authorization_code&code={code}&redirect_uri={}",
            enc(redirect)
        );
        if let Some(v) = verifier {
            body.push_str(&format!("&code_verifier={v}"));
        }
        body
    };
    let code = code_for(&app, &rp, "").await;
    let mut cases = vec![(
        code.clone(),
        Some(basic(&rp.id, &rp.secret)),
        by_rp(&code, "https://rp.example.gouv.fr/other", None),
        "redirect_uri differs from the authorization request",
    )];
    let code = code_for(&app, &rp, "").await;
    cases.push((
        code.clone(),
        None,
        format!("{}&client_id={}", by_rp(&code, RP, None), rp.public_id),
        "code was issued to another client",
    ));
    let code = code_for(&app, &rp, &pkce).await;
    cases.push((
        code.clone(),
        Some(basic(&rp.id, &rp.secret)),
        by_rp(&code, RP, None),
        "code_verifier is required",
    ));
    let code = code_for(&app, &rp, &pkce).await;
    cases.push((
        code.clone(),
        Some(basic(&rp.id, &rp.secret)),
        by_rp(
            &code,
            RP,
            Some("another-verifier-another-verifier-another-verif"),
        ),
        "code_verifier does not match",
    ));
    let code = code_for(&app, &rp, "").await;
    cases.push((
        code.clone(),
        Some(basic(&rp.id, &rp.secret)),
        by_rp(&code, RP, Some(VERIFIER)),
        "no code_challenge was sent",
    ));
    for (code, auth, body, why) in cases {
        let (s, e, _) = token(&app.client, auth, body).await;
        assert_eq!(s, Status::BadRequest, "{why}: {e}");
        assert_eq!(e["error"], "invalid_grant", "{why}");
        assert_eq!(e["error_description"], why);
        // Spent: the right request afterwards is a replay.
        let (s, e) = exchange(&app, &rp, &code).await;
        assert_eq!(
            (s, e["error_description"].as_str()),
            (Status::BadRequest, Some("code already used")),
            "{why}"
        );
    }
    // Past its expiry, a code is refused as such.
    let code = code_for(&app, &rp, "").await;
    let mut conn = app.db.conn().await;
    diesel::sql_query("UPDATE oidc_codes SET expires_at = now() - interval '1 second'")
        .execute(&mut conn)
        .await
        .expect("expire the codes");
    let (s, e) = exchange(&app, &rp, &code).await;
    assert_eq!(
        (s, e["error_description"].as_str()),
        (Status::BadRequest, Some("unknown or expired code"))
    );
    let tokens: i64 = diesel::dsl::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM oidc_tokens)",
    ))
    .get_result(&mut conn)
    .await
    .expect("count");
    assert_eq!(tokens, 0, "no token was issued by a refused exchange");
    // And a request that matches its code gets its tokens.
    let code = code_for(&app, &rp, &pkce).await;
    let (s, t, _) = token(
        &app.client,
        Some(basic(&rp.id, &rp.secret)),
        by_rp(&code, RP, Some(VERIFIER)),
    )
    .await;
    assert_eq!(s, Status::Ok, "{t}");
}

/// With the database gone, the token endpoint and userinfo say so as RFC 6749 asks (503,
/// `temporarily_unavailable`, never cached) instead of failing the service's request blindly.
#[rocket::async_test]
async fn token_and_userinfo_answer_503_while_the_database_is_down() {
    let (app, rp, _) = setup().await;
    let code = code_for(&app, &rp, "").await;
    let (s, tokens) = exchange(&app, &rp, &code).await;
    assert_eq!(s, Status::Ok, "{tokens}");
    let at = tokens["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    let code = code_for(&app, &rp, "").await;
    app.db.drop_now().await;
    let (s, e) = exchange(&app, &rp, &code).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::ServiceUnavailable, Some("temporarily_unavailable"))
    );
    let (s, e) = userinfo_get(&app, &at).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (Status::ServiceUnavailable, Some("temporarily_unavailable"))
    );
}
