//! CSRF protection for every POST, enforced in one place.
//!
//! Each browser gets a random `csrf` cookie; a form's token is `<issued>.<HMAC(cookie, issued)>`,
//! valid for [`TOKEN_LIFETIME_HOURS`]. A request fairing checks every POST before routing, so a new
//! POST route is protected without doing anything: a missing, wrong or stale token, or a foreign
//! `Origin`, is answered 403 with a DSFR page. Forms put the token first (the `csrf_field()` macro),
//! which lets the fairing read it from the first bytes of the body without consuming it.

use chrono::{DateTime, Utc};
use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::{Cookie, CookieJar, Method, SameSite};
use rocket::{Data, Request};

use crate::crypto::{self, Keys};

pub const FIELD: &str = "csrf_token";
pub const TOKEN_LIFETIME_HOURS: i64 = 12;
const PURPOSE: &str = "csrf";

/// Machine-to-machine POST endpoints, authenticated otherwise (client secrets, bearer tokens):
/// the only POSTs without a CSRF token. Keep this the one list.
pub const EXEMPT: &[&str] = &[
    // OpenID Connect: a service may send the agent here by a cross-site form POST, as by GET; it
    // changes nothing by itself (the consent form it shows carries a token).
    "/authorize",
    // OpenID Connect, called by services' servers: client authentication or bearer token.
    "/token",
    "/userinfo",
    "/revoke",
    "/introspect",
    // RP-initiated logout: a service may POST here; it ends a session only for a valid
    // id_token_hint naming the agent, otherwise it shows a confirmation form (with a token).
    "/logout",
    // The telephony bridge's API: bearer secret, JSON.
    "/api/v1/ivr/verify",
];

/// Where a rejected POST is rerouted: it answers 403 through the DSFR catcher.
pub const REJECTED_PATH: &str = "/__csrf-rejected";

pub fn cookie_name(release: bool) -> &'static str {
    if release {
        "__Host-csrf"
    } else {
        "csrf"
    }
}

/// The token for this browser's cookie, creating the cookie when it has none.
pub fn token_for(
    cookies: &CookieJar<'_>,
    keys: &Keys,
    release: bool,
    now: DateTime<Utc>,
) -> String {
    let name = cookie_name(release);
    let secret = match cookies.get_pending(name) {
        Some(c) if !c.value().is_empty() => c.value().to_owned(),
        _ => {
            let fresh = crypto::random_token(32).unwrap_or_default();
            cookies.add(new_cookie(name, fresh.clone(), release));
            fresh
        }
    };
    sign(keys, &secret, now.timestamp())
}

/// A new secret for this browser (at login and logout), so tokens issued before stop working.
pub fn rotate(cookies: &CookieJar<'_>, release: bool) {
    let fresh = crypto::random_token(32).unwrap_or_default();
    cookies.add(new_cookie(cookie_name(release), fresh, release));
}

fn new_cookie(name: &'static str, value: String, release: bool) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .secure(release)
        .same_site(SameSite::Lax)
        .build()
}

fn token_of(mac: &[u8], issued: i64) -> String {
    format!("{issued:x}.{}", crypto::b64url(mac))
}

fn sign(keys: &Keys, secret: &str, issued: i64) -> String {
    let input = format!("{secret}.{issued}");
    token_of(&keys.mac(PURPOSE, input.as_bytes()), issued)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    NoCookie,
    NoToken,
    BadToken,
    Expired,
    ForeignOrigin,
}

pub fn verify(
    keys: &Keys,
    cookie: Option<&str>,
    token: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), Rejection> {
    let secret = cookie
        .filter(|c| !c.is_empty())
        .ok_or(Rejection::NoCookie)?;
    let token = token.filter(|t| !t.is_empty()).ok_or(Rejection::NoToken)?;
    let (issued_hex, _) = token.split_once('.').ok_or(Rejection::BadToken)?;
    let issued = i64::from_str_radix(issued_hex, 16).map_err(|_| Rejection::BadToken)?;
    // Any secret of the ring: a form shown before a rotation of `secret_key` can still be sent.
    let input = format!("{secret}.{issued}");
    if !keys
        .macs(PURPOSE, input.as_bytes())
        .any(|mac| crypto::constant_time_eq(token_of(&mac, issued).as_bytes(), token.as_bytes()))
    {
        return Err(Rejection::BadToken);
    }
    let age = now.timestamp() - issued;
    if !(-60..=TOKEN_LIFETIME_HOURS * 3600).contains(&age) {
        return Err(Rejection::Expired);
    }
    Ok(())
}

