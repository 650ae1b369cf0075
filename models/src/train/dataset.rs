//! How kohya's DreamBooth dataset turns images into batches (training spec §1.2, §1.3, §1.5, §1.8):
//! regularisation pairing, repeats, one-bucket batches, per-epoch shuffling, and caption text.
//!
//! Randomness here comes from [`SplitMix64`] streams derived from the run's seed and the epoch (or
//! the draw), never from a running generator: kohya re-seeds Python's `random` with
//! `dataset_seed + epoch` at every epoch, and deriving each draw from its position is what makes
//! a resumed run take exactly the batches an uninterrupted one would.

/// A small, fast, well-mixed 64-bit generator (Steele et al., "SplitMix"); streams are cheap to
/// derive, which is all the dataset needs (the tensors' randomness comes from libtorch).
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A stream for `(seed, tag, a, b)`: distinct tags and indices give unrelated streams.
    pub fn derive(seed: i64, tag: u64, a: u64, b: u64) -> Self {
        let mut mix = SplitMix64::new(seed as u64 ^ tag.wrapping_mul(0xA24B_AED4_963E_E407));
        let s1 = mix.next_u64() ^ a;
        let mut mix = SplitMix64::new(s1);
        let s2 = mix.next_u64() ^ b;
        let mut mix = SplitMix64::new(s2);
        SplitMix64::new(mix.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (`n > 0`), by rejection so every value is equally likely.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fisher–Yates shuffle (the algorithm of Python's `random.shuffle`).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Stream tags, so that the dataset's draws never share a stream with each other.
pub(crate) const TAG_EPOCH: u64 = 1;
pub(crate) const TAG_FLIP: u64 = 2;
pub(crate) const TAG_NOISE: u64 = 3;
pub(crate) const TAG_CACHE: u64 = 4;

/// kohya's regularisation selection (§1.5): reg images are walked in order, each registered with
/// its own repeats, until the running total reaches `num_train` (train images × repeats); when the
/// list runs out first, the walk restarts and adds one repeat per image at a time. Returns each reg
/// image's effective repeats; 0 means the image is never used.
pub fn pair_regularisation(num_train: u64, reg_repeats: &[u32]) -> Vec<u32> {
    let mut used = vec![0u32; reg_repeats.len()];
    if reg_repeats.is_empty() {
        return used;
    }
    let mut total = 0u64;
    for (u, &r) in used.iter_mut().zip(reg_repeats) {
        if total >= num_train {
            return used;
        }
        *u = r;
        total += u64::from(r);
    }
    // Too few: cycle from the first image, one repeat each, until the totals match.
    let mut i = 0;
    while total < num_train {
        used[i] += 1;
        total += 1;
        i = (i + 1) % used.len();
    }
    used
}

/// One epoch's batches (§1.8): every bucket's entries (image indices, repeated) are shuffled,
/// cut into consecutive slices of `batch_size` (the last one may be short), and the slices of all
/// buckets are shuffled together. `buckets[b]` lists the entries of bucket `b`.
pub fn epoch_batches(buckets: &[Vec<usize>], batch_size: usize, seed: i64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = SplitMix64::derive(seed, TAG_EPOCH, epoch, 0);
    let mut slices = Vec::new();
    for entries in buckets {
        let mut entries = entries.clone();
        rng.shuffle(&mut entries);
        slices.extend(entries.chunks(batch_size.max(1)).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut slices);
    slices
}

/// The number of batches in one epoch: Σ over buckets of ceil(entries / batch size) (§2).
pub fn batches_per_epoch(bucket_sizes: impl IntoIterator<Item = u64>, batch_size: u64) -> u64 {
    bucket_sizes.into_iter().map(|n| n.div_ceil(batch_size.max(1))).sum()
}

/// The caption of a caption file's text (§1.2): its first line, stripped; `None` for a file with
/// no lines, which kohya refuses.
pub fn caption_from_file(text: &str) -> Option<String> {
    text.lines().next().map(|l| l.trim().to_string())
}

/// The caption an image trains with (§1.2, §1.3 with sd-scripts' default options: no prefix,
/// suffix, dropout, shuffling or wildcards): the caption file's text when there is one, else the
/// folder's (instance or class) text, passed to the tokenizer verbatim.
pub fn caption_for(file_text: Option<&str>, folder_text: &str) -> String {
    match file_text.and_then(caption_from_file) {
        Some(c) => c,
        None => folder_text.to_string(),
    }
}
