//! Joining (by address or from the public room directory), leaving, creating a room, starting a
//! direct chat and inviting someone: each a plain form, with its errors on the same page and the
//! agent's input kept.

use rocket::form::{Form, FromForm};
use rocket::http::Status;
use rocket::response::Redirect;
use rocket::{get, post, Either};
use ruma::api::client::config::{get_global_account_data, set_global_account_data};
use ruma::api::client::directory::get_public_rooms_filtered;
use ruma::api::client::membership::{
    forget_room,
    invite_user::{self, v3::InvitationRecipient},
    join_room_by_id_or_alias, leave_room,
};
use ruma::api::client::profile::get_profile;
use ruma::api::client::room::{create_room, Visibility};
use ruma::api::client::state::send_state_event;
use ruma::directory::Filter;
use ruma::events::room::member::{MembershipState, RoomMemberEventContent};
use ruma::events::GlobalAccountDataEventType;
use ruma::room::RoomType;
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId, UInt, UserId};
use serde_json::{json, Value};

use crate::accounts::session::CurrentUser;
use crate::web::errors::AppError;
use crate::web::form::{FieldErrors, Page};
use crate::web::page::Ctx;

use super::hs::HsError;
use super::pages::{display_name, room_path, Answer, Chat, Trouble};
use super::room::{joined, member_of};
use super::sync;
use crate::web::text::Text;

/// Public rooms shown per search.
const DIRECTORY_LIMIT: u32 = 20;
const MAX_NAME: usize = 255;
const MAX_TOPIC: usize = 1_000;

fn form_page(ctx: &Ctx, template: &'static str, status: Status, data: Value) -> Page {
    Page {
        status,
        ..Page::ok(ctx.render(template, data))
    }
}

fn invalid(ctx: &Ctx, template: &'static str, mut data: Value, errors: FieldErrors) -> Page {
    data["errors"] = json!(errors);
    data["form_errors"] = json!(true);
    form_page(ctx, template, Status::UnprocessableEntity, data)
}

fn internal(e: impl std::fmt::Display) -> Trouble {
    Trouble::App(AppError::Internal(e.to_string()))
}

// ---------------------------------------------------------------- contacts

/// Whether a contact was found, or why not.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(OwnedUserId),
    Invalid,
    Unknown,
    /// The account's homeserver could not be asked just now.
    Unreachable,
}

/// The Matrix ID Tchap gives an email address on a homeserver: `prenom.nom@dom.fr` on
/// `agent.x.tchap.gouv.fr` → `@prenom.nom-dom.fr:agent.x.tchap.gouv.fr`.
pub fn tchap_id_for_email(email: &str, server: &str) -> Option<OwnedUserId> {
    let email = email.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || !domain.contains('.') || domain.contains('@') {
        return None;
    }
    UserId::parse(format!("@{local}-{domain}:{server}")).ok()
}

/// A contact typed by the agent (a Matrix ID or an email address), checked on the homeserver.
pub async fn lookup(
    chat: &Chat<'_>,
    user: &CurrentUser,
    token: &str,
    input: &str,
) -> Result<Lookup, Trouble> {
    let input = input.trim();
    let candidate = if input.starts_with('@') {
        UserId::parse(input).ok()
    } else if input.contains('@') {
        let server = user
            .matrix_user_id
            .split_once(':')
            .map(|(_, s)| s)
            .unwrap_or_default();
        tchap_id_for_email(input, server)
    } else {
        None
    };
    let Some(id) = candidate else {
        return Ok(Lookup::Invalid);
    };
    // Asked of the agent's own homeserver only (the portal never calls the server the ID names);
    // reaching other Tchap servers is the homeservers' federation, under their own allow-list.
    let own = user
        .matrix_user_id
        .split_once(':')
        .is_some_and(|(_, s)| s.eq_ignore_ascii_case(id.server_name().as_str()));
    match chat
        .hs
        .send(
            &user.homeserver_url,
            token,
            get_profile::v3::Request::new(id.clone()),
        )
        .await
    {
        Ok(_) => Ok(Lookup::Found(id)),
        Err(HsError::NotFound(_)) => Ok(Lookup::Unknown),
        // Profiles hidden from strangers (or another server not reached by federation): the
        // invitation itself will tell.
        Err(HsError::Forbidden(_)) => Ok(Lookup::Found(id)),
        // Another homeserver that does not answer the agent's one: said on the field. The agent's
        // own homeserver down is the unavailable page.
        Err(HsError::Unavailable(why)) if !own => {
            tracing::info!(%why, server = %id.server_name(), "contact's homeserver unreachable");
            Ok(Lookup::Unreachable)
        }
        Err(HsError::Refused(why)) => {
            tracing::info!(%why, "profile lookup refused");
            Ok(Lookup::Unreachable)
        }
        Err(e) => Err(e.into()),
    }
}

