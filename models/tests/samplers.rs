//! Samplers and schedules against k-diffusion / A1111 goldens, plus analytic properties.
//!
//! The goldens (`tests/fixtures/golden/samplers/`, written by `reference/gen_sampler_goldens.py`)
//! run every A1111 sampler on a toy eps model in float64 with a replayed noise stream; the same
//! problem is rebuilt here and the final latents compared at 1e-5 relative (the samplers agree to
//! ~1e-12 in practice). Schedules are compared at 1e-6 (they are bit-identical float32 values).

use std::collections::HashMap;
use std::path::PathBuf;

use models::sampling::brownian::{seed_sequence_state, BrownianTreeNoise};
use models::sampling::denoiser::{CompVisDenoiser, LcmDenoiser};
use models::sampling::dpm_solver::{self, AdaptiveOptions};
use models::sampling::noise::{NoiseList, NoiseSource};
use models::sampling::schedule::{self, DiscreteSchedule};
use models::sampling::special::beta_ppf;
use models::sampling::unipc::{SkipType, Variant};
use models::sampling::{
    self, default_scheduler, dpm2, dpmpp, euler, heun, lcm, lms, restart, sigmas_for, timestep, unipc, Churn,
    Control, DenoiseFn, Model, SamplerCtx, SamplerKind, SamplerParams, SamplingPlan, Schedule,
    ScheduleOptions, SchedulerKind, SolverType, Start, StepInfo, UniPcOptions,
};
use tch::{Device, Kind, Tensor};

const SAMPLER_TOLERANCE: f64 = 1e-5;
const SCHEDULE_TOLERANCE: f64 = 1e-6;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden/samplers")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    let path = golden_dir().join(name);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn int(t: &Tensor) -> i64 {
    t.int64_value(&[0])
}

/// `max |a - b| / max |b|`: the error relative to the reference's scale.
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size(), "shape mismatch");
    let diff = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs().max().double_value(&[]);
    let scale = want.to_kind(Kind::Double).abs().max().double_value(&[]).max(1e-300);
    diff / scale
}

fn rel_err_vec(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch: {got:?} vs {want:?}");
    let scale = want.iter().fold(0.0_f64, |m, v| m.max(v.abs())).max(1e-300);
    got.iter().zip(want).fold(0.0_f64, |m, (a, b)| m.max((a - b).abs())) / scale
}

/// The toy problem of the goldens.
struct Toy {
    w: Tensor,
    c: Tensor,
    w2: Tensor,
    c2: Tensor,
    x_noise: Tensor,
    stream: Tensor,
    alphas_f32: Vec<f32>,
    alphas_f64: Vec<f64>,
    seeds: Vec<u64>,
}

impl Toy {
    fn load() -> Toy {
        let t = load("toy.safetensors");
        let alphas_f64 = vec_f64(&t["alphas_cumprod"]);
        Toy {
            w: t["w"].shallow_clone(),
            c: t["c"].shallow_clone(),
            w2: t["w2"].shallow_clone(),
            c2: t["c2"].shallow_clone(),
            x_noise: t["x_noise"].shallow_clone(),
            stream: t["stream"].shallow_clone(),
            alphas_f32: alphas_f64.iter().map(|a| *a as f32).collect(),
            alphas_f64,
            seeds: vec_f64(&t["seeds"]).iter().map(|s| *s as u64).collect(),
        }
    }

    fn eps_with(x: &Tensor, t: &Tensor, w: &Tensor, c: &Tensor) -> Tensor {
        let t = t.to_kind(Kind::Double).reshape([-1, 1, 1, 1]);
        (w * x + c * (t / 1000.0 - 0.5)).tanh()
    }

    fn eps(&self, x: &Tensor, t: &Tensor) -> Tensor {
        Self::eps_with(x, t, &self.w, &self.c)
    }

    fn noise(&self) -> NoiseList {
        let n = self.stream.size()[0];
        NoiseList::new((0..n).map(|i| self.stream.get(i)).collect())
    }

    fn schedule(&self) -> DiscreteSchedule {
        DiscreteSchedule::from_alphas_cumprod(&self.alphas_f32).unwrap()
    }
}

#[test]
fn sd1_alphas_cumprod_matches_ldm_schedule_exactly() {
    let toy = Toy::load();
    assert_eq!(schedule::sd1_alphas_cumprod(), toy.alphas_f32);
}

fn rust_scheduler(name: &str, n: usize, s: &DiscreteSchedule) -> Vec<f64> {
    let (smin, smax) = (s.sigma_min(), s.sigma_max());
    match name {
        "uniform" => s.get_sigmas(n),
        "karras" => schedule::karras(n, smin, smax, 7.0),
        "exponential" => schedule::exponential(n, smin, smax),
        "polyexponential" => schedule::polyexponential(n, smin, smax, 1.0),
        "sgm_uniform" => schedule::sgm_uniform(s, n, smin, smax),
        "kl_optimal" => schedule::kl_optimal(n, smin, smax),
        "align_your_steps" => schedule::align_your_steps(n, &schedule::AYS_SD15),
        "simple" => schedule::simple(s, n),
        "normal" => schedule::normal(s, n, smin, smax),
        "ddim" => schedule::ddim_uniform(s, n),
        "beta" => schedule::beta(n, smin, smax, 0.6, 0.6),
        other => panic!("unknown scheduler {other}"),
    }
    .unwrap()
}

