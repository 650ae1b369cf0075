#!/usr/bin/env python3
"""What AUTOMATIC1111 stable-diffusion-webui 1.10.1 would return, computed on the tiny test models.

Run from anywhere (CPU only; the whole case list takes about a minute on one core):

    .venv/bin/pip install -r reference/requirements.txt
    .venv/bin/pip install --no-deps -r reference/requirements-a1111.txt
    .venv/bin/python reference/a1111_reference.py                 # (re)write every case
    .venv/bin/python reference/a1111_reference.py --case euler_a  # only the named case(s)
    .venv/bin/python reference/a1111_reference.py --check         # recompute, compare with the files
    .venv/bin/python reference/a1111_reference.py --list          # case names, key settings, sizes

Writes (relative to the repository root):

    tests/fixtures/golden/a1111/<case>.safetensors   one file per request case (see all_cases()); the
                                                     INFOTEXT_CASES also hold `infotexts`, each image's
                                                     whole infotext (create_infotext)
    tests/fixtures/embeddings/tinyemb.safetensors    kohya-style textual inversion, emb_params [2, 32]
    tests/fixtures/embeddings/tinyptemb.pt           A1111 `Embedding.save` layout, [3, 32]
    tests/fixtures/images/init_32x32.png             img2img init image (RGB, 32x32)
    tests/fixtures/images/mask_32x32.png             inpainting mask (L, 32x32; white, a grey band, black)

A1111 itself cannot run here, so this script re-implements the rules of A1111 1.10.1 (tag commit
82a973c0) on top of the diffusers/transformers models of tests/fixtures/tiny and the k-diffusion
samplers A1111 uses (k-diffusion 0.1.1.post1, whose sampling.py/external.py equal the commit
ab527a9a that A1111 1.10 clones).  Every rule below names the A1111 function it mirrors; the code
was written from reading those functions, none of it is copied from that project.  Notes on what
was checked and what is approximated are in reference/A1111_REFERENCE.md.

One deliberate difference from real SD: A1111 hard-codes a latent factor of 8 (`opt_f`), while the
tiny VAE downsamples by 2.  The latent here is [4, H/2, W/2] and every file records
`latent_factor = 2`; everything else (noise draws, sigma schedules, conditioning) follows A1111.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import inspect
import io
import json
import re
import struct
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

# torchsde warns when k-diffusion queries the Brownian tree a rounding error outside its interval (A1111
# gets the same warnings); numpy 2 warns about torch's __array_wrap__ in the DDIM eta expression.
warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
warnings.filterwarnings("ignore", message="__array_wrap__", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import gen_rng_goldens as rngref  # noqa: E402  (A1111 ImageRNG / Philox, verified against the Rust side)

import diffusers  # noqa: E402


def _import_k_diffusion():
    """Load k_diffusion.sampling/.external/.utils without the package __init__, which imports
    training-only modules (skimage, wandb, ...) that the samplers do not need."""
    import importlib.util
    import types

    if "k_diffusion" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    import k_diffusion.external
    import k_diffusion.sampling
    import k_diffusion.utils

    return sys.modules["k_diffusion"]


k_diffusion = _import_k_diffusion()
import lark  # noqa: E402
import safetensors  # noqa: E402
import torchsde  # noqa: E402
import torchsde._brownian.brownian_interval  # noqa: E402
import transformers  # noqa: E402
from clip.simple_tokenizer import SimpleTokenizer  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from PIL import Image, ImageFilter, ImageOps  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import CLIPTextModel  # noqa: E402

TINY = ROOT / "tests/fixtures/tiny"
DIFFUSERS_DIR = TINY / "tiny-sd15-diffusers"
SINGLE_FILE = TINY / "tiny-sd15.safetensors"
# 9-channel inpainting UNet (LDM names, UNet only); the checkpoint it stands for shares tiny-sd15's VAE and CLIP
INPAINT_UNET_FILE = TINY / "tiny-sd15-inpainting.safetensors"
INPAINT_CHECKPOINT = "tiny-sd15-inpainting"  # override_settings.sd_model_checkpoint that selects it
OUT_DIR = ROOT / "tests/fixtures/golden/a1111"
EMB_DIR = ROOT / "tests/fixtures/embeddings"
IMG_DIR = ROOT / "tests/fixtures/images"
INIT_IMAGE = IMG_DIR / "init_32x32.png"
MASK_IMAGE = IMG_DIR / "mask_32x32.png"

A1111_VERSION = "1.10.1 (82a973c04367123ae98bd9abdf80d9eda9b910e2)"
LATENT_FACTOR = 2  # the tiny VAE's real factor; A1111's opt_f is 8 (processing.py)
LATENT_CHANNELS = 4  # processing.opt_C
SCALE_FACTOR = 0.18215  # configs/v1-inference.yaml scale_factor (a Python float in LatentDiffusion)
BOS, EOS = 49406, 49407


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------------
# Settings: the subset of A1111 1.10 options (modules/shared_options.py) the pipeline reads, with
# their defaults.  Requests may change them through override_settings; an unknown key is an error
# here (A1111 answers 500 for unknown keys too).

DEFAULT_OPTS = {
    "CLIP_stop_at_last_layers": 1,
    "emphasis": "Original",
    "comma_padding_backtrack": 20,
    "use_old_scheduling": False,
    "randn_source": "CPU",  # A1111 default is "GPU"; on a CPU device that is the same generator
    "eta_noise_seed_delta": 0,
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "s_min_uncond": 0.0,
    "s_min_uncond_all": False,
    "skip_early_cond": 0.0,
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "always_discard_next_to_last_sigma": False,
    "sgm_noise_multiplier": False,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "batch_cond_uncond": True,
    "no_dpmpp_sde_batch_determinism": False,
    "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0,
    "img2img_extra_noise": 0.0,
    "enable_quantization": False,
    "use_old_karras_scheduler_sigmas": False,
    "beta_dist_alpha": 0.6,
    "beta_dist_beta": 0.6,
    "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3,
    "uni_pc_lower_order_final": True,
}


# ------------------------------------------------------------------------------------------------
# Models.  A1111 builds an LDM LatentDiffusion from the single-file checkpoint; here the same fp16
# weights come from the diffusers folder (gen_fixtures.py checks the two are bit-identical) and run
# in fp32, as A1111 does on CPU (--no-half).  `alphas_cumprod` is the checkpoint buffer, which
# LatentDiffusion.load_state_dict(strict=False) puts into the model and CompVisDenoiser reads.


class TinySD:
    def __init__(self, inpainting=False):
        self.unet = UNet2DConditionModel.from_pretrained(str(DIFFUSERS_DIR / "unet"), torch_dtype=torch.float32).eval()
        if inpainting:  # same topology with 9 input channels, weights from the LDM file via diffusers' converter
            from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

            cfg = dict(self.unet.config)
            cfg["in_channels"] = 9
            self.unet = UNet2DConditionModel.from_config(cfg).eval()
            sd = convert_ldm_unet_checkpoint(load_file(str(INPAINT_UNET_FILE)), cfg)
            self.unet.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        self.vae = AutoencoderKL.from_pretrained(str(DIFFUSERS_DIR / "vae"), torch_dtype=torch.float32).eval()
        self.clip = CLIPTextModel.from_pretrained(
            str(DIFFUSERS_DIR / "text_encoder"), dtype=torch.float32, attn_implementation="eager"
        ).eval()
        sd = load_file(str(SINGLE_FILE))
        self.alphas_cumprod = sd["alphas_cumprod"].to(torch.float32)
        self.in_channels = self.unet.config.in_channels
        # sd_models_config: a 9-channel UNet gets conditioning_key "hybrid" (c_concat + c_crossattn)
        self.is_inpainting = self.in_channels == 9
        tm = self.clip.text_model if hasattr(self.clip, "text_model") else self.clip
        self.text_embeddings = tm.embeddings
        self.final_layer_norm = tm.final_layer_norm
        # sd_hijack.EmbeddingsWithFixes: the token embedding is wrapped so that textual-inversion
        # vectors replace placeholder rows before position embeddings are added.
        self.token_embedding = TokenEmbeddingWithFixes(self.text_embeddings.token_embedding)
        self.text_embeddings.token_embedding = self.token_embedding

    # ldm LatentDiffusion.apply_model -> DiffusionWrapper.forward ("crossattn": context is the
    # concatenation of c_crossattn; "hybrid" (9-channel inpainting) also concatenates c_concat to x).
    # sd_hijack_unet.apply_model casts x, t and cond to the UNet dtype (fp32 here).
    def apply_model(self, x, t, cond):
        cc = torch.cat(cond["c_crossattn"], 1).float()
        if self.in_channels != x.shape[1]:
            x = torch.cat([x] + cond["c_concat"], dim=1)
        return self.unet(x.float(), t.float(), encoder_hidden_states=cc).sample

    # ldm LatentDiffusion.decode_first_stage: z = 1. / scale_factor * z, then first_stage_model.decode
    def decode_first_stage(self, z):
        z = 1.0 / SCALE_FACTOR * z
        return self.vae.decode(z).sample

    # ldm LatentDiffusion.encode_first_stage (encoder + quant_conv -> DiagonalGaussianDistribution)
    def encode_first_stage(self, x):
        return self.vae.encode(x).latent_dist


class TokenEmbeddingWithFixes(torch.nn.Module):
    """sd_hijack.EmbeddingsWithFixes.forward: for each (offset, embedding) fix of a batch row, rows
    offset+1 .. offset+1+n of the token embeddings (offset counts from after BOS) are replaced by the
    embedding's vectors, n = min(rows left before the last one, vectors)."""

    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped
        self.fixes = None

    def forward(self, input_ids):
        batch_fixes, self.fixes = self.fixes, None
        embeds = self.wrapped(input_ids)
        if not batch_fixes or max(len(f) for f in batch_fixes) == 0:
            return embeds
        rows = []
        for fixes, row in zip(batch_fixes, embeds):
            for offset, emb in fixes:
                vec = emb.vec.to(row.dtype)
                n = min(row.shape[0] - offset - 1, vec.shape[0])
                row = torch.cat([row[: offset + 1], vec[:n], row[offset + 1 + n :]])
            rows.append(row)
        return torch.stack(rows)


# ------------------------------------------------------------------------------------------------
# Textual inversion (textual_inversion.EmbeddingDatabase, create_embedding_from_data)


@dataclass
class Embedding:
    name: str
    vec: torch.Tensor  # [n, D] float32
    shorthash: str = ""  # Embedding.set_hash(hashes.sha256(file))[0:12]

    @property
    def vectors(self):
        return self.vec.shape[0]


class EmbeddingDB:
    def __init__(self, tokenizer: "ClipTokenizer", expected_dim: int):
        self.tokenizer = tokenizer
        self.expected_dim = expected_dim
        self.ids_lookup: dict[int, list[tuple[list[int], Embedding]]] = {}
        self.names: list[str] = []

    def load_dir(self, d: Path):
        for path in sorted(d.rglob("*")):
            if path.is_file() and path.stat().st_size > 0:
                self.load_file(path)

    def load_file(self, path: Path):
        ext = path.suffix.upper()
        if ext in (".PT", ".BIN"):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        elif ext == ".SAFETENSORS":
            data = load_file(str(path))
        else:
            return
        # create_embedding_from_data: A1111 layout first, then "diffuser concepts" (one tensor).
        if "string_to_param" in data:
            params = data["string_to_param"]
            params = getattr(params, "_parameters", params)
            assert len(params) == 1, "embedding file has multiple terms in it"
            vec = next(iter(params.values())).detach().to(torch.float32)
        else:
            assert len(data) == 1, "embedding file has multiple terms in it"
            vec = next(iter(data.values())).detach().to(torch.float32)
            if vec.ndim == 1:
                vec = vec.unsqueeze(0)
        if vec.shape[-1] != self.expected_dim:  # load_from_file: skipped, not registered
            return
        self.register(Embedding(path.stem, vec, sha256(path)[:12]))  # the name is the file stem

    def register(self, emb: Embedding):
        # register_embedding_by_name: keyed by the first token id, candidates longest first
        ids = self.tokenizer.tokenize([emb.name])[0]
        lst = [x for x in self.ids_lookup.get(ids[0], []) if x[1].name != emb.name] + [(ids, emb)]
        self.ids_lookup[ids[0]] = sorted(lst, key=lambda x: len(x[0]), reverse=True)
        self.names.append(emb.name)

    def find_embedding_at_position(self, tokens, offset):
        for ids, emb in self.ids_lookup.get(tokens[offset], []):
            if tokens[offset : offset + len(ids)] == ids:
                return emb, len(ids)
        return None, None


# ------------------------------------------------------------------------------------------------
# Prompt front end


class ClipTokenizer:
    """A1111 calls the HF CLIPTokenizer with add_special_tokens=False, truncation=False; the
    project's verified stand-in is clip-anytorch's SimpleTokenizer (same BPE, same ids)."""

    def __init__(self):
        self.t = SimpleTokenizer()
        self.comma_token = self.t.encoder[",</w>"]

    def tokenize(self, texts):
        return [self.t.encode(t) for t in texts]


# extra_networks.parse_prompt: every <name:args> is removed; the first prompt's tags are the batch's
RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")


def strip_extra_networks(prompts):
    tags = None
    out = []
    for p in prompts:
        found = []
        out.append(RE_EXTRA_NET.sub(lambda m: found.append((m.group(1), m.group(2).split(":"))) or "", p))
        if tags is None:
            tags = found
    return out, tags or []


# prompt_parser.get_multicond_prompt_list: AND split and trailing ":weight", deduplicated texts
RE_AND = re.compile(r"\bAND\b")
RE_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def multicond_prompt_list(prompts):
    indexes, flat, where = [], [], {}
    for prompt in prompts:
        row = []
        for sub in RE_AND.split(prompt):
            m = RE_WEIGHT.search(sub)
            text, w = m.groups() if m is not None else (sub, None)
            w = float(w) if w is not None else 1.0
            if text not in where:
                where[text] = len(flat)
                flat.append(text)
            row.append((where[text], w))
        indexes.append(row)
    return indexes, flat


# prompt_parser.schedule_parser: the grammar as given in /work/shared/spec/prompts.md §1.4.1
SCHEDULE_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""
SCHEDULE_PARSER = lark.Lark(SCHEDULE_GRAMMAR)  # Earley, like A1111


def prompt_schedule(prompt: str, steps: int, use_old_scheduling=False, hires_steps=None):
    """prompt_parser.get_learned_conditioning_prompt_schedules: returns [[end_at_step, text], ...].
    A parse error means the prompt is used as is for every step.  For the hires pass (`hires_steps`
    given, new scheduling) the schedule spans the hires steps: an integer `when` is counted from the
    end of the first pass (minus `steps`) and a fractional one from 1.0 (`(when - 1) * hires_steps`)."""
    int_offset, flt_offset = 0, 0.0
    if hires_steps is not None and not use_old_scheduling:
        int_offset, flt_offset, steps = steps, 1.0, hires_steps
    try:
        tree = SCHEDULE_PARSER.parse(prompt)
    except lark.exceptions.LarkError:
        return [[steps, prompt]]

    # collect_steps: convert each `when` to a step (in place), gather boundaries
    bounds = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            s = node.children[-2]
            v = float(s)
            if use_old_scheduling:
                v = v * steps if v < 1 else v
            elif "." in s:
                v = (v - flt_offset) * steps
            else:
                v = v - int_offset
            when = min(steps, int(v))
            node.children[-2] = when
            if when >= 1:
                bounds.add(when)
        elif node.data == "alternate":
            bounds.update(range(1, steps + 1))

    # at_step: render the text as of step t
    def render(node, t):
        if node is None:
            return ""
        if isinstance(node, lark.Token):
            return str(node)
        if node.data == "scheduled":
            before, after, _, when, _ = node.children
            return render(before, t) if t <= when else render(after, t)
        if node.data == "alternate":
            opts_ = node.children
            return render(opts_[(t - 1) % len(opts_)], t)
        if node.data == "plain":
            return str(node.children[0])
        return "".join(render(c, t) for c in node.children)

    return [[t, render(tree, t)] for t in sorted(bounds)]


