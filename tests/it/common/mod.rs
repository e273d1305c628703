//! The test kit: a database per test (copied from the migrated template that scripts/test makes),
//! real SMTP servers (aiosmtpd) a test can stop and restart, and the portal under test.

#![allow(dead_code)]

pub mod cluster;
pub mod haproxy;
pub mod hostile;
pub mod http;
pub mod matrix;
pub mod pg;
pub mod portal;
pub mod smtp;

use std::net::TcpListener;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rocket::figment::Figment;
use rocket::local::asynchronous::Client;
use tchap_portal::db::Db;

pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with scripts/test"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn admin_url() -> String {
    env("IT_ADMIN_URL")
}

/// A database of its own, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A database copied from the migrated template.
    pub async fn new() -> TestDb {
        TestDb::create(Some(&env("IT_TEMPLATE"))).await
    }

    /// An empty database, as a first start meets it.
    pub async fn empty() -> TestDb {
        TestDb::create(None).await
    }

    async fn create(template: Option<&str>) -> TestDb {
        let name = format!(
            "t_{}",
            tchap_portal::crypto::random_token(9)
                .expect("rand")
                .to_lowercase()
                .replace(['-', '_'], "x")
        );
        let mut admin = AsyncPgConnection::establish(&admin_url())
            .await
            .expect("admin connection");
        let template = template
            .map(|t| format!(" TEMPLATE \"{t}\""))
            .unwrap_or_default();
        diesel::sql_query(format!("CREATE DATABASE \"{name}\"{template}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let url = admin_url()
            .rsplit_once('/')
            .map(|(base, _)| format!("{base}/{name}"))
            .expect("url");
        TestDb { name, url }
    }

    pub async fn drop_now(&self) {
        let mut admin = AsyncPgConnection::establish(&admin_url())
            .await
            .expect("admin connection");
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("drop the test database");
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("test database connection")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async: a thread with its own runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = rocket::tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut admin = AsyncPgConnection::establish(&admin_url()).await.ok()?;
                diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// The portal's settings for a test: its database, the test Synapse, no mail worker unless asked.
/// (scripts/test leaves no PORTAL_* variable to the tests: those are global and would beat what a
/// test merges here.)
pub fn figment(db: &TestDb) -> Figment {
    tchap_portal::config::figment()
        .merge(("portal.database_url", db.url.clone()))
        .merge(("portal.matrix.homeserver", matrix::homeserver()))
        .merge(("portal.db.pool_size", 4))
        .merge(("portal.db.run_migrations", false))
        .merge(("portal.mail.worker", false))
        .merge((
            "portal.mail.file_dir",
            std::env::temp_dir()
                .join("tchap-portal-test-mail")
                .display()
                .to_string(),
        ))
}

pub struct TestApp {
    pub db: TestDb,
    pub client: Client,
}

impl TestApp {
    pub async fn new() -> TestApp {
        let db = TestDb::new().await;
        let fig = figment(&db);
        TestApp::with_figment(db, fig).await
    }

    pub async fn with_figment(db: TestDb, figment: Figment) -> TestApp {
        let rocket = tchap_portal::build(figment)
            .expect("valid test settings")
            .mount("/test", rocket::routes![status]);
        let client = Client::tracked(rocket).await.expect("the portal starts");
        TestApp { db, client }
    }

    /// Another browser on the same portal and database (another agent's cookies).
    pub async fn another_browser(&self) -> Client {
        let rocket = tchap_portal::build(figment(&self.db)).expect("valid test settings");
        Client::tracked(rocket).await.expect("the portal starts")
    }

    pub fn pool(&self) -> &Db {
        self.client.rocket().state::<Db>().expect("pool")
    }

    /// The statements kept prepared on the pool's next connection, each with how many times it
    /// ran (PostgreSQL's own count of plans made for it). With a pool of one connection, every
    /// request ran on it.
    pub async fn prepared_runs(&self) -> Vec<(String, i64)> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            statement: String,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            runs: i64,
        }
        let mut conn = self.pool().get().await.expect("a pooled connection");
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT statement, generic_plans + custom_plans AS runs FROM pg_prepared_statements",
        )
        .load(&mut *conn)
        .await
        .expect("pg_prepared_statements");
        rows.into_iter().map(|r| (r.statement, r.runs)).collect()
    }
}

/// How many times the one prepared statement containing `needle` ran (panics if there is not
/// exactly one: a statement prepared again for every call would show up several times, or not
/// at all when it is never prepared).
pub fn runs_of(prepared: &[(String, i64)], needle: &str) -> i64 {
    let found: Vec<i64> = prepared
        .iter()
        .filter(|(sql, _)| sql.contains(needle))
        .map(|(_, runs)| *runs)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one prepared statement with {needle:?}, in {prepared:#?}"
    );
    found[0]
}

