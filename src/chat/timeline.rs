//! A page of a room's history as the room page shows it: who, when (Europe/Paris), what, in plain
//! words for membership and name changes; edits shown with their latest text, deletions and
//! encrypted messages said as such, replies with a quote of what they answer.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audioconf::format;
use crate::web::i18n::Lang;

use super::html;

/// The parts of an event the page needs (read lazily from the homeserver's JSON).
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    #[serde(default)]
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub sender: String,
    #[serde(default)]
    pub origin_server_ts: i64,
    #[serde(default)]
    pub state_key: Option<String>,
    #[serde(default)]
    pub content: Value,
    #[serde(default)]
    pub unsigned: Value,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Quote {
    pub sender: Option<String>,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Media {
    /// The proxy path (inline for safe images, a download otherwise).
    pub href: String,
    pub thumbnail: Option<String>,
    pub name: String,
    pub size: Option<String>,
}

/// One line of the room page.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub id: String,
    /// Set on the first item of each day: that day's heading.
    pub day: Option<String>,
    pub sender: String,
    pub sender_id: String,
    pub mine: bool,
    pub time: String,
    pub datetime: String,
    /// text, notice, emote, image, file, event (a change in words), deleted, encrypted.
    pub kind: &'static str,
    /// Sanitised HTML (messages) or empty.
    pub html: String,
    /// Plain words (changes) or a file's name.
    pub text: String,
    pub edited: bool,
    pub reply: Option<Quote>,
    pub media: Option<Media>,
}

impl Item {
    /// Messages can be answered; changes, deletions and encrypted ones cannot.
    pub fn can_reply(&self) -> bool {
        matches!(self.kind, "text" | "notice" | "emote" | "image" | "file")
    }
}

/// What a page of history yields: its items and the media it shows (for the proxy's list).
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    pub media: Vec<String>,
}

/// Display names of the people in a page of history, from the member events it came with.
pub fn names(state: &[Event], chunk: &[Event]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for ev in state.iter().chain(chunk.iter()) {
        if ev.kind == "m.room.member" {
            if let (Some(user), Some(name)) = (&ev.state_key, ev.content["displayname"].as_str()) {
                if !name.trim().is_empty() {
                    names.insert(user.clone(), name.to_owned());
                }
            }
        }
    }
    names
}

/// "@alice:example" → "alice".
pub fn localpart(user_id: &str) -> &str {
    user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or(user_id)
}

fn name_of<'a>(names: &'a HashMap<String, String>, user_id: &'a str) -> &'a str {
    names
        .get(user_id)
        .map(String::as_str)
        .unwrap_or_else(|| localpart(user_id))
}

/// "1,5 Mo" / "1.5 MB".
pub fn size(bytes: u64, lang: Lang) -> String {
    let (value, unit) = if bytes >= 1024 * 1024 {
        (bytes as f64 / (1024.0 * 1024.0), ["Mo", "MB"])
    } else if bytes >= 1024 {
        (bytes as f64 / 1024.0, ["ko", "KB"])
    } else {
        return match lang {
            Lang::Fr => format!("{bytes} octets"),
            Lang::En => format!("{bytes} bytes"),
        };
    };
    let n = format!("{value:.1}");
    match lang {
        Lang::Fr => format!("{} {}", n.replace('.', ","), unit[0]),
        Lang::En => format!("{n} {}", unit[1]),
    }
}

fn reply_to(content: &Value) -> Option<&str> {
    content["m.relates_to"]["m.in_reply_to"]["event_id"].as_str()
}

fn is_edit(content: &Value) -> bool {
    content["m.relates_to"]["rel_type"] == "m.replace"
}

/// A short plain text of a message, for quotes.
fn summary(content: &Value, lang: Lang) -> String {
    let body = content["body"].as_str().unwrap_or_default();
    let text = html::strip_reply_fallback(body)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let text = match text.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    };
    if text.is_empty() {
        lang.t("chat.ev.empty").to_owned()
    } else {
        text
    }
}

/// A room's history, oldest first, as page items.
pub fn build(
    chunk: &[Event],
    names: &HashMap<String, String>,
    me: &str,
    lang: Lang,
    previous_day: Option<chrono::NaiveDate>,
) -> Page {
    let by_id: HashMap<&str, &Event> = chunk.iter().map(|e| (e.event_id.as_str(), e)).collect();
    // Edits in this page, latest last: used when the homeserver did not bundle them.
    let mut edits: HashMap<&str, &Value> = HashMap::new();
    for ev in chunk {
        if is_edit(&ev.content) && ev.unsigned["redacted_because"].is_null() {
            if let Some(original) = ev.content["m.relates_to"]["event_id"].as_str() {
                let sender_ok = by_id.get(original).is_none_or(|o| o.sender == ev.sender);
                if sender_ok && ev.content["m.new_content"].is_object() {
                    edits.insert(original, &ev.content["m.new_content"]);
                }
            }
        }
    }
    let mut page = Page::default();
    let mut last_day = previous_day;
    for ev in chunk {
        let Some(mut item) = item(ev, names, me, lang, &by_id, &edits, &mut page.media) else {
            continue;
        };
        let ts = Utc
            .timestamp_millis_opt(ev.origin_server_ts)
            .single()
            .unwrap_or_else(Utc::now);
        let day = format::paris_date(ts);
        if last_day != Some(day) {
            item.day = Some(format::day(day, lang));
            last_day = Some(day);
        }
        page.items.push(item);
    }
    page
}

