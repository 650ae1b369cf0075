//! The `diffusiond` binary: parse flags, set up logging (`RUST_LOG`, default `info`), bind the
//! port and run the daemon until it is stopped.

use anyhow::Context;
use clap::Parser;
use daemon::config::Config;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,actix_server=warn".into()),
        )
        .init();
    let config = Config::parse();
    let host = if config.listen { "0.0.0.0" } else { "127.0.0.1" };
    let listener = std::net::TcpListener::bind((host, config.port))
        .with_context(|| format!("binding {host}:{}", config.port))?;
    daemon::run(config, listener).await?;
    Ok(())
}
