//! AudioConf inside a room: "Démarrer une audioconférence" (or `/audioconf [demain|date]` in the
//! message box) books a line for the day with the agent's verified Tchap email, posts the number,
//! PIN, a `tel:` link and the end time in the room, and sends the usual details mail. The room keeps
//! its line for the day (`audioconf_rooms`): pressing again shows it; the agent who started it can
//! close it, which posts that the line is closed.

use chrono::{Duration, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use rocket::form::{Form, FromForm};
use rocket::response::Redirect;
use rocket::{post, Either, State};
use ruma::OwnedRoomId;
use serde_json::{json, Value};

use crate::accounts::session::CurrentUser;
use crate::audioconf::booking::{self, BookError, Conference, NewConference, Which};
use crate::audioconf::{domains, format, request};
use crate::config::AudioconfSettings;
use crate::db::schema::{audioconf_conferences as conf, audioconf_rooms as rooms};
use crate::mail::Mailer;
use crate::web::errors::AppError;
use crate::web::form::{FieldErrors, Page};
use crate::web::i18n::Lang;
use crate::web::page::Ctx;

use super::html::escape;
use super::pages::{room_path, Answer, Chat, Trouble};
use super::room::{self, member_of, new_nonce, send_event, Compose};
use super::sync::RoomRow;
use crate::web::text::Text;

/// The day a `/audioconf` argument names: nothing or "aujourd'hui" (today), "demain", or a date
/// (`2026-11-23` or `23/11/2026`). `None` when it names no day.
pub fn parse_day(arg: &str, today: NaiveDate) -> Option<NaiveDate> {
    let arg = arg.trim().to_lowercase();
    match arg.as_str() {
        "" | "aujourd'hui" | "aujourd’hui" | "today" => Some(today),
        "demain" | "tomorrow" => today.succ_opt(),
        _ => NaiveDate::parse_from_str(&arg, "%Y-%m-%d")
            .or_else(|_| NaiveDate::parse_from_str(&arg, "%d/%m/%Y"))
            .ok(),
    }
}

/// The room's active line for `day`, if any, with the message that announced it.
pub async fn line_of(
    conn: &mut diesel_async::AsyncPgConnection,
    room_id: &str,
    day: NaiveDate,
) -> QueryResult<Option<(Conference, String, Option<String>)>> {
    let now = Utc::now();
    rooms::table
        .inner_join(conf::table)
        .filter(rooms::room_id.eq(room_id))
        .filter(rooms::day.eq(day))
        .filter(conf::cancelled_at.is_null())
        .filter(conf::ends_at.gt(now))
        .select((Conference::as_select(), rooms::booked_by, rooms::event_id))
        .first(conn)
        .await
        .optional()
}

/// The room's active lines from today on (for the room page).
pub async fn lines(
    conn: &mut diesel_async::AsyncPgConnection,
    room_id: &str,
    today: NaiveDate,
) -> QueryResult<Vec<(Conference, String)>> {
    rooms::table
        .inner_join(conf::table)
        .filter(rooms::room_id.eq(room_id))
        .filter(rooms::day.ge(today))
        .filter(conf::cancelled_at.is_null())
        .filter(conf::ends_at.gt(Utc::now()))
        .order(rooms::day)
        .select((Conference::as_select(), rooms::booked_by))
        .load(conn)
        .await
}

/// When a line stops: a whole day's ends at midnight, said "23:59".
fn end_time(period: &booking::Period) -> String {
    if period.all_day.is_some() {
        format::time(period.ends_at - Duration::minutes(1))
    } else {
        format::time(period.ends_at)
    }
}

/// The message posted in the room: plain text and HTML, in the agent's language.
pub fn announcement(lang: Lang, number: &str, pin: &str, period: &booking::Period) -> Value {
    let day = period
        .all_day
        .unwrap_or_else(|| format::paris_date(period.starts_at));
    let args = [
        ("day", format::day(day, lang)),
        ("end", end_time(period)),
        ("number", format::national(number)),
        ("pin", format::grouped(pin)),
        ("tel", format::tel_link(number, pin)),
    ];
    let text_args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let escaped: Vec<(&str, String)> = args.iter().map(|(k, v)| (*k, escape(v))).collect();
    let html_args: Vec<(&str, &str)> = escaped.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dial = format!("tel:{}", escape(number));
    let mut html = lang.tf("chat.audioconf.message_html", &html_args);
    html = html.replace("{dial}", &dial);
    json!({
        "msgtype": "m.text",
        "body": lang.tf("chat.audioconf.message", &text_args),
        "format": "org.matrix.custom.html",
        "formatted_body": html,
    })
}

fn closing(lang: Lang, c: &Conference) -> Value {
    let number = format::national(&c.number);
    json!({ "msgtype": "m.text", "body": lang.tf("chat.audioconf.closed_message", &[("number", &number)]) })
}

enum Outcome {
    /// A line this press must announce: just booked, or booked but never announced; the claim to
    /// announce it is this press's (`done` is the notice for the room page).
    Announce(Conference, &'static str),
    /// The room's line, announced already or being announced by another member's press.
    Existing,
    Refused(String),
}

/// How long a claim to announce a line holds: past it, a member whose announcement never finished
/// (a crash, a homeserver that never answered) no longer keeps the room from being told.
fn announce_lease(chat: &Chat<'_>) -> Duration {
    let secs = i64::try_from(chat.config.settings.matrix.timeout_secs).unwrap_or(i64::MAX / 4);
    Duration::seconds(secs.saturating_mul(3).saturating_add(5))
}

/// Claims the announcement of the room's line for `day`: true for exactly one caller at a time
/// (one conditional update, atomic by itself), while the line is not announced.
async fn claim_announcement(
    conn: &mut diesel_async::AsyncPgConnection,
    room_id: &str,
    day: NaiveDate,
    until: chrono::DateTime<Utc>,
    now: chrono::DateTime<Utc>,
) -> QueryResult<bool> {
    let n = diesel::update(
        rooms::table
            .find((room_id, day))
            .filter(rooms::event_id.is_null())
            .filter(
                rooms::announcing_until
                    .is_null()
                    .or(rooms::announcing_until.lt(now)),
            ),
    )
    .set(rooms::announcing_until.eq(until))
    .execute(conn)
    .await?;
    Ok(n == 1)
}

async fn book_for_room(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    mailer: &Mailer,
    row: &RoomRow,
    day: NaiveDate,
) -> Result<Outcome, Trouble> {
    let settings: &AudioconfSettings = &chat.config.settings.audioconf;
    let lang = ctx.lang;
    if row.encrypted {
        return Ok(Outcome::Refused(lang.t("chat.audioconf.encrypted").into()));
    }
    let email = user.emails().next().map(str::to_owned);
    let now = Utc::now();
    let today = format::paris_date(now);
    if day < today || day > today + Duration::days(settings.max_days_ahead) {
        return Ok(Outcome::Refused(lang.tf(
            "chat.audioconf.bad_day",
            &[("max", &settings.max_days_ahead.to_string())],
        )));
    }
    let room_id = row.room_id.clone();
    let me = user.matrix_user_id.clone();
    let keys = chat.keys;
    let claim_until = now + announce_lease(chat);
    let mut conn = chat.db.get().await?;
    let outcome = conn
        .transaction::<Outcome, BookError, _>(async |conn| {
            // Two members pressing at once: the second waits, then finds the first one's line.
            diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind::<diesel::sql_types::Text, _>(format!("audioconf-room|{room_id}|{day}"))
                .execute(conn)
                .await?;
            if let Some((c, _, event)) = line_of(conn, &room_id, day).await? {
                // Booked but not announced (the announcement failed, or is under way from another
                // member's press): the database says who announces it.
                if event.is_none()
                    && claim_announcement(conn, &room_id, day, claim_until, now).await?
                {
                    return Ok(Outcome::Announce(c, "audioconf_existing"));
                }
                return Ok(Outcome::Existing);
            }
            let Some(email) = email else {
                return Ok(Outcome::Refused(lang.t("chat.audioconf.no_email").into()));
            };
            if !domains::allowed(conn, &settings.domains, &email).await? {
                return Ok(Outcome::Refused(lang.tf(
                    "audioconf.form.email.refused",
                    &[
                        ("domain", &domains::domain_of(&email).unwrap_or_default()),
                        ("contact", &settings.access_contact),
                    ],
                )));
            }
            let mac = booking::email_hmac(keys, &email);
            if request::over_email_limit(conn, settings, &mac, now).await? {
                return Ok(Outcome::Refused(lang.t("audioconf.limit.email").into()));
            }
            let new = NewConference {
                email: &email,
                period: booking::Period::day(day, now),
                via: "room",
                lang,
            };
            let created = match booking::book(conn, keys, settings, mailer, new, now).await {
                Ok(c) => c,
                Err(BookError::Exhausted) | Err(BookError::NoNumbers) => {
                    return Ok(Outcome::Refused(lang.t("chat.audioconf.exhausted").into()))
                }
                Err(e) => return Err(e),
            };
            diesel::insert_into(rooms::table)
                .values((
                    rooms::room_id.eq(&room_id),
                    rooms::day.eq(day),
                    rooms::conference_id.eq(created.id),
                    rooms::booked_by.eq(&me),
                    rooms::created_at.eq(now),
                    rooms::announcing_until.eq(claim_until),
                ))
                .on_conflict((rooms::room_id, rooms::day))
                .do_update()
                .set((
                    rooms::conference_id.eq(created.id),
                    rooms::booked_by.eq(&me),
                    rooms::event_id.eq(None::<String>),
                    rooms::created_at.eq(now),
                    rooms::announcing_until.eq(claim_until),
                ))
                .execute(conn)
                .await?;
            let c = conf::table
                .find(created.id)
                .select(Conference::as_select())
                .first(conn)
                .await?;
            Ok(Outcome::Announce(c, "audioconf"))
        })
        .await
        .map_err(|e| Trouble::App(e.into()))?;
    if matches!(outcome, Outcome::Announce(_, "audioconf")) {
        mailer.wake.notify_one();
    }
    Ok(outcome)
}

/// Books (or finds) the room's line for `day` and announces it; the notice key for the room page,
/// or the agent-facing reason it was refused.
pub async fn start(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    mailer: &Mailer,
    room_id: &OwnedRoomId,
    row: &RoomRow,
    day: NaiveDate,
) -> Result<Result<&'static str, String>, Trouble> {
    let (c, done) = match book_for_room(ctx, user, chat, mailer, row, day).await? {
        Outcome::Refused(why) => return Ok(Err(why)),
        Outcome::Existing => return Ok(Ok("audioconf_existing")),
        Outcome::Announce(c, done) => (c, done),
    };
    tracing::info!(conference = %c.public_id, room = %room_id, "audioconf: room line booked");
    // This press holds the claim: it alone announces. The transaction ID is the conference's, so
    // the same agent retrying is not a second message either.
    let sent = announce(ctx, user, chat, room_id, &c).await;
    // The claim ends either way: announced, or given back for the next press to try again.
    let event = sent.as_ref().ok().map(|e| e.as_str());
    let mut conn = chat.db.get().await?;
    diesel::update(
        rooms::table
            .filter(rooms::conference_id.eq(c.id))
            .filter(rooms::event_id.is_null()),
    )
    .set((
        rooms::event_id.eq(event),
        rooms::announcing_until.eq(None::<chrono::DateTime<Utc>>),
    ))
    .execute(&mut conn)
    .await?;
    sent?;
    Ok(Ok(done))
}

/// Posts the line's number, PIN and end time in the room.
async fn announce(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    room_id: &OwnedRoomId,
    c: &Conference,
) -> Result<ruma::OwnedEventId, Trouble> {
    let token = chat.token(user)?;
    let pin = c.pin(chat.keys).map_err(AppError::from)?;
    let content = announcement(ctx.lang, &c.number, &pin, &c.period());
    send_event(
        chat,
        user,
        &token,
        room_id,
        &format!("audioconf-{}", c.public_id),
        "m.room.message",
        &content,
    )
    .await
}

#[derive(Debug, FromForm)]
pub struct StartForm {
    #[field(default = Text::empty())]
    pub jour: Text,
}

/// "Démarrer une audioconférence" on the room page.
#[post("/discussions/<room>/audioconference", data = "<form>")]
pub async fn start_page(
    ctx: Ctx,
    user: CurrentUser,
    chat: Chat<'_>,
    mailer: &State<Mailer>,
    room: &str,
    form: Form<StartForm>,
) -> Answer {
    let result = async {
        let room_id = OwnedRoomId::try_from(room).map_err(|_| Trouble::NotFound)?;
        let row = member_of(&chat, &user, room).await?;
        let today = format::paris_date(Utc::now());
        let Some(day) = parse_day(&form.jour, today) else {
            return refused(
                &ctx,
                &user,
                &chat,
                room,
                ctx.lang.t("chat.audioconf.bad_date").into(),
            )
            .await;
        };
        match start(&ctx, &user, &chat, mailer, &room_id, &row, day).await? {
            Ok(done) => Ok(Either::Right(Redirect::to(format!(
                "{}?fait={done}#audioconference",
                room_path(room)
            )))),
            Err(why) => refused(&ctx, &user, &chat, room, why).await,
        }
    }
    .await;
    chat.reply(result, &ctx, &user, &room_path(room)).await
}

/// The room page again, with the reason at the top.
pub async fn refused(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    room: &str,
    why: String,
) -> Result<Either<Page, Redirect>, Trouble> {
    let mut errors = FieldErrors::default();
    errors.form(why);
    let compose = Compose {
        nonce: new_nonce()?,
        file_nonce: new_nonce()?,
        errors,
        ..Compose::default()
    };
    room::page_with_errors(ctx, user, chat, room, compose).await
}

#[derive(Debug, FromForm)]
pub struct CloseForm {
    #[field(default = Text::empty())]
    pub conference: Text,
}

/// Closes the room's line (only the agent who started it) and says so in the room.
#[post("/discussions/<room>/audioconference/fermer", data = "<form>")]
pub async fn close(
    ctx: Ctx,
    user: CurrentUser,
    chat: Chat<'_>,
    mailer: &State<Mailer>,
    room: &str,
    form: Form<CloseForm>,
) -> Answer {
    let result = async {
        let room_id = OwnedRoomId::try_from(room).map_err(|_| Trouble::NotFound)?;
        member_of(&chat, &user, room).await?;
        let mut conn = chat.db.get().await?;
        let found: Option<(i64, String)> = rooms::table
            .inner_join(conf::table)
            .filter(rooms::room_id.eq(room))
            .filter(conf::public_id.eq(form.conference.as_str()))
            .select((conf::id, rooms::booked_by))
            .first(&mut conn)
            .await
            .optional()?;
        let Some((id, booked_by)) = found else {
            return Err(Trouble::NotFound);
        };
        if booked_by != user.matrix_user_id {
            return Err(Trouble::Forbidden("not the agent who started the line".into()));
        }
        let ended = booking::end(&mut conn, mailer, chat.keys, Which::Id(id), Utc::now())
            .await
            .map_err(|e| Trouble::App(e.into()))?;
        drop(conn);
        if let Some(c) = ended {
            mailer.wake.notify_one();
            let token = chat.token(&user)?;
            send_event(
                &chat,
                &user,
                &token,
                &room_id,
                &format!("audioconf-close-{}", c.public_id),
                "m.room.message",
                &closing(ctx.lang, &c),
            )
            .await?;
            tracing::info!(conference = %c.public_id, room = %room_id, "audioconf: room line closed");
        }
        Ok(Either::Right(Redirect::to(format!(
            "{}?fait=audioconf_closed",
            room_path(room)
        ))))
    }
    .await;
    chat.reply(result, &ctx, &user, &room_path(room)).await
}

/// The room's lines as the room page shows them.
pub async fn view(
    conn: &mut diesel_async::AsyncPgConnection,
    chat: &Chat<'_>,
    user: &CurrentUser,
    lang: Lang,
    room_id: &str,
) -> Result<Vec<Value>, Trouble> {
    let today = format::paris_date(Utc::now());
    let mut out = vec![];
    for (c, booked_by) in lines(conn, room_id, today).await? {
        let pin = c.pin(chat.keys).map_err(AppError::from)?;
        let mut v = booking::view(
            &chat.config.settings.audioconf,
            lang,
            &c.number,
            &pin,
            &c.period(),
        );
        v["conference"] = json!(c.public_id);
        v["end"] = json!(end_time(&c.period()));
        v["mine"] = json!(booked_by == user.matrix_user_id);
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_named_in_words_or_dates() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 21).expect("d");
        assert_eq!(parse_day("", today), Some(today));
        assert_eq!(parse_day(" Demain ", today), today.succ_opt());
        assert_eq!(
            parse_day("23/11/2026", today),
            NaiveDate::from_ymd_opt(2026, 11, 23)
        );
        assert_eq!(
            parse_day("2026-11-24", today),
            NaiveDate::from_ymd_opt(2026, 11, 24)
        );
        assert_eq!(parse_day("lundi prochain", today), None);
    }

    #[test]
    fn the_announcement_has_the_number_pin_link_and_end() {
        let now = Utc::now();
        let day = format::paris_date(now);
        let p = booking::Period::day(day, now);
        let m = announcement(Lang::Fr, "+33189000000", "123456789", &p);
        let body = m["body"].as_str().expect("body");
        assert!(
            body.contains("01 89 00 00 00") && body.contains("123 456 789"),
            "{body}"
        );
        assert!(body.contains("23:59"), "{body}");
        let html = m["formatted_body"].as_str().expect("html");
        assert!(
            html.contains("href=\"tel:+33189000000,,123456789%23\""),
            "{html}"
        );
        assert!(!html.contains('{'), "every placeholder filled: {html}");
    }
}
