//! Booking by email: a request and its magic link (32 random bytes, stored as SHA-256, single use,
//! expiring), limits per address and per client address, and the confirmation that books.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bytea, Date, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;

use crate::config::AudioconfSettings;
use crate::crypto::{self, Keys, Stable};
use crate::db::schema::audioconf_requests as req;
use crate::mail::{Mail, Mailer};
use crate::web::i18n::Lang;

use super::booking::{self, BookError, Created, NewConference, Period};
use super::format;

/// What the agent chose: a whole day, or a duration from the moment they confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Day(NaiveDate),
    Minutes(i64),
}

impl Choice {
    pub fn period(self, now: DateTime<Utc>) -> Period {
        match self {
            Choice::Day(d) => Period::day(d, now),
            Choice::Minutes(m) => Period::minutes(m, now),
        }
    }

    /// "le samedi 21 novembre 2026" / "1 h 30" for mails and pages.
    pub fn label(self, lang: Lang) -> String {
        match self {
            Choice::Day(d) => format::day(d, lang),
            Choice::Minutes(m) => duration_label(m, lang),
        }
    }
}

pub fn duration_label(m: i64, lang: Lang) -> String {
    match (m / 60, m % 60) {
        (0, min) => lang.tf("audioconf.minutes", &[("n", &min.to_string())]),
        (h, 0) => lang.tf("audioconf.hours", &[("n", &h.to_string())]),
        (h, min) => format!("{h} h {min:02}"),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    Email,
    Ip,
}

fn ip_hmac(keys: &Keys, ip: Option<std::net::IpAddr>) -> Vec<u8> {
    let ip = ip.map(|i| i.to_string()).unwrap_or_default();
    keys.stable(Stable::AudioconfIp).mac(ip.as_bytes()).to_vec()
}

/// How many of the last 24 hours' requests the daily limits see, each count stopping at its
/// limit (`LIMIT`, so a flood from one address costs no more than the limit's worth of index
/// entries), in one statement.
#[derive(QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    by_email: i64,
    #[diesel(sql_type = BigInt)]
    direct: i64,
    #[diesel(sql_type = BigInt)]
    by_ip: i64,
}

/// Whether the address (its requests and Tchap bookings) and the client address (its requests)
/// reached their daily limits: `(email, ip)`. Without `ip_mac`, only the address is counted.
async fn over_limits(
    conn: &mut AsyncPgConnection,
    settings: &AudioconfSettings,
    email_mac: &[u8],
    ip_mac: Option<&[u8]>,
    now: DateTime<Utc>,
) -> QueryResult<(bool, bool)> {
    let max_email = settings.max_requests_per_email;
    let max_ip = settings.max_requests_per_ip;
    struct Limits;
    let statement = diesel::sql_query(
        "SELECT
             (SELECT count(*) FROM (SELECT 1 FROM audioconf_requests
                 WHERE email_hmac = $1 AND created_at > $2 LIMIT $3) e) AS by_email,
             (SELECT count(*) FROM (SELECT 1 FROM audioconf_conferences
                 WHERE email_hmac = $1 AND via <> 'email' AND created_at > $2 LIMIT $3) d) AS direct,
             (SELECT count(*) FROM (SELECT 1 FROM audioconf_requests
                 WHERE ip_hmac = $4 AND created_at > $2 LIMIT $5) i) AS by_ip",
    )
    .bind::<Bytea, _>(email_mac)
    .bind::<Timestamptz, _>(now - Duration::hours(24))
    .bind::<BigInt, _>(max_email)
    .bind::<Nullable<Bytea>, _>(ip_mac)
    .bind::<BigInt, _>(max_ip);
    let c: Counts = crate::db::prepared::<Limits, _>(statement)
        .get_result(conn)
        .await?;
    Ok((
        c.by_email + c.direct >= max_email,
        ip_mac.is_some() && c.by_ip >= max_ip,
    ))
}

/// Whether this address reached its daily limit (requests and Tchap bookings of the last 24 h).
pub async fn over_email_limit(
    conn: &mut AsyncPgConnection,
    settings: &AudioconfSettings,
    email_mac: &[u8],
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    Ok(over_limits(conn, settings, email_mac, None, now).await?.0)
}

