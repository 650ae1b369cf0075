#!/usr/bin/env python3
# Pinned reference, CPython 3.11.7, CPU only:
#   reference/requirements.txt (torch==2.11.0, numpy==2.4.6, safetensors==0.8.0, ...) plus
#   reference/requirements-samplers.txt (k-diffusion==0.1.1.post1, torchsde==0.2.6, scipy==1.17.1)
#   .venv/bin/pip install --no-deps -r reference/requirements-samplers.txt
"""Golden data for the Rust samplers and schedules (models/src/sampling/).

Writes tests/fixtures/golden/samplers/{toy,schedules,samplers}.safetensors (float64 unless noted):

toy.safetensors      the toy problem: a small analytic eps model, the SD1 alphas_cumprod, the
                     starting noise and a pre-drawn stream of noise tensors.
schedules.safetensors sigma arrays of every A1111 1.10 scheduler (20 steps and edge cases),
                     sigma<->t conversions, DDIM-family timesteps, LMS coefficients.
samplers.safetensors the final latent of every A1111 sampler run on the toy problem (10 steps,
                     Automatic and Karras schedulers, plus variants), the denoised estimate of the
                     last callback, the number of callbacks and of noise draws; Brownian-tree noise
                     and the SDE samplers driven by it.

Sources of truth:
  * k-diffusion 0.1.1.post1 (`k_diffusion/sampling.py` and `external.py` are identical to commit
    ab527a9a, the one A1111 1.10 uses) is imported and run as is. Its package __init__ imports
    training-only modules (kornia, clean-fid, wandb ...), so only the two modules are loaded, under
    a bare `k_diffusion` package object.
  * A1111's own code (modules/sd_schedulers.py, sd_samplers_extra.py, sd_samplers_lcm.py,
    sd_samplers_timesteps_impl.py, models/diffusion/uni_pc/uni_pc.py) cannot be imported without
    the webui runtime (modules.shared, gradio, ...). The functions below re-implement those
    formulas line by line from A1111 1.10 (each is marked "A1111:"); the k-diffusion parts they
    call are the real ones.
  * A1111 routes k-diffusion's `torch.randn_like` to its per-image generator by replacing
    `k_diffusion.sampling.torch` (TorchHijack). The same is done here with a replay of a fixed
    noise stream, so Rust can feed the identical sequence.

The toy eps model: eps(x, t) = tanh(W * x + c * (t / 1000 - 0.5)) with fixed W [1,4,8,8] and
c [1,4,1,1]; the k-diffusion denoiser is DiscreteEpsDDPMDenoiser over the float32 SD1
alphas_cumprod (A1111's CompVisDenoiser). The latent is float64 [2,4,8,8] and sigmas are handed to
the samplers as float64 (the float32 schedule values, widened), so the comparison checks the
mathematics at ~1e-12 rather than float32 rounding.

Run from the repository root: .venv/bin/python reference/gen_sampler_goldens.py
(--root DIR writes the same tree under DIR, for a determinism check).
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import types
import warnings

import numpy as np
import scipy
import scipy.stats
import torch
from safetensors.torch import save_file

torch.set_num_threads(1)
# torchsde warns when a query lies outside the tree's interval, whose ends it rounds to 6 decimals;
# A1111's sigma range always does that at sigma_min and sigma_max, and the clamp is intended.
warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
# A1111's DDIM eta formula divides a NumPy array by a tensor; NumPy 2 warns about the protocol.
warnings.filterwarnings("ignore", message="__array_wrap__", category=DeprecationWarning)

# --- k-diffusion without its package __init__ -------------------------------------------------
_spec = importlib.util.find_spec("k_diffusion")
_pkg = types.ModuleType("k_diffusion")
_pkg.__path__ = list(_spec.submodule_search_locations)
sys.modules["k_diffusion"] = _pkg
import k_diffusion.external as KE  # noqa: E402
import k_diffusion.sampling as K  # noqa: E402
import torchsde  # noqa: E402


# A1111 (sd_schedulers.py) replaces k-diffusion's to_d with one without append_dims.
def _a1111_to_d(x, sigma, denoised):
    return (x - denoised) / sigma


K.to_d = _a1111_to_d

DTYPE = torch.float64
SHAPE = (2, 4, 8, 8)
STEPS = 10
NOISE_COUNT = 24
SEEDS = [1234, 4294967294]


# --- the toy problem ---------------------------------------------------------------------------
def sd1_alphas_cumprod():
    # LDM make_beta_schedule("linear") + register_schedule, stored as float32.
    betas = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2).numpy()
    alphas = 1.0 - betas
    return torch.tensor(np.cumprod(alphas, axis=0), dtype=torch.float32)


def make_toy():
    g = torch.Generator().manual_seed(20240611)
    w = (0.15 + 0.3 * torch.rand((1, 4, 8, 8), generator=g, dtype=DTYPE))
    c = 0.8 * torch.randn((1, 4, 1, 1), generator=g, dtype=DTYPE)
    w2 = (0.1 + 0.3 * torch.rand((1, 4, 8, 8), generator=g, dtype=DTYPE))
    c2 = 0.8 * torch.randn((1, 4, 1, 1), generator=g, dtype=DTYPE)
    x_noise = torch.randn(SHAPE, generator=g, dtype=DTYPE)
    stream = torch.randn((NOISE_COUNT, *SHAPE), generator=g, dtype=DTYPE)
    return w, c, w2, c2, x_noise, stream


W, C, W2, C2, X_NOISE, STREAM = make_toy()
ALPHAS_CUMPROD = sd1_alphas_cumprod()


def toy_eps(x, t, w=W, c=C):
    t = t.to(DTYPE).reshape(-1, 1, 1, 1)
    return torch.tanh(w * x + c * (t / 1000 - 0.5))


class ToyEps(torch.nn.Module):
    def forward(self, x, t):
        return toy_eps(x, t)


MODEL_WRAP = KE.DiscreteEpsDDPMDenoiser(ToyEps(), ALPHAS_CUMPROD, quantize=False)


class Replay:
    """A1111's TorchHijack: `randn_like` hands out the next tensor of a fixed stream."""

    def __init__(self):
        self.used = 0

    def randn_like(self, x):
        n = STREAM[self.used]
        self.used += 1
        assert n.shape == x.shape
        return n.to(x)

    def __getattr__(self, item):
        return getattr(torch, item)


