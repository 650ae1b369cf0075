//! A1111's tiled upscale (`modules/upscaler_utils.py` `upscale_with_model` with
//! `modules/images.py` `split_grid` / `combine_grid`), on 8-bit RGB buffers.
//!
//! The image is cut into `tile × tile` squares overlapping by at least `overlap` pixels, spread
//! evenly (`split_grid`); a tile that would reach past the right or bottom edge is moved back so
//! it ends at the edge, and an image smaller than a tile gets tiles that start before it, read as
//! black (Pillow's `crop` outside the image). Each tile goes through the network on its own, fed
//! as BGR values in [0, 1] (A1111 flips the channel order for the network and back), its output
//! clamped to [0, 1], scaled by 255 and truncated to 8 bits. The upscaled tiles are joined left
//! to right and rows top to bottom; across each overlap the later tile is blended in with Pillow's
//! `paste(…, mask)` through a ramp `int(i·255/overlap)`, the earlier one keeps the rest.

use tch::{Device, Kind, Tensor};

use super::esrgan::Esrgan;
use crate::error::{Error, Result};

/// A1111's default `ESRGAN_tile` option (pixels; 0 disables tiling).
pub const ESRGAN_TILE: u32 = 192;
/// A1111's default `ESRGAN_tile_overlap` option (pixels).
pub const ESRGAN_TILE_OVERLAP: u32 = 8;

/// An interleaved 8-bit RGB image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbBuffer {
    pub width: u32,
    pub height: u32,
    /// `height × width × 3` bytes, row-major.
    pub data: Vec<u8>,
}

impl RgbBuffer {
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        if data.len() != width as usize * height as usize * 3 {
            return Err(Error::Sampling(format!(
                "an RGB image of {width}×{height} needs {} bytes, got {}",
                width as usize * height as usize * 3,
                data.len()
            )));
        }
        Ok(RgbBuffer { width, height, data })
    }

    fn black(width: u32, height: u32) -> Self {
        RgbBuffer { width, height, data: vec![0; width as usize * height as usize * 3] }
    }

    /// Pillow's `crop((x, y, x + w, y + h))`: pixels outside the image read as black.
    fn crop(&self, x: i64, y: i64, w: u32, h: u32) -> Self {
        let mut out = RgbBuffer::black(w, h);
        for oy in 0..h as i64 {
            let sy = y + oy;
            if sy < 0 || sy >= self.height as i64 {
                continue;
            }
            for ox in 0..w as i64 {
                let sx = x + ox;
                if sx < 0 || sx >= self.width as i64 {
                    continue;
                }
                let s = (sy as usize * self.width as usize + sx as usize) * 3;
                let d = (oy as usize * w as usize + ox as usize) * 3;
                out.data[d..d + 3].copy_from_slice(&self.data[s..s + 3]);
            }
        }
        out
    }

    /// Pillow's `paste(src, (x, y), mask)`, clipped to this image. With a mask (an `L` image the
    /// size of `src`) each channel becomes `(dst·(255−m) + src·m) / 255`, rounded as Pillow's
    /// fixed-point `DIV255`.
    fn paste(&mut self, src: &RgbBuffer, x: i64, y: i64, mask: Option<&dyn Fn(u32, u32) -> u8>) {
        for sy in 0..src.height {
            let ty = y + sy as i64;
            if ty < 0 || ty >= self.height as i64 {
                continue;
            }
            for sx in 0..src.width {
                let tx = x + sx as i64;
                if tx < 0 || tx >= self.width as i64 {
                    continue;
                }
                let s = (sy as usize * src.width as usize + sx as usize) * 3;
                let d = (ty as usize * self.width as usize + tx as usize) * 3;
                match mask {
                    None => self.data[d..d + 3].copy_from_slice(&src.data[s..s + 3]),
                    Some(mask) => {
                        let m = u32::from(mask(sx, sy));
                        for c in 0..3 {
                            let v = u32::from(self.data[d + c]) * (255 - m) + u32::from(src.data[s + c]) * m;
                            let t = v + 128;
                            self.data[d + c] = (((t >> 8) + t) >> 8) as u8;
                        }
                    }
                }
            }
        }
    }
}

/// The ramp of `combine_grid`'s masks: `uint8(i · 255 / overlap)` computed in float32.
fn ramp(i: u32, overlap: u32) -> u8 {
    (i as f32 * 255.0 / overlap as f32) as u8
}

