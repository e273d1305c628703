//! The key ring's database side. [`load`] gives the ring its stable keys (written once, from the
//! secret that sealed the data already there, and never derived again), and [`reencrypt`] moves
//! every sealed value to the current `secret_key`, after which older keys can be retired.
//!
//! This is the one place that knows every sealed column, so that a rotation cannot forget one;
//! each part still owns its purpose and its associated data (the row a value is bound to).

use std::fmt::Write;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::accounts::login::{token_aad, TOKEN_PURPOSE};
use crate::audioconf::booking::{pin_aad, PIN_ENC_PURPOSE};
use crate::crypto::{CryptoError, Keys, Stable};
use crate::db::schema::{audioconf_conferences, oidc_keys, sessions, stable_keys};
use crate::oidc::keys::PURPOSE as SIGNING_KEY_PURPOSE;

/// What the stable keys are sealed for.
const STABLE_PURPOSE: &str = "stable-key";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("database: {0}")]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("stable key {0}: {1}; put the secret in use before the rotation back in previous_secret_keys")]
    Stable(&'static str, CryptoError),
}

/// `keys` with its stable keys, read from the database. On the first start after the migration
/// they are written from the secret that sealed the data already there (the current one on a new
/// database), so no `sub`, `sid` or stored HMAC changes with the upgrade, nor with any rotation.
pub async fn load(conn: &mut AsyncPgConnection, keys: &Keys) -> Result<Keys, SecretsError> {
    let mut rows = stored(conn).await?;
    let missing: Vec<Stable> = Stable::ALL
        .into_iter()
        .filter(|s| !rows.iter().any(|(p, _)| p == s.purpose()))
        .collect();
    if !missing.is_empty() {
        let origin = secret_in_use(conn, keys).await?;
        for s in missing {
            let key = keys.derive_with(origin, s.purpose());
            let sealed = keys.encrypt(STABLE_PURPOSE, &key, s.purpose().as_bytes())?;
            // Another instance starting at the same time may write first: its value wins.
            diesel::insert_into(stable_keys::table)
                .values((
                    stable_keys::purpose.eq(s.purpose()),
                    stable_keys::key_enc.eq(sealed),
                ))
                .on_conflict(stable_keys::purpose)
                .do_nothing()
                .execute(conn)
                .await?;
        }
        tracing::info!(secret = origin, "stable keys written");
        rows = stored(conn).await?;
    }
    let mut opened: [Vec<u8>; Stable::ALL.len()] = Default::default();
    for (slot, s) in opened.iter_mut().zip(Stable::ALL) {
        let sealed = rows
            .iter()
            .find(|(p, _)| p == s.purpose())
            .map(|(_, k)| k.as_slice())
            .unwrap_or_default();
        *slot = keys
            .decrypt(STABLE_PURPOSE, sealed, s.purpose().as_bytes())
            .map_err(|e| SecretsError::Stable(s.purpose(), e))?;
    }
    Ok(keys.with_stable(opened))
}

async fn stored(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(String, Vec<u8>)>> {
    stable_keys::table
        .select((stable_keys::purpose, stable_keys::key_enc))
        .load(conn)
        .await
}

/// Which secret of the ring sealed the newest signing key, session or PIN (0, the current one,
/// when there is none): the stable keys are that secret's own derivations, as before the upgrade.
async fn secret_in_use(conn: &mut AsyncPgConnection, keys: &Keys) -> QueryResult<usize> {
    let key: Option<(String, Vec<u8>)> = oidc_keys::table
        .order(oidc_keys::id.desc())
        .select((oidc_keys::kid, oidc_keys::private_der_enc))
        .first(conn)
        .await
        .optional()?;
    if let Some(Ok((_, index))) = key
        .as_ref()
        .map(|(kid, sealed)| keys.open(SIGNING_KEY_PURPOSE, sealed, kid.as_bytes()))
    {
        return Ok(index);
    }
    let session: Option<(String, String, Vec<u8>)> = sessions::table
        .order(sessions::id.desc())
        .select((
            sessions::matrix_user_id,
            sessions::device_id,
            sessions::access_token_enc,
        ))
        .first(conn)
        .await
        .optional()?;
    if let Some(Ok((_, index))) = session
        .as_ref()
        .map(|(user, device, sealed)| keys.open(TOKEN_PURPOSE, sealed, &token_aad(user, device)))
    {
        return Ok(index);
    }
    let pin: Option<(String, Vec<u8>)> = audioconf_conferences::table
        .order(audioconf_conferences::id.desc())
        .select((
            audioconf_conferences::public_id,
            audioconf_conferences::pin_enc,
        ))
        .first(conn)
        .await
        .optional()?;
    if let Some(Ok((_, index))) = pin
        .as_ref()
        .map(|(id, sealed)| keys.open(PIN_ENC_PURPOSE, sealed, &pin_aad(id)))
    {
        return Ok(index);
    }
    if key.is_some() || session.is_some() || pin.is_some() {
        // Data from a secret no longer configured: its subjects cannot be kept, say so.
        tracing::warn!("no configured secret opens the data already stored: stable keys are derived from secret_key, so subjects and HMACs differ from before");
    }
    Ok(0)
}

/// What `reencrypt` did to one column.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Sealed again under `secret_key`.
    pub resealed: u64,
    /// Already under `secret_key`: left as they are.
    pub current: u64,
    /// Opened by no key of the ring: left as they are (and reported).
    pub unreadable: u64,
    /// Changed or deleted by the running portal meanwhile (so already under `secret_key`).
    pub changed: u64,
}