fn lookup_error(l: &Lookup, ctx: &Ctx) -> Option<String> {
    match l {
        Lookup::Found(_) => None,
        Lookup::Invalid => Some(ctx.lang.t("chat.contact.invalid").to_owned()),
        Lookup::Unknown => Some(ctx.lang.t("chat.contact.unknown").to_owned()),
        Lookup::Unreachable => Some(ctx.lang.t("chat.contact.unreachable").to_owned()),
    }
}

// ---------------------------------------------------------------- join

#[derive(Debug, FromForm)]
pub struct JoinForm {
    #[field(default = Text::empty())]
    pub salon: Text,
}

async fn directory(
    chat: &Chat<'_>,
    user: &CurrentUser,
    token: &str,
    q: Option<&str>,
) -> Result<Vec<Value>, Trouble> {
    let mut req = get_public_rooms_filtered::v3::Request::new();
    req.limit = Some(UInt::from(DIRECTORY_LIMIT));
    let mut filter = Filter::new();
    filter.generic_search_term = q.map(str::trim).filter(|q| !q.is_empty()).map(Into::into);
    req.filter = filter;
    let res = chat.hs.send(&user.homeserver_url, token, req).await?;
    Ok(res
        .chunk
        .into_iter()
        .filter(|r| r.room_type.as_ref() != Some(&RoomType::Space))
        .map(|r| {
            json!({
                "room_id": r.room_id.as_str(),
                "name": r.name.clone().or_else(|| r.canonical_alias.as_ref().map(|a| a.to_string())).unwrap_or_else(|| r.room_id.to_string()),
                "alias": r.canonical_alias.as_ref().map(|a| a.to_string()),
                "topic": r.topic,
                "members": u64::from(r.num_joined_members),
            })
        })
        .collect())
}

async fn join_page(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    q: Option<&str>,
    salon: &str,
    errors: FieldErrors,
) -> Result<Page, Trouble> {
    let token = chat.token(user)?;
    let results = directory(chat, user, &token, q).await?;
    let data = json!({
        "q": q.unwrap_or_default(),
        "searched": q.is_some(),
        "results": results,
        "salon": salon,
        "errors": errors,
    });
    Ok(if errors.is_empty() {
        form_page(ctx, "chat/join", Status::Ok, data)
    } else {
        invalid(ctx, "chat/join", data, errors)
    })
}

/// The public rooms (forums), searchable, and a field for a room's address or ID.
#[get("/discussions/rejoindre?<q>")]
pub async fn join_form(ctx: Ctx, user: CurrentUser, chat: Chat<'_>, q: Option<&str>) -> Answer {
    let result = join_page(&ctx, &user, &chat, q, "", FieldErrors::default())
        .await
        .map(Either::Left);
    chat.reply(result, &ctx, &user, "/discussions/rejoindre")
        .await
}

#[post("/discussions/rejoindre", data = "<form>")]
pub async fn join(ctx: Ctx, user: CurrentUser, chat: Chat<'_>, form: Form<JoinForm>) -> Answer {
    let result = join_inner(&ctx, &user, &chat, form.salon.trim()).await;
    chat.reply(result, &ctx, &user, "/discussions/rejoindre")
        .await
}

