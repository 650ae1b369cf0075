//! Set-up shared by the training tests that run the tiny checkpoint: the lock that serialises
//! libtorch's global generator, and the model.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use models::checkpoint::StableDiffusion;
use models::device::Placement;

/// Training seeds and draws from libtorch's global generator; tests run on parallel threads.
static GLOBAL_RNG: Mutex<()> = Mutex::new(());

/// Holds the generator for one test.
pub fn rng() -> MutexGuard<'static, ()> {
    // Tests run one at a time under the lock; one intra-op thread is faster than two on a busy
    // machine for a model this small.
    tch::set_num_threads(1);
    GLOBAL_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The tiny SD1.5-topology checkpoint of the test fixtures, on the CPU.
pub fn tiny() -> StableDiffusion {
    let path =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/tiny-sd15.safetensors"));
    StableDiffusion::load(&path, Placement::cpu()).unwrap()
}
