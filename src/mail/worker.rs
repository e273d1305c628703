//! The outbox worker: claims due mails with `FOR UPDATE SKIP LOCKED` (so several portal instances
//! share the work without sending twice), sends them, and retries with exponential back-off until
//! `max_age_hours`, after which a mail is marked failed and logged.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use lettre::address::{Address, Envelope};
use rocket::tokio::sync::Notify;
use rocket::Shutdown;

use crate::config::MailSettings;
use crate::db::schema::outbox;
use crate::db::{Db, DbError};

use super::transport::Transport;

const BATCH: i64 = 20;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
}

#[derive(Queryable)]
struct Due {
    id: i64,
    sender: String,
    recipients: Vec<Option<String>>,
    raw: Vec<u8>,
    attempts: i32,
    created_at: DateTime<Utc>,
}

/// The delay before attempt `attempts + 1`: base × 2^attempts, at most one hour.
pub fn backoff(base_secs: i64, attempts: i32) -> chrono::Duration {
    let factor = 1i64 << attempts.clamp(0, 20);
    chrono::Duration::seconds(base_secs.saturating_mul(factor).min(3600))
}

fn envelope(sender: &str, recipients: &[Option<String>]) -> Result<Envelope, String> {
    let from = sender.parse::<Address>().map_err(|e| e.to_string())?;
    let to = recipients
        .iter()
        .flatten()
        .map(|r| r.parse::<Address>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Envelope::new(Some(from), to).map_err(|e| e.to_string())
}

/// Sends what is due at `now`, once.
pub async fn run_once(
    db: &Db,
    transport: &Transport,
    settings: &MailSettings,
    now: DateTime<Utc>,
) -> Result<Batch, DbError> {
    let mut conn = db.get().await?;
    let batch = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            let due: Vec<Due> = outbox::table
                .filter(outbox::status.eq("pending"))
                .filter(outbox::next_attempt_at.le(now))
                .order(outbox::next_attempt_at)
                .limit(BATCH)
                .select((
                    outbox::id,
                    outbox::sender,
                    outbox::recipients,
                    outbox::raw,
                    outbox::attempts,
                    outbox::created_at,
                ))
                .for_update()
                .skip_locked()
                .load(conn)
                .await?;
            let mut batch = Batch::default();
            for mail in due {
                let result = match envelope(&mail.sender, &mail.recipients) {
                    Ok(env) => transport.send_raw(&env, &mail.raw).await,
                    Err(e) => Err(format!("bad envelope: {e}")),
                };
                let attempts = mail.attempts + 1;
                match result {
                    Ok(()) => {
                        diesel::update(outbox::table.find(mail.id))
                            .set((
                                outbox::status.eq("sent"),
                                outbox::attempts.eq(attempts),
                                outbox::sent_at.eq(now),
                                outbox::last_error.eq(None::<String>),
                            ))
                            .execute(conn)
                            .await?;
                        tracing::info!(outbox_id = mail.id, attempts, "mail sent");
                        batch.sent += 1;
                    }
                    Err(error) => {
                        let give_up = now - mail.created_at
                            >= chrono::Duration::hours(settings.max_age_hours);
                        let status = if give_up { "failed" } else { "pending" };
                        diesel::update(outbox::table.find(mail.id))
                            .set((
                                outbox::status.eq(status),
                                outbox::attempts.eq(attempts),
                                outbox::next_attempt_at
                                    .eq(now + backoff(settings.retry_base_secs, mail.attempts)),
                                outbox::last_error.eq(Some(&error)),
                            ))
                            .execute(conn)
                            .await?;
                        if give_up {
                            tracing::error!(outbox_id = mail.id, attempts, %error, "mail failed for good");
                            batch.failed += 1;
                        } else {
                            tracing::warn!(outbox_id = mail.id, attempts, %error, "mail not sent, will retry");
                            batch.retried += 1;
                        }
                    }
                }
            }
            Ok(batch)
        })
        .await?;
    Ok(batch)
}

/// Runs until shutdown: after each wake-up or poll interval, sends what is due.
pub async fn run(
    db: Db,
    transport: Transport,
    settings: MailSettings,
    wake: Arc<Notify>,
    mut shutdown: Shutdown,
) {
    let poll = Duration::from_secs(settings.poll_secs.max(1));
    loop {
        loop {
            match run_once(&db, &transport, &settings, Utc::now()).await {
                Ok(b) if b.sent + b.retried + b.failed == BATCH as usize => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "mail worker: database unavailable");
                    break;
                }
            }
        }
        rocket::tokio::select! {
            _ = wake.notified() => {}
            _ = rocket::tokio::time::sleep(poll) => {}
            _ = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(30, 0).num_seconds(), 30);
        assert_eq!(backoff(30, 1).num_seconds(), 60);
        assert_eq!(backoff(30, 3).num_seconds(), 240);
        assert_eq!(backoff(30, 30).num_seconds(), 3600);
    }
}
