//! Typed settings, read from Rocket.toml (`[*.portal]`), `PORTAL_*` environment variables and
//! `DATABASE_URL`, validated once at start with a message that names the faulty setting.

use std::net::IpAddr;

use base64::Engine;
use rocket::figment::providers::{Env, Serialized};
use rocket::figment::{Figment, Profile};
use serde::{Deserialize, Serialize};

/// The key used when none is configured, outside release only.
pub const DEV_SECRET_KEY: &str = "ZGV2ZWxvcG1lbnQtb25seS1zZWNyZXQta2V5LTAwMDAwMDAwMDA=";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The address agents use to reach the portal; links in mails and the OpenID issuer use it.
    pub public_url: String,
    pub database_url: Option<String>,
    /// Base64 of at least 32 random bytes: derives the CSRF, encryption and HMAC keys.
    pub secret_key: Option<String>,
    /// Older secret keys (base64), newest first: they still open and verify what they sealed and
    /// signed until `tchap-portal secrets reencrypt` has moved everything to `secret_key`.
    pub previous_secret_keys: Vec<String>,
    /// Matrix IDs of the portal's administrators (the admin pages: services, AudioConf domains).
    pub admins: Vec<String>,
    /// On SIGTERM, how long `/readyz` answers 503 while requests are still served, so the
    /// balancer stops sending before the portal stops listening (then Rocket's `shutdown.grace`).
    pub drain_secs: u64,
    pub db: DbSettings,
    pub mail: MailSettings,
    pub session: SessionSettings,
    pub metrics: MetricsSettings,
    pub proxy: ProxySettings,
    pub matrix: MatrixSettings,
    pub accounts: AccountsSettings,
    pub oidc: OidcSettings,
    pub audioconf: AudioconfSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AudioconfSettings {
    /// The dial-in numbers (E.164, e.g. "+33189000000"); empty: the service says it is unavailable.
    pub numbers: Vec<String>,
    /// Digits in a PIN (9 by default: 10⁹ PINs per number and period).
    pub pin_length: u32,
    /// How many days ahead a day can be booked (today included as day 0).
    pub max_days_ahead: i64,
    /// The durations offered, in minutes.
    pub durations_minutes: Vec<i64>,
    /// Email domains allowed to book: exact ("agent.gouv.fr") or suffix (".gouv.fr"); administrators
    /// add more from /admin/audioconf.
    pub domains: Vec<String>,
    /// Who to ask for a domain to be added (shown to refused agents).
    pub access_contact: String,
    /// Lifetime of the magic link sent by email.
    pub link_ttl_minutes: i64,
    /// Booking requests per email address and per client address, per 24 hours.
    pub max_requests_per_email: i64,
    pub max_requests_per_ip: i64,
    /// Participants allowed on a line (told to the telephony bridge).
    pub participant_limit: i64,
    /// Days after a conference's end when its email address is erased (the domain and an HMAC stay).
    pub retention_days: i64,
    /// Telephony bridges allowed to call the IVR API, each with its bearer secret.
    pub bridges: Vec<Bridge>,
    /// Wrong PINs allowed from one caller within the window, then 429.
    pub ivr_max_failures: i64,
    pub ivr_window_minutes: i64,
    /// "Se connecter avec Tchap": the OpenID issuer AudioConf books through.
    pub tchap: TchapLoginSettings,
}

