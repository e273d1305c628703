//! Text from outside (forms, homeservers) made storable and displayable, in one place.
//!
//! PostgreSQL cannot hold NUL in `text`, and HTML has no place for the other C0 and C1 controls or
//! Unicode non-characters: they are removed wherever text enters the portal. Forms take [`Text`]
//! instead of `String`; homeserver answers go through [`clean_json`] before they are parsed; the
//! rest calls [`storable`].

use std::borrow::Cow;

use rocket::fairing::{Fairing, Info, Kind};
use rocket::form::{self, FromFormField, ValueField};
use rocket::http::{Method, RawStr};
use rocket::{Data, Request};

/// Whether a character may be stored and shown: not NUL, not a control other than tab, line
/// feed and carriage return, not a Unicode non-character.
pub fn allowed(c: char) -> bool {
    let n = c as u32;
    match n {
        0x09 | 0x0A | 0x0D => true,
        0x00..=0x1F | 0x7F..=0x9F => false,
        0xFDD0..=0xFDEF => false,
        _ => n & 0xFFFE != 0xFFFE,
    }
}

/// `s` without the characters [`allowed`] refuses; borrowed when nothing had to go.
pub fn storable(s: &str) -> Cow<'_, str> {
    if s.chars().all(allowed) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.chars().filter(|c| allowed(*c)).collect())
    }
}

/// [`storable`] for an owned string, without a copy when nothing had to go.
pub fn storable_owned(s: String) -> String {
    match storable(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(clean) => clean,
    }
}

/// A form field's text, made storable as it is parsed (every form takes this, not `String`).
/// Only made through [`From`], which cleans, so a `Text` never holds a refused character.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    /// The value of a field the form did not send.
    pub fn empty() -> Text {
        Text(String::new())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(storable(s).into_owned())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(storable_owned(s))
    }
}

#[rocket::async_trait]
impl<'v> FromFormField<'v> for Text {
    fn from_value(field: ValueField<'v>) -> form::Result<'v, Self> {
        Ok(Text(storable(field.value).into_owned()))
    }

    fn default() -> Option<Self> {
        None
    }
}

/// Where a request whose address holds a refused character is rerouted: it answers 400.
pub const REFUSED_PATH: &str = "/__bad-request";

/// Refuses, with a 400 page, a request whose path or query, once percent-decoded, holds a character
/// [`allowed`] refuses (`%00`, `%0A`…): no handler ever sees one in a path segment or a parameter.
pub struct RefuseHostileUri;

/// Whether a percent-encoded path or query decodes to text with no refused character. Text that
/// is not UTF-8 once decoded is left to the handlers' own guards.
pub fn uri_part_ok(raw: &str) -> bool {
    RawStr::new(raw)
        .percent_decode()
        .map_or(true, |decoded| decoded.chars().all(allowed))
}

#[rocket::async_trait]
impl Fairing for RefuseHostileUri {
    fn info(&self) -> Info {
        Info {
            name: "Refuse hostile URIs",
            kind: Kind::Request,
        }
    }

