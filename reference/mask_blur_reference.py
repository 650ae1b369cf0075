#!/usr/bin/env python3
"""What `cv2.GaussianBlur` returns for A1111 1.10's inpainting mask blur, byte for byte.

A1111 (processing.py, StableDiffusionProcessingImg2Img.init) blurs the uint8 `L` mask with
`cv2.GaussianBlur(mask, (k, 1), mask_blur_x)` and then `cv2.GaussianBlur(mask, (1, k), mask_blur_y)`,
`k = 2 * int(2.5 * sigma + 0.5) + 1`, OpenCV's default border (reflect-101).  OpenCV runs 8-bit
images through a fixed-point path, so the bytes depend on its kernel quantisation; this file pins
them for the Rust port (daemon/src/images.rs, checked in tests/tests/pipeline_a1111.rs).

    .venv/bin/python reference/mask_blur_reference.py           # write the golden
    .venv/bin/python reference/mask_blur_reference.py --check   # recompute and compare

Writes tests/fixtures/golden/a1111/cv2_mask_blur.safetensors (uint8 tensors, about 60 KB):

    input [24, 40]                   random picture: half binary 0/255 pixels, half any level
    h{s} / v{s} [24, 40]             input blurred along x / along y with sigma s, s in SIGMAS
    edge_input [3, 5]                an image smaller than every kernel (repeated reflection)
    edge_h{s} / edge_v{s} [3, 5]
    mask_input [32, 32]              tests/fixtures/images/mask_32x32.png
    mask_x{a}_y{b} [32, 32]          the mask through A1111's two passes (x first, then y)

Requirements: reference/requirements.txt and reference/requirements-a1111.txt
(opencv-python-headless==5.0.0.93, numpy==2.4.6, safetensors==0.8.0, pillow).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/golden/a1111/cv2_mask_blur.safetensors"
MASK = ROOT / "tests/fixtures/images/mask_32x32.png"
SIGMAS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 20, 25, 32, 48, 64]
EDGE_SIGMAS = [1, 3, 64]
MASK_PASSES = [(4, 4), (8, 2), (0, 6), (3, 0), (16, 16)]


def blur_x(img: np.ndarray, sigma: int) -> np.ndarray:
    """A1111's horizontal pass (skipped for sigma 0, as A1111 skips it)."""
    if sigma <= 0:
        return img
    k = 2 * int(2.5 * sigma + 0.5) + 1
    return cv2.GaussianBlur(img, (k, 1), sigma)


def blur_y(img: np.ndarray, sigma: int) -> np.ndarray:
    if sigma <= 0:
        return img
    k = 2 * int(2.5 * sigma + 0.5) + 1
    return cv2.GaussianBlur(img, (1, k), sigma)


def build() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261125)
    levels = rng.integers(0, 256, (24, 40), dtype=np.uint8)
    binary = np.where(rng.integers(0, 2, (24, 40)) == 1, 255, 0).astype(np.uint8)
    pick = rng.integers(0, 2, (24, 40)) == 1
    img = np.ascontiguousarray(np.where(pick, binary, levels).astype(np.uint8))
    out = {"input": img}
    for s in SIGMAS:
        out[f"h{s}"] = blur_x(img, s)
        out[f"v{s}"] = blur_y(img, s)
    edge = rng.integers(0, 256, (3, 5), dtype=np.uint8)
    out["edge_input"] = edge
    for s in EDGE_SIGMAS:
        out[f"edge_h{s}"] = blur_x(edge, s)
        out[f"edge_v{s}"] = blur_y(edge, s)
    mask = np.array(Image.open(MASK).convert("L"))
    out["mask_input"] = mask
    for a, b in MASK_PASSES:
        out[f"mask_x{a}_y{b}"] = blur_y(blur_x(mask, a), b)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="recompute and compare with the file on disk")
    args = ap.parse_args()
    tensors = build()
    meta = {
        "sigmas": json.dumps(SIGMAS),
        "edge_sigmas": json.dumps(EDGE_SIGMAS),
        "mask_passes": json.dumps(MASK_PASSES),
        "versions": json.dumps({"cv2": cv2.__version__, "numpy": np.__version__}),
    }
    if args.check:
        old = load_file(str(OUT))
        same = sorted(old) == sorted(tensors) and all(np.array_equal(old[k], tensors[k]) for k in tensors)
        print(f"{'ok  ' if same else 'DIFF'} {OUT.relative_to(ROOT)}", file=sys.stderr)
        if not same:
            raise SystemExit(1)
        return
    save_file(tensors, str(OUT), metadata=meta)
    print(f"{OUT.relative_to(ROOT)}: {len(tensors)} tensors, {OUT.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
