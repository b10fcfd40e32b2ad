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

``FluxConfig.latent_format`` "sd15" gives the model SD1.5's latent format instead of Flux's (4 channels, 0.18215
scale, no shift) so that a Flux transformer with ``latent_channels=4`` works on the latents of an SD1.x VAE through
ComfyUI's process_latent_in/out and empty-latent handling: the ToyWorld MM-DiT (:data:`TOYWORLD_MMDIT`,
toyworld/train_mmdit.py) uses the ToyWorld VAE that way. ``build_flux(..., state_dict=...)`` loads weights
(``model.diffusion_model.*``, ``clip.*``, optionally ``vae.*``) instead of the seeded initialisation.

The Flux parameter set differs between ComfyUI versions (0.33 added ``txt_ids_dims``): only the fields the host's
``FluxParams`` has are passed. Every weight is initialised from a seeded CPU generator (seeded.init_weights).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch

from .seeded import init_weights

__all__ = ["FluxConfig", "TINY_FLUX", "TINY_FLUX_SCHNELL", "TOYWORLD_MMDIT", "FLUX_CONFIGS", "flux_config_from_any",
           "build_flux", "build_flux_model", "build_tiny_flux_model", "count_flux_parameters",
           "flux_training_mode"]


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
    # the shortest T5 sequence the tokenizer makes (ComfyUI's ``t5xxl_min_length`` tokenizer setting, what core
    # T5TokenizerOptions sets); None: ComfyUI's own 256 for Flux. The edit glue encodes and aligns every prompt of an
    # edit at this length (attention.align.stream_of reads it from the tokenizer)
    t5_min_length: int | None = None
    # VAE
    vae_ch: int = 32
    vae_ch_mult: list = field(default_factory=lambda: [1, 2, 2, 2])
    latent_channels: int = 16
    # ComfyUI latent format of the model: "flux" (comfy.latent_formats.Flux: 16 channels, scale 0.3611, shift
    # 0.1159) or "sd15" (comfy.latent_formats.SD15: 4 channels, scale 0.18215), for a model on an SD1.x VAE
    latent_format: str = "flux"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Flux.1-dev architecture (guidance embedding), tiny: 2 double + 2 single blocks, hidden 64, 64x64 images
TINY_FLUX = FluxConfig(name="tiny_flux")
#: Flux.1-schnell architecture (no guidance embedding)
TINY_FLUX_SCHNELL = dataclasses.replace(TINY_FLUX, name="tiny_flux_schnell", guidance_embed=False)
#: The ToyWorld MM-DiT (toyworld/train_mmdit.py): Flux.1-schnell architecture (no guidance embedding) on the ToyWorld
#: VAE's 4-channel 8x8 latents (SD1.5 latent format; patch 2x2 -> 16 image tokens of 16 features), hidden 128 with
#: 4 heads of 32 (RoPE axes 8 + 12 + 12), 3 double-stream + 3 single-stream blocks; CLIP-L width 64 (pooled vector),
#: T5 width 128, its sequence 32 tokens long (ComfyUI's ``t5xxl_min_length`` tokenizer setting: the longest ToyWorld
#: caption is 25 tokens with the end token; at ComfyUI's default 256 this model never learnt its words on a CPU
#: budget, see toyworld/train_mmdit.py). The vae_* fields describe the ToyWorld VAE (the loader uses the shipped one).
TOYWORLD_MMDIT = FluxConfig(
    name="toyworld_mmdit", image_size=64, hidden_size=128, num_heads=4, depth=3, depth_single_blocks=3,
    axes_dim=[8, 12, 12], mlp_ratio=4.0, guidance_embed=False,
    clip_width=64, clip_layers=2, clip_heads=2, clip_intermediate=256,
    t5_width=128, t5_layers=2, t5_heads=4, t5_kv=32, t5_ff=256, t5_min_length=32,
    vae_ch=32, vae_ch_mult=[1, 2, 2, 4], latent_channels=4, latent_format="sd15")
FLUX_CONFIGS = {"tiny_flux": TINY_FLUX, "tiny_flux_schnell": TINY_FLUX_SCHNELL, "toyworld_mmdit": TOYWORLD_MMDIT}


