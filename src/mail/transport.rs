//! Where mail goes: an SMTP server (none, STARTTLS or TLS, optional login) or, in development,
//! a folder of `.eml` files.

use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{MailSettings, MailTransport, SmtpSecurity};

#[derive(Clone)]
pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
}

impl Transport {
    pub fn from_settings(s: &MailSettings) -> Result<Transport, String> {
        match s.transport {
            MailTransport::File => {
                std::fs::create_dir_all(&s.file_dir)
                    .map_err(|e| format!("mail.file_dir {}: {e}", s.file_dir))?;
                Ok(Transport::File(AsyncFileTransport::new(&s.file_dir)))
            }
            MailTransport::Smtp => {
                let host = s.smtp_host.as_deref().ok_or("mail.smtp_host is missing")?;
                let mut builder = match s.smtp_security {
                    SmtpSecurity::None => {
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                    }
                    SmtpSecurity::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                            .map_err(|e| e.to_string())?
                    }
                    SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                        .map_err(|e| e.to_string())?,
                };
                if let Some(port) = s.smtp_port {
                    builder = builder.port(port);
                }
                if let (Some(user), Some(password)) = (&s.smtp_user, &s.smtp_password) {
                    builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
                }
                // Connections are kept open and reused (one per lane of the worker), not opened
                // per mail.
                let pool = PoolConfig::new()
                    .max_size(s.smtp_connections.max(1))
                    .idle_timeout(Duration::from_secs(60));
                Ok(Transport::Smtp(
                    builder
                        .timeout(Some(Duration::from_secs(s.smtp_timeout_secs)))
                        .pool_config(pool)
                        .build(),
                ))
            }
        }
    }

    pub async fn send_raw(&self, envelope: &Envelope, raw: &[u8]) -> Result<(), String> {
        match self {
            Transport::Smtp(t) => t
                .send_raw(envelope, raw)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Transport::File(t) => t
                .send_raw(envelope, raw)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}
