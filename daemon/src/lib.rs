//! diffusiond: the HTTP daemon.
//!
//! # Layout
//! - [`config`]: command-line flags.
//! - [`catalog`]: the model files under the data folder, named and hashed as A1111 does.
//! - [`options`]: the persisted runtime options of `/sdapi/v1/options`.
//! - [`engine`]: the thread that owns the device and the loaded models, and its job queue.
//! - [`validate`]: wire requests → engine jobs.
//! - [`scripts`]: what runs around a generation request: Dynamic Prompts, Randomizer Keywords
//!   ([`keywords`]), the X/Y/Z plot.
//! - [`forever`]: generate-forever jobs, run as background engine work and stored in the data
//!   folder.
//! - [`train`]: LoRA training jobs (`/train`), run on the engine thread in slices.
//! - [`images`]: base64, image decoding, PNG encoding with infotext, output file names.
//! - [`routes`]: the HTTP routes; [`middleware`]: auth, CORS, `X-Process-Time`.
//! - [`error`]: `ApiError`, the one place failures become HTTP responses.

pub mod catalog;
pub mod config;
pub mod engine;
pub mod error;
pub mod forever;
pub mod fsutil;
pub mod generation;
pub mod images;
pub mod keywords;
pub mod middleware;
pub mod options;
pub mod routes;
pub mod scripts;
pub mod train;
pub mod validate;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use models::device::{parse_device, Placement};

use crate::catalog::{Catalog, CatalogDirs, CheckpointEntry};
use crate::config::Config;
use crate::engine::{EngineHandle, EngineLimits, Queue};
use crate::middleware::CorsPolicy;
use crate::options::OptionsStore;

/// The largest request body accepted (init images arrive base64-encoded inside JSON).
pub const MAX_BODY_BYTES: usize = 256 << 20;

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub config: Config,
    pub device: tch::Device,
    pub catalog: Arc<Catalog>,
    pub options: OptionsStore,
    pub engine: EngineHandle,
    /// The checkpoint selected through `sd_model_checkpoint` (what generations use).
    pub selected: RwLock<Option<PathBuf>>,
    pub credentials: Vec<(String, String)>,
    pub cors: Option<CorsPolicy>,
    /// Held while an output file's number is chosen and the file written.
    pub save_lock: Mutex<()>,
    /// The last live preview encoded for `/progress`: (preview serial, base64 PNG).
    pub preview_cache: Mutex<Option<(u64, String)>>,
    /// `<data-dir>/wildcards`, re-read whenever a file in it changes.
    pub wildcards: Arc<wildcards::DirSource>,
}

impl AppState {
    /// The selected checkpoint's catalog entry.
    pub fn selected_entry(&self) -> Option<CheckpointEntry> {
        let path = self.selected.read().expect("selection lock poisoned; this is a bug").clone()?;
        self.catalog.snapshot().checkpoint_at(&path).cloned()
    }

    pub fn select(&self, path: &Path) {
        *self.selected.write().expect("selection lock poisoned; this is a bug") = Some(path.to_path_buf());
    }
}

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("--device {0}: expected auto, cpu, cuda or cuda:N")]
    Device(String),
    #[error("--ckpt {0}: no such file or checkpoint")]
    UnknownCheckpoint(String),
    #[error("{0}")]
    Flag(String),
    #[error(transparent)]
    Engine(#[from] engine::StartError),
    #[error("the server failed: {0}")]
    Server(std::io::Error),
}

/// Prepares the data folder, starts the engine (waiting for its start-up load) and serves HTTP on
/// `listener` until the process is stopped.
pub async fn run(config: Config, listener: TcpListener) -> Result<(), RunError> {
    run_until(config, listener, std::future::pending()).await
}

