//! How the pool opens a PostgreSQL connection: every host of a multi-host `DATABASE_URL` in turn
//! (with `target_session_attrs`, so a failover is followed without a restart), a server-side
//! `statement_timeout`, and a client-side [`Watchdog`] on the socket, so that a server that stops
//! answering (stalled, frozen, cut off) fails the query instead of holding the request forever.
//!
//! Kept here rather than in diesel-async: its `establish` offers neither bound, and tokio-postgres
//! only accepts a custom stream through `connect_raw`, which leaves host selection to the caller.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use diesel::{ConnectionError, ConnectionResult};
use diesel_async::AsyncPgConnection;
use rocket::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use rocket::tokio::time::{sleep, Instant, Sleep};
use tokio_postgres::config::{Host, TargetSessionAttrs};
use tokio_postgres::NoTls;

/// The bounds every pooled connection gets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// PostgreSQL cancels a statement running longer (`statement_timeout`, lock waits included).
    pub statement_timeout: Duration,
    /// The client gives up on a server that sent nothing for this long while an answer is due;
    /// longer than `statement_timeout`, so a slow statement is cancelled by the server first.
    pub answer_within: Duration,
}

impl Limits {
    pub fn new(statement_timeout: Duration) -> Limits {
        Limits {
            statement_timeout,
            answer_within: statement_timeout + Duration::from_secs(1),
        }
    }
}

fn setup_error(message: String) -> ConnectionError {
    ConnectionError::BadConnection(message)
}

/// Opens a connection to the first host of `url` that answers and has the session attributes it
/// asks for (`target_session_attrs=read-write` skips a standby or a demoted primary).
pub async fn connect(url: &str, limits: Limits) -> ConnectionResult<AsyncPgConnection> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| ConnectionError::InvalidConnectionUrl(e.to_string()))?;
    let timeout_ms = limits.statement_timeout.as_millis().max(1);
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} -c statement_timeout={timeout_ms}"),
        _ => format!("-c statement_timeout={timeout_ms}"),
    };
    config.options(options);
    let hosts = config.get_hosts().to_vec();
    if hosts.is_empty() {
        return Err(ConnectionError::InvalidConnectionUrl(
            "the database URL names no host".into(),
        ));
    }
    let ports = config.get_ports().to_vec();
    let connect_within = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(limits.answer_within);
    let mut last = String::from("no host tried");
    for (i, host) in hosts.iter().enumerate() {
        let port = match ports.len() {
            0 => 5432,
            1 => ports[0],
            _ => ports.get(i).copied().unwrap_or(5432),
        };
        match rocket::tokio::time::timeout(connect_within, connect_one(&config, host, port, limits))
            .await
        {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = format!("{}: {e}", describe(host, port)),
            Err(_) => last = format!("{}: no answer in time", describe(host, port)),
        }
    }
    Err(setup_error(last))
}

fn describe(host: &Host, port: u16) -> String {
    match host {
        Host::Tcp(h) => format!("{h}:{port}"),
        #[cfg(unix)]
        Host::Unix(p) => format!("{}/.s.PGSQL.{port}", p.display()),
    }
}

async fn connect_one(
    config: &tokio_postgres::Config,
    host: &Host,
    port: u16,
    limits: Limits,
) -> Result<AsyncPgConnection, String> {
    let client = match host {
        Host::Tcp(h) => {
            let stream = rocket::tokio::net::TcpStream::connect((h.as_str(), port))
                .await
                .map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            start(config, Watchdog::new(stream, limits.answer_within)).await?
        }
        #[cfg(unix)]
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let stream = rocket::tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| e.to_string())?;
            start(config, Watchdog::new(stream, limits.answer_within)).await?
        }
    };
    let wanted = config.get_target_session_attrs();
    if wanted != TargetSessionAttrs::Any {
        let rows = client
            .simple_query("SHOW transaction_read_only")
            .await
            .map_err(|e| e.to_string())?;
        let read_only = rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
            _ => false,
        });
        let fits = match wanted {
            TargetSessionAttrs::ReadWrite => !read_only,
            TargetSessionAttrs::ReadOnly => read_only,
            _ => true,
        };
        if !fits {
            return Err("not the session wanted (target_session_attrs)".into());
        }
    }
    AsyncPgConnection::try_from(client)
        .await
        .map_err(|e| e.to_string())
}

