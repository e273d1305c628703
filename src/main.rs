//! `tchap-portal [serve]` runs the portal; `tchap-portal migrate` applies the migrations and exits.

use std::process::ExitCode;

use tchap_portal::config::{self, Config};

const USAGE: &str = "usage: tchap-portal [serve | migrate | help]

  serve     run the portal (default): migrations, mail worker, web server
  migrate   apply pending database migrations and exit
  mail-test ADDRESS
            queue a test mail to ADDRESS (a running portal's worker sends it)

Settings come from Rocket.toml, PORTAL_* and ROCKET_* variables and DATABASE_URL (see README.md).";

#[rocket::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let figment = config::figment();
    match args.first().map(String::as_str).unwrap_or("serve") {
        "serve" => match tchap_portal::build(figment) {
            Ok(rocket) => match rocket.launch().await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        "migrate" => {
            let config = match Config::from_figment(&figment) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match tchap_portal::db::migrate(&config.database_url).await {
                Ok(applied) => {
                    println!("{} migration(s) applied", applied.len());
                    for v in applied {
                        println!("  {v}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "mail-test" => {
            let Some(to) = args.get(1) else {
                eprintln!("usage: tchap-portal mail-test ADDRESS");
                return ExitCode::from(2);
            };
            match mail_test(&figment, to).await {
                Ok(id) => {
                    println!("queued {id} to {to}: see the portal's log for its delivery");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn mail_test(figment: &rocket::figment::Figment, to: &str) -> Result<String, String> {
    use tchap_portal::mail::{enqueue, Mail, Mailer};
    let config = Config::from_figment(figment).map_err(|e| e.to_string())?;
    let db = tchap_portal::db::Db::new(&config.database_url, 1, std::time::Duration::from_secs(5))?;
    let mailer = Mailer::new("templates", &config)?;
    let mut conn = db.get().await.map_err(|e| e.to_string())?;
    enqueue(&mut conn, &mailer, Mail::test(to), chrono::Utc::now())
        .await
        .map_err(|e| e.to_string())
}
