"""Replays an inversion with the source prompt and edited prompts as one batch (Prompt-to-Prompt editing).

Row 0 of the batch is the source prompt (its output is the reconstruction), rows 1..P-1 the edited prompts.
Every row starts from the inversion's x_T and uses, at step i, the inversion's unconditional embedding for
step i (null-text embeddings are shared by all prompts, as in the reference null_text_w_ptp.ipynb
text2image_ldm_stable). The attention controller is installed by the runner (comfy_bridge.sampling.runner(...,
controller=...)); this loop only applies its after-step hook (local blend). Nothing here imports ComfyUI.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..attention.controllers import P2PController
from .core import Inversion
from .ddim import ddim_step
from .flow import flow_replay_loop, on_source_path
from .protocol import Denoiser, LoopRunner, embedding_of


def replay_loop(den: Denoiser, x_T: torch.Tensor, sigmas: torch.Tensor, cond_embs: torch.Tensor, uncond: list,
                guidance_scale: float, controller: Optional[P2PController] = None,
                progress: Optional[Callable[[int, int], None]] = None,
                source_path: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CFG DDIM sampling of P prompts from one x_T.

    x_T: [1, C, H, W] (model scale); sigmas: [N + 1] descending; cond_embs: [P, T, D]; uncond: N embeddings
    [1, T, D] (one per step). ``source_path`` (Direct Inversion, [N + 1, C, H, W] in the replay's order): after
    each step the source row is put back on the inversion trajectory, x[0] = source_path[i + 1], before local
    blend (Ju et al. 2023, Algorithm 1: z^src_{t-1} += z*_{t-1} - z^src_{t-1}; the reference adds that offset,
    computed in a separate pass, at the same place); the edited rows are left to the controller. Returns
    [P, C, H, W].
    """
    P = cond_embs.shape[0]
    N = len(sigmas) - 1
    x = x_T.expand(P, *x_T.shape[1:]).clone()
    hook = controller.after_step if controller is not None else None
    if source_path is not None:
        hook = on_source_path(source_path, hook)
    for i in range(N):
        den.check_interrupt()
        s, s_next = sigmas[i], sigmas[i + 1]
        u = uncond[i].to(x.device, x.dtype) if guidance_scale != 1.0 else None
        c, u = den.denoise(x, float(s), cond_embs, u)
        x = ddim_step(x, den.cfg(c, u, x, float(s), guidance_scale), s, s_next)
        if hook is not None:
            x = hook(x, i)
        if progress:
            progress(i + 1, N)
    return x


def prompt_embeddings(inversion: Inversion, target_conds: list, emb_of: Callable = lambda c: c[0][0]) -> torch.Tensor:
    """[P, T, D]: the source prompt's embedding, then each edited prompt's (``emb_of``: the runner's embedding
    function, see inversion.protocol.LoopRunner). ValueError when they differ in shape (a prompt over 75 tokens
    encodes to more than one 77-token chunk), or from the inversion's null-text embeddings (another model)."""
    embs = [emb_of(inversion.source_cond)] + [emb_of(c) for c in target_conds]
    widths = {tuple(e.shape[1:]) for e in embs}
    if len(widths) != 1:
        raise ValueError(f"the prompts encode to different shapes {sorted(widths)}; keep every prompt under "
                         "75 tokens so each is one 77-token chunk")
    if inversion.uncond and inversion.uncond[0].shape[-1] != embs[0].shape[-1]:
        raise ValueError(f"this inversion's embeddings are {inversion.uncond[0].shape[-1]} wide but this model's "
                         f"prompts are {embs[0].shape[-1]} wide: the inversion was made with another model; invert "
                         "the image again with this model")
    return torch.cat([e[:1] for e in embs], 0)


def edit(runner: LoopRunner, inversion: Inversion, target_conds: list, controller: Optional[P2PController] = None,
         guidance_scale: Optional[float] = None, progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Runs the edit. runner: comfy_bridge.sampling.runner(model, inversion.source_cond, controller=controller);
    target_conds: CONDITIONINGs of the edited prompts (may be empty: reconstruction only).

    Returns [1 + len(target_conds), C, H, W] latents in the LATENT scale: the reconstruction first, then one edit
    per target prompt. guidance_scale defaults to the inversion's (null-text embeddings are optimised for that
    scale; another scale works but reconstructs less faithfully). ValueError when the controller was made for
    another number of prompts.
    """
    scale = inversion.guidance_scale if guidance_scale is None else float(guidance_scale)
    cond_embs = prompt_embeddings(inversion, target_conds, embedding_of(runner))
    if controller is not None and controller.num_prompts != cond_embs.shape[0]:
        raise ValueError(f"the controller is for {controller.num_prompts} prompts, got {cond_embs.shape[0]}")

    path = inversion.path
    if path is not None and (path.ndim != 4 or path.shape[0] != len(inversion.sigmas) or
                             tuple(path.shape[1:]) != tuple(inversion.x_T.shape[1:])):
        raise ValueError(f"this direct inversion's path has shape {list(path.shape)} but its schedule has "
                         f"{len(inversion.sigmas)} levels and x_T is {list(inversion.x_T.shape)}: the inversion is "
                         "damaged; run Invert Image again")

    @torch.no_grad()
    def loop(den: Denoiser, x, sig):
        if inversion.is_flow:
            return flow_replay_loop(den, x, sig, cond_embs.to(x.device, x.dtype), inversion.solver, controller,
                                    progress, source_path=path, uncond=inversion.uncond or None,
                                    guidance_scale=scale)
        return replay_loop(den, x, sig, cond_embs.to(x.device, x.dtype), inversion.uncond, scale, controller,
                           progress, source_path=path)

    return runner.run(loop, inversion.x_T.clone(), inversion.sigmas.clone())
