//! LoRA training on the tiny SD1.5-topology fixture: kohya's module set and names, the loss going
//! down over 10 steps, determinism for a seed, restoring the base weights, and the saved kohya
//! file (names, shapes, alpha, metadata, hashes; read back by the inference-side loader).

use std::collections::BTreeMap;

use models::checkpoint::StableDiffusion;
use models::clip::tokenizer::ClipTokenizer;
use models::lora::LoraSpec;
use models::train::lora_net::{LoraConfig, LoraNetwork, Part};
use models::train::optim::{AdamWConfig, OptimizerConfig};
use models::train::save::{kohya_hashes, kohya_metadata, save_kohya, RunInfo};
use models::train::schedule::LrScheduleKind;
use models::train::{TrainConfig, TrainImage, Trainer};
use models::weights::safetensors_file::SafetensorsFile;
use models::weights::TensorSource;
use tch::{Kind, Tensor};

mod train_support;

use train_support::{rng, tiny};

fn images() -> Vec<TrainImage> {
    tch::manual_seed(7);
    (0..2)
        .map(|i| {
            TrainImage::new(
                Tensor::rand([3, 32, 32], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0,
                format!("photo of ohwx man {i}"),
                i == 1,
            )
        })
        .collect()
}

fn config(seed: i64) -> TrainConfig {
    TrainConfig {
        network: LoraConfig { rank: 4, alpha: Some(4.0), ..Default::default() },
        optimizer: OptimizerConfig::AdamW(AdamWConfig::default()),
        learning_rate: 1e-2,
        scheduler: LrScheduleKind::Constant,
        max_train_steps: 10,
        batch_size: 2,
        noise_offset: Some(0.0357),
        weighting: models::train::loss::LossWeighting { min_snr_gamma: Some(5.0), prior_loss_weight: 0.5 },
        seed,
        ..Default::default()
    }
}

/// The default kohya network on `sd`, initialised from seed `seed`.
fn default_network(sd: &models::checkpoint::StableDiffusion, seed: i64) -> LoraNetwork {
    tch::manual_seed(seed);
    LoraNetwork::new(sd, &LoraConfig::default()).unwrap()
}

#[test]
fn lora_network_tiny_model_has_kohya_targets_and_init() {
    let _rng = rng();
    let sd = tiny();
    let net = default_network(&sd, 0);
    let names: Vec<&str> = net.modules.iter().map(|m| m.name.as_str()).collect();
    for want in [
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te_text_model_encoder_layers_0_mlp_fc2",
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "lora_unet_mid_block_attentions_0_proj_out",
        "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_2",
    ] {
        assert!(names.contains(&want), "missing {want}");
    }
    let te = net.modules.iter().filter(|m| m.part == Part::TextEncoder).count();
    let unet = net.modules.len() - te;
    let clip_layers = sd.config.clip.layers as usize;
    assert_eq!(te, 6 * clip_layers, "6 linears per CLIP layer");
    assert_eq!(unet % 12, 0, "12 modules per transformer block, got {unet}");
    // Text encoder modules first, as kohya orders its parameter groups.
    assert!(net.modules[..te].iter().all(|m| m.part == Part::TextEncoder));
    for m in &net.modules {
        let fan_in: i64 = m.down.size()[1..].iter().product();
        let bound = 1.0 / (fan_in as f64).sqrt();
        assert!(m.down.abs().max().double_value(&[]) <= bound, "{}: down outside U(±1/√fan_in)", m.name);
        assert!(m.down.abs().max().double_value(&[]) > bound * 0.5, "{}: down suspiciously small", m.name);
        assert_eq!(m.up.abs().max().double_value(&[]), 0.0, "{}: up must start at zero", m.name);
        assert_eq!(m.scale(), 1.0 / 4.0, "alpha 1 / rank 4");
    }
    let proj_in =
        net.modules.iter().find(|m| m.name == "lora_unet_down_blocks_0_attentions_0_proj_in").unwrap();
    assert_eq!(proj_in.down.dim(), 4, "proj_in is a 1×1 conv in SD1: 4-D LoRA weights");
}

#[test]
fn lora_network_with_conv_dim_adds_locon_modules() {
    let _rng = rng();
    let sd = tiny();
    let cfg = LoraConfig { conv: Some((2, 1.0)), ..Default::default() };
    let net = LoraNetwork::new(&sd, &cfg).unwrap();
    let find = |n: &str| net.modules.iter().find(|m| m.name == n).unwrap_or_else(|| panic!("missing {n}"));
    let conv1 = find("lora_unet_down_blocks_0_resnets_0_conv1");
    assert_eq!((conv1.rank, conv1.down.size()[2..].to_vec()), (2, vec![3, 3]), "3×3 conv gets conv_dim");
    assert_eq!(
        find("lora_unet_down_blocks_0_resnets_0_time_emb_proj").rank,
        4,
        "time_emb_proj gets the main rank"
    );
    find("lora_unet_down_blocks_0_downsamplers_0_conv");
    find("lora_unet_up_blocks_0_upsamplers_0_conv");
}

/// The text encoder's and the UNet's outputs on fixed inputs.
fn model_outputs(sd: &StableDiffusion) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        tch::manual_seed(11);
        let ids = Tensor::randint(sd.config.clip.vocab_size, [2, 77], (Kind::Int64, tch::Device::Cpu));
        let context = sd.clip.encode(&ids, 2);
        let x = Tensor::randn([2, 4, 16, 16], (Kind::Float, tch::Device::Cpu));
        let t = Tensor::from_slice(&[10f32, 700.0]);
        (context.shallow_clone(), sd.unet.forward(&x, &t, &context))
    })
}

