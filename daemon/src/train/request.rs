//! `POST /train/lora`: the wire request, its defaults (the guide's recipe, training spec §2–§6)
//! and its resolution into a [`Recipe`], the settings a run keeps for its whole life (persisted in
//! `job.json`, so a resumed run trains with exactly what it started with).

use models::train::lora_net::LoraConfig;
use models::train::loss::LossWeighting;
use models::train::optim::{AdamWConfig, DAdaptAdamConfig, OptimizerConfig, ProdigyConfig};
use models::train::sample_prompt;
use models::train::schedule::LrScheduleKind;
use models::train::{MixedPrecision, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// One uploaded image: base64 (or a data URL) and an optional caption.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ImageItem {
    pub image: String,
    pub caption: Option<String>,
}

/// `sample_prompts`: kohya's prompt-file text (one prompt per line) or a list of lines.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptLines {
    Text(String),
    Lines(Vec<String>),
}

impl PromptLines {
    /// The prompt lines, blank lines and `#` comments dropped (kohya's `.txt` rule, as
    /// [`sample_prompt::parse_line`] applies it).
    pub fn lines(&self) -> Vec<String> {
        let all: Vec<&str> = match self {
            PromptLines::Text(t) => t.lines().collect(),
            PromptLines::Lines(l) => l.iter().map(String::as_str).collect(),
        };
        all.into_iter()
            .filter(|l| sample_prompt::parse_line(l).is_some())
            .map(|l| l.trim().to_string())
            .collect()
    }
}

/// The request body. Unknown fields are ignored; every recipe field is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TrainRequest {
    pub name: Option<String>,
    pub base_checkpoint: Option<String>,
    pub base_checkpoints: Option<Vec<String>>,
    pub instance_prompt: Option<String>,
    pub class_prompt: Option<String>,
    pub images: Vec<ImageItem>,
    pub dataset_dir: Option<String>,
    pub reg_images: Vec<ImageItem>,
    pub reg_dir: Option<String>,
    pub resolution: Option<u32>,
    pub batch_size: Option<u32>,
    pub network_rank: Option<i64>,
    pub network_alpha: Option<f64>,
    pub conv_rank: Option<i64>,
    pub conv_alpha: Option<f64>,
    pub optimizer: Option<String>,
    pub optimizer_args: Option<String>,
    pub learning_rate: Option<f64>,
    pub unet_lr: Option<f64>,
    pub text_encoder_lr: Option<f64>,
    pub lr_scheduler: Option<String>,
    pub lr_scheduler_num_cycles: Option<f64>,
    pub lr_scheduler_power: Option<f64>,
    pub lr_warmup: Option<f64>,
    pub min_snr_gamma: Option<f64>,
    pub noise_offset: Option<f64>,
    pub prior_loss_weight: Option<f64>,
    pub clip_skip: Option<u32>,
    pub mixed_precision: Option<String>,
    pub seed: Option<i64>,
    pub cache_latents_to_disk: Option<bool>,
    pub bucket_reso_steps: Option<u32>,
    pub bucket_no_upscale: Option<bool>,
    pub caption_extension: Option<String>,
    pub flip_aug: Option<bool>,
    pub max_grad_norm: Option<f64>,
    pub gradient_checkpointing: Option<bool>,
    pub save_every_n_epochs: Option<u32>,
    pub sample_every_n_epochs: Option<u32>,
    pub sample_prompts: Option<PromptLines>,
    pub repeats: Option<u32>,
    pub max_train_epochs: Option<u32>,
    pub crop_square: Option<bool>,
}

