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

/// The path to follow after a form or a switch: a local path, else `/` (no open redirect).
/// Refused: other origins (`//host`, `/\\host`), whitespace and controls (browsers drop tabs and
/// line breaks, so `/\t/host` would become `//host`), anything that is not a valid URI path.
pub fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p) if is_local_path(p) => p.to_owned(),
        _ => "/".to_owned(),
    }
}

fn is_local_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && p.len() <= 2048
        && !p
            .chars()
            .any(|c| c == '\\' || c.is_whitespace() || c.is_control() || !c.is_ascii())
        && rocket::http::uri::Origin::parse(p).is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_local_paths_are_followed() {
        for ok in [
            "/",
            "/discussions?x=1",
            "/authorize?client_id=a&scope=openid%20email",
        ] {
            assert_eq!(local_path(Some(ok)), ok);
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n//evil.example",
            "https://evil.example",
            "evil",
            "/a b",
            "/\0",
            "/caf\u{e9}",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(local_path(None), "/");
    }

    proptest! {
        #[test]
        fn a_followed_path_stays_on_the_portal(s in any::<String>(), tail in "[ -~\t\r\n]{0,20}") {
            for candidate in [s.clone(), format!("/{s}"), format!("/{tail}"), format!("//{tail}")] {
                let p = local_path(Some(&candidate));
                prop_assert!(p.starts_with('/'));
                prop_assert!(!p.starts_with("//"));
                prop_assert!(!p.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\'));
                // What browsers do to a Location: drop tabs and line breaks; still local.
                prop_assert!(rocket::http::uri::Origin::parse(&p).is_ok());
                prop_assert!(p == "/" || p == candidate);
            }
        }
    }
}
