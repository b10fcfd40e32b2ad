"""Saving and loading an Inversion as one safetensors file (no pickle), written atomically.

Layout: tensors ``x_T`` [1, C, H, W], ``sigmas`` [N + 1], ``uncond`` [N, 77, D] (per-step unconditional
embeddings), ``latent`` [1, C, H, W], ``source_emb`` [1, 77, D] and, when the text encoder gave one,
``source_pooled``; metadata (strings): format, source_prompt, method, guidance_scale, scheduler, losses (JSON).
"""
from __future__ import annotations

import json
import os
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .core import Inversion

FORMAT = "attention_edit.inversion/1"


def save_inversion(path: str, inv: Inversion) -> str:
    """Writes ``inv`` to ``path`` (a temp file in the same folder, then os.replace: never a half-written file)."""
    emb, extras = inv.source_cond[0][0], inv.source_cond[0][1]
    tensors = {
        "x_T": inv.x_T.float().contiguous(),
        "sigmas": inv.sigmas.float().contiguous(),
        "uncond": torch.cat([u.reshape(1, *u.shape[-2:]).float() for u in inv.uncond]).contiguous(),
        "latent": inv.latent.float().contiguous(),
        "source_emb": emb.detach().cpu().float().contiguous(),
    }
    if extras.get("pooled_output") is not None:
        tensors["source_pooled"] = extras["pooled_output"].detach().cpu().float().contiguous()
    meta = {"format": FORMAT, "source_prompt": inv.source_prompt, "method": inv.method,
            "guidance_scale": repr(inv.guidance_scale), "scheduler": inv.scheduler,
            "losses": json.dumps(inv.losses)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_inversion(path: str) -> Inversion:
    """Reads a file written by save_inversion. Raises ValueError for a file that is not an inversion."""
    if not os.path.isfile(path):
        raise ValueError(f"no inversion file at {path!r}")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path!r} is not an Attention Edit inversion file (format {meta.get('format')!r}); "
                             "save one with the Save Inversion node")
        t = {k: f.get_tensor(k) for k in f.keys()}
    extras = {"pooled_output": t["source_pooled"]} if "source_pooled" in t else {}
    return Inversion(x_T=t["x_T"], sigmas=t["sigmas"], source_prompt=meta["source_prompt"],
                     source_cond=[[t["source_emb"], extras]], uncond=[u[None] for u in t["uncond"]],
                     guidance_scale=float(meta["guidance_scale"]), method=meta["method"], latent=t["latent"],
                     losses=json.loads(meta.get("losses", "[]")), scheduler=meta.get("scheduler", ""))
