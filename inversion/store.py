"""The inversion file format (tensors only; the bridge's comfy_bridge.files writes and reads the file).

Layout: tensors ``x_T`` [1, C, H, W], ``sigmas`` [N + 1], ``uncond`` [N, T, D] (per-step unconditional
embeddings; [0, T, D] for the rectified-flow methods without classifier-free guidance (Flux), which have none; a
flow inversion made for CFG (SD3) has N, the empty prompt's), ``latent`` [1, C, H, W], ``source_emb``
[1, T, D] and, when the conditioning had them, ``source_pooled`` and ``source_guidance`` (Flux); for Direct Inversion
``path`` [N + 1, C, H, W] (the inversion path in the model's latent scale, replay order: Inversion.path); metadata
(strings): format, source_prompt, method, guidance_scale, scheduler, losses (JSON), family and prediction (of the
model inverted with: "sd1" / "sd2" / "sdxl", "eps" / "v"; absent in files of earlier versions) and solver (the
rectified-flow ODE solver, "" for diffusion models; absent in earlier files, where the method named it). On SDXL
``uncond`` rows end with the pooled-vector row (inversion.core.Inversion).
"""
from __future__ import annotations

import json
import math

import torch

from .core import DIRECT, METHODS, Inversion
from .flow import FLOW_METHODS

FORMAT = "attention_edit.inversion/1"
REQUIRED = ("x_T", "sigmas", "uncond", "latent", "source_emb")


def to_file(inv: Inversion) -> tuple:
    """(tensors, metadata) of an inversion, for comfy_bridge.files.save_safetensors."""
    emb, extras = inv.source_cond[0][0], inv.source_cond[0][1]
    with torch.inference_mode(False):
        tensors = {
            "x_T": inv.x_T.float().contiguous(),
            "sigmas": inv.sigmas.float().contiguous(),
            "uncond": (torch.cat([u.reshape(1, *u.shape[-2:]).float() for u in inv.uncond]) if inv.uncond else
                       torch.zeros(0, *emb.shape[1:])).contiguous(),
            "latent": inv.latent.float().contiguous(),
            "source_emb": emb.detach().cpu().float().contiguous(),
        }
        if extras.get("pooled_output") is not None:
            tensors["source_pooled"] = extras["pooled_output"].detach().cpu().float().contiguous()
        if extras.get("guidance") is not None:  # Flux: the guidance embedding's value the inversion ran with
            tensors["source_guidance"] = torch.tensor([float(extras["guidance"])])
        if inv.path is not None:
            tensors["path"] = inv.path.detach().cpu().float().contiguous()
    meta = {"format": FORMAT, "source_prompt": inv.source_prompt, "method": inv.method,
            "guidance_scale": repr(inv.guidance_scale), "scheduler": inv.scheduler,
            "losses": json.dumps(inv.losses), "family": inv.family, "prediction": inv.prediction,
            "solver": inv.solver}
    return tensors, meta


def from_file(tensors: dict, meta: dict, name: str = "the file") -> Inversion:
    """The Inversion of a file's (tensors, metadata). ValueError naming the file and what is wrong when it is not
    an inversion of this pack, misses tensors, or its tensors do not fit together."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"{name} is not an Attention Edit inversion file (format {meta.get('format')!r}); save "
                         "one with the Save Inversion node")
    missing = [k for k in REQUIRED if k not in tensors]
    if missing:
        raise ValueError(f"{name} has the inversion metadata but lacks the tensor(s) {', '.join(missing)}: it is "
                         "incomplete or was edited; run Invert Image and Save Inversion again")
    x_T, sigmas, uncond = tensors["x_T"], tensors["sigmas"], tensors["uncond"]
    method = meta.get("method", "")
    solver = meta.get("solver", "") or (method if method in FLOW_METHODS else "")
    path = tensors.get("path")
    problems = []
    if x_T.ndim != 4 or x_T.shape[0] != 1:
        problems.append(f"x_T has shape {list(x_T.shape)}, expected [1, C, H, W]")
    if sigmas.ndim != 1 or len(sigmas) < 2:
        problems.append(f"sigmas has shape {list(sigmas.shape)}, expected [steps + 1]")
    elif uncond.ndim != 3 or uncond.shape[0] not in ((0, len(sigmas) - 1) if solver else (len(sigmas) - 1,)):
        # a rectified-flow inversion has none (Flux) or, made for classifier-free guidance (SD3), one per step
        want = f"[0 or {len(sigmas) - 1}, tokens, width]" if solver else f"[{len(sigmas) - 1}, tokens, width]"
        problems.append(f"uncond has shape {list(uncond.shape)}, expected {want}")
    if method == DIRECT:
        want = [len(sigmas)] + list(x_T.shape[1:])
        if path is None:
            problems.append("a 'direct' inversion needs its inversion path (tensor 'path'), which is missing")
        elif list(path.shape) != want:
            problems.append(f"path has shape {list(path.shape)}, expected {want} (one latent per level)")
    if solver and solver not in FLOW_METHODS:
        problems.append(f"unknown rectified-flow solver {solver!r}")
    if tensors["latent"].shape != x_T.shape:
        problems.append(f"latent {list(tensors['latent'].shape)} and x_T {list(x_T.shape)} differ in shape")
    if method not in METHODS:
        problems.append(f"unknown method {method!r}")
    try:
        scale = float(meta.get("guidance_scale", "nan"))
    except ValueError:
        scale = float("nan")
    if not math.isfinite(scale):
        problems.append(f"guidance_scale {meta.get('guidance_scale')!r} is not a finite number")
    if problems:
        raise ValueError(f"{name} is not a usable inversion: {'; '.join(problems)}; run Invert Image and Save "
                         "Inversion again")
    try:
        losses = json.loads(meta.get("losses", "[]"))
    except ValueError:
        losses = []
    extras = {"pooled_output": tensors["source_pooled"]} if "source_pooled" in tensors else {}
    if "source_guidance" in tensors:
        extras["guidance"] = float(tensors["source_guidance"].reshape(-1)[0])
    return Inversion(x_T=x_T, sigmas=sigmas, source_prompt=meta.get("source_prompt", ""),
                     source_cond=[[tensors["source_emb"], extras]], uncond=[u[None] for u in uncond],
                     guidance_scale=scale, method=method, latent=tensors["latent"], losses=losses,
                     scheduler=meta.get("scheduler", ""), family=meta.get("family", ""),
                     prediction=meta.get("prediction", ""), solver=solver,
                     path=path if method == DIRECT else None)
