#!/usr/bin/env python3
"""Golden noise for models/src/rng: A1111 1.10's seeds and noise, computed with the pinned torch.

Run from anywhere (CPU only, a few seconds):

    .venv/bin/pip install -r reference/requirements.txt   # torch==2.11.0, numpy==2.4.6
    .venv/bin/python reference/gen_rng_goldens.py

Writes tests/fixtures/golden/rng.safetensors (float32 tensors, sorted keys, byte-identical from run
to run). Tensor names:

    cpu/seed{S}/draw_4x8x8          torch.randn([4,8,8], generator=torch.Generator('cpu').manual_seed(S))
    cpu/seed{S}/next_{N}            then N more values from the same generator, N = 7, 15, 16, 17, 100
                                    in that order (PyTorch samples fewer than 16 values with a scalar
                                    Box-Muller that caches its second value in the generator, 16 or
                                    more with a vectorised one; the sequence crosses both)
    cpu/seed{S}/first_1x4x64x64     first draw of a fresh generator at the SD 512x512 latent shape
    nv/seed{S}/draw_4x8x8, nv/seed{S}/next_7, nv/seed{S}/next_100
                                    A1111's Philox "NV" source, same pattern (offset 0, 1, 2)
    nv/seed42/first_1x4x64x64
    slerp/low, slerp/high_independent, slerp/high_parallel
                                    inputs ([4,8,8] CPU noise; "parallel" = low + 1% other noise)
    slerp/independent_{V}, slerp/parallel_{V}
                                    A1111's slerp(V, low, high) for V = 0.3, 0.7
    variation/{src}/strength_{V}    ImageRNG first draw, seeds [1000], subseeds [2000], [1,4,8,8]
    resize/{case}/first, resize/{case}/next
                                    ImageRNG first and second draw, seeds [500, 501], latent [4,8,8],
                                    seed_resize_from (w, h) per case (see RESIZE_CASES)
    batch/{src}/ensd{D}/draw{K}     ImageRNG draws K = 0, 1, 2, seeds [100, 101], latent [4,8,8]

Seeds: 0, 1, 42, 2**32-1, 2**32+5, 1234567890123 (the last two exercise the high 32 bits: dropped
by PyTorch's CPU mt19937, used by Philox).

The A1111 semantics (ImageRNG, slerp, seed resize, ENSD, Philox) are written out below from the
behaviour of stable-diffusion-webui 1.10's modules/rng.py and modules/rng_philox.py; this file
contains no code from that project. The Philox port is checked against the example output printed
in rng_philox.py's docstring (seed 0, shape (3, 4)) before anything is written; it was also compared
bit for bit with rng_philox.py's own Generator (run from a temporary copy, not kept) for every seed
and shape written here.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "golden" / "rng.safetensors"

SEEDS = [0, 1, 42, 2**32 - 1, 2**32 + 5, 1234567890123]
NEXT_SIZES = [7, 15, 16, 17, 100]
LATENT = (4, 8, 8)
RESIZE_CASES = {
    # name: (seed_resize_from_w, seed_resize_from_h, subseed_strength)
    "grow_48x40": (48, 40, 0.0),  # old latent [5, 6] inside [8, 8]
    "shrink_88x80": (88, 80, 0.0),  # old latent [10, 11]: odd crop on the width
    "mixed_64x40": (64, 40, 0.0),  # same width, shorter height
    "shrink_88x80_variation": (88, 80, 0.5),
}


# --------------------------------------------------------------------------------------------
# A1111's "NV" source: Philox 4x32-10 per element + one Box-Muller branch, float64 arithmetic.

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
# A1111 writes 2^-32 and 2^-32*2pi as decimal literals stored in one-element float32 arrays;
# multiplying uint32 arrays by them promotes to float64.
INV32 = np.array([2.3283064e-10], dtype=np.float32)
INV32_2PI = np.array([2.3283064e-10 * 6.2831855], dtype=np.float32)


class Philox:
    def __init__(self, seed: int):
        self.seed = seed
        self.offset = 0

    def randn(self, shape) -> np.ndarray:
        n = int(np.prod(shape))
        mask = np.uint64(0xFFFFFFFF)
        c0 = np.full(n, self.offset, dtype=np.uint64)
        c1 = np.zeros(n, dtype=np.uint64)
        c2 = np.arange(n, dtype=np.uint64)
        c3 = np.zeros(n, dtype=np.uint64)
        k0 = np.uint64(self.seed & 0xFFFFFFFF)
        k1 = np.uint64(self.seed >> 32)
        self.offset += 1
        for r in range(10):
            p0 = c0 * np.uint64(PHILOX_M[0])  # < 2^64, exact in uint64
            p1 = c2 * np.uint64(PHILOX_M[1])
            c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & mask
            if r < 9:
                k0 = (k0 + np.uint64(PHILOX_W[0])) & mask
                k1 = (k1 + np.uint64(PHILOX_W[1])) & mask
        x = c0.astype(np.uint32)
        y = c1.astype(np.uint32)
        u = x * INV32 + INV32 / 2
        v = y * INV32_2PI + INV32_2PI / 2
        assert u.dtype == np.float64 and v.dtype == np.float64
        out = np.sqrt(-2.0 * np.log(u)) * np.sin(v)
        return out.astype(np.float32).reshape(shape)


def check_philox_against_a1111_docstring():
    """rng_philox.py's docstring prints what torch.randn((3, 4), device='cuda') gives for seed 0
    (the numbers the module imitates). A1111's float64 Box-Muller reproduces them only to float32
    rounding (2.6e-7 here), so this checks the Philox words and the Box-Muller branch, not the
    last bits; those follow the module's code, which the port below mirrors operation by
    operation."""
    expected = np.array(
        [
            [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
            [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
            [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
        ]
    )
    got = Philox(0).randn((3, 4)).astype(np.float64)
    err = np.abs(got - expected).max()
    if err > 1e-6:
        sys.exit(f"Philox port does not reproduce A1111's documented output (max error {err})")


# --------------------------------------------------------------------------------------------
# A1111's generator choice and ImageRNG semantics (CPU device, so "GPU" would mean CPU too).


def make_generator(source: str, seed: int):
    if source == "NV":
        return Philox(seed)
    return torch.Generator("cpu").manual_seed(seed)


def draw(gen, shape) -> torch.Tensor:
    if isinstance(gen, Philox):
        return torch.from_numpy(gen.randn(shape))
    return torch.randn(shape, generator=gen)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp: vectors normalised along dim 1, one angle per remaining index; linear (and
    reversed) fallback when the mean cosine is above 0.9995."""
    lo = low / torch.norm(low, dim=1, keepdim=True)
    hi = high / torch.norm(high, dim=1, keepdim=True)
    cos = (lo * hi).sum(1)
    if cos.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(cos)
    s = torch.sin(omega)
    a = (torch.sin((1.0 - val) * omega) / s).unsqueeze(1)
    b = (torch.sin(val * omega) / s).unsqueeze(1)
    return a * low + b * high


