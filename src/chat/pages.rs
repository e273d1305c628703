//! Tchap Web léger's pages: the room list (invitations first, then rooms by last activity) and the
//! answers to invitations. Plain HTML forms; the homeserver's troubles become pages, never a 500.

use chrono::Utc;
use rocket::form::{Form, FromForm};
use rocket::http::{CookieJar, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::Redirect;
use rocket::{get, post, Either};
use ruma::api::client::membership::{join_room_by_id, leave_room};
use ruma::OwnedRoomId;
use serde::Serialize;
use serde_json::json;

use crate::accounts::session::{self, CurrentUser};
use crate::config::Config;
use crate::crypto::Keys;
use crate::db::Db;
use crate::web::errors::AppError;
use crate::web::form::Page;
use crate::web::metrics::Timing;
use crate::web::page::Ctx;

use super::hs::{Hs, HsError};
use super::sync::{self, RoomRow, SyncError};
use crate::web::text::Text;

/// Rooms per page of the list.
pub const PER_PAGE: i64 = 50;

/// Where a page goes when the homeserver cannot answer as hoped.
pub enum Trouble {
    /// The token was revoked elsewhere: the portal session ends, back to the login page.
    SessionEnded,
    /// Down or slow: a page that says so, with a way to retry.
    Unavailable,
    NotFound,
    Forbidden(String),
    App(AppError),
}

impl From<HsError> for Trouble {
    fn from(e: HsError) -> Self {
        match e {
            HsError::TokenRevoked => Trouble::SessionEnded,
            HsError::Unavailable(why) => {
                tracing::warn!(%why, "homeserver unavailable");
                Trouble::Unavailable
            }
            HsError::NotFound(_) => Trouble::NotFound,
            HsError::Forbidden(why) | HsError::Refused(why) => Trouble::Forbidden(why),
        }
    }
}

impl From<SyncError> for Trouble {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Hs(e) => e.into(),
            SyncError::Db(e) => Trouble::App(AppError::Query(e)),
        }
    }
}

impl From<AppError> for Trouble {
    fn from(e: AppError) -> Self {
        Trouble::App(e)
    }
}

impl From<crate::db::DbError> for Trouble {
    fn from(e: crate::db::DbError) -> Self {
        Trouble::App(e.into())
    }
}

impl From<diesel::result::Error> for Trouble {
    fn from(e: diesel::result::Error) -> Self {
        Trouble::App(e.into())
    }
}

/// What every chat page needs besides the agent: the database, keys, homeserver client, settings
/// and cookies (one guard instead of five parameters).
pub struct Chat<'r> {
    pub db: &'r Db,
    pub keys: &'r Keys,
    pub hs: &'r Hs,
    pub config: &'r Config,
    pub cookies: &'r CookieJar<'r>,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Chat<'r> {
    type Error = ();
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        let r = req.rocket();
        match (
            r.state::<Db>(),
            r.state::<Keys>(),
            r.state::<Hs>(),
            r.state::<Config>(),
        ) {
            (Some(db), Some(keys), Some(hs), Some(config)) => Outcome::Success(Chat {
                db,
                keys,
                hs,
                config,
                cookies: req.cookies(),
            }),
            _ => Outcome::Error((Status::InternalServerError, ())),
        }
    }
}

/// A chat page's answer: a page, or a redirect (after a form, or to the login page).
pub type Answer = Result<Either<Page, Redirect>, AppError>;

