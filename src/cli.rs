//! Operator commands other than `serve`: each returns what to print, or an error message.
//! Arguments are matched by hand: a few fixed words and flags do not need a parser crate.

use std::fmt::Write;
use std::time::Duration;

use chrono::Utc;
use rocket::figment::Figment;

use crate::config::Config;
use crate::db::Db;
use crate::mail::{enqueue, Mail, Mailer};
use crate::oidc::{clients, keys};
use crate::secrets;

pub const USAGE: &str = "usage: tchap-portal [COMMAND]

  serve                 run the portal (default): migrations, mail worker, web server
  migrate               apply pending database migrations and exit
  mail-test ADDRESS     queue a test mail to ADDRESS (a running portal's worker sends it)
  keys rotate           new signing keys, published at once, signing after oidc.key_publish_before_use_secs;
                        the old public keys stay published until what they signed expires
  secrets reencrypt [--batch N]
                        seal every encrypted value again under secret_key (N rows at a time, 500 by
                        default); safe while the portal serves; then previous_secret_keys can be emptied
  client add --name NAME --redirect-uri URI [--redirect-uri URI…] [--public]
             [--post-logout-redirect-uri URI…] [--subject-type pairwise|public]
             [--id-token-alg RS256|ES256] [--userinfo-signed]
                        register a state service; prints its client ID and secret (shown once)
  client list           the registered services
  client show CLIENT_ID
  client rotate-secret CLIENT_ID
  client remove CLIENT_ID

Settings come from Rocket.toml, PORTAL_* and ROCKET_* variables and DATABASE_URL (see README.md).";

async fn connect(figment: &Figment) -> Result<(Config, crate::db::Conn), String> {
    let config = Config::from_figment(figment).map_err(|e| e.to_string())?;
    let db = Db::new(
        &config.database_url,
        1,
        Duration::from_secs(5),
        crate::db::connect::Limits::new(Duration::from_secs(
            config.settings.db.statement_timeout_secs,
        )),
    )?;
    let conn = db.get().await.map_err(|e| e.to_string())?;
    Ok((config, conn))
}

fn show(c: &clients::Client) -> String {
    let list = |v: &[Option<String>]| v.iter().flatten().cloned().collect::<Vec<_>>().join(" ");
    format!(
        "client_id:       {}\nname:            {}\ntype:            {}\nredirect URIs:   {}\nlogout URIs:     {}\nsubject type:    {}\nID token alg:    {}\nsigned userinfo: {}\nregistered:      {}\n",
        c.client_id,
        c.name,
        if c.public { "public (PKCE, no secret)" } else { "confidential" },
        list(&c.redirect_uris),
        list(&c.post_logout_redirect_uris),
        c.subject_type,
        c.id_token_alg,
        c.userinfo_signed,
        c.created_at.to_rfc3339(),
    )
}

fn parse_add(args: &[String]) -> Result<clients::NewClient, String> {
    let mut new = clients::NewClient {
        name: String::new(),
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        public: false,
        subject_type: "pairwise".into(),
        id_token_alg: "RS256".into(),
        userinfo_signed: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => new.name = value()?,
            "--redirect-uri" => new.redirect_uris.push(value()?),
            "--post-logout-redirect-uri" => new.post_logout_redirect_uris.push(value()?),
            "--subject-type" => new.subject_type = value()?,
            "--id-token-alg" => new.id_token_alg = value()?,
            "--public" => new.public = true,
            "--userinfo-signed" => new.userinfo_signed = true,
            other => return Err(format!("unknown option {other}\n\n{USAGE}")),
        }
    }
    Ok(new)
}

