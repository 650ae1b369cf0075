//! CPython's `random.Random`, bit for bit.
//!
//! The A1111 extension re-seeds a `random.Random` with each image seed and the template
//! library draws with `choice`, `choices`, `randint`, …; reproducing "same seed, same prompt"
//! across implementations therefore needs the same Mersenne Twister (MT19937), the same
//! seeding (`init_by_array` over the 32-bit words of `abs(seed)`) and the same derivations
//! (`random()` from two words, `_randbelow` by rejection on `getrandbits`).

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// Python's `random.Random` (Mersenne Twister MT19937 with CPython's seeding and helpers).
#[derive(Clone)]
pub struct PyRandom {
    state: [u32; N],
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRandom").field("index", &self.index).finish_non_exhaustive()
    }
}

impl PyRandom {
    /// `random.Random(seed)` for an integer seed.
    pub fn new(seed: i128) -> Self {
        let mut rng = PyRandom { state: [0; N], index: N + 1 };
        rng.seed(seed);
        rng
    }

    /// `Random.seed(int)`: the absolute value is split into little-endian 32-bit words
    /// (at least one) and fed to `init_by_array`.
    pub fn seed(&mut self, seed: i128) {
        let mut n = seed.unsigned_abs();
        let mut key = Vec::with_capacity(4);
        loop {
            key.push(n as u32);
            n >>= 32;
            if n == 0 {
                break;
            }
        }
        self.init_by_array(&key);
    }

    fn init_genrand(&mut self, s: u32) {
        self.state[0] = s;
        for i in 1..N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let mut i = 1usize;
        let mut j = 0usize;
        let key_length = key.len();
        let mut k = N.max(key_length);
        while k > 0 {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
            if j >= key_length {
                j = 0;
            }
            k -= 1;
        }
        k = N - 1;
        while k > 0 {
            let prev = self.state[i - 1];
            self.state[i] =
                (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
            k -= 1;
        }
        self.state[0] = 0x8000_0000;
        self.index = N;
    }

    /// One 32-bit output of the generator (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for kk in 0..N {
                let y = (self.state[kk] & UPPER_MASK) | (self.state[(kk + 1) % N] & LOWER_MASK);
                let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
                self.state[kk] = self.state[(kk + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random()`: a float in [0, 1) with 53 random bits built from two outputs.
    pub fn random(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `getrandbits(k)` for `k <= 64`: whole words, least significant first, the last one
    /// shifted down to the bits still needed.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits supports at most 64 bits here");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        let low = u64::from(self.next_u32());
        let high = u64::from(self.next_u32() >> (64 - k));
        low | (high << 32)
    }

    /// `_randbelow(n)`: `getrandbits(n.bit_length())` until the draw is below `n`.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `randrange(n)` for a positive `n`.
    pub fn randrange(&mut self, n: u64) -> u64 {
        self.randbelow(n)
    }

    /// `randint(a, b)` (both ends included, `a <= b`).
    pub fn randint(&mut self, a: i64, b: i64) -> i64 {
        let width = (b - a + 1) as u64;
        a + self.randbelow(width) as i64
    }

    /// `choice(seq)` returns the index of the chosen element of a sequence of length `len`.
    pub fn choice(&mut self, len: usize) -> usize {
        self.randbelow(len as u64) as usize
    }

    /// `choices(population, cum_weights=cum, k)` as indices. `None` when the total weight is
    /// not positive and finite (CPython raises `ValueError` there).
    pub fn choices_cum(&mut self, cum_weights: &[f64], k: usize) -> Option<Vec<usize>> {
        let n = cum_weights.len();
        let total = *cum_weights.last()? + 0.0;
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        let hi = n - 1;
        Some((0..k).map(|_| bisect_right(cum_weights, self.random() * total, 0, hi)).collect())
    }

    /// `choices(population, weights=w, k)` as indices: cumulative sums left to right, then
    /// [`PyRandom::choices_cum`].
    pub fn choices_weighted(&mut self, weights: &[f64], k: usize) -> Option<Vec<usize>> {
        self.choices_cum(&accumulate(weights), k)
    }

    /// `choices(population, k)` without weights: `floor(random() * n)` per draw.
    pub fn choices_uniform(&mut self, n: usize, k: usize) -> Vec<usize> {
        let nf = n as f64;
        (0..k).map(|_| (self.random() * nf).floor() as usize).collect()
    }

    /// `sample(range(n), k)`: the pool algorithm for small populations, the set-rejection
    /// algorithm for large ones, chosen by CPython's size heuristic.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            let exponent = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(exponent.ceil() as u32);
        }
        let mut result = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow((n - i) as u64) as usize;
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.randbelow(n as u64) as usize;
                while selected.contains(&j) {
                    j = self.randbelow(n as u64) as usize;
                }
                selected.insert(j);
                result.push(j);
            }
        }
        result
    }

    /// `shuffle(x)` in place (Fisher–Yates from the end, `_randbelow(i + 1)`).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.randbelow((i + 1) as u64) as usize;
            items.swap(i, j);
        }
    }
}

/// `itertools.accumulate` over floats.
pub fn accumulate(weights: &[f64]) -> Vec<f64> {
    let mut total = 0.0;
    let mut out = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        // The first element is taken as is (no `0.0 + w`), which only matters for -0.0.
        total = if i == 0 { *w } else { total + w };
        out.push(total);
    }
    out
}

/// `bisect.bisect_right(a, x, lo, hi)`.
pub fn bisect_right(a: &[f64], x: f64, mut lo: usize, mut hi: usize) -> usize {
    while lo < hi {
        let mid = (lo + hi) / 2;
        if x < a[mid] {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_seed_zero_matches_cpython() {
        // `random.Random(0).random()` in CPython.
        let mut r = PyRandom::new(0);
        assert_eq!(r.random(), 0.8444218515250481);
    }

    #[test]
    fn seed_negative_equals_positive() {
        let mut a = PyRandom::new(-7);
        let mut b = PyRandom::new(7);
        assert_eq!(a.next_u32(), b.next_u32());
    }
}