#[test]
fn attached_network_equals_its_weight_deltas_merged_into_the_model() {
    // kohya's forward `W x + up(down(x))·scale` on every linear, 1×1 and (LoCon) 3×3 target,
    // strided downsamplers included, is the same linear map as the weight `W + ΔW`.
    let _rng = rng();
    let sd = tiny();
    tch::manual_seed(3);
    let net = LoraNetwork::new(&sd, &LoraConfig { conv: Some((2, 1.0)), ..Default::default() }).unwrap();
    tch::no_grad(|| {
        for m in &net.modules {
            m.up.shallow_clone().copy_(&(m.up.randn_like() * 0.1));
        }
    });
    let base = model_outputs(&sd);
    net.attach();
    let attached = model_outputs(&sd);
    net.detach();
    let detached = model_outputs(&sd);
    let originals: Vec<Tensor> = net.modules.iter().map(|m| sd.params[&m.target_name].copy()).collect();
    tch::no_grad(|| {
        for m in &net.modules {
            let _ = sd.params[&m.target_name].shallow_clone().g_add_(&m.delta(1.0));
        }
    });
    let merged = model_outputs(&sd);
    tch::no_grad(|| {
        for (m, w) in net.modules.iter().zip(&originals) {
            sd.params[&m.target_name].shallow_clone().copy_(w);
        }
    });
    let max = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert_eq!(max(&base.0, &detached.0) + max(&base.1, &detached.1), 0.0, "detach restores the model");
    assert!(max(&base.1, &attached.1) > 1e-3, "the adapters change the UNet's output");
    let (te, unet) = (max(&attached.0, &merged.0), max(&attached.1, &merged.1));
    assert!(te < 1e-4 && unet < 1e-4, "attached vs merged: text encoder {te}, UNet {unet}");
}

