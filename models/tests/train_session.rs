//! `TrainSession` on the tiny SD1.5-topology fixture: training across buckets (one size per
//! batch), per-step epochs, resuming from a saved state with the very losses of an uninterrupted
//! run, independence from other users of libtorch's generator between steps, and refusing a
//! state of another run.

use std::path::PathBuf;

use models::checkpoint::StableDiffusion;
use models::clip::tokenizer::ClipTokenizer;
use models::train::lora_net::LoraConfig;
use models::train::optim::{DAdaptAdamConfig, OptimizerConfig};
use models::train::schedule::LrScheduleKind;
use models::train::{StepRecord, TrainConfig, TrainImage, TrainSession};
use tch::{Kind, Tensor};

mod train_support;

use train_support::{rng, tiny};

/// Three train images in two buckets (32×32 twice, 64×32 once, repeats 2) and two reg images.
fn images() -> Vec<TrainImage> {
    let g = |seed: i64, h: i64, w: i64| {
        tch::manual_seed(seed);
        Tensor::rand([3, h, w], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0
    };
    vec![
        TrainImage::new(g(1, 32, 32), "photo of ohwx man", false).with_repeats(2),
        TrainImage::new(g(2, 32, 32), "ohwx man smiling", false).with_repeats(2),
        TrainImage::new(g(3, 32, 64), "ohwx man, wide", false).with_repeats(2),
        TrainImage::new(g(4, 32, 32), "photo of a man", true),
        TrainImage::new(g(5, 32, 64), "a man", true),
    ]
}

fn config() -> TrainConfig {
    TrainConfig {
        network: LoraConfig { rank: 4, alpha: Some(1.0), ..Default::default() },
        optimizer: OptimizerConfig::DAdaptAdam(DAdaptAdamConfig::guide()),
        scheduler: LrScheduleKind::Cosine,
        max_train_steps: 6,
        batch_size: 4,
        noise_offset: Some(0.0357),
        flip_aug: true,
        seed: 1234,
        ..Default::default()
    }
}

fn run(session: &mut TrainSession, sd: &StableDiffusion, steps: usize) -> Vec<StepRecord> {
    (0..steps).map(|_| session.step(sd).unwrap()).collect()
}

#[test]
fn session_buckets_and_reg_pairing_give_kohya_steps_per_epoch() {
    let _rng = rng();
    let sd = tiny();
    let tok = ClipTokenizer::new().unwrap();
    let session = TrainSession::new(&sd, &tok, &images(), config()).unwrap();
    // Train entries: 3 images × 2 repeats = 6. Reg pairing walks the two reg images (1 repeat
    // each, total 2 < 6) then cycles +1 each: 3 + 3 = 6 reg entries. Buckets by size:
    // 32×32 holds 2×2 train + 3 reg = 7 entries, 64×32 holds 2 train + 3 reg = 5.
    // Batches per epoch = ceil(7/4) + ceil(5/4) = 2 + 2 = 4 (§2).
    assert_eq!(session.entries_per_epoch(), 12);
    let mut sizes = session.bucket_sizes();
    sizes.sort();
    // The tiny VAE downsamples by 2: 32×32 → 16×16 latents.
    assert_eq!(sizes, vec![((16, 16), 7), ((32, 16), 5)]);
    assert_eq!(session.steps_per_epoch(), 4);
    assert_eq!(session.cache_stats().encoded, 5);
}

#[test]
fn session_steps_report_epochs_and_restore_weights() {
    let _rng = rng();
    let sd = tiny();
    let tok = ClipTokenizer::new().unwrap();
    let reference: Vec<(String, Tensor)> = sd.params.iter().map(|(k, v)| (k.clone(), v.copy())).collect();
    let mut session = TrainSession::new(&sd, &tok, &images(), config()).unwrap();
    let records = run(&mut session, &sd, 5);
    let epochs: Vec<u64> = records.iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, vec![1, 1, 1, 1, 2], "4 batches per epoch");
    assert_eq!(records.iter().map(|r| r.step).collect::<Vec<_>>(), (1..=5).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r.loss.is_finite() && r.d_lr.is_some()));
    for (k, v) in &reference {
        assert_eq!((&sd.params[k] - v).abs().max().double_value(&[]), 0.0, "{k} not restored");
    }
}

