//! The connection pool (in Rocket's managed state), embedded migrations and the generated schema.

pub mod schema;

use std::time::Duration;

use diesel::Connection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type Conn = Object<AsyncPgConnection>;

/// The pool, with a bound on how long a request waits for a connection.
#[derive(Clone)]
pub struct Db {
    pool: Pool<AsyncPgConnection>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

impl Db {
    pub fn new(url: &str, size: usize, timeout: Duration) -> Result<Db, String> {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        let pool = Pool::builder(manager)
            .max_size(size)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Db { pool, timeout })
    }

    pub async fn get(&self) -> Result<Conn, DbError> {
        match rocket::tokio::time::timeout(self.timeout, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(DbError::Unavailable(e.to_string())),
            Err(_) => Err(DbError::Unavailable("timed out".into())),
        }
    }
}

/// Applies pending migrations on a dedicated blocking connection; returns the versions applied.
pub async fn migrate(url: &str) -> Result<Vec<String>, String> {
    let url = url.to_owned();
    rocket::tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(|e| format!("cannot connect to the database: {e}"))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| format!("migration failed: {e}"))?;
        Ok(applied.iter().map(|v| v.to_string()).collect())
    })
    .await
    .map_err(|e| e.to_string())?
}