/// Everything a run trains with, resolved from a request (defaults applied, names checked).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// The output name (`<name>.safetensors`), suffixed per base with `base_checkpoints`.
    pub name: String,
    pub base_checkpoint: String,
    pub instance_prompt: String,
    pub class_prompt: String,
    pub resolution: u32,
    pub batch_size: u32,
    pub network_rank: i64,
    pub network_alpha: f64,
    pub conv_rank: Option<i64>,
    pub conv_alpha: Option<f64>,
    /// `DAdaptAdam`, `Prodigy` or `AdamW`.
    pub optimizer: String,
    pub optimizer_args: String,
    pub learning_rate: f64,
    pub unet_lr: f64,
    pub text_encoder_lr: f64,
    pub lr_scheduler: String,
    pub lr_scheduler_num_cycles: f64,
    pub lr_scheduler_power: f64,
    /// Warm-up as a percentage of the total steps (the kohya_ss GUI's "LR warmup (% of steps)").
    pub lr_warmup: f64,
    pub min_snr_gamma: f64,
    pub noise_offset: f64,
    pub prior_loss_weight: f64,
    pub clip_skip: u32,
    /// `bf16`, `fp16` (with loss scaling) or `no`: the dtype of the run's model copy (the LoRA
    /// stays fp32).
    pub mixed_precision: String,
    pub seed: i64,
    pub cache_latents_to_disk: bool,
    pub bucket_reso_steps: u32,
    pub bucket_no_upscale: bool,
    pub caption_extension: String,
    pub flip_aug: bool,
    pub max_grad_norm: f64,
    /// Recompute the UNet's segments during backward instead of storing their activations.
    pub gradient_checkpointing: bool,
    /// `None`: the plan's, every 10% of the planned epochs (at least every epoch).
    pub save_every_n_epochs: Option<u32>,
    /// `None`: the plan's, every 10% of the planned epochs (at least every epoch).
    pub sample_every_n_epochs: Option<u32>,
    pub sample_prompts: Vec<String>,
    pub repeats: Option<u32>,
    pub max_train_epochs: Option<u32>,
    pub crop_square: bool,
}

/// The optimizer names accepted in `optimizer` (sd-scripts' `--optimizer_type`).
pub const OPTIMIZERS: &[&str] = &["DAdaptAdam", "Prodigy", "AdamW"];
/// The accepted `lr_scheduler` values.
pub const SCHEDULERS: &[&str] =
    &["cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "linear"];

/// The guide's optimizer arguments for DAdaptAdam.
pub const GUIDE_OPTIMIZER_ARGS: &str = "decouple=True use_bias_correction=True weight_decay=0.20";

/// Characters allowed in an output name: it becomes a file name and a `<lora:…>` tag.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
}

impl TrainRequest {
    /// The base checkpoints asked for: `base_checkpoints`, else `base_checkpoint`, else none
    /// (the caller then uses the selected one).
    pub fn bases(&self) -> Vec<String> {
        match (&self.base_checkpoints, &self.base_checkpoint) {
            (Some(list), _) if !list.is_empty() => list.clone(),
            (_, Some(one)) => vec![one.clone()],
            _ => Vec::new(),
        }
    }

