//! Image bytes in and out: base64 and data URLs, decoding init images and masks, PNG encoding
//! with the infotext in a `parameters` text chunk, reading PNG text chunks, and A1111's output
//! file names (a1111-api.md §3.8, §4, §8.1–8.2). CPU work: callers run it in `web::block`,
//! never on the engine thread or an async worker.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::engine::job::{Mask, RgbImage};
use crate::fsutil::write_atomic;

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not base64, or not an image format we decode (A1111's `Invalid encoded image`).
    #[error("Invalid encoded image")]
    Invalid,
    /// An `http(s)://` URL: fetching images is not supported.
    #[error("Requests not allowed")]
    Url,
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// Decodes A1111's image strings: plain base64 or `data:image/…;base64,…`. Like Python's
/// `b64decode`, characters outside the alphabet are dropped; padding is required.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, ImageError> {
    let s = s.trim();
    if s.starts_with("http://") || s.starts_with("https://") {
        return Err(ImageError::Url);
    }
    let payload = match s.strip_prefix("data:image/") {
        Some(rest) => {
            let after_semicolon = rest.split_once(';').map(|(_, r)| r).ok_or(ImageError::Invalid)?;
            after_semicolon.split_once(',').map(|(_, r)| r).ok_or(ImageError::Invalid)?
        }
        None => s,
    };
    let clean: String =
        payload.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')).collect();
    base64::engine::general_purpose::STANDARD.decode(clean).map_err(|_| ImageError::Invalid)
}

pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes an init image to RGB, flattening any transparency onto `background` (option
/// `img2img_background_color`).
pub fn decode_rgb(bytes: &[u8], background: [u8; 3]) -> Result<RgbImage, ImageError> {
    let img = image::load_from_memory(bytes).map_err(|_| ImageError::Invalid)?;
    let (width, height) = (img.width(), img.height());
    let rgb = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        rgba.pixels()
            .flat_map(|p| {
                let a = p[3] as u32;
                (0..3).map(move |c| ((p[c] as u32 * a + background[c] as u32 * (255 - a) + 127) / 255) as u8)
            })
            .collect()
    } else {
        img.to_rgb8().into_raw()
    };
    Ok(RgbImage { width, height, rgb })
}

/// Decodes a mask: its alpha channel when it has real transparency, else its luminance.
pub fn decode_mask(bytes: &[u8]) -> Result<Mask, ImageError> {
    let img = image::load_from_memory(bytes).map_err(|_| ImageError::Invalid)?;
    let (width, height) = (img.width(), img.height());
    if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        if rgba.pixels().any(|p| p[3] < 255) {
            return Ok(Mask { width, height, luma: rgba.pixels().map(|p| p[3]).collect() });
        }
    }
    Ok(Mask { width, height, luma: img.to_luma8().into_raw() })
}

/// Parses `#rrggbb` (A1111's colour options), white when malformed.
pub fn parse_color(s: &str) -> [u8; 3] {
    let hex = s.trim().trim_start_matches('#');
    let channel = |i: usize| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok());
    match (hex.len(), channel(0), channel(2), channel(4)) {
        (6, Some(r), Some(g), Some(b)) => [r, g, b],
        _ => [255, 255, 255],
    }
}

/// Output encodings (option `samples_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    /// Lossless WebP (the `image` crate has no lossy WebP encoder).
    WebP,
}

impl ImageFormat {
    /// `png`, `jpg`/`jpeg`, `webp`; anything else falls back to PNG.
    pub fn from_option(s: &str) -> ImageFormat {
        match s.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" => ImageFormat::Jpeg,
            "webp" => ImageFormat::WebP,
            other => {
                if other != "png" {
                    tracing::warn!(format = other, "samples_format not supported; writing PNG");
                }
                ImageFormat::Png
            }
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
            ImageFormat::WebP => "webp",
        }
    }
}

/// Encodes `image`; a PNG carries `texts` as text chunks (A1111 writes the infotext under
/// `parameters`), a JPEG carries the `parameters` text in its EXIF UserComment.
pub fn encode(
    image: &RgbImage,
    format: ImageFormat,
    texts: &[(&str, &str)],
    jpeg_quality: u8,
) -> Result<Vec<u8>, ImageError> {
    match format {
        ImageFormat::Png => encode_png(image, texts),
        ImageFormat::WebP => {
            let mut out = Vec::new();
            let mut encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            if let Some((_, info)) = texts.iter().find(|(k, _)| *k == "parameters") {
                // A WebP EXIF chunk holds the TIFF structure without JPEG's `Exif\0\0` prefix.
                let exif = exif_user_comment(info);
                image::ImageEncoder::set_exif_metadata(&mut encoder, exif[6..].to_vec())
                    .map_err(|e| ImageError::Encode(e.to_string()))?;
            }
            image::ImageEncoder::write_image(
                encoder,
                &image.rgb,
                image.width,
                image.height,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| ImageError::Encode(e.to_string()))?;
            Ok(out)
        }
        ImageFormat::Jpeg => {
            let mut out = Vec::new();
            let encoder =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, jpeg_quality.clamp(1, 100));
            image::ImageEncoder::write_image(
                encoder,
                &image.rgb,
                image.width,
                image.height,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| ImageError::Encode(e.to_string()))?;
            // A1111 stores the infotext in the EXIF UserComment of JPEG and WebP files.
            match texts.iter().find(|(k, _)| *k == "parameters") {
                Some((_, info)) => Ok(insert_jpeg_exif(&out, &exif_user_comment(info))),
                None => Ok(out),
            }
        }
    }
}