/// The OpenID Connect provider AudioConf uses for "Se connecter avec Tchap".
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TchapLoginSettings {
    /// The issuer (its discovery document is read from `{issuer}/.well-known/openid-configuration`);
    /// none: this portal's own Tchap Identité.
    pub issuer: Option<String>,
    /// The client registered at the issuer. None: registered automatically outside release when the
    /// issuer is this portal; otherwise the button is not offered.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    pub name: String,
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    pub code_ttl_secs: i64,
    pub access_token_ttl_secs: i64,
    pub id_token_ttl_secs: i64,
    pub refresh_token_ttl_hours: i64,
    /// After `keys rotate`, new signing keys are published this long before they sign anything,
    /// so that services caching the JWKS know them first.
    pub key_publish_before_use_secs: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DbSettings {
    pub pool_size: usize,
    /// How long a request waits for a pooled connection (503 after).
    pub timeout_secs: u64,
    /// PostgreSQL cancels a statement running longer (lock waits included); a server that sends
    /// nothing for one second more while an answer is due is given up (503).
    pub statement_timeout_secs: u64,
    pub run_migrations: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    Smtp,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    pub transport: MailTransport,
    pub from: String,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    pub smtp_security: SmtpSecurity,
    pub smtp_user: Option<String>,
    pub smtp_password: Option<String>,
    pub smtp_timeout_secs: u64,
    /// Mails sent at once, each lane on its own kept-open SMTP connection.
    pub smtp_connections: u32,
    /// How long a worker holds a mail it is sending; a worker that died loses its mails to
    /// another after this long. At least three SMTP timeouts.
    pub lease_secs: u64,
    pub file_dir: String,
    /// How often the worker looks for due mail (it is also woken when mail is queued).
    pub poll_secs: u64,
    /// A mail still not sent this long after it was queued is marked failed.
    pub max_age_hours: i64,
    /// Hours a sent mail stays in the outbox (its body holds links and PINs), then it is deleted.
    pub keep_sent_hours: i64,
    /// First retry delay; doubles at each attempt, capped at one hour.
    pub retry_base_secs: i64,
    pub worker: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    pub idle_minutes: i64,
    pub absolute_hours: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Client addresses allowed to read /metrics.
    pub allow_ips: Vec<IpAddr>,
    /// When set, a `Authorization: Bearer <token>` also grants access (from anywhere).
    pub token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Reverse proxies (addresses or CIDR ranges) whose client-address header is believed.
    pub trusted: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixSettings {
    /// The default homeserver: logins with a bare user name go there.
    pub homeserver: String,
    /// The server name of the default homeserver (the part after `:` in its Matrix IDs).
    pub server_name: String,
    /// The other homeservers agents may log in with; no other server is ever asked.
    pub homeservers: Vec<HomeserverSetting>,
    /// Homeservers asked `/_matrix/identity/api/v1/info` to find an email's homeserver, as Tchap
    /// does; the server they answer must be one of the configured homeservers.
    pub discovery_homeservers: Vec<String>,
    /// Every call to a homeserver gives up after this long.
    pub timeout_secs: u64,
    /// Largest file the chat's media proxy passes on (bytes).
    pub media_max_bytes: u64,
}

/// A homeserver the portal trusts for its own users: `@x:<server_name>` log in at `url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HomeserverSetting {
    pub server_name: String,
    pub url: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsSettings {
    /// Failed logins allowed per account and per address within the window.
    pub max_failures: i64,
    pub failure_window_minutes: i64,
    /// The device name shown in the agent's Tchap sessions list.
    pub device_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            public_url: "http://127.0.0.1:8000".into(),
            database_url: None,
            secret_key: None,
            previous_secret_keys: vec![],
            admins: vec![],
            drain_secs: 5,
            db: DbSettings {
                pool_size: 16,
                timeout_secs: 5,
                statement_timeout_secs: 5,
                run_migrations: true,
            },
            mail: MailSettings {
                transport: MailTransport::File,
                from: "Portail Tchap <ne-pas-repondre@portail.localhost>".into(),
                smtp_host: None,
                smtp_port: None,
                smtp_security: SmtpSecurity::Starttls,
                smtp_user: None,
                smtp_password: None,
                smtp_timeout_secs: 10,
                smtp_connections: 1,
                lease_secs: 60,
                file_dir: ".run/mail-files".into(),
                poll_secs: 5,
                max_age_hours: 48,
                keep_sent_hours: 24,
                retry_base_secs: 30,
                worker: true,
            },
            session: SessionSettings {
                idle_minutes: 30,
                absolute_hours: 12,
            },
            metrics: MetricsSettings {
                allow_ips: vec![
                    "127.0.0.1".parse().expect("literal"),
                    "::1".parse().expect("literal"),
                ],
                token: None,
            },
            proxy: ProxySettings::default(),
            matrix: MatrixSettings {
                homeserver: "http://127.0.0.1:8008".into(),
                server_name: "localhost".into(),
                homeservers: vec![],
                discovery_homeservers: vec![],
                timeout_secs: 10,
                media_max_bytes: 50 * 1024 * 1024,
            },
            accounts: AccountsSettings {
                max_failures: 5,
                failure_window_minutes: 15,
                device_name: "Portail Tchap".into(),
            },
            audioconf: AudioconfSettings {
                numbers: vec![],
                pin_length: 9,
                max_days_ahead: 14,
                durations_minutes: vec![30, 60, 120, 240],
                domains: vec![".gouv.fr".into()],
                access_contact: "audioconf@portail.localhost".into(),
                link_ttl_minutes: 60,
                max_requests_per_email: 10,
                max_requests_per_ip: 50,
                participant_limit: 50,
                retention_days: 30,
                bridges: vec![],
                ivr_max_failures: 5,
                ivr_window_minutes: 15,
                tchap: TchapLoginSettings::default(),
            },
            oidc: OidcSettings {
                code_ttl_secs: 60,
                access_token_ttl_secs: 600,
                id_token_ttl_secs: 600,
                refresh_token_ttl_hours: 12,
                key_publish_before_use_secs: 3600,
            },
        }
    }
}

