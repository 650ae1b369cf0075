//! The trainable LoRA network of kohya's `networks/lora.py` for SD1 (training spec §4, formats.md
//! §8.1): which layers get a module, how modules are initialised, and how the network takes part
//! in the model's forward pass while it is trained.
//!
//! # How the adapters reach the model: per-step weight injection
//!
//! kohya replaces each target module's forward with `W x + up(down(x)) · scale · multiplier`. Our
//! UNet and CLIP modules are plain structs with no hook points, so instead each step writes the
//! effective weight `W₀ + (up · down) · scale · multiplier` into the model's own weight tensor,
//! *inside the autograd graph*: [`LoraNetwork::inject`] detaches the target (dropping last step's
//! graph) and copies the effective weight into it with `copy_` while gradients are recorded. The
//! target is the very tensor the module holds (the checkpoint's parameter registry shares its
//! `TensorImpl`), so the forward sees the adapted weight and backward carries `∂L/∂W` through the
//! copy to `up` and `down`. The frozen originals `W₀` are kept as copies and written back by
//! [`LoraNetwork::restore`] (also on drop, when the model still holds injected weights).
//!
//! For every target kind this is the same linear map as kohya's forward: a Linear's
//! `W x + s·B(A x) = (W + s·BA) x`; a k×k conv followed by a 1×1 conv is one k×k conv with weight
//! `up.flatten(1) @ down.flatten(1)` reshaped, with the target's stride and padding. Results agree
//! up to float rounding in fp32. In half precision the sum `W₀ + ΔW` is rounded to the weight's
//! dtype, which can swallow a small `ΔW` in the forward pass (the gradient still flows); train
//! with an fp32 model until the modules grow forward hooks.
//!
//! The cost is one extra copy of the targeted weights (`W₀`) and a full-size `∂L/∂W` per target
//! during backward. Training must start from an un-merged model: inference LoRAs merged into the
//! weights ([`crate::lora`]) would be baked into `W₀`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::lora::names::unet_ldm_to_diffusers;
use crate::weights::names;

use super::optim::ParamGroup;
use super::train_error;

/// Which model a module adapts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    TextEncoder,
    Unet,
}

/// Network arguments (`--network_dim`, `--network_alpha`, `conv_dim`/`conv_alpha` network_args).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: i64,
    /// `None` or 0 means alpha = rank (scale 1), as kohya.
    pub alpha: Option<f64>,
    /// LoCon on ResBlock/down/upsampler 3×3 convs: `(conv_dim, conv_alpha)`.
    pub conv: Option<(i64, f64)>,
    pub train_unet: bool,
    pub train_text_encoder: bool,
    /// kohya's multiplier, 1.0 in training.
    pub multiplier: f64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 4,
            alpha: Some(1.0),
            conv: None,
            train_unet: true,
            train_text_encoder: true,
            multiplier: 1.0,
        }
    }
}

/// One LoRA module.
#[derive(Debug)]
pub struct LoraModule {
    /// kohya's name, e.g. `lora_unet_down_blocks_0_attentions_0_proj_in`.
    pub name: String,
    /// The model parameter it adapts (A1111 name, with `.weight`).
    pub target_name: String,
    pub part: Part,
    pub rank: i64,
    pub alpha: f64,
    /// `[r, in]` or `[r, in, k, k]`, fp32, trainable.
    pub down: Tensor,
    /// `[out, r]` or `[out, r, 1, 1]`, fp32, trainable, zero at start.
    pub up: Tensor,
    target: Tensor,
    original: Tensor,
}

impl LoraModule {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The address of the model weight this module adapts, to tell which model it belongs to.
    pub fn target_data_ptr(&self) -> *mut std::ffi::c_void {
        self.target.data_ptr()
    }

    /// `(up · down) · scale · multiplier` in the target's shape, fp32.
    pub fn delta(&self, multiplier: f64) -> Tensor {
        let shape = self.original.size();
        self.up.flatten(1, -1).mm(&self.down.flatten(1, -1)).reshape(shape.as_slice())
            * (self.scale() * multiplier)
    }
}

