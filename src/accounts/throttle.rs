//! Throttling of failed attempts per key (an account, a client address, a caller of the IVR): after
//! `max_failures` failures within the window, that key waits until the oldest one leaves it.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::crypto::{Keys, Stable};
use crate::db::schema::{account_addresses, login_failures};

/// The key of an account: its Matrix ID when known (`@agent:server`), else the address typed.
pub fn account_key(account: &str) -> String {
    format!("account:{}", account.trim().to_lowercase())
}

/// What an address is looked up by: an HMAC (with a key a rotation of the secret leaves as it
/// is), so the table holds no address in clear.
fn address_mac(keys: &Keys, address: &str) -> Vec<u8> {
    keys.stable(Stable::AccountAddress)
        .mac(address.trim().to_lowercase().as_bytes())
        .to_vec()
}

/// The Matrix ID an address logged in as before, so that failures with the address and with
/// the user name count for one account.
pub async fn account_of_address(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    address: &str,
) -> QueryResult<Option<String>> {
    account_addresses::table
        .find(address_mac(keys, address))
        .select(account_addresses::matrix_user_id)
        .first(conn)
        .await
        .optional()
}

/// Remembers the verified addresses of an account that just logged in.
pub async fn remember_addresses(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    matrix_user_id: &str,
    addresses: &[String],
    now: DateTime<Utc>,
) -> QueryResult<()> {
    if addresses.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = addresses
        .iter()
        .map(|a| {
            (
                account_addresses::address_mac.eq(address_mac(keys, a)),
                account_addresses::matrix_user_id.eq(matrix_user_id),
                account_addresses::seen_at.eq(now),
            )
        })
        .collect();
    diesel::insert_into(account_addresses::table)
        .values(rows)
        .on_conflict(account_addresses::address_mac)
        .do_update()
        .set((
            account_addresses::matrix_user_id
                .eq(diesel::upsert::excluded(account_addresses::matrix_user_id)),
            account_addresses::seen_at.eq(diesel::upsert::excluded(account_addresses::seen_at)),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets addresses not seen at a login for `days`.
pub async fn purge_addresses(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::delete(account_addresses::table.filter(account_addresses::seen_at.le(before)))
        .execute(conn)
        .await
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
