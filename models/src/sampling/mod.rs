//! Samplers and noise schedules with k-diffusion's mathematics and A1111 1.10's wiring.
//!
//! # Pieces
//! - [`schedule`]: the SD1 discrete schedule, sigma↔timestep conversion, every A1111 scheduler.
//! - [`denoiser`]: the eps-model → denoiser wrappers (`CompVisDenoiser`, A1111's LCM denoiser).
//! - [`noise`], [`brownian`]: where samplers get noise (per-image stream or Brownian tree).
//! - `step`: the per-step loop the sigma-schedule samplers share (sigma pairs, model evaluation,
//!   callback and stop, noise draws), so each sampler module states only its step's mathematics.
//! - One module per sampler family: [`euler`], [`heun`], [`dpm2`], [`lms`], [`dpmpp`],
//!   [`dpm_solver`], [`restart`], [`lcm`], [`timestep`] (DDIM, DDIM CFG++, PLMS), [`unipc`].
//! - Here: [`SamplerKind`] / [`SchedulerKind`] with A1111's per-sampler options, the
//!   [`SamplingPlan`] (sigmas or timesteps for txt2img and img2img, as A1111 builds them) and the
//!   [`sample`] dispatcher, which forwards exactly the parameters A1111 forwards to each sampler.
//!
//! # Interfaces
//! k-diffusion samplers call a denoiser `model(x, sigma[B]) -> denoised` ([`Model::Denoised`]);
//! A1111's timestep samplers (DDIM, PLMS, UniPC) call `model(x, t[B]) -> eps` on the
//! variance-preserving latent ([`Model::Eps`]); DDIM CFG++ also needs the unconditional eps
//! ([`Model::EpsCfgPp`]). Classifier-free guidance lives inside those closures (the pipeline's
//! job). Scalars (sigmas, step sizes) are `f64`; tensors keep the dtype and device of `x`.
//!
//! A1111 display names and aliases are not here: `compat::samplers` maps them to the plain ids of
//! [`SamplerKind::id`] and [`SchedulerKind::id`].

// Samplers write `x = x + …` rather than `x += …`: `+=` on a tch tensor is an in-place update of
// its storage, which may be shared (a latent that is a shallow clone of a kept `denoised`, or the
// caller's noise tensor), so every update allocates a new tensor.
#![allow(clippy::assign_op_pattern)]

pub mod brownian;
pub mod denoiser;
pub mod dpm2;
pub mod dpm_solver;
pub mod dpmpp;
pub mod euler;
pub mod heun;
pub mod lcm;
pub mod lms;
pub mod noise;
pub mod restart;
pub mod schedule;
pub mod special;
mod step;
pub mod timestep;
pub mod unipc;

use tch::Tensor;

use crate::error::{Error, Result};
use noise::NoiseSource;
use schedule::DiscreteSchedule;

/// The samplers of A1111 1.10, in the order of `/sdapi/v1/samplers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    DpmPp2M,
    DpmPpSde,
    DpmPp2MSde,
    DpmPp2MSdeHeun,
    DpmPp2SAncestral,
    DpmPp3MSde,
    EulerAncestral,
    Euler,
    Lms,
    Heun,
    Dpm2,
    Dpm2Ancestral,
    DpmFast,
    DpmAdaptive,
    Restart,
    Ddim,
    DdimCfgPp,
    Plms,
    UniPc,
    Lcm,
}

/// The schedulers of A1111 1.10, in the order of `/sdapi/v1/schedulers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Automatic,
    Uniform,
    Karras,
    Exponential,
    Polyexponential,
    SgmUniform,
    KlOptimal,
    AlignYourSteps,
    Simple,
    Normal,
    Ddim,
    Beta,
}

/// Which second-order correction DPM++ 2M SDE uses (k-diffusion `solver_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverType {
    Midpoint,
    Heun,
}

/// What the sampler's model closure must compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelInput {
    /// `(x, sigma[B]) -> denoised` in sigma space ([`Model::Denoised`]).
    Denoised,
    /// `(x, t[B]) -> eps` on the variance-preserving latent ([`Model::Eps`]).
    Eps,
    /// `(x, t[B]) -> (eps, eps_uncond)` ([`Model::EpsCfgPp`]).
    EpsCfgPp,
}

/// Which wrapper turns the UNet into the model the sampler calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenoiserKind {
    /// [`denoiser::CompVisDenoiser`] over the model's schedule.
    CompVis,
    /// [`denoiser::LcmDenoiser`] over `DiscreteSchedule::lcm`.
    Lcm,
    /// None: the UNet's eps at integer (DDIM, PLMS) or continuous (UniPC) timesteps.
    Timestep,
}

/// A1111's per-sampler `options` (the `options` of `/sdapi/v1/samplers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerOptions {
    /// The scheduler "Automatic" resolves to; `None` means the model's own uniform sigmas.
    pub scheduler: Option<SchedulerKind>,
    /// Build the schedule for `steps + 1` and drop the next-to-last sigma.
    pub discard_next_to_last_sigma: bool,
    /// Two model evaluations per step (informational).
    pub second_order: bool,
    /// Consumes per-step noise, so `eta_noise_seed_delta` changes its results.
    pub uses_ensd: bool,
    /// A1111 feeds it a Brownian tree seeded with the image seeds instead of the noise stream.
    pub brownian_noise: bool,
    /// DPM++ 2M SDE's correction.
    pub solver_type: Option<SolverType>,
}