/// The trainable network: modules in kohya's order (text encoder first, then UNet; by name
/// within each part), their parameters in their own [`VarStore`].
pub struct LoraNetwork {
    pub vs: VarStore,
    pub modules: Vec<LoraModule>,
    pub config: LoraConfig,
    /// Whether the model holds injected weights. Drop restores only then: between steps the
    /// model may hold inference LoRAs merged by generation, which must not be overwritten.
    injected: AtomicBool,
}

impl std::fmt::Debug for LoraNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraNetwork")
            .field("modules", &self.modules.len())
            .field("config", &self.config)
            .finish()
    }
}

/// What rank and alpha a target gets, or `None` if kohya does not adapt it.
fn classify(name: &str, shape: &[i64], res_blocks: usize, cfg: &LoraConfig) -> Option<(String, Part, bool)> {
    let module = name.strip_suffix(".weight")?;
    if let Some(hf) = module.strip_prefix(names::CLIP) {
        let tail = hf.strip_prefix("encoder.layers.")?.split_once('.')?.1;
        let wanted = [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "mlp.fc1",
            "mlp.fc2",
        ];
        return (cfg.train_text_encoder && wanted.contains(&tail))
            .then(|| (format!("lora_te_text_model_{}", hf.replace('.', "_")), Part::TextEncoder, false));
    }
    let ldm = module.strip_prefix(names::UNET)?;
    if !cfg.train_unet || shape.len() < 2 {
        return None;
    }
    let d = unet_ldm_to_diffusers(ldm, res_blocks)?;
    let lora_name = format!("lora_unet_{}", d.replace('.', "_"));
    // Inside Transformer2DModel: every Linear and 1×1 conv (norms are 1-D and already excluded).
    if d.contains(".attentions.") {
        return Some((lora_name, Part::Unet, false));
    }
    cfg.conv?;
    let leaf = d.rsplit('.').next()?;
    let in_resnet = d.contains(".resnets.");
    let sampler = d.contains(".downsamplers.") || d.contains(".upsamplers.");
    let is_kxk = shape.len() == 4 && shape[2] * shape[3] > 1;
    match (in_resnet, sampler) {
        // conv1/conv2 (3×3) take conv_dim; time_emb_proj and the 1×1 conv_shortcut the main rank.
        (true, _) if matches!(leaf, "conv1" | "conv2" | "time_emb_proj" | "conv_shortcut") => {
            Some((lora_name, Part::Unet, is_kxk))
        }
        (_, true) => Some((lora_name, Part::Unet, is_kxk)),
        _ => None,
    }
}

impl LoraNetwork {
    /// Builds the modules for every kohya target found in `params` (the model's parameter
    /// registry, A1111 names) of a UNet with `res_blocks` res blocks per level. `down` is drawn
    /// from libtorch's global generator (seed it first for reproducible runs).
    pub fn new(
        params: &HashMap<String, Tensor>,
        res_blocks: usize,
        cfg: &LoraConfig,
        device: Device,
    ) -> Result<Self> {
        if cfg.rank < 1 {
            return Err(train_error(format!("network rank must be at least 1, got {}", cfg.rank)));
        }
        let mut found: Vec<(String, String, Part, bool)> = params
            .iter()
            .filter_map(|(name, t)| {
                classify(name, &t.size(), res_blocks, cfg)
                    .map(|(lora, part, conv)| (lora, name.clone(), part, conv))
            })
            .collect();
        if found.is_empty() {
            return Err(train_error("no LoRA target layers found in the model".into()));
        }
        found.sort_by(|a, b| ((a.2 == Part::Unet), &a.0).cmp(&((b.2 == Part::Unet), &b.0)));

        let vs = VarStore::new(device);
        let root = vs.root();
        let mut modules = Vec::with_capacity(found.len());
        for (lora_name, target_name, part, conv) in found {
            let target = params[&target_name].shallow_clone();
            let shape = target.size();
            let (rank, alpha) = match (conv, cfg.conv) {
                (true, Some((r, a))) => (r, a),
                _ => (cfg.rank, cfg.alpha.filter(|&a| a != 0.0).unwrap_or(cfg.rank as f64)),
            };
            let (out_dim, in_dim) = (shape[0], shape[1]);
            let (down_shape, up_shape): (Vec<i64>, Vec<i64>) = if shape.len() == 4 {
                (vec![rank, in_dim, shape[2], shape[3]], vec![out_dim, rank, 1, 1])
            } else {
                (vec![rank, in_dim], vec![out_dim, rank])
            };
            // kaiming_uniform_(a=√5) = U(±1/√fan_in) with fan_in = in × kernel area.
            let fan_in: i64 = down_shape[1..].iter().product();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let init = Tensor::empty(down_shape.as_slice(), (Kind::Float, device)).uniform_(-bound, bound);
            let sub = root.sub(&lora_name);
            let down = sub.var_copy("lora_down", &init);
            let up = sub.zeros("lora_up", &up_shape);
            let original = tch::no_grad(|| target.detach().copy());
            modules.push(LoraModule {
                name: lora_name,
                target_name,
                part,
                rank,
                alpha,
                down,
                up,
                target,
                original,
            });
        }
        Ok(LoraNetwork { vs, modules, config: cfg.clone(), injected: AtomicBool::new(false) })
    }