#[test]
fn gradient_checkpointing_gives_plain_backward_gradients() {
    let _rng = rng();
    let sd = tiny();
    let tokenizer = ClipTokenizer::new().unwrap();
    let imgs = images();
    let grads = |checkpointing: bool| {
        let cfg = TrainConfig {
            network: LoraConfig { rank: 4, alpha: Some(4.0), conv: Some((2, 2.0)), ..Default::default() },
            gradient_checkpointing: checkpointing,
            max_grad_norm: 0.0,
            max_train_steps: 1,
            ..config(5)
        };
        let mut trainer = Trainer::new(&sd, &tokenizer, &imgs, cfg).unwrap();
        // Non-zero `up` so every path carries a gradient to `down` as well.
        tch::no_grad(|| {
            for m in &trainer.network().modules {
                m.up.shallow_clone().copy_(&(m.up.randn_like() * 0.05));
            }
        });
        // Gradients disabled around the step, as on the daemon's engine thread: the step enables
        // them where it needs them.
        let record = tch::no_grad(|| trainer.train_step()).unwrap();
        let grads: Vec<(String, Tensor)> = trainer
            .network()
            .modules
            .iter()
            .flat_map(|m| {
                [(format!("{}.down", m.name), m.down.grad()), (format!("{}.up", m.name), m.up.grad())]
            })
            .map(|(n, g)| (n, if g.defined() { g.copy() } else { g }))
            .collect();
        (record.loss, grads)
    };
    let (loss_plain, plain) = grads(false);
    let (loss_ckpt, ckpt) = grads(true);
    assert!((loss_plain - loss_ckpt).abs() <= 1e-6 * loss_plain.abs(), "{loss_plain} vs {loss_ckpt}");
    let mut worst = (0.0, String::new());
    let mut te_seen = false;
    // With clip skip 2 the text encoder's last layer does not reach the output: its modules get
    // no gradient in either mode, as in kohya. Every other module gets one in both.
    let last_te_layer = format!("lora_te_text_model_encoder_layers_{}_", sd.config.clip.layers - 1);
    let mismatched: Vec<String> = plain
        .iter()
        .zip(&ckpt)
        .filter(|((n, a), (_, b))| a.defined() == n.starts_with(&last_te_layer) || a.defined() != b.defined())
        .map(|((n, a), (_, b))| format!("{n} (plain {}, checkpointed {})", a.defined(), b.defined()))
        .collect();
    assert!(mismatched.is_empty(), "gradient presence: {mismatched:?}");
    let defined = || plain.iter().zip(&ckpt).filter(|((_, a), _)| a.defined());
    let largest = defined().map(|((_, a), _)| a.abs().max().double_value(&[])).fold(0.0, f64::max);
    for ((name, a), (_, b)) in defined() {
        te_seen |= name.starts_with("lora_te_") && a.abs().max().double_value(&[]) > 0.0;
        // Relative to the tensor, with a floor for the gradients that are zero in exact
        // arithmetic (a time embedding added per channel right before a one-channel-per-group
        // GroupNorm in the tiny model): there both modes give float noise of about 1e-10.
        let scale = a.abs().max().double_value(&[]).max(largest * 1e-3);
        let rel = (a - b).abs().max().double_value(&[]) / scale;
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    println!("checkpointed vs plain gradients: worst relative difference {:.2e} ({})", worst.0, worst.1);
    assert!(te_seen, "the text encoder's modules get gradients through the checkpointed UNet");
    assert!(worst.0 < 1e-4, "gradients differ: {worst:?}");
}

#[test]
fn bf16_mixed_precision_trains_fp32_lora_on_a_bf16_model() {
    let _rng = rng();
    let path = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tiny/tiny-sd15.safetensors"
    ));
    let placement = models::device::Placement { device: tch::Device::Cpu, kind: Kind::BFloat16 };
    let sd = StableDiffusion::load(&path, placement).unwrap();
    let tokenizer = ClipTokenizer::new().unwrap();
    let imgs = images();
    let refused =
        Trainer::new(&sd, &tokenizer, &imgs, config(42)).err().expect("fp32 config on a bf16 model");
    assert!(refused.to_string().contains("mixed precision no"), "{refused}");

    let cfg = TrainConfig {
        mixed_precision: models::train::MixedPrecision::Bf16,
        gradient_checkpointing: true,
        max_train_steps: 10,
        ..config(42)
    };
    let mut trainer = Trainer::new(&sd, &tokenizer, &imgs, cfg).unwrap();
    let fixed = trainer.draw_batch().unwrap();
    let before = trainer.eval_loss(&fixed);
    let records = trainer.run(|_| {}).unwrap();
    let after = trainer.eval_loss(&fixed);
    let net = trainer.finish();
    assert!(net.modules.iter().all(|m| m.down.kind() == Kind::Float && m.up.kind() == Kind::Float));
    let grads: Vec<Tensor> = net.modules.iter().map(|m| m.up.grad()).filter(Tensor::defined).collect();
    assert!(!grads.is_empty() && grads.iter().all(|g| g.kind() == Kind::Float), "fp32 gradients");
    let (_, fp32_after, fp32_losses, _) = train_once(&tiny(), 42, 10);
    let bf16_losses: Vec<f64> = records.iter().map(|r| r.loss).collect();
    println!("bf16: fixed-batch loss {before:.5} -> {after:.5}; steps {bf16_losses:.4?}; fp32 steps {fp32_losses:.4?}");
    assert!(after < before * 0.98, "bf16 training lowers the fixed-batch loss: {before} -> {after}");
    // The same batches and noise: bf16 rounding moves each step's loss a little, not more.
    for (b, f) in bf16_losses.iter().zip(&fp32_losses) {
        assert!((b - f).abs() < 0.05 * f.abs() + 1e-3, "bf16 step loss {b} vs fp32 {f}");
    }
    assert!((after - fp32_after).abs() < 0.05 * fp32_after, "{after} vs fp32 {fp32_after}");
}

