//! The administrators' pages for state services (OpenID clients): list, register, show, new
//! secret, remove — what `tchap-portal client …` does, in the browser. A secret is shown once, on
//! the page that answers the POST (never in a URL), and stored hashed.

use chrono::Utc;
use rocket::form::{Form, FromForm};
use rocket::http::Status;
use rocket::response::Redirect;
use rocket::{get, post, State};
use serde::Serialize;
use serde_json::json;
use validator::{Validate, ValidationError};

use crate::accounts::admin::Admin;
use crate::db::Db;
use crate::web::errors::AppError;
use crate::web::form::{FieldErrors, Page};
use crate::web::page::Ctx;

use super::clients::{self, valid_redirect_uri, Client, NewClient};
use crate::web::text::Text;

#[derive(Debug, Clone, FromForm, Serialize, Validate)]
pub struct ClientForm {
    #[validate(custom(function = "name"))]
    #[field(default = Text::empty())]
    pub name: Text,
    #[validate(custom(function = "uris_required"))]
    #[field(default = Text::empty())]
    pub redirect_uris: Text,
    #[validate(custom(function = "uris"))]
    #[field(default = Text::empty())]
    pub post_logout_redirect_uris: Text,
    #[validate(custom(function = "kind"))]
    #[field(default = Text::empty())]
    pub kind: Text,
    #[validate(custom(function = "subject_type"))]
    #[field(default = Text::empty())]
    pub subject_type: Text,
    #[validate(custom(function = "alg"))]
    #[field(default = Text::empty())]
    pub id_token_alg: Text,
    pub userinfo_signed: bool,
}

impl Default for ClientForm {
    fn default() -> Self {
        ClientForm {
            name: Text::empty(),
            redirect_uris: Text::empty(),
            post_logout_redirect_uris: Text::empty(),
            kind: "confidential".into(),
            subject_type: "pairwise".into(),
            id_token_alg: "RS256".into(),
            userinfo_signed: false,
        }
    }
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn name(v: &str) -> Result<(), ValidationError> {
    match v.trim().chars().count() {
        0 => Err(ValidationError::new("missing")),
        1..=120 => Ok(()),
        _ => Err(ValidationError::new("long")),
    }
}

fn uris(v: &str) -> Result<(), ValidationError> {
    if lines(v).iter().all(|u| valid_redirect_uri(u)) {
        Ok(())
    } else {
        Err(ValidationError::new("invalid"))
    }
}

fn uris_required(v: &str) -> Result<(), ValidationError> {
    if lines(v).is_empty() {
        return Err(ValidationError::new("missing"));
    }
    uris(v)
}

fn one_of(v: &str, allowed: &[&str]) -> Result<(), ValidationError> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(ValidationError::new("invalid"))
    }
}

fn kind(v: &str) -> Result<(), ValidationError> {
    one_of(v, &["confidential", "public"])
}

fn subject_type(v: &str) -> Result<(), ValidationError> {
    one_of(v, &["pairwise", "public"])
}

fn alg(v: &str) -> Result<(), ValidationError> {
    one_of(v, &["RS256", "ES256"])
}

impl ClientForm {
    fn to_new(&self) -> NewClient {
        NewClient {
            name: self.name.trim().to_owned(),
            redirect_uris: lines(&self.redirect_uris),
            post_logout_redirect_uris: lines(&self.post_logout_redirect_uris),
            public: self.kind == "public",
            subject_type: self.subject_type.to_string(),
            id_token_alg: self.id_token_alg.to_string(),
            userinfo_signed: self.userinfo_signed,
        }
    }
}

#[derive(Serialize)]
struct ClientView {
    client_id: String,
    name: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    public: bool,
    subject_type: String,
    id_token_alg: String,
    userinfo_signed: bool,
    created: String,
}

impl From<&Client> for ClientView {
    fn from(c: &Client) -> Self {
        ClientView {
            client_id: c.client_id.clone(),
            name: c.name.clone(),
            redirect_uris: c.redirect_uris().map(str::to_owned).collect(),
            post_logout_redirect_uris: c.post_logout_redirect_uris().map(str::to_owned).collect(),
            public: c.public,
            subject_type: c.subject_type.clone(),
            id_token_alg: c.id_token_alg.clone(),
            userinfo_signed: c.userinfo_signed,
            created: super::connected::paris(c.created_at),
        }
    }
}

async fn client_or_404(
    conn: &mut diesel_async::AsyncPgConnection,
    client_id: &str,
) -> Result<Client, AppError> {
    clients::find(conn, client_id)
        .await?
        .ok_or(AppError::NotFound)
}

