//! The room list's data: an incremental `/sync` (filtered to what the list shows) each time a page
//! needs it, merged into one summary row per room and session in PostgreSQL, with the sync position.
//! A user with hundreds of rooms pays one full sync at the first page, then only what changed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ruma::api::client::filter::{FilterDefinition, RoomEventFilter};
use ruma::api::client::sync::sync_events::v3::{self as sync, Filter};
use ruma::serde::Raw;
use ruma::UInt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::db::schema::{chat_rooms, chat_sync};

use super::hs::{Hs, HsError};

/// What the room list shows of a room.
#[derive(Debug, Clone, Default, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = chat_rooms)]
pub struct RoomRow {
    pub session_id: i64,
    pub room_id: String,
    pub membership: String,
    pub name: Option<String>,
    pub kind: String,
    pub join_rule: Option<String>,
    pub access_rule: Option<String>,
    pub is_direct: bool,
    pub encrypted: bool,
    pub inviter: Option<String>,
    pub heroes: Vec<Option<String>>,
    pub last_ts: Option<DateTime<Utc>>,
    pub last_sender: Option<String>,
    pub last_preview: Option<String>,
    pub unread: i32,
    pub highlight: i32,
}

impl RoomRow {
    /// Tchap's room type: direct, forum (public), external (open to external accounts), private.
    fn classify(&mut self) {
        self.kind = if self.is_direct || self.access_rule.as_deref() == Some("direct") {
            "direct"
        } else if self.join_rule.as_deref() == Some("public") {
            "forum"
        } else if self.access_rule.as_deref() == Some("unrestricted") {
            "external"
        } else {
            "private"
        }
        .into();
    }
}

/// The parts of an event the list needs (events are read lazily from ruma's `Raw`).
#[derive(Debug, Deserialize)]
struct Ev {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    state_key: Option<String>,
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    origin_server_ts: Option<i64>,
    #[serde(default)]
    content: Value,
}

fn read<T>(raw: &Raw<T>) -> Option<Ev> {
    raw.deserialize_as_unchecked::<Ev>().ok()
}

const STATE_TYPES: [&str; 6] = [
    "m.room.name",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.join_rules",
    "im.vector.room.access_rules",
    "m.room.member",
];
/// Longest preview kept (characters).
const PREVIEW: usize = 140;

fn filter() -> FilterDefinition {
    let mut def = FilterDefinition::default();
    let mut state = RoomEventFilter::default();
    state.types = Some(STATE_TYPES.iter().map(|s| s.to_string()).collect());
    state.lazy_load_options = ruma::api::client::filter::LazyLoadOptions::Enabled {
        include_redundant_members: false,
    };
    def.room.state = state;
    let mut timeline = RoomEventFilter::default();
    timeline.limit = Some(UInt::from(5u32));
    def.room.timeline = timeline;
    def.room.account_data.types = Some(vec![]);
    def.room.ephemeral.types = Some(vec![]);
    def.presence.types = Some(vec![]);
    def.account_data.types = Some(vec!["m.direct".into()]);
    def
}

fn apply_state(row: &mut RoomRow, ev: &Ev, me: &str) {
    let c = &ev.content;
    match ev.kind.as_str() {
        "m.room.name" => row.name = c["name"].as_str().filter(|s| !s.is_empty()).map(Into::into),
        "m.room.canonical_alias" if row.name.is_none() => {
            row.name = c["alias"].as_str().map(Into::into)
        }
        "m.room.encryption" => row.encrypted = c["algorithm"].is_string(),
        "m.room.join_rules" => row.join_rule = c["join_rule"].as_str().map(Into::into),
        "im.vector.room.access_rules" => row.access_rule = c["rule"].as_str().map(Into::into),
        "m.room.member" if ev.state_key.as_deref() == Some(me) && c["membership"] == "invite" => {
            row.inviter = ev.sender.clone();
            if c["is_direct"] == true {
                row.is_direct = true;
            }
        }
        _ => {}
    }
}