# prompt_parser.parse_prompt_attention (regex and rules as in prompts.md §1.5)
RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text):
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start, mult):
        for seg in res[start:]:
            seg[1] *= mult

    for m in RE_ATTENTION.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            res.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(res))
        elif tok == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            scale_from(round_open.pop(), 1.1)
        elif tok == "]" and square_open:
            scale_from(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(RE_BREAK.split(tok)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for pos in round_open:
        scale_from(pos, 1.1)
    for pos in square_open:
        scale_from(pos, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):  # merge neighbours with exactly equal weights
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


# ------------------------------------------------------------------------------------------------
# CLIP conditioning (sd_hijack_clip.TextConditionalModel / FrozenCLIPEmbedderWithCustomWords)

CHUNK = 75


@dataclass
class PromptChunk:
    tokens: list = field(default_factory=list)
    multipliers: list = field(default_factory=list)
    fixes: list = field(default_factory=list)  # (offset, Embedding)


class ClipConditioner:
    def __init__(self, model: TinySD, tokenizer: ClipTokenizer, embeddings: EmbeddingDB, opts):
        self.model, self.tok, self.emb, self.opts = model, tokenizer, embeddings, opts
        # sd_hijack.model_hijack.extra_generation_params of this request (cleared per request)
        self.hijack_params: dict = {}

    def empty_chunk(self):
        return PromptChunk([BOS] + [EOS] * (CHUNK + 1), [1.0] * (CHUNK + 2), [])

    def tokenize_line(self, line):
        """tokenize_line: 75-token chunks, comma backtrack, BREAK, embedding slots."""
        parsed = parse_attention(line) if self.opts["emphasis"] != "None" else [[line, 1.0]]
        tokenized = self.tok.tokenize([t for t, _ in parsed])
        chunks: list[PromptChunk] = []
        chunk = PromptChunk()
        last_comma = -1
        backtrack = self.opts["comma_padding_backtrack"]

        def close():
            nonlocal chunk, last_comma
            pad = CHUNK - len(chunk.tokens)
            if pad > 0:
                chunk.tokens += [EOS] * pad
                chunk.multipliers += [1.0] * pad
            chunk.tokens = [BOS] + chunk.tokens + [EOS]
            chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
            last_comma = -1
            chunks.append(chunk)
            chunk = PromptChunk()

        for tokens, (text, weight) in zip(tokenized, parsed):
            if text == "BREAK" and weight == -1:
                close()
                continue
            pos = 0
            while pos < len(tokens):
                token = tokens[pos]
                if token == self.tok.comma_token:
                    last_comma = len(chunk.tokens)
                elif (
                    backtrack != 0
                    and len(chunk.tokens) == CHUNK
                    and last_comma != -1
                    and len(chunk.tokens) - last_comma <= backtrack
                ):
                    # move everything after the comma to the next chunk (fixes are not moved: quirk)
                    cut = last_comma + 1
                    moved_t, moved_m = chunk.tokens[cut:], chunk.multipliers[cut:]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                    close()
                    chunk.tokens, chunk.multipliers = moved_t, moved_m
                if len(chunk.tokens) == CHUNK:
                    close()
                emb, emb_tokens = self.emb.find_embedding_at_position(tokens, pos)
                if emb is None:
                    chunk.tokens.append(token)
                    chunk.multipliers.append(weight)
                    pos += 1
                    continue
                if len(chunk.tokens) + emb.vectors > CHUNK:
                    close()
                chunk.fixes.append((len(chunk.tokens), emb))
                chunk.tokens += [0] * emb.vectors
                chunk.multipliers += [weight] * emb.vectors
                pos += emb_tokens
        if chunk.tokens or not chunks:
            close()
        return chunks

    def encode_with_transformers(self, tokens):
        """FrozenCLIPEmbedderWithCustomWords.encode_with_transformers: clip skip N>1 takes
        hidden_states[-N] and applies the final layer norm; N=1 is last_hidden_state."""
        n = self.opts["CLIP_stop_at_last_layers"]
        out = self.model.clip(input_ids=tokens, output_hidden_states=True)
        if n > 1:
            return self.model.final_layer_norm(out.hidden_states[-n])
        return out.last_hidden_state

    def process_tokens(self, batch_tokens, batch_multipliers, batch_fixes):
        tokens = torch.asarray(batch_tokens)
        self.model.token_embedding.fixes = batch_fixes
        z = self.encode_with_transformers(tokens)
        mode = self.opts["emphasis"]
        mult = torch.asarray(batch_multipliers)  # python floats -> float32
        if mode == "Original":  # sd_emphasis.EmphasisOriginal
            original_mean = z.mean()
            z = z * mult.reshape(mult.shape + (1,)).expand(z.shape)
            new_mean = z.mean()
            z = z * (original_mean / new_mean)
        elif mode == "No norm":
            z = z * mult.reshape(mult.shape + (1,)).expand(z.shape)
        return z

    def __call__(self, texts):
        """TextConditionalModel.forward: chunk every text (identical texts share chunks), pad the
        shorter ones with empty chunks, encode chunk index by chunk index, concatenate on tokens."""
        cache: dict[str, list] = {}
        batch_chunks = []
        for line in texts:
            if line not in cache:
                cache[line] = self.tokenize_line(line)
            batch_chunks.append(cache[line])
        count = max(len(c) for c in batch_chunks)
        zs = []
        used = {}
        for i in range(count):
            chunk_row = [c[i] if i < len(c) else self.empty_chunk() for c in batch_chunks]
            for fixes in [c.fixes for c in chunk_row]:
                for _pos, emb in fixes:
                    used[emb.name] = emb
            zs.append(
                self.process_tokens(
                    [c.tokens for c in chunk_row], [c.multipliers for c in chunk_row], [c.fixes for c in chunk_row]
                )
            )
        # textual_inversion_add_hashes_to_infotext (on by default): this call's embeddings first,
        # then whatever earlier calls of the request wrote
        hashes = [f"{n.replace(':', '').replace(',', '')}: {e.shorthash}" for n, e in used.items() if e.shorthash]
        if hashes:
            if self.hijack_params.get("TI hashes"):
                hashes.append(self.hijack_params["TI hashes"])
            self.hijack_params["TI hashes"] = ", ".join(hashes)
        if any(x for x in texts if "(" in x or "[" in x) and self.opts["emphasis"] != "Original":
            self.hijack_params["Emphasis"] = self.opts["emphasis"]
        return torch.hstack(zs)


def get_learned_conditioning(encoder, prompts, steps, use_old_scheduling=False, hires_steps=None):
    """prompt_parser.get_learned_conditioning: one schedule per distinct prompt; all texts of a
    schedule are encoded in one call (this matters for the Original emphasis mean)."""
    res, cache = [], {}
    for prompt in prompts:
        if prompt in cache:
            res.append(cache[prompt])
            continue
        sched = prompt_schedule(prompt, steps, use_old_scheduling, hires_steps)
        conds = encoder([t for _, t in sched])
        cache[prompt] = [(end, conds[i]) for i, (end, _) in enumerate(sched)]
        res.append(cache[prompt])
    return res


@dataclass
class MultiCond:
    indexes: list  # per image: [(flat index, weight), ...]
    schedules: list  # per flat sub-prompt: [(end_at_step, cond), ...]
    texts: list


def get_multicond_learned_conditioning(encoder, prompts, steps, use_old_scheduling=False, hires_steps=None):
    indexes, flat = multicond_prompt_list(prompts)
    return MultiCond(indexes, get_learned_conditioning(encoder, flat, steps, use_old_scheduling, hires_steps), flat)


def pick(schedule, step):
    """The first entry with step <= end_at_step (else the first entry)."""
    for end, cond in schedule:
        if step <= end:
            return cond
    return schedule[0][1]


def reconstruct_cond_batch(schedules, step):
    return torch.stack([pick(s, step) for s in schedules])


def reconstruct_multicond_batch(mc: MultiCond, step):
    """Every image's sub-prompts in order; conds of different lengths are extended by repeating their
    last vector (prompt_parser.stack_conds)."""
    tensors, conds_list = [], []
    for row in mc.indexes:
        out = []
        for idx, w in row:
            out.append((len(tensors), w))
            tensors.append(pick(mc.schedules[idx], step))
        conds_list.append(out)
    n = max(t.shape[0] for t in tensors)
    tensors = [t if t.shape[0] == n else torch.vstack([t, t[-1:].repeat([n - t.shape[0], 1])]) for t in tensors]
    return conds_list, torch.stack(tensors)


# ------------------------------------------------------------------------------------------------
# Noise.  The first draw of each image and every later draw come from rngref.ImageNoise, the Python
# model of A1111's rng.ImageRNG that the Rust RNG is already checked against.  k-diffusion's
# torch.randn_like goes to that object (sd_samplers_common.TorchHijack).


class TorchHijack:
    def __init__(self, rng):
        self.rng = rng

    def __getattr__(self, item):
        if item == "randn_like":
            return self.randn_like
        return getattr(torch, item)

    def randn_like(self, x):
        return self.rng.next()


def a1111_to_d(x, sigma, denoised):
    """sd_schedulers.to_d replaces k-diffusion's (plain division by sigma)."""
    return (x - denoised) / sigma


class SamplingContext:
    """Installs the A1111 patches on k-diffusion and torchsde for one sampling call."""

    def __init__(self, rng, randn_source):
        self.rng, self.source = rng, randn_source

    def _randn(self, size, dtype, device, seed):
        # sd_samplers_common.replace_torchsde_browinan -> rng.randn_local(seed, size)
        if self.source == "NV":
            t = torch.from_numpy(rngref.Philox(int(seed)).randn(tuple(size)))
        else:
            t = torch.randn(size, generator=torch.Generator("cpu").manual_seed(int(seed)))
        return t.to(device=device, dtype=dtype)

    def __enter__(self):
        self.saved = (k_diffusion.sampling.torch, k_diffusion.sampling.to_d, torchsde._brownian.brownian_interval._randn)
        k_diffusion.sampling.torch = TorchHijack(self.rng)
        k_diffusion.sampling.to_d = a1111_to_d
        torchsde._brownian.brownian_interval._randn = self._randn
        return self

    def __exit__(self, *exc):
        k_diffusion.sampling.torch, k_diffusion.sampling.to_d, torchsde._brownian.brownian_interval._randn = self.saved


# ------------------------------------------------------------------------------------------------
# Classifier-free guidance (sd_samplers_cfg_denoiser.CFGDenoiser.forward, non-edit model)


class CFGDenoiser(torch.nn.Module):
    def __init__(self, inner_model, opts, empty_cond=None, mask_before_denoising=False):
        super().__init__()
        self.inner_model = inner_model
        self.opts = opts
        self.empty_cond = empty_cond  # sd_model.cond_stage_model_empty_prompt ([1, 77, C])
        self.mask = self.nmask = self.init_latent = None
        self.mask_before_denoising = mask_before_denoising
        self.step = 0
        self.total_steps = 1
        self.cond_scale_multiplier = 1.0
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.trace: dict = {}
        self.calls = 0

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0] :]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def _run(self, x, sigma, cond, image_cond):
        self.calls += 1
        return self.inner_model(x, sigma, cond={"c_crossattn": [cond], "c_concat": [image_cond]})

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        conds_list, tensor = reconstruct_multicond_batch(cond, self.step)
        uncond = reconstruct_cond_batch(uncond, self.step)
        if self.step == 0:
            self.trace["cond_step0"] = tensor.clone()
            self.trace["uncond_step0"] = uncond.clone()
            self.trace["conds_list"] = conds_list
        if self.mask_before_denoising and self.mask is not None:
            x = x * self.nmask + self.init_latent * self.mask

        batch_size = len(conds_list)
        repeats = [len(c) for c in conds_list]
        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [sigma])
        image_cond_in = torch.cat(
            [torch.stack([image_cond[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [image_cond]
        )

        o = self.opts
        skip_uncond = False
        if o["skip_early_cond"] != 0.0 and self.step / self.total_steps <= o["skip_early_cond"]:
            skip_uncond = True
        elif (self.step % 2 or o["s_min_uncond_all"]) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            skip_uncond = True
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch_size], sigma_in[:-batch_size]

        if o["pad_cond_uncond_v0"] and tensor.shape[1] != uncond.shape[1]:
            if uncond.shape[1] < tensor.shape[1]:  # repeat the last vector / truncate
                uncond = torch.hstack([uncond, uncond[:, -1:].repeat([1, tensor.shape[1] - uncond.shape[1], 1])])
            else:
                uncond = uncond[:, : tensor.shape[1]]
        elif o["pad_cond_uncond"] and tensor.shape[1] != uncond.shape[1]:
            empty = self.empty_cond
            reps = (tensor.shape[1] - uncond.shape[1]) // empty.shape[1]
            if reps < 0:
                tensor = torch.cat([tensor, empty.repeat((tensor.shape[0], -reps, 1))], axis=1)
            elif reps > 0:
                uncond = torch.cat([uncond, empty.repeat((uncond.shape[0], reps, 1))], axis=1)

        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            cond_in = tensor if skip_uncond else torch.cat([tensor, uncond])
            if o["batch_cond_uncond"]:
                x_out = self._run(x_in, sigma_in, cond_in, image_cond_in)
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_out.shape[0], batch_size):
                    b = a + batch_size
                    x_out[a:b] = self._run(x_in[a:b], sigma_in[a:b], cond_in[a:b], image_cond_in[a:b])
        else:
            # different token lengths: conds in slices of 2*batch_size, then uncond in one call
            x_out = torch.zeros_like(x_in)
            step = batch_size * 2 if o["batch_cond_uncond"] else batch_size
            for a in range(0, tensor.shape[0], step):
                b = min(a + step, tensor.shape[0])
                x_out[a:b] = self._run(x_in[a:b], sigma_in[a:b], tensor[a:b], image_cond_in[a:b])
            if not skip_uncond:
                n = uncond.shape[0]
                x_out[-n:] = self._run(x_in[-n:], sigma_in[-n:], uncond, image_cond_in[-n:])

        if skip_uncond:
            x_out = torch.cat([x_out, torch.cat([x_out[c[0][0] : c[0][0] + 1] for c in conds_list])])
        if self.need_last_noise_uncond:
            self.last_noise_uncond = torch.clone(x_out[-uncond.shape[0] :])
        scale = 1.0 if skip_uncond else cond_scale * self.cond_scale_multiplier
        denoised = self.combine_denoised(x_out, conds_list, uncond, scale)
        if not self.mask_before_denoising and self.mask is not None:
            denoised = denoised * self.nmask + self.init_latent * self.mask
        self.step += 1
        return denoised


# ------------------------------------------------------------------------------------------------
# Samplers A1111 implements itself (written from sd_samplers_extra, sd_samplers_timesteps_impl,
# sd_samplers_lcm)


@torch.no_grad()
def restart_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, restart_list=None):
    """sd_samplers_extra.restart_sampler (Restart Sampling, 2023): Heun steps over the Karras
    sigmas; with 20 or more steps the schedule is shortened and restart segments are inserted."""
    extra_args = extra_args or {}
    ks = k_diffusion.sampling
    s_in = x.new_ones([x.shape[0]])

    def heun_step(x, old_sigma, new_sigma):
        denoised = model(x, old_sigma * s_in, **extra_args)
        d = ks.to_d(x, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            return x + d * dt
        x2 = x + d * dt
        denoised2 = model(x2, new_sigma * s_in, **extra_args)
        d2 = ks.to_d(x2, new_sigma, denoised2)
        return x + (d + d2) / 2 * dt

    steps = sigmas.shape[0] - 1
    if restart_list is None:
        if steps >= 20:
            restart_steps, restart_times = 9, 1
            if steps >= 36:
                restart_steps, restart_times = steps // 4, 2
            sigmas = ks.get_sigmas_karras(
                steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item(), device=sigmas.device
            )
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
        else:
            restart_list = {}
    restart_list = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}

    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_list:
            r_steps, r_times, r_max = restart_list[i + 1]
            min_idx = i + 1
            max_idx = int(torch.argmin(abs(sigmas - r_max), dim=0))
            if max_idx < min_idx:
                sr = ks.get_sigmas_karras(r_steps, sigmas[min_idx].item(), sigmas[max_idx].item(), device=sigmas.device)[:-1]
                for _ in range(r_times):
                    pairs.extend(zip(sr[:-1], sr[1:]))

    last = None
    for old_sigma, new_sigma in pairs:
        if last is None:
            last = old_sigma
        elif last < old_sigma:  # restart: jump back up with fresh noise
            x = x + ks.torch.randn_like(x) * s_noise * (old_sigma**2 - last**2) ** 0.5
        x = heun_step(x, old_sigma, new_sigma)
        last = new_sigma
    return x


def _ddim_tables(model, timesteps):
    ac = model.inner_model.inner_model.alphas_cumprod
    alphas = ac[timesteps]
    alphas_prev = ac[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    return alphas, alphas_prev, torch.sqrt(1 - alphas)


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0, cfgpp=False):
    """sd_samplers_timesteps_impl.ddim / ddim_cfgpp.  Note the loop runs len(timesteps)-1 times: the
    first timestep (1) is never evaluated, the last update goes to alphas_cumprod[1]."""
    alphas, alphas_prev, sqrt_one_minus = _ddim_tables(model, timesteps)
    ap, a = alphas_prev.cpu().numpy(), alphas.cpu()
    sigmas = eta * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
    if cfgpp:
        model.cond_scale_multiplier = 1 / 12.5
        model.need_last_noise_uncond = True
    extra_args = extra_args or {}
    s_in = x.new_ones((x.shape[0]))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        direction = model.last_noise_uncond if cfgpp else e_t
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * direction
        noise = sigma_t * k_diffusion.sampling.torch.randn_like(x)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
    return x


@torch.no_grad()
def ddim_cfgpp(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    return ddim(model, x, timesteps, extra_args, callback, disable, eta, cfgpp=True)


@torch.no_grad()
def plms(model, x, timesteps, extra_args=None, callback=None, disable=None):
    """sd_samplers_timesteps_impl.plms: pseudo improved Euler for the first step (two model calls),
    then Adams-Bashforth of order 2, 3, 4 on the eps predictions."""
    alphas, alphas_prev, sqrt_one_minus = _ddim_tables(model, timesteps)
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    old_eps = []

    def step_to_prev(x, e_t, index):
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        ts = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = model(x, ts, **extra_args)
        if len(old_eps) == 0:
            x_prev = step_to_prev(x, e_t, index)
            e_t_next = model(x_prev, t_next, **extra_args)
            e_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_new = step_to_prev(x, e_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_new
    return x


class VPSchedule:
    """uni_pc.NoiseScheduleVP('discrete', alphas_cumprod=...): log alpha_t = 0.5 log(alphas_cumprod)
    on the grid t = (i + 1) / N, linearly interpolated (and extrapolated past the ends)."""

    def __init__(self, alphas_cumprod):
        log_alphas = 0.5 * torch.log(alphas_cumprod)
        self.total_N = len(log_alphas)
        self.T = 1.0
        self.t_grid = torch.linspace(0.0, 1.0, self.total_N + 1)[1:]
        self.log_alpha_grid = log_alphas

    def log_mean_coeff(self, t):
        t = t.reshape(-1)
        k_count = self.t_grid.shape[0]
        out = []
        for v in t:
            # where v lands when sorted together with the grid (the same sort the original does)
            order = torch.sort(torch.cat([v.reshape(1), self.t_grid])).indices
            pos = int((order == 0).nonzero()[0, 0])
            k = min(max(pos - 1, 0), k_count - 2)
            x0, x1 = self.t_grid[k], self.t_grid[k + 1]
            y0, y1 = self.log_alpha_grid[k], self.log_alpha_grid[k + 1]
            out.append(y0 + (v - x0) * (y1 - y0) / (x1 - x0))
        return torch.stack(out)

    def alpha(self, t):
        return torch.exp(self.log_mean_coeff(t))

    def std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_mean_coeff(t)))

    def lam(self, t):
        lmc = self.log_mean_coeff(t)
        return lmc - 0.5 * torch.log(1.0 - torch.exp(2.0 * lmc))


class UniPCSolver:
    """UniPC (Zhao et al. 2023) as A1111 1.10 runs it (sd_samplers_timesteps_impl.unipc +
    modules/models/diffusion/uni_pc): data prediction, multistep, B(h) variants bh1/bh2, time-uniform
    or time-quadratic steps, corrector on every step except the last."""

    def __init__(self, cfg_model, extra_args, ns: VPSchedule, variant):
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"UniPC variant {variant} is not reproduced")
        self.cfg_model, self.extra_args, self.ns, self.variant = cfg_model, extra_args, ns, variant

    def data_prediction(self, x, t):
        # UniPCCFG.model: the CFG model is called at t_input = (t - 1/N) * 1000 and returns eps
        eps = self.cfg_model(x, (t - 1.0 / self.ns.total_N) * 1000.0, **self.extra_args)
        a, s = self.ns.alpha(t), self.ns.std(t)
        return (x - s[:, None, None, None] * eps) / a[:, None, None, None]

    def update(self, x, model_prev, t_prev, t, order, use_corrector):
        ns = self.ns
        lam_prev0, lam_t = ns.lam(t_prev[-1]), ns.lam(t)
        m0 = model_prev[-1]
        sigma_prev0, sigma_t = ns.std(t_prev[-1]), ns.std(t)
        alpha_t = torch.exp(ns.log_mean_coeff(t))
        h = lam_t - lam_prev0
        rks, d1s = [], []
        for i in range(1, order):
            rk = ((ns.lam(t_prev[-(i + 1)]) - lam_prev0) / h)[0]
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks)
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        fact = 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * fact / b_h)
            fact *= i + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        rmat = torch.stack(rows)
        b = torch.tensor(b)
        if d1s:
            d1s = torch.stack(d1s, dim=1)
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(rmat[:-1, :-1], b[:-1])
        else:
            d1s = None
        if use_corrector:
            rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(rmat, b)
        e = lambda v: v[:, None, None, None]  # noqa: E731
        x_lin = e(sigma_t / sigma_prev0) * x - e(alpha_t * h_phi_1) * m0
        pred = torch.einsum("k,bkchw->bchw", rhos_p, d1s) if d1s is not None else 0
        x_t = x_lin - e(alpha_t * b_h) * pred
        model_t = None
        if use_corrector:
            model_t = self.data_prediction(x_t, t)
            corr = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1s) if d1s is not None else 0
            x_t = x_lin - e(alpha_t * b_h) * (corr + rhos_c[-1] * (model_t - m0))
        return x_t, model_t

    def sample(self, x, steps, t_start, skip_type, order, lower_order_final):
        t_0 = 1.0 / self.ns.total_N
        t_T = self.ns.T if t_start is None else t_start
        assert steps >= order, "UniPC order must be < sampling steps"
        if skip_type == "time_uniform":
            ts = torch.linspace(t_T, t_0, steps + 1)
        elif skip_type == "time_quadratic":
            ts = torch.linspace(t_T**0.5, t_0**0.5, steps + 1).pow(2)
        else:
            raise ValueError(f"UniPC skip type {skip_type} is not reproduced")
        vec = ts[0].expand(x.shape[0])
        model_prev, t_prev = [self.data_prediction(x, vec)], [vec]
        for k in range(1, order):  # warm-up with lower orders
            vec = ts[k].expand(x.shape[0])
            x, mx = self.update(x, model_prev, t_prev, vec, k, True)
            if mx is None:
                mx = self.data_prediction(x, vec)
            model_prev.append(mx)
            t_prev.append(vec)
        for step in range(order, steps + 1):
            vec = ts[step].expand(x.shape[0])
            step_order = min(order, steps + 1 - step) if lower_order_final else order
            x, mx = self.update(x, model_prev, t_prev, vec, step_order, step != steps)
            for i in range(order - 1):
                t_prev[i], model_prev[i] = t_prev[i + 1], model_prev[i + 1]
            t_prev[-1] = vec
            if step < steps:
                model_prev[-1] = mx if mx is not None else self.data_prediction(x, vec)
        return x


