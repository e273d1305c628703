//! The connection pool (in Rocket's managed state), embedded migrations and the generated schema.

pub mod connect;
pub mod schema;

use std::marker::PhantomData;
use std::time::Duration;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::{Connection, QueryResult};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
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

/// Whether a failed query is the database's trouble (lost or refused connection, a timeout, a
/// server shutting down or read-only after a failover, a conflict worth retrying): the request
/// is answered 503 and may be tried again. The rest (a constraint broken, a value that does not
/// decode) is a mistake of the portal's: 500. Unknown server errors count as unavailable, as
/// their SQLSTATE is not passed on by diesel-async and their text may be localised.
pub fn is_unavailable(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind as K, Error as E};
    match e {
        E::DatabaseError(kind, _) => !matches!(
            kind,
            K::UniqueViolation
                | K::ForeignKeyViolation
                | K::NotNullViolation
                | K::CheckViolation
                | K::RestrictViolation
                | K::ExclusionViolation
        ),
        E::RollbackErrorOnCommit { .. } | E::BrokenTransactionManager => true,
        _ => false,
    }
}

impl DbError {
    /// See [`is_unavailable`].
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Unavailable(_) => true,
            DbError::Query(e) => is_unavailable(e),
        }
    }
}

impl Db {
    /// A pool of at most `size` connections to `url` (several hosts allowed), a request waiting
    /// at most `timeout` for one, each connection bounded by `limits` (see [`connect`]).
    pub fn new(
        url: &str,
        size: usize,
        timeout: Duration,
        limits: connect::Limits,
    ) -> Result<Db, String> {
        // A pooled connection is handed out as it is, without diesel-async's default `SELECT 1`
        // first (a round trip per request). One the server closed (a restart, an idle timeout,
        // the watchdog) is seen as broken and replaced; one that fails during a request is
        // dropped after it.
        let mut config = ManagerConfig::default();
        config.recycling_method = RecyclingMethod::Fast;
        config.custom_setup = Box::new(move |url| Box::pin(connect::connect(url, limits)));
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
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

/// The advisory lock migrations run under: instances starting together on one database take
/// turns, and each after the first finds nothing left to apply.
const MIGRATION_LOCK: i64 = 0x7463_6861_7001; // "tchap" + 1

/// Applies pending migrations on a dedicated blocking connection, under [`MIGRATION_LOCK`];
/// returns the versions applied.
pub async fn migrate(url: &str) -> Result<Vec<String>, String> {
    use diesel::RunQueryDsl;
    let url = url.to_owned();
    rocket::tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(|e| format!("cannot connect to the database: {e}"))?;
        // Session-level: released by the unlock below, or by the server if this process dies.
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .execute(&mut conn)
            .map_err(|e| format!("cannot take the migration lock: {e}"))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|v| v.iter().map(|v| v.to_string()).collect())
            .map_err(|e| format!("migration failed: {e}"));
        let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .execute(&mut conn);
        applied
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

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind as K, Error as E};

    fn db_error(kind: K, message: &str) -> E {
        E::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn the_databases_trouble_is_unavailable_the_portals_mistakes_are_not() {
        for unavailable in [
            db_error(K::ClosedConnection, "server closed the connection"),
            db_error(K::UnableToSendCommand, "connection closed"),
            db_error(K::SerializationFailure, "could not serialize"),
            db_error(K::ReadOnlyTransaction, "read-only transaction"),
            db_error(K::Unknown, "canceling statement due to statement timeout"),
            db_error(K::Unknown, "annulation de l'instruction à cause du délai"),
            E::BrokenTransactionManager,
        ] {
            assert!(is_unavailable(&unavailable), "{unavailable:?}");
            assert!(DbError::Query(unavailable).is_unavailable());
        }
        for mistake in [
            db_error(K::UniqueViolation, "duplicate key"),
            db_error(K::ForeignKeyViolation, "violates foreign key"),
            db_error(K::NotNullViolation, "null value"),
            db_error(K::CheckViolation, "check"),
            E::NotFound,
            E::QueryBuilderError("bad".into()),
        ] {
            assert!(!is_unavailable(&mistake), "{mistake:?}");
        }
        assert!(DbError::Unavailable("timed out".into()).is_unavailable());
    }
}
