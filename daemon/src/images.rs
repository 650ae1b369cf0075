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
}

impl ImageFormat {
    /// `png`, `jpg`/`jpeg`; anything else falls back to PNG.
    pub fn from_option(s: &str) -> ImageFormat {
        match s.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" => ImageFormat::Jpeg,
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
        }
    }
}

/// Encodes `image`; a PNG carries `texts` as text chunks (A1111 writes the infotext under
/// `parameters`). JPEG output carries none.
pub fn encode(
    image: &RgbImage,
    format: ImageFormat,
    texts: &[(&str, &str)],
    jpeg_quality: u8,
) -> Result<Vec<u8>, ImageError> {
    match format {
        ImageFormat::Png => encode_png(image, texts),
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
            Ok(out)
        }
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
}