    async fn on_request(&self, req: &mut Request<'_>, _: &mut Data<'_>) {
        let uri = req.uri();
        let ok =
            uri_part_ok(uri.path().as_str()) && uri.query().is_none_or(|q| uri_part_ok(q.as_str()));
        if !ok {
            tracing::info!("request refused: a control character in its address");
            req.set_method(Method::Get);
            if let Ok(uri) = rocket::http::uri::Origin::parse(REFUSED_PATH) {
                req.set_uri(uri);
            }
        }
    }
}

#[rocket::get("/__bad-request")]
pub fn refused() -> rocket::http::Status {
    rocket::http::Status::BadRequest
}

/// A JSON document whose strings hold no character [`allowed`] refuses. Most answers have none
/// and are passed on untouched after one scan; the others are parsed, cleaned and written again.
/// A document that is not JSON is passed on as it is (its parser will refuse it).
pub fn clean_json(bytes: Vec<u8>) -> Vec<u8> {
    if !json_needs_cleaning(&bytes) {
        return bytes;
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return bytes;
    };
    clean_value(&mut value);
    serde_json::to_vec(&value).unwrap_or(bytes)
}

fn clean_value(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if let Cow::Owned(clean) = storable(s) {
                *s = clean;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(clean_value),
        serde_json::Value::Object(map) => {
            let dirty: Vec<String> = map
                .keys()
                .filter(|k| matches!(storable(k), Cow::Owned(_)))
                .cloned()
                .collect();
            for key in dirty {
                if let Some(value) = map.remove(&key) {
                    map.insert(storable(&key).into_owned(), value);
                }
            }
            map.values_mut().for_each(clean_value);
        }
        _ => {}
    }
}

/// Whether JSON text may hold a refused character, raw or as a `\u` escape (a fast scan that may
/// answer yes for text that turns out clean, never no for text that is not).
fn json_needs_cleaning(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if b.get(i + 1) == Some(&b'u') => {
                let code = b
                    .get(i + 2..i + 6)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u32::from_str_radix(h, 16).ok());
                match code {
                    // A surrogate pair escapes one character of another plane: check it whole
                    // (emoji come this way from servers that escape all non-ASCII text).
                    Some(high @ 0xD800..=0xDBFF) => {
                        let low = b
                            .get(i + 6..i + 12)
                            .filter(|l| l.starts_with(b"\\u"))
                            .and_then(|l| std::str::from_utf8(&l[2..]).ok())
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .filter(|l| (0xDC00..=0xDFFF).contains(l));
                        let Some(low) = low else {
                            return true; // A lone surrogate: the slow path decides.
                        };
                        let c = char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00));
                        if c.is_none_or(|c| !allowed(c)) {
                            return true;
                        }
                        i += 6;
                    }
                    Some(0xDC00..=0xDFFF) => return true,
                    Some(n) if char::from_u32(n).is_some_and(|c| !allowed(c)) => return true,
                    _ => {}
                }
                i += 6;
            }
            // An escaped backslash: the next character is not an escape.
            b'\\' => i += 2,
            // Raw controls are invalid JSON; C1 controls are C2 80–9F in UTF-8.
            0x00..=0x1F | 0x7F => return true,
            0xC2 if b.get(i + 1).is_some_and(|n| (0x80..=0x9F).contains(n)) => return true,
            // U+FDD0–FDEF and U+FFFE/FFFF (EF B7 90–AF, EF BF BE–BF); other planes' ones (F0–F4).
            0xEF if matches!(
                (b.get(i + 1), b.get(i + 2)),
                (Some(0xB7), Some(0x90..=0xAF)) | (Some(0xBF), Some(0xBE..=0xBF))
            ) =>
            {
                return true
            }
            0xF0..=0xF4
                if b.get(i + 2).is_some_and(|x| x & 0x0F == 0x0F)
                    && matches!(b.get(i + 3), Some(0xBE..=0xBF)) =>
            {
                return true
            }
            _ => i += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refused_characters_are_removed() {
        assert_eq!(storable("a\0b\u{1}c\u{7f}d\u{85}e"), "abcde");
        assert_eq!(storable("x\u{FDD0}\u{FFFE}\u{1FFFF}\u{10FFFF}y"), "xy");
        assert_eq!(storable("ligne\r\nsuivante\tà"), "ligne\r\nsuivante\tà");
        assert!(matches!(storable("déjà vu 🎉"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_strings_and_keys_are_cleaned() {
        let raw = br#"{"name":"a\u0000b","k\u0001":["\u0085x","\\u0000 stays text"],"n":1}"#;
        let clean: serde_json::Value =
            serde_json::from_slice(&clean_json(raw.to_vec())).expect("json");
        assert_eq!(
            clean,
            serde_json::json!({"name": "ab", "k": ["x", "\\u0000 stays text"], "n": 1})
        );
        let untouched = br#"{"body":"bonjour \\u0000 \u00e9"}"#.to_vec();
        assert_eq!(clean_json(untouched.clone()), untouched);
    }

    #[test]
    fn escaped_emoji_take_the_fast_path_and_escaped_non_characters_do_not() {
        assert!(!json_needs_cleaning(
            br#"{"body":"f\u00eate \ud83c\udf89"}"#
        ));
        assert!(
            json_needs_cleaning(br#"{"body":"\ud83f\udffe"}"#),
            "U+1FFFE"
        );
        assert!(
            json_needs_cleaning(br#"{"body":"\ud83c x"}"#),
            "lone high surrogate"
        );
        assert!(
            json_needs_cleaning(br#"{"body":"\udf89"}"#),
            "lone low surrogate"
        );
    }

    proptest! {
        #[test]
        fn storable_keeps_every_allowed_character_and_nothing_else(s in any::<String>()) {
            let out = storable(&s);
            prop_assert!(out.chars().all(allowed));
            let kept: String = s.chars().filter(|c| allowed(*c)).collect();
            prop_assert_eq!(out.as_ref(), kept.as_str());
        }

        #[test]
        fn any_json_string_comes_out_storable(s in any::<String>(), key in any::<String>()) {
            let doc = serde_json::to_vec(&serde_json::json!({ key.clone(): [s.clone(), {"x": s}] }))
                .expect("json");
            let value: serde_json::Value =
                serde_json::from_slice(&clean_json(doc)).expect("still json");
            fn check(v: &serde_json::Value) -> bool {
                match v {
                    serde_json::Value::String(s) => s.chars().all(allowed),
                    serde_json::Value::Array(a) => a.iter().all(check),
                    serde_json::Value::Object(m) => {
                        m.iter().all(|(k, v)| k.chars().all(allowed) && check(v))
                    }
                    _ => true,
                }
            }
            prop_assert!(check(&value));
        }

        #[test]
        fn the_fast_scan_never_misses(s in any::<String>()) {
            let doc = serde_json::to_vec(&serde_json::json!({ "s": s.clone() })).expect("json");
            if !s.chars().all(allowed) {
                prop_assert!(json_needs_cleaning(&doc));
            }
            let ascii = serde_json::to_string(&s).expect("json");
            let escaped: String = ascii
                .chars()
                .flat_map(|c| {
                    if c.is_ascii() { vec![c.to_string()] } else {
                        let mut buf = [0u16; 2];
                        c.encode_utf16(&mut buf).iter().map(|u| format!("\\u{u:04x}")).collect()
                    }
                })
                .collect();
            if !s.chars().all(allowed) {
                prop_assert!(json_needs_cleaning(escaped.as_bytes()));
            }
        }
    }
}