fn apply_message(row: &mut RoomRow, ev: &Ev) {
    let ts = ev
        .origin_server_ts
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    if ts.is_some() {
        row.last_ts = ts;
    }
    let preview = match ev.kind.as_str() {
        "m.room.message" => ev.content["body"].as_str().map(|b| {
            let b = b.split_whitespace().collect::<Vec<_>>().join(" ");
            match b.char_indices().nth(PREVIEW) {
                Some((i, _)) => format!("{}…", &b[..i]),
                None => b,
            }
        }),
        // Shown as "message chiffré" by the page.
        "m.room.encrypted" => Some(String::new()),
        _ => return,
    };
    row.last_sender = ev.sender.clone();
    row.last_preview = preview;
}

fn count(n: Option<UInt>) -> i32 {
    n.map(|n| i32::try_from(u64::from(n)).unwrap_or(i32::MAX))
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Hs(#[from] HsError),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// Brings the session's room summaries up to date with one incremental sync.
///
/// Two syncs of one session at once (two tabs, a double click) both ask the homeserver, then take
/// turns writing: each locks the session's sync row first and writes only if the stored position is
/// still the one it started from. The other one's answer is dropped and it syncs once more from the
/// new position, so the position never moves backwards and no change between two positions is
/// skipped.
pub async fn refresh(
    conn: &mut AsyncPgConnection,
    hs: &Hs,
    session_id: i64,
    me: &str,
    homeserver: &str,
    token: &str,
) -> Result<(), SyncError> {
    for _ in 0..2 {
        let since: Option<String> = chat_sync::table
            .find(session_id)
            .select(chat_sync::next_batch)
            .first(conn)
            .await
            .optional()?
            .filter(|s: &String| !s.is_empty());
        let mut req = sync::Request::new();
        req.filter = Some(Filter::FilterDefinition(filter()));
        req.timeout = Some(Duration::ZERO);
        req.since = since;
        let since = req.since.clone();
        let res = hs.send(homeserver, token, req).await?;
        if apply(conn, session_id, me, since.as_deref(), res).await? == Applied::Written {
            break;
        }
    }
    // Still overtaken after a second try: another sync of this session has just written a
    // position at least as recent, and the list shows what it wrote.
    Ok(())
}

/// Whether an answer was written, or dropped because another sync moved the position first.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    Written,
    Overtaken,
}

async fn apply(
    conn: &mut AsyncPgConnection,
    session_id: i64,
    me: &str,
    since: Option<&str>,
    res: sync::Response,
) -> Result<Applied, diesel::result::Error> {
    // Nothing happened since the last sync (the usual case when a page is read again): nothing to
    // write, and no transaction to open.
    let quiet = res.rooms.join.is_empty()
        && res.rooms.invite.is_empty()
        && res.rooms.leave.is_empty()
        && res.account_data.events.is_empty();
    if quiet {
        if since == Some(res.next_batch.as_str()) {
            return Ok(Applied::Written);
        }
        // Only the position moved: one statement, atomic by itself.
        return advance(conn, session_id, since, &res.next_batch).await;
    }
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        // The session's sync row is locked first: two syncs of one session write in turn, and the
        // later one sees whether the position is still the one its answer starts from.
        if lock_position(conn, session_id).await?.as_deref() != since {
            return Ok(Applied::Overtaken);
        }
        merge(conn, session_id, me, &res).await?;
        save_position(conn, session_id, &res.next_batch).await?;
        Ok(Applied::Written)
    })
    .await
}

