"""Training inside ComfyUI: the session a trainer runs in, trainable weight changes on a clone, and the model
facts trainers need (weight keys, unpatched weights, diffusers names, ComfyUI's LoRA loader).

:class:`TrainingSession` implements the ``training.fit.Session`` protocol the pure trainers in ``training/`` are
written against (``denoise``, ``sigmas_for``, ``num_timesteps``, ``grad_scaler``, ``check_interrupt``,
``is_interrupt``, ``device``).

ComfyUI API used: ``comfy.model_management.load_models_gpu(force_full_load=True)`` / ``free_memory`` /
``loaded_models``, ``ModelPatcher.clone`` / ``add_weight_wrapper`` / ``add_patches`` / ``get_model_object`` /
``model.apply_model`` / ``model.process_latent_in``, ``comfy.weight_adapter.LoRAAdapter.create_train``,
``comfy.lora.load_lora`` / ``model_lora_keys_unet``, ``comfy.utils.unet_to_diffusers`` / ``get_attr``.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .progress import is_interrupt, throw_if_interrupted
from .families import require
from .sampling import adm_vector, make_weights_autograd_safe, model_pooled_width

__all__ = ["TrainingSession", "training_clone", "add_delta_wrappers", "add_lora_adapters", "weight_keys",
           "base_weight", "diffusers_key_map", "lora_patches", "encode_images", "vae_factor", "model_latent",
           "copy_layer_norm_inputs", "context_dim"]


def training_clone(model_patcher):
    """A clone to train through. On ComfyUI 0.33's dynamic-VRAM patcher (GPUs, comfy-aimdo) a plain
    ModelPatcher is made (``clone(disable_dynamic=True)``, what ComfyUI's own LoRA trainer gets from
    ``force_deepcopy``): weight wrappers and full loading are not implemented there."""
    is_dynamic = getattr(model_patcher, "is_dynamic", None)
    if callable(is_dynamic) and is_dynamic():
        return model_patcher.clone(disable_dynamic=True)
    return model_patcher.clone()


def context_dim(model_patcher) -> Optional[int]:
    uc = getattr(getattr(model_patcher.model, "model_config", None), "unet_config", None) or {}
    d = uc.get("context_dim")
    return int(d) if d else None


def _copy_first_input(module, args):
    """Forward pre-hook: the module gets a copy of its first input (so a later in-place change of the caller's
    tensor cannot corrupt what autograd saved)."""
    if args and torch.is_tensor(args[0]) and args[0].requires_grad:
        return (args[0].clone(),) + tuple(args[1:])
    return None


def copy_layer_norm_inputs(module: torch.nn.Module) -> list:
    """ComfyUI's CLIP layers add residuals in place (x += attn(layer_norm1(x))), which destroys the input the layer
    norm saved for backward; this feeds every LayerNorm of ``module`` a copy (same values) through forward
    pre-hooks on this module only. Returns the hook handles (``.remove()`` them after training)."""
    return [m.register_forward_pre_hook(_copy_first_input) for m in module.modules()
            if isinstance(m, torch.nn.LayerNorm)]


def _checkpointed(m: torch.nn.Module) -> None:
    import torch.utils.checkpoint

    plain = m.forward

    def forward(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(lambda a, k: plain(*a, **k), args, kwargs, use_reentrant=False)

    m._ae_plain_forward = plain
    m.forward = forward


def _uncheckpointed(m: torch.nn.Module) -> None:
    if hasattr(m, "_ae_plain_forward"):
        m.forward = m._ae_plain_forward
        del m._ae_plain_forward


class TrainingSession(contextlib.AbstractContextManager):
    """Context for a training loop on a MODEL (and CLIP): ``with TrainingSession(mp, clip, ...) as s:``.

    On entry: leaves inference mode (``torch.inference_mode(False)``, grad enabled), loads the model fully through
    ``comfy.model_management.load_models_gpu`` (so its weight patches and weight wrappers apply), makes the UNet's
    and the text encoder's weights usable by autograd (``sampling.make_weights_autograd_safe``: same values), and
    optionally wraps the UNet's blocks in gradient checkpointing (activations are recomputed in the backward pass:
    less memory, about a third more time). On exit: removes the checkpointing and hooks, takes this session's
    weight wrappers off the shared modules and unloads this patcher.

    Why not ComfyUI's sampler (as sampling.ComfyRunner does for inversion): training needs random noise levels per
    example and a backward pass per step, not a sigma schedule; calling ``apply_model`` of the loaded model is the
    plainer loop. Sampling-time patches of other nodes are therefore not applied during training; weight patches
    (LoRAs) are. ValueError, on entry, for a MODEL whose family record (comfy_bridge.families) leaves it out of node
    group ``group`` ("train": concept training; "imagic": Imagic's fine-tune and embedding optimisation)."""

    def __init__(self, model_patcher, clip=None, gradient_checkpointing: bool = False, group: str = "train"):
        self.mp = model_patcher
        self.group = group
        self.clip = clip
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self._stack = contextlib.ExitStack()
        self._patched: list = []
        self._hooks: list = []
        self._pooled = 0

    @property
    def device(self):
        return self.mp.load_device

    def __enter__(self):
        try:
            return self._enter()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _enter(self):
        import comfy.model_management as mm

        self._stack.enter_context(torch.inference_mode(False))
        self._stack.enter_context(torch.enable_grad())
        require("Concept training" if self.group == "train" else "Imagic", self.mp, self.group)
        self._pooled = model_pooled_width(self.mp)
        models = [self.mp] + ([self.clip.patcher] if self.clip is not None else [])
        mm.load_models_gpu(models, force_full_load=True)  # both at once: neither evicts the other later
        make_weights_autograd_safe(self.mp.model.diffusion_model)
        if self.clip is not None:
            make_weights_autograd_safe(self.clip.cond_stage_model)
            self._hooks.extend(copy_layer_norm_inputs(self.clip.cond_stage_model))
        if self.gradient_checkpointing:
            dm = self.mp.model.diffusion_model
            blocks = list(getattr(dm, "input_blocks", [])) + [getattr(dm, "middle_block", None)] + \
                list(getattr(dm, "output_blocks", []))
            for b in blocks:
                if b is not None:
                    _checkpointed(b)
                    self._patched.append(b)
        return self

    def __exit__(self, *exc):
        import comfy.model_management as mm

        try:
            for b in self._patched:
                _uncheckpointed(b)
            self._patched.clear()
            for h in self._hooks:
                h.remove()
            self._hooks.clear()
            # ComfyUI clears weight functions when a model is next loaded; remove this session's wrappers now, so
            # the shared modules hold no training-only function in between
            mine = {id(f) for fs in self.mp.weight_wrapper_patches.values() for f in fs}
            if mine:
                for m in self.mp.model.modules():
                    for attr in ("weight_function", "bias_function"):
                        fs = getattr(m, attr, None)
                        if fs:
                            setattr(m, attr, [f for f in fs if id(f) not in mine])
            _unload(mm, self.mp)
        finally:
            self._stack.close()
        return False

    # -- the training.fit.Session protocol
    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The model's denoised estimate x0 of VE latents x_t [B, C, h, w] at noise levels sigma [B] with text
        conditioning context [B, T, D] (gradients flow through context and the trained weight changes). SDXL:
        context [B, T + 1, D] whose last row holds the pooled vector (comfy_bridge.text.PromptEncoder with
        ``pooled``); the ADM input is built from it for an uncropped image of the latent's size (8 pixels per latent
        pixel, as ComfyUI's conditioning defaults)."""
        extra = {}
        if self._pooled:
            if context.shape[1] % 77 != 1:
                raise ValueError(f"this SDXL model needs the pooled text vector as the last context row (77 k + 1 "
                                 f"rows), got {context.shape[1]} rows")
            h, w = x_t.shape[-2:]
            extra["y"] = adm_vector(self.mp, context[:, -1, :self._pooled], w * 8, h * 8)
            context = context[:, :-1]
        return self.mp.model.apply_model(x_t, sigma, c_crossattn=context, **extra)

    def grad_scaler(self):
        """A loss scaler against fp16 gradient underflow: active when the UNet computes in float16 on a CUDA
        device (the trained tensors themselves are float32), a no-op otherwise. Use ``step(opt, loss)``."""
        from ..training.fit import Stepper

        mdl = self.mp.model
        dtype = getattr(mdl, "manual_cast_dtype", None) or mdl.get_dtype()
        on = dtype == torch.float16 and getattr(self.device, "type", str(self.device)) == "cuda"
        return Stepper(torch.amp.GradScaler("cuda", enabled=True) if on else None)

    def sigmas_for(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Model sigmas of integer training timesteps [B] (0 .. num_timesteps - 1)."""
        ms = self.mp.get_model_object("model_sampling")
        return ms.sigmas.to(self.device)[timesteps.to(self.device)].float()

    def num_timesteps(self) -> int:
        return int(self.mp.get_model_object("model_sampling").sigmas.shape[0])

    def check_interrupt(self) -> None:
        throw_if_interrupted()

    def is_interrupt(self, exc: BaseException) -> bool:
        return is_interrupt(exc)


def _unload(mm, model_patcher) -> None:
    """Unloads ``model_patcher`` only, through ``free_memory`` with every other loaded model kept."""
    others = [lm for lm in mm.current_loaded_models if lm.model is not model_patcher]
    if len(others) != len(mm.current_loaded_models):
        mm.free_memory(1e30, model_patcher.load_device, keep_loaded=others)


# ---------------------------------------------------------------------------------------------------------------
# trainable changes on a clone
# ---------------------------------------------------------------------------------------------------------------

class DeltaWrapper:
    """Differentiable weight wrapper W -> W + dW (ModelPatcher.add_weight_wrapper)."""

    def __init__(self, delta: torch.Tensor):
        self.delta = delta

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.delta.to(device=w.device, dtype=w.dtype)


def add_delta_wrappers(mp, base, keys) -> dict:
    """Zero float32 deltas dW (requires_grad) for ``keys`` of ``base``'s weights, wrapped into ``mp`` (a clone)
    as W -> W + dW. Returns {key: dW} on the clone's device."""
    dev = mp.load_device
    with torch.inference_mode(False):
        deltas = {k: torch.zeros(base_weight(base, k).shape, dtype=torch.float32, device=dev, requires_grad=True)
                  for k in keys}
    for k in keys:
        mp.add_weight_wrapper(k, DeltaWrapper(deltas[k]))
    return deltas


def add_lora_adapters(mp, base, keys, rank: int, seed: int):
    """ComfyUI's LoRA training adapters (W + (alpha / r) B A, B zero, alpha = r, r = min(rank, out, in)) on
    ``keys`` of ``mp`` (a clone of ``base``). Returns (params {file key: trainable tensor}, constants {file key:
    alpha}) in ComfyUI's LoRA key format (``<module>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``)."""
    import comfy.weight_adapter as wa

    params, constants = {}, {}
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + 7)
        for key in keys:
            w = base_weight(base, key)
            r = min(int(rank), int(w.shape[0]), int(w[0].numel()))
            adapter = wa.LoRAAdapter.create_train(w.detach(), rank=r, alpha=float(r)).float()
            mod = key[:-len(".weight")]
            params[f"{mod}.lora_up.weight"] = adapter.lora_up.weight
            params[f"{mod}.lora_down.weight"] = adapter.lora_down.weight
            constants[f"{mod}.alpha"] = torch.tensor(float(r))
            mp.add_weight_wrapper(key, adapter)
    return params, constants


def weight_keys(model_patcher) -> list:
    """[(model key, tensor, module name, attribute)] of the UNet's weights and biases that ComfyUI patches and
    wraps (modules with a ``weight_function``), in module order."""
    out = []
    for n, m in model_patcher.model.named_modules():
        if not (n.startswith("diffusion_model.") and hasattr(m, "weight_function")):
            continue
        for attr in ("weight", "bias"):
            p = getattr(m, attr, None)
            if isinstance(p, torch.Tensor):
                out.append((f"{n}.{attr}", p, n, attr))
    return out


def parameter_shapes(model_patcher) -> dict:
    """{model key: shape} of every parameter of the model (``diffusion_model.*``)."""
    return {k: tuple(p.shape) for k, p in model_patcher.model.named_parameters()}


def base_weight(model_patcher, key: str) -> torch.Tensor:
    """The unpatched weight of ``key`` (what the checkpoint holds, before LoRAs or concepts patched it in)."""
    import comfy.utils

    bk = model_patcher.backup.get(key) if hasattr(model_patcher, "backup") else None
    if bk is not None:
        return bk.weight
    return comfy.utils.get_attr(model_patcher.model, key)


def diffusers_key_map(model_patcher) -> dict:
    """{diffusers UNet parameter name: ComfyUI model key} for this model, from ComfyUI's own
    ``comfy.utils.unet_to_diffusers`` applied to the loaded model's unet_config."""
    import comfy.utils

    uc = model_patcher.model.model_config.unet_config
    return {k: "diffusion_model." + v for k, v in comfy.utils.unet_to_diffusers(uc).items()}


def lora_patches(model_patcher, tensors: dict) -> dict:
    """Weight patches {model key: patch} of tensors in ComfyUI's LoRA key format, made by ComfyUI's own LoRA
    loader (``comfy.lora.load_lora`` with ``model_lora_keys_unet``). A patch is ("diff", (dW,)) or a LoRA
    adapter with ``.weights`` (up [out, r], down [r, in], ...)."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model_patcher.model, {})
    return comfy.lora.load_lora(dict(tensors), key_map, log_missing=False)


def patched_clone(model_patcher, patches: dict, strength: float = 1.0):
    """A clone with weight ``patches`` ({key: ("diff", (dW,)) or an adapter}) at ``strength``."""
    m = model_patcher.clone()
    if patches:
        m.add_patches(patches, float(strength))
    return m


def vae_factor(vae) -> int:
    """The VAE's pixel-to-latent downscale factor (8 for SD)."""
    f = getattr(vae, "downscale_ratio", 8)
    return int(f) if isinstance(f, (int, float)) else 8


@torch.no_grad()
def encode_images(vae, model_patcher, pixels: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """VAE latents in the model's latent space (process_latent_in applied), float32 on the CPU, of ``pixels``
    [N, 3, H, W] in [0, 1]."""
    lat = []
    for k in range(0, pixels.shape[0], batch):
        chunk = pixels[k:k + batch].permute(0, 2, 3, 1).contiguous()  # IMAGE layout
        lat.append(vae.encode(chunk).float().cpu())
    latents = torch.cat(lat)
    with torch.inference_mode(False):
        return model_patcher.model.process_latent_in(latents).float().cpu().clone()


def encode_image(vae, image: torch.Tensor) -> torch.Tensor:
    """VAE Encode of an IMAGE [1, H, W, 3] in [0, 1]: the LATENT samples, float32 CPU, not an inference tensor."""
    with torch.no_grad():
        lat = vae.encode(image.float().clamp(0, 1))
    with torch.inference_mode(False):
        return lat.detach().float().cpu().clone()


def model_latent(model_patcher, latent: torch.Tensor) -> torch.Tensor:
    """A LATENT's samples scaled into the model's latent space (process_latent_in), float32, not an inference
    tensor."""
    with torch.inference_mode(False):
        return model_patcher.model.process_latent_in(latent.clone()).float().clone()


class UNetFacts:
    """What the pure trainers and file formats need to know of a MODEL: ``shapes`` {model key: shape} of every
    parameter, ``base_weight(key)`` (the unpatched weight) and ``diffusers_map()`` ({diffusers name: model key})."""

    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.shapes = parameter_shapes(model_patcher)
        self._dmap = None

    def base_weight(self, key: str) -> torch.Tensor:
        return base_weight(self.model_patcher, key)

    def diffusers_map(self) -> dict:
        if self._dmap is None:
            self._dmap = diffusers_key_map(self.model_patcher)
        return self._dmap


def load_for_sampling(model_patcher) -> None:
    """Loads a MODEL onto its device as sampling would (``comfy.model_management.load_models_gpu``)."""
    import comfy.model_management as mm

    mm.load_models_gpu([model_patcher])