const SCHEDULER_NAMES: [&str; 11] = [
    "uniform",
    "karras",
    "exponential",
    "polyexponential",
    "sgm_uniform",
    "kl_optimal",
    "align_your_steps",
    "simple",
    "normal",
    "ddim",
    "beta",
];

#[test]
fn schedulers_all_steps_match_a1111() {
    let g = load("schedules.safetensors");
    let s = DiscreteSchedule::sd1();
    let mut worst = 0.0_f64;
    for name in SCHEDULER_NAMES {
        for n in [1, 7, 11, 20] {
            let want = vec_f64(&g[&format!("{name}/{n}")]);
            let got = rust_scheduler(name, n, &s);
            let err = rel_err_vec(&got, &want);
            assert!(err <= SCHEDULE_TOLERANCE, "{name}/{n}: rel err {err:e}\n got {got:?}\nwant {want:?}");
            worst = worst.max(err);
        }
    }
    eprintln!("schedules: worst relative error {worst:e}");
}

#[test]
fn sigmas_for_dpm2_automatic_discards_next_to_last() {
    let g = load("schedules.safetensors");
    let s = DiscreteSchedule::sd1();
    let got =
        sigmas_for(SamplerKind::Dpm2, SchedulerKind::Automatic, 20, &s, &ScheduleOptions::default()).unwrap();
    let want = vec_f64(&g["karras_discard/20"]);
    assert!(rel_err_vec(&got, &want) <= SCHEDULE_TOLERANCE);
    assert_eq!(got.len(), 21);
}

#[test]
fn lcm_schedule_uniform_matches_a1111() {
    let g = load("schedules.safetensors");
    let s = DiscreteSchedule::lcm(&schedule::sd1_alphas_cumprod()).unwrap();
    for n in [4, 20] {
        let want = vec_f64(&g[&format!("lcm_uniform/{n}")]);
        let got = s.get_sigmas(n).unwrap();
        assert!(rel_err_vec(&got, &want) <= SCHEDULE_TOLERANCE, "lcm/{n}: {got:?} vs {want:?}");
    }
}

#[test]
fn lcm_plan_from_model_schedule_uses_lcm_table() {
    let g = load("schedules.safetensors");
    let plan = SamplingPlan::txt2img(
        SamplerKind::Lcm,
        SchedulerKind::Automatic,
        20,
        &DiscreteSchedule::sd1(),
        &ScheduleOptions::default(),
    )
    .unwrap();
    let want = vec_f64(&g["lcm_uniform/20"]);
    match &plan.schedule {
        Schedule::Sigmas(got) => assert!(rel_err_vec(got, &want) <= SCHEDULE_TOLERANCE),
        other => panic!("unexpected schedule {other:?}"),
    }
}

#[test]
fn timestep_sampler_timesteps_match_a1111() {
    let g = load("schedules.safetensors");
    for steps in [7, 20, 33] {
        let want: Vec<i64> = Vec::<i64>::try_from(&g[&format!("timesteps/{steps}")]).unwrap();
        assert_eq!(schedule::timestep_sampler_timesteps(steps).unwrap(), want, "steps {steps}");
    }
}

#[test]
fn sigma_to_t_and_back_match_k_diffusion() {
    let g = load("schedules.safetensors");
    let s = DiscreteSchedule::sd1();
    let t = s.sigma_to_t(&g["sigma_to_t/sigma"]);
    assert!(rel_err(&t, &g["sigma_to_t/t"]) <= 1e-12, "sigma_to_t");
    let sigma = s.t_to_sigma(&g["t_to_sigma/t"]);
    assert!(rel_err(&sigma, &g["t_to_sigma/sigma"]) <= 1e-7, "t_to_sigma");
}

#[test]
fn compvis_and_lcm_denoisers_match_reference() {
    let toy = Toy::load();
    let g = load("schedules.safetensors");
    let mut eps = |x: &Tensor, t: &Tensor| toy.eps(x, t);
    let d = CompVisDenoiser::new(toy.schedule()).denoise(&mut eps, &g["denoiser/x"], &g["denoiser/sigma"]);
    let err = rel_err(&d, &g["denoiser/denoised"]);
    assert!(err <= 1e-12, "CompVis denoiser rel err {err:e}");
    let lcm = LcmDenoiser::new(DiscreteSchedule::lcm(&toy.alphas_f32).unwrap());
    let d = lcm.denoise(&mut eps, &g["denoiser/x"], &g["denoiser/sigma"]);
    let err = rel_err(&d, &g["denoiser_lcm/denoised"]);
    assert!(err <= 1e-12, "LCM denoiser rel err {err:e}");
}

#[test]
fn lms_coefficients_match_scipy_quad() {
    let g = load("schedules.safetensors");
    let sigmas = vec_f64(&g["lms/sigmas"]);
    let want = vec_f64(&g["lms/coeffs"]);
    for i in 0..sigmas.len() - 1 {
        let order = (i + 1).min(4);
        for j in 0..order {
            let got = lms::linear_multistep_coeff(order, &sigmas, i, j).unwrap();
            let w = want[i * 4 + j];
            assert!((got - w).abs() <= 1e-10 * w.abs().max(1e-3), "step {i} coeff {j}: {got} vs {w}");
        }
    }
}

