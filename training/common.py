"""Shared pieces of the concept trainers (textual inversion, Custom Diffusion).

This is the one training module that touches ComfyUI's model internals (ModelPatcher loading, ``apply_model``,
the CLIP tokenizer's embedding mechanism); the trainers in ``textual_inversion.py`` and ``custom_diffusion.py``
are written against the helpers here.

What is here:

* names and files: :func:`validate_name` (no path separators, no ``..``), :func:`file_in_folder` (a path that
  is provably inside a folder), :func:`save_safetensors_atomic` (temp file + ``os.replace``);
* reference images: :func:`collect_images` (an IMAGE batch or a list of them, mixed sizes allowed),
  :func:`prepare_pixels` (centre crop to a square, resize), :func:`build_pool` (augmented variants, VAE-encoded
  once), :class:`Pool`;
* prompts: :data:`TEMPLATES` (object / style sets, our own wording), :func:`check_new_token`,
  :func:`clip_with_embeddings` (a CLIP clone whose tokenizer knows in-memory embeddings), :class:`PromptEncoder`
  (encodes a prompt with trainable vectors spliced in where the placeholder stands);
* the loss: :func:`eps_loss` (epsilon-prediction MSE at a noise level, optionally masked), :class:`TrainingSession`
  (loads the model for training, makes its weights usable by autograd, optional gradient checkpointing, unloads);
* bookkeeping: :class:`BestSoFar` (what an interrupted run keeps), :class:`TrainingInterrupted`,
  :func:`loss_plot` (a loss-curve IMAGE).

Conventions: a ComfyUI IMAGE is [B, H, W, 3] float in [0, 1]; a LATENT (what VAEEncode returns) is unscaled and
``model.process_latent_in`` scales it (x 0.18215 for SD1.x). Inside ComfyUI's model, noisy latents are in the
"VE" form x = x0 + sigma * eps (Karras et al. 2022), which is the DDPM forward process
x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (Ho et al. 2020, Eq. 4) divided by sqrt(a_t), with
sigma = sqrt((1 - a_t) / a_t). The training objective is DDPM's simplified loss
|| eps - eps_theta(x_t, t, c) ||^2 (Ho et al. Eq. 14; Gal et al. 2022, Eq. 2 for textual inversion; Kumari et al.
2023, Eq. 1 for Custom Diffusion), with t uniform over the model's training timesteps.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from comfy.model_management import InterruptProcessingException

__all__ = [
    "NAME_RE",
    "validate_name",
    "file_in_folder",
    "save_safetensors_atomic",
    "collect_images",
    "prepare_pixels",
    "Pool",
    "build_pool",
    "TEMPLATES",
    "template_names",
    "vocab_of",
    "check_new_token",
    "embedding_width",
    "token_rows",
    "clip_with_embeddings",
    "PromptEncoder",
    "TrainingSession",
    "eps_loss",
    "BestSoFar",
    "TrainingInterrupted",
    "loss_plot",
    "throw_if_interrupted",
]


# ----------------------------------------------------------------------------------------------------------------
# names and files
# ----------------------------------------------------------------------------------------------------------------

#: Allowed names of embeddings / concept files: a letter or digit first, then letters, digits, '_', '-', '.'.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


def validate_name(name: str, what: str = "name") -> str:
    """Returns ``name`` stripped, or raises ValueError when it could escape its folder or is not a plain name.

    Rejected: empty names, path separators (``/``, ``\\``), ``..`` anywhere, a leading dot, characters other than
    letters, digits, ``_``, ``-``, ``.``, and more than 100 characters. The name is also the file name (without
    extension), so nothing is ever written outside the target folder."""
    if not isinstance(name, str):
        raise ValueError(f"the {what} must be text, got {type(name).__name__}")
    s = name.strip()
    if not s:
        raise ValueError(f"the {what} is empty; give it a short name such as 'my_teapot'")
    if "/" in s or "\\" in s or os.sep in s or (os.altsep and os.altsep in s):
        raise ValueError(f"the {what} {name!r} contains a path separator; use a plain name (it is also the file "
                         "name, and files are only written inside their folder)")
    if ".." in s:
        raise ValueError(f"the {what} {name!r} contains '..'; use a plain name without '..'")
    if not NAME_RE.match(s):
        raise ValueError(f"the {what} {name!r} is not a plain name: use 1-100 letters, digits, '_', '-' or '.', "
                         "starting with a letter or digit")
    return s


def file_in_folder(folder: str, filename: str) -> str:
    """The absolute path of ``filename`` inside ``folder``; ValueError if it would resolve outside it."""
    base = os.path.realpath(os.path.abspath(folder))
    path = os.path.realpath(os.path.abspath(os.path.join(base, filename)))
    if os.path.commonpath([base, path]) != base or path == base:
        raise ValueError(f"{filename!r} would be written outside {base}; refused")
    return path


def save_safetensors_atomic(path: str, tensors: dict, metadata: Optional[dict] = None) -> str:
    """Writes ``tensors`` (name -> tensor) to ``path`` as safetensors: a temporary file in the same folder, then
    ``os.replace`` (a reader never sees a half-written file; an existing file is replaced in one step).
    Metadata values that are not strings are stored as JSON. Returns ``path``."""
    from safetensors.torch import save_file

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    out = {}
    for k, v in tensors.items():
        out[str(k)] = v.detach().to("cpu").contiguous().clone()
    meta = {str(k): (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        save_file(out, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ----------------------------------------------------------------------------------------------------------------
# reference images
# ----------------------------------------------------------------------------------------------------------------

def collect_images(images, what: str = "reference images") -> list:
    """Flattens an IMAGE batch [B, H, W, C], a list of them (list inputs, e.g. from Load Image Dataset from
    Folder) or single [H, W, C] images into a list of [H, W, 3] float tensors. ValueError when there is none."""
    out = []

    def add(x):
        if x is None:
            return
        if isinstance(x, (list, tuple)):
            for y in x:
                add(y)
            return
        if not torch.is_tensor(x):
            raise ValueError(f"the {what} must be IMAGE tensors, got {type(x).__name__}")
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
            raise ValueError(f"the {what} must be IMAGE tensors [B, H, W, C], got shape {tuple(x.shape)}")
        for i in range(x.shape[0]):
            img = x[i].float()
            if img.shape[-1] == 1:
                img = img.expand(*img.shape[:-1], 3)
            out.append(img[..., :3])

    add(images)
    if not out:
        raise ValueError(f"no {what} were given: connect at least one image (3-5 pictures of the concept work "
                         "well)")
    return out


def _crop_to_aspect(img: torch.Tensor, aspect: float) -> torch.Tensor:
    """Centre crop of a [3, H, W] image to width / height = aspect."""
    _, h, w = img.shape
    if w / h > aspect:
        cw = max(1, round(h * aspect))
        left = (w - cw) // 2
        return img[:, :, left:left + cw]
    ch = max(1, round(w / aspect))
    top = (h - ch) // 2
    return img[:, top:top + ch, :]


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[3, H, W] -> [3, h, w], bilinear with antialiasing when shrinking."""
    if img.shape[-2:] == (h, w):
        return img
    return F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]


