//! The epoch and step plan of a run (training spec §2 step math, §1.5 regularisation pairing), and
//! the guide's rule for choosing repeats and epochs when the user gives neither.
//!
//! kohya's arithmetic: train entries per epoch = images × repeats; with regularisation images the
//! same number of reg entries is added (kohya pairs reg images until their total reaches the train
//! total), doubling the epoch; steps per epoch = ceil(entries / batch size) for one bucket (the
//! session's [`super::TrainSession::steps_per_epoch`] counts per bucket); total steps = epochs ×
//! steps per epoch.
//!
//! The guide's planning rule: about 3000 total steps for up to 30 images (100 per image for larger
//! sets), 300–600 steps per epoch (aiming at its worked example's 400), and images × repeats not
//! above the number of regularisation images, so that no reg image is repeated within an epoch.
//! Saves and samples every 10% of training: kohya's `save_n_epoch_ratio` rule with ratio 10,
//! every max(1, floor(epochs / 10)) epochs.

use serde::{Deserialize, Serialize};

/// Total steps the guide aims at for up to this many images.
const GUIDE_STEPS: u64 = 3000;
const GUIDE_IMAGES: u64 = 30;
/// Steps per epoch the guide keeps within, and the value its worked example uses.
const EPOCH_STEPS_MIN: u64 = 300;
const EPOCH_STEPS_MAX: u64 = 600;
const EPOCH_STEPS_AIM: u64 = 400;
/// Saves and samples per run ("every 10% of training").
const SAVES_PER_RUN: u64 = 10;

/// The plan returned to the user before training starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainPlan {
    /// Times each training image is seen per epoch.
    pub repeats: u32,
    pub epochs: u32,
    /// Batches per epoch (one bucket assumed until the images' buckets are known).
    pub steps_per_epoch: u64,
    /// `max_train_steps` = epochs × steps per epoch.
    pub total_steps: u64,
    pub save_every_n_epochs: u32,
    pub sample_every_n_epochs: u32,
    /// Training entries per epoch (images × repeats), kohya's `ss_num_train_images`.
    pub num_train_images: u64,
    /// Regularisation entries per epoch (equal to the train entries when reg images are given).
    pub num_reg_images: u64,
    /// Whether repeats and epochs were chosen by the planning rule rather than given.
    pub repeats_planned: bool,
    pub epochs_planned: bool,
    /// Why the plan departs from the guide, if it does (e.g. too few regularisation images).
    pub notes: Vec<String>,
}

impl TrainPlan {
    /// The plan with the real batches per epoch (counted per bucket by the session): the total
    /// becomes epochs × `steps_per_epoch`, so every planned epoch runs to its end.
    pub fn with_steps_per_epoch(mut self, steps_per_epoch: u64) -> Self {
        self.steps_per_epoch = steps_per_epoch;
        self.total_steps = u64::from(self.epochs) * steps_per_epoch;
        self
    }
}

/// kohya's steps per epoch for one bucket: ceil(entries / batch), entries doubled by reg images.
fn epoch_steps(n_images: u64, repeats: u64, has_reg: bool, batch: u64) -> u64 {
    let entries = n_images * repeats * if has_reg { 2 } else { 1 };
    entries.div_ceil(batch)
}

/// Plans a run of `n_images` training and `n_reg` regularisation images at `batch_size`; given
/// `repeats` and `max_train_epochs` are kept, missing ones are chosen by the guide's rule.
pub fn plan(
    n_images: u32,
    n_reg: u32,
    batch_size: u32,
    repeats: Option<u32>,
    max_train_epochs: Option<u32>,
) -> TrainPlan {
    let n = u64::from(n_images.max(1));
    let batch = u64::from(batch_size.max(1));
    let has_reg = n_reg > 0;
    let mut notes = Vec::new();
    let chosen_repeats = match repeats {
        Some(r) => r.max(1),
        None => {
            let per_repeat = epoch_steps(n, 1, has_reg, batch).max(1);
            // The repeats whose epoch is closest to the aim, then pulled into [min, max].
            let mut r = ((EPOCH_STEPS_AIM as f64 / per_repeat as f64).round() as u64).max(1);
            while r > 1 && epoch_steps(n, r, has_reg, batch) > EPOCH_STEPS_MAX {
                r -= 1;
            }
            while epoch_steps(n, r + 1, has_reg, batch) <= EPOCH_STEPS_MAX
                && epoch_steps(n, r, has_reg, batch) < EPOCH_STEPS_MIN
            {
                r += 1;
            }
            if has_reg && n * r > u64::from(n_reg) {
                let cap = (u64::from(n_reg) / n).max(1);
                notes.push(format!(
                    "{n_reg} regularisation images allow {cap} repeats of {n} images (images × repeats ≤ \
                     reg images); the guide's 300–600 steps per epoch would need {r}"
                ));
                r = cap;
            }
            r as u32
        }
    };
    let r = u64::from(chosen_repeats);
    if has_reg && n * r > u64::from(n_reg) && repeats.is_some() {
        notes.push(format!(
            "images × repeats = {} exceeds the {n_reg} regularisation images: kohya repeats reg images \
             within an epoch",
            n * r
        ));
    }
    let steps_per_epoch = epoch_steps(n, r, has_reg, batch);
    let epochs = match max_train_epochs {
        Some(e) => e.max(1),
        None => {
            let target = if n <= GUIDE_IMAGES { GUIDE_STEPS } else { GUIDE_STEPS * n / GUIDE_IMAGES };
            ((target as f64 / steps_per_epoch as f64).round() as u32).max(1)
        }
    };
    let every = (u64::from(epochs) / SAVES_PER_RUN).max(1) as u32;
    TrainPlan {
        repeats: chosen_repeats,
        epochs,
        steps_per_epoch,
        total_steps: u64::from(epochs) * steps_per_epoch,
        save_every_n_epochs: every,
        sample_every_n_epochs: every,
        num_train_images: n * r,
        num_reg_images: if has_reg { n * r } else { 0 },
        repeats_planned: repeats.is_none(),
        epochs_planned: max_train_epochs.is_none(),
        notes,
    }
}
