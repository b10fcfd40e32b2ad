"""Custom Diffusion (Kumari et al. 2023, "Multi-Concept Customization of Text-to-Image Diffusion"), trained on the
MODEL/CLIP/VAE of the graph, and its file formats.

What is trained (Kumari et al., Sec. 3.1, "rate of change of weights"; the reference's ``crossattn_kv``):
only the key and value projections of every cross-attention layer, W_k and W_v of ``attn2`` (they act on the text
features only), plus the embedding of a new modifier token V* ("photo of a V* wooden pot"). Option
``crossattn``: every parameter of attn2 (to_q, to_k, to_v, to_out). The loss is the diffusion loss with prior
preservation (Ruiz et al. 2023, Eq. 2; Kumari et al. Sec. 3.1):

    L = E || eps - eps_theta(z_t, t, c("photo of a V* <class>")) ||^2_mask
        + lambda * E || eps' - eps_theta(z'_t, t', c("photo of a <class>")) ||^2

with z the reference images (Custom Diffusion's rescale augmentation: the loss is masked to the picture and the
prompt says "a tiny ..." / "a close-up ..."), z' the class images (regularisation), lambda the prior loss weight.

How it is trained in ComfyUI: the changes are DELTAS, dW, kept outside the model. During training every trained
weight goes through a differentiable weight wrapper ``W -> W + dW`` on a clone of the MODEL
(``ModelPatcher.add_weight_wrapper``, the mechanism of ComfyUI's own LoRA trainer); the result is applied as
weight patches ``("diff", (dW,))`` on a clone (``add_patches``). The modifier token's embedding is a vector
outside the text encoder (spliced in where the token appears, see ``common.clip_with_embeddings``), so no row of
the embedding matrix changes and the graph's MODEL/CLIP stay untouched.

Files (see :func:`save_concept` / :func:`load_concept`):

* ours, ``attention_edit.custom_diffusion`` safetensors: one tensor per trained weight under its ComfyUI model key
  (``diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight``), holding the DIFFERENCE dW (float32),
  plus ``modifier_token.<token>`` = [n, width]; metadata: format, version, modifier tokens, class noun, training
  settings.
* diffusers (``examples/custom_diffusion``): ``pytorch_custom_diffusion_weights.safetensors`` (or ``.bin``) with
  keys ``<diffusers block>.attn2.processor.to_k_custom_diffusion.weight`` holding FULL weights, plus one
  ``<token>.safetensors`` per token ``{token: [width]}``. Block names are mapped to ComfyUI keys with ComfyUI's own
  ``comfy.utils.unet_to_diffusers(unet_config)``, built from the loaded model's structure.
* the original ``delta.bin`` (adobe-research/custom-diffusion ``CustomDiffusionPipeline.save_pretrained``):
  ``{"unet": {diffusers param name: FULL weight}, "modifier_token": {token: [width]}}``, and the CompVis
  ``delta_epoch=*.ckpt`` ``{"state_dict": {"model.diffusion_model....attn2.to_k.weight": FULL, "embed": [n, w]}}``;
  read with ``torch.load(weights_only=True)`` (no arbitrary objects are unpickled).

Full weights are turned into deltas against the unpatched weights of the model they are applied to.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from comfy.model_management import InterruptProcessingException

from .common import (TEMPLATES, BestSoFar, PromptEncoder, TrainingInterrupted, TrainingSession, build_pool,
                     check_new_token, clip_with_embeddings, collect_images, embedding_width, eps_loss,
                     file_in_folder, prepare_pixels, save_safetensors_atomic, throw_if_interrupted, token_rows,
                     validate_name)
from .textual_inversion import _vae_factor, prompt_for

__all__ = [
    "FORMAT", "TRAIN_MODES", "DIFFUSERS_WEIGHTS_NAME", "CDResult", "Concept", "trained_keys",
    "train_custom_diffusion", "save_concept", "load_concept", "resolve_concept", "apply_concept",
    "diffusers_key_map", "export_diffusers", "validate_modifier_token", "base_weight",
]

FORMAT = "attention_edit.custom_diffusion"
TRAIN_MODES = ("crossattn_kv", "crossattn")
DIFFUSERS_WEIGHTS_NAME = "pytorch_custom_diffusion_weights.safetensors"
TOKEN_PREFIX = "modifier_token."
_TOKEN_RE = re.compile(r"^<?[A-Za-z0-9_\-]{1,40}>?$")


def validate_modifier_token(token: str) -> str:
    """A modifier token is one word: letters, digits, '_' or '-', optionally in angle brackets ("<v1>", "sks")."""
    t = (token or "").strip()
    if not _TOKEN_RE.match(t):
        raise ValueError(f"the modifier token {token!r} must be one word of letters, digits, '_' or '-', optionally "
                         "in angle brackets, e.g. '<v1>'")
    return t


# --------------------------------------------------------------------------------------------------------------
# which weights
# --------------------------------------------------------------------------------------------------------------

def trained_keys(model_patcher, mode: str = "crossattn_kv") -> list:
    """ComfyUI model keys of the trained weights: attn2.to_k/to_v of every cross-attention layer
    (``crossattn_kv``), or every parameter of attn2 (``crossattn``). Sorted."""
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {mode!r}; choose one of {TRAIN_MODES}")
    keys = []
    for name, p in model_patcher.model.named_parameters():
        if ".attn2." not in name:
            continue
        leaf = name.split(".attn2.", 1)[1]
        if mode == "crossattn_kv":
            if leaf in ("to_k.weight", "to_v.weight"):
                keys.append(name)
        else:
            keys.append(name)
    if not keys:
        raise ValueError("this model has no cross-attention (attn2) layers; Custom Diffusion needs an SD1.x-style "
                         "UNet")
    return sorted(keys)


def base_weight(model_patcher, key: str) -> torch.Tensor:
    """The unpatched weight of ``key`` (what the checkpoint holds, before LoRAs or concepts patched it in)."""
    import comfy.utils

    bk = model_patcher.backup.get(key) if hasattr(model_patcher, "backup") else None
    if bk is not None:
        return bk.weight
    return comfy.utils.get_attr(model_patcher.model, key)


class _DeltaWrapper:
    """Differentiable weight wrapper W -> W + dW (ModelPatcher.add_weight_wrapper)."""

    def __init__(self, delta: torch.Tensor):
        self.delta = delta

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.delta.to(device=w.device, dtype=w.dtype)


# --------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------

@dataclass
class CDResult:
    """What a Custom Diffusion run learned: ``deltas`` {ComfyUI key: float32 dW (CPU)}, ``tokens``
    {modifier token: float32 [1, width]}, the step losses (instance + weighted prior), the probe losses (instance
    loss on a fixed probe set before/after), and the settings."""

    deltas: dict
    tokens: dict
    losses: list
    steps: int
    steps_done: int
    probe_before: float
    probe_after: float
    interrupted: bool = False
    best_step: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def concept(self) -> "Concept":
        return Concept(kind="delta", unet=dict(self.deltas), tokens=dict(self.tokens), metadata=self.metadata(),
                       source="trained")

    def metadata(self) -> dict:
        return {"format": FORMAT, "version": "1", "weights": "delta", "modifier_tokens": list(self.tokens),
                "steps_done": self.steps_done, "interrupted": self.interrupted, "best_step": self.best_step,
                "probe_loss_before": self.probe_before, "probe_loss_after": self.probe_after,
                **{f"train.{k}": v for k, v in self.settings.items()}}


def train_custom_diffusion(model_patcher, clip, vae, images, modifier_token: str = "<v1>",
                           class_noun: str = "object", initializer: str = "ktn", class_images=None,
                           prior_loss_weight: float = 1.0, mode: str = "crossattn_kv", steps: int = 500,
                           learning_rate: float = 2e-5, batch_size: int = 2, seed: int = 0, resolution: int = 512,
                           augment: bool = True, gradient_checkpointing: bool = False,
                           progress: Optional[Callable[[int, int], None]] = None, weight_decay: float = 1e-2,
                           variants_per_image: int = 10) -> CDResult:
    """Trains K/V deltas (or all of attn2) and the modifier token's embedding on reference ``images``.

    class_noun: the class the concept belongs to, with modifiers ("wooden pot"); prompts read
    "<template> <modifier_token> <class_noun>". initializer: the word whose token embedding starts V* (the
    reference uses the rare token "ktn"). class_images: IMAGE(s) of the class for prior preservation (None: no prior
    loss); prior_loss_weight: lambda. augment: Custom Diffusion's rescale augmentation (else only mirror images).
    Reference defaults (diffusers example): lr 1e-5 x batch 2 x GPUs (scale_lr), 250-500 steps, 200 class images,
    prior weight 1. progress(done, total) after every step. Raises ValueError on bad input and TrainingInterrupted
    (carrying the best-so-far CDResult) on interrupt.
    """
    t0 = time.time()
    token = validate_modifier_token(modifier_token)
    check_new_token(clip, token, "modifier token")
    noun = " ".join((class_noun or "").split())
    if not noun:
        raise ValueError("the class noun is empty; say what the concept is, e.g. 'teapot' or 'wooden pot'")
    steps, batch_size = int(steps), int(batch_size)
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be at least 1")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    keys = trained_keys(model_patcher, mode)
    width = embedding_width(clip)
    init = token_rows(clip, initializer, 1)
    factor = _vae_factor(vae)
    pixels = prepare_pixels(collect_images(images), int(resolution), multiple=factor)
    pool = build_pool(pixels, vae, model_patcher, "rescale" if augment else "flip", variants_per_image, seed)
    class_pool = None
    if class_images is not None and (not isinstance(class_images, (list, tuple)) or len(class_images) > 0):
        cpx = prepare_pixels(collect_images(class_images, "class images"), 0, factor, size=tuple(pixels.shape[-2:]))
        class_pool = build_pool(cpx, vae, model_patcher, "flip", 2, seed + 1)
    tmpl = TEMPLATES["object"]
    enc = PromptEncoder(clip, token, 1, width)
    concept_words = f"{enc.placeholder()} {noun}"
    settings = dict(modifier_token=token, class_noun=noun, initializer=initializer, mode=mode, steps=steps,
                    learning_rate=learning_rate, batch_size=batch_size, seed=int(seed), resolution=int(resolution),
                    augment=bool(augment), prior_loss_weight=float(prior_loss_weight) if class_pool else 0.0,
                    class_images=0 if class_pool is None else len(class_pool) // 2, images=int(pixels.shape[0]),
                    image_size=list(pixels.shape[-2:]), weight_decay=weight_decay)

    gen = torch.Generator().manual_seed(int(seed))
    mp = model_patcher.clone()
    dev = mp.load_device
    with torch.inference_mode(False):
        deltas = {k: torch.zeros(base_weight(model_patcher, k).shape, dtype=torch.float32, device=dev,
                                 requires_grad=True) for k in keys}
        vector = torch.nn.Parameter(init.clone().to(dev))
    for k in keys:
        mp.add_weight_wrapper(k, _DeltaWrapper(deltas[k]))

    with TrainingSession(mp, enc.clip, gradient_checkpointing) as sess:
        T = sess.num_timesteps()
        opt = torch.optim.AdamW(list(deltas.values()) + [vector], lr=float(learning_rate),
                                weight_decay=float(weight_decay))
        stepper = sess.grad_scaler()
        class_ctx: dict = {}

        def class_context(text: str) -> torch.Tensor:
            if text not in class_ctx:
                with torch.no_grad():
                    class_ctx[text] = enc.encode(text, None).detach()
            return class_ctx[text]

        probe_gen = torch.Generator().manual_seed(int(seed) + 104729)
        probe = []
        for j in range(8):
            i = j % len(pool)
            probe.append((i, prompt_for(tmpl[j % len(tmpl)], concept_words, pool.prefixes[i]), int((j + 0.5) / 8 * T),
                          torch.randn(pool.latents[i:i + 1].shape, generator=probe_gen)))

        def probe_loss() -> float:
            with torch.no_grad():
                tot = 0.0
                for i, text, t, noise in probe:
                    ctx = enc.encode(text, vector)
                    tot += float(eps_loss(sess, pool.latents[i:i + 1], noise, sess.sigmas_for(torch.tensor([t])),
                                          ctx, pool.masks[i:i + 1]))
                return tot / len(probe)

        before = probe_loss()
        best = BestSoFar(max(5, steps // 20), lambda: {**deltas, TOKEN_PREFIX + token: vector})
        losses: list = []

        def result(interrupted: bool, state: dict, after: float) -> CDResult:
            d = {k: state[k].detach().float().cpu().clone() for k in keys}
            tok = {token: state[TOKEN_PREFIX + token].detach().float().cpu().clone().reshape(1, width)}
            return CDResult(d, tok, list(losses), steps, len(losses), before, after, interrupted,
                            best.best_step if interrupted else len(losses), time.time() - t0, settings)

        try:
            for step in range(steps):
                throw_if_interrupted()
                idx = torch.randint(0, len(pool), (batch_size,), generator=gen)
                tix = torch.randint(0, len(tmpl), (batch_size,), generator=gen)
                texts = [prompt_for(tmpl[int(j)], concept_words, pool.prefixes[int(i)]) for i, j in zip(idx, tix)]
                ctx = [enc.encode(t, vector) for t in texts]
                lat, masks = [pool.latents[idx]], [pool.masks[idx]]
                if class_pool is not None:
                    cidx = torch.randint(0, len(class_pool), (batch_size,), generator=gen)
                    ctix = torch.randint(0, len(tmpl), (batch_size,), generator=gen)
                    ctx += [class_context(prompt_for(tmpl[int(j)], noun)) for j in ctix]
                    lat.append(class_pool.latents[cidx])
                    masks.append(class_pool.masks[cidx])
                lat, masks, ctx = torch.cat(lat), torch.cat(masks), torch.cat(ctx)
                ts = torch.randint(0, T, (lat.shape[0],), generator=gen)
                noise = torch.randn(lat.shape, generator=gen)
                per = eps_loss(sess, lat, noise, sess.sigmas_for(ts), ctx, masks, reduce=False)
                loss = per[:batch_size].mean()
                if class_pool is not None:
                    loss = loss + float(prior_loss_weight) * per[batch_size:].mean()
                stepper.step(opt, loss)
                losses.append(float(loss.detach()))
                best.update(step + 1, losses[-1])
                if progress is not None:
                    progress(step + 1, steps)
        except InterruptProcessingException:
            state = best.state or {**deltas, TOKEN_PREFIX + token: vector}
            raise TrainingInterrupted(result(True, state, float("nan"))) from None
        after = probe_loss()
        return result(False, {**deltas, TOKEN_PREFIX + token: vector}, after)


# --------------------------------------------------------------------------------------------------------------
# concepts: load / resolve / apply / save / export
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Concept:
    """A Custom Diffusion concept as read from a file, before it is matched to a model.

    kind: "delta" (unet values are differences dW) or "full" (unet values are full weights);
    unet: {key: tensor}, keys in ComfyUI form ("diffusion_model....") or diffusers form ("down_blocks....",
    mapped by :func:`resolve_concept`); tokens: {modifier token: [n, width]}; source: the format's name."""

    kind: str
    unet: dict
    tokens: dict
    metadata: dict = field(default_factory=dict)
    source: str = ""


