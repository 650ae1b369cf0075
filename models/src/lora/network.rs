//! One LoRA / LyCORIS file: its modules grouped by flattened name, each with its algorithm, and
//! the weight each produces when merged into a target (formats.md §8.1, §8.3, §8.4).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::weights::open_file;

/// A low-rank factor pair or a full matrix (LoKr's `w1` / `w2`).
#[derive(Debug)]
pub enum KronFactor {
    Full(Tensor),
    /// `a [x, r]`, `b [r, y…]`, optionally Tucker `t [r, r, k, k]` (then `a [r, x]`, `b [r, y]`).
    Low {
        a: Tensor,
        b: Tensor,
        t: Option<Tensor>,
    },
}

/// The weight-update algorithm of one module.
#[derive(Debug)]
pub enum Algorithm {
    /// kohya LoRA / LoCon: `up [out, r(,1,1)]`, `down [r, in(,k,k)]`, optional Tucker `mid`.
    Lora { up: Tensor, down: Tensor, mid: Option<Tensor> },
    /// LoHa: `(w1a·w1b) ⊙ (w2a·w2b)`, optionally Tucker with `t1`, `t2`.
    Loha { w1a: Tensor, w1b: Tensor, w2a: Tensor, w2b: Tensor, t1: Option<Tensor>, t2: Option<Tensor> },
    /// LoKr: `kron(w1, w2)`.
    Lokr { w1: KronFactor, w2: KronFactor },
    /// (IA)³: a per-row (or per-column with `on_input`) gain.
    Ia3 { w: Tensor, on_input: bool },
    /// Full difference (`diff`, optional `diff_b` for the bias).
    Full { diff: Option<Tensor>, diff_b: Option<Tensor> },
}

/// One module of a network, addressed by its flattened kohya name.
#[derive(Debug)]
pub struct Module {
    pub algorithm: Algorithm,
    pub alpha: Option<f64>,
    /// DoRA magnitude (formats.md §8.4).
    pub dora_scale: Option<Tensor>,
}

/// A parsed network file.
#[derive(Debug)]
pub struct Network {
    pub path: PathBuf,
    pub modules: HashMap<String, Module>,
}

fn bad(path: &Path, reason: String) -> Error {
    Error::UnknownFormat { file: path.into(), reason }
}

impl Network {
    /// Reads a kohya / LyCORIS file (`.safetensors`, or a PyTorch pickle through the safe reader).
    /// Tensors are kept on the CPU in fp32; keys that belong to no known algorithm are ignored.
    pub fn load(path: &Path) -> Result<Network> {
        let src = open_file(path)?;
        // Split at the first `.`: `lora_unet_…_to_q` + `lora_down.weight` (formats.md §8.2).
        let mut parts: HashMap<String, HashMap<String, Tensor>> = HashMap::new();
        for key in src.names() {
            let Some((module, part)) = key.split_once('.') else { continue };
            let t = src.read(&key)?;
            let t = if t.is_floating_point() { t.to_kind(Kind::Float) } else { t };
            parts.entry(module.to_string()).or_default().insert(part.to_string(), t);
        }
        let mut modules = HashMap::new();
        for (name, mut p) in parts {
            let has = |p: &HashMap<String, Tensor>, k: &str| p.contains_key(k);
            let take = |p: &mut HashMap<String, Tensor>, k: &str| p.remove(k);
            let alpha = take(&mut p, "alpha").map(|t| t.to_kind(Kind::Double).double_value(&[]));
            let dora_scale = take(&mut p, "dora_scale");
            let algorithm = if has(&p, "lora_up.weight") && has(&p, "lora_down.weight") {
                Algorithm::Lora {
                    up: take(&mut p, "lora_up.weight").unwrap_or_default(),
                    down: take(&mut p, "lora_down.weight").unwrap_or_default(),
                    mid: take(&mut p, "lora_mid.weight"),
                }
            } else if ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"].iter().all(|k| has(&p, k)) {
                Algorithm::Loha {
                    w1a: take(&mut p, "hada_w1_a").unwrap_or_default(),
                    w1b: take(&mut p, "hada_w1_b").unwrap_or_default(),
                    w2a: take(&mut p, "hada_w2_a").unwrap_or_default(),
                    w2b: take(&mut p, "hada_w2_b").unwrap_or_default(),
                    t1: take(&mut p, "hada_t1"),
                    t2: take(&mut p, "hada_t2"),
                }
            } else if has(&p, "lokr_w1") || has(&p, "lokr_w1_a") {
                let mut factor = |w: &str, t: Option<&str>| {
                    let t = t.and_then(|t| take(&mut p, t));
                    match (take(&mut p, w), take(&mut p, &format!("{w}_a")), take(&mut p, &format!("{w}_b")))
                    {
                        (Some(f), _, _) => Ok(KronFactor::Full(f)),
                        (None, Some(a), Some(b)) => Ok(KronFactor::Low { a, b, t }),
                        _ => Err(bad(path, format!("LoKr module {name} lacks factor {w}"))),
                    }
                };
                let w1 = factor("lokr_w1", None)?;
                let w2 = factor("lokr_w2", Some("lokr_t2"))?;
                Algorithm::Lokr { w1, w2 }
            } else if let Some(w) = take(&mut p, "weight") {
                let on_input = take(&mut p, "on_input")
                    .is_some_and(|t| t.to_kind(Kind::Double).double_value(&[]) != 0.0);
                Algorithm::Ia3 { w, on_input }
            } else if has(&p, "diff") || has(&p, "diff_b") {
                Algorithm::Full { diff: take(&mut p, "diff"), diff_b: take(&mut p, "diff_b") }
            } else {
                tracing::debug!(module = %name, file = %path.display(), "LoRA module of no known algorithm skipped");
                continue;
            };
            modules.insert(name, Module { algorithm, alpha, dora_scale });
        }
        Ok(Network { path: path.to_path_buf(), modules })
    }
}

