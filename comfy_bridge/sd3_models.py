"""Small SD3 / SD3.5-architecture models built from ComfyUI's own classes, for CPU tests of the SD3 path.

``build_sd3(config)`` returns ``(model_patcher, clip, vae)`` as CheckpointLoaderSimple (or the UNet / TripleCLIP /
VAE loaders) would for an SD3 checkpoint, at a small size:

* diffusion model: ``comfy.supported_models.SD3(unet_config).get_model()`` (comfy/ldm/modules/diffusionmodules/
  mmdit.py ``OpenAISignatureMMDITWrapper``: joint blocks over [text ; image patches], hidden width 64 x depth with
  heads of 64, as ComfyUI's MMDiT fixes it; SD3.5's MMDiT-X image-only second attention in the blocks
  ``x_block_self_attn_layers`` and RMS q/k norm when ``qk_norm`` is "rms"), wrapped in a ``ModelPatcher``; ComfyUI's
  SD3 model sampling (rectified flow, ``ModelSamplingDiscreteFlow`` shift 3.0) and latent format (16 channels, scale
  1.5305, shift 0.0609);
* text encoder: ``comfy.sd.CLIP`` around ComfyUI's ``SD3ClipModel`` (CLIP-L and CLIP-G side by side and padded to
  4096 features, then T5-XXL: the context is [77 CLIP tokens ; T5 tokens] in one sequence; the pooled vector is
  [CLIP-L pooled ; CLIP-G pooled]) with narrow, shallow CLIP encoders and the REAL tokenizers (CLIP BPE for both,
  T5 sentencepiece padded to 77). ComfyUI concatenates the T5 output with the 4096-wide CLIP part, so the T5 must
  be 4096 wide (one layer, narrow attention and feed-forward; its token table is the largest tensor here);
  ``t5=False`` gives the CLIP-only text encoder of the SD3 checkpoints shipped without T5 (77 text tokens);
* VAE: ``comfy.sd.VAE`` of a 16-channel AutoencoderKL ``ddconfig`` (downscale 8).

Every weight is initialised from a seeded CPU generator (seeded.init_weights; RMS-norm scales 1, the position
embedding N(0, 0.02)), so the same seed gives the same model on every machine and host.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .seeded import init_weights

__all__ = ["SD3Config", "TINY_SD3", "TINY_SD3_CLIP_ONLY", "SD3_CONFIGS", "build_sd3", "build_sd3_model"]


@dataclass
class SD3Config:
    name: str = "custom_sd3"
    image_size: int = 64
    # transformer (comfy.ldm.modules.diffusionmodules.mmdit.MMDiT): hidden = 64 * depth, heads = depth
    depth: int = 2
    pos_embed_max_size: int = 16      # position-embedding grid (patches per side); SD3: 192
    qk_norm: str | None = "rms"       # SD3.5: "rms"; SD3 medium: None
    x_block_self_attn_layers: list = field(default_factory=lambda: [0])  # SD3.5 medium: MMDiT-X blocks 0-12
    # text encoders: CLIP-L and CLIP-G (pooled [L ; G] -> adm_in_channels), T5 (4096 wide, see the docstring)
    clip_l_width: int = 32
    clip_g_width: int = 32
    clip_layers: int = 3             # SD3 reads the second-to-last layer: at least 3
    clip_heads: int = 2
    clip_intermediate: int = 64
    t5: bool = True
    t5_layers: int = 1
    t5_heads: int = 2
    t5_kv: int = 16
    t5_ff: int = 64
    # VAE
    vae_ch: int = 32
    vae_ch_mult: list = field(default_factory=lambda: [1, 2, 2, 2])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def context_width(self) -> int:
        return 4096  # SD3ClipModel pads the CLIP part to 4096 and T5-XXL's width is 4096


#: SD3.5-medium-style tiny model: 2 joint blocks (hidden 128, 2 heads of 64), MMDiT-X attention in block 0, RMS q/k
#: norm, CLIP-L + CLIP-G + T5 text encoder, 64x64 images (8x8x16 latents, 16 image tokens)
TINY_SD3 = SD3Config(name="tiny_sd3")
#: the same transformer with the CLIP-only text encoder (77 text tokens)
TINY_SD3_CLIP_ONLY = dataclasses.replace(TINY_SD3, name="tiny_sd3_clip_only", t5=False)
SD3_CONFIGS = {c.name: c for c in (TINY_SD3, TINY_SD3_CLIP_ONLY)}


def _config(config) -> SD3Config:
    if isinstance(config, SD3Config):
        return config
    if isinstance(config, str) and config in SD3_CONFIGS:
        return SD3_CONFIGS[config]
    if isinstance(config, dict):
        names = {f.name for f in dataclasses.fields(SD3Config)}
        return SD3Config(**{k: v for k, v in config.items() if k in names})
    raise ValueError(f"unknown SD3 config {config!r}; one of {tuple(SD3_CONFIGS)} or an SD3Config")


def _unet_config(cfg: SD3Config) -> dict:
    hidden = 64 * cfg.depth
    out = {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": cfg.depth, "input_size": None,
           "adm_in_channels": cfg.clip_l_width + cfg.clip_g_width,
           "context_embedder_config": {"target": "torch.nn.Linear",
                                       "params": {"in_features": cfg.context_width, "out_features": hidden}},
           "num_patches": cfg.pos_embed_max_size ** 2, "pos_embed_max_size": cfg.pos_embed_max_size,
           "pos_embed_scaling_factor": None, "x_block_self_attn_layers": list(cfg.x_block_self_attn_layers)}
    if cfg.qk_norm:
        out["qk_norm"] = cfg.qk_norm
    return out


@torch.no_grad()
def _seed(module: torch.nn.Module, seed: int) -> None:
    init_weights(module, seed)
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 17)
    for m in module.modules():
        if "RMSNorm" in type(m).__name__ and getattr(m, "weight", None) is not None:
            m.weight.fill_(1.0)
    pe = getattr(module, "pos_embed", None)
    if isinstance(pe, torch.Tensor):
        pe.copy_((torch.randn(pe.shape, generator=gen) * 0.02).to(pe))


def build_sd3_model(config=TINY_SD3, seed: int = 0):
    """The diffusion model of ``config`` only (a ModelPatcher with seeded random weights; no text encoder or
    VAE)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = _config(config)
    model_config = comfy.supported_models.SD3(_unet_config(cfg))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device="cpu")
    _seed(model.diffusion_model, seed)
    mp = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                          offload_device=mm.unet_offload_device())
    model.toy_config = cfg
    return mp


