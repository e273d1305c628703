//! Files: upload (size limit from the homeserver's media configuration, type read from the bytes)
//! sent as `m.image` or `m.file`, and the media proxy, which serves a file only to a session that
//! was shown it in a room it is still a member of (Matrix media are not access-controlled by room
//! on the homeserver), images of safe types inline and everything else as an attachment, with
//! `nosniff` and a sandboxing CSP.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rocket::data::Capped;
use rocket::form::{Form, FromForm};
use rocket::fs::TempFile;
use rocket::http::{ContentType, Header, Status};
use rocket::response::{self, Redirect, Responder};
use rocket::tokio::io::AsyncReadExt;
use rocket::{get, post, Either, Request, Response};
use ruma::api::client::authenticated_media::get_media_config;
use ruma::api::client::media::create_content;
use serde_json::json;

use crate::accounts::session::CurrentUser;
use crate::db::schema::{chat_media, chat_rooms};
use crate::web::form::FieldErrors;
use crate::web::page::Ctx;

use super::hs::HsError;
use super::pages::{room_path, Answer, Chat, Trouble};
use super::room::{self, member_of, new_nonce, remember_media, valid_nonce, Compose};
use super::timeline;
use crate::web::text::Text;

/// Image types shown inline (never SVG: it can carry script).
pub const INLINE_IMAGES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// What the bytes say a file is: a safe image type, or nothing known.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(b"\xFF\xD8\xFF") {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// Programs are refused: an agent has no reason to send one through a chat.
fn executable(bytes: &[u8]) -> bool {
    bytes.starts_with(b"MZ")
        || bytes.starts_with(b"\x7fELF")
        || bytes.starts_with(b"\xCA\xFE\xBA\xBE")
}

/// A file name safe to show and to put in a header: no path, no control characters, ≤ 200 chars.
pub fn clean_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let name: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(200)
        .collect();
    let name = name.trim().trim_start_matches('.').to_owned();
    if name.is_empty() {
        "fichier".into()
    } else {
        name
    }
}

#[derive(FromForm)]
pub struct UploadForm<'r> {
    #[field(default = Text::empty())]
    pub nonce: Text,
    pub file: Option<Capped<TempFile<'r>>>,
}

/// Sends a file to the room; any problem comes back on the room page, next to the file field.
#[post("/discussions/<room>/fichier", data = "<form>")]
pub async fn upload(
    ctx: Ctx,
    user: CurrentUser,
    chat: Chat<'_>,
    room: &str,
    form: Form<UploadForm<'_>>,
) -> Answer {
    let result = upload_inner(&ctx, &user, &chat, room, form.into_inner()).await;
    chat.reply(result, &ctx, &user, &room_path(room)).await
}

async fn upload_inner(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    room: &str,
    form: UploadForm<'_>,
) -> Result<Either<crate::web::form::Page, Redirect>, Trouble> {
    let room_id = ruma::OwnedRoomId::try_from(room).map_err(|_| Trouble::NotFound)?;
    let row = member_of(chat, user, room).await?;
    let token = chat.token(user)?;
    let home = user.homeserver_url.as_str();
    let mut errors = FieldErrors::default();
    let mut bytes = Vec::new();
    let mut name = String::new();
    let mut claimed: Option<String> = None;
    if row.encrypted {
        errors.form(ctx.lang.t("chat.encrypted_room.cannot_send"));
    }
    if !valid_nonce(&form.nonce) {
        errors.form(ctx.lang.t("chat.send.stale"));
    }
    let limit = chat
        .hs
        .send(home, &token, get_media_config::v1::Request::new())
        .await
        .map(|c| u64::from(c.upload_size))?;
    let too_big = || {
        ctx.lang.tf(
            "chat.file.too_big",
            &[("max", &timeline::size(limit, ctx.lang))],
        )
    };
    match form.file {
        None => errors.add("file", ctx.lang.t("chat.file.missing")),
        Some(file) if file.is_empty() => errors.add("file", ctx.lang.t("chat.file.missing")),
        Some(file) if !file.is_complete() || file.len() > limit => errors.add("file", too_big()),
        Some(file) => {
            name = clean_name(
                file.raw_name()
                    .map(|n| n.dangerous_unsafe_unsanitized_raw().as_str())
                    .unwrap_or_default(),
            );
            claimed = file.content_type().map(|c| c.to_string());
            let mut reader = file
                .open()
                .await
                .map_err(|e| Trouble::App(crate::web::errors::AppError::Internal(e.to_string())))?;
            reader
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| Trouble::App(crate::web::errors::AppError::Internal(e.to_string())))?;
            if executable(&bytes) {
                errors.add("file", ctx.lang.t("chat.file.refused_type"));
            } else if claimed
                .as_deref()
                .is_some_and(|c| c.starts_with("image/") && c != "image/svg+xml")
                && sniff(&bytes).is_none()
            {
                errors.add("file", ctx.lang.t("chat.file.not_an_image"));
            }
        }
    }
    if !errors.is_empty() {
        let compose = Compose {
            nonce: new_nonce()?,
            file_nonce: if valid_nonce(&form.nonce) {
                form.nonce.into_inner()
            } else {
                new_nonce()?
            },
            errors,
            ..Compose::default()
        };
        return room::page_with_errors(ctx, user, chat, room, compose).await;
    }
    // The type the bytes prove, else a neutral one: what the browser claimed is not trusted.
    let image = sniff(&bytes);
    let mimetype = image.unwrap_or(match claimed.as_deref() {
        Some("application/pdf") if bytes.starts_with(b"%PDF") => "application/pdf",
        Some("text/plain") | Some("text/csv") if std::str::from_utf8(&bytes).is_ok() => {
            "text/plain"
        }
        _ => "application/octet-stream",
    });
    let size = bytes.len();
    let mut req = create_content::v3::Request::new(bytes);
    req.filename = Some(name.clone());
    req.content_type = Some(mimetype.to_owned());
    let uploaded = chat.hs.send(home, &token, req).await?;
    let mxc = uploaded.content_uri.to_string();
    let content = json!({
        "msgtype": if image.is_some() { "m.image" } else { "m.file" },
        "body": name,
        "filename": name,
        "url": mxc,
        "info": { "mimetype": mimetype, "size": size },
    });
    room::send_event(
        chat,
        user,
        &token,
        &room_id,
        &form.nonce,
        "m.room.message",
        &content,
    )
    .await?;
    let mut conn = chat.db.get().await?;
    remember_media(&mut conn, user.id, room, &[mxc]).await?;
    tracing::info!(room = %room_id, size, mimetype, "file sent");
    Ok(Either::Right(Redirect::to(format!(
        "{}?fait=file#dernier",
        room_path(room)
    ))))
}

