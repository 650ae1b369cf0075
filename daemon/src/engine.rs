//! The engine: one named OS thread owns the device and every tensor. It loads the start-up
//! checkpoint and reports the outcome over a one-shot channel before the server accepts
//! requests (the ready handshake), then serves commands from a bounded queue.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use models::checkpoint::StableDiffusion;
use models::device::Placement;

/// What the engine has loaded, readable without going through the engine thread.
#[derive(Clone, Debug, Default)]
pub struct EngineStatus {
    /// Title of the loaded checkpoint.
    pub checkpoint: Option<String>,
    /// One line describing the loaded architecture.
    pub architecture: Option<String>,
}

/// Commands the engine thread accepts.
pub enum EngineCommand {
    Shutdown,
}

/// A cheap handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::SyncSender<EngineCommand>,
    pub status: Arc<RwLock<EngineStatus>>,
}

impl EngineHandle {
    pub fn shutdown(&self) {
        let _ = self.commands.send(EngineCommand::Shutdown);
    }
}

/// Starts the engine thread and waits until it has loaded `checkpoint` (title and path), if any.
pub fn start(
    placement: Placement,
    checkpoint: Option<(String, PathBuf)>,
) -> anyhow::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (commands, rx) = mpsc::sync_channel::<EngineCommand>(16);
    let status = Arc::new(RwLock::new(EngineStatus::default()));
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let thread_status = status.clone();
    let join = std::thread::Builder::new().name("engine".into()).spawn(move || {
        let mut _model: Option<StableDiffusion> = None;
        if let Some((title, path)) = checkpoint {
            let started = Instant::now();
            match StableDiffusion::load(&path, placement) {
                Ok(model) => {
                    let c = &model.config;
                    let arch = format!(
                        "{}: UNet {} ch × {:?}, {} input channels, context {}; CLIP {} wide, {} layers; VAE {} ch × {:?}",
                        c.family.name(),
                        c.unet.model_channels,
                        c.unet.channel_mult,
                        c.unet.in_channels,
                        c.unet.context_dim,
                        c.clip.hidden,
                        c.clip.layers,
                        c.vae.ch,
                        c.vae.ch_mult,
                    );
                    tracing::info!(checkpoint = %title, seconds = started.elapsed().as_secs_f64(), "loaded {arch}");
                    let mut s = thread_status.write().expect("status lock poisoned; this is a bug");
                    s.checkpoint = Some(title);
                    s.architecture = Some(arch);
                    _model = Some(model);
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(format!("loading {title}: {err}")));
                    return;
                }
            }
        }
        let _ = ready_tx.send(Ok(()));
        // The only command so far is Shutdown (generation jobs come with the API routes that
        // submit them); the thread keeps the model alive until then.
        let _ = rx.recv();
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((EngineHandle { commands, status }, join)),
        Ok(Err(e)) => anyhow::bail!(e),
        Err(_) => anyhow::bail!("the engine thread stopped while loading"),
    }
}