/// Settings once validated, with the secrets decoded.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub release: bool,
    pub database_url: String,
    pub secret_key: Vec<u8>,
    pub previous_secret_keys: Vec<Vec<u8>>,
    pub public_origin: String,
    /// Reverse proxies whose client-address header is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every trusted homeserver, the default one first; server names in lowercase.
    pub homeservers: Vec<HomeserverSetting>,
}

#[derive(Debug, thiserror::Error)]
#[error("setting `{setting}`: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

/// Rocket's figment plus the portal's own sources.
pub fn figment() -> Figment {
    // Defaults first, then Rocket's own sources (Rocket.toml, ROCKET_*), then the portal's variables.
    Figment::from(Serialized::defaults(Settings::default()).key("portal"))
        .merge(rocket::Config::figment())
        .merge(
            Env::prefixed("PORTAL_")
                .split("__")
                .map(|k| format!("portal.{k}").into()),
        )
        .merge(
            Env::raw()
                .only(&["DATABASE_URL"])
                .map(|_| "portal.database_url".into()),
        )
}

impl Config {
    /// Whether `matrix_user_id` is one of the portal's administrators.
    pub fn is_admin(&self, matrix_user_id: &str) -> bool {
        self.settings.admins.iter().any(|a| a == matrix_user_id)
    }

    pub fn from_figment(figment: &Figment) -> Result<Config, ConfigError> {
        let settings: Settings = figment
            .extract_inner("portal")
            .map_err(|e| bad("portal", e.to_string()))?;
        let release = *figment.profile() == Profile::const_new("release");
        Config::validate(settings, release)
    }

