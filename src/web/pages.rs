//! The portal's own pages: home, accessibility statement, legal notice, site map, language switch.

use rocket::http::{Cookie, CookieJar, SameSite};
use rocket::response::Redirect;
use rocket::time::Duration;
use rocket_dyn_templates::Template;
use serde_json::json;

use crate::web::i18n::{Lang, LANG_COOKIE};
use crate::web::page::Ctx;

#[rocket::get("/")]
pub fn home(ctx: Ctx) -> Template {
    ctx.render("home", json!({}))
}

#[rocket::get("/accessibilite")]
pub fn accessibility(ctx: Ctx) -> Template {
    ctx.render("pages/accessibility", json!({}))
}

#[rocket::get("/mentions-legales")]
pub fn legal(ctx: Ctx) -> Template {
    ctx.render("pages/legal", json!({}))
}

#[rocket::get("/plan-du-site")]
pub fn sitemap(ctx: Ctx) -> Template {
    ctx.render("pages/sitemap", json!({}))
}

/// Only a local path is followed after switching language (no open redirect).
pub fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_owned(),
        _ => "/".to_owned(),
    }
}

/// A plain link, so the switch works without JavaScript; the choice is kept for a year.
#[rocket::get("/langue/<code>?<next>")]
pub fn switch_language(code: &str, next: Option<&str>, cookies: &CookieJar<'_>) -> Redirect {
    if let Some(lang) = Lang::parse(code) {
        cookies.add(
            Cookie::build((LANG_COOKIE, lang.code()))
                .path("/")
                .max_age(Duration::days(365))
                .same_site(SameSite::Lax)
                .http_only(true)
                .build(),
        );
    }
    Redirect::to(local_path(next))
}
