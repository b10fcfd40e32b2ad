"""A classical-vision judge for ToyWorld images: which objects are there (shape, colour, size, position, mask)?

No learning: saturated pixels (ToyWorld backgrounds are all low-saturation: white, gray, black, beige stripes) are
assigned to the nearest palette colour, split into connected components per colour, and each component is scored:

* shape by the fill ratio of its bounding box (square ~1, circle ~pi/4, triangle ~1/2) with a top/bottom width check;
* size by its extent (mean of bbox size and the extent implied by area and shape) against the small/big midpoint;
* position by the nearest anchor (left/right/top/bottom/centre) to its bounding-box centre.

``judge_image(img)`` accepts HWC uint8, or float in [0,1] (numpy or torch, HWC or CHW, or a batch of one).
``validate(n)`` measures per-attribute accuracy against rendered ground truth
(``python -m attention_edit.toyworld.judge 500``).
"""
from __future__ import annotations

import numpy as np

from . import scenes

_PALETTE_NAMES = list(scenes.COLOURS)
_PALETTE = np.array([scenes.COLOURS[k] for k in _PALETTE_NAMES], dtype=np.float32)
_FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}
SAT_THRESHOLD = 70  # max-min channel spread (0..255) of an object pixel
MIN_AREA = 25  # px; smaller components are noise
SIZE_SPLIT = (scenes.EXTENT["small"] + scenes.EXTENT["big"]) / 2.0


def to_uint8_hwc(img) -> np.ndarray:
    try:
        import torch

        if isinstance(img, torch.Tensor):
            img = img.detach().cpu().float().numpy() if img.is_floating_point() else img.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(img)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"expected an HWC/CHW image, got shape {a.shape}")
    if a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.transpose(a, (1, 2, 0))
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return a


def _components(mask: np.ndarray):
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return [lab == i for i in range(1, n + 1)]


def classify_component(mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    area = float(len(xs))
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    w, h = float(x1 - x0), float(y1 - y0)
    fill = area / max(1.0, w * h)
    # a triangle (apex up) is much narrower in its top quarter than in its bottom quarter
    q = max(1, int(round(h / 4)))
    top_w = mask[y0:y0 + q, x0:x1].sum(axis=1).mean()
    bot_w = mask[y1 - q:y1, x0:x1].sum(axis=1).mean()
    taper = top_w / max(1.0, bot_w)
    if fill < 0.64 and taper < 0.7:
        shape = "triangle"
    elif fill > 0.89:
        shape = "square"
    elif fill >= 0.64:
        shape = "circle"
    else:
        shape = "triangle" if taper < 0.85 else "circle"
    ext = 0.5 * (max(w, h) + np.sqrt(area / _FILL[shape]))
    size = "big" if ext >= SIZE_SPLIT else "small"
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    pos = min(scenes.POSITIONS, key=lambda p: (scenes.POSITIONS[p][0] - cx) ** 2 + (scenes.POSITIONS[p][1] - cy) ** 2)
    return {"shape": shape, "size": size, "position": pos, "area": int(area), "centre": (cx, cy),
            "bbox": (int(x0), int(y0), int(x1), int(y1)), "fill": round(fill, 3), "extent": round(float(ext), 2)}


def judge_image(img, background: str | None = None, min_area: int = MIN_AREA) -> list:
    """Objects found in a ToyWorld image, largest first: dicts with shape, colour, size, position, mask, area,
    centre, bbox. ``background`` is accepted for API symmetry (the judge needs no hint)."""
    a = to_uint8_hwc(img).astype(np.float32)
    sat = a.max(axis=-1) - a.min(axis=-1)
    obj = sat > SAT_THRESHOLD
    d = ((a[..., None, :] - _PALETTE[None, None]) ** 2).sum(-1)  # H,W,4
    cls = d.argmin(-1)
    out = []
    for ci, cname in enumerate(_PALETTE_NAMES):
        m = obj & (cls == ci)
        if m.sum() < min_area:
            continue
        for comp in _components(m):
            if comp.sum() < min_area:
                continue
            r = classify_component(comp)
            r["colour"] = cname
            r["mask"] = comp
            out.append(r)
    out.sort(key=lambda r: -r["area"])
    return out


ATTRS = ("shape", "colour", "size", "position")
#: the PSNR reported for a background that is bit-identical (its PSNR is infinite): averages use this cap
PSNR_CAP = 100.0


def outside_objects(masks, shape, margin: int = 2) -> np.ndarray:
    """The background: pixels (bool [H, W]) farther than ``margin`` pixels (a square of side 2 margin + 1) from every
    object mask in ``masks`` (bool [H, W] each: the source's objects and the edited image's), so a changed outline's
    own edge is not counted as background."""
    from scipy import ndimage

    union = np.zeros(shape, dtype=bool)
    for m in masks:
        union |= np.asarray(m, dtype=bool)
    if margin > 0:
        union = ndimage.binary_dilation(union, structure=np.ones((2 * margin + 1,) * 2, bool))
    return ~union


def background_fidelity(img, source, outside: np.ndarray) -> tuple:
    """(PSNR in dB, SSIM) of the uint8 HWC image ``img`` against ``source`` over the pixels ``outside`` (bool
    [H, W]): scikit-image's peak_signal_noise_ratio on those pixels (PSNR_CAP when they are identical) and the mean of
    its structural_similarity map over them; (nan, nan) when ``outside`` is empty."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = to_uint8_hwc(img), to_uint8_hwc(source)
    if not outside.any():
        return float("nan"), float("nan")
    x, y = a[outside].astype(np.float64), b[outside].astype(np.float64)
    psnr = PSNR_CAP if np.array_equal(x, y) else min(PSNR_CAP, float(peak_signal_noise_ratio(y, x, data_range=255)))
    _, smap = structural_similarity(a, b, channel_axis=2, data_range=255, full=True)
    return psnr, float(smap.mean(-1)[outside].mean())


def match(found: list, truth: list) -> list:
    """For each ground-truth object (dict or SceneObject with .mask), the detected object with the best mask IoU."""
    res = []
    for t in truth:
        tm = t.mask if hasattr(t, "mask") else t["mask"]
        best, best_iou = None, 0.0
        for f in found:
            inter = np.logical_and(f["mask"], tm).sum()
            if inter == 0:
                continue
            iou = inter / np.logical_or(f["mask"], tm).sum()
            if iou > best_iou:
                best, best_iou = f, iou
        res.append(best)
    return res


def validate(n: int = 500, seed: int = 0) -> dict:
    """Accuracy per attribute (and object count) of the judge on ``n`` rendered scenes (seeds seed..seed+n-1)."""
    hits = {k: 0 for k in ATTRS}
    total = 0
    count_ok = 0
    for i in range(n):
        sc = scenes.sample_scene(seed + i)
        found = judge_image(sc.image)
        count_ok += int(len(found) == len(sc.objects))
        for t, f in zip(sc.objects, match(found, sc.objects)):
            total += 1
            if f is None:
                continue
            for k in ATTRS:
                hits[k] += int(f[k] == getattr(t, k))
    res = {k: hits[k] / total for k in ATTRS}
    res["count"] = count_ok / n
    res["objects"] = total
    res["scenes"] = n
    return res


if __name__ == "__main__":
    import sys

    print(validate(int(sys.argv[1]) if len(sys.argv) > 1 else 500))