impl SamplerKind {
    /// All samplers in A1111's order.
    pub const ALL: [SamplerKind; 20] = [
        SamplerKind::DpmPp2M,
        SamplerKind::DpmPpSde,
        SamplerKind::DpmPp2MSde,
        SamplerKind::DpmPp2MSdeHeun,
        SamplerKind::DpmPp2SAncestral,
        SamplerKind::DpmPp3MSde,
        SamplerKind::EulerAncestral,
        SamplerKind::Euler,
        SamplerKind::Lms,
        SamplerKind::Heun,
        SamplerKind::Dpm2,
        SamplerKind::Dpm2Ancestral,
        SamplerKind::DpmFast,
        SamplerKind::DpmAdaptive,
        SamplerKind::Restart,
        SamplerKind::Ddim,
        SamplerKind::DdimCfgPp,
        SamplerKind::Plms,
        SamplerKind::UniPc,
        SamplerKind::Lcm,
    ];

    /// Stable plain identifier (what `compat::samplers` maps A1111 names to).
    pub fn id(self) -> &'static str {
        match self {
            SamplerKind::DpmPp2M => "dpmpp_2m",
            SamplerKind::DpmPpSde => "dpmpp_sde",
            SamplerKind::DpmPp2MSde => "dpmpp_2m_sde",
            SamplerKind::DpmPp2MSdeHeun => "dpmpp_2m_sde_heun",
            SamplerKind::DpmPp2SAncestral => "dpmpp_2s_ancestral",
            SamplerKind::DpmPp3MSde => "dpmpp_3m_sde",
            SamplerKind::EulerAncestral => "euler_ancestral",
            SamplerKind::Euler => "euler",
            SamplerKind::Lms => "lms",
            SamplerKind::Heun => "heun",
            SamplerKind::Dpm2 => "dpm_2",
            SamplerKind::Dpm2Ancestral => "dpm_2_ancestral",
            SamplerKind::DpmFast => "dpm_fast",
            SamplerKind::DpmAdaptive => "dpm_adaptive",
            SamplerKind::Restart => "restart",
            SamplerKind::Ddim => "ddim",
            SamplerKind::DdimCfgPp => "ddim_cfgpp",
            SamplerKind::Plms => "plms",
            SamplerKind::UniPc => "unipc",
            SamplerKind::Lcm => "lcm",
        }
    }

    /// The sampler with plain identifier `id`.
    pub fn from_id(id: &str) -> Option<SamplerKind> {
        SamplerKind::ALL.into_iter().find(|k| k.id() == id)
    }

    /// A1111 1.10's options for this sampler.
    pub fn options(self) -> SamplerOptions {
        use SchedulerKind::{Exponential, Karras};
        let base = SamplerOptions {
            scheduler: None,
            discard_next_to_last_sigma: false,
            second_order: false,
            uses_ensd: false,
            brownian_noise: false,
            solver_type: None,
        };
        match self {
            SamplerKind::DpmPp2M => SamplerOptions { scheduler: Some(Karras), ..base },
            SamplerKind::DpmPpSde => {
                SamplerOptions { scheduler: Some(Karras), second_order: true, brownian_noise: true, ..base }
            }
            SamplerKind::DpmPp2MSde => {
                SamplerOptions { scheduler: Some(Exponential), brownian_noise: true, ..base }
            }
            SamplerKind::DpmPp2MSdeHeun => SamplerOptions {
                scheduler: Some(Exponential),
                brownian_noise: true,
                solver_type: Some(SolverType::Heun),
                ..base
            },
            SamplerKind::DpmPp2SAncestral => {
                SamplerOptions { scheduler: Some(Karras), uses_ensd: true, second_order: true, ..base }
            }
            SamplerKind::DpmPp3MSde => SamplerOptions {
                scheduler: Some(Exponential),
                discard_next_to_last_sigma: true,
                brownian_noise: true,
                ..base
            },
            SamplerKind::EulerAncestral => SamplerOptions { uses_ensd: true, ..base },
            SamplerKind::Heun => SamplerOptions { second_order: true, ..base },
            SamplerKind::Dpm2 => SamplerOptions {
                scheduler: Some(Karras),
                discard_next_to_last_sigma: true,
                second_order: true,
                ..base
            },
            SamplerKind::Dpm2Ancestral => SamplerOptions {
                scheduler: Some(Karras),
                discard_next_to_last_sigma: true,
                uses_ensd: true,
                second_order: true,
                ..base
            },
            SamplerKind::DpmFast | SamplerKind::DpmAdaptive => SamplerOptions { uses_ensd: true, ..base },
            SamplerKind::Restart => SamplerOptions { scheduler: Some(Karras), second_order: true, ..base },
            SamplerKind::Euler
            | SamplerKind::Lms
            | SamplerKind::Ddim
            | SamplerKind::DdimCfgPp
            | SamplerKind::Plms
            | SamplerKind::UniPc
            | SamplerKind::Lcm => base,
        }
    }

    /// What the model closure must compute for this sampler.
    pub fn model_input(self) -> ModelInput {
        match self {
            SamplerKind::Ddim | SamplerKind::Plms | SamplerKind::UniPc => ModelInput::Eps,
            SamplerKind::DdimCfgPp => ModelInput::EpsCfgPp,
            _ => ModelInput::Denoised,
        }
    }

    /// Which UNet wrapper the model closure uses.
    pub fn denoiser(self) -> DenoiserKind {
        match self.model_input() {
            ModelInput::Eps | ModelInput::EpsCfgPp => DenoiserKind::Timestep,
            ModelInput::Denoised if self == SamplerKind::Lcm => DenoiserKind::Lcm,
            ModelInput::Denoised => DenoiserKind::CompVis,
        }
    }

    /// The factor A1111 applies to the CFG scale for this sampler (`cond_scale_multiplier`):
    /// DDIM CFG++ guides with `cfg / 12.5`, every other sampler with `cfg`.
    pub fn cfg_scale_multiplier(self) -> f64 {
        match self {
            SamplerKind::DdimCfgPp => timestep::CFGPP_SCALE_MULTIPLIER,
            _ => 1.0,
        }
    }

    /// A1111's timestep samplers, which ignore the scheduler.
    pub fn is_timestep_sampler(self) -> bool {
        self.denoiser() == DenoiserKind::Timestep
    }

    /// Whether the sampler uses `eta` (A1111 passes it to every sampler function that has one).
    pub fn uses_eta(self) -> bool {
        matches!(
            self,
            SamplerKind::EulerAncestral
                | SamplerKind::Dpm2Ancestral
                | SamplerKind::DpmPp2SAncestral
                | SamplerKind::DpmPpSde
                | SamplerKind::DpmPp2MSde
                | SamplerKind::DpmPp2MSdeHeun
                | SamplerKind::DpmPp3MSde
                | SamplerKind::DpmFast
                | SamplerKind::DpmAdaptive
                | SamplerKind::Ddim
                | SamplerKind::DdimCfgPp
        )
    }

    /// Whether A1111 forwards `s_churn`, `s_tmin`, `s_tmax` (Euler, Heun, DPM2).
    pub fn uses_churn(self) -> bool {
        matches!(self, SamplerKind::Euler | SamplerKind::Heun | SamplerKind::Dpm2)
    }

    /// Whether A1111 forwards `s_noise` (its `sampler_extra_params`); the others run with 1.
    pub fn uses_s_noise(self) -> bool {
        matches!(
            self,
            SamplerKind::Euler
                | SamplerKind::Heun
                | SamplerKind::Dpm2
                | SamplerKind::DpmFast
                | SamplerKind::Dpm2Ancestral
                | SamplerKind::DpmPp2SAncestral
                | SamplerKind::DpmPpSde
                | SamplerKind::DpmPp2MSde
                | SamplerKind::DpmPp2MSdeHeun
                | SamplerKind::DpmPp3MSde
        )
    }
}