/// An EXIF block (`Exif\0\0` and a big-endian TIFF structure) holding only a UserComment with
/// `text`, laid out as piexif's `dump({"Exif": {UserComment: UserComment.dump(text,
/// encoding="unicode")}})` that A1111 writes: IFD0 with the Exif IFD pointer, the Exif IFD with
/// tag 0x9286 (UNDEFINED) whose value is `UNICODE\0` and the text in UTF-16BE.
pub fn exif_user_comment(text: &str) -> Vec<u8> {
    let mut comment = b"UNICODE\0".to_vec();
    comment.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    // IFD0 at 8: one entry (12 bytes) and the next-IFD offset; the Exif IFD follows at 26.
    let exif_ifd = 8 + 2 + 12 + 4;
    let entry = |tag: u16, kind: u16, count: u32, value: u32| -> Vec<u8> {
        [&tag.to_be_bytes()[..], &kind.to_be_bytes(), &count.to_be_bytes(), &value.to_be_bytes()].concat()
    };
    tiff.extend(1u16.to_be_bytes());
    tiff.extend(entry(0x8769, 4, 1, exif_ifd as u32));
    tiff.extend(0u32.to_be_bytes());
    // Exif IFD: one entry whose data lies right after the IFD.
    let data_at = exif_ifd + 2 + 12 + 4;
    tiff.extend(1u16.to_be_bytes());
    tiff.extend(entry(0x9286, 7, comment.len() as u32, data_at as u32));
    tiff.extend(0u32.to_be_bytes());
    tiff.extend(comment);
    [&b"Exif\0\0"[..], &tiff].concat()
}

/// `jpeg` with `exif` in an APP1 segment right after the start-of-image marker (where
/// piexif's `insert` puts it).
pub fn insert_jpeg_exif(jpeg: &[u8], exif: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(jpeg.len() + exif.len() + 4);
    out.extend(&jpeg[..2]);
    out.extend([0xff, 0xe1]);
    out.extend(((exif.len() + 2) as u16).to_be_bytes());
    out.extend(exif);
    out.extend(&jpeg[2..]);
    out
}

/// The EXIF UserComment of a JPEG or WebP (`UNICODE`, `ASCII` or undefined encodings, either byte
/// order), as A1111's `read_info_from_image` gets it through piexif; `None` without one.
/// WebP files are read from their `EXIF` chunk.
pub fn read_user_comment(jpeg: &[u8]) -> Option<String> {
    if jpeg.starts_with(b"RIFF") && jpeg.get(8..12) == Some(b"WEBP") {
        return webp_user_comment(jpeg);
    }
    // Walk the marker segments up to the start of scan, looking for APP1 `Exif`.
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xff {
        let marker = jpeg[i + 1];
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        let body = jpeg.get(i + 4..i + 2 + len)?;
        if marker == 0xe1 && body.starts_with(b"Exif\0\0") {
            return tiff_user_comment(&body[6..]);
        }
        if marker == 0xda {
            break;
        }
        i += 2 + len;
    }
    None
}

/// The UserComment in a WebP's `EXIF` chunk (with or without an `Exif\0\0` prefix).
fn webp_user_comment(webp: &[u8]) -> Option<String> {
    let mut i = 12;
    while i + 8 <= webp.len() {
        let id = &webp[i..i + 4];
        let len = u32::from_le_bytes(webp[i + 4..i + 8].try_into().ok()?) as usize;
        let body = webp.get(i + 8..i + 8 + len)?;
        if id == b"EXIF" {
            return tiff_user_comment(body.strip_prefix(b"Exif\0\0").unwrap_or(body));
        }
        // Chunks are padded to an even size.
        i += 8 + len + (len & 1);
    }
    None
}

