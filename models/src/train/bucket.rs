//! kohya's aspect-ratio buckets (training spec §1.6, §1.7), as pure functions: the predefined
//! bucket list, the bucket an image of a given size goes to, the size it is resized to and the
//! centre crop that cuts it to the bucket. The daemon resizes and crops the pixels; the training
//! session groups images by their resulting size (one bucket per batch).

use serde::{Deserialize, Serialize};

use crate::error::Result;

use super::train_error;

/// Where an image goes: its bucket, the size it is resized to, and the crop offsets that cut the
/// resized image to the bucket (the bucket's width × height starting at `(crop_left, crop_top)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketAssignment {
    pub bucket_w: u32,
    pub bucket_h: u32,
    pub resized_w: u32,
    pub resized_h: u32,
    pub crop_left: u32,
    pub crop_top: u32,
}

/// `--min_bucket_reso` / `--max_bucket_reso` as sd-scripts adjusts them: min floored and max
/// raised to multiples of `steps`; an error unless min ≤ min(resolution) and max ≥ max(resolution),
/// or when `steps` is not a positive multiple of 64 (SD1's VAE and UNet need it).
pub fn bucket_limits(resolution: (u32, u32), steps: u32, min: u32, max: u32) -> Result<(u32, u32)> {
    if steps == 0 || !steps.is_multiple_of(64) {
        return Err(train_error(format!("bucket_reso_steps must be a multiple of 64, got {steps}")));
    }
    let min = min - min % steps;
    let max = max.div_ceil(steps) * steps;
    let (w, h) = resolution;
    if min > w.min(h) || max < w.max(h) {
        return Err(train_error(format!(
            "bucket sizes {min}..{max} must include the resolution {w}×{h} \
             (min_bucket_reso ≤ min side, max_bucket_reso ≥ max side)"
        )));
    }
    Ok((min, max))
}

