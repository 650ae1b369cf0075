//! Benchmark (not a test) of what the daemon adds around the models:
//!
//! 1. Checkpoint switching. Two full-size SD1.5-architecture checkpoints with random weights are
//!    written as A1111 single files (fp16, LDM names), and a daemon started in-process with
//!    `--vram-checkpoints 2` is switched between them through `POST /sdapi/v1/options`. A *cold*
//!    switch loads the target from its file (it is not resident; the other one is); a *cached*
//!    switch finds both resident. The ratio cold/cached is what the device tier saves.
//! 2. Request overhead. A txt2img on the tiny fixture model (32×32, 1 step) over HTTP, end to end,
//!    against the same generation called directly through `daemon::generation::txt2img` in the
//!    same process. The difference is what routing, validation, the queue, the engine thread,
//!    progress hooks, PNG encoding and JSON cost per request.
//!
//! Prints one JSON line with the medians (milliseconds) and the device.
//!
//! Usage: bench_daemon [--device cpu|cuda[:N]] [--cache-dir DIR] [--switches N] [--requests N]
//!                     [--no-switching]
//!
//! `--cache-dir` keeps the two generated checkpoints (about 2 GB each) for later runs; without it
//! they are written into a temporary folder and deleted at the end.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use daemon::generation::{txt2img, TextEncoders, Txt2ImgSpec};
use models::checkpoint::{CheckpointConfig, StableDiffusion};
use models::device::{parse_device, Placement};
use models::sampling::Control;
use models::weights::safetensors_file::write_atomic;
use models::weights::{RandomWeights, Weights};
use serde_json::{json, Value};
use tch::Kind;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The checkpoint files, named so the catalog lists A before B (the daemon starts on A).
const CHECKPOINTS: [(&str, i64); 2] = [("bench-sd15-a.safetensors", 1), ("bench-sd15-b.safetensors", 2)];

/// The tiny model the request-overhead half runs.
const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/tiny-sd15.safetensors");

/// Same seed, sampler and size on both sides of the overhead comparison, so the two run the same
/// generation. Euler with 1 step evaluates the UNet once (twice with the uncond batch).
const PROMPT: &str = "a photo of a cat";
const SEED: u64 = 1;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A daemon serving on an ephemeral port in a thread of this process, as `diffusiond` would.
struct Daemon {
    base: String,
    agent: ureq::Agent,
    server: Option<std::thread::JoinHandle<Result<(), daemon::RunError>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Daemon {
    fn start(args: &[String]) -> AnyResult<Daemon> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        let argv = std::iter::once("diffusiond".to_string()).chain(args.iter().cloned());
        let config = daemon::config::Config::try_parse_from(argv)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(daemon::run_until(config, listener, async move {
                let _ = stopped.await;
            }))
        });
        // One agent, so requests reuse a kept-alive connection as a real client's would.
        let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(3600)).build();
        let d = Daemon { base, agent, server: Some(server), stop: Some(stop) };
        // The daemon answers only once its start-up checkpoint is loaded, which for a full-size
        // one on a slow CPU takes a while.
        let started = Instant::now();
        while d.agent.get(&format!("{}/internal/ping", d.base)).call().is_err() {
            if d.server.as_ref().is_some_and(|s| s.is_finished()) {
                return Err("the daemon stopped during start".into());
            }
            if started.elapsed().as_secs() > 600 {
                return Err("the daemon did not answer within 10 minutes".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(d)
    }

    fn post(&self, path: &str, body: &Value) -> AnyResult<Value> {
        let answer = self.agent.post(&format!("{}{path}", self.base)).send_json(body.clone());
        match answer {
            Ok(r) => Ok(r.into_json()?),
            Err(ureq::Error::Status(code, r)) => {
                Err(format!("POST {path}: {code} {}", r.into_string().unwrap_or_default()).into())
            }
            Err(e) => Err(format!("POST {path}: {e}").into()),
        }
    }

    /// Selects `name`, timing the whole request (the daemon answers once the switch is done).
    fn switch_to(&self, name: &str) -> AnyResult<f64> {
        let t = Instant::now();
        self.post("/sdapi/v1/options", &json!({ "sd_model_checkpoint": name }))?;
        Ok(ms(t))
    }

    /// Stops the daemon and waits for its engine thread, so its models are freed before the next
    /// phase loads anything.
    fn stop(mut self) -> AnyResult<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.join().map_err(|_| "the server thread panicked")??;
        }
        Ok(())
    }
}