fn item(
    ev: &Event,
    names: &HashMap<String, String>,
    me: &str,
    lang: Lang,
    by_id: &HashMap<&str, &Event>,
    edits: &HashMap<&str, &Value>,
    media: &mut Vec<String>,
) -> Option<Item> {
    let ts: DateTime<Utc> = Utc
        .timestamp_millis_opt(ev.origin_server_ts)
        .single()
        .unwrap_or_else(Utc::now);
    let who = name_of(names, &ev.sender).to_owned();
    let mut item = Item {
        id: ev.event_id.clone(),
        day: None,
        sender: who.clone(),
        sender_id: ev.sender.clone(),
        mine: ev.sender == me,
        time: format::time(ts),
        datetime: ts.to_rfc3339(),
        kind: "text",
        html: String::new(),
        text: String::new(),
        edited: false,
        reply: None,
        media: None,
    };
    let redacted = !ev.unsigned["redacted_because"].is_null();
    match ev.kind.as_str() {
        "m.room.message" | "m.sticker" if redacted => item.kind = "deleted",
        "m.room.message" | "m.sticker" => {
            if is_edit(&ev.content) {
                return None;
            }
            let (content, edited) = latest(ev, edits);
            item.edited = edited;
            message(&mut item, content, &ev.kind, lang, media);
            if let Some(target) = reply_to(&ev.content) {
                item.reply = Some(match by_id.get(target) {
                    Some(o) if o.unsigned["redacted_because"].is_null() => Quote {
                        sender: Some(name_of(names, &o.sender).to_owned()),
                        text: summary(latest(o, edits).0, lang),
                    },
                    _ => Quote {
                        sender: None,
                        text: lang.t("chat.ev.reply_unknown").to_owned(),
                    },
                });
            }
        }
        "m.room.encrypted" => item.kind = "encrypted",
        _ if ev.state_key.is_some() => {
            item.kind = "event";
            item.text = change(ev, names, &who, lang)?;
        }
        _ => return None,
    }
    Some(item)
}

/// A message's latest content: its last edit (bundled by the homeserver, else found in this page).
fn latest<'a>(ev: &'a Event, edits: &HashMap<&str, &'a Value>) -> (&'a Value, bool) {
    let bundled = &ev.unsigned["m.relations"]["m.replace"]["content"]["m.new_content"];
    if bundled.is_object() {
        (bundled, true)
    } else if let Some(new) = edits.get(ev.event_id.as_str()) {
        (new, true)
    } else {
        (&ev.content, false)
    }
}

fn message(item: &mut Item, content: &Value, kind: &str, lang: Lang, media: &mut Vec<String>) {
    let msgtype = content["msgtype"].as_str().unwrap_or("m.text");
    let body = content["body"].as_str().unwrap_or_default();
    let file = |item: &mut Item, media: &mut Vec<String>, image: bool| {
        let url = content["url"].as_str().unwrap_or_default();
        let Some(href) = html::proxy_path(url) else {
            // Encrypted files (a `file` object) or a broken event: said, not shown.
            item.kind = "encrypted";
            return;
        };
        media.push(url.to_owned());
        let bytes = content["info"]["size"].as_u64();
        item.kind = if image { "image" } else { "file" };
        let name = if body.is_empty() {
            lang.t("chat.ev.file").to_owned()
        } else {
            body.to_owned()
        };
        item.media = Some(Media {
            thumbnail: image.then(|| format!("{href}?vignette=1")),
            href: format!(
                "{href}?nom={}",
                crate::accounts::matrix::percent_encode(&name)
            ),
            name,
            size: bytes.map(|b| size(b, lang)),
        });
    };
    if kind == "m.sticker" {
        return file(item, media, true);
    }
    match msgtype {
        "m.image" => return file(item, media, true),
        "m.file" | "m.audio" | "m.video" => return file(item, media, false),
        "m.notice" => item.kind = "notice",
        "m.emote" => item.kind = "emote",
        _ => item.kind = "text",
    }
    let formatted = content["formatted_body"].as_str();
    item.html = match (content["format"].as_str(), formatted) {
        (Some("org.matrix.custom.html"), Some(f)) => {
            let r = html::formatted(f);
            media.extend(r.media);
            r.html
        }
        _ => html::plain(html::strip_reply_fallback(body)),
    };
}

