//! Translations: French first, English second. The language comes from the `lang` cookie set by
//! the switch in the header, else from `Accept-Language`, else French.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use rocket::request::{FromRequest, Outcome, Request};
use serde::Serialize;

pub const LANG_COOKIE: &str = "lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Fr,
    En,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::Fr, Lang::En];

    pub fn code(self) -> &'static str {
        match self {
            Lang::Fr => "fr",
            Lang::En => "en",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        match code.trim().to_ascii_lowercase().get(..2) {
            Some("fr") => Some(Lang::Fr),
            Some("en") => Some(Lang::En),
            _ => None,
        }
    }

    /// The first supported language in an `Accept-Language` header, by quality.
    pub fn from_accept_language(header: &str) -> Option<Lang> {
        let mut best: Option<(f32, Lang)> = None;
        for part in header.split(',') {
            let mut bits = part.split(';');
            let tag = bits.next().unwrap_or("").trim();
            let q = bits
                .find_map(|b| b.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            if let Some(lang) = Lang::parse(tag) {
                if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                    best = Some((q, lang));
                }
            }
        }
        best.map(|(_, l)| l)
    }

    /// The visitor's language, from the cookie or the header.
    pub fn of_request(req: &Request<'_>) -> Lang {
        req.cookies()
            .get(LANG_COOKIE)
            .and_then(|c| Lang::parse(c.value()))
            .or_else(|| {
                req.headers()
                    .get_one("Accept-Language")
                    .and_then(Lang::from_accept_language)
            })
            .unwrap_or(Lang::Fr)
    }

    /// A translated string; the key itself when missing (the catalog test prevents that).
    pub fn t(self, key: &str) -> &'static str {
        catalog(self)
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| {
                tracing::error!(key, lang = self.code(), "missing translation");
                "?"
            })
    }

    /// A translated string with `{name}` placeholders filled.
    pub fn tf(self, key: &str, args: &[(&str, &str)]) -> String {
        let mut s = self.t(key).to_owned();
        for (name, value) in args {
            s = s.replace(&format!("{{{name}}}"), value);
        }
        s
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Lang {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        Outcome::Success(Lang::of_request(req))
    }
}

static CATALOGS: OnceLock<HashMap<Lang, BTreeMap<String, String>>> = OnceLock::new();

pub fn catalog(lang: Lang) -> &'static BTreeMap<String, String> {
    let all = CATALOGS.get_or_init(|| {
        let parse = |src: &str, name: &str| -> BTreeMap<String, String> {
            serde_json::from_str(src).unwrap_or_else(|e| {
                tracing::error!(catalog = name, error = %e, "translation catalog is not valid JSON");
                BTreeMap::new()
            })
        };
        HashMap::from([
            (Lang::Fr, parse(include_str!("i18n/fr.json"), "fr")),
            (Lang::En, parse(include_str!("i18n/en.json"), "en")),
        ])
    });
    &all[&lang]
}

/// `{{ t(key="home.title", lang=lang, name=…) }}` in templates; an unknown key is a render error,
/// so a template test catches it.
pub struct TeraT;

impl tera::Function for TeraT {
    fn call(&self, args: &HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
        let key = args
            .get("key")
            .and_then(|v| v.as_str())
            .ok_or_else(|| tera::Error::msg("t(): `key` is required"))?;
        let lang = args
            .get("lang")
            .and_then(|v| v.as_str())
            .and_then(Lang::parse)
            .ok_or_else(|| tera::Error::msg("t(): `lang` is required"))?;
        let mut s = catalog(lang)
            .get(key)
            .ok_or_else(|| {
                tera::Error::msg(format!("t(): no `{key}` in the {} catalog", lang.code()))
            })?
            .clone();
        for (name, value) in args {
            if name != "key" && name != "lang" {
                let v = match value {
                    tera::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                s = s.replace(&format!("{{{name}}}"), &v);
            }
        }
        Ok(tera::Value::String(s))
    }

    fn is_safe(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_best_supported() {
        assert_eq!(
            Lang::from_accept_language("en-GB,en;q=0.9,fr;q=0.8"),
            Some(Lang::En)
        );
        assert_eq!(
            Lang::from_accept_language("de-DE,fr;q=0.5,en;q=0.4"),
            Some(Lang::Fr)
        );
        assert_eq!(Lang::from_accept_language("de"), None);
        assert_eq!(
            Lang::from_accept_language("en;q=0,fr;q=0.1"),
            Some(Lang::Fr)
        );
    }
}
