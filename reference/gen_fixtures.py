#!/usr/bin/env python3
"""Generate tiny Stable-Diffusion-1.5-topology fixtures and golden outputs.

Run from anywhere (CPU only, ~1 minute):

    .venv/bin/pip install -r reference/requirements.txt
    .venv/bin/python reference/gen_fixtures.py

Writes (paths relative to the repository root):

    tests/fixtures/tiny/tiny-sd15.safetensors            A1111/LDM single file (fp16 + extras)
    tests/fixtures/tiny/tiny-sd15.ckpt                   same dict, torch.save({"state_dict", "global_step"})
    tests/fixtures/tiny/tiny-sd15-diffusers/             diffusers folder (unet/vae/text_encoder/scheduler)
    tests/fixtures/tiny/tiny-sd15-inpainting.safetensors 9-channel UNet only, LDM names
    tests/fixtures/golden/{clip,unet,unet_inpainting,vae}.safetensors
    tests/fixtures/malicious/{evil,evil_eval}.ckpt       pickle payloads; never load them with pickle

Everything is seeded; running the script twice produces byte-identical files
(`--root DIR` writes the tree under another root, so two runs can be compared).

Weights are random but made non-trivial (every tensor perturbed: norm weights
1±0.1, biases ±0.05, matrices +10% noise), then rounded to float16.  The files
store the fp16 tensors; goldens are computed in float32 on CPU from exactly
those fp16 values (upcast) by diffusers / transformers.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import pickletools
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

import diffusers
import safetensors
import transformers
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------
# Seeds and configurations
# --------------------------------------------------------------------------------------

SEED_CLIP = 1001
SEED_UNET = 2002
SEED_UNET_INPAINT = 3003
SEED_VAE = 4004
SEED_PERTURB = 5005  # added to the model seed for the perturbation generator
SEED_INPUTS = 6006

BOS, EOS, PAD = 49406, 49407, 49407
MAX_LEN = 77

PROMPTS = [
    "a photo of a cat",
    "a highly detailed oil painting of an old lighthouse on a rocky cliff at sunset, "
    "dramatic clouds, crashing waves, warm golden light, masterpiece",
]

CLIP_CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    projection_dim=32,
    num_hidden_layers=3,
    num_attention_heads=1,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
)

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(32, 64, 64),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=32,
    attention_head_dim=8,  # SD1 meaning: 8 heads
    use_linear_projection=False,
    upcast_attention=False,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=16,
    scaling_factor=0.18215,
)

# SD1.5's scheduler/scheduler_config.json (runwayml/stable-diffusion-v1-5)
SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    trained_betas=None,
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)

GLOBAL_STEP = 1234
EMA_DECAY = 0.9999
EMA_NUM_UPDATES = 1234

MALICIOUS_CMD = "touch /tmp/diffusiond-pwned-marker"


def log(*a):
    print(*a, flush=True)


def fail(msg):
    raise SystemExit(f"FIXTURE GENERATION FAILED: {msg}")


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.int32: "I32"}


def save_golden(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors writer with a stable header.

    safetensors' own writer keeps `__metadata__` in a Rust HashMap, so with more than one
    metadata key the header order (and the file's bytes) changes from run to run.  This writes
    the same format with sorted keys, then checks that the safetensors library reads it back.
    """
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, off = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        b = t.numpy().tobytes()  # little-endian on every supported host
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    with safetensors.safe_open(str(path), "pt") as f:
        if f.metadata() != metadata:
            fail(f"{path}: metadata did not round-trip")
        back = {k: f.get_tensor(k) for k in f.keys()}
    assert_same(path.name, {k: v.detach() for k, v in tensors.items()}, back)


# --------------------------------------------------------------------------------------
# Model construction: default init + deterministic perturbation + fp16 rounding
# --------------------------------------------------------------------------------------


