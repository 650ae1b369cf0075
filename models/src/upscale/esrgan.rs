//! RRDBNet, the ESRGAN / Real-ESRGAN / BSRGAN generator (formats.md §10.1).
//!
//! Three key layouts exist for the same network; they are renamed to the Real-ESRGAN (basicsr)
//! names when opened, so the network below reads one layout:
//!
//! | old ESRGAN | BSRGAN | Real-ESRGAN (canonical here) |
//! |---|---|---|
//! | `model.0` | `conv_first` | `conv_first` |
//! | `model.1.sub.{b}.RDB{r}.conv{c}.0` | `RRDB_trunk.{b}.RDB{r}.conv{c}` | `body.{b}.rdb{r}.conv{c}` |
//! | `model.1.sub.{NB}` | `trunk_conv` | `conv_body` |
//! | `model.{3k}` | `upconv{k}` | `conv_up{k}` |
//! | `model.{3K+2}` | `HRconv` | `conv_hr` |
//! | `model.{3K+4}` | `conv_last` | `conv_last` |
//!
//! Every setting (features, blocks, growth channels, in/out channels, number of ×2 stages,
//! pixel-unshuffle factor) comes from tensor shapes, never from the file name. Containers are
//! unwrapped as spandrel does: a `params_ema` / `params` / `state_dict` / … wrapper, then a
//! common `module.` or `netG.` prefix.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use tch::{Kind, Tensor};

use crate::device::Placement;
use crate::error::{Error, Result};
use crate::nn::Conv2d;
use crate::weights::{open_file, Renamed, TensorSource, Weights};

/// The network settings, inferred from tensor shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EsrganConfig {
    /// Channels the first convolution takes (3, or 12/48 after a pixel-unshuffle).
    pub in_nc: i64,
    /// Image channels out.
    pub out_nc: i64,
    /// Feature channels of the trunk (64 in stock models).
    pub nf: i64,
    /// RRDB blocks (23 in stock models, 6 in the anime model).
    pub nb: i64,
    /// Growth channels of the dense blocks (32 in stock models).
    pub gc: i64,
    /// Nearest-×2 + convolution stages at the end.
    pub upsamples: i64,
    /// Pixel-unshuffle factor in front (1 = none; Real-ESRGAN ×2 uses 2, ×1 uses 4).
    pub unshuffle: i64,
}

impl EsrganConfig {
    /// The factor between input and output size.
    pub fn scale(&self) -> i64 {
        (1i64 << self.upsamples) / self.unshuffle
    }
}

/// Wrappers spandrel unwraps, in its order.
const WRAPPERS: [&str; 7] =
    ["model_state_dict", "state_dict", "params_ema", "params-ema", "params", "model", "net"];

/// Maps canonical (Real-ESRGAN) names to the names stored in the file, or `None` when the names
/// are not an RRDBNet in any known layout.
pub fn canonical_names(names: &[String]) -> Option<HashMap<String, String>> {
    let has = |names: &[(String, String)], k: &str| names.iter().any(|(n, _)| n == k);
    let mut candidates: Vec<Vec<(String, String)>> =
        vec![names.iter().map(|n| (n.clone(), n.clone())).collect()];
    for w in WRAPPERS {
        let p = format!("{w}.");
        let inner: Vec<(String, String)> =
            names.iter().filter_map(|n| Some((n.strip_prefix(&p)?.to_string(), n.clone()))).collect();
        if !inner.is_empty() {
            candidates.push(inner);
        }
    }
    for mut cand in candidates {
        for common in ["module.", "netG."] {
            if !cand.is_empty() && cand.iter().all(|(n, _)| n.starts_with(common)) {
                cand = cand.into_iter().map(|(n, o)| (n[common.len()..].to_string(), o)).collect();
            }
        }
        if has(&cand, "model.0.weight") && has(&cand, "model.1.sub.0.RDB1.conv1.0.weight") {
            return old_layout(&cand);
        }
        if has(&cand, "conv_first.weight")
            && (has(&cand, "body.0.rdb1.conv1.weight") || has(&cand, "RRDB_trunk.0.RDB1.conv1.weight"))
        {
            return Some(new_layout(&cand));
        }
    }
    None
}

