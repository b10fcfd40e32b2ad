"""Imagic (Kawar et al., CVPR 2023, "Imagic: Text-Based Real Image Editing with Diffusion Models") on the
MODEL/VAE/CONDITIONING of a ComfyUI graph: the three steps of the paper as tensor functions, and the file format.

Given one photo x and a target text whose encoding is e_tgt [1, T, d] (the whole CLIP conditioning, T = 77 per
chunk), with the diffusion loss of the paper (DDPM's simplified objective)

    L(x, e, theta) = E_{t, eps} || eps - f_theta(x_t, t, e) ||^2

1. text-embedding optimisation (:func:`optimize_embedding`): e_opt = argmin_e L(x, e, theta) starting from e_tgt,
   model frozen (paper: about 100 steps on Imagen; the diffusers community pipeline: Adam, lr 1e-3, 500 steps, one
   uniform random t per step). Few steps keep e_opt close to e_tgt; :class:`Imagic` reports the distance.
2. model fine-tuning (:func:`finetune`): theta_hat = argmin_theta L(x, e_opt, theta), e_opt frozen (paper: about
   1500 steps; diffusers community: Adam, lr 2e-6, 1000 steps on the full UNet). Here the change is kept OUTSIDE the
   model, as weight patches on a clone: ``full`` (a delta dW for every UNet parameter), ``attention`` (deltas for the
   attn1/attn2 projections only) or ``lora`` (a low-rank adapter W + (alpha/r) B A on every 2-D/4-D UNet weight,
   trained through ComfyUI's own ``comfy.weight_adapter.LoRAAdapter``; the default: small files, ordinary GPUs).
3. interpolation (:func:`interpolate`): e_bar = eta * e_tgt + (1 - eta) * e_opt, given to the fine-tuned model as
   ordinary CONDITIONING; sampling is ComfyUI's own (KSampler). eta = 1 is exactly the target prompt, eta = 0
   exactly e_opt (which the fine-tuned model turns back into the photo); the paper picks eta in 0.6-0.8. The
   community pipeline's alpha = 1.2 extrapolates past the target; eta up to :data:`ETA_MAX` is accepted.

Training runs through the trainers' shared machinery (a ``training.fit.Session``, comfy_bridge.training's
TrainingSession on ComfyUI; ``training/objectives.py``'s loss and ``training/fit.py``'s loop with best-so-far and
interrupt). e_opt is a plain tensor (the reference optimises the text encoder's output, not token embeddings), so
no gradient goes through CLIP. The graph's MODEL is never changed. Nothing here imports ComfyUI.

File (:func:`save_imagic` / :func:`load_imagic`), ``attention_edit.imagic`` safetensors, everything float32:

* ``imagic.e_tgt``, ``imagic.e_opt`` [1, T, d]; ``imagic.photo_latent`` [1, C, h, w] (the VAE encoding of the
  photo, as VAE Encode returns it); ``imagic.pooled_output`` when the target conditioning had one;
* the fine-tuned UNet change in ComfyUI's generic LoRA key format, so ComfyUI's own loader reads it:
  ``diffusion_model.<module>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha`` (lora), or
  ``diffusion_model.<module>.diff`` / ``.diff_b`` (weight / bias deltas: full, attention). Core "LoraLoaderModelOnly"
  applies it too (it warns that the ``imagic.*`` keys are not LoRA keys);
* metadata: format, version, name, stage ("embedding" after step 1, "finetuned" after step 2), the settings, the
  probe losses before/after each stage, the e_opt-e_tgt distance, steps done, interrupted.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .fit import TrainingInterrupted, fit
from .objectives import eps_loss

__all__ = [
    "FORMAT", "TRAIN_MODES", "DEFAULT_LEARNING_RATES", "EMBEDDING_DEFAULTS", "FINETUNE_DEFAULTS", "ETA_MIN",
    "ETA_MAX", "ETA_DEFAULT", "Imagic", "is_imagic", "target_embedding", "check_photo", "check_latent_channels",
    "optimize_embedding", "finetune", "trained_keys", "file_key", "check_patches", "interpolate", "conditioning",
    "parse_etas", "sweep", "imagic_file", "imagic_from_file", "eta_grid",
]

FORMAT = "attention_edit.imagic"
PREFIX = "imagic."
TRAIN_MODES = ("lora", "attention", "full")
#: learning rate per fine-tuning mode when the node's learning_rate is 0 (automatic). full/attention: the diffusers
#: community pipeline's 2e-6 (full UNet). lora: 1e-4, the usual DreamBooth-LoRA rate (our choice; Imagic has no LoRA
#: setting), about 50x higher because the adapter starts at zero and has few parameters.
DEFAULT_LEARNING_RATES = {"lora": 1e-4, "attention": 2e-6, "full": 2e-6}
#: Node defaults. Embedding: the diffusers community pipeline (Adam, lr 1e-3, 500 steps; paper ~100 on Imagen).
EMBEDDING_DEFAULTS = {"steps": 500, "learning_rate": 1e-3}
#: Fine-tuning: 500 LoRA steps at rank 8 (our choice for ordinary GPUs; reference: 1000 full-UNet steps at lr 2e-6,
#: paper ~1500).
FINETUNE_DEFAULTS = {"steps": 500, "rank": 8, "mode": "lora"}
ETA_MIN, ETA_MAX, ETA_DEFAULT = 0.0, 1.5, 0.7
PROBE_POINTS = 8


# ----------------------------------------------------------------------------------------------------------------
# the result
# ----------------------------------------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class Imagic:
    """An Imagic run (the pack's AE_IMAGIC value; never mutated, each stage returns a new one).

    e_tgt / e_opt: float32 [1, T, d] on the CPU; photo_latent: float32 [1, C, h, w], the photo as VAE Encode returns
    it (not yet scaled by the model's latent format); pooled_output: [1, d'] or None (carried into the
    CONDITIONING unchanged; SD1.x does not use it); unet: the fine-tuned change in the file's LoRA key format (empty
    before step 2); losses per stage; metadata: settings and figures of both stages."""

    e_tgt: torch.Tensor
    e_opt: torch.Tensor
    photo_latent: torch.Tensor
    pooled_output: Optional[torch.Tensor] = None
    unet: dict = field(default_factory=dict)
    name: str = ""
    embedding_losses: list = field(default_factory=list)
    finetune_losses: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # short: the tensors (a whole UNet for mode "full") are not printed
        return (f"Imagic(name={self.name!r}, stage={self.stage!r}, e_tgt={list(self.e_tgt.shape)}, "
                f"photo_latent={list(self.photo_latent.shape)}, unet_tensors={len(self.unet)})")

    @property
    def stage(self) -> str:
        return "finetuned" if self.unet else "embedding"

    @property
    def pooled_width(self) -> int:
        """P > 0 when e_tgt / e_opt carry the pooled text vector as a last row (SDXL, :func:`pack`), else 0."""
        return int(self.metadata.get("pooled_width", 0) or 0)

    @property
    def tokens(self) -> int:
        return int(self.e_tgt.shape[1]) - (1 if self.pooled_width else 0)

    def distance(self) -> dict:
        """How far e_opt moved from e_tgt: relative L2 distance ||e_opt - e_tgt|| / ||e_tgt||, and the mean and
        minimum cosine similarity of corresponding token rows."""
        a, b = self.e_tgt.float().flatten(0, 1), self.e_opt.float().flatten(0, 1)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        return {"relative_l2": float((b - a).norm() / a.norm().clamp_min(1e-12)),
                "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def is_imagic(obj) -> bool:
    """True for an :class:`Imagic` (duck-typed: ComfyUI may load this package a second time under another module
    name, whose Imagic class is a different object)."""
    return all(hasattr(obj, a) for a in ("e_tgt", "e_opt", "photo_latent", "unet", "metadata"))


def _file_metadata(im: Imagic) -> dict:
    return {**im.metadata, "format": FORMAT, "version": "1", "name": im.name, "stage": im.stage,
            "tokens": im.tokens, "width": int(im.e_tgt.shape[-1]), **{f"distance.{k}": v for k, v in
                                                                      im.distance().items()}}


# ----------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------

def target_embedding(cond, context_dim: Optional[int] = None, what: str = "target conditioning"):
    """(e_tgt float32 [1, T, d] CPU copy, pooled_output or None) of a CONDITIONING (CLIP Text Encode's output).

    ValueError when it is not exactly one plain text conditioning of one prompt (Conditioning Combine / Concat /
    timestep ranges / area or mask entries are refused: Imagic optimises one embedding), or when its width d is not
    the model's ``context_dim`` (when given)."""
    if cond is None:
        raise ValueError(f"no {what} was connected: encode the target text with CLIP Text Encode")
    if not isinstance(cond, (list, tuple)) or not cond or not isinstance(cond[0], (list, tuple)) or len(cond[0]) < 2:
        raise ValueError(f"the {what} is not a CONDITIONING; connect CLIP Text Encode's output")
    if len(cond) != 1:
        raise ValueError(f"the {what} holds {len(cond)} conditionings (Conditioning Combine?); Imagic needs the "
                         "encoding of one target text")
    emb, opts = cond[0][0], dict(cond[0][1] or {})
    extra = sorted(k for k in opts if k != "pooled_output")
    if extra:
        raise ValueError(f"the {what} carries {', '.join(extra)}; Imagic needs the plain encoding of one text "
                         "(connect CLIP Text Encode directly)")
    if not torch.is_tensor(emb) or emb.ndim != 3 or emb.shape[0] != 1:
        raise ValueError(f"the {what} must be one text embedding [1, tokens, width], got "
                         f"{tuple(emb.shape) if torch.is_tensor(emb) else type(emb).__name__}")
    d = context_dim
    if d is not None and emb.shape[-1] != d:
        raise ValueError(f"the {what} is {emb.shape[-1]} wide but this model takes {d}-wide text embeddings: "
                         "encode the text with the CLIP of the same checkpoint")
    pooled = opts.get("pooled_output")
    with torch.inference_mode(False):
        e = emb.detach().float().cpu().clone()
        p = pooled.detach().float().cpu().clone() if torch.is_tensor(pooled) else None
    return e, p


def check_photo(image, factor: int) -> torch.Tensor:
    """The photo as an RGB IMAGE [1, H, W, 3], checked for Imagic.

    image: IMAGE [1, H, W, C] in [0, 1]; factor: the VAE's downscale factor. ValueError for no image, a batch of
    several (Imagic edits one photo), or a size the model cannot take: H and W must be multiples of ``factor`` (8
    for SD1.x) and give at least one latent pixel; ComfyUI's VAE Encode would silently crop, which shifts the
    reconstruction against the photo."""
    if image is None:
        raise ValueError("no photo was connected: Imagic edits one photo (Load Image)")
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"the photo must be an IMAGE [1, height, width, channels], got "
                         f"{tuple(image.shape) if torch.is_tensor(image) else type(image).__name__}")
    if image.shape[0] != 1:
        raise ValueError(f"Imagic edits one photo, but the IMAGE is a batch of {image.shape[0]}: pick one with "
                         "'Image From Batch' (each photo needs its own Imagic run)")
    f = int(factor)
    h, w = int(image.shape[1]), int(image.shape[2])
    if h < f or w < f or h % f or w % f:
        hint = f"{max(f, w // f * f)}x{max(f, h // f * f)}"
        raise ValueError(f"the photo is {w}x{h} pixels; this model's VAE needs a width and height that are "
                         f"multiples of {f} (at least {f}): crop or scale it first (e.g. Image Scale to {hint}; "
                         "512x512 suits SD1.5)")
    return image[..., :3] if image.shape[-1] != 1 else image.expand(*image.shape[:-1], 3)


