//! Dataset preparation (training spec §1): the request's images or a kohya-style folder →
//! decoded, EXIF-oriented, cropped and resized RGB images with captions, regularisation pairing
//! and per-image repeats; stored once under `<data-dir>/train/<id>/dataset/` so that a resumed
//! run trains on exactly the same pixels. CPU work: run it off the engine thread and off the
//! async workers. The engine thread turns the stored images into `[3, H, W]` tensors in [−1, 1]
//! ([`load_tensors`]).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use models::train::bucket::BucketSettings;
use models::train::dataset::{batches_per_epoch, caption_for, caption_from_file, pair_regularisation};

use super::request::{ImageItem, Recipe, TrainRequest};
use crate::error::ApiError;
use crate::images::{decode_base64, resize_pil, Pixels, Resample};

/// Image extensions kohya discovers (§1.1), lower case.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];
/// Side files a dataset folder may hold besides images (captions, caches, configs).
const SIDE_EXTENSIONS: &[&str] = &["caption", "txt", "npz", "json", "toml"];

/// One image before decoding: where it came from (for error messages), its bytes and caption.
#[derive(Clone, Debug)]
pub struct Source {
    pub label: String,
    pub bytes: Vec<u8>,
    pub caption: String,
    /// Repeats from a kohya folder name (`N_text`); `None` takes the plan's repeats.
    pub repeats: Option<u32>,
    pub is_reg: bool,
}

/// One prepared image, as stored in `dataset.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// File name inside the dataset folder.
    pub file: String,
    pub caption: String,
    pub is_reg: bool,
    /// Times the image appears per epoch.
    pub repeats: u32,
    pub width: u32,
    pub height: u32,
}

/// A prepared dataset: the entries and their pixels (RGB).
#[derive(Clone, Debug)]
pub struct Prepared {
    pub entries: Vec<Entry>,
    pub pixels: Vec<Pixels>,
    /// Per entry: repeats fixed by a folder name.
    pub folder_repeats: Vec<Option<u32>>,
}

/// The image sources of one side (training or regularisation) of a request.
pub struct SideSpec<'a> {
    pub items: &'a [ImageItem],
    pub dir: Option<&'a str>,
    pub field: &'static str,
    pub default_caption: &'a str,
    pub is_reg: bool,
}

impl<'a> SideSpec<'a> {
    /// The training side (`images`, `dataset_dir`, captioned with `instance_prompt`) and the
    /// regularisation side (`reg_images`, `reg_dir`, `class_prompt`) of a request.
    pub fn of_request(req: &'a TrainRequest) -> [SideSpec<'a>; 2] {
        let side = |items, dir: &'a Option<String>, field, caption: &'a Option<String>, is_reg| SideSpec {
            items,
            dir: dir.as_deref(),
            field,
            default_caption: caption.as_deref().unwrap_or(""),
            is_reg,
        };
        [
            side(&req.images, &req.dataset_dir, "images", &req.instance_prompt, false),
            side(&req.reg_images, &req.reg_dir, "reg_images", &req.class_prompt, true),
        ]
    }
}

/// `rel` under `data_dir`, refusing absolute paths and `..` so a request cannot read elsewhere.
pub fn resolve_dir(data_dir: &Path, rel: &str, field: &str) -> Result<PathBuf, ApiError> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(ApiError::field(
            field,
            format!("`{field}` must be a folder under the data folder, got {rel:?}"),
        ));
    }
    let dir = data_dir.join(p);
    if !dir.is_dir() {
        return Err(ApiError::field(field, format!("`{field}`: no folder {rel:?} under the data folder")));
    }
    Ok(dir)
}

fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase()
}

/// kohya's folder name rule (§1.1): `N_text` → (N, text); `None` when N is no integer ≥ 1.
pub fn parse_folder_name(name: &str) -> Option<(u32, String)> {
    let (head, rest) = name.split_once('_').unwrap_or((name, ""));
    let n: i64 = head.trim().trim_start_matches('+').parse().ok()?;
    (n >= 1).then(|| (n.min(u32::MAX as i64) as u32, rest.to_string()))
}

/// The text of the caption file of `image` (§1.2): `<stem><ext>`, then the legacy face-crop stem
/// with its last four `_` pieces removed.
fn caption_file(image: &Path, ext: &str) -> Option<(PathBuf, String)> {
    let stem = image.file_stem()?.to_str()?;
    let dir = image.parent()?;
    let mut candidates = vec![dir.join(format!("{stem}{ext}"))];
    let pieces: Vec<&str> = stem.split('_').collect();
    if pieces.len() >= 5 {
        candidates.push(dir.join(format!("{}{ext}", pieces[..pieces.len() - 4].join("_"))));
    }
    candidates.into_iter().find_map(|c| std::fs::read_to_string(&c).ok().map(|text| (c, text)))
}

