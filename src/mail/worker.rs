//! The outbox worker. Each mail is claimed with a lease (this worker, until when) in one short
//! statement (`FOR UPDATE SKIP LOCKED`, so instances running side by side never claim the same
//! mail), sent, and marked sent in its own commit right after the SMTP server accepted it. A
//! worker that dies holds only the mails it claimed: their leases run out and another worker
//! takes them over, so a mail goes out twice only if the SMTP server had accepted it and the
//! worker died before the commit (SMTP offers no better): at most one mail per lane. Mails go out
//! on `mail.smtp_connections` lanes (default one), each over a kept-open SMTP connection of
//! lettre's pool. On shutdown no new mail is started and the one in hand is finished. Failures are retried with exponential
//! back-off until `max_age_hours`, after which a mail is marked failed and logged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bytea, Integer, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use lettre::address::{Address, Envelope};
use rocket::tokio::sync::{Mutex, Notify};
use rocket::tokio::task::{JoinHandle, JoinSet};
use rocket::Shutdown;

use crate::config::MailSettings;
use crate::db::schema::outbox;
use crate::db::{Db, DbError};

use super::transport::{Sender, Transport};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
}

impl Batch {
    fn add(&mut self, other: Batch) {
        self.sent += other.sent;
        self.retried += other.retried;
        self.failed += other.failed;
    }
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    sender: String,
    #[diesel(sql_type = Array<Nullable<Text>>)]
    recipients: Vec<Option<String>>,
    #[diesel(sql_type = Bytea)]
    raw: Vec<u8>,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

/// This process, as the owner of its leases: host, process id and a random part (a restarted
/// process with the same pid is another owner).
pub fn worker_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".into());
        let random = crate::crypto::random_token(6).unwrap_or_default();
        format!("{host}/{}/{random}", std::process::id())
    })
}

