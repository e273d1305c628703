//! A room's page: its latest messages (older ones page by page with `/messages` tokens), a read
//! receipt when there was something unread, and the send form; sending with a transaction ID taken
//! from a nonce in the form, so a double submit or a resubmitted form never sends twice.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rocket::form::{Form, FromForm};
use rocket::http::Status;
use rocket::response::Redirect;
use rocket::{get, post, Either, State};
use ruma::api::client::filter::{LazyLoadOptions, RoomEventFilter};
use ruma::api::client::message::{get_message_events, send_message_event};
use ruma::api::client::receipt::create_receipt::v3::{self as receipt, ReceiptType};
use ruma::api::client::room::get_room_event;
use ruma::events::MessageLikeEventType;
use ruma::serde::Raw;
use ruma::{OwnedEventId, OwnedRoomId, OwnedTransactionId, UInt};
use serde::Serialize;
use serde_json::{json, Value};

use crate::accounts::session::CurrentUser;
use crate::crypto;
use crate::db::schema::{chat_media, chat_rooms};
use crate::mail::Mailer;
use crate::web::form::{FieldErrors, Page};
use crate::web::metrics::Timing;
use crate::web::page::Ctx;

use super::pages::{display_name, room_path, Answer, Chat, Trouble};
use super::sync::{self, RoomRow};
use super::timeline::{self, Event, Item};
use crate::web::text::Text;

/// Events asked for per page of history.
pub const PAGE_EVENTS: u32 = 30;
/// Longest message accepted (characters); Matrix events are limited to 64 KiB in all.
pub const MAX_BODY: usize = 20_000;
/// Seconds between automatic refreshes, when the agent turned them on.
pub const AUTO_REFRESH_SECS: u32 = 30;

/// The send form's state: what the agent typed, what it answers, its nonce, and any errors.
#[derive(Debug, Default, Serialize)]
pub struct Compose {
    pub body: String,
    pub reply_to: Option<String>,
    pub nonce: String,
    /// The file form's own nonce (each form sends one event, so each has its own).
    pub file_nonce: String,
    pub errors: FieldErrors,
}

impl Compose {
    pub fn fresh(reply_to: Option<String>) -> Result<Compose, Trouble> {
        Ok(Compose {
            nonce: new_nonce()?,
            file_nonce: new_nonce()?,
            reply_to,
            ..Compose::default()
        })
    }
}

pub fn new_nonce() -> Result<String, Trouble> {
    crypto::random_token(18)
        .map_err(|e| Trouble::App(crate::web::errors::AppError::Internal(e.to_string())))
}