def build_sd3(config=TINY_SD3, seed: int = 0, dtype: torch.dtype | None = None):
    """``(model_patcher, clip, vae)`` of an SD3-architecture model (``config``: an SD3Config or a name in
    SD3_CONFIGS), seeded random weights, CPU-sized; devices from comfy.model_management. ``dtype``: the text
    encoder's weight dtype (None: comfy.model_management's choice); the transformer is fp32."""
    import comfy.model_management as mm
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.sd3_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL

    cfg = _config(config)
    mp = build_sd3_model(cfg, seed)
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer,
                                                    comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=True,
                                                                                          t5=cfg.t5))
    clip_cfg = lambda w: {"hidden_size": w, "intermediate_size": cfg.clip_intermediate,  # noqa: E731
                          "num_attention_heads": cfg.clip_heads, "num_hidden_layers": cfg.clip_layers,
                          "projection_dim": w}
    options = {"clip_l_model_config": clip_cfg(cfg.clip_l_width), "clip_g_model_config": clip_cfg(cfg.clip_g_width),
               "t5xxl_model_config": {"d_model": cfg.context_width, "d_ff": cfg.t5_ff, "d_kv": cfg.t5_kv,
                                      "num_heads": cfg.t5_heads, "num_layers": cfg.t5_layers},
               "initial_device": mm.text_encoder_offload_device()}
    if dtype is not None:
        options["dtype"] = dtype
    clip = comfy.sd.CLIP(target, model_options=options)
    init_weights(clip.cond_stage_model, seed + 1)
    ddconfig = {"double_z": True, "z_channels": 16, "resolution": cfg.image_size, "in_channels": 3, "out_ch": 3,
                "ch": cfg.vae_ch, "ch_mult": list(cfg.vae_ch_mult), "num_res_blocks": 1, "attn_resolutions": [],
                "dropout": 0.0}
    vae_config = {"params": {"ddconfig": ddconfig, "embed_dim": 16}}
    tmp = AutoencoderKL(**vae_config["params"])
    init_weights(tmp, seed + 2)
    vae = comfy.sd.VAE(sd={k: v.detach().clone().float() for k, v in tmp.state_dict().items()}, config=vae_config)
    del tmp
    vae.latent_channels = 16
    vae.downscale_ratio = vae.upscale_ratio = 2 ** (len(cfg.vae_ch_mult) - 1)
    mp.toy_config = clip.toy_config = vae.toy_config = cfg
    return mp, clip, vae
