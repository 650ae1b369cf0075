//! A1111's "NV" noise source: its CPU emulation of what NVIDIA's cuRAND-based `torch.randn` on a
//! CUDA device produces (`modules/rng_philox.py`), so GPU-made seeds can be reproduced anywhere.
//!
//! Each element `i` of a draw is one Philox 4x32-10 block with counter
//! `[offset, 0, i, 0]` and key `[seed low 32 bits, seed high 32 bits]`; the first two output words
//! go through one branch of Box-Muller. `offset` counts draws (not elements): the k-th draw of a
//! generator uses offset k.
//!
//! A1111 does the Box-Muller arithmetic in float64 (numpy promotes its `uint32` words times a
//! one-element `float32` array to float64) with float32-rounded constants, then rounds the result
//! to float32. The same order of operations in `f64` here gives the same float32 values; `ln`
//! and `sin` come from the platform's libm, like numpy's.

/// Philox round multipliers.
const PHILOX_M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
/// Philox key increments (the Weyl sequence), added after every round but the last.
const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];
const ROUNDS: usize = 10;

/// 2^-32 as A1111 writes it: the decimal literal rounded to float32.
const TWO_POW32_INV: f32 = 2.328_306_4e-10;

/// 2^-32 * 2pi: A1111 multiplies the two decimal literals in float64 and rounds the product to
/// float32 (not the product of the float32 roundings).
fn two_pow32_inv_2pi() -> f32 {
    (2.328_306_4e-10_f64 * 6.283_185_5_f64) as f32
}

/// One Philox 4x32 round: two 32x32→64 multiplications whose halves are mixed with the other
/// counter words and the key.
fn round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let p0 = u64::from(c[0]) * u64::from(PHILOX_M[0]);
    let p1 = u64::from(c[2]) * u64::from(PHILOX_M[1]);
    let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
    let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// Philox 4x32-10 of one counter block.
fn philox4x32_10(mut c: [u32; 4], mut k: [u32; 2]) -> [u32; 4] {
    for _ in 0..ROUNDS - 1 {
        c = round(c, k);
        k = [k[0].wrapping_add(PHILOX_W[0]), k[1].wrapping_add(PHILOX_W[1])];
    }
    round(c, k)
}

/// The first output of Box-Muller for two uniform 32-bit words. Both uniforms are shifted by half a
/// step so they never reach 0 (keeping `ln` finite).
fn box_muller(x: u32, y: u32, inv_2pi: f32) -> f32 {
    let inv = f64::from(TWO_POW32_INV);
    let inv_2pi = f64::from(inv_2pi);
    // Halving a float32 is exact, so halving before or after widening is the same.
    let u = f64::from(x) * inv + inv / 2.0;
    let v = f64::from(y) * inv_2pi + inv_2pi / 2.0;
    let s = (-2.0 * u.ln()).sqrt();
    (s * v.sin()) as f32
}

/// A1111's Philox normal generator for one seed.
#[derive(Clone, Debug)]
pub struct Philox {
    seed: u64,
    offset: u32,
}

impl Philox {
    /// A generator that has drawn nothing yet; all 64 bits of `seed` are used.
    pub fn new(seed: u64) -> Self {
        Philox { seed, offset: 0 }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of draws made so far (the counter offset of the next draw).
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// The next draw of `n` standard-normal float32 values.
    ///
    /// The element index lives in one 32-bit counter word, so a draw holds at most 2^32 values
    /// (A1111 has the same limit); latents are far smaller.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        assert!(n as u64 <= 1 << 32, "Philox draw of {n} values exceeds 2^32");
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let offset = self.offset;
        self.offset = self.offset.wrapping_add(1);
        let inv_2pi = two_pow32_inv_2pi();
        (0..n)
            .map(|i| {
                let out = philox4x32_10([offset, 0, i as u32, 0], key);
                box_muller(out[0], out[1], inv_2pi)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's published known-answer vectors for Philox 4x32-10 (`kat_vectors`), which fix the
    /// round structure, the multipliers and the key schedule independently of A1111.
    #[test]
    fn philox4x32_10_known_answers_match_random123() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn randn_offset_advances_once_per_draw() {
        let mut g = Philox::new(7);
        let a = g.randn(5);
        let b = g.randn(5);
        assert_eq!(g.offset(), 2);
        assert_ne!(a, b);
        // Counter-based: a fresh generator's first draw is a prefix-stable function of the index.
        assert_eq!(Philox::new(7).randn(3), a[..3]);
    }
}
