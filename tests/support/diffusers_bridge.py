"""Bridge between this pack's ComfyUI-native SD1.x UNet and diffusers, for cross-checking the samplers.

``to_diffusers_unet(model_patcher)`` copies the weights of a ComfyUI SD1.x UNet (ldm / CompVis layout) into a
``diffusers.UNet2DConditionModel`` with the matching config, using diffusers' own converter
(``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint``). The config is read from the config the
ComfyUI model was actually built with (``model.model_config.unet_config``, after ComfyUI merged its
``unet_extra_config``), not from the pack's ``SD1xConfig``, so the two networks compute the same function.

Conventions (see sampling/engine.py): ComfyUI latents inside a sampler are "VE" latents
``x_VE = x0 + sigma * eps = x_VP / sqrt(alpha_bar)`` with ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``, in the
0.18215-scaled latent space; diffusers samples are ``x_VP`` in the same scaled space. A ComfyUI LATENT (what
VAEEncode returns and what the samplers return) is ``x_VE / 0.18215``.

The reference loops here are written with diffusers' UNet, diffusers' ``alphas_cumprod`` and (where named)
diffusers' schedulers only; nothing in them calls this pack's sampling code.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "SCALE_FACTOR",
    "diffusers_unet_config",
    "to_diffusers_unet",
    "make_schedulers",
    "alpha_bar_levels",
    "sigma_of",
    "sigmas_from_scheduler",
    "ve_to_vp",
    "vp_to_ve",
    "eps_diffusers",
    "model_output",
    "ddim_inversion_explicit",
    "ddim_inversion_scheduler",
    "cfg_ddim_sample",
]

#: SD1.x latent scale factor (comfy.latent_formats.SD15.scale_factor); SDXL's is 0.13025 (the model's
#: latent_format.scale_factor says which)
SCALE_FACTOR = 0.18215

#: SD1.x training schedule, as diffusers spells it for StableDiffusionPipeline.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


# ----------------------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------------------

def diffusers_unet_config(model_patcher) -> dict:
    """The ``UNet2DConditionModel`` config matching a ComfyUI SD1.x UNet (``comfy.ldm...openaimodel.UNetModel``).

    Read from ``model_patcher.model.model_config.unet_config``: block_out_channels = model_channels *
    channel_mult, layers_per_block = num_res_blocks, CrossAttn blocks at the levels with a transformer,
    cross_attention_dim = context_dim, and the number of heads (ldm ``num_heads``, or channels //
    ``num_head_channels`` when num_heads is -1), which diffusers takes, for SD1.x checkpoints, through the
    historically misnamed ``attention_head_dim`` argument.
    """
    uc = dict(model_patcher.model.model_config.unet_config)
    adm = uc.get("adm_in_channels")
    if adm is not None and uc.get("num_classes") != "sequential":
        raise NotImplementedError("class-conditioned (ADM) UNets other than SDXL's are not handled here")
    mc = int(uc["model_channels"])
    mult = list(uc["channel_mult"])
    nres = uc["num_res_blocks"]
    nres = list(nres) if isinstance(nres, (list, tuple)) else [nres] * len(mult)
    if len(set(nres)) != 1:
        raise NotImplementedError(f"diffusers needs the same num_res_blocks at every level, got {nres}")
    depth = list(uc["transformer_depth"])  # one entry per res block of the down path
    per_level = [depth[i * nres[0]:(i + 1) * nres[0]] for i in range(len(mult))]
    if any(len(set(d)) != 1 for d in per_level):
        raise NotImplementedError(f"mixed transformer depths inside a level: {per_level}")
    level_depth = [d[0] for d in per_level]
    chans = [mc * m for m in mult]
    nh, nhc = int(uc.get("num_heads", -1)), int(uc.get("num_head_channels", -1))
    heads = [nh if nh != -1 else c // nhc for c in chans]
    mid_depth = int(uc.get("transformer_depth_middle", level_depth[-1]))
    if mid_depth != max(level_depth[-1], 1):
        raise NotImplementedError(f"middle transformer depth {mid_depth} vs last level {level_depth[-1]}")
    return dict(
        sample_size=int(uc.get("image_size") or 64),
        in_channels=int(uc["in_channels"]),
        out_channels=int(uc["out_channels"]),
        block_out_channels=tuple(chans),
        layers_per_block=nres[0],
        down_block_types=tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in level_depth),
        up_block_types=tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(level_depth)),
        mid_block_type="UNetMidBlock2DCrossAttn",
        transformer_layers_per_block=tuple(max(d, 1) for d in level_depth),
        cross_attention_dim=int(uc["context_dim"]),
        attention_head_dim=tuple(heads),
        norm_num_groups=32,  # ldm GroupNorm32
        flip_sin_to_cos=True,
        freq_shift=0,
        use_linear_projection=bool(uc.get("use_linear_in_transformer")),  # SD2.x: linear proj_in / proj_out
        # SDXL: the ADM input (pooled text + 6 size / crop embeddings of 256) as StableDiffusionXLPipeline's UNet
        **(dict(addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=int(adm)) if adm is not None else {}),
    )


def to_diffusers_unet(model_patcher, dtype: torch.dtype = torch.float32):
    """A ``diffusers.UNet2DConditionModel`` holding the same weights as the ComfyUI MODEL (eval mode, CPU).

    Raises KeyError when the converted state dict does not cover the diffusers model exactly."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    cfg = diffusers_unet_config(model_patcher)
    unet = UNet2DConditionModel(**cfg)
    ckpt = {"model.diffusion_model." + k: v.detach().to("cpu", torch.float32)
            for k, v in model_patcher.model.diffusion_model.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(ckpt, unet.config)
    own = unet.state_dict()
    missing = [k for k in own if k not in converted]
    extra = [k for k in converted if k not in own]
    bad = [k for k in own if k in converted and tuple(own[k].shape) != tuple(converted[k].shape)]
    if missing or extra or bad:
        raise KeyError(f"ldm -> diffusers conversion mismatch: missing {missing[:3]}, extra {extra[:3]}, "
                       f"shape {bad[:3]}")
    unet.load_state_dict(converted, strict=True)
    if dtype != torch.float32:
        unet = unet.to(dtype=dtype)
    from attention_edit.comfy_bridge.families import prediction_type

    # what the UNet's output is, in diffusers' scheduler terms (ComfyUI's model_sampling says it)
    unet.ae_prediction_type = "v_prediction" if prediction_type(model_patcher) == "v" else "epsilon"
    return unet.eval().requires_grad_(False)


def _cat(embs):
    """torch.cat of embeddings, each a tensor or an SDXL (sequence, pooled) pair."""
    if isinstance(embs[0], tuple):
        return tuple(torch.cat([e[i] for e in embs]) for i in range(2))
    return torch.cat(embs)


def _call(unet, x_vp: torch.Tensor, t: int, emb):
    """The UNet at (x, t) with ``emb``: [B or 1, 77, D], or for SDXL (sequence [B or 1, 77, D], pooled
    [B or 1, P]) with ``unet.ae_time_ids`` [6] (original size, crop top-left, target size, as
    StableDiffusionXLPipeline._get_add_time_ids) as the added conditioning."""
    B = x_vp.shape[0]
    added = None
    if isinstance(emb, tuple):
        emb, pooled = emb
        pooled = pooled.expand(B, -1) if pooled.shape[0] != B else pooled
        added = {"text_embeds": pooled, "time_ids": unet.ae_time_ids.reshape(1, -1).expand(B, -1)}
    if emb.shape[0] != B:
        emb = emb.expand(B, *emb.shape[1:])
    return unet(x_vp, int(t), encoder_hidden_states=emb, added_cond_kwargs=added).sample


@torch.no_grad()
def model_output(unet, x_vp: torch.Tensor, t: int, emb) -> torch.Tensor:
    """diffusers' raw UNet output at (x_VP, t, emb): eps for an epsilon model, v for a v-prediction one."""
    return _call(unet, x_vp, t, emb)


@torch.no_grad()
def eps_diffusers(unet, x_vp: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
    """diffusers' noise prediction eps(x_VP, t, emb); x_vp [B, C, H, W], emb [B or 1, 77, D]. For a v-prediction
    UNet eps = sqrt(alpha_bar_t) v + sqrt(1 - alpha_bar_t) x_VP (Salimans & Ho 2022; diffusers DDIMScheduler)."""
    out = model_output(unet, x_vp, t, emb)
    if getattr(unet, "ae_prediction_type", "epsilon") == "v_prediction":
        a = float(_alphas_cumprod()[int(t)])
        out = a ** 0.5 * out + (1.0 - a) ** 0.5 * x_vp
    return out


def _alphas_cumprod() -> torch.Tensor:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_SCHEDULE).alphas_cumprod


# ----------------------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------------------

def make_schedulers(steps: int, steps_offset: int = 1, prediction_type: str = "epsilon"):
    """(DDIMScheduler, DDIMInverseScheduler) for SD1.x / SD2.x (clip_sample=False, set_alpha_to_one=False, 'leading'
    spacing, as the prompt-to-prompt notebooks and StableDiffusionPipeline use), with ``set_timesteps(steps)``;
    ``prediction_type`` "epsilon" or "v_prediction" (SD 2.x 768-v)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    kw = dict(SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=steps_offset,
              timestep_spacing="leading", prediction_type=prediction_type)
    fwd, inv = DDIMScheduler(**kw), DDIMInverseScheduler(**kw)
    fwd.set_timesteps(steps)
    inv.set_timesteps(steps)
    return fwd, inv


def alpha_bar_levels(scheduler) -> tuple[list[float], list[int]]:
    """The levels a DDIMScheduler walks through: (alpha_bars [N + 1], timesteps [N]), descending in noise.

    alpha_bars[i] = alphas_cumprod[timesteps[i]] for i < N and alpha_bars[N] = the alpha the last step goes to
    (``final_alpha_cumprod``: alphas_cumprod[0] with set_alpha_to_one=False)."""
    ts = [int(t) for t in scheduler.timesteps]
    ac = scheduler.alphas_cumprod.double()
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    abars = [float(ac[t]) for t in ts]
    last_prev = ts[-1] - ratio
    abars.append(float(ac[last_prev]) if last_prev >= 0 else float(scheduler.final_alpha_cumprod))
    return abars, ts


def sigma_of(alpha_bar: float) -> float:
    """VE sigma of a VP level: sqrt((1 - alpha_bar) / alpha_bar)."""
    return ((1.0 - alpha_bar) / alpha_bar) ** 0.5


def sigmas_from_scheduler(scheduler) -> torch.Tensor:
    """The pack's descending VE sigma schedule [N + 1] walking exactly the DDIMScheduler's levels."""
    abars, _ = alpha_bar_levels(scheduler)
    return torch.tensor([sigma_of(a) for a in abars], dtype=torch.float32)


def ve_to_vp(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_VP = x_VE * sqrt(alpha_bar) = x_VE / sqrt(1 + sigma^2)."""
    return x_ve / (1.0 + float(sigma) ** 2) ** 0.5


def vp_to_ve(x_vp: torch.Tensor, sigma: float) -> torch.Tensor:
    return x_vp * (1.0 + float(sigma) ** 2) ** 0.5


# ----------------------------------------------------------------------------------------------------------
# reference loops (diffusers UNet + diffusers alphas)
# ----------------------------------------------------------------------------------------------------------

def _ddim_move(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """DDIM (eta = 0) in VP form, Song et al. Eq. 12: x0 = (x - sqrt(1-a) eps) / sqrt(a); sqrt(a') x0 + sqrt(1-a') eps."""
    x0 = (x - (1.0 - a_from) ** 0.5 * eps) / a_from ** 0.5
    return a_to ** 0.5 * x0 + (1.0 - a_to) ** 0.5 * eps


@torch.no_grad()
def ddim_inversion_explicit(unet, scheduler, x0_vp: torch.Tensor, emb: torch.Tensor,
                            eps_at: str = "source") -> list:
    """DDIM inversion (guidance 1, embedding ``emb``) over the levels of ``scheduler`` (a DDIMScheduler after
    set_timesteps), written out with diffusers' UNet and alphas. Returns the VP trajectory, clean .. x_T.

    The step from level a to the next noisier level b moves by Eq. 12 with a noise prediction taken at
      * eps_at="source": eps(x_a, t_a) -- Mokady et al. 2022 Eq. (DDIM inversion as written in the paper); the
        clean latent's level (final_alpha_cumprod) is evaluated at timestep 0;
      * eps_at="target": eps(x_a, t_b) -- the reference notebook's ``ddim_loop`` + ``next_step``
        (google/prompt-to-prompt null_text_w_ptp.ipynb) and diffusers' DDIMInverseScheduler.
    """
    if eps_at not in ("source", "target"):
        raise ValueError(eps_at)
    abars, ts = alpha_bar_levels(scheduler)
    N = len(ts)
    src_t = ts[1:] + [0]  # timestep of each level's own noise: levels abars[1:], abars[N] -> t=0
    x = x0_vp
    traj = [x]
    for k in range(N, 0, -1):  # level k -> level k-1 (noisier)
        t_eval = src_t[k - 1] if eps_at == "source" else ts[k - 1]
        eps = eps_diffusers(unet, x, t_eval, emb)
        x = _ddim_move(x, eps, abars[k], abars[k - 1])
        traj.append(x)
    return traj


@torch.no_grad()
def ddim_inversion_scheduler(unet, inverse_scheduler, x0_vp: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """diffusers' DDIMInverseScheduler loop as StableDiffusionDiffEditPipeline / the docs run it:
    for t in timesteps (ascending): x = step(eps(x, t), t, x)."""
    x = x0_vp
    for t in inverse_scheduler.timesteps:
        x = inverse_scheduler.step(model_output(unet, x, int(t), emb), t, x).prev_sample
    return x


@torch.no_grad()
def cfg_ddim_sample(unet, scheduler, x_T_vp: torch.Tensor, cond, uncond,
                    guidance_scale: float) -> torch.Tensor:
    """DDIMScheduler.step loop with classifier-free guidance, eps = eps_u + s (eps_c - eps_u), the conditional
    and unconditional rows in one UNet batch (as StableDiffusionPipeline; on v outputs for a v-prediction UNet, as
    there, the same guidance since eps is affine in v). ``uncond``: one embedding, or one per step. Returns the
    final VP sample (at final_alpha_cumprod). Embeddings as :func:`_call` takes them; per-step ones as a list."""
    x = x_T_vp
    for i, t in enumerate(scheduler.timesteps):
        u = uncond[i] if isinstance(uncond, list) else uncond  # a tuple is one SDXL (sequence, pooled) pair
        out = _call(unet, torch.cat([x, x]), int(t), _cat([u, cond]))
        eps_u, eps_c = out.chunk(2)
        x = scheduler.step(eps_u + guidance_scale * (eps_c - eps_u), t, x).prev_sample
    return x


# ----------------------------------------------------------------------------------------------------------
# Flux (rectified flow): diffusers' FluxTransformer2DModel on the same weights
# ----------------------------------------------------------------------------------------------------------

def to_diffusers_flux(model_patcher):
    """A ``diffusers.FluxTransformer2DModel`` holding the weights of a ComfyUI Flux MODEL (comfy/ldm/flux, the BFL
    layout), mapped with ComfyUI's own diffusers <-> BFL key table ``comfy.utils.flux_to_diffusers`` (diffusers'
    single-file converter assumes Flux.1's 3072 width). KeyError when a diffusers parameter gets no weight."""
    import comfy.utils
    from diffusers import FluxTransformer2DModel

    dm = model_patcher.model.diffusion_model
    p = dm.params
    heads = int(p.num_heads)
    unet = FluxTransformer2DModel(
        patch_size=1, in_channels=int(p.in_channels) * 4, out_channels=None, num_layers=int(p.depth),
        num_single_layers=int(p.depth_single_blocks), attention_head_dim=int(p.hidden_size) // heads,
        num_attention_heads=heads, joint_attention_dim=int(p.context_in_dim), pooled_projection_dim=int(p.vec_in_dim),
        guidance_embeds=bool(p.guidance_embed), axes_dims_rope=tuple(int(a) for a in p.axes_dim))
    sd = {k: v.detach().float().cpu() for k, v in dm.state_dict().items()}
    kmap = comfy.utils.flux_to_diffusers({"depth": p.depth, "depth_single_blocks": p.depth_single_blocks,
                                          "hidden_size": p.hidden_size})
    return _load_mapped(unet, sd, kmap)


def _load_mapped(unet, sd: dict, kmap: dict):
    """Loads ``unet`` (a diffusers model) from the ComfyUI state dict ``sd`` through one of ComfyUI's diffusers key
    tables (comfy.utils ``flux_to_diffusers`` / ``mmdit_to_diffusers``: diffusers key -> ComfyUI key, or (key,
    (dim, offset, length)) for a slice of a fused tensor, or (key, None, function)). A QK-norm weight is found under
    either of the hosts' names (0.33: ``.weight``, 0.3.75: ``.scale``). KeyError when a diffusers parameter gets no
    weight; returns the model in eval mode without gradients."""
    out = {}
    for dkey in unet.state_dict():
        src = kmap.get(dkey)
        if src is None:
            raise KeyError(f"no ComfyUI weight for diffusers parameter {dkey}")
        if isinstance(src, str):
            src = (src, None)
        name = src[0]
        if name not in sd:  # 0.33 names the QK-norm weights .weight, 0.3.75 .scale
            name = name.replace(".scale", ".weight") if name.endswith(".scale") else name.replace(".weight", ".scale")
        w = sd[name]
        if len(src) > 2:
            w = src[2](w)
        elif src[1] is not None:
            dim, off, length = src[1]
            w = w.narrow(dim, off, length)
        out[dkey] = w.clone()
    unet.load_state_dict(out, strict=True)
    return unet.eval().requires_grad_(False)


def flux_pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C] (diffusers FluxPipeline._pack_latents; ComfyUI's patchify order)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def flux_unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, n, c4 = x.shape
    c = c4 // 4
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@torch.no_grad()
def flux_velocity(unet, x: torch.Tensor, sigma: float, seq: torch.Tensor, pooled: torch.Tensor,
                  guidance: float = 3.5) -> torch.Tensor:
    """diffusers' Flux velocity v(x, sigma) for latents x [B, C, H, W] (model space), as FluxPipeline calls the
    transformer: packed 2x2 patches, timestep sigma (the model scales by 1000), text ids 0, image ids (0, row, col)."""
    b, c, h, w = x.shape
    img_ids = torch.zeros(h // 2, w // 2, 3)
    img_ids[..., 1] = torch.arange(h // 2)[:, None]
    img_ids[..., 2] = torch.arange(w // 2)[None, :]
    txt_ids = torch.zeros(seq.shape[1], 3)
    g = torch.full((b,), float(guidance)) if unet.config.guidance_embeds else None
    out = unet(hidden_states=flux_pack(x), timestep=torch.full((b,), float(sigma)), guidance=g,
               pooled_projections=pooled.expand(b, -1), encoder_hidden_states=seq.expand(b, -1, -1),
               txt_ids=txt_ids, img_ids=img_ids.reshape(-1, 3)).sample
    return flux_unpack(out, h, w)


def to_diffusers_sd3(model_patcher):
    """A ``diffusers.SD3Transformer2DModel`` holding the weights of a ComfyUI SD3 MODEL (comfy/ldm/modules/
    diffusionmodules/mmdit.py), mapped with ComfyUI's own diffusers <-> MMDiT key table
    ``comfy.utils.mmdit_to_diffusers``. KeyError when a diffusers parameter gets no weight."""
    import comfy.utils
    from diffusers import SD3Transformer2DModel

    dm = model_patcher.model.diffusion_model
    cfg = model_patcher.model.model_config.unet_config
    depth = int(dm.depth)
    hidden = int(dm.hidden_size)
    sd = {k: v.detach().float().cpu() for k, v in dm.state_dict().items()}
    unet = SD3Transformer2DModel(
        sample_size=int(cfg.get("pos_embed_max_size")) * 2, patch_size=2, in_channels=int(dm.in_channels),
        num_layers=depth, attention_head_dim=64, num_attention_heads=int(dm.num_heads),
        joint_attention_dim=int(sd["context_embedder.weight"].shape[1]), caption_projection_dim=hidden,
        pooled_projection_dim=int(sd["y_embedder.mlp.0.weight"].shape[1]), out_channels=int(dm.out_channels),
        pos_embed_max_size=int(cfg.get("pos_embed_max_size")),
        dual_attention_layers=tuple(int(i) for i in cfg.get("x_block_self_attn_layers", [])),
        qk_norm="rms_norm" if cfg.get("qk_norm") else None)
    return _load_mapped(unet, sd, comfy.utils.mmdit_to_diffusers({"depth": depth}))