    /// Applies the defaults and checks every value; `cuda` picks the mixed-precision default.
    /// `base` is the checkpoint title this recipe trains on and `name` its output name.
    pub fn resolve(&self, name: &str, base: &str, cuda: bool) -> Result<Recipe, ApiError> {
        if !valid_name(name) {
            return Err(ApiError::field(
                "name",
                format!("`name` must be 1-100 letters, digits, '_', '-', '.' or spaces, got {name:?}"),
            ));
        }
        let positive = |field: &str, v: Option<u32>, default: u32, max: u32| -> Result<u32, ApiError> {
            let v = v.unwrap_or(default);
            if v == 0 || v > max {
                return Err(ApiError::field(field, format!("`{field}` must be in 1..={max}, got {v}")));
            }
            Ok(v)
        };
        let optional = |field: &str, v: Option<u32>, max: u32| -> Result<Option<u32>, ApiError> {
            v.map(|v| positive(field, Some(v), 1, max)).transpose()
        };
        let non_negative = |field: &str, v: Option<f64>, default: f64| -> Result<f64, ApiError> {
            let v = v.unwrap_or(default);
            if !v.is_finite() || v < 0.0 {
                return Err(ApiError::field(field, format!("`{field}` must be a number ≥ 0, got {v}")));
            }
            Ok(v)
        };
        let bucket_reso_steps = positive("bucket_reso_steps", self.bucket_reso_steps, 64, 1024)?;
        if bucket_reso_steps % 64 != 0 {
            return Err(ApiError::field(
                "bucket_reso_steps",
                format!(
                    "`bucket_reso_steps` must be a multiple of 64 for SD1 models, got {bucket_reso_steps}"
                ),
            ));
        }
        let resolution = positive("resolution", self.resolution, 768, 4096)?;
        if resolution % 8 != 0 || resolution < 64 {
            return Err(ApiError::field(
                "resolution",
                format!("`resolution` must be a multiple of 8 and at least 64, got {resolution}"),
            ));
        }
        let optimizer = one_of("optimizer", self.optimizer.as_deref(), OPTIMIZERS, "DAdaptAdam")?;
        let optimizer_args = self.optimizer_args.clone().unwrap_or_else(|| {
            if optimizer == "DAdaptAdam" {
                GUIDE_OPTIMIZER_ARGS.to_string()
            } else {
                String::new()
            }
        });
        let lr_scheduler = one_of("lr_scheduler", self.lr_scheduler.as_deref(), SCHEDULERS, "cosine")?;
        let mixed_precision = match self.mixed_precision.as_deref() {
            None => if cuda { "bf16" } else { "no" }.to_string(),
            Some(m @ ("bf16" | "fp16" | "no")) => m.to_string(),
            Some("fp32") => "no".to_string(),
            Some(m) => {
                return Err(ApiError::field(
                    "mixed_precision",
                    format!("`mixed_precision` must be bf16, fp16 or no, got {m:?}"),
                ))
            }
        };
        let network_rank = self.network_rank.unwrap_or(128);
        if !(1..=1024).contains(&network_rank) {
            return Err(ApiError::field(
                "network_rank",
                format!("`network_rank` must be in 1..=1024, got {network_rank}"),
            ));
        }
        if let Some(c) = self.conv_rank {
            if !(1..=1024).contains(&c) {
                return Err(ApiError::field(
                    "conv_rank",
                    format!("`conv_rank` must be in 1..=1024, got {c}"),
                ));
            }
        }
        let lr_warmup = non_negative("lr_warmup", self.lr_warmup, 0.0)?;
        if lr_warmup > 100.0 {
            return Err(ApiError::field(
                "lr_warmup",
                format!("`lr_warmup` is a percentage of the steps (0-100), got {lr_warmup}"),
            ));
        }
        let learning_rate = non_negative("learning_rate", self.learning_rate, 1.0)?;
        let mut caption_extension = self.caption_extension.clone().unwrap_or_else(|| ".caption".into());
        if !caption_extension.starts_with('.') {
            caption_extension.insert(0, '.');
        }
        let recipe = Recipe {
            name: name.to_string(),
            base_checkpoint: base.to_string(),
            instance_prompt: self.instance_prompt.clone().unwrap_or_default(),
            class_prompt: self.class_prompt.clone().unwrap_or_default(),
            resolution,
            batch_size: positive("batch_size", self.batch_size, 3, 64)?,
            network_rank,
            network_alpha: non_negative("network_alpha", self.network_alpha, 1.0)?,
            conv_rank: self.conv_rank,
            conv_alpha: self.conv_alpha,
            optimizer,
            optimizer_args,
            learning_rate,
            unet_lr: non_negative("unet_lr", self.unet_lr, learning_rate)?,
            text_encoder_lr: non_negative("text_encoder_lr", self.text_encoder_lr, learning_rate)?,
            lr_scheduler,
            lr_scheduler_num_cycles: non_negative(
                "lr_scheduler_num_cycles",
                self.lr_scheduler_num_cycles,
                1.0,
            )?,
            lr_scheduler_power: non_negative("lr_scheduler_power", self.lr_scheduler_power, 1.0)?,
            lr_warmup,
            min_snr_gamma: non_negative("min_snr_gamma", self.min_snr_gamma, 5.0)?,
            noise_offset: non_negative("noise_offset", self.noise_offset, 0.0357)?,
            prior_loss_weight: non_negative("prior_loss_weight", self.prior_loss_weight, 1.0)?,
            clip_skip: positive("clip_skip", self.clip_skip, 2, 12)?,
            mixed_precision,
            seed: self.seed.unwrap_or_else(|| (rand_seed() & 0x7fff_ffff) as i64),
            cache_latents_to_disk: self.cache_latents_to_disk.unwrap_or(false),
            bucket_reso_steps,
            bucket_no_upscale: self.bucket_no_upscale.unwrap_or(true),
            caption_extension,
            flip_aug: self.flip_aug.unwrap_or(false),
            max_grad_norm: non_negative("max_grad_norm", self.max_grad_norm, 1.0)?,
            gradient_checkpointing: self.gradient_checkpointing.unwrap_or(true),
            save_every_n_epochs: optional("save_every_n_epochs", self.save_every_n_epochs, 100_000)?,
            sample_every_n_epochs: optional("sample_every_n_epochs", self.sample_every_n_epochs, 100_000)?,
            sample_prompts: self.sample_prompts.as_ref().map(PromptLines::lines).unwrap_or_default(),
            repeats: optional("repeats", self.repeats, 10_000)?,
            max_train_epochs: optional("max_train_epochs", self.max_train_epochs, 100_000)?,
            crop_square: self.crop_square.unwrap_or(true),
        };
        if recipe.unet_lr == 0.0 && recipe.text_encoder_lr == 0.0 {
            return Err(ApiError::field(
                "unet_lr",
                "`unet_lr` and `text_encoder_lr` are both 0: nothing to train",
            ));
        }
        // Fails early on malformed optimizer arguments rather than when the engine starts.
        recipe.optimizer_config()?;
        Ok(recipe)
    }
}

