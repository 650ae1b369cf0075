//! Seeded noise exactly as A1111 1.10 makes it (`modules/rng.py`), so that a seed gives the same
//! image here as there.
//!
//! # Sources (`randn_source`)
//! - [`RandnSource::Cpu`]: PyTorch's CPU generator; drawn on the CPU and moved to the device, so
//!   the noise is the same on every machine.
//! - [`RandnSource::Gpu`] (A1111's default): PyTorch's CUDA generator on a CUDA device. On any
//!   other device A1111 falls back to a CPU generator, and so does this.
//! - [`RandnSource::Nv`]: A1111's Philox emulation of NVIDIA's generator ([`philox`]), pure Rust.
//!
//! The libtorch generators are private ones ([`torch_generator::Generator`]), never the global
//! generator, so concurrent jobs cannot disturb each other's streams.
//!
//! # Per-image streams ([`ImageRng`])
//! Every image of a batch has its own generator seeded with its own seed (`seed + i` for image `i`
//! of a job, see [`all_seeds`]). Its first draw is the image's initial latent noise `[C, H/8, W/8]`;
//! later draws are the image's ancestral/SDE sampler noise, stacked into the batch. That is why an
//! image of a batch equals a single-image run with its seed.
//!
//! On top of that, in this order on the first draw: variation seeds (subseed noise of the same
//! shape, combined by [`slerp`] with `subseed_strength`), seed resize (noise of the
//! `seed_resize_from_w/h` latent size, pasted centred into the image's own first draw), and ENSD
//! (`eta_noise_seed_delta`: when non-zero, after the initial noise every image's generator is
//! replaced by a fresh one seeded `seed + delta`, which then feeds all sampler noise).

pub mod philox;
pub mod torch_generator;

use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
pub use philox::Philox;
pub use torch_generator::Generator;

/// Pixels per latent cell for Stable Diffusion's VAE (A1111's `opt_f`); seed-resize sizes are
/// given in pixels.
pub const LATENT_FACTOR: i64 = 8;

/// A1111's `randn_source` option; the names are A1111's (`"GPU"`, `"CPU"`, `"NV"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RandnSource {
    #[default]
    Gpu,
    Cpu,
    Nv,
}

impl RandnSource {
    /// The option value A1111 stores and prints in infotexts.
    pub fn name(self) -> &'static str {
        match self {
            RandnSource::Gpu => "GPU",
            RandnSource::Cpu => "CPU",
            RandnSource::Nv => "NV",
        }
    }
}

impl FromStr for RandnSource {
    type Err = Error;

    /// Exact, case-sensitive option values, as A1111's radio choice only knows these three.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "GPU" => Ok(RandnSource::Gpu),
            "CPU" => Ok(RandnSource::Cpu),
            "NV" => Ok(RandnSource::Nv),
            other => Err(Error::Rng(format!("unknown randn_source `{other}` (expected GPU, CPU or NV)"))),
        }
    }
}

impl std::fmt::Display for RandnSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A1111's `all_seeds`: `seed + i` per image, or `seed` for every image when variation is on
/// (`subseed_strength != 0`, the images then differ through their subseeds).
pub fn all_seeds(seed: u64, subseed_strength: f64, count: usize) -> Vec<u64> {
    let step = u64::from(subseed_strength == 0.0);
    (0..count as u64).map(|i| seed.wrapping_add(i * step)).collect()
}

/// A1111's `all_subseeds`: `subseed + i` per image.
pub fn all_subseeds(subseed: u64, count: usize) -> Vec<u64> {
    (0..count as u64).map(|i| subseed.wrapping_add(i)).collect()
}

enum Engine {
    Torch(Generator),
    Philox(Philox),
}

/// One seeded stream of standard-normal float32 noise: A1111's `create_generator(seed)` and the
/// draws made from it.
pub struct NoiseGenerator {
    engine: Engine,
    /// Where the draws are returned (they may be made elsewhere, see [`RandnSource`]).
    device: Device,
}

impl NoiseGenerator {
    /// A fresh generator for `seed`, with draws returned on `device`.
    pub fn new(source: RandnSource, seed: u64, device: Device) -> Result<Self> {
        let engine = match (source, device) {
            (RandnSource::Nv, _) => Engine::Philox(Philox::new(seed)),
            (RandnSource::Gpu, Device::Cuda(index)) => Engine::Torch(Generator::cuda(index, seed)?),
            // A1111 uses a CPU generator for the CPU source, and for the GPU source whenever the
            // device is not CUDA (CPU itself, or MPS where it deliberately avoids the device's).
            (RandnSource::Cpu | RandnSource::Gpu, _) => Engine::Torch(Generator::cpu(seed)?),
        };
        Ok(NoiseGenerator { engine, device })
    }