def save_concept(folder: str, name: str, concept, extra_metadata: Optional[dict] = None) -> str:
    """Writes a concept (CDResult or delta Concept) as ``<folder>/<name>.safetensors`` atomically; returns the
    path. ``name`` is a plain name (no path separators, no '..')."""
    if isinstance(concept, CDResult):
        concept = concept.concept()
    if concept.kind != "delta":
        raise ValueError("only delta concepts are saved in the pack's format; resolve full weights first")
    name = validate_name(name, "concept name")
    path = file_in_folder(folder, name + ".safetensors")
    tensors = {k: v.float() for k, v in concept.unet.items()}
    for tok, v in concept.tokens.items():
        tensors[TOKEN_PREFIX + tok] = v.float().reshape(-1, v.shape[-1])
    meta = {**concept.metadata, **(extra_metadata or {}), "format": FORMAT, "version": "1", "weights": "delta",
            "modifier_tokens": list(concept.tokens), "name": name}
    return save_safetensors_atomic(path, tensors, meta)


def _is_diffusers_proc_key(k: str) -> bool:
    return "_custom_diffusion" in k


def _proc_to_param(k: str) -> str:
    """diffusers processor key -> diffusers UNet parameter name:
    'X.attn2.processor.to_k_custom_diffusion.weight' -> 'X.attn2.to_k.weight'."""
    k = k.replace(".processor.", ".")
    return re.sub(r"(to_[a-z]+)_custom_diffusion", r"\1", k)