async fn join_inner(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    salon: &str,
) -> Result<Either<Page, Redirect>, Trouble> {
    let mut errors = FieldErrors::default();
    let target = OwnedRoomOrAliasId::try_from(salon).ok();
    match &target {
        None if salon.is_empty() => errors.add("salon", ctx.lang.t("chat.join.missing")),
        None => errors.add("salon", ctx.lang.t("chat.join.invalid")),
        Some(_) => {}
    }
    if let Some(target) = target {
        let token = chat.token(user)?;
        let req = join_room_by_id_or_alias::v3::Request::new(target);
        match chat.hs.send(&user.homeserver_url, &token, req).await {
            Ok(res) => {
                tracing::info!(room = %res.room_id, "room joined");
                return Ok(Either::Right(Redirect::to(format!(
                    "{}?fait=joined",
                    room_path(res.room_id.as_str())
                ))));
            }
            Err(HsError::NotFound(_)) => errors.add("salon", ctx.lang.t("chat.join.not_found")),
            Err(HsError::Forbidden(_)) | Err(HsError::Refused(_)) => {
                errors.add("salon", ctx.lang.t("chat.join.forbidden"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    join_page(ctx, user, chat, None, salon, errors)
        .await
        .map(Either::Left)
}

// ---------------------------------------------------------------- leave

/// Asks before leaving (a button on the room page leads here).
#[get("/discussions/<room>/quitter")]
pub async fn leave_form(ctx: Ctx, user: CurrentUser, chat: Chat<'_>, room: &str) -> Answer {
    let result = async {
        let row = member_of(&chat, &user, room).await?;
        Ok(Either::Left(form_page(
            &ctx,
            "chat/leave",
            Status::Ok,
            json!({
                "room": { "path": room_path(room), "id": room, "name": display_name(&row, &ctx), "kind": row.kind },
            }),
        )))
    }
    .await;
    chat.reply(result, &ctx, &user, &room_path(room)).await
}

#[post("/discussions/<room>/quitter")]
pub async fn leave(ctx: Ctx, user: CurrentUser, chat: Chat<'_>, room: &str) -> Answer {
    let result = async {
        let room_id = OwnedRoomId::try_from(room).map_err(|_| Trouble::NotFound)?;
        let token = chat.token(&user)?;
        chat.hs
            .send(
                &user.homeserver_url,
                &token,
                leave_room::v3::Request::new(room_id.clone()),
            )
            .await?;
        let mut conn = chat.db.get().await?;
        sync::forget(&mut conn, user.id, room_id.as_str()).await?;
        tracing::info!(room = %room_id, "room left");
        Ok(Either::Right(Redirect::to("/discussions?fait=left")))
    }
    .await;
    chat.reply(result, &ctx, &user, &room_path(room)).await
}

// ---------------------------------------------------------------- create

#[derive(Debug, Default, FromForm, serde::Serialize)]
pub struct CreateForm {
    #[field(default = Text::empty())]
    pub name: Text,
    #[field(default = Text::empty())]
    pub topic: Text,
    #[field(default = Text::empty())]
    pub kind: Text,
}

#[get("/discussions/nouveau")]
pub fn create_form(ctx: Ctx, _user: CurrentUser) -> Page {
    form_page(
        &ctx,
        "chat/create",
        Status::Ok,
        json!({ "form": { "name": "", "topic": "", "kind": "private" }, "errors": FieldErrors::default() }),
    )
}

fn access_rules(rule: &str) -> Raw<ruma::events::AnyInitialStateEvent> {
    // Tchap's access rule: `restricted` keeps external accounts out, `direct` marks a DM.
    let ev =
        json!({"type": "im.vector.room.access_rules", "state_key": "", "content": {"rule": rule}});
    Raw::from_json(serde_json::value::to_raw_value(&ev).unwrap_or_default())
}

#[post("/discussions/nouveau", data = "<form>")]
pub async fn create(ctx: Ctx, user: CurrentUser, chat: Chat<'_>, form: Form<CreateForm>) -> Answer {
    let form = form.into_inner();
    let result = async {
        let name = form.name.trim();
        let topic = form.topic.trim();
        let mut errors = FieldErrors::default();
        if name.is_empty() {
            errors.add("name", ctx.lang.t("chat.create.name_missing"));
        } else if name.chars().count() > MAX_NAME {
            errors.add("name", ctx.lang.t("chat.create.name_long"));
        }
        if topic.chars().count() > MAX_TOPIC {
            errors.add("topic", ctx.lang.t("chat.create.topic_long"));
        }
        let forum = match form.kind.as_str() {
            "forum" => true,
            "private" => false,
            _ => {
                errors.add("kind", ctx.lang.t("chat.create.kind_missing"));
                false
            }
        };
        if !errors.is_empty() {
            return Ok(Either::Left(invalid(
                &ctx,
                "chat/create",
                json!({ "form": form }),
                errors,
            )));
        }
        let token = chat.token(&user)?;
        let mut req = create_room::v3::Request::new();
        req.name = Some(name.to_owned());
        req.topic = Some(topic.to_owned()).filter(|t| !t.is_empty());
        req.preset = Some(if forum {
            create_room::v3::RoomPreset::PublicChat
        } else {
            create_room::v3::RoomPreset::PrivateChat
        });
        req.visibility = if forum {
            Visibility::Public
        } else {
            Visibility::Private
        };
        req.initial_state = vec![access_rules("restricted")];
        let res = chat.hs.send(&user.homeserver_url, &token, req).await?;
        tracing::info!(room = %res.room_id, forum, "room created");
        Ok(Either::Right(Redirect::to(format!(
            "{}?fait=created",
            room_path(res.room_id.as_str())
        ))))
    }
    .await;
    chat.reply(result, &ctx, &user, "/discussions/nouveau")
        .await
}

// ---------------------------------------------------------------- direct chats

#[derive(Debug, FromForm)]
pub struct ContactForm {
    #[field(default = Text::empty())]
    pub contact: Text,
}

#[get("/discussions/direct")]
pub fn direct_form(ctx: Ctx, _user: CurrentUser) -> Page {
    form_page(
        &ctx,
        "chat/direct",
        Status::Ok,
        json!({ "contact": "", "errors": FieldErrors::default() }),
    )
}

/// The agent's `m.direct` account data (user → rooms), empty when there is none yet.
async fn direct_map(chat: &Chat<'_>, user: &CurrentUser, token: &str) -> Result<Value, Trouble> {
    let me = OwnedUserId::try_from(user.matrix_user_id.as_str()).map_err(internal)?;
    let req = get_global_account_data::v3::Request::new(me, GlobalAccountDataEventType::Direct);
    match chat.hs.send(&user.homeserver_url, token, req).await {
        Ok(res) => Ok(res
            .account_data
            .deserialize_as_unchecked::<Value>()
            .unwrap_or_else(|_| json!({}))),
        Err(HsError::NotFound(_)) => Ok(json!({})),
        Err(e) => Err(e.into()),
    }
}

#[post("/discussions/direct", data = "<form>")]
pub async fn direct(
    ctx: Ctx,
    user: CurrentUser,
    chat: Chat<'_>,
    form: Form<ContactForm>,
) -> Answer {
    let contact = form.contact.trim().to_owned();
    let result = async {
        let token = chat.token(&user)?;
        let found = lookup(&chat, &user, &token, &contact).await?;
        let other = match (&found, lookup_error(&found, &ctx)) {
            (Lookup::Found(id), _) if id.as_str() == user.matrix_user_id => {
                let mut errors = FieldErrors::default();
                errors.add("contact", ctx.lang.t("chat.contact.self"));
                return Ok(Either::Left(invalid(
                    &ctx,
                    "chat/direct",
                    json!({ "contact": contact }),
                    errors,
                )));
            }
            (Lookup::Found(id), _) => id.clone(),
            (_, message) => {
                let mut errors = FieldErrors::default();
                errors.add("contact", message.unwrap_or_default());
                return Ok(Either::Left(invalid(
                    &ctx,
                    "chat/direct",
                    json!({ "contact": contact }),
                    errors,
                )));
            }
        };
        // An existing direct chat with that person, still joined: go there.
        let mut map = direct_map(&chat, &user, &token).await?;
        let mut conn = chat.db.get().await?;
        chat.sync(&mut conn, &user, &token).await?;
        let existing: Vec<String> = map[other.as_str()]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        for room in existing.iter().rev() {
            if joined(&mut conn, user.id, room).await?.is_some() {
                return Ok(Either::Right(Redirect::to(room_path(room))));
            }
        }
        drop(conn);
        // The room first, then the invitation: when the invitation fails, the room's ID is known
        // and the room is left and forgotten (created with its invitation, a failed invitation
        // would leave an empty room behind whose ID the homeserver never tells).
        let mut req = create_room::v3::Request::new();
        req.is_direct = true;
        req.preset = Some(create_room::v3::RoomPreset::TrustedPrivateChat);
        req.initial_state = vec![access_rules("direct")];
        let res = chat.hs.send(&user.homeserver_url, &token, req).await?;
        if let Err(e) = invite_direct(&chat, &user, &token, &res.room_id, &other).await {
            abandon(&chat, &user, &token, &res.room_id).await;
            let message = match e {
                HsError::Forbidden(why) | HsError::Refused(why) | HsError::NotFound(why) => {
                    tracing::info!(%why, "direct chat: invitation refused");
                    ctx.lang.t("chat.direct.refused")
                }
                HsError::Unavailable(why) => {
                    tracing::info!(%why, "direct chat: invitation not delivered");
                    ctx.lang.t("chat.contact.unreachable")
                }
                e => return Err(e.into()),
            };
            let mut errors = FieldErrors::default();
            errors.add("contact", message);
            return Ok(Either::Left(invalid(
                &ctx,
                "chat/direct",
                json!({ "contact": contact }),
                errors,
            )));
        }
        // Recorded in m.direct, as every Matrix client does.
        if !map.is_object() {
            map = json!({});
        }
        let rooms = map[other.as_str()].as_array().cloned().unwrap_or_default();
        let mut rooms: Vec<Value> = rooms;
        rooms.push(json!(res.room_id.as_str()));
        map[other.as_str()] = json!(rooms);
        let me = OwnedUserId::try_from(user.matrix_user_id.as_str()).map_err(internal)?;
        let raw = serde_json::value::to_raw_value(&map).map_err(internal)?;
        let req = set_global_account_data::v3::Request::new_raw(
            me,
            GlobalAccountDataEventType::Direct,
            Raw::from_json(raw),
        );
        chat.hs.send(&user.homeserver_url, &token, req).await?;
        tracing::info!(room = %res.room_id, "direct chat started");
        Ok(Either::Right(Redirect::to(format!(
            "{}?fait=created",
            room_path(res.room_id.as_str())
        ))))
    }
    .await;
    chat.reply(result, &ctx, &user, "/discussions/direct").await
}

/// Invites `other` to a new direct chat, marked direct as `/createRoom` marks its invitations
/// (the membership event's `is_direct`, which the other person's clients read).
async fn invite_direct(
    chat: &Chat<'_>,
    user: &CurrentUser,
    token: &str,
    room_id: &OwnedRoomId,
    other: &OwnedUserId,
) -> Result<(), HsError> {
    let mut content = RoomMemberEventContent::new(MembershipState::Invite);
    content.is_direct = Some(true);
    let target: &UserId = other;
    let req = send_state_event::v3::Request::new(room_id.clone(), target, &content)
        .map_err(|e| HsError::Refused(e.to_string()))?;
    chat.hs.send(&user.homeserver_url, token, req).await?;
    Ok(())
}

/// Leaves and forgets a room the agent just made for nothing (best effort: the agent is told about
/// the invitation either way).
async fn abandon(chat: &Chat<'_>, user: &CurrentUser, token: &str, room_id: &OwnedRoomId) {
    let home = &user.homeserver_url;
    let left = chat
        .hs
        .send(home, token, leave_room::v3::Request::new(room_id.clone()))
        .await;
    let forgotten = match left {
        Ok(_) => chat
            .hs
            .send(home, token, forget_room::v3::Request::new(room_id.clone()))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = forgotten {
        tracing::warn!(room = %room_id, error = %e, "direct chat: the unused room could not be left");
    }
    if let Ok(mut conn) = chat.db.get().await {
        if let Err(e) = sync::forget(&mut conn, user.id, room_id.as_str()).await {
            tracing::warn!(room = %room_id, error = %e, "direct chat: the unused room stays listed");
        }
    }
}

// ---------------------------------------------------------------- invite

async fn invite_page(
    ctx: &Ctx,
    user: &CurrentUser,
    chat: &Chat<'_>,
    room: &str,
    contact: &str,
    errors: FieldErrors,
) -> Result<Page, Trouble> {
    let row = member_of(chat, user, room).await?;
    let data = json!({
        "room": { "path": room_path(room), "id": room, "name": display_name(&row, ctx) },
        "contact": contact,
        "errors": errors,
    });
    Ok(if errors.is_empty() {
        form_page(ctx, "chat/invite", Status::Ok, data)
    } else {
        invalid(ctx, "chat/invite", data, errors)
    })
}

#[get("/discussions/<room>/inviter")]
pub async fn invite_form(ctx: Ctx, user: CurrentUser, chat: Chat<'_>, room: &str) -> Answer {
    let result = invite_page(&ctx, &user, &chat, room, "", FieldErrors::default())
        .await
        .map(Either::Left);
    chat.reply(result, &ctx, &user, &room_path(room)).await
}

#[post("/discussions/<room>/inviter", data = "<form>")]
pub async fn invite(
    ctx: Ctx,
    user: CurrentUser,
    chat: Chat<'_>,
    room: &str,
    form: Form<ContactForm>,
) -> Answer {
    let contact = form.contact.trim().to_owned();
    let result = async {
        let room_id = OwnedRoomId::try_from(room).map_err(|_| Trouble::NotFound)?;
        let token = chat.token(&user)?;
        let found = lookup(&chat, &user, &token, &contact).await?;
        let mut errors = FieldErrors::default();
        if let Lookup::Found(id) = &found {
            let req = invite_user::v3::Request::new(
                room_id.clone(),
                InvitationRecipient::UserId(invite_user::v3::InviteUserId::new(id.clone())),
            );
            match chat.hs.send(&user.homeserver_url, &token, req).await {
                Ok(_) => {
                    tracing::info!(room = %room_id, "invitation sent");
                    return Ok(Either::Right(Redirect::to(format!(
                        "{}?fait=invite",
                        room_path(room)
                    ))));
                }
                Err(HsError::Forbidden(why)) | Err(HsError::Refused(why)) => {
                    tracing::info!(%why, "invitation refused");
                    errors.add("contact", ctx.lang.t("chat.invite.refused"));
                }
                Err(e) => return Err(e.into()),
            }
        } else if let Some(message) = lookup_error(&found, &ctx) {
            errors.add("contact", message);
        }
        invite_page(&ctx, &user, &chat, room, &contact, errors)
            .await
            .map(Either::Left)
    }
    .await;
    chat.reply(result, &ctx, &user, &room_path(room)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_map_to_tchap_ids() {
        assert_eq!(
            tchap_id_for_email(
                " Jean.Dupont@Interieur.gouv.fr ",
                "agent.interieur.tchap.gouv.fr"
            )
            .map(|u| u.to_string()),
            Some("@jean.dupont-interieur.gouv.fr:agent.interieur.tchap.gouv.fr".to_owned())
        );
        assert_eq!(tchap_id_for_email("pas-une-adresse", "x"), None);
        assert_eq!(tchap_id_for_email("a@b", "x"), None);
    }
}