#[test]
fn beta_ppf_matches_scipy() {
    let g = load("schedules.safetensors");
    for (p, q) in vec_f64(&g["beta_ppf/p"]).into_iter().zip(vec_f64(&g["beta_ppf/q"])) {
        assert!((beta_ppf(p, 0.6, 0.6) - q).abs() <= 1e-12, "p={p}");
    }
}

/// Runs one golden case and returns `(final, last denoised, callbacks, noise draws)`.
struct Run {
    x: Tensor,
    denoised_last: Tensor,
    calls: i64,
    draws: i64,
}

fn compare(key: &str, got: &Run, g: &HashMap<String, Tensor>) -> f64 {
    let want_x = &g[&format!("{key}/x")];
    let err_x = rel_err(&got.x, want_x);
    let err_d = rel_err(&got.denoised_last, &g[&format!("{key}/denoised_last")]);
    assert_eq!(got.calls, int(&g[&format!("{key}/calls")]), "{key}: callback count");
    assert_eq!(got.draws, int(&g[&format!("{key}/draws")]), "{key}: noise draws");
    assert!(err_x <= SAMPLER_TOLERANCE, "{key}: final latent rel err {err_x:e}");
    assert!(err_d <= SAMPLER_TOLERANCE, "{key}: last denoised rel err {err_d:e}");
    err_x.max(err_d)
}

type SigmaSampler =
    dyn Fn(&mut DenoiseFn<'_>, Tensor, &[f64], &mut SamplerCtx<'_>) -> models::Result<sampling::Sampled>;

fn run_sigma(
    toy: &Toy,
    sigmas: &[f64],
    lcm_model: bool,
    noise: &mut dyn NoiseSource,
    f: &SigmaSampler,
) -> Run {
    let compvis = CompVisDenoiser::new(toy.schedule());
    let lcm = LcmDenoiser::new(DiscreteSchedule::lcm(&toy.alphas_f32).unwrap());
    let mut eps = |x: &Tensor, t: &Tensor| toy.eps(x, t);
    let mut model = |x: &Tensor, sigma: &Tensor| {
        if lcm_model {
            lcm.denoise(&mut eps, x, sigma)
        } else {
            compvis.denoise(&mut eps, x, sigma)
        }
    };
    let x = &toy.x_noise * sigmas[0];
    let mut calls = 0;
    let mut last = Tensor::zeros([1], (Kind::Double, Device::Cpu));
    let mut cb = |info: &StepInfo<'_>| {
        calls += 1;
        last = info.denoised.copy();
        Control::Continue
    };
    let mut ctx = SamplerCtx::new(noise).with_callback(&mut cb);
    let out = f(&mut model, x, sigmas, &mut ctx).unwrap();
    let draws = ctx.noise_draws() as i64;
    assert!(!out.stopped);
    Run { x: out.latent, denoised_last: last, calls, draws }
}

fn sigma_sampler(name: &str) -> Box<SigmaSampler> {
    let churn = Churn::default();
    match name {
        "euler" => Box::new(move |m, x, s, c| euler::euler(m, x, s, churn, c)),
        "euler_ancestral" => Box::new(|m, x, s, c| euler::euler_ancestral(m, x, s, 1.0, 1.0, c)),
        "heun" => Box::new(move |m, x, s, c| heun::heun(m, x, s, churn, c)),
        "dpm_2" => Box::new(move |m, x, s, c| dpm2::dpm_2(m, x, s, churn, c)),
        "dpm_2_ancestral" => Box::new(|m, x, s, c| dpm2::dpm_2_ancestral(m, x, s, 1.0, 1.0, c)),
        "lms" => Box::new(|m, x, s, c| lms::lms(m, x, s, lms::DEFAULT_ORDER, c)),
        "dpmpp_2s_ancestral" => Box::new(|m, x, s, c| dpmpp::dpmpp_2s_ancestral(m, x, s, 1.0, 1.0, c)),
        "dpmpp_2m" => Box::new(|m, x, s, c| dpmpp::dpmpp_2m(m, x, s, c)),
        "dpmpp_sde" => Box::new(|m, x, s, c| dpmpp::dpmpp_sde(m, x, s, 1.0, 1.0, 0.5, c)),
        "dpmpp_2m_sde" => {
            Box::new(|m, x, s, c| dpmpp::dpmpp_2m_sde(m, x, s, 1.0, 1.0, SolverType::Midpoint, c))
        }
        "dpmpp_2m_sde_heun" => {
            Box::new(|m, x, s, c| dpmpp::dpmpp_2m_sde(m, x, s, 1.0, 1.0, SolverType::Heun, c))
        }
        "dpmpp_3m_sde" => Box::new(|m, x, s, c| dpmpp::dpmpp_3m_sde(m, x, s, 1.0, 1.0, c)),
        "restart" => Box::new(|m, x, s, c| restart::restart(m, x, s, 1.0, c)),
        "lcm" => Box::new(|m, x, s, c| lcm::lcm(m, x, s, c)),
        other => panic!("unknown sampler {other}"),
    }
}

const SIGMA_SAMPLERS: [&str; 14] = [
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpmpp_2s_ancestral",
    "dpmpp_2m",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_heun",
    "dpmpp_3m_sde",
    "restart",
    "lcm",
];

