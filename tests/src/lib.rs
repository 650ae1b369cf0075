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

/// A daemon running in-process on 127.0.0.1 with an ephemeral port. Dropping it asks the daemon
/// to stop; [`TestDaemon::stop`] also waits until it has.
pub struct TestDaemon {
    pub base: String,
    pub data_dir: tempfile::TempDir,
    server: Option<std::thread::JoinHandle<Result<(), daemon::RunError>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// An HTTP answer: status, headers (lower-case names) and the body parsed as JSON (`Null` when
/// it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: std::collections::HashMap<String, String>,
    pub json: serde_json::Value,
    pub text: String,
}

impl TestDaemon {
    /// Starts the daemon on a fresh data folder into which `checkpoints` are copied (under
    /// `models/Stable-diffusion/`), with extra command-line `args`. Returns once it answers.
    pub fn start(checkpoints: &[PathBuf], args: &[&str]) -> anyhow::Result<TestDaemon> {
        let data_dir = tempfile::tempdir()?;
        let ckpt_dir = data_dir.path().join("models/Stable-diffusion");
        std::fs::create_dir_all(&ckpt_dir)?;
        for c in checkpoints {
            copy_recursively(c, &ckpt_dir.join(c.file_name().expect("file name")))?;
        }
        Self::start_in(data_dir, args)
    }

    /// Starts the daemon on an existing data folder (e.g. one a stopped daemon used).
    pub fn start_in(data_dir: tempfile::TempDir, args: &[&str]) -> anyhow::Result<TestDaemon> {
        use clap::Parser;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        let mut argv = vec!["diffusiond", "--device", "cpu", "--data-dir"];
        let dir = data_dir.path().to_string_lossy().into_owned();
        argv.push(&dir);
        argv.extend_from_slice(args);
        let config = daemon::config::Config::try_parse_from(argv)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(daemon::run_until(config, listener, async move {
                let _ = stopped.await;
            }))
        });
        let daemon = TestDaemon { base, data_dir, server: Some(server), stop: Some(stop) };
        for _ in 0..2400 {
            if ureq::get(&format!("{}/internal/ping", daemon.base)).call().is_ok() {
                return Ok(daemon);
            }
            if daemon.server.as_ref().is_some_and(|s| s.is_finished()) {
                let mut daemon = daemon;
                let result = daemon.server.take().expect("server").join().expect("server thread");
                match result {
                    Err(e) => anyhow::bail!("daemon stopped during start: {e}"),
                    Ok(()) => anyhow::bail!("daemon stopped during start without an error"),
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        anyhow::bail!("daemon did not answer within 120 s")
    }

    /// Stops the daemon, waits for it (engine thread included) and hands back its data folder.
    pub fn stop(mut self) -> anyhow::Result<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        }
        let placeholder = tempfile::tempdir()?;
        Ok(std::mem::replace(&mut self.data_dir, placeholder))
    }

    /// Stops the daemon and starts a new one on the same data folder.
    pub fn restart(self, args: &[&str]) -> anyhow::Result<TestDaemon> {
        let data_dir = self.stop()?;
        Self::start_in(data_dir, args)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(ureq::get(&self.url(path)).call()?.into_json()?)
    }

    /// `GET path` with optional extra headers; any status is an answer, not an error.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
        let mut req = ureq::get(&self.url(path));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        answer(req.call())
    }

    /// `POST path` with a raw body (sent as JSON) and optional extra headers.
    pub fn post_raw(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
        let mut req = ureq::post(&self.url(path)).set("content-type", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        answer(req.send_string(body))
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<Answer> {
        self.post_raw(path, &body.to_string(), &[])
    }

    /// Any method with a raw JSON body (empty for none); any status is an answer.
    pub fn request(&self, method: &str, path: &str, body: &str) -> anyhow::Result<Answer> {
        let req =
            ureq::request(&method.to_uppercase(), &self.url(path)).set("content-type", "application/json");
        answer(if body.is_empty() { req.call() } else { req.send_string(body) })
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> anyhow::Result<Answer> {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| response.header(&name).map(|v| (name.to_lowercase(), v.to_string())))
        .collect();
    let text = response.into_string()?;
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Ok(Answer { status, headers, json, text })
}

/// `Basic <base64(user:pass)>`.
pub fn basic_auth(user_pass: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
}

/// The first 10 hex digits of a file's sha256 (A1111's short hash).
pub fn short_hash(path: &std::path::Path) -> String {
    use sha2::Digest as _;
    let bytes = std::fs::read(path).expect("readable file");
    hex::encode(sha2::Sha256::digest(bytes))[..10].to_string()
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
