"""Small Flux.1-architecture models built from ComfyUI's own classes, for CPU tests of the MM-DiT path.

``build_flux(config)`` returns ``(model_patcher, clip, vae)`` as CheckpointLoaderSimple (or the UNet / DualCLIP /
VAE loaders) would for a Flux.1 checkpoint, at any (small) size:

* diffusion model: ``comfy.supported_models.Flux(unet_config).get_model()`` (comfy/ldm/flux: double-stream and
  single-stream blocks, RoPE over (index, row, column), guidance embedding for the dev architecture, none for
  schnell), wrapped in a ``ModelPatcher``; ComfyUI's Flux model sampling (CONST, time shift 1.15) and latent format
  (16 channels, scale 0.3611, shift 0.1159);
* text encoder: ``comfy.sd.CLIP`` around ComfyUI's ``FluxClipModel`` (CLIP-L for the pooled vector, T5-XXL for the
  token sequence) with narrow, shallow encoders and the REAL tokenizers (CLIP BPE, T5 sentencepiece: the T5
  vocabulary size is kept so every token id has a row); ComfyUI pads T5 to at least 256 tokens;
* VAE: ``comfy.sd.VAE`` of a 16-channel AutoencoderKL ``ddconfig`` (downscale 8).

The Flux parameter set differs between ComfyUI versions (0.33 added ``txt_ids_dims``): only the fields the host's
``FluxParams`` has are passed. Every weight is initialised from a seeded CPU generator (models.init_weights).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .models import init_weights

__all__ = ["FluxConfig", "TINY_FLUX", "TINY_FLUX_SCHNELL", "FLUX_CONFIGS", "build_flux", "build_tiny_flux_model"]


@dataclass
class FluxConfig:
    name: str = "custom_flux"
    image_size: int = 64
    # transformer (comfy.ldm.flux.model.Flux)
    hidden_size: int = 64
    num_heads: int = 2
    depth: int = 2                    # double-stream blocks (Flux.1: 19)
    depth_single_blocks: int = 2      # single-stream blocks (Flux.1: 38)
    axes_dim: list = field(default_factory=lambda: [8, 12, 12])  # RoPE dims per axis; sum = hidden / heads
    mlp_ratio: float = 4.0
    guidance_embed: bool = True       # dev: True; schnell: False
    # text encoders: CLIP-L (pooled vector -> vec_in_dim) and T5 (sequence -> context_in_dim)
    clip_width: int = 32
    clip_layers: int = 2
    clip_heads: int = 2
    clip_intermediate: int = 64
    t5_width: int = 48
    t5_layers: int = 2
    t5_heads: int = 2
    t5_kv: int = 24
    t5_ff: int = 96
    # VAE
    vae_ch: int = 32
    vae_ch_mult: list = field(default_factory=lambda: [1, 2, 2, 2])
    latent_channels: int = 16

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Flux.1-dev architecture (guidance embedding), tiny: 2 double + 2 single blocks, hidden 64, 64x64 images
TINY_FLUX = FluxConfig(name="tiny_flux")
#: Flux.1-schnell architecture (no guidance embedding)
TINY_FLUX_SCHNELL = dataclasses.replace(TINY_FLUX, name="tiny_flux_schnell", guidance_embed=False)
FLUX_CONFIGS = {"tiny_flux": TINY_FLUX, "tiny_flux_schnell": TINY_FLUX_SCHNELL}


def _unet_config(cfg: FluxConfig) -> dict:
    return {"image_model": "flux", "guidance_embed": bool(cfg.guidance_embed), "in_channels": cfg.latent_channels,
            "out_channels": cfg.latent_channels, "vec_in_dim": cfg.clip_width, "context_in_dim": cfg.t5_width,
            "hidden_size": cfg.hidden_size, "mlp_ratio": cfg.mlp_ratio, "num_heads": cfg.num_heads,
            "depth": cfg.depth, "depth_single_blocks": cfg.depth_single_blocks, "axes_dim": list(cfg.axes_dim),
            "theta": 10000, "patch_size": 2, "qkv_bias": True, "txt_ids_dims": []}


def _model(cfg: FluxConfig, seed: int):
    import comfy.ldm.flux.model
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    known = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)} | {"image_model"}
    unet = {k: v for k, v in _unet_config(cfg).items() if k in known}
    cls = comfy.supported_models.Flux if cfg.guidance_embed else comfy.supported_models.FluxSchnell
    model_config = cls(unet)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device="cpu")
    init_weights(model.diffusion_model, seed)
    mp = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                          offload_device=mm.unet_offload_device())
    model.toy_config = cfg
    return mp


def build_tiny_flux_model(seed: int = 0):
    """The diffusion model of :data:`TINY_FLUX` only (a ModelPatcher), e.g. for the model-family checks."""
    return _model(TINY_FLUX, seed)


def build_flux(config=TINY_FLUX, seed: int = 0):
    """``(model_patcher, clip, vae)`` of a Flux.1-architecture model (``config``: a FluxConfig or a name in
    FLUX_CONFIGS), seeded random weights, CPU-sized. Devices come from comfy.model_management."""
    import comfy.model_management as mm
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux

    cfg = FLUX_CONFIGS[config] if isinstance(config, str) else config
    mp = _model(cfg, seed)
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer,
                                                    comfy.text_encoders.flux.flux_clip())
    options = {"clip_l_model_config": {"hidden_size": cfg.clip_width, "intermediate_size": cfg.clip_intermediate,
                                       "num_attention_heads": cfg.clip_heads, "num_hidden_layers": cfg.clip_layers,
                                       "projection_dim": cfg.clip_width},
               "t5xxl_model_config": {"d_model": cfg.t5_width, "d_ff": cfg.t5_ff, "d_kv": cfg.t5_kv,
                                      "num_heads": cfg.t5_heads, "num_layers": cfg.t5_layers},
               "initial_device": mm.text_encoder_offload_device()}
    clip = comfy.sd.CLIP(target, model_options=options)
    init_weights(clip.cond_stage_model, seed + 1)
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": cfg.latent_channels, "resolution": cfg.image_size, "in_channels": 3,
                "out_ch": 3, "ch": cfg.vae_ch, "ch_mult": list(cfg.vae_ch_mult), "num_res_blocks": 1,
                "attn_resolutions": [], "dropout": 0.0}
    vae_config = {"params": {"ddconfig": ddconfig, "embed_dim": cfg.latent_channels}}
    tmp = AutoencoderKL(**vae_config["params"])
    init_weights(tmp, seed + 2)
    vae = comfy.sd.VAE(sd={k: v.detach().clone() for k, v in tmp.state_dict().items()}, config=vae_config)
    del tmp
    vae.latent_channels = cfg.latent_channels  # comfy.sd.VAE keeps 4 for a config-built VAE (tiled encode reads it)
    down = 2 ** (len(cfg.vae_ch_mult) - 1)
    vae.downscale_ratio = vae.upscale_ratio = down
    mp.toy_config = clip.toy_config = vae.toy_config = cfg
    return mp, clip, vae
