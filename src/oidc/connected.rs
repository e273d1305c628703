//! "Mes services connectés": each service the agent approved, what it received and when, and a
//! button that withdraws the approval and revokes every token the service holds.

use chrono::{DateTime, Utc};
use chrono_tz::Europe::Paris;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rocket::request::Outcome;
use rocket::response::Redirect;
use rocket::{get, post, State};
use serde::Serialize;
use serde_json::json;

use crate::accounts::session::CurrentUser;
use crate::db::schema::{oidc_clients, oidc_consents, oidc_grants, oidc_shares, oidc_tokens};
use crate::db::Db;
use crate::web::errors::AppError;
use crate::web::i18n::Lang;
use crate::web::page::Ctx;

use super::discovery::SCOPES;

#[derive(Debug, Serialize)]
pub struct Share {
    pub date: String,
    pub claims: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Service {
    pub client_id: String,
    pub name: String,
    pub origin: String,
    pub claims: Vec<String>,
    pub first: String,
    pub last: String,
    pub history: Vec<Share>,
}

/// A date as agents read it: Europe/Paris.
pub fn paris(dt: DateTime<Utc>) -> String {
    dt.with_timezone(&Paris)
        .format("%d/%m/%Y %H:%M")
        .to_string()
}

fn labels(lang: Lang, claims: impl Iterator<Item = String>) -> Vec<String> {
    claims
        .map(|c| lang.t(&format!("claim.{c}")).to_owned())
        .collect()
}

pub async fn services(
    conn: &mut AsyncPgConnection,
    user: &str,
    lang: Lang,
) -> QueryResult<Vec<Service>> {
    type Row = (
        String,
        String,
        Vec<Option<String>>,
        Vec<Option<String>>,
        DateTime<Utc>,
        DateTime<Utc>,
    );
    let rows: Vec<Row> = oidc_consents::table
        .inner_join(oidc_clients::table.on(oidc_clients::client_id.eq(oidc_consents::client_id)))
        .filter(oidc_consents::matrix_user_id.eq(user))
        .order(oidc_consents::last_at.desc())
        .select((
            oidc_clients::client_id,
            oidc_clients::name,
            oidc_clients::redirect_uris,
            oidc_consents::scopes,
            oidc_consents::first_at,
            oidc_consents::last_at,
        ))
        .load(conn)
        .await?;
    let mut out = Vec::new();
    for (client_id, name, uris, scopes, first, last) in rows {
        let history: Vec<(DateTime<Utc>, Vec<Option<String>>)> = oidc_shares::table
            .filter(oidc_shares::client_id.eq(&client_id))
            .filter(oidc_shares::matrix_user_id.eq(user))
            .order(oidc_shares::shared_at.desc())
            .limit(50)
            .select((oidc_shares::shared_at, oidc_shares::claims))
            .load(conn)
            .await?;
        let granted = scopes.iter().flatten().flat_map(|s| {
            SCOPES
                .iter()
                .filter(move |(name, _)| name == s)
                .flat_map(|(_, claims)| claims.iter().map(|c| c.to_string()))
        });
        out.push(Service {
            origin: uris
                .iter()
                .flatten()
                .find_map(|u| crate::config::origin_of(u))
                .unwrap_or_default(),
            claims: labels(lang, granted),
            first: paris(first),
            last: paris(last),
            history: history
                .into_iter()
                .map(|(at, claims)| Share {
                    date: paris(at),
                    claims: labels(lang, claims.into_iter().flatten()),
                })
                .collect(),
            client_id,
            name,
        });
    }
    Ok(out)
}

/// Forgets the approval and revokes every grant and token of `client_id` for the agent.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    client_id: &str,
    user: &str,
    now: DateTime<Utc>,
) -> QueryResult<usize> {
    conn.transaction(async |conn| {
        let n = diesel::delete(
            oidc_consents::table
                .filter(oidc_consents::client_id.eq(client_id))
                .filter(oidc_consents::matrix_user_id.eq(user)),
        )
        .execute(conn)
        .await?;
        let grant_ids: Vec<i64> = diesel::update(
            oidc_grants::table
                .filter(oidc_grants::client_id.eq(client_id))
                .filter(oidc_grants::matrix_user_id.eq(user))
                .filter(oidc_grants::revoked_at.is_null()),
        )
        .set(oidc_grants::revoked_at.eq(now))
        .returning(oidc_grants::id)
        .get_results(conn)
        .await?;
        diesel::update(
            oidc_tokens::table
                .filter(oidc_tokens::grant_id.eq_any(&grant_ids))
                .filter(oidc_tokens::revoked_at.is_null()),
        )
        .set(oidc_tokens::revoked_at.eq(now))
        .execute(conn)
        .await?;
        Ok(n)
    })
    .await
}

/// Not logged in: the 401 catcher sends to the login page and back; the database unable to tell:
/// 503 (the `CurrentUser` guard).
#[get("/mes-services?<retire>")]
pub async fn page(
    ctx: Ctx,
    user: CurrentUser,
    retire: Option<&str>,
    db: &State<Db>,
) -> Result<rocket_dyn_templates::Template, AppError> {
    let mut conn = db.get().await?;
    let list = services(&mut conn, &user.matrix_user_id, ctx.lang).await?;
    Ok(ctx.render(
        "oidc/services",
        json!({ "services": list, "revoked": retire }),
    ))
}

#[post("/mes-services/<client_id>/retirer")]
pub async fn withdraw(
    client_id: &str,
    user: Outcome<CurrentUser, ()>,
    db: &State<Db>,
) -> Result<Redirect, AppError> {
    let user = match user {
        Outcome::Success(user) => user,
        // Logged out meanwhile: back to this page after the login.
        Outcome::Forward(_) => return Ok(Redirect::to("/connexion?next=%2Fmes-services")),
        Outcome::Error(_) => return Err(AppError::Unavailable("session lookup".into())),
    };
    let mut conn = db.get().await?;
    let name: Option<String> = oidc_clients::table
        .filter(oidc_clients::client_id.eq(client_id))
        .select(oidc_clients::name)
        .first(&mut conn)
        .await
        .optional()?;
    let Some(name) = name else {
        return Err(AppError::NotFound);
    };
    revoke(&mut conn, client_id, &user.matrix_user_id, Utc::now()).await?;
    tracing::info!(client = %client_id, "agent withdrew consent");
    Ok(Redirect::to(format!(
        "/mes-services?retire={}",
        crate::accounts::matrix::percent_encode(&name)
    )))
}