/// Records the request and queues the mail with its link. `Err(Limited)` when a daily limit is
/// reached (nothing is recorded then).
#[allow(clippy::too_many_arguments)]
pub async fn create(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    mailer: &Mailer,
    settings: &AudioconfSettings,
    email: &str,
    choice: Choice,
    ip: Option<std::net::IpAddr>,
    lang: Lang,
    now: DateTime<Utc>,
) -> Result<Result<(), Limited>, BookError> {
    let email_mac = booking::email_hmac(keys, email);
    let ip_mac = ip_hmac(keys, ip);
    match over_limits(conn, settings, &email_mac, Some(&ip_mac), now).await? {
        (true, _) => return Ok(Err(Limited::Email)),
        (_, true) => return Ok(Err(Limited::Ip)),
        _ => {}
    }
    let token = crypto::random_token(32)?;
    let (day, minutes) = match choice {
        Choice::Day(d) => (Some(d), None),
        Choice::Minutes(m) => (None, Some(m as i32)),
    };
    let link = format!("{}/audioconf/confirmer/{token}", mailer.public_url());
    let mail = mailer.build(
        &Mail {
            kind: "audioconf-link",
            to: email.trim(),
            lang,
            template: "audioconf_link",
            subject: lang.t("audioconf.mail.link.subject").to_owned(),
            context: json!({
                "link": link,
                "ttl": settings.link_ttl_minutes,
                "choice": choice.label(lang),
            }),
            attachments: vec![],
        },
        now,
    )?;
    // The request and its mail in the outbox in one statement: both or neither, without a
    // transaction's three extra round trips; kept prepared.
    struct CreateRequest;
    let statement = diesel::sql_query(
        "WITH r AS (
             INSERT INTO audioconf_requests (token_hash, email, email_hmac, ip_hmac, day,
                 duration_minutes, lang, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9))
         INSERT INTO outbox (message_id, kind, sender, recipients, raw, next_attempt_at, created_at)
         VALUES ($10, $11, $12, $13, $14, $8, $8)",
    )
    .bind::<Bytea, _>(crypto::sha256(token.as_bytes()))
    .bind::<Text, _>(email.trim())
    .bind::<Bytea, _>(&email_mac)
    .bind::<Bytea, _>(&ip_mac)
    .bind::<Nullable<Date>, _>(day)
    .bind::<Nullable<Integer>, _>(minutes)
    .bind::<Text, _>(lang.code())
    .bind::<Timestamptz, _>(now)
    .bind::<Timestamptz, _>(now + Duration::minutes(settings.link_ttl_minutes))
    .bind::<Text, _>(&mail.message_id)
    .bind::<Text, _>("audioconf-link")
    .bind::<Text, _>(&mail.sender)
    .bind::<Array<Nullable<Text>>, _>(
        mail.recipients
            .iter()
            .cloned()
            .map(Some)
            .collect::<Vec<_>>(),
    )
    .bind::<Bytea, _>(&mail.raw);
    crate::db::prepared::<CreateRequest, _>(statement)
        .execute(conn)
        .await?;
    Ok(Ok(()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    Unknown,
    Used,
    Expired,
}

/// A pending request, as the confirmation page shows it.
pub struct Pending {
    pub email: String,
    pub choice: Choice,
}

fn choice_of(day: Option<NaiveDate>, minutes: Option<i32>) -> Choice {
    match (day, minutes) {
        (Some(d), _) => Choice::Day(d),
        (None, m) => Choice::Minutes(m.unwrap_or(60) as i64),
    }
}

/// Looks the link up without using it (the GET that mail scanners may follow).
pub async fn pending(
    conn: &mut AsyncPgConnection,
    token: &str,
    now: DateTime<Utc>,
) -> QueryResult<Result<Pending, LinkError>> {
    type Row = (
        Option<String>,
        Option<NaiveDate>,
        Option<i32>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
    );
    let row: Option<Row> = req::table
        .filter(req::token_hash.eq(crypto::sha256(token.as_bytes())))
        .select((
            req::email,
            req::day,
            req::duration_minutes,
            req::expires_at,
            req::used_at,
        ))
        .first(conn)
        .await
        .optional()?;
    Ok(match row {
        None => Err(LinkError::Unknown),
        Some((_, _, _, _, Some(_))) => Err(LinkError::Used),
        Some((_, day, _, expires, _)) if expires <= now || day_passed(day, now) => {
            Err(LinkError::Expired)
        }
        Some((email, day, minutes, _, None)) => Ok(Pending {
            email: email.unwrap_or_default(),
            choice: choice_of(day, minutes),
        }),
    })
}

fn day_passed(day: Option<NaiveDate>, now: DateTime<Utc>) -> bool {
    day.is_some_and(|d| d < format::paris_date(now))
}

/// Uses the link and books, in one transaction: when no PIN is free, the link stays usable.
pub async fn confirm(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    mailer: &Mailer,
    settings: &AudioconfSettings,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Result<(Created, String, Lang), LinkError>, BookError> {
    let hash = crypto::sha256(token.as_bytes());
    conn.transaction::<_, BookError, _>(async |conn| {
        type Claimed = (Option<String>, Option<NaiveDate>, Option<i32>, String);
        let claimed: Option<Claimed> = diesel::update(
            req::table
                .filter(req::token_hash.eq(&hash))
                .filter(req::used_at.is_null())
                .filter(req::expires_at.gt(now)),
        )
        .set(req::used_at.eq(now))
        .returning((req::email, req::day, req::duration_minutes, req::lang))
        .get_result(conn)
        .await
        .optional()?;
        let Some((Some(email), day, minutes, lang)) = claimed else {
            let why = match pending(conn, token, now).await? {
                Err(e) => e,
                Ok(_) => LinkError::Unknown,
            };
            return Ok(Err(why));
        };
        if day_passed(day, now) {
            return Ok(Err(LinkError::Expired));
        }
        let lang = Lang::parse(&lang).unwrap_or(Lang::Fr);
        let created = booking::book(
            conn,
            keys,
            settings,
            mailer,
            NewConference {
                email: &email,
                period: choice_of(day, minutes).period(now),
                via: "email",
                lang,
            },
            now,
        )
        .await?;
        Ok(Ok((created, email, lang)))
    })
    .await
}