/// Renames the old ESRGAN `model.N` sequential layout.
fn old_layout(names: &[(String, String)]) -> Option<HashMap<String, String>> {
    // The highest top-level index is conv_last: 3K+4 for K upsample stages.
    let top = |n: &str| n.strip_prefix("model.")?.split('.').next()?.parse::<usize>().ok();
    let last = names.iter().filter_map(|(n, _)| top(n)).max()?;
    if last < 4 || !(last - 4).is_multiple_of(3) {
        return None;
    }
    let k = (last - 4) / 3;
    let mut fixed: HashMap<usize, String> = HashMap::new();
    fixed.insert(0, "conv_first".into());
    for i in 1..=k {
        fixed.insert(3 * i, format!("conv_up{i}"));
    }
    fixed.insert(3 * k + 2, "conv_hr".into());
    fixed.insert(last, "conv_last".into());
    let mut map = HashMap::new();
    for (name, original) in names {
        let parts: Vec<&str> = name.split('.').collect();
        let canonical = match parts.as_slice() {
            ["model", idx, leaf] => format!("{}.{leaf}", fixed.get(&idx.parse::<usize>().ok()?)?),
            ["model", "1", "sub", _, leaf] => format!("conv_body.{leaf}"),
            ["model", "1", "sub", b, rdb, conv, "0", leaf] => {
                format!("body.{b}.{}.{conv}.{leaf}", rdb.to_lowercase())
            }
            _ => continue,
        };
        map.insert(canonical, original.clone());
    }
    Some(map)
}

/// Renames the Real-ESRGAN (identity) and BSRGAN layouts.
fn new_layout(names: &[(String, String)]) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for (name, original) in names {
        let canonical = if let Some(rest) = name.strip_prefix("RRDB_trunk.") {
            // RRDB_trunk.{b}.RDB{r}.conv{c}.{leaf}
            let parts: Vec<&str> = rest.split('.').collect();
            match parts.as_slice() {
                [b, rdb, conv, leaf] => format!("body.{b}.{}.{conv}.{leaf}", rdb.to_lowercase()),
                _ => continue,
            }
        } else if let Some(leaf) = name.strip_prefix("trunk_conv.") {
            format!("conv_body.{leaf}")
        } else if let Some(leaf) = name.strip_prefix("HRconv.") {
            format!("conv_hr.{leaf}")
        } else if let Some(rest) = name.strip_prefix("upconv") {
            format!("conv_up{rest}")
        } else {
            name.clone()
        };
        map.insert(canonical, original.clone());
    }
    map
}

/// Infers the settings from the canonical names of `src`.
fn infer_config(src: &dyn TensorSource) -> Result<EsrganConfig> {
    let bad = |reason: String| Error::UnknownFormat { file: src.origin().into(), reason };
    let shape = |name: &str| {
        src.info(name)
            .map(|i| i.shape)
            .ok_or_else(|| Error::MissingTensor { name: name.into(), file: src.origin().into() })
    };
    let first = shape("conv_first.weight")?;
    let grow = shape("body.0.rdb1.conv1.weight")?;
    let last = shape("conv_last.weight")?;
    if first.len() != 4 || grow.len() != 4 || last.len() != 4 {
        return Err(bad("ESRGAN convolutions must be 4-D".into()));
    }
    let names = src.names();
    let blocks: BTreeSet<i64> =
        names.iter().filter_map(|n| n.strip_prefix("body.")?.split('.').next()?.parse().ok()).collect();
    let nb = blocks.len() as i64;
    if blocks.iter().copied().ne(0..nb) {
        return Err(bad(format!("RRDB block indices are not contiguous: {blocks:?}")));
    }
    let upsamples = (1..).take_while(|i| src.contains(&format!("conv_up{i}.weight"))).count() as i64;
    let (in_nc, out_nc) = (first[1], last[0]);
    // Real-ESRGAN ×2 / ×1 fold the image into channels first (spandrel's test).
    let unshuffle = if in_nc == 4 * out_nc {
        2
    } else if in_nc == 16 * out_nc {
        4
    } else {
        1
    };
    Ok(EsrganConfig { in_nc, out_nc, nf: first[0], nb, gc: grow[0], upsamples, unshuffle })
}

/// LeakyReLU with slope 0.2 (tch's `leaky_relu` has libtorch's default 0.01 built in); for a
/// slope below one, `max(x, 0.2·x)` picks the same value as torch's `x > 0 ? x : 0.2·x`.
fn lrelu(x: &Tensor) -> Tensor {
    x.maximum(&(x * 0.2))
}

/// One residual dense block: five 3×3 convolutions, each seeing every earlier output.
struct DenseBlock {
    convs: Vec<Conv2d>,
}

impl DenseBlock {
    fn new(w: &Weights, nf: i64, gc: i64) -> Result<Self> {
        let convs = (0..5)
            .map(|i| {
                Conv2d::new(
                    &w.pp(format!("conv{}", i + 1)),
                    nf + i * gc,
                    if i == 4 { nf } else { gc },
                    3,
                    1,
                    1,
                )
            })
            .collect::<Result<_>>()?;
        Ok(DenseBlock { convs })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut feats = vec![x.shallow_clone()];
        for conv in &self.convs[..4] {
            let y = lrelu(&conv.forward(&Tensor::cat(&feats, 1)));
            feats.push(y);
        }
        self.convs[4].forward(&Tensor::cat(&feats, 1)) * 0.2 + x
    }
}

