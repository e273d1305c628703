//! The few Matrix client-server calls the login needs: homeserver discovery, `m.login.password`,
//! the profile, the verified email addresses and logout. Every call has a timeout.
//!
//! Only configured homeservers are ever asked (`matrix.homeserver` and `matrix.homeservers`), and
//! each is believed only for its own users: a Matrix ID of another server is refused before
//! anything is fetched, and a login whose answered `user_id` is not the account typed on that
//! server is refused (see SECURITY.md).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::config::{Config, HomeserverSetting};
use crate::web::text;

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// Wrong identifier or password (one message for both: no account enumeration).
    #[error("invalid credentials")]
    Forbidden,
    /// Tchap's expired-account error.
    #[error("account expired")]
    Expired,
    #[error("rate limited by the homeserver")]
    RateLimited,
    /// The access token is no longer valid (logged out elsewhere).
    #[error("token revoked")]
    UnknownToken,
    #[error("homeserver unreachable: {0}")]
    Unreachable(String),
    #[error("homeserver answered {status}: {errcode}")]
    Other { status: u16, errcode: String },
    /// The account's server (typed, or answered by email discovery) is not a configured one.
    #[error("homeserver not trusted: {0}")]
    Untrusted(String),
    /// The homeserver vouched for a user it may not assert (another server's, or another account).
    #[error("homeserver answered for another account: {0}")]
    WrongUser(String),
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errcode: String,
}

/// What a successful `m.login.password` returns.
#[derive(Debug, Clone, Deserialize)]
pub struct LoginResponse {
    pub user_id: String,
    pub access_token: String,
    pub device_id: String,
}

/// The shared HTTP client, with the configured timeouts, and the homeservers it may ask.
#[derive(Clone)]
pub struct MatrixClient {
    http: reqwest::Client,
    /// Every trusted homeserver, the default one first.
    homeservers: Vec<HomeserverSetting>,
    discovery: Vec<String>,
}

/// A configured homeserver an account was found on: where to send the password, and the server
/// name its answers must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Homeserver {
    pub url: String,
    pub server_name: String,
}

/// How the agent named the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identifier {
    Email(String),
    UserId { localpart: String, server: String },
    Localpart(String),
}

impl Identifier {
    pub fn parse(input: &str) -> Option<Identifier> {
        let s = input.trim();
        if s.is_empty() || s.len() > 255 {
            return None;
        }
        if let Some(rest) = s.strip_prefix('@') {
            let (local, server) = rest.split_once(':')?;
            let (local, server) = (local.to_lowercase(), server.to_lowercase());
            if !is_localpart(&local) || !crate::config::is_server_name(&server) {
                return None;
            }
            return Some(Identifier::UserId {
                localpart: local,
                server,
            });
        }
        if s.contains('@') {
            let email = s.to_lowercase();
            let (local, domain) = email.rsplit_once('@')?;
            let printable = |p: &str| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_alphanumeric() || c.is_ascii_graphic())
            };
            return (printable(local) && printable(domain)).then_some(Identifier::Email(email));
        }
        let local = s.to_lowercase();
        is_localpart(&local).then_some(Identifier::Localpart(local))
    }
}

/// A Matrix user ID's localpart, as the specification allows it (lowercase, `a-z 0-9 . _ = - / +`).
fn is_localpart(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
}

/// `@localpart:server` split at the first colon (server names may hold one for the port).
pub fn split_user_id(user_id: &str) -> Option<(&str, &str)> {
    user_id.strip_prefix('@')?.split_once(':')
}