def prepare_pixels(images: Sequence[torch.Tensor], resolution: int, multiple: int = 8,
                   size: Optional[tuple] = None) -> torch.Tensor:
    """Brings reference images to one size: [N, 3, R, R] (or [N, 3, H, W]) floats in [0, 1].

    ``resolution`` > 0: every image is centre-cropped to a square and resized to resolution x resolution (what the
    reference trainers do, 512 for SD1.x). ``resolution`` == 0: images of mixed sizes are centre-cropped to the
    FIRST image's aspect ratio and resized to its size (documented choice: mixed sizes are accepted, not refused).
    Sizes are rounded down to a multiple of ``multiple`` (the VAE's downscale factor). ``size`` (h, w) overrides
    both (class images are brought to the reference images' size)."""
    if not images:
        raise ValueError("no reference images were given")
    first = images[0]
    if size is not None:
        h, w = int(size[0]), int(size[1])
    elif resolution and resolution > 0:
        h = w = int(resolution)
    else:
        h, w = int(first.shape[0]), int(first.shape[1])
    h = max(multiple, (h // multiple) * multiple)
    w = max(multiple, (w // multiple) * multiple)
    out = []
    for img in images:
        chw = img.permute(2, 0, 1).float().clamp(0, 1)
        chw = _crop_to_aspect(chw, w / h)
        out.append(_resize(chw, h, w).clamp(0, 1))
    return torch.stack(out)


@dataclass
class Pool:
    """Augmented training examples, VAE-encoded once.

    latents: [M, C, h, w] in the model's latent space (process_latent_in applied), on the CPU;
    masks: [M, 1, h, w] 1 where the loss counts (the picture), 0 on padding;
    prefixes: per example, a phrase put in front of the prompt ("" for none);
    source: per example, the index of the reference image it came from."""

    latents: torch.Tensor
    masks: torch.Tensor
    prefixes: list
    source: list

    def __len__(self) -> int:
        return int(self.latents.shape[0])


# Prompt prefixes for the rescale augmentation (our own wording): the picture was shrunk onto a padded canvas,
# or enlarged and cropped.
SMALL_PREFIXES = ("a distant", "a tiny")
LARGE_PREFIXES = ("a close-up", "a zoomed-in")


def _rescale_variant(img: torch.Tensor, gen: torch.Generator, multiple: int):
    """Custom Diffusion's scale augmentation (Kumari et al. 2023, Sec. 3 / their training code): with probability
    2/3 the picture shrinks to a random size in [R/3, R] and is placed at a random spot on a mid-grey canvas (the
    loss is masked to the picture), otherwise it grows to [1.2 R, 1.4 R] and a random R x R crop is kept.
    Returns (image [3, R, R], pixel mask [R, R], prefix)."""
    _, H, W = img.shape
    u = float(torch.rand((), generator=gen))
    if u < 0.66:
        s = float(torch.empty(()).uniform_(1 / 3, 1.0, generator=gen))
        nh, nw = max(multiple, int(H * s) // 2 * 2), max(multiple, int(W * s) // 2 * 2)
        small = _resize(img, nh, nw)
        top = int(torch.randint(0, H - nh + 1, (), generator=gen))
        left = int(torch.randint(0, W - nw + 1, (), generator=gen))
        canvas = torch.full_like(img, 0.5)
        canvas[:, top:top + nh, left:left + nw] = small
        mask = torch.zeros(H, W)
        mask[top:top + nh, left:left + nw] = 1
        prefix = SMALL_PREFIXES[int(torch.randint(0, 2, (), generator=gen))] if s < 0.6 else ""
        return canvas, mask, prefix
    s = float(torch.empty(()).uniform_(1.2, 1.4, generator=gen))
    nh, nw = int(H * s), int(W * s)
    big = _resize(img, nh, nw)
    top = int(torch.randint(0, nh - H + 1, (), generator=gen))
    left = int(torch.randint(0, nw - W + 1, (), generator=gen))
    prefix = LARGE_PREFIXES[int(torch.randint(0, 2, (), generator=gen))]
    return big[:, top:top + H, left:left + W], torch.ones(H, W), prefix


def _latent_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel mask [H, W] -> latent mask [1, h, w]: a latent pixel counts when fully inside the picture, with a
    one-pixel inset on the border of a partial picture (as the reference's 1/8-resolution mask)."""
    m = -F.adaptive_max_pool2d(-mask[None, None], (h, w))[0]  # min pooling
    if float(m.min()) < 1.0:
        inner = -F.max_pool2d(-m[None], kernel_size=3, stride=1, padding=1)[0]
        if float(inner.sum()) >= 1.0:
            m = inner
    if float(m.sum()) < 1.0:  # a tiny picture on a tiny latent: keep what it covers at all
        m = (F.adaptive_max_pool2d(mask[None, None], (h, w))[0] > 0).float()
    return m


@torch.no_grad()
def build_pool(pixels: torch.Tensor, vae, model_patcher, augment: str, variants_per_image: int,
               seed: int, encode_batch: int = 4) -> Pool:
    """Makes the augmented variants of the reference images and VAE-encodes each once.

    pixels: [N, 3, H, W] in [0, 1] (from :func:`prepare_pixels`). augment: "flip" (each image and its mirror
    image: textual inversion's random horizontal flip) or "rescale" (the image, its mirror image, and
    ``variants_per_image - 2`` random rescales with random flips: Custom Diffusion's augmentation).
    The VAE runs once per variant here, never inside the training loop; the loop draws from this pool.
    """
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    multiple = 8
    imgs, masks, prefixes, source = [], [], [], []
    n, _, H, W = pixels.shape
    for i in range(n):
        base = pixels[i]
        for flip in (False, True):
            imgs.append(base.flip(-1) if flip else base)
            masks.append(torch.ones(H, W))
            prefixes.append("")
            source.append(i)
        if augment == "rescale":
            for _ in range(max(0, int(variants_per_image) - 2)):
                im = base.flip(-1) if bool(torch.rand((), generator=gen) < 0.5) else base
                v, m, p = _rescale_variant(im, gen, multiple)
                imgs.append(v)
                masks.append(m)
                prefixes.append(p)
                source.append(i)
        elif augment != "flip":
            raise ValueError(f"unknown augmentation {augment!r}")
    lat = []
    for k in range(0, len(imgs), encode_batch):
        chunk = torch.stack(imgs[k:k + encode_batch]).permute(0, 2, 3, 1).contiguous()  # IMAGE layout
        lat.append(vae.encode(chunk).float().cpu())
    latents = torch.cat(lat)
    latents = model_patcher.model.process_latent_in(latents).float().cpu().clone()
    h, w = latents.shape[-2:]
    lmasks = torch.stack([_latent_mask(m, h, w) for m in masks])
    return Pool(latents, lmasks, prefixes, source)


# ----------------------------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------------------------

#: Prompt templates; "{}" is replaced by the concept ("embedding:name", or "<v1> wooden pot"). Our own wording,
#: in the spirit of the reference's object / style template sets.
TEMPLATES = {
    "object": (
        "a photo of a {}",
        "a photograph of the {}",
        "a close photo of a {}",
        "a picture of my {}",
        "a cropped photo of the {}",
        "a bright photo of a {}",
        "a dim photo of the {}",
        "a good photo of a {}",
        "a clear picture of the {}",
        "an image showing a {}",
        "a snapshot of the {}",
        "a {} on a plain background",
        "a small {}",
        "a large {}",
        "the {} seen from the side",
        "a detailed photo of a {}",
    ),
    "style": (
        "a painting in the style of {}",
        "an artwork in the style of {}",
        "a picture made in the style of {}",
        "an illustration in the style of {}",
        "a drawing in the style of {}",
        "a small picture in the style of {}",
        "a large painting in the style of {}",
        "a detailed rendering in the style of {}",
        "a landscape in the style of {}",
        "a portrait in the style of {}",
        "a still life in the style of {}",
        "a colourful artwork in the style of {}",
    ),
}


def template_names() -> list:
    return list(TEMPLATES)


def _inner_tokenizer(clip):
    """The SDTokenizer inside a CLIP's SD1Tokenizer (clip_l for SD1.x); ValueError for other text encoders."""
    outer = getattr(clip, "tokenizer", None)
    key = getattr(outer, "clip", None)
    inner = getattr(outer, key, None) if isinstance(key, str) else None
    if inner is None or not hasattr(inner, "tokenize_with_weights") or not hasattr(inner, "tokenizer"):
        raise ValueError("this CLIP is not an SD1.x-style text encoder (one CLIP-L tokenizer); concept training "
                         "supports SD1.x models")
    return outer, key, inner


def vocab_of(clip) -> dict:
    """The CLIP tokenizer's vocabulary (BPE string -> id)."""
    return _inner_tokenizer(clip)[2].tokenizer.get_vocab()


def check_new_token(clip, token: str, what: str = "placeholder token") -> None:
    """Raises ValueError when ``token`` is already a word of the CLIP vocabulary (as a whole word, ``tok</w>``,
    or as a bare entry), since a new concept must not shadow a word the model already knows."""
    vocab = vocab_of(clip)
    t = token.strip().lower()
    if not t:
        raise ValueError(f"the {what} is empty")
    for cand in (t, t + "</w>"):
        if cand in vocab:
            raise ValueError(f"the {what} {token!r} already exists in the CLIP vocabulary (token id {vocab[cand]}); "
                             "choose a new word, e.g. a made-up one such as 'sks_teapot' or '<v1>'")


def embedding_width(clip) -> int:
    """Width of the CLIP token embeddings (768 for SD1.x)."""
    emb = _token_embedding(clip)
    return int(emb.weight.shape[-1])


def _token_embedding(clip):
    cm = clip.cond_stage_model
    inner = getattr(cm, getattr(cm, "clip", "clip_l"), None)
    tr = getattr(inner, "transformer", None)
    if tr is None or not hasattr(tr, "get_input_embeddings"):
        raise ValueError("this CLIP has no SD1.x-style transformer with token embeddings")
    return tr.get_input_embeddings()


def token_rows(clip, words: str, n: int) -> torch.Tensor:
    """Initial vectors [n, width] from the token embeddings of ``words`` (float32, CPU, a copy).

    The words' BPE tokens are spread over the n vectors (vector i takes token i * k // n of the k tokens), so one
    word initialises every vector (the reference initialises from one token) and n words one vector each."""
    _, _, inner = _inner_tokenizer(clip)
    ids = inner.tokenizer(words.strip())["input_ids"][1:-1] if words.strip() else []
    if not ids:
        raise ValueError(f"the initializer {words!r} gives no tokens; give one or more ordinary words (e.g. "
                         "'teapot')")
    weight = _token_embedding(clip).weight
    with torch.inference_mode(False):
        rows = weight[torch.tensor(ids, device=weight.device)].detach().float().cpu().clone()
    k = len(ids)
    return torch.stack([rows[i * k // n] for i in range(n)]).clone()


def clip_with_embeddings(clip, table: Optional[dict] = None, extra_dirs: Iterable[str] = (),
                         bare_words: bool = False):
    """A clone of ``clip`` whose tokenizer knows more embeddings; the original CLIP is not changed.

    table: name -> [n, width] vectors, looked up in memory by ``embedding:name`` before the embedding folders.
    extra_dirs: embedding folders to add (ComfyUI's own loader, ``load_embed``, reads them).
    bare_words: also replace bare occurrences of the table's names in prompts (e.g. "photo of a <v1> pot").
    The clone's tokenizer is a shallow copy (the vocabulary is shared, not copied)."""
    table = {str(k): v for k, v in (table or {}).items()}
    n = clip.clone()
    outer, key, inner = _inner_tokenizer(clip)
    outer = copy.copy(outer)
    inner = copy.copy(inner)
    dirs = inner.embedding_directory
    dirs = [] if dirs is None else ([dirs] if isinstance(dirs, str) else list(dirs))
    for d in extra_dirs:
        if d not in dirs:
            dirs.append(d)
    inner.embedding_directory = dirs
    if table:
        disk_lookup = inner._try_get_embedding

        def lookup(embedding_name: str):
            parts = embedding_name.split()
            if parts:
                word, leftover = parts[0], " ".join(parts[1:])
                for cand in (word, word.strip(",")):
                    if cand in table:
                        rest = word[len(cand):]
                        return table[cand], (f"{rest} {leftover}".strip() if rest else leftover)
            return disk_lookup(embedding_name)

        inner._try_get_embedding = lookup
        if bare_words:
            names = sorted(table, key=len, reverse=True)
            pattern = re.compile("(?<!embedding:)(" + "|".join(re.escape(x) for x in names) + ")")
            plain = outer.tokenize_with_weights

            def tokenize_with_weights(text: str, return_word_ids=False, **kwargs):
                text = pattern.sub(lambda m: f" embedding:{m.group(1)} ", text)
                return plain(text, return_word_ids, **kwargs)

            outer.tokenize_with_weights = tokenize_with_weights
    setattr(outer, key, inner)
    n.tokenizer = outer
    return n


class PromptEncoder:
    """Encodes prompts with a CLIP, splicing trainable vectors in where a placeholder stands.

    The placeholder is written ``embedding:<name>`` in the prompt text; the tokenizer (a clone, see
    :func:`clip_with_embeddings`) maps it to ``n`` marker rows, and :meth:`encode` swaps those rows for the rows of
    the trainable tensor before ComfyUI's own ``encode_from_tokens`` runs. So training sees exactly the
    conditioning ComfyUI computes later for ``embedding:<name>`` (same token positions, same clip skip, same
    text-encoder patches). Token lists are cached per prompt text.
    """

    def __init__(self, clip, name: str, n_vectors: int, width: int):
        self.name = name
        self.n = int(n_vectors)
        self.marker = torch.zeros(self.n, width)
        self.clip = clip_with_embeddings(clip, {name: self.marker})
        self._cache: dict = {}

    def placeholder(self) -> str:
        return f"embedding:{self.name}"

    def tokens(self, text: str):
        """(token dict, positions) with positions = [(section key, chunk index, token index, row)]."""
        if text not in self._cache:
            tokens = self.clip.tokenize(text)
            ptrs = {self.marker[i].data_ptr(): i for i in range(self.n)}
            pos = []
            for key, chunks in tokens.items():
                for ci, chunk in enumerate(chunks):
                    for ti, item in enumerate(chunk):
                        t = item[0]
                        if torch.is_tensor(t) and t.data_ptr() in ptrs and t.shape == self.marker[0].shape:
                            pos.append((key, ci, ti, ptrs[t.data_ptr()]))
            self._cache[text] = (tokens, pos)
        return self._cache[text]

    def encode(self, text: str, vectors: Optional[torch.Tensor]) -> torch.Tensor:
        """Conditioning [1, T, D] of ``text`` with the placeholder rows taken from ``vectors`` [n, width] (which
        may require grad); ``vectors`` None for a prompt without the placeholder."""
        tokens, pos = self.tokens(text)
        if pos and vectors is None:
            raise ValueError("this prompt contains the placeholder; vectors are needed")
        if pos:
            tokens = {k: [list(c) for c in v] for k, v in tokens.items()}
            for key, ci, ti, row in pos:
                item = tokens[key][ci][ti]
                tokens[key][ci][ti] = (vectors[row],) + tuple(item[1:])
        return self.clip.encode_from_tokens(tokens)


# ----------------------------------------------------------------------------------------------------------------
# the loss and the training session
# ----------------------------------------------------------------------------------------------------------------

def throw_if_interrupted() -> None:
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def _make_autograd_safe(module: torch.nn.Module) -> None:
    """Replaces inference-mode parameters/buffers by ordinary copies with the same values (in place).

    ComfyUI runs nodes under ``torch.inference_mode()``, so weights loaded by a loader node are inference tensors,
    and autograd refuses to save them for backward ("Inference tensors cannot be saved for backward") even inside
    ``inference_mode(False)``. The copies hold identical values, so every later use of the model gives the same
    results; frozen weights get ``requires_grad=False``. Must run inside ``torch.inference_mode(False)``."""
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


def _copy_first_input(module, args):
    """Forward pre-hook: the module gets a copy of its first input (so a later in-place change of the caller's
    tensor cannot corrupt what autograd saved)."""
    if args and torch.is_tensor(args[0]) and args[0].requires_grad:
        return (args[0].clone(),) + tuple(args[1:])
    return None


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

    On entry: leaves inference mode (``torch.inference_mode(False)``, grad enabled), loads the model fully
    through ``comfy.model_management.load_models_gpu`` (so its weight patches and weight wrappers apply), makes
    the UNet's and the text encoder's weights usable by autograd (:func:`_make_autograd_safe`: same values), and
    optionally wraps the UNet's blocks in gradient checkpointing (activations are recomputed in the backward
    pass: less memory, about a third more time). On exit: removes the checkpointing and unloads this patcher so
    its training-only weight wrappers leave the shared modules.

    Why not ComfyUI's sampler (as sampling/engine.py's ``run_loop`` does for inversion): training needs random
    noise levels per example and a backward pass per step, not a sigma schedule; calling ``apply_model`` of the
    loaded model directly is the plainer loop. Sampling-time patches of other nodes (attention replacements in
    ``model_options``) are therefore not applied during training; weight patches (LoRAs) are.
    """

    def __init__(self, model_patcher, clip=None, gradient_checkpointing: bool = False):
        self.mp = model_patcher
        self.clip = clip
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self._stack = contextlib.ExitStack()
        self._patched: list = []
        self._hooks: list = []

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
        if getattr(self.mp.model, "adm_channels", 0):
            raise ValueError("this model needs extra (ADM) conditioning, e.g. SDXL; concept training supports "
                             "SD1.x-style models")
        models = [self.mp] + ([self.clip.patcher] if self.clip is not None else [])
        mm.load_models_gpu(models, force_full_load=True)  # both at once: neither evicts the other later
        _make_autograd_safe(self.mp.model.diffusion_model)
        if self.clip is not None:
            _make_autograd_safe(self.clip.cond_stage_model)
            # ComfyUI's CLIP layers add residuals in place (x += attn(layer_norm1(x))), which destroys the input
            # the layer norm saved for backward; feed every layer norm a copy while training (same values).
            for m in self.clip.cond_stage_model.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    self._hooks.append(m.register_forward_pre_hook(_copy_first_input))
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
            for i in range(len(mm.current_loaded_models) - 1, -1, -1):
                lm = mm.current_loaded_models[i]
                if lm.model is self.mp:
                    mm.current_loaded_models.pop(i).model_unload()
        finally:
            self._stack.close()
        return False

    def grad_scaler(self):
        """A loss scaler against fp16 gradient underflow: active when the UNet computes in float16 on a CUDA
        device (the trained tensors themselves are float32), a no-op otherwise. Use ``step(opt, loss)``."""
        mdl = self.mp.model
        dtype = getattr(mdl, "manual_cast_dtype", None) or mdl.get_dtype()
        on = dtype == torch.float16 and getattr(self.device, "type", str(self.device)) == "cuda"
        return _Stepper(torch.amp.GradScaler("cuda", enabled=True) if on else None)

    def sigmas_for(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Model sigmas of integer training timesteps [B] (0 .. num_timesteps - 1)."""
        ms = self.mp.get_model_object("model_sampling")
        return ms.sigmas.to(self.device)[timesteps.to(self.device)].float()

    def num_timesteps(self) -> int:
        ms = self.mp.get_model_object("model_sampling")
        return int(ms.sigmas.shape[0])


class _Stepper:
    """backward + optimizer step, through a GradScaler when one is given."""

    def __init__(self, scaler=None):
        self.scaler = scaler

    def step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()


def eps_loss(session: TrainingSession, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
             context: torch.Tensor, mask: Optional[torch.Tensor] = None, reduce: bool = True) -> torch.Tensor:
    """The epsilon-prediction loss || eps - eps_theta(x_t, t, c) ||^2 (DDPM simplified objective).

    latents: [B, C, h, w] clean latents in model space; noise: [B, C, h, w] standard normal (eps); sigmas: [B]
    noise levels; context: [B, T, D] text conditioning (may carry gradient); mask: [B, 1, h, w] or None.
    x_t = latents + sigma * eps (ComfyUI's VE form); the model returns the denoised estimate x0_hat and
    eps_theta = (x_t - x0_hat) / sigma. Returns the mean over unmasked elements (reduce) or the per-example
    losses [B]."""
    dev = session.device
    x0 = latents.to(dev)
    eps = noise.to(dev)
    s = sigmas.to(dev).float()
    xt = x0 + eps * s.view(-1, 1, 1, 1)
    denoised = session.mp.model.apply_model(xt, s, c_crossattn=context.to(dev))
    eps_hat = (xt - denoised.float()) / s.view(-1, 1, 1, 1)
    err = (eps_hat - eps) ** 2
    if mask is None:
        per = err.flatten(1).mean(1)
    else:
        m = mask.to(dev).float().expand_as(err)
        per = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
    return per.mean() if reduce else per


# ----------------------------------------------------------------------------------------------------------------
# bookkeeping
# ----------------------------------------------------------------------------------------------------------------

class TrainingInterrupted(InterruptProcessingException):
    """Raised by a trainer when ComfyUI's interrupt arrived; ``result`` is the best-so-far result.

    A subclass of ComfyUI's InterruptProcessingException, so the executor reports the run as interrupted (not
    failed) when a node lets it through."""

    def __init__(self, result):
        super().__init__("training interrupted; the best result so far was kept")
        self.result = result


class BestSoFar:
    """Keeps a copy of the trainable tensors at the lowest smoothed training loss seen so far.

    The per-step loss is very noisy (random timesteps), so it is smoothed by the mean over the last ``window``
    steps; until ``window`` steps have run, the latest state counts as the best. ``state_fn`` returns the tensors
    to keep; copies go to the CPU."""

    def __init__(self, window: int, state_fn: Callable[[], dict]):
        self.window = max(1, int(window))
        self.state_fn = state_fn
        self.losses: list = []
        self.best_loss = math.inf
        self.best_step = 0
        self.state: dict = {}

    def update(self, step: int, loss: float) -> None:
        self.losses.append(float(loss))
        recent = self.losses[-self.window:]
        smooth = sum(recent) / len(recent)
        if len(self.losses) < self.window or smooth <= self.best_loss:
            if len(self.losses) >= self.window:
                self.best_loss = smooth
            self.best_step = int(step)
            self.state = {k: v.detach().float().cpu().clone() for k, v in self.state_fn().items()}


def loss_plot(losses: Sequence[float], title: str = "training loss", width: int = 512, height: int = 320,
              smooth: Optional[int] = None) -> torch.Tensor:
    """A loss curve as a ComfyUI IMAGE [1, height, width, 3]: raw losses in light grey, their running mean in blue,
    the axis range and the first/last smoothed values written on it."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 56, width - 12, 28, height - 30
    d.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    d.text((left, 8), title, fill=(0, 0, 0))
    vals = [float(v) for v in losses if v is not None and math.isfinite(float(v))]
    if not vals:
        d.text((left + 10, (top + bottom) // 2), "no steps ran", fill=(120, 0, 0))
    else:
        k = max(1, smooth or max(1, len(vals) // 20))
        run = []
        acc = 0.0
        for i, v in enumerate(vals):
            acc += v
            if i >= k:
                acc -= vals[i - k]
            run.append(acc / min(i + 1, k))
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-12:
            hi, lo = hi + 1e-6, lo - 1e-6
        n = len(vals)

        def xy(i, v):
            x = left + (right - left) * (i / max(1, n - 1))
            y = bottom - (bottom - top) * ((v - lo) / (hi - lo))
            return x, y

        if n > 1:
            d.line([xy(i, v) for i, v in enumerate(vals)], fill=(200, 200, 200), width=1)
            d.line([xy(i, v) for i, v in enumerate(run)], fill=(30, 80, 220), width=2)
        else:
            x, y = xy(0, vals[0])
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(30, 80, 220))
        d.text((4, top - 4), f"{hi:.4g}", fill=(0, 0, 0))
        d.text((4, bottom - 10), f"{lo:.4g}", fill=(0, 0, 0))
        d.text((left, bottom + 6), "step 1", fill=(0, 0, 0))
        d.text((right - 70, bottom + 6), f"step {n}", fill=(0, 0, 0))
        d.text((left + 120, bottom + 6), f"mean of {k}: {run[min(k, n) - 1]:.4g} -> {run[-1]:.4g}",
               fill=(30, 80, 220))
    import numpy as np

    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    return arr[None].clone()
