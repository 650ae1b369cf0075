//! diffusiond: the HTTP daemon.
//!
//! # Layout
//! - [`config`]: command-line flags.
//! - [`catalog`]: the checkpoint files under the data folder, named as A1111 names them.
//! - [`engine`]: the thread that owns the device and the loaded models.
//! - [`routes`]: the HTTP routes.

pub mod catalog;
pub mod config;
pub mod engine;
pub mod routes;

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use models::device::{parse_device, Placement};

use crate::config::Config;

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub config: Config,
    pub checkpoints: Vec<catalog::CheckpointEntry>,
    pub engine: engine::EngineHandle,
}

/// Prepares the data folder, starts the engine (waiting for its start-up load) and serves HTTP on
/// `listener` until the server stops.
pub async fn run(config: Config, listener: TcpListener) -> anyhow::Result<()> {
    for dir in config.layout() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let device = parse_device(&config.device)
        .with_context(|| format!("--device {}: expected auto, cpu, cuda or cuda:N", config.device))?;
    let placement = Placement::for_device(device, config.bf16);
    let checkpoints = catalog::scan_checkpoints(&config.ckpt_dir());
    tracing::info!(count = checkpoints.len(), dir = %config.ckpt_dir().display(), "checkpoints found");

    let selected = match &config.ckpt {
        Some(p) if Path::new(p).exists() => Some((p.display().to_string(), p.clone())),
        Some(p) => {
            let wanted = p.to_string_lossy();
            let e = catalog::find(&checkpoints, &wanted)
                .with_context(|| format!("--ckpt {wanted}: no such file or checkpoint"))?;
            Some((e.title.clone(), e.path.clone()))
        }
        None => checkpoints.first().map(|e| (e.title.clone(), e.path.clone())),
    };
    if selected.is_none() {
        tracing::warn!("no checkpoint found; put one in {}", config.ckpt_dir().display());
    }
    let (engine, join) = tokio::task::spawn_blocking(move || engine::start(placement, selected)).await??;

    let state = Arc::new(AppState { config, checkpoints, engine: engine.clone() });
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let data = actix_web::web::Data::from(state);
    actix_web::HttpServer::new(move || {
        actix_web::App::new().app_data(data.clone()).configure(routes::configure)
    })
    .listen(listener)?
    .run()
    .await?;
    engine.shutdown();
    let _ = join.join();
    Ok(())
}