impl Chat<'_> {
    /// Turns a trouble into the page or redirect the agent gets; `back` is where to return.
    pub async fn answer(
        &self,
        trouble: Trouble,
        ctx: &Ctx,
        user: &CurrentUser,
        back: &str,
    ) -> Answer {
        match trouble {
            Trouble::SessionEnded => {
                let mut conn = self.db.get().await?;
                session::delete(&mut conn, user.id).await?;
                session::clear_cookie(self.cookies, self.config.release);
                tracing::info!(user = %user.matrix_user_id, "Tchap token revoked elsewhere: session ended");
                Ok(Either::Right(Redirect::to(format!(
                    "/connexion?next={}&fin=1",
                    crate::accounts::matrix::percent_encode(back)
                ))))
            }
            Trouble::Unavailable => Ok(Either::Left(Page {
                status: Status::ServiceUnavailable,
                retry_after: Some(10),
                ..Page::ok(ctx.render("chat/unavailable", json!({ "retry": back })))
            })),
            Trouble::NotFound => Err(AppError::NotFound),
            Trouble::Forbidden(why) => {
                tracing::info!(%why, "homeserver refused");
                Err(AppError::Forbidden)
            }
            Trouble::App(e) => Err(e),
        }
    }

    /// A page's result as the agent gets it.
    pub async fn reply(
        &self,
        result: Result<Either<Page, Redirect>, Trouble>,
        ctx: &Ctx,
        user: &CurrentUser,
        back: &str,
    ) -> Answer {
        match result {
            Ok(a) => Ok(a),
            Err(t) => self.answer(t, ctx, user, back).await,
        }
    }

    /// Brings the agent's room summaries up to date (one incremental `/sync`).
    pub async fn sync(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        user: &CurrentUser,
        token: &str,
    ) -> Result<(), Trouble> {
        sync::refresh(
            conn,
            self.hs,
            user.id,
            &user.matrix_user_id,
            &user.homeserver_url,
            token,
        )
        .await?;
        Ok(())
    }

    /// The agent's homeserver and decrypted access token.
    pub fn token(&self, user: &CurrentUser) -> Result<String, Trouble> {
        // Unreadable (its secret retired from the key ring): the session ends, the agent logs in.
        user.access_token(self.keys).map_err(|e| {
            tracing::warn!(error = %e, "session token unreadable: session ended");
            Trouble::SessionEnded
        })
    }
}

/// The path of a room's page (room IDs are percent-encoded: they may hold any character).
pub fn room_path(room_id: &str) -> String {
    format!(
        "/discussions/{}",
        crate::accounts::matrix::percent_encode(room_id)
    )
}

/// A room as the list shows it.
#[derive(Serialize)]
struct RoomView {
    room_id: String,
    href: String,
    name: String,
    kind: String,
    encrypted: bool,
    invite: bool,
    inviter: Option<String>,
    unread: i32,
    highlight: i32,
    preview: Option<String>,
    preview_encrypted: bool,
    sender: Option<String>,
    when: Option<String>,
}

/// The localpart of a Matrix ID ("@alice:example" → "alice").
fn localpart(user_id: &str) -> &str {
    user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or(user_id)
}

/// A room's name: its name (or alias), the people in it, or its ID.
pub fn display_name(row: &RoomRow, ctx: &Ctx) -> String {
    if let Some(n) = row.name.as_deref().filter(|n| !n.trim().is_empty()) {
        return n.to_owned();
    }
    let heroes: Vec<&str> = row.heroes.iter().flatten().map(|h| localpart(h)).collect();
    if !heroes.is_empty() {
        return ctx
            .lang
            .tf("chat.rooms.with", &[("people", &heroes.join(", "))]);
    }
    if let Some(inviter) = &row.inviter {
        return ctx
            .lang
            .tf("chat.rooms.with", &[("people", localpart(inviter))]);
    }
    row.room_id.clone()
}

fn when(t: chrono::DateTime<Utc>, ctx: &Ctx) -> String {
    let today = crate::audioconf::format::paris_date(Utc::now());
    let day = crate::audioconf::format::paris_date(t);
    let time = crate::audioconf::format::time(t);
    if day == today {
        time
    } else {
        format!("{} {time}", crate::audioconf::format::day(day, ctx.lang))
    }
}