fn kind_of(name: &str) -> SamplerKind {
    match name {
        "dpm_2" => SamplerKind::Dpm2,
        "dpm_2_ancestral" => SamplerKind::Dpm2Ancestral,
        "dpmpp_2s_ancestral" => SamplerKind::DpmPp2SAncestral,
        other => SamplerKind::from_id(other).unwrap_or_else(|| panic!("no kind for {other}")),
    }
}

#[test]
fn sigma_samplers_automatic_and_karras_match_k_diffusion() {
    let toy = Toy::load();
    let g = load("samplers.safetensors");
    let s = toy.schedule();
    let lcm_s = DiscreteSchedule::lcm(&toy.alphas_f32).unwrap();
    for name in SIGMA_SAMPLERS {
        for sched in ["automatic", "karras"] {
            let key = format!("{name}/{sched}");
            // The schedule the Rust side builds must be the one the reference ran.
            let sigmas = if name == "lcm" {
                match sched {
                    "automatic" => lcm_s.get_sigmas(10).unwrap(),
                    _ => schedule::karras(10, lcm_s.sigma_min(), lcm_s.sigma_max(), 7.0).unwrap(),
                }
            } else {
                let scheduler = SchedulerKind::from_id(sched).unwrap();
                sigmas_for(kind_of(name), scheduler, 10, &s, &ScheduleOptions::default()).unwrap()
            };
            let want_sigmas = vec_f64(&g[&format!("{key}/sigmas")]);
            assert!(rel_err_vec(&sigmas, &want_sigmas) <= SCHEDULE_TOLERANCE, "{key}: sigmas");
            let mut noise = toy.noise();
            let run = run_sigma(&toy, &want_sigmas, name == "lcm", &mut noise, &*sigma_sampler(name));
            let err = compare(&key, &run, &g);
            eprintln!("{key:<32} rel err {err:.2e}");
        }
    }
}

#[test]
fn churn_and_restart_variants_match_reference() {
    let toy = Toy::load();
    let g = load("samplers.safetensors");
    let churn = Churn { s_churn: 2.0, s_tmin: 0.5, s_tmax: 8.0, s_noise: 1.003 };
    let cases: Vec<(&str, Box<SigmaSampler>)> = vec![
        ("euler/churn", Box::new(move |m, x, s, c| euler::euler(m, x, s, churn, c))),
        ("heun/churn", Box::new(move |m, x, s, c| heun::heun(m, x, s, churn, c))),
        ("dpm_2/churn", Box::new(move |m, x, s, c| dpm2::dpm_2(m, x, s, churn, c))),
        ("restart/karras24", sigma_sampler("restart")),
        ("restart/karras40", sigma_sampler("restart")),
    ];
    for (key, f) in cases {
        let sigmas = vec_f64(&g[&format!("{key}/sigmas")]);
        let mut noise = toy.noise();
        let run = run_sigma(&toy, &sigmas, false, &mut noise, &*f);
        let err = compare(key, &run, &g);
        eprintln!("{key:<32} rel err {err:.2e}");
    }
}

#[test]
fn dpm_fast_and_adaptive_match_k_diffusion() {
    let toy = Toy::load();
    let g = load("samplers.safetensors");
    let s = toy.schedule();
    let (smin, smax) = (s.sigma_min(), s.sigma_max());
    for name in ["dpm_fast", "dpm_adaptive"] {
        for sched in ["automatic", "karras"] {
            let key = format!("{name}/{sched}");
            let sigmas = vec_f64(&g[&format!("{key}/sigmas")]);
            let f: Box<SigmaSampler> = if name == "dpm_fast" {
                Box::new(move |m, x, _s, c| dpm_solver::dpm_fast(m, x, smin, smax, 10, 1.0, 1.0, c))
            } else {
                Box::new(move |m, x, _s, c| {
                    dpm_solver::dpm_adaptive(
                        m,
                        x,
                        smin,
                        smax,
                        &AdaptiveOptions { eta: 1.0, ..Default::default() },
                        c,
                    )
                })
            };
            let mut noise = toy.noise();
            let run = run_sigma(&toy, &sigmas, false, &mut noise, &*f);
            let err = compare(&key, &run, &g);
            eprintln!("{key:<32} rel err {err:.2e}");
        }
    }
}