def _param_to_proc(k: str) -> str:
    """diffusers UNet parameter name -> processor key (inverse of :func:`_proc_to_param`)."""
    head, leaf = k.split(".attn2.", 1)
    part, rest = leaf.split(".", 1)
    return f"{head}.attn2.processor.{part}_custom_diffusion.{rest}"


def _token_file_tokens(path: str, exclude: str) -> dict:
    """Token embeddings of diffusers-style token files next to ``exclude``: every other .safetensors / .bin in the
    folder that holds exactly one 1-D or 2-D tensor under a non-'emb_params' key ({"<new1>": [width]})."""
    from safetensors.torch import load_file

    out = {}
    folder = os.path.dirname(path)
    for f in sorted(os.listdir(folder)):
        p = os.path.join(folder, f)
        if p == exclude or not os.path.isfile(p):
            continue
        try:
            if f.endswith(".safetensors"):
                sd = load_file(p, device="cpu")
            elif f.endswith(".bin"):
                sd = torch.load(p, map_location="cpu", weights_only=True)
            else:
                continue
        except Exception:
            continue
        if isinstance(sd, dict) and len(sd) == 1:
            (k, v), = sd.items()
            if torch.is_tensor(v) and v.ndim in (1, 2) and not _is_diffusers_proc_key(k):
                out[k] = v.float().reshape(-1, v.shape[-1])
    return out