    /// The next draw of the given shape, float32 on this generator's device.
    pub fn randn(&mut self, shape: &[i64]) -> Result<Tensor> {
        if let Some(&d) = shape.iter().find(|&&d| d < 0) {
            return Err(Error::Rng(format!("negative dimension {d} in noise shape {shape:?}")));
        }
        let noise = match &mut self.engine {
            Engine::Torch(generator) => generator.randn(shape)?,
            Engine::Philox(philox) => {
                let n = shape.iter().product::<i64>();
                if n > 1 << 32 {
                    return Err(Error::Rng(format!("NV noise of shape {shape:?} exceeds 2^32 values")));
                }
                Tensor::f_from_slice(&philox.randn(n as usize))?.f_reshape(shape)?
            }
        };
        Ok(noise.f_to_device(self.device)?)
    }
}

/// A1111's `slerp(val, low, high)` for one image's noise `[C, H, W]`, reproduced operation by
/// operation (same libtorch ops and dims), including its quirks:
/// - the vectors are taken along dim 1 (the height axis): each is one column of one channel, so
///   one angle is computed per `(channel, column)`, not one per image;
/// - when the mean cosine exceeds 0.9995 it falls back to `low * val + high * (1 - val)`, which
///   weighs the two ends the other way round from the spherical branch.
pub fn slerp(val: f64, low: &Tensor, high: &Tensor) -> Result<Tensor> {
    let low_norm = low.f_div(&low.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?)?;
    let high_norm = high.f_div(&high.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?)?;
    let dot = low_norm.f_mul(&high_norm)?.f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?;

    // The comparison is done by libtorch (float32 mean against the scalar), as in Python.
    if dot.f_mean(None::<Kind>)?.f_gt(0.9995)?.f_int64_value(&[])? != 0 {
        return Ok(low.f_mul_scalar(val)?.f_add(&high.f_mul_scalar(1.0 - val)?)?);
    }

    let omega = dot.f_acos()?;
    let so = omega.f_sin()?;
    let w_low = omega.f_mul_scalar(1.0 - val)?.f_sin()?.f_div(&so)?.f_unsqueeze(1)?;
    let w_high = omega.f_mul_scalar(val)?.f_sin()?.f_div(&so)?.f_unsqueeze(1)?;
    Ok(w_low.f_mul(low)?.f_add(&w_high.f_mul(high)?)?)
}

/// Where seed-resize noise of length `old` lands in an axis of length `new`:
/// `(destination start, source start, length)`, with A1111's floor-divided offsets. When the old
/// size is larger it is cropped; an odd difference leaves the last row/column of the
/// destination untouched (A1111's arithmetic, kept as is).
pub fn resize_paste_span(new: i64, old: i64) -> (i64, i64, i64) {
    let d = (new - old).div_euclid(2);
    let len = if d >= 0 { old } else { old + 2 * d };
    (d.max(0), (-d).max(0), len)
}

/// Copies `noise` `[C, h, w]` into `x` `[C, H, W]` centred, per [`resize_paste_span`].
fn paste_centred(x: &Tensor, noise: &Tensor) -> Result<()> {
    let (full, old) = (x.size(), noise.size());
    let (ty, dy, h) = resize_paste_span(full[1], old[1]);
    let (tx, dx, w) = resize_paste_span(full[2], old[2]);
    let mut dst = x.f_narrow(1, ty, h)?.f_narrow(2, tx, w)?;
    dst.f_copy_(&noise.f_narrow(1, dy, h)?.f_narrow(2, dx, w)?)?;
    Ok(())
}

/// The noise-related generation parameters of an A1111 request and options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NoiseOptions {
    pub source: RandnSource,
    /// Variation strength; 0 turns variation seeds off entirely (no subseed noise is drawn).
    pub subseed_strength: f64,
    /// Seed resize source size in pixels; active only when both are positive.
    pub seed_resize_from_w: i64,
    pub seed_resize_from_h: i64,
    /// A1111's `eta_noise_seed_delta` option (ENSD).
    pub eta_noise_seed_delta: i64,
}

/// The per-image noise streams of one batch: A1111's `ImageRNG`.
pub struct ImageRng {
    options: NoiseOptions,
    shape: [i64; 3],
    seeds: Vec<u64>,
    subseeds: Vec<u64>,
    device: Device,
    generators: Vec<NoiseGenerator>,
    first_drawn: bool,
}

