"""Runs our own sampling loops (inversion, null-text optimisation, edit replay) inside ComfyUI's sampler.

This is the one module that touches ``comfy.samplers``. A loop is handed to ComfyUI as a custom KSAMPLER
function and driven by a ``CFGGuider``, so ComfyUI does what it always does around sampling: loads the model
(and its weight patches), applies hooks and wrappers from other packs, sets ``sample_sigmas`` in the
transformer options, processes latents in/out (SD's 0.18215 scale), and cleans up afterwards.

Inside the loop, ``Denoiser`` evaluates the model for arbitrary text embeddings:
``denoise(x, sigma, cond_emb, uncond_emb)`` batches the conditional rows (one embedding per latent row) and
the unconditional rows (one shared embedding) into one UNet call through ``comfy.samplers.calc_cond_batch``.

Conventions (ComfyUI / k-diffusion): latents are in the "VE" form x = x0 + sigma * eps (x_VP / sqrt(alpha_bar));
the model returns the denoised estimate x0; eps = (x - x0) / sigma. DDIM with eta = 0 is then exactly the
Euler step ``x_next = x0 + sigma_next * eps`` (Song et al. 2021, Eq. 12, rewritten in sigma).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

import comfy.conds
import comfy.model_management
import comfy.samplers


class Denoiser:
    """Model access for a loop running inside ComfyUI's sampler.

    guider:        the CFGGuider driving the loop (processed conds, inner model).
    model_options: the sampler's model options (with ``transformer_options['sample_sigmas']``).
    """

    def __init__(self, guider, model_options: dict, sigmas: torch.Tensor):
        self.guider = guider
        self.model = guider.inner_model
        self.model_options = model_options
        self.sigmas = sigmas
        self._template = guider.conds["positive"][0]

    @property
    def device(self):
        return self.sigmas.device

    @property
    def sigma_min(self) -> float:
        return float(self.model.model_sampling.sigma_min)

    def _conds(self, emb: torch.Tensor):
        c = dict(self._template)
        mc = dict(c["model_conds"])
        mc["c_crossattn"] = comfy.conds.CONDCrossAttn(emb.to(self.device))
        c["model_conds"] = mc
        return [c]

    def denoise(self, x: torch.Tensor, sigma: float, cond_emb: Optional[torch.Tensor],
                uncond_emb: Optional[torch.Tensor]):
        """Denoised estimates for the conditional and unconditional branches in one batched UNet call.

        x: [B, C, H, W] latents at noise level ``sigma`` (a float, VE sigma).
        cond_emb: [B, 77, D] (or [1, 77, D], repeated) text embeddings, or None to skip that branch.
        uncond_emb: [1, 77, D] (or [B, 77, D]) unconditional embedding, or None.
        Returns (cond_x0 or None, uncond_x0 or None), each [B, C, H, W].
        """
        s = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
        conds = [self._conds(cond_emb) if cond_emb is not None else None,
                 self._conds(uncond_emb) if uncond_emb is not None else None]
        out = comfy.samplers.calc_cond_batch(self.model, conds, x, s, self.model_options)
        return (out[0] if cond_emb is not None else None, out[1] if uncond_emb is not None else None)

    def cfg(self, cond_x0, uncond_x0, x, sigma: float, scale: float) -> torch.Tensor:
        """Classifier-free guidance on denoised estimates, through ComfyUI's cfg_function (so CFG and post-CFG
        functions from other nodes apply): uncond + scale * (cond - uncond)."""
        if uncond_x0 is None:
            return cond_x0
        s = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
        return comfy.samplers.cfg_function(self.model, cond_x0, uncond_x0, scale, x, s, model_options=self.model_options)


def run_loop(model_patcher, conditioning, latent: torch.Tensor, sigmas: torch.Tensor,
             loop: Callable[[Denoiser, torch.Tensor, torch.Tensor], torch.Tensor], seed: int = 0) -> torch.Tensor:
    """Runs ``loop(denoiser, x, sigmas) -> x`` inside ComfyUI's sampling machinery.

    model_patcher: a ComfyUI MODEL. conditioning: a ComfyUI CONDITIONING (its first entry is the template
    whose embedding the loop swaps; extra keys such as pooled outputs are kept). latent: [B, C, H, W] in
    ComfyUI's LATENT scale (as VAEEncode returns). sigmas: the schedule the loop walks (any order).
    Returns the loop's final latents, converted back to the LATENT scale.
    """
    guider = comfy.samplers.CFGGuider(model_patcher)
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)

    def sampler_function(model_k, x, sig, extra_args=None, callback=None, disable=None, **kw):
        den = Denoiser(model_k.inner_model, extra_args["model_options"], sig)
        return loop(den, x, sig)

    sampler = comfy.samplers.KSAMPLER(sampler_function)
    # zero noise: ComfyUI's noise_scaling then hands the loop the (processed) latent itself
    noise = torch.zeros_like(latent)
    return guider.sample(noise, latent, sampler, sigmas, seed=seed)


def ddim_step(x: torch.Tensor, x0: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0) from ``sigma`` to ``sigma_next`` given the denoised estimate x0.

    x, x0: [B, C, H, W] VE latents; sigma > 0 (float or 0-d tensor). Source: Song et al., "Denoising Diffusion
    Implicit Models", Eq. 12 with eta = 0, which in sigma form is the Euler step
    x_next = x + (x - x0) / sigma * (sigma_next - sigma) (Karras et al. 2022, Eq. 4). Written exactly as
    ComfyUI's ``sample_euler`` computes it, so a replay without edits is bit-identical to ComfyUI's sampler.
    """
    d = (x - x0) / sigma
    return x + d * (sigma_next - sigma)