fn view(row: &RoomRow, ctx: &Ctx) -> RoomView {
    RoomView {
        room_id: row.room_id.clone(),
        href: room_path(&row.room_id),
        name: display_name(row, ctx),
        kind: row.kind.clone(),
        encrypted: row.encrypted,
        invite: row.membership == "invite",
        inviter: row.inviter.clone(),
        unread: row.unread,
        highlight: row.highlight,
        preview_encrypted: row.last_preview.as_deref() == Some(""),
        preview: row.last_preview.clone().filter(|p| !p.is_empty()),
        sender: row.last_sender.as_deref().map(|s| localpart(s).to_owned()),
        when: row.last_ts.map(|t| when(t, ctx)),
    }
}

async fn rooms_page(
    ctx: &Ctx,
    user: &CurrentUser,
    page: i64,
    done: Option<&str>,
    chat: &Chat<'_>,
) -> Result<Page, Trouble> {
    let token = chat.token(user)?;
    let mut conn = chat.db.get().await?;
    chat.sync(&mut conn, user, &token).await?;
    let page = page.max(1);
    let (rows, total) = sync::list(&mut conn, user.id, (page - 1) * PER_PAGE, PER_PAGE).await?;
    let pages = ((total + PER_PAGE - 1) / PER_PAGE).max(1);
    let (invites, joined): (Vec<_>, Vec<_>) =
        rows.iter().map(|r| view(r, ctx)).partition(|v| v.invite);
    Ok(Page::ok(ctx.render(
        "chat/rooms",
        json!({
            "invites": invites,
            "rooms": joined,
            "total": total,
            "page": page,
            "pages": pages,
            "previous": (page > 1).then(|| page - 1),
            "next": (page < pages).then(|| page + 1),
            "done": done,
        }),
    )))
}

/// Logged-out visitors get the login page and come back here (the 401 catcher does it).
#[get("/discussions?<page>&<fait>")]
pub async fn rooms(
    ctx: Ctx,
    user: CurrentUser,
    page: Option<i64>,
    fait: Option<&str>,
    chat: Chat<'_>,
    timing: &Timing,
) -> Answer {
    let done = fait.filter(|f| *f == "left");
    let (result, spent) =
        super::hs::timed(rooms_page(&ctx, &user, page.unwrap_or(1), done, &chat)).await;
    timing.set(spent);
    let result = result.map(Either::Left);
    chat.reply(result, &ctx, &user, "/discussions").await
}

#[derive(Debug, FromForm)]
pub struct InvitationForm {
    #[field(default = Text::empty())]
    pub room_id: Text,
    #[field(default = Text::empty())]
    pub decision: Text,
}

/// Accepts (joins) or declines (leaves) an invitation.
#[post("/discussions/invitation", data = "<form>")]
pub async fn invitation(
    ctx: Ctx,
    user: CurrentUser,
    form: Form<InvitationForm>,
    chat: Chat<'_>,
) -> Answer {
    let Ok(room_id) = OwnedRoomId::try_from(form.room_id.as_str()) else {
        return Err(AppError::NotFound);
    };
    let token = match chat.token(&user) {
        Ok(t) => t,
        Err(t) => return chat.answer(t, &ctx, &user, "/discussions").await,
    };
    let (hs, home) = (chat.hs, user.homeserver_url.as_str());
    let done = match form.decision.as_str() {
        "accept" => hs
            .send(
                home,
                &token,
                join_room_by_id::v3::Request::new(room_id.clone()),
            )
            .await
            .map(|_| ()),
        "decline" => hs
            .send(home, &token, leave_room::v3::Request::new(room_id.clone()))
            .await
            .map(|_| ()),
        _ => return Err(AppError::NotFound),
    };
    match done {
        Ok(()) => {
            tracing::info!(room = %room_id, decision = %form.decision, "invitation answered");
            let to = if form.decision == "accept" {
                room_path(room_id.as_str())
            } else {
                "/discussions".to_owned()
            };
            Ok(Either::Right(Redirect::to(to)))
        }
        Err(e) => chat.answer(e.into(), &ctx, &user, "/discussions").await,
    }
}