/// A1111 1.10's `options.scheduler` of a sampler: what "Automatic" means for it (`None`: the
/// model's own uniform sigmas; timestep samplers never use a scheduler).
pub fn default_scheduler(sampler: SamplerKind) -> Option<SchedulerKind> {
    sampler.options().scheduler
}

impl SchedulerKind {
    /// All schedulers in A1111's order.
    pub const ALL: [SchedulerKind; 12] = [
        SchedulerKind::Automatic,
        SchedulerKind::Uniform,
        SchedulerKind::Karras,
        SchedulerKind::Exponential,
        SchedulerKind::Polyexponential,
        SchedulerKind::SgmUniform,
        SchedulerKind::KlOptimal,
        SchedulerKind::AlignYourSteps,
        SchedulerKind::Simple,
        SchedulerKind::Normal,
        SchedulerKind::Ddim,
        SchedulerKind::Beta,
    ];

    /// A1111's scheduler `name` (lower-case id).
    pub fn id(self) -> &'static str {
        match self {
            SchedulerKind::Automatic => "automatic",
            SchedulerKind::Uniform => "uniform",
            SchedulerKind::Karras => "karras",
            SchedulerKind::Exponential => "exponential",
            SchedulerKind::Polyexponential => "polyexponential",
            SchedulerKind::SgmUniform => "sgm_uniform",
            SchedulerKind::KlOptimal => "kl_optimal",
            SchedulerKind::AlignYourSteps => "align_your_steps",
            SchedulerKind::Simple => "simple",
            SchedulerKind::Normal => "normal",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Beta => "beta",
        }
    }

    /// The scheduler with id `id`.
    pub fn from_id(id: &str) -> Option<SchedulerKind> {
        SchedulerKind::ALL.into_iter().find(|k| k.id() == id)
    }

    /// A1111's `default_rho` (-1 where rho does not apply).
    pub fn default_rho(self) -> f64 {
        match self {
            SchedulerKind::Karras => 7.0,
            SchedulerKind::Polyexponential => 1.0,
            _ => -1.0,
        }
    }
}