impl Counts {
    fn add(&mut self, keys: &Keys, purpose: &str, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        match keys.reseal(purpose, sealed, aad) {
            Ok(Some(new)) => Some(new),
            Ok(None) => {
                self.current += 1;
                None
            }
            Err(_) => {
                self.unreadable += 1;
                None
            }
        }
    }

    fn written(&mut self, rows: usize) {
        if rows == 1 {
            self.resealed += 1;
        } else {
            self.changed += 1;
        }
    }
}

/// Each sealed column and what `reencrypt` did to it.
#[derive(Debug, Default)]
pub struct Report(pub Vec<(&'static str, Counts)>);

impl Report {
    pub fn unreadable(&self) -> u64 {
        self.0.iter().map(|(_, c)| c.unreadable).sum()
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for (what, c) in &self.0 {
            let _ = writeln!(
                out,
                "{what}: {} re-encrypted, {} already under secret_key, {} unreadable, {} changed meanwhile",
                c.resealed, c.current, c.unreadable, c.changed
            );
        }
        out
    }
}

/// Reseals one sealed column of `$table` (`id` keyed), `$batch` rows at a time: the row's
/// `$col`s give the purpose and associated data it is bound to; a row is replaced only if it still
/// holds what was read. Evaluates to the column's [`Counts`]. A macro, as diesel's tables are
/// distinct types: the loop is written once, for each table.
macro_rules! reseal_column {
    ($conn:expr, $keys:expr, $batch:expr, $table:ident, $enc:ident, ($($col:ident),+),
     |$($var:ident),+| $bound:expr) => {{
        let mut c = Counts::default();
        let mut after = 0i64;
        loop {
            let rows: Vec<(i64, $(reseal_column!(@string $col),)+ Vec<u8>)> = $table::table
                .filter($table::id.gt(after))
                .order($table::id)
                .limit($batch)
                .select(($table::id, $($table::$col,)+ $table::$enc))
                .load($conn)
                .await?;
            let Some(last) = rows.last().map(|r| r.0) else {
                break;
            };
            for (id, $($var,)+ sealed) in rows {
                let (purpose, aad) = $bound;
                if let Some(new) = c.add($keys, purpose, &sealed, &aad) {
                    let n = diesel::update(
                        $table::table
                            .filter($table::id.eq(id))
                            .filter($table::$enc.eq(&sealed)),
                    )
                    .set($table::$enc.eq(new))
                    .execute($conn)
                    .await?;
                    c.written(n);
                }
            }
            after = last;
        }
        c
    }};
    (@string $col:ident) => { String };
}

/// Seals every encrypted value again under the current secret, `batch` rows at a time. Safe while
/// portals serve: a row is only replaced if it still holds what was read (what the portal wrote
/// meanwhile is under the current secret already). Running it again re-encrypts nothing.
pub async fn reencrypt(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    batch: i64,
) -> Result<Report, SecretsError> {
    // The stable keys exist before anything is moved, written from the secret in use.
    load(conn, keys).await?;
    let mut report = Report::default();

    let mut c = Counts::default();
    for (purpose, sealed) in stored(conn).await? {
        if let Some(new) = c.add(keys, STABLE_PURPOSE, &sealed, purpose.as_bytes()) {
            let n = diesel::update(
                stable_keys::table
                    .filter(stable_keys::purpose.eq(&purpose))
                    .filter(stable_keys::key_enc.eq(&sealed)),
            )
            .set(stable_keys::key_enc.eq(new))
            .execute(conn)
            .await?;
            c.written(n);
        }
    }
    report
        .0
        .push(("stable keys (subjects, sid, AudioConf HMACs)", c));

    report.0.push((
        "signing keys",
        reseal_column!(
            conn,
            keys,
            batch,
            oidc_keys,
            private_der_enc,
            (kid),
            |kid| (SIGNING_KEY_PURPOSE, kid.into_bytes())
        ),
    ));
    report.0.push((
        "Matrix access tokens (sessions)",
        reseal_column!(
            conn,
            keys,
            batch,
            sessions,
            access_token_enc,
            (matrix_user_id, device_id),
            |user, device| (TOKEN_PURPOSE, token_aad(&user, &device))
        ),
    ));
    report.0.push((
        "AudioConf PINs",
        reseal_column!(
            conn,
            keys,
            batch,
            audioconf_conferences,
            pin_enc,
            (public_id),
            |public_id| (PIN_ENC_PURPOSE, pin_aad(&public_id))
        ),
    ));
    Ok(report)
}
