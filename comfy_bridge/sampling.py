"""Runs the pack's own sampling loops (inversion, null-text optimisation, edit replay) inside ComfyUI's sampler.

A loop (``inversion/``: ``loop(denoiser, x, sigmas) -> x``) is handed to ComfyUI as a custom KSAMPLER function and
driven by a ``CFGGuider``, so ComfyUI does what it always does around sampling: loads the model (and its weight
patches), applies hooks and wrappers from other packs, sets ``sample_sigmas`` in the transformer options,
processes latents in/out (SD's 0.18215 scale), and cleans up afterwards.

Inside the loop, :class:`ComfyDenoiser` (the ``inversion.protocol.Denoiser`` of this host) evaluates the model for
arbitrary text embeddings: ``denoise(x, sigma, cond_emb, uncond_emb)`` batches the conditional rows and the
unconditional rows into one UNet call through ``comfy.samplers.calc_cond_batch``.

ComfyUI API used (0.3.75 and 0.33.0 alike): ``comfy.samplers.CFGGuider`` (set_conds, set_cfg, sample, conds,
inner_model), ``KSAMPLER``, ``calc_cond_batch``, ``cfg_function``, ``calculate_sigmas``, ``SCHEDULER_NAMES``,
``comfy.conds.CONDCrossAttn``, ``comfy.sample.sample`` / ``prepare_noise`` (core sampling for comparisons).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..inversion.core import METHODS as INVERSION_METHODS  # noqa: F401  (the runner's --method choices)
from ..inversion.ddim import reference_ddim_timesteps
from ..inversion.protocol import Loop
from .families import FAMILIES, family_key, family_of, prediction_of, prediction_type, short_name
from .progress import throw_if_interrupted

P2P_DDIM = "p2p_ddim"
#: the reference timesteps with the reference's last level: the last step goes to alphas_cumprod[0] (the model's
#: smallest sigma) instead of to sigma 0
P2P_DDIM_REFERENCE = "p2p_ddim_reference"

__all__ = ["P2P_DDIM", "P2P_DDIM_REFERENCE", "ComfyDenoiser", "ComfyRunner", "runner", "schedule_names",
           "replay_schedule", "core_sample", "latent_channels", "make_weights_autograd_safe", "text_embedding",
           "pooled_width", "model_pooled_width", "adm_vector", "sampling_kind"]


class ComfyDenoiser:
    """``inversion.protocol.Denoiser`` on ComfyUI, for a loop running inside ComfyUI's sampler.

    guider: the CFGGuider driving the loop (processed conds, inner model); model_options: the sampler's model
    options (with ``transformer_options['sample_sigmas']``); sigmas: the schedule the loop walks."""

    def __init__(self, guider, model_options: dict, sigmas: torch.Tensor):
        self.guider = guider
        self.model = guider.inner_model
        self.model_options = model_options
        self.sigmas = sigmas
        self._template = guider.conds["positive"][0]
        #: SDXL: the pooled text vector is one more row of every embedding (see :func:`text_embedding`)
        self.pooled_width = pooled_width(self.model, self._template.get("pooled_output"))
        self._kind = _takes_pooled(self.model)
        self._adm_tail = None

    def with_kernel(self, kernel: str) -> "ComfyDenoiser":
        """This denoiser with another attention kernel: "host" (ComfyUI's configured one) or "sdpa" (PyTorch's
        scaled_dot_product_attention, ``comfy.ldm.modules.attention.attention_pytorch``) through the public
        ``transformer_options["optimized_attention_override"]``; an override another node set is kept."""
        if kernel == "host":
            return self
        if kernel != "sdpa":
            raise ValueError(f"unknown attention kernel {kernel!r}; use 'host' or 'sdpa'")
        to = dict(self.model_options.get("transformer_options", {}))
        if "optimized_attention_override" in to:
            return self
        to["optimized_attention_override"] = _sdpa_override
        other = ComfyDenoiser.__new__(ComfyDenoiser)
        other.__dict__.update(self.__dict__)
        other.model_options = {**self.model_options, "transformer_options": to}
        return other

    @property
    def device(self):
        return self.sigmas.device

    @property
    def prediction(self) -> str:
        """"v" for a v-prediction model (ComfyUI's V_PREDICTION model sampling), "flow" for a rectified-flow model
        (CONST: Flux, SD3), else "eps"."""
        return sampling_kind(self.model.model_sampling)

    @property
    def sigma_min(self) -> float:
        return float(self.model.model_sampling.sigma_min)

    @property
    def pooled_rows(self) -> int:
        """1 when every embedding ends with a pooled-vector row (SDXL), else 0."""
        return 1 if self.pooled_width else 0

    def _conds(self, emb: torch.Tensor):
        import comfy.conds

        c = dict(self._template)
        mc = dict(c["model_conds"])
        if self.pooled_width and self._kind == "vector":
            # Flux: the pooled CLIP-L vector is the model's vector input y; the T5 sequence its context
            mc["y"] = comfy.conds.CONDRegular(emb[:, -1, :self.pooled_width])
            mc["c_crossattn"] = type(mc["c_crossattn"])(emb[:, :-1].to(self.device))
            c["model_conds"] = mc
            return [c]
        if self.pooled_width:
            if emb.shape[1] % 77 != 1:
                raise ValueError(f"an SDXL embedding for the loops has 77 k + 1 rows (the last holds the pooled "
                                 f"vector: comfy_bridge.sampling.text_embedding), got {emb.shape[1]}")
            # SDXL's ADM input y = [pooled (P), size / crop embeddings (6 x 256)] (comfy.model_base.SDXL.encode_adm):
            # each row's own pooled vector, the template's size / crop conditioning
            P = self.pooled_width
            if self._adm_tail is None:
                y = mc["y"].cond
                with torch.inference_mode(False):
                    self._adm_tail = y[:1, P:].clone()
            tail = self._adm_tail.to(self.device)
            pooled = emb[:, -1, :P].to(tail.dtype)
            mc["y"] = comfy.conds.CONDRegular(torch.cat([pooled, tail.expand(emb.shape[0], -1)], 1))
            emb = emb[:, :-1]
        mc["c_crossattn"] = comfy.conds.CONDCrossAttn(emb.to(self.device))
        c["model_conds"] = mc
        return [c]

    def denoise(self, x: torch.Tensor, sigma: float, cond_emb: Optional[torch.Tensor],
                uncond_emb: Optional[torch.Tensor]):
        """See ``inversion.protocol.Denoiser.denoise``: one batched ``calc_cond_batch`` call."""
        import comfy.samplers

        s = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
        conds = [self._conds(cond_emb) if cond_emb is not None else None,
                 self._conds(uncond_emb) if uncond_emb is not None else None]
        out = comfy.samplers.calc_cond_batch(self.model, conds, x, s, self.model_options)
        return (out[0] if cond_emb is not None else None, out[1] if uncond_emb is not None else None)

    def cfg(self, cond_x0, uncond_x0, x, sigma: float, scale: float) -> torch.Tensor:
        """Classifier-free guidance through ComfyUI's cfg_function (CFG and post-CFG functions of other nodes
        apply): uncond + scale * (cond - uncond)."""
        import comfy.samplers

        if uncond_x0 is None:
            return cond_x0
        s = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
        return comfy.samplers.cfg_function(self.model, cond_x0, uncond_x0, scale, x, s, model_options=self.model_options)

    def enable_grad(self) -> None:
        make_weights_autograd_safe(self.guider.model_patcher.model.diffusion_model)

    def check_interrupt(self) -> None:
        throw_if_interrupted()


def sampling_kind(model_sampling) -> str:
    """"eps", "v" or "flow" (CONST: x = (1 - sigma) x0 + sigma eps, Flux / SD3) for a ComfyUI model_sampling: the
    math the loops use (families.prediction_of; any other kind is treated as eps: the families the nodes accept have
    only these three)."""
    kind = prediction_of(model_sampling)
    return kind if kind in ("flow", "v") else "eps"


def _takes_pooled(model) -> str:
    """How a model (BaseModel or MODEL) takes the pooled text vector, from its family record: "adm" (SDXL: the ADM
    input starts with it), "vector" (Flux: the model's vector input y) or "none"."""
    fam = family_of(model)
    return fam.pooled if fam is not None else "none"


def _binder(model_patcher) -> str:
    """The attention binder of a MODEL's family ("unet" or "joint"; "unet" for a model of no registered family,
    which the nodes refuse before they get here)."""
    fam = family_of(model_patcher)
    return fam.binder if fam is not None else "unet"


def pooled_width(model, pooled: Optional[torch.Tensor]) -> int:
    """Width P of the pooled text vector a model takes as part of its conditioning (SDXL: the ADM input starts
    with the pooled bigG output, P = 1280; Flux: the pooled CLIP-L output is its vector input y, P = 768), 0 for
    models that ignore it (SD1.x, SD2.x). ``model``: a BaseModel; ``pooled``: the conditioning's ``pooled_output``
    [1, P] (ValueError when it has none)."""
    if _takes_pooled(model) == "none":
        return 0
    if pooled is None:
        raise ValueError(f"this {family_of(model).short} conditioning has no pooled output; encode the prompts with "
                         "CLIP Text Encode from the checkpoint's CLIP")
    return int(pooled.shape[-1])


def model_pooled_width(model_patcher) -> int:
    """The pooled-vector width P a MODEL takes in its ADM input (SDXL: adm_in_channels - 6 x 256 = 1280), 0 for
    models without one."""
    if _takes_pooled(model_patcher) != "adm":
        return 0
    return int(model_patcher.model.adm_channels) - 6 * 256


def adm_vector(model_patcher, pooled: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """SDXL's ADM input y [B, adm] for pooled vectors [B, P] (gradients flow into them) and an image of
    ``width`` x ``height`` pixels, uncropped (what ComfyUI's CLIP Text Encode implies: original = target size, crop
    0; comfy.model_base.SDXL.encode_adm)."""
    P = pooled.shape[-1]
    with torch.no_grad():
        tail = model_patcher.model.encode_adm(pooled_output=torch.zeros(1, P), width=int(width),
                                              height=int(height))[:, P:]
    return torch.cat([pooled, tail.to(pooled).expand(pooled.shape[0], -1)], 1)


def text_embedding(model_patcher, cond) -> torch.Tensor:
    """The one tensor the pack's loops optimise and batch for a CONDITIONING: its token embeddings [1, T, D]; for
    a model that also takes the pooled text vector (SDXL), one more row [1, T + 1, D] whose first P entries are
    the pooled vector (the rest zeros). :class:`ComfyDenoiser` splits it again; so null-text inversion can
    optimise the pooled vector with the sequence, and every prompt of an edit keeps its own pooled vector.
    ValueError when the pooled vector is wider than the tokens (no such model in ComfyUI)."""
    emb = cond[0][0]
    P = pooled_width(model_patcher.model, (cond[0][1] or {}).get("pooled_output"))
    if not P:
        return emb
    if P > emb.shape[-1]:
        raise ValueError(f"pooled output width {P} exceeds the token width {emb.shape[-1]}")
    pooled = cond[0][1]["pooled_output"].to(emb)
    row = torch.zeros(emb.shape[0], 1, emb.shape[-1], dtype=emb.dtype, device=emb.device)
    row[:, 0, :P] = pooled.reshape(emb.shape[0] if pooled.shape[0] == emb.shape[0] else 1, P)
    return torch.cat([emb, row], 1)


def _sdpa_override(func, *args, **kwargs):
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch(*args, **kwargs)


class ComfyRunner:
    """``inversion.protocol.LoopRunner`` on ComfyUI: runs a loop with ``model_patcher`` (a MODEL; a clone with the
    attention controller installed when one is given) and ``conditioning`` (a CONDITIONING whose first entry is
    the template the loop's embeddings replace; extra keys such as pooled outputs are kept)."""

    def __init__(self, model_patcher, conditioning, controller=None):
        self.conditioning = conditioning
        self.controller = None
        if controller is not None and _binder(model_patcher) == "joint":
            self.controller = controller  # installed in run(), which knows the latent's size
        elif controller is not None:
            from .attention import install_controller

            model_patcher = install_controller(model_patcher, controller)
        self.model_patcher = model_patcher

    def embedding(self, cond) -> torch.Tensor:
        """The loops' tensor for a CONDITIONING (:func:`text_embedding`)."""
        return text_embedding(self.model_patcher, cond)

    def run(self, loop: Loop, latent: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        import comfy.samplers

        model = self.model_patcher
        if self.controller is not None:
            from .joint_attention import install_joint_controller

            model = install_joint_controller(model, self.controller, int(self.conditioning[0][0].shape[1]),
                                            tuple(latent.shape[-2:]), self.controller.mmdit_blocks)
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(self.conditioning, self.conditioning)
        guider.set_cfg(1.0)

        flow = sampling_kind(model.get_model_object("model_sampling")) == "flow"

        def sampler_function(model_k, x, sig, extra_args=None, callback=None, disable=None, **kw):
            if flow:
                # CONST noise scaling with zero noise is (1 - sigma_0) * latent, 0 at sigma_0 = 1: hand the loop
                # the processed latent itself (what the scaling gives the other models)
                x = model_k.inner_model.inner_model.process_latent_in(latent.to(x)).to(x)
            return loop(ComfyDenoiser(model_k.inner_model, extra_args["model_options"], sig), x, sig)

        sampler = comfy.samplers.KSAMPLER(sampler_function)
        # zero noise: ComfyUI's noise_scaling then hands the loop the (processed) latent itself
        noise = torch.zeros_like(latent)
        return guider.sample(noise, latent, sampler, sigmas, seed=0)


def runner(model_patcher, conditioning, controller=None) -> ComfyRunner:
    return ComfyRunner(model_patcher, conditioning, controller)


def schedule_names() -> list:
    """Schedulers an inversion can use: the reference DDIM timesteps (ending at sigma 0, or at the reference's last
    level), then ComfyUI's."""
    import comfy.samplers

    return [P2P_DDIM, P2P_DDIM_REFERENCE] + list(comfy.samplers.SCHEDULER_NAMES)


def replay_schedule(model_patcher, scheduler: str, steps: int) -> torch.Tensor:
    """The descending sigma schedule an inversion is replayed on, as a CPU float tensor.

    'p2p_ddim' is the reference's DDIM timesteps (``inversion.ddim.reference_ddim_timesteps``: 980, 960, ..., 0 at
    50 steps), then sigma 0: exactly ``steps`` steps, the last one a full denoise; on a rectified-flow model (Flux)
    it means ComfyUI's 'simple' schedule (evenly spaced times through the model's time shift). 'p2p_ddim_reference' ends where
    the reference's last DDIM step goes, alphas_cumprod[0] (diffusers' DDIMScheduler with set_alpha_to_one=False):
    the model's smallest sigma, so the last step leaves the latent nearly unchanged (google/prompt-to-prompt
    null_text_w_ptp.ipynb prev_step at t = 0). Other names are ComfyUI's schedulers
    (``comfy.samplers.calculate_sigmas``); some of them (ddim_uniform) may return one step more than asked.
    ValueError for an unknown name or steps < 1."""
    import comfy.samplers

    if scheduler not in schedule_names():
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {schedule_names()}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    ms = model_patcher.get_model_object("model_sampling")
    if scheduler == P2P_DDIM and sampling_kind(ms) == "flow":
        # the default's meaning on a rectified-flow model: evenly spaced times through the model's time shift, the
        # schedule Flux is sampled with (ComfyUI's 'simple' = diffusers' FlowMatchEulerDiscreteScheduler)
        scheduler = "simple"
    if scheduler == P2P_DDIM_REFERENCE and sampling_kind(ms) == "flow":
        raise ValueError(f"'{scheduler}' is the DDIM timestep schedule of diffusion models; this is a rectified-flow "
                         "model (Flux): use 'simple' (Flux's usual schedule, with the model's time shift) or "
                         "another of ComfyUI's schedulers")
    if scheduler in (P2P_DDIM, P2P_DDIM_REFERENCE):
        sig = ms.sigma(reference_ddim_timesteps(len(ms.sigmas), steps)).float().cpu()
        last = sig.new_zeros(1) if scheduler == P2P_DDIM else ms.sigma(torch.zeros(1)).float().cpu()
        return torch.cat([sig, last])
    return comfy.samplers.calculate_sigmas(ms, scheduler, steps).float().cpu()


def core_sample(model_patcher, positive, negative, latent: torch.Tensor, steps: int, cfg: float,
                sampler: str = "euler", scheduler: str = "normal", seed: int = 0, noise: Optional[torch.Tensor] = None,
                denoise: float = 1.0, sigmas: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ComfyUI's own sampling (what KSampler / SamplerCustom run) of LATENT ``latent`` [B, C, H, W]; the noise is
    ComfyUI's ``prepare_noise(latent, seed)`` unless given; with ``sigmas`` it samples that schedule
    (``comfy.sample.sample_custom``). For comparisons and benchmarks."""
    import comfy.sample
    import comfy.samplers

    if noise is None:
        noise = comfy.sample.prepare_noise(latent, seed)
    if sigmas is not None:
        return comfy.sample.sample_custom(model_patcher, noise, cfg, comfy.samplers.sampler_object(sampler), sigmas,
                                          positive, negative, latent, seed=seed, disable_pbar=True)
    return comfy.sample.sample(model_patcher, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               denoise=denoise, seed=seed, disable_pbar=True)


def latent_channels(model_patcher) -> Optional[int]:
    fmt = getattr(model_patcher.model, "latent_format", None)
    return getattr(fmt, "latent_channels", None)


def make_weights_autograd_safe(module: torch.nn.Module) -> None:
    """Lets autograd save a model's weights: replaces inference-mode parameters/buffers by ordinary copies with the
    same values, in place (the one walker of the pack; training and null-text inversion use it).

    ComfyUI runs nodes under ``torch.inference_mode()``, so weights loaded by a loader node are inference tensors,
    and autograd refuses to save them for backward ("Inference tensors cannot be saved for backward") even inside
    ``inference_mode(False)``. The copies hold identical values, so every later use of the model gives the same
    results; frozen weights get ``requires_grad=False`` (no weight gradient is ever computed: only what is being
    optimised gets gradients). Must run inside ``torch.inference_mode(False)``."""
    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            if p is None:
                continue
            if p.is_inference():
                setattr(m, name, torch.nn.Parameter(p.clone(), requires_grad=False))
            elif p.requires_grad:
                p.requires_grad_(False)
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None and b.is_inference():
                m._buffers[name] = b.clone()


def invert(model_patcher, latent: torch.Tensor, source_cond, empty_cond, sigmas: torch.Tensor, **kwargs):
    """``inversion.core.invert`` of one LATENT [1, C, H, W] with ``model_patcher``, run in ComfyUI's sampler."""
    from ..inversion.core import invert as invert_loop

    check_method(model_patcher, kwargs.get("method", "null_text"))
    kwargs.setdefault("flow_guidance", _flow_guidance(model_patcher))
    inv = invert_loop(ComfyRunner(model_patcher, source_cond), latent, source_cond, empty_cond, sigmas, **kwargs)
    return _record_model(inv, model_patcher)


def _flow_guidance(model_patcher) -> bool:
    """Whether a MODEL is a rectified-flow model sampled with classifier-free guidance (its record's ``guidance``
    is "cfg": SD3; Flux's is "embedded")."""
    fam = family_of(model_patcher)
    return fam is not None and fam.is_flow and fam.guidance == "cfg"


def check_method(model_patcher, method: str) -> None:
    """ValueError when an inversion method does not fit the model, by its family record's ``inversion_methods``:
    the rectified-flow methods (rf_euler, rf_solver, fireflow) need a flow model (Flux), null_text /
    negative_prompt / ddim a diffusion model with classifier-free guidance (SD1.x / SD2.x / SDXL); direct serves
    both. A model of no registered family is judged by its prediction kind."""
    from ..inversion.core import DIFFUSION_METHODS, FLOW_MODEL_METHODS, METHODS

    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; choose one of {METHODS}")
    fam = family_of(model_patcher)
    flow = sampling_kind(model_patcher.get_model_object("model_sampling")) == "flow"
    allowed = fam.inversion_methods if fam is not None else (FLOW_MODEL_METHODS if flow else DIFFUSION_METHODS)
    if method in allowed:
        return
    name = fam.short if fam is not None else "this model"
    if flow and fam is not None and fam.guidance == "cfg":
        raise ValueError(f"'{method}' inverts diffusion models (DDIM steps); this is a rectified-flow model ({name}), "
                         f"which the pack inverts along its flow (the edit then guides with the CFG scale): choose "
                         f"one of {', '.join(allowed)}")
    if flow:
        raise ValueError(f"'{method}' inverts diffusion models with classifier-free guidance; this is a "
                         f"rectified-flow model ({name}: its guidance is an embedding, there is no unconditional "
                         f"branch to optimise): choose one of {', '.join(allowed)}")
    raise ValueError(f"'{method}' is a rectified-flow inversion (Flux); for this diffusion model ({name}) choose one "
                     f"of {', '.join(allowed)}")


def _record_model(inv, model_patcher):
    inv.family, inv.prediction = family_key(model_patcher), prediction_type(model_patcher)
    return inv


def check_inversion_model(inversion, model_patcher, node: str = "") -> None:
    """ValueError when ``inversion`` was made with a model of another family or prediction type than
    ``model_patcher`` (what was recorded; inversions saved before the pack recorded it are not checked)."""
    family, pred = family_key(model_patcher), prediction_type(model_patcher)
    head = f"{node}: " if node else ""
    if inversion.family and inversion.family != family:
        was, now = short_name(inversion.family), short_name(family)
        art = FAMILIES[inversion.family].article if inversion.family in FAMILIES else "a"
        raise ValueError(f"{head}this inversion was made with {art} {was} model but the MODEL connected here is {now}; "
                         f"edit with the model the image was inverted with, or invert the image again with this one")
    if inversion.prediction and inversion.prediction != pred:
        raise ValueError(f"{head}this inversion was made with a {inversion.prediction}-prediction model but the "
                         f"MODEL connected here predicts {pred}; edit with the model the image was inverted with, "
                         "or invert the image again with this one")


def invert_batch(model_patcher, latent: torch.Tensor, source_conds: list, empty_cond, sigmas: torch.Tensor, **kwargs):
    """``inversion.core.invert_batch`` of a LATENT batch [B, C, H, W] (one CONDITIONING per image) with
    ``model_patcher``, run in ComfyUI's sampler as one batch; returns B inversions."""
    from ..inversion.core import invert_batch as invert_loop

    check_method(model_patcher, kwargs.get("method", "null_text"))
    kwargs.setdefault("flow_guidance", _flow_guidance(model_patcher))
    return [_record_model(inv, model_patcher) for inv in
            invert_loop(ComfyRunner(model_patcher, source_conds[0]), latent, source_conds, empty_cond, sigmas,
                        **kwargs)]


def edit(model_patcher, inversion, target_conds: list, controller=None, **kwargs) -> torch.Tensor:
    """``inversion.replay.edit``: replays ``inversion`` with the edited prompts' CONDITIONINGs, ``controller``
    installed on a clone of ``model_patcher``; returns [1 + edits, C, H, W] LATENT samples."""
    from ..inversion.replay import edit as replay

    check_inversion_model(inversion, model_patcher)
    return replay(ComfyRunner(model_patcher, inversion.source_cond, controller), inversion, target_conds, controller,
                  **kwargs)


def noise_level(model_patcher, strength: float) -> float:
    """The sigma at which a fraction ``strength`` of the model's noise schedule is left to denoise (DiffEdit's
    encoding ratio; img2img's denoise): ComfyUI's ``model_sampling.percent_to_sigma(1 - strength)``, the timestep
    strength x 1000 for a diffusion model, the time-shifted level for a rectified-flow one."""
    ms = model_patcher.get_model_object("model_sampling")
    return float(ms.percent_to_sigma(1.0 - float(strength)))


def prediction_mask(model_patcher, inversion, target_conds: list, draws: int = None, strength: float = None,
                    seed: int = 0, progress=None) -> torch.Tensor:
    """``inversion.prediction_mask.prediction_difference_loop`` for the photo of ``inversion`` (its encoded latent)
    and the edited prompts' CONDITIONINGs, run in ComfyUI's sampler with ``model_patcher`` (no controller: plain
    predictions; ``draws`` / ``strength`` default to DiffEdit's, attention.masks.NOISE_DRAWS / NOISE_STRENGTH).
    Returns the raw maps [edits, 1, h, w] at the latent's resolution."""
    from ..attention.masks import NOISE_DRAWS, NOISE_STRENGTH
    from ..inversion.prediction_mask import prediction_difference_loop
    from ..inversion.replay import prompt_embeddings

    draws = NOISE_DRAWS if draws is None else draws
    strength = NOISE_STRENGTH if strength is None else strength
    run = ComfyRunner(model_patcher, inversion.source_cond)
    embs = prompt_embeddings(inversion, target_conds, run.embedding)
    sigma = noise_level(model_patcher, strength)
    out = {}

    def loop(den, x, sig):
        with torch.no_grad():
            out["map"] = prediction_difference_loop(den, x, sigma, embs.to(x.device, x.dtype), draws, seed, progress)
        return x

    with torch.no_grad():
        run.run(loop, inversion.latent.clone(), torch.tensor([sigma, 0.0]))
    return out["map"].cpu()
