#!/usr/bin/env python3
# Pinned reference, CPython 3.11, CPU only:
#   reference/requirements.txt (torch==2.11.0, diffusers==0.42.1, safetensors==0.8.0, ...) plus
#   reference/requirements-training.txt (dadaptation==3.2, prodigyopt==1.1.2)
#   .venv/bin/pip install --no-deps -r reference/requirements-training.txt
"""Golden data for the Rust LoRA-training maths (models/src/train/).

Writes tests/fixtures/golden/training/{optim,schedules,loss}.safetensors:

optim.safetensors      a toy problem (four float64 parameter tensors, one of them zero-initialised
                       like a LoRA `lora_up`, a fixed tanh-MLP regression loss) optimised for 20
                       steps by the real optimizers, each stepped together with the real LR
                       scheduler as sd-scripts does (optimizer.step, then lr_scheduler.step). Per
                       run and step: the loss before the step, every parameter after it (flattened
                       and concatenated in declaration order), the optimizer's `d`, the logged
                       `d*lr` (d x get_last_lr(), what train_network.py writes to TensorBoard) and
                       the logged lr.
schedules.safetensors  the LambdaLR factor lambda(s) for s = 0..T+1 of every scheduler kohya uses,
                       from diffusers.optimization (the same functions as transformers').
loss.safetensors       kohya's loss pieces on fixed random tensors: the DDPMScheduler
                       alphas_cumprod, all_snr, min-SNR weights, noise offset, add_noise and the
                       batch loss with prior-loss weights (library/custom_train_functions.py and
                       train_network.py formulas, re-implemented line by line below: sd-scripts
                       itself is not a package).

Sources of truth: dadaptation.DAdaptAdam, prodigyopt.Prodigy, torch.optim.AdamW and
diffusers.optimization.get_*_schedule* are imported and run as they are.

Run from the repository root: .venv/bin/python reference/gen_training_goldens.py
"""

import argparse
import math
import os

import dadaptation
import prodigyopt
import torch
from diffusers import DDPMScheduler
from diffusers import optimization as sched
from safetensors.torch import save_file

STEPS = 20


# ---------------------------------------------------------------- the toy problem (float64)

def toy_problem():
    g = torch.Generator().manual_seed(1234)
    f64 = torch.float64
    x = torch.randn(6, 3, generator=g, dtype=f64)
    y = torch.randn(6, 2, generator=g, dtype=f64)
    params = [
        torch.randn(4, 3, generator=g, dtype=f64) * 0.5,  # w1
        torch.randn(4, generator=g, dtype=f64) * 0.1,  # b1
        torch.zeros(2, 4, dtype=f64),  # w2: zero like lora_up
        torch.randn(2, 3, generator=g, dtype=f64) * 0.3,  # w3
    ]
    return x, y, params


def toy_loss(x, y, p):
    w1, b1, w2, w3 = p
    out = torch.tanh(x @ w1.T + b1) @ w2.T + x @ w3.T
    return ((out - y) ** 2).mean()


def make_scheduler(opt, name, warmup, total, cycles=1, power=1.0):
    if name == "constant":
        return sched.get_constant_schedule(opt)
    if name == "constant_with_warmup":
        return sched.get_constant_schedule_with_warmup(opt, warmup)
    if name == "linear":
        return sched.get_linear_schedule_with_warmup(opt, warmup, total)
    if name == "cosine":
        # sd-scripts never passes num_cycles to cosine: transformers' default 0.5 applies.
        return sched.get_cosine_schedule_with_warmup(opt, warmup, total)
    if name == "cosine_with_restarts":
        return sched.get_cosine_with_hard_restarts_schedule_with_warmup(opt, warmup, total, num_cycles=cycles)
    if name == "polynomial":
        return sched.get_polynomial_decay_schedule_with_warmup(opt, warmup, total, power=power)
    raise ValueError(name)


