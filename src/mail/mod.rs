//! Mail through an outbox: [`enqueue`] renders a mail (text + HTML from `templates/email/`, a fixed
//! Message-ID, optional attachments) and writes it in the caller's transaction; the [`worker`]
//! sends it. A change that mails is never acknowledged without its mail being kept.

pub mod transport;
pub mod worker;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use lettre::message::header::ContentType;
use lettre::message::{Attachment as LettreAttachment, Mailbox, MultiPart, SinglePart};
use lettre::Message;
use rocket::fairing::AdHoc;
use rocket::tokio::sync::Notify;
use serde_json::Value;

use crate::config::Config;
use crate::db::schema::outbox;
use crate::db::Db;
use crate::web::i18n::{Lang, TeraT};
use crate::web::page::merge;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid address: {0}")]
    Address(String),
    #[error("template: {0}")]
    Template(String),
    #[error("building the message: {0}")]
    Build(String),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// Renders and queues mail; shared in Rocket's state.
pub struct Mailer {
    tera: tera::Tera,
    from: Mailbox,
    public_url: String,
    /// Wakes the worker when a mail is queued, so it leaves within milliseconds, not at the next poll.
    pub wake: Arc<Notify>,
}

pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// One mail to queue.
pub struct Mail<'a> {
    /// What the mail is about, for operators (`booking-link`, `test`…).
    pub kind: &'a str,
    pub to: &'a str,
    pub lang: Lang,
    /// `templates/email/text/<template>.txt.tera` and `templates/email/html/<template>.html.tera`.
    pub template: &'a str,
    pub subject: String,
    pub context: Value,
    pub attachments: Vec<Attachment>,
}

impl<'a> Mail<'a> {
    /// The operator's test mail (`tchap-portal mail-test`).
    pub fn test(to: &'a str) -> Mail<'a> {
        Mail {
            kind: "test",
            to,
            lang: Lang::Fr,
            template: "test",
            subject: Lang::Fr.t("mail.test.subject").to_owned(),
            context: serde_json::json!({ "to": to }),
            attachments: vec![],
        }
    }
}

impl Mailer {
    pub fn new(template_dir: &str, config: &Config) -> Result<Mailer, String> {
        let mut tera = tera::Tera::default();
        // Autoescape goes by path: HTML parts are escaped, plain-text parts are not.
        tera.autoescape_on(vec![".html.tera"]);
        tera.add_template_files(email_templates(template_dir)?)
            .map_err(|e| format!("mail templates: {e:?}"))?;
        tera.register_function("t", TeraT);
        let from = config
            .settings
            .mail
            .from
            .parse()
            .map_err(|e| format!("mail.from: {e}"))?;
        Ok(Mailer {
            tera,
            from,
            public_url: config.public_url().to_owned(),
            wake: Arc::new(Notify::new()),
        })
    }

    /// The portal's public URL, for links in mails.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    pub fn template_names(&self) -> Vec<String> {
        self.tera.get_template_names().map(str::to_owned).collect()
    }

    pub fn render(&self, name: &str, lang: Lang, context: &Value) -> Result<String, MailError> {
        let mut ctx = serde_json::json!({ "lang": lang.code(), "public_url": self.public_url });
        merge(&mut ctx, context.clone());
        let ctx = tera::Context::from_value(ctx).map_err(|e| MailError::Template(e.to_string()))?;
        self.tera.render(name, &ctx).map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            MailError::Template(msg)
        })
    }

    /// The complete RFC 5322 message, its Message-ID and envelope.
    pub fn build(&self, mail: &Mail<'_>, now: DateTime<Utc>) -> Result<Built, MailError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|_| MailError::Address(mail.to.to_owned()))?;
        let text = self.render(
            &format!("email/text/{}", mail.template),
            mail.lang,
            &mail.context,
        )?;
        let html = self.render(
            &format!("email/html/{}", mail.template),
            mail.lang,
            &mail.context,
        )?;
        let domain = self.from.email.domain().to_owned();
        let id = crate::crypto::random_token(18).map_err(|e| MailError::Build(e.to_string()))?;
        let message_id = format!("<{id}@{domain}>");
        let alternative = MultiPart::alternative()
            .singlepart(SinglePart::plain(text))
            .singlepart(SinglePart::html(html));
        let body = if mail.attachments.is_empty() {
            alternative
        } else {
            let mut mixed = MultiPart::mixed().multipart(alternative);
            for a in &mail.attachments {
                let ct = ContentType::parse(&a.content_type)
                    .map_err(|e| MailError::Build(e.to_string()))?;
                mixed = mixed
                    .singlepart(LettreAttachment::new(a.filename.clone()).body(a.body.clone(), ct));
            }
            mixed
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .message_id(Some(message_id.clone()))
            .date(now.into())
            .multipart(body)
            .map_err(|e| MailError::Build(e.to_string()))?;
        let envelope = message.envelope();
        Ok(Built {
            message_id,
            sender: envelope.from().map(|a| a.to_string()).unwrap_or_default(),
            recipients: envelope.to().iter().map(|a| a.to_string()).collect(),
            raw: message.formatted(),
        })
    }
}

