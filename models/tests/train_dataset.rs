//! The dataset side of training as pure functions, with numbers worked from kohya's formulas
//! (training spec §1.2, §1.5, §1.6, §1.8, §2, §7): bucket lists and assignments, regularisation
//! pairing, epoch batches, the step plan, captions and sample-prompt lines.

use models::train::bucket::{
    assign_bucket, bucket_info, bucket_limits, make_buckets, BucketAssignment, BucketSettings,
};
use models::train::dataset::{batches_per_epoch, caption_for, epoch_batches, pair_regularisation};
use models::train::plan::plan;
use models::train::sample_prompt::{parse, parse_line, SamplePrompt};

fn a(bucket: (u32, u32), resized: (u32, u32), crop: (u32, u32)) -> BucketAssignment {
    BucketAssignment {
        bucket_w: bucket.0,
        bucket_h: bucket.1,
        resized_w: resized.0,
        resized_h: resized.1,
        crop_left: crop.0,
        crop_top: crop.1,
    }
}

#[test]
fn make_buckets_768_min_256_max_1024_gives_the_19_predefined_buckets() {
    // §1.6 `make_bucket_resolutions`: square floor(√A/64)·64 = 768, then for w = 256, 320, …, 1024:
    // h = min(1024, floor((589824 div w)/64)·64), kept both ways when h ≥ 256.
    let want = vec![
        (256, 1024),
        (320, 1024),
        (384, 1024),
        (448, 1024),
        (512, 1024),
        (576, 960),
        (576, 1024),
        (640, 896),
        (704, 832),
        (768, 768),
        (832, 704),
        (896, 640),
        (960, 576),
        (1024, 256),
        (1024, 320),
        (1024, 384),
        (1024, 448),
        (1024, 512),
        (1024, 576),
    ];
    assert_eq!(make_buckets((768, 768), 64, 256, 1024), want);
}

#[test]
fn bucket_limits_floor_min_raise_max_and_reject_bad_steps() {
    assert_eq!(bucket_limits((768, 768), 64, 300, 1000).unwrap(), (256, 1024));
    assert!(bucket_limits((768, 768), 64, 832, 1024).is_err(), "min above the resolution");
    assert!(bucket_limits((768, 768), 64, 256, 700).is_err(), "max below the resolution");
    assert!(bucket_limits((768, 768), 32, 256, 1024).is_err(), "steps not a multiple of 64");
}

#[test]
fn assign_bucket_no_upscale_matches_the_spec_examples() {
    // §1.6 with `bucket_no_upscale` at 768: area ≤ 768² keeps its size and is cropped to
    // multiples of 64; larger images are scaled to area ≈ 768² by kohya's rounding.
    let r = (768, 768);
    let f = |w, h| assign_bucket(w, h, r, 64, &[], true);
    assert_eq!(f(1024, 1024), a((768, 768), (768, 768), (0, 0)));
    assert_eq!(f(2000, 2000), a((768, 768), (768, 768), (0, 0)));
    assert_eq!(f(800, 800), a((768, 768), (768, 768), (0, 0)));
    assert_eq!(f(700, 700), a((640, 640), (700, 700), (30, 30)), "never scaled, 30 px cropped per side");
    assert_eq!(f(512, 512), a((512, 512), (512, 512), (0, 0)));
    // 3000×4000: r = 0.75, √(A·r) = 665.1 → width-first 640 (aspect 640/832 = 0.769) beats
    // height-first 832 (576/832 = 0.692); resized (640, int(640/0.75 + 0.5) = 853), bucket 640×832.
    assert_eq!(f(3000, 4000), a((640, 832), (640, 853), (0, 10)));
}

