//! Brownian-tree noise for the SDE samplers, reproducing k-diffusion's `BrownianTreeNoiseSampler`
//! on top of torchsde 0.2.6's `BrownianTree` (a `BrownianInterval` with `halfway_tree=True`,
//! `tol=1e-6`, `pool_size=24`, no Lévy area), as A1111 seeds it with the image seeds.
//!
//! The construction: a Brownian motion `W` on `[t0, t1]` (here `t` is the noise level sigma) is
//! drawn as `W(t0, t1) = N(0, 1) · sqrt(t1 - t0)`. Intervals are split at their midpoints (rounded
//! to 6 decimals) into a binary tree until the queried end points are node boundaries; the
//! increment of a left child given its parent's increment `W` is the Brownian bridge sample
//! `left = (l/h) W + sqrt(l r / h) · z`, the right child gets `W - left`, where `l`, `r` are the
//! child widths and `h = l + r`. Every node's `z` comes from its own seed, so the motion depends
//! only on the entropy, not on the order of the queries.
//!
//! Seeds follow NumPy's `SeedSequence`: the root uses `SeedSequence(entropy, pool_size=24)
//! .generate_state(3)[0]`, a node with binary path key `k` at depth `d` uses
//! `SeedSequence(entropy, spawn_key=(k, d), pool_size=24).generate_state(4)[0]`. The normal draws
//! for a seed come from a [`SeededNormal`]: [`PrivateSeededNormal`] draws from a fresh private
//! generator, exactly torchsde's `torch.Generator(device).manual_seed(seed)`, so it gives
//! torchsde's numbers on the CPU and on CUDA; [`TorchSeededNormal`] reseeds the default generator
//! instead, which also works for float64.

use std::collections::{HashMap, VecDeque};

use tch::{Device, Kind, Tensor};

use super::noise::NoiseSource;
use crate::error::{Error, Result};

/// Pool size torchsde's `BrownianTree` passes to `SeedSequence`.
const POOL_SIZE: usize = 24;
/// torchsde's `BrownianTree` default tolerance: times are rounded to 6 decimals.
const NDIGITS: usize = 6;
/// Entries kept in the increment cache (torchsde's `cache_size`); only speed depends on it.
const CACHE_SIZE: usize = 45;
/// Guard against the (upstream `RecursionError`) case where a split cannot make progress.
const MAX_DEPTH: u32 = 512;

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// Splits a non-negative integer into 32-bit words, least significant first (NumPy's
/// `_int_to_uint32_array`; 0 is one word).
fn int_words(mut n: u64) -> Vec<u32> {
    if n == 0 {
        return vec![0];
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(n as u32);
        n >>= 32;
    }
    out
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut value = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    value = value.wrapping_mul(*hash_const);
    value ^ (value >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let result = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    result ^ (result >> XSHIFT)
}

/// NumPy's `SeedSequence(entropy, spawn_key=spawn_key, pool_size=pool_size).generate_state(n)`.
pub fn seed_sequence_state(entropy: u64, spawn_key: &[u64], pool_size: usize, n_words: usize) -> Vec<u32> {
    let mut run_entropy = int_words(entropy);
    let spawn_entropy: Vec<u32> = spawn_key.iter().flat_map(|k| int_words(*k)).collect();
    if !spawn_entropy.is_empty() && run_entropy.len() < pool_size {
        // NumPy pads the run entropy so spawn keys cannot collide with longer entropy.
        run_entropy.resize(pool_size, 0);
    }
    let entropy_array: Vec<u32> = run_entropy.into_iter().chain(spawn_entropy).collect();

    let mut pool = vec![0u32; pool_size];
    let mut hash_const = INIT_A;
    for (i, slot) in pool.iter_mut().enumerate() {
        let word = entropy_array.get(i).copied().unwrap_or(0);
        *slot = hashmix(word, &mut hash_const);
    }
    for i_src in 0..pool_size {
        for i_dst in 0..pool_size {
            if i_src != i_dst {
                let h = hashmix(pool[i_src], &mut hash_const);
                pool[i_dst] = mix(pool[i_dst], h);
            }
        }
    }
    for &word in entropy_array.iter().skip(pool_size) {
        for slot in pool.iter_mut() {
            let h = hashmix(word, &mut hash_const);
            *slot = mix(*slot, h);
        }
    }

    let mut hash_const = INIT_B;
    (0..n_words)
        .map(|i| {
            let mut v = pool[i % pool_size];
            v ^= hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> XSHIFT)
        })
        .collect()
}

