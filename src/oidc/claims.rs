//! The values a service receives, per scope, computed from the agent's Tchap session.

use serde_json::{json, Map, Value};

use crate::accounts::session::CurrentUser;
use crate::crypto::{self, Keys, Stable};
use crate::web::i18n::Lang;

use super::discovery::SCOPES;

/// A Tchap display name "Prénom Nom [Organisation]": (given, family, organisation).
pub fn parse_display_name(display: &str) -> (Option<String>, Option<String>, Option<String>) {
    let (name, org) = match (display.rfind('['), display.ends_with(']')) {
        (Some(open), true) => (
            display[..open].trim(),
            Some(display[open + 1..display.len() - 1].trim().to_owned()).filter(|o| !o.is_empty()),
        ),
        _ => (display.trim(), None),
    };
    let mut words = name.split_whitespace();
    let given = words.next().map(str::to_owned);
    let family: Vec<&str> = words.collect();
    let family = (!family.is_empty()).then(|| family.join(" "));
    (given, family, org)
}

/// The subject for a client: pairwise (different per client, unlinkable) or public (same for all).
pub fn subject(keys: &Keys, subject_type: &str, client_id: &str, matrix_user_id: &str) -> String {
    let mac = if subject_type == "public" {
        keys.stable(Stable::SubjectPublic)
            .mac(matrix_user_id.as_bytes())
    } else {
        keys.stable(Stable::SubjectPairwise)
            .mac(format!("{client_id}|{matrix_user_id}").as_bytes())
    };
    crypto::b64url(&mac)
}

/// The requested scopes the portal knows, `openid` first, unknown ones dropped.
pub fn known_scopes(scope: &str) -> Vec<String> {
    let asked: Vec<&str> = scope.split_whitespace().collect();
    SCOPES
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| asked.contains(s))
        .map(str::to_owned)
        .collect()
}

/// The claims released for `scopes` (without `sub`, added per client), in consent order.
pub fn values(user: &CurrentUser, scopes: &[String]) -> Map<String, Value> {
    let mut out = Map::new();
    let display = user.display_name.clone().unwrap_or_default();
    let (given, family, org) = parse_display_name(&display);
    let server = user
        .matrix_user_id
        .split_once(':')
        .map(|(_, s)| s.to_owned());
    for scope in scopes {
        match scope.as_str() {
            "email" => {
                if let Some(email) = user.emails().next() {
                    out.insert("email".into(), json!(email));
                    out.insert("email_verified".into(), json!(true));
                }
            }
            "profile" => {
                let full = match (&given, &family) {
                    (Some(g), Some(f)) => Some(format!("{g} {f}")),
                    (Some(g), None) => Some(g.clone()),
                    _ => None,
                };
                for (k, v) in [
                    ("name", full),
                    ("given_name", given.clone()),
                    ("family_name", family.clone()),
                ] {
                    if let Some(v) = v {
                        out.insert(k.into(), json!(v));
                    }
                }
            }
            "tchap" => {
                out.insert("matrix_user_id".into(), json!(user.matrix_user_id));
                if let Some(s) = &server {
                    out.insert("homeserver".into(), json!(s));
                }
                if let Some(o) = &org {
                    out.insert("organization".into(), json!(o));
                }
            }
            _ => {}
        }
    }
    out
}

/// What the consent page shows: (label, value) for every claim, in the agent's language.
pub fn labelled(lang: Lang, claims: &Map<String, Value>) -> Vec<(String, String)> {
    let mut rows = vec![(
        lang.t("claim.sub").to_owned(),
        lang.t("claim.sub.value").to_owned(),
    )];
    for (k, v) in claims {
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Bool(true) => lang.t("claim.yes").to_owned(),
            Value::Bool(false) => lang.t("claim.no").to_owned(),
            other => other.to_string(),
        };
        rows.push((lang.t(&format!("claim.{k}")).to_owned(), value));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tchap_display_names_are_split() {
        assert_eq!(
            parse_display_name("Alice Martin [DINUM]"),
            (
                Some("Alice".into()),
                Some("Martin".into()),
                Some("DINUM".into())
            )
        );
        assert_eq!(
            parse_display_name("Jean-Pierre de La Tour [Ministère de l'Intérieur]"),
            (
                Some("Jean-Pierre".into()),
                Some("de La Tour".into()),
                Some("Ministère de l'Intérieur".into())
            )
        );
        assert_eq!(
            parse_display_name("alice"),
            (Some("alice".into()), None, None)
        );
    }

    #[test]
    fn pairwise_subjects_differ_per_client_and_are_stable() {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef");
        let a = subject(&keys, "pairwise", "rp-a", "@alice:x");
        assert_eq!(a, subject(&keys, "pairwise", "rp-a", "@alice:x"));
        assert_ne!(a, subject(&keys, "pairwise", "rp-b", "@alice:x"));
        assert_eq!(
            subject(&keys, "public", "rp-a", "@alice:x"),
            subject(&keys, "public", "rp-b", "@alice:x")
        );
        assert!(!a.contains("alice"));
    }
}