#[test]
fn assign_bucket_with_upscaling_picks_nearest_aspect_and_covers_it() {
    let r = (768, 768);
    let buckets = make_buckets(r, 64, 256, 1024);
    let f = |w, h| assign_bucket(w, h, r, 64, &buckets, false);
    // Exact hit: the image's own size is a bucket.
    assert_eq!(f(640, 896), a((640, 896), (640, 896), (0, 0)));
    // 1200×800 (aspect 1.5): nearest bucket aspect is 896/640 = 1.4; the image is wider, so
    // scale = 640/800 = 0.8 → 960×640, centre-cropped by (960 − 896)/2 = 32.
    assert_eq!(f(1200, 800), a((896, 640), (960, 640), (32, 0)));
    // Small images ARE upscaled: 300×300 → 768×768 (scale 2.56).
    assert_eq!(f(300, 300), a((768, 768), (768, 768), (0, 0)));
    // 300×400 (0.75) lies between 640×896 (0.714) and 704×832 (0.846): the first is nearer;
    // the image is wider than it, so scale = 896/400 → 672×896, 16 px cut on each side.
    assert_eq!(f(300, 400), a((640, 896), (672, 896), (16, 0)));
    // 1000×600 (aspect 5/3) has an exact-aspect bucket 960×576: scale = 960/1000.
    assert_eq!(f(1000, 600), a((960, 576), (960, 576), (0, 0)));
}

#[test]
fn bucket_settings_assign_all_rejects_images_below_one_step() {
    let s = BucketSettings::default();
    let out = s.assign_all(&[(1024, 768), (500, 700)]).unwrap();
    assert_eq!((out[1].bucket_w, out[1].bucket_h), (448, 640));
    assert!(s.assign_all(&[(40, 900)]).is_err());
}

#[test]
fn pair_regularisation_fills_to_the_train_total_as_kohya() {
    // §1.5: walk reg images with their repeats until the total reaches N_train ...
    assert_eq!(pair_regularisation(600, &[1; 1000])[..601], [[1u32; 600].as_slice(), &[0]].concat());
    assert_eq!(pair_regularisation(5, &[2, 2, 2, 2]), vec![2, 2, 2, 0], "may overshoot by < one repeat");
    // ... and when exhausted, restart adding one repeat per image.
    assert_eq!(pair_regularisation(7, &[1, 1]), vec![4, 3]);
    assert_eq!(pair_regularisation(3, &[]), Vec::<u32>::new());
}

#[test]
fn epoch_batches_use_one_bucket_per_batch_and_cover_every_entry() {
    // Bucket 0 holds images 0,1 ×2 repeats; bucket 1 holds image 2 ×3.
    let buckets = vec![vec![0, 0, 1, 1], vec![2, 2, 2]];
    let batches = epoch_batches(&buckets, 3, 7, 1);
    // ceil(4/3) + ceil(3/3) = 3 batches (§2), nothing dropped or padded.
    assert_eq!(batches.len() as u64, batches_per_epoch([4, 3], 3));
    assert_eq!(batches.len(), 3);
    let mut all: Vec<usize> = batches.concat();
    all.sort();
    assert_eq!(all, vec![0, 0, 1, 1, 2, 2, 2]);
    for b in &batches {
        assert!(b.iter().all(|&i| i == 2) || b.iter().all(|&i| i < 2), "mixed buckets in {b:?}");
    }
    assert_eq!(batches, epoch_batches(&buckets, 3, 7, 1), "a pure function of seed and epoch");
    let orders: std::collections::HashSet<Vec<Vec<usize>>> =
        (1..20).map(|e| epoch_batches(&buckets, 3, 7, e)).collect();
    assert!(orders.len() > 3, "epochs reshuffle");
}

#[test]
fn plan_guide_example_30_images_600_reg_batch_3_is_20_repeats_8_epochs() {
    // §2 worked example: 30 × 20 = 600 train + 600 reg entries, batch 3 → 400 steps per epoch;
    // ~3000 steps → round(7.5) = 8 epochs = 3200 steps; saves every max(1, 8 div 10) = 1 epoch.
    let p = plan(30, 600, 3, None, None);
    assert_eq!((p.repeats, p.epochs, p.steps_per_epoch, p.total_steps), (20, 8, 400, 3200));
    assert_eq!((p.save_every_n_epochs, p.sample_every_n_epochs), (1, 1));
    assert_eq!((p.num_train_images, p.num_reg_images), (600, 600));
    assert!(p.repeats_planned && p.epochs_planned && p.notes.is_empty());
}

