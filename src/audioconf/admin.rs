//! The administrators' page for AudioConf's allowed domains: the rules from the settings (read
//! only) and the stored ones, which administrators add and remove here.

use chrono::Utc;
use rocket::form::{Form, FromForm};
use rocket::http::Status;
use rocket::response::Redirect;
use rocket::{get, post, Either, State};
use serde_json::json;

use crate::accounts::admin::Admin;
use crate::accounts::matrix::percent_encode;
use crate::config::{is_domain_rule, Config};
use crate::db::Db;
use crate::web::errors::AppError;
use crate::web::form::{FieldErrors, Page};
use crate::web::page::Ctx;

use super::domains;
use crate::web::text::Text;

#[derive(Debug, Default, FromForm)]
pub struct RuleForm {
    #[field(default = Text::empty())]
    pub rule: Text,
}

/// A rule as typed: trimmed and lowercased ("@" and a leading "*" dropped, as people paste them).
fn normalise(rule: &str) -> String {
    let r = rule.trim().to_lowercase();
    let r = r.trim_start_matches('@');
    r.strip_prefix('*').unwrap_or(r).to_owned()
}

async fn page(
    ctx: &Ctx,
    config: &Config,
    db: &Db,
    typed: &str,
    errors: &FieldErrors,
    done: Option<(&str, &str)>,
) -> Result<Page, AppError> {
    let mut conn = db.get().await?;
    let stored = domains::stored_rules(&mut conn).await?;
    Ok(Page {
        status: if errors.is_empty() {
            Status::Ok
        } else {
            Status::UnprocessableEntity
        },
        ..Page::ok(ctx.render(
            "admin/audioconf_domains",
            json!({
                "configured": config.settings.audioconf.domains,
                "stored": stored,
                "form": { "rule": typed },
                "errors": errors,
                "form_errors": !errors.is_empty(),
                "done": done.map(|(what, rule)| json!({ "what": what, "rule": rule })),
            }),
        ))
    })
}

#[get("/admin/audioconf/domaines?<ajoute>&<retire>")]
pub async fn list(
    _admin: Admin,
    ctx: Ctx,
    ajoute: Option<&str>,
    retire: Option<&str>,
    config: &State<Config>,
    db: &State<Db>,
) -> Result<Page, AppError> {
    let done = match (ajoute, retire) {
        (Some(r), _) => Some(("added", r)),
        (None, Some(r)) => Some(("removed", r)),
        _ => None,
    };
    page(&ctx, config, db, "", &FieldErrors::default(), done).await
}

#[post("/admin/audioconf/domaines", data = "<form>")]
pub async fn add(
    admin: Admin,
    ctx: Ctx,
    form: Form<RuleForm>,
    config: &State<Config>,
    db: &State<Db>,
) -> Result<Either<Redirect, Page>, AppError> {
    let rule = normalise(&form.rule);
    let mut errors = FieldErrors::default();
    if rule.is_empty() {
        errors.add("rule", ctx.lang.t("admin.domains.rule.missing"));
    } else if !is_domain_rule(&rule) {
        errors.add("rule", ctx.lang.t("admin.domains.rule.invalid"));
    } else if config.settings.audioconf.domains.contains(&rule) {
        errors.add("rule", ctx.lang.t("admin.domains.rule.configured"));
    }
    if errors.is_empty() {
        let mut conn = db.get().await?;
        if domains::add(&mut conn, &rule, &admin.0.matrix_user_id, Utc::now()).await? {
            tracing::info!(admin = %admin.0.matrix_user_id, %rule, "audioconf: domain allowed");
            return Ok(Either::Left(Redirect::to(format!(
                "/admin/audioconf/domaines?ajoute={}",
                percent_encode(&rule)
            ))));
        }
        errors.add("rule", ctx.lang.t("admin.domains.rule.exists"));
    }
    Ok(Either::Right(
        page(&ctx, config, db, &form.rule, &errors, None).await?,
    ))
}

#[post("/admin/audioconf/domaines/retirer", data = "<form>")]
pub async fn remove(
    admin: Admin,
    form: Form<RuleForm>,
    db: &State<Db>,
) -> Result<Redirect, AppError> {
    let mut conn = db.get().await?;
    if !domains::remove(&mut conn, &form.rule).await? {
        return Err(AppError::NotFound);
    }
    tracing::info!(admin = %admin.0.matrix_user_id, rule = %form.rule, "audioconf: domain removed");
    Ok(Redirect::to(format!(
        "/admin/audioconf/domaines?retire={}",
        percent_encode(&form.rule)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_rules_are_normalised_before_checking() {
        assert_eq!(normalise("  Agent.Gouv.FR "), "agent.gouv.fr");
        assert_eq!(normalise("@interieur.gouv.fr"), "interieur.gouv.fr");
        assert_eq!(normalise("*.ville-paris.fr"), ".ville-paris.fr");
        assert!(!is_domain_rule(&normalise("pas un domaine")));
    }
}