class Recorder:
    def __init__(self):
        self.calls = 0
        self.last = None
        self.all = []

    def __call__(self, d):
        self.calls += 1
        self.last = d["denoised"]
        self.all.append(d["denoised"].clone())


# --- A1111 schedulers (A1111: modules/sd_schedulers.py) -----------------------------------------
def a1111_scheduler(name, n, mw, sigma_min, sigma_max):
    if name == "uniform":
        return mw.get_sigmas(n)
    if name == "karras":
        return K.get_sigmas_karras(n=n, sigma_min=sigma_min, sigma_max=sigma_max)
    if name == "exponential":
        return K.get_sigmas_exponential(n=n, sigma_min=sigma_min, sigma_max=sigma_max)
    if name == "polyexponential":
        return K.get_sigmas_polyexponential(n=n, sigma_min=sigma_min, sigma_max=sigma_max)
    if name in ("sgm_uniform", "normal"):
        start = mw.sigma_to_t(torch.tensor(sigma_max))
        end = mw.sigma_to_t(torch.tensor(sigma_min))
        if name == "sgm_uniform":
            ts = torch.linspace(start, end, n + 1)[:-1]
        else:
            ts = torch.linspace(start, end, n)
        sigs = [mw.t_to_sigma(t) for t in ts]
        sigs += [0.0]
        return torch.FloatTensor(sigs)
    if name == "kl_optimal":
        alpha_min = torch.arctan(torch.tensor(sigma_min))
        alpha_max = torch.arctan(torch.tensor(sigma_max))
        step_indices = torch.arange(n + 1)
        return torch.tan(step_indices / n * alpha_min + (1.0 - step_indices / n) * alpha_max)
    if name == "align_your_steps":
        table = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
        if n != len(table):
            xs = np.linspace(0, 1, len(table))
            ys = np.log(table[::-1])
            new_xs = np.linspace(0, 1, n)
            new_ys = np.interp(new_xs, xs, ys)
            sigmas = np.append(np.exp(new_ys)[::-1].copy(), [0.0])
        else:
            sigmas = table + [0.0]
        return torch.FloatTensor(sigmas)
    if name == "simple":
        sigs = []
        ss = len(mw.sigmas) / n
        for x in range(n):
            sigs += [float(mw.sigmas[-(1 + int(x * ss))])]
        sigs += [0.0]
        return torch.FloatTensor(sigs)
    if name == "ddim":
        sigs = []
        ss = max(len(mw.sigmas) // n, 1)
        x = 1
        while x < len(mw.sigmas):
            sigs += [float(mw.sigmas[x])]
            x += ss
        sigs = sigs[::-1]
        sigs += [0.0]
        return torch.FloatTensor(sigs)
    if name == "beta":
        timesteps = 1 - np.linspace(0, 1, n)
        timesteps = [scipy.stats.beta.ppf(x, 0.6, 0.6) for x in timesteps]
        sigmas = [sigma_min + (x * (sigma_max - sigma_min)) for x in timesteps]
        sigmas += [0.0]
        return torch.FloatTensor(sigmas)
    raise ValueError(name)


SAMPLER_DEFAULT_SCHEDULER = {
    # A1111 1.10 samplers_k_diffusion options["scheduler"]
    "dpmpp_2m": "karras",
    "dpmpp_sde": "karras",
    "dpmpp_2m_sde": "exponential",
    "dpmpp_2m_sde_heun": "exponential",
    "dpmpp_2s_ancestral": "karras",
    "dpmpp_3m_sde": "exponential",
    "dpm_2": "karras",
    "dpm_2_ancestral": "karras",
    "restart": "karras",
}
DISCARD = {"dpm_2", "dpm_2_ancestral", "dpmpp_3m_sde"}


def a1111_get_sigmas(sampler, scheduler, steps, mw):
    """A1111: KDiffusionSampler.get_sigmas (no option overrides)."""
    discard = sampler in DISCARD
    n = steps + 1 if discard else steps
    name = SAMPLER_DEFAULT_SCHEDULER.get(sampler, "uniform") if scheduler == "automatic" else scheduler
    sigmas = a1111_scheduler(name, n, mw, mw.sigmas[0].item(), mw.sigmas[-1].item())
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


# --- A1111 samplers that are not in k-diffusion -------------------------------------------------
def a1111_restart(model, x, sigmas, extra_args=None, callback=None, s_noise=1.0):
    """A1111: sd_samplers_extra.restart_sampler (restart_list=None)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    step_id = 0

    def heun_step(x, old_sigma, new_sigma):
        nonlocal step_id
        denoised = model(x, old_sigma * s_in, **extra_args)
        d = K.to_d(x, old_sigma, denoised)
        if callback is not None:
            callback({"x": x, "i": step_id, "sigma": new_sigma, "sigma_hat": old_sigma, "denoised": denoised})
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, new_sigma * s_in, **extra_args)
            d_2 = K.to_d(x_2, new_sigma, denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
        step_id += 1
        return x

    steps = sigmas.shape[0] - 1
    if steps >= 20:
        restart_steps = 9
        restart_times = 1
        if steps >= 36:
            restart_steps = steps // 4
            restart_times = 2
        sigmas = K.get_sigmas_karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    else:
        restart_list = {}
    restart_list = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}

    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_list:
            restart_steps, restart_times, restart_max = restart_list[i + 1]
            min_idx = i + 1
            max_idx = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = K.get_sigmas_karras(restart_steps, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                while restart_times > 0:
                    restart_times -= 1
                    step_list.extend(zip(sigma_restart[:-1], sigma_restart[1:]))

    last_sigma = None
    for old_sigma, new_sigma in step_list:
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + K.torch.randn_like(x) * s_noise * (old_sigma ** 2 - last_sigma ** 2) ** 0.5
        x = heun_step(x, old_sigma, new_sigma)
        last_sigma = new_sigma
    return x


class LCMDenoiser(KE.DiscreteEpsDDPMDenoiser):
    """A1111: sd_samplers_lcm.LCMCompVisDenoiser."""

    def __init__(self, model, alphas_cumprod):
        timesteps = 1000
        original_timesteps = 50
        self.skip_steps = timesteps // original_timesteps
        valid = torch.zeros((original_timesteps), dtype=torch.float32)
        for x in range(original_timesteps):
            valid[original_timesteps - 1 - x] = alphas_cumprod[timesteps - 1 - x * self.skip_steps]
        super().__init__(model, valid, quantize=None)

    def get_sigmas(self, n=None):
        if n is None:
            return K.append_zero(self.sigmas.flip(0))
        start = self.sigma_to_t(self.sigma_max)
        end = self.sigma_to_t(self.sigma_min)
        t = torch.linspace(start, end, n)
        return K.append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma, quantize=None):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, timestep):
        t = torch.clamp(((timestep - (self.skip_steps - 1)) / self.skip_steps).float(), min=0, max=(len(self.sigmas) - 1))
        return super().t_to_sigma(t)

    def get_scaled_out(self, sigma, output, input):
        sigma_data = 0.5
        scaled_timestep = self.sigma_to_t(sigma).reshape(-1, 1, 1, 1) * 10.0
        c_skip = sigma_data ** 2 / (scaled_timestep ** 2 + sigma_data ** 2)
        c_out = scaled_timestep / (scaled_timestep ** 2 + sigma_data ** 2) ** 0.5
        return c_out * output + c_skip * input

    def forward(self, input, sigma, **kwargs):
        c_out, c_in = [x.reshape(-1, 1, 1, 1) for x in self.get_scalings(sigma)]
        eps = self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs)
        return self.get_scaled_out(sigma, input + eps * c_out, input)


def a1111_sample_lcm(model, x, sigmas, callback=None, noise_sampler=None):
    """A1111: sd_samplers_lcm.sample_lcm."""
    noise_sampler = K.default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            x += sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


def a1111_timesteps(steps):
    """A1111: CompVisSampler.get_timesteps."""
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


def a1111_ddim(model, x, timesteps, alphas_cumprod, callback=None, eta=0.0, cfgpp=False):
    """A1111: sd_samplers_timesteps_impl.ddim / ddim_cfgpp (the model returns (eps, eps_uncond))."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    sigmas = eta * np.sqrt((1 - alphas_prev.cpu().numpy()) / (1 - alphas.cpu()) * (1 - alphas.cpu() / alphas_prev.cpu().numpy()))
    s_in = x.new_ones((x.shape[0]))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t, e_uncond = model(x, timesteps[index].item() * s_in)
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * (e_uncond if cfgpp else e_t)
        noise = sigma_t * K.torch.randn_like(x)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


def a1111_plms(model, x, timesteps, alphas_cumprod, callback=None):
    """A1111: sd_samplers_timesteps_impl.plms."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    s_in = x.new_ones((x.shape[0]))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    old_eps = []

    def get_x_prev_and_pred_x0(e_t, index):
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev).sqrt() * e_t
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt
        return x_prev, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        ts = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = model(x, ts)
        if len(old_eps) == 0:
            x_prev, pred_x0 = get_x_prev_and_pred_x0(e_t, index)
            e_t_next = model(x_prev, t_next)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_prev, pred_x0 = get_x_prev_and_pred_x0(e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_prev
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


# --- A1111: models/diffusion/uni_pc/uni_pc.py (discrete VP schedule, multistep, predict_x0) ----
def interpolate_fn(x, xp, yp):
    N, K_ = x.shape[0], xp.shape[1]
    all_x = torch.cat([x.unsqueeze(2), xp.unsqueeze(0).repeat((N, 1, 1))], dim=2)
    sorted_all_x, x_indices = torch.sort(all_x, dim=2)
    x_idx = torch.argmin(x_indices, dim=2)
    cand_start_idx = x_idx - 1
    start_idx = torch.where(torch.eq(x_idx, 0), torch.tensor(1), torch.where(torch.eq(x_idx, K_), torch.tensor(K_ - 2), cand_start_idx))
    end_idx = torch.where(torch.eq(start_idx, cand_start_idx), start_idx + 2, start_idx + 1)
    start_x = torch.gather(sorted_all_x, dim=2, index=start_idx.unsqueeze(2)).squeeze(2)
    end_x = torch.gather(sorted_all_x, dim=2, index=end_idx.unsqueeze(2)).squeeze(2)
    start_idx2 = torch.where(torch.eq(x_idx, 0), torch.tensor(0), torch.where(torch.eq(x_idx, K_), torch.tensor(K_ - 2), cand_start_idx))
    y_positions_expanded = yp.unsqueeze(0).expand(N, -1, -1)
    start_y = torch.gather(y_positions_expanded, dim=2, index=start_idx2.unsqueeze(2)).squeeze(2)
    end_y = torch.gather(y_positions_expanded, dim=2, index=(start_idx2 + 1).unsqueeze(2)).squeeze(2)
    return start_y + (x - start_x) * (end_y - start_y) / (end_x - start_x)


class NoiseScheduleVP:
    def __init__(self, alphas_cumprod):
        log_alphas = 0.5 * torch.log(alphas_cumprod)
        self.total_N = len(log_alphas)
        self.T = 1.0
        self.t_array = torch.linspace(0.0, 1.0, self.total_N + 1)[1:].reshape((1, -1))
        self.log_alpha_array = log_alphas.reshape((1, -1))

    def marginal_log_mean_coeff(self, t):
        return interpolate_fn(t.reshape((-1, 1)), self.t_array, self.log_alpha_array).reshape((-1))

    def marginal_alpha(self, t):
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t):
        log_mean_coeff = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean_coeff))
        return log_mean_coeff - log_std

    def inverse_lambda(self, lamb):
        log_alpha = -0.5 * torch.logaddexp(torch.zeros((1,)), -2.0 * lamb)
        t = interpolate_fn(log_alpha.reshape((-1, 1)), torch.flip(self.log_alpha_array, [1]), torch.flip(self.t_array, [1]))
        return t.reshape((-1,))


def expand_dims(v, dims):
    return v[(...,) + (None,) * (dims - 1)]


class UniPC:
    def __init__(self, cfg_model, noise_schedule, variant, callback):
        self.cfg_model = cfg_model
        self.noise_schedule = noise_schedule
        self.variant = variant
        self.callback = callback
        self.index = 0

    def after_update(self, x, model_x):
        if self.callback is not None:
            self.callback({"x": x, "i": self.index, "sigma": 0, "sigma_hat": 0, "denoised": model_x if model_x is not None else x})
        self.index += 1

    def model(self, x, t):
        # A1111: UniPCCFG.model / get_model_input_time
        t_input = (t - 1.0 / self.noise_schedule.total_N) * 1000.0
        return self.cfg_model(x, t_input)

    def model_fn(self, x, t):
        noise = self.model(x, t)
        dims = x.dim()
        alpha_t, sigma_t = self.noise_schedule.marginal_alpha(t), self.noise_schedule.marginal_std(t)
        return (x - expand_dims(sigma_t, dims) * noise) / expand_dims(alpha_t, dims)

    def get_time_steps(self, skip_type, t_T, t_0, N):
        if skip_type == "logSNR":
            lambda_T = self.noise_schedule.marginal_lambda(torch.tensor(t_T))
            lambda_0 = self.noise_schedule.marginal_lambda(torch.tensor(t_0))
            logSNR_steps = torch.linspace(lambda_T.cpu().item(), lambda_0.cpu().item(), N + 1)
            return self.noise_schedule.inverse_lambda(logSNR_steps)
        if skip_type == "time_uniform":
            return torch.linspace(t_T, t_0, N + 1)
        if skip_type == "time_quadratic":
            return torch.linspace(t_T ** (1.0 / 2), t_0 ** (1.0 / 2), N + 1).pow(2)
        raise ValueError(skip_type)

    def update(self, x, model_prev_list, t_prev_list, t, order, use_corrector=True):
        if len(t.shape) == 0:
            t = t.view(-1)
        if "bh" in self.variant:
            return self.update_bh(x, model_prev_list, t_prev_list, t, order, use_corrector)
        return self.update_vary(x, model_prev_list, t_prev_list, t, order, use_corrector)

    def update_vary(self, x, model_prev_list, t_prev_list, t, order, use_corrector=True):
        # A1111's vary_coeff builds rks from [B]-shaped ratios (it only runs with batch 1);
        # the ratios are equal across the batch, so the first is taken, as in the B(h) update.
        ns = self.noise_schedule
        t_prev_0 = t_prev_list[-1]
        lambda_prev_0 = ns.marginal_lambda(t_prev_0)
        lambda_t = ns.marginal_lambda(t)
        model_prev_0 = model_prev_list[-1]
        sigma_prev_0, sigma_t = ns.marginal_std(t_prev_0), ns.marginal_std(t)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        h = lambda_t - lambda_prev_0
        rks = []
        D1s = []
        for i in range(1, order):
            t_prev_i = t_prev_list[-(i + 1)]
            model_prev_i = model_prev_list[-(i + 1)]
            lambda_prev_i = ns.marginal_lambda(t_prev_i)
            rk = ((lambda_prev_i - lambda_prev_0) / h)[0]
            rks.append(rk)
            D1s.append((model_prev_i - model_prev_0) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks)
        K_ = len(rks)
        C = []
        col = torch.ones_like(rks)
        for k in range(1, K_ + 1):
            C.append(col)
            col = col * rks / (k + 1)
        C = torch.stack(C, dim=1)
        if len(D1s) > 0:
            D1s = torch.stack(D1s, dim=1)
            A_p = torch.linalg.inv(C[:-1, :-1])
        if use_corrector:
            A_c = torch.linalg.inv(C)
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_ks = []
        factorial_k = 1
        h_phi_k = h_phi_1
        for k in range(1, K_ + 2):
            h_phi_ks.append(h_phi_k)
            h_phi_k = h_phi_k / hh - 1 / factorial_k
            factorial_k *= k + 1
        model_t = None
        dims = x.dim()
        x_t_ = expand_dims(sigma_t / sigma_prev_0, dims) * x - expand_dims(alpha_t * h_phi_1, dims) * model_prev_0
        x_t = x_t_
        if len(D1s) > 0:
            for k in range(K_ - 1):
                x_t = x_t - expand_dims(alpha_t * h_phi_ks[k + 1], dims) * torch.einsum("bkchw,k->bchw", D1s, A_p[k])
        if use_corrector:
            model_t = self.model_fn(x_t, t)
            D1_t = model_t - model_prev_0
            x_t = x_t_
            k = 0
            for k in range(K_ - 1):
                x_t = x_t - expand_dims(alpha_t * h_phi_ks[k + 1], dims) * torch.einsum("bkchw,k->bchw", D1s, A_c[k][:-1])
            x_t = x_t - expand_dims(alpha_t * h_phi_ks[K_], dims) * (D1_t * A_c[k][-1])
        return x_t, model_t

    def update_bh(self, x, model_prev_list, t_prev_list, t, order, use_corrector=True):
        ns = self.noise_schedule
        dims = x.dim()
        t_prev_0 = t_prev_list[-1]
        lambda_prev_0 = ns.marginal_lambda(t_prev_0)
        lambda_t = ns.marginal_lambda(t)
        model_prev_0 = model_prev_list[-1]
        sigma_prev_0, sigma_t = ns.marginal_std(t_prev_0), ns.marginal_std(t)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        h = lambda_t - lambda_prev_0
        rks = []
        D1s = []
        for i in range(1, order):
            t_prev_i = t_prev_list[-(i + 1)]
            model_prev_i = model_prev_list[-(i + 1)]
            lambda_prev_i = ns.marginal_lambda(t_prev_i)
            rk = ((lambda_prev_i - lambda_prev_0) / h)[0]
            rks.append(rk)
            D1s.append((model_prev_i - model_prev_0) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks)
        R = []
        b = []
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        B_h = hh if self.variant == "bh1" else torch.expm1(hh)
        for i in range(1, order + 1):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        R = torch.stack(R)
        b = torch.tensor(b)
        if len(D1s) > 0:
            D1s = torch.stack(D1s, dim=1)
            if order == 2:
                rhos_p = torch.tensor([0.5], dtype=b.dtype)
            else:
                rhos_p = torch.linalg.solve(R[:-1, :-1], b[:-1])
        else:
            D1s = None
        if use_corrector:
            if order == 1:
                rhos_c = torch.tensor([0.5], dtype=b.dtype)
            else:
                rhos_c = torch.linalg.solve(R, b)
        model_t = None
        x_t_ = expand_dims(sigma_t / sigma_prev_0, dims) * x - expand_dims(alpha_t * h_phi_1, dims) * model_prev_0
        pred_res = torch.einsum("k,bkchw->bchw", rhos_p, D1s) if D1s is not None else 0
        x_t = x_t_ - expand_dims(alpha_t * B_h, dims) * pred_res
        if use_corrector:
            model_t = self.model_fn(x_t, t)
            corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], D1s) if D1s is not None else 0
            D1_t = model_t - model_prev_0
            x_t = x_t_ - expand_dims(alpha_t * B_h, dims) * (corr_res + rhos_c[-1] * D1_t)
        return x_t, model_t

    def sample(self, x, steps, t_start=None, order=3, skip_type="time_uniform", lower_order_final=True):
        t_0 = 1.0 / self.noise_schedule.total_N
        t_T = self.noise_schedule.T if t_start is None else t_start
        assert steps >= order
        timesteps = self.get_time_steps(skip_type=skip_type, t_T=t_T, t_0=t_0, N=steps)
        vec_t = timesteps[0].expand((x.shape[0]))
        model_prev_list = [self.model_fn(x, vec_t)]
        t_prev_list = [vec_t]
        for init_order in range(1, order):
            vec_t = timesteps[init_order].expand(x.shape[0])
            x, model_x = self.update(x, model_prev_list, t_prev_list, vec_t, init_order, use_corrector=True)
            if model_x is None:
                model_x = self.model_fn(x, vec_t)
            self.after_update(x, model_x)
            model_prev_list.append(model_x)
            t_prev_list.append(vec_t)
        for step in range(order, steps + 1):
            vec_t = timesteps[step].expand(x.shape[0])
            step_order = min(order, steps + 1 - step) if lower_order_final else order
            use_corrector = step != steps
            x, model_x = self.update(x, model_prev_list, t_prev_list, vec_t, step_order, use_corrector=use_corrector)
            self.after_update(x, model_x)
            for i in range(order - 1):
                t_prev_list[i] = t_prev_list[i + 1]
                model_prev_list[i] = model_prev_list[i + 1]
            t_prev_list[-1] = vec_t
            if step < steps:
                if model_x is None:
                    model_x = self.model_fn(x, vec_t)
                model_prev_list[-1] = model_x
        return x


def a1111_unipc(model, x, timesteps, alphas_cumprod, callback, variant="bh1", skip_type="time_uniform", order=3, is_img2img=False):
    """A1111: sd_samplers_timesteps_impl.unipc."""
    ns = NoiseScheduleVP(alphas_cumprod)
    t_start = timesteps[-1] / 1000 + 1 / 1000 if is_img2img else None
    sampler = UniPC(model, ns, variant, callback)
    return sampler.sample(x, steps=len(timesteps), t_start=t_start, order=order, skip_type=skip_type, lower_order_final=True)


# --- runs -------------------------------------------------------------------------------------
def denoiser_model(x, sigma):
    return MODEL_WRAP(x, sigma)


def cfgpp_model(x, t):
    scale = 7.0 / 12.5
    e_c = toy_eps(x, t)
    e_u = toy_eps(x, t, W2, C2)
    return e_u + scale * (e_c - e_u), e_u


KDIFF = {
    "euler": lambda m, x, s, cb, ns, kw: K.sample_euler(m, x, s, callback=cb, disable=True, **kw),
    "euler_ancestral": lambda m, x, s, cb, ns, kw: K.sample_euler_ancestral(m, x, s, callback=cb, disable=True, eta=1.0, **kw),
    "heun": lambda m, x, s, cb, ns, kw: K.sample_heun(m, x, s, callback=cb, disable=True, **kw),
    "dpm_2": lambda m, x, s, cb, ns, kw: K.sample_dpm_2(m, x, s, callback=cb, disable=True, **kw),
    "dpm_2_ancestral": lambda m, x, s, cb, ns, kw: K.sample_dpm_2_ancestral(m, x, s, callback=cb, disable=True, eta=1.0, **kw),
    "lms": lambda m, x, s, cb, ns, kw: K.sample_lms(m, x, s, callback=cb, disable=True),
    "dpmpp_2s_ancestral": lambda m, x, s, cb, ns, kw: K.sample_dpmpp_2s_ancestral(m, x, s, callback=cb, disable=True, eta=1.0, **kw),
    "dpmpp_2m": lambda m, x, s, cb, ns, kw: K.sample_dpmpp_2m(m, x, s, callback=cb, disable=True),
    "dpmpp_sde": lambda m, x, s, cb, ns, kw: K.sample_dpmpp_sde(m, x, s, callback=cb, disable=True, eta=1.0, noise_sampler=ns, **kw),
    "dpmpp_2m_sde": lambda m, x, s, cb, ns, kw: K.sample_dpmpp_2m_sde(m, x, s, callback=cb, disable=True, eta=1.0, noise_sampler=ns, **kw),
    "dpmpp_2m_sde_heun": lambda m, x, s, cb, ns, kw: K.sample_dpmpp_2m_sde(m, x, s, callback=cb, disable=True, eta=1.0, noise_sampler=ns, solver_type="heun", **kw),
    "dpmpp_3m_sde": lambda m, x, s, cb, ns, kw: K.sample_dpmpp_3m_sde(m, x, s, callback=cb, disable=True, eta=1.0, noise_sampler=ns, **kw),
    "restart": lambda m, x, s, cb, ns, kw: a1111_restart(m, x, s, callback=cb),
}


def run_sigma_sampler(name, sigmas, mw=MODEL_WRAP, brownian_seeds=None, **kw):
    replay = Replay()
    K.torch = replay
    rec = Recorder()
    sig = sigmas.to(DTYPE)
    x = X_NOISE * sig[0]
    if brownian_seeds is not None:
        smin, smax = sig[sig > 0].min(), sig.max()
        ns = K.BrownianTreeNoiseSampler(x, smin, smax, seed=brownian_seeds)
    else:
        ns = lambda s, sn: replay.randn_like(x)  # noqa: E731
    if name == "lcm":
        out = a1111_sample_lcm(mw, x, sig, callback=rec, noise_sampler=ns)
    else:
        out = KDIFF[name](mw, x, sig, rec, ns, kw)
    K.torch = torch
    return out, rec, replay.used


def run_dpm_solver(name, sigmas, steps):
    """A1111 txt2img: x scaled by the schedule's first sigma, the solver gets the model's range."""
    replay = Replay()
    K.torch = replay
    rec = Recorder()
    x = X_NOISE * sigmas.to(DTYPE)[0]
    smin, smax = MODEL_WRAP.sigmas[0].item(), MODEL_WRAP.sigmas[-1].item()
    ns = lambda s, sn: replay.randn_like(x)  # noqa: E731
    if name == "dpm_fast":
        out = K.sample_dpm_fast(MODEL_WRAP, x, smin, smax, steps, callback=rec, disable=True, eta=1.0, s_noise=1.0, noise_sampler=ns)
    else:
        out = K.sample_dpm_adaptive(MODEL_WRAP, x, smin, smax, callback=rec, disable=True, eta=1.0, noise_sampler=ns)
    K.torch = torch
    return out, rec, replay.used


def run_timestep_sampler(name, steps, **kw):
    replay = Replay()
    K.torch = replay
    rec = Recorder()
    ts = a1111_timesteps(steps)
    ac = ALPHAS_CUMPROD.to(DTYPE)
    x = X_NOISE.clone()
    if name == "ddim":
        out = a1111_ddim(lambda x, t: (toy_eps(x, t), None), x, ts, ac, callback=rec, eta=kw.get("eta", 0.0))
    elif name == "ddim_cfgpp":
        out = a1111_ddim(cfgpp_model, x, ts, ac, callback=rec, eta=kw.get("eta", 0.0), cfgpp=True)
    elif name == "plms":
        out = a1111_plms(toy_eps, x, ts, ac, callback=rec)
    else:
        out = a1111_unipc(toy_eps, x, ts, ac, rec, **kw)
    K.torch = torch
    return out, rec, replay.used


def add_run(out, key, result):
    x, rec, draws = result
    out[f"{key}/x"] = x.clone().contiguous()
    out[f"{key}/denoised_last"] = rec.last.to(DTYPE).clone().contiguous()
    out[f"{key}/calls"] = torch.tensor([rec.calls], dtype=torch.int64)
    out[f"{key}/draws"] = torch.tensor([draws], dtype=torch.int64)
    return rec


def build_samplers():
    out = {}
    runs = []
    for name in list(KDIFF) + ["lcm"]:
        for sched in ("automatic", "karras"):
            if name == "lcm":
                lcm = LCMDenoiser(ToyEps(), ALPHAS_CUMPROD)
                if sched == "automatic":
                    sigmas = lcm.get_sigmas(STEPS)
                else:
                    sigmas = K.get_sigmas_karras(STEPS, lcm.sigmas[0].item(), lcm.sigmas[-1].item())
                out[f"lcm/{sched}/sigmas"] = sigmas.to(DTYPE)
                res = run_sigma_sampler("lcm", sigmas, mw=lcm)
            else:
                sigmas = a1111_get_sigmas(name, sched, STEPS, MODEL_WRAP)
                out[f"{name}/{sched}/sigmas"] = sigmas.to(DTYPE)
                res = run_sigma_sampler(name, sigmas)
            rec = add_run(out, f"{name}/{sched}", res)
            if name == "euler" and sched == "karras":
                out["euler/karras/denoised_all"] = torch.stack(rec.all).to(DTYPE)
            runs.append(f"{name}/{sched}")
    for name in ("dpm_fast", "dpm_adaptive"):
        for sched in ("automatic", "karras"):
            sigmas = a1111_get_sigmas(name, sched, STEPS, MODEL_WRAP)
            out[f"{name}/{sched}/sigmas"] = sigmas.to(DTYPE)
            add_run(out, f"{name}/{sched}", run_dpm_solver(name, sigmas, STEPS))
            runs.append(f"{name}/{sched}")

    # Variants: churn, longer Restart (with restarts), DDIM eta, UniPC options.
    churn = dict(s_churn=2.0, s_tmin=0.5, s_tmax=8.0, s_noise=1.003)
    for name in ("euler", "heun", "dpm_2"):
        sigmas = a1111_get_sigmas(name, "karras", STEPS, MODEL_WRAP)
        out[f"{name}/churn/sigmas"] = sigmas.to(DTYPE)
        add_run(out, f"{name}/churn", run_sigma_sampler(name, sigmas, **churn))
        runs.append(f"{name}/churn")
    for steps in (24, 40):
        sigmas = a1111_get_sigmas("restart", "karras", steps, MODEL_WRAP)
        out[f"restart/karras{steps}/sigmas"] = sigmas.to(DTYPE)
        add_run(out, f"restart/karras{steps}", run_sigma_sampler("restart", sigmas))
        runs.append(f"restart/karras{steps}")

    timestep_runs = {
        "ddim/default": ("ddim", STEPS, {}),
        "ddim/eta": ("ddim", STEPS, {"eta": 0.5}),
        "ddim/steps7": ("ddim", 7, {}),
        "ddim_cfgpp/default": ("ddim_cfgpp", STEPS, {}),
        "plms/default": ("plms", STEPS, {}),
        "unipc/default": ("unipc", STEPS, {}),
        "unipc/bh2": ("unipc", STEPS, {"variant": "bh2"}),
        "unipc/vary_coeff": ("unipc", STEPS, {"variant": "vary_coeff"}),
        "unipc/quadratic": ("unipc", STEPS, {"skip_type": "time_quadratic"}),
        "unipc/logsnr": ("unipc", STEPS, {"skip_type": "logSNR"}),
        "unipc/order2": ("unipc", STEPS, {"order": 2}),
        "unipc/img2img": ("unipc", STEPS, {"is_img2img": True}),
    }
    for key, (name, steps, kw) in timestep_runs.items():
        if name == "unipc" and kw.get("is_img2img"):
            # A1111 img2img: the timesteps truncated to t_enc = int(0.6 * steps).
            full = a1111_timesteps(steps)
            ts = full[: int(0.6 * steps)]
            replay = Replay()
            K.torch = replay
            rec = Recorder()
            x = X_NOISE.clone()
            res = (a1111_unipc(toy_eps, x, ts, ALPHAS_CUMPROD.to(DTYPE), rec, is_img2img=True), rec, replay.used)
            K.torch = torch
        else:
            res = run_timestep_sampler(name, steps, **kw)
        add_run(out, key, res)
        runs.append(key)

    # Brownian-tree noise: raw increments, then the SDE samplers as A1111 drives them.
    sig = a1111_get_sigmas("dpmpp_sde", "karras", STEPS, MODEL_WRAP).to(DTYPE)
    x = X_NOISE * sig[0]
    smin, smax = sig[sig > 0].min(), sig.max()
    bns = K.BrownianTreeNoiseSampler(x, smin, smax, seed=SEEDS)
    queries = []
    for i in range(len(sig) - 2):
        queries.append((sig[i].item(), sig[i + 1].item()))
        mid = math.exp(-(-math.log(sig[i].item()) + 0.5 * (-math.log(sig[i + 1].item()) + math.log(sig[i].item()))))
        queries.append((sig[i].item(), mid))
    queries.append((sig[3].item(), sig[1].item()))  # a reversed, overlapping query
    out["brownian/sigmas"] = sig
    out["brownian/queries"] = torch.tensor(queries, dtype=DTYPE)
    out["brownian/noise"] = torch.stack([bns(torch.tensor(a, dtype=DTYPE), torch.tensor(b, dtype=DTYPE)) for a, b in queries])
    for name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"):
        sigmas = a1111_get_sigmas(name, "automatic", STEPS, MODEL_WRAP)
        out[f"{name}/brownian/sigmas"] = sigmas.to(DTYPE)
        add_run(out, f"{name}/brownian", run_sigma_sampler(name, sigmas, brownian_seeds=SEEDS))
        runs.append(f"{name}/brownian")

    # Seed sequences as torchsde uses them.
    out["seedseq/root"] = torch.tensor([int(v) for v in np.random.SeedSequence(SEEDS[1], pool_size=24).generate_state(3)], dtype=torch.int64)
    out["seedseq/node"] = torch.tensor(
        [int(v) for v in np.random.SeedSequence(SEEDS[1], spawn_key=(5, 3), pool_size=24).generate_state(4)], dtype=torch.int64
    )
    return out, runs


def build_schedules():
    out = {"alphas_cumprod": ALPHAS_CUMPROD.clone()}
    mw = MODEL_WRAP
    smin, smax = mw.sigmas[0].item(), mw.sigmas[-1].item()
    names = ["uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
             "align_your_steps", "simple", "normal", "ddim", "beta"]
    cases = []
    for name in names:
        for n in (1, 7, 11, 20):
            s = a1111_scheduler(name, n, mw, smin, smax)
            out[f"{name}/{n}"] = s.to(DTYPE)
            cases.append(f"{name}/{n}")
    discard = a1111_get_sigmas("dpm_2", "automatic", 20, mw)
    out["karras_discard/20"] = discard.to(DTYPE)
    lcm = LCMDenoiser(ToyEps(), ALPHAS_CUMPROD)
    out["lcm_uniform/4"] = lcm.get_sigmas(4).to(DTYPE)
    out["lcm_uniform/20"] = lcm.get_sigmas(20).to(DTYPE)
    for steps in (7, 20, 33):
        out[f"timesteps/{steps}"] = a1111_timesteps(steps).to(torch.int64)

    g = torch.Generator().manual_seed(7)
    probe = torch.cat([
        torch.exp(torch.empty(24, dtype=DTYPE).uniform_(math.log(0.01), math.log(30.0), generator=g)),
        mw.sigmas[[0, 1, 500, 998, 999]].to(DTYPE),
    ])
    out["sigma_to_t/sigma"] = probe
    out["sigma_to_t/t"] = mw.sigma_to_t(probe).to(DTYPE)
    t_probe = torch.tensor([0.0, 0.25, 1.5, 412.625, 998.999, 999.0], dtype=DTYPE)
    out["t_to_sigma/t"] = t_probe
    out["t_to_sigma/sigma"] = mw.t_to_sigma(t_probe).to(DTYPE)

    # CompVis denoiser on its own: D(x, sigma) for two sigmas.
    sig2 = torch.tensor([14.0, 0.731], dtype=DTYPE)
    x2 = X_NOISE * 3.0
    out["denoiser/sigma"] = sig2
    out["denoiser/x"] = x2
    out["denoiser/denoised"] = mw(x2, sig2)
    out["denoiser_lcm/denoised"] = lcm(x2, sig2)

    # LMS coefficients (scipy.integrate.quad) over a Karras schedule.
    ks = K.get_sigmas_karras(STEPS, smin, smax).to(DTYPE).numpy()
    coeffs = []
    for i in range(len(ks) - 1):
        order = min(i + 1, 4)
        row = [K.linear_multistep_coeff(order, ks, i, j) for j in range(order)] + [0.0] * (4 - order)
        coeffs.append(row)
    out["lms/sigmas"] = torch.tensor(ks, dtype=DTYPE)
    out["lms/coeffs"] = torch.tensor(coeffs, dtype=DTYPE)
    out["beta_ppf/p"] = torch.tensor([0.0, 1e-9, 0.05, 0.5, 0.93, 1.0], dtype=DTYPE)
    out["beta_ppf/q"] = torch.tensor([scipy.stats.beta.ppf(p, 0.6, 0.6) for p in out["beta_ppf/p"].tolist()], dtype=DTYPE)
    return out, cases


def write(path, tensors, info):
    meta = {"info": json.dumps(info, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, path, metadata=meta)
    os.chmod(path, 0o644)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=".", help="repository root to write under")
    args = ap.parse_args()
    outdir = os.path.join(args.root, "tests", "fixtures", "golden", "samplers")
    os.makedirs(outdir, exist_ok=True)
    versions = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torchsde": torchsde.__version__ if hasattr(torchsde, "__version__") else "0.2.6",
        "k_diffusion": "0.1.1.post1",
    }
    toy = {
        "w": W, "c": C, "w2": W2, "c2": C2, "x_noise": X_NOISE, "stream": STREAM,
        "alphas_cumprod": ALPHAS_CUMPROD.to(DTYPE), "seeds": torch.tensor(SEEDS, dtype=torch.int64),
    }
    write(os.path.join(outdir, "toy.safetensors"), toy, {"versions": versions, "steps": STEPS, "cfgpp_scale": 7.0})
    schedules, cases = build_schedules()
    write(os.path.join(outdir, "schedules.safetensors"), schedules, {"versions": versions, "cases": cases})
    samplers, runs = build_samplers()
    write(os.path.join(outdir, "samplers.safetensors"), samplers, {"versions": versions, "runs": runs})
    total = sum(os.path.getsize(os.path.join(outdir, f)) for f in os.listdir(outdir))
    print(f"wrote {outdir}: {len(runs)} sampler runs, {len(cases)} schedule cases, {total} bytes")


if __name__ == "__main__":
    main()
