//! Form errors tied to their fields: each message is shown next to its field (`aria-describedby`)
//! and in a summary at the top that links to the field; the page title starts with "Erreur :".

use std::collections::BTreeMap;

use rocket::http::{Header, Status};
use rocket::response::{self, Responder};
use rocket::Request;
use rocket_dyn_templates::Template;
use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct FieldErrors {
    /// field name → translated message, in form order.
    pub fields: BTreeMap<String, String>,
    /// A message about the whole form (not one field).
    pub form: Option<String>,
}

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.fields
            .entry(field.to_owned())
            .or_insert_with(|| message.into());
    }

    pub fn form(&mut self, message: impl Into<String>) {
        self.form = Some(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.form.is_none()
    }

    /// The messages for `validator`'s errors: each field's first error, its text from the catalog
    /// at `{prefix}.{field}.{code}`.
    pub fn from_validation(
        errors: &validator::ValidationErrors,
        lang: crate::web::i18n::Lang,
        prefix: &str,
    ) -> FieldErrors {
        let mut out = FieldErrors::default();
        for (field, errs) in errors.field_errors() {
            if let Some(e) = errs.first() {
                out.add(&field, lang.t(&format!("{prefix}.{field}.{}", e.code)));
            }
        }
        out
    }
}

/// A rendered page with a status other than 200 and, for 429, a `Retry-After`.
pub struct Page {
    pub status: Status,
    pub retry_after: Option<i64>,
    /// A page-specific Content-Security-Policy (kept by the headers fairing).
    pub csp: Option<String>,
    pub template: Template,
}

impl Page {
    pub fn ok(template: Template) -> Page {
        Page {
            status: Status::Ok,
            retry_after: None,
            csp: None,
            template,
        }
    }
}

impl<'r> Responder<'r, 'static> for Page {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let mut res = self.template.respond_to(req)?;
        res.set_status(self.status);
        if let Some(csp) = self.csp {
            res.set_header(Header::new("Content-Security-Policy", csp));
        }
        if let Some(secs) = self.retry_after {
            res.set_header(Header::new("Retry-After", secs.max(1).to_string()));
        }
        Ok(res)
    }
}
