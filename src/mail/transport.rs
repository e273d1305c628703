//! Where mail goes: an SMTP server (none, STARTTLS or TLS, optional login) or, in development,
//! a folder of `.eml` files.
//!
//! Each lane of the worker keeps its own SMTP connection open ([`Sender`]) and reuses it for the
//! next mail. The connection is opened here rather than by lettre's transport so that the socket
//! has `TCP_NODELAY`: lettre writes a message and its final `.` separately, and with Nagle's
//! algorithm the second write waits for the server's delayed acknowledgement (40 ms a mail, which
//! capped the worker at about 20 mails a second).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncFileTransport, AsyncTransport, Tokio1Executor};
use rocket::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use rocket::tokio::net::TcpStream;
use rocket::tokio::time::timeout;

use crate::config::{MailSettings, MailTransport, SmtpSecurity};

/// How to reach the SMTP server.
#[derive(Clone)]
pub struct Smtp {
    host: String,
    port: u16,
    security: SmtpSecurity,
    credentials: Option<Credentials>,
    timeout: Duration,
}

#[derive(Clone)]
pub enum Transport {
    Smtp(Smtp),
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
                let host = s.smtp_host.clone().ok_or("mail.smtp_host is missing")?;
                let port = s.smtp_port.unwrap_or(match s.smtp_security {
                    SmtpSecurity::Tls => 465,
                    SmtpSecurity::Starttls => 587,
                    SmtpSecurity::None => 25,
                });
                let credentials = match (&s.smtp_user, &s.smtp_password) {
                    (Some(user), Some(password)) => {
                        Some(Credentials::new(user.clone(), password.clone()))
                    }
                    _ => None,
                };
                Ok(Transport::Smtp(Smtp {
                    host,
                    port,
                    security: s.smtp_security,
                    credentials,
                    timeout: Duration::from_secs(s.smtp_timeout_secs.max(1)),
                }))
            }
        }
    }

    /// A sender for one lane: mails go out one after the other over one kept-open connection.
    pub fn sender(&self) -> Sender {
        Sender {
            transport: self.clone(),
            open: None,
        }
    }
}

/// One lane's connection to the SMTP server, opened when first needed and after any failure.
pub struct Sender {
    transport: Transport,
    open: Option<AsyncSmtpConnection>,
}

impl Sender {
    /// Sends one mail: connecting (at most one SMTP timeout), then the mail (at most one more).
    pub async fn send_raw(&mut self, envelope: &Envelope, raw: &[u8]) -> Result<(), String> {
        let smtp = match &self.transport {
            Transport::File(t) => {
                return t
                    .send_raw(envelope, raw)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Transport::Smtp(smtp) => smtp.clone(),
        };
        let mut conn = match self.open.take() {
            Some(conn) if !conn.has_broken() => conn,
            _ => timeout(smtp.timeout, smtp.connect())
                .await
                .map_err(|_| "the SMTP server did not answer in time".to_owned())??,
        };
        match timeout(smtp.timeout, conn.send(envelope, raw)).await {
            Ok(Ok(_)) => {
                self.open = Some(conn);
                Ok(())
            }
            Ok(Err(e)) => {
                // A refusal of this mail leaves the connection usable; a broken one is dropped.
                if !conn.has_broken() {
                    self.open = Some(conn);
                }
                Err(e.to_string())
            }
            Err(_) => Err("the SMTP server did not accept the mail in time".into()),
        }
    }

    /// Says goodbye to the server (QUIT), if connected.
    pub async fn close(&mut self) {
        if let (Some(mut conn), Transport::Smtp(smtp)) = (self.open.take(), &self.transport) {
            let _ = timeout(smtp.timeout, conn.quit()).await;
        }
    }
}

impl Smtp {
    async fn connect(&self) -> Result<AsyncSmtpConnection, String> {
        let hello = ClientId::default();
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to the SMTP server: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let tls = || TlsParameters::new(self.host.clone()).map_err(|e| e.to_string());
        let mut conn = match self.security {
            SmtpSecurity::None => {
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello)
                    .await
                    .map_err(|e| e.to_string())?
            }
            SmtpSecurity::Starttls => {
                let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello)
                    .await
                    .map_err(|e| e.to_string())?;
                if !conn.can_starttls() {
                    return Err("the SMTP server does not offer STARTTLS".into());
                }
                conn.starttls(tls()?, &hello)
                    .await
                    .map_err(|e| e.to_string())?;
                conn
            }
            SmtpSecurity::Tls => {
                let connector = native_tls::TlsConnector::new().map_err(|e| e.to_string())?;
                let stream = tokio_native_tls::TlsConnector::from(connector)
                    .connect(&self.host, tcp)
                    .await
                    .map_err(|e| format!("TLS with the SMTP server: {e}"))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(Tls(stream)), &hello)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(conn)
    }
}

/// Implicit TLS (`smtps`, port 465) over a socket opened here.
#[derive(Debug)]
struct Tls(tokio_native_tls::TlsStream<TcpStream>);

impl AsyncTokioStream for Tls {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().get_ref().get_ref().peer_addr()
    }
}

impl AsyncRead for Tls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
