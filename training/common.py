"""Shared pieces of the concept trainers (textual inversion, Custom Diffusion), tensors only.

* reference images: :func:`collect_images` (an IMAGE batch or a list of them, mixed sizes allowed),
  :func:`prepare_pixels` (centre crop to a square, resize), :func:`build_pool` (augmented variants, encoded once
  by a given encoder), :class:`Pool`;
* prompts: :data:`TEMPLATES` (object / style sets, our own wording), :func:`prompt_for`;
* :func:`loss_plot` (a loss-curve IMAGE).

The loss is ``training/objectives.py``, the loop ``training/fit.py``; what touches ComfyUI (the session, the VAE,
the tokenizer) is in ``comfy_bridge/``.

Conventions: a ComfyUI IMAGE is [B, H, W, 3] float in [0, 1]; a LATENT (what VAEEncode returns) is unscaled and
the model's ``process_latent_in`` scales it (x 0.18215 for SD1.x). Inside the model, noisy latents are in the
"VE" form x = x0 + sigma * eps (Karras et al. 2022), which is the DDPM forward process
x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (Ho et al. 2020, Eq. 4) divided by sqrt(a_t), with
sigma = sqrt((1 - a_t) / a_t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["collect_images", "prepare_pixels", "Pool", "build_pool", "TEMPLATES", "template_names", "prompt_for",
           "loss_plot"]


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


def build_pool(pixels: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor], augment: str,
               variants_per_image: int, seed: int) -> Pool:
    """Makes the augmented variants of the reference images and encodes each once.

    pixels: [N, 3, H, W] in [0, 1] (from :func:`prepare_pixels`); encode: pixels [M, 3, H, W] -> latents
    [M, C, h, w] in the model's latent space (comfy_bridge.training.encode_images: the VAE, then the model's
    latent scale). augment: "flip" (each image and its mirror image: textual inversion's random horizontal flip) or
    "rescale" (the image, its mirror image, and ``variants_per_image - 2`` random rescales with random flips: Custom
    Diffusion's augmentation). The VAE runs once per variant here, never inside the training loop; the loop draws
    from this pool.
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
    latents = encode(torch.stack(imgs)).float().cpu().clone()
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


def prompt_for(template: str, concept: str, prefix: str = "") -> str:
    """A training prompt: the template with the concept in the blank; an augmentation prefix ("a tiny",
    "a close-up" ...) replaces the template's leading article ("a tiny photo of a <v1> pot")."""
    text = template.format(concept)
    if prefix:
        for art in ("a ", "an "):
            if text.startswith(art):
                text = text[len(art):]
                break
        text = f"{prefix} {text}"
    return text


# ----------------------------------------------------------------------------------------------------------------
# bookkeeping
# ----------------------------------------------------------------------------------------------------------------

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