def flux_config_from_any(config) -> FluxConfig:
    """A FluxConfig from a FluxConfig, a name in FLUX_CONFIGS, a dict of its fields or their JSON (unknown keys are
    ignored, missing ones take the defaults: files written before a field existed keep loading)."""
    import json

    if isinstance(config, FluxConfig):
        return config
    if isinstance(config, str):
        if config in FLUX_CONFIGS:
            return FLUX_CONFIGS[config]
        config = json.loads(config)
    if isinstance(config, dict):
        names = {f.name for f in dataclasses.fields(FluxConfig)}
        return FluxConfig(**{k: v for k, v in config.items() if k in names})
    raise TypeError(f"cannot make a FluxConfig from {type(config)!r}")


def _unet_config(cfg: FluxConfig) -> dict:
    return {"image_model": "flux", "guidance_embed": bool(cfg.guidance_embed), "in_channels": cfg.latent_channels,
            "out_channels": cfg.latent_channels, "vec_in_dim": cfg.clip_width, "context_in_dim": cfg.t5_width,
            "hidden_size": cfg.hidden_size, "mlp_ratio": cfg.mlp_ratio, "num_heads": cfg.num_heads,
            "depth": cfg.depth, "depth_single_blocks": cfg.depth_single_blocks, "axes_dim": list(cfg.axes_dim),
            "theta": 10000, "patch_size": 2, "qkv_bias": True, "txt_ids_dims": []}


def build_flux_model(cfg: FluxConfig, seed: int = 0, unet_sd: dict | None = None):
    """The diffusion model of ``cfg`` only (a ModelPatcher; ``unet_sd``: its transformer's weights, else seeded random
    ones; no text encoder or VAE)."""
    import comfy.latent_formats
    import comfy.ldm.flux.model
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = flux_config_from_any(cfg)
    known = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)} | {"image_model"}
    unet = {k: v for k, v in _unet_config(cfg).items() if k in known}
    cls = comfy.supported_models.Flux if cfg.guidance_embed else comfy.supported_models.FluxSchnell
    model_config = cls(unet)
    if cfg.latent_format == "sd15":  # the model config holds an instance; BaseModel takes it from there
        model_config.latent_format = comfy.latent_formats.SD15()
    elif cfg.latent_format != "flux":
        raise ValueError(f"unknown latent_format {cfg.latent_format!r}: use 'flux' or 'sd15'")
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device="cpu")
    if unet_sd:
        unet_sd = _host_norm_names(unet_sd, model.diffusion_model.state_dict().keys())
        m, u = model.diffusion_model.load_state_dict({k: v.float() for k, v in unet_sd.items()}, strict=False)
        if m or u:
            raise KeyError(f"Flux transformer weights do not match the config: missing {m[:3]}, unexpected {u[:3]}")
    else:
        init_weights(model.diffusion_model, seed)
    mp = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                          offload_device=mm.unet_offload_device())
    model.toy_config = cfg
    return mp


def _host_norm_names(sd: dict, expected) -> dict:
    """The RMSNorm weights of Flux's QK norms are ``*_norm.scale`` on ComfyUI 0.3.75 and ``*_norm.weight`` on 0.33
    (its Flux config renames checkpoint keys on load): names a file written on one host are renamed to this host's."""
    expected = set(expected)
    out = {}
    for k, v in sd.items():
        if k not in expected:
            for a, b in (("_norm.scale", "_norm.weight"), ("_norm.weight", "_norm.scale")):
                if k.endswith(a) and k[:-len(a)] + b in expected:
                    k = k[:-len(a)] + b
                    break
        out[k] = v
    return out


_model = build_flux_model  # the name the ToyWorld MM-DiT trainer used first


def build_tiny_flux_model(seed: int = 0):
    """The diffusion model of :data:`TINY_FLUX` only (a ModelPatcher), e.g. for the model-family checks."""
    return build_flux_model(TINY_FLUX, seed)


