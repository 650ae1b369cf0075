//! The CLIP text encoder of the tiny checkpoint against transformers' `CLIPTextModel` on the same
//! weights (goldens from reference/gen_fixtures.py), at clip skip 1 and 2.

use models::checkpoint;
use models::clip::{ClipConfig, ClipTextModel};
use models::device::Placement;
use models::weights::{names, Weights};
use tests::{fixture, golden, max_rel_err};

#[test]
fn clip_text_model_matches_transformers_at_clip_skip_1_and_2() {
    let src = checkpoint::open(&fixture("tiny/tiny-sd15.safetensors")).unwrap();
    let config = ClipConfig::detect(src.as_ref(), names::CLIP).unwrap();
    assert_eq!(
        config,
        ClipConfig {
            vocab_size: 49408,
            hidden: 32,
            intermediate: 64,
            layers: 3,
            heads: 1,
            max_positions: 77
        }
    );
    let w = Weights::from_source(src.as_ref(), Placement::cpu());
    let clip = ClipTextModel::new(&w.pp("cond_stage_model.transformer.text_model"), &config).unwrap();
    let g = golden("clip.safetensors");
    let _guard = tch::no_grad_guard();
    for (skip, key) in [(1, "skip1"), (2, "skip2")] {
        let ours = clip.encode(&g["input_ids"], skip);
        let err = max_rel_err(&ours, &g[key]);
        println!("clip skip {skip}: max relative error {err:.3e}");
        assert!(err <= 1e-5, "clip skip {skip}: relative error {err}");
    }
    // The hidden states agree with `encode` (same layers, final norm applied by the caller).
    let states = clip.hidden_states(&g["input_ids"]);
    assert_eq!(states.len(), 4);
    let err = max_rel_err(&clip.final_layer_norm(&states[2]), &g["skip2"]);
    assert!(err <= 1e-5, "hidden_states[-2]: relative error {err}");
}

#[test]
fn prompt_to_conditioning_matches_reference_end_to_end() {
    use models::clip::tokenizer::{ClipTokenizer, EOS};
    use models::weights::safetensors_file::SafetensorsFile;
    let golden_file = SafetensorsFile::open(fixture("golden/clip.safetensors")).unwrap();
    let prompts: Vec<String> = serde_json::from_str(&golden_file.metadata()["prompts"]).unwrap();
    let tokenizer = ClipTokenizer::new().unwrap();
    let ids: Vec<i64> = prompts.iter().flat_map(|p| tokenizer.encode_framed(p, EOS)).collect();
    let ids = tch::Tensor::from_slice(&ids).reshape([prompts.len() as i64, 77]);
    let g = golden("clip.safetensors");
    assert!(ids.equal(&g["input_ids"]), "token ids differ from the reference tokenizer");
    let sd =
        models::checkpoint::StableDiffusion::load(&fixture("tiny/tiny-sd15.safetensors"), Placement::cpu())
            .unwrap();
    let _guard = tch::no_grad_guard();
    let err = max_rel_err(&sd.clip.encode(&ids, 2), &g["skip2"]);
    assert!(err <= 1e-5, "relative error {err}");
}