RUNS = [
    # name, optimizer factory, scheduler (name, warmup, cycles, power)
    ("dadapt_guide",
     lambda p: dadaptation.DAdaptAdam(p, lr=1.0, decouple=True, use_bias_correction=True, weight_decay=0.2, d0=1e-6),
     ("cosine", 0, 1, 1.0)),
    ("dadapt_default_warmup", lambda p: dadaptation.DAdaptAdam(p, lr=1.0), ("constant_with_warmup", 3, 1, 1.0)),
    ("dadapt_coupled", lambda p: dadaptation.DAdaptAdam(p, lr=0.5, weight_decay=0.1, decouple=False),
     ("linear", 2, 1, 1.0)),
    ("prodigy_default", lambda p: prodigyopt.Prodigy(p, lr=1.0), ("constant", 0, 1, 1.0)),
    ("prodigy_wd_bc",
     lambda p: prodigyopt.Prodigy(p, lr=1.0, weight_decay=0.01, use_bias_correction=True, safeguard_warmup=True),
     ("cosine_with_restarts", 2, 2, 1.0)),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01), ("linear", 2, 1, 1.0)),
    ("adamw_poly", lambda p: torch.optim.AdamW(p, lr=1e-2), ("polynomial", 3, 1, 2.0)),
]


def optim_goldens():
    x, y, init = toy_problem()
    out = {"toy_x": x, "toy_y": y}
    for i, p in enumerate(init):
        out[f"toy_p{i}"] = p.clone()
    for name, make_opt, (sname, warmup, cycles, power) in RUNS:
        params = [p.clone().requires_grad_(True) for p in init]
        opt = make_opt(params)
        lr_sched = make_scheduler(opt, sname, warmup, STEPS, cycles, power)
        losses, flat, ds, dlrs, lrs = [], [], [], [], []
        for _ in range(STEPS):
            opt.zero_grad()
            loss = toy_loss(x, y, params)
            loss.backward()
            opt.step()
            lr_sched.step()
            losses.append(loss.item())
            flat.append(torch.cat([p.detach().flatten() for p in params]))
            d = opt.param_groups[0].get("d", 1.0)
            ds.append(d)
            lr = lr_sched.get_last_lr()[0]
            lrs.append(lr)
            dlrs.append(d * lr)
        out[f"{name}.loss"] = torch.tensor(losses, dtype=torch.float64)
        out[f"{name}.params"] = torch.stack(flat)
        out[f"{name}.d"] = torch.tensor(ds, dtype=torch.float64)
        out[f"{name}.dlr"] = torch.tensor(dlrs, dtype=torch.float64)
        out[f"{name}.lr"] = torch.tensor(lrs, dtype=torch.float64)
    return out


SCHEDULES = [
    # key, name, warmup, total, cycles, power, base lr
    ("constant", "constant", 0, 20, 1, 1.0, 1.0),
    ("constant_with_warmup", "constant_with_warmup", 5, 20, 1, 1.0, 1.0),
    ("linear", "linear", 0, 20, 1, 1.0, 1.0),
    ("linear_warmup", "linear", 4, 20, 1, 1.0, 1.0),
    ("cosine", "cosine", 0, 20, 1, 1.0, 1.0),
    ("cosine_warmup", "cosine", 3, 20, 1, 1.0, 1.0),
    ("cosine_with_restarts", "cosine_with_restarts", 0, 20, 3, 1.0, 1.0),
    ("cosine_with_restarts_warmup", "cosine_with_restarts", 2, 20, 2, 1.0, 1.0),
    ("polynomial", "polynomial", 0, 20, 1, 1.0, 1e-4),
    ("polynomial_power2_warmup", "polynomial", 3, 20, 1, 2.0, 1.0),
]


def schedule_goldens():
    out = {}
    for key, name, warmup, total, cycles, power, base in SCHEDULES:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
        s = make_scheduler(opt, name, warmup, total, cycles, power)
        lam = s.lr_lambdas[0]
        out[key] = torch.tensor([lam(i) for i in range(total + 2)], dtype=torch.float64)
    return out


