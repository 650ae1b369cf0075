#!/usr/bin/env python3
"""Writes the tiny ESRGAN (RRDBNet) fixtures and goldens for models/src/upscale/.

Run with the pinned reference stack (reference/requirements.txt plus spandrel, which A1111 1.10
loads ESRGAN models through; pinned in reference/requirements-upscaler.txt):

    .venv/bin/pip install --no-deps -r reference/requirements-upscaler.txt
    .venv/bin/python reference/gen_upscaler_fixtures.py

Outputs (tests/fixtures/esrgan/, about 3 MB in all):

| file | content |
|---|---|
| `tiny-esrgan-old.pth` | old ESRGAN key layout (`model.0`, `model.1.sub.N.RDB1.conv1.0`, …), torch zip |
| `tiny-esrgan-new.pth` | the same weights in the Real-ESRGAN layout (`body.N.rdb1.conv1`, …) under `params_ema` |
| `tiny-esrgan-new.safetensors` | the new layout, flat, as safetensors |
| `golden.safetensors` | `net_input`/`net_output`: the network alone (spandrel's forward, fp32);
  `tiled_*`: A1111's `upscale_with_model` (uint8 RGB in and out, HWC) for two tile settings |

Network: 8 features, 2 RRDB blocks, growth 32 (spandrel 0.4.2 always builds 32), 3→3 channels, ×4. Weights are seeded normals (stored as fp16) scaled
small enough that the output stays mostly inside [0, 1] (so the clamp to 8 bits keeps information).

Values are seeded; torch writes a random serialization id into every `.pth`, so regenerating
changes those files' bytes but not their tensors or the goldens.

A1111 1.10's tiling is transcribed below from `modules/upscaler_utils.py` (`upscale_with_model`,
`upscale_without_tiling`) and `modules/images.py` (`split_grid`, `combine_grid`): overlapping
tiles laid out by `split_grid`, each upscaled separately (RGB flipped to BGR for the network and
back, values /255, output clamped to [0, 1], ×255 and truncated to uint8), then joined with
Pillow pastes through linear 8-bit ramps over the overlap.
"""

import math
import os

import numpy as np
import spandrel
import torch
from PIL import Image
from safetensors.torch import save_file

assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__
assert spandrel.__version__ == "0.4.2", spandrel.__version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "esrgan")

NF, NB, GC, IN_NC, OUT_NC, SCALE = 8, 2, 32, 3, 3, 4