    pub fn validate(settings: Settings, release: bool) -> Result<Config, ConfigError> {
        let database_url = match settings.database_url.as_deref() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                // Parsed as the pool will (several hosts, target_session_attrs…), so a typo
                // stops the start rather than every connection.
                url.parse::<tokio_postgres::Config>()
                    .map_err(|e| bad("database_url", e.to_string()))?;
                url.to_owned()
            }
            Some(_) => {
                return Err(bad(
                    "database_url",
                    "must be a postgres:// URL (DATABASE_URL or PORTAL_DATABASE_URL)",
                ))
            }
            None => {
                return Err(bad(
                    "database_url",
                    "missing: set DATABASE_URL (scripts/run sets it for you)",
                ))
            }
        };

        let key_b64 = match (&settings.secret_key, release) {
            (Some(k), _) => k.clone(),
            (None, false) => DEV_SECRET_KEY.to_owned(),
            (None, true) => {
                return Err(bad(
                    "secret_key",
                    "missing: set PORTAL_SECRET_KEY to `openssl rand -base64 32`",
                ))
            }
        };
        if release && key_b64 == DEV_SECRET_KEY {
            return Err(bad(
                "secret_key",
                "is the development key: generate one with `openssl rand -base64 32`",
            ));
        }
        let decode = |setting, b64: &str| {
            let key = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| bad(setting, "is not valid base64"))?;
            if key.len() < 32 {
                return Err(bad(setting, "must decode to at least 32 bytes"));
            }
            Ok(key)
        };
        let secret_key = decode("secret_key", &key_b64)?;
        let mut previous_secret_keys = Vec::new();
        for b64 in &settings.previous_secret_keys {
            let key = decode("previous_secret_keys", b64)?;
            if key == secret_key || previous_secret_keys.contains(&key) {
                return Err(bad(
                    "previous_secret_keys",
                    "lists secret_key or one key twice: keep only the older keys",
                ));
            }
            previous_secret_keys.push(key);
        }

        let public_url = settings.public_url.trim_end_matches('/').to_owned();
        let public_origin = origin_of(&public_url)
            .ok_or_else(|| bad("public_url", "must be an absolute http(s) URL"))?;
        if release && !public_url.starts_with("https://") {
            return Err(bad("public_url", "must use https:// in release"));
        }

        let mail = &settings.mail;
        if release && mail.transport != MailTransport::Smtp {
            return Err(bad(
                "mail.transport",
                "must be `smtp` in release: the file transport delivers nothing",
            ));
        }
        if mail.transport == MailTransport::Smtp {
            let host = mail
                .smtp_host
                .as_deref()
                .ok_or_else(|| bad("mail.smtp_host", "missing for the smtp transport"))?;
            let loopback = host == "localhost"
                || host
                    .parse::<IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false);
            if release && mail.smtp_security == SmtpSecurity::None && !loopback {
                return Err(bad(
                    "mail.smtp_security",
                    "`none` sends mail in clear over the network: use starttls or tls",
                ));
            }
            if mail.smtp_user.is_some() != mail.smtp_password.is_some() {
                return Err(bad(
                    "mail.smtp_user",
                    "smtp_user and smtp_password go together",
                ));
            }
        }
        if mail.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(bad("mail.from", "is not a valid mailbox"));
        }
        if mail.keep_sent_hours < 1 {
            return Err(bad("mail.keep_sent_hours", "must be at least 1"));
        }
        if settings.db.pool_size == 0 {
            return Err(bad("db.pool_size", "must be at least 1"));
        }
        if settings.session.idle_minutes <= 0 || settings.session.absolute_hours <= 0 {
            return Err(bad("session", "lifetimes must be positive"));
        }
        if settings.mail.lease_secs < 3 * settings.mail.smtp_timeout_secs.max(1) {
            return Err(bad(
                "mail.lease_secs",
                "must be at least three times mail.smtp_timeout_secs",
            ));
        }
        if settings.mail.smtp_connections == 0 || settings.mail.smtp_connections > 64 {
            return Err(bad("mail.smtp_connections", "must be between 1 and 64"));
        }
        if settings.db.statement_timeout_secs == 0 {
            return Err(bad("db.statement_timeout_secs", "must be at least 1"));
        }
        if settings.matrix.timeout_secs == 0 {
            return Err(bad("matrix.timeout_secs", "must be at least 1"));
        }
        if settings.accounts.max_failures < 1
            || !(1..=1440).contains(&settings.accounts.failure_window_minutes)
            || !(1..=1440).contains(&settings.audioconf.ivr_window_minutes)
        {
            return Err(bad(
                "accounts",
                "max_failures must be positive; failure windows are 1 to 1440 minutes",
            ));
        }
        let o = &settings.oidc;
        if !(1..=60).contains(&o.code_ttl_secs) {
            return Err(bad(
                "oidc.code_ttl_secs",
                "must be between 1 and 60 seconds",
            ));
        }
        if !(1..=3600).contains(&o.access_token_ttl_secs) {
            return Err(bad(
                "oidc.access_token_ttl_secs",
                "must be between 1 and 3600 seconds",
            ));
        }
        if !(1..=3600).contains(&o.id_token_ttl_secs) {
            return Err(bad(
                "oidc.id_token_ttl_secs",
                "must be between 1 and 3600 seconds",
            ));
        }
        if !(0..=30 * 86400).contains(&o.key_publish_before_use_secs) {
            return Err(bad(
                "oidc.key_publish_before_use_secs",
                "must be between 0 and 2592000 seconds (30 days)",
            ));
        }
        if o.refresh_token_ttl_hours < 1 {
            return Err(bad("oidc.refresh_token_ttl_hours", "must be at least 1"));
        }
        let a = &settings.audioconf;
        if let Some(n) = a.numbers.iter().find(|n| !is_e164(n)) {
            return Err(bad(
                "audioconf.numbers",
                format!("{n}: each number is E.164, such as +33189000000"),
            ));
        }
        if !(1..=12).contains(&a.pin_length) {
            return Err(bad("audioconf.pin_length", "between 1 and 12 digits"));
        }
        if a.max_days_ahead < 0 || a.durations_minutes.iter().any(|d| !(1..=1440).contains(d)) {
            return Err(bad(
                "audioconf.durations_minutes",
                "durations are 1 to 1440 minutes; max_days_ahead ≥ 0",
            ));
        }
        if let Some(d) = a.domains.iter().find(|d| !is_domain_rule(d)) {
            return Err(bad(
                "audioconf.domains",
                format!("{d}: a domain (agent.gouv.fr) or a suffix (.gouv.fr)"),
            ));
        }
        if a.link_ttl_minutes < 1
            || a.max_requests_per_email < 1
            || a.max_requests_per_ip < 1
            || a.retention_days < 1
            || a.ivr_max_failures < 1
            || a.ivr_window_minutes < 1
        {
            return Err(bad(
                "audioconf",
                "link_ttl_minutes, max_requests_per_*, retention_days and ivr_* must be positive",
            ));
        }
        if let Some(b) = a.bridges.iter().find(|b| b.secret.len() < 32) {
            return Err(bad(
                "audioconf.bridges",
                format!("{}: the secret needs at least 32 characters", b.name),
            ));
        }
        let t = &a.tchap;
        if let Some(issuer) = &t.issuer {
            if origin_of(issuer).is_none() || (release && !issuer.starts_with("https://")) {
                return Err(bad(
                    "audioconf.tchap.issuer",
                    "must be an absolute URL (https:// in release)",
                ));
            }
        }
        if t.client_id.is_some() != t.client_secret.is_some() {
            return Err(bad(
                "audioconf.tchap.client_id",
                "client_id and client_secret go together",
            ));
        }
        if let Some(a) = settings
            .admins
            .iter()
            .find(|a| !(a.starts_with('@') && a.contains(':')))
        {
            return Err(bad(
                "admins",
                format!("{a}: each administrator is a Matrix ID such as @alice:agent.gouv.fr"),
            ));
        }
        if origin_of(&settings.matrix.homeserver).is_none() {
            return Err(bad("matrix.homeserver", "must be an absolute http(s) URL"));
        }
        let homeservers = trusted_homeservers(&settings.matrix)?;
        let trusted_proxies = settings
            .proxy
            .trusted
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        bad(
                            "proxy.trusted",
                            format!("{p}: an address (10.0.0.2) or a CIDR range (10.0.0.0/8)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Config {
            release,
            database_url,
            secret_key,
            previous_secret_keys,
            public_origin,
            trusted_proxies,
            homeservers,
            settings: Settings {
                public_url,
                ..settings
            },
        })
    }

    /// The key ring: `secret_key` for new data, `previous_secret_keys` still accepted.
    pub fn keys(&self) -> crate::crypto::Keys {
        crate::crypto::Keys::with_previous(&self.secret_key, &self.previous_secret_keys)
    }

    pub fn public_url(&self) -> &str {
        &self.settings.public_url
    }
}