fn on(t: &Tensor, like: &Tensor) -> Tensor {
    t.to_device(like.device()).to_kind(Kind::Float)
}

/// `t` reshaped to `shape` when their element counts agree.
fn fit(t: Tensor, shape: &[i64], what: &str) -> Result<Tensor> {
    let numel: i64 = shape.iter().product();
    if t.numel() as i64 != numel {
        return Err(Error::ShapeMismatch {
            name: what.to_string(),
            file: PathBuf::from("<LoRA update>"),
            expected: shape.to_vec(),
            got: t.size(),
        });
    }
    Ok(t.f_reshape(shape)?)
}

fn rebuild_factor(f: &KronFactor, like: &Tensor) -> Result<Tensor> {
    Ok(match f {
        KronFactor::Full(w) => on(w, like),
        KronFactor::Low { a, b, t: Some(t) } => {
            Tensor::f_einsum("achw,ab,cd->bdhw", &[on(t, like), on(a, like), on(b, like)], None::<i64>)?
        }
        KronFactor::Low { a, b, t: None } => on(a, like).f_matmul(&on(b, like).flatten(1, -1))?,
    })
}

impl Module {
    /// The rank that `alpha` is divided by, and whether the algorithm scales at all.
    fn scale(&self) -> f64 {
        let rank = match &self.algorithm {
            Algorithm::Lora { down, .. } => Some(down.size()[0]),
            Algorithm::Loha { w1b, .. } => Some(w1b.size()[0]),
            // LoKr scales only when a factor is low-rank (formats.md §8.3).
            Algorithm::Lokr { w1, w2 } => match (w1, w2) {
                (KronFactor::Low { b, .. }, _) | (_, KronFactor::Low { b, .. }) => Some(b.size()[0]),
                _ => None,
            },
            Algorithm::Ia3 { .. } | Algorithm::Full { .. } => None,
        };
        match (rank, self.alpha) {
            (Some(r), Some(a)) if a != 0.0 && r > 0 => a / r as f64,
            _ => 1.0,
        }
    }

