//! AudioConf statistics without JavaScript: conferences booked per day over 30 days, as an inline
//! SVG bar chart and as the same figures in a table; for administrators, the top domains.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use diesel::sql_types::{BigInt, Date, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::AsyncPgConnection;
use rocket::{get, State};
use serde::Serialize;
use serde_json::json;

use crate::db::Db;
use crate::web::errors::AppError;
use crate::web::form::Page;
use crate::web::i18n::Lang;
use crate::web::page::Ctx;

use super::format;

/// Days shown.
pub const DAYS: i64 = 30;
/// Domains shown to administrators.
const TOP: i64 = 10;
/// The chart's drawing box (the SVG scales to the page width).
const WIDTH: i64 = 600;
const HEIGHT: i64 = 200;

#[derive(QueryableByName)]
struct DayCount {
    #[diesel(sql_type = Date)]
    day: NaiveDate,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName, Serialize)]
pub struct DomainCount {
    #[diesel(sql_type = Text)]
    pub domain: String,
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// Conferences booked on each of the `DAYS` days ending with `now`'s day (Europe/Paris), oldest
/// first, days without any included.
pub async fn per_day(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> diesel::QueryResult<Vec<(NaiveDate, i64)>> {
    use diesel_async::RunQueryDsl;
    let today = format::paris_date(now);
    let first = today - Duration::days(DAYS - 1);
    let rows: Vec<DayCount> = diesel::sql_query(
        "SELECT (created_at AT TIME ZONE 'Europe/Paris')::date AS day, count(*) AS n \
         FROM audioconf_conferences \
         WHERE (created_at AT TIME ZONE 'Europe/Paris')::date BETWEEN $1 AND $2 \
         GROUP BY 1",
    )
    .bind::<Date, _>(first)
    .bind::<Date, _>(today)
    .load(conn)
    .await?;
    Ok((0..DAYS)
        .map(|i| {
            let d = first + Duration::days(i);
            let n = rows.iter().find(|r| r.day == d).map_or(0, |r| r.n);
            (d, n)
        })
        .collect())
}

/// The domains that booked most over the same days.
pub async fn top_domains(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> diesel::QueryResult<Vec<DomainCount>> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(
        "SELECT email_domain AS domain, count(*) AS n FROM audioconf_conferences \
         WHERE created_at >= $1 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $2",
    )
    .bind::<Timestamptz, _>(now - Duration::days(DAYS))
    .bind::<BigInt, _>(TOP)
    .load(conn)
    .await
}

#[derive(Serialize)]
struct Bar {
    day: String,
    day_iso: String,
    n: i64,
    x: i64,
    y: i64,
    width: i64,
    height: i64,
}

/// The bars of the chart, in the SVG's coordinates (0,0 at the top left).
fn bars(days: &[(NaiveDate, i64)], lang: Lang) -> Vec<Bar> {
    let max = days.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let slot = WIDTH / days.len().max(1) as i64;
    days.iter()
        .enumerate()
        .map(|(i, (d, n))| {
            // A day with bookings always shows at least a sliver.
            let height = if *n == 0 {
                0
            } else {
                (n * (HEIGHT - 20) / max).max(2)
            };
            Bar {
                day: format::day(*d, lang),
                day_iso: d.to_string(),
                n: *n,
                x: i as i64 * slot + 2,
                y: HEIGHT - height,
                width: slot - 4,
                height,
            }
        })
        .collect()
}

#[get("/audioconf/statistiques")]
pub async fn page(ctx: Ctx, db: &State<Db>) -> Result<Page, AppError> {
    let now = Utc::now();
    let mut conn = db.get().await?;
    let days = per_day(&mut conn, now).await?;
    let total: i64 = days.iter().map(|(_, n)| n).sum();
    let busiest = days
        .iter()
        .max_by_key(|(_, n)| *n)
        .filter(|(_, n)| *n > 0)
        .map(|(d, n)| json!({ "day": format::day(*d, ctx.lang), "n": n }));
    let top = if ctx.admin {
        Some(top_domains(&mut conn, now).await?)
    } else {
        None
    };
    Ok(Page::ok(ctx.render(
        "audioconf/stats",
        json!({
            "bars": bars(&days, ctx.lang),
            "total": total,
            "busiest": busiest,
            "max": days.iter().map(|(_, n)| *n).max().unwrap_or(0),
            "first": days.first().map(|(d, _)| format::day(*d, ctx.lang)),
            "last": days.last().map(|(d, _)| format::day(*d, ctx.lang)),
            "width": WIDTH,
            "height": HEIGHT,
            "show_top": top.is_some(),
            "top": top,
        }),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_busiest_day_and_show_every_booking() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 1).expect("date");
        let days: Vec<(NaiveDate, i64)> = (0..30)
            .map(|i| (d + Duration::days(i), [0, 1, 180][i as usize % 3]))
            .collect();
        let b = bars(&days, Lang::Fr);
        assert_eq!(b.len(), 30);
        assert_eq!(b[0].height, 0);
        assert!(b[1].height >= 2, "one booking is visible");
        assert_eq!(b[2].height, HEIGHT - 20);
        assert_eq!(b[2].y + b[2].height, HEIGHT);
        assert!(b.iter().all(|b| b.x + b.width <= WIDTH));
    }
}
