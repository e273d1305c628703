//! Background jobs: a task run on every instance at a fixed period until shutdown. Each task is
//! idempotent (instances may run it at the same time), takes a connection from the pool, and logs
//! its own outcome.

use std::future::Future;
use std::time::Duration;

use rocket::fairing::AdHoc;

use crate::db::{Conn, Db};

/// When the task runs first: at liftoff, or after one period (when ignition already did the work).
#[derive(Clone, Copy)]
pub enum First {
    Now,
    AfterPeriod,
}

pub fn every<F, Fut>(name: &'static str, period: Duration, first: First, mut task: F) -> AdHoc
where
    F: FnMut(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    AdHoc::on_liftoff(name, move |rocket| {
        Box::pin(async move {
            let Some(db) = rocket.state::<Db>().cloned() else {
                return;
            };
            let mut shutdown = rocket.shutdown();
            rocket::tokio::spawn(async move {
                let mut wait = matches!(first, First::AfterPeriod);
                loop {
                    if wait {
                        rocket::tokio::select! {
                            _ = rocket::tokio::time::sleep(period) => {}
                            _ = &mut shutdown => return,
                        }
                    }
                    wait = true;
                    match db.get().await {
                        Ok(conn) => task(conn).await,
                        Err(e) => {
                            tracing::warn!(job = name, error = %e, "job skipped: no database")
                        }
                    }
                }
            });
        })
    })
}