/// A file from the homeserver, as the proxy serves it.
pub struct Served {
    bytes: Vec<u8>,
    inline: Option<&'static str>,
    name: String,
}

impl<'r> Responder<'r, 'static> for Served {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        let mut res = Response::build();
        res.sized_body(self.bytes.len(), std::io::Cursor::new(self.bytes))
            .header(Header::new("X-Content-Type-Options", "nosniff"))
            .header(Header::new(
                "Content-Security-Policy",
                "default-src 'none'; sandbox; frame-ancestors 'none'",
            ))
            .header(Header::new("Cache-Control", "private, max-age=3600"));
        let ascii: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-_ ".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let encoded = crate::accounts::matrix::percent_encode(&self.name);
        match self.inline {
            Some(kind) => {
                let ct = ContentType::parse_flexible(kind).unwrap_or(ContentType::Binary);
                res.header(ct).header(Header::new(
                    "Content-Disposition",
                    format!("inline; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"),
                ));
            }
            None => {
                res.header(ContentType::Binary).header(Header::new(
                    "Content-Disposition",
                    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"),
                ));
            }
        }
        res.ok()
    }
}

/// Serves a file shown in one of the agent's rooms. `vignette`: a thumbnail; `nom`: the file name
/// for the download.
#[get("/discussions/media/<server>/<id>?<vignette>&<nom>")]
pub async fn media(
    user: CurrentUser,
    chat: Chat<'_>,
    server: &str,
    id: &str,
    vignette: Option<bool>,
    nom: Option<&str>,
) -> Result<Served, Status> {
    let mxc = format!("mxc://{server}/{id}");
    if super::html::proxy_path(&mxc).is_none() {
        return Err(Status::NotFound);
    }
    let mut conn = chat
        .db
        .get()
        .await
        .map_err(|_| Status::ServiceUnavailable)?;
    let allowed: Option<String> = chat_media::table
        .inner_join(
            chat_rooms::table.on(chat_rooms::session_id
                .eq(chat_media::session_id)
                .and(chat_rooms::room_id.eq(chat_media::room_id))),
        )
        .filter(chat_media::session_id.eq(user.id))
        .filter(chat_media::mxc.eq(&mxc))
        .filter(chat_rooms::membership.eq("join"))
        .select(chat_media::room_id)
        .first(&mut conn)
        .await
        .optional()
        .map_err(|e| crate::web::errors::AppError::Query(e).status())?;
    drop(conn);
    if allowed.is_none() {
        return Err(Status::NotFound);
    }
    let token = user
        .access_token(chat.keys)
        .map_err(|_| Status::Forbidden)?;
    let download = format!("/_matrix/client/v1/media/download/{server}/{id}");
    let max = chat.config.settings.matrix.media_max_bytes;
    let home = user.homeserver_url.as_str();
    let mut fetched = Err(HsError::NotFound(String::new()));
    if vignette.unwrap_or(false) {
        let thumb = format!(
            "/_matrix/client/v1/media/thumbnail/{server}/{id}?width=320&height=240&method=scale"
        );
        fetched = chat.hs.download(home, &token, &thumb, max).await;
    }
    // No thumbnail (too small to need one, or not an image the homeserver scales): the file.
    if matches!(
        fetched,
        Err(HsError::NotFound(_)) | Err(HsError::Refused(_))
    ) {
        fetched = chat.hs.download(home, &token, &download, max).await;
    }
    let (bytes, content_type) = match fetched {
        Ok(x) => x,
        Err(HsError::NotFound(_)) => return Err(Status::NotFound),
        Err(HsError::Refused(why)) if why == "too large" => return Err(Status::PayloadTooLarge),
        Err(HsError::TokenRevoked) => return Err(Status::Unauthorized),
        Err(HsError::Forbidden(_)) => return Err(Status::NotFound),
        Err(_) => return Err(Status::BadGateway),
    };
    // Inline only when both the homeserver's type and the bytes say it is a safe image.
    let inline =
        sniff(&bytes).filter(|k| content_type.as_deref().is_some_and(|c| c.starts_with(k)));
    Ok(Served {
        bytes,
        inline,
        name: clean_name(nom.unwrap_or(id)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff(b"<svg onload=alert(1)>"), None);
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert!(executable(b"MZ\x90\0"));
        assert!(!executable(b"%PDF-1.7"));
    }

    #[test]
    fn names_lose_paths_and_control_characters() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(
            clean_name("C:\\x\\rapport \"final\".pdf"),
            "rapport final.pdf"
        );
        assert_eq!(clean_name("a\r\nb.txt"), "ab.txt");
        assert_eq!(clean_name(".."), "fichier");
    }
}