/// Settings that shape the sigma array (A1111 options of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleOptions {
    /// `sigma_min` option; `None` (A1111's 0) = the model's smallest sigma.
    pub sigma_min: Option<f64>,
    /// `sigma_max` option; `None` (A1111's 0) = the model's largest sigma.
    pub sigma_max: Option<f64>,
    /// `rho` option; `None` (A1111's 0) = the scheduler's default (7 Karras, 1 Polyexponential).
    pub rho: Option<f64>,
    /// `beta_dist_alpha` (0.6).
    pub beta_alpha: f64,
    /// `beta_dist_beta` (0.6).
    pub beta_beta: f64,
    /// `always_discard_next_to_last_sigma` (false).
    pub always_discard_next_to_last_sigma: bool,
    /// `use_old_karras_scheduler_sigmas` (false): sigma range (0.1, 10) instead of the model's.
    pub use_old_karras_scheduler_sigmas: bool,
    /// Use the SDXL Align Your Steps table (A1111 picks it for SDXL models).
    pub sdxl: bool,
}

impl Default for ScheduleOptions {
    fn default() -> Self {
        ScheduleOptions {
            sigma_min: None,
            sigma_max: None,
            rho: None,
            beta_alpha: 0.6,
            beta_beta: 0.6,
            always_discard_next_to_last_sigma: false,
            use_old_karras_scheduler_sigmas: false,
            sdxl: false,
        }
    }
}

/// The sigma array A1111's `KDiffusionSampler.get_sigmas(p, steps)` builds: resolve
/// "Automatic", build `steps` (+1 when discarding) levels plus the final 0, drop the
/// next-to-last sigma if the sampler or the option asks for it. `schedule` is the model's schedule;
/// for LCM its LCM table is derived here.
pub fn sigmas_for(
    sampler: SamplerKind,
    scheduler: SchedulerKind,
    steps: usize,
    schedule: &DiscreteSchedule,
    opts: &ScheduleOptions,
) -> Result<Vec<f64>> {
    // A1111's LCM sampler wraps the model in its own denoiser, whose 50-level table is what every
    // scheduler sees (range, `get_sigmas`, timestep conversions).
    let lcm_schedule;
    let schedule = if sampler.denoiser() == DenoiserKind::Lcm && !schedule.is_lcm() {
        lcm_schedule = DiscreteSchedule::lcm(schedule.alphas_cumprod())?;
        &lcm_schedule
    } else {
        schedule
    };
    let discard = sampler.options().discard_next_to_last_sigma || opts.always_discard_next_to_last_sigma;
    let n = if discard { steps + 1 } else { steps };
    let resolved = match scheduler {
        SchedulerKind::Automatic => sampler.options().scheduler,
        other => Some(other),
    };
    let (m_min, m_max) = (schedule.sigma_min(), schedule.sigma_max());
    let (mut smin, mut smax) =
        if opts.use_old_karras_scheduler_sigmas { (0.1, 10.0) } else { (m_min, m_max) };
    if let Some(v) = opts.sigma_min.filter(|v| *v != 0.0 && *v != m_min) {
        smin = v;
    }
    if let Some(v) = opts.sigma_max.filter(|v| *v != 0.0 && *v != m_max) {
        smax = v;
    }
    let rho = |kind: SchedulerKind| opts.rho.filter(|r| *r != 0.0).unwrap_or(kind.default_rho());
    let sigmas = match resolved {
        None | Some(SchedulerKind::Automatic) | Some(SchedulerKind::Uniform) => schedule.get_sigmas(n)?,
        Some(SchedulerKind::Karras) => schedule::karras(n, smin, smax, rho(SchedulerKind::Karras))?,
        Some(SchedulerKind::Exponential) => schedule::exponential(n, smin, smax)?,
        Some(SchedulerKind::Polyexponential) => {
            schedule::polyexponential(n, smin, smax, rho(SchedulerKind::Polyexponential))?
        }
        Some(SchedulerKind::SgmUniform) => schedule::sgm_uniform(schedule, n, smin, smax)?,
        Some(SchedulerKind::KlOptimal) => schedule::kl_optimal(n, smin, smax)?,
        Some(SchedulerKind::AlignYourSteps) => {
            let table = if opts.sdxl { &schedule::AYS_SDXL } else { &schedule::AYS_SD15 };
            schedule::align_your_steps(n, table)?
        }
        Some(SchedulerKind::Simple) => schedule::simple(schedule, n)?,
        Some(SchedulerKind::Normal) => schedule::normal(schedule, n, smin, smax)?,
        Some(SchedulerKind::Ddim) => schedule::ddim_uniform(schedule, n)?,
        Some(SchedulerKind::Beta) => schedule::beta(n, smin, smax, opts.beta_alpha, opts.beta_beta)?,
    };
    Ok(if discard { schedule::discard_next_to_last(sigmas) } else { sigmas })
}

/// The steps a sampler will walk.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Noise levels ending in 0 (or `sigma_min` for KL Optimal), for k-diffusion samplers.
    Sigmas(Vec<f64>),
    /// DPM fast / adaptive integrate from `sigma_max` to `sigma_min` with `n` model evaluations
    /// (fast) or an adaptive step size.
    DpmSolver { sigma_min: f64, sigma_max: f64, n: usize },
    /// Integer timesteps, increasing, for DDIM / PLMS / UniPC (`img2img` starts UniPC late).
    Timesteps { timesteps: Vec<i64>, img2img: bool },
}