    /// Parameter groups as kohya orders them: text encoder first (`te_lr`), then UNet (`unet_lr`).
    /// A group with lr 0 is left out, as kohya does; its modules stay in the network.
    pub fn param_groups(&self, te_lr: f64, unet_lr: f64) -> Vec<ParamGroup> {
        let mut groups = Vec::new();
        for (part, lr) in [(Part::TextEncoder, te_lr), (Part::Unet, unet_lr)] {
            let params: Vec<Tensor> = self
                .modules
                .iter()
                .filter(|m| m.part == part)
                .flat_map(|m| [m.down.shallow_clone(), m.up.shallow_clone()])
                .collect();
            if !params.is_empty() && lr > 0.0 {
                groups.push(ParamGroup { params, lr });
            }
        }
        groups
    }

    /// Every trainable tensor (down, up per module).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.modules.iter().flat_map(|m| [m.down.shallow_clone(), m.up.shallow_clone()]).collect()
    }

    /// Writes `W₀ + ΔW` into every target, recording the graph when gradients are enabled, so the
    /// next forward pass of the model runs with the adapters (see the module docs).
    pub fn inject(&self) {
        let multiplier = self.config.multiplier;
        self.injected.store(true, Ordering::SeqCst);
        for m in &self.modules {
            // One fused `W₀ + (s·up)·down` with the scale on the small `[out, r]` factor: the
            // full-size weight is written once, and backward has no full-size multiply or add (on
            // CPU, SD1.5 shapes at rank 128, this takes about half the time of a separate
            // `up · down`, scale and add).
            let shape = m.original.size();
            let scaled_up = m.up.flatten(1, -1) * (m.scale() * multiplier);
            let effective = m
                .original
                .to_kind(Kind::Float)
                .reshape([shape[0], -1])
                .addmm(&scaled_up, &m.down.flatten(1, -1))
                .reshape(shape.as_slice())
                .to_kind(m.original.kind());
            let mut t = m.target.shallow_clone();
            // Drops the previous step's graph (and its requires_grad) from the shared tensor.
            let _ = t.detach_();
            t.copy_(&effective);
        }
    }

    /// Writes the frozen originals back into the model.
    pub fn restore(&self) {
        let _guard = tch::no_grad_guard();
        for m in &self.modules {
            let mut t = m.target.shallow_clone();
            let _ = t.detach_();
            t.copy_(&m.original);
        }
        self.injected.store(false, Ordering::SeqCst);
    }

    /// kohya's state dict: `<name>.lora_down.weight`, `<name>.lora_up.weight` and a 0-dim
    /// `<name>.alpha`, every tensor in `kind` (`save_precision`).
    pub fn state_dict(&self, kind: Kind) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.modules.len() * 3);
        for m in &self.modules {
            let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu).to_kind(kind).contiguous();
            out.push((format!("{}.lora_down.weight", m.name), cpu(&m.down)));
            out.push((format!("{}.lora_up.weight", m.name), cpu(&m.up)));
            out.push((format!("{}.alpha", m.name), Tensor::from(m.alpha).to_kind(kind)));
        }
        out
    }
}

impl Drop for LoraNetwork {
    fn drop(&mut self) {
        if self.injected.load(Ordering::SeqCst) {
            self.restore();
        }
    }
}