def make_trainable(model_patcher) -> None:
    """Lets autograd save the UNet's weights: replaces inference-mode tensors by ordinary clones, in place.

    ComfyUI runs nodes under ``torch.inference_mode()``, so weights loaded by a loader node are inference
    tensors and any backward through the UNet fails ("Inference tensors cannot be saved for backward").
    Call inside ``torch.inference_mode(False)`` after the model is loaded. Values are unchanged; weights are
    set to ``requires_grad=False`` (only the embedding being optimised gets gradients).
    """
    dm = model_patcher.model.diffusion_model
    for module in dm.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.is_inference():
                setattr(module, name, torch.nn.Parameter(p.clone(), requires_grad=False))
            elif p.requires_grad:
                p.requires_grad_(False)
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.is_inference():
                module._buffers[name] = b.clone()


P2P_DDIM = "p2p_ddim"


def schedule_names() -> list:
    """Schedulers an inversion can use: the reference DDIM timesteps first, then ComfyUI's."""
    return [P2P_DDIM] + list(comfy.samplers.SCHEDULER_NAMES)


def replay_schedule(model_patcher, scheduler: str, steps: int) -> torch.Tensor:
    """The descending sigma schedule an inversion is replayed on, as a CPU float tensor.

    'p2p_ddim' is the reference's DDIM schedule (google/prompt-to-prompt, diffusers DDIMScheduler without
    steps_offset): timesteps t_k = k * (1000 // steps) for k = steps-1 .. 0 (980, 960, ..., 0 at 50 steps), then
    sigma 0; exactly ``steps`` steps. Other names are ComfyUI's schedulers (``comfy.samplers.calculate_sigmas``);
    some of them (ddim_uniform) may return one step more than asked.
    """
    if scheduler not in schedule_names():
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {schedule_names()}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    ms = model_patcher.get_model_object("model_sampling")
    if scheduler == P2P_DDIM:
        n_train = len(ms.sigmas)
        ts = torch.arange(steps - 1, -1, -1, dtype=torch.float32) * (n_train // steps)
        sig = ms.sigma(ts).float().cpu()
        return torch.cat([sig, sig.new_zeros(1)])
    return comfy.samplers.calculate_sigmas(ms, scheduler, steps).float().cpu()


def throw_if_interrupted() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()
