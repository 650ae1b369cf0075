//! The checkpoint-load progress observer: every CLIP, UNet and VAE tensor read is reported, from
//! 0 up to the total, for the file being loaded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use models::checkpoint::{set_load_progress, StableDiffusion};
use models::device::Placement;

#[test]
fn load_progress_reports_every_tensor_from_zero_to_total() {
    let path =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/tiny-sd15.safetensors"));
    let seen: Arc<Mutex<Vec<(PathBuf, usize, usize)>>> = Arc::default();
    let sink = seen.clone();
    assert!(set_load_progress(Box::new(move |p: &Path, done, total| {
        sink.lock().unwrap().push((p.to_path_buf(), done, total))
    })));
    // Only the first observer is kept.
    assert!(!set_load_progress(Box::new(|_: &Path, _, _| {})));
    StableDiffusion::load(&path, Placement::cpu()).unwrap();
    let seen = seen.lock().unwrap();
    let total = seen[0].2;
    assert!(total > 100, "the tiny model has a few hundred tensors, got {total}");
    assert_eq!(seen[0].1, 0);
    assert_eq!(seen.last().unwrap().1, total, "the last report is complete");
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1 && w[1].2 == total), "counts only grow");
    assert!(seen.iter().all(|(p, _, _)| p == &path));
}
