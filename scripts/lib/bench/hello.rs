//! The reference "limit" of `scripts/bench`: Rocket's hello-world, built with the portal's own
//! toolchain, Rocket version and release profile. Serves `GET /` on 127.0.0.1:$ROCKET_PORT.

#[rocket::get("/")]
fn index() -> &'static str {
    "Hello, world!"
}

#[rocket::launch]
fn rocket() -> _ {
    let figment = rocket::Config::figment()
        .merge(("address", "127.0.0.1"))
        .merge(("log_level", "critical"));
    rocket::custom(figment).mount("/", rocket::routes![index])
}