fn tiff_user_comment(tiff: &[u8]) -> Option<String> {
    let big = match tiff.get(..2)? {
        b"MM" => true,
        b"II" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(o..o + 2)?.try_into().ok()?;
        Some(if big { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(o..o + 4)?.try_into().ok()?;
        Some(if big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    };
    // (count, value/offset) of `tag` in the IFD at `ifd`.
    let find = |ifd: usize, tag: u16| -> Option<(usize, usize)> {
        (0..u16_at(ifd)? as usize).find_map(|k| {
            let e = ifd + 2 + 12 * k;
            (u16_at(e)? == tag).then_some(())?;
            Some((u32_at(e + 4)? as usize, u32_at(e + 8)? as usize))
        })
    };
    let (_, exif_ifd) = find(u32_at(4)? as usize, 0x8769)?;
    let (count, offset) = find(exif_ifd, 0x9286)?;
    let raw = tiff.get(offset..offset.checked_add(count)?)?;
    let (prefix, text) = raw.split_at(8.min(raw.len()));
    if prefix == b"UNICODE\0" {
        // piexif writes UTF-16BE; files from other tools may be little-endian.
        let units: Vec<u16> = text
            .chunks_exact(2)
            .map(|c| if big { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_le_bytes([c[0], c[1]]) })
            .collect();
        Some(String::from_utf16_lossy(&units))
    } else {
        Some(String::from_utf8_lossy(text).trim_end_matches('\0').to_string())
    }
}

/// A PNG with text chunks before the image data: `tEXt` for Latin-1 text, `iTXt` otherwise.
pub fn encode_png(image: &RgbImage, texts: &[(&str, &str)]) -> Result<Vec<u8>, ImageError> {
    let err = |e: png::EncodingError| ImageError::Encode(e.to_string());
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (keyword, text) in texts {
            if text.chars().all(|c| (c as u32) < 256) {
                encoder.add_text_chunk(keyword.to_string(), text.to_string()).map_err(err)?;
            } else {
                encoder.add_itxt_chunk(keyword.to_string(), text.to_string()).map_err(err)?;
            }
        }
        let mut writer = encoder.write_header().map_err(err)?;
        writer.write_image_data(&image.rgb).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(out)
}

/// The text chunks of a PNG (`tEXt`, `zTXt`, `iTXt`), in file order by kind; `None` when the
/// bytes are not a PNG.
pub fn png_text_chunks(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let mut reader = decoder.read_info().ok()?;
    // Chunks after the image data are only seen once the image has been read through.
    if let Some(size) = reader.output_buffer_size() {
        let mut buf = vec![0u8; size];
        if reader.next_frame(&mut buf).is_ok() {
            let _ = reader.finish();
        }
    }
    let info = reader.info();
    let mut out: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
    out.extend(
        info.compressed_latin1_text.iter().filter_map(|c| Some((c.keyword.clone(), c.get_text().ok()?))),
    );
    out.extend(info.utf8_text.iter().filter_map(|c| Some((c.keyword.clone(), c.get_text().ok()?))));
    Some(out)
}

/// The next free `NNNNN` counter in `dir`: one more than the largest numeric prefix of the
/// names there (A1111's `get_next_sequence_number`).
pub fn next_sequence_number(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let digits: String = name.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse::<u64>().ok()
        })
        .max()
        .map_or(0, |n| n + 1)
}

/// Turns a prompt into a file-name fragment: no path separators or characters Windows forbids,
/// at most 128 characters.
pub fn sanitize_for_file_name(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if matches!(c, '<' | '>' | ':' | '"' | '/' | '\\' | '|' | '?' | '*' | '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let collapsed = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(128).collect::<String>().trim_end_matches(['.', ' ']).to_string()
}

/// Writes `bytes` as `<dir>/<NNNNN>-<stem>.<ext>`, picking the number under `lock` so that
/// concurrent saves never collide, through a temporary file and a rename.
pub fn save_numbered(
    dir: &Path,
    stem: &str,
    extension: &str,
    bytes: &[u8],
    lock: &std::sync::Mutex<()>,
) -> std::io::Result<PathBuf> {
    let _guard = lock.lock().expect("save lock poisoned; this is a bug");
    std::fs::create_dir_all(dir)?;
    let mut n = next_sequence_number(dir);
    let path = loop {
        let candidate = dir.join(format!("{n:05}-{stem}.{extension}"));
        if !candidate.exists() {
            break candidate;
        }
        n += 1;
    };
    write_atomic(&path, bytes)?;
    Ok(path)
}

// ------------------------------------------------------------------------------------------
// Pixel operations of A1111's img2img and hires fix, with Pillow's integer arithmetic so that
// resized init images, masks and overlays equal what A1111 computes byte for byte.

/// Interleaved 8-bit pixels: 1 channel (an `L` mask), 3 (RGB) or 4 (RGBA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Pixels {
    pub fn new(width: u32, height: u32, channels: usize, data: Vec<u8>) -> Pixels {
        debug_assert_eq!(data.len(), width as usize * height as usize * channels);
        Pixels { width, height, channels, data }
    }

    /// A black (or transparent) image.
    pub fn blank(width: u32, height: u32, channels: usize) -> Pixels {
        Pixels::new(width, height, channels, vec![0; width as usize * height as usize * channels])
    }

    fn at(&self, x: usize, y: usize) -> &[u8] {
        let i = (y * self.width as usize + x) * self.channels;
        &self.data[i..i + self.channels]
    }

    /// Pillow's `crop((x1, y1, x2, y2))` for a box inside the image.
    pub fn crop(&self, x1: u32, y1: u32, x2: u32, y2: u32) -> Pixels {
        let mut data = Vec::with_capacity(((x2 - x1) * (y2 - y1)) as usize * self.channels);
        for y in y1..y2 {
            let start = (y * self.width + x1) as usize * self.channels;
            data.extend_from_slice(&self.data[start..start + (x2 - x1) as usize * self.channels]);
        }
        Pixels::new(x2 - x1, y2 - y1, self.channels, data)
    }

    /// Pillow's `paste(other, (x, y))` without a mask; parts outside are clipped. An RGB source
    /// pasted into RGBA becomes opaque, as Pillow converts it.
    pub fn paste(&mut self, other: &Pixels, x: i64, y: i64) {
        for sy in 0..other.height as i64 {
            let ty = y + sy;
            if ty < 0 || ty >= self.height as i64 {
                continue;
            }
            for sx in 0..other.width as i64 {
                let tx = x + sx;
                if tx < 0 || tx >= self.width as i64 {
                    continue;
                }
                let src = other.at(sx as usize, sy as usize);
                let i = (ty as usize * self.width as usize + tx as usize) * self.channels;
                for (c, v) in self.data[i..i + self.channels].iter_mut().enumerate() {
                    *v = src.get(c).copied().unwrap_or(255);
                }
            }
        }
    }
}

/// Pillow's resampling filters that A1111's image paths use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// `Image.BICUBIC` (a = −0.5), Pillow's default for `resize`.
    Bicubic,
    /// `Image.LANCZOS` (3 lobes).
    Lanczos,
    /// `Image.NEAREST`.
    Nearest,
}