    /// ΔW for a weight of `shape` (fp32 on `like`'s device), before scale and multiplier.
    fn delta(&self, shape: &[i64], like: &Tensor, what: &str) -> Result<Option<Tensor>> {
        let d = match &self.algorithm {
            Algorithm::Lora { up, down, mid: Some(mid) } => {
                let (up, down) = (on(up, like).flatten(1, -1), on(down, like).flatten(1, -1));
                Tensor::f_einsum("oa,abhw,bi->oihw", &[up, on(mid, like), down], None::<i64>)?
            }
            Algorithm::Lora { up, down, mid: None } => {
                on(up, like).flatten(1, -1).f_matmul(&on(down, like).flatten(1, -1))?
            }
            Algorithm::Loha { w1a, w1b, w2a, w2b, t1, t2 } => {
                let half = |a: &Tensor, b: &Tensor, t: &Option<Tensor>| -> Result<Tensor> {
                    Ok(match t {
                        Some(t) => Tensor::f_einsum(
                            "abhw,ao,bc->ochw",
                            &[on(t, like), on(a, like), on(b, like)],
                            None::<i64>,
                        )?,
                        None => on(a, like).f_matmul(&on(b, like))?,
                    })
                };
                let one = fit(half(w1a, w1b, t1)?, shape, what)?;
                one * fit(half(w2a, w2b, t2)?, shape, what)?
            }
            Algorithm::Lokr { w1, w2 } => {
                let mut w1 = rebuild_factor(w1, like)?;
                let mut w2 = rebuild_factor(w2, like)?;
                if shape.len() == 4 {
                    // w1 [a, c] acts on channels only; w2 carries the kernel: [b, d, k, k].
                    w1 = w1.reshape([w1.size()[0], w1.size()[1], 1, 1]);
                    let d = shape[1] / w1.size()[1];
                    w2 = w2.f_reshape([w2.size()[0], d, shape[2], shape[3]])?;
                }
                w1.f_kron(&w2)?
            }
            Algorithm::Full { diff: Some(d), .. } => on(d, like),
            Algorithm::Full { diff: None, .. } | Algorithm::Ia3 { .. } => return Ok(None),
        };
        Ok(Some(fit(d, shape, what)?))
    }

    /// The merged weight for original weight `w` (fp32) at multiplier `m`.
    pub fn merged_weight(&self, w: &Tensor, m: f64, what: &str) -> Result<Tensor> {
        let shape = w.size();
        if let Algorithm::Ia3 { w: gain, on_input } = &self.algorithm {
            let mut bshape = vec![1; shape.len()];
            let dim = usize::from(*on_input);
            bshape[dim] = shape[dim];
            let gain = fit(on(gain, w), &bshape, what)?;
            return Ok(w * (gain * m + 1.0));
        }
        let Some(delta) = self.delta(&shape, w, what)? else { return Ok(w.shallow_clone()) };
        let delta = delta * self.scale();
        let Some(mag) = &self.dora_scale else { return Ok(w + delta * m) };
        // DoRA, A1111/ComfyUI strength form: W + m·(mag·V/‖V‖ − W) with V = W + s·ΔW.
        let v = w + delta;
        let out = shape[0];
        let per_output = mag.size().first() == Some(&out);
        let rest: Vec<i64> = vec![1; shape.len().saturating_sub(1)];
        let (norm, bshape) = if per_output {
            let n = v.reshape([out, -1]).norm_scalaropt_dim(2, [1], false);
            (n, [vec![out], rest].concat())
        } else {
            let inp = shape[1];
            let n = v.transpose(0, 1).reshape([inp, -1]).norm_scalaropt_dim(2, [1], false);
            let mut b = vec![1; shape.len()];
            b[1] = inp;
            (n, b)
        };
        let norm = norm.reshape(bshape.as_slice()) + f64::from(f32::EPSILON);
        let mag = fit(on(mag, w), &bshape, what)?;
        let dora = &v * mag / norm;
        Ok(w + (dora - w) * m)
    }

    /// The merged bias for original bias `b` (fp32), when the module changes biases.
    pub fn merged_bias(&self, b: &Tensor, m: f64, what: &str) -> Result<Option<Tensor>> {
        match &self.algorithm {
            Algorithm::Full { diff_b: Some(db), .. } => Ok(Some(b + fit(on(db, b), &b.size(), what)? * m)),
            _ => Ok(None),
        }
    }
}
