//! ESRGAN upscalers: parity with spandrel (the loader A1111 1.10 uses) on a tiny random-weight
//! RRDBNet stored in the old ESRGAN layout (`.pth`), the Real-ESRGAN layout wrapped in
//! `params_ema` (`.pth`) and flat (`.safetensors`), and A1111's tiled inference against its
//! `upscale_with_model` (goldens from reference/gen_upscaler_fixtures.py).

use std::path::PathBuf;

use models::device::Placement;
use models::error::Error;
use models::upscale::esrgan::canonical_names;
use models::upscale::{tiling, Esrgan, EsrganConfig, RgbBuffer};
use models::weights::safetensors_file::SafetensorsFile;
use models::weights::TensorSource;
use tch::{Kind, Tensor};

/// Largest |ours − reference| allowed, relative to max |reference|, in fp32 on CPU.
const TOLERANCE: f64 = 1e-4;

const MODELS: [&str; 3] = ["tiny-esrgan-old.pth", "tiny-esrgan-new.pth", "tiny-esrgan-new.safetensors"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/esrgan")).join(name)
}

fn golden(name: &str) -> Tensor {
    SafetensorsFile::open(fixture("golden.safetensors")).unwrap().read(name).unwrap()
}

fn load(name: &str) -> Esrgan {
    Esrgan::load(&fixture(name), Placement::cpu()).unwrap()
}

#[test]
fn esrgan_every_layout_infers_the_same_config() {
    let expected = EsrganConfig { in_nc: 3, out_nc: 3, nf: 8, nb: 2, gc: 32, upsamples: 2, unshuffle: 1 };
    for name in MODELS {
        let model = load(name);
        assert_eq!(model.config(), expected, "{name}");
        assert_eq!(model.scale(), 4, "{name}");
    }
}

#[test]
fn esrgan_forward_matches_spandrel_within_1e4() {
    let input = golden("net_input");
    let reference = golden("net_output");
    let scale = f64::try_from(reference.abs().max()).unwrap();
    // The reference must depend on the input, or the comparison would only test the biases.
    assert!(f64::try_from(reference.std(true)).unwrap() > 0.01);
    for name in MODELS {
        let out = load(name).forward(&input);
        assert_eq!(out.size(), reference.size(), "{name}");
        let err = f64::try_from((&out - &reference).abs().max()).unwrap() / scale;
        eprintln!("{name}: relative error {err:e}");
        assert!(err < TOLERANCE, "{name}: relative error {err:e}");
    }
}

fn check_tiled(case: &str) {
    let input = golden(&format!("{case}_input"));
    let reference = golden(&format!("{case}_output"));
    let settings = Vec::<i64>::try_from(golden(&format!("{case}_tile"))).unwrap();
    let (h, w) = (input.size()[0] as u32, input.size()[1] as u32);
    let image = RgbBuffer::new(w, h, Vec::<u8>::try_from(input.view([-1])).unwrap()).unwrap();
    let out =
        tiling::upscale(&load(MODELS[0]), &image, settings[0] as u32, settings[1] as u32, &|| false).unwrap();
    assert_eq!((out.height as i64, out.width as i64), (reference.size()[0], reference.size()[1]));
    let ours = Tensor::from_slice(&out.data).to_kind(Kind::Int16);
    let theirs = reference.view([-1]).to_kind(Kind::Int16);
    let diff = (&ours - &theirs).abs();
    let max = i64::try_from(diff.max()).unwrap();
    let off = i64::try_from(diff.gt(0).sum(Kind::Int64)).unwrap();
    eprintln!("{case}: max difference {max} levels, {off} of {} values differ", ours.numel());
    assert!(max <= 1, "{case}: max difference {max} levels ({off} values differ)");
    // Float rounding may flip a truncation here and there, never broadly.
    assert!(off * 100 < ours.numel() as i64, "{case}: {off} values differ");
}

#[test]
fn tiled_upscale_overlapping_tiles_match_a1111_within_one_level() {
    check_tiled("tiled_small");
}

#[test]
fn tiled_upscale_image_smaller_than_tile_matches_a1111_within_one_level() {
    check_tiled("tiled_default");
}

#[test]
fn tiled_upscale_interrupted_stops_before_the_first_tile() {
    let image = RgbBuffer::new(40, 40, vec![128; 40 * 40 * 3]).unwrap();
    let out = tiling::upscale(&load(MODELS[2]), &image, 32, 8, &|| true).unwrap();
    assert_eq!((out.width, out.height), (160, 160));
    assert!(out.data.iter().all(|&v| v == 0));
}

#[test]
fn canonical_names_module_prefix_and_bsrgan_names_are_recognised() {
    let names: Vec<String> = [
        "conv_first.weight",
        "RRDB_trunk.0.RDB1.conv1.weight",
        "trunk_conv.weight",
        "upconv1.weight",
        "HRconv.weight",
        "conv_last.weight",
    ]
    .iter()
    .map(|n| format!("module.{n}"))
    .collect();
    let map = canonical_names(&names).unwrap();
    assert_eq!(map["body.0.rdb1.conv1.weight"], "module.RRDB_trunk.0.RDB1.conv1.weight");
    assert_eq!(map["conv_body.weight"], "module.trunk_conv.weight");
    assert_eq!(map["conv_up1.weight"], "module.upconv1.weight");
    assert_eq!(map["conv_hr.weight"], "module.HRconv.weight");
}

#[test]
fn esrgan_load_checkpoint_file_is_refused_with_unknown_format() {
    let path =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/tiny-sd15.safetensors"));
    match Esrgan::load(&path, Placement::cpu()) {
        Err(Error::UnknownFormat { reason, .. }) => assert!(reason.contains("ESRGAN"), "{reason}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a Stable Diffusion checkpoint loaded as an upscaler"),
    }
}
