//! Conferences: the period booked, a number and a PIN drawn from openssl's CSPRNG and made unique
//! per number and period by the database's exclusion constraint, the details mail (with its
//! calendar invite) queued in the same transaction, and cancellation.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Europe::Paris;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;

use crate::config::AudioconfSettings;
use crate::crypto::{self, Keys, Stable};
use crate::db::schema::audioconf_conferences as conf;
use crate::mail::{self, Attachment, Mail, Mailer};
use crate::web::i18n::Lang;

use super::{format, ics};

const PIN_CONSTRAINT: &str = "audioconf_pin_unique_per_period";
/// Random draws per number before trying the next one (for large PIN spaces).
const DRAWS_PER_NUMBER: usize = 12;
/// Up to this many PINs per number, the free ones are listed exactly instead of drawn blindly.
const EXACT_SPACE: u64 = 10_000;

/// When a conference is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// A whole day (Europe/Paris), or `None` for a duration from now.
    pub all_day: Option<NaiveDate>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// Midnight at the start of `d` in Paris.
fn paris_midnight(d: NaiveDate) -> DateTime<Utc> {
    let naive = d.and_hms_opt(0, 0, 0).unwrap_or_default();
    Paris
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&naive))
}

impl Period {
    /// The whole day `d` in Paris (from now if it is today), ending at the next midnight.
    pub fn day(d: NaiveDate, now: DateTime<Utc>) -> Period {
        let start = paris_midnight(d).max(now);
        let end = paris_midnight(d + Duration::days(1));
        Period {
            all_day: Some(d),
            starts_at: start,
            ends_at: end.max(start),
        }
    }

    pub fn minutes(m: i64, now: DateTime<Utc>) -> Period {
        Period {
            all_day: None,
            starts_at: now,
            ends_at: now + Duration::minutes(m),
        }
    }
}

/// What a new conference needs.
pub struct NewConference<'a> {
    pub email: &'a str,
    pub period: Period,
    pub via: &'a str,
    pub lang: Lang,
}

