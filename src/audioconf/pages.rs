//! The AudioConf pages: the booking form, "check your mail", the magic link's confirmation page
//! (one POST button, so that mail scanners and prefetchers never book), the conference details
//! (number and PIN on the page, no script), and cancellation.

use chrono::{Duration, NaiveDate, Utc};
use rocket::form::{Form, FromForm};
use rocket::http::Status;
use rocket::{get, post, State};
use serde::Serialize;
use serde_json::{json, Value};
use validator::{Validate, ValidateEmail, ValidationError};

use crate::config::{AudioconfSettings, Config};
use crate::crypto::Keys;
use crate::db::Db;
use crate::mail::Mailer;
use crate::web::errors::AppError;
use crate::web::form::{FieldErrors, Page};
use crate::web::i18n::Lang;
use crate::web::page::Ctx;

use super::booking::{self, BookError, Created};
use super::request::{self, Choice, Limited, LinkError};
use super::{domains, format, tchap};
use crate::oidc::authorize::csp_allowing;
use crate::web::text::Text;

#[derive(Debug, Clone, Default, FromForm, Serialize, Validate)]
pub struct BookForm {
    #[field(default = Text::empty())]
    #[validate(custom(function = "email_field"))]
    pub email: Text,
    #[field(default = Text::empty())]
    pub when: Text,
    #[field(default = Text::empty())]
    pub day: Text,
    #[field(default = Text::empty())]
    pub duration: Text,
}

fn email_field(v: &str) -> Result<(), ValidationError> {
    let v = v.trim();
    if v.is_empty() {
        Err(ValidationError::new("missing"))
    } else if v.len() > 254 || !v.validate_email() {
        Err(ValidationError::new("invalid"))
    } else {
        Ok(())
    }
}

#[derive(Serialize)]
struct Opt {
    value: String,
    label: String,
}

fn day_options(settings: &AudioconfSettings, lang: Lang, today: NaiveDate) -> Vec<Opt> {
    (0..=settings.max_days_ahead)
        .map(|i| {
            let d = today + Duration::days(i);
            let label = match i {
                0 => lang.tf("audioconf.today", &[("day", &format::day(d, lang))]),
                1 => lang.tf("audioconf.tomorrow", &[("day", &format::day(d, lang))]),
                _ => format::day(d, lang),
            };
            Opt {
                value: d.to_string(),
                label,
            }
        })
        .collect()
}

fn duration_options(settings: &AudioconfSettings, lang: Lang) -> Vec<Opt> {
    settings
        .durations_minutes
        .iter()
        .map(|m| Opt {
            value: m.to_string(),
            label: request::duration_label(*m, lang),
        })
        .collect()
}

pub(super) fn form_page(
    ctx: &Ctx,
    config: &Config,
    form: &BookForm,
    errors: &FieldErrors,
    status: Status,
) -> Page {
    let settings = &config.settings.audioconf;
    let today = format::paris_date(Utc::now());
    let mut form = form.clone();
    if form.when.is_empty() {
        form.when = "day".into();
    }
    if form.day.is_empty() {
        form.day = Text::from(today.to_string());
    }
    if form.duration.is_empty() {
        form.duration = Text::from(
            settings
                .durations_minutes
                .first()
                .map(|m| m.to_string())
                .unwrap_or_default(),
        );
    }
    Page {
        status,
        // The Tchap button's form goes on to the issuer, which form-action must allow.
        csp: tchap::foreign_origin(config).map(|o| csp_allowing(&o)),
        ..Page::ok(ctx.render(
            "audioconf/book",
            json!({
                "form": form,
                "errors": errors,
                "form_errors": !errors.is_empty(),
                "days": day_options(settings, ctx.lang, today),
                "durations": duration_options(settings, ctx.lang),
                "available": !settings.numbers.is_empty(),
                "link_ttl": settings.link_ttl_minutes,
                "tchap": tchap::offered(config),
            }),
        ))
    }
}

#[get("/audioconf")]
pub fn book_page(ctx: Ctx, config: &State<Config>) -> Page {
    let form = BookForm {
        email: Text::from(
            ctx.user
                .as_ref()
                .and_then(|u| u.emails().next().map(str::to_owned))
                .unwrap_or_default(),
        ),
        ..<BookForm as Default>::default()
    };
    form_page(&ctx, config, &form, &FieldErrors::default(), Status::Ok)
}