#[test]
fn fp16_mixed_precision_scales_the_loss_and_skips_overflowing_steps() {
    let _rng = rng();
    let path = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tiny/tiny-sd15.safetensors"
    ));
    let placement = models::device::Placement { device: tch::Device::Cpu, kind: Kind::Half };
    let sd = StableDiffusion::load(&path, placement).unwrap();
    let tokenizer = ClipTokenizer::new().unwrap();
    let imgs = images();
    let cfg = TrainConfig {
        mixed_precision: models::train::MixedPrecision::Fp16,
        max_train_steps: 10,
        scheduler: LrScheduleKind::Linear,
        ..config(42)
    };
    let mut trainer = Trainer::new(&sd, &tokenizer, &imgs, cfg).unwrap();
    let fixed = trainer.draw_batch().unwrap();
    let before = trainer.eval_loss(&fixed);
    let up = |t: &Trainer| t.network().modules.iter().find(|m| m.part == Part::Unet).unwrap().up.copy();

    // A scale no fp16 gradient survives: the step is counted but skipped, the scale backs off,
    // the parameters and the schedule stay where they were.
    let start = up(&trainer);
    trainer.session_mut().loss_scaler_mut().unwrap().scale = 1e30;
    let r = trainer.train_step().unwrap();
    assert_eq!((r.step, trainer.session().optimizer_steps()), (1, 0));
    assert!(r.loss.is_finite(), "the logged loss is unscaled: {}", r.loss);
    assert_eq!(r.lr, 1e-2, "the linear schedule did not advance");
    assert_eq!(trainer.session().loss_scaler().unwrap().scale, 0.5e30);
    assert_eq!((&up(&trainer) - &start).abs().max().double_value(&[]), 0.0, "skipped step changed the LoRA");

    trainer.session_mut().loss_scaler_mut().unwrap().scale = models::train::scaler::INIT_SCALE;
    let records = trainer.run(|_| {}).unwrap();
    let after = trainer.eval_loss(&fixed);
    let taken = trainer.session().optimizer_steps();
    println!(
        "fp16: fixed-batch loss {before:.5} -> {after:.5}; {taken} of 10 steps taken; {:?}",
        trainer.session().loss_scaler()
    );
    assert!(records.iter().all(|r| r.loss.is_finite()));
    assert!(taken >= 5, "most steps are taken at the initial scale: {taken}");
    assert!(after < before * 0.98, "fp16 training lowers the fixed-batch loss: {before} -> {after}");
    let net = trainer.finish();
    assert!(net.modules.iter().all(|m| m.up.kind() == Kind::Float), "the LoRA stays fp32");
}

/// Trains `steps` steps and returns (loss before, loss after, step losses, one LoRA tensor).
fn train_once(sd: &StableDiffusion, seed: i64, steps: u64) -> (f64, f64, Vec<f64>, Tensor) {
    let tokenizer = ClipTokenizer::new().unwrap();
    let imgs = images();
    let mut trainer =
        Trainer::new(sd, &tokenizer, &imgs, TrainConfig { max_train_steps: steps, ..config(seed) }).unwrap();
    let fixed = trainer.draw_batch().unwrap();
    let before = trainer.eval_loss(&fixed);
    let records = trainer.run(|_| {}).unwrap();
    let after = trainer.eval_loss(&fixed);
    let net = trainer.finish();
    let up = net.modules.iter().find(|m| m.part == Part::Unet).unwrap().up.detach().copy();
    (before, after, records.iter().map(|r| r.loss).collect(), up)
}

#[test]
fn trainer_tiny_model_ten_steps_lowers_loss_and_is_deterministic() {
    let _rng = rng();
    let sd = tiny();
    let reference: Vec<(String, Tensor)> = sd.params.iter().map(|(k, v)| (k.clone(), v.copy())).collect();
    let (before, after, losses, up) = train_once(&sd, 42, 10);
    println!("fixed-batch loss {before:.6} -> {after:.6}; step losses {losses:.4?}");
    assert_eq!(losses.len(), 10);
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(after < before * 0.98, "10 steps should lower the fixed-batch loss: {before} -> {after}");
    assert!(up.abs().max().double_value(&[]) > 0.0, "lora_up moved away from zero");
    for (k, v) in &reference {
        let diff = (&sd.params[k] - v).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{k} not restored after training");
    }
    let (before2, after2, losses2, up2) = train_once(&sd, 42, 10);
    assert_eq!((before, after, &losses), (before2, after2, &losses2), "same seed, same run");
    assert_eq!((&up - &up2).abs().max().double_value(&[]), 0.0);
    let (_, _, losses3, _) = train_once(&sd, 43, 1);
    assert_ne!(losses[0], losses3[0], "another seed draws other noise");
}

