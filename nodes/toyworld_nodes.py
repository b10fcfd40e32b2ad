"""Node: load the ToyWorld model (a small SD1.x-architecture model trained on procedural shapes), or a random
untrained TINY_TEST model for tests/CI."""
from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ..comfy_bridge import models as unet_models
from ..toyworld.shipped import SHIPPED_MODELS, load_shipped

SHIPPED = "toyworld (shipped)"
SHIPPED_MMDIT = "toyworld MM-DiT (shipped, Flux.1 architecture)"
RANDOM = "random (untrained test model)"
RANDOM_SD2_V = "random SD2.x v-prediction (untrained test model)"
RANDOM_SDXL = "random SDXL (untrained test model)"
RANDOM_FLUX = "random Flux.1 (untrained test model)"
RANDOM_SD3 = "random SD3.5 (untrained test model)"
#: the random test models of the loader, by choice
RANDOM_CONFIGS = {RANDOM: "tiny_test", RANDOM_SD2_V: "tiny_sd2_v", RANDOM_SDXL: "tiny_sdxl", RANDOM_FLUX: "tiny_flux",
                  RANDOM_SD3: "tiny_sd3"}
CHOICES = [SHIPPED, SHIPPED_MMDIT, RANDOM, RANDOM_SD2_V, RANDOM_SDXL, RANDOM_FLUX, RANDOM_SD3]
#: the loader's shipped choices: entries of toyworld.shipped.SHIPPED_MODELS, and the random choice to suggest when the
#: weights file is missing
SHIPPED_CHOICES = {SHIPPED: ("toyworld", RANDOM), SHIPPED_MMDIT: ("toyworld_mmdit", RANDOM_FLUX)}
WEIGHTS_PATH = SHIPPED_MODELS["toyworld"].path

_CACHE: dict = {}


def _shipped(choice: str):
    """A shipped model (toyworld.shipped) loaded once per modification time of its file; FileNotFoundError naming
    the file and the random choice to use instead when it is missing."""
    name, alternative = SHIPPED_CHOICES[choice]
    path = SHIPPED_MODELS[name].path
    if not os.path.exists(path):
        raise FileNotFoundError(f"the shipped {name} weights are missing ({path}); reinstall the pack or pick "
                                f"'{alternative}'")
    key = (choice, os.path.getmtime(path))
    if key not in _CACHE:
        _CACHE[key] = load_shipped(name)
    return _CACHE[key]


def load_toyworld(weights: str = SHIPPED, seed: int = 0):
    """(model_patcher, clip, vae) for a ``weights`` choice of the loader node (cached per choice and seed)."""
    if weights in SHIPPED_CHOICES:
        mp, clip, vae = _shipped(weights)
    elif weights in RANDOM_CONFIGS:
        key = (weights, int(seed))
        if key not in _CACHE:
            if weights == RANDOM_FLUX:
                from ..comfy_bridge.flux_models import build_flux

                _CACHE[key] = build_flux(RANDOM_CONFIGS[weights], seed=int(seed))
            elif weights == RANDOM_SD3:
                from ..comfy_bridge.sd3_models import build_sd3

                _CACHE[key] = build_sd3(RANDOM_CONFIGS[weights], seed=int(seed))
            else:
                _CACHE[key] = unet_models.build_unet(unet_models.CONFIGS[RANDOM_CONFIGS[weights]], seed=int(seed))
        mp, clip, vae = _CACHE[key]
    else:
        raise ValueError(f"unknown weights choice {weights!r}; expected one of {CHOICES}")
    return mp.clone(), clip.clone(), vae


class AE_ToyWorldLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_ToyWorldLoader",
            display_name="ToyWorld Model Loader (Attention Edit)",
            category="attention_edit/loaders",
            description=(
                "Loads ToyWorld: a small Stable Diffusion 1.x-architecture model (UNet, CLIP text encoder with the "
                "real SD1 tokenizer, VAE) trained on 64x64 images of coloured shapes, e.g. 'a big red circle on "
                "the left on white'. It runs in seconds on a CPU; use a 64x64 Empty Latent Image (8x8 latent). "
                "'random' builds an untrained tiny model for tests (SD1.x, SD2.x v-prediction, SDXL, Flux.1 or SD3.5)."),
            inputs=[
                io.Combo.Input("weights", options=CHOICES, default=SHIPPED,
                               tooltip="toyworld (shipped): the trained weights that come with the pack. "
                                       "toyworld MM-DiT (shipped): the same world on a 2.65 M-parameter Flux.1 "
                                       "(schnell) architecture transformer, rectified flow, T5 + CLIP-L text; "
                                       "same 64x64 images and VAE (use cfg 1 and rf_solver / fireflow). "
                                       "random (untrained test model): a tiny model with seeded random weights "
                                       "(TINY_TEST config), for tests and CI; it draws noise. random SD2.x "
                                       "v-prediction: the same size built from ComfyUI's SD2.x classes (OpenCLIP-H "
                                       "tokenizer, v-prediction), for tests of the SD2.x path. random SDXL: built "
                                       "from ComfyUI's SDXL classes (CLIP-L + bigG, pooled and size conditioning; "
                                       "use 128x128 images), for tests of the SDXL path. random Flux.1: ComfyUI's "
                                       "Flux classes (T5 + CLIP-L, 16-channel latents), for the Flux path. random "
                                       "SD3.5: ComfyUI's SD3 classes (MM-DiT over CLIP-L + CLIP-G + T5 tokens, "
                                       "16-channel latents, CFG), for the SD3 path."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, optional=True,
                             tooltip="Only for the random test model: the seed of its weight initialisation."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, weights, seed=0) -> io.NodeOutput:
        mp, clip, vae = load_toyworld(weights, seed)
        return io.NodeOutput(mp, clip, vae)


NODES = [AE_ToyWorldLoader]