/// A conference just created: everything to show and mail (the PIN only exists in clear here).
#[derive(Debug, Clone)]
pub struct Created {
    pub id: i64,
    pub public_id: String,
    pub number: String,
    pub pin: String,
    pub period: Period,
    pub cancel_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("every PIN of every number is taken for this period")]
    Exhausted,
    #[error("no dial-in number is configured")]
    NoNumbers,
    #[error(transparent)]
    Db(#[from] DieselError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error(transparent)]
    Mail(#[from] mail::MailError),
}

impl From<BookError> for crate::web::errors::AppError {
    fn from(e: BookError) -> Self {
        use crate::web::errors::AppError;
        match e {
            BookError::Db(e) | BookError::Mail(mail::MailError::Db(e)) => AppError::Query(e),
            BookError::Crypto(e) => e.into(),
            // No line to give: the operators must add numbers (logged as a 503).
            e @ (BookError::Exhausted | BookError::NoNumbers) => {
                AppError::Unavailable(e.to_string())
            }
            e @ BookError::Mail(_) => AppError::Internal(e.to_string()),
        }
    }
}

/// The HMAC the IVR looks up and the exclusion constraint compares.
pub fn pin_hmac(keys: &Keys, number: &str, pin: &str) -> Vec<u8> {
    keys.stable(Stable::AudioconfPin)
        .mac(pin_input(number, pin).as_bytes())
        .to_vec()
}

/// What a PIN is sealed for (its plain text is mailed again and shown to its owner).
pub const PIN_ENC_PURPOSE: &str = "audioconf-pin-enc";

fn pin_input(number: &str, pin: &str) -> String {
    format!("{number}|{pin}")
}

pub fn email_hmac(keys: &Keys, email: &str) -> Vec<u8> {
    keys.stable(Stable::AudioconfEmail)
        .mac(email.trim().to_lowercase().as_bytes())
        .to_vec()
}

pub fn pin_aad(public_id: &str) -> Vec<u8> {
    format!("audioconf-pin|{public_id}").into_bytes()
}

fn random_pin(len: u32) -> Result<String, crypto::CryptoError> {
    let n = crypto::random_below(10u64.pow(len))?;
    Ok(format!("{n:0width$}", width = len as usize))
}

/// The numbers in a random order (so load spreads over the pool).
fn shuffled(numbers: &[String]) -> Result<Vec<String>, crypto::CryptoError> {
    let mut v = numbers.to_vec();
    for i in (1..v.len()).rev() {
        let j = crypto::random_below(i as u64 + 1)? as usize;
        v.swap(i, j);
    }
    Ok(v)
}

/// Random PINs to try first on a number.
fn random_candidates(settings: &AudioconfSettings) -> Result<Vec<String>, BookError> {
    (0..DRAWS_PER_NUMBER)
        .map(|_| random_pin(settings.pin_length).map_err(BookError::from))
        .collect()
}

/// When the random draws all collided and the PIN space is small: every free PIN on `number`
/// for the period, in a random order (so nearly full pools still find the last free PINs).
async fn free_candidates(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    settings: &AudioconfSettings,
    number: &str,
    period: &Period,
) -> Result<Vec<String>, BookError> {
    let space = 10u64.pow(settings.pin_length);
    if space > EXACT_SPACE {
        return Ok(vec![]);
    }
    let taken: std::collections::HashSet<Vec<u8>> = conf::table
        .filter(conf::number.eq(number))
        .filter(conf::starts_at.lt(period.ends_at))
        .filter(conf::ends_at.gt(period.starts_at))
        .select(conf::pin_hmac)
        .load::<Vec<u8>>(conn)
        .await?
        .into_iter()
        .collect();
    let key = keys.stable(Stable::AudioconfPin);
    let width = settings.pin_length as usize;
    let mut free = Vec::new();
    for n in 0..space {
        let pin = format!("{n:0width$}");
        if !taken.contains(key.mac(pin_input(number, &pin).as_bytes()).as_slice()) {
            free.push(pin);
        }
    }
    shuffled(&free).map_err(BookError::from)
}

/// The exclusion constraint refused the PIN (another conference has it on this number then).
fn is_pin_conflict(e: &DieselError) -> bool {
    matches!(e, DieselError::DatabaseError(_, info) if info.constraint_name() == Some(PIN_CONSTRAINT))
}

/// Creates the conference and queues its details mail, atomically: both or neither.
pub async fn book(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    settings: &AudioconfSettings,
    mailer: &Mailer,
    new: NewConference<'_>,
    now: DateTime<Utc>,
) -> Result<Created, BookError> {
    if settings.numbers.is_empty() {
        return Err(BookError::NoNumbers);
    }
    let domain = super::domains::domain_of(new.email).unwrap_or_default();
    let email_mac = email_hmac(keys, new.email);
    conn.transaction::<_, BookError, _>(async |conn| {
        for number in shuffled(&settings.numbers)? {
            let mut pins = random_candidates(settings)?;
            let mut listed = false;
            while let Some(pin) = pins.pop() {
                if pins.is_empty() && !listed {
                    listed = true;
                    pins = free_candidates(conn, keys, settings, &number, &new.period).await?;
                }
                let public_id = crypto::random_token(12)?;
                let cancel_token = crypto::random_token(32)?;
                let mac = pin_hmac(keys, &number, &pin);
                let sealed = keys.encrypt(PIN_ENC_PURPOSE, pin.as_bytes(), &pin_aad(&public_id))?;
                // A savepoint per attempt: a PIN conflict rolls back this insert only.
                let inserted = conn
                    .transaction::<i64, DieselError, _>(async |conn| {
                        diesel::insert_into(conf::table)
                            .values((
                                conf::public_id.eq(&public_id),
                                conf::email.eq(new.email.trim()),
                                conf::email_domain.eq(&domain),
                                conf::email_hmac.eq(&email_mac),
                                conf::number.eq(&number),
                                conf::pin_hmac.eq(&mac),
                                conf::pin_enc.eq(&sealed),
                                conf::all_day.eq(new.period.all_day.is_some()),
                                conf::starts_at.eq(new.period.starts_at),
                                conf::ends_at.eq(new.period.ends_at),
                                conf::cancel_token_hash.eq(crypto::sha256(cancel_token.as_bytes())),
                                conf::via.eq(new.via),
                                conf::lang.eq(new.lang.code()),
                                conf::created_at.eq(now),
                            ))
                            .returning(conf::id)
                            .get_result(conn)
                            .await
                    })
                    .await;
                let id = match inserted {
                    Ok(id) => id,
                    Err(e) if is_pin_conflict(&e) => continue,
                    Err(e) => return Err(e.into()),
                };
                let created = Created {
                    id,
                    public_id,
                    number: number.clone(),
                    pin,
                    period: new.period,
                    cancel_token,
                };
                let details = details_mail(mailer, settings, new.email, new.lang, &created, now)?;
                mail::enqueue(conn, mailer, details, now).await?;
                return Ok(created);
            }
        }
        Err(BookError::Exhausted)
    })
    .await
}

/// What the pages and mails show of a conference.
pub fn view(
    settings: &AudioconfSettings,
    lang: Lang,
    number: &str,
    pin: &str,
    period: &Period,
) -> serde_json::Value {
    let day = period
        .all_day
        .unwrap_or_else(|| format::paris_date(period.starts_at));
    json!({
        "number": number,
        "number_national": format::national(number),
        "pin": pin,
        "pin_grouped": format::grouped(pin),
        "tel": format::tel_link(number, pin),
        "all_day": period.all_day.is_some(),
        "day": format::day(day, lang),
        "start": format::time(period.starts_at),
        "end": format::time(period.ends_at),
        "participant_limit": settings.participant_limit,
    })
}

fn calendar_text(lang: Lang, created: &Created) -> (String, String, String) {
    let summary = lang.t("audioconf.ics.summary").to_owned();
    let location = lang.tf(
        "audioconf.ics.location",
        &[
            ("number", &format::national(&created.number)),
            ("pin", &format::grouped(&created.pin)),
        ],
    );
    let description = lang.tf(
        "audioconf.ics.description",
        &[
            ("number", &format::national(&created.number)),
            ("pin", &format::grouped(&created.pin)),
            ("tel", &format::tel_link(&created.number, &created.pin)),
        ],
    );
    (summary, location, description)
}

fn details_mail<'a>(
    mailer: &Mailer,
    settings: &AudioconfSettings,
    to: &'a str,
    lang: Lang,
    created: &Created,
    now: DateTime<Utc>,
) -> Result<Mail<'a>, BookError> {
    let mut context = view(
        settings,
        lang,
        &created.number,
        &created.pin,
        &created.period,
    );
    context["cancel_url"] = json!(format!(
        "{}/audioconf/annuler/{}",
        mailer.public_url(),
        created.cancel_token
    ));
    let (summary, location, description) = calendar_text(lang, created);
    let uid = format!("{}@audioconf.portail-tchap", created.public_id);
    let invite = ics::calendar(&ics::Event {
        uid: &uid,
        summary: &summary,
        location: &location,
        description: &description,
        all_day: created.period.all_day,
        starts_at: created.period.starts_at,
        ends_at: created.period.ends_at,
        stamp: now,
        cancelled: false,
    });
    Ok(Mail {
        kind: "audioconf-details",
        to,
        lang,
        template: "audioconf_details",
        subject: lang.tf(
            "audioconf.mail.details.subject",
            &[("day", context["day"].as_str().unwrap_or_default())],
        ),
        context,
        attachments: vec![Attachment {
            filename: "audioconference.ics".into(),
            content_type: "text/calendar; charset=utf-8; method=PUBLISH".into(),
            body: invite.into_bytes(),
        }],
    })
}

