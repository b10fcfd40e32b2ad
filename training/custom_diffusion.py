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

How it is trained: the changes are DELTAS, dW, kept outside the model. During training every trained weight goes
through a differentiable weight wrapper ``W -> W + dW`` on a clone of the MODEL (comfy_bridge.training
.add_delta_wrappers, the mechanism of ComfyUI's own LoRA trainer); the result is applied as weight patches
``("diff", (dW,))`` on a clone. The modifier token's embedding is a vector outside the text encoder (spliced in
where the token appears, see comfy_bridge.text.clip_with_embeddings), so no row of the embedding matrix changes
and the graph's MODEL/CLIP stay untouched. Nothing here imports ComfyUI: the model is seen through a ``UNetFacts``
object (its parameter shapes, unpatched weights and diffusers names; comfy_bridge.training.UNetFacts).

Files (see :func:`save_concept` / :func:`load_concept`):

* ours, ``attention_edit.custom_diffusion`` safetensors: one tensor per trained weight under its ComfyUI model key
  (``diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight``), holding the DIFFERENCE dW (float32),
  plus ``modifier_token.<token>`` = [n, width]; metadata: format, version, modifier tokens, class noun, training
  settings.
* diffusers (``examples/custom_diffusion``): ``pytorch_custom_diffusion_weights.safetensors`` (or ``.bin``) with
  keys ``<diffusers block>.attn2.processor.to_k_custom_diffusion.weight`` holding FULL weights, plus one
  ``<token>.safetensors`` per token ``{token: [width]}``. Block names are mapped to ComfyUI keys with ComfyUI's own
  ``comfy.utils.unet_to_diffusers(unet_config)`` (``UNetFacts.diffusers_map``), built from the model's structure.
* the original ``delta.bin`` (adobe-research/custom-diffusion ``CustomDiffusionPipeline.save_pretrained``):
  ``{"unet": {diffusers param name: FULL weight}, "modifier_token": {token: [width]}}``, and the CompVis
  ``delta_epoch=*.ckpt`` ``{"state_dict": {"model.diffusion_model....attn2.to_k.weight": FULL, "embed": [n, w]}}``;
  read with ``torch.load(weights_only=True)`` (comfy_bridge.files.read_tensor_file: no arbitrary objects are
  unpickled).

Full weights are turned into deltas against the unpatched weights of the model they are applied to.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .common import TEMPLATES, Pool, prompt_for
from .fit import TrainingInterrupted, fit
from .objectives import eps_loss