/// How the latent the sampler starts from is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    /// txt2img, sigma samplers: `noise · sigma` (`noise · sqrt(1 + sigma²)` with A1111's SGM noise
    /// multiplier).
    Noise { sigma: f64 },
    /// txt2img, timestep samplers: the noise itself.
    PureNoise,
    /// img2img, sigma samplers: `init + noise · sigma`.
    AddNoise { sigma: f64 },
    /// img2img, timestep samplers: `init · sqrt(a) + noise · sqrt(1 - a)` with `a = alphas_cumprod[t]`.
    Diffuse { alpha_cumprod: f32 },
}

/// Everything a sampler run needs besides the model: A1111's `sample` / `sample_img2img` set-up.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingPlan {
    pub sampler: SamplerKind,
    /// The scheduler that built the sigmas (`None`: the model's uniform sigmas, or a timestep
    /// sampler). A1111 writes its label to the infotext ("Schedule type") unless it is Automatic.
    pub scheduler: Option<SchedulerKind>,
    pub schedule: Schedule,
    /// The full sigma array before img2img truncation (empty for timestep samplers). A1111 takes
    /// the Brownian tree's range from it.
    pub full_sigmas: Vec<f64>,
    /// The model's `alphas_cumprod` for timestep samplers (empty for the others).
    pub alphas_cumprod: Vec<f64>,
    pub start: Start,
}

/// A1111's `setup_img2img_steps`: `(steps, t_enc)` for a denoising strength.
pub fn img2img_steps(steps: usize, denoising_strength: f64, fix_steps: bool) -> (usize, usize) {
    let strength = denoising_strength.min(0.999);
    if fix_steps {
        let total = if denoising_strength > 0.0 { (steps as f64 / strength) as usize } else { 0 };
        (total, steps.saturating_sub(1))
    } else {
        (steps, (strength * steps as f64) as usize)
    }
}

impl SamplingPlan {
    /// The plan of a txt2img pass (A1111 `sample`).
    pub fn txt2img(
        sampler: SamplerKind,
        scheduler: SchedulerKind,
        steps: usize,
        schedule: &DiscreteSchedule,
        opts: &ScheduleOptions,
    ) -> Result<Self> {
        if sampler.is_timestep_sampler() {
            let n = if opts.always_discard_next_to_last_sigma { steps + 1 } else { steps };
            let timesteps = schedule::timestep_sampler_timesteps(n)?;
            return Ok(SamplingPlan {
                sampler,
                scheduler: None,
                schedule: Schedule::Timesteps { timesteps, img2img: false },
                full_sigmas: Vec::new(),
                alphas_cumprod: alphas_f64(schedule),
                start: Start::PureNoise,
            });
        }
        let sigmas = sigmas_for(sampler, scheduler, steps, schedule, opts)?;
        let used = resolved_scheduler(sampler, scheduler);
        let plan_schedule = match sampler {
            // A1111 gives DPM fast / adaptive the model's sigma range and `steps`, whatever the
            // scheduler; the scheduler only scales the initial noise.
            SamplerKind::DpmFast | SamplerKind::DpmAdaptive => Schedule::DpmSolver {
                sigma_min: schedule.sigma_min(),
                sigma_max: schedule.sigma_max(),
                n: steps,
            },
            _ => Schedule::Sigmas(sigmas.clone()),
        };
        Ok(SamplingPlan {
            sampler,
            scheduler: used,
            schedule: plan_schedule,
            start: Start::Noise { sigma: sigmas[0] },
            full_sigmas: sigmas,
            alphas_cumprod: Vec::new(),
        })
    }

    /// The plan of an img2img (or hires) pass (A1111 `sample_img2img`): the schedule for the full
    /// step count, entered at the step that matches `denoising_strength`.
    pub fn img2img(
        sampler: SamplerKind,
        scheduler: SchedulerKind,
        steps: usize,
        denoising_strength: f64,
        fix_steps: bool,
        schedule: &DiscreteSchedule,
        opts: &ScheduleOptions,
    ) -> Result<Self> {
        let (steps, t_enc) = img2img_steps(steps, denoising_strength, fix_steps);
        if steps == 0 {
            return Err(Error::Sampling("img2img with denoising strength 0 has no steps to run".into()));
        }
        if sampler.is_timestep_sampler() {
            let n = if opts.always_discard_next_to_last_sigma { steps + 1 } else { steps };
            let all = schedule::timestep_sampler_timesteps(n)?;
            let t = all[t_enc] as usize;
            let alpha = *schedule
                .alphas_cumprod()
                .get(t)
                .ok_or_else(|| Error::Sampling(format!("timestep {t} is outside the model's schedule")))?;
            return Ok(SamplingPlan {
                sampler,
                scheduler: None,
                schedule: Schedule::Timesteps { timesteps: all[..t_enc].to_vec(), img2img: true },
                full_sigmas: Vec::new(),
                alphas_cumprod: alphas_f64(schedule),
                start: Start::Diffuse { alpha_cumprod: alpha },
            });
        }
        let sigmas = sigmas_for(sampler, scheduler, steps, schedule, opts)?;
        let from = (steps - t_enc - 1).min(sigmas.len() - 1);
        let sched: Vec<f64> = sigmas[from..].to_vec();
        let plan_schedule = match sampler {
            SamplerKind::DpmFast | SamplerKind::DpmAdaptive => {
                if sched.len() < 2 {
                    return Err(Error::Sampling("DPM fast/adaptive need at least one img2img step".into()));
                }
                Schedule::DpmSolver {
                    sigma_min: sched[sched.len() - 2],
                    sigma_max: sched[0],
                    n: sched.len() - 1,
                }
            }
            _ => Schedule::Sigmas(sched.clone()),
        };
        Ok(SamplingPlan {
            sampler,
            scheduler: resolved_scheduler(sampler, scheduler),
            schedule: plan_schedule,
            start: Start::AddNoise { sigma: sched[0] },
            full_sigmas: sigmas,
            alphas_cumprod: Vec::new(),
        })
    }