fn run_timestep(toy: &Toy, key: &str) -> Run {
    let mut noise = toy.noise();
    let mut calls = 0;
    let mut last = Tensor::zeros([1], (Kind::Double, Device::Cpu));
    let mut cb = |info: &StepInfo<'_>| {
        calls += 1;
        last = info.denoised.copy();
        Control::Continue
    };
    let mut ctx = SamplerCtx::new(&mut noise).with_callback(&mut cb);
    let ac = &toy.alphas_f64;
    let x = toy.x_noise.copy();
    let mut eps = |x: &Tensor, t: &Tensor| toy.eps(x, t);
    let ts10 = schedule::timestep_sampler_timesteps(10).unwrap();
    let unipc_with = |o: UniPcOptions| o;
    let out = match key {
        "ddim/default" => timestep::ddim(&mut eps, x, &ts10, ac, 0.0, &mut ctx),
        "ddim/eta" => timestep::ddim(&mut eps, x, &ts10, ac, 0.5, &mut ctx),
        "ddim/steps7" => {
            timestep::ddim(&mut eps, x, &schedule::timestep_sampler_timesteps(7).unwrap(), ac, 0.0, &mut ctx)
        }
        "ddim_cfgpp/default" => {
            let scale = 7.0 * timestep::CFGPP_SCALE_MULTIPLIER;
            let mut model = |x: &Tensor, t: &Tensor| {
                let e_c = toy.eps(x, t);
                let e_u = Toy::eps_with(x, t, &toy.w2, &toy.c2);
                (&e_u + (e_c - &e_u) * scale, e_u)
            };
            timestep::ddim_cfgpp(&mut model, x, &ts10, ac, 0.0, &mut ctx)
        }
        "plms/default" => timestep::plms(&mut eps, x, &ts10, ac, &mut ctx),
        _ => {
            let base = UniPcOptions::default();
            let (opts, ts, img2img) = match key {
                "unipc/default" => (base, ts10.clone(), false),
                "unipc/bh2" => {
                    (unipc_with(UniPcOptions { variant: Variant::Bh2, ..base }), ts10.clone(), false)
                }
                "unipc/vary_coeff" => {
                    (UniPcOptions { variant: Variant::VaryCoeff, ..base }, ts10.clone(), false)
                }
                "unipc/quadratic" => {
                    (UniPcOptions { skip_type: SkipType::TimeQuadratic, ..base }, ts10.clone(), false)
                }
                "unipc/logsnr" => (UniPcOptions { skip_type: SkipType::LogSnr, ..base }, ts10.clone(), false),
                "unipc/order2" => (UniPcOptions { order: 2, ..base }, ts10.clone(), false),
                "unipc/img2img" => (base, ts10[..6].to_vec(), true),
                other => panic!("unknown case {other}"),
            };
            unipc::unipc(&mut eps, x, ts.len(), img2img, ts.last().copied(), ac, &opts, &mut ctx)
        }
    }
    .unwrap();
    let draws = ctx.noise_draws() as i64;
    Run { x: out.latent, denoised_last: last, calls, draws }
}

#[test]
fn timestep_samplers_match_a1111_formulas() {
    let toy = Toy::load();
    let g = load("samplers.safetensors");
    for key in [
        "ddim/default",
        "ddim/eta",
        "ddim/steps7",
        "ddim_cfgpp/default",
        "plms/default",
        "unipc/default",
        "unipc/bh2",
        "unipc/vary_coeff",
        "unipc/quadratic",
        "unipc/logsnr",
        "unipc/order2",
        "unipc/img2img",
    ] {
        let run = run_timestep(&toy, key);
        let err = compare(key, &run, &g);
        eprintln!("{key:<32} rel err {err:.2e}");
    }
}

#[test]
fn seed_sequence_matches_numpy() {
    let g = load("samplers.safetensors");
    let want: Vec<u32> =
        Vec::<i64>::try_from(&g["seedseq/root"]).unwrap().into_iter().map(|v| v as u32).collect();
    assert_eq!(seed_sequence_state(4_294_967_294, &[], 24, 3), want);
    let want: Vec<u32> =
        Vec::<i64>::try_from(&g["seedseq/node"]).unwrap().into_iter().map(|v| v as u32).collect();
    assert_eq!(seed_sequence_state(4_294_967_294, &[5, 3], 24, 4), want);
}

#[test]
fn brownian_tree_noise_matches_torchsde() {
    let toy = Toy::load();
    let g = load("samplers.safetensors");
    let sigmas = vec_f64(&g["brownian/sigmas"]);
    let x = &toy.x_noise * sigmas[0];
    let smin = sigmas.iter().copied().filter(|s| *s > 0.0).fold(f64::INFINITY, f64::min);
    let smax = sigmas.iter().copied().fold(0.0, f64::max);
    let mut tree = BrownianTreeNoise::with_torch_generator(&x, smin, smax, &toy.seeds).unwrap();
    let queries = vec_f64(&g["brownian/queries"]);
    let want = &g["brownian/noise"];
    for (q, pair) in queries.chunks(2).enumerate() {
        let got = tree.noise(&x, pair[0], pair[1]).unwrap();
        let err = rel_err(&got, &want.get(q as i64));
        assert!(err <= 1e-12, "query {q} ({}, {}): rel err {err:e}", pair[0], pair[1]);
    }
}

#[test]
fn brownian_tree_noise_query_order_is_irrelevant() {
    let toy = Toy::load();
    let x = toy.x_noise.copy();
    let mut a = BrownianTreeNoise::with_torch_generator(&x, 0.03, 14.6, &toy.seeds).unwrap();
    let mut b = BrownianTreeNoise::with_torch_generator(&x, 0.03, 14.6, &toy.seeds).unwrap();
    let first = a.noise(&x, 5.0, 2.0).unwrap();
    let _ = b.noise(&x, 1.0, 0.5).unwrap();
    let _ = b.noise(&x, 14.0, 9.0).unwrap();
    let second = b.noise(&x, 5.0, 2.0).unwrap();
    assert!(rel_err(&second, &first) <= 1e-14);
}

#[test]
fn brownian_private_generator_float32_matches_default_generator() {
    let toy = Toy::load();
    let x = toy.x_noise.to_kind(Kind::Float);
    let mut private = BrownianTreeNoise::with_private_generator(&x, 0.03, 14.6, &toy.seeds).unwrap();
    let mut global = BrownianTreeNoise::with_torch_generator(&x, 0.03, 14.6, &toy.seeds).unwrap();
    for (sigma, next) in [(14.6, 10.0), (10.0, 3.0), (0.5, 0.03)] {
        let a = private.noise(&x, sigma, next).unwrap();
        let b = global.noise(&x, sigma, next).unwrap();
        assert_eq!(a.kind(), Kind::Float);
        assert!(a.equal(&b), "({sigma}, {next})");
    }
}

