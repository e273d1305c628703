//! `/healthz`: the process answers. `/readyz`: the database answers too, and the portal is not
//! stopping (503 otherwise). [`graceful_stop`]: on SIGTERM or SIGINT, `/readyz` turns 503 at
//! once while requests are still served for `drain_secs` (the balancer sees it and stops sending),
//! then Rocket's own shutdown lets the requests in flight finish (`shutdown.grace` in
//! Rocket.toml) before the process exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use rocket::fairing::AdHoc;
use rocket::http::Status;
use rocket::State;

use crate::db::Db;

/// Set once the portal has been asked to stop.
#[derive(Default, Clone)]
pub struct Stopping(Arc<AtomicBool>);

impl Stopping {
    pub fn is_set(&self) -> bool {
        AtomicBool::load(&self.0, Ordering::SeqCst)
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[rocket::get("/healthz")]
pub fn healthz() -> &'static str {
    "ok"
}

#[rocket::get("/readyz")]
pub async fn readyz(db: &State<Db>, stopping: &State<Stopping>) -> (Status, &'static str) {
    if stopping.is_set() {
        return (Status::ServiceUnavailable, "stopping");
    }
    let ok = match db.get().await {
        Ok(mut conn) => diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .is_ok(),
        Err(_) => false,
    };
    if ok {
        (Status::Ok, "ready")
    } else {
        (Status::ServiceUnavailable, "database unavailable")
    }
}

/// Manages [`Stopping`] and, once launched, waits for SIGTERM or SIGINT (Rocket's own signal
/// handling is switched off in Rocket.toml so that the drain comes first).
pub fn graceful_stop(drain: Duration) -> AdHoc {
    let stopping = Stopping::default();
    let flag = stopping.clone();
    AdHoc::on_ignite("Graceful stop", move |rocket| async move {
        rocket
            .manage(stopping)
            .attach(AdHoc::on_liftoff("Stop signals", move |rocket| {
                let shutdown = rocket.shutdown();
                Box::pin(async move {
                    rocket::tokio::spawn(async move {
                        let signal = wait_for_signal().await;
                        flag.set();
                        tracing::info!(
                            signal,
                            drain_secs = drain.as_secs(),
                            "stopping: /readyz answers 503, requests served until the drain ends"
                        );
                        rocket::tokio::time::sleep(drain).await;
                        tracing::info!("stopping: finishing the requests in flight");
                        shutdown.notify();
                    });
                })
            }))
    })
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use rocket::tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen to stop signals: the portal stops only when killed");
        return std::future::pending().await;
    };
    rocket::tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = rocket::tokio::signal::ctrl_c().await;
    "Ctrl-C"
}