def load_concept(path: str) -> Concept:
    """Reads a concept file in any supported format (see the module docstring); ValueError when it is none of
    them. ``.bin`` / ``.pt`` / ``.ckpt`` files are read with ``torch.load(weights_only=True)``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise ValueError(f"no concept file at {path}")
    low = path.lower()
    if low.endswith(".safetensors"):
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
        sd = load_file(path, device="cpu")
        if meta.get("format") == FORMAT:
            tokens = {k[len(TOKEN_PREFIX):]: v.float() for k, v in sd.items() if k.startswith(TOKEN_PREFIX)}
            unet = {k: v for k, v in sd.items() if not k.startswith(TOKEN_PREFIX)}
            return Concept("delta", unet, tokens, meta, FORMAT)
        if any(_is_diffusers_proc_key(k) for k in sd):
            return Concept("full", {_proc_to_param(k): v for k, v in sd.items()}, _token_file_tokens(path, path),
                           meta, "diffusers")
        raise ValueError(f"{os.path.basename(path)} is neither a concept of this pack nor a diffusers Custom "
                         "Diffusion file (pytorch_custom_diffusion_weights.safetensors); token files (<new1>."
                         "safetensors) are read together with the weights file next to them")
    if low.endswith((".bin", ".pt", ".ckpt", ".pth")):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{os.path.basename(path)} could not be read as plain tensors (torch.load with "
                             f"weights_only=True refuses arbitrary objects): {exc}") from None
        if not isinstance(sd, dict):
            raise ValueError(f"{os.path.basename(path)} does not hold a dict of tensors")
        if "unet" in sd and isinstance(sd["unet"], dict):  # adobe-research delta.bin
            if "text_encoder" in sd:
                raise ValueError("this delta.bin also fine-tunes the whole text encoder; only the K/V deltas and "
                                 "modifier tokens are supported")
            unet = {}
            for k, v in sd["unet"].items():
                if isinstance(v, dict) or not torch.is_tensor(v):
                    raise ValueError(f"{k}: compressed delta.bin files (low-rank u, v) are not supported yet")
                unet[k[len("model."):] if k.startswith("model.diffusion_model.") else k] = v
            tokens = {str(t): v.float().reshape(-1, v.shape[-1]) for t, v in sd.get("modifier_token", {}).items()}
            return Concept("full", unet, tokens, {}, "delta.bin")
        if "state_dict" in sd and isinstance(sd["state_dict"], dict):  # CompVis delta_epoch=*.ckpt
            st = sd["state_dict"]
            unet = {k[len("model."):]: v for k, v in st.items() if k.startswith("model.diffusion_model.")}
            tokens = {}
            if "embed" in st:
                e = st["embed"].float().reshape(-1, st["embed"].shape[-1])
                tokens = {f"<new{i + 1}>": e[i:i + 1] for i in range(e.shape[0])}
            return Concept("full", unet, tokens, {}, "compvis")
        if any(_is_diffusers_proc_key(k) for k in sd):
            return Concept("full", {_proc_to_param(k): v for k, v in sd.items()}, _token_file_tokens(path, path),
                           {}, "diffusers")
        raise ValueError(f"{os.path.basename(path)}: unknown Custom Diffusion layout (keys {list(sd)[:5]})")
    raise ValueError(f"{os.path.basename(path)}: unsupported file type (use .safetensors, .bin, .pt or .ckpt)")


def diffusers_key_map(model_patcher) -> dict:
    """{diffusers UNet parameter name: ComfyUI model key} for this model, from ComfyUI's own
    ``comfy.utils.unet_to_diffusers`` applied to the loaded model's unet_config."""
    import comfy.utils

    uc = model_patcher.model.model_config.unet_config
    m = comfy.utils.unet_to_diffusers(uc)
    return {k: "diffusion_model." + v for k, v in m.items()}