@torch.no_grad()
def perturb_and_round(model: torch.nn.Module, seed: int) -> None:
    """Make every parameter non-trivial, then round it to fp16 (kept as fp32 values)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        u = torch.rand(p.shape, generator=g, dtype=torch.float64) * 2.0 - 1.0  # U(-1, 1)
        n = torch.randn(p.shape, generator=g, dtype=torch.float64)
        x = p.detach().to(torch.float64)
        if p.ndim == 1 and bool((x == 1).all()):  # norm weights
            new = 1.0 + 0.1 * u
        elif p.ndim == 1:  # biases (zero-initialised or not)
            new = x + 0.05 * u
        else:  # weight matrices / conv kernels / embeddings
            std = float(x.std()) if x.numel() > 1 else 0.0
            if std == 0.0:  # zero-initialised weight: give it a fan-in scaled init
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
                new = n / np.sqrt(fan_in)
            else:
                new = x + 0.1 * std * n
        p.copy_(new.to(torch.float16).to(p.dtype))
    # sanity: no all-zero / all-one tensor, everything finite and fp16-exact
    for name, p in model.named_parameters():
        if bool((p == 0).all()) or bool((p == 1).all()):
            fail(f"parameter {name} is trivial after perturbation")
        if not bool(torch.isfinite(p).all()):
            fail(f"parameter {name} not finite")
        if not torch.equal(p.to(torch.float16).to(torch.float32), p):
            fail(f"parameter {name} not fp16-exact")


def build_clip(seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(**CLIP_CONFIG)
    cfg._attn_implementation = "eager"
    model = CLIPTextModel(cfg).eval().float()
    perturb_and_round(model, seed + SEED_PERTURB)
    return model


def build_unet(seed: int, in_channels: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    cfg = dict(UNET_CONFIG)
    cfg["in_channels"] = in_channels
    model = UNet2DConditionModel(**cfg).eval().float()
    perturb_and_round(model, seed + SEED_PERTURB)
    return model


def build_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    model = AutoencoderKL(**VAE_CONFIG).eval().float()
    perturb_and_round(model, seed + SEED_PERTURB)
    return model


def fp16_state_dict(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    sd = {}
    for k, v in model.state_dict().items():
        k = prefix + k
        if not v.is_floating_point():
            fail(f"unexpected non-float tensor in state dict: {k}")
        sd[k] = v.detach().to(torch.float16).contiguous().clone()
    return sd


# --------------------------------------------------------------------------------------
# diffusers -> LDM conversion (written from /work/shared/spec/formats.md §2.2-2.7)
# --------------------------------------------------------------------------------------

_UNET_RESNET_RENAMES = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
]


def _rename_unet_resnet(rest: str) -> str:
    for a, b in _UNET_RESNET_RENAMES:
        if rest.startswith(a):
            return b + rest[len(a):]
    fail(f"unknown UNet resnet sub-key {rest!r}")


def unet_diffusers_to_ldm(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    R = config["layers_per_block"]
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}

    def put(k, v):
        if k in out:
            fail(f"duplicate LDM key {k}")
        out[k] = v

    simple = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for k, v in sd.items():
        done = False
        for a, b in simple.items():
            if k.startswith(a):
                put(b + k[len(a):], v)
                done = True
                break
        if done:
            continue
        m = re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k)
        if m:
            L, j, rest = int(m[1]), int(m[2]), m[3]
            put(f"input_blocks.{(R + 1) * L + j + 1}.0.{_rename_unet_resnet(rest)}", v)
            continue
        m = re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", k)
        if m:
            L, j, rest = int(m[1]), int(m[2]), m[3]
            put(f"input_blocks.{(R + 1) * L + j + 1}.1.{rest}", v)
            continue
        m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k)
        if m:
            L, rest = int(m[1]), m[2]
            put(f"input_blocks.{(R + 1) * (L + 1)}.0.op.{rest}", v)
            continue
        m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", k)
        if m:
            j, rest = int(m[1]), m[2]
            put(f"middle_block.{0 if j == 0 else 2}.{_rename_unet_resnet(rest)}", v)
            continue
        m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", k)
        if m:
            put(f"middle_block.1.{m[1]}", v)
            continue
        m = re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k)
        if m:
            L, j, rest = int(m[1]), int(m[2]), m[3]
            put(f"output_blocks.{(R + 1) * L + j}.0.{_rename_unet_resnet(rest)}", v)
            continue
        m = re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", k)
        if m:
            L, j, rest = int(m[1]), int(m[2]), m[3]
            put(f"output_blocks.{(R + 1) * L + j}.1.{rest}", v)
            continue
        m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k)
        if m:
            L, rest = int(m[1]), m[2]
            idx = 2 if up_has_attn[L] else 1
            put(f"output_blocks.{(R + 1) * L + R}.{idx}.conv.{rest}", v)
            continue
        fail(f"unmapped UNet key {k}")
    if len(out) != len(sd):
        fail("UNet conversion lost keys")
    return out


_VAE_ATTN_RENAMES = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def vae_diffusers_to_ldm(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    n_up = len(config["up_block_types"])
    out = {}

    def put(k, v):
        if k in out:
            fail(f"duplicate LDM key {k}")
        out[k] = v

    def res(rest):
        return rest.replace("conv_shortcut.", "nin_shortcut.")

    for k, v in sd.items():
        m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(.+)", k)
        if m:
            put(k, v)
            continue
        m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", k)
        if m:
            put(f"{m[1]}.norm_out.{m[2]}", v)
            continue
        m = re.fullmatch(r"(quant_conv|post_quant_conv)\.(.+)", k)
        if m:
            put(k, v)
            continue
        m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k)
        if m:
            put(f"encoder.down.{m[1]}.block.{m[2]}.{res(m[3])}", v)
            continue
        m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k)
        if m:
            put(f"encoder.down.{m[1]}.downsample.conv.{m[2]}", v)
            continue
        m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k)
        if m:
            put(f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{res(m[3])}", v)
            continue
        m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k)
        if m:
            put(f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}", v)
            continue
        m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", k)
        if m:
            put(f"{m[1]}.mid.block_{int(m[2]) + 1}.{res(m[3])}", v)
            continue
        m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", k)
        if m:
            rest = m[2]
            for a, b in _VAE_ATTN_RENAMES.items():
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            else:
                fail(f"unknown VAE attention sub-key {k}")
            if v.ndim == 2:  # linear -> 1x1 conv, as in original LDM files
                v = v.reshape(v.shape[0], v.shape[1], 1, 1).contiguous().clone()
            put(f"{m[1]}.mid.attn_1.{rest}", v)
            continue
        fail(f"unmapped VAE key {k}")
    if len(out) != len(sd):
        fail("VAE conversion lost keys")
    return out


def extras() -> dict[str, torch.Tensor]:
    betas64 = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod64 = torch.cumprod(1.0 - betas64, dim=0)
    return {
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(
            MAX_LEN, dtype=torch.int64
        ).unsqueeze(0),
        "betas": betas64.to(torch.float32),
        "alphas_cumprod": alphas_cumprod64.to(torch.float32),
        "model_ema.decay": torch.tensor(EMA_DECAY, dtype=torch.float32),
        "model_ema.num_updates": torch.tensor(EMA_NUM_UPDATES, dtype=torch.int32),
    }


def assert_same(name: str, ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]):
    rk, gk = set(ref), set(got)
    if rk != gk:
        fail(f"{name}: key mismatch; missing {sorted(rk - gk)[:10]} extra {sorted(gk - rk)[:10]}")
    for k in sorted(rk):
        a, b = ref[k], got[k]
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape) or not torch.equal(a, b):
            fail(f"{name}: tensor {k} differs ({a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)})")
    log(f"  round trip OK: {name} ({len(rk)} tensors)")


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


def clip_bpe_path() -> Path:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        fail("clip-anytorch is not installed")
    p = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    want = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    if sha256_file(p) != want:
        fail(f"unexpected BPE vocab file {p}")
    return p


def tokenize(prompts: list[str]) -> torch.Tensor:
    from clip.simple_tokenizer import SimpleTokenizer

    bpe = clip_bpe_path()
    tok = SimpleTokenizer(str(bpe))
    rows = []
    for p in prompts:
        ids = [BOS] + tok.encode(p) + [EOS]
        if len(ids) > MAX_LEN:
            fail("prompt too long")
        rows.append(ids + [PAD] * (MAX_LEN - len(ids)))
    ids = torch.tensor(rows, dtype=torch.int64)

    # Cross-check with transformers.CLIPTokenizer built from the same vocabulary.
    from clip.simple_tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    hf = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges)
    hf_ids = hf(prompts, padding="max_length", max_length=MAX_LEN, truncation=True)["input_ids"]
    if torch.tensor(hf_ids, dtype=torch.int64).tolist() != ids.tolist():
        fail(f"clip-anytorch and transformers tokenizers disagree:\n{ids.tolist()}\n{hf_ids}")
    return ids


# --------------------------------------------------------------------------------------
# Malicious pickles
# --------------------------------------------------------------------------------------


class _EvilSystem:
    def __reduce__(self):
        return (os.system, (MALICIOUS_CMD,))


class _EvilEval:
    def __reduce__(self):
        return (eval, (f"__import__('os').system({MALICIOUS_CMD!r})",))


def pickle_globals(path: Path) -> list[str]:
    """List GLOBAL/STACK_GLOBAL names in a torch zip's data.pkl without executing it."""
    with zipfile.ZipFile(path) as z:
        name = [n for n in z.namelist() if n.endswith("/data.pkl")]
        if len(name) != 1:
            fail(f"{path}: no unique data.pkl")
        data = z.read(name[0])
    out, strings = [], []
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            out.append(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            out.append(".".join(strings[-2:]))
    return out


def write_malicious(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"state_dict": {"weight": weight, "payload": _EvilSystem()}}, outdir / "evil.ckpt")
    torch.save({"state_dict": {"weight": weight, "payload": _EvilEval()}}, outdir / "evil_eval.ckpt")
    g1 = pickle_globals(outdir / "evil.ckpt")
    g2 = pickle_globals(outdir / "evil_eval.ckpt")
    if not any(g.endswith(".system") for g in g1):
        fail(f"evil.ckpt lacks the system global: {g1}")
    # torch.save pickles with protocol 2, so builtins are written under their Python 2 module name
    # (`__builtin__.eval`) and os.system under its real module (`posix.system` on Linux).
    if not ({"builtins.eval", "__builtin__.eval"} & set(g2)):
        fail(f"evil_eval.ckpt lacks builtins.eval: {g2}")
    log(f"  evil.ckpt globals: {g1}")
    log(f"  evil_eval.ckpt globals: {g2}")