def paste_span(new: int, old: int):
    d = (new - old) // 2
    length = old if d >= 0 else old + 2 * d
    return max(d, 0), max(-d, 0), length


class ImageNoise:
    """One generator per image; first draw = initial noise with variation and seed resize applied;
    later draws = sampler noise; ENSD reseeds every generator with seed + delta after the first."""

    def __init__(self, source, shape, seeds, subseeds, strength=0.0, resize_w=0, resize_h=0, ensd=0):
        self.source, self.shape, self.seeds, self.subseeds = source, tuple(shape), seeds, subseeds
        self.strength, self.resize_w, self.resize_h, self.ensd = strength, resize_w, resize_h, ensd
        self.gens = [make_generator(source, s) for s in seeds]
        self.started = False

    def _first(self):
        shape = self.shape
        if self.resize_w > 0 and self.resize_h > 0:
            old = (shape[0], self.resize_h // 8, self.resize_w // 8)
        else:
            old = shape
        out = []
        for i, (seed, gen) in enumerate(zip(self.seeds, self.gens)):
            sub = None
            if self.strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                sub = draw(make_generator(self.source, subseed), old)
            noise = draw(make_generator(self.source, seed), old) if old != shape else draw(gen, shape)
            if sub is not None:
                noise = slerp(self.strength, noise, sub)
            if old != shape:
                full = draw(gen, shape)
                ty, sy, h = paste_span(shape[1], old[1])
                tx, sx, w = paste_span(shape[2], old[2])
                full[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
                noise = full
            out.append(noise)
        if self.ensd:
            self.gens = [make_generator(self.source, s + self.ensd) for s in self.seeds]
        return torch.stack(out)

    def next(self):
        if not self.started:
            self.started = True
            return self._first()
        return torch.stack([draw(g, self.shape) for g in self.gens])


# --------------------------------------------------------------------------------------------


def build() -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    for seed in SEEDS:
        g = torch.Generator("cpu").manual_seed(seed)
        t[f"cpu/seed{seed}/draw_4x8x8"] = torch.randn(LATENT, generator=g)
        for n in NEXT_SIZES:
            t[f"cpu/seed{seed}/next_{n}"] = torch.randn([n], generator=g)
        g = torch.Generator("cpu").manual_seed(seed)
        t[f"cpu/seed{seed}/first_1x4x64x64"] = torch.randn([1, 4, 64, 64], generator=g)

        p = Philox(seed)
        t[f"nv/seed{seed}/draw_4x8x8"] = torch.from_numpy(p.randn(LATENT))
        t[f"nv/seed{seed}/next_7"] = torch.from_numpy(p.randn((7,)))
        t[f"nv/seed{seed}/next_100"] = torch.from_numpy(p.randn((100,)))
    t["nv/seed42/first_1x4x64x64"] = torch.from_numpy(Philox(42).randn((1, 4, 64, 64)))

    low = torch.randn(LATENT, generator=torch.Generator("cpu").manual_seed(7))
    other = torch.randn(LATENT, generator=torch.Generator("cpu").manual_seed(8))
    parallel = low + 0.01 * other
    t["slerp/low"], t["slerp/high_independent"], t["slerp/high_parallel"] = low, other, parallel
    for v in (0.3, 0.7):
        t[f"slerp/independent_{v}"] = slerp(v, low, other)
        t[f"slerp/parallel_{v}"] = slerp(v, low, parallel)

    for source in ("CPU", "NV"):
        for v in (0.1, 0.5, 0.9):
            rng = ImageNoise(source, LATENT, [1000], [2000], strength=v)
            t[f"variation/{source.lower()}/strength_{v}"] = rng.next()

    for name, (w, h, strength) in RESIZE_CASES.items():
        rng = ImageNoise("CPU", LATENT, [500, 501], [600, 601], strength=strength, resize_w=w, resize_h=h)
        t[f"resize/{name}/first"] = rng.next()
        t[f"resize/{name}/next"] = rng.next()

    for source in ("CPU", "NV"):
        for ensd in (0, 31337):
            rng = ImageNoise(source, LATENT, [100, 101], [], ensd=ensd)
            for k in range(3):
                t[f"batch/{source.lower()}/ensd{ensd}/draw{k}"] = rng.next()
    return t


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
    """Minimal safetensors writer with sorted keys, so the file bytes are reproducible."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = tensors[name].detach().contiguous().to(torch.float32).numpy()
        data = a.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def main():
    torch.set_num_threads(1)
    check_philox_against_a1111_docstring()
    tensors = build()
    metadata = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "generator": "reference/gen_rng_goldens.py",
    }
    write_safetensors(OUT, tensors, metadata)

    # Read back with the safetensors library and compare bit for bit.
    from safetensors.torch import load_file

    back = load_file(str(OUT))
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(back[k].view(torch.int32), v.contiguous().view(torch.int32)), k
    print(f"wrote {OUT.relative_to(ROOT)}: {len(tensors)} tensors, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