/// Residual-in-residual dense block: three dense blocks and a scaled skip.
struct Rrdb {
    rdbs: [DenseBlock; 3],
}

impl Rrdb {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.rdbs.iter().fold(x.shallow_clone(), |h, rdb| rdb.forward(&h));
        y * 0.2 + x
    }
}

/// A loaded RRDBNet.
pub struct Esrgan {
    config: EsrganConfig,
    placement: Placement,
    conv_first: Conv2d,
    body: Vec<Rrdb>,
    conv_body: Conv2d,
    ups: Vec<Conv2d>,
    conv_hr: Conv2d,
    conv_last: Conv2d,
}

impl Esrgan {
    /// Opens `path` (`.pth`/`.pt` through the safe pickle reader, or `.safetensors`; classified by
    /// content) and builds the network on `placement`.
    pub fn load(path: &Path, placement: Placement) -> Result<Self> {
        let file = open_file(path)?;
        Self::from_source(file, placement)
    }

    /// Builds the network from any tensor source holding an RRDBNet in a known layout.
    pub fn from_source<S: TensorSource>(src: S, placement: Placement) -> Result<Self> {
        let map = canonical_names(&src.names()).ok_or_else(|| Error::UnknownFormat {
            file: src.origin().into(),
            reason: "not an ESRGAN (RRDBNet) model: no `model.0` + `model.1.sub.0.RDB1…` or \
                     `conv_first` + `body.0.rdb1…` keys"
                .into(),
        })?;
        let src = Renamed::new(src, map);
        let config = infer_config(&src)?;
        let w = Weights::from_source(&src, placement);
        let EsrganConfig { in_nc, out_nc, nf, nb, gc, upsamples, .. } = config;
        let conv_first = Conv2d::new(&w.pp("conv_first"), in_nc, nf, 3, 1, 1)?;
        let body = (0..nb)
            .map(|b| {
                let wb = w.pp(format!("body.{b}"));
                Ok(Rrdb {
                    rdbs: [
                        DenseBlock::new(&wb.pp("rdb1"), nf, gc)?,
                        DenseBlock::new(&wb.pp("rdb2"), nf, gc)?,
                        DenseBlock::new(&wb.pp("rdb3"), nf, gc)?,
                    ],
                })
            })
            .collect::<Result<_>>()?;
        let conv_body = Conv2d::new(&w.pp("conv_body"), nf, nf, 3, 1, 1)?;
        let ups = (1..=upsamples)
            .map(|i| Conv2d::new(&w.pp(format!("conv_up{i}")), nf, nf, 3, 1, 1))
            .collect::<Result<_>>()?;
        let conv_hr = Conv2d::new(&w.pp("conv_hr"), nf, nf, 3, 1, 1)?;
        let conv_last = Conv2d::new(&w.pp("conv_last"), nf, out_nc, 3, 1, 1)?;
        Ok(Esrgan { config, placement, conv_first, body, conv_body, ups, conv_hr, conv_last })
    }

    pub fn config(&self) -> EsrganConfig {
        self.config
    }

    /// The factor between input and output size.
    pub fn scale(&self) -> i64 {
        self.config.scale()
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Runs the network on `[N, C, H, W]` values in [0, 1] (any device or float dtype); returns
    /// `[N, out_nc, H·scale, W·scale]` in fp32 on the same device as the model, unclamped.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let Placement { device, kind } = self.placement;
            let mut x = x.to_device(device).to_kind(kind);
            let (h, w) = (x.size()[2], x.size()[3]);
            let f = self.config.unshuffle;
            if f > 1 {
                // Pad to a multiple of the factor (reflect), as spandrel does; cropped at the end.
                let (ph, pw) = ((f - h % f) % f, (f - w % f) % f);
                if ph > 0 || pw > 0 {
                    x = x.reflection_pad2d([0, pw, 0, ph]);
                }
                x = x.pixel_unshuffle(f);
            }
            let feat = self.conv_first.forward(&x);
            let trunk = self.body.iter().fold(feat.shallow_clone(), |h, block| block.forward(&h));
            let mut feat = feat + self.conv_body.forward(&trunk);
            for up in &self.ups {
                let size = feat.size();
                let up_in = feat.upsample_nearest2d([size[2] * 2, size[3] * 2], None, None);
                feat = lrelu(&up.forward(&up_in));
            }
            let mut out = self.conv_last.forward(&lrelu(&self.conv_hr.forward(&feat)));
            if f > 1 {
                let s = self.scale();
                out = out.narrow(2, 0, h * s).narrow(3, 0, w * s);
            }
            out.to_kind(Kind::Float)
        })
    }
}