/// A state change in plain words, or `None` for changes not worth a line.
fn change(ev: &Event, names: &HashMap<String, String>, who: &str, lang: Lang) -> Option<String> {
    let c = &ev.content;
    let target_id = ev.state_key.as_deref().unwrap_or_default();
    let target = c["displayname"]
        .as_str()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| name_of(names, target_id));
    let before = &ev.unsigned["prev_content"];
    let key = match ev.kind.as_str() {
        "m.room.create" => "chat.ev.create",
        "m.room.name" => match c["name"].as_str() {
            Some(n) if !n.is_empty() => {
                return Some(lang.tf("chat.ev.name", &[("who", who), ("name", n)]))
            }
            _ => "chat.ev.name_removed",
        },
        "m.room.topic" => {
            let topic = c["topic"].as_str().unwrap_or_default();
            return Some(lang.tf("chat.ev.topic", &[("who", who), ("topic", topic)]));
        }
        "m.room.encryption" => "chat.ev.encryption",
        "m.room.member" => {
            let now = c["membership"].as_str().unwrap_or_default();
            let was = before["membership"].as_str().unwrap_or("leave");
            let self_change = ev.sender == target_id;
            match (was, now) {
                ("join", "join") => {
                    let old = before["displayname"].as_str().unwrap_or(target_id);
                    let new = c["displayname"].as_str();
                    return match new {
                        Some(new) if new != old => {
                            Some(lang.tf("chat.ev.renamed", &[("old", old), ("new", new)]))
                        }
                        _ => None,
                    };
                }
                (_, "join") => "chat.ev.join",
                ("invite", "leave") if self_change => "chat.ev.declined",
                ("invite", "leave") => "chat.ev.uninvited",
                (_, "leave") if self_change => "chat.ev.leave",
                (_, "leave") => "chat.ev.kick",
                (_, "invite") => "chat.ev.invite",
                (_, "ban") => "chat.ev.ban",
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(lang.tf(key, &[("who", who), ("target", target)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(v: Value) -> Event {
        serde_json::from_value(v).expect("event")
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(size(900, Lang::Fr), "900 octets");
        assert_eq!(size(1536, Lang::Fr), "1,5 ko");
        assert_eq!(size(3 * 1024 * 1024, Lang::En), "3.0 MB");
    }

    #[test]
    fn edits_replies_deletions_and_changes() {
        let chunk = vec![
            ev(
                json!({"event_id": "$1", "type": "m.room.member", "sender": "@a:x", "state_key": "@a:x",
                "origin_server_ts": 1_700_000_000_000i64, "content": {"membership": "join", "displayname": "Alice"}}),
            ),
            ev(
                json!({"event_id": "$2", "type": "m.room.message", "sender": "@a:x",
                "origin_server_ts": 1_700_000_001_000i64, "content": {"msgtype": "m.text", "body": "premier"}}),
            ),
            ev(
                json!({"event_id": "$3", "type": "m.room.message", "sender": "@a:x",
                "origin_server_ts": 1_700_000_002_000i64, "content": {"msgtype": "m.text", "body": "* corrigé",
                "m.new_content": {"msgtype": "m.text", "body": "corrigé"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$2"}}}),
            ),
            ev(
                json!({"event_id": "$4", "type": "m.room.message", "sender": "@b:x",
                "origin_server_ts": 1_700_000_003_000i64, "content": {"msgtype": "m.text", "body": "> <@a:x> premier\n\nréponse",
                "m.relates_to": {"m.in_reply_to": {"event_id": "$2"}}}}),
            ),
            ev(
                json!({"event_id": "$5", "type": "m.room.message", "sender": "@b:x",
                "origin_server_ts": 1_700_000_004_000i64, "content": {},
                "unsigned": {"redacted_because": {"type": "m.room.redaction"}}}),
            ),
            ev(
                json!({"event_id": "$6", "type": "m.room.encrypted", "sender": "@b:x",
                "origin_server_ts": 1_700_000_005_000i64, "content": {"algorithm": "m.megolm.v1.aes-sha2"}}),
            ),
        ];
        let names = names(&[], &chunk);
        let page = build(&chunk, &names, "@a:x", Lang::Fr, None);
        let kinds: Vec<_> = page.items.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, ["event", "text", "text", "deleted", "encrypted"]);
        assert_eq!(page.items[0].text, "Alice a rejoint le salon");
        assert!(page.items[0].day.is_some());
        assert!(page.items[1].day.is_none());
        assert_eq!(page.items[1].html, "corrigé");
        assert!(page.items[1].edited);
        assert!(page.items[1].mine);
        assert_eq!(page.items[2].html, "réponse");
        assert_eq!(
            page.items[2].reply,
            Some(Quote {
                sender: Some("Alice".into()),
                text: "corrigé".into()
            })
        );
        assert_eq!(page.items[2].sender, "b");
    }
}
