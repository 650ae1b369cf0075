//! Command-line configuration. Flag names follow A1111 where it has one; every flag can also be
//! set through a `DIFFUSIOND_*` environment variable.

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
    #[arg(long, env = "DIFFUSIOND_CKPT_DIR")]
    pub ckpt_dir: Option<PathBuf>,

    /// LoRA folder (default: <data-dir>/models/Lora).
    #[arg(long, env = "DIFFUSIOND_LORA_DIR")]
    pub lora_dir: Option<PathBuf>,

    /// Standalone VAE folder (default: <data-dir>/models/VAE).
    #[arg(long, env = "DIFFUSIOND_VAE_DIR")]
    pub vae_dir: Option<PathBuf>,

    /// Textual-inversion embeddings folder (default: <data-dir>/embeddings).
    #[arg(long, env = "DIFFUSIOND_EMBEDDINGS_DIR")]
    pub embeddings_dir: Option<PathBuf>,

    /// Checkpoint to load at start (a path, or a name under the checkpoint folder). Default: the
    /// last one selected through the options, else the first one found.
    #[arg(long, env = "DIFFUSIOND_CKPT")]
    pub ckpt: Option<PathBuf>,

    /// Port to listen on.
    #[arg(long, default_value_t = 7860, env = "DIFFUSIOND_PORT")]
    pub port: u16,

    /// Listen on all interfaces (0.0.0.0) instead of 127.0.0.1.
    #[arg(long, env = "DIFFUSIOND_LISTEN")]
    pub listen: bool,

    /// HTTP Basic credentials required on every /sdapi/v1 route: `user:pass[,user2:pass2...]`.
    #[arg(long, env = "DIFFUSIOND_API_AUTH")]
    pub api_auth: Option<String>,

    /// Origins allowed to call the API from a browser (comma-separated; `*` for any).
    #[arg(long, env = "DIFFUSIOND_CORS_ALLOW_ORIGINS")]
    pub cors_allow_origins: Option<String>,

    /// A regular expression for allowed browser origins (matched against the whole origin).
    #[arg(long, env = "DIFFUSIOND_CORS_ALLOW_ORIGINS_REGEX")]
    pub cors_allow_origins_regex: Option<String>,

    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", env = "DIFFUSIOND_DEVICE")]
    pub device: String,

    /// Compute in bf16 instead of fp16 on CUDA.
    #[arg(long, env = "DIFFUSIOND_BF16")]
    pub bf16: bool,

    /// Checkpoints kept loaded on the device; switching to one of them loads nothing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), env = "DIFFUSIOND_VRAM_CHECKPOINTS")]
    pub vram_checkpoints: u32,

    /// Checkpoints kept in host memory after they leave the device (on CPU both tiers are host
    /// memory).
    #[arg(long, default_value_t = 0, env = "DIFFUSIOND_RAM_CHECKPOINTS")]
    pub ram_checkpoints: u32,

    /// Generation requests allowed to wait in the queue before new ones are refused with 503.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..), env = "DIFFUSIOND_MAX_QUEUED")]
    pub max_queued: u32,
}

impl Config {
    pub fn ckpt_dir(&self) -> PathBuf {
        self.ckpt_dir.clone().unwrap_or_else(|| self.data_dir.join("models/Stable-diffusion"))
    }

    pub fn lora_dir(&self) -> PathBuf {
        self.lora_dir.clone().unwrap_or_else(|| self.data_dir.join("models/Lora"))
    }

    pub fn vae_dir(&self) -> PathBuf {
        self.vae_dir.clone().unwrap_or_else(|| self.data_dir.join("models/VAE"))
    }

    pub fn embeddings_dir(&self) -> PathBuf {
        self.embeddings_dir.clone().unwrap_or_else(|| self.data_dir.join("embeddings"))
    }

    /// The A1111 data-folder layout, created at start.
    pub fn layout(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> =
            ["models/Stable-diffusion", "models/Lora", "models/VAE", "models/ESRGAN"]
                .iter()
                .chain(&["embeddings", "wildcards", "outputs"])
                .map(|d| self.data_dir.join(d))
                .collect();
        for dir in [self.ckpt_dir(), self.lora_dir(), self.vae_dir(), self.embeddings_dir()] {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// The `--api-auth` credentials as `(user, password)` pairs. A1111 splits on `,` then on the
    /// first `:`; an entry without `:` is an error here rather than a silently unusable login.
    pub fn credentials(&self) -> Result<Vec<(String, String)>, String> {
        let Some(spec) = &self.api_auth else { return Ok(Vec::new()) };
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|pair| {
                pair.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
                    .ok_or_else(|| format!("--api-auth: `{pair}` is not user:password"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_a1111_flags_and_defaults() {
        let c = Config::try_parse_from([
            "diffusiond",
            "--data-dir",
            "/d",
            "--lora-dir",
            "/l",
            "--api-auth",
            "a:b, c:d:e",
            "--vram-checkpoints",
            "2",
        ])
        .unwrap();
        assert_eq!(c.port, 7860);
        assert_eq!(c.ckpt_dir(), PathBuf::from("/d/models/Stable-diffusion"));
        assert_eq!(c.lora_dir(), PathBuf::from("/l"));
        assert_eq!(c.vram_checkpoints, 2);
        assert_eq!(c.ram_checkpoints, 0);
        assert_eq!(c.credentials().unwrap(), vec![("a".into(), "b".into()), ("c".into(), "d:e".into())]);
        assert!(c.layout().contains(&PathBuf::from("/l")));
    }

    #[test]
    fn config_zero_vram_checkpoints_is_rejected() {
        assert!(Config::try_parse_from(["diffusiond", "--vram-checkpoints", "0"]).is_err());
        let c = Config::try_parse_from(["diffusiond", "--api-auth", "nocolon"]).unwrap();
        assert!(c.credentials().is_err());
    }
}