def _mismatch_message(what: str, missing: list, shapes: list) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) the model does not have, e.g. {', '.join(missing[:4])}")
    if shapes:
        parts.append(f"{len(shapes)} key(s) with other shapes, e.g. " +
                     "; ".join(f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in shapes[:4]))
    return (f"{what} does not fit this model (made for another architecture?): " + " and ".join(parts))


def resolve_concept(concept: Concept, model_patcher, clip=None, what: str = "the concept file"):
    """Matches a concept to a model: returns (deltas {ComfyUI key: float32 dW}, tokens {token: [n, width]}).

    Diffusers names are mapped with :func:`diffusers_key_map`; full weights become dW = W_file - W_base against
    the model's unpatched weights. ValueError naming the mismatched keys when keys or shapes do not fit, or when a
    token's width differs from the CLIP's."""
    sd_keys = {k: None for k, _ in model_patcher.model.named_parameters()}
    dmap = None
    out, missing, shapes = {}, [], []
    for k, v in concept.unet.items():
        key = k
        if not key.startswith("diffusion_model."):
            if dmap is None:
                dmap = diffusers_key_map(model_patcher)
            key = dmap.get(k)
            if key is None:
                missing.append(k)
                continue
        if key not in sd_keys:
            missing.append(k)
            continue
        base = base_weight(model_patcher, key)
        if tuple(base.shape) != tuple(v.shape):
            shapes.append((k, tuple(v.shape), tuple(base.shape)))
            continue
        if concept.kind == "delta":
            out[key] = v.float()
        else:
            with torch.inference_mode(False):
                out[key] = (v.float().to(base.device) - base.float()).cpu()
    if missing or shapes:
        raise ValueError(_mismatch_message(what, missing, shapes))
    if not out:
        raise ValueError(f"{what} holds no UNet weights")
    tokens = dict(concept.tokens)
    if clip is not None:
        width = embedding_width(clip)
        bad = {t: v.shape[-1] for t, v in tokens.items() if v.shape[-1] != width}
        if bad:
            raise ValueError(f"{what}: token embedding width {sorted(set(bad.values()))} does not match this CLIP's "
                             f"{width} (tokens {sorted(bad)}): made for another text encoder")
    return out, tokens