/// A nonce as the form sends it back: only URL-safe characters, of a sane length.
pub fn valid_nonce(nonce: &str) -> bool {
    (16..=64).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The room's summary row for this session, if the agent is in it (after a sync).
pub async fn joined(
    conn: &mut AsyncPgConnection,
    session_id: i64,
    room_id: &str,
) -> QueryResult<Option<RoomRow>> {
    chat_rooms::table
        .find((session_id, room_id))
        .filter(chat_rooms::membership.eq("join"))
        .select(RoomRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The room's row for a form's target: as kept, else after a sync (the agent may have joined it
/// elsewhere, or a moment ago); `NotFound` when the agent is not in it.
pub async fn member_of(
    chat: &Chat<'_>,
    user: &CurrentUser,
    room_id: &str,
) -> Result<RoomRow, Trouble> {
    let mut conn = chat.db.get().await?;
    if let Some(row) = joined(&mut conn, user.id, room_id).await? {
        return Ok(row);
    }
    let token = chat.token(user)?;
    chat.sync(&mut conn, user, &token).await?;
    joined(&mut conn, user.id, room_id)
        .await?
        .ok_or(Trouble::NotFound)
}

/// Remembers the media a page showed: the proxy serves only those, to members.
pub async fn remember_media(
    conn: &mut AsyncPgConnection,
    session_id: i64,
    room_id: &str,
    media: &[String],
) -> QueryResult<()> {
    // Once each (a row may not be updated twice by one statement), in a fixed order (two pages of
    // one session write the same rows in the same order: no deadlock).
    let media: std::collections::BTreeSet<&String> = media.iter().collect();
    if media.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = media
        .into_iter()
        .map(|mxc| {
            (
                chat_media::session_id.eq(session_id),
                chat_media::mxc.eq(mxc),
                chat_media::room_id.eq(room_id),
                chat_media::seen_at.eq(Utc::now()),
            )
        })
        .collect();
    diesel::insert_into(chat_media::table)
        .values(rows)
        .on_conflict((chat_media::session_id, chat_media::mxc))
        .do_update()
        .set((
            chat_media::room_id.eq(diesel::upsert::excluded(chat_media::room_id)),
            chat_media::seen_at.eq(diesel::upsert::excluded(chat_media::seen_at)),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// What the room page is asked to show besides the history.
#[derive(Default)]
pub struct View<'a> {
    pub before: Option<&'a str>,
    pub auto: bool,
    pub done: Option<&'a str>,
    pub status: Option<Status>,
}

fn read(raw: &[Raw<impl Sized>]) -> Vec<Event> {
    raw.iter()
        .filter_map(|r| r.deserialize_as_unchecked::<Event>().ok())
        .collect()
}

fn parse_room(room: &str) -> Result<OwnedRoomId, Trouble> {
    OwnedRoomId::try_from(room).map_err(|_| Trouble::NotFound)
}

/// Renders a room's page (one sync, one `/messages`, a receipt only when something was unread).
pub async fn page(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    room: &str,
    view: View<'_>,
    compose: Compose,
) -> Result<Page, Trouble> {
    let room_id = parse_room(room)?;
    let token = chat.token(user)?;
    let home = user.homeserver_url.as_str();
    let mut conn = chat.db.get().await?;
    chat.sync(&mut conn, user, &token).await?;
    let row = joined(&mut conn, user.id, room_id.as_str())
        .await?
        .ok_or(Trouble::NotFound)?;

    let mut req = get_message_events::v3::Request::backward(room_id.clone())
        .from(view.before.map(str::to_owned));
    req.limit = UInt::from(PAGE_EVENTS);
    let mut filter = RoomEventFilter::default();
    filter.lazy_load_options = LazyLoadOptions::Enabled {
        include_redundant_members: false,
    };
    req.filter = filter;
    let res = chat
        .hs
        .send(home, &token, req)
        .await
        .map_err(|e| match Trouble::from(e) {
            Trouble::Forbidden(_) => Trouble::NotFound,
            t => t,
        })?;
    let mut chunk = read(&res.chunk);
    chunk.reverse();
    let names = timeline::names(&read(&res.state), &chunk);
    let history = timeline::build(&chunk, &names, &user.matrix_user_id, ctx.lang, None);
    remember_media(&mut conn, user.id, room_id.as_str(), &history.media).await?;
    let audioconf = !chat.config.settings.audioconf.numbers.is_empty();
    let lines = if audioconf {
        super::conference::view(&mut conn, chat, user, ctx.lang, room_id.as_str()).await?
    } else {
        vec![]
    };

    // A read receipt for the newest event, when the list counted something unread.
    if view.before.is_none() && (row.unread > 0 || row.highlight > 0) {
        if let Some(last) = chunk
            .last()
            .and_then(|e| OwnedEventId::try_from(e.event_id.as_str()).ok())
        {
            chat.hs
                .send(
                    home,
                    &token,
                    receipt::Request::new(room_id.clone(), ReceiptType::Read, last),
                )
                .await?;
            sync::mark_read(&mut conn, user.id, room_id.as_str()).await?;
        }
    }

    // The message being answered: on this page, else asked for.
    let replying = match &compose.reply_to {
        None => None,
        Some(id) => match history.items.iter().find(|i| &i.id == id) {
            Some(item) => Some(quote_of(item)),
            None => quote_from_homeserver(chat, home, &token, &room_id, id, ctx).await,
        },
    };
    let compose = Compose {
        reply_to: replying.as_ref().and(compose.reply_to),
        ..compose
    };

    let path = room_path(room_id.as_str());
    // Older messages exist while pages come back full and the room's creation is not reached.
    let older = res
        .end
        .filter(|_| res.chunk.len() as u32 >= PAGE_EVENTS)
        .filter(|_| !chunk.iter().any(|e| e.kind == "m.room.create"));
    let items: Vec<Value> = history
        .items
        .iter()
        .map(|i| {
            let mut v = serde_json::to_value(i).unwrap_or(Value::Null);
            if i.can_reply() && !row.encrypted {
                v["reply_href"] = json!(format!(
                    "{path}?repondre={}#envoyer",
                    crate::accounts::matrix::percent_encode(&i.id)
                ));
            }
            v
        })
        .collect();
    let name = display_name(&row, ctx);
    let template = ctx.render(
        "chat/room",
        json!({
            "room": {
                "id": room_id.as_str(),
                "path": path,
                "name": name,
                "kind": row.kind,
                "encrypted": row.encrypted,
            },
            "items": items,
            "older": older.map(|t| format!("{path}?avant={}", crate::accounts::matrix::percent_encode(&t))),
            "latest": view.before.is_some(),
            "auto": view.auto,
            "auto_secs": AUTO_REFRESH_SECS,
            "done": view.done,
            "compose": compose,
            "replying": replying,
            "form_errors": !compose.errors.is_empty(),
            "audioconf": { "enabled": audioconf, "lines": lines },
        }),
    );
    Ok(Page {
        status: view.status.unwrap_or(Status::Ok),
        ..Page::ok(template)
    })
}

#[derive(Serialize)]
pub struct Replying {
    sender: String,
    text: String,
}

/// The room page again after a refused form: the errors at the top and by their fields, what
/// the agent typed kept (422).
pub async fn page_with_errors(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    room: &str,
    compose: Compose,
) -> Result<Either<Page, Redirect>, Trouble> {
    let view = View {
        status: Some(Status::UnprocessableEntity),
        ..View::default()
    };
    page(ctx, user, chat, room, view, compose)
        .await
        .map(Either::Left)
}

fn quote_of(item: &Item) -> Replying {
    let text = if !item.text.is_empty() {
        item.text.clone()
    } else {
        // The sanitised HTML, as text: tags dropped (this is shown escaped).
        let mut out = String::new();
        let mut in_tag = false;
        for c in item.html.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        out.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    };
    Replying {
        sender: item.sender.clone(),
        text: text.chars().take(200).collect(),
    }
}

async fn quote_from_homeserver(
    chat: &Chat<'_>,
    home: &str,
    token: &str,
    room_id: &OwnedRoomId,
    event_id: &str,
    ctx: &Ctx,
) -> Option<Replying> {
    let id = OwnedEventId::try_from(event_id).ok()?;
    let res = chat
        .hs
        .send(
            home,
            token,
            get_room_event::v3::Request::new(room_id.clone(), id),
        )
        .await
        .ok()?;
    let ev = res.event.deserialize_as_unchecked::<Event>().ok()?;
    let names = std::collections::HashMap::new();
    let page = timeline::build(std::slice::from_ref(&ev), &names, "", ctx.lang, None);
    page.items
        .iter()
        .take(1)
        .find(|i| i.can_reply())
        .map(quote_of)
}

/// The room page. `avant`: a `/messages` token for older messages; `repondre`: the event answered;
/// `auto`: refresh every 30 s (only when the agent asked); `fait`: what was just done.
#[allow(clippy::too_many_arguments)]
#[get("/discussions/<room>?<avant>&<repondre>&<auto>&<fait>", rank = 5)]
pub async fn show(
    ctx: Ctx,
    user: CurrentUser,
    chat: Chat<'_>,
    room: &str,
    avant: Option<&str>,
    repondre: Option<&str>,
    auto: Option<bool>,
    fait: Option<&str>,
    timing: &Timing,
) -> Answer {
    let (result, spent) = crate::chat::hs::timed(async {
        let compose = Compose::fresh(repondre.map(str::to_owned))?;
        let view = View {
            before: avant,
            auto: auto.unwrap_or(false),
            done: fait.filter(|f| DONE.contains(f)),
            status: None,
        };
        page(&ctx, &user, &chat, room, view, compose).await
    })
    .await;
    timing.set(spent);
    let result = result.map(Either::Left);
    chat.reply(result, &ctx, &user, &room_path(room)).await
}

/// The notices a redirect may ask the room page to show.
pub const DONE: &[&str] = &[
    "invite",
    "created",
    "file",
    "joined",
    "audioconf",
    "audioconf_existing",
    "audioconf_closed",
];

#[derive(Debug, FromForm)]
pub struct SendForm {
    #[field(default = Text::empty())]
    pub nonce: Text,
    #[field(name = "message", default = Text::empty())]
    pub body: Text,
    #[field(default = Text::empty())]
    pub reply_to: Text,
}

/// The event content of a text message (a reply when it answers one).
pub fn text_content(body: &str, reply_to: Option<&str>) -> Value {
    let mut content = json!({ "msgtype": "m.text", "body": body });
    if let Some(id) = reply_to {
        content["m.relates_to"] = json!({ "m.in_reply_to": { "event_id": id } });
    }
    content
}

/// Sends a message-like event with a transaction ID from the form's nonce: the homeserver answers
/// a repeated ID with the first event instead of sending again.
pub async fn send_event(
    chat: &Chat<'_>,
    user: &CurrentUser,
    token: &str,
    room_id: &OwnedRoomId,
    nonce: &str,
    kind: &str,
    content: &Value,
) -> Result<OwnedEventId, Trouble> {
    let raw = serde_json::value::to_raw_value(content)
        .map_err(|e| Trouble::App(crate::web::errors::AppError::Internal(e.to_string())))?;
    let txn: OwnedTransactionId = format!("portail-{nonce}").into();
    let req = send_message_event::v3::Request::new_raw(
        room_id.clone(),
        txn,
        MessageLikeEventType::from(kind),
        Raw::from_json(raw),
    );
    let res = chat.hs.send(&user.homeserver_url, token, req).await?;
    Ok(res.event_id)
}

/// Sends the agent's message; errors come back on the room page with the text kept.
#[post("/discussions/<room>/envoyer", data = "<form>")]
pub async fn send(
    ctx: Ctx,
    user: CurrentUser,
    chat: Chat<'_>,
    mailer: &State<Mailer>,
    room: &str,
    form: Form<SendForm>,
) -> Answer {
    let result = send_inner(&ctx, &user, &chat, mailer, room, form.into_inner()).await;
    chat.reply(result, &ctx, &user, &room_path(room)).await
}

async fn send_inner(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    mailer: &Mailer,
    room: &str,
    form: SendForm,
) -> Result<Either<Page, Redirect>, Trouble> {
    let room_id = parse_room(room)?;
    let body = form.body.trim_end().to_owned();
    let reply_to = Some(form.reply_to.trim())
        .filter(|r| r.starts_with('$'))
        .map(str::to_owned);
    let mut errors = FieldErrors::default();
    // `/audioconf [demain|date]`: a conference line for the room instead of a message.
    if let Some(arg) = body.trim().strip_prefix("/audioconf") {
        if arg.is_empty() || arg.starts_with(' ') {
            let row = member_of(chat, user, room_id.as_str()).await?;
            let today = crate::audioconf::format::paris_date(chrono::Utc::now());
            let outcome = match super::conference::parse_day(arg, today) {
                None => Err(ctx.lang.t("chat.audioconf.bad_date").to_owned()),
                Some(day) => {
                    super::conference::start(ctx, user, chat, mailer, &room_id, &row, day).await?
                }
            };
            match outcome {
                Ok(done) => {
                    return Ok(Either::Right(Redirect::to(format!(
                        "{}?fait={done}#audioconference",
                        room_path(room_id.as_str())
                    ))))
                }
                Err(why) => errors.add("message", why),
            }
        }
    }
    if !valid_nonce(&form.nonce) {
        errors.form(ctx.lang.t("chat.send.stale"));
    }
    if body.trim().is_empty() {
        errors.add("message", ctx.lang.t("chat.send.empty"));
    } else if body.chars().count() > MAX_BODY {
        errors.add(
            "message",
            ctx.lang
                .tf("chat.send.too_long", &[("max", &MAX_BODY.to_string())]),
        );
    }
    let row = member_of(chat, user, room_id.as_str()).await?;
    if row.encrypted {
        errors.form(ctx.lang.t("chat.encrypted_room.cannot_send"));
    }
    if !errors.is_empty() {
        let nonce = if valid_nonce(&form.nonce) {
            form.nonce.into_inner()
        } else {
            new_nonce()?
        };
        let compose = Compose {
            body,
            reply_to,
            nonce,
            file_nonce: new_nonce()?,
            errors,
        };
        return page_with_errors(ctx, user, chat, room, compose).await;
    }
    let token = chat.token(user)?;
    let content = text_content(&body, reply_to.as_deref());
    let event_id = match send_event(
        chat,
        user,
        &token,
        &room_id,
        &form.nonce,
        "m.room.message",
        &content,
    )
    .await
    {
        Ok(id) => id,
        Err(Trouble::Unavailable) => {
            // The homeserver did not answer: the text is kept, the same nonce retried.
            return Ok(Either::Left(unsent(
                ctx,
                room,
                &body,
                reply_to,
                form.nonce.into_inner(),
            )));
        }
        Err(e) => return Err(e),
    };
    tracing::info!(room = %room_id, event = %event_id, "message sent");
    Ok(Either::Right(Redirect::to(format!(
        "{}#dernier",
        room_path(room_id.as_str())
    ))))
}

/// The page for a message the homeserver did not take: the text, ready to send again.
fn unsent(ctx: &Ctx, room: &str, body: &str, reply_to: Option<String>, nonce: String) -> Page {
    Page {
        status: Status::ServiceUnavailable,
        retry_after: Some(10),
        ..Page::ok(ctx.render(
            "chat/unsent",
            json!({
                "room_path": room_path(room),
                "compose": { "body": body, "reply_to": reply_to, "nonce": nonce },
            }),
        ))
    }
}