#[get("/admin/services?<supprime>")]
pub async fn list(
    _admin: Admin,
    ctx: Ctx,
    supprime: Option<&str>,
    db: &State<Db>,
) -> Result<Page, AppError> {
    let mut conn = db.get().await?;
    let all = clients::list(&mut conn).await?;
    let views: Vec<ClientView> = all.iter().map(ClientView::from).collect();
    Ok(Page::ok(ctx.render(
        "admin/clients",
        json!({ "clients": views, "removed": supprime }),
    )))
}

fn form_page(ctx: &Ctx, form: &ClientForm, errors: &FieldErrors) -> Page {
    Page {
        status: if errors.is_empty() {
            Status::Ok
        } else {
            Status::UnprocessableEntity
        },
        ..Page::ok(ctx.render(
            "admin/client_new",
            json!({ "form": form, "errors": errors, "form_errors": !errors.is_empty() }),
        ))
    }
}

#[get("/admin/services/nouveau")]
pub fn new_page(_admin: Admin, ctx: Ctx) -> Page {
    form_page(
        &ctx,
        &<ClientForm as Default>::default(),
        &FieldErrors::default(),
    )
}

fn client_page(ctx: &Ctx, c: &Client, secret: Option<&str>, created: bool) -> Page {
    Page::ok(ctx.render(
        "admin/client",
        json!({ "client": ClientView::from(c), "secret": secret, "created": created }),
    ))
}

#[post("/admin/services/nouveau", data = "<form>")]
pub async fn create(
    admin: Admin,
    ctx: Ctx,
    form: Form<ClientForm>,
    db: &State<Db>,
) -> Result<Page, AppError> {
    let form = form.into_inner();
    if let Err(e) = form.validate() {
        let errors = FieldErrors::from_validation(&e, ctx.lang, "admin.client");
        return Ok(form_page(&ctx, &form, &errors));
    }
    let mut conn = db.get().await?;
    let (client, secret) = match clients::add(&mut conn, &form.to_new(), Utc::now()).await {
        Ok(x) => x,
        Err(clients::ClientError::Invalid(problem)) => {
            // The form checks what registration checks; this is only a safety net.
            let mut errors = FieldErrors::default();
            errors.form(problem);
            return Ok(form_page(&ctx, &form, &errors));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(admin = %admin.0.matrix_user_id, client = %client.client_id, "service registered");
    Ok(client_page(&ctx, &client, secret.as_deref(), true))
}

#[get("/admin/services/<client_id>")]
pub async fn show(
    _admin: Admin,
    ctx: Ctx,
    client_id: &str,
    db: &State<Db>,
) -> Result<Page, AppError> {
    let mut conn = db.get().await?;
    let client = client_or_404(&mut conn, client_id).await?;
    Ok(client_page(&ctx, &client, None, false))
}

#[post("/admin/services/<client_id>/secret")]
pub async fn rotate_secret(
    admin: Admin,
    ctx: Ctx,
    client_id: &str,
    db: &State<Db>,
) -> Result<Page, AppError> {
    let mut conn = db.get().await?;
    let client = client_or_404(&mut conn, client_id).await?;
    if client.public {
        return Err(AppError::NotFound);
    }
    let secret = clients::rotate_secret(&mut conn, client_id).await?;
    tracing::info!(admin = %admin.0.matrix_user_id, client = %client_id, "service secret renewed");
    Ok(client_page(&ctx, &client, Some(&secret), false))
}

#[get("/admin/services/<client_id>/supprimer")]
pub async fn remove_page(
    _admin: Admin,
    ctx: Ctx,
    client_id: &str,
    db: &State<Db>,
) -> Result<Page, AppError> {
    let mut conn = db.get().await?;
    let client = client_or_404(&mut conn, client_id).await?;
    Ok(Page::ok(ctx.render(
        "admin/client_remove",
        json!({ "client": ClientView::from(&client) }),
    )))
}

#[post("/admin/services/<client_id>/supprimer")]
pub async fn remove(admin: Admin, client_id: &str, db: &State<Db>) -> Result<Redirect, AppError> {
    let mut conn = db.get().await?;
    let client = client_or_404(&mut conn, client_id).await?;
    clients::remove(&mut conn, client_id).await?;
    tracing::info!(admin = %admin.0.matrix_user_id, client = %client_id, "service removed");
    Ok(Redirect::to(format!(
        "/admin/services?supprime={}",
        crate::accounts::matrix::percent_encode(&client.name)
    )))
}
