//! The connection pool (in Rocket's managed state), embedded migrations and the generated schema.

pub mod schema;

use std::marker::PhantomData;
use std::time::Duration;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

use diesel::Connection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Hook, HookError, Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type Conn = Object<AsyncPgConnection>;

/// How long a pooled connection may sit unused before it is checked on its way out.
const VERIFY_IDLE_AFTER: Duration = Duration::from_secs(5);

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
        // A connection in use a moment ago is handed out as it is (a broken one is still
        // dropped): checking every one with `SELECT 1` cost a round trip per request. One idle
        // longer than `VERIFY_IDLE_AFTER` (a database restart, a proxy's idle timeout) is checked
        // first and replaced if it fails.
        let mut config = ManagerConfig::default();
        config.recycling_method = RecyclingMethod::Fast;
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
        let pool = Pool::builder(manager)
            .max_size(size)
            .pre_recycle(Hook::async_fn(|conn, metrics| {
                let idle = metrics.last_used() >= VERIFY_IDLE_AFTER;
                Box::pin(async move {
                    if idle {
                        use diesel::IntoSql;
                        diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
                            .get_result::<i32>(conn)
                            .await
                            .map_err(|e| HookError::message(e.to_string()))?;
                    }
                    Ok(())
                })
            }))
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

/// Raw SQL kept prepared on its connection. Diesel never caches `sql_query` (it cannot tell a
/// fixed text from one built at run time), so PostgreSQL would parse and plan it on every call;
/// wrapped here, it is prepared once per connection like the query builder's statements. `K`, a
/// type of the call site's own, names the statement: one `K` for one fixed text and bind types.
pub struct Prepared<K, Q> {
    query: Q,
    name: PhantomData<fn() -> K>,
}

pub fn prepared<K: 'static, Q>(query: Q) -> Prepared<K, Q> {
    Prepared {
        query,
        name: PhantomData,
    }
}

impl<K: 'static, Q> QueryId for Prepared<K, Q> {
    type QueryId = K;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<K, Q: Query> Query for Prepared<K, Q> {
    type SqlType = Q::SqlType;
}

impl<K, Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<K, Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.query.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}