__all__ = [
    "FORMAT", "TRAIN_MODES", "DIFFUSERS_WEIGHTS_NAME", "CDResult", "Concept", "trained_keys",
    "train_custom_diffusion", "concept_file", "concept_from_safetensors", "concept_from_torch", "is_token_file",
    "resolve_concept", "diffusers_files", "validate_modifier_token", "TOKEN_PREFIX",
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

def trained_keys(parameter_names, mode: str = "crossattn_kv") -> list:
    """ComfyUI model keys of the trained weights among ``parameter_names`` (the model's parameter keys, e.g.
    ``UNetFacts.shapes``): attn2.to_k/to_v of every cross-attention layer (``crossattn_kv``), or every parameter of
    attn2 (``crossattn``). Sorted. ValueError for a model without attn2 layers or an unknown mode."""
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {mode!r}; choose one of {TRAIN_MODES}")
    keys = []
    for name in parameter_names:
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


def train_custom_diffusion(session, encoder, pool: Pool, deltas: dict, init_vector: torch.Tensor, token: str,
                           class_noun: str, class_pool: Optional[Pool] = None, prior_loss_weight: float = 1.0,
                           steps: int = 500, learning_rate: float = 2e-5, batch_size: int = 2, seed: int = 0,
                           progress: Optional[Callable[[int, int], None]] = None, weight_decay: float = 1e-2,
                           settings: Optional[dict] = None) -> CDResult:
    """Trains the K/V deltas (or all of attn2) and the modifier token's embedding on the reference ``pool``.

    session: a ``training.fit.Session`` over a clone of the MODEL whose trained weights are wrapped as W + dW with
    ``deltas`` {model key: zero float32 dW, requires_grad} (comfy_bridge.training.add_delta_wrappers); encoder:
    comfy_bridge.text.PromptEncoder for ``token`` (one vector); pool: the encoded reference images (Custom
    Diffusion's "rescale" augmentation, or "flip"); init_vector: [1, width] (the initializer word's embedding;
    reference: "ktn"); class_noun: what the concept is, with modifiers ("wooden pot"): prompts read
    "<template> <token> <class_noun>"; class_pool: encoded class images for prior preservation (None: no prior loss),
    weighted by prior_loss_weight (lambda). Reference defaults (diffusers example): lr 1e-5 x batch 2 x GPUs
    (scale_lr), 250-500 steps, 200 class images, prior weight 1. Raises ValueError on bad settings and
    TrainingInterrupted (carrying the best-so-far CDResult) on interrupt.
    """
    noun = " ".join((class_noun or "").split())
    if not noun:
        raise ValueError("the class noun is empty; say what the concept is, e.g. 'teapot' or 'wooden pot'")
    steps, batch_size = int(steps), int(batch_size)
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be at least 1")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    width = int(init_vector.shape[-1])
    keys = sorted(deltas)
    tmpl = TEMPLATES["object"]
    concept_words = f"{encoder.placeholder()} {noun}"
    cfg = dict(settings or {})
    cfg.update(modifier_token=token, class_noun=noun, steps=steps, learning_rate=learning_rate,
               batch_size=batch_size, seed=int(seed), prior_loss_weight=float(prior_loss_weight) if class_pool else 0.0,
               class_images=0 if class_pool is None else len(class_pool) // 2, weight_decay=weight_decay)

    gen = torch.Generator().manual_seed(int(seed))
    T = session.num_timesteps()
    with torch.inference_mode(False):
        vector = torch.nn.Parameter(init_vector.clone().reshape(1, width).to(session.device))
    opt = torch.optim.AdamW(list(deltas.values()) + [vector], lr=float(learning_rate), weight_decay=float(weight_decay))
    stepper = session.grad_scaler()
    class_ctx: dict = {}

    def class_context(text: str) -> torch.Tensor:
        if text not in class_ctx:
            with torch.no_grad():
                class_ctx[text] = encoder.encode(text, None).detach()
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
                ctx = encoder.encode(text, vector)
                tot += float(eps_loss(session, pool.latents[i:i + 1], noise, session.sigmas_for(torch.tensor([t])),
                                      ctx, pool.masks[i:i + 1]))
            return tot / len(probe)

    before = probe_loss()

    def step(_):
        idx = torch.randint(0, len(pool), (batch_size,), generator=gen)
        tix = torch.randint(0, len(tmpl), (batch_size,), generator=gen)
        texts = [prompt_for(tmpl[int(j)], concept_words, pool.prefixes[int(i)]) for i, j in zip(idx, tix)]
        ctx = [encoder.encode(t, vector) for t in texts]
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
        per = eps_loss(session, lat, noise, session.sigmas_for(ts), ctx, masks, reduce=False)
        loss = per[:batch_size].mean()
        if class_pool is not None:
            loss = loss + float(prior_loss_weight) * per[batch_size:].mean()
        stepper.step(opt, loss)
        return float(loss.detach())

    run = fit(step, steps, lambda: {**deltas, TOKEN_PREFIX + token: vector}, session, progress)

    def result(state: dict, interrupted: bool, after: float) -> CDResult:
        d = {k: state[k].detach().float().cpu().clone() for k in keys}
        tok = {token: state[TOKEN_PREFIX + token].detach().float().cpu().clone().reshape(1, width)}
        return CDResult(d, tok, run.losses, steps, run.steps_done, before, after, interrupted,
                        run.best_step, run.seconds, cfg)

    if run.interrupted:
        raise TrainingInterrupted(result(run.state, True, float("nan")))
    return result({**deltas, TOKEN_PREFIX + token: vector}, False, probe_loss())


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


def concept_file(concept) -> tuple:
    """(tensors, metadata) of the pack's concept file for a CDResult or a delta Concept: the deltas under their
    ComfyUI model keys (float32), ``modifier_token.<token>`` = [n, width], metadata format / version / weights /
    modifier_tokens plus the training settings. ValueError for a full-weight concept (resolve it first)."""
    if isinstance(concept, CDResult):
        concept = concept.concept()
    if concept.kind != "delta":
        raise ValueError("only delta concepts are saved in the pack's format; resolve full weights first")
    tensors = {k: v.float() for k, v in concept.unet.items()}
    for tok, v in concept.tokens.items():
        tensors[TOKEN_PREFIX + tok] = v.float().reshape(-1, v.shape[-1])
    meta = {**concept.metadata, "format": FORMAT, "version": "1", "weights": "delta",
            "modifier_tokens": list(concept.tokens)}
    return tensors, meta


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


#: the encoder tensors of an SDXL-format token file, in the order their vectors are concatenated
SDXL_TOKEN_KEYS = ("clip_l", "clip_g")


def is_token_file(tensors: dict) -> bool:
    """True for a token file: diffusers' {"<new1>": [width]} (exactly one 1-D or 2-D tensor under a token name), or
    the SDXL embedding format {"clip_l": [n, 768], "clip_g": [n, 1280]} the pack exports for SDXL concepts."""
    if set(tensors) == set(SDXL_TOKEN_KEYS):
        return all(torch.is_tensor(v) and v.ndim in (1, 2) for v in tensors.values())
    if len(tensors) != 1:
        return False
    (k, v), = tensors.items()
    return torch.is_tensor(v) and v.ndim in (1, 2) and not _is_diffusers_proc_key(k) and k != "emb_params"


def token_file_tokens(token_files: list) -> dict:
    """{token: [n, width]} of token files; each entry is a file's tensors, or (tensors, token name) where the
    file does not name its token itself (the SDXL format: the name is the file's ``token`` metadata or stem; its
    clip_l and clip_g vectors side by side, as the pack's SDXL concepts hold them)."""
    out = {}
    for entry in token_files:
        sd, name = entry if isinstance(entry, tuple) else (entry, None)
        if not is_token_file(sd):
            continue
        if set(sd) == set(SDXL_TOKEN_KEYS):
            if name:
                parts = [sd[k].float().reshape(-1, sd[k].shape[-1]) for k in SDXL_TOKEN_KEYS]
                out[name] = torch.cat(parts, -1)
            continue
        (k, v), = sd.items()
        out[k] = v.float().reshape(-1, v.shape[-1])
    return out


def concept_from_safetensors(tensors: dict, meta: dict, name: str, token_files: list = ()) -> Concept:
    """The Concept of a .safetensors file's (tensors, metadata): the pack's delta format, or diffusers'
    ``pytorch_custom_diffusion_weights.safetensors`` (full weights) with the tensors of the token files found next
    to it (``token_files``). ValueError naming the file otherwise."""
    if meta.get("format") == FORMAT:
        tokens = {k[len(TOKEN_PREFIX):]: v.float() for k, v in tensors.items() if k.startswith(TOKEN_PREFIX)}
        unet = {k: v for k, v in tensors.items() if not k.startswith(TOKEN_PREFIX)}
        return Concept("delta", unet, tokens, meta, FORMAT)
    if any(_is_diffusers_proc_key(k) for k in tensors):
        return Concept("full", {_proc_to_param(k): v for k, v in tensors.items()}, token_file_tokens(token_files),
                       meta, "diffusers")
    raise ValueError(f"{name} is neither a concept of this pack nor a diffusers Custom Diffusion file "
                     "(pytorch_custom_diffusion_weights.safetensors); token files (<new1>.safetensors) are read "
                     "together with the weights file next to them")


def concept_from_torch(sd, name: str, token_files: list = ()) -> Concept:
    """The Concept of a ``.bin`` / ``.pt`` / ``.ckpt`` file's content (read with ``torch.load(weights_only=True)``):
    adobe-research's ``delta.bin``, the CompVis ``delta_epoch=*.ckpt``, or diffusers' ``.bin`` weights. ValueError
    naming the file otherwise."""
    if not isinstance(sd, dict):
        raise ValueError(f"{name} does not hold a dict of tensors")
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
        return Concept("full", {_proc_to_param(k): v for k, v in sd.items()}, token_file_tokens(token_files), {},
                       "diffusers")
    raise ValueError(f"{name}: unknown Custom Diffusion layout (keys {list(sd)[:5]})")


def _mismatch_message(what: str, missing: list, shapes: list) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) the model does not have, e.g. {', '.join(missing[:4])}")
    if shapes:
        parts.append(f"{len(shapes)} key(s) with other shapes, e.g. " +
                     "; ".join(f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in shapes[:4]))
    return (f"{what} does not fit this model (made for another architecture?): " + " and ".join(parts))


def resolve_concept(concept: Concept, unet, width: Optional[int] = None, what: str = "the concept file"):
    """Matches a concept to a model: returns (deltas {ComfyUI key: float32 dW}, tokens {token: [n, width]}).

    unet: the model's ``UNetFacts`` (``shapes`` {key: shape}, ``base_weight(key)``, ``diffusers_map()``; from
    comfy_bridge.training). Diffusers names are mapped with ``diffusers_map``; full weights become
    dW = W_file - W_base against the model's unpatched weights. width: the CLIP's token width (None: not checked).
    ValueError naming the mismatched keys when keys or shapes do not fit, or when a token's width differs."""
    dmap = None
    out, missing, shapes = {}, [], []
    for k, v in concept.unet.items():
        key = k
        if not key.startswith("diffusion_model."):
            if dmap is None:
                dmap = unet.diffusers_map()
            key = dmap.get(k)
            if key is None:
                missing.append(k)
                continue
        if key not in unet.shapes:
            missing.append(k)
            continue
        if tuple(unet.shapes[key]) != tuple(v.shape):
            shapes.append((k, tuple(v.shape), tuple(unet.shapes[key])))
            continue
        if concept.kind == "delta":
            out[key] = v.float()
        else:
            with torch.inference_mode(False):
                base = unet.base_weight(key)
                out[key] = (v.float().to(base.device) - base.float()).cpu()
    if missing or shapes:
        raise ValueError(_mismatch_message(what, missing, shapes))
    if not out:
        raise ValueError(f"{what} holds no UNet weights")
    tokens = dict(concept.tokens)
    if width is not None:
        bad = {t: v.shape[-1] for t, v in tokens.items() if v.shape[-1] != width}
        if bad:
            raise ValueError(f"{what}: token embedding width {sorted(set(bad.values()))} does not match this CLIP's "
                             f"{width} (tokens {sorted(bad)}): made for another text encoder")
    return out, tokens


def diffusers_files(unet, deltas: dict, tokens: dict, layout: Optional[list] = None) -> list:
    """The diffusers format as [(file name, tensors, metadata)]: ``pytorch_custom_diffusion_weights.safetensors``
    (FULL weights W_base + dW under processor keys) and one ``<token>.safetensors`` per token (file name without
    characters that are not letters, digits, '_', '-'; metadata ``token``): {token: [width]} as diffusers'
    train_custom_diffusion.py saves it, or, for a text side of several encoders (``layout`` [(tensor name,
    width)], SDXL: clip_l 768 + clip_g 1280), the SDXL embedding format {"clip_l": [n, 768], "clip_g": [n, 1280]}:
    diffusers has no SDXL Custom Diffusion trainer, and this is the file diffusers' ``load_textual_inversion``
    (one encoder at a time), A1111 and ComfyUI read for SDXL. ValueError for a key without a diffusers Custom
    Diffusion counterpart."""
    inv = {v: k for k, v in unet.diffusers_map().items()}
    procs = {}
    for key, d in deltas.items():
        name = inv.get(key)
        if name is None or ".attn2." not in name:
            raise ValueError(f"{key} has no diffusers Custom Diffusion counterpart")
        with torch.inference_mode(False):
            base = unet.base_weight(key).float().cpu()
            procs[_param_to_proc(name)] = base + d.float().cpu()
    files = [(DIFFUSERS_WEIGHTS_NAME, procs, {})]
    for tok, v in tokens.items():
        fname = re.sub(r"[^A-Za-z0-9_\-]", "", tok) or "token"
        vec = v.float().reshape(-1, v.shape[-1])
        if layout and len(layout) > 1:
            if sum(int(w) for _, w in layout) != vec.shape[-1]:
                raise ValueError(f"token {tok!r} is {vec.shape[-1]} wide, the encoders {layout} are not")
            parts, start = {}, 0
            for key, w in layout:
                parts[key] = vec[:, start:start + int(w)].contiguous()
                start += int(w)
            files.append((fname + ".safetensors", parts, {"token": tok}))
            continue
        vec = vec[0] if vec.shape[0] == 1 else vec
        files.append((fname + ".safetensors", {tok: vec}, {"token": tok}))
    return files