/// The default homeserver and the listed ones, checked: valid server names, absolute URLs, no name
/// twice.
fn trusted_homeservers(m: &MatrixSettings) -> Result<Vec<HomeserverSetting>, ConfigError> {
    let default = HomeserverSetting {
        server_name: m.server_name.clone(),
        url: m.homeserver.clone(),
    };
    let mut out: Vec<HomeserverSetting> = Vec::new();
    for hs in std::iter::once(&default).chain(&m.homeservers) {
        let server_name = hs.server_name.trim().to_lowercase();
        if !is_server_name(&server_name) {
            return Err(bad(
                "matrix.homeservers",
                format!("{}: not a Matrix server name", hs.server_name),
            ));
        }
        if origin_of(&hs.url).is_none() {
            return Err(bad(
                "matrix.homeservers",
                format!("{}: the url must be an absolute http(s) URL", hs.url),
            ));
        }
        if out.iter().any(|o| o.server_name == server_name) {
            return Err(bad(
                "matrix.homeservers",
                format!("{server_name} is listed twice"),
            ));
        }
        out.push(HomeserverSetting {
            server_name,
            url: hs.url.trim_end_matches('/').to_owned(),
        });
    }
    Ok(out)
}

/// A Matrix server name: a host name, IPv4 or `[IPv6]` literal, with an optional port.
pub fn is_server_name(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') == h.ends_with(']')) => {
            (h, Some(p))
        }
        _ => (s, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    port_ok && host_ok
}