/// `value` spelled as one of `names` (case-insensitively), `default` when absent.
fn one_of(field: &str, value: Option<&str>, names: &[&str], default: &str) -> Result<String, ApiError> {
    let Some(v) = value else { return Ok(default.to_string()) };
    names.iter().find(|k| k.eq_ignore_ascii_case(v)).map(|k| k.to_string()).ok_or_else(|| {
        ApiError::field(field, format!("unknown {field} {v:?}; expected one of {}", names.join(", ")))
    })
}

/// A seed from the clock, for runs that give none (sd-scripts draws one at random too).
fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    nanos.as_nanos() as u64 ^ (std::process::id() as u64) << 32
}

/// One parsed `key=value` of `optimizer_args` (training spec §5.1: Python literals).
fn parse_bool(key: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "True" | "true" => Ok(true),
        "False" | "false" => Ok(false),
        _ => Err(ApiError::field("optimizer_args", format!("`{key}` must be True or False, got {v:?}"))),
    }
}

fn parse_float(key: &str, v: &str) -> Result<f64, ApiError> {
    v.parse::<f64>()
        .map_err(|_| ApiError::field("optimizer_args", format!("`{key}` must be a number, got {v:?}")))
}

fn parse_pair(key: &str, v: &str) -> Result<(f64, f64), ApiError> {
    let inner = v.trim_start_matches(['(', '[']).trim_end_matches([')', ']']);
    let parts: Vec<&str> = inner.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        [a, b] => Ok((parse_float(key, a)?, parse_float(key, b)?)),
        _ => Err(ApiError::field(
            "optimizer_args",
            format!("`{key}` must be a pair like (0.9,0.999), got {v:?}"),
        )),
    }
}

/// `optimizer_args` as `key=value` pairs, each set into the optimizer's configuration at most
/// once; a key the optimizer does not take is an error ([`OptimizerArgs::finish`]).
struct OptimizerArgs<'a> {
    pairs: Vec<(&'a str, &'a str)>,
    used: Vec<bool>,
}