/// Answers any status, to reach every catcher (mounted by the tests only).
#[rocket::get("/status/<code>")]
fn status(code: u16) -> rocket::http::Status {
    rocket::http::Status::new(code)
}

/// The value of the CSRF hidden field in a page, as a browser would submit it.
pub fn csrf_token(html: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let start = html.find(marker).expect("a CSRF field in the page") + marker.len();
    html[start..].split('"').next().expect("token").to_owned()
}

/// The text of the page's `<title>`.
pub fn title(html: &str) -> String {
    let start = html.find("<title>").expect("a <title>") + "<title>".len();
    let end = html[start..].find("</title>").expect("</title>") + start;
    html[start..end].trim().to_owned()
}

/// Decodes the entities Tera's escaping produces, as a browser does for attribute values.
pub fn unescape(html: &str) -> String {
    html.replace("&#x2F;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Logs in through the login form (a new session even when one exists).
pub async fn log_in(
    client: &rocket::local::asynchronous::Client,
    identifier: &str,
    password: &str,
) {
    use rocket::http::{ContentType, Status};
    let page = client
        .get("/connexion?force=1")
        .dispatch()
        .await
        .into_string()
        .await
        .expect("page");
    let enc = tchap_portal::accounts::matrix::percent_encode;
    let res = client
        .post("/connexion")
        .header(ContentType::Form)
        .body(format!(
            "csrf_token={}&identifier={}&password={}",
            csrf_token(&page),
            enc(identifier),
            enc(password)
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther, "logged in as {identifier}");
}

/// A GET as the browser makes it: (status, `Location`, body with entities decoded).
pub async fn get(client: &Client, path: &str) -> (rocket::http::Status, Option<String>, String) {
    answer(client.get(path.to_owned()).dispatch().await).await
}

/// A GET's body exactly as sent (entities kept): for assertions on the HTML itself.
pub async fn get_raw(client: &Client, path: &str) -> (rocket::http::Status, String) {
    let res = client.get(path.to_owned()).dispatch().await;
    (res.status(), res.into_string().await.unwrap_or_default())
}

/// The CSRF token of the form on `path`, as a browser reads it from the page.
/// A confidential OpenID client (pairwise subjects, RS256) registered at `redirect_uri`: its
/// `client_id` and secret.
pub async fn confidential_client(
    conn: &mut AsyncPgConnection,
    name: &str,
    redirect_uri: &str,
) -> (String, String) {
    use tchap_portal::oidc::clients::{self, NewClient};
    let (client, secret) = clients::add(
        conn,
        &NewClient {
            name: name.into(),
            redirect_uris: vec![redirect_uri.into()],
            post_logout_redirect_uris: vec![],
            public: false,
            subject_type: "pairwise".into(),
            id_token_alg: "RS256".into(),
            userinfo_signed: false,
        },
        chrono::Utc::now(),
    )
    .await
    .expect("client");
    (
        client.client_id,
        secret.expect("a confidential client has a secret"),
    )
}

pub async fn form_token(client: &Client, path: &str) -> String {
    csrf_token(&get_raw(client, path).await.1)
}

/// The value of the first hidden or text field named `name` in a page.
pub fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("a field {name} in the page"))
        + marker.len();
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A form POST (`application/x-www-form-urlencoded` body): (status, `Location`, decoded body).
pub async fn post_form(
    client: &Client,
    path: &str,
    body: String,
) -> (rocket::http::Status, Option<String>, String) {
    answer(
        client
            .post(path.to_owned())
            .header(rocket::http::ContentType::Form)
            .body(body)
            .dispatch()
            .await,
    )
    .await
}

async fn answer(
    res: rocket::local::asynchronous::LocalResponse<'_>,
) -> (rocket::http::Status, Option<String>, String) {
    let status = res.status();
    let location = res.headers().get_one("Location").map(str::to_owned);
    (
        status,
        location,
        unescape(&res.into_string().await.unwrap_or_default()),
    )
}

/// Serves `figment` (its `port`) on a real port, for a browser or a back channel; returns once it
/// accepts connections.
pub async fn launch(figment: Figment, port: u16) {
    let rocket = tchap_portal::build(figment)
        .expect("settings")
        .ignite()
        .await
        .expect("ignite");
    rocket::tokio::spawn(rocket.launch());
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        rocket::tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the portal did not start on port {port}");
}
