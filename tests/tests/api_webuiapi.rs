//! The `webuiapi` Python client (0.9.17, the de-facto A1111 client) against a real daemon with
//! `--api-auth`: model listing and switching by fuzzy name, options round trip, every list
//! getter, interrupt/skip, png-info, extras, txt2img (same seed, same image) and img2img. `make
//! test` installs the client into `.venv` (`reference/requirements-clients.txt`).

use tests::{fixture, TestDaemon};

const SCRIPT: &str = r#"
import io, sys, webuiapi
from PIL import Image, PngImagePlugin

api = webuiapi.WebUIApi(baseurl=sys.argv[1] + "/sdapi/v1", username="alice", password="s3cret")
assert len(api.util_get_model_names()) == 2, api.util_get_model_names()
api.util_set_model("tiny-sd15.safetensors")
current = api.util_get_current_model()
assert current.startswith("tiny-sd15.safetensors ["), current
api.util_wait_for_ready(check_interval=0.1)
options = api.get_options()
assert api.set_options(options) is None
assert api.get_options()["sd_model_checkpoint"] == current
assert "Euler a" in api.util_get_sampler_names()
assert "karras" in api.util_get_scheduler_names()
assert api.get_upscalers()[0]["name"] == "None"
assert api.get_latent_upscale_modes()[0]["name"] == "Latent"
for getter in (api.get_loras, api.get_sd_vae, api.get_hypernetworks, api.get_face_restorers,
               api.get_realesrgan_models, api.get_prompt_styles, api.get_embeddings, api.get_memory,
               api.get_cmd_flags, api.get_scripts):
    getter()
assert not api.has_controlnet
assert api.interrupt() == {}
assert api.skip() is None

meta = PngImagePlugin.PngInfo()
meta.add_text("parameters", "cat\nSteps: 2, Seed: 1")
buf = io.BytesIO()
Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, "PNG", pnginfo=meta)
image = Image.open(io.BytesIO(buf.getvalue()))
assert api.png_info(image).info == "cat\nSteps: 2, Seed: 1"
upscaled = api.extra_single_image(image=image, upscaler_1="Lanczos", upscaling_resize=2)
assert upscaled.image.size == (16, 16), upscaled.image.size

result = api.txt2img(prompt="cat", steps=2, width=64, height=64, seed=7, sampler_name="Euler a")
assert result.image.size == (64, 64), result.image.size
assert result.info["seed"] == 7 and result.info["sampler_name"] == "Euler a", result.info
again = api.txt2img(prompt="cat", steps=2, width=64, height=64, seed=7, sampler_name="Euler a")
assert list(again.image.getdata()) == list(result.image.getdata()), "same seed, different image"
init = Image.new("RGB", (64, 64), (120, 80, 40))
edited = api.img2img(images=[init], prompt="cat", steps=4, width=64, height=64, seed=3, denoising_strength=0.5)
assert edited.image.size == (64, 64) and edited.info["seed"] == 3, edited.info
print("webuiapi ok")
"#;

#[test]
fn webuiapi_client_talks_to_the_daemon_unchanged() {
    let d = TestDaemon::start(
        &[fixture("tiny/tiny-sd15.safetensors"), fixture("tiny/tiny-sd15.ckpt")],
        &["--api-auth", "alice:s3cret"],
    )
    .unwrap();
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let out = std::process::Command::new(python).args(["-c", SCRIPT, &d.base]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("webuiapi ok"), "{stdout}");
}