impl<'a> OptimizerArgs<'a> {
    fn parse(text: &'a str) -> Result<Self, ApiError> {
        let pairs = text
            .split_whitespace()
            .map(|pair| {
                pair.split_once('=').ok_or_else(|| {
                    ApiError::field("optimizer_args", format!("expected key=value pairs, got {pair:?}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OptimizerArgs { used: vec![false; pairs.len()], pairs })
    }

    /// Sets `slot` from every `key=…` (the last one wins, as Python's keyword dict keeps it).
    fn set<T>(
        &mut self,
        key: &str,
        slot: &mut T,
        parse: impl Fn(&str, &str) -> Result<T, ApiError>,
    ) -> Result<(), ApiError> {
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if *k == key {
                *slot = parse(k, v)?;
                self.used[i] = true;
            }
        }
        Ok(())
    }

    /// The arguments of every Adam-style optimizer.
    fn adam(
        &mut self,
        betas: &mut (f64, f64),
        eps: &mut f64,
        weight_decay: &mut f64,
    ) -> Result<(), ApiError> {
        self.set("betas", betas, parse_pair)?;
        self.set("eps", eps, parse_float)?;
        self.set("weight_decay", weight_decay, parse_float)
    }

    /// The arguments DAdaptAdam and Prodigy share.
    fn adaptive(
        &mut self,
        decouple: &mut bool,
        bias_correction: &mut bool,
        d0: &mut f64,
        growth_rate: &mut f64,
    ) -> Result<(), ApiError> {
        self.set("decouple", decouple, parse_bool)?;
        self.set("use_bias_correction", bias_correction, parse_bool)?;
        self.set("d0", d0, parse_float)?;
        self.set("growth_rate", growth_rate, parse_float)
    }

    /// An error naming the first key `optimizer` does not take.
    fn finish(self, optimizer: &str) -> Result<(), ApiError> {
        match self.pairs.iter().zip(&self.used).find(|(_, used)| !**used) {
            Some(((key, _), _)) => {
                Err(ApiError::field("optimizer_args", format!("`{key}` is not an argument of {optimizer}")))
            }
            None => Ok(()),
        }
    }
}

impl Recipe {
    /// `optimizer` with `optimizer_args` applied over the package defaults.
    pub fn optimizer_config(&self) -> Result<OptimizerConfig, ApiError> {
        let mut config = match self.optimizer.as_str() {
            "Prodigy" => OptimizerConfig::Prodigy(ProdigyConfig::default()),
            "AdamW" => OptimizerConfig::AdamW(AdamWConfig::default()),
            _ => OptimizerConfig::DAdaptAdam(DAdaptAdamConfig::default()),
        };
        let mut args = OptimizerArgs::parse(&self.optimizer_args)?;
        match &mut config {
            OptimizerConfig::DAdaptAdam(c) => {
                args.adam(&mut c.betas, &mut c.eps, &mut c.weight_decay)?;
                args.adaptive(&mut c.decouple, &mut c.use_bias_correction, &mut c.d0, &mut c.growth_rate)?;
            }
            OptimizerConfig::Prodigy(c) => {
                args.adam(&mut c.betas, &mut c.eps, &mut c.weight_decay)?;
                args.adaptive(&mut c.decouple, &mut c.use_bias_correction, &mut c.d0, &mut c.growth_rate)?;
                args.set("safeguard_warmup", &mut c.safeguard_warmup, parse_bool)?;
                args.set("d_coef", &mut c.d_coef, parse_float)?;
                args.set("beta3", &mut c.beta3, |k, v| parse_float(k, v).map(Some))?;
            }
            OptimizerConfig::AdamW(c) => args.adam(&mut c.betas, &mut c.eps, &mut c.weight_decay)?,
        }
        args.finish(&self.optimizer)?;
        Ok(config)
    }

    /// The schedule kind of `lr_scheduler`.
    pub fn schedule_kind(&self) -> LrScheduleKind {
        match self.lr_scheduler.as_str() {
            "constant" => LrScheduleKind::Constant,
            "constant_with_warmup" => LrScheduleKind::ConstantWithWarmup,
            "linear" => LrScheduleKind::Linear,
            "cosine_with_restarts" => {
                LrScheduleKind::CosineWithRestarts { cycles: self.lr_scheduler_num_cycles }
            }
            "polynomial" => LrScheduleKind::Polynomial { power: self.lr_scheduler_power },
            _ => LrScheduleKind::Cosine,
        }
    }

    /// The model copy's dtype (`mixed_precision`).
    pub fn precision(&self) -> MixedPrecision {
        match self.mixed_precision.as_str() {
            "bf16" => MixedPrecision::Bf16,
            "fp16" => MixedPrecision::Fp16,
            _ => MixedPrecision::No,
        }
    }

    /// The models crate's configuration for a run of `total_steps` optimizer steps.
    pub fn train_config(&self, total_steps: u64) -> Result<TrainConfig, ApiError> {
        let zero_none = |x: f64| (x > 0.0).then_some(x);
        Ok(TrainConfig {
            network: LoraConfig {
                rank: self.network_rank,
                alpha: Some(self.network_alpha),
                conv: self.conv_rank.map(|r| (r, self.conv_alpha.unwrap_or(1.0))),
                train_unet: self.unet_lr > 0.0,
                train_text_encoder: self.text_encoder_lr > 0.0,
                multiplier: 1.0,
            },
            optimizer: self.optimizer_config()?,
            learning_rate: self.learning_rate,
            unet_lr: Some(self.unet_lr),
            text_encoder_lr: Some(self.text_encoder_lr),
            scheduler: self.schedule_kind(),
            warmup_steps: (total_steps as f64 * self.lr_warmup / 100.0).ceil() as u64,
            max_train_steps: total_steps,
            batch_size: self.batch_size as usize,
            noise_offset: zero_none(self.noise_offset),
            weighting: LossWeighting {
                min_snr_gamma: zero_none(self.min_snr_gamma),
                prior_loss_weight: self.prior_loss_weight,
            },
            clip_skip: self.clip_skip as usize,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            mixed_precision: self.precision(),
            gradient_checkpointing: self.gradient_checkpointing,
            ..TrainConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(body: serde_json::Value) -> Result<Recipe, ApiError> {
        let req: TrainRequest = serde_json::from_value(body).unwrap();
        req.resolve("ohwx", "base", false)
    }

    #[test]
    fn resolve_empty_request_gives_the_guide_recipe() {
        let r = recipe(serde_json::json!({"unknown_field": 1})).unwrap();
        assert_eq!((r.resolution, r.batch_size, r.network_rank, r.network_alpha), (768, 3, 128, 1.0));
        assert_eq!((r.optimizer.as_str(), r.lr_scheduler.as_str()), ("DAdaptAdam", "cosine"));
        assert_eq!((r.min_snr_gamma, r.noise_offset, r.clip_skip), (5.0, 0.0357, 2));
        assert_eq!(r.mixed_precision, "no");
        assert!(r.crop_square);
        assert_eq!(r.optimizer_config().unwrap(), OptimizerConfig::DAdaptAdam(DAdaptAdamConfig::guide()));
        let config = r.train_config(3000).unwrap();
        assert_eq!(config.noise_offset, Some(0.0357));
        assert_eq!(config.weighting.min_snr_gamma, Some(5.0));
    }

    #[test]
    fn resolve_bad_values_name_their_field() {
        for (body, field) in [
            (serde_json::json!({"optimizer": "SGD"}), "optimizer"),
            (serde_json::json!({"lr_scheduler": "step"}), "lr_scheduler"),
            (serde_json::json!({"batch_size": 0}), "batch_size"),
            (serde_json::json!({"bucket_reso_steps": 32}), "bucket_reso_steps"),
            (serde_json::json!({"optimizer_args": "decouple=maybe"}), "optimizer_args"),
            (serde_json::json!({"optimizer": "AdamW", "optimizer_args": "d0=1"}), "optimizer_args"),
        ] {
            match recipe(body) {
                Err(ApiError::Validation(v)) => assert_eq!(v.detail[0].loc[1], field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn optimizer_args_prodigy_parse_python_literals() {
        let r = recipe(serde_json::json!({
            "optimizer": "prodigy",
            "optimizer_args": "decouple=True weight_decay=0.01 d_coef=2 betas=(0.9,0.99) safeguard_warmup=True beta3=0.5"
        }))
        .unwrap();
        let OptimizerConfig::Prodigy(c) = r.optimizer_config().unwrap() else { panic!("not Prodigy") };
        assert_eq!((c.weight_decay, c.d_coef, c.betas, c.safeguard_warmup), (0.01, 2.0, (0.9, 0.99), true));
        assert_eq!((c.decouple, c.beta3), (true, Some(0.5)));
    }
}