/// The handshake, then the connection's I/O driven by a task of its own (it ends, and the client
/// reports every later call as failed, when the socket fails or the watchdog gives up).
async fn start<S>(
    config: &tokio_postgres::Config,
    stream: Watchdog<S>,
) -> Result<tokio_postgres::Client, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = config
        .connect_raw(stream, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    rocket::tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// A socket that fails its read with `TimedOut` when an answer is due and the server has sent
/// nothing for `limit`. An answer is due from the moment bytes are written until a read ends
/// with PostgreSQL's ReadyForQuery message; any bytes received restart the clock, so a long
/// result that keeps arriving is never cut. An idle connection is never timed out.
pub struct Watchdog<S> {
    inner: S,
    limit: Duration,
    due: bool,
    timer: Pin<Box<Sleep>>,
}

/// `Z`, length 5, then the transaction status (idle, in a transaction, failed transaction).
fn ends_with_ready_for_query(bytes: &[u8]) -> bool {
    matches!(bytes, [.., b'Z', 0, 0, 0, 5, b'I' | b'T' | b'E'])
}

impl<S> Watchdog<S> {
    pub fn new(inner: S, limit: Duration) -> Watchdog<S> {
        Watchdog {
            inner,
            limit,
            due: false,
            timer: Box::pin(sleep(limit)),
        }
    }

    fn restart_clock(&mut self, cx: &mut Context<'_>) {
        self.timer.as_mut().reset(Instant::now() + self.limit);
        // Registers the task's waker with the timer, so it is woken when the time is up even if
        // nothing else wakes it (a frozen server sends nothing).
        let _ = self.timer.as_mut().poll(cx);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watchdog<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() && this.due {
                    if ends_with_ready_for_query(got) {
                        this.due = false;
                    } else {
                        this.restart_clock(cx);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.due && this.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the database server did not answer in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watchdog<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 && !this.due {
                this.due = true;
                this.restart_clock(cx);
            }
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocket::tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn ready_for_query_is_recognised_at_the_end_only() {
        assert!(ends_with_ready_for_query(b"xxZ\0\0\0\x05I"));
        assert!(ends_with_ready_for_query(b"Z\0\0\0\x05T"));
        assert!(!ends_with_ready_for_query(b"Z\0\0\0\x05Ix"));
        assert!(!ends_with_ready_for_query(b"Z\0\0\0\x06I"));
    }

    #[rocket::async_test]
    async fn a_silent_server_fails_the_read_once_an_answer_is_due() {
        let (client, mut server) = rocket::tokio::io::duplex(64);
        let mut w = Watchdog::new(client, Duration::from_millis(200));
        // Idle: nothing is due, the read waits past the limit.
        let mut buf = [0u8; 16];
        let idle = rocket::tokio::time::timeout(Duration::from_millis(400), w.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle connection must not time out");
        // A query written, an answer that keeps arriving: no timeout while bytes come.
        w.write_all(b"Q").await.expect("write");
        for _ in 0..3 {
            rocket::tokio::time::sleep(Duration::from_millis(120)).await;
            server.write_all(b"D").await.expect("server write");
            let n = w.read(&mut buf).await.expect("read");
            assert_eq!(n, 1);
        }
        // Then silence: the read fails after the limit.
        let started = Instant::now();
        let err = w.read(&mut buf).await.expect_err("a timeout");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(190));
    }

    #[rocket::async_test]
    async fn ready_for_query_ends_the_wait() {
        let (client, mut server) = rocket::tokio::io::duplex(64);
        let mut w = Watchdog::new(client, Duration::from_millis(150));
        w.write_all(b"Q").await.expect("write");
        server
            .write_all(b"Z\0\0\0\x05I")
            .await
            .expect("server write");
        let mut buf = [0u8; 16];
        let n = w.read(&mut buf).await.expect("read");
        assert_eq!(n, 6);
        let idle = rocket::tokio::time::timeout(Duration::from_millis(400), w.read(&mut buf)).await;
        assert!(idle.is_err(), "nothing is due after ReadyForQuery");
    }
}