#[test]
fn sde_samplers_with_brownian_noise_match_k_diffusion() {
    let toy = Toy::load();
    let g = load("samplers.safetensors");
    for name in ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"] {
        let key = format!("{name}/brownian");
        let sigmas = vec_f64(&g[&format!("{key}/sigmas")]);
        let x = &toy.x_noise * sigmas[0];
        let smin = sigmas.iter().copied().filter(|s| *s > 0.0).fold(f64::INFINITY, f64::min);
        let smax = sigmas.iter().copied().fold(0.0, f64::max);
        let mut tree = BrownianTreeNoise::with_torch_generator(&x, smin, smax, &toy.seeds).unwrap();
        let mut run = run_sigma(&toy, &sigmas, false, &mut tree, &*sigma_sampler(name));
        // The reference counts draws of its replayed stream, which the tree does not touch.
        run.draws = 0;
        let err = compare(&key, &run, &g);
        eprintln!("{key:<32} rel err {err:.2e}");
    }
}

#[test]
fn step_callback_stop_returns_that_steps_denoised() {
    let toy = Toy::load();
    let g = load("samplers.safetensors");
    let sigmas = vec_f64(&g["euler/karras/sigmas"]);
    let compvis = CompVisDenoiser::new(toy.schedule());
    let mut eps = |x: &Tensor, t: &Tensor| toy.eps(x, t);
    let mut evals = 0;
    let mut model = |x: &Tensor, sigma: &Tensor| {
        evals += 1;
        compvis.denoise(&mut eps, x, sigma)
    };
    let mut noise = toy.noise();
    let mut cb = |info: &StepInfo<'_>| if info.step == 3 { Control::Stop } else { Control::Continue };
    let mut ctx = SamplerCtx::new(&mut noise).with_callback(&mut cb);
    let out =
        euler::euler(&mut model, &toy.x_noise * sigmas[0], &sigmas, Churn::default(), &mut ctx).unwrap();
    assert!(out.stopped);
    assert_eq!(evals, 4);
    assert!(rel_err(&out.latent, &g["euler/karras/denoised_all"].get(3)) <= 1e-12);
}

// --- analytic properties -----------------------------------------------------------------------

#[test]
fn schedules_strictly_decrease_and_end_at_zero() {
    let s = DiscreteSchedule::sd1();
    for name in SCHEDULER_NAMES {
        for n in [1, 2, 3, 10, 20, 37, 150] {
            let v = rust_scheduler(name, n, &s);
            for w in v.windows(2) {
                assert!(w[0] > w[1], "{name}/{n} not strictly decreasing: {v:?}");
            }
            match name {
                // A1111 1.10's KL Optimal returns n + 1 angles with no appended 0: it ends at
                // sigma_min.
                "kl_optimal" => {
                    assert_eq!(v.len(), n + 1);
                    assert!((v[n] - s.sigma_min()).abs() < 1e-6);
                }
                // A1111's DDIM scheduler takes every (1000 // n)-th level, so its length is
                // ceil(999 / (1000 // n)) + 1, not always n + 1.
                "ddim" => {
                    let stride = 1000 / n;
                    assert_eq!(v.len(), 999_usize.div_ceil(stride) + 1, "{name}/{n}");
                    assert_eq!(*v.last().unwrap(), 0.0);
                }
                _ => {
                    assert_eq!(v.len(), n + 1, "{name}/{n}");
                    assert_eq!(*v.last().unwrap(), 0.0, "{name}/{n}");
                }
            }
        }
    }
}

/// A perfect denoiser: always predicts the same clean latent.
fn fixed_x0() -> Tensor {
    Tensor::linspace(-1.5, 2.0, 2 * 4 * 8 * 8, (Kind::Double, Device::Cpu)).reshape([2, 4, 8, 8])
}

#[test]
fn perfect_denoiser_every_sigma_sampler_ends_at_x0() {
    let toy = Toy::load();
    let x0 = fixed_x0();
    let s = toy.schedule();
    for kind in SamplerKind::ALL {
        if kind.is_timestep_sampler() || matches!(kind, SamplerKind::DpmFast | SamplerKind::DpmAdaptive) {
            continue;
        }
        for scheduler in [SchedulerKind::Automatic, SchedulerKind::Karras, SchedulerKind::Exponential] {
            let plan = SamplingPlan::txt2img(kind, scheduler, 12, &s, &ScheduleOptions::default()).unwrap();
            let mut model = |_x: &Tensor, _s: &Tensor| x0.copy();
            let mut noise = toy.noise();
            let mut ctx = SamplerCtx::new(&mut noise);
            // eta 0 makes the ancestral and SDE samplers deterministic as well.
            let params = SamplerParams { eta: Some(0.0), ..Default::default() };
            let x = plan.start_latent(&toy.x_noise, None, false).unwrap();
            let out = sampling::sample(&plan, Model::Denoised(&mut model), x, &params, &mut ctx).unwrap();
            let err = rel_err(&out.latent, &x0);
            assert!(err <= 1e-10, "{} / {}: rel err {err:e}", kind.id(), scheduler.id());
        }
    }
}

