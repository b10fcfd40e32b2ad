"""Model building: small UNet-family models (SD1.x, SD2.x, SDXL architectures) built from ComfyUI's own classes.

``build_unet(config)`` returns ``(model_patcher, clip, vae)`` exactly like CheckpointLoaderSimple does for an SD1.x,
SD2.x or SDXL checkpoint (``UNetConfig.family``), but for a UNet / text encoder(s) / AutoencoderKL of any (small)
size. The SD1.x case:

* UNet: ``comfy.supported_models.SD15(unet_config).get_model()`` wrapped in ``comfy.model_patcher.ModelPatcher``
  (epsilon prediction, scaled_linear betas 0.00085..0.012, SD1.5 latent format / 0.18215 scale).
* Text encoder: ``comfy.sd.CLIP`` around ``comfy.sd1_clip.SD1ClipModel`` with a narrower/shallower CLIP text
  transformer and the REAL SD1 CLIP tokenizer (``embedding_size`` matches the width).
* VAE: ``comfy.sd.VAE`` from an AutoencoderKL ``ddconfig``; the downscale ratio is ``2 ** (len(ch_mult) - 1)``
  (8 for both named configs, so core EmptyLatentImage 64x64 gives the matching 8x8 latent).

ComfyUI creates layers with ``torch.empty``; without a state dict every tensor is initialised explicitly from a
seeded CPU generator (so the same seed gives bit-identical weights on every machine). Devices and dtypes come from
``comfy.model_management`` (nothing is hard-coded to cuda).

Weights are saved with ``save_weights`` as one safetensors file whose metadata carries the config
(``load_weights(path)`` needs nothing else). No pickle anywhere.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .seeded import init_weights

__all__ = [
    "UNetConfig",
    "SD1xConfig",
    "TINY_TEST",
    "TOYWORLD",
    "CONFIGS",
    "build_unet",
    "build_sd1x",
    "save_weights",
    "load_weights",
    "config_from_any",
    "count_parameters",
    "build_tiny_sdxl_refiner",
    "build_sdxl_unet",
]


@dataclass
class UNetConfig:
    name: str = "custom"
    image_size: int = 64
    # UNet (SD1.x UNetModel)
    model_channels: int = 64
    channel_mult: list = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = 1
    attention_levels: list = field(default_factory=lambda: [True, True])  # a SpatialTransformer at each level
    transformer_depth_middle: int = 1
    num_heads: int = 4
    # text encoder (CLIP text transformer); its width is the UNet context_dim
    clip_width: int = 128
    clip_layers: int = 3
    clip_heads: int = 4
    clip_intermediate: int = 512
    # VAE (AutoencoderKL)
    vae_ch: int = 32
    vae_ch_mult: list = field(default_factory=lambda: [1, 2, 2, 2])
    vae_res_blocks: int = 1
    latent_channels: int = 4
    # model family: "sd1" (ComfyUI's SD15 config, CLIP-L tokenizer, epsilon prediction), "sd2" (ComfyUI's SD20
    # config, OpenCLIP-H tokenizer and text model, linear transformer projections) or "sdxl" (ComfyUI's SDXL config
    # and SDXLClipModel: CLIP-L (clip_* fields) and OpenCLIP-bigG (clip_g_* fields) side by side, the pooled bigG
    # output and the size / crop embeddings as the ADM input); prediction "eps" or "v"
    family: str = "sd1"
    prediction: str = "eps"
    # SDXL's second text encoder (OpenCLIP bigG); unused by the other families
    clip_g_width: int = 0
    clip_g_layers: int = 0
    clip_g_heads: int = 0
    clip_g_intermediate: int = 0
    clip_g_projection: int = 0
    # transformer blocks per level (SDXL: [0, 2, 10]); None -> 1 where attention_levels says so
    transformer_depth: Any = None

    @property
    def context_dim(self) -> int:
        return self.clip_width + (self.clip_g_width if self.family == "sdxl" else 0)

    @property
    def adm_channels(self) -> Optional[int]:
        """SDXL's ADM input: the pooled bigG projection + 6 size / crop embeddings of 256 (2816 in SDXL)."""
        return self.clip_g_projection + 6 * 256 if self.family == "sdxl" else None

    def depths(self) -> list:
        if self.transformer_depth is not None:
            return [int(d) for d in self.transformer_depth]
        return [1 if a else 0 for a in self.attention_levels]

    @property
    def vae_downscale(self) -> int:
        return 2 ** (len(self.vae_ch_mult) - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Very small and fast: unit tests / CI (cross-attention at 2 resolutions + middle).
TINY_TEST = UNetConfig(
    name="tiny_test",
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_levels=[True, True],
    num_heads=2,
    clip_width=64,
    clip_layers=2,
    clip_heads=2,
    clip_intermediate=128,
    vae_ch=32,
    vae_ch_mult=[1, 1, 1, 1],
    vae_res_blocks=1,
)

# The trained ToyWorld model: 64x64 RGB <-> 8x8x4 latent; cross-attention at 8x8, 4x4 and the middle (4x4).
TOYWORLD = UNetConfig(
    name="toyworld",
    model_channels=64,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_levels=[True, True],
    transformer_depth_middle=1,
    num_heads=4,
    clip_width=128,
    clip_layers=3,
    clip_heads=4,
    clip_intermediate=512,
    vae_ch=32,
    vae_ch_mult=[1, 2, 2, 4],
    vae_res_blocks=1,
)

# The SD2.x-architecture test model: ComfyUI's SD20 model config (v-prediction, as SD 2.x 768-v), OpenCLIP-H's
# tokenizer (pad token 0, not the end token) and SD2 text model class (penultimate layer: 3 layers so it is not
# the first), otherwise TINY_TEST's sizes.
TINY_SD2_V = dataclasses.replace(TINY_TEST, name="tiny_sd2_v", family="sd2", prediction="v", clip_layers=3)

# The SDXL-architecture test model: ComfyUI's SDXL config and UNet class (linear projections, ADM input of the
# pooled text + size / crop embeddings, no attention at full latent resolution, transformer depth 0 / 1 / 2 like
# SDXL's 0 / 2 / 10), SDXLClipModel with narrow CLIP-L and bigG (the real tokenizers), 128x128 images -> 16x16
# latents (attention at 8x8 and 4x4: 1/2 and 1/4 of the latent, as SDXL's 64x64 and 32x32 at 1024px).
TINY_SDXL = dataclasses.replace(
    TINY_TEST, name="tiny_sdxl", family="sdxl", image_size=128, channel_mult=[1, 2, 2],
    attention_levels=[False, True, True], transformer_depth=[0, 1, 2], transformer_depth_middle=2, clip_layers=3,
    clip_g_width=64, clip_g_layers=3, clip_g_heads=2, clip_g_intermediate=128, clip_g_projection=64)

#: the names this builder had when it built SD1.x only, kept for the public import (``from
#: attention_edit.comfy_bridge.models import SD1xConfig, build_sd1x``); saved weights files keep their format
#: "attention_edit.sd1x"
SD1xConfig = UNetConfig

CONFIGS = {"tiny_test": TINY_TEST, "toyworld": TOYWORLD, "tiny_sd2_v": TINY_SD2_V, "tiny_sdxl": TINY_SDXL}


def config_from_any(config: Any) -> UNetConfig:
    if isinstance(config, UNetConfig):
        return config
    if isinstance(config, str):
        if config in CONFIGS:
            return CONFIGS[config]
        config = json.loads(config)
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    if isinstance(config, dict):
        names = {f.name for f in dataclasses.fields(UNetConfig)}
        return UNetConfig(**{k: v for k, v in config.items() if k in names})
    raise TypeError(f"cannot make a UNetConfig from {type(config)!r}")


# --------------------------------------------------------------------------------------------------------------
# config translation
# --------------------------------------------------------------------------------------------------------------

def unet_config_dict(cfg: UNetConfig) -> dict:
    levels = len(cfg.channel_mult)
    att = cfg.depths()
    assert len(att) == levels, "attention_levels / transformer_depth need one entry per channel_mult level"
    return {
        "use_checkpoint": False,
        "image_size": cfg.image_size // cfg.vae_downscale,
        "out_channels": cfg.latent_channels,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": cfg.adm_channels,
        **({"num_classes": "sequential"} if cfg.family == "sdxl" else {}),
        "in_channels": cfg.latent_channels,
        "model_channels": cfg.model_channels,
        "num_res_blocks": [cfg.num_res_blocks] * levels,
        "transformer_depth": [a for a in att for _ in range(cfg.num_res_blocks)],
        "channel_mult": list(cfg.channel_mult),
        "transformer_depth_middle": cfg.transformer_depth_middle,
        "use_linear_in_transformer": cfg.family in ("sd2", "sdxl"),
        "context_dim": cfg.context_dim,
        "transformer_depth_output": [a for a in att for _ in range(cfg.num_res_blocks + 1)],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def clip_model_config(cfg: UNetConfig, encoder: str = "l") -> dict:
    """The text-model config overrides of one encoder ("l": the clip_* fields, "g": SDXL's clip_g_* fields)."""
    if encoder == "g":
        return {"hidden_size": cfg.clip_g_width, "intermediate_size": cfg.clip_g_intermediate,
                "num_attention_heads": cfg.clip_g_heads, "num_hidden_layers": cfg.clip_g_layers,
                "projection_dim": cfg.clip_g_projection}
    return {
        "hidden_size": cfg.clip_width,
        "intermediate_size": cfg.clip_intermediate,
        "num_attention_heads": cfg.clip_heads,
        "num_hidden_layers": cfg.clip_layers,
        "projection_dim": cfg.clip_width,
    }


def vae_ddconfig(cfg: UNetConfig) -> dict:
    return {
        "double_z": True,
        "z_channels": cfg.latent_channels,
        "resolution": cfg.image_size,
        "in_channels": 3,
        "out_ch": 3,
        "ch": cfg.vae_ch,
        "ch_mult": list(cfg.vae_ch_mult),
        "num_res_blocks": cfg.vae_res_blocks,
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def _tokenizer_class(width: int, family: str = "sd1", g_width: int = 0):
    import comfy.sd1_clip

    if family == "sdxl":
        import comfy.sdxl_clip

        class ToySDXLTokenizer(comfy.sdxl_clip.SDXLTokenizer):
            """ComfyUI's SDXL tokenizer (the real CLIP-L and bigG tokenizers, bigG padding with token 0), with
            embedding sizes matching narrow text encoders."""

            def __init__(self, embedding_directory=None, tokenizer_data={}):
                super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)
                self.clip_l = comfy.sd1_clip.SDTokenizer(embedding_directory=embedding_directory,
                                                         tokenizer_data=tokenizer_data, embedding_size=width)
                self.clip_g = comfy.sd1_clip.SDTokenizer(
                    embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, pad_with_end=False,
                    embedding_size=g_width, embedding_key="clip_g")

        return ToySDXLTokenizer

    if family == "sd2":
        class ToySD2Tokenizer(comfy.sd1_clip.SD1Tokenizer):
            """The real OpenCLIP-H tokenizer of SD2.x (ComfyUI's SD2ClipHTokenizer settings: pads with token 0, not
            the end token; embeddings under 'clip_h'), with an embedding size matching a narrow text encoder."""

            def __init__(self, embedding_directory=None, tokenizer_data={}):
                super().__init__(
                    embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, clip_name="h",
                    tokenizer=functools.partial(comfy.sd1_clip.SDTokenizer, pad_with_end=False, embedding_size=width,
                                                embedding_key="clip_h"))

        return ToySD2Tokenizer

    class ToySD1Tokenizer(comfy.sd1_clip.SD1Tokenizer):
        """The real SD1 CLIP tokenizer, with an embedding size matching a narrow text encoder."""

        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(
                embedding_directory=embedding_directory,
                tokenizer_data=tokenizer_data,
                tokenizer=functools.partial(comfy.sd1_clip.SDTokenizer, embedding_size=width),
            )

    return ToySD1Tokenizer


# --------------------------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------------------------

def build_unet(config, state_dict: dict | None = None, seed: int = 0, dtype: torch.dtype | None = None):
    """Builds ``(model_patcher, clip, vae)`` for an SD1.x-architecture model of the given config.

    ``config``: a UNetConfig, a dict of its fields, or a named config ("tiny_test", "toyworld").
    ``state_dict``: optional weights with keys ``model.diffusion_model.*``, ``clip.*`` (the text encoder's own
    state dict, e.g. ``clip_l.transformer...``) and ``vae.*``; missing → seeded init.
    ``dtype``: weight dtype of all three parts; None → comfy.model_management's choice (fp32 on CPU).
    """
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base

    cfg = config_from_any(config)
    sd = state_dict or {}
    unet_sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    clip_sd = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
    vae_sd = {k[len("vae."):]: v for k, v in sd.items() if k.startswith("vae.")}

    if cfg.family not in ("sd1", "sd2", "sdxl") or cfg.prediction not in ("eps", "v"):
        raise ValueError(f"unknown model family {cfg.family!r} / prediction {cfg.prediction!r}: use 'sd1', 'sd2' or "
                         "'sdxl', 'eps' or 'v'")
    # ---- UNet
    if cfg.family == "sd2":
        model_config = comfy.supported_models.SD20(unet_config_dict(cfg))
    elif cfg.family == "sdxl":
        model_config = comfy.supported_models.SDXL(unet_config_dict(cfg))
    else:
        model_config = comfy.supported_models.SD15(unet_config_dict(cfg))
    # SD15's / SD20's unet_extra_config force their head counts over the given config: honour ours
    model_config.unet_config["num_heads"] = cfg.num_heads
    model_config.unet_config["num_head_channels"] = -1
    load_device = mm.get_torch_device()
    unet_dtype = dtype
    if unet_dtype is None:
        unet_dtype = mm.unet_dtype(model_params=0, supported_dtypes=list(model_config.supported_inference_dtypes))
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    if cfg.prediction == "v":
        # what ComfyUI's SD20.model_type detects for a v-prediction checkpoint (from its weights' statistics)
        import comfy.model_base

        cls = comfy.model_base.SDXL if cfg.family == "sdxl" else comfy.model_base.BaseModel
        model = cls(model_config, model_type=comfy.model_base.ModelType.V_PREDICTION, device="cpu")
    else:
        model = model_config.get_model({}, "", device="cpu")
    if unet_sd:
        missing = [k for k in model.diffusion_model.state_dict() if "diffusion_model." + k not in unet_sd]
        if missing:
            raise KeyError(f"UNet weights missing {len(missing)} keys, e.g. {missing[:3]}")
        model.load_model_weights(dict(unet_sd), "diffusion_model.")
    else:
        init_weights(model.diffusion_model, seed)
    model_patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())

    # ---- text encoder (the family's real tokenizer, narrow CLIP)
    if cfg.family == "sd2":
        import comfy.text_encoders.sd2_clip

        target = comfy.supported_models_base.ClipTarget(_tokenizer_class(cfg.clip_width, "sd2"),
                                                        comfy.text_encoders.sd2_clip.SD2ClipModel)
    elif cfg.family == "sdxl":
        import comfy.sdxl_clip

        target = comfy.supported_models_base.ClipTarget(
            _tokenizer_class(cfg.clip_width, "sdxl", cfg.clip_g_width), comfy.sdxl_clip.SDXLClipModel)
    else:
        target = comfy.supported_models_base.ClipTarget(_tokenizer_class(cfg.clip_width), comfy.sd1_clip.SD1ClipModel)
    model_options = {f"clip_{'h' if cfg.family == 'sd2' else 'l'}_model_config": clip_model_config(cfg),
                     "initial_device": mm.text_encoder_offload_device()}
    if cfg.family == "sdxl":
        model_options["clip_g_model_config"] = clip_model_config(cfg, "g")
    if dtype is not None:
        model_options["dtype"] = dtype
    clip = comfy.sd.CLIP(target, model_options=model_options)
    if clip_sd:
        m, u = clip.cond_stage_model.load_state_dict(clip_sd, strict=False)
        m = [k for k in m if not k.endswith("position_ids")]
        if m:
            raise KeyError(f"text encoder weights missing {len(m)} keys, e.g. {m[:3]}")
    else:
        init_weights(clip.cond_stage_model, seed + 1)

    # ---- VAE
    vae_config = {"params": {"ddconfig": vae_ddconfig(cfg), "embed_dim": cfg.latent_channels}}
    if not vae_sd:
        # comfy.sd.VAE loads from a state dict; build the module once to get seeded initial weights
        from comfy.ldm.models.autoencoder import AutoencoderKL

        tmp = AutoencoderKL(**vae_config["params"])
        tmp.to_empty(device="cpu") if any(p.is_meta for p in tmp.parameters()) else None
        init_weights(tmp, seed + 2)
        vae_sd = {k: v.detach().clone() for k, v in tmp.state_dict().items()}
        del tmp
    vae = comfy.sd.VAE(sd=vae_sd, config=vae_config, dtype=dtype)
    vae.downscale_ratio = cfg.vae_downscale
    vae.upscale_ratio = cfg.vae_downscale
    vae.toy_config = cfg
    model_patcher.toy_config = cfg
    model.toy_config = cfg  # survives ModelPatcher.clone()
    clip.toy_config = cfg
    return model_patcher, clip, vae


def count_parameters(model_patcher, clip, vae) -> dict:
    n = lambda m: sum(p.numel() for p in m.parameters())
    return {
        "unet": n(model_patcher.model.diffusion_model),
        "text_encoder": n(clip.cond_stage_model),
        "token_embedding": sum(
            getattr(clip.cond_stage_model, name).transformer.text_model.embeddings.token_embedding.weight.numel()
            for name in ("clip_l", "clip_g", "clip_h") if hasattr(clip.cond_stage_model, name)),
        "vae": n(vae.first_stage_model),
    }


# --------------------------------------------------------------------------------------------------------------
# save / load (safetensors, config in metadata)
# --------------------------------------------------------------------------------------------------------------

def state_dicts(model_patcher, clip, vae) -> dict:
    out = {}
    for k, v in model_patcher.model.diffusion_model.state_dict().items():
        out["model.diffusion_model." + k] = v
    for k, v in clip.cond_stage_model.state_dict().items():
        if k.endswith("position_ids"):
            continue
        out["clip." + k] = v
    for k, v in vae.first_stage_model.state_dict().items():
        out["vae." + k] = v
    return out


def save_weights(path, model_patcher, clip, vae, dtype=torch.float16, extra_metadata: dict | None = None) -> None:
    """Writes all three parts into one safetensors file (atomically, comfy_bridge.files.save_safetensors); the
    config is in the metadata."""
    from .files import save_safetensors

    cfg = (getattr(model_patcher, "toy_config", None) or getattr(model_patcher.model, "toy_config", None)
           or getattr(vae, "toy_config", None))
    if cfg is None:
        raise ValueError("model was not built by build_unet (no toy_config attached)")
    tensors = {}
    for k, v in state_dicts(model_patcher, clip, vae).items():
        v = v.detach().to("cpu")
        if v.is_floating_point() and dtype is not None:
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {"format": "attention_edit.sd1x", "config": json.dumps(cfg.to_dict())}
    for k, v in (extra_metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    save_safetensors(str(path), tensors, meta)


def read_weights(path):
    """Returns (config, state_dict, metadata) of a file written by save_weights."""
    from .files import read_safetensors

    sd, meta = read_safetensors(str(path), "model weights file", check_finite=False)
    if "config" not in meta:
        raise ValueError(f"{path}: no 'config' in the safetensors metadata (not written by save_weights?)")
    return config_from_any(json.loads(meta["config"])), sd, meta


def load_weights(path, dtype: torch.dtype | None = None):
    """Loads ``(model_patcher, clip, vae)`` from a file written by ``save_weights``.

    ``dtype`` None → the comfy.model_management default (fp32 on CPU; fp16 weights are upcast)."""
    cfg, sd, _ = read_weights(path)
    return build_unet(cfg, state_dict=sd, dtype=dtype)


def build_sdxl_unet(cfg, dtype=None, seed: int = 0):
    """The UNet (a ModelPatcher) of an SDXL-family UNetConfig with SDXL's own head layout: ComfyUI's SDXL model
    config keeps num_head_channels = 64 (10 heads at 640 channels, 20 at 1280), where build_unet sets one head count
    for every level. Seeded weights (init_weights). dtype: the weights' and computation's dtype (None:
    comfy.model_management's choice, fp32 on the CPU; bench/bench_foundation.py --family sdxl --full-size)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = config_from_any(cfg)
    model_config = comfy.supported_models.SDXL(unet_config_dict(cfg))
    load_device = mm.get_torch_device()
    if dtype is None:
        unet_dtype = mm.unet_dtype(model_params=0, supported_dtypes=list(model_config.supported_inference_dtypes))
        model_config.set_inference_dtype(unet_dtype, mm.unet_manual_cast(unet_dtype, load_device,
                                                                         model_config.supported_inference_dtypes))
    else:
        model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "", device="cpu")
    init_weights(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


def build_tiny_sdxl_refiner(seed: int = 0):
    """A tiny SDXL-refiner-architecture MODEL (ComfyUI's SDXLRefiner config and UNet: bigG-only 1280-wide context,
    aesthetic-score ADM input; seeded random weights): a UNet family the pack does not edit, for the refusal
    tests. Returns the ModelPatcher only."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    unet_config = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                   "legacy": False, "num_classes": "sequential", "adm_in_channels": 64 + 5 * 256, "in_channels": 4,
                   "model_channels": 32, "num_res_blocks": [1, 1], "transformer_depth": [0, 1],
                   "transformer_depth_output": [0, 0, 1, 1], "channel_mult": [1, 2], "transformer_depth_middle": 1,
                   "use_linear_in_transformer": True, "context_dim": 64, "num_head_channels": 16,
                   "use_temporal_attention": False, "use_temporal_resblock": False}
    model_config = comfy.supported_models.SDXLRefiner(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device="cpu")
    init_weights(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


#: old name of :func:`build_unet` (see :data:`SD1xConfig`)
build_sd1x = build_unet


def pixels_per_latent(model_patcher) -> int:
    """How many image pixels one latent pixel covers along a side: the latent format's spacial_downscale_ratio
    (ComfyUI 0.33; 0.3.75 has no such attribute, and every family it serves, SD1.x / SD2.x / SDXL / Flux.1, is 8)."""
    fmt = getattr(getattr(model_patcher, "model", None), "latent_format", None)
    return int(getattr(fmt, "spacial_downscale_ratio", 8) or 8)
