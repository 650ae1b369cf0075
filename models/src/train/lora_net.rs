//! The trainable LoRA network of kohya's `networks/lora.py` for SD1 (training spec §4, formats.md
//! §8.1): which layers get a module, how modules are initialised, and how the network takes part
//! in the model's forward pass while it is trained.
//!
//! # How the adapters reach the model: the layers' adapter slots
//!
//! Every linear and convolution layer of the model has an [`AdapterSlot`] (the model lists them
//! by weight name in [`StableDiffusion::adapters`]). [`LoraNetwork::attach`] puts each module's
//! `down`, `up` and `alpha / rank · multiplier` into its target's slot, and the layer then
//! computes kohya's `W x + up(down(x)) · scale` (a LoCon module's `down` takes the target's
//! kernel, stride and padding, `up` is 1×1). [`LoraNetwork::detach`] empties the slots (also on
//! drop, when attached).
//!
//! The frozen weights are never written and need no gradient: backward computes only the input
//! gradients through them and the small `up`/`down` gradients. The LoRA parameters stay fp32 when
//! the model runs in bf16 or fp16 (mixed precision); the layer casts them to the input's dtype on
//! the fly, inside the autograd graph.

use std::sync::atomic::{AtomicBool, Ordering};

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::StableDiffusion;
use crate::error::Result;
use crate::lora::names::unet_ldm_to_diffusers;
use crate::nn::{Adapter, AdapterSlot};
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
    /// The target layer's shape.
    shape: Vec<i64>,
    slot: AdapterSlot,
}

impl LoraModule {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether `sd` is the model this module was built on (its target layer is `sd`'s).
    pub fn belongs_to(&self, sd: &StableDiffusion) -> bool {
        sd.adapters.get(&self.target_name).is_some_and(|s| s.same_as(&self.slot))
    }

    /// `(up · down) · scale · multiplier` in the target's shape, fp32: the weight change the
    /// module stands for (for a convolution, the k×k kernel of `down` followed by the 1×1 `up`).
    pub fn delta(&self, multiplier: f64) -> Tensor {
        self.up.flatten(1, -1).mm(&self.down.flatten(1, -1)).reshape(self.shape.as_slice())
            * (self.scale() * multiplier)
    }
}

/// The trainable network: modules in kohya's order (text encoder first, then UNet; by name
/// within each part), their parameters in their own [`VarStore`].
pub struct LoraNetwork {
    pub vs: VarStore,
    pub modules: Vec<LoraModule>,
    pub config: LoraConfig,
    /// Whether the modules sit in the model's adapter slots.
    attached: AtomicBool,
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
    /// Builds the modules for every kohya target among `sd`'s layers, on `sd`'s device. `down` is
    /// drawn from libtorch's global generator (seed it first for reproducible runs). The modules
    /// are fp32 whatever the model's dtype.
    pub fn new(sd: &StableDiffusion, cfg: &LoraConfig) -> Result<Self> {
        let params = &sd.params;
        let res_blocks = sd.config.unet.num_res_blocks as usize;
        let device = sd.placement.device;
        if cfg.rank < 1 {
            return Err(train_error(format!("network rank must be at least 1, got {}", cfg.rank)));
        }
        let mut found: Vec<(String, String, Part, bool)> = params
            .iter()
            .filter(|(name, _)| sd.adapters.contains_key(*name))
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
            let shape = params[&target_name].size();
            let slot = sd.adapters[&target_name].clone();
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
            modules.push(LoraModule {
                name: lora_name,
                target_name,
                part,
                rank,
                alpha,
                down,
                up,
                shape,
                slot,
            });
        }
        Ok(LoraNetwork { vs, modules, config: cfg.clone(), attached: AtomicBool::new(false) })
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

    /// Puts every module into its target layer's slot: the model's forward passes run with the
    /// adapters (and record their graph when gradients are enabled) until [`Self::detach`].
    pub fn attach(&self) {
        let multiplier = self.config.multiplier;
        for m in &self.modules {
            m.slot.set(Some(Adapter {
                down: m.down.shallow_clone(),
                up: m.up.shallow_clone(),
                scale: m.scale() * multiplier,
            }));
        }
        self.attached.store(true, Ordering::SeqCst);
    }

    /// Empties the modules' slots: the model computes with its own weights again.
    pub fn detach(&self) {
        for m in &self.modules {
            m.slot.set(None);
        }
        self.attached.store(false, Ordering::SeqCst);
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
        if self.attached.load(Ordering::SeqCst) {
            self.detach();
        }
    }
}