# ---------------------------------------------------------------- kohya's loss pieces (float32)

def kohya_scheduler():
    # train_network.py: DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    # num_train_timesteps=1000, clip_sample=False); prepare_scheduler_for_custom_training adds all_snr.
    s = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      num_train_timesteps=1000, clip_sample=False)
    alphas_cumprod = s.alphas_cumprod
    alpha = torch.sqrt(alphas_cumprod)
    sigma = torch.sqrt(1.0 - alphas_cumprod)
    s.all_snr = (alpha / sigma) ** 2
    return s


def apply_snr_weight(loss, timesteps, s, gamma):
    # custom_train_functions.apply_snr_weight, epsilon prediction.
    snr = torch.stack([s.all_snr[t] for t in timesteps])
    min_snr_gamma = torch.minimum(snr, torch.full_like(snr, gamma))
    snr_weight = torch.div(min_snr_gamma, snr).float().to(loss.device)
    return loss * snr_weight


def loss_goldens():
    s = kohya_scheduler()
    out = {"alphas_cumprod": s.alphas_cumprod.clone(), "all_snr": s.all_snr.clone()}
    ts = torch.tensor([0, 1, 2, 10, 50, 100, 146, 147, 148, 500, 999], dtype=torch.int64)
    out["snr_timesteps"] = ts
    out["min_snr_weight_g5"] = apply_snr_weight(torch.ones(len(ts)), ts, s, 5.0)
    out["min_snr_weight_g1"] = apply_snr_weight(torch.ones(len(ts)), ts, s, 1.0)

    g = torch.Generator().manual_seed(99)
    b = 4
    latents = torch.randn(b, 4, 8, 8, generator=g)
    noise = torch.randn(b, 4, 8, 8, generator=g)
    offset_draw = torch.randn(b, 4, 1, 1, generator=g)
    pred = torch.randn(b, 4, 8, 8, generator=g)
    timesteps = torch.tensor([0, 120, 530, 999], dtype=torch.int64)
    is_reg = torch.tensor([0.0, 1.0, 0.0, 1.0])
    noise_offset, prior_loss_weight, gamma = 0.0357, 0.5, 5.0

    # train_util.apply_noise_offset: noise + offset * randn(B, C, 1, 1)
    noise_o = noise + noise_offset * offset_draw
    noisy = s.add_noise(latents, noise_o, timesteps)
    loss = torch.nn.functional.mse_loss(pred.float(), noise_o.float(), reduction="none").mean([1, 2, 3])
    loss_weights = torch.where(is_reg > 0, torch.tensor(prior_loss_weight), torch.tensor(1.0))
    per_sample = apply_snr_weight(loss * loss_weights, timesteps, s, gamma)
    out.update({
        "case_latents": latents, "case_noise": noise, "case_offset_draw": offset_draw, "case_pred": pred,
        "case_timesteps": timesteps, "case_is_reg": is_reg,
        "case_params": torch.tensor([noise_offset, prior_loss_weight, gamma], dtype=torch.float64),
        "case_noise_with_offset": noise_o, "case_noisy": noisy, "case_per_sample": per_sample,
        "case_loss": per_sample.mean().reshape(1),
    })
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=".")
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = os.path.join(args.root, "tests/fixtures/golden/training")
    os.makedirs(d, exist_ok=True)
    meta = {"dadaptation": dadaptation.__version__ if hasattr(dadaptation, "__version__") else "3.2",
            "prodigyopt": "1.1.2", "torch": torch.__version__}
    for name, tensors in (("optim", optim_goldens()), ("schedules", schedule_goldens()), ("loss", loss_goldens())):
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        save_file(tensors, os.path.join(d, f"{name}.safetensors"), metadata=meta)
        print(f"wrote {name}.safetensors ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