impl ImageRng {
    /// Streams for one batch of latents of `shape` `[C, H/8, W/8]`, one per seed in `seeds` (the
    /// batch's slice of [`all_seeds`]); `subseeds` is the matching slice of [`all_subseeds`].
    /// Noise is returned on `device`.
    pub fn new(
        options: &NoiseOptions,
        shape: [i64; 3],
        seeds: &[u64],
        subseeds: &[u64],
        device: Device,
    ) -> Result<Self> {
        if seeds.is_empty() {
            return Err(Error::Rng("a batch needs at least one seed".to_owned()));
        }
        if shape.iter().any(|&d| d < 0) {
            return Err(Error::Rng(format!("negative dimension in latent shape {shape:?}")));
        }
        let generators = seeds
            .iter()
            .map(|&seed| NoiseGenerator::new(options.source, seed, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageRng {
            options: options.clone(),
            shape,
            seeds: seeds.to_vec(),
            subseeds: subseeds.to_vec(),
            device,
            generators,
            first_drawn: false,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.seeds.len()
    }

    /// The per-image latent shape `[C, H, W]`.
    pub fn shape(&self) -> [i64; 3] {
        self.shape
    }

    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }

    /// The next batch of noise `[B, C, H, W]`, float32 on the device: the initial latent noise on
    /// the first call, sampler noise after that (A1111's `ImageRNG.next()`).
    pub fn next_batch(&mut self) -> Result<Tensor> {
        if !self.first_drawn {
            self.first_drawn = true;
            return self.first();
        }
        let shape = self.shape;
        let xs = self.generators.iter_mut().map(|g| g.randn(&shape)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_stack(&xs, 0)?)
    }

    /// Sampler noise shaped like `like` (`[B, C, H, W]`), in its kind and on its device. A1111
    /// ignores `like` beyond that: the values are the next per-image draws, whatever `like` holds.
    ///
    /// Panics when libtorch fails or the shape is not this batch's, as tch's own `randn_like`
    /// does on failure; [`ImageRng::try_next_noise`] returns the error instead.
    pub fn next_noise(&mut self, like: &Tensor) -> Tensor {
        self.try_next_noise(like).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ImageRng::next_noise`], returning errors.
    pub fn try_next_noise(&mut self, like: &Tensor) -> Result<Tensor> {
        let [c, h, w] = self.shape;
        let expected = vec![self.seeds.len() as i64, c, h, w];
        if like.size() != expected {
            return Err(Error::Rng(format!(
                "sampler asked for noise like {:?}, but this batch's noise is {expected:?}",
                like.size()
            )));
        }
        Ok(self.next_batch()?.f_to_device(like.device())?.f_to_kind(like.kind())?)
    }

    /// The first draw: A1111's `ImageRNG.first()`.
    fn first(&mut self) -> Result<Tensor> {
        let o = &self.options;
        let shape = self.shape;
        let resize = o.seed_resize_from_h > 0 && o.seed_resize_from_w > 0;
        // Python's `//` on positive sizes.
        let noise_shape = if resize {
            [shape[0], o.seed_resize_from_h / LATENT_FACTOR, o.seed_resize_from_w / LATENT_FACTOR]
        } else {
            shape
        };
        let resized = noise_shape != shape;

        let mut xs = Vec::with_capacity(self.seeds.len());
        for (i, (&seed, generator)) in self.seeds.iter().zip(self.generators.iter_mut()).enumerate() {
            // A1111 draws variation and resized noise from freshly seeded generators (its global
            // one after `manual_seed`), not from the image's own stream.
            let subnoise = if o.subseed_strength != 0.0 {
                let subseed = self.subseeds.get(i).copied().unwrap_or(0);
                Some(NoiseGenerator::new(o.source, subseed, self.device)?.randn(&noise_shape)?)
            } else {
                None
            };
            let mut noise = if resized {
                NoiseGenerator::new(o.source, seed, self.device)?.randn(&noise_shape)?
            } else {
                generator.randn(&shape)?
            };
            if let Some(subnoise) = subnoise {
                noise = slerp(o.subseed_strength, &noise, &subnoise)?;
            }
            if resized {
                // The image's own stream still makes the full-size first draw; the old-size noise
                // covers the centre of it.
                let x = generator.randn(&shape)?;
                paste_centred(&x, &noise)?;
                noise = x;
            }
            xs.push(noise);
        }

        if o.eta_noise_seed_delta != 0 {
            self.generators = self
                .seeds
                .iter()
                .map(|&seed| {
                    NoiseGenerator::new(
                        o.source,
                        seed.wrapping_add_signed(o.eta_noise_seed_delta),
                        self.device,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
        }
        Ok(Tensor::f_stack(&xs, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_paste_span_odd_shrink_uses_floor_offsets() {
        // 11 columns into 8: floor(-3/2) = -2, so 7 columns from source column 2 land at 0.
        assert_eq!(resize_paste_span(8, 11), (0, 2, 7));
        // 5 rows into 8: floor(3/2) = 1.
        assert_eq!(resize_paste_span(8, 5), (1, 0, 5));
        assert_eq!(resize_paste_span(8, 8), (0, 0, 8));
        assert_eq!(resize_paste_span(8, 12), (0, 2, 8));
    }

    #[test]
    fn all_seeds_variation_on_repeats_seed() {
        assert_eq!(all_seeds(10, 0.0, 3), vec![10, 11, 12]);
        assert_eq!(all_seeds(10, 0.5, 3), vec![10, 10, 10]);
        assert_eq!(all_subseeds(7, 3), vec![7, 8, 9]);
    }

    #[test]
    fn randn_source_names_round_trip() {
        for source in [RandnSource::Gpu, RandnSource::Cpu, RandnSource::Nv] {
            assert_eq!(source.name().parse::<RandnSource>().unwrap(), source);
        }
        assert!("gpu".parse::<RandnSource>().is_err());
    }
}