@torch.no_grad()
def unipc(model, x, timesteps, extra_args=None, callback=None, disable=None, is_img2img=False, opts=None):
    """sd_samplers_timesteps_impl.unipc: UniPC over the model's alphas_cumprod; img2img starts at
    t = last scheduled timestep / 1000 + 1/1000."""
    ns = VPSchedule(model.inner_model.inner_model.alphas_cumprod)
    t_start = timesteps[-1] / 1000 + 1 / 1000 if is_img2img else None
    solver = UniPCSolver(model, extra_args or {}, ns, opts["uni_pc_variant"])
    return solver.sample(x, len(timesteps), t_start, opts["uni_pc_skip_type"], opts["uni_pc_order"], opts["uni_pc_lower_order_final"])


class TimestepsDenoiser(torch.nn.Module):
    """sd_samplers_timesteps.CompVisTimestepsDenoiser: the model's eps at integer timesteps."""

    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, x, timesteps, **kwargs):
        return self.inner_model.apply_model(x, timesteps, **kwargs)


class LCMDenoiser(k_diffusion.external.DiscreteEpsDDPMDenoiser):
    """sd_samplers_lcm.LCMCompVisDenoiser: 50 "original" timesteps (every 20th of 1000, from 999
    down), timesteps quantised to 20k+19, LCM boundary-condition scalings with sigma_data 0.5."""

    def __init__(self, model):
        timesteps, original = 1000, 50
        self.skip_steps = timesteps // original
        ac = torch.zeros(original, dtype=torch.float32)
        for i in range(original):
            ac[original - 1 - i] = model.alphas_cumprod[timesteps - 1 - i * self.skip_steps]
        super().__init__(model, ac, quantize=None)

    def get_sigmas(self, n=None):
        if n is None:
            return k_diffusion.sampling.append_zero(self.sigmas.flip(0))
        start = self.sigma_to_t(self.sigma_max)
        end = self.sigma_to_t(self.sigma_min)
        t = torch.linspace(start, end, n)
        return k_diffusion.sampling.append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma, quantize=None):
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, timestep):
        t = torch.clamp(((timestep - (self.skip_steps - 1)) / self.skip_steps).float(), min=0, max=(len(self.sigmas) - 1))
        return super().t_to_sigma(t)

    def get_eps(self, *args, **kwargs):
        return self.inner_model.apply_model(*args, **kwargs)

    def forward(self, x, sigma, **kwargs):
        c_out, c_in = [k_diffusion.utils.append_dims(v, x.ndim) for v in self.get_scalings(sigma)]
        eps = self.get_eps(x * c_in, self.sigma_to_t(sigma), **kwargs)
        out = x + eps * c_out
        st = k_diffusion.utils.append_dims(self.sigma_to_t(sigma), out.ndim) * 10.0
        c_skip = 0.5**2 / (st**2 + 0.5**2)
        c_out2 = st / (st**2 + 0.5**2) ** 0.5
        return c_out2 * out + c_skip * x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """sd_samplers_lcm.sample_lcm: x = denoised, plus sigma_next * fresh noise while sigma_next > 0."""
    extra_args = extra_args or {}
    noise_sampler = k_diffusion.sampling.default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * s_in, **extra_args)
        if sigmas[i + 1] > 0:
            x += sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


# ------------------------------------------------------------------------------------------------
# Sampler table (sd_samplers_kdiffusion.samplers_k_diffusion, sd_samplers_timesteps.samplers_timesteps,
# sd_samplers_lcm.samplers_lcm, in A1111's order; the first entry is the fallback).

