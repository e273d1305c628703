//! `/healthz`: the process answers. `/readyz`: the database answers too (503 otherwise).

use diesel_async::RunQueryDsl;
use rocket::http::Status;
use rocket::State;

use crate::db::Db;

#[rocket::get("/healthz")]
pub fn healthz() -> &'static str {
    "ok"
}

#[rocket::get("/readyz")]
pub async fn readyz(db: &State<Db>) -> (Status, &'static str) {
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