/// Runs `args` (without the program name); `serve` is handled by the binary.
pub async fn run(args: &[String], figment: &Figment) -> Result<String, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["migrate"] => {
            let config = Config::from_figment(figment).map_err(|e| e.to_string())?;
            let applied = crate::db::migrate(&config.database_url).await?;
            let mut out = format!("{} migration(s) applied\n", applied.len());
            for v in applied {
                let _ = writeln!(out, "  {v}");
            }
            Ok(out)
        }
        ["mail-test", to] => {
            let (config, mut conn) = connect(figment).await?;
            let mailer = Mailer::new("templates", &config)?;
            let id = enqueue(&mut conn, &mailer, Mail::test(to), Utc::now())
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "queued {id} to {to}: a running portal sends it and logs the outcome\n"
            ))
        }
        ["keys", "rotate"] => {
            let (config, mut conn) = connect(figment).await?;
            let oidc = &config.settings.oidc;
            let grace =
                chrono::Duration::seconds(oidc.id_token_ttl_secs) + chrono::Duration::hours(1);
            let delay = chrono::Duration::seconds(oidc.key_publish_before_use_secs);
            let now = Utc::now();
            let kids = keys::rotate(&mut conn, &config.keys(), delay, grace, now)
                .await
                .map_err(|e| e.to_string())?;
            let mut out = format!(
                "new signing keys: {}\npublished now; they sign from {} (oidc.key_publish_before_use_secs), when the previous keys retire; those stay published {} minutes more\n",
                kids.join(", "),
                (now + delay).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                grace.num_minutes()
            );
            // Below AudioConf's own JWKS cache, a service may meet the new kid before it knows it.
            if delay < chrono::Duration::minutes(5) {
                let _ = writeln!(out, "note: services that cache the JWKS longer than {} s meet the new kid before they know it: they must read the JWKS again then", delay.num_seconds());
            }
            Ok(out)
        }
        ["secrets", "reencrypt", rest @ ..] => {
            let batch = match rest {
                [] => 500,
                ["--batch", n] => n
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--batch needs a positive number")?,
                _ => return Err(format!("unknown option\n\n{USAGE}")),
            };
            let (config, mut conn) = connect(figment).await?;
            let report = secrets::reencrypt(&mut conn, &config.keys(), batch)
                .await
                .map_err(|e| e.to_string())?;
            let mut out = report.text();
            if report.unreadable() > 0 {
                let _ = writeln!(out, "warning: {} value(s) open with no configured key (lost with a key no longer configured): they stay as they are; sessions among them end at their next use", report.unreadable());
            }
            let _ = writeln!(out, "every other value now opens with secret_key alone: previous_secret_keys can be emptied once every running portal uses this secret_key");
            Ok(out)
        }
        ["client", "add", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let new = parse_add(&rest)?;
            let (_, mut conn) = connect(figment).await?;
            let (client, secret) = clients::add(&mut conn, &new, Utc::now())
                .await
                .map_err(|e| e.to_string())?;
            let mut out = show(&client);
            if let Some(secret) = secret {
                let _ = writeln!(out, "client_secret:   {secret}\n\nKeep the secret now: it is stored hashed and cannot be shown again.");
            }
            Ok(out)
        }
        ["client", "list"] => {
            let (_, mut conn) = connect(figment).await?;
            let all = clients::list(&mut conn).await.map_err(|e| e.to_string())?;
            if all.is_empty() {
                return Ok("no client registered\n".into());
            }
            Ok(all
                .iter()
                .map(|c| {
                    format!(
                        "{}  {}  {}\n",
                        c.client_id,
                        if c.public { "public" } else { "confidential" },
                        c.name
                    )
                })
                .collect())
        }
        ["client", "show", id] => {
            let (_, mut conn) = connect(figment).await?;
            match clients::find(&mut conn, id)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(c) => Ok(show(&c)),
                None => Err(format!("no client {id}")),
            }
        }
        ["client", "rotate-secret", id] => {
            let (_, mut conn) = connect(figment).await?;
            let secret = clients::rotate_secret(&mut conn, id)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "client_secret: {secret}\nthe previous secret no longer works\n"
            ))
        }
        ["client", "remove", id] => {
            let (_, mut conn) = connect(figment).await?;
            clients::remove(&mut conn, id)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("client {id} removed\n"))
        }
        ["help"] | ["--help"] | ["-h"] => Ok(format!("{USAGE}\n")),
        _ => Err(format!("unknown command\n\n{USAGE}")),
    }
}