def check_latent_channels(photo_latent: torch.Tensor, channels: Optional[int]) -> None:
    """ValueError when the photo latent's channel count is not the model's."""
    if channels is not None and photo_latent.shape[1] != channels:
        raise ValueError(f"the photo latent has {photo_latent.shape[1]} channels but this model takes {channels}: "
                         "use the VAE of the same checkpoint")


def _check_steps_lr(steps, learning_rate):
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not (learning_rate is not None and math.isfinite(float(learning_rate)) and float(learning_rate) > 0):
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    return steps, float(learning_rate)


def _probe(T: int, shape, seed: int, k: int = PROBE_POINTS):
    """A fixed evaluation set [(timestep, noise)]: k timesteps evenly over the schedule, seeded noise. The same for
    both stages, so stage 2's loss before training equals stage 1's after (same model, same e_opt)."""
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    return [(int((j + 0.5) / k * T), torch.randn(shape, generator=gen)) for j in range(k)]


def _photo_step(session, x0, context, opt, stepper, gen, T):
    """One optimisation step of Imagic's objective on the photo x0 (both stages): one noise sample at one uniform
    random timestep (the reference's recipe); returns the step's loss."""
    def step(_):
        ts = torch.randint(0, T, (1,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = eps_loss(session, x0, noise, session.sigmas_for(ts), context)
        stepper.step(opt, loss)
        return float(loss.detach())

    return step


def _probe_loss(session, x0, context, probe) -> float:
    with torch.no_grad():
        return sum(float(eps_loss(session, x0, noise, session.sigmas_for(torch.tensor([t])), context))
                   for t, noise in probe) / len(probe)


# ----------------------------------------------------------------------------------------------------------------
# step 1: text-embedding optimisation
# ----------------------------------------------------------------------------------------------------------------

def optimize_embedding(session, x0: torch.Tensor, photo_latent: torch.Tensor, e_tgt: torch.Tensor,
                       pooled_output: Optional[torch.Tensor] = None, steps: int = 500, learning_rate: float = 1e-3,
                       seed: int = 0, name: str = "",
                       progress: Optional[Callable[[int, int], None]] = None, pooled_width: int = 0) -> Imagic:
    """Imagic step 1: e_opt = argmin_e E_{t, eps} || eps - f_theta(x_t, t, e) ||^2 from e = e_tgt, model frozen.

    session: a ``training.fit.Session`` over a clone of the MODEL (comfy_bridge.training.TrainingSession);
    x0: [1, C, h, w] the photo in the model's latent space; photo_latent: the same as VAE Encode returns it (kept in
    the result); e_tgt: [1, T, d] (:func:`target_embedding`). Adam at ``learning_rate``, one noise sample at one
    uniform random timestep per step (the reference's recipe). Returns an :class:`Imagic` with e_opt, the step
    losses and the probe losses (a fixed set of 8 timesteps and noises) before/after in ``metadata``. Raises
    ValueError on bad input and TrainingInterrupted carrying an Imagic with the best e_opt so far (lowest smoothed
    loss) on interrupt. ``pooled_width`` P > 0 (SDXL, whose UNet also takes the pooled text vector): the embedding
    optimised is the whole conditioning, e_tgt packed with ``pooled_output`` (:func:`pack`; the session splits it
    again), so e_tgt / e_opt are [1, T + 1, d] and metadata["pooled_width"] = P."""
    steps, lr = _check_steps_lr(steps, learning_rate)
    if pooled_width:
        e_tgt, pooled_output = pack(e_tgt, pooled_output, int(pooled_width)), None
    settings = {"steps": steps, "learning_rate": lr, "seed": int(seed), "optimizer": "Adam",
                "photo_latent_size": list(photo_latent.shape[-2:])}
    gen = torch.Generator().manual_seed(int(seed))
    T = session.num_timesteps()
    e = torch.nn.Parameter(e_tgt.clone().to(session.device))
    opt = torch.optim.Adam([e], lr=lr)
    stepper = session.grad_scaler()
    probe = _probe(T, x0.shape, seed)
    before = _probe_loss(session, x0, e, probe)

    run = fit(_photo_step(session, x0, e, opt, stepper, gen, T), steps, lambda: {"e_opt": e}, session, progress)

    def result(e_opt: torch.Tensor, after: float) -> Imagic:
        meta = {f"embedding.{k}": v for k, v in settings.items()}
        if pooled_width:
            meta["pooled_width"] = int(pooled_width)
        meta.update({"embedding.steps_done": run.steps_done, "embedding.interrupted": run.interrupted,
                     "embedding.best_step": run.best_step, "embedding.probe_loss_before": before,
                     "embedding.probe_loss_after": after, "embedding.seconds": round(run.seconds, 3)})
        return Imagic(e_tgt.clone(), e_opt.detach().float().cpu().clone(), photo_latent.detach().float().cpu()
                      .clone(), pooled_output, {}, name, list(run.losses), [], meta)

    if run.interrupted:
        kept = run.state.get("e_opt", e.detach())
        with torch.no_grad():
            e.copy_(kept.to(e.device))
        raise TrainingInterrupted(result(kept, _probe_loss(session, x0, e, probe)))
    return result(e.detach(), _probe_loss(session, x0, e, probe))


# ----------------------------------------------------------------------------------------------------------------
# step 2: fine-tuning
# ----------------------------------------------------------------------------------------------------------------

def trained_keys(weights, mode: str = "lora") -> list:
    """The model keys (``diffusion_model.....weight`` / ``.bias``) a fine-tuning mode changes, sorted.

    weights: [(model key, tensor, module name, attribute)] of the UNet's patchable weights
    (comfy_bridge.training.weight_keys). lora: every weight with 2 or more dimensions (linear and convolution
    layers), biases and norms stay; attention: weights and biases of the attn1 (self) and attn2 (cross) attention
    projections; full: every UNet parameter."""
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown fine-tuning mode {mode!r}; choose one of {', '.join(TRAIN_MODES)}")
    keys = []
    for key, p, n, attr in weights:
        if mode == "lora" and (attr != "weight" or p.ndim < 2):
            continue
        if mode == "attention" and ".attn1." not in n + "." and ".attn2." not in n + ".":
            continue
        keys.append(key)
    if not keys:
        raise ValueError(f"this model has no UNet weights for mode {mode!r} (an SD1.x-style UNet is needed)")
    return sorted(keys)


def file_key(key: str) -> str:
    """Model key -> key of the file's generic ComfyUI LoRA format for a delta (``X.weight`` -> ``X.diff``,
    ``X.bias`` -> ``X.diff_b``)."""
    if key.endswith(".weight"):
        return key[:-len(".weight")] + ".diff"
    if key.endswith(".bias"):
        return key[:-len(".bias")] + ".diff_b"
    raise ValueError(f"cannot store {key} as a delta")


def finetune_learning_rate(mode: str, learning_rate: Optional[float]) -> float:
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown fine-tuning mode {mode!r}; choose one of {', '.join(TRAIN_MODES)}")
    return DEFAULT_LEARNING_RATES[mode] if not learning_rate else learning_rate


def finetune(session, x0: torch.Tensor, imagic: Imagic, params: dict, constants: dict, mode: str = "lora",
             rank: int = 8, steps: int = 500, learning_rate: Optional[float] = None, seed: int = 0,
             progress: Optional[Callable[[int, int], None]] = None, trained_tensors: int = 0) -> Imagic:
    """Imagic step 2: theta_hat = argmin_theta E_{t, eps} || eps - f_theta(x_t, t, e_opt) ||^2, e_opt frozen.

    session: a ``training.fit.Session`` over a clone of the MODEL whose trained weights go through differentiable
    weight wrappers: ``params`` {file key: trainable tensor} are ComfyUI's LoRA training adapters (``lora``:
    W + (alpha / rank) B A, B zero at the start, alpha = rank; comfy_bridge.training.add_lora_adapters, with their
    ``constants`` {file key: alpha}) or zero float32 deltas W + dW (``full`` / ``attention``; under
    :func:`file_key` names). x0: the photo in the model's latent space. Adam at ``learning_rate`` (None or 0:
    :data:`DEFAULT_LEARNING_RATES`), one noise sample at one uniform random timestep per step. Returns a new
    :class:`Imagic` with ``unet`` (the file's LoRA-key tensors) and the probe losses before/after. On interrupt
    raises TrainingInterrupted carrying the result so far: for lora the best state (lowest smoothed loss), for
    full/attention the latest state (copying the whole UNet at every improving step would cost more than the
    step)."""
    lr = finetune_learning_rate(mode, learning_rate)
    steps, lr = _check_steps_lr(steps, lr)
    if not is_imagic(imagic):
        raise ValueError("connect the IMAGIC output of 'Imagic 1: Optimise Embedding' (or Load Imagic)")
    settings = {"mode": mode, "rank": int(rank) if mode == "lora" else 0, "steps": steps, "learning_rate": lr,
                "seed": int(seed), "optimizer": "Adam", "trained_tensors": int(trained_tensors),
                "trained_parameters": int(sum(p.numel() for p in params.values()))}
    gen = torch.Generator().manual_seed(int(seed) + 1)
    T = session.num_timesteps()
    ctx = imagic.e_opt.float().to(session.device)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    stepper = session.grad_scaler()
    probe_seed = imagic.metadata.get("embedding.seed")
    probe = _probe(T, x0.shape, probe_seed if isinstance(probe_seed, int) else seed)
    before = _probe_loss(session, x0, ctx, probe)

    run = fit(_photo_step(session, x0, ctx, opt, stepper, gen, T), steps, lambda: params, session, progress,
              keep_best=(mode == "lora"))

    def result(state: dict, after: float) -> Imagic:
        unet = {k: v.detach().float().cpu().clone() for k, v in state.items()}
        unet.update({k: v.clone() for k, v in constants.items()})
        meta = {k: v for k, v in imagic.metadata.items() if not k.startswith("finetune.")}
        meta.update({f"finetune.{k}": v for k, v in settings.items()})
        meta.update({"finetune.steps_done": run.steps_done, "finetune.interrupted": run.interrupted,
                     "finetune.best_step": run.best_step, "finetune.probe_loss_before": before,
                     "finetune.probe_loss_after": after, "finetune.seconds": round(run.seconds, 3)})
        return dataclasses.replace(imagic, e_opt=imagic.e_opt.clone(), unet=unet, finetune_losses=list(run.losses),
                                   metadata=meta)

    if run.interrupted:
        with torch.no_grad():
            for k, v in run.state.items():
                params[k].copy_(v.to(params[k].device))
        raise TrainingInterrupted(result(run.state, _probe_loss(session, x0, ctx, probe)))
    return result(params, _probe_loss(session, x0, ctx, probe))


# ----------------------------------------------------------------------------------------------------------------
# applying the fine-tuned change
# ----------------------------------------------------------------------------------------------------------------

def unet_tensors(imagic_or_unet) -> dict:
    """The fine-tuned change's LoRA-key tensors of an Imagic (or such a dict itself)."""
    return imagic_or_unet.unet if is_imagic(imagic_or_unet) else dict(imagic_or_unet or {})


def check_patches(patches: dict, unet: dict, shapes: dict, what: str) -> None:
    """ValueError naming the keys when the file's LoRA-key tensors ``unet`` do not fit the model: keys ComfyUI's
    LoRA loader did not turn into ``patches`` ({model key: ("diff", (dW,)) or an adapter with ``.weights``}), or
    patches whose shapes differ from the model's ``shapes`` {model key: shape}."""
    used = {k for k in unet if not k.startswith(PREFIX)}
    loaded, bad = set(), []
    for key, patch in patches.items():
        w = shapes.get(key)
        if isinstance(patch, tuple):  # ("diff", (dW,))
            loaded.add(file_key(key))
            d = patch[1][0]
            if w is not None and tuple(d.shape) != tuple(w):
                bad.append(f"{key}: file {list(d.shape)} vs model {list(w)}")
        else:  # a LoRA adapter: up [out, r], down [r, in]
            mod = key[:-len(".weight")]
            loaded.update(f"{mod}.{s}" for s in ("lora_up.weight", "lora_down.weight", "alpha"))
            up, down = patch.weights[0], patch.weights[1]
            if w is not None and (up.shape[0] != w[0] or down[0].numel() != math.prod(w[1:])):
                bad.append(f"{key}: file {list(up.shape)} x {list(down.shape)} vs model {list(w)}")
    missing = sorted(used - loaded)
    if missing or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) this model does not have, e.g. {', '.join(missing[:3])}")
        if bad:
            parts.append(f"{len(bad)} with other shapes, e.g. {'; '.join(bad[:3])}")
        raise ValueError(f"{what} does not fit this model (made for another checkpoint?): " + " and ".join(parts))


# ----------------------------------------------------------------------------------------------------------------
# step 3: interpolation
# ----------------------------------------------------------------------------------------------------------------

def pack(emb: torch.Tensor, pooled: Optional[torch.Tensor], pooled_width: int) -> torch.Tensor:
    """[1, T, d] + pooled [1, P] -> [1, T + 1, d], the pooled vector in the first P entries of the last row (the
    layout of comfy_bridge.sampling.text_embedding, which the training session splits again): so SDXL's whole
    conditioning is one tensor that step 1 optimises and step 3 interpolates. ``pooled_width`` 0: ``emb`` itself.
    ValueError when a pooled vector is needed and missing or of another width."""
    if not pooled_width:
        return emb
    if pooled is None or pooled.shape[-1] != pooled_width:
        got = "none" if pooled is None else f"width {pooled.shape[-1]}"
        raise ValueError(f"this model takes a {pooled_width}-wide pooled text vector but the conditioning has "
                         f"{got}: encode the text with the CLIP of the same checkpoint (CLIP Text Encode)")
    row = emb.new_zeros(emb.shape[0], 1, emb.shape[-1])
    row[:, 0, :pooled_width] = pooled.reshape(-1, pooled_width).to(emb)
    return torch.cat([emb, row], 1)


def unpack(e: torch.Tensor, pooled_width: int):
    """Inverse of :func:`pack`: (sequence [N, T, d], pooled [N, P] or None)."""
    if not pooled_width:
        return e, None
    return e[:, :-1], e[:, -1, :pooled_width].clone()


def _check_eta(eta) -> float:
    try:
        v = float(eta)
    except (TypeError, ValueError):
        raise ValueError(f"eta must be a number, got {eta!r}") from None
    if not (math.isfinite(v) and ETA_MIN <= v <= ETA_MAX):
        raise ValueError(f"eta {eta} is outside {ETA_MIN}-{ETA_MAX}: 0 reconstructs the photo, 1 is the target "
                         f"text, the paper uses 0.6-0.8; values above 1 extrapolate past the target")
    return v


def interpolate(e_tgt: torch.Tensor, e_opt: torch.Tensor, eta: float) -> torch.Tensor:
    """Imagic's interpolation e_bar = eta * e_tgt + (1 - eta) * e_opt (Kawar et al. 2023, Sec. 3, step C), computed
    in this form so that eta = 1 gives exactly e_tgt and eta = 0 exactly e_opt. Shapes [..., T, d], equal.
    ValueError when the token counts or widths differ, or eta is outside [ETA_MIN, ETA_MAX]."""
    eta = _check_eta(eta)
    if tuple(e_tgt.shape) != tuple(e_opt.shape):
        raise ValueError(f"the target embedding {list(e_tgt.shape)} and the optimised one {list(e_opt.shape)} "
                         "differ in shape: the target text must have as many tokens (77 per chunk) as the text the "
                         "embedding was optimised from; use the same target text (or leave 'target' unconnected)")
    with torch.inference_mode(False):
        return eta * e_tgt.float() + (1.0 - eta) * e_opt.float()


def _cond_options(imagic: Imagic, pooled: Optional[torch.Tensor], n: int) -> dict:
    p = pooled if pooled is not None else imagic.pooled_output
    return {} if p is None else {"pooled_output": p.repeat(n, *([1] * (p.ndim - 1))) if n > 1 else p.clone()}


def _target(imagic: Imagic, target):
    """(e_tgt as step 1 holds it, pooled to carry or None) for ``target`` (None: step 1's)."""
    if target is None:
        return imagic.e_tgt, None
    e, pooled = target_embedding(target, None, "target")
    if imagic.pooled_width:
        return pack(e, pooled, imagic.pooled_width), None
    return e, pooled


def _rows_conditioning(imagic: Imagic, rows: torch.Tensor, pooled: Optional[torch.Tensor]) -> list:
    if imagic.pooled_width:  # SDXL: the interpolated pooled vector goes with each row
        seq, p = unpack(rows, imagic.pooled_width)
        return [[seq, {"pooled_output": p}]]
    return [[rows, _cond_options(imagic, pooled, rows.shape[0])]]


def conditioning(imagic: Imagic, eta: float = ETA_DEFAULT, target=None) -> list:
    """The CONDITIONING [[e_bar [1, T, d], {"pooled_output": ...}]] for the fine-tuned model (SDXL: e_bar is the
    whole conditioning, sequence and pooled vector interpolated alike).

    target: optional CONDITIONING to use as e_tgt instead of the one step 1 was given (same token count
    required)."""
    if not is_imagic(imagic):
        raise ValueError("connect the IMAGIC output of an Imagic node (or Load Imagic)")
    e_tgt, pooled = _target(imagic, target)
    return _rows_conditioning(imagic, interpolate(e_tgt, imagic.e_opt, eta), pooled)


def parse_etas(text: str, max_count: int = 32) -> list:
    """'0, 0.6, 0.7 0.8' -> [0.0, 0.6, 0.7, 0.8] (commas or spaces); ValueError for bad, out-of-range or too many
    values."""
    parts = [p for p in str(text or "").replace(";", ",").replace(",", " ").split() if p]
    if not parts:
        raise ValueError("no eta values given: write a list such as '0, 0.6, 0.7, 0.8, 1'")
    vals = []
    for p in parts:
        try:
            vals.append(float(p))
        except ValueError:
            raise ValueError(f"{p!r} in the eta list is not a number; write a list such as '0, 0.6, 0.7, 1'") from None
    if len(vals) > max_count:
        raise ValueError(f"{len(vals)} eta values; at most {max_count} per sweep")
    return [_check_eta(v) for v in vals]


def sweep(imagic: Imagic, etas: Sequence[float], target=None):
    """An eta sweep as one batch: (CONDITIONING with rows e_bar(eta_i) [N, T, d], LATENT of N empty latents of the
    photo's size whose ``batch_index`` is all 0, so KSampler gives every row the SAME noise and the rows differ only
    by eta)."""
    if not is_imagic(imagic):
        raise ValueError("connect the IMAGIC output of an Imagic node (or Load Imagic)")
    etas = [_check_eta(v) for v in etas]
    if not etas:
        raise ValueError("no eta values given")
    e_tgt, pooled = _target(imagic, target)
    rows = torch.cat([interpolate(e_tgt, imagic.e_opt, v) for v in etas])
    n = len(etas)
    with torch.inference_mode(False):
        lat = torch.zeros((n,) + tuple(imagic.photo_latent.shape[1:]), dtype=torch.float32)
    return _rows_conditioning(imagic, rows, pooled), {"samples": lat, "batch_index": [0] * n}


# ----------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------

def imagic_file(imagic: Imagic, name: str) -> tuple:
    """(tensors, metadata) of the Imagic file of ``imagic`` under ``name`` (see the module docstring)."""
    im = dataclasses.replace(imagic, name=name)
    tensors = {PREFIX + "e_tgt": im.e_tgt, PREFIX + "e_opt": im.e_opt, PREFIX + "photo_latent": im.photo_latent}
    if im.pooled_output is not None:
        tensors[PREFIX + "pooled_output"] = im.pooled_output
    for k, v in im.unet.items():
        tensors[k] = v.float()
    meta = _file_metadata(im)
    meta["embedding_losses"] = [round(x, 6) for x in im.embedding_losses]
    meta["finetune_losses"] = [round(x, 6) for x in im.finetune_losses]
    return {k: v.float() for k, v in tensors.items()}, meta


def imagic_from_file(tensors: dict, raw: dict, name: str) -> Imagic:
    """The Imagic of a file's (tensors, metadata); ValueError naming the file when it is not one of this pack or
    lacks a tensor."""
    missing = [PREFIX + k for k in ("e_tgt", "e_opt", "photo_latent") if PREFIX + k not in tensors]
    if raw.get("format") != FORMAT:
        raise ValueError(f"{name} is not an Imagic file of this pack (format {FORMAT!r})")
    if missing:
        raise ValueError(f"{name} has the Imagic metadata but lacks the tensor(s) {', '.join(missing)}: it is "
                         "incomplete or was edited; run the Imagic nodes again")
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (TypeError, ValueError):
            meta[k] = v
    emb_losses = meta.pop("embedding_losses", []) or []
    ft_losses = meta.pop("finetune_losses", []) or []
    for k in ("format", "version", "stage", "tokens", "width"):
        meta.pop(k, None)
    stem = str(meta.pop("name", name))
    meta = {k: v for k, v in meta.items() if not k.startswith("distance.")}
    unet = {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}
    return Imagic(tensors[PREFIX + "e_tgt"], tensors[PREFIX + "e_opt"], tensors[PREFIX + "photo_latent"],
                  tensors.get(PREFIX + "pooled_output"), unet, stem, list(emb_losses), list(ft_losses), meta)


# ----------------------------------------------------------------------------------------------------------------
# the eta grid
# ----------------------------------------------------------------------------------------------------------------

def eta_grid(images: torch.Tensor, etas: Sequence[float], columns: int = 0) -> torch.Tensor:
    """One IMAGE [1, H', W', 3] with the batch ``images`` [N, H, W, C] side by side (``columns`` per row, 0 = all
    in one row up to 8) and 'eta=...' written above each. ValueError when the counts differ."""
    from PIL import Image, ImageDraw
    import numpy as np

    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError("connect the decoded IMAGE batch of the sweep")
    n = int(images.shape[0])
    etas = list(etas)
    if len(etas) != n:
        raise ValueError(f"{n} images but {len(etas)} eta values: connect the sweep's 'etas' output and the "
                         "images sampled from the sweep's conditioning and latent")
    cols = int(columns) if columns and columns > 0 else min(n, 8)
    rows = -(-n // cols)
    h, w = int(images.shape[1]), int(images.shape[2])
    label = 14
    canvas = Image.new("RGB", (cols * w, rows * (h + label)), "white")
    draw = ImageDraw.Draw(canvas)
    arr = (images[..., :3].float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        x, y = c * w, r * (h + label)
        canvas.paste(Image.fromarray(arr[i]), (x, y + label))
        draw.text((x + 2, y + 1), f"eta={etas[i]:g}", fill=(0, 0, 0))
    out = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)
    return out[None].clone()