/// The weighted loss of the model as it is (no training network) on a fixed batch.
fn model_loss(sd: &StableDiffusion, batch: &models::train::FixedBatch, cfg: &TrainConfig) -> f64 {
    use models::train::loss::{batch_loss, per_sample_loss, NoiseSchedule};
    tch::no_grad(|| {
        let schedule = NoiseSchedule::sd1();
        let context = sd.clip.encode(&batch.ids, cfg.clip_skip);
        let noisy = schedule.add_noise(&batch.latents, &batch.noise, &batch.timesteps);
        let pred = sd.unet.forward(&noisy, &batch.timesteps.to_kind(Kind::Float), &context);
        let per_sample =
            per_sample_loss(&schedule, &pred, &batch.noise, &batch.timesteps, &batch.is_reg, &cfg.weighting);
        batch_loss(&per_sample).double_value(&[])
    })
}

#[test]
fn save_kohya_reloads_with_names_shapes_alpha_metadata_and_hashes() {
    let _rng = rng();
    let sd = tiny();
    let tokenizer = ClipTokenizer::new().unwrap();
    let imgs = images();
    let cfg = TrainConfig { max_train_steps: 3, ..config(5) };
    let mut trainer = Trainer::new(&sd, &tokenizer, &imgs, cfg.clone()).unwrap();
    let fixed = trainer.draw_batch().unwrap();
    trainer.run(|_| {}).unwrap();
    let trained_loss = trainer.eval_loss(&fixed);
    let net = trainer.finish();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ohwx.safetensors");
    let run = RunInfo {
        output_name: "ohwx".into(),
        steps: 3,
        epoch: 1,
        num_train_images: 1,
        num_reg_images: 1,
        resolution: (32, 32),
        ..Default::default()
    };
    let meta: BTreeMap<String, String> = kohya_metadata(&net, &cfg, &run);
    save_kohya(&net, &path, &meta, Kind::Float).unwrap();

    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.names().len(), net.modules.len() * 3);
    for m in &net.modules {
        let down = file.read(&format!("{}.lora_down.weight", m.name)).unwrap();
        let up = file.read(&format!("{}.lora_up.weight", m.name)).unwrap();
        let alpha = file.read(&format!("{}.alpha", m.name)).unwrap();
        assert_eq!(down.size(), m.down.size(), "{}", m.name);
        assert_eq!(up.size(), m.up.size(), "{}", m.name);
        assert_eq!(alpha.dim(), 0, "{}: alpha is a scalar", m.name);
        assert_eq!(alpha.double_value(&[]), 4.0, "{}: network_alpha 4", m.name);
        assert_eq!((&down - &m.down).abs().max().double_value(&[]), 0.0);
    }
    let md = file.metadata();
    for (k, v) in [
        ("ss_network_module", "networks.lora"),
        ("ss_network_dim", "4"),
        ("ss_network_alpha", "4.0"),
        ("ss_output_name", "ohwx"),
        ("ss_lr_scheduler", "constant"),
        ("ss_resolution", "(32, 32)"),
        ("ss_min_snr_gamma", "5.0"),
        ("ss_noise_offset", "0.0357"),
        ("ss_optimizer", "torch.optim.adamw.AdamW(weight_decay=0.01)"),
    ] {
        assert_eq!(md.get(k).map(String::as_str), Some(v), "{k}");
    }
    // The data section does not depend on the metadata: the stored model hash is the SHA-256 of
    // the real file's data section.
    let bytes = std::fs::read(&path).unwrap();
    let (model_hash, _) = kohya_hashes(&bytes).unwrap();
    assert_eq!(md["sshs_model_hash"], model_hash);
    assert_eq!(md["sshs_legacy_hash"].len(), 8);

    // The inference loader merges the file into the model: the loss matches the trained network's.
    let spec = LoraSpec { path: path.clone(), te_multiplier: 1.0, unet_multiplier: 1.0 };
    sd.apply_loras(&[spec]).unwrap();
    let merged_loss = model_loss(&sd, &fixed, &cfg);
    sd.apply_loras(&[]).unwrap();
    println!("trained network loss {trained_loss:.6}, loaded-and-merged loss {merged_loss:.6}");
    assert!((trained_loss - merged_loss).abs() < 1e-5 * trained_loss.abs().max(1.0));
}
