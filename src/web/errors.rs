//! Error pages (DSFR, in the visitor's language, no internals) and the `AppError` that handlers return.

use rocket::http::Status;
use rocket::response::Responder;
use rocket::{catch, catchers, Catcher, Request};
use rocket_dyn_templates::Template;
use serde_json::json;

use crate::db::DbError;
use crate::web::i18n::Lang;
use crate::web::page::{base_context, current_path, merge};

/// What a handler can fail with; each maps to one status and its error page.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("not found")]
    NotFound,
    #[error("forbidden")]
    Forbidden,
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("query: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("internal: {0}")]
    Internal(String),
    /// The server cannot serve this now for a reason its operators must fix (503, logged).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl AppError {
    pub fn status(&self) -> Status {
        match self {
            AppError::NotFound => Status::NotFound,
            AppError::Forbidden => Status::Forbidden,
            AppError::Unavailable(_) => Status::ServiceUnavailable,
            AppError::Db(DbError::Query(diesel::result::Error::NotFound)) => Status::NotFound,
            AppError::Query(diesel::result::Error::NotFound) => Status::NotFound,
            // One rule for every database failure: its trouble is 503, the portal's mistake 500.
            AppError::Db(e) if e.is_unavailable() => Status::ServiceUnavailable,
            AppError::Query(e) if crate::db::is_unavailable(e) => Status::ServiceUnavailable,
            AppError::Db(_) | AppError::Query(_) | AppError::Internal(_) => {
                Status::InternalServerError
            }
        }
    }
}

impl From<crate::crypto::CryptoError> for AppError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        match e {
            // A secret retired from the ring too early: the operators can put it back.
            crate::crypto::CryptoError::UnknownKey => AppError::Unavailable(e.to_string()),
            _ => AppError::Internal(e.to_string()),
        }
    }
}

impl<'r> Responder<'r, 'static> for AppError {
    fn respond_to(self, req: &'r Request<'_>) -> rocket::response::Result<'static> {
        let status = self.status();
        if status.code >= 500 {
            tracing::error!(path = %req.uri().path(), error = %self, "request failed");
        }
        Err(status)
    }
}

/// Renders the error page for `status`.
pub fn error_page(status: Status, req: &Request<'_>) -> Template {
    let lang = Lang::of_request(req);
    let code = match status.code {
        400 | 403 | 404 | 422 | 429 | 503 => status.code,
        c if c >= 500 => 500,
        _ => 400,
    };
    let mut ctx = base_context(lang, "", &current_path(req), None, false);
    merge(
        &mut ctx,
        json!({
            "status": status.code,
            "key": format!("error.{code}"),
        }),
    );
    Template::render("errors/error", ctx)
}

macro_rules! catcher {
    ($name:ident, $code:literal) => {
        #[catch($code)]
        fn $name(req: &Request<'_>) -> Template {
            error_page(Status::new($code), req)
        }
    };
}
/// 401 comes from guards that need a logged-in agent: send them to the login page, then back.
#[catch(401)]
fn unauthorized(req: &Request<'_>) -> rocket::response::Redirect {
    let next = if req.method() == rocket::http::Method::Get {
        current_path(req)
    } else {
        "/".to_owned()
    };
    rocket::response::Redirect::to(format!(
        "/connexion?next={}",
        crate::accounts::matrix::percent_encode(&next)
    ))
}

catcher!(bad_request, 400);
catcher!(forbidden, 403);
catcher!(not_found, 404);
catcher!(unprocessable, 422);
catcher!(too_many, 429);
catcher!(internal, 500);
catcher!(unavailable, 503);

#[catch(default)]
fn other(status: Status, req: &Request<'_>) -> (Status, Template) {
    (status, error_page(status, req))
}

pub fn catchers() -> Vec<Catcher> {
    catchers![
        unauthorized,
        bad_request,
        forbidden,
        not_found,
        unprocessable,
        too_many,
        internal,
        unavailable,
        other
    ]
}