/// Python's `round(x, 6)`: the nearest double to the correctly rounded 6-decimal value.
fn round_time(x: f64) -> f64 {
    format!("{x:.NDIGITS$}").parse().expect("a formatted float parses")
}

/// Standard normal draws determined by a 32-bit seed.
pub trait SeededNormal {
    /// `torch.randn(shape, dtype=kind, device=device, generator=Generator(device).manual_seed(seed))`.
    fn randn(&mut self, seed: u32, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor>;
}

/// [`SeededNormal`] through libtorch's default generator of the target device, reseeded before
/// each draw: a reseeded default generator produces the same numbers as a fresh
/// `torch.Generator(device).manual_seed(seed)`, in any dtype. It changes the process-wide generator
/// state; a lock keeps concurrent users of this type from interleaving, but any other user of the
/// default generator (`GlobalRandn`, `tch::manual_seed`) must not run at the same time.
#[derive(Debug, Default, Clone, Copy)]
pub struct TorchSeededNormal;

/// Serializes reseed-and-draw pairs of [`TorchSeededNormal`].
static DEFAULT_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl SeededNormal for TorchSeededNormal {
    fn randn(&mut self, seed: u32, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        let _guard = DEFAULT_GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tch::manual_seed(seed as i64);
        Ok(Tensor::f_randn(shape, (kind, device))?)
    }
}

/// [`SeededNormal`] through a private libtorch generator per draw ([`crate::rng::Generator`]),
/// exactly `torch.Generator(device).manual_seed(seed)`; leaves the default generators alone.
/// float32 only (the latent dtype A1111 samples in); use [`TorchSeededNormal`] for other dtypes.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrivateSeededNormal;

impl SeededNormal for PrivateSeededNormal {
    fn randn(&mut self, seed: u32, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        if kind != Kind::Float {
            return Err(Error::Sampling(format!(
                "private generators draw float32 only; Brownian noise for {kind:?} needs TorchSeededNormal"
            )));
        }
        crate::rng::Generator::new(device, u64::from(seed))?.randn(shape)
    }
}

#[derive(Debug, Clone)]
struct Node {
    start: f64,
    end: f64,
    parent: Option<usize>,
    is_left: bool,
    midway: Option<f64>,
    /// Set when the node is split: its children and the seed of its bridge noise.
    left: usize,
    right: usize,
    w_seed: u32,
    spawn_key: u64,
    depth: u32,
}

impl Node {
    /// A node over `[start, end]` (times rounded as torchsde rounds them) that is not split yet.
    fn unsplit(start: f64, end: f64, parent: Option<usize>, is_left: bool) -> Node {
        Node {
            start: round_time(start),
            end: round_time(end),
            parent,
            is_left,
            midway: None,
            left: 0,
            right: 0,
            w_seed: 0,
            spawn_key: 0,
            depth: 0,
        }
    }
}

/// torchsde's `BrownianInterval` with `halfway_tree=True` and no Lévy area, for one entropy.
struct BrownianInterval {
    nodes: Vec<Node>,
    entropy: u64,
    shape: Vec<i64>,
    kind: Kind,
    device: Device,
    w_root: Tensor,
    cache: HashMap<usize, Tensor>,
    cache_order: VecDeque<usize>,
    last: usize,
}

impl BrownianInterval {
    fn new(
        t0: f64,
        t1: f64,
        shape: &[i64],
        kind: Kind,
        device: Device,
        entropy: u64,
        normal: &mut dyn SeededNormal,
    ) -> Result<Self> {
        if t0 > t1 {
            return Err(Error::Sampling(format!("Brownian interval start {t0} is after its end {t1}")));
        }
        let seeds = seed_sequence_state(entropy, &[], POOL_SIZE, 3);
        let w_root = normal.randn(seeds[0], shape, kind, device)? * (t1 - t0).sqrt();
        let root = Node::unsplit(t0, t1, None, false);
        Ok(BrownianInterval {
            nodes: vec![root],
            entropy,
            shape: shape.to_vec(),
            kind,
            device,
            w_root,
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            last: 0,
        })
    }

