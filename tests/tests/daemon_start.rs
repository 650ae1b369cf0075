//! The daemon starts on a data folder it has never seen, creates A1111's layout, lists the
//! checkpoint it finds and loads it.

use tests::{fixture, TestDaemon};

#[test]
fn daemon_starts_on_new_data_folder_and_loads_unseen_checkpoint() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    for dir in ["models/Lora", "models/VAE", "models/ESRGAN", "embeddings", "wildcards", "outputs"] {
        assert!(d.data_dir.path().join(dir).is_dir(), "{dir} not created");
    }
    let models = d.get_json("/sdapi/v1/sd-models").unwrap();
    let list = models.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["title"], "tiny-sd15.safetensors");
    assert_eq!(list[0]["model_name"], "tiny-sd15");
    let options = d.get_json("/sdapi/v1/options").unwrap();
    assert_eq!(options["sd_model_checkpoint"], "tiny-sd15.safetensors");
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
    assert_eq!(options["sd_model_checkpoint"], "tiny-sd15-diffusers");
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.ckpt")], &[]).unwrap();
    let options = d.get_json("/sdapi/v1/options").unwrap();
    assert_eq!(options["sd_model_checkpoint"], "tiny-sd15.ckpt");
}
