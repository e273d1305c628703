//! A homeserver the tests run that lies: it answers `/login` for whatever account it is told
//! to, names any homeserver from its identity endpoint, and points its `.well-known` elsewhere.
//! Every request it receives is recorded, so a test can tell that nothing reached it.

use std::sync::{Arc, Mutex};

use rocket::http::uri::fmt::Path;
use rocket::http::uri::Segments;
use rocket::serde::json::Json;
use rocket::State;
use serde_json::{json, Value};

/// What the hostile server answers, and what it was asked.
#[derive(Default)]
pub struct Script {
    /// The `user_id` its `/login` answers.
    pub login_user_id: String,
    /// The `hs` its `/_matrix/identity/api/v1/info` answers.
    pub info_hs: String,
    /// The paths it received, in order.
    pub seen: Vec<String>,
}

pub struct Hostile {
    pub url: String,
    pub port: u16,
    script: Arc<Mutex<Script>>,
}

impl Hostile {
    /// Starts a hostile server on a free port; returns once it accepts connections.
    pub async fn start(login_user_id: &str, info_hs: &str) -> Hostile {
        let port = super::free_port();
        let script = Arc::new(Mutex::new(Script {
            login_user_id: login_user_id.to_owned(),
            info_hs: info_hs.to_owned(),
            seen: vec![],
        }));
        let config = rocket::Config {
            port,
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            log_level: rocket::config::LogLevel::Off,
            ..rocket::Config::debug_default()
        };
        let rocket = rocket::custom(config)
            .manage(script.clone())
            .mount("/", rocket::routes![any_get, any_post]);
        rocket::tokio::spawn(rocket.launch());
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // The probe connection itself is no request: nothing recorded.
                return Hostile {
                    url: format!("http://127.0.0.1:{port}"),
                    port,
                    script,
                };
            }
            rocket::tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the hostile homeserver did not start on port {port}");
    }

    /// The paths received so far.
    pub fn seen(&self) -> Vec<String> {
        self.script
            .lock()
            .map(|s| s.seen.clone())
            .unwrap_or_default()
    }

    pub fn set_login_user_id(&self, user_id: &str) {
        if let Ok(mut s) = self.script.lock() {
            s.login_user_id = user_id.to_owned();
        }
    }

    pub fn set_info_hs(&self, hs: &str) {
        if let Ok(mut s) = self.script.lock() {
            s.info_hs = hs.to_owned();
        }
    }
}

fn answer(script: &Mutex<Script>, path: Segments<'_, Path>) -> Json<Value> {
    // Raw segments: `PathBuf` would refuse `.well-known`.
    let path = format!("/{}", path.collect::<Vec<_>>().join("/"));
    let Ok(mut s) = script.lock() else {
        return Json(json!({}));
    };
    s.seen.push(path.clone());
    Json(match path.as_str() {
        "/.well-known/matrix/client" => {
            json!({"m.homeserver": {"base_url": "http://127.0.0.1:9"}})
        }
        "/_matrix/client/v3/login" => json!({
            "user_id": s.login_user_id,
            "access_token": "hostile-token",
            "device_id": "HOSTILE",
        }),
        "/_matrix/identity/api/v1/info" => json!({"hs": s.info_hs}),
        "/_matrix/client/v3/account/3pid" => json!({"threepids": [
            {"medium": "email", "address": "ministre@interieur.gouv.fr", "validated_at": 1}
        ]}),
        p if p.starts_with("/_matrix/client/v3/profile/") => json!({"displayname": "Le ministre"}),
        _ => json!({}),
    })
}

#[rocket::get("/<path..>")]
fn any_get(path: Segments<'_, Path>, script: &State<Arc<Mutex<Script>>>) -> Json<Value> {
    answer(script, path)
}

#[rocket::post("/<path..>", data = "<_body>")]
fn any_post(
    path: Segments<'_, Path>,
    _body: &str,
    script: &State<Arc<Mutex<Script>>>,
) -> Json<Value> {
    answer(script, path)
}