#[test]
fn plan_given_values_use_kohya_arithmetic() {
    // No reg: 10 images × 7 repeats = 70 entries, batch 4 → ceil(70/4) = 18 steps per epoch.
    let p = plan(10, 0, 4, Some(7), Some(25));
    assert_eq!((p.repeats, p.epochs, p.steps_per_epoch, p.total_steps), (7, 25, 18, 450));
    assert_eq!(p.save_every_n_epochs, 2, "floor(25/10)");
    assert_eq!(p.num_reg_images, 0);
    // Reg present doubles the epoch: 10 × 7 × 2 = 140 → ceil(140/4) = 35.
    assert_eq!(plan(10, 100, 4, Some(7), Some(1)).steps_per_epoch, 35);
    // Real steps per epoch from the session's buckets replace the one-bucket estimate.
    assert_eq!(p.with_steps_per_epoch(20).total_steps, 500);
}

#[test]
fn plan_without_values_keeps_300_to_600_steps_and_reg_limit() {
    // 15 images, 1000 reg, batch 3: 10 steps per repeat → 40 repeats = 400 steps, 8 epochs.
    let p = plan(15, 1000, 3, None, None);
    assert_eq!((p.repeats, p.steps_per_epoch, p.epochs), (40, 400, 8));
    // 100 images, no reg, batch 2: 50 per repeat → 8 repeats = 400 steps; 100 steps per image →
    // 10000 / 400 = 25 epochs, saved every 2.
    let p = plan(100, 0, 2, None, None);
    assert_eq!((p.repeats, p.steps_per_epoch, p.epochs, p.save_every_n_epochs), (8, 400, 25, 2));
    // Too few reg images: repeats capped so images × repeats ≤ reg images, with a note.
    let p = plan(30, 150, 3, None, None);
    assert_eq!((p.repeats, p.steps_per_epoch), (5, 100));
    assert_eq!(p.notes.len(), 1);
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["total_steps"], p.total_steps);
}

#[test]
fn caption_file_text_replaces_folder_text() {
    assert_eq!(caption_for(Some("  ohwx man, smiling  \nsecond line"), "ohwx man"), "ohwx man, smiling");
    assert_eq!(caption_for(None, "ohwx man"), "ohwx man");
}

#[test]
fn sample_prompt_line_parses_kohya_options_and_defaults() {
    let p =
        parse_line("photo of ohwx man --n blurry, lowres --w 777 --h 512 --l 6.5 --s 2000 --d 42").unwrap();
    assert_eq!(
        p,
        SamplePrompt {
            prompt: "photo of ohwx man".into(),
            negative_prompt: "blurry, lowres".into(),
            width: 776,
            height: 512,
            cfg_scale: 6.5,
            steps: 1000,
            seed: Some(42),
            sampler: None,
        }
    );
    let d = parse_line("ohwx man").unwrap();
    assert_eq!((d.width, d.height, d.cfg_scale, d.steps, d.seed), (512, 512, 7.5, 30, None));
    let q = parse_line("x --W 40 --S 0 --ss euler_a --l abc --q 3").unwrap();
    assert_eq!((q.width, q.steps, q.sampler.as_deref(), q.cfg_scale), (64, 1, Some("euler_a"), 7.5));
    let all = parse("# comment\n\nfirst --d 1\n  second  \n");
    assert_eq!(all.iter().map(|p| p.prompt.as_str()).collect::<Vec<_>>(), vec!["first", "second"]);
}

#[test]
fn bucket_info_counts_repeats_per_bucket_index_and_mean_aspect_error() {
    let buckets = make_buckets((768, 768), 64, 256, 1024);
    let sizes = [(1200, 800), (768, 768), (640, 896)];
    let assigned: Vec<BucketAssignment> =
        sizes.iter().map(|&(w, h)| assign_bucket(w, h, (768, 768), 64, &buckets, false)).collect();
    let info = bucket_info(&sizes, &assigned, &[10, 10, 5], &buckets);
    // Indices in the 19-bucket list: 640×896 is 7, 768×768 is 9, 896×640 is 11.
    assert_eq!(info["buckets"]["7"], serde_json::json!({"resolution": [640, 896], "count": 5}));
    assert_eq!(info["buckets"]["9"], serde_json::json!({"resolution": [768, 768], "count": 10}));
    assert_eq!(info["buckets"]["11"], serde_json::json!({"resolution": [896, 640], "count": 10}));
    assert_eq!(info["buckets"].as_object().unwrap().len(), 3);
    // Only 1200×800 misses its bucket's aspect: |1.4 − 1.5| / 3 images.
    let e = info["mean_img_ar_error"].as_f64().unwrap();
    assert!((e - 0.1 / 3.0).abs() < 1e-12, "{e}");
}
