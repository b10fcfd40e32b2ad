"""Rectified-flow inversion and replay (Flux.1 and other flow-matching models), tensors only.

Convention (ComfyUI's CONST model sampling, Black Forest Labs' Flux code and diffusers' FlowMatchEulerDiscreteScheduler
alike): x_sigma = (1 - sigma) x0 + sigma eps, sigma from 1 (noise) to 0 (image); the network predicts the velocity
v = eps - x0 = dx/dsigma, and ComfyUI's model returns the denoised x0 = x - sigma v, so the loops read
v = (x - x0) / sigma (exactly what ComfyUI's Euler sampler computes). Sampling walks the descending schedule
sigma_0 = 1 > ... > sigma_N = 0; inversion walks it backwards, from the photo at sigma_N = 0 to sigma_0 = 1.

Methods (``FLOW_METHODS``), each used both ways (inversion and the replay that edits):

* ``rf_euler``: the plain Euler step x_next = x + (s_next - s) v(x, s) (N model evaluations). Inverting with it
  evaluates v at the lower level of each interval (the photo's side), as RF-Inversion with gamma = 0 and the
  RF-Solver code's first stage do; at sigma = 0 the velocity cannot be read from a denoised estimate, so it is
  taken at :data:`SIGMA_FLOOR` (ComfyUI's FlipSigmas uses the same 1e-4).
* ``rf_solver``: RF-Solver's second-order step (Wang et al. 2024, "Taming Rectified Flow for Inversion and
  Editing", arXiv 2411.04746, Eq. 7 with the first-order Taylor term of the velocity): v0 = v(x, s),
  x_mid = x + h/2 v0, v_mid = v(x_mid, s + h/2), x_next = x + h v0 + h^2 / 2 (v_mid - v0) / (h / 2); algebraically
  x + h v_mid, the explicit midpoint method (2N evaluations).
* ``fireflow``: FireFlow (Deng et al. 2024, "FireFlow: Fast Inversion of Rectified Flow for Image Semantic
  Editing", arXiv 2412.07517, Alg. 1): the same midpoint step, with the first stage's velocity taken from the
  previous step's midpoint velocity instead of a new evaluation (N + 1 evaluations; second order at Euler's cost).

Guidance. Flux.1-dev takes its guidance as an embedding (the conditioning's ``guidance``, 3.5 by default in ComfyUI),
so there is no unconditional branch: null-text optimisation has nothing to optimise, and what takes its place is
inverting and replaying with the same guidance and a higher-order solver (bench/bench_flow_inversion.py measures the
reconstruction error per method and step count). SD3 is sampled with real classifier-free guidance: the inversion
walks the conditional velocity only (guidance 1, as DDIM inversion does; Mokady et al. 2023 sec. 3), and the replay
takes the guided velocity v = v_u + w (v_c - v_u) of ComfyUI's cfg_function when the inversion holds unconditional
embeddings and w != 1 (``uncond`` / ``guidance_scale`` of :func:`flow_replay_loop`).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .protocol import Denoiser

FLOW_METHODS = ("rf_euler", "rf_solver", "fireflow")
#: the level at which the velocity of the clean image is read (sigma = 0 gives no velocity from x0)
SIGMA_FLOOR = 1e-4


def velocity(den: Denoiser, x: torch.Tensor, sigma: float, emb: torch.Tensor, uncond: Optional[torch.Tensor] = None,
             scale: float = 1.0) -> torch.Tensor:
    """v(x, sigma) = (x - x0) / sigma of the conditional prediction for ``emb`` ([B or 1, T, D]); sigma > 0. With an
    unconditional embedding ``uncond`` ([1, T', D]) and ``scale`` != 1, x0 is the classifier-free-guided prediction
    (den.cfg: ComfyUI's cfg_function, so the velocity is v_u + scale (v_c - v_u)); one batched model call."""
    if uncond is None or float(scale) == 1.0:
        c, _ = den.denoise(x, float(sigma), emb, None)
        return (x - c) / float(sigma)
    c, u = den.denoise(x, float(sigma), emb, uncond)
    return (x - den.cfg(c, u, x, float(sigma), float(scale))) / float(sigma)


def evaluations(method: str, steps: int) -> int:
    """Model evaluations of one pass of ``method`` over ``steps`` steps (N, 2N, N + 1)."""
    return {"rf_euler": steps, "rf_solver": 2 * steps, "fireflow": steps + 1}[_check(method)]


def _check(method: str) -> str:
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown rectified-flow method {method!r}; choose one of {FLOW_METHODS}")
    return method


def flow_walk(den: Denoiser, x: torch.Tensor, levels: list, emb, method: str,
              after_step: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None,
              progress: Optional[Callable[[int, int], None]] = None, visited: Optional[list] = None,
              uncond: Optional[Sequence] = None, scale: float = 1.0) -> torch.Tensor:
    """Integrates dx/dsigma = v from levels[0] to levels[-1] (ascending: inversion; descending: sampling) with
    ``method``. x: [B, C, H, W] in the model's latent space; emb: the conditional embedding(s) [B or 1, T, D] or a
    function step -> embedding; after_step(x, i): a hook after step i (local blend). A level of 0 where the
    velocity is read is raised to SIGMA_FLOOR. ``visited``: a list that gets x at every level (levels[0] first,
    len(levels) tensors). ``uncond`` (one unconditional embedding per step) and ``scale``: classifier-free guidance
    of every velocity (:func:`velocity`). Returns the final x."""
    _check(method)
    n = len(levels) - 1
    if visited is not None:
        visited.append(x)
    emb_at = emb if callable(emb) else (lambda i: emb)
    reuse = None
    for i in range(n):
        den.check_interrupt()
        s, s_next = float(levels[i]), float(levels[i + 1])
        h = s_next - s
        e = emb_at(i)
        u = uncond[i].to(x.device, x.dtype) if uncond else None
        s_read = max(s, SIGMA_FLOOR)
        if method == "rf_euler":
            x = x + h * velocity(den, x, s_read, e, u, scale)
        else:
            v0 = reuse if (method == "fireflow" and reuse is not None) else velocity(den, x, s_read, e, u, scale)
            s_mid = max(s + h / 2, SIGMA_FLOOR)
            v_mid = velocity(den, x + (h / 2) * v0, s_mid, e, u, scale)
            x = x + h * v_mid
            reuse = v_mid
        if after_step is not None:
            x = after_step(x, i)
        if visited is not None:
            visited.append(x)
        if progress:
            progress(i + 1, n)
    return x


def flow_inversion_loop(den: Denoiser, x0: torch.Tensor, sigmas: torch.Tensor, emb: torch.Tensor, method: str,
                        progress=None, keep_path: bool = False):
    """Inverts clean latents x0 [B, C, H, W] (model space) along the descending schedule ``sigmas`` [N + 1] (1 ... 0)
    walked backwards; returns x_T at sigmas[0], or with ``keep_path`` (x_T, the N + 1 latents visited, x0 first and
    x_T last: the path Direct Inversion puts the source row back on)."""
    levels = [float(s) for s in sigmas.flip(0)]
    visited = [] if keep_path else None
    x_T = flow_walk(den, x0, levels, emb, method, progress=progress, visited=visited)
    return (x_T, visited) if keep_path else x_T


def flow_replay_loop(den: Denoiser, x_T: torch.Tensor, sigmas: torch.Tensor, cond_embs: torch.Tensor, method: str,
                     controller=None, progress=None, source_path: Optional[torch.Tensor] = None,
                     uncond: Optional[Sequence] = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """Samples P prompts (cond_embs [P, T, D]) from one x_T [1, C, H, W] along ``sigmas`` (descending) with
    ``method``; the controller's after-step hook (local blend) runs after every step. ``source_path`` ([N + 1, C, H,
    W], the stored inversion path in the replay's order: Direct Inversion): after step i the source row (row 0) is
    set to source_path[i + 1] before the hook, i.e. its velocity over the interval is replaced by the path's own,
    (path[i + 1] - x_src) / h: the rectified-flow form of Ju et al. 2023, Algorithm 1. ``uncond`` (N unconditional
    embeddings [1, T', D], the inversion's) with ``guidance_scale`` != 1: classifier-free guidance (SD3); the
    controller edits the conditional rows only. Returns [P, C, H, W]."""
    P = cond_embs.shape[0]
    x = x_T.expand(P, *x_T.shape[1:]).clone()
    hook = controller.after_step if controller is not None else None
    if source_path is not None:
        hook = on_source_path(source_path, hook)
    return flow_walk(den, x, [float(s) for s in sigmas], cond_embs, method, hook, progress,
                     uncond=list(uncond) if uncond else None, scale=guidance_scale)


def on_source_path(path: torch.Tensor, then: Optional[Callable] = None) -> Callable:
    """An after-step hook that puts row 0 back on ``path`` ([N + 1, C, H, W], the replay's order) after step i
    (x[0] = path[i + 1]), then calls ``then`` (local blend, which then blends towards the exact source).
    Source: Ju et al. 2023 (PnP Inversion), Algorithm 1."""
    def hook(x: torch.Tensor, i: int) -> torch.Tensor:
        x = x.clone()
        x[0] = path[i + 1].to(x.device, x.dtype)
        return then(x, i) if then is not None else x
    return hook
