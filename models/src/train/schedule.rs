//! Learning-rate schedules as sd-scripts builds them (transformers' `LambdaLR` factors, training
//! spec §6). A schedule maps the number of scheduler steps taken so far, `s`, to a factor λ(s) that
//! multiplies every parameter group's initial lr. Optimizer step j (1-based) runs with λ(j − 1);
//! the value logged after step j is λ(j), the lr of the next step.

use crate::error::Result;

use super::train_error;

/// `lr_end` of transformers' polynomial decay (sd-scripts never overrides it).
const POLYNOMIAL_LR_END: f64 = 1e-7;

/// The `--lr_scheduler` choices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrScheduleKind {
    Constant,
    ConstantWithWarmup,
    Linear,
    /// Half a cosine from 1 to 0: sd-scripts never passes `lr_scheduler_num_cycles` here, so
    /// transformers' default of 0.5 cycles always applies.
    Cosine,
    /// `cycles` hard restarts (`lr_scheduler_num_cycles`, default 1).
    CosineWithRestarts {
        cycles: f64,
    },
    /// Decay to 1e-7 with `power` (`lr_scheduler_power`, default 1); relative to `base_lr`, the
    /// optimizer's default lr.
    Polynomial {
        power: f64,
    },
}

impl LrScheduleKind {
    /// The sd-scripts name (`--lr_scheduler`), as written to `ss_lr_scheduler`.
    pub fn name(&self) -> &'static str {
        match self {
            LrScheduleKind::Constant => "constant",
            LrScheduleKind::ConstantWithWarmup => "constant_with_warmup",
            LrScheduleKind::Linear => "linear",
            LrScheduleKind::Cosine => "cosine",
            LrScheduleKind::CosineWithRestarts { .. } => "cosine_with_restarts",
            LrScheduleKind::Polynomial { .. } => "polynomial",
        }
    }
}

/// A schedule over `total` optimizer steps (T = max_train_steps × processes) with `warmup` W.
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    pub kind: LrScheduleKind,
    pub warmup: u64,
    pub total: u64,
    /// The optimizer's default lr (`--learning_rate`); only the polynomial schedule uses it.
    pub base_lr: f64,
}

impl LrSchedule {
    /// Checks the combinations sd-scripts refuses: a warmup on `constant`, and a polynomial
    /// schedule whose lr does not exceed its 1e-7 end value.
    pub fn new(kind: LrScheduleKind, warmup: u64, total: u64, base_lr: f64) -> Result<Self> {
        if kind == LrScheduleKind::Constant && warmup != 0 {
            return Err(train_error("the constant lr scheduler does not take warmup steps".into()));
        }
        if matches!(kind, LrScheduleKind::Polynomial { .. }) && base_lr <= POLYNOMIAL_LR_END {
            return Err(train_error(format!(
                "polynomial lr schedule: lr ({base_lr}) must be larger than lr_end ({POLYNOMIAL_LR_END})"
            )));
        }
        Ok(LrSchedule { kind, warmup, total, base_lr })
    }

    /// λ(s), the factor after `s` scheduler steps.
    pub fn factor(&self, s: u64) -> f64 {
        let (w, t) = (self.warmup, self.total);
        let sf = s as f64;
        let warming = s < w && self.kind != LrScheduleKind::Constant;
        if warming {
            return sf / (w.max(1) as f64);
        }
        // Progress after the warmup, in [0, 1] over the decay phase (transformers' `progress`).
        let progress = (sf - w as f64) / (t.saturating_sub(w).max(1) as f64);
        match self.kind {
            LrScheduleKind::Constant | LrScheduleKind::ConstantWithWarmup => 1.0,
            LrScheduleKind::Linear => 0f64.max((t as f64 - sf) / (t.saturating_sub(w).max(1) as f64)),
            LrScheduleKind::Cosine => {
                let cycles = 0.5;
                0f64.max(0.5 * (1.0 + (std::f64::consts::PI * cycles * 2.0 * progress).cos()))
            }
            LrScheduleKind::CosineWithRestarts { cycles } => {
                if progress >= 1.0 {
                    return 0.0;
                }
                0f64.max(0.5 * (1.0 + (std::f64::consts::PI * ((cycles * progress) % 1.0)).cos()))
            }
            LrScheduleKind::Polynomial { power } => {
                let lr_init = self.base_lr;
                if s > t {
                    return POLYNOMIAL_LR_END / lr_init;
                }
                let range = lr_init - POLYNOMIAL_LR_END;
                let decay_steps = t as f64 - w as f64;
                let remaining = 1.0 - (sf - w as f64) / decay_steps;
                (range * remaining.powf(power) + POLYNOMIAL_LR_END) / lr_init
            }
        }
    }
}
