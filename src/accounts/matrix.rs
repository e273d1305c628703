//! The few Matrix client-server calls the login needs: homeserver discovery, `m.login.password`,
//! the profile, the verified email addresses and logout. Every call has a timeout.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::config::MatrixSettings;

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

/// The shared HTTP client, with the configured timeouts.
#[derive(Clone)]
pub struct MatrixClient {
    http: reqwest::Client,
    pub default_homeserver: String,
    pub server_name: String,
    discovery: Vec<String>,
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
        if s.is_empty() {
            return None;
        }
        if let Some(rest) = s.strip_prefix('@') {
            let (local, server) = rest.split_once(':')?;
            if local.is_empty() || server.is_empty() {
                return None;
            }
            return Some(Identifier::UserId {
                localpart: local.to_lowercase(),
                server: server.to_lowercase(),
            });
        }
        if s.contains('@') {
            return Some(Identifier::Email(s.to_lowercase()));
        }
        Some(Identifier::Localpart(s.to_lowercase()))
    }
}

impl MatrixClient {
    pub fn new(settings: &MatrixSettings) -> Result<MatrixClient, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(settings.timeout_secs.min(5)))
            .timeout(Duration::from_secs(settings.timeout_secs))
            .user_agent("tchap-portal")
            .build()
            .map_err(|e| e.to_string())?;
        Ok(MatrixClient {
            http,
            default_homeserver: settings.homeserver.trim_end_matches('/').to_owned(),
            server_name: settings.server_name.clone(),
            discovery: settings.discovery_homeservers.clone(),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The homeserver that holds this account, found the way Tchap finds it.
    pub async fn discover(&self, id: &Identifier) -> Result<String, MatrixError> {
        match id {
            Identifier::Localpart(_) => Ok(self.default_homeserver.clone()),
            Identifier::UserId { server, .. } if *server == self.server_name => {
                Ok(self.default_homeserver.clone())
            }
            Identifier::UserId { server, .. } => {
                let url = format!("https://{server}/.well-known/matrix/client");
                #[derive(Deserialize)]
                struct WellKnown {
                    #[serde(rename = "m.homeserver")]
                    homeserver: Base,
                }
                #[derive(Deserialize)]
                struct Base {
                    base_url: String,
                }
                match self.http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => match r.json::<WellKnown>().await {
                        Ok(w) => Ok(w.homeserver.base_url.trim_end_matches('/').to_owned()),
                        Err(_) => Ok(format!("https://{server}")),
                    },
                    Ok(_) => Ok(format!("https://{server}")),
                    Err(e) => Err(MatrixError::Unreachable(e.to_string())),
                }
            }
            Identifier::Email(address) => {
                let Some(first) = self.discovery.first() else {
                    return Ok(self.default_homeserver.clone());
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
                let info: Info = res
                    .json()
                    .await
                    .map_err(|e| MatrixError::Unreachable(e.to_string()))?;
                Ok(format!("https://matrix.{}", info.hs))
            }
        }
    }

    pub async fn login(
        &self,
        homeserver: &str,
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
            .post(format!("{homeserver}/_matrix/client/v3/login"))
            .json(&json!({
                "type": "m.login.password",
                "identifier": identifier,
                "password": password,
                "initial_device_display_name": device_name,
            }))
            .send()
            .await
            .map_err(|e| MatrixError::Unreachable(e.to_string()))?;
        parse(res).await
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
            Ok(p) => Ok(p.displayname),
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
            .map(|t| t.address.to_lowercase())
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
    }
}