/// Locks the session's sync row (made first if there is none, for the very first sync) and
/// answers the position it holds.
async fn lock_position(
    conn: &mut AsyncPgConnection,
    session_id: i64,
) -> Result<Option<String>, diesel::result::Error> {
    // An empty position stands for "none yet" (a full sync); this transaction writes a real one
    // before it commits. A concurrent first sync waits here for this one's commit.
    diesel::insert_into(chat_sync::table)
        .values((
            chat_sync::session_id.eq(session_id),
            chat_sync::next_batch.eq(""),
            chat_sync::synced_at.eq(Utc::now()),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    let stored: String = chat_sync::table
        .find(session_id)
        .select(chat_sync::next_batch)
        .for_update()
        .first(conn)
        .await?;
    Ok(Some(stored).filter(|s| !s.is_empty()))
}

/// The answer's rooms merged into the stored summaries (read under the lock), written in room ID
/// order so that any two writers of the same rows lock them in the same order.
async fn merge(
    conn: &mut AsyncPgConnection,
    session_id: i64,
    me: &str,
    res: &sync::Response,
) -> Result<(), diesel::result::Error> {
    let existing: Vec<RoomRow> = chat_rooms::table
        .filter(chat_rooms::session_id.eq(session_id))
        .select(RoomRow::as_select())
        .load(conn)
        .await?;
    let mut rows: HashMap<String, RoomRow> = existing
        .into_iter()
        .map(|r| (r.room_id.clone(), r))
        .collect();
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let fresh = |room_id: &str, membership: &str| RoomRow {
        session_id,
        room_id: room_id.to_owned(),
        membership: membership.to_owned(),
        kind: "private".into(),
        ..RoomRow::default()
    };

    for (room_id, joined) in &res.rooms.join {
        let id = room_id.to_string();
        let row = rows.entry(id.clone()).or_insert_with(|| fresh(&id, "join"));
        row.membership = "join".into();
        row.inviter = None;
        let state = match &joined.state {
            sync::State::Before(s) | sync::State::After(s) => &s.events,
            _ => continue,
        };
        for ev in state.iter().filter_map(read) {
            apply_state(row, &ev, me);
        }
        for ev in joined.timeline.events.iter().filter_map(read) {
            if ev.state_key.is_some() {
                apply_state(row, &ev, me);
            } else {
                apply_message(row, &ev);
            }
        }
        if !joined.summary.heroes.is_empty() {
            row.heroes = joined
                .summary
                .heroes
                .iter()
                .map(|h| Some(h.to_string()))
                .collect();
        }
        row.unread = count(joined.unread_notifications.notification_count);
        row.highlight = count(joined.unread_notifications.highlight_count);
        changed.insert(id);
    }
    for (room_id, invited) in &res.rooms.invite {
        let id = room_id.to_string();
        let row = rows
            .entry(id.clone())
            .or_insert_with(|| fresh(&id, "invite"));
        row.membership = "invite".into();
        for ev in invited.invite_state.events.iter().filter_map(read) {
            apply_state(row, &ev, me);
        }
        changed.insert(id);
    }
    // m.direct, whole each time it changes: which rooms are direct chats.
    for ev in res.account_data.events.iter().filter_map(read) {
        if ev.kind == "m.direct" {
            let direct: HashSet<String> = ev
                .content
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
                .filter_map(Value::as_array)
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            for row in rows.values_mut() {
                let was = row.is_direct;
                row.is_direct =
                    direct.contains(&row.room_id) || (row.membership == "invite" && row.is_direct);
                if row.is_direct != was {
                    changed.insert(row.room_id.clone());
                }
            }
        }
    }
    // Rooms left, and invitations declined or withdrawn.
    let left: BTreeSet<String> = res.rooms.leave.keys().map(|r| r.to_string()).collect();

    for id in &changed {
        let Some(row) = rows.get_mut(id) else {
            continue;
        };
        row.classify();
        diesel::insert_into(chat_rooms::table)
            .values(&*row)
            .on_conflict((chat_rooms::session_id, chat_rooms::room_id))
            .do_update()
            .set((
                chat_rooms::membership.eq(&row.membership),
                chat_rooms::name.eq(&row.name),
                chat_rooms::kind.eq(&row.kind),
                chat_rooms::join_rule.eq(&row.join_rule),
                chat_rooms::access_rule.eq(&row.access_rule),
                chat_rooms::is_direct.eq(row.is_direct),
                chat_rooms::encrypted.eq(row.encrypted),
                chat_rooms::inviter.eq(&row.inviter),
                chat_rooms::heroes.eq(&row.heroes),
                chat_rooms::last_ts.eq(row.last_ts),
                chat_rooms::last_sender.eq(&row.last_sender),
                chat_rooms::last_preview.eq(&row.last_preview),
                chat_rooms::unread.eq(row.unread),
                chat_rooms::highlight.eq(row.highlight),
            ))
            .execute(conn)
            .await?;
    }
    if !left.is_empty() {
        diesel::delete(
            chat_rooms::table
                .filter(chat_rooms::session_id.eq(session_id))
                .filter(chat_rooms::room_id.eq_any(&left)),
        )
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Moves the position from `since` to `next_batch` if no other sync moved it meanwhile (a quiet
/// answer: nothing else to write).
async fn advance(
    conn: &mut AsyncPgConnection,
    session_id: i64,
    since: Option<&str>,
    next_batch: &str,
) -> Result<Applied, diesel::result::Error> {
    let n = match since {
        Some(since) => {
            diesel::update(
                chat_sync::table
                    .find(session_id)
                    .filter(chat_sync::next_batch.eq(since)),
            )
            .set((
                chat_sync::next_batch.eq(next_batch),
                chat_sync::synced_at.eq(Utc::now()),
            ))
            .execute(conn)
            .await?
        }
        // A first sync with nothing in it: a position only if no other sync wrote one.
        None => {
            diesel::insert_into(chat_sync::table)
                .values((
                    chat_sync::session_id.eq(session_id),
                    chat_sync::next_batch.eq(next_batch),
                    chat_sync::synced_at.eq(Utc::now()),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?
        }
    };
    Ok(if n == 1 {
        Applied::Written
    } else {
        Applied::Overtaken
    })
}

/// Where the next incremental sync starts (the row is locked by this transaction).
async fn save_position(
    conn: &mut AsyncPgConnection,
    session_id: i64,
    next_batch: &str,
) -> Result<(), diesel::result::Error> {
    diesel::update(chat_sync::table.find(session_id))
        .set((
            chat_sync::next_batch.eq(next_batch),
            chat_sync::synced_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// After a read receipt: nothing unread in this room any more (the next sync agrees).
pub async fn mark_read(
    conn: &mut AsyncPgConnection,
    session_id: i64,
    room_id: &str,
) -> diesel::QueryResult<()> {
    diesel::update(chat_rooms::table.find((session_id, room_id)))
        .set((chat_rooms::unread.eq(0), chat_rooms::highlight.eq(0)))
        .execute(conn)
        .await?;
    Ok(())
}

/// After leaving a room: gone from the list at once (the next sync agrees).
pub async fn forget(
    conn: &mut AsyncPgConnection,
    session_id: i64,
    room_id: &str,
) -> diesel::QueryResult<()> {
    diesel::delete(chat_rooms::table.find((session_id, room_id)))
        .execute(conn)
        .await?;
    Ok(())
}

/// One page of the room list: invitations first, then joined rooms by last activity.
pub async fn list(
    conn: &mut AsyncPgConnection,
    session_id: i64,
    offset: i64,
    limit: i64,
) -> diesel::QueryResult<(Vec<RoomRow>, i64)> {
    let total: i64 = chat_rooms::table
        .filter(chat_rooms::session_id.eq(session_id))
        .count()
        .get_result(conn)
        .await?;
    let rows = chat_rooms::table
        .filter(chat_rooms::session_id.eq(session_id))
        .order((
            chat_rooms::membership.eq("invite").desc(),
            chat_rooms::last_ts.desc().nulls_last(),
            chat_rooms::room_id,
        ))
        .offset(offset)
        .limit(limit)
        .select(RoomRow::as_select())
        .load(conn)
        .await?;
    Ok((rows, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> RoomRow {
        RoomRow {
            kind: "private".into(),
            ..RoomRow::default()
        }
    }

    #[test]
    fn tchap_room_types_come_from_join_and_access_rules() {
        let mut r = row();
        r.classify();
        assert_eq!(r.kind, "private");
        r.join_rule = Some("public".into());
        r.classify();
        assert_eq!(r.kind, "forum");
        r.join_rule = Some("invite".into());
        r.access_rule = Some("unrestricted".into());
        r.classify();
        assert_eq!(r.kind, "external");
        r.is_direct = true;
        r.classify();
        assert_eq!(r.kind, "direct");
    }

    #[test]
    fn previews_are_one_line_and_short() {
        let mut r = row();
        let long = "mot ".repeat(100);
        apply_message(
            &mut r,
            &Ev {
                kind: "m.room.message".into(),
                state_key: None,
                sender: Some("@a:x".into()),
                origin_server_ts: Some(1_700_000_000_000),
                content: serde_json::json!({"msgtype": "m.text", "body": format!("a\nb {long}")}),
            },
        );
        let p = r.last_preview.expect("preview");
        assert!(p.starts_with("a b mot"));
        assert_eq!(p.chars().count(), PREVIEW + 1);
        assert!(r.last_ts.is_some());
    }
}