def apply_concept(model_patcher, clip, deltas: dict, tokens: dict, strength: float = 1.0):
    """(MODEL clone with the deltas as ``("diff", (dW,))`` weight patches at ``strength``, CLIP clone whose
    tokenizer knows the modifier tokens, bare in prompts or as ``embedding:<token>``). The inputs are unchanged."""
    m = model_patcher.clone() if model_patcher is not None else None
    if m is not None:
        m.add_patches({k: ("diff", (v,)) for k, v in deltas.items()}, float(strength))
    c = clip_with_embeddings(clip, tokens, bare_words=True) if clip is not None else None
    return m, c


def export_diffusers(out_dir: str, model_patcher, deltas: dict, tokens: dict) -> list:
    """Writes the diffusers format into ``out_dir``: ``pytorch_custom_diffusion_weights.safetensors`` (FULL
    weights W_base + dW under processor keys) and one ``<token>.safetensors`` = {token: [width]} per token (file name
    without characters that are not letters, digits, '_', '-'). Returns the written paths."""
    inv = {v: k for k, v in diffusers_key_map(model_patcher).items()}
    procs = {}
    for key, d in deltas.items():
        name = inv.get(key)
        if name is None or ".attn2." not in name:
            raise ValueError(f"{key} has no diffusers Custom Diffusion counterpart")
        with torch.inference_mode(False):
            base = base_weight(model_patcher, key).float().cpu()
            procs[_param_to_proc(name)] = base + d.float().cpu()
    os.makedirs(out_dir, exist_ok=True)
    paths = [save_safetensors_atomic(os.path.join(out_dir, DIFFUSERS_WEIGHTS_NAME), procs)]
    for tok, v in tokens.items():
        fname = re.sub(r"[^A-Za-z0-9_\-]", "", tok) or "token"
        vec = v.float().reshape(-1, v.shape[-1])
        vec = vec[0] if vec.shape[0] == 1 else vec
        paths.append(save_safetensors_atomic(file_in_folder(out_dir, fname + ".safetensors"), {tok: vec}))
    return paths