/// Images of one folder, sorted by path (kohya sorts them), plus the files that are neither
/// images nor side files.
fn folder_images(dir: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut images = Vec::new();
    let mut strays = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if !path.is_file() || hidden {
            continue;
        }
        let ext = extension(&path);
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            images.push(path);
        } else if !SIDE_EXTENSIONS.contains(&ext.as_str()) {
            strays.push(path);
        }
    }
    images.sort();
    strays.sort();
    Ok((images, strays))
}

/// Collects the sources of one side. `bad` receives every item that is not an image.
pub fn collect(
    side: &SideSpec,
    data_dir: &Path,
    recipe: &Recipe,
    bad: &mut Vec<String>,
) -> Result<Vec<Source>, ApiError> {
    let mut out = Vec::new();
    for (i, item) in side.items.iter().enumerate() {
        let label = format!("{}[{i}]", side.field);
        match decode_base64(&item.image) {
            Ok(bytes) => out.push(Source {
                label,
                bytes,
                caption: caption_for(item.caption.as_deref(), side.default_caption),
                repeats: side.is_reg.then_some(1),
                is_reg: side.is_reg,
            }),
            Err(_) => bad.push(label),
        }
    }
    let Some(rel) = side.dir else { return Ok(out) };
    let field = if side.is_reg { "reg_dir" } else { "dataset_dir" };
    let root = resolve_dir(data_dir, rel, field)?;
    let io = |e: std::io::Error| ApiError::field(field, format!("`{field}`: {e}"));
    // kohya's layout: `N_text` sub-folders give repeats and a fallback caption. Images placed
    // directly in the folder are used too (with the request's repeats), which kohya ignores.
    let mut folders: Vec<(PathBuf, Option<u32>, Option<String>)> = Vec::new();
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for dir in subdirs {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        match parse_folder_name(&name) {
            Some((n, text)) => folders.push((dir, Some(n), Some(text))),
            None => tracing::warn!(folder = %dir.display(), "ignore directory without repeats"),
        }
    }
    folders.push((root.clone(), side.is_reg.then_some(1), None));
    for (dir, n, text) in folders {
        let (images, strays) = folder_images(&dir).map_err(io)?;
        for stray in strays {
            bad.push(stray.strip_prefix(data_dir).unwrap_or(&stray).display().to_string());
        }
        for path in images {
            let bytes = std::fs::read(&path).map_err(io)?;
            let folder_text = text.as_deref().unwrap_or(side.default_caption);
            let caption = match caption_file(&path, &recipe.caption_extension) {
                // kohya refuses a caption file with no lines rather than falling back.
                Some((file, text)) => caption_from_file(&text).ok_or_else(|| {
                    let file = file.strip_prefix(data_dir).unwrap_or(&file).display().to_string();
                    ApiError::field(field, format!("`{field}`: the caption file {file} is empty"))
                })?,
                None => folder_text.to_string(),
            };
            out.push(Source {
                label: path.strip_prefix(data_dir).unwrap_or(&path).display().to_string(),
                bytes,
                caption,
                repeats: n,
                is_reg: side.is_reg,
            });
        }
    }
    Ok(out)
}

/// Decodes `bytes` to RGB with the EXIF orientation applied; alpha is dropped as kohya's
/// `convert("RGB")` does.
pub fn decode_oriented(bytes: &[u8]) -> Option<Pixels> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok()?;
    let mut decoder = reader.into_decoder().ok()?;
    let orientation = decoder.orientation().ok()?;
    let mut img = DynamicImage::from_decoder(decoder).ok()?;
    img.apply_orientation(orientation);
    let rgb = img.to_rgb8();
    Some(Pixels::new(rgb.width(), rgb.height(), 3, rgb.into_raw()))
}

/// Centre crop of `img` to `w`×`h` (offset = excess div 2 per axis, §1.7).
fn centre_crop(img: &Pixels, w: u32, h: u32) -> Pixels {
    let (x, y) = ((img.width - w) / 2, (img.height - h) / 2);
    img.crop(x, y, x + w, y + h)
}

/// kohya's bucket settings for a recipe. `min_bucket_reso` / `max_bucket_reso` are not part of
/// the request: sd-scripts' 256 and 1024, widened to include `resolution` (kohya would refuse a
/// resolution outside them).
pub fn bucket_settings(recipe: &Recipe) -> BucketSettings {
    let r = recipe.resolution;
    BucketSettings {
        resolution: (r, r),
        steps: recipe.bucket_reso_steps,
        min: 256.min(r),
        max: 1024.max(r),
        no_upscale: recipe.bucket_no_upscale,
    }
}