/// Writes one full-size SD1.5 checkpoint of random weights as A1111 saves one: fp16, LDM names.
fn write_checkpoint(path: &Path, seed: i64) -> AnyResult<()> {
    let random = RandomWeights::new(seed);
    // Building the model is what makes RandomWeights generate (and record) every tensor the
    // architecture has, under the names the loader expects.
    let model =
        StableDiffusion::build(&Weights::random(random.clone(), Placement::cpu()), CheckpointConfig::v1_5())?;
    let tensors = random.tensors();
    // Drop every other handle first, so each fp32 tensor is freed as soon as it is cast and the
    // peak stays near one fp32 copy of the model.
    drop(model);
    drop(random);
    let mut half: Vec<(String, tch::Tensor)> =
        tensors.into_iter().map(|(name, t)| (name, t.to_kind(Kind::Half))).collect();
    half.sort_by(|a, b| a.0.cmp(&b.0));
    write_atomic(path, &half, None)?;
    Ok(())
}

/// The two checkpoints in `dir`, written if missing. Returns the seconds spent writing.
fn ensure_checkpoints(dir: &Path) -> AnyResult<f64> {
    std::fs::create_dir_all(dir)?;
    let t = Instant::now();
    for (name, seed) in CHECKPOINTS {
        let path = dir.join(name);
        if !path.is_file() {
            eprintln!("writing {}", path.display());
            write_checkpoint(&path, seed)?;
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Median cold and cached switch times (ms) over `rounds` rounds, and the sample counts.
fn bench_switching(data_dir: &Path, ckpt_dir: &Path, device: &str, rounds: usize) -> AnyResult<Value> {
    let args: Vec<String> = [
        "--device",
        device,
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--ckpt-dir",
        &ckpt_dir.to_string_lossy(),
        "--ckpt",
        CHECKPOINTS[0].0,
        "--vram-checkpoints",
        "2",
        "--ram-checkpoints",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    eprintln!("starting the daemon on {} (loads {})", device, CHECKPOINTS[0].0);
    let started = Instant::now();
    let d = Daemon::start(&args)?;
    let startup_s = started.elapsed().as_secs_f64();
    let (a, b) = (CHECKPOINTS[0].0, CHECKPOINTS[1].0);
    // Untimed: the first switch to B also hashes its file (once per data folder), which is not
    // what a switch costs afterwards.
    eprintln!("warm-up: switching to B (hashes it)");
    d.switch_to(b)?;
    d.switch_to(a)?;
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    let mut from = a;
    for round in 0..rounds {
        let to = if from == a { b } else { a };
        // Reset to "only `from` resident": unload frees both (no RAM tier), reload brings `from`
        // back. Then `to` is loaded from its file while `from` stays: a cold switch.
        d.post("/sdapi/v1/unload-checkpoint", &json!({}))?;
        d.post("/sdapi/v1/reload-checkpoint", &json!({}))?;
        cold.push(d.switch_to(to)?);
        // Both resident now: switching either way loads nothing.
        cached.push(d.switch_to(from)?);
        cached.push(d.switch_to(to)?);
        eprintln!(
            "round {}/{rounds}: cold {:.0} ms, cached {:.1} / {:.1} ms",
            round + 1,
            cold[round],
            cached[2 * round],
            cached[2 * round + 1]
        );
        from = to;
    }
    d.stop()?;
    let (cold_ms, cached_ms) = (median(cold.clone()), median(cached.clone()));
    Ok(json!({
        "startup_load_s": round3(startup_s),
        "cold_switch_ms": round3(cold_ms),
        "cached_switch_ms": round3(cached_ms),
        "cold_over_cached": round3(cold_ms / cached_ms),
        "cold_samples": cold.len(),
        "cached_samples": cached.len(),
    }))
}

/// Median end-to-end txt2img over HTTP, and the same generation through the library directly.
fn bench_overhead(data_dir: &Path, device: &str, requests: usize) -> AnyResult<Value> {
    let ckpt_dir = data_dir.join("models/Stable-diffusion");
    std::fs::create_dir_all(&ckpt_dir)?;
    std::fs::copy(TINY, ckpt_dir.join("tiny-sd15.safetensors"))?;
    let args: Vec<String> = ["--device", device, "--data-dir", &data_dir.to_string_lossy()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let d = Daemon::start(&args)?;
    let body = json!({
        "prompt": PROMPT,
        "negative_prompt": "",
        "seed": SEED,
        "subseed": SEED,
        "steps": 1,
        "width": 32,
        "height": 32,
        "cfg_scale": 7.0,
        "sampler_name": "Euler",
        "scheduler": "Automatic",
    });
    // The library side, on the same device and in the same process (so the same libtorch
    // threads and allocator).
    let device = parse_device(device).ok_or("--device: expected cpu, cuda or cuda:N")?;
    let placement = Placement::for_device(device, false);
    let model = StableDiffusion::load(Path::new(TINY), placement)?;
    let spec = Txt2ImgSpec {
        scheduler: Some("Automatic".into()),
        ..Txt2ImgSpec::single(PROMPT, "", SEED, 1, 7.0, 32, 32, "Euler")
    };
    let http = || -> AnyResult<f64> {
        let t = Instant::now();
        let answer = d.post("/sdapi/v1/txt2img", &body)?;
        let took = ms(t);
        if answer["images"].as_array().map_or(0, Vec::len) != 1 {
            return Err(format!("txt2img answered without one image: {answer}").into());
        }
        Ok(took)
    };
    // The engine builds the tokenizer and embedding table per job; timed apart, so the overhead
    // figure can be read with and without it.
    let direct = || -> AnyResult<(f64, f64)> {
        let t = Instant::now();
        let text = TextEncoders::new(&model, &[])?;
        let encoders_ms = ms(t);
        let t = Instant::now();
        // The images come back on the host, which waits for the device: no explicit sync needed.
        let images = txt2img(&model, &text, &spec, &mut |_, _, _| Control::Continue, &mut || false)?;
        let took = ms(t);
        if images.len() != 1 {
            return Err("the library call made no image".into());
        }
        Ok((took, encoders_ms))
    };
    // Interleaved, so a background load (other processes on a shared machine) weighs on both
    // sides alike instead of on whichever ran while it lasted.
    let warmup = 3;
    let (mut e2e, mut engine, mut encoders) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + requests {
        let (took_http, (took_engine, took_encoders)) = if i % 2 == 0 {
            (http()?, direct()?)
        } else {
            let de = direct()?;
            (http()?, de)
        };
        if i >= warmup {
            e2e.push(took_http);
            engine.push(took_engine);
            encoders.push(took_encoders);
        }
    }
    d.stop()?;
    let (e2e_ms, engine_ms, text_ms) = (median(e2e), median(engine), median(encoders));
    Ok(json!({
        "txt2img_requests": requests,
        "e2e_ms": round3(e2e_ms),
        "engine_ms": round3(engine_ms),
        "overhead_ms": round3(e2e_ms - engine_ms),
        "text_encoders_setup_ms": round3(text_ms),
        "overhead_without_text_setup_ms": round3(e2e_ms - engine_ms - text_ms),
    }))
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn main() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let device = arg("--device").unwrap_or_else(|| "cpu".into());
    parse_device(&device).ok_or("--device: expected cpu, cuda or cuda:N")?;
    let switches: usize = arg("--switches").and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let requests: usize = arg("--requests").and_then(|s| s.parse().ok()).unwrap_or(20).max(1);
    let skip_switching = args.iter().any(|a| a == "--no-switching");

    let scratch = tempfile::tempdir()?;
    let ckpt_dir: PathBuf = match arg("--cache-dir") {
        Some(dir) => PathBuf::from(dir),
        None => scratch.path().join("checkpoints"),
    };
    let mut out = json!({
        "bench": "daemon",
        "device": device,
        "threads": tch::get_num_threads(),
    });
    if !skip_switching {
        let write_s = ensure_checkpoints(&ckpt_dir)?;
        let size: u64 =
            CHECKPOINTS.iter().map(|(n, _)| std::fs::metadata(ckpt_dir.join(n)).map_or(0, |m| m.len())).sum();
        out["checkpoint_write_s"] = json!(round3(write_s));
        out["checkpoint_file_mb"] = json!(size / 2 / (1 << 20));
        let switching = bench_switching(&scratch.path().join("data-switch"), &ckpt_dir, &device, switches)?;
        out["switching"] = switching;
    }
    out["overhead"] = bench_overhead(&scratch.path().join("data-tiny"), &device, requests)?;
    println!("{out}");
    Ok(())
}