    /// The latent the sampler starts from: `noise` for txt2img, `init` (the encoded image) and
    /// `noise` for img2img. `sgm_noise_multiplier` is A1111's option of that name (txt2img only).
    pub fn start_latent(
        &self,
        noise: &Tensor,
        init: Option<&Tensor>,
        sgm_noise_multiplier: bool,
    ) -> Result<Tensor> {
        let need_init = || init.ok_or_else(|| Error::Sampling("img2img needs an init latent".into()));
        Ok(match self.start {
            Start::PureNoise => noise.shallow_clone(),
            Start::Noise { sigma } if sgm_noise_multiplier => noise * (1.0 + sigma * sigma).sqrt(),
            Start::Noise { sigma } => noise * sigma,
            Start::AddNoise { sigma } => need_init()? + noise * sigma,
            Start::Diffuse { alpha_cumprod } => {
                let a = alpha_cumprod.sqrt() as f64;
                let b = (1.0 - alpha_cumprod).sqrt() as f64;
                need_init()? * a + noise * b
            }
        })
    }

    /// `(sigma_min, sigma_max)` of the Brownian tree A1111 builds for this plan: the smallest
    /// positive and the largest value of the full sigma array.
    pub fn brownian_range(&self) -> Option<(f64, f64)> {
        let min = self.full_sigmas.iter().copied().filter(|s| *s > 0.0).reduce(f64::min)?;
        let max = self.full_sigmas.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }
}

fn alphas_f64(schedule: &DiscreteSchedule) -> Vec<f64> {
    schedule.alphas_cumprod().iter().map(|a| *a as f64).collect()
}

fn resolved_scheduler(sampler: SamplerKind, scheduler: SchedulerKind) -> Option<SchedulerKind> {
    match scheduler {
        SchedulerKind::Automatic => sampler.options().scheduler,
        other => Some(other),
    }
}

/// UniPC settings (A1111 options `uni_pc_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniPcOptions {
    pub variant: unipc::Variant,
    pub skip_type: unipc::SkipType,
    pub order: usize,
    pub lower_order_final: bool,
}

impl Default for UniPcOptions {
    fn default() -> Self {
        // A1111 1.10 defaults: bh1, time_uniform, order 3, lower order final.
        UniPcOptions {
            variant: unipc::Variant::Bh1,
            skip_type: unipc::SkipType::TimeUniform,
            order: 3,
            lower_order_final: true,
        }
    }
}

/// Sampler parameters as A1111 resolves them for a request (`p.eta`, `opts.eta_ancestral`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerParams {
    /// The request's `eta`; `None` falls back to `eta_ancestral` or, for DDIM, `eta_ddim`.
    pub eta: Option<f64>,
    /// `eta_ancestral` option (1.0).
    pub eta_ancestral: f64,
    /// `eta_ddim` option (0.0).
    pub eta_ddim: f64,
    /// `s_churn` (0.0).
    pub s_churn: f64,
    /// `s_tmin` (0.0).
    pub s_tmin: f64,
    /// `s_tmax` (A1111's 0 means infinity).
    pub s_tmax: f64,
    /// `s_noise` (1.0).
    pub s_noise: f64,
    /// UniPC settings.
    pub uni_pc: UniPcOptions,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            eta: None,
            eta_ancestral: 1.0,
            eta_ddim: 0.0,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
            uni_pc: UniPcOptions::default(),
        }
    }
}

impl SamplerParams {
    /// The eta A1111 passes to `sampler` (only meaningful where [`SamplerKind::uses_eta`]).
    pub fn eta_for(&self, sampler: SamplerKind) -> f64 {
        let default = if sampler.is_timestep_sampler() { self.eta_ddim } else { self.eta_ancestral };
        self.eta.unwrap_or(default)
    }

    /// `s_noise` as A1111 forwards it to `sampler` (1 where it is not forwarded).
    pub fn s_noise_for(&self, sampler: SamplerKind) -> f64 {
        if sampler.uses_s_noise() {
            self.s_noise
        } else {
            1.0
        }
    }

    /// The churn settings A1111 forwards to `sampler` (none where it does not).
    pub fn churn_for(&self, sampler: SamplerKind) -> Churn {
        if sampler.uses_churn() {
            Churn { s_churn: self.s_churn, s_tmin: self.s_tmin, s_tmax: self.s_tmax, s_noise: self.s_noise }
        } else {
            Churn::default()
        }
    }
}

/// Karras et al.'s stochastic "churn" of Euler, Heun and DPM2 (k-diffusion defaults: none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Churn { s_churn: 0.0, s_tmin: 0.0, s_tmax: f64::INFINITY, s_noise: 1.0 }
    }
}

