//! Dynamic loss scaling for fp16 mixed precision: PyTorch's `GradScaler` with the defaults
//! accelerate uses for kohya's `--mixed_precision fp16` (spec §3.5). bf16 and fp32 runs need none.
//!
//! The loss is multiplied by `scale` before backward so that small fp16 gradients do not flush
//! to zero; the fp32 LoRA gradients are divided by it again before clipping. When any gradient is
//! inf or NaN the optimizer step is skipped and the scale halves; after `GROWTH_INTERVAL` finite
//! steps in a row it doubles.

use tch::Tensor;

/// `GradScaler(init_scale=2**16, growth_factor=2, backoff_factor=0.5, growth_interval=2000)`.
pub const INIT_SCALE: f64 = 65536.0;
pub const GROWTH_FACTOR: f64 = 2.0;
pub const BACKOFF_FACTOR: f64 = 0.5;
pub const GROWTH_INTERVAL: u64 = 2000;

#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    /// The factor the loss is multiplied by.
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub growth_tracker: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler { scale: INIT_SCALE, growth_tracker: 0 }
    }
}

impl LossScaler {
    /// `scaler.unscale_`: divides every defined gradient of `params` by the scale, in place, and
    /// tells whether all of them are finite.
    pub fn unscale(&self, params: &[Tensor]) -> bool {
        let _guard = tch::no_grad_guard();
        let inv = 1.0 / self.scale;
        let mut finite = true;
        for g in params.iter().map(Tensor::grad).filter(Tensor::defined) {
            let _ = g.shallow_clone().g_mul_scalar_(inv);
            finite &= g.isfinite().all().int64_value(&[]) != 0;
        }
        finite
    }

    /// `scaler.update`: back off after a step with inf/NaN gradients, grow after
    /// `GROWTH_INTERVAL` good steps in a row.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.growth_tracker = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_on_inf_and_grows_after_the_interval() {
        let mut s = LossScaler::default();
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!((s.scale, s.growth_tracker), (32768.0, GROWTH_INTERVAL - 1));
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
    }

    #[test]
    fn unscale_divides_gradients_and_finds_inf() {
        let p = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        (&p * 4.0).sum(tch::Kind::Float).backward();
        let s = LossScaler { scale: 4.0, growth_tracker: 0 };
        assert!(s.unscale(std::slice::from_ref(&p)));
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![1.0, 1.0]);
        let q = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        (&q * f64::INFINITY).sum(tch::Kind::Float).backward();
        assert!(!s.unscale(&[p, q]));
    }
}
