"""Benchmark: seconds per LoRA training step, diffusiond's TrainSession against a PyTorch loop on
the same model, in the same run.

Both sides load one diffusers folder (so the weights are the very same tensors):

  tiny   tests/fixtures/tiny/tiny-sd15-diffusers (the SD1.5-topology test fixture)
  sd15   full-size SD1.5 (diffusers' SD1.5 configs, random weights from torch.manual_seed(0)),
         written once to target/bench-train/sd15-diffusers (about 4 GB) and reused

The PyTorch loop is kohya train_network.py's step in plain diffusers + transformers + peft:
LoRA (peft, rank/alpha as ours, kaiming-uniform down and zero up) on the text encoder's
q/k/v/out_proj and fc1/fc2 and on every Linear and 1x1 conv inside the UNet's transformer blocks
(training.md section 4; the target count is checked against ours), text encoder with clip skip 2
(hidden_states[-2] + final_layer_norm), DDPM noising with noise offset 0.0357, min-SNR-5 weighted
MSE, backward, clip_grad_norm_(1.0), AdamW(lr 1e-4, weight decay 0.01). fp32 by default; with
--mixed-precision bf16 both sides train kohya's way (training.md 3.5): frozen weights in bf16, LoRA
parameters in fp32, the forward under torch.autocast(bf16) here, fp32 loss. With
--gradient-checkpointing the UNet checkpoints its blocks here (diffusers'
enable_gradient_checkpointing) and its segments on our side; the text encoder is not checkpointed
on either side. Latents are cached on both sides, so neither times the VAE. Step
time is the median after warm-up (the fastest step is printed too: on a busy machine it is the
least disturbed); below 1 the ratio diffusiond / PyTorch means diffusiond is faster. Peak
memory: resident set of each process over the whole run and over the training steps alone (the
peak is reset through /proc/self/clear_refs after loading, so the load's peak, which memory-mapped
files inflate, does not hide the steps') and, on CUDA, the caching allocator's peak allocated bytes
over the whole process (torch.cuda.max_memory_allocated; diffusiond reads the same statistic
through its libtorch shim, and its figure includes the VAE that cached the latents).

Usage:
  .venv/bin/python reference/bench_train.py --ours target/release/examples/bench_train
      [--device cpu|cuda] [--runs tiny:64:3,sd15:256:1] [--rank 128] [--alpha 1]
      [--warmup 2] [--iters 5] [--threads N] [--mixed-precision no|bf16] [--gradient-checkpointing]
Default runs: CPU tiny:64:3,sd15:256:1; CUDA sd15:512:3,sd15:768:3.
Pinned stack: reference/requirements.txt (torch==2.11.0) + reference/requirements-training.txt (peft).
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import peft
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel
from sd15_configs import CLIP, UNET, VAE

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests/fixtures/tiny/tiny-sd15-diffusers"
SD15 = ROOT / "target/bench-train/sd15-diffusers"


# kohya's targets (training.md section 4): inside Transformer2DModel every Linear and 1x1 conv;
# in the text encoder the attention projections and the MLP.
UNET_TARGETS = (r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\."
                r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))")
TE_TARGETS = r".*encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"


def ensure_sd15():
    """Writes the full-size random-weight SD1.5 folder once."""
    if (SD15 / "unet/diffusion_pytorch_model.safetensors").is_file():
        return
    print(f"writing {SD15} (once)", flush=True)
    torch.manual_seed(0)
    SD15.mkdir(parents=True, exist_ok=True)
    UNet2DConditionModel(**UNET).save_pretrained(SD15 / "unet")
    AutoencoderKL(**VAE).save_pretrained(SD15 / "vae")
    CLIPTextModel(CLIPTextConfig(**CLIP)).save_pretrained(SD15 / "text_encoder")
    (SD15 / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
    }))


def add_lora(model, targets, rank, alpha):
    """Freezes `model` and gives it trainable peft LoRA adapters; returns (params, module count)."""
    model.requires_grad_(False)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True)
    peft.inject_adapter_in_model(config, model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    count = sum(1 for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    return params, count


def ours_env(device):
    """The environment of the diffusiond binary. Its link line names libtorch_cpu but not
    libtorch_cuda (the linker drops it as unreferenced), and without that library loaded libtorch
    sees no CUDA device; on CUDA it is preloaded from this torch, the same libtorch build."""
    env = dict(os.environ)
    if device.startswith("cuda"):
        lib = Path(torch.__file__).parent / "lib"
        env["LD_PRELOAD"] = " ".join(filter(None, [str(lib / "libtorch_cuda.so"), env.get("LD_PRELOAD")]))
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


def run_json(cmd, env):
    """Runs one side and returns the JSON line it prints last; its stderr is shown on failure."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def vm_hwm_mib():
    """VmHWM, which (unlike ru_maxrss) clear_refs can reset."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration):
        return None


def reset_peak_rss():
    """Resets VmHWM to the current resident set (Linux clear_refs 5): the steps' peak alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def pytorch_run(folder, device, resolution, batch, rank, alpha, warmup, iters, bf16, checkpointing):
    torch.manual_seed(1234)
    weight_dtype = torch.bfloat16 if bf16 else torch.float32
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32).to(device)
    te = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32).to(device)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    vae_cfg = AutoencoderKL.load_config(folder / "vae")
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    unet.train()
    te.train()
    te_params, te_count = add_lora(te, TE_TARGETS, rank, alpha)
    unet_params, unet_count = add_lora(unet, UNET_TARGETS, rank, alpha)
    # kohya: the frozen weights in the mixed-precision dtype, the LoRA parameters stay fp32.
    for model in (unet, te):
        for name, p in model.named_parameters():
            if "lora_" not in name:
                p.data = p.data.to(weight_dtype)
    params = te_params + unet_params
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
    opt = torch.optim.AdamW([{"params": te_params}, {"params": unet_params}], lr=1e-4, weight_decay=0.01)

    # Cached latents (scaled) and token ids: BOS, a few tokens, EOS padding, as a caption encodes.
    h = w = resolution // factor
    latents = torch.randn(batch, 4, h, w, device=device) * 0.18215
    ids = torch.full((batch, 77), 49407, dtype=torch.long, device=device)
    ids[:, 0] = 49406
    ids[:, 1:6] = torch.tensor([1125, 539, 18447, 1449, 786])
    # kohya's DDPMScheduler: scaled_linear betas 0.00085..0.012 over 1000 steps.
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, 0).to(device)
    all_snr = alphas_cumprod / (1.0 - alphas_cumprod)
    te_model = getattr(te, "text_model", te)

    def step():
        noise = torch.randn_like(latents)
        noise = noise + 0.0357 * torch.randn(batch, 4, 1, 1, device=device)
        t = torch.randint(0, 1000, (batch,), device=device)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1.0 - a).sqrt() * noise
        with autocast:
            hidden = te(ids, output_hidden_states=True).hidden_states[-2]
            context = te_model.final_layer_norm(hidden)
            pred = unet(noisy, t, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="none").mean([1, 2, 3])
        snr = all_snr[t]
        loss = (loss * torch.clamp(5.0 / snr, max=1.0)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    reset = reset_peak_rss()
    for _ in range(warmup):
        step()
    sync()
    times = []
    loss = math.nan
    for _ in range(iters):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    out = {
        "impl": "pytorch", "threads": torch.get_num_threads(), "modules": te_count + unet_count,
        "trainable_params": sum(p.numel() for p in params), "step_s": statistics.median(times),
        "steps_s": times, "last_loss": loss, "peak_rss_mib": peak_rss_mib(),
        "peak_rss_steps_mib": vm_hwm_mib() if reset else None, "peak_cuda_mib": None,
    }
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ours", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", default=None, help="model:resolution:batch,... (model tiny or sd15)")
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.child:
        # One PyTorch run in its own process, so its peak memory is its own.
        name, res, batch = a.child.split(":")
        folder = {"tiny": TINY, "sd15": SD15}[name]
        ref = pytorch_run(folder, a.device, int(res), int(batch), a.rank, a.alpha, a.warmup, a.iters,
                          a.mixed_precision == "bf16", a.gradient_checkpointing)
        print(json.dumps(ref))
        return
    runs = a.runs or ("sd15:512:3,sd15:768:3" if a.device.startswith("cuda") else "tiny:64:3,sd15:256:1")
    print(f"device {a.device}, torch {torch.__version__}, peft {peft.__version__}, "
          f"rank {a.rank}, alpha {a.alpha}, warm-up {a.warmup}, timed steps {a.iters}, "
          f"mixed precision {a.mixed_precision}, gradient checkpointing {a.gradient_checkpointing}", flush=True)
    mode = ["--mixed-precision", a.mixed_precision] + (["--gradient-checkpointing"] if a.gradient_checkpointing else [])
    rows = []
    for run in runs.split(","):
        name, res, batch = run.split(":")
        res, batch = int(res), int(batch)
        if name == "sd15":
            ensure_sd15()
        folder = {"tiny": TINY, "sd15": SD15}[name]
        cmd = [a.ours, "--model", str(folder), "--device", a.device, "--resolution", str(res),
               "--batch", str(batch), "--rank", str(a.rank), "--alpha", str(a.alpha),
               "--warmup", str(a.warmup), "--iters", str(a.iters)] + mode
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        ours = run_json(cmd, ours_env(a.device))
        child = [sys.executable, __file__, "--ours", a.ours, "--child", run, "--device", a.device,
                 "--rank", str(a.rank), "--alpha", str(a.alpha), "--warmup", str(a.warmup),
                 "--iters", str(a.iters)] + mode + (["--threads", str(a.threads)] if a.threads else [])
        ref = run_json(child, None)
        print(json.dumps({"run": run, **ours}), flush=True)
        print(json.dumps({"run": run, **ref}), flush=True)
        if ours["modules"] != ref["modules"]:
            raise SystemExit(f"{run}: LoRA targets differ: diffusiond {ours['modules']}, peft {ref['modules']}")
        if ours["trainable_params"] != ref["trainable_params"]:
            raise SystemExit(f"{run}: trainable parameters differ: diffusiond {ours['trainable_params']}, "
                             f"peft {ref['trainable_params']}")
        rows.append((run, ours, ref))
    print()
    for run, ours, ref in rows:
        mib = lambda v: "n/a" if v is None else f"{v:.0f} MiB"
        cuda = (f", peak CUDA allocated diffusiond {mib(ours['peak_cuda_mib'])}, pytorch {mib(ref['peak_cuda_mib'])}"
                if a.device.startswith("cuda") else "")
        # The fastest step beside the median: on a shared machine it is the least disturbed one.
        fast_ours, fast_ref = min(ours["steps_s"]), min(ref["steps_s"])
        print(f"{run}: s/step median diffusiond {ours['step_s']:.4f}, pytorch {ref['step_s']:.4f}, "
              f"ratio {ours['step_s'] / ref['step_s']:.3f}; fastest {fast_ours:.4f} / {fast_ref:.4f}, "
              f"ratio {fast_ours / fast_ref:.3f}; "
              f"peak RSS diffusiond {ours['peak_rss_mib']:.0f} MiB, pytorch {ref['peak_rss_mib']:.0f} MiB; "
              f"during the steps {mib(ours.get('peak_rss_steps_mib'))} / {mib(ref.get('peak_rss_steps_mib'))}{cuda}")


if __name__ == "__main__":
    main()