/// A conference found by its cancellation link.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = conf)]
pub struct Conference {
    pub id: i64,
    pub public_id: String,
    pub email: Option<String>,
    pub number: String,
    pub pin_enc: Vec<u8>,
    pub all_day: bool,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub lang: String,
}

impl Conference {
    pub fn pin(&self, keys: &Keys) -> Result<String, crypto::CryptoError> {
        let plain = keys.decrypt(PIN_ENC_PURPOSE, &self.pin_enc, &pin_aad(&self.public_id))?;
        Ok(String::from_utf8_lossy(&plain).into_owned())
    }

    pub fn period(&self) -> Period {
        Period {
            // A day ends at the next Paris midnight: the day is the date just before the end.
            all_day: self
                .all_day
                .then(|| format::paris_date(self.ends_at - Duration::seconds(1))),
            starts_at: self.starts_at,
            ends_at: self.ends_at,
        }
    }

    pub fn active(&self, now: DateTime<Utc>) -> bool {
        self.cancelled_at.is_none() && self.ends_at > now
    }
}

pub async fn by_cancel_token(
    conn: &mut AsyncPgConnection,
    token: &str,
) -> QueryResult<Option<Conference>> {
    conf::table
        .filter(conf::cancel_token_hash.eq(crypto::sha256(token.as_bytes())))
        .select(Conference::as_select())
        .first(conn)
        .await
        .optional()
}