#[test]
fn perfect_denoiser_ancestral_samplers_still_end_at_x0() {
    // The last step goes to sigma 0 without noise, so even with eta = 1 the result is x0.
    let toy = Toy::load();
    let x0 = fixed_x0();
    let s = toy.schedule();
    let sigmas = schedule::karras(10, s.sigma_min(), s.sigma_max(), 7.0).unwrap();
    for name in
        ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "lcm"]
    {
        let mut model = |_x: &Tensor, _s: &Tensor| x0.copy();
        let mut noise = toy.noise();
        let mut ctx = SamplerCtx::new(&mut noise);
        let out = sigma_sampler(name)(&mut model, &toy.x_noise * sigmas[0], &sigmas, &mut ctx).unwrap();
        assert!(rel_err(&out.latent, &x0) <= 1e-10, "{name}");
    }
}

#[test]
fn perfect_denoiser_dpm_solver_follows_exact_ode_solution() {
    // With D = x0 the probability-flow ODE is solved exactly: (x - x0) / sigma is constant.
    let toy = Toy::load();
    let x0 = fixed_x0();
    let (smin, smax) = (0.0291675, 14.614642);
    let x = &toy.x_noise * smax + &x0;
    let expected = &toy.x_noise * ((smin as f32) as f64) + &x0;
    for adaptive in [false, true] {
        let mut model = |_x: &Tensor, _s: &Tensor| x0.copy();
        let mut noise = toy.noise();
        let mut ctx = SamplerCtx::new(&mut noise);
        let out = if adaptive {
            dpm_solver::dpm_adaptive(&mut model, x.copy(), smin, smax, &AdaptiveOptions::default(), &mut ctx)
        } else {
            dpm_solver::dpm_fast(&mut model, x.copy(), smin, smax, 12, 0.0, 1.0, &mut ctx)
        }
        .unwrap();
        assert!(rel_err(&out.latent, &expected) <= 1e-6, "adaptive={adaptive}");
    }
}

#[test]
fn perfect_eps_model_timestep_samplers_keep_noise_direction() {
    // An eps model consistent with a fixed x0 keeps (x - sqrt(a) x0) / sqrt(1 - a) constant, so
    // DDIM and PLMS end at sqrt(a_1) x0 + sqrt(1 - a_1) e0, and UniPC at alpha(t0) x0 + sigma(t0) e0.
    let toy = Toy::load();
    let x0 = fixed_x0();
    let ac = toy.alphas_f64.clone();
    let ts = schedule::timestep_sampler_timesteps(10).unwrap();
    let a_first = ac[*ts.last().unwrap() as usize];
    let x_start = &x0 * a_first.sqrt() + &toy.x_noise * (1.0 - a_first).sqrt();
    let mut eps = |x: &Tensor, t: &Tensor| {
        let a = ac[t.double_value(&[0]).round() as usize];
        (x - &x0 * a.sqrt()) / (1.0 - a).sqrt()
    };
    let a_end = ac[ts[0] as usize];
    let want = &x0 * a_end.sqrt() + &toy.x_noise * (1.0 - a_end).sqrt();
    for which in ["ddim", "plms"] {
        let mut noise = toy.noise();
        let mut ctx = SamplerCtx::new(&mut noise);
        let out = if which == "ddim" {
            timestep::ddim(&mut eps, x_start.copy(), &ts, &ac, 0.0, &mut ctx)
        } else {
            timestep::plms(&mut eps, x_start.copy(), &ts, &ac, &mut ctx)
        }
        .unwrap();
        assert!(rel_err(&out.latent, &want) <= 1e-10, "{which}");
    }
}

#[test]
fn ancestral_samplers_same_noise_repeat_exactly() {
    let toy = Toy::load();
    let s = toy.schedule();
    let sigmas = schedule::karras(10, s.sigma_min(), s.sigma_max(), 7.0).unwrap();
    for name in ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde"] {
        let run = || {
            let mut noise = toy.noise();
            run_sigma(&toy, &sigmas, false, &mut noise, &*sigma_sampler(name)).x
        };
        let (a, b) = (run(), run());
        assert!(a.equal(&b), "{name} differs between identical runs");
    }
}

// --- A1111 wiring ------------------------------------------------------------------------------