/// Whether the worker was told to stop (spelled out: diesel's `RunQueryDsl::load` is in scope).
fn stopped(stop: &AtomicBool) -> bool {
    AtomicBool::load(stop, Ordering::SeqCst)
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

struct ClaimDue;
struct Release;

/// Mails one lane claims at a time (one statement), then sends one by one.
const CLAIM: i64 = 20;

/// Claims up to [`CLAIM`] mails due at `now`, those due longest ago first, skipping any another
/// worker holds (its lease, on the database's clock so instances' clocks need not agree).
async fn claim(
    db: &Db,
    owner: &str,
    lease_secs: u64,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>, DbError> {
    let mut conn = db.get().await?;
    let statement = diesel::sql_query(
        "UPDATE outbox SET lease_owner = $1,
                lease_until = clock_timestamp() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM outbox
                      WHERE status = 'pending' AND next_attempt_at <= $3
                        AND (lease_until IS NULL OR lease_until < clock_timestamp())
                      ORDER BY next_attempt_at LIMIT $4
                      FOR UPDATE SKIP LOCKED)
         RETURNING id, sender, recipients, raw, attempts, created_at",
    )
    .bind::<Text, _>(owner)
    .bind::<BigInt, _>(lease_secs as i64)
    .bind::<Timestamptz, _>(now)
    .bind::<BigInt, _>(CLAIM);
    let mut claimed: Vec<Claimed> = crate::db::prepared::<ClaimDue, _>(statement)
        .load(&mut conn)
        .await?;
    claimed.sort_by_key(|m| m.id);
    Ok(claimed)
}

/// Gives back mails claimed but not sent (stopping, or their lease too short to start one more).
async fn release(db: &Db, owner: &str, ids: &[i64]) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut conn = db.get().await?;
    let statement = diesel::sql_query(
        "UPDATE outbox SET lease_owner = NULL, lease_until = NULL
         WHERE id = ANY($1) AND lease_owner = $2",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Text, _>(owner);
    crate::db::prepared::<Release, _>(statement)
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// What happened to one mail, to be recorded.
enum Outcome {
    Sent,
    Retry(String),
    Failed(String),
}

/// Records `outcome` for `mail` in its own commit, if this worker still holds it; returns
/// whether it did.
async fn record(
    db: &Db,
    settings: &MailSettings,
    owner: &str,
    mail: &Claimed,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let attempts = mail.attempts + 1;
    let mine = outbox::table
        .filter(outbox::id.eq(mail.id))
        .filter(outbox::lease_owner.eq(owner));
    let mut conn = db.get().await?;
    let updated = match outcome {
        Outcome::Sent => {
            diesel::update(mine)
                .set((
                    outbox::status.eq("sent"),
                    outbox::attempts.eq(attempts),
                    outbox::sent_at.eq(now),
                    outbox::last_error.eq(None::<String>),
                    outbox::lease_owner.eq(None::<String>),
                    outbox::lease_until.eq(None::<DateTime<Utc>>),
                ))
                .execute(&mut conn)
                .await?
        }
        Outcome::Retry(error) | Outcome::Failed(error) => {
            let status = if matches!(outcome, Outcome::Failed(_)) {
                "failed"
            } else {
                "pending"
            };
            diesel::update(mine)
                .set((
                    outbox::status.eq(status),
                    outbox::attempts.eq(attempts),
                    outbox::next_attempt_at
                        .eq(now + backoff(settings.retry_base_secs, mail.attempts)),
                    outbox::last_error.eq(Some(error)),
                    outbox::lease_owner.eq(None::<String>),
                    outbox::lease_until.eq(None::<DateTime<Utc>>),
                ))
                .execute(&mut conn)
                .await?
        }
    };
    Ok(updated > 0)
}

/// Sends one claimed mail and records the outcome in its own commit. A mail the SMTP server
/// accepted is recorded however long the database takes to come back, up to `record_by` (before
/// the lease runs out): a database restart does not make it go out twice.
async fn deliver(
    db: &Db,
    sender: &mut Sender,
    settings: &MailSettings,
    owner: &str,
    mail: &Claimed,
    now: DateTime<Utc>,
    record_by: std::time::Instant,
) -> Result<Batch, DbError> {
    let result = match envelope(&mail.sender, &mail.recipients) {
        Ok(env) => sender.send_raw(&env, &mail.raw).await,
        Err(e) => Err(format!("bad envelope: {e}")),
    };
    let attempts = mail.attempts + 1;
    let mut batch = Batch::default();
    let outcome = match result {
        Ok(()) => {
            batch.sent = 1;
            tracing::info!(outbox_id = mail.id, attempts, "mail sent");
            Outcome::Sent
        }
        Err(error) if now - mail.created_at >= chrono::Duration::hours(settings.max_age_hours) => {
            batch.failed = 1;
            tracing::error!(outbox_id = mail.id, attempts, %error, "mail failed for good");
            Outcome::Failed(error)
        }
        Err(error) => {
            batch.retried = 1;
            tracing::warn!(outbox_id = mail.id, attempts, %error, "mail not sent, will retry");
            Outcome::Retry(error)
        }
    };
    let mut pause = Duration::from_millis(100);
    let recorded = loop {
        match record(db, settings, owner, mail, &outcome, now).await {
            Ok(recorded) => break recorded,
            Err(e) if std::time::Instant::now() + pause < record_by => {
                tracing::warn!(outbox_id = mail.id, error = %e, "mail outcome not recorded yet, trying again");
                rocket::tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                if matches!(outcome, Outcome::Sent) {
                    tracing::error!(
                        outbox_id = mail.id,
                        error = %e,
                        "mail sent but not recorded before its lease ran out: it may go out again"
                    );
                }
                return Err(e);
            }
        }
    };
    if !recorded {
        // Held longer than its lease and taken over meanwhile: cannot happen while the lane
        // checks the time left before each mail, unless the host was suspended.
        tracing::warn!(
            outbox_id = mail.id,
            "mail lease ran out while sending: another worker may send it too"
        );
    }
    Ok(batch)
}

/// One lane: claims mails and sends them one after the other until none is due or `stop` is
/// set. Before each mail it checks that the lease leaves time for a slow SMTP exchange; if not,
/// the rest go back and are claimed again.
async fn lane(
    db: Db,
    transport: Transport,
    settings: MailSettings,
    now: Option<DateTime<Utc>>,
    stop: Arc<AtomicBool>,
) -> Result<Batch, DbError> {
    let mut sender = transport.sender();
    let done = lane_pass(&db, &mut sender, &settings, now, &stop).await;
    sender.close().await;
    done
}

async fn lane_pass(
    db: &Db,
    sender: &mut Sender,
    settings: &MailSettings,
    now: Option<DateTime<Utc>>,
    stop: &AtomicBool,
) -> Result<Batch, DbError> {
    let owner = worker_id();
    let lease = Duration::from_secs(settings.lease_secs);
    let slow_send = Duration::from_secs(2 * settings.smtp_timeout_secs.max(1));
    let mut batch = Batch::default();
    while !stopped(stop) {
        let at = now.unwrap_or_else(Utc::now);
        let claimed_at = std::time::Instant::now();
        let mails = claim(db, owner, settings.lease_secs, at).await?;
        if mails.is_empty() {
            break;
        }
        // The outcome of a mail must be recorded a little before the lease runs out.
        let record_by = claimed_at + lease.saturating_sub(Duration::from_secs(2));
        let mut unsent = Vec::new();
        let mut failure = None;
        for mail in &mails {
            if failure.is_some()
                || !unsent.is_empty()
                || stopped(stop)
                || claimed_at.elapsed() + slow_send >= lease
            {
                unsent.push(mail.id);
                continue;
            }
            let at = now.unwrap_or_else(Utc::now);
            match deliver(db, sender, settings, owner, mail, at, record_by).await {
                Ok(b) => batch.add(b),
                Err(e) => failure = Some(e),
            }
        }
        // Given back at once, so they need not wait for their leases (best effort: with the
        // database away, the leases run out instead).
        if let Err(e) = release(db, owner, &unsent).await {
            tracing::warn!(error = %e, mails = unsent.len(), "claimed mails not given back: their leases will run out");
        }
        if let Some(e) = failure {
            return Err(e);
        }
    }
    Ok(batch)
}

/// Sends what is due at `now` on every lane, until nothing is left or `stop` is set; a mail
/// that fails is not tried again in the same pass (its next attempt is later).
pub async fn drain(
    db: &Db,
    transport: &Transport,
    settings: &MailSettings,
    now: Option<DateTime<Utc>>,
    stop: &Arc<AtomicBool>,
) -> Result<Batch, DbError> {
    let mut lanes = JoinSet::new();
    for _ in 0..settings.smtp_connections.max(1) {
        lanes.spawn(lane(
            db.clone(),
            transport.clone(),
            settings.clone(),
            now,
            stop.clone(),
        ));
    }
    let mut batch = Batch::default();
    let mut failure = None;
    while let Some(joined) = lanes.join_next().await {
        match joined {
            Ok(Ok(b)) => batch.add(b),
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(DbError::Unavailable(format!("mail lane: {e}"))),
        }
    }
    match failure {
        Some(e) if batch == Batch::default() => Err(e),
        Some(e) => {
            tracing::warn!(error = %e, "mail worker: a lane stopped early");
            Ok(batch)
        }
        None => Ok(batch),
    }
}

/// Sends what is due at `now`, once (tests and the `mail-test` command).
pub async fn run_once(
    db: &Db,
    transport: &Transport,
    settings: &MailSettings,
    now: DateTime<Utc>,
) -> Result<Batch, DbError> {
    drain(
        db,
        transport,
        settings,
        Some(now),
        &Arc::new(AtomicBool::new(false)),
    )
    .await
}

/// The running worker, so that the process waits for the mails in hand before it exits.
#[derive(Default)]
pub struct Handle(Mutex<Option<JoinHandle<()>>>);

impl Handle {
    pub async fn set(&self, task: JoinHandle<()>) {
        *self.0.lock().await = Some(task);
    }

    /// Waits at most `limit` for the worker to finish the mails in hand (after shutdown).
    pub async fn finish(&self, limit: Duration) {
        if let Some(task) = self.0.lock().await.take() {
            if rocket::tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!("mail worker still sending at exit: its leases will run out");
            }
        }
    }
}

/// Runs until shutdown: after each wake-up or poll interval, sends what is due.
pub async fn run(
    db: Db,
    transport: Transport,
    settings: MailSettings,
    wake: Arc<Notify>,
    shutdown: Shutdown,
) {
    let poll = Duration::from_secs(settings.poll_secs.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stop, shutdown) = (stop.clone(), shutdown.clone());
        rocket::tokio::spawn(async move {
            shutdown.await;
            stop.store(true, Ordering::SeqCst);
        });
    }
    let mut shutdown = shutdown;
    while !stopped(&stop) {
        if let Err(e) = drain(&db, &transport, &settings, None, &stop).await {
            tracing::warn!(error = %e, "mail worker: database unavailable");
        }
        rocket::tokio::select! {
            _ = wake.notified() => {}
            _ = rocket::tokio::time::sleep(poll) => {}
            _ = &mut shutdown => break,
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

    #[test]
    fn the_worker_id_names_this_process() {
        assert!(worker_id().contains(&format!("/{}/", std::process::id())));
        assert_eq!(worker_id(), worker_id());
    }
}