def old_arch_state_dict(gen):
    """Random weights under the old ESRGAN names (`model.N…`)."""
    sd = {}

    def conv(name, cout, cin, std=0.08):
        sd[name + ".weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * std
        sd[name + ".bias"] = torch.randn(cout, generator=gen) * 0.02

    conv("model.0", NF, IN_NC, std=0.3)
    for b in range(NB):
        for r in range(1, 4):
            for c in range(1, 6):
                cin = NF + (c - 1) * GC
                cout = NF if c == 5 else GC
                conv(f"model.1.sub.{b}.RDB{r}.conv{c}.0", cout, cin)
    conv(f"model.1.sub.{NB}", NF, NF)
    n_up = int(math.log2(SCALE))
    for k in range(1, n_up + 1):
        conv(f"model.{3 * k}", NF, NF, std=0.1)
    conv(f"model.{3 * n_up + 2}", NF, NF, std=0.1)
    conv(f"model.{3 * n_up + 4}", OUT_NC, NF, std=0.1)
    sd[f"model.{3 * n_up + 4}.bias"] += 0.5  # centres the output inside [0, 1]
    return sd


def to_new_arch(sd):
    """The same tensors under Real-ESRGAN (basicsr) names."""
    n_up = int(math.log2(SCALE))
    fixed = {"model.0": "conv_first", f"model.1.sub.{NB}": "conv_body",
             f"model.{3 * n_up + 2}": "conv_hr", f"model.{3 * n_up + 4}": "conv_last"}
    for k in range(1, n_up + 1):
        fixed[f"model.{3 * k}"] = f"conv_up{k}"
    out = {}
    for key, t in sd.items():
        stem, leaf = key.rsplit(".", 1)
        if stem in fixed:
            out[f"{fixed[stem]}.{leaf}"] = t
            continue
        parts = stem.split(".")  # model.1.sub.B.RDBr.convC.0
        assert parts[:3] == ["model", "1", "sub"] and parts[6] == "0", key
        out[f"body.{parts[3]}.{parts[4].lower()}.{parts[5]}.{leaf}"] = t
    return out


# ---- A1111 1.10 tiling (modules/images.py, modules/upscaler_utils.py) ----

def split_grid(image, tile_w, tile_h, overlap):
    w, h = image.width, image.height
    cols = math.ceil((w - overlap) / (tile_w - overlap))
    rows = math.ceil((h - overlap) / (tile_h - overlap))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    tiles = []
    for row in range(rows):
        y = int(row * dy)
        if y + tile_h >= h:
            y = h - tile_h
        row_images = []
        for col in range(cols):
            x = int(col * dx)
            if x + tile_w >= w:
                x = w - tile_w
            row_images.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        tiles.append([y, tile_h, row_images])
    return tiles


def combine_grid(tiles, tile_h, image_w, image_h, overlap):
    def ramp(r):
        return Image.fromarray((r * 255 / overlap).astype(np.uint8), "L")

    mask_w = ramp(np.arange(overlap, dtype=np.float32).reshape((1, overlap)).repeat(tile_h, axis=0))
    mask_h = ramp(np.arange(overlap, dtype=np.float32).reshape((overlap, 1)).repeat(image_w, axis=1))
    combined = Image.new("RGB", (image_w, image_h))
    for y, h, row in tiles:
        combined_row = Image.new("RGB", (image_w, h))
        for x, w, tile in row:
            if x == 0:
                combined_row.paste(tile, (0, 0))
                continue
            combined_row.paste(tile.crop((0, 0, overlap, h)), (x, 0), mask=mask_w)
            combined_row.paste(tile.crop((overlap, 0, w, h)), (x + overlap, 0))
        if y == 0:
            combined.paste(combined_row, (0, 0))
            continue
        combined.paste(combined_row.crop((0, 0, combined_row.width, overlap)), (0, y), mask=mask_h)
        combined.paste(combined_row.crop((0, overlap, combined_row.width, h)), (0, y + overlap))
    return combined


def upscale_without_tiling(model, img):
    a = np.array(img)[:, :, ::-1]
    a = np.ascontiguousarray(np.transpose(a, (2, 0, 1))) / 255
    t = torch.from_numpy(a).float().unsqueeze(0)
    with torch.no_grad():
        out = model(t)
    out = out.squeeze().float().cpu().clamp_(0, 1).numpy()
    out = (255.0 * np.moveaxis(out, 0, 2)).astype(np.uint8)[:, :, ::-1]
    return Image.fromarray(out, "RGB")


def upscale_with_model(model, img, tile_size, tile_overlap):
    tiles = split_grid(img, tile_size, tile_size, tile_overlap)
    new_tiles = []
    for y, h, row in tiles:
        new_row = []
        for x, w, tile in row:
            out = upscale_without_tiling(model, tile)
            s = out.width // tile.width
            new_row.append([x * s, w * s, out])
        new_tiles.append([y * s, h * s, new_row])
    return combine_grid(new_tiles, tile_size * s, img.width * s, img.height * s, tile_overlap * s)


def test_image(w, h, seed):
    """A smooth colour pattern with some noise, so tiles differ and seams would show."""
    gen = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    g = 255 * xx / max(w - 1, 1)
    b = 255 * yy / max(h - 1, 1)
    a = np.stack([r, g, b], axis=-1) + gen.normal(0, 12, (h, w, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(20240801)
    # Stored as fp16 (real community files often are) to keep the fixtures small; spandrel and
    # the Rust loader both compute in fp32 from the same upcast values.
    old = {k: v.half() for k, v in old_arch_state_dict(gen).items()}
    new = to_new_arch(old)
    torch.save(old, os.path.join(OUT, "tiny-esrgan-old.pth"))
    torch.save({"params_ema": new}, os.path.join(OUT, "tiny-esrgan-new.pth"))
    save_file({k: v.contiguous() for k, v in new.items()}, os.path.join(OUT, "tiny-esrgan-new.safetensors"))

    loader = spandrel.ModelLoader()
    models = [loader.load_from_file(os.path.join(OUT, f)) for f in
              ("tiny-esrgan-old.pth", "tiny-esrgan-new.pth", "tiny-esrgan-new.safetensors")]
    for m in models:
        assert m.architecture.id == "ESRGAN", m.architecture.id
        assert m.scale == SCALE, m.scale
        m.model.eval()

    net_input = torch.rand(1, 3, 12, 10, generator=gen)
    with torch.no_grad():
        outs = [m.model(net_input) for m in models]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    clamped = ((outs[0] < 0) | (outs[0] > 1)).float().mean().item()
    assert clamped < 0.02, f"{clamped:.2%} of the output is outside [0, 1]"
    assert outs[0].std().item() > 0.05, "the output barely depends on the input"

    golden = {"net_input": net_input, "net_output": outs[0]}
    model = models[0].model
    # (name, image size, tile, overlap): several overlapping tiles in both directions, and
    # A1111's defaults on an image smaller than one tile (the tile then reaches outside the image,
    # where Pillow's crop reads black).
    for name, (w, h), tile, overlap in [("tiled_small", (70, 45), 32, 8), ("tiled_default", (40, 28), 192, 8)]:
        img = test_image(w, h, seed=len(name))
        out = upscale_with_model(model, Image.fromarray(img, "RGB"), tile, overlap)
        golden[f"{name}_input"] = torch.from_numpy(img.copy())
        golden[f"{name}_output"] = torch.from_numpy(np.array(out))
        golden[f"{name}_tile"] = torch.tensor([tile, overlap], dtype=torch.int64)
    save_file(golden, os.path.join(OUT, "golden.safetensors"))
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