/// `templates/email/**` named as Rocket names them (`email/html/test` for
/// `email/html/test.html.tera`), so that `extends` works the same in both engines.
fn email_templates(
    template_dir: &str,
) -> Result<Vec<(std::path::PathBuf, Option<String>)>, String> {
    let root = std::path::Path::new(template_dir);
    let mut out = Vec::new();
    for sub in ["email/html", "email/text"] {
        let dir = root.join(sub);
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let file = path
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default();
            if let Some(stem) = file
                .strip_suffix(".tera")
                .and_then(|f| f.rsplit_once('.'))
                .map(|(s, _)| s)
            {
                out.push((path.clone(), Some(format!("{sub}/{stem}"))));
            }
        }
    }
    Ok(out)
}

pub struct Built {
    pub message_id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub raw: Vec<u8>,
}

#[derive(Insertable)]
#[diesel(table_name = outbox)]
struct NewOutboxRow<'a> {
    message_id: &'a str,
    kind: &'a str,
    sender: &'a str,
    recipients: Vec<Option<String>>,
    raw: &'a [u8],
    next_attempt_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

/// Queues `mail` on `conn`, inside the caller's transaction when there is one; returns the
/// Message-ID. Call [`Mailer::wake`]'s `notify_one()` after the transaction commits.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    mailer: &Mailer,
    mail: Mail<'_>,
    now: DateTime<Utc>,
) -> Result<String, MailError> {
    let built = mailer.build(&mail, now)?;
    diesel::insert_into(outbox::table)
        .values(NewOutboxRow {
            message_id: &built.message_id,
            kind: mail.kind,
            sender: &built.sender,
            recipients: built.recipients.into_iter().map(Some).collect(),
            raw: &built.raw,
            next_attempt_at: now,
            created_at: now,
        })
        .execute(conn)
        .await?;
    Ok(built.message_id)
}

/// Mails by status, for /metrics.
pub async fn outbox_counts(db: &Db) -> Result<Vec<(String, i64)>, crate::db::DbError> {
    let mut conn = db.get().await?;
    Ok(outbox::table
        .group_by(outbox::status)
        .select((outbox::status, diesel::dsl::count_star()))
        .filter(outbox::status.ne("sent"))
        .load(&mut conn)
        .await?)
}

/// Registers the mailer and starts the worker once the portal is listening.
/// Deletes the mails sent before `before` (their bodies hold magic links and PINs); failed and
/// pending ones stay for the operators. Returns how many went.
pub async fn purge_sent(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(
        outbox::table
            .filter(outbox::status.eq("sent"))
            .filter(outbox::sent_at.lt(before)),
    )
    .execute(conn)
    .await
}

pub fn stage(config: &Config) -> AdHoc {
    let config = config.clone();
    AdHoc::try_on_ignite("Mail", |rocket| async move {
        let mailer = match Mailer::new("templates", &config) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("{e}");
                return Err(rocket);
            }
        };
        let transport = match transport::Transport::from_settings(&config.settings.mail) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("mail transport: {e}");
                return Err(rocket);
            }
        };
        let wake = mailer.wake.clone();
        let settings = config.settings.mail.clone();
        let rocket = rocket
            .manage(mailer)
            .manage(transport.clone())
            .manage(worker::Handle::default());
        if !settings.worker {
            return Ok(rocket);
        }
        let keep = chrono::Duration::hours(settings.keep_sent_hours);
        let rocket = rocket.attach(crate::jobs::every(
            "Outbox purge",
            std::time::Duration::from_secs(3600),
            crate::jobs::First::Now,
            move |mut conn| async move {
                match purge_sent(&mut conn, Utc::now() - keep).await {
                    Ok(n) if n > 0 => tracing::info!(mails = n, "sent mails purged"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "outbox purge failed"),
                }
            },
        ));
        Ok(
            rocket.attach(AdHoc::on_liftoff("Mail worker", move |rocket| {
                Box::pin(async move {
                    if let (Some(db), Some(handle)) = (
                        rocket.state::<Db>().cloned(),
                        rocket.state::<worker::Handle>(),
                    ) {
                        let shutdown = rocket.shutdown();
                        let task = rocket::tokio::spawn(worker::run(
                            db, transport, settings, wake, shutdown,
                        ));
                        handle.set(task).await;
                    }
                })
            })),
        )
    })
}
