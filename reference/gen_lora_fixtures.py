#!/usr/bin/env python3
"""Generate tiny kohya / LyCORIS network files for the tiny SD1.5 fixture, and merge goldens.

Run after reference/gen_fixtures.py (CPU only, seconds):

    .venv/bin/python reference/gen_lora_fixtures.py

Writes (relative to the repository root):

    tests/fixtures/lora/tiny_lora.safetensors   kohya LoRA: UNet attention (diffusers names and one
                                                LDM name), a 1x1 proj_in, a 3x3 LoCon on a resnet
                                                conv, text-encoder q/k/v/out (one without alpha)
    tests/fixtures/lora/tiny_loha.safetensors   LyCORIS LoHa on a linear and on a 3x3 conv
    tests/fixtures/lora/tiny_lyco.safetensors   LyCORIS LoKr, (IA)3 and a DoRA LoRA
    tests/fixtures/golden/lora.safetensors      merged weights (A1111 names) and the merged UNet's
                                                output on tests/fixtures/golden/unet.safetensors

Merge formulas (formats.md §8.1, §8.3, §8.4), written out here with torch, independently of the
Rust code: kohya networks/lora.py `merge_to` (W += m * alpha/r * up @ down, conv 3x3 through
flattened up/down), LyCORIS loha/lokr/ia3 `get_diff_weight`, DoRA in the A1111/ComfyUI strength
form. All sums in float32 on the float16 values the fixture stores, upcast.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests/fixtures/tiny/tiny-sd15.safetensors"
OUT = ROOT / "tests/fixtures/lora"
GOLDEN = ROOT / "tests/fixtures/golden"

UNET = "model.diffusion_model."
CLIP = "cond_stage_model.transformer.text_model."

# Multipliers the goldens are made with: <lora:tiny_lora:TE:UNET>.
LORA_TE, LORA_UNET = 0.5, 0.8
LYCO_M = 1.0


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


G = gen()


def rnd(*shape: int, s: float = 0.3) -> torch.Tensor:
    return (torch.randn(*shape, generator=G) * s).to(torch.float16).float()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    base = {k: v.float() for k, v in load_file(str(TINY)).items()}
    merged: dict[str, torch.Tensor] = {}

    def weight(name: str) -> torch.Tensor:
        return merged.get(name, base[name]).clone()

    # ---------------------------------------------------------------- kohya LoRA / LoCon
    # (flattened kohya module name, A1111 weight name, rank, alpha or None, component)
    lora_targets = [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
         UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", 4, 2.0, "unet"),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
         UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 4, 8.0, "unet"),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
         UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight", 2, 1.0, "unet"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in",
         UNET + "input_blocks.1.1.proj_in.weight", 4, 4.0, "unet"),
        ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v",
         UNET + "middle_block.1.transformer_blocks.0.attn1.to_v.weight", 4, 2.0, "unet"),
        # LDM-named (as kohya writes for SDXL): the same table must resolve it.
        ("lora_unet_input_blocks_1_1_transformer_blocks_0_ff_net_2",
         UNET + "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight", 4, 2.0, "unet"),
        # LoCon: 3x3 down, 1x1 up.
        ("lora_unet_down_blocks_0_resnets_0_conv1",
         UNET + "input_blocks.1.0.in_layers.2.weight", 4, 1.0, "unet"),
        ("lora_unet_up_blocks_1_resnets_2_conv2",
         UNET + "output_blocks.5.0.out_layers.3.weight", 4, 2.0, "unet"),
    ]
    for proj in ["q", "k", "v", "out"]:
        alpha = None if proj == "k" else 2.0
        lora_targets.append((
            f"lora_te_text_model_encoder_layers_0_self_attn_{proj}_proj",
            CLIP + f"encoder.layers.0.self_attn.{proj}_proj.weight", 4, alpha, "te"))

    lora_file: dict[str, torch.Tensor] = {}
    for flat, target, rank, alpha, comp in lora_targets:
        w = weight(target)
        out_ch, in_ch = w.shape[0], w.shape[1]
        if w.dim() == 4:
            k = w.shape[2]
            down = rnd(rank, in_ch, k, k)
            up = rnd(out_ch, rank, 1, 1)
            delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
        else:
            down = rnd(rank, in_ch)
            up = rnd(out_ch, rank)
            delta = up @ down
        lora_file[f"{flat}.lora_down.weight"] = down.half()
        lora_file[f"{flat}.lora_up.weight"] = up.half()
        if alpha is not None:
            lora_file[f"{flat}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
        scale = (alpha if alpha else rank) / rank
        m = LORA_TE if comp == "te" else LORA_UNET
        merged[target] = w + m * scale * delta
    save_file(lora_file, str(OUT / "tiny_lora.safetensors"), metadata={"ss_network_module": "networks.lora"})
    lora_merged = dict(merged)

    # ---------------------------------------------------------------- LoHa
    merged.clear()
    loha_file: dict[str, torch.Tensor] = {}
    loha_targets = [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k",
         UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight", 2, 1.0),
        ("lora_unet_down_blocks_0_resnets_0_conv2",
         UNET + "input_blocks.1.0.out_layers.3.weight", 2, 2.0),
    ]
    for flat, target, rank, alpha in loha_targets:
        w = weight(target)
        out_ch, rest = w.shape[0], w[0].numel()
        w1a, w1b, w2a, w2b = rnd(out_ch, rank), rnd(rank, rest), rnd(out_ch, rank), rnd(rank, rest)
        delta = ((w1a @ w1b) * (w2a @ w2b)).reshape(w.shape)
        for k, v in {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b}.items():
            loha_file[f"{flat}.{k}"] = v.half()
        loha_file[f"{flat}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
        merged[target] = w + LYCO_M * (alpha / rank) * delta
    save_file(loha_file, str(OUT / "tiny_loha.safetensors"), metadata={"ss_network_module": "lycoris.kohya"})
    loha_merged = dict(merged)

    # ---------------------------------------------------------------- LoKr, (IA)3, DoRA
    merged.clear()
    lyco: dict[str, torch.Tensor] = {}
    # LoKr on a 32x32 linear: w1 full [4,4], w2 = w2_a [8,2] @ w2_b [2,8], alpha 1 -> scale 1/2.
    flat = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v"
    target = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
    w = weight(target)
    w1, w2a, w2b = rnd(4, 4), rnd(8, 2), rnd(2, 8)
    lyco.update({f"{flat}.lokr_w1": w1.half(), f"{flat}.lokr_w2_a": w2a.half(), f"{flat}.lokr_w2_b": w2b.half(),
                 f"{flat}.alpha": torch.tensor(1.0, dtype=torch.float16)})
    merged[target] = w + LYCO_M * 0.5 * torch.kron(w1, w2a @ w2b)
    # (IA)3 on a linear's output rows.
    flat = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj"
    target = UNET + "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"
    w = weight(target)
    gain = rnd(w.shape[0])
    lyco.update({f"{flat}.weight": gain.half(), f"{flat}.on_input": torch.tensor(False)})
    merged[target] = w * (1 + LYCO_M * gain[:, None])
    # DoRA (per-output magnitude, LyCORIS wd_on_out) on a text-encoder fc1.
    flat = "lora_te_text_model_encoder_layers_1_mlp_fc1"
    target = CLIP + "encoder.layers.1.mlp.fc1.weight"
    w = weight(target)
    down, up = rnd(4, w.shape[1]), rnd(w.shape[0], 4)
    mag = (w.norm(dim=1) * (1 + rnd(w.shape[0], s=0.1))).half().float()
    lyco.update({f"{flat}.lora_down.weight": down.half(), f"{flat}.lora_up.weight": up.half(),
                 f"{flat}.alpha": torch.tensor(2.0, dtype=torch.float16), f"{flat}.dora_scale": mag[:, None].half()})
    v = w + 0.5 * (up @ down)
    dora = mag[:, None] * v / (v.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps)
    merged[target] = w + LYCO_M * (dora - w)
    save_file(lyco, str(OUT / "tiny_lyco.safetensors"), metadata={"ss_network_module": "lycoris.kohya"})
    lyco_merged = dict(merged)

    # ---------------------------------------------------------------- merged UNet output
    g = load_file(str(GOLDEN / "unet.safetensors"))
    unet = UNet2DConditionModel.from_pretrained(
        str(ROOT / "tests/fixtures/tiny/tiny-sd15-diffusers/unet"), torch_dtype=torch.float32).eval()
    ldm_to_diffusers = {
        UNET + "input_blocks.1.1.": "down_blocks.0.attentions.0.",
        UNET + "middle_block.1.": "mid_block.attentions.0.",
        UNET + "input_blocks.1.0.in_layers.2.": "down_blocks.0.resnets.0.conv1.",
        UNET + "output_blocks.5.0.out_layers.3.": "up_blocks.1.resnets.2.conv2.",
    }
    sd = unet.state_dict()
    for name, value in lora_merged.items():
        if not name.startswith(UNET):
            continue
        prefix = next(p for p in ldm_to_diffusers if name.startswith(p))
        dname = ldm_to_diffusers[prefix] + name[len(prefix):]
        assert torch.equal(sd[dname].float(), base[name].reshape(sd[dname].shape)), dname
        sd[dname] = value.reshape(sd[dname].shape)
    unet.load_state_dict(sd)
    with torch.no_grad():
        out = unet(g["x"], g["t"], encoder_hidden_states=g["context"]).sample.float().contiguous()

    tensors = {f"tiny_lora/{k}": v.contiguous() for k, v in lora_merged.items()}
    tensors.update({f"tiny_loha/{k}": v.contiguous() for k, v in loha_merged.items()})
    tensors.update({f"tiny_lyco/{k}": v.contiguous() for k, v in lyco_merged.items()})
    tensors["tiny_lora/unet_out"] = out
    meta = {
        "generator": "reference/gen_lora_fixtures.py",
        "tiny_lora_multipliers": f"te={LORA_TE} unet={LORA_UNET}",
        "lyco_multiplier": str(LYCO_M),
        "unet_out": "diffusers unet(x, t, context) of tests/fixtures/golden/unet.safetensors, tiny_lora merged",
        "torch_version": torch.__version__,
    }
    for f in sorted(OUT.glob("*.safetensors")):
        meta[f"sha256:{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    save_file(tensors, str(GOLDEN / "lora.safetensors"), metadata=meta)
    print("wrote", sorted(p.name for p in OUT.iterdir()), "and golden/lora.safetensors")


if __name__ == "__main__":
    main()
