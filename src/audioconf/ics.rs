//! The calendar invite attached to the details mail (RFC 5545): one VEVENT with the dial-in in
//! LOCATION and DESCRIPTION, all-day (DATE values) or timed (UTC).

use chrono::{DateTime, Duration, NaiveDate, Utc};

pub struct Event<'a> {
    pub uid: &'a str,
    pub summary: &'a str,
    pub location: &'a str,
    pub description: &'a str,
    /// All day: the date (Europe/Paris) of the conference.
    pub all_day: Option<NaiveDate>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub stamp: DateTime<Utc>,
    /// CANCELLED for the cancellation mail.
    pub cancelled: bool,
}

/// TEXT escaping (RFC 5545 §3.3.11).
fn text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(';', "\\;")
        .replace(',', "\\,")
        .replace("\r\n", "\\n")
        .replace('\n', "\\n")
}

/// Folds a content line at 75 octets, never inside a UTF-8 character (§3.1).
fn fold(line: &str) -> String {
    let mut out = String::new();
    let mut len = 0;
    for ch in line.chars() {
        let n = ch.len_utf8();
        if len + n > 75 {
            out.push_str("\r\n ");
            len = 1;
        }
        out.push(ch);
        len += n;
    }
    out.push_str("\r\n");
    out
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

pub fn calendar(e: &Event<'_>) -> String {
    let mut lines = vec![
        "BEGIN:VCALENDAR".to_owned(),
        "VERSION:2.0".to_owned(),
        "PRODID:-//Portail Tchap//AudioConf//FR".to_owned(),
        "CALSCALE:GREGORIAN".to_owned(),
        format!("METHOD:{}", if e.cancelled { "CANCEL" } else { "PUBLISH" }),
        "BEGIN:VEVENT".to_owned(),
        format!("UID:{}", e.uid),
        format!("DTSTAMP:{}", utc(e.stamp)),
    ];
    match e.all_day {
        Some(d) => {
            lines.push(format!("DTSTART;VALUE=DATE:{}", d.format("%Y%m%d")));
            lines.push(format!(
                "DTEND;VALUE=DATE:{}",
                (d + Duration::days(1)).format("%Y%m%d")
            ));
        }
        None => {
            lines.push(format!("DTSTART:{}", utc(e.starts_at)));
            lines.push(format!("DTEND:{}", utc(e.ends_at)));
        }
    }
    lines.push(format!("SUMMARY:{}", text(e.summary)));
    lines.push(format!("LOCATION:{}", text(e.location)));
    lines.push(format!("DESCRIPTION:{}", text(e.description)));
    lines.push(format!(
        "STATUS:{}",
        if e.cancelled {
            "CANCELLED"
        } else {
            "CONFIRMED"
        }
    ));
    lines.push("TRANSP:TRANSPARENT".to_owned());
    lines.push("END:VEVENT".to_owned());
    lines.push("END:VCALENDAR".to_owned());
    lines.iter().map(|l| fold(l)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_escaped_and_folded_without_breaking_characters() {
        let long = "é".repeat(60);
        let folded = fold(&format!("DESCRIPTION:{long}"));
        for l in folded.split("\r\n") {
            assert!(l.len() <= 75, "{l}");
        }
        assert_eq!(
            folded.replace("\r\n ", "").trim_end(),
            format!("DESCRIPTION:{long}")
        );
        assert_eq!(text("a,b;c\\d\ne"), "a\\,b\\;c\\\\d\\ne");
    }
}