/// The form's choice, checked against what the settings offer.
pub(super) fn choice(
    form: &BookForm,
    settings: &AudioconfSettings,
    lang: Lang,
    errors: &mut FieldErrors,
) -> Option<Choice> {
    let today = format::paris_date(Utc::now());
    match form.when.as_str() {
        "day" => match NaiveDate::parse_from_str(&form.day, "%Y-%m-%d") {
            Ok(d) if d >= today && d <= today + Duration::days(settings.max_days_ahead) => {
                Some(Choice::Day(d))
            }
            _ => {
                errors.add("day", lang.t("audioconf.form.day.invalid"));
                None
            }
        },
        "duration" => match form.duration.parse::<i64>() {
            Ok(m) if settings.durations_minutes.contains(&m) => Some(Choice::Minutes(m)),
            _ => {
                errors.add("duration", lang.t("audioconf.form.duration.invalid"));
                None
            }
        },
        _ => {
            errors.add("when", lang.t("audioconf.form.when.invalid"));
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[post("/audioconf", data = "<form>")]
pub async fn book(
    ctx: Ctx,
    form: Form<BookForm>,
    client: crate::web::client::ClientAddr,
    db: &State<Db>,
    keys: &State<Keys>,
    mailer: &State<Mailer>,
    config: &State<Config>,
) -> Result<Page, AppError> {
    let settings = &config.settings.audioconf;
    let form = form.into_inner();
    let lang = ctx.lang;
    let mut errors = match form.validate() {
        Ok(()) => FieldErrors::default(),
        Err(e) => FieldErrors::from_validation(&e, lang, "audioconf.form"),
    };
    let chosen = choice(&form, settings, lang, &mut errors);
    if settings.numbers.is_empty() {
        errors.form(lang.t("audioconf.unavailable"));
    }
    let mut conn = db.get().await?;
    if errors.is_empty() && !domains::allowed(&mut conn, &settings.domains, &form.email).await? {
        errors.add(
            "email",
            lang.tf(
                "audioconf.form.email.refused",
                &[
                    (
                        "domain",
                        &domains::domain_of(&form.email).unwrap_or_default(),
                    ),
                    ("contact", &settings.access_contact),
                ],
            ),
        );
    }
    let Some(chosen) = chosen.filter(|_| errors.is_empty()) else {
        return Ok(form_page(
            &ctx,
            config,
            &form,
            &errors,
            Status::UnprocessableEntity,
        ));
    };
    let now = Utc::now();
    let email = form.email.trim();
    match request::create(
        &mut conn, keys, mailer, settings, email, chosen, client.0, lang, now,
    )
    .await
    {
        Ok(Ok(())) => {
            mailer.wake.notify_one();
            tracing::info!(domain = %domains::domain_of(email).unwrap_or_default(), "audioconf: link sent");
            Ok(Page::ok(ctx.render(
                "audioconf/sent",
                json!({ "email": email, "ttl": settings.link_ttl_minutes, "choice": chosen.label(lang) }),
            )))
        }
        Ok(Err(limited)) => {
            errors.form(lang.t(match limited {
                Limited::Email => "audioconf.limit.email",
                Limited::Ip => "audioconf.limit.ip",
            }));
            Ok(form_page(
                &ctx,
                config,
                &form,
                &errors,
                Status::TooManyRequests,
            ))
        }
        Err(e) => Err(book_failure(e)),
    }
}

pub(super) fn book_failure(e: BookError) -> AppError {
    e.into()
}

fn link_error(ctx: &Ctx, e: LinkError) -> Page {
    let key = match e {
        LinkError::Unknown => "audioconf.link.unknown",
        LinkError::Used => "audioconf.link.used",
        LinkError::Expired => "audioconf.link.expired",
    };
    Page {
        status: if e == LinkError::Unknown {
            Status::NotFound
        } else {
            Status::Gone
        },
        ..Page::ok(ctx.render("audioconf/link_error", json!({ "message_key": key })))
    }
}

#[get("/audioconf/confirmer/<token>")]
pub async fn confirm_page(ctx: Ctx, token: &str, db: &State<Db>) -> Result<Page, AppError> {
    let mut conn = db.get().await?;
    Ok(
        match request::pending(&mut conn, token, Utc::now()).await? {
            Ok(p) => Page::ok(ctx.render(
                "audioconf/confirm",
                json!({ "token": token, "email": p.email, "choice": p.choice.label(ctx.lang),
                    "all_day": matches!(p.choice, Choice::Day(_)) }),
            )),
            Err(e) => link_error(&ctx, e),
        },
    )
}

#[derive(Debug, FromForm)]
pub struct TokenForm {
    #[field(default = Text::empty())]
    pub token: Text,
}

pub(super) fn details(ctx: &Ctx, settings: &AudioconfSettings, c: &Created, email: &str) -> Value {
    let mut v = booking::view(settings, ctx.lang, &c.number, &c.pin, &c.period);
    v["email"] = json!(email);
    v
}

#[post("/audioconf/confirmer", data = "<form>")]
pub async fn confirm(
    ctx: Ctx,
    form: Form<TokenForm>,
    db: &State<Db>,
    keys: &State<Keys>,
    mailer: &State<Mailer>,
    config: &State<Config>,
) -> Result<Page, AppError> {
    let settings = &config.settings.audioconf;
    let mut conn = db.get().await?;
    match request::confirm(&mut conn, keys, mailer, settings, &form.token, Utc::now()).await {
        Ok(Ok((created, email, _))) => {
            mailer.wake.notify_one();
            tracing::info!(conference = %created.public_id, via = "email", "audioconf: conference booked");
            Ok(Page::ok(ctx.render(
                "audioconf/details",
                details(&ctx, settings, &created, &email),
            )))
        }
        Ok(Err(e)) => Ok(link_error(&ctx, e)),
        Err(BookError::Exhausted) | Err(BookError::NoNumbers) => {
            tracing::warn!("audioconf: no free PIN for the period");
            Ok(Page {
                status: Status::ServiceUnavailable,
                ..Page::ok(ctx.render(
                    "audioconf/link_error",
                    json!({ "message_key": "audioconf.exhausted", "retry_token": form.token }),
                ))
            })
        }
        Err(e) => Err(book_failure(e)),
    }
}

#[get("/audioconf/annuler/<token>")]
pub async fn cancel_page(
    ctx: Ctx,
    token: &str,
    db: &State<Db>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Result<Page, AppError> {
    let mut conn = db.get().await?;
    let Some(c) = booking::by_cancel_token(&mut conn, token).await? else {
        return Ok(link_error(&ctx, LinkError::Unknown));
    };
    if !c.active(Utc::now()) {
        return Ok(Page {
            status: Status::Gone,
            ..Page::ok(ctx.render(
                "audioconf/link_error",
                json!({ "message_key": "audioconf.cancel.over" }),
            ))
        });
    }
    let pin = c.pin(keys)?;
    let mut v = booking::view(
        &config.settings.audioconf,
        ctx.lang,
        &c.number,
        &pin,
        &c.period(),
    );
    v["token"] = json!(token);
    Ok(Page::ok(ctx.render("audioconf/cancel", v)))
}

#[post("/audioconf/annuler", data = "<form>")]
pub async fn cancel(
    ctx: Ctx,
    form: Form<TokenForm>,
    db: &State<Db>,
    keys: &State<Keys>,
    mailer: &State<Mailer>,
) -> Result<Page, AppError> {
    let mut conn = db.get().await?;
    match booking::cancel(&mut conn, mailer, keys, &form.token, Utc::now()).await {
        Ok(Some(c)) => {
            mailer.wake.notify_one();
            tracing::info!(conference = %c.public_id, "audioconf: conference cancelled");
            Ok(Page::ok(ctx.render(
                "audioconf/cancelled",
                json!({ "number_national": format::national(&c.number) }),
            )))
        }
        Ok(None) => Ok(Page {
            status: Status::Gone,
            ..Page::ok(ctx.render(
                "audioconf/link_error",
                json!({ "message_key": "audioconf.cancel.over" }),
            ))
        }),
        Err(e) => Err(book_failure(e)),
    }
}