/// Crops and resizes one decoded image as the recipe says: `crop_square` → centre square at
/// `resolution`²; else resized and centre-cropped to its bucket (`None` when the image is smaller
/// than one bucket step).
pub fn fit(img: &Pixels, recipe: &Recipe) -> Option<Pixels> {
    if recipe.crop_square {
        let side = img.width.min(img.height);
        let square = centre_crop(img, side, side);
        let r = recipe.resolution;
        return Some(resize_pil(&square, r, r, Resample::Lanczos, None));
    }
    let a = bucket_settings(recipe).assign_all(&[(img.width, img.height)]).ok()?[0];
    let resized = if (a.resized_w, a.resized_h) == (img.width, img.height) {
        img.clone()
    } else {
        resize_pil(img, a.resized_w, a.resized_h, Resample::Lanczos, None)
    };
    Some(resized.crop(a.crop_left, a.crop_top, a.crop_left + a.bucket_w, a.crop_top + a.bucket_h))
}

/// Decodes and fits every source; every undecodable one, and every one smaller than one bucket
/// step, is listed in one 422.
pub fn prepare(sources: Vec<Source>, recipe: &Recipe, bad: Vec<String>) -> Result<Prepared, ApiError> {
    let mut entries = Vec::new();
    let mut pixels = Vec::new();
    let mut folder_repeats = Vec::new();
    let not_image = |label: String| (label.clone(), format!("not an image (png, jpeg or webp): {label}"));
    let mut problems: Vec<(String, String)> = bad.into_iter().map(not_image).collect();
    for s in sources {
        let Some(img) = decode_oriented(&s.bytes) else {
            problems.push(not_image(s.label));
            continue;
        };
        let Some(fitted) = fit(&img, recipe) else {
            let msg = format!(
                "{}: a {}×{} image is smaller than one bucket step ({} px) and has no bucket",
                s.label, img.width, img.height, recipe.bucket_reso_steps
            );
            problems.push((s.label, msg));
            continue;
        };
        entries.push(Entry {
            file: format!("{:04}.png", entries.len()),
            caption: s.caption,
            is_reg: s.is_reg,
            repeats: s.repeats.unwrap_or(1),
            width: fitted.width,
            height: fitted.height,
        });
        pixels.push(fitted);
        folder_repeats.push(s.repeats);
    }
    if !problems.is_empty() {
        return Err(ApiError::Validation(compat::api::ValidationBody {
            detail: problems
                .into_iter()
                .map(|(label, msg)| compat::api::ValidationItem {
                    loc: vec!["body".into(), label.into()],
                    msg,
                    kind: "value_error.image".into(),
                    ctx: None,
                })
                .collect(),
        }));
    }
    Ok(Prepared { entries, pixels, folder_repeats })
}

/// Batches in one epoch (§2) as the session will count them: entries (with repeats) grouped by
/// image size, one bucket per size.
pub fn steps_per_epoch(entries: &[Entry], batch: u32) -> u64 {
    let mut buckets: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for e in entries {
        *buckets.entry((e.width, e.height)).or_default() += u64::from(e.repeats);
    }
    batches_per_epoch(buckets.into_values(), u64::from(batch))
}

/// The entries with the training images' repeats set to `repeats` (those given by a folder name
/// keep theirs) and the regularisation images paired to the resulting sample count.
pub fn with_repeats(prepared: &Prepared, repeats: u32) -> Vec<Entry> {
    let mut entries = prepared.entries.clone();
    let mut train_samples = 0u64;
    let mut reg_folder = Vec::new();
    for (e, fixed) in entries.iter_mut().zip(&prepared.folder_repeats) {
        if e.is_reg {
            reg_folder.push(fixed.unwrap_or(1));
        } else {
            e.repeats = fixed.unwrap_or(repeats);
            train_samples += e.repeats as u64;
        }
    }
    // The session pairs again from these counts and gets the same ones: they already sum to the
    // train total in kohya's walk order.
    let counts = pair_regularisation(train_samples, &reg_folder);
    for (e, n) in entries.iter_mut().filter(|e| e.is_reg).zip(counts) {
        e.repeats = n;
    }
    entries
}

/// Writes the images as PNG and `entries` (with their final repeats) as `dataset.json` into `dir`.
pub fn store(prepared: &Prepared, entries: &[Entry], dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (e, px) in entries.iter().zip(&prepared.pixels) {
        let img = crate::engine::job::RgbImage { width: px.width, height: px.height, rgb: px.data.clone() };
        let png = crate::images::encode_png(&img, &[]).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&dir.join(&e.file), &png)?;
    }
    let json = serde_json::to_vec_pretty(entries).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&dir.join("dataset.json"), &json)
}

