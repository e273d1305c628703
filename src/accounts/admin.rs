//! The `Admin` guard: a logged-in agent whose Matrix ID is listed in `portal.admins`. Not logged
//! in → 401, which the catcher turns into the login page (and back); anyone else → 403.

use rocket::http::Status;
use rocket::request::{FromRequest, Outcome, Request};

use super::session::CurrentUser;
use crate::config::Config;

pub struct Admin(pub CurrentUser);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Admin {
    type Error = ();
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let user = match req.guard::<CurrentUser>().await {
            Outcome::Success(user) => user,
            // The database could not tell: 503, as for any page that needs the agent.
            Outcome::Error(e) => return Outcome::Error(e),
            Outcome::Forward(_) => return Outcome::Error((Status::Unauthorized, ())),
        };
        match req.rocket().state::<Config>() {
            Some(config) if config.is_admin(&user.matrix_user_id) => Outcome::Success(Admin(user)),
            _ => {
                tracing::warn!(user = %user.matrix_user_id, path = %req.uri().path(), "admin page refused");
                Outcome::Error((Status::Forbidden, ()))
            }
        }
    }
}

/// The administrators' home: links to each administration page.
#[rocket::get("/admin")]
pub fn index(_admin: Admin, ctx: crate::web::page::Ctx) -> crate::web::form::Page {
    crate::web::form::Page::ok(ctx.render("admin/index", serde_json::json!({})))
}
