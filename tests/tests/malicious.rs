//! A `.ckpt` whose pickle would run a shell command under a naive unpickler is refused, the
//! refusal names the global, and nothing runs — through the library and through the daemon.

use models::checkpoint;
use models::Error;
use tests::{fixture, TestDaemon};

const MARKER: &str = "/tmp/diffusiond-pwned-marker";

#[test]
fn malicious_ckpt_is_refused_naming_the_global_and_nothing_runs() {
    let _ = std::fs::remove_file(MARKER);
    for (file, global) in [("malicious/evil.ckpt", "system"), ("malicious/evil_eval.ckpt", "eval")] {
        let err = checkpoint::open(&fixture(file)).err().expect("must be refused");
        let msg = err.to_string();
        assert!(matches!(err, Error::ForbiddenGlobal { .. }), "{file}: {msg}");
        assert!(msg.contains(global), "{file}: {msg}");
    }
    assert!(!std::path::Path::new(MARKER).exists(), "the payload ran");
}

#[test]
fn daemon_refuses_to_start_on_malicious_ckpt() {
    let _ = std::fs::remove_file(MARKER);
    let err = TestDaemon::start(&[fixture("malicious/evil.ckpt")], &[]).err().expect("must not start");
    let msg = format!("{err:#}");
    assert!(msg.contains("system") && msg.contains("evil.ckpt"), "{msg}");
    assert!(!std::path::Path::new(MARKER).exists(), "the payload ran");
}