/// Like [`run`], but stops gracefully once `shutdown` completes: the server stops accepting,
/// the queue closes and `run_until` returns after the engine thread has finished.
pub async fn run_until(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), RunError> {
    for dir in config.layout() {
        std::fs::create_dir_all(&dir).map_err(|source| RunError::Io { path: dir.clone(), source })?;
    }
    let device = parse_device(&config.device).ok_or_else(|| RunError::Device(config.device.clone()))?;
    let placement = Placement::for_device(device, config.bf16);
    let credentials = config.credentials().map_err(RunError::Flag)?;
    let cors =
        CorsPolicy::new(config.cors_allow_origins.as_deref(), config.cors_allow_origins_regex.as_deref())
            .map_err(|e| RunError::Flag(format!("--cors-allow-origins-regex: {e}")))?;

    let extra_checkpoint = config.ckpt.as_ref().filter(|p| p.is_file() || p.is_dir()).cloned();
    let dirs = CatalogDirs {
        data_dir: config.data_dir.clone(),
        ckpt_dir: config.ckpt_dir(),
        lora_dir: config.lora_dir(),
        vae_dir: config.vae_dir(),
        embeddings_dir: config.embeddings_dir(),
        extra_checkpoint,
    };
    let catalog = Arc::new(
        tokio::task::spawn_blocking(move || Catalog::load(dirs))
            .await
            .expect("catalog scan panicked; this is a bug"),
    );
    let options = OptionsStore::load(&config.data_dir.join("config.json"));
    let snapshot = catalog.snapshot();
    tracing::info!(count = snapshot.checkpoints.len(), dir = %config.ckpt_dir().display(), "checkpoints found");

    // Start-up checkpoint: --ckpt, else the one last selected through the options, else the
    // first one found.
    let selected = match &config.ckpt {
        Some(p) if p.exists() => snapshot.checkpoint_at(p).cloned(),
        Some(p) => Some(
            snapshot
                .find_checkpoint(&p.to_string_lossy())
                .cloned()
                .ok_or_else(|| RunError::UnknownCheckpoint(p.display().to_string()))?,
        ),
        None => {
            let remembered = options.get("sd_model_checkpoint").and_then(|v| v.as_str().map(str::to_string));
            remembered
                .and_then(|name| {
                    let found = snapshot.find_checkpoint(&name).cloned();
                    if found.is_none() {
                        tracing::warn!(checkpoint = %name, "the remembered checkpoint is gone; using the first one");
                    }
                    found
                })
                .or_else(|| snapshot.checkpoints.first().cloned())
        }
    };
    if selected.is_none() {
        tracing::warn!("no checkpoint found; put one in {}", config.ckpt_dir().display());
    }

    let queue = Queue::spawn(config.max_queued as usize);
    let limits = EngineLimits {
        vram_checkpoints: config.vram_checkpoints as usize,
        ram_checkpoints: config.ram_checkpoints as usize,
    };
    // The file is hashed while the engine loads it, so titles are final from the first request.
    let initial = selected.as_ref().map(|e| e.reference());
    let engine_queue = queue.clone();
    let engine_start =
        tokio::task::spawn_blocking(move || engine::start(placement, limits, engine_queue, initial));
    let hashing = selected.as_ref().map(|e| {
        let (catalog, path) = (catalog.clone(), e.path.clone());
        tokio::task::spawn_blocking(move || catalog.hash_checkpoint(&path))
    });
    let (engine, join) = engine_start.await.expect("engine start panicked; this is a bug")?;
    if let Some(hashing) = hashing {
        if let Ok(Err(e)) = hashing.await {
            tracing::warn!(cause = %e, "could not hash the start-up checkpoint");
        }
    }

    let wildcards_dir = config.data_dir.join("wildcards");
    let state = Arc::new(AppState {
        config,
        device,
        catalog,
        options,
        engine: engine.clone(),
        selected: RwLock::new(selected.as_ref().map(|e| e.path.clone())),
        credentials,
        cors,
        save_lock: Mutex::new(()),
        preview_cache: Mutex::new(None),
        wildcards: Arc::new(wildcards::DirSource::new(wildcards_dir)),
    });
    if let Some(entry) = state.selected_entry() {
        if let Err(e) = state.options.set([("sd_model_checkpoint".to_string(), entry.title().into())]) {
            tracing::warn!(cause = %e, "could not write config.json");
        }
    }
    let addr = listener.local_addr().map_err(RunError::Server)?;
    tracing::info!(%addr, "listening");
    let data = actix_web::web::Data::from(state);
    let forever = Arc::new(forever::Forever::load(&data.config.data_dir));
    forever.resume(data.clone());
    let forever_data = actix_web::web::Data::from(forever.clone());
    let training = Arc::new(train::TrainManager::load(
        &data.config.data_dir,
        &data.config.lora_dir(),
        Placement::for_device(data.device, data.config.bf16),
    ));
    training.spawn(engine.clone(), data.catalog.clone());
    let training_data = actix_web::web::Data::from(training.clone());
    let server = actix_web::HttpServer::new(move || {
        use actix_web::middleware::{from_fn, Compress};
        actix_web::App::new()
            .app_data(data.clone())
            .app_data(forever_data.clone())
            .app_data(training_data.clone())
            // Generation requests carry base64 images; actix's default limit is 256 KiB.
            .app_data(actix_web::web::PayloadConfig::new(MAX_BODY_BYTES))
            .configure(routes::configure)
            .wrap(from_fn(middleware::cors))
            .wrap(Compress::default())
            .wrap(from_fn(middleware::process_time))
    })
    .listen(listener)
    .map_err(RunError::Server)?
    .run();
    let handle = server.handle();
    let stopping_training = training.clone();
    actix_web::rt::spawn(async move {
        shutdown.await;
        // No new training slice once stopping begins: the run resumes from its last save.
        stopping_training.close();
        handle.stop(true).await;
    });
    let result = server.await.map_err(RunError::Server);
    // Before the engine stops, so that batches it cuts short are not counted as failures.
    forever.close();
    training.close();
    engine.shutdown();
    let _ = tokio::task::spawn_blocking(move || join.join()).await;
    result
}
