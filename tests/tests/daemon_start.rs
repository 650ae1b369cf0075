//! The daemon starts on a data folder it has never seen, creates A1111's layout, lists the
//! checkpoint it finds and loads it. The start-up checkpoint is hashed while it loads, so its
//! title is `name [hash10]` from the first request on.

use tests::{fixture, short_hash, TestDaemon};

#[test]
fn daemon_starts_on_new_data_folder_and_loads_unseen_checkpoint() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    for dir in ["models/Lora", "models/VAE", "models/ESRGAN", "embeddings", "wildcards", "outputs"] {
        assert!(d.data_dir.path().join(dir).is_dir(), "{dir} not created");
    }
    let models = d.get_json("/sdapi/v1/sd-models").unwrap();
    let list = models.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let hash = short_hash(&fixture("tiny/tiny-sd15.safetensors"));
    let title = format!("tiny-sd15.safetensors [{hash}]");
    assert_eq!(list[0]["title"], title.as_str());
    assert_eq!(list[0]["model_name"], "tiny-sd15");
    assert_eq!(list[0]["hash"], hash.as_str());
    let options = d.get_json("/sdapi/v1/options").unwrap();
    assert_eq!(options["sd_model_checkpoint"], title.as_str());
    let arch = options["diffusiond_architecture"].as_str().unwrap();
    assert!(arch.starts_with("SD1.x: UNet 32 ch"), "{arch}");
}

#[test]
fn daemon_loads_diffusers_folder_and_ckpt_by_name() {
    let d = TestDaemon::start(
        &[fixture("tiny/tiny-sd15-diffusers"), fixture("tiny/tiny-sd15.ckpt")],
        &["--ckpt", "tiny-sd15-diffusers"],
    )
    .unwrap();
    let options = d.get_json("/sdapi/v1/options").unwrap();
    assert_eq!(options["sd_model_checkpoint"], "tiny-sd15-diffusers", "folders are never hashed");
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.ckpt")], &[]).unwrap();
    let options = d.get_json("/sdapi/v1/options").unwrap();
    let hash = short_hash(&fixture("tiny/tiny-sd15.ckpt"));
    assert_eq!(options["sd_model_checkpoint"], format!("tiny-sd15.ckpt [{hash}]").as_str());
}