impl Churn {
    /// `gamma` of step `i` of a schedule with `steps` steps at noise level `sigma`.
    fn gamma(&self, steps: usize, sigma: f64) -> f64 {
        if self.s_tmin <= sigma && sigma <= self.s_tmax {
            (self.s_churn / steps as f64).min(2f64.sqrt() - 1.0)
        } else {
            0.0
        }
    }

    /// k-diffusion's churn preamble of a step: always draws the noise (A1111's stream advances
    /// even when `gamma` is 0), raises the noise level to `sigma_hat = sigma (gamma + 1)` and
    /// adds the matching noise. Returns `(x, sigma_hat)`.
    fn apply(
        &self,
        ctx: &mut SamplerCtx<'_>,
        x: Tensor,
        steps: usize,
        sigma: f64,
        sigma_next: f64,
    ) -> Result<(Tensor, f64)> {
        let gamma = self.gamma(steps, sigma);
        let eps = ctx.noise(&x, sigma, sigma_next)? * self.s_noise;
        let sigma_hat = sigma * (gamma + 1.0);
        let x = if gamma > 0.0 { x + eps * (sigma_hat * sigma_hat - sigma * sigma).sqrt() } else { x };
        Ok((x, sigma_hat))
    }
}

/// What the sampler reports after each step (A1111's callback dict).
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// Step index, from 0 (DPM adaptive counts rejected attempts too, as upstream).
    pub step: usize,
    /// The latent the step started from (DDIM/PLMS/UniPC: the latent after the step).
    pub x: &'a Tensor,
    /// The model's denoised prediction at this step (A1111's live preview and the latent it
    /// returns when interrupted).
    pub denoised: &'a Tensor,
    pub sigma: f64,
    pub sigma_hat: f64,
}

/// What the step callback asks the sampler to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Stop now; the run returns this step's `denoised` (A1111's `last_latent`).
    Stop,
}

/// Callback invoked after every step.
pub type StepCallback<'a> = dyn FnMut(&StepInfo<'_>) -> Control + 'a;

/// The sampler's view of the outside world: noise and the step callback.
pub struct SamplerCtx<'a> {
    noise: &'a mut dyn NoiseSource,
    callback: Option<&'a mut StepCallback<'a>>,
    draws: usize,
}

impl<'a> SamplerCtx<'a> {
    /// A context drawing noise from `noise`, without a callback.
    pub fn new(noise: &'a mut dyn NoiseSource) -> Self {
        SamplerCtx { noise, callback: None, draws: 0 }
    }

    /// Adds a step callback.
    pub fn with_callback(mut self, callback: &'a mut StepCallback<'a>) -> Self {
        self.callback = Some(callback);
        self
    }

    /// How many noise tensors the sampler has drawn so far.
    pub fn noise_draws(&self) -> usize {
        self.draws
    }

    pub(crate) fn noise(&mut self, like: &Tensor, sigma: f64, sigma_next: f64) -> Result<Tensor> {
        self.draws += 1;
        self.noise.noise(like, sigma, sigma_next)
    }

    pub(crate) fn report(
        &mut self,
        step: usize,
        x: &Tensor,
        denoised: &Tensor,
        sigma: f64,
        sigma_hat: f64,
    ) -> Flow<()> {
        if let Some(cb) = self.callback.as_mut() {
            if cb(&StepInfo { step, x, denoised, sigma, sigma_hat }) == Control::Stop {
                return Err(Halt::Stopped(denoised.shallow_clone()));
            }
        }
        Ok(())
    }
}

/// The result of a sampler run.
#[derive(Debug)]
pub struct Sampled {
    /// The final latent, or the last `denoised` if the callback stopped the run.
    pub latent: Tensor,
    /// Whether the callback stopped the run early.
    pub stopped: bool,
}

/// Why a sampler left its loop early.
pub(crate) enum Halt {
    Stopped(Tensor),
    Failed(Error),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Halt::Failed(e)
    }
}

impl From<tch::TchError> for Halt {
    fn from(e: tch::TchError) -> Self {
        Halt::Failed(e.into())
    }
}

pub(crate) type Flow<T> = std::result::Result<T, Halt>;

pub(crate) fn finish(r: Flow<Tensor>) -> Result<Sampled> {
    match r {
        Ok(latent) => Ok(Sampled { latent, stopped: false }),
        Err(Halt::Stopped(latent)) => Ok(Sampled { latent, stopped: true }),
        Err(Halt::Failed(e)) => Err(e),
    }
}

/// A denoiser in sigma space: `(x, sigma[B]) -> denoised`.
pub type DenoiseFn<'a> = dyn FnMut(&Tensor, &Tensor) -> Tensor + 'a;
/// An eps model on timesteps: `(x, t[B]) -> eps`.
pub type TimestepEpsFn<'a> = dyn FnMut(&Tensor, &Tensor) -> Tensor + 'a;
/// DDIM CFG++'s model: `(x, t[B]) -> (eps_cfg, eps_uncond)`.
pub type CfgPpEpsFn<'a> = dyn FnMut(&Tensor, &Tensor) -> (Tensor, Tensor) + 'a;

/// The model a sampler calls; see [`SamplerKind::model_input`].
pub enum Model<'m, 'a> {
    Denoised(&'m mut DenoiseFn<'a>),
    Eps(&'m mut TimestepEpsFn<'a>),
    EpsCfgPp(&'m mut CfgPpEpsFn<'a>),
}

