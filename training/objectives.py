"""The training objective of every trainer of the pack: DDPM's simplified loss on epsilon (tensors only)."""
from __future__ import annotations

from typing import Optional

import torch


def eps_loss(session, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, context: torch.Tensor,
             mask: Optional[torch.Tensor] = None, reduce: bool = True) -> torch.Tensor:
    """The epsilon-prediction loss || eps - eps_theta(x_t, t, c) ||^2 (DDPM simplified objective, Ho et al. 2020
    Eq. 14; Gal et al. 2022 Eq. 2; Kumari et al. 2023 Eq. 1; Kawar et al. 2023 Sec. 3).

    session: a ``training.fit.Session`` (its ``denoise`` gives x0_hat); latents: [B, C, h, w] clean latents in model
    space; noise: [B, C, h, w] standard normal (eps); sigmas: [B] noise levels; context: [B, T, D] text
    conditioning (may carry gradient); mask: [B, 1, h, w] or None. x_t = latents + sigma * eps (the VE form) and
    eps_theta = (x_t - x0_hat) / sigma. Returns the mean over unmasked elements (reduce) or the per-example losses
    [B]."""
    dev = session.device
    x0 = latents.to(dev)
    eps = noise.to(dev)
    s = sigmas.to(dev).float()
    xt = x0 + eps * s.view(-1, 1, 1, 1)
    denoised = session.denoise(xt, s, context.to(dev))
    eps_hat = (xt - denoised.float()) / s.view(-1, 1, 1, 1)
    err = (eps_hat - eps) ** 2
    if mask is None:
        per = err.flatten(1).mean(1)
    else:
        m = mask.to(dev).float().expand_as(err)
        per = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
    return per.mean() if reduce else per
