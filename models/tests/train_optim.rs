//! Optimizers, LR schedules and loss weighting against the goldens written by
//! `reference/gen_training_goldens.py` (dadaptation 3.2, prodigyopt 1.1.2, torch 2.11 AdamW,
//! diffusers' schedule functions and DDPMScheduler, kohya's loss formulas).

use std::path::PathBuf;

use models::train::loss::{self, LossWeighting, NoiseSchedule};
use models::train::optim::{
    AdamWConfig, DAdaptAdamConfig, Optimizer, OptimizerConfig, ParamGroup, ProdigyConfig,
};
use models::train::schedule::{LrSchedule, LrScheduleKind};
use models::weights::safetensors_file::SafetensorsFile;
use models::weights::TensorSource;
use tch::{Kind, Tensor};

fn golden(name: &str) -> SafetensorsFile {
    let path =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/golden/training")).join(name);
    SafetensorsFile::open(&path).unwrap_or_else(|e| panic!("golden {}: {e}", path.display()))
}

fn read(file: &SafetensorsFile, name: &str) -> Tensor {
    file.read(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn vec64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// Largest |a − b| / max(|b|, floor) over the elements.
fn max_rel(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    let (a, b) = (vec64(a), vec64(b));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / y.abs().max(floor)).fold(0.0, f64::max)
}

/// The toy loss of the golden script: mean((tanh(x w1ᵀ + b1) w2ᵀ + x w3ᵀ − y)²).
fn toy_loss(x: &Tensor, y: &Tensor, p: &[Tensor]) -> Tensor {
    let out = (x.matmul(&p[0].tr()) + &p[1]).tanh().matmul(&p[2].tr()) + x.matmul(&p[3].tr());
    (out - y).square().mean(Kind::Double)
}

/// Runs `config` with `schedule` for the golden's 20 steps and compares every step.
fn check_run(run: &str, config: OptimizerConfig, schedule: LrSchedule) {
    let g = golden("optim.safetensors");
    let (x, y) = (read(&g, "toy_x"), read(&g, "toy_y"));
    let params: Vec<Tensor> =
        (0..4).map(|i| read(&g, &format!("toy_p{i}")).set_requires_grad(true)).collect();
    let mut opt = Optimizer::new(
        config,
        vec![ParamGroup { params: params.iter().map(|p| p.shallow_clone()).collect(), lr: schedule.base_lr }],
    );
    let (want_params, want_loss, want_d, want_dlr, want_lr) = (
        read(&g, &format!("{run}.params")),
        vec64(&read(&g, &format!("{run}.loss"))),
        vec64(&read(&g, &format!("{run}.d"))),
        vec64(&read(&g, &format!("{run}.dlr"))),
        vec64(&read(&g, &format!("{run}.lr"))),
    );
    let mut worst = 0f64;
    for step in 0..20u64 {
        opt.zero_grad();
        let loss = toy_loss(&x, &y, &params);
        loss.backward();
        let loss = loss.double_value(&[]);
        opt.step(schedule.factor(step)).unwrap();
        let lr = schedule.base_lr * schedule.factor(step + 1);
        let flat = Tensor::cat(&params.iter().map(|p| p.detach().flatten(0, -1)).collect::<Vec<_>>(), 0);
        let s = step as usize;
        let errs = [
            (loss - want_loss[s]).abs() / want_loss[s].abs(),
            max_rel(&flat, &want_params.get(step as i64), 1e-3),
            (opt.d() - want_d[s]).abs() / want_d[s].abs(),
            (opt.d() * lr - want_dlr[s]).abs() / want_dlr[s].abs().max(1e-300),
            (lr - want_lr[s]).abs() / want_lr[s].abs().max(1e-300),
        ];
        let e = errs.iter().copied().fold(0.0, f64::max);
        assert!(e < 1e-9, "{run} step {}: relative errors {errs:?}", step + 1);
        worst = worst.max(e);
    }
    println!("{run}: worst relative error over 20 steps {worst:.2e}, final d {:.6e}", opt.d());
}

fn schedule(kind: LrScheduleKind, warmup: u64, base_lr: f64) -> LrSchedule {
    LrSchedule::new(kind, warmup, 20, base_lr).unwrap()
}

#[test]
fn dadapt_adam_guide_settings_cosine_matches_dadaptation() {
    check_run(
        "dadapt_guide",
        OptimizerConfig::DAdaptAdam(DAdaptAdamConfig::guide()),
        schedule(LrScheduleKind::Cosine, 0, 1.0),
    );
}

#[test]
fn dadapt_adam_warmup_first_step_is_noop_matches_dadaptation() {
    check_run(
        "dadapt_default_warmup",
        OptimizerConfig::DAdaptAdam(DAdaptAdamConfig::default()),
        schedule(LrScheduleKind::ConstantWithWarmup, 3, 1.0),
    );
}

#[test]
fn dadapt_adam_coupled_decay_linear_matches_dadaptation() {
    let c = DAdaptAdamConfig { weight_decay: 0.1, decouple: false, ..Default::default() };
    check_run("dadapt_coupled", OptimizerConfig::DAdaptAdam(c), schedule(LrScheduleKind::Linear, 2, 0.5));
}

#[test]
fn prodigy_defaults_constant_matches_prodigyopt() {
    check_run(
        "prodigy_default",
        OptimizerConfig::Prodigy(ProdigyConfig::default()),
        schedule(LrScheduleKind::Constant, 0, 1.0),
    );
}

#[test]
fn prodigy_decay_bias_correction_safeguard_restarts_matches_prodigyopt() {
    let c = ProdigyConfig {
        weight_decay: 0.01,
        use_bias_correction: true,
        safeguard_warmup: true,
        ..Default::default()
    };
    check_run(
        "prodigy_wd_bc",
        OptimizerConfig::Prodigy(c),
        schedule(LrScheduleKind::CosineWithRestarts { cycles: 2.0 }, 2, 1.0),
    );
}

#[test]
fn adamw_linear_warmup_matches_torch() {
    check_run(
        "adamw",
        OptimizerConfig::AdamW(AdamWConfig::default()),
        schedule(LrScheduleKind::Linear, 2, 1e-2),
    );
}

#[test]
fn adamw_polynomial_power2_matches_torch() {
    check_run(
        "adamw_poly",
        OptimizerConfig::AdamW(AdamWConfig::default()),
        schedule(LrScheduleKind::Polynomial { power: 2.0 }, 3, 1e-2),
    );
}

#[test]
fn dadapt_adam_float32_params_stay_within_1e6_of_float64_reference() {
    // The same run in fp32: the packages' arithmetic in single precision tracks the fp64 golden
    // closely enough for the 1e-6 relative bound on d and d·lr that TensorBoard shows.
    let g = golden("optim.safetensors");
    let (x, y) = (read(&g, "toy_x").to_kind(Kind::Float), read(&g, "toy_y").to_kind(Kind::Float));
    let params: Vec<Tensor> =
        (0..4).map(|i| read(&g, &format!("toy_p{i}")).to_kind(Kind::Float).set_requires_grad(true)).collect();
    let sched = schedule(LrScheduleKind::Cosine, 0, 1.0);
    let mut opt = Optimizer::new(
        OptimizerConfig::DAdaptAdam(DAdaptAdamConfig::guide()),
        vec![ParamGroup { params: params.iter().map(|p| p.shallow_clone()).collect(), lr: 1.0 }],
    );
    let want_d = vec64(&read(&g, "dadapt_guide.d"));
    let mut worst = 0f64;
    for step in 0..20u64 {
        opt.zero_grad();
        let out = (x.matmul(&params[0].tr()) + &params[1]).tanh().matmul(&params[2].tr())
            + x.matmul(&params[3].tr());
        (out - &y).square().mean(Kind::Float).backward();
        opt.step(sched.factor(step)).unwrap();
        worst = worst.max((opt.d() - want_d[step as usize]).abs() / want_d[step as usize]);
    }
    println!("fp32 DAdaptAdam: worst relative error of d {worst:.2e}");
    assert!(worst < 1e-4, "fp32 d drifted {worst:e} from the fp64 reference");
}

#[test]
fn dadapt_adam_unequal_group_lrs_fails() {
    let a = Tensor::ones([2], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
    let b = Tensor::ones([2], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
    (&a * 2.0 + &b * 3.0).sum(Kind::Double).backward();
    let groups = vec![ParamGroup { params: vec![a], lr: 1.0 }, ParamGroup { params: vec![b], lr: 0.5 }];
    let mut opt = Optimizer::new(OptimizerConfig::DAdaptAdam(DAdaptAdamConfig::default()), groups);
    let err = opt.step(1.0).unwrap_err().to_string();
    assert!(err.contains("different lr values"), "{err}");
}

#[test]
fn lr_schedules_every_kind_match_diffusers() {
    let g = golden("schedules.safetensors");
    let cases = [
        ("constant", LrScheduleKind::Constant, 0, 1.0),
        ("constant_with_warmup", LrScheduleKind::ConstantWithWarmup, 5, 1.0),
        ("linear", LrScheduleKind::Linear, 0, 1.0),
        ("linear_warmup", LrScheduleKind::Linear, 4, 1.0),
        ("cosine", LrScheduleKind::Cosine, 0, 1.0),
        ("cosine_warmup", LrScheduleKind::Cosine, 3, 1.0),
        ("cosine_with_restarts", LrScheduleKind::CosineWithRestarts { cycles: 3.0 }, 0, 1.0),
        ("cosine_with_restarts_warmup", LrScheduleKind::CosineWithRestarts { cycles: 2.0 }, 2, 1.0),
        ("polynomial", LrScheduleKind::Polynomial { power: 1.0 }, 0, 1e-4),
        ("polynomial_power2_warmup", LrScheduleKind::Polynomial { power: 2.0 }, 3, 1.0),
    ];
    for (key, kind, warmup, base) in cases {
        let want = vec64(&read(&g, key));
        let s = LrSchedule::new(kind, warmup, 20, base).unwrap();
        for (i, w) in want.iter().enumerate() {
            let got = s.factor(i as u64);
            assert!((got - w).abs() <= 1e-12 * w.abs().max(1.0), "{key} λ({i}) = {got}, diffusers {w}");
        }
    }
}

#[test]
fn lr_schedule_constant_with_warmup_steps_is_refused() {
    assert!(LrSchedule::new(LrScheduleKind::Constant, 3, 20, 1.0).is_err());
}

#[test]
fn noise_schedule_alphas_and_snr_match_ddpm_scheduler_exactly() {
    let g = golden("loss.safetensors");
    let s = NoiseSchedule::sd1();
    assert_eq!(max_rel(&s.alphas_cumprod, &read(&g, "alphas_cumprod"), 1e-30), 0.0);
    assert_eq!(max_rel(&s.all_snr, &read(&g, "all_snr"), 1e-30), 0.0);
}

#[test]
fn min_snr_weights_gamma_5_and_1_match_kohya() {
    let g = golden("loss.safetensors");
    let s = NoiseSchedule::sd1();
    let ts = read(&g, "snr_timesteps");
    for (key, gamma) in [("min_snr_weight_g5", 5.0), ("min_snr_weight_g1", 1.0)] {
        let err = max_rel(&s.min_snr_weight(&ts, gamma), &read(&g, key), 1e-30);
        assert!(err <= 1e-7, "{key}: {err:e}");
    }
    // Spec §3.3 figures: t=0 → 0.00425, t ≥ 147 → 1.
    let w = vec64(&s.min_snr_weight(&Tensor::from_slice(&[0i64, 147, 999]), 5.0));
    assert!((w[0] - 0.00425).abs() < 1e-5 && w[1] == 1.0 && w[2] == 1.0, "{w:?}");
}

#[test]
fn loss_with_offset_prior_weight_and_min_snr_matches_kohya() {
    let g = golden("loss.safetensors");
    let s = NoiseSchedule::sd1();
    let params = vec64(&read(&g, "case_params"));
    let (offset, prior, gamma) = (params[0], params[1], params[2]);
    let noise = loss::apply_noise_offset(&read(&g, "case_noise"), offset, &read(&g, "case_offset_draw"));
    assert!(max_rel(&noise, &read(&g, "case_noise_with_offset"), 1e-3) <= 1e-6);
    let ts = read(&g, "case_timesteps");
    let noisy = s.add_noise(&read(&g, "case_latents"), &noise, &ts);
    assert!(max_rel(&noisy, &read(&g, "case_noisy"), 1e-3) <= 1e-6);
    let is_reg: Vec<bool> = vec64(&read(&g, "case_is_reg")).iter().map(|&r| r > 0.0).collect();
    let weighting = LossWeighting { min_snr_gamma: Some(gamma), prior_loss_weight: prior };
    let per_sample = loss::per_sample_loss(&s, &read(&g, "case_pred"), &noise, &ts, &is_reg, &weighting);
    let err = max_rel(&per_sample, &read(&g, "case_per_sample"), 1e-30);
    assert!(err <= 1e-6, "per-sample loss: {err:e}");
    let total = loss::batch_loss(&per_sample).double_value(&[]);
    let want = vec64(&read(&g, "case_loss"))[0];
    assert!((total - want).abs() / want <= 1e-6, "batch loss {total} vs {want}");
}

#[test]
fn timesteps_sampled_stay_in_half_open_range() {
    tch::manual_seed(3);
    let t = vec64(&loss::sample_timesteps(4096, 100, 200).unwrap());
    assert!(t.iter().all(|&v| (100.0..200.0).contains(&v)));
    assert!(t.contains(&100.0) && t.contains(&199.0), "both ends of [100, 200) should be drawn");
    assert!(loss::sample_timesteps(1, 5, 5).is_err());
}