/// `make_bucket_resolutions`: with area A = w·h and step d, the square floor(√A / d)·d, and for
/// every width from `min` to `max` in steps of d the height min(max, floor((A div w) / d)·d) when
/// it is at least `min`, both ways round; de-duplicated and sorted by (width, height).
pub fn make_buckets(resolution: (u32, u32), steps: u32, min: u32, max: u32) -> Vec<(u32, u32)> {
    let area = u64::from(resolution.0) * u64::from(resolution.1);
    let d = u64::from(steps.max(1));
    let square = ((area as f64).sqrt() as u64 / d * d) as u32;
    let mut out = vec![(square, square)];
    let mut w = u64::from(min);
    while w <= u64::from(max) {
        let h = (u64::from(max)).min(area / w.max(1) / d * d) as u32;
        if h >= min {
            out.push((w as u32, h));
            out.push((h, w as u32));
        }
        w += d;
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// kohya's `round_to_steps`: round half up to an integer, then floor to a multiple of `steps`.
fn round_to_steps(x: f64, steps: u32) -> u32 {
    let x = (x + 0.5) as u32;
    x - x % steps
}

/// `BucketManager.select_bucket` plus the centre crop of `trim_and_resize_if_required`.
///
/// Upscaling allowed (`no_upscale` false, `buckets` from [`make_buckets`]): the image's own size
/// if it is a bucket, else the bucket with the smallest |w_b/h_b − w/h| (first in sorted order);
/// the image is scaled to cover it (by h_b/h when it is wider than the bucket, else by w_b/w) and
/// rounded half up.
///
/// `no_upscale` (`buckets` unused): an image of area ≤ resolution² keeps its size; a larger one is
/// scaled to area ≈ A with kohya's width-first/height-first rounding, whichever keeps the aspect
/// ratio closer; the bucket is the resized size floored to multiples of `steps`.
///
/// Crop offsets are half the excess, rounded down, on each axis.
pub fn assign_bucket(
    width: u32,
    height: u32,
    resolution: (u32, u32),
    steps: u32,
    buckets: &[(u32, u32)],
    no_upscale: bool,
) -> BucketAssignment {
    let steps = steps.max(1);
    let aspect = f64::from(width) / f64::from(height);
    let (bucket, resized) = if !no_upscale && !buckets.is_empty() {
        let bucket = if buckets.contains(&(width, height)) {
            (width, height)
        } else {
            let err = |b: &(u32, u32)| (f64::from(b.0) / f64::from(b.1) - aspect).abs();
            let mut best = buckets[0];
            for b in &buckets[1..] {
                if err(b) < err(&best) {
                    best = *b;
                }
            }
            best
        };
        let bucket_aspect = f64::from(bucket.0) / f64::from(bucket.1);
        let scale = if aspect > bucket_aspect {
            f64::from(bucket.1) / f64::from(height)
        } else {
            f64::from(bucket.0) / f64::from(width)
        };
        let resized = ((f64::from(width) * scale + 0.5) as u32, (f64::from(height) * scale + 0.5) as u32);
        (bucket, resized)
    } else {
        let max_area = f64::from(resolution.0) * f64::from(resolution.1);
        let resized = if f64::from(width) * f64::from(height) > max_area {
            let rw = (max_area * aspect).sqrt();
            let rh = max_area / rw;
            let bw = round_to_steps(rw, steps);
            let bh_from_w = round_to_steps(f64::from(bw) / aspect, steps);
            let ar_w = f64::from(bw) / f64::from(bh_from_w);
            let bh = round_to_steps(rh, steps);
            let bw_from_h = round_to_steps(f64::from(bh) * aspect, steps);
            let ar_h = f64::from(bw_from_h) / f64::from(bh);
            if (ar_w - aspect).abs() < (ar_h - aspect).abs() {
                (bw, (f64::from(bw) / aspect + 0.5) as u32)
            } else {
                ((f64::from(bh) * aspect + 0.5) as u32, bh)
            }
        } else {
            (width, height)
        };
        ((resized.0 - resized.0 % steps, resized.1 - resized.1 % steps), resized)
    };
    BucketAssignment {
        bucket_w: bucket.0,
        bucket_h: bucket.1,
        resized_w: resized.0,
        resized_h: resized.1,
        crop_left: resized.0.saturating_sub(bucket.0) / 2,
        crop_top: resized.1.saturating_sub(bucket.1) / 2,
    }
}

/// kohya's bucket settings, with the guide's values as defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketSettings {
    pub resolution: (u32, u32),
    /// `bucket_reso_steps` (64).
    pub steps: u32,
    /// `min_bucket_reso` / `max_bucket_reso` (sd-scripts: 256 and 1024); ignored with `no_upscale`.
    pub min: u32,
    pub max: u32,
    /// `bucket_no_upscale` (the guide's "Don't upscale bucket resolution": on).
    pub no_upscale: bool,
}

impl Default for BucketSettings {
    fn default() -> Self {
        BucketSettings { resolution: (768, 768), steps: 64, min: 256, max: 1024, no_upscale: true }
    }
}

impl BucketSettings {
    /// Checks the settings and assigns each `(width, height)` a bucket.
    pub fn assign_all(&self, sizes: &[(u32, u32)]) -> Result<Vec<BucketAssignment>> {
        let buckets = if self.no_upscale {
            if self.steps == 0 || !self.steps.is_multiple_of(64) {
                return Err(train_error(format!(
                    "bucket_reso_steps must be a multiple of 64, got {}",
                    self.steps
                )));
            }
            Vec::new()
        } else {
            let (min, max) = bucket_limits(self.resolution, self.steps, self.min, self.max)?;
            make_buckets(self.resolution, self.steps, min, max)
        };
        sizes
            .iter()
            .map(|&(w, h)| {
                let a = assign_bucket(w, h, self.resolution, self.steps, &buckets, self.no_upscale);
                if a.bucket_w == 0 || a.bucket_h == 0 {
                    Err(train_error(format!(
                        "a {w}×{h} image is smaller than one bucket step ({} px)",
                        self.steps
                    )))
                } else {
                    Ok(a)
                }
            })
            .collect()
    }
}

/// `ss_bucket_info`'s `mean_img_ar_error`: the mean |w_b/h_b − w/h| over images (no repeats).
pub fn mean_aspect_error(sizes: &[(u32, u32)], assignments: &[BucketAssignment]) -> f64 {
    if sizes.is_empty() {
        return 0.0;
    }
    let sum: f64 = sizes
        .iter()
        .zip(assignments)
        .map(|(&(w, h), a)| {
            (f64::from(a.bucket_w) / f64::from(a.bucket_h) - f64::from(w) / f64::from(h)).abs()
        })
        .sum();
    sum / sizes.len() as f64
}

/// kohya's `ss_bucket_info` metadata: `{"buckets": {index: {"resolution": [w, h], "count": n}},
/// "mean_img_ar_error": e}`. Indices are positions in the bucket list (`buckets` from
/// [`make_buckets`] when upscaling, else the distinct assigned sizes sorted by (w, h)); empty
/// buckets are left out; counts include each image's `repeats`.
pub fn bucket_info(
    sizes: &[(u32, u32)],
    assignments: &[BucketAssignment],
    repeats: &[u32],
    buckets: &[(u32, u32)],
) -> serde_json::Value {
    let mut list: Vec<(u32, u32)> = if buckets.is_empty() {
        assignments.iter().map(|a| (a.bucket_w, a.bucket_h)).collect()
    } else {
        buckets.to_vec()
    };
    list.sort_unstable();
    list.dedup();
    let mut out = serde_json::Map::new();
    for (i, reso) in list.iter().enumerate() {
        let count: u64 = assignments
            .iter()
            .zip(repeats)
            .filter(|(a, _)| (a.bucket_w, a.bucket_h) == *reso)
            .map(|(_, &r)| u64::from(r))
            .sum();
        if count > 0 {
            out.insert(i.to_string(), serde_json::json!({ "resolution": [reso.0, reso.1], "count": count }));
        }
    }
    serde_json::json!({ "buckets": out, "mean_img_ar_error": mean_aspect_error(sizes, assignments) })
}