# --------------------------------------------------------------------------------------
# Main generation
# --------------------------------------------------------------------------------------


def provenance(model_files: dict[str, Path], extra: dict[str, str]) -> dict[str, str]:
    md = {
        "generator": "reference/gen_fixtures.py",
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "transformers_version": transformers.__version__,
        "safetensors_version": safetensors.__version__,
        "numpy_version": np.__version__,
        "compute": "float32 CPU, weights = float16 values upcast to float32",
    }
    for label, p in model_files.items():
        md[f"sha256:{label}"] = sha256_file(p)
    md.update(extra)
    return md


def generate(root: Path) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tiny = root / "tests/fixtures/tiny"
    golden = root / "tests/fixtures/golden"
    evil = root / "tests/fixtures/malicious"
    for d in (tiny, golden, evil):
        d.mkdir(parents=True, exist_ok=True)

    log("building models")
    clip = build_clip(SEED_CLIP)
    unet = build_unet(SEED_UNET, 4)
    unet_inp = build_unet(SEED_UNET_INPAINT, 9)
    vae = build_vae(SEED_VAE)

    # transformers 5 dropped the `text_model.` submodule from CLIPTextModel (its state dict keys are
    # `embeddings.…`, and save_pretrained writes them like that).  Every real SD1.5 file uses the
    # transformers-4 names `text_model.embeddings.…`, which transformers 5 still loads (PrefixChange);
    # the fixtures use those real-world names.
    clip_sd = fp16_state_dict(clip, prefix="" if hasattr(clip, "text_model") else "text_model.")
    unet_sd = fp16_state_dict(unet)
    unet_inp_sd = fp16_state_dict(unet_inp)
    vae_sd = fp16_state_dict(vae)

    # ---- LDM single-file state dict
    log("converting to LDM layout")
    ldm = {}
    for k, v in unet_diffusers_to_ldm(unet_sd, unet.config).items():
        ldm["model.diffusion_model." + k] = v
    for k, v in vae_diffusers_to_ldm(vae_sd, vae.config).items():
        ldm["first_stage_model." + k] = v
    for k, v in clip_sd.items():
        if not k.startswith("text_model."):
            fail(f"unexpected CLIP key {k}")
        ldm["cond_stage_model.transformer." + k] = v
    ex = extras()
    for k in ex:
        if k in ldm:
            fail(f"extra key {k} collides")
    ldm.update(ex)
    ldm = dict(sorted(ldm.items()))

    ldm_inp = {"model.diffusion_model." + k: v for k, v in unet_diffusers_to_ldm(unet_inp_sd, unet_inp.config).items()}
    ldm_inp = dict(sorted(ldm_inp.items()))

    # ---- verify the conversion with diffusers' own LDM->diffusers converters
    log("verifying conversion with diffusers.loaders.single_file_utils")
    assert_same("unet", unet_sd, convert_ldm_unet_checkpoint(dict(ldm), dict(unet.config)))
    assert_same("unet_inpainting", unet_inp_sd, convert_ldm_unet_checkpoint(dict(ldm_inp), dict(unet_inp.config)))
    vae_back = convert_ldm_vae_checkpoint(dict(ldm), dict(vae.config))
    vae_back = {k: v.contiguous() for k, v in vae_back.items()}
    assert_same("vae", vae_sd, vae_back)
    clip_back = convert_ldm_clip_checkpoint(dict(ldm))
    pos = clip_back.pop("text_model.embeddings.position_ids")
    if not torch.equal(pos, torch.arange(MAX_LEN).unsqueeze(0)):
        fail("position_ids")
    assert_same("clip", clip_sd, clip_back)
    # and the converted dicts load strictly into fresh models
    for model_cls, cfg, sd in (
        (UNet2DConditionModel, unet.config, unet_sd),
        (AutoencoderKL, vae.config, vae_sd),
    ):
        fresh = model_cls.from_config(cfg)
        fresh.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)

    # ---- write model files
    log("writing model files")
    st_path = tiny / "tiny-sd15.safetensors"
    save_file(ldm, str(st_path), metadata={"format": "pt"})
    ckpt_path = tiny / "tiny-sd15.ckpt"
    torch.save({"state_dict": ldm, "global_step": GLOBAL_STEP}, ckpt_path)
    inp_path = tiny / "tiny-sd15-inpainting.safetensors"
    save_file(ldm_inp, str(inp_path), metadata={"format": "pt"})

    ddir = tiny / "tiny-sd15-diffusers"
    if ddir.exists():
        shutil.rmtree(ddir)
    unet16 = UNet2DConditionModel.from_config(unet.config)
    unet16.load_state_dict(unet_sd, strict=True)
    vae16 = AutoencoderKL.from_config(vae.config)
    vae16.load_state_dict(vae_sd, strict=True)
    clip16 = CLIPTextModel(clip.config)
    clip16.load_state_dict(clip.state_dict(), strict=True)
    unet16, vae16, clip16 = unet16.half().eval(), vae16.half().eval(), clip16.half().eval()
    sched = PNDMScheduler(**SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae16,
        text_encoder=clip16,
        tokenizer=None,
        unet=unet16,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(ddir), safe_serialization=True)
    # Rewrite the text encoder weights with real-world (`text_model.`-prefixed) names; see above.
    te_path = ddir / "text_encoder/model.safetensors"
    if not te_path.exists():
        fail("save_pretrained did not write text_encoder/model.safetensors")
    save_file(clip_sd, str(te_path), metadata={"format": "pt"})

    # ---- read everything back and compare
    log("reading files back")
    assert_same("tiny-sd15.safetensors", ldm, load_file(str(st_path)))
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # our own file: safe
    if set(ck) != {"state_dict", "global_step"} or ck["global_step"] != GLOBAL_STEP:
        fail("ckpt wrapper")
    assert_same("tiny-sd15.ckpt", ldm, ck["state_dict"])
    assert_same("tiny-sd15-inpainting.safetensors", ldm_inp, load_file(str(inp_path)))
    assert_same("diffusers unet", unet_sd, load_file(str(ddir / "unet/diffusion_pytorch_model.safetensors")))
    assert_same("diffusers vae", vae_sd, load_file(str(ddir / "vae/diffusion_pytorch_model.safetensors")))
    assert_same("diffusers text_encoder", clip_sd, load_file(str(ddir / "text_encoder/model.safetensors")))
    mi = json.loads((ddir / "model_index.json").read_text())
    if mi["_class_name"] != "StableDiffusionPipeline":
        fail("model_index.json")

    # ---- goldens (fp32 compute from fp16-rounded weights)
    log("computing goldens")
    gen = torch.Generator().manual_seed(SEED_INPUTS)
    files_main = {"tiny-sd15.safetensors": st_path, "tiny-sd15.ckpt": ckpt_path}
    with torch.no_grad():
        # CLIP
        input_ids = tokenize(PROMPTS)
        o = clip(input_ids=input_ids, output_hidden_states=True)
        skip1 = o.last_hidden_state.float().contiguous()
        final_ln = clip.text_model.final_layer_norm if hasattr(clip, "text_model") else clip.final_layer_norm
        skip2 = final_ln(o.hidden_states[-2]).float().contiguous()
        if len(o.hidden_states) != CLIP_CONFIG["num_hidden_layers"] + 1:
            fail("hidden_states count")
        save_golden(
            {"input_ids": input_ids, "skip1": skip1, "skip2": skip2},
            golden / "clip.safetensors",
            metadata=provenance(
                files_main,
                {
                    "prompts": json.dumps(PROMPTS),
                    "skip1": "last_hidden_state (final_layer_norm applied)",
                    "skip2": "final_layer_norm(hidden_states[-2])",
                    "attention_mask": "none (causal only)",
                },
            ),
        )

        # UNet
        x = torch.randn(2, 4, 16, 16, generator=gen)
        t = torch.tensor([999.0, 412.625], dtype=torch.float32)
        ctx = torch.randn(2, MAX_LEN, 32, generator=gen)
        out = unet(x, t, encoder_hidden_states=ctx).sample.float().contiguous()
        save_golden(
            {"x": x, "t": t, "context": ctx, "out": out},
            golden / "unet.safetensors",
            metadata=provenance(files_main, {"out": "unet(x, t, encoder_hidden_states=context).sample"}),
        )

        # Inpainting UNet
        xi = torch.randn(2, 9, 16, 16, generator=gen)
        ctxi = torch.randn(2, MAX_LEN, 32, generator=gen)
        outi = unet_inp(xi, t, encoder_hidden_states=ctxi).sample.float().contiguous()
        save_golden(
            {"x": xi, "t": t.clone(), "context": ctxi, "out": outi},
            golden / "unet_inpainting.safetensors",
            metadata=provenance(
                {"tiny-sd15-inpainting.safetensors": inp_path},
                {"out": "unet(x, t, encoder_hidden_states=context).sample"},
            ),
        )

        # VAE
        latent = torch.randn(1, 4, 8, 8, generator=gen)
        decoded = vae.decode(latent).sample.float().contiguous()
        image = torch.rand(1, 3, 16, 16, generator=gen) * 2.0 - 1.0
        dist = vae.encode(image).latent_dist
        mean = dist.mean.float().contiguous()
        logvar = dist.logvar.float().contiguous()
        save_golden(
            {"latent": latent, "decoded": decoded, "image": image, "mean": mean, "logvar": logvar},
            golden / "vae.safetensors",
            metadata=provenance(
                files_main,
                {
                    "decoded": "vae.decode(latent).sample (post_quant_conv included, no scaling factor)",
                    "mean_logvar": "vae.encode(image).latent_dist (quant_conv included, logvar clamped to [-30,20] "
                    "by diffusers, no scaling factor)",
                },
            ),
        )

    # Cross-check: the diffusers folder and the single file give the same goldens.
    log("cross-checking goldens against the diffusers folder loaded by diffusers")
    with torch.no_grad():
        u2 = UNet2DConditionModel.from_pretrained(str(ddir / "unet"), torch_dtype=torch.float32).eval()
        if not torch.equal(u2(x, t, encoder_hidden_states=ctx).sample, out):
            fail("diffusers-folder UNet output differs")
        v2 = AutoencoderKL.from_pretrained(str(ddir / "vae"), torch_dtype=torch.float32).eval()
        if not torch.equal(v2.decode(latent).sample, decoded):
            fail("diffusers-folder VAE output differs")
        c2, info = CLIPTextModel.from_pretrained(
            str(ddir / "text_encoder"), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
        )
        c2 = c2.eval()
        if any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")):
            fail(f"text_encoder loading info: {info}")
        if not torch.equal(c2(input_ids=input_ids).last_hidden_state, skip1):
            fail("diffusers-folder CLIP output differs")

    for name, tens in (("skip1", skip1), ("skip2", skip2), ("unet.out", out), ("unet_inp.out", outi),
                       ("vae.decoded", decoded), ("vae.mean", mean), ("vae.logvar", logvar)):
        if not bool(torch.isfinite(tens).all()):
            fail(f"{name} not finite")
        log(f"  {name}: shape {tuple(tens.shape)} mean {tens.mean():+.4f} std {tens.std():.4f} "
            f"absmax {tens.abs().max():.4f}")

    log("writing malicious fixtures")
    write_malicious(evil)

    # safetensors writes 0600 files; make every output world-readable
    for d in (tiny, golden, evil):
        for p in d.rglob("*"):
            if p.is_file():
                p.chmod(0o644)


def list_outputs(root: Path) -> dict[str, str]:
    res = {}
    for sub in ("tests/fixtures/tiny", "tests/fixtures/golden", "tests/fixtures/malicious"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file() and p.name != "tokenizer.json":
                res[str(p.relative_to(root))] = sha256_file(p)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root to write into")
    ap.add_argument("--list", action="store_true", help="print sha256 and size of the outputs and exit")
    args = ap.parse_args()
    if not args.list:
        generate(args.root)
    for rel, h in list_outputs(args.root).items():
        log(f"{h}  {(args.root / rel).stat().st_size:>9}  {rel}")


if __name__ == "__main__":
    main()