impl MatrixClient {
    pub fn new(config: &Config) -> Result<MatrixClient, String> {
        let settings = &config.settings.matrix;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(settings.timeout_secs.min(5)))
            .timeout(Duration::from_secs(settings.timeout_secs))
            .user_agent("tchap-portal")
            // A configured server's redirect could point anywhere: never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(MatrixClient {
            http,
            homeservers: config.homeservers.clone(),
            discovery: settings.discovery_homeservers.clone(),
        })
    }

    /// The configured homeserver named `server_name`, if any.
    pub fn homeserver(&self, server_name: &str) -> Option<Homeserver> {
        let wanted = server_name.to_lowercase();
        self.homeservers
            .iter()
            .find(|h| h.server_name == wanted)
            .map(|h| Homeserver {
                url: h.url.clone(),
                server_name: h.server_name.clone(),
            })
    }

    fn default_homeserver(&self) -> Option<Homeserver> {
        self.homeservers.first().map(|h| Homeserver {
            url: h.url.clone(),
            server_name: h.server_name.clone(),
        })
    }

    /// The account's Matrix ID when the way it was typed tells it (not for an email address).
    pub fn user_id_of(&self, id: &Identifier) -> Option<String> {
        match id {
            Identifier::UserId { localpart, server } => Some(format!("@{localpart}:{server}")),
            Identifier::Localpart(localpart) => self
                .default_homeserver()
                .map(|h| format!("@{localpart}:{}", h.server_name)),
            Identifier::Email(_) => None,
        }
    }

    /// Checks that `user_id`, answered by `hs` for a login as `id`, is an account `hs` may vouch
    /// for: one of its own users and, for a user name, the one typed.
    pub fn check_user_id(
        &self,
        hs: &Homeserver,
        id: &Identifier,
        user_id: &str,
    ) -> Result<(), MatrixError> {
        let Some((local, server)) = split_user_id(user_id) else {
            return Err(MatrixError::WrongUser(user_id.to_owned()));
        };
        if !server.eq_ignore_ascii_case(&hs.server_name) {
            return Err(MatrixError::WrongUser(user_id.to_owned()));
        }
        match id {
            Identifier::UserId { localpart, .. } | Identifier::Localpart(localpart)
                if !local.eq_ignore_ascii_case(localpart) =>
            {
                Err(MatrixError::WrongUser(user_id.to_owned()))
            }
            _ => Ok(()),
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The configured homeserver that holds this account, found the way Tchap finds it: a user
    /// name is on the default homeserver, a Matrix ID on its own server (refused, without asking
    /// anyone, unless configured), an email address on the server the discovery servers name
    /// (refused unless configured).
    pub async fn discover(&self, id: &Identifier) -> Result<Homeserver, MatrixError> {
        match id {
            Identifier::Localpart(_) => self
                .default_homeserver()
                .ok_or_else(|| MatrixError::Untrusted(String::new())),
            Identifier::UserId { server, .. } => self
                .homeserver(server)
                .ok_or_else(|| MatrixError::Untrusted(server.clone())),
            Identifier::Email(address) => {
                let Some(first) = self.discovery.first() else {
                    return self
                        .default_homeserver()
                        .ok_or_else(|| MatrixError::Untrusted(String::new()));
                };
                #[derive(Deserialize)]
                struct Info {
                    hs: String,
                }
                let res = self
                    .http
                    .get(format!(
                        "{}/_matrix/identity/api/v1/info",
                        first.trim_end_matches('/')
                    ))
                    .query(&[("medium", "email"), ("address", address.as_str())])
                    .send()
                    .await
                    .map_err(|e| MatrixError::Unreachable(e.to_string()))?;
                if !res.status().is_success() {
                    return Err(MatrixError::Unreachable(format!(
                        "discovery answered {}",
                        res.status()
                    )));
                }
                let info: Info = res
                    .json()
                    .await
                    .map_err(|e| MatrixError::Unreachable(e.to_string()))?;
                // Tchap answers a server name; some deployments prefix it with `matrix.`.
                let name = info.hs.trim().to_lowercase();
                self.homeserver(&name)
                    .or_else(|| {
                        name.strip_prefix("matrix.")
                            .and_then(|n| self.homeserver(n))
                    })
                    .ok_or_else(|| {
                        MatrixError::Untrusted(text::storable(&name).chars().take(255).collect())
                    })
            }
        }
    }

    /// `m.login.password` at `hs`; the answer is accepted only for an account `hs` may vouch for
    /// ([`MatrixClient::check_user_id`]).
    pub async fn login(
        &self,
        hs: &Homeserver,
        id: &Identifier,
        password: &str,
        device_name: &str,
    ) -> Result<LoginResponse, MatrixError> {
        let identifier = match id {
            Identifier::Email(address) => {
                json!({"type": "m.id.thirdparty", "medium": "email", "address": address})
            }
            Identifier::UserId { localpart, .. } | Identifier::Localpart(localpart) => {
                json!({"type": "m.id.user", "user": localpart})
            }
        };
        let res = self
            .http
            .post(format!("{}/_matrix/client/v3/login", hs.url))
            .json(&json!({
                "type": "m.login.password",
                "identifier": identifier,
                "password": password,
                "initial_device_display_name": device_name,
            }))
            .send()
            .await
            .map_err(|e| MatrixError::Unreachable(e.to_string()))?;
        let login: LoginResponse = parse(res).await?;
        let printable =
            |s: &str| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic());
        if !printable(&login.user_id) {
            return Err(MatrixError::WrongUser(
                text::storable(&login.user_id).chars().take(255).collect(),
            ));
        }
        self.check_user_id(hs, id, &login.user_id)?;
        if !printable(&login.device_id) || login.access_token.is_empty() {
            return Err(MatrixError::Unreachable("bad login answer".into()));
        }
        Ok(login)
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        homeserver: &str,
        path: &str,
        token: &str,
    ) -> Result<T, MatrixError> {
        let res = self
            .http
            .get(format!("{homeserver}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| MatrixError::Unreachable(e.to_string()))?;
        parse(res).await
    }

    pub async fn display_name(
        &self,
        homeserver: &str,
        user_id: &str,
        token: &str,
    ) -> Result<Option<String>, MatrixError> {
        #[derive(Deserialize)]
        struct Profile {
            displayname: Option<String>,
        }
        let path = format!("/_matrix/client/v3/profile/{}", percent_encode(user_id));
        match self.get_json::<Profile>(homeserver, &path, token).await {
            Ok(p) => Ok(p
                .displayname
                .map(|n| text::storable(&n).chars().take(255).collect())),
            Err(MatrixError::Other { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Email addresses the homeserver has verified for the account.
    pub async fn verified_emails(
        &self,
        homeserver: &str,
        token: &str,
    ) -> Result<Vec<String>, MatrixError> {
        #[derive(Deserialize)]
        struct ThreePid {
            medium: String,
            address: String,
            #[serde(default)]
            validated_at: Option<i64>,
        }
        #[derive(Deserialize)]
        struct ThreePids {
            #[serde(default)]
            threepids: Vec<ThreePid>,
        }
        let list: ThreePids = self
            .get_json(homeserver, "/_matrix/client/v3/account/3pid", token)
            .await?;
        Ok(list
            .threepids
            .into_iter()
            .filter(|t| t.medium == "email" && t.validated_at.is_some())
            .map(|t| text::storable(&t.address).to_lowercase())
            .filter(|a| a.len() <= 320 && a.contains('@'))
            .collect())
    }

    /// Revokes the access token (and its device) on the homeserver.
    pub async fn logout(&self, homeserver: &str, token: &str) -> Result<(), MatrixError> {
        let res = self
            .http
            .post(format!("{homeserver}/_matrix/client/v3/logout"))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .map_err(|e| MatrixError::Unreachable(e.to_string()))?;
        match parse::<serde_json::Value>(res).await {
            Ok(_) | Err(MatrixError::UnknownToken) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

async fn parse<T: for<'de> Deserialize<'de>>(res: reqwest::Response) -> Result<T, MatrixError> {
    let status = res.status().as_u16();
    if res.status().is_success() {
        return res
            .json()
            .await
            .map_err(|e| MatrixError::Unreachable(format!("bad answer: {e}")));
    }
    let errcode = res
        .json::<ErrorBody>()
        .await
        .map(|b| b.errcode)
        .unwrap_or_default();
    Err(match errcode.as_str() {
        "ORG_MATRIX_EXPIRED_ACCOUNT" => MatrixError::Expired,
        "M_FORBIDDEN" | "M_USER_DEACTIVATED" if status == 403 => MatrixError::Forbidden,
        "M_UNKNOWN_TOKEN" | "M_MISSING_TOKEN" => MatrixError::UnknownToken,
        "M_LIMIT_EXCEEDED" => MatrixError::RateLimited,
        _ if status >= 500 => MatrixError::Unreachable(format!("{status} {errcode}")),
        _ => MatrixError::Other { status, errcode },
    })
}

/// Percent-encodes a path segment (Matrix IDs contain `@` and `:`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_told_apart() {
        assert_eq!(
            Identifier::parse(" Alice.Martin@Example.gouv.fr "),
            Some(Identifier::Email("alice.martin@example.gouv.fr".into()))
        );
        assert_eq!(
            Identifier::parse("@alice:agent.tchap.gouv.fr"),
            Some(Identifier::UserId {
                localpart: "alice".into(),
                server: "agent.tchap.gouv.fr".into()
            })
        );
        assert_eq!(
            Identifier::parse("alice"),
            Some(Identifier::Localpart("alice".into()))
        );
        assert_eq!(Identifier::parse("@alice"), None);
        assert_eq!(Identifier::parse("  "), None);
        assert_eq!(Identifier::parse("@al ice:x.gouv.fr"), None);
        assert_eq!(Identifier::parse("@alice:evil/host"), None);
        assert_eq!(Identifier::parse("ali\u{0}ce"), None);
        assert_eq!(
            Identifier::parse("@alice:[::1]:8448"),
            Some(Identifier::UserId {
                localpart: "alice".into(),
                server: "[::1]:8448".into()
            })
        );
    }

    fn client() -> MatrixClient {
        let settings = crate::config::Settings {
            database_url: Some("postgres://localhost/portal".into()),
            matrix: crate::config::MatrixSettings {
                homeservers: vec![HomeserverSetting {
                    server_name: "Agent.Tchap.gouv.fr".into(),
                    url: "https://matrix.agent.tchap.gouv.fr/".into(),
                }],
                ..crate::config::Settings::default().matrix
            },
            ..crate::config::Settings::default()
        };
        let config = Config::validate(settings, false).expect("config");
        MatrixClient::new(&config).expect("client")
    }

    #[test]
    fn only_configured_servers_and_only_for_their_own_users() {
        let c = client();
        let hs = c
            .homeserver("agent.tchap.gouv.fr")
            .expect("configured, any case");
        assert_eq!(hs.url, "https://matrix.agent.tchap.gouv.fr");
        assert!(c.homeserver("localhost").is_some(), "the default one");
        assert!(c.homeserver("evil.example").is_none());
        let typed = Identifier::parse("@alice:agent.tchap.gouv.fr").expect("id");
        assert!(c
            .check_user_id(&hs, &typed, "@alice:agent.tchap.gouv.fr")
            .is_ok());
        for forged in [
            "@admin:localhost",
            "@bob:agent.tchap.gouv.fr",
            "@alice:agent.tchap.gouv.fr.evil.example",
            "alice",
            "@alice",
        ] {
            assert!(
                matches!(
                    c.check_user_id(&hs, &typed, forged),
                    Err(MatrixError::WrongUser(_))
                ),
                "{forged}"
            );
        }
        let by_address = Identifier::parse("alice@interieur.gouv.fr").expect("email");
        assert!(c
            .check_user_id(&hs, &by_address, "@alice-x:agent.tchap.gouv.fr")
            .is_ok());
        assert!(c
            .check_user_id(&hs, &by_address, "@alice-x:localhost")
            .is_err());
        assert_eq!(
            c.user_id_of(&Identifier::Localpart("alice".into()))
                .as_deref(),
            Some("@alice:localhost")
        );
    }
}
