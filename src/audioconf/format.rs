//! How numbers, PINs and dates are shown to agents.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Europe::Paris;

use crate::web::i18n::Lang;

/// A French E.164 number as dialled in France ("+33189000000" → "01 89 00 00 00"); others as given.
pub fn national(number: &str) -> String {
    match number.strip_prefix("+33") {
        Some(rest) if rest.len() == 9 => {
            let digits = format!("0{rest}");
            digits
                .as_bytes()
                .chunks(2)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        }
        _ => number.to_owned(),
    }
}

/// A PIN in groups of three from the left ("123456789" → "123 456 789").
pub fn grouped(pin: &str) -> String {
    pin.as_bytes()
        .chunks(3)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `tel:` link that dials the number, waits, then types the PIN and `#`.
pub fn tel_link(number: &str, pin: &str) -> String {
    format!("tel:{number},,{pin}%23")
}

const DAYS_FR: [&str; 7] = [
    "lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche",
];
const MONTHS_FR: [&str; 12] = [
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
];

/// "vendredi 21 novembre 2026" / "Friday 21 November 2026".
pub fn day(d: NaiveDate, lang: Lang) -> String {
    match lang {
        Lang::Fr => format!(
            "{} {} {} {}",
            DAYS_FR[d.weekday().num_days_from_monday() as usize],
            d.day(),
            MONTHS_FR[d.month0() as usize],
            d.year()
        ),
        Lang::En => d.format("%A %-d %B %Y").to_string(),
    }
}

/// The time in Paris, "14:30" / "2:30 pm" style kept simple: 24 h in both languages.
pub fn time(t: DateTime<Utc>) -> String {
    t.with_timezone(&Paris).format("%H:%M").to_string()
}

/// The date in Paris of an instant.
pub fn paris_date(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&Paris).date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_pins_and_days_read_as_in_france() {
        assert_eq!(national("+33189000000"), "01 89 00 00 00");
        assert_eq!(national("+441234567890"), "+441234567890");
        assert_eq!(grouped("123456789"), "123 456 789");
        assert_eq!(grouped("1234"), "123 4");
        assert_eq!(
            tel_link("+33189000000", "123456789"),
            "tel:+33189000000,,123456789%23"
        );
        let d = NaiveDate::from_ymd_opt(2026, 11, 21).expect("date");
        assert_eq!(day(d, Lang::Fr), "samedi 21 novembre 2026");
        assert_eq!(day(d, Lang::En), "Saturday 21 November 2026");
    }
}