/// `https://host[:port]` of an absolute http(s) URL.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{host}"))
}

/// `+` then 8 to 15 digits, the first not 0.
pub fn is_e164(n: &str) -> bool {
    n.strip_prefix('+').is_some_and(|d| {
        (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

/// An email domain ("agent.gouv.fr") or a suffix (".gouv.fr"): lowercase labels of letters, digits
/// and hyphens, with at least one dot.
pub fn is_domain_rule(rule: &str) -> bool {
    let d = rule.strip_prefix('.').unwrap_or(rule);
    d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release_ok() -> Settings {
        let mut s = Settings {
            public_url: "https://portail.example.gouv.fr".into(),
            database_url: Some("postgres://db/portal".into()),
            secret_key: Some("cmVhbGx5LXJhbmRvbS1rZXktZm9yLXRlc3RzLTAxMjM0NTY3ODk=".into()),
            ..Settings::default()
        };
        s.mail.transport = MailTransport::Smtp;
        s.mail.smtp_host = Some("smtp.example.gouv.fr".into());
        s
    }

    #[test]
    fn release_accepts_a_complete_configuration() {
        assert!(Config::validate(release_ok(), true).is_ok());
    }

    #[test]
    fn a_database_url_may_name_a_primary_and_its_standbys() {
        let mut s = release_ok();
        s.database_url = Some(
            "postgres://portal@db1:5432,db2:5433/portal?target_session_attrs=read-write".into(),
        );
        assert!(Config::validate(s, true).is_ok());
    }

    #[test]
    fn release_refusals_name_the_setting() {
        type Change = Box<dyn Fn(&mut Settings)>;
        let cases: Vec<(&str, Change)> = vec![
            ("secret_key", Box::new(|s| s.secret_key = None)),
            (
                "secret_key",
                Box::new(|s| s.secret_key = Some(DEV_SECRET_KEY.into())),
            ),
            (
                "secret_key",
                Box::new(|s| s.secret_key = Some("c2hvcnQ=".into())),
            ),
            (
                "public_url",
                Box::new(|s| s.public_url = "http://portail.example.gouv.fr".into()),
            ),
            ("database_url", Box::new(|s| s.database_url = None)),
            (
                "mail.transport",
                Box::new(|s| s.mail.transport = MailTransport::File),
            ),
            (
                "previous_secret_keys",
                Box::new(|s| s.previous_secret_keys = vec!["not base64!".into()]),
            ),
            (
                "previous_secret_keys",
                Box::new(|s| {
                    s.previous_secret_keys = vec![s.secret_key.clone().unwrap_or_default()]
                }),
            ),
            (
                "oidc.key_publish_before_use_secs",
                Box::new(|s| s.oidc.key_publish_before_use_secs = -1),
            ),
            ("mail.smtp_host", Box::new(|s| s.mail.smtp_host = None)),
            (
                "database_url",
                Box::new(|s| s.database_url = Some("postgres://db:notaport/portal".into())),
            ),
            (
                "database_url",
                Box::new(|s| {
                    s.database_url =
                        Some("postgres://db/portal?target_session_attrs=primary-ish".into())
                }),
            ),
            ("mail.lease_secs", Box::new(|s| s.mail.lease_secs = 10)),
            (
                "mail.smtp_connections",
                Box::new(|s| s.mail.smtp_connections = 0),
            ),
            (
                "db.statement_timeout_secs",
                Box::new(|s| s.db.statement_timeout_secs = 0),
            ),
            (
                "mail.smtp_security",
                Box::new(|s| s.mail.smtp_security = SmtpSecurity::None),
            ),
        ];
        for (setting, change) in cases {
            let mut s = release_ok();
            change(&mut s);
            let err = Config::validate(s, true).expect_err(setting);
            assert_eq!(err.setting, setting, "{err}");
        }
    }

    #[test]
    fn previous_secret_keys_come_from_the_environment_as_a_list() {
        let (a, b) = (
            "cmVhbGx5LXJhbmRvbS1rZXktZm9yLXRlc3RzLTk4NzY1NDMyMTA=",
            "YW5vdGhlci1yYW5kb20ta2V5LWZvci10ZXN0cy0wMTIzNDU2Nzg=",
        );
        // The provider `figment()` uses, under a prefix no other test reads.
        std::env::set_var(
            "PORTAL_KEYRINGTEST_PREVIOUS_SECRET_KEYS",
            format!(r#"["{a}", "{b}"]"#),
        );
        let settings: Settings =
            Figment::from(Serialized::defaults(Settings::default()).key("portal"))
                .merge(
                    Env::prefixed("PORTAL_KEYRINGTEST_")
                        .split("__")
                        .map(|k| format!("portal.{k}").into()),
                )
                .extract_inner("portal")
                .expect("settings");
        assert_eq!(settings.previous_secret_keys, vec![a, b]);
        let c = Config::validate(
            Settings {
                database_url: Some("postgres://localhost/portal".into()),
                ..settings
            },
            false,
        )
        .expect("valid");
        assert_eq!(c.previous_secret_keys.len(), 2);
        assert_eq!(c.settings.oidc.key_publish_before_use_secs, 3600);
    }

    #[test]
    fn development_defaults_start() {
        let s = Settings {
            database_url: Some("postgres://localhost/portal".into()),
            ..Settings::default()
        };
        let c = Config::validate(s, false).expect("dev defaults are valid");
        assert_eq!(c.public_origin, "http://127.0.0.1:8000");
    }
}