impl Resample {
    fn support(self) -> f64 {
        match self {
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
            Resample::Nearest => 0.5,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let sinc = |x: f64| {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        };
        match self {
            Resample::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
            Resample::Nearest => {
                if (-0.5..0.5).contains(&x) {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow keeps 8-bit filter weights as integers with this many fraction bits.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: for each output index, the first
/// input index and the fixed-point weights.
fn resample_coeffs(
    in_size: usize,
    in0: f64,
    in1: f64,
    out_size: usize,
    filter: Resample,
) -> Vec<(usize, Vec<i64>)> {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = in0 + (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's `(int)` truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let weights: Vec<f64> =
                (xmin..xmax.max(xmin)).map(|x| filter.weight((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (scaled - 0.5) as i64
                    } else {
                        (scaled + 0.5) as i64
                    }
                })
                .collect();
            (xmin as usize, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS) << 8 {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's `Image.resize((width, height), resample, box)` for 8-bit L/RGB data: a horizontal
/// and a vertical pass, each rounded to 8 bits, skipped when that axis is unchanged.
/// `box` is the source region `(x0, y0, x1, y1)`; `None` is the whole image.
pub fn resize_pil(
    img: &Pixels,
    width: u32,
    height: u32,
    filter: Resample,
    region: Option<[f64; 4]>,
) -> Pixels {
    let (w, h) = (img.width as f64, img.height as f64);
    let b = region.unwrap_or([0.0, 0.0, w, h]);
    if width == img.width && height == img.height && b == [0.0, 0.0, w, h] {
        return img.clone();
    }
    if filter == Resample::Nearest {
        return resize_nearest(img, width, height, b);
    }
    let need_h = width != img.width || b[0] != 0.0 || b[2] != width as f64;
    let need_v = height != img.height || b[1] != 0.0 || b[3] != height as f64;
    let h_coeffs = resample_coeffs(img.width as usize, b[0], b[2], width as usize, filter);
    let v_coeffs = resample_coeffs(img.height as usize, b[1], b[3], height as usize, filter);
    let horizontal = |cur: &Pixels| {
        let mut out = Vec::with_capacity(width as usize * cur.height as usize * cur.channels);
        for y in 0..cur.height as usize {
            for (xmin, k) in &h_coeffs {
                for c in 0..cur.channels {
                    let acc = k.iter().enumerate().fold(1i64 << (PRECISION_BITS - 1), |acc, (j, kj)| {
                        acc + i64::from(cur.at(xmin + j, y)[c]) * kj
                    });
                    out.push(clip8(acc));
                }
            }
        }
        Pixels::new(width, cur.height, cur.channels, out)
    };
    let vertical = |cur: &Pixels| {
        let mut out = Vec::with_capacity(cur.width as usize * height as usize * cur.channels);
        for (ymin, k) in &v_coeffs {
            for x in 0..cur.width as usize {
                for c in 0..cur.channels {
                    let acc = k.iter().enumerate().fold(1i64 << (PRECISION_BITS - 1), |acc, (j, kj)| {
                        acc + i64::from(cur.at(x, ymin + j)[c]) * kj
                    });
                    out.push(clip8(acc));
                }
            }
        }
        Pixels::new(cur.width, height, cur.channels, out)
    };
    match (need_h, need_v) {
        // Horizontal first, as Pillow 9.5 (A1111 1.10's pin) does. The reference environment's
        // Pillow 13 sometimes starts vertically when one axis shrinks more than the other,
        // which moves single levels; the goldens' resizes keep the aspect ratio and agree.
        (true, true) => vertical(&horizontal(img)),
        (true, false) => horizontal(img),
        (false, true) => vertical(img),
        (false, false) => img.clone(),
    }
}

/// Pillow's `NEAREST` resize, which is not a convolution: an affine scaling
/// (`ImagingScaleAffine`) whose source coordinate starts half a step in and is advanced by
/// repeated addition, then truncated. The accumulation is kept in `f64` as Pillow does, because
/// positions that land on whole numbers (32 → 48: 1/3 + 2/3) pick their pixel by its rounding.
fn resize_nearest(img: &Pixels, width: u32, height: u32, b: [f64; 4]) -> Pixels {
    let positions = |start: f64, end: f64, out: u32, len: u32| {
        let step = (end - start) / f64::from(out);
        let mut at = start + step * 0.5;
        (0..out)
            .map(|_| {
                let i = if at < 0.0 { None } else { Some(at as u32).filter(|&i| i < len) };
                at += step;
                i
            })
            .collect::<Vec<_>>()
    };
    let xs = positions(b[0], b[2], width, img.width);
    let ys = positions(b[1], b[3], height, img.height);
    let mut out = Pixels::blank(width, height, img.channels);
    for (y, sy) in ys.iter().enumerate() {
        let Some(sy) = sy else { continue };
        for (x, sx) in xs.iter().enumerate() {
            let Some(sx) = sx else { continue };
            let src = img.at(*sx as usize, *sy as usize).to_vec();
            let o = (y * width as usize + x) * img.channels;
            out.data[o..o + img.channels].copy_from_slice(&src);
        }
    }
    out
}

/// A1111's `images.resize_image(resize_mode, im, width, height)` for modes 0 (just resize),
/// 1 (crop and resize: scale to cover, centre crop) and 2 or more (resize and fill: scale to
/// fit, centre, fill the bands with the edge rows or columns squeezed by Pillow's default
/// bicubic filter). Resizing is Lanczos (the
/// `upscaler_for_img2img` option is unset by default; masks always use Lanczos).
pub fn resize_image(mode: u8, img: &Pixels, width: u32, height: u32) -> Pixels {
    let (w, h) = (width as i64, height as i64);
    let (iw, ih) = (img.width as i64, img.height as i64);
    let ratio = w as f64 / h as f64;
    let src_ratio = iw as f64 / ih as f64;
    match mode {
        0 => resize_pil(img, width, height, Resample::Lanczos, None),
        // Every other mode (3, latent upscale, included) takes A1111's "resize and fill" branch.
        _ => {
            let cover = mode == 1;
            let src_w =
                if (cover && ratio > src_ratio) || (!cover && ratio < src_ratio) { w } else { iw * h / ih };
            let src_h =
                if (cover && ratio <= src_ratio) || (!cover && ratio >= src_ratio) { h } else { ih * w / iw };
            let resized = resize_pil(img, src_w as u32, src_h as u32, Resample::Lanczos, None);
            let mut res = Pixels::blank(width, height, img.channels);
            res.paste(&resized, w / 2 - src_w / 2, h / 2 - src_h / 2);
            if !cover {
                let (rw, rh) = (resized.width as f64, resized.height as f64);
                if ratio < src_ratio {
                    let fill = h / 2 - src_h / 2;
                    if fill > 0 {
                        let top = resize_pil(
                            &resized,
                            width,
                            fill as u32,
                            Resample::Bicubic,
                            Some([0.0, 0.0, w as f64, 0.0]),
                        );
                        let bottom = resize_pil(
                            &resized,
                            width,
                            fill as u32,
                            Resample::Bicubic,
                            Some([0.0, rh, w as f64, rh]),
                        );
                        res.paste(&top, 0, 0);
                        res.paste(&bottom, 0, fill + src_h);
                    }
                } else if ratio > src_ratio {
                    let fill = w / 2 - src_w / 2;
                    if fill > 0 {
                        let left = resize_pil(
                            &resized,
                            fill as u32,
                            height,
                            Resample::Bicubic,
                            Some([0.0, 0.0, 0.0, h as f64]),
                        );
                        let right = resize_pil(
                            &resized,
                            fill as u32,
                            height,
                            Resample::Bicubic,
                            Some([rw, 0.0, rw, h as f64]),
                        );
                        res.paste(&left, 0, 0);
                        res.paste(&right, fill + src_w, 0);
                    }
                }
            }
            res
        }
    }
}

/// A1111's pixel upscaler path of `resize_image(0, …, upscaler_name)` for the built-in
/// upscalers: "None" is one Lanczos resize; "Lanczos" and "Nearest" first scale by the factor
/// (`Upscaler.upscale`: target rounded down to a multiple of 8, then a Lanczos fix-up) and
/// finish with a Lanczos resize to the exact size. `None` for an upscaler that needs a model.
pub fn upscale_with(name: &str, img: &Pixels, width: u32, height: u32) -> Option<Pixels> {
    let filter = match name {
        "None" => return Some(resize_pil(img, width, height, Resample::Lanczos, None)),
        "Lanczos" => Resample::Lanczos,
        "Nearest" => Resample::Nearest,
        _ => return None,
    };
    let scale = (width as f64 / img.width as f64).max(height as f64 / img.height as f64);
    let mut im = img.clone();
    if scale > 1.0 {
        let dest_w = ((img.width as f64 * scale) / 8.0).floor() as u32 * 8;
        let dest_h = ((img.height as f64 * scale) / 8.0).floor() as u32 * 8;
        for _ in 0..3 {
            if im.width >= dest_w && im.height >= dest_h {
                break;
            }
            let before = (im.width, im.height);
            let (nw, nh) = ((im.width as f64 * scale) as u32, (im.height as f64 * scale) as u32);
            im = resize_pil(&im, nw, nh, filter, None);
            if before == (im.width, im.height) {
                break;
            }
        }
        if im.width != dest_w || im.height != dest_h {
            im = resize_pil(&im, dest_w, dest_h, Resample::Lanczos, None);
        }
    }
    if im.width != width || im.height != height {
        im = resize_pil(&im, width, height, Resample::Lanczos, None);
    }
    Some(im)
}

/// OpenCV's 8-bit Gaussian kernel for `n` taps (odd) and `sigma > 0`, in fixed point with 8
/// fraction bits, as `cv::GaussianBlur` builds it for `CV_8U` images: the sampled Gaussian
/// `exp(−x²/2σ²)` normalised to sum 1 (`getGaussianKernelBitExact`), then quantised from the
/// outside in with the rounding error carried to the next tap, the centre taking whatever makes
/// the sum exactly 256 (`getGaussianKernelFixedPoint_ED`). Rounding each tap on its own instead
/// puts single pixels one level off.
pub fn gaussian_kernel_fixed8(n: usize, sigma: f64) -> Vec<u32> {
    let half = n / 2;
    // -0.5 / (2σ)² · (2x)², with x counted in half steps as OpenCV does.
    let scale = -0.125 / (sigma * sigma);
    let values: Vec<f64> = (0..half)
        .map(|i| {
            let x = 2 * i as i64 + 1 - n as i64;
            ((x * x) as f64 * scale).exp()
        })
        .collect();
    let sum = values.iter().sum::<f64>() * 2.0 + 1.0;
    let inv = 1.0 / sum;
    let mut kernel = vec![0u32; n];
    let mut err = 0.0;
    let mut total = 0u32;
    for (i, v) in values.iter().enumerate() {
        let adjusted = v * inv * 256.0 + err;
        // cvRound: round half to even.
        let q = adjusted.round_ties_even();
        err = adjusted - q;
        kernel[i] = q as u32;
        kernel[n - 1 - i] = q as u32;
        total += 2 * q as u32;
    }
    kernel[half] = 256 - total;
    kernel
}

/// A Gaussian blur of an 8-bit image along one axis, exactly as A1111's mask blur gets it from
/// `cv2.GaussianBlur` with a `(k, 1)` or `(1, k)` kernel, `k = 2·int(2.5σ + 0.5) + 1`: OpenCV's
/// fixed-point path for 8-bit images ([`gaussian_kernel_fixed8`], integer sums, one rounding
/// `(Σ + 128) >> 8` at the end) with its default reflect-101 border (`gfedcb|abcdefgh|gfedcba`).
/// A line of one pixel is left as it is, as OpenCV shrinks the kernel to one tap there.
pub fn gaussian_blur_axis(img: &Pixels, sigma: u32, horizontal: bool) -> Pixels {
    let (w, h) = (img.width as i64, img.height as i64);
    let len = if horizontal { w } else { h };
    if sigma == 0 || len <= 1 {
        return img.clone();
    }
    let s = f64::from(sigma);
    let k = 2 * ((2.5 * s + 0.5) as usize) + 1;
    let kernel = gaussian_kernel_fixed8(k, s);
    let half = (k / 2) as i64;
    let reflect = |mut i: i64| loop {
        if i < 0 {
            i = -i;
        } else if i >= len {
            i = 2 * (len - 1) - i;
        } else {
            return i as usize;
        }
    };
    // Source index of every tap at every position along the axis, computed once.
    let taps: Vec<Vec<usize>> =
        (0..len).map(|p| (0..k as i64).map(|j| reflect(p + j - half)).collect()).collect();
    let ch = img.channels;
    let mut out = vec![0u8; img.data.len()];
    for y in 0..h as usize {
        for x in 0..w as usize {
            let pos = if horizontal { x } else { y };
            let at = |src: usize| {
                if horizontal {
                    (y * w as usize + src) * ch
                } else {
                    (src * w as usize + x) * ch
                }
            };
            let base = (y * w as usize + x) * ch;
            for c in 0..ch {
                let acc: u32 = taps[pos]
                    .iter()
                    .zip(&kernel)
                    .map(|(&src, &kv)| kv * u32::from(img.data[at(src) + c]))
                    .sum();
                out[base + c] = ((acc + 128) >> 8).min(255) as u8;
            }
        }
    }
    Pixels::new(img.width, img.height, img.channels, out)
}

/// Pillow's `getbbox()` of an `L` image: `(x1, y1, x2, y2)` of the non-zero pixels.
pub fn bbox(mask: &Pixels) -> Option<(u32, u32, u32, u32)> {
    let mut b: Option<(u32, u32, u32, u32)> = None;
    for y in 0..mask.height {
        for x in 0..mask.width {
            if mask.at(x as usize, y as usize)[0] != 0 {
                b = Some(match b {
                    None => (x, y, x + 1, y + 1),
                    Some((x1, y1, x2, y2)) => (x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1)),
                });
            }
        }
    }
    b
}

/// A1111's `masking.get_crop_region_v2` then `expand_crop_region`: the mask's bounding box
/// grown by `pad`, then widened or heightened towards the `width`:`height` ratio of the
/// generation, inside the image. `None` for an empty mask.
pub fn inpaint_crop_region(mask: &Pixels, pad: u32, width: u32, height: u32) -> Option<(i64, i64, i64, i64)> {
    let (bx1, by1, bx2, by2) = bbox(mask)?;
    let (iw, ih) = (i64::from(mask.width), i64::from(mask.height));
    let pad = i64::from(pad);
    let (mut x1, mut y1, mut x2, mut y2) = if pad > 0 {
        (
            (i64::from(bx1) - pad).max(0),
            (i64::from(by1) - pad).max(0),
            (i64::from(bx2) + pad).min(iw),
            (i64::from(by2) + pad).min(ih),
        )
    } else {
        (i64::from(bx1), i64::from(by1), i64::from(bx2), i64::from(by2))
    };
    let ratio_crop = (x2 - x1) as f64 / (y2 - y1) as f64;
    let ratio_processing = f64::from(width) / f64::from(height);
    // Python's `//` floors; the differences here are never negative.
    if ratio_crop > ratio_processing {
        widen_span(&mut y1, &mut y2, (x2 - x1) as f64 / ratio_processing, ih);
    } else {
        widen_span(&mut x1, &mut x2, (y2 - y1) as f64 * ratio_processing, iw);
    }
    Some((x1, y1, x2, y2))
}

/// Grows `[lo, hi)` to `desired` pixels around its centre (the extra split as Python's `//`
/// splits it), shifted back inside `[0, limit)` and clipped there.
fn widen_span(lo: &mut i64, hi: &mut i64, desired: f64, limit: i64) {
    let diff = (desired - (*hi - *lo) as f64) as i64;
    *lo -= diff.div_euclid(2);
    *hi += diff - diff.div_euclid(2);
    if *hi >= limit {
        let over = *hi - limit;
        *hi -= over;
        *lo -= over;
    }
    if *lo < 0 {
        *hi -= *lo;
        *lo = 0;
    }
    if *hi >= limit {
        *hi = limit;
    }
}

/// Pillow's integer division by 255 with rounding (`DIV255`).
fn div255(a: u32) -> u32 {
    let t = a + 128;
    ((t >> 8) + t) >> 8
}

/// A1111's overlay image: an empty `RGBa` image with the RGB original pasted through
/// `invert(mask_for_overlay)`, converted to `RGBA` (un-premultiplied with Pillow's integer
/// division). The result is RGBA: the original where the mask is 0, transparent where it is 255.
pub fn overlay_image(rgb: &Pixels, mask_for_overlay: &Pixels) -> Pixels {
    let mut out = Vec::with_capacity(rgb.data.len() / 3 * 4);
    for (px, m) in rgb.data.chunks_exact(3).zip(&mask_for_overlay.data) {
        let keep = 255 - u32::from(*m);
        let pre: Vec<u32> = px.iter().map(|&c| div255(u32::from(c) * keep)).collect();
        let alpha = div255(255 * keep);
        for c in pre {
            out.push(if alpha == 255 || alpha == 0 { c } else { ((255 * c) / alpha).min(255) } as u8);
        }
        out.push(alpha as u8);
    }
    Pixels::new(rgb.width, rgb.height, 4, out)
}

/// Pillow's `alpha_composite(dst, src)` on RGBA data (7-bit fixed-point coefficients), in place.
pub fn alpha_composite(dst: &mut Pixels, src: &Pixels) {
    const BITS: u32 = 7;
    let shift_div255 = |a: u32| ((a >> 8) + a) >> 8;
    for (d, s) in dst.data.chunks_exact_mut(4).zip(src.data.chunks_exact(4)) {
        let sa = u32::from(s[3]);
        if sa == 0 {
            continue;
        }
        let blend = u32::from(d[3]) * (255 - sa);
        let outa255 = sa * 255 + blend;
        let coef1 = sa * 255 * 255 * (1 << BITS) / outa255;
        let coef2 = 255 * (1 << BITS) - coef1;
        for c in 0..3 {
            let t = u32::from(s[c]) * coef1 + u32::from(d[c]) * coef2;
            d[c] = (shift_div255(t + (0x80 << BITS)) >> BITS) as u8;
        }
        d[3] = shift_div255(outa255 + 0x80) as u8;
    }
}

/// RGB → RGBA (opaque), as Pillow's `convert('RGBA')`.
pub fn rgba_of(rgb: &Pixels) -> Pixels {
    let data = rgb.data.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    Pixels::new(rgb.width, rgb.height, 4, data)
}

/// RGBA → RGB by dropping alpha, as Pillow's `convert('RGB')`.
pub fn rgb_of(rgba: &Pixels) -> Pixels {
    let data = rgba.data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    Pixels::new(rgba.width, rgba.height, 3, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> RgbImage {
        RgbImage { width: 2, height: 1, rgb: vec![255, 0, 0, 0, 0, 255] }
    }

    #[test]
    fn png_round_trip_keeps_parameters_chunk_latin1_and_utf8() {
        for text in ["cat\nSteps: 20, Seed: 1", "猫\nSteps: 20"] {
            let png = encode_png(&tiny(), &[("parameters", text)]).unwrap();
            let chunks = png_text_chunks(&png).unwrap();
            assert_eq!(chunks, vec![("parameters".to_string(), text.to_string())]);
            let back = decode_rgb(&png, [0, 0, 0]).unwrap();
            assert_eq!(back, tiny());
        }
        assert!(png_text_chunks(b"not a png").is_none());
    }

    #[test]
    fn decode_base64_accepts_data_urls_and_python_leniency() {
        let png = encode_png(&tiny(), &[]).unwrap();
        let b64 = encode_base64(&png);
        assert_eq!(decode_base64(&b64).unwrap(), png);
        assert_eq!(decode_base64(&format!("data:image/png;base64,{b64}")).unwrap(), png);
        let wrapped: String = b64
            .chars()
            .enumerate()
            .flat_map(|(i, c)| if i % 10 == 9 { vec![c, '\n'] } else { vec![c] })
            .collect();
        assert_eq!(decode_base64(&wrapped).unwrap(), png);
        assert!(matches!(decode_base64("abc"), Err(ImageError::Invalid)));
        assert!(matches!(decode_base64("https://example.com/a.png"), Err(ImageError::Url)));
    }

    #[test]
    fn decode_rgb_flattens_alpha_and_mask_prefers_alpha() {
        let mut rgba = image::RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgba8(rgba)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let rgb = decode_rgb(&png, [255, 255, 255]).unwrap();
        assert_eq!(rgb.rgb, vec![255, 255, 255, 10, 20, 30]);
        let mask = decode_mask(&png).unwrap();
        assert_eq!(mask.luma, vec![0, 255]);
    }

    #[test]
    fn jpeg_and_webp_infotext_round_trip_through_exif_user_comment() {
        let info = "a cat, «ünïcode» 猫\nSteps: 20, Sampler: Euler a, Seed: 1";
        let jpeg = encode(&tiny(), ImageFormat::Jpeg, &[("parameters", info)], 90).unwrap();
        assert_eq!(read_user_comment(&jpeg).as_deref(), Some(info));
        let decoded = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (tiny().width, tiny().height));
        // piexif's layout: the UserComment is `UNICODE\0` and UTF-16BE text.
        let exif = exif_user_comment("ab");
        assert!(exif.ends_with(b"UNICODE\0\0a\0b"), "{exif:?}");
        let plain = encode(&tiny(), ImageFormat::Jpeg, &[], 90).unwrap();
        assert_eq!(read_user_comment(&plain), None);
        let webp = encode(&tiny(), ImageFormat::WebP, &[("parameters", info)], 90).unwrap();
        assert_eq!(read_user_comment(&webp).as_deref(), Some(info));
        let decoded = image::load_from_memory(&webp).unwrap().to_rgb8();
        assert_eq!(decoded.into_raw(), tiny().rgb, "lossless");
    }

    #[test]
    fn save_numbered_counts_past_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00041-7.png"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let lock = std::sync::Mutex::new(());
        let path = save_numbered(dir.path(), "1003", "png", b"png", &lock).unwrap();
        assert_eq!(path.file_name().unwrap(), "00042-1003.png");
        assert_eq!(parse_color("#102030"), [16, 32, 48]);
        assert_eq!(sanitize_for_file_name("a/b: <c>  d."), "a b c d");
    }

    fn pixels_test_rgb() -> Pixels {
        Pixels::new(6, 4, 3, (0..72u32).map(|i| ((i * 37 + (i / 3) * 11) % 256) as u8).collect())
    }

    // Expected bytes from Pillow on the same inputs; the Lanczos case is Pillow's horizontal
    // resize followed by its vertical one (the order of the Pillow A1111 1.10 pins).
    #[test]
    fn resize_pil_lanczos_and_bicubic_equal_pillow_bytes() {
        let im = pixels_test_rgb();
        let lanczos = resize_pil(&im, 9, 3, Resample::Lanczos, None);
        assert_eq!(
            lanczos.data,
            [
                60, 0, 56, 68, 81, 145, 144, 157, 175, 240, 90, 40, 167, 109, 105, 111, 136, 168, 219, 75,
                31, 170, 94, 81, 81, 137, 184, 235, 119, 0, 136, 92, 67, 73, 129, 156, 182, 241, 143, 123,
                165, 130, 64, 101, 129, 173, 223, 126, 110, 165, 120, 11, 63, 118, 165, 234, 179, 76, 130,
                116, 27, 60, 112, 135, 167, 236, 79, 110, 159, 8, 51, 90, 102, 156, 220, 178, 105, 159, 192,
                17, 51
            ]
        );
        let bicubic = resize_pil(&im, 4, 7, Resample::Bicubic, None);
        assert_eq!(
            bicubic.data,
            [
                27, 89, 125, 201, 77, 126, 170, 79, 126, 152, 82, 127, 78, 66, 113, 184, 122, 108, 158, 112,
                109, 140, 107, 111, 164, 36, 89, 154, 194, 85, 134, 165, 86, 116, 148, 88, 162, 103, 52, 132,
                184, 144, 114, 157, 128, 85, 138, 120, 130, 172, 44, 112, 149, 200, 92, 129, 170, 82, 111,
                151, 106, 150, 129, 88, 125, 171, 62, 105, 147, 168, 87, 128, 94, 131, 181, 76, 113, 149, 45,
                93, 130, 219, 75, 112
            ]
        );
    }

    #[test]
    fn resize_image_fill_mode_equals_a1111_bytes() {
        let filled = resize_image(2, &pixels_test_rgb(), 8, 8);
        assert_eq!((filled.width, filled.height), (8, 8));
        // Rows 0-1 are the squeezed top edge, rows 2-6 the Lanczos-resized image, row 7 the
        // squeezed bottom edge.
        assert_eq!(
            filled.data,
            [
                0, 35, 66, 44, 141, 168, 210, 101, 162, 236, 0, 79, 119, 146, 185, 198, 34, 104, 199, 21, 92,
                89, 155, 188, 0, 35, 66, 44, 141, 168, 210, 101, 162, 236, 0, 79, 119, 146, 185, 198, 34,
                104, 199, 21, 92, 89, 155, 188, 0, 31, 64, 51, 133, 166, 203, 110, 157, 234, 17, 72, 116,
                144, 182, 195, 47, 98, 196, 35, 86, 87, 150, 185, 162, 0, 47, 105, 71, 150, 150, 180, 117,
                215, 172, 19, 93, 127, 157, 171, 154, 53, 176, 151, 39, 72, 109, 165, 252, 118, 0, 120, 86,
                79, 100, 180, 165, 186, 253, 132, 60, 99, 131, 146, 202, 127, 126, 205, 121, 0, 66, 118, 174,
                247, 72, 70, 122, 73, 75, 103, 187, 153, 184, 248, 31, 66, 104, 96, 140, 200, 141, 141, 203,
                86, 38, 71, 159, 191, 248, 50, 85, 130, 51, 88, 120, 130, 166, 199, 12, 43, 79, 43, 122, 155,
                195, 123, 156, 255, 14, 51, 157, 184, 255, 48, 80, 137, 48, 86, 112, 127, 164, 193, 10, 40,
                76, 36, 120, 149, 202, 121, 150, 255, 11, 49
            ]
        );
    }

    #[test]
    fn overlay_and_alpha_composite_equal_pillow_bytes() {
        let im = pixels_test_rgb();
        let mask = Pixels::new(6, 4, 1, (0..24u32).map(|i| ((i * 53) % 256) as u8).collect());
        let overlay = overlay_image(&im, &mask);
        assert_eq!(
            overlay.data,
            [
                0, 37, 74, 255, 122, 159, 195, 202, 244, 25, 61, 149, 108, 146, 183, 96, 231, 11, 47, 43, 98,
                134, 172, 246, 220, 1, 38, 193, 85, 123, 160, 140, 208, 246, 26, 87, 75, 112, 150, 34, 195,
                233, 13, 237, 62, 98, 135, 184, 184, 221, 1, 131, 49, 88, 124, 78, 173, 204, 244, 25, 38, 74,
                111, 228, 160, 196, 234, 175, 25, 62, 100, 122, 147, 184, 221, 69, 15, 47, 95, 16, 136, 173,
                209, 219, 1, 38, 75, 166, 124, 160, 198, 113, 246, 25, 63, 60
            ]
        );
        let generated = Pixels::new(6, 4, 3, (0..72u32).map(|i| ((i * 91 + 7) % 256) as u8).collect());
        let mut base = rgba_of(&generated);
        alpha_composite(&mut base, &overlay);
        assert_eq!(
            rgb_of(&base).data,
            [
                0, 37, 74, 102, 150, 197, 160, 69, 128, 77, 148, 219, 101, 140, 9, 98, 136, 167, 193, 49, 37,
                103, 165, 111, 165, 238, 54, 149, 232, 95, 194, 217, 19, 99, 79, 131, 197, 136, 67, 173, 71,
                145, 238, 92, 178, 35, 76, 119, 117, 170, 225, 33, 98, 164, 81, 158, 234, 70, 158, 6, 130,
                174, 182, 38, 94, 61, 125, 191, 116, 166, 184, 67
            ]
        );
    }

    #[test]
    fn inpaint_crop_region_pads_then_matches_generation_ratio() {
        let mut mask = Pixels::blank(32, 32, 1);
        for y in 10..14 {
            for x in 8..20 {
                mask.data[y * 32 + x] = 255;
            }
        }
        // bbox (8,10)-(20,14), padded by 2 → (6,8)-(22,16): 16×8, widened to a square 16×16.
        assert_eq!(inpaint_crop_region(&mask, 2, 32, 32), Some((6, 4, 22, 20)));
        assert_eq!(inpaint_crop_region(&Pixels::blank(8, 8, 1), 4, 8, 8), None);
    }
}
