"""Real photographs for tests and benchmarks, as ComfyUI IMAGE tensors.

The photos are scikit-image's sample images (public domain / freely usable, shipped inside the
scikit-image wheel, no download). ``photo("cat", 64)`` is a [1, 64, 64, 3] float32 tensor in [0, 1],
centre-cropped to the requested aspect ratio and resized with PIL (Lanczos).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

__all__ = ["PHOTOS", "photo_names", "photo_pil", "photo", "photo_batch", "pil_to_image", "image_to_pil",
           "save_input_photo"]

#: Friendly name -> scikit-image ``skimage.data`` function name.
PHOTOS = {
    "cat": "chelsea",
    "chelsea": "chelsea",
    "astronaut": "astronaut",
    "coffee": "coffee",
    "rocket": "rocket",
    "camera": "camera",         # grayscale, converted to RGB
    "cells": "immunohistochemistry",
    "hubble": "hubble_deep_field",
}


def photo_names() -> list[str]:
    return sorted(PHOTOS)


def _size_wh(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    w, h = size
    return int(w), int(h)


def photo_pil(name: str = "cat", size: int | tuple[int, int] | None = None) -> Image.Image:
    """The photo as an RGB PIL image; *size* (an int for a square, or (width, height)) centre-crops to that
    aspect ratio and resizes. ``None`` keeps the original."""
    import skimage.data

    fn = PHOTOS.get(name, name)
    if not hasattr(skimage.data, fn):
        raise KeyError(f"unknown photo {name!r}; known: {', '.join(photo_names())}")
    arr = np.asarray(getattr(skimage.data, fn)())
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr).convert("RGB")
    if size is None:
        return img
    w, h = _size_wh(size)
    if w <= 0 or h <= 0:
        raise ValueError(f"bad size {size!r}")
    sw, sh = img.size
    target = w / h
    if sw / sh > target:  # too wide: crop the width
        cw, ch = round(sh * target), sh
    else:
        cw, ch = sw, round(sw / target)
    left, top = (sw - cw) // 2, (sh - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    return img.resize((w, h), Image.Resampling.LANCZOS)


def pil_to_image(img: Image.Image):
    """PIL -> ComfyUI IMAGE tensor [1, H, W, 3] float32 in [0, 1] (CPU)."""
    import torch

    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())[None]


def image_to_pil(image, index: int = 0) -> Image.Image:
    """ComfyUI IMAGE tensor [B, H, W, C] (or [H, W, C]) -> PIL RGB image of batch item *index*."""
    t = image.detach().float().cpu()
    if t.ndim == 4:
        t = t[index]
    arr = (t.clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def photo(name: str = "cat", size: int | tuple[int, int] = 64):
    """ComfyUI IMAGE tensor [1, H, W, 3] float32 in [0, 1] of a photo (see :func:`photo_pil`)."""
    return pil_to_image(photo_pil(name, size))


def photo_batch(names: Iterable[str], size: int | tuple[int, int] = 64):
    """Several photos at the same size, as one IMAGE batch [B, H, W, 3]."""
    import torch

    return torch.cat([photo(n, size) for n in names], dim=0)


def save_input_photo(name: str = "cat", size: int | tuple[int, int] | None = 64, filename: str | None = None,
                     input_dir: str | os.PathLike | None = None) -> str:
    """Writes a photo as PNG into ComfyUI's input folder (the running host's, unless *input_dir* is given, e.g. a
    test server's) and returns the file name that LoadImage's ``image`` input takes."""
    if input_dir is None:
        from ..comfy_bridge import files

        input_dir = files.input_dir()
    if filename is None:
        w, h = _size_wh(size) if size is not None else ("orig", "orig")
        filename = f"ae_{name}_{w}x{h}.png"
    path = Path(input_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    photo_pil(name, size).save(path, format="PNG")
    return filename
