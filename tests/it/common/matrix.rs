//! Accounts on the test Synapse, made through its shared-secret registration API.

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use serde_json::{json, Value};

use super::env;

pub fn homeserver() -> String {
    env("IT_SYNAPSE_URL")
}

/// A new user with a unique name; returns (localpart, Matrix ID).
pub async fn new_user(
    prefix: &str,
    password: &str,
    display_name: Option<&str>,
) -> (String, String) {
    let (local, user_id, _) = register(prefix, password, display_name, false).await;
    (local, user_id)
}

/// Registers a user (an administrator if `admin`); returns (localpart, Matrix ID, access token).
pub async fn register(
    prefix: &str,
    password: &str,
    display_name: Option<&str>,
    admin: bool,
) -> (String, String, String) {
    let local = format!("{prefix}-{}", random_tag());
    register_exact(&local, password, display_name, admin).await
}

/// A short random lowercase tag for names that must not collide between tests.
pub fn random_tag() -> String {
    tchap_portal::crypto::random_token(6)
        .expect("rand")
        .to_lowercase()
        .replace(['-', '_'], "x")
}

/// Registers the user `local` exactly (an administrator if `admin`).
pub async fn register_exact(
    local: &str,
    password: &str,
    display_name: Option<&str>,
    admin: bool,
) -> (String, String, String) {
    let local = local.to_owned();
    let http = reqwest::Client::new();
    let url = format!("{}/_synapse/admin/v1/register", homeserver());
    let nonce: Value = http
        .get(&url)
        .send()
        .await
        .expect("nonce")
        .json()
        .await
        .expect("json");
    let nonce = nonce["nonce"].as_str().expect("nonce").to_owned();
    let key = PKey::hmac(env("IT_SYNAPSE_SECRET").as_bytes()).expect("key");
    let mut signer = Signer::new(MessageDigest::sha1(), &key).expect("signer");
    signer
        .update(
            format!(
                "{nonce}\0{local}\0{password}\0{}",
                if admin { "admin" } else { "notadmin" }
            )
            .as_bytes(),
        )
        .expect("mac");
    let mac: String = signer
        .sign_to_vec()
        .expect("mac")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let res: Value = http
        .post(&url)
        .json(
            &json!({"nonce": nonce, "username": local, "password": password, "admin": admin,
                      "mac": mac, "displayname": display_name}),
        )
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let user_id = res["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("registered: {res}"))
        .to_owned();
    let token = res["access_token"].as_str().unwrap_or_default().to_owned();
    (local, user_id, token)
}

/// Ends `user_id`'s account validity now, as a Tchap administrator does (Synapse's
/// account-validity admin API).
pub async fn expire(user_id: &str) {
    let (_, _, admin) = register("admin", "Admin-pass-42", None, true).await;
    let res = reqwest::Client::new()
        .post(format!(
            "{}/_synapse/admin/v1/account_validity/validity",
            homeserver()
        ))
        .bearer_auth(admin)
        .json(&json!({"user_id": user_id, "expiration_ts": 1000, "enable_renewal_emails": false}))
        .send()
        .await
        .expect("account validity");
    assert!(res.status().is_success(), "expire: {}", res.status());
}

/// `GET /account/whoami` with a token: who it belongs to, or the HTTP status when refused.
pub async fn whoami(token: &str) -> Result<String, u16> {
    let res = reqwest::Client::new()
        .get(format!("{}/_matrix/client/v3/account/whoami", homeserver()))
        .bearer_auth(token)
        .send()
        .await
        .expect("whoami");
    let status = res.status().as_u16();
    if status != 200 {
        return Err(status);
    }
    let v: Value = res.json().await.expect("json");
    Ok(v["user_id"].as_str().unwrap_or_default().to_owned())
}

/// Gives `user_id` a verified email address, as a Tchap administrator does (Synapse's user admin
/// API marks the addresses it sets as validated).
pub async fn set_email(user_id: &str, email: &str) {
    let (_, _, admin) = register("admin", "Admin-pass-42", None, true).await;
    let res = reqwest::Client::new()
        .put(format!(
            "{}/_synapse/admin/v2/users/{user_id}",
            homeserver()
        ))
        .bearer_auth(admin)
        .json(&json!({"threepids": [{"medium": "email", "address": email}]}))
        .send()
        .await
        .expect("user admin API");
    assert!(res.status().is_success(), "set email: {}", res.status());
}

/// A Matrix access token of `user_id` (a device of its own, not the portal's).
pub async fn token_of(user_id: &str, password: &str) -> String {
    let res: Value = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/login", homeserver()))
        .json(&json!({"type": "m.login.password",
                      "identifier": {"type": "m.id.user", "user": user_id}, "password": password}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    res["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("login: {res}"))
        .to_owned()
}

/// A client-server API call as `token`; returns the JSON answer (panics on an error status).
pub async fn call(method: &str, token: &str, path: &str, body: Value) -> Value {
    let url = format!("{}/_matrix/client/v3{path}", homeserver());
    let http = reqwest::Client::new();
    let req = match method {
        "PUT" => http.put(url),
        "GET" => http.get(url),
        _ => http.post(url),
    };
    let res = req
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("homeserver");
    let status = res.status();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {path}: {status} {v}");
    v
}

/// Creates a room as `token` (body as for `/createRoom`); returns its ID.
pub async fn create_room(token: &str, body: Value) -> String {
    call("POST", token, "/createRoom", body).await["room_id"]
        .as_str()
        .expect("room_id")
        .to_owned()
}

/// Sends `content` as an `m.room.message`; returns the event ID.
pub async fn send(token: &str, room_id: &str, content: Value) -> String {
    let txn = tchap_portal::crypto::random_token(8).expect("rand");
    call(
        "PUT",
        token,
        &format!(
            "/rooms/{}/send/m.room.message/{txn}",
            tchap_portal::accounts::matrix::percent_encode(room_id)
        ),
        content,
    )
    .await["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned()
}
