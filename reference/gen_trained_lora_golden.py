#!/usr/bin/env python3
"""Golden outputs of the tiny SD1.5 diffusers pipeline with and without a LoRA our trainer wrote.

    .venv/bin/pip install --no-deps -r reference/requirements-training.txt   (peft and its deps)
    .venv/bin/python reference/gen_trained_lora_golden.py

Reads tests/fixtures/training/tiny_trained_lora.safetensors (kohya format, written by
`cargo test -p models --test train_diffusers -- --ignored trained_lora_fixture_write`) and loads
it with diffusers' `StableDiffusionPipeline.load_lora_weights` (kohya key conversion, peft
adapters) into the pipeline built from tests/fixtures/tiny/tiny-sd15-diffusers, the same weights
as tests/fixtures/tiny/tiny-sd15.safetensors. Writes tests/fixtures/training/
trained_lora_golden.safetensors:

    x, t, context     the UNet inputs of tests/fixtures/golden/unet.safetensors
    input_ids         the token ids of tests/fixtures/golden/clip.safetensors
    unet_base/lora    unet(x, t, context).sample without / with the LoRA
    te_base/lora      text encoder hidden_states[-2] + final_layer_norm (clip skip 2)

models/tests/train_diffusers.rs checks our LoRA merge against these within 1e-4 relative.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import diffusers
import peft
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
PIPE = ROOT / "tests/fixtures/tiny/tiny-sd15-diffusers"
LORA = ROOT / "tests/fixtures/training/tiny_trained_lora.safetensors"
OUT = ROOT / "tests/fixtures/training/trained_lora_golden.safetensors"


def outputs(pipe, unet_in, ids):
    with torch.no_grad():
        unet = pipe.unet(unet_in["x"], unet_in["t"], encoder_hidden_states=unet_in["context"]).sample
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        # transformers 5 keeps the layers on CLIPTextModel itself (4.x: under `.text_model`).
        te_model = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
        te = te_model.final_layer_norm(hidden)
    return unet.float().contiguous(), te.float().contiguous()


def main() -> None:
    torch.manual_seed(0)
    # The fixture pipeline has no tokenizer, safety checker or feature extractor: ids are given.
    pipe = StableDiffusionPipeline.from_pretrained(
        str(PIPE), dtype=torch.float32, tokenizer=None, safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    unet_in = load_file(str(ROOT / "tests/fixtures/golden/unet.safetensors"))
    ids = load_file(str(ROOT / "tests/fixtures/golden/clip.safetensors"))["input_ids"]
    unet_base, te_base = outputs(pipe, unet_in, ids)

    pipe.load_lora_weights(str(LORA), adapter_name="trained")
    # Every module of the file must have become an adapter: count them against the file.
    n_file = sum(1 for k in load_file(str(LORA)) if k.endswith(".lora_down.weight"))
    n_loaded = sum(
        1
        for model in (pipe.unet, pipe.text_encoder)
        for m in model.modules()
        if isinstance(m, peft.tuners.lora.LoraLayer) and "trained" in m.lora_A
    )
    assert n_loaded == n_file, f"{n_loaded} adapters loaded, {n_file} modules in the file"
    unet_lora, te_lora = outputs(pipe, unet_in, ids)
    assert not torch.allclose(unet_lora, unet_base), "the LoRA did not change the UNet output"
    assert not torch.allclose(te_lora, te_base), "the LoRA did not change the text encoder output"

    tensors = {
        "x": unet_in["x"],
        "t": unet_in["t"],
        "context": unet_in["context"],
        "input_ids": ids,
        "unet_base": unet_base,
        "unet_lora": unet_lora,
        "te_base": te_base,
        "te_lora": te_lora,
    }
    meta = {
        "generator": "reference/gen_trained_lora_golden.py",
        "lora_sha256": hashlib.sha256(LORA.read_bytes()).hexdigest(),
        "adapters": str(n_loaded),
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "peft_version": peft.__version__,
    }
    save_file(tensors, str(OUT), metadata=meta)
    print(f"wrote {OUT.relative_to(ROOT)}: {n_loaded} adapters;",
          f"UNet moved {(unet_lora - unet_base).abs().max():.3e}, TE moved {(te_lora - te_base).abs().max():.3e}")


if __name__ == "__main__":
    main()
