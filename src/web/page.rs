//! What every page needs: the visitor's language, a CSRF token for its forms, the current path
//! (for the language switch) and the logged-in agent, merged into each template's context.

use chrono::Utc;
use rocket::request::{FromRequest, Outcome, Request};
use rocket_dyn_templates::Template;
use serde::Serialize;
use serde_json::{json, Value};

use crate::accounts::session::CurrentUser;
use crate::config::Config;
use crate::crypto::Keys;
use crate::web::csrf;
use crate::web::i18n::Lang;

pub struct Ctx {
    pub lang: Lang,
    pub csrf: String,
    pub path: String,
    pub user: Option<CurrentUser>,
    /// The agent is one of the portal's administrators.
    pub admin: bool,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Ctx {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let lang = Lang::of_request(req);
        let csrf = match (req.rocket().state::<Keys>(), req.rocket().state::<Config>()) {
            (Some(keys), Some(config)) => {
                csrf::token_for(req.cookies(), keys, config.release, Utc::now())
            }
            _ => String::new(),
        };
        let user = req
            .guard::<Option<CurrentUser>>()
            .await
            .succeeded()
            .flatten();
        let admin = match (&user, req.rocket().state::<Config>()) {
            (Some(u), Some(config)) => config.is_admin(&u.matrix_user_id),
            _ => false,
        };
        Outcome::Success(Ctx {
            lang,
            csrf,
            path: current_path(req),
            user,
            admin,
        })
    }
}

/// The path and query of the request, to come back to after switching language.
pub fn current_path(req: &Request<'_>) -> String {
    req.uri().to_string()
}

/// The context every template gets, for pages and error pages alike.
pub fn base_context(
    lang: Lang,
    csrf: &str,
    path: &str,
    user: Option<&CurrentUser>,
    admin: bool,
) -> Value {
    json!({
        "lang": lang.code(),
        "csrf_token": csrf,
        "path": path,
        "user": user.map(|u| json!({
            "matrix_user_id": u.matrix_user_id,
            "display_name": u.display_name,
            "admin": admin,
        })),
    })
}

impl Ctx {
    pub fn render(&self, template: &'static str, page: impl Serialize) -> Template {
        let mut ctx = base_context(
            self.lang,
            &self.csrf,
            &self.path,
            self.user.as_ref(),
            self.admin,
        );
        merge(&mut ctx, serde_json::to_value(page).unwrap_or(Value::Null));
        Template::render(template, ctx)
    }

    /// OpenID `ui_locales`: the service's language wish, unless the agent already chose one.
    pub fn prefer_ui_locales(
        &mut self,
        ui_locales: Option<&str>,
        cookies: &rocket::http::CookieJar<'_>,
    ) {
        let wished = ui_locales.and_then(|l| l.split_whitespace().find_map(Lang::parse));
        if let Some(lang) = wished {
            if cookies.get(crate::web::i18n::LANG_COOKIE).is_none() {
                self.lang = lang;
            }
        }
    }

    pub fn t(&self, key: &str) -> &'static str {
        self.lang.t(key)
    }
}

pub fn merge(base: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (base, extra) {
        b.extend(e);
    }
}
