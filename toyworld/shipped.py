"""The shipped ToyWorld models as registered entries: where their weights are, which family they are, how they load.

Two models ship in toyworld/weights/ (both trained by the pack's trainers, toyworld/train.py and
toyworld/train_mmdit.py, on ToyWorld's procedural scenes; 64x64 RGB images <-> 8x8x4 latents):

* ``toyworld``: an SD1.x-architecture UNet, CLIP-L text encoder and AutoencoderKL (comfy_bridge.models.UNetConfig
  "toyworld"; file format "attention_edit.sd1x");
* ``toyworld_mmdit``: a Flux.1-schnell-architecture MM-DiT and FluxClipModel (comfy_bridge.flux_models
  TOYWORLD_MMDIT; file format "attention_edit.toyworld_mmdit") on the ToyWorld VAE (SD1.5 latent format).

Loading imports the builders only, never a trainer. Each load returns ``(model_patcher, clip, vae)`` as ComfyUI's
checkpoint loader would.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["ShippedModel", "SHIPPED_MODELS", "TOYWORLD_WEIGHTS", "TOYWORLD_MMDIT_WEIGHTS", "MMDIT_FORMAT",
           "load_toyworld_unet", "load_toyworld_mmdit", "load_shipped"]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
#: the ToyWorld UNet model (and the VAE both ToyWorld models use)
TOYWORLD_WEIGHTS = os.path.join(WEIGHTS_DIR, "toyworld.safetensors")
#: the exported ToyWorld MM-DiT
TOYWORLD_MMDIT_WEIGHTS = os.path.join(WEIGHTS_DIR, "toyworld_mmdit.safetensors")
#: the format key of an exported ToyWorld MM-DiT weights file (its metadata's "format")
MMDIT_FORMAT = "attention_edit.toyworld_mmdit"


def load_toyworld_unet(path: str = TOYWORLD_WEIGHTS, dtype: Optional[torch.dtype] = None):
    """``(model_patcher, clip, vae)`` of a ToyWorld UNet weights file (comfy_bridge.models.save_weights format)."""
    from ..comfy_bridge.models import load_weights

    return load_weights(path, dtype=dtype)


def load_toyworld_mmdit(path: str = TOYWORLD_MMDIT_WEIGHTS, vae_path: str = TOYWORLD_WEIGHTS,
                        dtype: Optional[torch.dtype] = None):
    """``(model_patcher, clip, vae)`` of an exported ToyWorld MM-DiT (``train_mmdit --export``): ComfyUI's Flux
    model (schnell architecture, SD1.5 latent format) and FluxClipModel with the file's weights, and the VAE of
    ``vae_path`` (the shipped ToyWorld weights). Works with ComfyUI's samplers and nodes as a CheckpointLoaderSimple
    result; 64x64 images, 8x8x4 latents. ``dtype``: text encoder and VAE weight dtype (None: ComfyUI's choices, as
    its loaders make them; torch.float32 reproduces the training-time probe). ValueError for a file of another
    format."""
    from ..comfy_bridge import flux_models as fm
    from ..comfy_bridge.files import read_safetensors
    from ..comfy_bridge.models import load_weights

    sd, meta = read_safetensors(str(path), "ToyWorld MM-DiT weights file")
    if meta.get("format") != MMDIT_FORMAT or "config" not in meta:
        raise ValueError(f"{path}: not a ToyWorld MM-DiT weights file (format {meta.get('format')!r}); write one "
                         "with python -m attention_edit.toyworld.train_mmdit --export")
    cfg = fm.flux_config_from_any(json.loads(meta["config"]))
    mp, clip, _ = fm.build_flux(cfg, state_dict=sd, dtype=dtype)
    _, _, vae = load_weights(vae_path, dtype=dtype)
    mp.toy_config = clip.toy_config = mp.model.toy_config = cfg
    return mp, clip, vae


@dataclass(frozen=True)
class ShippedModel:
    """A shipped model: ``name`` (its key), ``family`` (comfy_bridge.families key it loads as), ``path`` (its
    weights file), ``load(path, dtype)`` and ``trainer`` (the command that made it, for a missing file's message)."""

    name: str
    family: str
    path: str
    load: Callable
    trainer: str


SHIPPED_MODELS = {m.name: m for m in (
    ShippedModel("toyworld", "sd1", TOYWORLD_WEIGHTS, load_toyworld_unet, "python -m attention_edit.toyworld.train"),
    ShippedModel("toyworld_mmdit", "flux", TOYWORLD_MMDIT_WEIGHTS, load_toyworld_mmdit,
                 "python -m attention_edit.toyworld.train_mmdit --export"),
)}


def load_shipped(name: str, dtype: Optional[torch.dtype] = None):
    """``(model_patcher, clip, vae)`` of a shipped model by name (:data:`SHIPPED_MODELS`); FileNotFoundError naming
    the file and how to make it when it is missing, ValueError for an unknown name."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"unknown shipped model {name!r}; one of {tuple(SHIPPED_MODELS)}")
    m = SHIPPED_MODELS[name]
    if not os.path.exists(m.path):
        raise FileNotFoundError(f"the shipped {name} weights are missing ({m.path}); reinstall the pack or train "
                                f"them ({m.trainer})")
    return m.load(m.path, dtype=dtype)