def build_flux(config=TINY_FLUX, seed: int = 0, state_dict: dict | None = None, dtype: torch.dtype | None = None):
    """``(model_patcher, clip, vae)`` of a Flux.1-architecture model (``config``: a FluxConfig, a name in
    FLUX_CONFIGS or a dict of its fields), seeded random weights, CPU-sized. Devices come from
    comfy.model_management. ``state_dict``: weights to load instead (as fp32 copies): keys
    ``model.diffusion_model.*`` (the transformer), ``clip.*`` (FluxClipModel's own state dict: ``clip_l.*``,
    ``t5xxl.*``) and optionally ``vae.*``; a part without keys keeps its seeded initialisation. ``dtype``: the text
    encoder's weight dtype (None: comfy.model_management's text-encoder choice, fp16 even on a CPU; a trainer needs
    torch.float32: Adam's epsilon vanishes in fp16); the transformer is fp32."""
    import comfy.model_management as mm
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux

    cfg = flux_config_from_any(config)
    sd = state_dict or {}
    part = lambda prefix: {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}  # noqa: E731
    unet_sd, clip_sd, vae_sd = part("model.diffusion_model."), part("clip."), part("vae.")
    mp = build_flux_model(cfg, seed, unet_sd)
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer,
                                                    comfy.text_encoders.flux.flux_clip())
    options = {"clip_l_model_config": {"hidden_size": cfg.clip_width, "intermediate_size": cfg.clip_intermediate,
                                       "num_attention_heads": cfg.clip_heads, "num_hidden_layers": cfg.clip_layers,
                                       "projection_dim": cfg.clip_width},
               "t5xxl_model_config": {"d_model": cfg.t5_width, "d_ff": cfg.t5_ff, "d_kv": cfg.t5_kv,
                                      "num_heads": cfg.t5_heads, "num_layers": cfg.t5_layers},
               "initial_device": mm.text_encoder_offload_device()}
    if dtype is not None:
        options["dtype"] = dtype
    tok_data = {} if cfg.t5_min_length is None else {"t5xxl_min_length": int(cfg.t5_min_length)}
    clip = comfy.sd.CLIP(target, tokenizer_data=tok_data, model_options=options)
    if clip_sd:
        m, u = clip.cond_stage_model.load_state_dict({k: v.float() for k, v in clip_sd.items()}, strict=False)
        m = [k for k in m if not k.endswith("position_ids")]
        if m or u:
            raise KeyError(f"Flux text encoder weights do not match the config: missing {m[:3]}, unexpected {u[:3]}")
    else:
        init_weights(clip.cond_stage_model, seed + 1)
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": cfg.latent_channels, "resolution": cfg.image_size, "in_channels": 3,
                "out_ch": 3, "ch": cfg.vae_ch, "ch_mult": list(cfg.vae_ch_mult), "num_res_blocks": 1,
                "attn_resolutions": [], "dropout": 0.0}
    vae_config = {"params": {"ddconfig": ddconfig, "embed_dim": cfg.latent_channels}}
    if not vae_sd:
        tmp = AutoencoderKL(**vae_config["params"])
        init_weights(tmp, seed + 2)
        vae_sd = {k: v.detach().clone() for k, v in tmp.state_dict().items()}
        del tmp
    vae = comfy.sd.VAE(sd={k: v.float() for k, v in vae_sd.items()}, config=vae_config)
    vae.latent_channels = cfg.latent_channels  # comfy.sd.VAE keeps 4 for a config-built VAE (tiled encode reads it)
    down = 2 ** (len(cfg.vae_ch_mult) - 1)
    vae.downscale_ratio = vae.upscale_ratio = down
    mp.toy_config = clip.toy_config = vae.toy_config = cfg
    return mp, clip, vae


@contextlib.contextmanager
def flux_training_mode():
    """Context for a forward pass that will be differentiated: sets ``comfy.model_management.in_training`` (0.33;
    what ComfyUI's own LoRA trainer sets) so Flux's RoPE runs as plain torch ops instead of comfy_kitchen's fused
    kernel, which has no backward (same values). Restored on exit; a no-op on hosts without the flag (0.3.75's
    RoPE is plain torch)."""
    import comfy.model_management as mm

    had = hasattr(mm, "in_training")
    old = getattr(mm, "in_training", False)
    if had:
        mm.in_training = True
    try:
        yield
    finally:
        if had:
            mm.in_training = old


def count_flux_parameters(model_patcher, clip) -> dict:
    """Parameter counts: the transformer, each text encoder (with and without its token-embedding table)."""
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    te = clip.cond_stage_model
    out = {"transformer": n(model_patcher.model.diffusion_model)}
    for name in ("clip_l", "t5xxl"):
        enc = getattr(te, name)
        emb = enc.transformer.get_input_embeddings().weight.numel()
        out[name] = n(enc)
        out[name + "_without_token_embedding"] = n(enc) - emb
    return out
