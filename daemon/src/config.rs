//! Command-line configuration. Flag names follow A1111 where it has one.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(name = "diffusiond", version, about = "A Stable Diffusion daemon with the AUTOMATIC1111 API")]
pub struct Config {
    /// Data folder, in A1111's layout (models/Stable-diffusion, models/Lora, models/VAE,
    /// models/ESRGAN, embeddings, wildcards, outputs, config.json). Created when missing.
    #[arg(long, default_value = "./data", env = "DIFFUSIOND_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Checkpoint folder (default: <data-dir>/models/Stable-diffusion).
    #[arg(long)]
    pub ckpt_dir: Option<PathBuf>,

    /// Checkpoint to load at start (a path, or a name under the checkpoint folder). Default: the
    /// last one selected through the options, else the first one found.
    #[arg(long)]
    pub ckpt: Option<PathBuf>,

    /// Port to listen on.
    #[arg(long, default_value_t = 7860)]
    pub port: u16,

    /// Listen on all interfaces (0.0.0.0) instead of 127.0.0.1.
    #[arg(long)]
    pub listen: bool,

    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,

    /// Compute in bf16 instead of fp16 on CUDA.
    #[arg(long)]
    pub bf16: bool,
}

impl Config {
    pub fn ckpt_dir(&self) -> PathBuf {
        self.ckpt_dir.clone().unwrap_or_else(|| self.data_dir.join("models/Stable-diffusion"))
    }

    /// The A1111 data-folder layout, created at start.
    pub fn layout(&self) -> Vec<PathBuf> {
        [
            "models/Stable-diffusion",
            "models/Lora",
            "models/VAE",
            "models/ESRGAN",
            "embeddings",
            "wildcards",
            "outputs",
        ]
        .iter()
        .map(|d| self.data_dir.join(d))
        .collect()
    }
}
