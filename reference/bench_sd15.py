"""Benchmark: diffusiond against diffusers on the same machine, in the same run.

One full-size SD1.5 UNet step (batch 2, 64x64 latent, 77-token context) and one VAE decode
(64x64 latent -> 512x512), both on random weights built from the real SD1.5 configs (nothing is
downloaded). Prints each implementation's median seconds and the ratio diffusiond / diffusers
(below 1 means diffusiond is faster).

Usage: .venv/bin/python reference/bench_sd15.py --ours target/release/examples/bench_sd15 [--device cpu|cuda] [--iters N]
Pinned stack: reference/requirements.txt (torch==2.11.0).
"""

import argparse
import json
import statistics
import subprocess
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from sd15_configs import UNET, VAE


def timed(fn, iters, device):
    fn()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def diffusers_run(device, iters):
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET).to(device, dtype).eval()
    vae = AutoencoderKL(**VAE).to(device, dtype).eval()
    x = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)
    t = torch.tensor([999.0, 999.0], device=device)
    ctx = torch.randn(2, 77, 768, device=device, dtype=dtype)
    z = torch.randn(1, 4, 64, 64, device=device, dtype=dtype)
    with torch.no_grad():
        unet_s = timed(lambda: unet(x, t, encoder_hidden_states=ctx).sample, iters, device)
        vae_s = timed(lambda: vae.decode(z).sample, iters, device)
    return {"impl": "diffusers", "unet_step_s": unet_s, "vae_decode_s": vae_s, "threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ours", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=3)
    a = p.parse_args()
    out = subprocess.run([a.ours, "--device", a.device, "--iters", str(a.iters)], check=True, capture_output=True, text=True)
    ours = json.loads(out.stdout.strip().splitlines()[-1])
    ref = diffusers_run(a.device, a.iters)
    print(json.dumps(ours))
    print(json.dumps(ref))
    print(f"device {a.device}, torch {torch.__version__}")
    for k in ("unet_step_s", "vae_decode_s"):
        print(f"{k}: diffusiond {ours[k]:.4f} s, diffusers {ref[k]:.4f} s, ratio {ours[k] / ref[k]:.3f}")


if __name__ == "__main__":
    main()