    fn split_exact(&mut self, node: usize, midway: f64) -> Result<()> {
        let (spawn_key, depth) = match self.nodes[node].parent {
            None => (0, 0),
            Some(p) => {
                let parent = &self.nodes[p];
                (2 * parent.spawn_key + u64::from(!self.nodes[node].is_left), parent.depth + 1)
            }
        };
        if depth > MAX_DEPTH {
            return Err(Error::Sampling("Brownian tree split does not converge".into()));
        }
        let seeds = seed_sequence_state(self.entropy, &[spawn_key, u64::from(depth)], POOL_SIZE, 4);
        let mid = round_time(midway);
        let (start, end) = (self.nodes[node].start, self.nodes[node].end);
        let left = self.nodes.len();
        let right = left + 1;
        self.nodes.push(Node::unsplit(start, midway, Some(node), true));
        self.nodes.push(Node::unsplit(midway, end, Some(node), false));
        let n = &mut self.nodes[node];
        n.midway = Some(mid);
        n.left = left;
        n.right = right;
        n.w_seed = seeds[0];
        n.spawn_key = spawn_key;
        n.depth = depth;
        Ok(())
    }

    /// Splits at the rounded halfway point, then keeps halving the side that contains `midway`
    /// until `midway` is a node boundary.
    fn split(&mut self, mut node: usize, midway: f64) -> Result<()> {
        for _ in 0..MAX_DEPTH {
            let half = 0.5 * (self.nodes[node].end + self.nodes[node].start);
            self.split_exact(node, half)?;
            let m = self.nodes[node].midway.expect("just split");
            if midway > m {
                node = self.nodes[node].right;
            } else if midway < m {
                node = self.nodes[node].left;
            } else {
                return Ok(());
            }
        }
        Err(Error::Sampling("Brownian tree split does not converge".into()))
    }

