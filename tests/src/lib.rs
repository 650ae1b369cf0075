//! Helpers shared by the integration tests: fixture paths, golden tensors, error measures, and a
//! daemon started in-process on a free port.

use std::collections::HashMap;
use std::path::PathBuf;

use models::weights::safetensors_file::SafetensorsFile;
use models::weights::TensorSource;
use tch::Tensor;

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// Every tensor of a golden file (`tests/fixtures/golden/<name>`).
pub fn golden(name: &str) -> HashMap<String, Tensor> {
    let file = SafetensorsFile::open(fixture(&format!("golden/{name}"))).expect("golden file");
    file.names().into_iter().map(|n| (n.clone(), file.read(&n).expect("golden tensor"))).collect()
}

/// max |a − b| / max |b|, in f64.
pub fn max_rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "shape");
    let ours = ours.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
    let reference = reference.to_kind(tch::Kind::Double);
    let diff = (&ours - &reference).abs().max().double_value(&[]);
    diff / reference.abs().max().double_value(&[]).max(1e-30)
}

/// A daemon running in-process on 127.0.0.1 with an ephemeral port.
pub struct TestDaemon {
    pub base: String,
    pub data_dir: tempfile::TempDir,
    server: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl TestDaemon {
    /// Starts the daemon on a fresh data folder into which `checkpoints` are copied (under
    /// `models/Stable-diffusion/`), with extra command-line `args`. Returns once it answers.
    pub fn start(checkpoints: &[PathBuf], args: &[&str]) -> anyhow::Result<TestDaemon> {
        use clap::Parser;
        let data_dir = tempfile::tempdir()?;
        let ckpt_dir = data_dir.path().join("models/Stable-diffusion");
        std::fs::create_dir_all(&ckpt_dir)?;
        for c in checkpoints {
            copy_recursively(c, &ckpt_dir.join(c.file_name().expect("file name")))?;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        let mut argv = vec!["diffusiond", "--device", "cpu", "--data-dir"];
        let dir = data_dir.path().to_string_lossy().into_owned();
        argv.push(&dir);
        argv.extend_from_slice(args);
        let config = daemon::config::Config::try_parse_from(argv)?;
        let server =
            std::thread::spawn(move || actix_web::rt::System::new().block_on(daemon::run(config, listener)));
        let daemon = TestDaemon { base, data_dir, server: Some(server) };
        for _ in 0..600 {
            if ureq::get(&format!("{}/internal/ping", daemon.base)).call().is_ok() {
                return Ok(daemon);
            }
            if daemon.server.as_ref().is_some_and(|s| s.is_finished()) {
                let mut daemon = daemon;
                let result = daemon.server.take().expect("server").join().expect("server thread");
                anyhow::bail!("daemon stopped during start: {:?}", result.err());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        anyhow::bail!("daemon did not answer within 60 s")
    }

    pub fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(ureq::get(&format!("{}{path}", self.base)).call()?.into_json()?)
    }
}

fn copy_recursively(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_recursively(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}