KS = k_diffusion.sampling
SAMPLERS = {
    "DPM++ 2M": ("k", KS.sample_dpmpp_2m, {"scheduler": "karras"}),
    "DPM++ SDE": ("k", KS.sample_dpmpp_sde, {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    "DPM++ 2M SDE": ("k", KS.sample_dpmpp_2m_sde, {"scheduler": "exponential", "brownian_noise": True}),
    "DPM++ 2M SDE Heun": (
        "k",
        KS.sample_dpmpp_2m_sde,
        {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"},
    ),
    "DPM++ 2S a": ("k", KS.sample_dpmpp_2s_ancestral, {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    "DPM++ 3M SDE": (
        "k",
        KS.sample_dpmpp_3m_sde,
        {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True},
    ),
    "Euler a": ("k", KS.sample_euler_ancestral, {"uses_ensd": True}),
    "Euler": ("k", KS.sample_euler, {}),
    "LMS": ("k", KS.sample_lms, {}),
    "Heun": ("k", KS.sample_heun, {"second_order": True}),
    "DPM2": ("k", KS.sample_dpm_2, {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    "DPM2 a": (
        "k",
        KS.sample_dpm_2_ancestral,
        {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True},
    ),
    "DPM fast": ("k", KS.sample_dpm_fast, {"uses_ensd": True}),
    "DPM adaptive": ("k", KS.sample_dpm_adaptive, {"uses_ensd": True}),
    "Restart": ("k", restart_sampler, {"scheduler": "karras", "second_order": True}),
    "DDIM": ("t", ddim, {}),
    "DDIM CFG++": ("t", ddim_cfgpp, {}),
    "PLMS": ("t", plms, {}),
    "UniPC": ("t", unipc, {}),
    "LCM": ("lcm", sample_lcm, {}),
}
# (The API looks sampler names up exactly; aliases such as k_euler_a are not honoured.)
# sd_samplers_kdiffusion.sampler_extra_params (1.10)
SAMPLER_EXTRA_PARAMS = {
    "sample_euler": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_heun": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_dpm_2": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_dpm_fast": ["s_noise"],
    "sample_dpm_2_ancestral": ["s_noise"],
    "sample_dpmpp_2s_ancestral": ["s_noise"],
    "sample_dpmpp_sde": ["s_noise"],
    "sample_dpmpp_2m_sde": ["s_noise"],
    "sample_dpmpp_3m_sde": ["s_noise"],
}

# sd_schedulers.schedulers: (name, label, default_rho, need_inner_model)
SCHEDULERS = [
    ("automatic", "Automatic", -1.0, False),
    ("uniform", "Uniform", -1.0, True),
    ("karras", "Karras", 7.0, False),
    ("exponential", "Exponential", -1.0, False),
    ("polyexponential", "Polyexponential", 1.0, False),
    ("sgm_uniform", "SGM Uniform", -1.0, True),
    ("kl_optimal", "KL Optimal", -1.0, False),
    ("align_your_steps", "Align Your Steps", -1.0, False),
    ("simple", "Simple", -1.0, True),
    ("normal", "Normal", -1.0, True),
    ("ddim", "DDIM", -1.0, True),
    ("beta", "Beta", -1.0, True),
]
# sd_schedulers.schedulers_map: names and labels only (the alias "SGMUniform" works only as a sampler-name suffix)
SCHED_BY_KEY = {**{s[0]: s for s in SCHEDULERS}, **{s[1]: s for s in SCHEDULERS}}


def scheduler_sigmas(name, n, sigma_min, sigma_max, inner, opts, rho=None):
    """The schedule functions of sd_schedulers (the k-diffusion ones are called directly)."""
    if name == "karras":
        return KS.get_sigmas_karras(n, sigma_min, sigma_max, **({"rho": rho} if rho else {}), device="cpu")
    if name == "exponential":
        return KS.get_sigmas_exponential(n, sigma_min, sigma_max, device="cpu")
    if name == "polyexponential":
        return KS.get_sigmas_polyexponential(n, sigma_min, sigma_max, **({"rho": rho} if rho else {}), device="cpu")
    if name == "uniform":
        return inner.get_sigmas(n)
    if name in ("sgm_uniform", "normal"):
        start = inner.sigma_to_t(torch.tensor(sigma_max))
        end = inner.sigma_to_t(torch.tensor(sigma_min))
        ts = torch.linspace(start, end, n + 1)[:-1] if name == "sgm_uniform" else torch.linspace(start, end, n)
        return torch.FloatTensor([inner.t_to_sigma(t) for t in ts] + [0.0])
    if name == "kl_optimal":
        a_min, a_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
        k = torch.arange(n + 1)
        return torch.tan(k / n * a_min + (1.0 - k / n) * a_max)
    if name == "align_your_steps":
        base = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
        if n != len(base):
            xs, ys = np.linspace(0, 1, len(base)), np.log(base[::-1])
            base = np.append(np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy(), [0.0])
        else:
            base = base + [0.0]
        return torch.FloatTensor(base)
    if name == "simple":
        ss = len(inner.sigmas) / n
        return torch.FloatTensor([float(inner.sigmas[-(1 + int(i * ss))]) for i in range(n)] + [0.0])
    if name == "ddim":
        ss, sig, i = max(len(inner.sigmas) // n, 1), [], 1
        while i < len(inner.sigmas):
            sig.append(float(inner.sigmas[i]))
            i += ss
        return torch.FloatTensor(sig[::-1] + [0.0])
    if name == "beta":
        from scipy import stats

        ts = [stats.beta.ppf(v, opts["beta_dist_alpha"], opts["beta_dist_beta"]) for v in 1 - np.linspace(0, 1, n)]
        return torch.FloatTensor([sigma_min + v * (sigma_max - sigma_min) for v in ts] + [0.0])
    raise ValueError(f"scheduler {name}")


def get_sampler_and_scheduler(sampler_name, scheduler_name, convert_automatic=True):
    """sd_samplers.get_sampler_and_scheduler: a scheduler label/name/alias at the end of the sampler
    name is split off; unknown samplers fall back to the first one (DPM++ 2M); with
    convert_automatic a scheduler equal to the sampler's default becomes Automatic."""
    found = SCHED_BY_KEY.get(scheduler_name, SCHEDULERS[0])
    name = sampler_name or "DPM++ 2M"
    for sched in SCHEDULERS:
        for opt in [sched[1], sched[0]] + (["SGMUniform"] if sched[0] == "sgm_uniform" else []):
            if name.endswith(" " + opt):
                found, name = sched, name[: -(len(opt) + 1)]
                break
    sampler = name if name in SAMPLERS else "DPM++ 2M"
    if convert_automatic and SAMPLERS[sampler][2].get("scheduler") == found[0]:
        found = SCHEDULERS[0]
    return sampler, found[1]


def resolve_sampler_and_scheduler(sampler_name, scheduler_name):
    """api.text2imgapi/img2imgapi (the request's scheduler is kept unless empty) followed by
    processing's fix_p_invalid_sampler_and_scheduler.  Returns (sampler name, scheduler label)."""
    sampler, sched = get_sampler_and_scheduler(sampler_name, scheduler_name)
    populate = scheduler_name if scheduler_name else (sched if sched != "Automatic" else None)
    return get_sampler_and_scheduler(sampler, populate, convert_automatic=False)


# ------------------------------------------------------------------------------------------------
# Processing (processing.process_images_inner and the txt2img/img2img sample paths)


@dataclass
class Request:
    mode: str  # "txt2img" | "img2img"
    raw: dict
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    sampler_name: str = "Euler"
    scheduler: str = "Automatic"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    eta: float | None = None
    s_min_uncond: float | None = None
    denoising_strength: float | None = None
    init_images: list = field(default_factory=list)
    initial_noise_multiplier: float | None = None
    mask: object = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    resize_mode: int = 0
    opts: dict = field(default_factory=dict)
    # override_settings sd_model_checkpoint / inpainting_mask_weight, kept out of `opts` (whose dump is in
    # every golden's metadata)
    checkpoint: str = "tiny-sd15"
    inpainting_mask_weight: float = 1.0
    # txt2img hires fix (StableDiffusionProcessingTxt2Img fields; sizes from calculate_target_resolution)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_upscale_to_x: int = 0
    hr_upscale_to_y: int = 0
    truncate_x: int = 0
    truncate_y: int = 0
    # sample_img2img(..., steps=...) as the hires pass calls it: setup_img2img_steps then takes the
    # img2img_fix_steps branch (steps / strength in total, steps - 1 to run)
    steps_given: bool = False


SUPPORTED_FIELDS = {
    "prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "sampler_name", "sampler_index", "scheduler",
    "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "eta", "s_min_uncond", "denoising_strength",
    "init_images", "override_settings", "resize_mode", "initial_noise_multiplier", "mask", "mask_blur", "mask_blur_x",
    "mask_blur_y", "mask_round", "inpainting_fill", "inpaint_full_res", "inpainting_mask_invert",
    "inpaint_full_res_padding", "enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_sampler_name",
    "hr_scheduler", "hr_prompt", "hr_negative_prompt",
}  # fmt: skip
# shared.latent_upscale_modes (interpolate mode, antialias); the API's hr_upscaler default (None) means the
# latent_upscale_default_mode option, "Latent"
LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_UPSCALERS = {"None": None, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}


def parse_request(mode, raw):
    unknown = set(raw) - SUPPORTED_FIELDS
    if unknown:
        raise ValueError(f"request fields not handled by this reference: {sorted(unknown)}")
    if raw.get("resize_mode", 0) not in (0, 1, 2, 3):
        raise ValueError("resize_mode must be 0-3")
    if raw.get("resize_mode", 0) != 0 and raw.get("mask"):
        raise ValueError("inpainting cases use resize_mode 0")
    opts = dict(DEFAULT_OPTS)
    extra_opts = {}
    for k, v in (raw.get("override_settings") or {}).items():
        if k in ("sd_model_checkpoint", "inpainting_mask_weight"):
            extra_opts[k] = v
            continue
        if k not in opts:
            raise ValueError(f"override_settings key not handled: {k}")
        opts[k] = v
    if opts["randn_source"] not in ("CPU", "NV"):
        raise ValueError("randn_source must be CPU or NV (GPU means the CUDA generator)")
    sampler, sched = resolve_sampler_and_scheduler(raw.get("sampler_name") or raw.get("sampler_index", "Euler"), raw.get("scheduler"))
    if SAMPLERS[sampler][1] is None:
        raise ValueError(f"sampler {sampler} is not reproduced by this reference")
    seed, subseed = raw.get("seed", -1), raw.get("subseed", -1)
    if seed is None or seed == -1 or ((raw.get("subseed_strength") or 0) != 0 and (subseed is None or subseed == -1)):
        raise ValueError("golden cases need explicit seeds (-1 means random)")
    r = Request(mode=mode, raw=raw, opts=opts, sampler_name=sampler, scheduler=sched)
    if extra_opts.get("sd_model_checkpoint", "tiny-sd15") not in ("tiny-sd15", INPAINT_CHECKPOINT):
        raise ValueError(f"unknown checkpoint {extra_opts['sd_model_checkpoint']}")
    r.checkpoint = extra_opts.get("sd_model_checkpoint", "tiny-sd15")
    r.inpainting_mask_weight = float(extra_opts.get("inpainting_mask_weight", 1.0))
    for k in ("prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "batch_size", "n_iter", "steps",
              "cfg_scale", "width", "height", "eta", "s_min_uncond", "denoising_strength"):  # fmt: skip
        if raw.get(k) is not None:
            setattr(r, k, raw[k])
    if mode == "txt2img" and raw.get("enable_hr"):
        setup_hires(r, raw)
    if mode == "img2img":
        r.resize_mode = raw.get("resize_mode", 0)
        if r.denoising_strength is None:
            r.denoising_strength = 0.75
        r.init_images = [decode_image(s) for s in raw["init_images"]]
        r.initial_noise_multiplier = raw.get("initial_noise_multiplier")
        if r.initial_noise_multiplier is None:
            r.initial_noise_multiplier = opts["initial_noise_multiplier"]
        for k in ("mask_blur_x", "mask_blur_y", "mask_round", "inpainting_fill", "inpaint_full_res", "inpainting_mask_invert",
                  "inpaint_full_res_padding"):  # fmt: skip
            if raw.get(k) is not None:
                setattr(r, k, raw[k])
        if isinstance(raw.get("mask_blur"), int):  # the mask_blur property sets both directions
            r.mask_blur_x = r.mask_blur_y = raw["mask_blur"]
        if raw.get("mask"):
            r.mask = decode_image(raw["mask"], flatten=False)
    return r


def setup_hires(r, raw):
    """StableDiffusionProcessingTxt2Img.init / calculate_target_resolution (opt_f is the tiny VAE's 2)."""
    r.enable_hr = True
    for k in ("hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_sampler_name",
              "hr_scheduler", "hr_prompt", "hr_negative_prompt"):  # fmt: skip
        if raw.get(k) is not None:
            setattr(r, k, raw[k])
    if r.denoising_strength is None:
        # the API's txt2img default is null (base-class default), which 1.10 cannot compare with 0
        raise ValueError("hires cases send denoising_strength")
    if r.hr_scheduler is None:
        r.hr_scheduler = r.scheduler
    upscaler = r.hr_upscaler if r.hr_upscaler is not None else "Latent"
    if upscaler not in LATENT_UPSCALE_MODES and upscaler not in PIXEL_UPSCALERS:
        raise ValueError(f"hr_upscaler {upscaler} is not reproduced")
    hr_sampler = r.hr_sampler_name or r.sampler_name
    if hr_sampler not in SAMPLERS or SAMPLERS[hr_sampler][1] is None:
        raise ValueError(f"hires sampler {hr_sampler} is not reproduced")
    if r.hr_resize_x == 0 and r.hr_resize_y == 0:
        r.hr_upscale_to_x, r.hr_upscale_to_y = int(r.width * r.hr_scale), int(r.height * r.hr_scale)
    elif r.hr_resize_y == 0:
        r.hr_upscale_to_x, r.hr_upscale_to_y = r.hr_resize_x, r.hr_resize_x * r.height // r.width
    elif r.hr_resize_x == 0:
        r.hr_upscale_to_x, r.hr_upscale_to_y = r.hr_resize_y * r.width // r.height, r.hr_resize_y
    else:
        if r.width / r.height < r.hr_resize_x / r.hr_resize_y:
            r.hr_upscale_to_x, r.hr_upscale_to_y = r.hr_resize_x, r.hr_resize_x * r.height // r.width
        else:
            r.hr_upscale_to_x, r.hr_upscale_to_y = r.hr_resize_y * r.width // r.height, r.hr_resize_y
        r.truncate_x = (r.hr_upscale_to_x - r.hr_resize_x) // LATENT_FACTOR
        r.truncate_y = (r.hr_upscale_to_y - r.hr_resize_y) // LATENT_FACTOR


def pixel_upscale(im, scale, upscaler):
    """modules.upscaler.Upscaler.upscale for the Pillow upscalers (UpscalerLanczos / UpscalerNearest:
    do_upscale resizes by `scale` with their filter): up to three passes until the target, which is
    the scaled size rounded down to a multiple of 8, then a LANCZOS fix-up to exactly that size."""
    dest_w, dest_h = int((im.width * scale) // 8 * 8), int((im.height * scale) // 8 * 8)
    for i in range(3):
        if im.width >= dest_w and im.height >= dest_h and (i > 0 or scale != 1):
            break
        shape = (im.width, im.height)
        im = im.resize((int(im.width * scale), int(im.height * scale)), resample=upscaler)
        if shape == (im.width, im.height):
            break
    if im.width != dest_w or im.height != dest_h:
        im = im.resize((int(dest_w), int(dest_h)), resample=Image.LANCZOS)
    return im


def resize_image(resize_mode, im, width, height, upscaler_name=None):
    """images.resize_image: 0 just resize, 1 crop and resize (cover, centre), 2+ resize and fill
    (fit, centre, the empty bands filled with the edge row/column stretched by Pillow's default
    bicubic resize).  `resize` uses the named Pillow upscaler when enlarging, LANCZOS otherwise (the
    upscaler_for_img2img option is unset by default, and L images always take LANCZOS)."""

    def resize(im, w, h):
        if upscaler_name is None or upscaler_name == "None" or im.mode == "L":
            return im.resize((w, h), resample=Image.LANCZOS)
        scale = max(w / im.width, h / im.height)
        if scale > 1.0:
            im = pixel_upscale(im, scale, PIXEL_UPSCALERS[upscaler_name])
        if im.width != w or im.height != h:
            im = im.resize((w, h), resample=Image.LANCZOS)
        return im

    if resize_mode == 0:
        return resize(im, width, height)
    ratio, src_ratio = width / height, im.width / im.height
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
        resized = resize(im, src_w, src_h)
        res = Image.new("RGB", (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return res
    src_w = width if ratio < src_ratio else im.width * height // im.height
    src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = resize(im, src_w, src_h)
    res = Image.new("RGB", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill_height = height // 2 - src_h // 2
        if fill_height > 0:
            res.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
            res.paste(resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)),
                      box=(0, fill_height + src_h))  # fmt: skip
    elif ratio > src_ratio:
        fill_width = width // 2 - src_w // 2
        if fill_width > 0:
            res.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
            res.paste(resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)),
                      box=(fill_width + src_w, 0))  # fmt: skip
    return res


def get_crop_region_v2(mask, pad=0):
    """masking.get_crop_region_v2: the mask's bounding box grown by `pad` (clipped), None if blank."""
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    return (max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.size[0]), min(y2 + pad, mask.size[1])) if pad else box


def expand_crop_region(crop_region, processing_width, processing_height, image_width, image_height):
    """masking.expand_crop_region: grow the short side of the region to the processing aspect ratio,
    centred, shifted back inside the image."""
    x1, y1, x2, y2 = crop_region
    if (x2 - x1) / (y2 - y1) > processing_width / processing_height:
        diff = int((x2 - x1) / (processing_width / processing_height) - (y2 - y1))
        y1, y2 = y1 - diff // 2, y2 + diff - diff // 2
        if y2 >= image_height:
            y1, y2 = y1 - (y2 - image_height), image_height
        if y1 < 0:
            y1, y2 = 0, y2 - y1
        y2 = min(y2, image_height)
    else:
        diff = int((y2 - y1) * (processing_width / processing_height) - (x2 - x1))
        x1, x2 = x1 - diff // 2, x2 + diff - diff // 2
        if x2 >= image_width:
            x1, x2 = x1 - (x2 - image_width), image_width
        if x1 < 0:
            x1, x2 = 0, x2 - x1
        x2 = min(x2, image_width)
    return x1, y1, x2, y2


def masking_fill(image, mask):
    """masking.fill: the picture with the masked area cut out (premultiplied RGBa, alpha = the
    inverted mask), Pillow-Gaussian-blurred at radii 256, 64, 16, 4, 2, 0 and alpha-composited onto
    a transparent canvas 1, 1, 2, 4, 2, 1 times; the result converted to RGB."""
    canvas = Image.new("RGBA", (image.width, image.height))
    cut = Image.new("RGBa", (image.width, image.height))
    cut.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    cut = cut.convert("RGBa")
    for radius, repeats in [(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)]:
        blurred = cut.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            canvas.alpha_composite(blurred)
    return canvas.convert("RGB")


def decode_image(s, flatten=True):
    """api.decode_base64_to_image (data URLs allowed); init images are then flattened onto
    img2img_background_color (images.flatten: paste with the image as its own mask, then RGB)."""
    if s.startswith("data:image/"):
        s = s.split(";")[1].split(",")[1]
    img = Image.open(io.BytesIO(base64.b64decode(s)))
    img.load()
    if not flatten:
        return img
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, "#ffffff")
        bg.paste(img, mask=img)
        img = bg
    return img.convert("RGB")


def create_binary_mask(image, round_=True):
    """processing.create_binary_mask: a transparent RGBA mask uses its alpha (thresholded at 128
    when rounding), anything else is converted to L."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        a = image.split()[-1].convert("L")
        return a.point(lambda v: 255 if v > 128 else 0) if round_ else a
    return image.convert("L")


def cached(cache, kind, prompts, compute):
    """StableDiffusionProcessing.get_conds_with_caching within one request: the conds of the last
    batch are reused when its prompt list (the rest of the key is fixed per request) is the same."""
    key = list(prompts)
    if kind in cache and cache[kind][0] == key:
        return cache[kind][1]
    cache[kind] = (key, compute())
    return cache[kind][1]


class Pipeline:
    def __init__(self):
        self.model = TinySD()
        self.base_model = self.model
        self.inpaint_model = None  # built on first use
        self.tokenizer = ClipTokenizer()
        self.embeddings = EmbeddingDB(self.tokenizer, self.model.text_embeddings.token_embedding.wrapped.weight.shape[1])
        self.embeddings.load_dir(EMB_DIR)

    # KDiffusionSampler.get_sigmas
    def get_sigmas(self, p, cfg, model_wrap, steps):
        o = p.opts
        discard = cfg.get("discard_next_to_last_sigma", False) or o["always_discard_next_to_last_sigma"]
        steps += 1 if discard else 0
        name = p.scheduler or "Automatic"
        if name == "Automatic":
            name = cfg.get("scheduler")
        sched = SCHED_BY_KEY.get(name) if name else None
        m_min, m_max = model_wrap.sigmas[0].item(), model_wrap.sigmas[-1].item()
        smin, smax = (0.1, 10) if o["use_old_karras_scheduler_sigmas"] else (m_min, m_max)
        if sched is None or sched[0] == "automatic":
            sigmas = model_wrap.get_sigmas(steps)
        else:
            if o["sigma_min"] != 0 and o["sigma_min"] != m_min:
                smin = o["sigma_min"]
            if o["sigma_max"] != 0 and o["sigma_max"] != m_max:
                smax = o["sigma_max"]
            rho = o["rho"] if (sched[2] != -1 and o["rho"] != 0 and o["rho"] != sched[2]) else None
            sigmas = scheduler_sigmas(sched[0], steps, smin, smax, model_wrap, o, rho)
        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas.cpu()

    def prepare_img2img(self, p, batch_size, all_seeds):
        """StableDiffusionProcessingImg2Img.init: resize modes, and with a mask: binary mask, invert,
        blur, "whole picture" or "only masked" crop, overlay images, masking.fill, latent mask,
        masked content.
        The VAE encode is sd_samplers_common.images_tensor_to_samples; A1111 takes
        posterior.sample() with the torch *global* generator, whose state depends on what ran before
        in the process; this reference uses the posterior mean (see A1111_REFERENCE.md)."""
        st = {"mask": None, "nmask": None, "overlay_images": None}
        image_mask, crop_region = None, None
        if p.mask is not None:
            image_mask = create_binary_mask(p.mask, p.mask_round)
            if p.inpainting_mask_invert:
                image_mask = ImageOps.invert(image_mask)
            # mask blur: cv2.GaussianBlur along x, then along y, kernel 2 * int(2.5 sigma + 0.5) + 1
            if p.mask_blur_x > 0:
                k = 2 * int(2.5 * p.mask_blur_x + 0.5) + 1
                image_mask = Image.fromarray(cv2.GaussianBlur(np.array(image_mask), (k, 1), p.mask_blur_x))
            if p.mask_blur_y > 0:
                k = 2 * int(2.5 * p.mask_blur_y + 0.5) + 1
                image_mask = Image.fromarray(cv2.GaussianBlur(np.array(image_mask), (1, k), p.mask_blur_y))
            if p.inpaint_full_res:  # "only masked": the mask's bounding box, widened to the aspect ratio
                mask_for_overlay = image_mask
                mask = image_mask.convert("L")
                crop_region = get_crop_region_v2(mask, p.inpaint_full_res_padding)
                if crop_region:
                    crop_region = expand_crop_region(crop_region, p.width, p.height, mask.width, mask.height)
                    x1, y1, x2, y2 = crop_region
                    image_mask = resize_image(2, mask.crop(crop_region), p.width, p.height)
                    st["paste_to"] = (x1, y1, x2 - x1, y2 - y1)
                else:  # a blank mask: plain img2img
                    image_mask = mask_for_overlay = None
            else:
                image_mask = resize_image(p.resize_mode, image_mask, p.width, p.height)
                np_mask = np.clip(np.array(image_mask).astype(np.float32) * 2, 0, 255).astype(np.uint8)
                mask_for_overlay = Image.fromarray(np_mask)
            st["overlay_images"] = []
        imgs = []
        for img in p.init_images:
            if crop_region is None and p.resize_mode != 3:  # resize_mode 3 resizes the latent instead (below)
                img = resize_image(p.resize_mode, img, p.width, p.height)
            if image_mask is not None:
                if mask_for_overlay.size != img.size:
                    mask_for_overlay = mask_for_overlay.resize(img.size, resample=Image.LANCZOS)
                masked = Image.new("RGBa", img.size)
                masked.paste(img.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
                st["overlay_images"].append(masked.convert("RGBA"))
            if crop_region is not None:
                img = resize_image(2, img.crop(crop_region), p.width, p.height)
            if image_mask is not None:
                if p.inpainting_fill != 1:  # every masked content but "original" (latent_mask = image_mask)
                    img = masking_fill(img, image_mask)
                    st.setdefault("filled", []).append(np.array(img))
            imgs.append(np.moveaxis(np.array(img).astype(np.float32) / 255.0, 2, 0))
        if len(imgs) == 1:
            batch = np.expand_dims(imgs[0], axis=0).repeat(batch_size, axis=0)
            if st["overlay_images"] is not None:
                st["overlay_images"] = st["overlay_images"] * batch_size
        elif len(imgs) <= batch_size:
            batch_size = len(imgs)
            batch = np.array(imgs)
        else:
            raise ValueError("bad number of images passed")
        image = torch.from_numpy(batch)
        image = image * 2 - 1
        lat = [self.model.encode_first_stage(image[i : i + 1]).mean[0] for i in range(image.shape[0])]
        lat = torch.stack(lat) if len(lat) > 1 else lat[0][None]
        init_latent = SCALE_FACTOR * lat
        if p.resize_mode == 3:
            size = (p.height // LATENT_FACTOR, p.width // LATENT_FACTOR)
            init_latent = torch.nn.functional.interpolate(init_latent, size=size, mode="bilinear")
        if image_mask is not None:
            latmask = image_mask.convert("RGB").resize((init_latent.shape[3], init_latent.shape[2]))  # PIL default: bicubic
            latmask = np.moveaxis(np.array(latmask, dtype=np.float32), 2, 0) / 255
            latmask = latmask[0]
            if p.mask_round:
                latmask = np.around(latmask)
            latmask = np.tile(latmask[None], (init_latent.shape[1], 1, 1))
            st["mask"] = torch.asarray(1.0 - latmask).to(torch.float32)
            st["nmask"] = torch.asarray(latmask).to(torch.float32)
            if p.inpainting_fill == 2:  # latent noise: create_random_tensors with the first seeds
                noise = rngref.ImageNoise(p.opts["randn_source"], init_latent.shape[1:], all_seeds[0 : init_latent.shape[0]], []).next()
                init_latent = init_latent * st["mask"] + noise * st["nmask"]
            elif p.inpainting_fill == 3:  # latent nothing
                init_latent = init_latent * st["mask"]
        st["image_cond"] = self.img2img_image_conditioning(image, init_latent, image_mask, p.mask_round,
                                                           p.inpainting_mask_weight)  # fmt: skip
        return init_latent, batch_size, st

    def generate(self, p: Request):
        """The request on the checkpoint it names (override_settings sd_model_checkpoint)."""
        if p.checkpoint == INPAINT_CHECKPOINT:
            if self.inpaint_model is None:
                self.inpaint_model = TinySD(inpainting=True)
            self.model = self.inpaint_model
        try:
            return self._generate(p)
        finally:
            self.model = self.base_model

    def images_tensor_to_samples(self, image):
        """sd_samplers_common.images_tensor_to_samples: [0, 1] pixels to scaled latents, one image at a
        time for a batch (posterior mean, as for the init images)."""
        image = image * 2 - 1
        lat = [self.model.encode_first_stage(image[i : i + 1]).mean[0] for i in range(image.shape[0])]
        return SCALE_FACTOR * torch.stack(lat)

    def txt2img_image_conditioning(self, x, width, height):
        """processing.txt2img_image_conditioning: for an inpainting ("hybrid") model, a 0.5-grey picture
        (0 after the [-1, 1] mapping) encoded, with a mask channel of ones in front; otherwise a dummy
        [B, 5, 1, 1] of zeros."""
        if not self.model.is_inpainting:
            return x.new_zeros(x.shape[0], 5, 1, 1)
        grey = torch.ones(x.shape[0], 3, height, width) * 0.5
        cond = self.images_tensor_to_samples(grey)
        return torch.nn.functional.pad(cond, (0, 0, 0, 0, 1, 0), value=1.0).to(x.dtype)

    def img2img_image_conditioning(self, source_image, latent_image, image_mask, round_image_mask, weight):
        """StableDiffusionProcessingImg2Img.img2img_image_conditioning -> inpainting_image_conditioning
        for a "hybrid" model: the mask (L image / 255, rounded with mask_round; ones without a mask),
        the source picture ([-1, 1]) lerped towards its masked version by inpainting_mask_weight and
        encoded as one batch (encode_first_stage + get_first_stage_encoding), the mask resized to the
        latent by nearest interpolation, concatenated [mask, latent]. Dummy zeros for other models."""
        if not self.model.is_inpainting:
            return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)
        if image_mask is not None:
            m = np.array(image_mask.convert("L")).astype(np.float32) / 255.0
            m = torch.from_numpy(m[None, None])
            if round_image_mask:
                m = torch.round(m)
        else:
            m = source_image.new_ones(1, 1, *source_image.shape[-2:])
        m = m.to(dtype=source_image.dtype)
        image = torch.lerp(source_image, source_image * (1.0 - m), weight)
        image = SCALE_FACTOR * self.model.encode_first_stage(image).mean
        m = torch.nn.functional.interpolate(m, size=latent_image.shape[-2:])
        m = m.expand(image.shape[0], -1, -1, -1)
        return torch.cat([m, image], dim=1).to(torch.float32)

    def _generate(self, p: Request):
        o = p.opts
        cfg_kind, func, cfg = SAMPLERS[p.sampler_name]
        n_total = p.batch_size * p.n_iter
        all_prompts = [p.prompt] * n_total
        all_negative = [p.negative_prompt] * n_total
        all_seeds = [int(p.seed) + (i if p.subseed_strength == 0 else 0) for i in range(n_total)]
        all_subseeds = [int(p.subseed) + i for i in range(n_total)]
        enc = ClipConditioner(self.model, self.tokenizer, self.embeddings, o)
        batch_size = p.batch_size
        init_latent, st = None, {"mask": None, "nmask": None, "overlay_images": None}
        if p.mode == "img2img":
            init_latent, batch_size, st = self.prepare_img2img(p, p.batch_size, all_seeds)
        shape = (LATENT_CHANNELS, p.height // LATENT_FACTOR, p.width // LATENT_FACTOR)
        total_steps = p.steps * 2 if cfg.get("second_order") else p.steps  # SamplerData.total_steps
        out = {"images": [], "images_before_overlay": [], "noise": [], "latent_final": [], "sigmas": None, "trace": None, "calls": []}
        empty_cond = enc([""])  # sd_models: cond_stage_model_empty_prompt (only for pad_cond_uncond)
        out["encoder_params"], conds_cache = [], {}

        for n in range(p.n_iter):
            sl = slice(n * batch_size, (n + 1) * batch_size)
            prompts, negatives = all_prompts[sl], all_negative[sl]
            seeds, subseeds = all_seeds[sl], all_subseeds[sl]
            rng = rngref.ImageNoise(
                o["randn_source"], shape, seeds, subseeds, strength=p.subseed_strength, ensd=o["eta_noise_seed_delta"] or 0
            )
            prompts, _tags = strip_extra_networks(prompts)  # networks themselves are not applied here
            # get_conds_with_caching: a batch whose prompts equal the previous batch's reuses its conds
            uc = cached(conds_cache, "uc", negatives, lambda: get_learned_conditioning(enc, negatives, total_steps, o["use_old_scheduling"]))
            c = cached(conds_cache, "c", prompts, lambda: get_multicond_learned_conditioning(enc, prompts, total_steps, o["use_old_scheduling"]))
            out["encoder_params"] += [list(enc.hijack_params.items())] * len(seeds)  # the batch's infotexts

            x = rng.next()  # first draw: initial noise (txt2img) or img2img noise
            out["noise"].append(x.clone())
            if p.mode == "img2img" and p.initial_noise_multiplier != 1.0:
                x *= p.initial_noise_multiplier
            with SamplingContext(rng, o["randn_source"]):
                samples, den, sig = self.sample(p, cfg_kind, func, cfg, x, c, uc, seeds, init_latent, empty_cond, st)
            if n == 0:
                out["image_cond"] = self.last_image_cond
            if st["mask"] is not None:  # StableDiffusionProcessingImg2Img.sample: final blend
                samples = samples * st["nmask"] + init_latent * st["mask"]
            if p.enable_hr:
                out.setdefault("first_pass_latent", []).append(samples.clone())
                samples = self.hires_pass(p, enc, samples, n, batch_size, seeds, subseeds, total_steps, empty_cond, out,
                                          conds_cache)  # fmt: skip
            out["latent_final"].append(samples.clone())
            if n == 0:
                out["trace"], out["sigmas"] = den.trace, sig
            out["calls"].append(den.calls)
            # decode_latent_batch: one image at a time, then clamp((x + 1) / 2) and 255 * x truncated
            decoded = torch.stack([self.model.decode_first_stage(samples[i : i + 1])[0] for i in range(samples.shape[0])]).float()
            decoded = torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0)
            for i, img in enumerate(decoded):
                arr = (255.0 * np.moveaxis(img.numpy(), 0, 2)).astype(np.uint8)
                ov = st["overlay_images"]
                if ov is not None and i < len(ov):  # apply_overlay (option overlay_inpaint, default on)
                    out["images_before_overlay"].append(arr)
                    im = Image.fromarray(arr).convert("RGBA")
                    if st.get("paste_to"):  # uncrop: scaled back into its region on a transparent canvas
                        x, y, w, h = st["paste_to"]
                        im = Image.new("RGBA", (ov[i].width, ov[i].height))
                        im.paste(resize_image(1, Image.fromarray(arr), w, h), (x, y))
                    im.alpha_composite(ov[i])
                    arr = np.array(im.convert("RGB"))
                out["images"].append(arr)
        out["init_latent"] = init_latent
        out["latent_mask"] = st["mask"]
        out["filled"] = st.get("filled")
        out["all_seeds"], out["all_subseeds"], out["total_steps"] = all_seeds, all_subseeds, total_steps
        return out

    def hires_pass(self, p, enc, samples, n, batch_size, seeds, subseeds, firstpass_steps, empty_cond, out, conds_cache):
        """StableDiffusionProcessingTxt2Img.sample (the hires part) and sample_hr_pass: upscale the
        first pass in latent space (interpolate) or in pixels (decode, quantise, resize_image with
        the upscaler, encode), crop by truncate_x/y, draw the noise from a new ImageRNG over the
        same seeds, build the hires conditioning (calculate_hr_conds: the hires prompts scheduled
        over the hires steps) and run sample_img2img with steps = hr_second_pass_steps or steps."""
        o = p.opts
        tw, th = p.hr_upscale_to_x, p.hr_upscale_to_y
        upscaler = p.hr_upscaler if p.hr_upscaler is not None else "Latent"
        if upscaler in LATENT_UPSCALE_MODES:
            mode, antialias = LATENT_UPSCALE_MODES[upscaler]
            size = (th // LATENT_FACTOR, tw // LATENT_FACTOR)
            samples = torch.nn.functional.interpolate(samples, size=size, mode=mode, antialias=antialias)
        else:
            decoded = torch.stack([self.model.decode_first_stage(samples[i : i + 1])[0] for i in range(samples.shape[0])])
            lowres = torch.clamp((decoded.float() + 1.0) / 2.0, min=0.0, max=1.0)
            batch = []
            for x in lowres:
                arr = (255.0 * np.moveaxis(x.numpy(), 0, 2)).astype(np.uint8)
                im = resize_image(0, Image.fromarray(arr), tw, th, upscaler_name=upscaler)
                batch.append(np.moveaxis(np.array(im).astype(np.float32) / 255.0, 2, 0))
            image = torch.from_numpy(np.array(batch)) * 2 - 1
            lat = [self.model.encode_first_stage(image[i : i + 1]).mean[0] for i in range(image.shape[0])]
            samples = SCALE_FACTOR * torch.stack(lat)
        ty, tx = p.truncate_y, p.truncate_x
        samples = samples[:, :, ty // 2 : samples.shape[2] - (ty + 1) // 2, tx // 2 : samples.shape[3] - (tx + 1) // 2]
        hr_sampler = p.hr_sampler_name or p.sampler_name
        hp = Request(**{**p.__dict__, "mode": "img2img", "sampler_name": hr_sampler, "scheduler": p.hr_scheduler,
                        "steps": p.hr_second_pass_steps or p.steps, "steps_given": True, "enable_hr": False,
                        "width": samples.shape[3] * LATENT_FACTOR, "height": samples.shape[2] * LATENT_FACTOR,
                        "initial_noise_multiplier": 1.0})  # fmt: skip
        kind, func, cfg = SAMPLERS[hr_sampler]
        hr_total = hp.steps * 2 if cfg.get("second_order") else hp.steps
        sl = slice(n * batch_size, (n + 1) * batch_size)
        hr_prompts = [p.hr_prompt or p.prompt] * (p.batch_size * p.n_iter)
        hr_negatives = [p.hr_negative_prompt or p.negative_prompt] * (p.batch_size * p.n_iter)
        prompts, _tags = strip_extra_networks(hr_prompts[sl])
        uc = cached(conds_cache, "hr_uc", hr_negatives[sl],
                    lambda: get_learned_conditioning(enc, hr_negatives[sl], firstpass_steps, o["use_old_scheduling"], hr_total))
        c = cached(conds_cache, "hr_c", prompts,
                   lambda: get_multicond_learned_conditioning(enc, prompts, firstpass_steps, o["use_old_scheduling"], hr_total))  # fmt: skip
        rng = rngref.ImageNoise(o["randn_source"], tuple(samples.shape[1:]), seeds, subseeds,
                                strength=p.subseed_strength, ensd=o["eta_noise_seed_delta"] or 0)  # fmt: skip
        noise = rng.next()
        st = {"mask": None, "nmask": None, "overlay_images": None}
        out.setdefault("hires_init_latent", []).append(samples.clone())
        out.setdefault("hires_noise", []).append(noise.clone())
        with SamplingContext(rng, o["randn_source"]):
            result, den, sig = self.sample(hp, kind, func, cfg, noise, c, uc, seeds, samples, empty_cond, st)
        if n == 0:
            out["hires_sigmas"] = sig
            out["hires_cond_step0"] = den.trace["cond_step0"]
            out["hires_uncond_step0"] = den.trace["uncond_step0"]
        return result

    def sample(self, p, kind, func, cfg, x, c, uc, seeds, init_latent, empty_cond, st):
        o = p.opts
        img2img = p.mode == "img2img"
        # img2img: the conditioning built with the init images; txt2img and the hires pass (whose
        # img2img_image_conditioning has no mask: ones, and with inpainting_mask_weight 1 an all-zero
        # picture, the same as txt2img's grey one) build it here
        image_cond = st.get("image_cond")
        if image_cond is None:
            image_cond = self.txt2img_image_conditioning(x, p.width, p.height)
        self.last_image_cond = image_cond
        if kind == "t":
            return self.sample_timesteps(p, func, x, c, uc, init_latent, empty_cond, image_cond, st)
        if kind == "lcm":
            model_wrap = LCMDenoiser(self.model)
        else:
            model_wrap = k_diffusion.external.CompVisDenoiser(self.model, quantize=o["enable_quantization"])
        den = CFGDenoiser(model_wrap, o, empty_cond)
        den.mask, den.nmask = st["mask"], st["nmask"]
        params = inspect.signature(func).parameters

        if img2img:
            # sd_samplers_common.setup_img2img_steps
            if o["img2img_fix_steps"] or p.steps_given:
                steps = int(p.steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
                t_enc = p.steps - 1
            else:
                steps = p.steps
                t_enc = int(min(p.denoising_strength, 0.999) * steps)
            sigmas = self.get_sigmas(p, cfg, model_wrap, steps)
            sched = sigmas[steps - t_enc - 1 :]
            xi = init_latent + x * sched[0]
            if o["img2img_extra_noise"] > 0:
                xi += x * o["img2img_extra_noise"]
            run_x, run_sigmas, launch_steps = xi, sched, t_enc + 1
        else:
            steps = p.steps
            sigmas = self.get_sigmas(p, cfg, model_wrap, steps)
            if o["sgm_noise_multiplier"]:
                x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
            else:
                x = x * sigmas[0]
            run_x, run_sigmas, launch_steps = x, sigmas, steps

        # Sampler.initialize
        eta = p.eta if p.eta is not None else o["eta_ancestral"]
        kw = {}
        fname = getattr(func, "__name__", "")
        if func is restart_sampler:
            fname = "restart_sampler"
        sp = {"s_churn": o["s_churn"], "s_tmin": o["s_tmin"], "s_tmax": o["s_tmax"] or float("inf"), "s_noise": o["s_noise"]}
        for name in SAMPLER_EXTRA_PARAMS.get(fname, []):
            if name in params:
                kw[name] = sp[name]
        if "eta" in params:
            kw["eta"] = eta
        if img2img:
            if "sigma_min" in params:
                kw["sigma_min"] = run_sigmas[-2]
            if "sigma_max" in params:
                kw["sigma_max"] = run_sigmas[0]
            if "n" in params:
                kw["n"] = len(run_sigmas) - 1
            if "sigmas" in params:
                kw["sigmas"] = run_sigmas
        else:
            if "n" in params:
                kw["n"] = steps
            if "sigma_min" in params:
                kw["sigma_min"] = model_wrap.sigmas[0].item()
                kw["sigma_max"] = model_wrap.sigmas[-1].item()
            if "sigmas" in params:
                kw["sigmas"] = sigmas
        if cfg.get("brownian_noise") and not o["no_dpmpp_sde_batch_determinism"]:
            # Sampler.create_noise_sampler: full schedule, this batch's seeds; the x passed is only used
            # for its shape (init latent for img2img, scaled noise for txt2img)
            bx = init_latent if img2img else run_x
            kw["noise_sampler"] = KS.BrownianTreeNoiseSampler(bx, sigmas[sigmas > 0].min(), sigmas.max(), seed=list(seeds))
        if cfg.get("solver_type") == "heun":
            kw["solver_type"] = "heun"
        den.init_latent = init_latent
        den.total_steps = launch_steps * 2 if cfg.get("second_order") else launch_steps
        extra_args = {"cond": c, "image_cond": image_cond, "uncond": uc, "cond_scale": p.cfg_scale,
                      "s_min_uncond": p.s_min_uncond if p.s_min_uncond is not None else o["s_min_uncond"]}  # fmt: skip
        samples = func(den, run_x, extra_args=extra_args, disable=True, callback=None, **kw)
        return samples, den, run_sigmas

    def sample_timesteps(self, p, func, x, c, uc, init_latent, empty_cond, image_cond, st):
        """sd_samplers_timesteps.CompVisSampler.sample / sample_img2img."""
        o = p.opts
        den = CFGDenoiser(TimestepsDenoiser(self.model), o, empty_cond, mask_before_denoising=True)
        den.mask, den.nmask = st["mask"], st["nmask"]
        steps = p.steps
        if p.mode == "img2img":
            if o["img2img_fix_steps"] or p.steps_given:
                steps = int(p.steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
                t_enc = p.steps - 1
            else:
                t_enc = int(min(p.denoising_strength, 0.999) * steps)
        disc = o["always_discard_next_to_last_sigma"]
        n = steps + (1 if disc else 0)
        timesteps = torch.clip(torch.asarray(list(range(0, 1000, 1000 // n))) + 1, 0, 999)
        eta = p.eta if p.eta is not None else o["eta_ddim"]
        params = inspect.signature(func).parameters
        kw = {"eta": eta} if "eta" in params else {}
        if "opts" in params:
            kw["opts"] = o
        if "is_img2img" in params and p.mode == "img2img":
            kw["is_img2img"] = True
        if p.mode == "img2img":
            ac = self.model.alphas_cumprod
            xi = init_latent * torch.sqrt(ac[timesteps[t_enc]]) + x * torch.sqrt(1 - ac[timesteps[t_enc]])
            if o["img2img_extra_noise"] > 0:
                xi += x * o["img2img_extra_noise"] * torch.sqrt(ac[timesteps[t_enc]])
            kw["timesteps"] = timesteps[:t_enc]
            run_x, launch = xi, t_enc + 1
        else:
            kw["timesteps"] = timesteps
            run_x, launch = x, steps
        den.init_latent = init_latent
        den.total_steps = launch
        extra_args = {"cond": c, "image_cond": image_cond, "uncond": uc, "cond_scale": p.cfg_scale,
                      "s_min_uncond": p.s_min_uncond if p.s_min_uncond is not None else o["s_min_uncond"]}  # fmt: skip
        samples = func(den, run_x, extra_args=extra_args, disable=True, callback=None, **kw)
        return samples, den, kw["timesteps"].to(torch.float32)


# ------------------------------------------------------------------------------------------------
# Fixture inputs: embeddings and the init image


def make_embeddings(model: TinySD, emb_dir: Path = EMB_DIR):
    """tinyemb.safetensors: kohya/"diffuser concept" layout {"emb_params": [2, 32]}.
    tinyptemb.pt: A1111's Embedding.save dict (string_to_token / string_to_param / name / step /
    sd_checkpoint / sd_checkpoint_name), 3 vectors.  Values: seeded noise at the token-embedding scale."""
    emb_dir.mkdir(parents=True, exist_ok=True)
    w = model.text_embeddings.token_embedding.wrapped.weight
    g = torch.Generator().manual_seed(7007)
    std = float(w.std())
    v1 = (torch.randn(2, w.shape[1], generator=g) * std * 3).to(torch.float16).to(torch.float32)
    v2 = (torch.randn(3, w.shape[1], generator=g) * std * 3).to(torch.float16).to(torch.float32)
    save_safetensors({"emb_params": v1}, emb_dir / "tinyemb.safetensors", {})
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": v2.clone()},
        "name": "tinyptemb",
        "step": 0,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }
    torch.save(data, str(emb_dir / "tinyptemb.pt"))
    (emb_dir / "tinyptemb.pt").chmod(0o644)


def make_init_image(path: Path = INIT_IMAGE):
    """A deterministic 32x32 RGB picture: gradients, a disc and a bar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    r = 40 + 6 * xx
    g = 30 + 5 * yy
    b = 120 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    disc = (xx - 20) ** 2 + (yy - 12) ** 2 < 36
    r[disc], g[disc], b[disc] = 230, 200, 40
    bar = (yy >= 22) & (yy < 26) & (xx >= 4) & (xx < 28)
    r[bar], g[bar], b[bar] = 20, 160, 90
    img = np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(str(path), format="PNG", optimize=False, compress_level=9)
    path.chmod(0o644)


def make_mask_image(path: Path = MASK_IMAGE):
    """A 32x32 L-mode inpainting mask: white rectangle (repaint), a grey (100) band, black elsewhere."""
    m = np.zeros((32, 32), dtype=np.uint8)
    m[6:20, 10:26] = 255
    m[24:28, 2:30] = 100
    Image.fromarray(m, "L").save(str(path), format="PNG", optimize=False, compress_level=9)
    path.chmod(0o644)


def b64_file(path):
    return base64.b64encode(path.read_bytes()).decode("ascii")


def init_image_b64():
    return b64_file(INIT_IMAGE)


IMAGE_TOKENS = {"@init": INIT_IMAGE, "@mask": MASK_IMAGE}


def expand_request(req):
    """Replace "@init"/"@mask" by the base64 of the committed PNGs (the request a client sends)."""
    sent = json.loads(json.dumps(req))
    if "init_images" in sent:
        sent["init_images"] = [b64_file(IMAGE_TOKENS[x]) if x in IMAGE_TOKENS else x for x in sent["init_images"]]
    if sent.get("mask") in IMAGE_TOKENS:
        sent["mask"] = b64_file(IMAGE_TOKENS[sent["mask"]])
    return sent


# ------------------------------------------------------------------------------------------------
# Cases.  "@init" (in init_images) and "@mask" stand for the base64 of tests/fixtures/images/init_32x32.png
# and mask_32x32.png; the request JSON stored in each file keeps these tokens.

BASE = {"width": 32, "height": 32, "cfg_scale": 7.0, "steps": 8, "override_settings": {"randn_source": "CPU"}}
P1 = "a photo of a cat sitting on a wooden chair"
N1 = "blurry, lowres"
LONG = ", ".join(
    [
        "masterpiece, best quality, a highly detailed oil painting of an old lighthouse on a rocky cliff at sunset",
        "dramatic clouds, crashing waves, warm golden light, seagulls flying over the sea",
        "a small fishing boat with a red sail in the harbour, wet stones glistening",
        "long shadows across the grass, wild flowers, a winding path leading to the door",
        "an old keeper standing in the doorway holding a lantern, his coat flapping in the wind",
        "distant mountains under snow, soft haze, a flock of birds, fine brush strokes, rich colours",
        "cinematic composition, volumetric light, ultra sharp focus, trending on an art gallery wall",
        "tiny stars appearing in the deep blue sky, a thin crescent moon above the horizon",
        "reflections of the lighthouse beam dancing on the water, foam and spray against the rocks",
        "an old wooden bench near the fence, a sleeping cat curled up on a folded blanket",
        "warm light from the small windows, ivy climbing the white walls, rusty iron railings",
        "(highly detailed:1.2), [blurry], intricate textures, gentle gradients, painterly style",
    ]
)


def case(name, mode="txt2img", **kw):
    req = json.loads(json.dumps(BASE))
    over = kw.pop("override_settings", {})
    req.update(kw)
    req["override_settings"].update(over)
    return name, mode, req


def k_cases():
    res = []
    # every sampler with its Automatic scheduler (and a Karras variant where the default is not Karras)
    table = [
        ("euler_a", "Euler a", None), ("euler", "Euler", None), ("dpmpp_2m", "DPM++ 2M", None),
        ("euler_a_karras", "Euler a", "Karras"), ("euler_karras", "Euler", "Karras"),
        ("lms", "LMS", None), ("lms_karras", "LMS", "Karras"), ("heun", "Heun", None),
        ("heun_karras", "Heun", "Karras"), ("dpm2", "DPM2", None), ("dpm2_a", "DPM2 a", None),
        ("dpmpp_2s_a", "DPM++ 2S a", None), ("dpmpp_2m_exponential", "DPM++ 2M", "Exponential"),
        ("dpmpp_sde", "DPM++ SDE", None), ("dpmpp_2m_sde", "DPM++ 2M SDE", None),
        ("dpmpp_2m_sde_karras", "DPM++ 2M SDE", "Karras"), ("dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun", None),
        ("dpmpp_3m_sde", "DPM++ 3M SDE", None), ("dpmpp_3m_sde_karras", "DPM++ 3M SDE", "Karras"),
        ("dpm_fast", "DPM fast", None), ("dpm_adaptive", "DPM adaptive", None), ("restart", "Restart", None),
        ("ddim", "DDIM", None), ("ddim_cfgpp", "DDIM CFG++", None), ("plms", "PLMS", None), ("unipc", "UniPC", None),
        ("lcm", "LCM", None),
        ("euler_sgm_uniform", "Euler", "SGM Uniform"), ("euler_simple", "Euler", "Simple"),
        ("euler_beta", "Euler", "Beta"), ("euler_align_your_steps", "Euler", "Align Your Steps"),
        ("euler_kl_optimal", "Euler", "KL Optimal"), ("euler_normal", "Euler", "Normal"),
        ("euler_ddim_sched", "Euler", "DDIM"), ("euler_uniform", "Euler", "Uniform"),
        ("euler_polyexponential", "Euler", "Polyexponential"),
    ]  # fmt: skip
    for name, sampler, sched in table:
        kw = dict(prompt=P1, negative_prompt=N1, seed=1000, sampler_name=sampler)
        if sched:
            kw["scheduler"] = sched
        if name in ("euler_a", "dpmpp_sde", "dpmpp_2m_sde"):  # per-image noise streams and Brownian trees
            kw["batch_size"] = 2
        if name == "lcm":
            kw.update(cfg_scale=1.5, steps=4)
        if name == "dpm_adaptive":
            kw["steps"] = 4
        res.append(case(name, **kw))
    res.append(case("unipc_bh2_quadratic_order2", prompt=P1, negative_prompt=N1, seed=1000, sampler_name="UniPC",
                    override_settings={"uni_pc_variant": "bh2", "uni_pc_skip_type": "time_quadratic", "uni_pc_order": 2}))
    res.append(case("restart_20", prompt=P1, negative_prompt=N1, seed=1001, sampler_name="Restart", steps=20))
    res.append(case("dpmpp_2m_karras_suffix", prompt=P1, seed=1002, sampler_name="DPM++ 2M Karras"))
    return res


def feature_cases():
    E = "[a red cat:a blue dog:0.5] on a [wooden|metal] chair"
    return [
        case("batch2_n_iter2", prompt=P1, negative_prompt=N1, seed=2000, sampler_name="DPM++ SDE", batch_size=2, n_iter=2, steps=6),
        case("clip_skip2", prompt=P1, negative_prompt=N1, seed=2001, sampler_name="Euler a",
             override_settings={"CLIP_stop_at_last_layers": 2}),
        case("long_3chunks", prompt=LONG, negative_prompt=N1, seed=2002, sampler_name="Euler a"),
        case("long_3chunks_pad_conds", prompt=LONG, negative_prompt=N1, seed=2002, sampler_name="Euler a",
             override_settings={"pad_cond_uncond": True}),
        case("long_negative", prompt=P1, negative_prompt=LONG, seed=2003, sampler_name="DPM++ 2M"),
        case("break", prompt="a cat sitting BREAK on a wooden chair, (sunset:1.2)", negative_prompt=N1, seed=2004,
             sampler_name="Euler a"),
        case("prompt_editing", prompt=E, negative_prompt="[ugly:blurry:3]", seed=2005, sampler_name="Euler a", steps=10),
        case("prompt_editing_heun", prompt="[a red cat:a blue dog:5] on a chair", negative_prompt=N1, seed=2006,
             sampler_name="Heun", steps=6),
        case("emphasis", prompt="(masterpiece:1.3), a ((cat)) on a [chair], [[blurry]] (sunset:0.5)",
             negative_prompt="(ugly:1.4)", seed=2007, sampler_name="Euler"),
        case("emphasis_no_norm", prompt="(masterpiece:1.3), a ((cat)) on a [chair]", negative_prompt=N1, seed=2007,
             sampler_name="Euler", override_settings={"emphasis": "No norm"}),
        case("and_weights", prompt="a cat on a chair AND a dog in the garden :0.7 AND sunset:-0.3",
             negative_prompt=N1, seed=2008, sampler_name="Euler a", batch_size=2),
        case("embedding", prompt="a photo of tinyemb sitting on a chair, (tinyptemb:1.2)", negative_prompt="tinyemb",
             seed=2009, sampler_name="Euler a"),
        case("extra_network_tag", prompt="<lora:foo:0.8>a photo of a cat <hypernet:bar:1>", negative_prompt="<lora:x:1>",
             seed=2010, sampler_name="Euler a"),
        case("variation", prompt=P1, negative_prompt=N1, seed=2011, subseed=77, subseed_strength=0.3,
             sampler_name="Euler a", batch_size=2),
        case("ensd", prompt=P1, negative_prompt=N1, seed=2012, sampler_name="Euler a",
             override_settings={"eta_noise_seed_delta": 31337}),
        case("nv_source", prompt=P1, negative_prompt=N1, seed=2013, sampler_name="Euler a",
             override_settings={"randn_source": "NV"}),
        case("nv_source_dpmpp_sde", prompt=P1, negative_prompt=N1, seed=2013, sampler_name="DPM++ SDE", steps=6,
             override_settings={"randn_source": "NV"}),
        case("eta_half", prompt=P1, negative_prompt=N1, seed=2014, sampler_name="Euler a", eta=0.5),
        case("non_square_48x32", prompt=P1, negative_prompt=N1, seed=2015, sampler_name="Euler a", width=48, height=32),
        case("empty_prompts", prompt="", negative_prompt="", seed=2016, sampler_name="Euler"),
        case("img2img_euler_a", "img2img", prompt=P1, negative_prompt=N1, seed=3000, sampler_name="Euler a", steps=10,
             denoising_strength=0.6, init_images=["@init"], batch_size=2),
        case("img2img_dpmpp_2m", "img2img", prompt=P1, negative_prompt=N1, seed=3001, sampler_name="DPM++ 2M", steps=10,
             denoising_strength=0.6, init_images=["@init"]),
        case("img2img_dpmpp_sde", "img2img", prompt=P1, negative_prompt=N1, seed=3002, sampler_name="DPM++ SDE", steps=10,
             denoising_strength=0.6, init_images=["@init"]),
        case("img2img_unipc", "img2img", prompt=P1, negative_prompt=N1, seed=3006, sampler_name="UniPC", steps=10,
             denoising_strength=0.6, init_images=["@init"]),
        case("img2img_ddim", "img2img", prompt=P1, negative_prompt=N1, seed=3003, sampler_name="DDIM", steps=10,
             denoising_strength=0.6, init_images=["@init"]),
        case("img2img_dpm_fast", "img2img", prompt=P1, negative_prompt=N1, seed=3004, sampler_name="DPM fast", steps=10,
             denoising_strength=0.6, init_images=["@init"]),
        case("inpaint_euler_a", "img2img", prompt=P1, negative_prompt=N1, seed=3007, sampler_name="Euler a", steps=10,
             denoising_strength=0.75, init_images=["@init"], mask="@mask", mask_blur=0, inpaint_full_res=False,
             inpainting_fill=1, batch_size=2),
        case("inpaint_ddim_latent_nothing_invert", "img2img", prompt=P1, negative_prompt=N1, seed=3008,
             sampler_name="DDIM", steps=10, denoising_strength=0.75, init_images=["@init"], mask="@mask", mask_blur=0,
             inpaint_full_res=False, inpainting_fill=3, inpainting_mask_invert=1),
        case("inpaint_dpmpp_2m_latent_noise", "img2img", prompt=P1, negative_prompt=N1, seed=3009,
             sampler_name="DPM++ 2M", steps=10, denoising_strength=0.75, init_images=["@init"], mask="@mask", mask_blur=0,
             inpaint_full_res=False, inpainting_fill=2),
        case("inpaint_fill_euler", "img2img", prompt=P1, negative_prompt=N1, seed=3010, sampler_name="Euler", steps=10,
             denoising_strength=0.75, init_images=["@init"], mask="@mask", mask_blur=0, inpaint_full_res=False,
             inpainting_fill=0),
        case("inpaint_blur_euler_a", "img2img", prompt=P1, negative_prompt=N1, seed=3011, sampler_name="Euler a",
             steps=10, denoising_strength=0.75, init_images=["@init"], mask="@mask", mask_blur=4,
             inpaint_full_res=False, inpainting_fill=1),
        case("inpaint_blur_xy_fill", "img2img", prompt=P1, negative_prompt=N1, seed=3012, sampler_name="Euler",
             steps=10, denoising_strength=0.75, init_images=["@init"], mask="@mask", mask_blur_x=2, mask_blur_y=6,
             inpaint_full_res=False, inpainting_fill=0),
        case("inpaint_only_masked", "img2img", prompt=P1, negative_prompt=N1, seed=3013, sampler_name="Euler a",
             steps=10, denoising_strength=0.75, init_images=["@init"], mask="@mask", mask_blur=2,
             inpaint_full_res=True, inpaint_full_res_padding=3, inpainting_fill=1, batch_size=2),
        case("inpaint_only_masked_fill_48x32", "img2img", prompt=P1, negative_prompt=N1, seed=3014, sampler_name="Euler",
             steps=10, denoising_strength=0.75, init_images=["@init"], mask="@mask", mask_blur=4, width=48, height=32,
             inpaint_full_res=True, inpaint_full_res_padding=0, inpainting_fill=0),
        case("img2img_prompt_editing", "img2img", prompt=E, negative_prompt=N1, seed=3005, sampler_name="Euler",
             steps=10, denoising_strength=0.6, init_images=["@init"]),
    ]  # fmt: skip


def hires_cases():
    """txt2img + hires fix (32x32 first pass, 6 steps) and img2img resize modes 1-3."""
    H = dict(prompt=P1, negative_prompt=N1, steps=6, enable_hr=True, denoising_strength=0.6, hr_second_pass_steps=4)
    HP = "[a photo of a cat:a painting of a dog:1.5] sitting on a [wooden:metal:8] chair"
    return [
        case("hires_latent", seed=4000, sampler_name="Euler a", hr_upscaler="Latent", hr_scale=2, **H),
        case("hires_latent_antialiased", seed=4001, sampler_name="Euler", hr_upscaler="Latent (antialiased)",
             hr_scale=1.5, **H),
        case("hires_latent_bicubic", seed=4002, sampler_name="DPM++ 2M", hr_upscaler="Latent (bicubic)", hr_scale=2,
             **H),
        case("hires_latent_bicubic_antialiased", seed=4003, sampler_name="Euler", hr_upscaler="Latent (bicubic antialiased)",
             hr_scale=2, **H),
        case("hires_latent_nearest", seed=4004, sampler_name="Euler a", hr_upscaler="Latent (nearest)", hr_scale=2,
             batch_size=2, **H),
        case("hires_latent_nearest_exact_crop", seed=4005, sampler_name="Euler", hr_upscaler="Latent (nearest-exact)",
             hr_resize_x=64, hr_resize_y=48, **H),
        case("hires_default_upscaler_resize_y", seed=4006, sampler_name="Euler", hr_resize_y=48, **H),
        case("hires_lanczos", seed=4007, sampler_name="Euler a", hr_upscaler="Lanczos", hr_scale=2, batch_size=2, **H),
        case("hires_nearest_resize_x", seed=4008, sampler_name="Euler", hr_upscaler="Nearest", hr_resize_x=48, **H),
        case("hires_none_upscaler_crop", seed=4009, sampler_name="Euler", hr_upscaler="None", hr_resize_x=48,
             hr_resize_y=64, **H),
        case("hires_sampler_prompt", seed=4010, sampler_name="Euler a", hr_upscaler="Latent", hr_scale=2,
             hr_sampler_name="DPM++ SDE", hr_scheduler="Karras", hr_prompt=HP, hr_negative_prompt="ugly", **H),
        case("hires_heun_default_steps", seed=4011, prompt=P1, negative_prompt=N1, steps=4, enable_hr=True,
             sampler_name="Heun", hr_upscaler="Latent", hr_scale=2, hr_sampler_name="DDIM", denoising_strength=0.75),
        case("hires_embedding_n_iter2", seed=4012, prompt="a photo of tinyemb on a chair", negative_prompt="blurry",
             sampler_name="Euler", steps=3, n_iter=2, enable_hr=True, denoising_strength=0.5, hr_scale=1.5,
             hr_second_pass_steps=2, hr_prompt="a (painting:1.1) of tinyptemb on a chair",
             override_settings={"emphasis": "Ignore"}),
        case("img2img_resize_crop_48x32", "img2img", prompt=P1, negative_prompt=N1, seed=4100, sampler_name="Euler",
             steps=10, denoising_strength=0.6, init_images=["@init"], width=48, height=32, resize_mode=1),
        case("img2img_resize_crop_32x48", "img2img", prompt=P1, negative_prompt=N1, seed=4101, sampler_name="Euler",
             steps=10, denoising_strength=0.6, init_images=["@init"], width=32, height=48, resize_mode=1),
        case("img2img_resize_fill_48x32", "img2img", prompt=P1, negative_prompt=N1, seed=4102, sampler_name="Euler a",
             steps=10, denoising_strength=0.6, init_images=["@init"], width=48, height=32, resize_mode=2),
        case("img2img_resize_fill_32x48", "img2img", prompt=P1, negative_prompt=N1, seed=4103, sampler_name="Euler",
             steps=10, denoising_strength=0.6, init_images=["@init"], width=32, height=48, resize_mode=2),
        case("img2img_resize_latent_48x32", "img2img", prompt=P1, negative_prompt=N1, seed=4104, sampler_name="Euler",
             steps=10, denoising_strength=0.6, init_images=["@init"], width=48, height=32, resize_mode=3),
        case("img2img_resize_latent_64x64", "img2img", prompt=P1, negative_prompt=N1, seed=4105, sampler_name="DPM++ 2M",
             steps=10, denoising_strength=0.6, init_images=["@init"], width=64, height=64, resize_mode=3),
    ]  # fmt: skip


def inpainting_model_cases():
    """The 9-channel inpainting checkpoint (override_settings sd_model_checkpoint): txt2img with the
    grey-picture conditioning (also through hires fix), img2img without a mask, and inpainting with the [mask, masked picture]
    conditioning ("whole picture" and "only masked", every masked content, inpainting_mask_weight)."""
    M = {"sd_model_checkpoint": INPAINT_CHECKPOINT}
    I = dict(prompt=P1, negative_prompt=N1, steps=10, init_images=["@init"], denoising_strength=0.75)
    return [
        case("inpaintmodel_txt2img_euler_a", seed=5000, prompt=P1, negative_prompt=N1, sampler_name="Euler a", steps=10,
             batch_size=2, override_settings=M),
        case("inpaintmodel_txt2img_ddim", seed=5001, prompt=P1, negative_prompt=N1, sampler_name="DDIM", steps=8,
             override_settings=M),
        case("inpaintmodel_txt2img_hires", seed=5007, prompt=P1, negative_prompt=N1, sampler_name="Euler", steps=6,
             enable_hr=True, hr_upscaler="Latent", hr_scale=1.5, denoising_strength=0.6, hr_second_pass_steps=3,
             override_settings=M),
        case("inpaintmodel_img2img_no_mask", "img2img", seed=5002, sampler_name="Euler", override_settings=M, **I),
        case("inpaintmodel_inpaint_original", "img2img", seed=5003, sampler_name="Euler a", mask="@mask", mask_blur=4,
             inpaint_full_res=False, inpainting_fill=1, batch_size=2, override_settings=M, **I),
        case("inpaintmodel_inpaint_fill_only_masked", "img2img", seed=5004, sampler_name="DPM++ 2M", mask="@mask",
             mask_blur=2, inpaint_full_res=True, inpaint_full_res_padding=2, inpainting_fill=0, override_settings=M, **I),
        case("inpaintmodel_inpaint_latent_nothing_weight_half", "img2img", seed=5005, sampler_name="Euler", mask="@mask",
             mask_blur=0, inpaint_full_res=False, inpainting_fill=3, mask_round=False,
             override_settings={**M, "inpainting_mask_weight": 0.5}, **I),
        case("inpaintmodel_inpaint_ddim_latent_noise_invert", "img2img", seed=5006, sampler_name="DDIM", mask="@mask",
             mask_blur=3, inpaint_full_res=False, inpainting_fill=2, inpainting_mask_invert=1, override_settings=M, **I),
    ]  # fmt: skip


def all_cases():
    return k_cases() + feature_cases() + hires_cases() + inpainting_model_cases()


# ------------------------------------------------------------------------------------------------
# Output


_ST = {torch.float32: "F32", torch.uint8: "U8", torch.int64: "I64"}


def save_safetensors(tensors, path: Path, metadata: dict):
    """safetensors with sorted header keys (reproducible bytes); read back with the library."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    blobs, off = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        b = t.numpy().tobytes()
        header[name] = {"dtype": _ST[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    back = load_file(str(path))
    for k, v in tensors.items():
        assert torch.equal(back[k], v.detach().contiguous()), k
    path.chmod(0o644)


def sha256(p: Path):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def versions():
    import importlib.metadata as md

    def v(n):
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            return "?"

    return {
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "k-diffusion": v("k-diffusion"), "torchsde": v("torchsde"), "lark": lark.__version__, "numpy": np.__version__,
        "safetensors": safetensors.__version__, "clip-anytorch": v("clip-anytorch"), "scipy": v("scipy"),
        "pillow": v("pillow"),
    }  # fmt: skip


# Cases whose whole infotext is recorded (`infotexts` in the metadata): hires fix (sampler, scheduler,
# prompts, steps, upscaler keys), embeddings with emphasis (TI hashes, Emphasis), and inpainting (mask
# keys). The writer below covers what these cases use; it refuses settings it does not model.
INFOTEXT_CASES = {
    "embedding", "hires_sampler_prompt", "hires_default_upscaler_resize_y", "hires_embedding_n_iter2",
    "hires_latent_bicubic", "hires_heun_default_steps",
    "inpaint_only_masked", "inpaint_ddim_latent_nothing_invert", "inpaint_blur_xy_fill",
}  # fmt: skip
# A1111's defaults for the options create_infotext reads: add_model_hash_to_info,
# add_model_name_to_info and add_version_to_infotext on; no VAE file, no fp8, no token merging.
INFOTEXT_VERSION = "v1.10.1"


def infotext_quote(text):
    """generation_parameters_copypaste.quote: JSON-quoted only when it holds ',', ':' or a newline."""
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def recorded_schedule_label(sampler, scheduler_label):
    """The label of the scheduler function KDiffusionSampler.get_sigmas runs (Automatic: the
    sampler's default), or None when it runs none (the timestep samplers; Automatic without a
    default). LCM is a KDiffusionSampler too."""
    kind, _, cfg = SAMPLERS[sampler]
    if kind == "t":
        return None
    name = cfg.get("scheduler") if scheduler_label == "Automatic" else SCHED_BY_KEY[scheduler_label][0]
    if name is None or name == "automatic":
        return None
    return SCHED_BY_KEY[name][1]


def create_infotext(p: Request, out, index):
    """processing.create_infotext for image `index`: the fixed slots, then extra_generation_params in
    the order A1111 inserts them (txt2img/img2img init: hires or mask keys; setup_conds: the text
    encoder's keys), then Version."""
    o = p.opts
    if p.eta is not None or p.s_min_uncond is not None or o["s_churn"] or o["s_tmin"] or o["s_noise"] != 1.0:
        raise ValueError("sampler infotext keys are not modelled")
    if o["eta_noise_seed_delta"] or o["pad_cond_uncond"] or o["use_old_scheduling"] or o["sigma_min"] or o["sigma_max"]:
        raise ValueError("option infotext keys are not modelled")
    if p.mode == "img2img" and p.initial_noise_multiplier != 1.0:
        raise ValueError("Noise multiplier is not modelled")
    prompt, negative = p.prompt, p.negative_prompt  # all_prompts[index]: styles applied, tags kept
    extra = {}
    if p.enable_hr:
        extra["Denoising strength"] = p.denoising_strength
        if p.hr_sampler_name is not None and p.hr_sampler_name != p.sampler_name:
            extra["Hires sampler"] = p.hr_sampler_name
        hr_prompt, hr_negative = p.hr_prompt or p.prompt, p.hr_negative_prompt or p.negative_prompt
        extra["Hires prompt"] = hr_prompt if hr_prompt != prompt else None
        extra["Hires negative prompt"] = hr_negative if hr_negative != negative else None
        extra["Hires schedule type"] = None  # a placeholder; the hires pass's get_sigmas may set it
        if p.hr_resize_x == 0 and p.hr_resize_y == 0:
            extra["Hires upscale"] = float(p.hr_scale)  # the API field is a float
        else:
            extra["Hires resize"] = f"{p.hr_resize_x}x{p.hr_resize_y}"
        if p.hr_second_pass_steps:
            extra["Hires steps"] = p.hr_second_pass_steps
        if p.hr_upscaler is not None:
            extra["Hires upscaler"] = p.hr_upscaler
    if p.mode == "img2img":
        extra["Denoising strength"] = p.denoising_strength
        if p.mask is not None:
            if p.inpainting_mask_invert:
                extra["Mask mode"] = "Inpaint not masked"
            if p.mask_blur_x > 0 or p.mask_blur_y > 0:
                # the mask_blur property: None (so left out) when the two directions differ
                extra["Mask blur"] = p.mask_blur_x if p.mask_blur_x == p.mask_blur_y else None
            if p.inpaint_full_res:  # every case's mask is non-blank, so the crop region exists
                extra["Inpaint area"] = "Only masked"
                extra["Masked area padding"] = p.inpaint_full_res_padding
            if p.inpainting_fill != 1:
                extra["Masked content"] = ["fill", "original", "latent noise", "latent nothing"][p.inpainting_fill]
    for key, value in out["encoder_params"][index]:
        extra[key] = value
    # KDiffusionSampler.get_sigmas during sampling: the first pass records a schedule other than
    # Automatic as "Schedule type" (a fixed slot); the hires pass records its own when it differs
    # from that recorded value.
    first = recorded_schedule_label(p.sampler_name, p.scheduler)
    if first is not None:
        extra["Schedule type"] = first
    if p.enable_hr:
        hires = recorded_schedule_label(p.hr_sampler_name or p.sampler_name, p.hr_scheduler)
        if hires is not None and hires != extra.get("Schedule type"):
            extra["Hires schedule type"] = hires
    clip_skip = o["CLIP_stop_at_last_layers"]
    params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler,
        "CFG scale": p.cfg_scale,
        "Image CFG scale": None,
        "Seed": out["all_seeds"][index],
        "Face restoration": None,
        "Size": f"{p.width}x{p.height}",
        "Model hash": sha256(SINGLE_FILE)[:10],
        "Model": SINGLE_FILE.stem,
        "FP8 weight": None,
        "Cache FP16 weight for LoRA": None,
        "VAE hash": None,
        "VAE": None,
        "Variation seed": None if p.subseed_strength == 0 else out["all_subseeds"][index],
        "Variation seed strength": None if p.subseed_strength == 0 else p.subseed_strength,
        "Seed resize from": None,
        "Denoising strength": extra.get("Denoising strength"),
        "Conditional mask weight": None,
        "Clip skip": None if clip_skip <= 1 else clip_skip,
        "ENSD": None,
        "Token merging ratio": None,
        "Token merging ratio hr": None,
        "Init image hash": None,
        "RNG": o["randn_source"] if o["randn_source"] != "GPU" else None,
        "Tiling": None,
        **extra,
        "Version": INFOTEXT_VERSION,
        "User": None,
    }
    line = ", ".join(k if k == v else f"{k}: {infotext_quote(v)}" for k, v in params.items() if v is not None)
    negative_text = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt}{negative_text}\n{line}".strip()


def run_case(pipe: Pipeline, name, mode, req):
    p = parse_request(mode, expand_request(req))
    torch.manual_seed(0)  # nothing should read the global generator; keep it fixed anyway
    out = pipe.generate(p)
    tr = out["trace"]
    images = torch.from_numpy(np.stack(out["images"]))
    t = {
        "images": images,
        "noise": torch.cat(out["noise"]),
        "latent_final": torch.cat(out["latent_final"]),
        "cond_step0": tr["cond_step0"],
        "uncond_step0": tr["uncond_step0"],
        "sigmas": out["sigmas"].to(torch.float32),
    }
    if out["init_latent"] is not None:
        t["init_latent"] = out["init_latent"]
    if p.checkpoint == INPAINT_CHECKPOINT:
        t["image_cond"] = out["image_cond"].contiguous()
    if p.enable_hr:
        for k in ("first_pass_latent", "hires_init_latent", "hires_noise"):
            t[k] = torch.cat(out[k])
        for k in ("hires_sigmas", "hires_cond_step0", "hires_uncond_step0"):
            t[k] = out[k].to(torch.float32)
    if out.get("filled"):
        t["filled_init_image"] = torch.from_numpy(np.stack(out["filled"]))
    if out["latent_mask"] is not None:
        t["latent_keep_mask"] = out["latent_mask"]
        t["images_before_overlay"] = torch.from_numpy(np.stack(out["images_before_overlay"]))
    h, w = p.height // LATENT_FACTOR, p.width // LATENT_FACTOR
    resolved = {
        "mode": mode,
        "sampler": p.sampler_name,
        "scheduler": p.scheduler,
        "steps": p.steps,
        "total_steps": out["total_steps"],
        "batch_size": p.batch_size,
        "n_iter": p.n_iter,
        "all_seeds": out["all_seeds"],
        "all_subseeds": out["all_subseeds"],
        "subseed_strength": p.subseed_strength,
        "cfg_scale": p.cfg_scale,
        "eta": p.eta if p.eta is not None else (p.opts["eta_ddim"] if SAMPLERS[p.sampler_name][0] == "t" else p.opts["eta_ancestral"]),
        "denoising_strength": p.denoising_strength,
        "conds_list_step0": tr["conds_list"],
        "model_calls_per_batch": out["calls"],
        "opts": p.opts,
    }
    if p.resize_mode:
        resolved["resize_mode"] = p.resize_mode
    if p.enable_hr:
        resolved["hires"] = {k: getattr(p, k) for k in (
            "hr_upscaler", "hr_scale", "hr_resize_x", "hr_resize_y", "hr_upscale_to_x", "hr_upscale_to_y", "truncate_x",
            "truncate_y", "hr_second_pass_steps", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt")}  # fmt: skip
    md = {
        "generator": "reference/a1111_reference.py",
        "a1111_version": A1111_VERSION,
        "endpoint": f"/sdapi/v1/{mode}",
        "request": json.dumps(req, sort_keys=True),
        "resolved": json.dumps(resolved, sort_keys=True),
        "latent_factor": str(LATENT_FACTOR),
        "noise_shape": json.dumps([images.shape[0], LATENT_CHANNELS, h, w]),
        "init_encode": "posterior mean (A1111 samples with the global torch generator; see A1111_REFERENCE.md)" if mode == "img2img" else "",
        "sigmas": "k-diffusion sigmas given to the sampler (img2img: the truncated sigma_sched); DDIM/PLMS: the integer timesteps as float",
        "tensors": "images U8 [N,H,W,3]; noise F32 first ImageRNG draw per batch [N,4,h,w]; cond_step0 F32 the stacked "
        "positive conds of the first model call (batch 0) [sum of sub-prompts, T, 32]; uncond_step0 F32 [B, T', 32]; "
        "latent_final F32 sampler output before decoding (after the final mask blend) [N,4,h,w]; init_latent "
        "(img2img) F32 [B,4,h,w]; inpainting: latent_keep_mask F32 [4,h,w] (A1111 p.mask: 1 keeps the init latent) "
        "and images_before_overlay U8 (images is after the overlay of the original's unmasked pixels)",
        "versions": json.dumps(versions(), sort_keys=True),
        "sha256:tiny-sd15.safetensors": sha256(SINGLE_FILE),
        "sha256:unet": sha256(DIFFUSERS_DIR / "unet/diffusion_pytorch_model.safetensors"),
        "sha256:embeddings": json.dumps({f.name: sha256(f) for f in sorted(EMB_DIR.iterdir())}, sort_keys=True),
    }
    if any(out["encoder_params"]):
        # per image: what the text encoder put in A1111's extra_generation_params (TI hashes, Emphasis)
        md["infotext_encoder_params"] = json.dumps(out["encoder_params"])
    if name in INFOTEXT_CASES:
        # per image: the whole infotext A1111 writes (`info.infotexts`), Version v1.10.1
        md["infotexts"] = json.dumps([create_infotext(p, out, i) for i in range(images.shape[0])], ensure_ascii=False)
    if mode == "img2img":
        md["sha256:init_image"] = sha256(INIT_IMAGE)
    if req.get("mask") == "@mask":
        md["sha256:mask_image"] = sha256(MASK_IMAGE)
    if p.checkpoint == INPAINT_CHECKPOINT:
        md["checkpoint"] = "tiny-sd15.safetensors with model.diffusion_model.* from tiny-sd15-inpainting.safetensors"
        md["sha256:tiny-sd15-inpainting.safetensors"] = sha256(INPAINT_UNET_FILE)
        md["tensors"] += "; image_cond F32 [B,5,h,w] (c_concat of the first batch: mask channel, then the encoded picture)"
    return t, md


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", help="only these cases (repeatable)")
    ap.add_argument("--check", action="store_true", help="recompute and compare with the files on disk")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    cases = all_cases()
    if args.list:
        total = 0
        for name, mode, req in cases:
            f = OUT_DIR / f"{name}.safetensors"
            size = f.stat().st_size if f.exists() else 0
            total += size
            keys = {k: req[k] for k in ("sampler_name", "scheduler", "steps", "batch_size", "n_iter", "width", "height") if k in req}
            log(f"{name:28s} {mode:8s} {size:>8d} {json.dumps(keys)}")
        log(f"total {total} bytes")
        return
    if args.case:
        known = {c[0] for c in cases}
        bad = [c for c in args.case if c not in known]
        if bad:
            raise SystemExit(f"unknown case(s): {bad}")
        cases = [c for c in cases if c[0] in args.case]

    with torch.no_grad():
        pipe0 = TinySD()
        if not args.check:
            make_embeddings(pipe0)
            make_init_image()
            make_mask_image()
        else:  # the input fixtures must come out byte-identical too
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                make_embeddings(pipe0, tmp / "emb")
                make_init_image(tmp / "init.png")
                make_mask_image(tmp / "mask.png")
                pairs = [(tmp / "emb" / f.name, f) for f in sorted(EMB_DIR.iterdir())]
                pairs += [(tmp / "init.png", INIT_IMAGE), (tmp / "mask.png", MASK_IMAGE)]
                for new, old in pairs:
                    same = new.exists() and new.read_bytes() == old.read_bytes()
                    log(f"{'ok  ' if same else 'DIFF'} {old.relative_to(ROOT)}")
                    if not same:
                        raise SystemExit(f"{old} differs from a fresh build")
        del pipe0
        pipe = Pipeline()
        log(f"embeddings: {pipe.embeddings.names}")
        failures = 0
        for name, mode, req in cases:
            t, md = run_case(pipe, name, mode, req)
            path = OUT_DIR / f"{name}.safetensors"
            if args.check:
                old = load_file(str(path))
                with safetensors.safe_open(str(path), "pt") as f:
                    old_md = f.metadata()
                same = sorted(old) == sorted(t) and all(torch.equal(old[k], t[k]) for k in t)
                same_md = {k: v for k, v in old_md.items() if k != "versions"} == {k: v for k, v in md.items() if k != "versions"}
                log(f"{'ok  ' if same and same_md else 'DIFF'} {name}")
                failures += not (same and same_md)
            else:
                save_safetensors(t, path, md)
                im = t["images"].float()
                log(f"{name:28s} {tuple(t['images'].shape)} mean {im.mean():6.1f} std {im.std():5.1f} "
                    f"{path.stat().st_size} bytes")  # fmt: skip
        if failures:
            raise SystemExit(f"{failures} case(s) differ")


if __name__ == "__main__":
    main()
