"""What the pack's sampling loops need from a host, as two small protocols (comfy_bridge/sampling.py implements
both on ComfyUI; any object with these methods works, e.g. a test double around a bare UNet).

Conventions (ComfyUI / k-diffusion): latents are in the "VE" form x = x0 + sigma * eps (x_VP / sqrt(alpha_bar));
the model returns the denoised estimate x0; eps = (x - x0) / sigma.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol, Tuple

import torch

Loop = Callable[["Denoiser", torch.Tensor, torch.Tensor], torch.Tensor]


class Denoiser(Protocol):
    """Model access inside a running loop.

    ``denoise(x, sigma, cond_emb, uncond_emb)`` evaluates the conditional rows (one text embedding per latent
    row, [B, T, D] or [1, T, D] repeated) and the unconditional rows (one shared embedding [1, T, D] or one per row)
    in one batched model call and returns ``(cond_x0 or None, uncond_x0 or None)``, each [B, C, H, W]; a branch
    whose embedding is None is skipped. ``cfg(cond_x0, uncond_x0, x, sigma, scale)`` is classifier-free guidance
    on denoised estimates, uncond + scale * (cond - uncond) (the host's CFG hooks apply). ``sigma_min`` is the
    model's smallest noise level. ``enable_grad()`` lets autograd run through the model (its weights get no
    gradient); ``with_kernel(kernel)`` gives the same access with another attention kernel;
    ``check_interrupt()`` raises the host's interrupt exception when the user stopped the run."""

    sigma_min: float
    #: what the model predicts: "eps" (noise) or "v" (velocity, SD 2.x 768-v); the loops work on denoised
    #: estimates either way, and DDIM inversion reads v's noise as diffusers' DDIMInverseScheduler does
    prediction: str = "eps"
    #: 1 when every embedding ends with one row holding the model's pooled text vector (SDXL: see the runner's
    #: ``embedding``), else 0
    pooled_rows: int = 0

    @property
    def device(self) -> torch.device: ...

    def denoise(self, x: torch.Tensor, sigma: float, cond_emb: Optional[torch.Tensor],
                uncond_emb: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]: ...

    def cfg(self, cond_x0: torch.Tensor, uncond_x0: Optional[torch.Tensor], x: torch.Tensor, sigma: float,
            scale: float) -> torch.Tensor: ...

    def enable_grad(self) -> None: ...

    def with_kernel(self, kernel: str) -> "Denoiser":
        """The same model access with another attention kernel ("host": the host's; "sdpa": PyTorch's fused
        scaled_dot_product_attention, fast in forward and backward); the numbers agree to float rounding."""
        ...

    def check_interrupt(self) -> None: ...


class LoopRunner(Protocol):
    """Runs ``loop(denoiser, x, sigmas) -> x`` inside the host's sampler.

    ``run(loop, latent, sigmas)``: latent [B, C, H, W] in the host's LATENT scale (what VAE Encode returns); the
    loop sees it in the model's scale and returns the final latents in the model's scale; ``run`` returns them in
    the LATENT scale. ``sigmas`` is the schedule the loop walks (any order).

    ``embedding(cond)`` (optional; default ``cond[0][0]``): the tensor [1, T, D] the loops use for a prompt's
    conditioning, [1, T + 1, D] where the model also takes a pooled vector (the last row; the denoiser splits it
    off again)."""

    def run(self, loop: Loop, latent: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor: ...


def embedding_of(runner) -> Callable:
    """The runner's ``embedding`` function, or the plain token embeddings ``cond[0][0]``."""
    fn = getattr(runner, "embedding", None)
    return fn if callable(fn) else (lambda cond: cond[0][0])
