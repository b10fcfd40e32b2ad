"""Deterministic DDIM in sigma form, and the reference DDIM timesteps (tensors only)."""
from __future__ import annotations

import torch


def ddim_step(x: torch.Tensor, x0: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0) from ``sigma`` to ``sigma_next`` given the denoised estimate x0.

    x, x0: [B, C, H, W] VE latents; sigma > 0 (float or 0-d tensor). Source: Song et al., "Denoising Diffusion
    Implicit Models", Eq. 12 with eta = 0, which in sigma form is the Euler step
    x_next = x + (x - x0) / sigma * (sigma_next - sigma) (Karras et al. 2022, Eq. 4). Written exactly as
    ComfyUI's ``sample_euler`` computes it, so a replay without edits is bit-identical to ComfyUI's sampler.
    """
    d = (x - x0) / sigma
    return x + d * (sigma_next - sigma)


def to_vp(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """VE latent -> VP latent (x * sqrt(alpha_bar) = x / sqrt(1 + sigma^2)); the reference measures the null-text
    loss in VP space."""
    return x / (1.0 + float(sigma) ** 2) ** 0.5


def reference_ddim_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """The reference's DDIM timesteps, descending, as float32 [steps]: t_k = k * (T // steps) for k = steps-1 .. 0
    (980, 960, ..., 0 at 50 steps and T = 1000): google/prompt-to-prompt, diffusers DDIMScheduler without
    steps_offset. The replay schedule is these timesteps' sigmas followed by sigma 0. ValueError for steps < 1."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.arange(steps - 1, -1, -1, dtype=torch.float32) * (int(num_train_timesteps) // steps)