/// Reads the token from the start of an urlencoded or multipart body.
pub fn token_in_body(content_type: &str, head: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(head);
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let first = head.split('&').next()?;
        let value = first.strip_prefix(FIELD)?.strip_prefix('=')?;
        return Some(value.replace("%2E", ".").replace("%2e", "."));
    }
    if content_type.starts_with("multipart/form-data") {
        let at = head.find(&format!("name=\"{FIELD}\""))?;
        let rest = &head[at..];
        let body = rest.split_once("\r\n\r\n")?.1;
        return Some(body.split("\r\n").next()?.to_owned());
    }
    None
}

pub struct CsrfFairing {
    pub keys: Keys,
    pub release: bool,
    pub public_origin: String,
}

#[rocket::async_trait]
impl Fairing for CsrfFairing {
    fn info(&self) -> Info {
        Info {
            name: "CSRF check on every POST",
            kind: Kind::Request,
        }
    }

    async fn on_request(&self, req: &mut Request<'_>, data: &mut Data<'_>) {
        if req.method() != Method::Post || EXEMPT.contains(&req.uri().path().as_str()) {
            return;
        }
        let origin_ok = match req.headers().get_one("Origin") {
            None => true,
            Some(origin) => {
                origin == self.public_origin
                    || req
                        .host()
                        .is_some_and(|h| origin.ends_with(&format!("://{h}")))
            }
        };
        let content_type = req
            .content_type()
            .map(|c| c.to_string())
            .unwrap_or_default();
        let token = token_in_body(&content_type, data.peek(512).await);
        let cookie = req
            .cookies()
            .get(cookie_name(self.release))
            .map(|c| c.value().to_owned());
        let result = if origin_ok {
            verify(&self.keys, cookie.as_deref(), token.as_deref(), Utc::now())
        } else {
            Err(Rejection::ForeignOrigin)
        };
        if let Err(why) = result {
            tracing::warn!(path = %req.uri().path(), reason = ?why, "POST refused: CSRF check failed");
            req.local_cache(|| Some(why));
            req.set_method(Method::Get);
            if let Ok(uri) = rocket::http::uri::Origin::parse(REJECTED_PATH) {
                req.set_uri(uri);
            }
        }
    }
}

#[rocket::get("/__csrf-rejected")]
pub fn rejected() -> rocket::http::Status {
    rocket::http::Status::Forbidden
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn a_token_is_valid_for_its_cookie_only_and_for_a_while() {
        let now = Utc::now();
        let token = sign(&keys(), "cookie-a", now.timestamp());
        assert_eq!(verify(&keys(), Some("cookie-a"), Some(&token), now), Ok(()));
        assert_eq!(
            verify(&keys(), Some("cookie-b"), Some(&token), now),
            Err(Rejection::BadToken)
        );
        assert_eq!(
            verify(&keys(), None, Some(&token), now),
            Err(Rejection::NoCookie)
        );
        assert_eq!(
            verify(&keys(), Some("cookie-a"), None, now),
            Err(Rejection::NoToken)
        );
        let later = now + chrono::Duration::hours(TOKEN_LIFETIME_HOURS + 1);
        assert_eq!(
            verify(&keys(), Some("cookie-a"), Some(&token), later),
            Err(Rejection::Expired)
        );
        let forged = format!(
            "{:x}.{}",
            now.timestamp() + 10,
            token.split_once('.').map(|t| t.1).unwrap_or("")
        );
        assert_eq!(
            verify(&keys(), Some("cookie-a"), Some(&forged), now),
            Err(Rejection::BadToken)
        );
    }

    #[test]
    fn a_token_signed_before_a_rotation_stays_valid_while_its_key_is_previous() {
        let now = Utc::now();
        let old = b"0123456789abcdef0123456789abcdef".to_vec();
        let new = b"fedcba9876543210fedcba9876543210".to_vec();
        let token = sign(&keys(), "cookie-a", now.timestamp());
        let ring = Keys::with_previous(&new, &[old]);
        assert_eq!(verify(&ring, Some("cookie-a"), Some(&token), now), Ok(()));
        assert_ne!(
            sign(&ring, "cookie-a", now.timestamp()),
            token,
            "new key signs"
        );
        assert_eq!(
            verify(&Keys::new(&new), Some("cookie-a"), Some(&token), now),
            Err(Rejection::BadToken),
            "once retired, the old key's forms are refused (403 page, not 500)"
        );
    }

    #[test]
    fn the_token_is_read_from_the_start_of_either_form_encoding() {
        assert_eq!(
            token_in_body("application/x-www-form-urlencoded", b"csrf_token=ab.cd&x=1").as_deref(),
            Some("ab.cd")
        );
        assert_eq!(
            token_in_body("application/x-www-form-urlencoded", b"x=1&csrf_token=ab.cd"),
            None
        );
        let multipart =
            b"--XX\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\nab.cd\r\n--XX--";
        assert_eq!(
            token_in_body("multipart/form-data; boundary=XX", multipart).as_deref(),
            Some("ab.cd")
        );
    }
}
