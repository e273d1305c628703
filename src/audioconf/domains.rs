//! Which email addresses may book: domain rules from the settings and from the administrators'
//! page. The check fails closed: an address without a domain, or a database error, is refused.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::schema::audioconf_domains;

/// The domain of an address, lowercased; `None` when it has none.
pub fn domain_of(email: &str) -> Option<String> {
    let (local, domain) = email.trim().rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some(domain.to_ascii_lowercase())
}

/// Whether `domain` matches `rule`: the same domain, or for ".gouv.fr" any domain ending with it.
pub fn matches(rule: &str, domain: &str) -> bool {
    match rule.strip_prefix('.') {
        Some(suffix) => domain
            .strip_suffix(suffix)
            .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        None => rule == domain,
    }
}

pub async fn stored_rules(conn: &mut AsyncPgConnection) -> QueryResult<Vec<String>> {
    audioconf_domains::table
        .order(audioconf_domains::rule)
        .select(audioconf_domains::rule)
        .load(conn)
        .await
}

/// Whether `email` may book, given the settings' rules and the stored ones.
pub async fn allowed(
    conn: &mut AsyncPgConnection,
    configured: &[String],
    email: &str,
) -> QueryResult<bool> {
    let Some(domain) = domain_of(email) else {
        return Ok(false);
    };
    if configured.iter().any(|r| matches(r, &domain)) {
        return Ok(true);
    }
    Ok(stored_rules(conn)
        .await?
        .iter()
        .any(|r| matches(r, &domain)))
}

/// Adds a rule; false when it already exists.
pub async fn add(
    conn: &mut AsyncPgConnection,
    rule: &str,
    by: &str,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    let n = diesel::insert_into(audioconf_domains::table)
        .values((
            audioconf_domains::rule.eq(rule),
            audioconf_domains::added_by.eq(by),
            audioconf_domains::created_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

pub async fn remove(conn: &mut AsyncPgConnection, rule: &str) -> QueryResult<bool> {
    let n = diesel::delete(audioconf_domains::table.filter(audioconf_domains::rule.eq(rule)))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_exact_domains_and_suffixes_only() {
        assert!(matches(".gouv.fr", "numerique.gouv.fr"));
        assert!(matches(".gouv.fr", "a.b.gouv.fr"));
        assert!(
            !matches(".gouv.fr", "gouv.fr"),
            "a suffix needs a subdomain"
        );
        assert!(!matches(".gouv.fr", "evilgouv.fr"));
        assert!(!matches(".gouv.fr", "gouv.fr.evil.com"));
        assert!(matches("agent.gouv.fr", "agent.gouv.fr"));
        assert!(!matches("agent.gouv.fr", "x.agent.gouv.fr"));
        assert_eq!(
            domain_of(" Alice@Numerique.GOUV.fr "),
            Some("numerique.gouv.fr".into())
        );
        assert_eq!(domain_of("nodomain"), None);
        assert_eq!(domain_of("@gouv.fr"), None);
    }
}