/// One tile through the network (`upscale_without_tiling`).
fn upscale_tile(model: &Esrgan, tile: &RgbBuffer) -> Result<RgbBuffer> {
    let (w, h) = (tile.width as i64, tile.height as i64);
    let input = Tensor::from_slice(&tile.data)
        .view([h, w, 3])
        .flip([2]) // RGB → BGR
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
        / 255.0;
    let out = model.forward(&input);
    let out = (out.squeeze_dim(0).to_device(Device::Cpu).clamp(0.0, 1.0) * 255.0)
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .flip([2]) // BGR → RGB
        .contiguous();
    let size = out.size();
    if size[2] != 3 {
        return Err(Error::Sampling(format!("the upscaler returned {} channels, not 3", size[2])));
    }
    let data = Vec::<u8>::try_from(out.view([-1]))?;
    RgbBuffer::new(size[1] as u32, size[0] as u32, data)
}

/// Where `split_grid` puts tiles along one axis of length `len`.
fn tile_starts(len: u32, tile: u32, overlap: u32) -> Vec<i64> {
    let (len, tile, overlap) = (i64::from(len), i64::from(tile), i64::from(overlap));
    let n = ((len - overlap) as f64 / (tile - overlap) as f64).ceil() as i64;
    let step = if n > 1 { (len - tile) as f64 / (n - 1) as f64 } else { 0.0 };
    (0..n)
        .map(|i| {
            let p = (i as f64 * step) as i64;
            if p + tile >= len {
                len - tile
            } else {
                p
            }
        })
        .collect()
}

/// Upscales `image` with `model` as A1111's ESRGAN upscaler does (one `do_upscale`): tiled when
/// `tile > 0`, whole otherwise. The result is `scale` times larger; the caller resizes it to the
/// requested size. `interrupted` is polled between tiles; when it returns true the tiles done so
/// far are kept and the rest stay black.
pub fn upscale(
    model: &Esrgan,
    image: &RgbBuffer,
    tile: u32,
    overlap: u32,
    interrupted: &dyn Fn() -> bool,
) -> Result<RgbBuffer> {
    if tile == 0 {
        return upscale_tile(model, image);
    }
    if overlap >= tile {
        return Err(Error::Sampling(format!(
            "tile overlap {overlap} must be smaller than the tile size {tile}"
        )));
    }
    let xs = tile_starts(image.width, tile, overlap);
    let ys = tile_starts(image.height, tile, overlap);
    let s = model.scale().max(1) as u32;
    let (tile_s, overlap_s) = (tile * s, overlap * s);
    let (out_w, out_h) = (image.width * s, image.height * s);
    let mut combined = RgbBuffer::black(out_w, out_h);
    for &y in &ys {
        let mut row = RgbBuffer::black(out_w, tile_s);
        for &x in &xs {
            if interrupted() {
                break;
            }
            let up = upscale_tile(model, &image.crop(x, y, tile, tile))?;
            if up.width != tile_s || up.height != tile_s {
                return Err(Error::Sampling(format!(
                    "the upscaler turned a {tile}×{tile} tile into {}×{}, expected ×{s}",
                    up.width, up.height
                )));
            }
            let xs_ = x * i64::from(s);
            if xs_ == 0 {
                row.paste(&up, 0, 0, None);
                continue;
            }
            let blend = up.crop(0, 0, overlap_s, tile_s);
            row.paste(&blend, xs_, 0, Some(&|mx, _| ramp(mx, overlap_s)));
            let rest = up.crop(i64::from(overlap_s), 0, tile_s - overlap_s, tile_s);
            row.paste(&rest, xs_ + i64::from(overlap_s), 0, None);
        }
        let ys_ = y * i64::from(s);
        if ys_ == 0 {
            combined.paste(&row, 0, 0, None);
            continue;
        }
        let blend = row.crop(0, 0, out_w, overlap_s);
        combined.paste(&blend, 0, ys_, Some(&|_, my| ramp(my, overlap_s)));
        let rest = row.crop(0, i64::from(overlap_s), out_w, tile_s - overlap_s);
        combined.paste(&rest, 0, ys_ + i64::from(overlap_s), None);
    }
    Ok(combined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_starts_spread_evenly_and_end_at_edge() {
        // 70 px, tiles of 32 overlapping by 8: ceil(62/24) = 3 tiles, step 19.
        assert_eq!(tile_starts(70, 32, 8), vec![0, 19, 38]);
        // Smaller than one tile: a single tile that starts before the image.
        assert_eq!(tile_starts(28, 192, 8), vec![-164]);
    }

    #[test]
    fn ramp_matches_uint8_truncation() {
        assert_eq!((0..4).map(|i| ramp(i, 4)).collect::<Vec<_>>(), vec![0, 63, 127, 191]);
    }

    #[test]
    fn masked_paste_rounds_like_pillow() {
        let mut dst = RgbBuffer::new(1, 1, vec![10, 200, 0]).unwrap();
        let src = RgbBuffer::new(1, 1, vec![250, 0, 255]).unwrap();
        dst.paste(&src, 0, 0, Some(&|_, _| 100));
        // (10·155 + 250·100)/255 = 104.1; (200·155)/255 = 121.57; 255·100/255 = 100.
        assert_eq!(dst.data, vec![104, 122, 100]);
    }
}