/// `sigma` as a `[B]` tensor in `x`'s dtype and device (k-diffusion's `sigma * s_in`).
pub(crate) fn sigma_batch(x: &Tensor, sigma: f64) -> Tensor {
    Tensor::full([x.size()[0]], sigma, (x.kind(), x.device()))
}

/// k-diffusion `to_d`: the Karras ODE derivative `(x - denoised) / sigma`.
pub(crate) fn to_d(x: &Tensor, sigma: f64, denoised: &Tensor) -> Tensor {
    (x - denoised) / sigma
}

/// k-diffusion `get_ancestral_step`: `(sigma_down, sigma_up)` for an ancestral step.
pub(crate) fn ancestral_step(sigma_from: f64, sigma_to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
        / (sigma_from * sigma_from))
        .sqrt()
        * eta;
    let sigma_up = sigma_to.min(up);
    let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
    (sigma_down, sigma_up)
}

fn model_mismatch(sampler: SamplerKind) -> Error {
    Error::Sampling(format!("sampler {} needs a {:?} model", sampler.id(), sampler.model_input()))
}

/// Runs `plan` with `model` from the start latent `x` (see [`SamplingPlan::start_latent`]),
/// forwarding the parameters A1111 forwards to that sampler.
pub fn sample(
    plan: &SamplingPlan,
    model: Model<'_, '_>,
    x: Tensor,
    params: &SamplerParams,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    let kind = plan.sampler;
    let eta = params.eta_for(kind);
    let s_noise = params.s_noise_for(kind);
    match (&plan.schedule, model) {
        (Schedule::Sigmas(sigmas), Model::Denoised(m)) => match kind {
            SamplerKind::Euler => euler::euler(m, x, sigmas, params.churn_for(kind), ctx),
            SamplerKind::EulerAncestral => euler::euler_ancestral(m, x, sigmas, eta, s_noise, ctx),
            SamplerKind::Heun => heun::heun(m, x, sigmas, params.churn_for(kind), ctx),
            SamplerKind::Dpm2 => dpm2::dpm_2(m, x, sigmas, params.churn_for(kind), ctx),
            SamplerKind::Dpm2Ancestral => dpm2::dpm_2_ancestral(m, x, sigmas, eta, s_noise, ctx),
            SamplerKind::Lms => lms::lms(m, x, sigmas, lms::DEFAULT_ORDER, ctx),
            SamplerKind::DpmPp2SAncestral => dpmpp::dpmpp_2s_ancestral(m, x, sigmas, eta, s_noise, ctx),
            SamplerKind::DpmPp2M => dpmpp::dpmpp_2m(m, x, sigmas, ctx),
            SamplerKind::DpmPpSde => dpmpp::dpmpp_sde(m, x, sigmas, eta, s_noise, 0.5, ctx),
            SamplerKind::DpmPp2MSde => {
                dpmpp::dpmpp_2m_sde(m, x, sigmas, eta, s_noise, SolverType::Midpoint, ctx)
            }
            SamplerKind::DpmPp2MSdeHeun => {
                dpmpp::dpmpp_2m_sde(m, x, sigmas, eta, s_noise, SolverType::Heun, ctx)
            }
            SamplerKind::DpmPp3MSde => dpmpp::dpmpp_3m_sde(m, x, sigmas, eta, s_noise, ctx),
            SamplerKind::Restart => restart::restart(m, x, sigmas, 1.0, ctx),
            SamplerKind::Lcm => lcm::lcm(m, x, sigmas, ctx),
            _ => Err(Error::Sampling(format!("sampler {} does not take a sigma schedule", kind.id()))),
        },
        (Schedule::DpmSolver { sigma_min, sigma_max, n }, Model::Denoised(m)) => match kind {
            SamplerKind::DpmFast => dpm_solver::dpm_fast(m, x, *sigma_min, *sigma_max, *n, eta, s_noise, ctx),
            SamplerKind::DpmAdaptive => dpm_solver::dpm_adaptive(
                m,
                x,
                *sigma_min,
                *sigma_max,
                &dpm_solver::AdaptiveOptions { eta, ..Default::default() },
                ctx,
            ),
            _ => Err(Error::Sampling(format!("sampler {} is not a DPM-Solver", kind.id()))),
        },
        (Schedule::Timesteps { timesteps, img2img }, model) => {
            let ac = plan.alphas_cumprod.as_slice();
            match (kind, model) {
                (SamplerKind::Ddim, Model::Eps(m)) => timestep::ddim(m, x, timesteps, ac, eta, ctx),
                (SamplerKind::DdimCfgPp, Model::EpsCfgPp(m)) => {
                    timestep::ddim_cfgpp(m, x, timesteps, ac, eta, ctx)
                }
                (SamplerKind::Plms, Model::Eps(m)) => timestep::plms(m, x, timesteps, ac, ctx),
                (SamplerKind::UniPc, Model::Eps(m)) => unipc::unipc(
                    m,
                    x,
                    timesteps.len(),
                    *img2img,
                    timesteps.last().copied(),
                    ac,
                    &params.uni_pc,
                    ctx,
                ),
                _ => Err(model_mismatch(kind)),
            }
        }
        _ => Err(model_mismatch(kind)),
    }
}
