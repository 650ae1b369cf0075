//! Saving over HTTP: `samples_filename_pattern` names the files as A1111's FilenameGenerator
//! does, and a JPEG or WebP carries the infotext in its EXIF UserComment, readable by Pillow (what
//! A1111's png-info reads it with, through piexif) as `UNICODE\0` and UTF-16BE text.

use serde_json::json;
use tests::{fixture, TestDaemon};

#[test]
fn saving_jpeg_uses_the_filename_pattern_and_exif_user_comment() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let set = d
        .post(
            "/sdapi/v1/options",
            &json!({"samples_format": "jpg", "save_to_dirs": false,
                    "samples_filename_pattern": "[seed]-[steps]-[sampler]-[model_name]-[prompt_words]"}),
        )
        .unwrap();
    assert_eq!(set.status, 200, "{}", set.text);
    let answer = d
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "a red cube, «studio» light", "seed": 77, "steps": 2, "width": 64,
                    "height": 64, "sampler_name": "Euler", "save_images": true}),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    let info: serde_json::Value = serde_json::from_str(answer.json["info"].as_str().unwrap()).unwrap();
    let infotext = info["infotexts"][0].as_str().unwrap().to_string();

    let dir = d.data_dir.path().join("outputs/txt2img-images");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected = "00000-77-2-Euler-tiny-sd15-a red cube «studio» light.jpg";
    assert_eq!(names, [expected]);
    let path = dir.join(expected);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(daemon::images::read_user_comment(&bytes).as_deref(), Some(infotext.as_str()));

    // Pillow reads the Exif IFD's UserComment (0x9286) as A1111's layout.
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let script = "import sys; from PIL import Image\n\
                  im = Image.open(sys.argv[1]); assert im.format == 'JPEG'\n\
                  c = im.getexif().get_ifd(0x8769)[0x9286]\n\
                  assert c[:8] == b'UNICODE\\0', c[:8]\n\
                  sys.stdout.buffer.write(c[8:].decode('utf-16-be').encode('utf-8'))";
    let pillow = |path: &std::path::Path| {
        let out = std::process::Command::new(&python).args(["-c", script]).arg(path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(pillow(&path), infotext);

    // png-info reads it back from the JPEG, as A1111 does.
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes);
    let read = d.post("/sdapi/v1/png-info", &json!({"image": encoded})).unwrap();
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.json["info"], infotext.as_str());
    assert_eq!(read.json["items"]["exif comment"], infotext.as_str());
    assert_eq!(read.json["parameters"]["Seed"], "77", "{}", read.json["parameters"]);

    // WebP (lossless) carries it in its EXIF chunk.
    let set = d.post("/sdapi/v1/options", &json!({"samples_format": "webp"})).unwrap();
    assert_eq!(set.status, 200, "{}", set.text);
    let answer = d
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "a red cube", "seed": 78, "steps": 2, "width": 64, "height": 64,
                    "sampler_name": "Euler", "save_images": true}),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    let info: serde_json::Value = serde_json::from_str(answer.json["info"].as_str().unwrap()).unwrap();
    let path = dir.join("00001-78-2-Euler-tiny-sd15-a red cube.webp");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(daemon::images::read_user_comment(&bytes).as_deref(), info["infotexts"][0].as_str());
    let script = script.replace("'JPEG'", "'WEBP'");
    let out = std::process::Command::new(&python).args(["-c", &script]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(Some(String::from_utf8(out.stdout).unwrap().as_str()), info["infotexts"][0].as_str());
}
