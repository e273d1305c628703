//! The database as instances meet it: migrations at a first start.

use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

use crate::common::TestDb;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[rocket::async_test]
async fn instances_starting_together_on_an_empty_database_migrate_it_once() {
    let db = TestDb::empty().await;
    let migrations = std::fs::read_dir("migrations")
        .expect("migrations folder")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count();
    let runs =
        rocket::futures::future::join_all((0..4).map(|_| tchap_portal::db::migrate(&db.url))).await;
    let applied: Vec<usize> = runs
        .into_iter()
        .map(|r| r.expect("every instance starts").len())
        .collect();
    let mut sorted = applied.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![0, 0, 0, migrations],
        "one applies them all: {applied:?}"
    );
    let mut conn = db.conn().await;
    let recorded: Count = diesel::sql_query("SELECT count(*) AS n FROM __diesel_schema_migrations")
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(recorded.n as usize, migrations);
}