    /// The existing or newly created nodes that exactly tile `[ta, tb]`, in order.
    fn locate(&mut self, ta: f64, tb: f64) -> Result<Vec<usize>> {
        let mut out = Vec::new();
        let mut pending = vec![(self.last, round_time(ta), round_time(tb))];
        let mut budget = 64 * MAX_DEPTH as usize;
        while let Some((mut node, ta, mut tb)) = pending.pop() {
            loop {
                budget = budget
                    .checked_sub(1)
                    .ok_or_else(|| Error::Sampling("Brownian tree search does not converge".into()))?;
                let (start, end) = (self.nodes[node].start, self.nodes[node].end);
                if ta < start || tb > end {
                    node = self.nodes[node]
                        .parent
                        .ok_or_else(|| Error::Sampling(format!("time [{ta}, {tb}] is outside the tree")))?;
                    continue;
                }
                if ta == start && tb == end {
                    out.push(node);
                    break;
                }
                match self.nodes[node].midway {
                    None => {
                        if ta == start {
                            self.split(node, tb)?;
                            node = self.nodes[node].left;
                        } else {
                            self.split(node, ta)?;
                            node = self.nodes[node].right;
                        }
                    }
                    Some(mid) => {
                        let (left, right) = (self.nodes[node].left, self.nodes[node].right);
                        if tb <= mid {
                            node = left;
                        } else if ta >= mid {
                            node = right;
                        } else {
                            // Left part first so that `out` stays ordered, the right part after.
                            pending.push((right, mid, tb));
                            node = left;
                            tb = mid;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn remember(&mut self, node: usize, w: &Tensor) {
        // torchsde's LRU dictionary: a write refreshes the entry, reads do not.
        if self.cache.contains_key(&node) {
            self.cache_order.retain(|&k| k != node);
        } else if self.cache.len() >= CACHE_SIZE {
            if let Some(old) = self.cache_order.pop_front() {
                self.cache.remove(&old);
            }
        }
        self.cache.insert(node, w.shallow_clone());
        self.cache_order.push_back(node);
    }

    /// The increment of `W` over a node, derived from its parent's by the Brownian bridge.
    fn increment(&mut self, node: usize, normal: &mut dyn SeededNormal) -> Result<Tensor> {
        let Some(parent) = self.nodes[node].parent else {
            return Ok(self.w_root.shallow_clone());
        };
        if let Some(w) = self.cache.get(&node) {
            return Ok(w.shallow_clone());
        }
        let w = self.increment(parent, normal)?;
        let p = &self.nodes[parent];
        let mid = p.midway.expect("a parent is split");
        let h_reciprocal = 1.0 / (p.end - p.start);
        let left_diff = mid - p.start;
        let right_diff = p.end - mid;
        let seed = p.w_seed;
        let mean = &w * left_diff * h_reciprocal;
        let var = left_diff * right_diff * h_reciprocal;
        let z = normal.randn(seed, &self.shape, self.kind, self.device)?;
        let left_w = mean + z * var.sqrt();
        let out = if self.nodes[node].is_left { left_w } else { w - left_w };
        self.remember(node, &out);
        Ok(out)
    }

    /// `W(tb) - W(ta)` (torchsde `BrownianInterval.__call__(ta, tb)`); times outside the interval
    /// are clamped to it, as torchsde does after warning.
    fn query(&mut self, ta: f64, tb: f64, normal: &mut dyn SeededNormal) -> Result<Tensor> {
        let (t0, t1) = (self.nodes[0].start, self.nodes[0].end);
        let ta = ta.clamp(t0, t1);
        let tb = tb.clamp(t0, t1);
        if ta > tb {
            return Err(Error::Sampling(format!("Brownian query times {ta} > {tb}")));
        }
        if ta == tb {
            return Ok(Tensor::f_zeros(self.shape.as_slice(), (self.kind, self.device))?);
        }
        let nodes = self.locate(ta, tb)?;
        self.last = *nodes.last().expect("a non-empty interval has at least one node");
        let mut w = self.increment(nodes[0], normal)?;
        for &n in &nodes[1..] {
            w = w + self.increment(n, normal)?;
        }
        Ok(w)
    }
}

/// k-diffusion's `BrownianTreeNoiseSampler` with one tree per image seed (A1111 passes the seeds
/// of the batch): `noise(sigma, sigma_next) = (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)`
/// per image, stacked along the batch dimension.
pub struct BrownianTreeNoise {
    trees: Vec<BrownianInterval>,
    normal: Box<dyn SeededNormal>,
}

impl BrownianTreeNoise {
    /// Trees over `[sigma_min, sigma_max]` for the images of `like` (`[B, ...]`), one per seed in
    /// `seeds` (`seeds.len() == B`), drawing in `like`'s dtype and device.
    pub fn new(
        like: &Tensor,
        sigma_min: f64,
        sigma_max: f64,
        seeds: &[u64],
        mut normal: Box<dyn SeededNormal>,
    ) -> Result<Self> {
        let size = like.size();
        if size.first().copied() != Some(seeds.len() as i64) {
            return Err(Error::Sampling(format!(
                "Brownian noise needs one seed per image: {} seeds for shape {size:?}",
                seeds.len()
            )));
        }
        let (t0, t1) = if sigma_min < sigma_max { (sigma_min, sigma_max) } else { (sigma_max, sigma_min) };
        let trees = seeds
            .iter()
            .map(|&s| {
                BrownianInterval::new(t0, t1, &size[1..], like.kind(), like.device(), s, normal.as_mut())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BrownianTreeNoise { trees, normal })
    }

    /// The same with [`TorchSeededNormal`] (any dtype; reseeds the default generator).
    pub fn with_torch_generator(
        like: &Tensor,
        sigma_min: f64,
        sigma_max: f64,
        seeds: &[u64],
    ) -> Result<Self> {
        Self::new(like, sigma_min, sigma_max, seeds, Box::new(TorchSeededNormal))
    }

    /// The same with [`PrivateSeededNormal`] (float32 latents; no global state touched).
    pub fn with_private_generator(
        like: &Tensor,
        sigma_min: f64,
        sigma_max: f64,
        seeds: &[u64],
    ) -> Result<Self> {
        Self::new(like, sigma_min, sigma_max, seeds, Box::new(PrivateSeededNormal))
    }
}

impl NoiseSource for BrownianTreeNoise {
    fn noise(&mut self, _like: &Tensor, sigma: f64, sigma_next: f64) -> Result<Tensor> {
        let (ta, tb, sign) =
            if sigma < sigma_next { (sigma, sigma_next, 1.0) } else { (sigma_next, sigma, -1.0) };
        let mut parts = Vec::with_capacity(self.trees.len());
        for tree in &mut self.trees {
            parts.push(tree.query(ta, tb, self.normal.as_mut())?);
        }
        let w = Tensor::f_stack(&parts, 0)? * sign;
        Ok(w / (sigma_next - sigma).abs().sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_sequence_default_pool_matches_numpy() {
        // numpy.random.SeedSequence(0).generate_state(4)
        assert_eq!(
            seed_sequence_state(0, &[], 4, 4),
            vec![2_968_811_710, 3_677_149_159, 745_650_761, 2_884_920_346]
        );
    }

    #[test]
    fn round_time_matches_python_round() {
        assert_eq!(round_time(0.029_167_533_698_678), 0.029_168);
        assert_eq!(round_time(14.614_641_189_575_195), 14.614_641);
    }
}