/// Reads `dataset.json` of a stored dataset.
pub fn read_entries(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let bytes = std::fs::read(dir.join("dataset.json"))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// The stored images as `[3, H, W]` float tensors in [−1, 1] (`x / 127.5 − 1`), with their
/// entries; regularisation images with no repeats are left out.
pub fn load_tensors(dir: &Path) -> std::io::Result<Vec<(Entry, Tensor)>> {
    let mut out = Vec::new();
    for e in read_entries(dir)? {
        if e.repeats == 0 {
            continue;
        }
        let img = image::open(dir.join(&e.file)).map_err(std::io::Error::other)?.to_rgb8();
        let (w, h) = (img.width() as i64, img.height() as i64);
        let t =
            Tensor::from_slice(img.as_raw()).reshape([h, w, 3]).permute([2, 0, 1]).to_kind(tch::Kind::Float)
                / 127.5
                - 1.0;
        out.push((e, t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(label: &str, bytes: Vec<u8>) -> Source {
        Source { label: label.into(), bytes, caption: "c".into(), repeats: None, is_reg: false }
    }

    fn recipe(body: serde_json::Value) -> Recipe {
        serde_json::from_value::<TrainRequest>(body).unwrap().resolve("x", "base", false).unwrap()
    }

    #[test]
    fn parse_folder_name_follows_kohya() {
        assert_eq!(parse_folder_name("20_ohwx man"), Some((20, "ohwx man".into())));
        assert_eq!(parse_folder_name("10_my_subject"), Some((10, "my_subject".into())));
        assert_eq!(parse_folder_name("5_"), Some((5, String::new())));
        assert_eq!(parse_folder_name("+3_x"), Some((3, "x".into())));
        assert_eq!(parse_folder_name("0_x"), None);
        assert_eq!(parse_folder_name("photos"), None);
    }

    #[test]
    fn decode_oriented_applies_exif_rotation() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/train_images/4_ohwx cube");
        // a3.jpg is stored 72×64 with orientation 6 (rotate 90° clockwise on display).
        let rotated = decode_oriented(&std::fs::read(format!("{dir}/a3.jpg")).unwrap()).unwrap();
        assert_eq!((rotated.width, rotated.height), (64, 72));
        let plain = decode_oriented(&std::fs::read(format!("{dir}/a1.jpg")).unwrap()).unwrap();
        assert_eq!((plain.width, plain.height), (72, 64));
        let webp = decode_oriented(&std::fs::read(format!("{dir}/a2.webp")).unwrap()).unwrap();
        assert_eq!((webp.width, webp.height), (72, 64));
        assert!(decode_oriented(b"not an image").is_none());
    }

    #[test]
    fn prepare_lists_every_non_image() {
        let r = recipe(serde_json::json!({"resolution": 64}));
        let img = crate::engine::job::RgbImage { width: 80, height: 64, rgb: vec![7; 80 * 64 * 3] };
        let png = crate::images::encode_png(&img, &[]).unwrap();
        let ok = prepare(vec![src("images[0]", png.clone())], &r, vec![]).unwrap();
        assert_eq!((ok.pixels[0].width, ok.pixels[0].height), (64, 64));
        let err = prepare(
            vec![src("images[0]", png), src("images[1]", b"text".to_vec())],
            &r,
            vec!["images[2]".into()],
        )
        .unwrap_err();
        let ApiError::Validation(v) = err else { panic!("not a validation error") };
        let labels: Vec<_> = v.detail.iter().map(|d| d.loc[1].clone()).collect();
        assert_eq!(labels, vec![serde_json::json!("images[2]"), serde_json::json!("images[1]")]);
    }

    #[test]
    fn prepare_buckets_crop_to_the_assigned_bucket_and_refuse_tiny_images() {
        let r = recipe(serde_json::json!({"resolution": 128, "crop_square": false}));
        let png = |w: u32, h: u32| {
            let rgb = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
            crate::images::encode_png(&crate::engine::job::RgbImage { width: w, height: h, rgb }, &[])
                .unwrap()
        };
        // 80×64 is within 128² (no upscaling): never scaled, cut to the 64×64 bucket 8 px from the left.
        let ok = prepare(vec![src("images[0]", png(80, 64))], &r, vec![]).unwrap();
        let original = decode_oriented(&png(80, 64)).unwrap();
        assert_eq!(ok.pixels[0], original.crop(8, 0, 72, 64));
        assert_eq!((ok.entries[0].width, ok.entries[0].height), (64, 64));
        let err = prepare(vec![src("images[0]", png(80, 64)), src("images[1]", png(40, 32))], &r, vec![])
            .unwrap_err();
        let ApiError::Validation(v) = err else { panic!("not a validation error") };
        assert_eq!(v.detail.len(), 1);
        assert_eq!(v.detail[0].loc[1], serde_json::json!("images[1]"));
        assert!(v.detail[0].msg.contains("bucket"), "{}", v.detail[0].msg);
    }
}
