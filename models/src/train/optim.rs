//! The optimizers sd-scripts users pick for LoRA training (training spec §5): DAdaptAdam
//! (dadaptation 3.2), Prodigy (prodigyopt 1.1.2) and torch's AdamW. The update rules follow those
//! packages operation by operation, including the order of in-place updates and the scalar sums
//! taken as float64 (`.item()` in Python), so a run agrees with the reference step for step
//! (checked by `models/tests/train_optim.rs` against `reference/gen_training_goldens.py`).
//!
//! Parameters are leaf tensors with `requires_grad`; their gradients are read from `grad()` after
//! `backward`, and parameters without a gradient are skipped, as in PyTorch. Every group's lr is
//! its initial lr times the schedule factor passed to [`Optimizer::step`].

use tch::Tensor;

use crate::error::Result;

use super::train_error;

/// DAdaptAdam's constructor arguments (dadaptation defaults in [`Default`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DAdaptAdamConfig {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub decouple: bool,
    pub use_bias_correction: bool,
    pub d0: f64,
    pub growth_rate: f64,
}

impl Default for DAdaptAdamConfig {
    fn default() -> Self {
        DAdaptAdamConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decouple: false,
            use_bias_correction: false,
            d0: 1e-6,
            growth_rate: f64::INFINITY,
        }
    }
}

impl DAdaptAdamConfig {
    /// The guide's `decouple=True use_bias_correction=True weight_decay=0.20` (d0 1e-6).
    pub fn guide() -> Self {
        DAdaptAdamConfig {
            weight_decay: 0.2,
            decouple: true,
            use_bias_correction: true,
            ..Default::default()
        }
    }
}

/// Prodigy's constructor arguments (prodigyopt defaults in [`Default`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ProdigyConfig {
    pub betas: (f64, f64),
    /// `None` means √β2.
    pub beta3: Option<f64>,
    pub eps: f64,
    pub weight_decay: f64,
    pub decouple: bool,
    pub use_bias_correction: bool,
    pub safeguard_warmup: bool,
    pub d0: f64,
    pub d_coef: f64,
    pub growth_rate: f64,
    /// Estimate d from every `slice_p`-th element only (memory saving of 1.1.x).
    pub slice_p: i64,
}

impl Default for ProdigyConfig {
    fn default() -> Self {
        ProdigyConfig {
            betas: (0.9, 0.999),
            beta3: None,
            eps: 1e-8,
            weight_decay: 0.0,
            decouple: true,
            use_bias_correction: false,
            safeguard_warmup: false,
            d0: 1e-6,
            d_coef: 1.0,
            growth_rate: f64::INFINITY,
            slice_p: 1,
        }
    }
}

/// torch.optim.AdamW's constructor arguments (torch defaults in [`Default`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 }
    }
}

/// Which optimizer, with its arguments.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerConfig {
    DAdaptAdam(DAdaptAdamConfig),
    Prodigy(ProdigyConfig),
    AdamW(AdamWConfig),
}

impl OptimizerConfig {
    /// The `ss_optimizer` text: `module.Class(k=v,...)` with the non-default arguments.
    pub fn describe(&self) -> String {
        match self {
            OptimizerConfig::DAdaptAdam(c) => format!(
                "dadaptation.dadapt_adam.DAdaptAdam(decouple={},use_bias_correction={},weight_decay={},d0={})",
                py_bool(c.decouple),
                py_bool(c.use_bias_correction),
                py_float(c.weight_decay),
                py_float(c.d0)
            ),
            OptimizerConfig::Prodigy(c) => format!(
                "prodigyopt.prodigy.Prodigy(weight_decay={},use_bias_correction={},safeguard_warmup={},d_coef={})",
                py_float(c.weight_decay),
                py_bool(c.use_bias_correction),
                py_bool(c.safeguard_warmup),
                py_float(c.d_coef)
            ),
            OptimizerConfig::AdamW(c) => format!("torch.optim.adamw.AdamW(weight_decay={})", py_float(c.weight_decay)),
        }
    }

    /// Whether sd-scripts logs `d*lr` for it (DAdapt* and Prodigy).
    pub fn is_adaptive(&self) -> bool {
        !matches!(self, OptimizerConfig::AdamW(_))
    }
}