#[test]
fn session_resume_from_saved_state_matches_uninterrupted_run() {
    let _rng = rng();
    let sd = tiny();
    let tok = ClipTokenizer::new().unwrap();
    let imgs = images();
    let mut whole = TrainSession::new(&sd, &tok, &imgs, config()).unwrap();
    let uninterrupted = run(&mut whole, &sd, 6);
    let whole_up = whole.network().modules[0].up.detach().copy();
    drop(whole);

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.safetensors");
    let mut first = TrainSession::new(&sd, &tok, &imgs, config()).unwrap();
    // Saved in the middle of epoch 2 (4 batches per epoch).
    let mut resumed_losses = run(&mut first, &sd, 5);
    first.save_state(&state).unwrap();
    drop(first);
    // Another user of libtorch's generator between save and resume must not matter.
    let _ = Tensor::randn([1000], (Kind::Float, tch::Device::Cpu));

    let mut second = TrainSession::new(&sd, &tok, &imgs, config()).unwrap();
    second.load_state(&state).unwrap();
    assert_eq!((second.global_step(), second.epoch()), (5, 2));
    resumed_losses.extend(run(&mut second, &sd, 1));
    println!("uninterrupted {:?}", uninterrupted.iter().map(|r| r.loss).collect::<Vec<_>>());
    assert_eq!(resumed_losses, uninterrupted, "losses, lrs, d·lr and epochs of steps 1–6");
    let up = second.network().modules[0].up.detach().copy();
    assert_eq!((&up - &whole_up).abs().max().double_value(&[]), 0.0, "same weights after 6 steps");
}

#[test]
fn fp16_session_resume_keeps_the_loss_scale_and_the_schedule_position() {
    let _rng = rng();
    let path =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/tiny-sd15.safetensors"));
    let placement = models::device::Placement { device: tch::Device::Cpu, kind: Kind::Half };
    let sd = StableDiffusion::load(&path, placement).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let imgs = images();
    let cfg = || TrainConfig { mixed_precision: models::train::MixedPrecision::Fp16, ..config() };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.safetensors");

    let mut first = TrainSession::new(&sd, &tok, &imgs, cfg()).unwrap();
    // An overflowing first step: skipped, the scale backs off.
    first.loss_scaler_mut().unwrap().scale = 1e30;
    let mut losses = run(&mut first, &sd, 1);
    let (scale, steps) = (first.loss_scaler().cloned().unwrap(), first.optimizer_steps());
    assert_eq!((scale.scale, scale.growth_tracker, steps), (0.5e30, 0, 0), "{scale:?}");
    first.loss_scaler_mut().unwrap().scale = 1024.0;
    losses.extend(run(&mut first, &sd, 1));
    first.save_state(&state).unwrap();
    let saved = (first.loss_scaler().cloned().unwrap(), first.optimizer_steps());
    assert_eq!((saved.0.scale, saved.0.growth_tracker, saved.1), (1024.0, 1, 1));
    let rest = run(&mut first, &sd, 2);

    let mut second = TrainSession::new(&sd, &tok, &imgs, cfg()).unwrap();
    second.load_state(&state).unwrap();
    assert_eq!((second.loss_scaler().cloned().unwrap(), second.optimizer_steps()), saved);
    assert_eq!(run(&mut second, &sd, 2), rest, "the resumed fp16 run continues exactly");
    assert!(losses.iter().all(|r| r.loss.is_finite()));
}

#[test]
fn session_load_state_of_another_run_is_refused() {
    let _rng = rng();
    let sd = tiny();
    let tok = ClipTokenizer::new().unwrap();
    let imgs = images();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.safetensors");
    let mut s = TrainSession::new(&sd, &tok, &imgs, config()).unwrap();
    run(&mut s, &sd, 1);
    s.save_state(&state).unwrap();
    drop(s);
    let mut other = TrainSession::new(&sd, &tok, &imgs, TrainConfig { seed: 99, ..config() }).unwrap();
    let err = other.load_state(&state).unwrap_err().to_string();
    assert!(err.contains("another run"), "{err}");
}

#[test]
fn session_between_generation_loras_keeps_merge_state_consistent() {
    let _rng = rng();
    let sd = tiny();
    let tok = ClipTokenizer::new().unwrap();
    let lora = models::lora::LoraSpec {
        path: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/training/tiny_trained_lora.safetensors"
        )),
        te_multiplier: 1.0,
        unet_multiplier: 1.0,
    };
    let name = "model.diffusion_model.middle_block.1.proj_in.weight";
    let base = sd.params[name].copy();
    let mut session = TrainSession::new(&sd, &tok, &images(), config()).unwrap();
    // A generation job merges a LoRA between two steps ...
    assert!(sd.apply_loras(std::slice::from_ref(&lora)).unwrap());
    let merged = sd.params[name].copy();
    assert!((&merged - &base).abs().max().double_value(&[]) > 0.0);
    // ... the step takes it out and trains on the base weights ...
    session.step(&sd).unwrap();
    assert_eq!((&sd.params[name] - &base).abs().max().double_value(&[]), 0.0);
    // ... and the next generation merges it again.
    assert!(sd.apply_loras(std::slice::from_ref(&lora)).unwrap(), "re-merged after the step");
    assert_eq!((&sd.params[name] - &merged).abs().max().double_value(&[]), 0.0);
    // Ending the run does not overwrite the generation's merged weights.
    drop(session);
    assert_eq!((&sd.params[name] - &merged).abs().max().double_value(&[]), 0.0, "merge kept on drop");
    sd.apply_loras(&[]).unwrap();
    assert_eq!((&sd.params[name] - &base).abs().max().double_value(&[]), 0.0);
}
