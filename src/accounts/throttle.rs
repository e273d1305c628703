//! Throttling of failed attempts per key (an account, a client address, a caller of the IVR): after
//! `max_failures` failures within the window, that key waits until the oldest one leaves it.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::schema::login_failures;

pub fn account_key(identifier: &str) -> String {
    format!("account:{}", identifier.trim().to_lowercase())
}

pub fn ip_key(ip: Option<std::net::IpAddr>) -> String {
    format!(
        "ip:{}",
        ip.map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into())
    )
}

/// Seconds to wait before another attempt for any of `keys`, if blocked.
pub async fn blocked_for(
    conn: &mut AsyncPgConnection,
    keys: &[String],
    max_failures: i64,
    window: Duration,
    now: DateTime<Utc>,
) -> QueryResult<Option<i64>> {
    let mut wait: Option<i64> = None;
    for key in keys {
        let times: Vec<DateTime<Utc>> = login_failures::table
            .filter(login_failures::key.eq(key))
            .filter(login_failures::failed_at.gt(now - window))
            .order(login_failures::failed_at.desc())
            .limit(max_failures)
            .select(login_failures::failed_at)
            .load(conn)
            .await?;
        if times.len() as i64 >= max_failures {
            // Free again when the oldest of the last `max_failures` failures leaves the window.
            if let Some(oldest) = times.last() {
                let secs = (*oldest + window - now).num_seconds().max(1);
                wait = Some(wait.map_or(secs, |w| w.max(secs)));
            }
        }
    }
    Ok(wait)
}

pub async fn record_failure(
    conn: &mut AsyncPgConnection,
    keys: &[String],
    now: DateTime<Utc>,
) -> QueryResult<()> {
    let rows: Vec<_> = keys
        .iter()
        .map(|k| (login_failures::key.eq(k), login_failures::failed_at.eq(now)))
        .collect();
    diesel::insert_into(login_failures::table)
        .values(rows)
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets failures from before `before` (run by the clean-up job with the longest window).
pub async fn purge(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(login_failures::table.filter(login_failures::failed_at.le(before)))
        .execute(conn)
        .await
}