/// Python's `str(bool)`.
pub(crate) fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below 1e-4 or from 1e16.
pub(crate) fn py_float(x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x.is_nan() {
        return "nan".into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust prints `1e-6`; Python `1e-06` (at least two exponent digits).
        let s = format!("{x:e}");
        let (mantissa, exp) = s.split_once('e').expect("`{:e}` always has an exponent");
        let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = format!("{x}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// Parameters trained with one lr.
#[derive(Debug)]
pub struct ParamGroup {
    pub params: Vec<Tensor>,
    /// The group's initial lr; the schedule factor multiplies it.
    pub lr: f64,
}

/// Per-parameter state; tensors have the parameter's dtype and device.
#[derive(Debug, Default)]
struct ParamState {
    initialised: bool,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    s: Option<Tensor>,
    /// Prodigy: the initial parameter (flattened, sliced), or a 0-dim zero for all-zero ones.
    p0: Option<Tensor>,
    step: u64,
}

/// An optimizer over parameter groups.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    groups: Vec<ParamGroup>,
    state: Vec<Vec<ParamState>>,
    /// D-Adaptation's distance estimate (1 for AdamW).
    d: f64,
    /// Prodigy's running maximum of d̂.
    d_max: f64,
    /// DAdaptAdam's `numerator_weighted`, Prodigy's `d_numerator`.
    numerator: f64,
    /// Optimizer steps that updated the parameters (`k`); a no-op step does not count.
    k: u64,
    /// The lr of each group at the last step (initial lr × factor).
    current_lr: Vec<f64>,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, groups: Vec<ParamGroup>) -> Self {
        let d0 = match &config {
            OptimizerConfig::DAdaptAdam(c) => c.d0,
            OptimizerConfig::Prodigy(c) => c.d0,
            OptimizerConfig::AdamW(_) => 1.0,
        };
        let state = groups.iter().map(|g| g.params.iter().map(|_| ParamState::default()).collect()).collect();
        let current_lr = groups.iter().map(|g| g.lr).collect();
        Optimizer { config, groups, state, d: d0, d_max: d0, numerator: 0.0, k: 0, current_lr }
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// D-Adaptation's current d (after the last step); 1 for AdamW.
    pub fn d(&self) -> f64 {
        self.d
    }

    /// Steps that updated the parameters.
    pub fn steps_taken(&self) -> u64 {
        self.k
    }

    /// The state needed to continue this optimizer exactly: named tensors (`<prefix>.<group>.<param>.
    /// <slot>`) and scalars. Floats are stored as their IEEE bit patterns so that a round trip
    /// through JSON is exact.
    pub fn export_state(&self, prefix: &str) -> (Vec<(String, Tensor)>, serde_json::Value) {
        let mut tensors = Vec::new();
        let mut params = Vec::new();
        for (gi, group) in self.state.iter().enumerate() {
            for (pi, st) in group.iter().enumerate() {
                params.push(serde_json::json!([st.initialised, st.step]));
                let slots =
                    [("exp_avg", &st.exp_avg), ("exp_avg_sq", &st.exp_avg_sq), ("s", &st.s), ("p0", &st.p0)];
                for (slot, t) in slots {
                    if let Some(t) = t {
                        tensors.push((
                            format!("{prefix}.{gi}.{pi}.{slot}"),
                            t.detach().to_device(tch::Device::Cpu),
                        ));
                    }
                }
            }
        }
        let meta = serde_json::json!({
            "d": self.d.to_bits(),
            "d_max": self.d_max.to_bits(),
            "numerator": self.numerator.to_bits(),
            "k": self.k,
            "current_lr": self.current_lr.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
            "params": params,
        });
        (tensors, meta)
    }

    /// Restores what [`Optimizer::export_state`] wrote into an optimizer built over the same
    /// parameter groups; `read` returns the stored tensor of a name, if present.
    pub fn import_state(
        &mut self,
        prefix: &str,
        meta: &serde_json::Value,
        mut read: impl FnMut(&str) -> Result<Option<Tensor>>,
    ) -> Result<()> {
        let bad = |what: &str| train_error(format!("optimizer state: {what}"));
        let bits = |v: &serde_json::Value| v.as_u64().map(f64::from_bits).ok_or_else(|| bad("bad float"));
        let params = meta["params"].as_array().ok_or_else(|| bad("no per-parameter state"))?;
        let count: usize = self.state.iter().map(Vec::len).sum();
        if params.len() != count {
            return Err(bad(&format!("{} parameters stored, this network has {count}", params.len())));
        }
        let lrs = meta["current_lr"].as_array().ok_or_else(|| bad("no group lrs"))?;
        if lrs.len() != self.groups.len() {
            return Err(bad("parameter group count differs"));
        }
        let _guard = tch::no_grad_guard();
        let mut flat = params.iter();
        for (gi, group) in self.state.iter_mut().enumerate() {
            for (pi, st) in group.iter_mut().enumerate() {
                let entry = flat.next().ok_or_else(|| bad("truncated"))?;
                st.initialised = entry[0].as_bool().ok_or_else(|| bad("bad flag"))?;
                st.step = entry[1].as_u64().ok_or_else(|| bad("bad step"))?;
                let device = self.groups[gi].params[pi].device();
                for (slot, t) in [
                    ("exp_avg", &mut st.exp_avg),
                    ("exp_avg_sq", &mut st.exp_avg_sq),
                    ("s", &mut st.s),
                    ("p0", &mut st.p0),
                ] {
                    *t = read(&format!("{prefix}.{gi}.{pi}.{slot}"))?.map(|v| v.to_device(device));
                }
            }
        }
        self.d = bits(&meta["d"])?;
        self.d_max = bits(&meta["d_max"])?;
        self.numerator = bits(&meta["numerator"])?;
        self.k = meta["k"].as_u64().ok_or_else(|| bad("bad k"))?;
        self.current_lr = lrs.iter().map(bits).collect::<Result<_>>()?;
        Ok(())
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for g in &mut self.groups {
            for p in &mut g.params {
                p.zero_grad();
            }
        }
    }

    /// One optimizer step with every group's lr = initial lr × `lr_factor`.
    pub fn step(&mut self, lr_factor: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.current_lr = self.groups.iter().map(|g| g.lr * lr_factor).collect();
        match self.config.clone() {
            OptimizerConfig::AdamW(c) => self.step_adamw(&c),
            OptimizerConfig::DAdaptAdam(c) => self.step_dadapt(&c),
            OptimizerConfig::Prodigy(c) => self.step_prodigy(&c),
        }
    }

    /// The largest group lr, after checking D-Adaptation's rule that every group lr is either
    /// that value or 0 (the packages raise a RuntimeError otherwise).
    fn shared_lr(&self) -> Result<f64> {
        let lr = self.current_lr.iter().copied().fold(0.0, f64::max);
        if self.current_lr.iter().any(|&g| g != lr && g != 0.0) {
            return Err(train_error(
                "Setting different lr values in different parameter groups is only supported for values of 0"
                    .into(),
            ));
        }
        Ok(lr)
    }

    fn bias_correction(&self, use_it: bool, (beta1, beta2): (f64, f64)) -> f64 {
        if use_it {
            // Python's `beta ** (k + 1)` is C `pow` on doubles.
            let k1 = (self.k + 1) as f64;
            (1.0 - beta2.powf(k1)).sqrt() / (1.0 - beta1.powf(k1))
        } else {
            1.0
        }
    }

    fn step_adamw(&mut self, c: &AdamWConfig) -> Result<()> {
        let (beta1, beta2) = c.betas;
        for (gi, group) in self.groups.iter_mut().enumerate() {
            let lr = self.current_lr[gi];
            for (pi, p) in group.params.iter_mut().enumerate() {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let st = &mut self.state[gi][pi];
                if !st.initialised {
                    st.exp_avg = Some(p.zeros_like());
                    st.exp_avg_sq = Some(p.zeros_like());
                    st.initialised = true;
                }
                st.step += 1;
                let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                let m = st.exp_avg.as_mut().expect("initialised");
                let _ = m.lerp_(&grad, 1.0 - beta1);
                let v = st.exp_avg_sq.as_mut().expect("initialised");
                let _ = v.g_mul_scalar_(beta2);
                let _ = v.g_add_(&(&grad * (1.0 - beta2) * &grad));
                let t = st.step as f64;
                let bc1 = 1.0 - beta1.powf(t);
                let bc2_sqrt = (1.0 - beta2.powf(t)).sqrt();
                let step_size = lr / bc1;
                let denom = (v.sqrt() / bc2_sqrt) + c.eps;
                let _ = p.g_add_(&(&*m * (-step_size) / denom));
            }
        }
        self.k += 1;
        Ok(())
    }

    fn step_dadapt(&mut self, c: &DAdaptAdamConfig) -> Result<()> {
        let (beta1, beta2) = c.betas;
        let lr = self.shared_lr()?;
        let dlr = self.d * lr * self.bias_correction(c.use_bias_correction, c.betas);
        let sqrt_beta2 = beta2.sqrt();
        // dadaptation 3.2's per-group layer_scale; always its default here.
        let r = 1.0;
        let mut numerator_acc = 0.0f64;
        let mut sk_l1 = 0.0f64;
        let mut grads: Vec<Vec<Tensor>> = Vec::with_capacity(self.groups.len());
        for (gi, group) in self.groups.iter_mut().enumerate() {
            let group_lr = self.current_lr[gi];
            let mut group_grads = Vec::with_capacity(group.params.len());
            for (pi, p) in group.params.iter_mut().enumerate() {
                let Some(grad) = coupled_grad(p, c.weight_decay, c.decouple) else {
                    group_grads.push(p.grad());
                    continue;
                };
                let st = &mut self.state[gi][pi];
                if !st.initialised {
                    st.s = Some(p.zeros_like());
                    st.exp_avg = Some(p.zeros_like());
                    st.exp_avg_sq = Some(p.zeros_like());
                    st.initialised = true;
                }
                if group_lr > 0.0 {
                    let v = st.exp_avg_sq.as_mut().expect("initialised");
                    let s = st.s.as_mut().expect("initialised");
                    let denom = v.sqrt() + c.eps;
                    let dot = grad.flatten(0, -1).dot(&(&*s / &denom).flatten(0, -1)).double_value(&[]);
                    numerator_acc += r * dlr * dot;
                    let m = st.exp_avg.as_mut().expect("initialised");
                    let _ = m.g_mul_scalar_(beta1);
                    let _ = m.g_add_(&(&grad * (r * dlr * (1.0 - beta1))));
                    let _ = v.g_mul_scalar_(beta2);
                    let _ = v.g_add_(&(&grad * (1.0 - beta2) * &grad));
                    let _ = s.g_mul_scalar_(sqrt_beta2);
                    let _ = s.g_add_(&(&grad * (dlr * (1.0 - sqrt_beta2))));
                    sk_l1 += r * s.abs().sum(s.kind()).double_value(&[]);
                }
                group_grads.push(grad);
            }
            grads.push(group_grads);
        }
        self.numerator = sqrt_beta2 * self.numerator + (1.0 - sqrt_beta2) * numerator_acc;
        // No progress possible (no gradients, or every lr 0): the reference returns before the
        // update and before counting the step.
        if sk_l1 == 0.0 {
            return Ok(());
        }
        if lr > 0.0 {
            let d_hat = self.numerator / ((1.0 - sqrt_beta2) * sk_l1);
            self.d = self.d.max(d_hat.min(self.d * c.growth_rate));
        }
        for (gi, group) in self.groups.iter_mut().enumerate() {
            for (pi, p) in group.params.iter_mut().enumerate() {
                if !grads[gi][pi].defined() {
                    continue;
                }
                let st = &mut self.state[gi][pi];
                st.step += 1;
                let denom = st.exp_avg_sq.as_ref().expect("initialised").sqrt() + c.eps;
                if c.weight_decay != 0.0 && c.decouple {
                    // Uses dlr from before this step's d update, as the reference does.
                    let _ = p.g_add_(&(&*p * (-c.weight_decay * dlr)));
                }
                let m = st.exp_avg.as_ref().expect("initialised");
                let _ = p.g_add_(&(m * (-1.0) / denom));
            }
        }
        self.k += 1;
        Ok(())
    }

    fn step_prodigy(&mut self, c: &ProdigyConfig) -> Result<()> {
        let (beta1, beta2) = c.betas;
        let beta3 = c.beta3.unwrap_or_else(|| beta2.sqrt());
        let lr = self.shared_lr()?;
        let dlr = self.d * lr * self.bias_correction(c.use_bias_correction, c.betas);
        let d = self.d;
        let d_numerator = self.numerator * beta3;
        let mut delta_numerator = 0.0f64;
        let mut d_denom = 0.0f64;
        let slice = |t: &Tensor| t.flatten(0, -1).slice(0, None, None, c.slice_p);
        let mut grads: Vec<Vec<Tensor>> = Vec::with_capacity(self.groups.len());
        for (gi, group) in self.groups.iter_mut().enumerate() {
            let group_lr = self.current_lr[gi];
            let mut group_grads = Vec::with_capacity(group.params.len());
            for (pi, p) in group.params.iter_mut().enumerate() {
                let Some(grad) = coupled_grad(p, c.weight_decay, c.decouple) else {
                    group_grads.push(p.grad());
                    continue;
                };
                let st = &mut self.state[gi][pi];
                if !st.initialised {
                    st.s = Some(slice(p).zeros_like());
                    // An all-zero parameter (a LoRA `lora_up`) keeps a scalar zero instead of a
                    // full copy, as the reference does to save memory.
                    let any = Tensor::ne(p, 0.0).any().int64_value(&[]) != 0;
                    st.p0 =
                        Some(if any { slice(p).copy() } else { Tensor::zeros([], (p.kind(), p.device())) });
                    if beta1 > 0.0 {
                        st.exp_avg = Some(p.zeros_like());
                    }
                    st.exp_avg_sq = Some(p.zeros_like());
                    st.initialised = true;
                }
                if group_lr > 0.0 {
                    let sliced_grad = slice(&grad);
                    let p0 = st.p0.as_ref().expect("initialised");
                    let dot = sliced_grad.dot(&(p0 - slice(p))).double_value(&[]);
                    delta_numerator += (d / c.d0) * dlr * dot;
                    if let Some(m) = st.exp_avg.as_mut() {
                        let _ = m.g_mul_scalar_(beta1);
                        let _ = m.g_add_(&(&grad * (d * (1.0 - beta1))));
                    }
                    let v = st.exp_avg_sq.as_mut().expect("initialised");
                    let _ = v.g_mul_scalar_(beta2);
                    let _ = v.g_add_(&(&grad * (d * d * (1.0 - beta2)) * &grad));
                    let s = st.s.as_mut().expect("initialised");
                    let _ = s.g_mul_scalar_(beta3);
                    let alpha = if c.safeguard_warmup { (d / c.d0) * d } else { (d / c.d0) * dlr };
                    let _ = s.g_add_(&(&sliced_grad * alpha));
                    d_denom += s.abs().sum(s.kind()).double_value(&[]);
                }
                group_grads.push(grad);
            }
            grads.push(group_grads);
        }
        if d_denom == 0.0 {
            return Ok(());
        }
        let mut new_d = d;
        if lr > 0.0 {
            let numerator = d_numerator + delta_numerator;
            let d_hat = c.d_coef * numerator / d_denom;
            if d == c.d0 {
                new_d = d.max(d_hat);
            }
            self.d_max = self.d_max.max(d_hat);
            new_d = self.d_max.min(new_d * c.growth_rate);
            self.numerator = numerator;
        }
        self.d = new_d;
        for (gi, group) in self.groups.iter_mut().enumerate() {
            for (pi, p) in group.params.iter_mut().enumerate() {
                let grad = &grads[gi][pi];
                if !grad.defined() {
                    continue;
                }
                let st = &mut self.state[gi][pi];
                st.step += 1;
                let denom = st.exp_avg_sq.as_ref().expect("initialised").sqrt() + new_d * c.eps;
                if c.weight_decay != 0.0 && c.decouple {
                    let _ = p.g_add_(&(&*p * (-c.weight_decay * dlr)));
                }
                match st.exp_avg.as_ref() {
                    Some(m) => {
                        let _ = p.g_add_(&(m * (-dlr) / denom));
                    }
                    None => {
                        let _ = p.g_add_(&(grad * (-dlr * new_d) / denom));
                    }
                }
            }
        }
        self.k += 1;
        Ok(())
    }
}

/// A parameter's gradient with L2 weight decay folded in when it is not decoupled (both
/// dadaptation and prodigyopt add `weight_decay · p` to the gradient first); `None` when the
/// parameter received no gradient this step.
fn coupled_grad(p: &Tensor, weight_decay: f64, decouple: bool) -> Option<Tensor> {
    let mut grad = p.grad();
    if !grad.defined() {
        return None;
    }
    if weight_decay != 0.0 && !decouple {
        let _ = grad.g_add_(&(p * weight_decay));
    }
    Some(grad)
}
