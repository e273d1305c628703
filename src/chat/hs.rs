//! The homeserver, spoken to with `ruma`'s typed client-server API requests over the portal's
//! HTTP client (a timeout on every call). Errors are sorted into what a page can say.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::error::{Error as ApiError, ErrorKind, FromHttpResponseError};
use ruma::api::path_builder::VersionHistory;
use ruma::api::{IncomingResponse, MatrixVersion, OutgoingRequest, SupportedVersions};

rocket::tokio::task_local! {
    /// Time spent waiting on homeservers by the future `timed` runs.
    static SPENT: Cell<Duration>;
}

/// Runs `f` and answers its output with the time its homeserver calls took (for the
/// `Server-Timing` header: the portal's own time is the rest).
pub async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    SPENT
        .scope(Cell::new(Duration::ZERO), async {
            let out = f.await;
            (out, SPENT.with(Cell::get))
        })
        .await
}

fn spent(since: Instant) {
    let _ = SPENT.try_with(|c| c.set(c.get() + since.elapsed()));
}

/// Why a homeserver call failed, as the pages tell it.
#[derive(Debug, thiserror::Error)]
pub enum HsError {
    /// Unreachable, too slow, or answering 5xx: "try again".
    #[error("homeserver unavailable: {0}")]
    Unavailable(String),
    /// The access token was revoked elsewhere: back to the login page.
    #[error("access token refused")]
    TokenRevoked,
    /// The user may not do this (not a member, banned, not allowed).
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Any other refusal, with the homeserver's words.
    #[error("refused: {0}")]
    Refused(String),
}

/// A client for one homeserver URL per call (each session knows its own homeserver).
#[derive(Clone)]
pub struct Hs {
    http: reqwest::Client,
    calls: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

fn versions() -> SupportedVersions {
    SupportedVersions {
        versions: BTreeSet::from([MatrixVersion::V1_11]),
        features: BTreeSet::new(),
    }
}

impl Hs {
    pub fn new(timeout: Duration) -> Result<Hs, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Hs {
            http,
            calls: Arc::new(AtomicU64::new(0)),
            received: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Calls made so far (tests count them; the metrics may show them).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Bytes of answers read so far (a full sync shows here; an incremental one barely does).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Sends an authenticated client-server request and reads its typed answer.
    pub async fn send<R>(
        &self,
        homeserver: &str,
        token: &str,
        request: R,
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest<PathBuilder = VersionHistory>,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
        R::IncomingResponse: IncomingResponse<EndpointError = ApiError>,
    {
        let req = request
            .try_into_http_request::<Vec<u8>>(
                homeserver,
                SendAccessToken::IfRequired(token),
                Cow::Owned(versions()),
            )
            .map_err(|e| HsError::Refused(e.to_string()))?;
        self.execute::<R::IncomingResponse>(req).await
    }

    /// Downloads a media file (an authenticated `/_matrix/client/v1/media/…` path), refusing more
    /// than `max` bytes; answers the bytes and the homeserver's content type.
    pub async fn download(
        &self,
        homeserver: &str,
        token: &str,
        path: &str,
        max: u64,
    ) -> Result<(Vec<u8>, Option<String>), HsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}{path}", homeserver.trim_end_matches('/'));
        let mut res = self
            .http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| HsError::Unavailable(e.to_string()))?;
        match res.status().as_u16() {
            200..=299 => {}
            401 => return Err(HsError::TokenRevoked),
            403 => return Err(HsError::Forbidden("media".into())),
            404 => return Err(HsError::NotFound("media".into())),
            s if s >= 500 => return Err(HsError::Unavailable(format!("status {s}"))),
            s => return Err(HsError::Refused(format!("status {s}"))),
        }
        if res.content_length().is_some_and(|n| n > max) {
            return Err(HsError::Refused("too large".into()));
        }
        let content_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| HsError::Unavailable(e.to_string()))?
        {
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(HsError::Refused("too large".into()));
            }
            bytes.extend_from_slice(&chunk);
        }
        self.received
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok((bytes, content_type))
    }

    async fn execute<Resp>(&self, req: http::Request<Vec<u8>>) -> Result<Resp, HsError>
    where
        Resp: IncomingResponse<EndpointError = ApiError>,
    {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let url = parts.uri.to_string();
        let res = self
            .http
            .request(parts.method, &url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| HsError::Unavailable(e.to_string()))?;
        let status = res.status();
        if status.is_server_error() {
            return Err(HsError::Unavailable(format!("status {status}")));
        }
        let headers = res.headers().clone();
        let bytes = res
            .bytes()
            .await
            .map_err(|e| HsError::Unavailable(e.to_string()))?;
        spent(started);
        self.received
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let mut response = http::Response::builder().status(status.as_u16());
        if let Some(h) = response.headers_mut() {
            *h = headers;
        }
        // Text from the homeserver is made storable here, once, before anything reads it.
        let response = response
            .body(crate::web::text::clean_json(bytes.to_vec()))
            .map_err(|e| HsError::Unavailable(e.to_string()))?;
        Resp::try_from_http_response(response).map_err(classify)
    }
}

fn classify(e: FromHttpResponseError<ApiError>) -> HsError {
    match e {
        FromHttpResponseError::Server(err) => {
            let status = err.status_code.as_u16();
            let message = err.to_string();
            match err.error_kind() {
                Some(ErrorKind::UnknownToken(_)) | Some(ErrorKind::MissingToken) => {
                    HsError::TokenRevoked
                }
                Some(ErrorKind::Forbidden) => HsError::Forbidden(message),
                Some(ErrorKind::NotFound) => HsError::NotFound(message),
                _ if status == 401 => HsError::TokenRevoked,
                _ if status == 403 => HsError::Forbidden(message),
                _ if status == 404 => HsError::NotFound(message),
                _ => HsError::Refused(message),
            }
        }
        FromHttpResponseError::Deserialization(e) => HsError::Unavailable(e.to_string()),
        e => HsError::Unavailable(e.to_string()),
    }
}
