//! `tchap-portal [serve]` runs the portal; other commands are in `tchap_portal::cli`.

use std::process::ExitCode;

use tchap_portal::{cli, config};

#[rocket::main]
async fn main() -> ExitCode {
    // Log lines go to a buffer written out when full and every 100 ms (`logging`); what is left
    // is written before `main` returns.
    let log = tchap_portal::logging::BufferedStdout::start();
    tracing_subscriber::fmt()
        .with_writer(log.clone())
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let code = run().await;
    let _ = log.flush_now();
    code
}

async fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let figment = config::figment();
    if args.is_empty() || args == ["serve"] {
        return match tchap_portal::build(figment) {
            Ok(rocket) => match rocket.launch().await {
                Ok(stopped) => {
                    // The mails in hand are finished (marked sent) before the process exits.
                    if let Some(worker) = stopped.state::<tchap_portal::mail::worker::Handle>() {
                        worker.finish(std::time::Duration::from_secs(30)).await;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    match cli::run(&args, &figment).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
