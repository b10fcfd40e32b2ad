"""The prediction-difference mask (DiffEdit): where do the model's predictions under the source and the edited
prompts disagree? Tensors and the ``Denoiser`` protocol only; nothing here imports ComfyUI.

Source: Couairon et al., "DiffEdit: Diffusion-based semantic image editing with mask guidance" (ICLR 2023,
arXiv 2210.11427), sec. 3.2, step 1: noise the input to a strength of 50%, predict the noise under the reference
(source) and the query (edited) text, take the absolute difference, average it over the channels and over n = 10
noise draws, remove extreme values, rescale to [0, 1] and binarise at 0.5. The extreme values are removed as
diffusers' ``StableDiffusionDiffEditPipeline.generate_mask`` does (``mask_thresholding_ratio`` 3: the map is clamped
at 3x its mean before it is rescaled); the normalisation and threshold are :func:`attention.masks.difference_mask`.

It needs no attention maps, so it works on every architecture, MM-DiTs whose image -> text maps do not locate words
included. Every family reads the same way: the noised input x is shared by both prompts, so the difference of the
denoised estimates over sigma is the difference of the noise (eps) predictions, -(x0_edit - x0_src) / sigma, for an
eps, a v or a rectified-flow (velocity) model alike. Classifier-free guidance is left out: with one unconditional
embedding for both prompts the guided difference is the conditional one times the scale, which the rescaling removes.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..attention.masks import NOISE_DRAWS
from .protocol import Denoiser


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: float, flow: bool) -> torch.Tensor:
    """The model input at level ``sigma`` for clean latents x0 and a noise draw: x0 + sigma eps (the VE form the
    loops use for diffusion models) or (1 - sigma) x0 + sigma eps (rectified flow)."""
    return (1.0 - sigma) * x0 + sigma * noise if flow else x0 + sigma * noise


def prediction_difference_loop(den: Denoiser, x0: torch.Tensor, sigma: float, embs: torch.Tensor,
                               draws: int = NOISE_DRAWS, seed: int = 0,
                               progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """The raw DiffEdit map of each edited prompt: mean over channels and over ``draws`` noise draws of
    |eps(x_sigma, edited) - eps(x_sigma, source)|.

    x0: [1, C, H, W] the photo's latent (model scale); sigma > 0: the noise level (the bridge maps DiffEdit's
    strength 0.5 to the model's own level); embs: [P, T, D] the source prompt's embedding first, then the P - 1
    edited prompts' (the runner's ``embedding``). Noise draws come from a CPU generator seeded with ``seed``, so the
    map is the same on every device. One model call per draw (P rows), so memory is that of a P-row batch.
    Returns [P - 1, 1, H, W] float32 (not normalised). ValueError for sigma <= 0, draws < 1 or fewer than 2 prompts.
    """
    if not sigma > 0:
        raise ValueError(f"the prediction-difference mask needs a noise level above 0, got sigma {sigma}")
    if int(draws) < 1:
        raise ValueError(f"noise_draws must be at least 1, got {draws}")
    P = embs.shape[0]
    if P < 2:
        raise ValueError("the prediction-difference mask compares the source prompt with an edited prompt; "
                         "the edit has no edited prompt")
    flow = getattr(den, "prediction", "eps") == "flow"
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    total = torch.zeros((P - 1, 1) + tuple(x0.shape[-2:]), dtype=torch.float32, device=x0.device)
    for k in range(int(draws)):
        den.check_interrupt()
        eps = torch.randn(tuple(x0.shape[1:]), generator=gen, dtype=torch.float32).to(x0.device, x0.dtype)
        x = noised(x0, eps[None], float(sigma), flow).expand(P, *x0.shape[1:])
        c, _ = den.denoise(x, float(sigma), embs, None)
        diff = (c[1:] - c[:1]).float().abs() / float(sigma)
        total += diff.mean(1, keepdim=True)
        if progress:
            progress(k + 1, int(draws))
    return total / int(draws)
