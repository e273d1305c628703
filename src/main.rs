//! `tchap-portal [serve]` runs the portal; other commands are in `tchap_portal::cli`.

use std::process::ExitCode;

use tchap_portal::{cli, config};

#[rocket::main]
async fn main() -> ExitCode {
    // Log lines go to stdout from a thread of their own, through a buffer it flushes whenever it
    // has nothing more to write: a request never waits on a write(2), and under load one write
    // carries many lines. Nothing is dropped (a full queue slows the logging side instead), and
    // the guard flushes what is left when `main` returns.
    let (writer, _flush_at_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    tracing_subscriber::fmt()
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let figment = config::figment();
    if args.is_empty() || args == ["serve"] {
        return match tchap_portal::build(figment) {
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