#[test]
fn default_scheduler_matches_a1111_options() {
    use SchedulerKind::{Exponential, Karras};
    let expected = [
        (SamplerKind::DpmPp2M, Some(Karras)),
        (SamplerKind::DpmPpSde, Some(Karras)),
        (SamplerKind::DpmPp2MSde, Some(Exponential)),
        (SamplerKind::DpmPp2MSdeHeun, Some(Exponential)),
        (SamplerKind::DpmPp2SAncestral, Some(Karras)),
        (SamplerKind::DpmPp3MSde, Some(Exponential)),
        (SamplerKind::EulerAncestral, None),
        (SamplerKind::Euler, None),
        (SamplerKind::Lms, None),
        (SamplerKind::Heun, None),
        (SamplerKind::Dpm2, Some(Karras)),
        (SamplerKind::Dpm2Ancestral, Some(Karras)),
        (SamplerKind::DpmFast, None),
        (SamplerKind::DpmAdaptive, None),
        (SamplerKind::Restart, Some(Karras)),
        (SamplerKind::Ddim, None),
        (SamplerKind::DdimCfgPp, None),
        (SamplerKind::Plms, None),
        (SamplerKind::UniPc, None),
        (SamplerKind::Lcm, None),
    ];
    assert_eq!(expected.map(|(k, _)| k), SamplerKind::ALL);
    for (kind, sched) in expected {
        assert_eq!(default_scheduler(kind), sched, "{}", kind.id());
    }
    let discard: Vec<_> =
        SamplerKind::ALL.into_iter().filter(|k| k.options().discard_next_to_last_sigma).collect();
    assert_eq!(discard, vec![SamplerKind::DpmPp3MSde, SamplerKind::Dpm2, SamplerKind::Dpm2Ancestral]);
    let brownian: Vec<_> = SamplerKind::ALL.into_iter().filter(|k| k.options().brownian_noise).collect();
    assert_eq!(
        brownian,
        vec![
            SamplerKind::DpmPpSde,
            SamplerKind::DpmPp2MSde,
            SamplerKind::DpmPp2MSdeHeun,
            SamplerKind::DpmPp3MSde
        ]
    );
}

#[test]
fn sampler_and_scheduler_ids_round_trip() {
    for k in SamplerKind::ALL {
        assert_eq!(SamplerKind::from_id(k.id()), Some(k));
    }
    for k in SchedulerKind::ALL {
        assert_eq!(SchedulerKind::from_id(k.id()), Some(k));
    }
}

#[test]
fn img2img_plan_truncates_schedule_like_a1111() {
    let s = DiscreteSchedule::sd1();
    let opts = ScheduleOptions::default();
    let full = sigmas_for(SamplerKind::Euler, SchedulerKind::Karras, 20, &s, &opts).unwrap();
    let plan =
        SamplingPlan::img2img(SamplerKind::Euler, SchedulerKind::Karras, 20, 0.5, false, &s, &opts).unwrap();
    // t_enc = int(0.5 * 20) = 10: sigma_sched = sigmas[20 - 10 - 1:]
    assert_eq!(plan.schedule, Schedule::Sigmas(full[9..].to_vec()));
    assert_eq!(plan.start, Start::AddNoise { sigma: full[9] });

    let plan = SamplingPlan::img2img(SamplerKind::Ddim, SchedulerKind::Automatic, 20, 0.5, false, &s, &opts)
        .unwrap();
    let ts = schedule::timestep_sampler_timesteps(20).unwrap();
    assert_eq!(plan.schedule, Schedule::Timesteps { timesteps: ts[..10].to_vec(), img2img: true });
    assert_eq!(plan.start, Start::Diffuse { alpha_cumprod: s.alphas_cumprod()[ts[10] as usize] });

    let plan =
        SamplingPlan::img2img(SamplerKind::DpmFast, SchedulerKind::Automatic, 20, 0.5, false, &s, &opts)
            .unwrap();
    let full = s.get_sigmas(20).unwrap();
    assert_eq!(plan.schedule, Schedule::DpmSolver { sigma_min: full[19], sigma_max: full[9], n: 11 });
}

#[test]
fn txt2img_plan_dpm_fast_uses_model_sigma_range() {
    let s = DiscreteSchedule::sd1();
    let plan = SamplingPlan::txt2img(
        SamplerKind::DpmFast,
        SchedulerKind::Karras,
        15,
        &s,
        &ScheduleOptions::default(),
    )
    .unwrap();
    assert_eq!(
        plan.schedule,
        Schedule::DpmSolver { sigma_min: s.sigma_min(), sigma_max: s.sigma_max(), n: 15 }
    );
    assert_eq!(plan.scheduler, Some(SchedulerKind::Karras));
}

#[test]
fn sample_with_wrong_model_kind_is_an_error() {
    let s = DiscreteSchedule::sd1();
    let plan = SamplingPlan::txt2img(
        SamplerKind::Ddim,
        SchedulerKind::Automatic,
        5,
        &s,
        &ScheduleOptions::default(),
    )
    .unwrap();
    let mut model = |x: &Tensor, _s: &Tensor| x.copy();
    let mut noise = models::sampling::noise::GlobalRandn;
    let mut ctx = SamplerCtx::new(&mut noise);
    let x = Tensor::zeros([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let r = sampling::sample(&plan, Model::Denoised(&mut model), x, &SamplerParams::default(), &mut ctx);
    assert!(r.is_err());
}

#[test]
fn a1111_parameter_forwarding_follows_sampler_extra_params() {
    let p = SamplerParams { eta: None, s_noise: 0.9, s_churn: 1.0, ..Default::default() };
    assert_eq!(p.eta_for(SamplerKind::EulerAncestral), 1.0);
    assert_eq!(p.eta_for(SamplerKind::Ddim), 0.0);
    // A1111 does not forward s_noise to Euler a (its sampler_extra_params has no entry for it).
    assert_eq!(p.s_noise_for(SamplerKind::EulerAncestral), 1.0);
    assert_eq!(p.s_noise_for(SamplerKind::DpmPp2SAncestral), 0.9);
    assert_eq!(p.churn_for(SamplerKind::Euler).s_churn, 1.0);
    assert_eq!(p.churn_for(SamplerKind::DpmPp2M), Churn::default());
}
