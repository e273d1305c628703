//! Tchap Identité, the OpenID Connect provider: discovery, keys, clients.

use chrono::{Duration, Utc};
use rocket::http::Status;
use serde_json::Value;
use tchap_portal::cli;
use tchap_portal::oidc::keys;

use crate::common::{figment, TestApp};

async fn json(app: &TestApp, path: &str) -> Value {
    let res = app.client.get(path).dispatch().await;
    assert_eq!(res.status(), Status::Ok, "{path}");
    serde_json::from_str(&res.into_string().await.expect("body")).expect("json")
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// The OpenID Foundation's Config OP checks, reproduced.
#[rocket::async_test]
async fn discovery_document_is_complete_and_consistent() {
    let app = TestApp::new().await;
    let doc = json(&app, "/.well-known/openid-configuration").await;
    let issuer = doc["issuer"].as_str().expect("issuer");
    assert_eq!(
        issuer, "http://127.0.0.1:8000",
        "issuer is the public URL, without trailing slash"
    );
    for field in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
    ] {
        let url = doc[field].as_str().unwrap_or_else(|| panic!("{field}"));
        assert!(url.starts_with(issuer), "{field} is under the issuer");
    }
    assert_eq!(doc["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert!(doc["scopes_supported"]
        .as_array()
        .expect("scopes")
        .contains(&"openid".into()));
    assert!(doc["subject_types_supported"]
        .as_array()
        .expect("subjects")
        .contains(&"pairwise".into()));
    assert!(doc["id_token_signing_alg_values_supported"]
        .as_array()
        .expect("algs")
        .contains(&"RS256".into()));
    assert_eq!(doc["request_parameter_supported"], false);
    assert_eq!(doc["request_uri_parameter_supported"], false);
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    // The jwks_uri answers, from the same server.
    let path = doc["jwks_uri"]
        .as_str()
        .expect("jwks")
        .trim_start_matches(issuer)
        .to_owned();
    let jwks = json(&app, &path).await;
    assert!(!jwks["keys"].as_array().expect("keys").is_empty());
}

#[rocket::async_test]
async fn jwks_publishes_public_rs256_and_es256_keys_only() {
    let app = TestApp::new().await;
    let jwks = json(&app, "/jwks.json").await;
    let keys = jwks["keys"].as_array().expect("keys");
    let algs: Vec<&str> = keys.iter().filter_map(|k| k["alg"].as_str()).collect();
    assert!(
        algs.contains(&"RS256") && algs.contains(&"ES256"),
        "{algs:?}"
    );
    for k in keys {
        assert_eq!(k["use"], "sig");
        assert!(k["kid"].as_str().is_some_and(|s| s.len() == 43));
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                k.get(private).is_none(),
                "no private part {private} in the JWKS"
            );
        }
    }
}

#[rocket::async_test]
async fn key_rotation_keeps_old_public_keys_until_their_tokens_expire() {
    let app = TestApp::new().await;
    let before: Vec<Value> = json(&app, "/jwks.json").await["keys"]
        .as_array()
        .expect("keys")
        .clone();
    let fig = figment(&app.db);
    let out = cli::run(&args("keys rotate"), &fig).await.expect("rotated");
    assert!(out.contains("new signing keys"));
    // A rotation made by another process is published within a second (the JWKS cache).
    rocket::tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let after = json(&app, "/jwks.json").await;
    let after = after["keys"].as_array().expect("keys");
    assert_eq!(
        after.len(),
        before.len() + 2,
        "two new keys, old ones still published"
    );
    for old in &before {
        assert!(
            after.contains(old),
            "old key still published right after rotation"
        );
    }
    // The old keys sign until the new ones have been published for an hour (the default delay),
    // then the new ones do.
    let mut conn = app.db.conn().await;
    let ring = app.client.rocket().state::<keys::KeyRing>().expect("ring");
    let secrets = app
        .client
        .rocket()
        .state::<tchap_portal::crypto::Keys>()
        .expect("keys");
    ring.refresh(&mut conn, secrets, Utc::now())
        .await
        .expect("refresh");
    let kid_in = |list: &[Value], kid: &str| list.iter().any(|k| k["kid"] == kid);
    for alg in keys::ALGS {
        let now = ring.get(alg).expect("key").kid;
        assert!(kid_in(&before, &now), "{alg}: the old key still signs");
        let next = ring
            .get_at(alg, Utc::now() + Duration::seconds(3601))
            .expect("key")
            .kid;
        assert!(
            !kid_in(&before, &next) && kid_in(after, &next),
            "{alg}: an hour later, the new key signs"
        );
    }
    // Once the grace period is over, the retired keys leave the JWKS.
    let later = keys::jwks(&mut conn, Utc::now() + Duration::hours(3))
        .await
        .expect("jwks");
    let later = later["keys"].as_array().expect("keys");
    assert_eq!(later.len(), 2);
    for old in &before {
        assert!(!later.contains(old));
    }
}

#[rocket::async_test]
async fn operators_register_and_manage_clients_from_the_command_line() {
    let app = TestApp::new().await;
    let fig = figment(&app.db);
    let out = cli::run(
        &args("client add --name Démarches --redirect-uri https://rp.example.gouv.fr/callback --post-logout-redirect-uri https://rp.example.gouv.fr/ --id-token-alg ES256"),
        &fig,
    )
    .await
    .expect("added");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("{name} in {out}"))
    };
    let client_id = field("client_id:");
    let secret = field("client_secret:");
    assert_eq!(secret.len(), 43);
    assert!(out.contains("confidential") && out.contains("ES256") && out.contains("pairwise"));

    let list = cli::run(&args("client list"), &fig).await.expect("list");
    assert!(list.contains(&client_id) && list.contains("Démarches"));
    let shown = cli::run(&args(&format!("client show {client_id}")), &fig)
        .await
        .expect("show");
    assert!(shown.contains("https://rp.example.gouv.fr/callback"));
    assert!(!shown.contains(&secret), "the secret is shown once only");

    let mut conn = app.db.conn().await;
    let client = tchap_portal::oidc::clients::find(&mut conn, &client_id)
        .await
        .expect("q")
        .expect("client");
    assert!(client.check_secret(&secret));
    let rotated = cli::run(&args(&format!("client rotate-secret {client_id}")), &fig)
        .await
        .expect("rotate");
    let new_secret = rotated
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("client_secret: "))
        .expect("secret")
        .to_owned();
    let client = tchap_portal::oidc::clients::find(&mut conn, &client_id)
        .await
        .expect("q")
        .expect("client");
    assert!(client.check_secret(&new_secret) && !client.check_secret(&secret));

    let public = cli::run(
        &args("client add --name Mobile --redirect-uri http://127.0.0.1:9999/cb --public"),
        &fig,
    )
    .await
    .expect("public");
    assert!(public.contains("public (PKCE, no secret)") && !public.contains("client_secret:"));

    let refused = cli::run(
        &args("client add --name Bad --redirect-uri http://rp.example.gouv.fr/cb"),
        &fig,
    )
    .await;
    assert!(refused
        .expect_err("http refused")
        .contains("must be an absolute https URL"));

    cli::run(&args(&format!("client remove {client_id}")), &fig)
        .await
        .expect("removed");
    let gone = cli::run(&args(&format!("client show {client_id}")), &fig).await;
    assert!(gone.is_err());
}