/// Ends the conference now (its PIN is free at once) and queues the confirmation mail.
/// `None` when it had already ended or been cancelled.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    mailer: &Mailer,
    keys: &Keys,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Option<Conference>, BookError> {
    end(conn, mailer, keys, Which::Token(token), now).await
}

/// Which conference to end: the one a cancel link names, or one by its ID (a room's line, ended
/// by the agent who started it).
pub enum Which<'a> {
    Token(&'a str),
    Id(i64),
}

/// Ends a conference now and queues the confirmation mail; `None` when it had already ended.
pub async fn end(
    conn: &mut AsyncPgConnection,
    mailer: &Mailer,
    keys: &Keys,
    which: Which<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Conference>, BookError> {
    conn.transaction::<_, BookError, _>(async |conn| {
        let id: Option<i64> = match which {
            Which::Token(token) => conf::table
                .filter(conf::cancel_token_hash.eq(crypto::sha256(token.as_bytes())))
                .select(conf::id)
                .first(conn)
                .await
                .optional()?,
            Which::Id(id) => Some(id),
        };
        let Some(id) = id else {
            return Ok(None);
        };
        let ended: Option<Conference> = diesel::update(
            conf::table
                .filter(conf::id.eq(id))
                .filter(conf::cancelled_at.is_null())
                .filter(conf::ends_at.gt(now)),
        )
        .set((
            conf::cancelled_at.eq(now),
            conf::ends_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                "GREATEST(starts_at, ",
            )
            .bind::<diesel::sql_types::Timestamptz, _>(now)
            .sql(")")),
        ))
        .returning(Conference::as_returning())
        .get_result(conn)
        .await
        .optional()?;
        let Some(c) = ended else {
            return Ok(None);
        };
        if let Some(email) = c.email.as_deref() {
            let lang = Lang::parse(&c.lang).unwrap_or(Lang::Fr);
            let pin = c.pin(keys)?;
            let context = json!({
                "number_national": format::national(&c.number),
                "pin_grouped": format::grouped(&pin),
            });
            mail::enqueue(
                conn,
                mailer,
                Mail {
                    kind: "audioconf-cancelled",
                    to: email,
                    lang,
                    template: "audioconf_cancelled",
                    subject: lang.t("audioconf.mail.cancelled.subject").to_owned(),
                    context,
                    attachments: vec![],
                },
                now,
            )
            .await?;
        }
        Ok(Some(c))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_runs_from_paris_midnight_or_now_to_the_next_midnight() {
        let now = Utc
            .with_ymd_and_hms(2026, 11, 21, 9, 30, 0)
            .single()
            .expect("t");
        let today = NaiveDate::from_ymd_opt(2026, 11, 21).expect("d");
        let p = Period::day(today, now);
        assert_eq!(p.starts_at, now);
        // Paris is UTC+1 in November: midnight is 23:00 UTC the day before.
        assert_eq!(
            p.ends_at,
            Utc.with_ymd_and_hms(2026, 11, 21, 23, 0, 0)
                .single()
                .expect("t")
        );
        let summer = NaiveDate::from_ymd_opt(2027, 7, 1).expect("d");
        let p = Period::day(summer, now);
        assert_eq!(
            p.starts_at,
            Utc.with_ymd_and_hms(2027, 6, 30, 22, 0, 0)
                .single()
                .expect("t")
        );
        assert_eq!(Period::minutes(60, now).ends_at - now, Duration::hours(1));
    }
}
