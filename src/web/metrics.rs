//! One structured log line per request, and Prometheus metrics (requests and latency by route,
//! outbox pending/failed) on `/metrics`, restricted to configured addresses or a bearer token.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::{ContentType, Method, Status};
use rocket::request::{FromRequest, Outcome};
use rocket::{Data, Request, Response, State};

use crate::config::Config;
use crate::db::Db;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// FNV-1a, for the metrics' keys: route templates and statuses the portal itself defines, hashed
/// twice on every request, need no protection against chosen keys (SipHash's cost).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// Series by route template, then by method and status: recording a request allocates only the
/// first time its route is seen.
type ByStatus = FnvMap<(Method, u16), Series>;

#[derive(Default)]
pub struct Metrics {
    by_route: Mutex<FnvMap<String, ByStatus>>,
}

impl Metrics {
    fn observe(&self, method: Method, route: &str, status: u16, secs: f64) {
        let Ok(mut map) = self.by_route.lock() else {
            return;
        };
        let statuses = match map.get_mut(route) {
            Some(s) => s,
            None => map.entry(route.to_owned()).or_default(),
        };
        let s = statuses.entry((method, status)).or_default();
        s.count += 1;
        s.sum += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                s.buckets[i] += 1;
            }
        }
    }

    pub fn render(&self, outbox: &[(String, i64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP portal_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE portal_http_requests_total counter\n");
        let by_route = match self.by_route.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        // Sorted, so that the page reads the same from one scrape to the next.
        let map: BTreeMap<(&str, &str, u16), &Series> = by_route
            .iter()
            .flat_map(|(route, statuses)| {
                statuses
                    .iter()
                    .map(move |((m, st), s)| ((m.as_str(), route.as_str(), *st), s))
            })
            .collect();
        for ((m, r, st), s) in map.iter() {
            let _ = writeln!(
                out,
                "portal_http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{st}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP portal_http_request_duration_seconds Time to answer, by route.\n");
        out.push_str("# TYPE portal_http_request_duration_seconds histogram\n");
        for ((m, r, st), s) in map.iter() {
            let labels = format!("method=\"{m}\",route=\"{r}\",status=\"{st}\"");
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "portal_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "portal_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "portal_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "portal_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out.push_str("# HELP portal_outbox_mails Mails in the outbox by status.\n");
        out.push_str("# TYPE portal_outbox_mails gauge\n");
        for (status, n) in outbox {
            let _ = writeln!(out, "portal_outbox_mails{{status=\"{status}\"}} {n}");
        }
        out
    }
}

/// When the request arrived, and the time a page spent waiting on the homeserver, set by its
/// handler (`chat::hs::timed`): the response then carries `Server-Timing` with that time and the
/// portal's own (the rest). One entry of the request's local cache, made by the request log.
pub struct Timing {
    started: Instant,
    homeserver: Mutex<Option<Duration>>,
}

impl Timing {
    fn starting_now() -> Timing {
        Timing {
            started: Instant::now(),
            homeserver: Mutex::new(None),
        }
    }

    /// The time this request spent waiting on the homeserver.
    pub fn set(&self, spent: Duration) {
        if let Ok(mut t) = self.homeserver.lock() {
            *t = Some(spent);
        }
    }

    fn homeserver(&self) -> Option<Duration> {
        self.homeserver.lock().ok().and_then(|t| *t)
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for &'r Timing {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        Outcome::Success(req.local_cache(Timing::starting_now))
    }
}

/// Times each request and writes its log line and metrics.
pub struct RequestLog;

#[rocket::async_trait]
impl Fairing for RequestLog {
    fn info(&self) -> Info {
        Info {
            name: "Request log and metrics",
            kind: Kind::Request | Kind::Response,
        }
    }

    async fn on_request(&self, req: &mut Request<'_>, _: &mut Data<'_>) {
        req.local_cache(Timing::starting_now);
    }

    async fn on_response<'r>(&self, req: &'r Request<'_>, res: &mut Response<'r>) {
        let timing = req.local_cache(Timing::starting_now);
        let total = timing.started.elapsed();
        let secs = total.as_secs_f64();
        if let Some(hs) = timing.homeserver() {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            res.set_raw_header(
                "Server-Timing",
                format!(
                    "hs;desc=\"homeserver\";dur={:.3}, app;desc=\"portal\";dur={:.3}",
                    ms(hs),
                    ms(total.saturating_sub(hs))
                ),
            );
        }
        // The route's template (`/room/<id>`), never the raw path: paths may carry tokens.
        let route = req
            .route()
            .map_or("unmatched", |r| r.uri.origin.path().as_str());
        let status = res.status().code;
        tracing::info!(
            target: "request",
            method = req.method().as_str(),
            route,
            status,
            duration_ms = secs * 1000.0,
        );
        if let Some(m) = req.rocket().state::<Metrics>() {
            m.observe(req.method(), route, status, secs);
        }
    }
}

/// Access to /metrics: a configured address, or the bearer token.
pub struct MetricsAccess;

#[rocket::async_trait]
impl<'r> FromRequest<'r> for MetricsAccess {
    type Error = ();
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        let Some(config) = req.rocket().state::<Config>() else {
            return Outcome::Error((Status::InternalServerError, ()));
        };
        let m = &config.settings.metrics;
        let by_ip = crate::web::client::client_addr(req)
            .is_some_and(|ip: IpAddr| m.allow_ips.contains(&ip));
        let by_token = m.token.as_deref().is_some_and(|t| {
            req.headers()
                .get_one("Authorization")
                .and_then(|h| h.strip_prefix("Bearer "))
                .is_some_and(|given| {
                    crate::crypto::constant_time_eq(given.as_bytes(), t.as_bytes())
                })
        });
        if by_ip || by_token {
            Outcome::Success(MetricsAccess)
        } else {
            Outcome::Error((Status::Forbidden, ()))
        }
    }
}

#[rocket::get("/metrics")]
pub async fn metrics(
    _access: MetricsAccess,
    metrics: &State<Metrics>,
    db: &State<Db>,
) -> (ContentType, String) {
    let outbox = crate::mail::outbox_counts(db).await.unwrap_or_default();
    (
        ContentType::new("text", "plain").with_params(("version", "0.0.4")),
        metrics.render(&outbox),
    )
}
