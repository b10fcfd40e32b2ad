"""Fidelity benchmark (issue "edit only where the words changed"): on rendered ToyWorld scenes, every inversion method
with every way of keeping the background, judged, with the background measured outside the edited object.

One case is a seeded one-object scene and one edit: a colour word swap ("a red circle ..." -> "a blue circle ...") with
the scene's full caption (size and background named) or with a plain caption that names only the object (as users
and the main job write it: "a red circle on the left"), or a refine that adds the size ("a red circle ..." -> "a big
red circle ..." on a scene of a small object).
Per case each inversion method inverts the scene once, and the edit runs through the Edit Sampler's glue
(nodes/edit_nodes.run_edit, what a user's graph runs) with each mask:

* ``none``: plain Prompt-to-Prompt (no local blend);
* ``attention``: local blend from the attention maps of the edited words (P2P's mask);
* ``prediction``: local blend from the prediction-difference mask (DiffEdit; no attention maps);
* ``locked (attention)`` / ``locked (prediction)``: the same edit, then the input photo's own pixels outside the
  Edit Sampler's mask (Lock Background: attention.masks.feathered + lock_background, the node's defaults).

Measured per case and variant: judge success (the new colour; for refine: judged big with colour and shape kept),
structure IoU (the judged object's mask against the source object's), background PSNR and SSIM
(toyworld.judge.background_fidelity: skimage.metrics over the pixels farther than 2 px from the source and the edited
objects: the judge knows both masks), whether every pixel outside the lock's weight is bit-identical to the photo, and seconds: the inversion's,
the edit's (prediction mask included) and their sum, "seconds per edit" for a photo edited once.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..toyworld import judge, scenes
from . import editbench as eb

#: the inversion methods per model: the UNet's four (DDIM, negative-prompt, null-text, Direct); the MM-DiT's
#: rectified-flow solvers (rf_euler is DDIM's first-order counterpart) and Direct (FireFlow's path kept)
UNET_INVERSIONS = ("ddim", "negative_prompt", "null_text", "direct")
MMDIT_INVERSIONS = ("rf_euler", "rf_solver", "fireflow", "direct")
MASKS = ("none", "attention", "prediction")
LOCKED = ("locked (attention)", "locked (prediction)")


@dataclass(frozen=True)
class Lock:
    """Lock Background's settings (the node's defaults)."""

    grow: int = 0
    feather: int = 8


def scene_for(kind: str, seed: int):
    """(scene, source caption, edited caption, what the judge must see) for a case of ``kind``: 'swap' (the scene's
    full caption, background named), 'swap_plain' (the same swap, the caption naming only the object: "a red
    circle on the left", as the main job's) or 'refine'."""
    if kind in ("swap", "swap_plain"):
        sc = eb.one_object_scene(seed)
        o = sc.spec["objects"][0]
        new = random.Random(f"swap:colour:{seed}").choice([c for c in scenes.COLOURS if c != o["colour"]])
        # swap_plain: the main job's kind of caption, the object only (no size, no background)
        src = sc.caption if kind == "swap" else scenes.object_phrase(o, with_size=False)
        return sc, src, src.replace(f" {o['colour']} ", f" {new} ", 1), {"colour": new}
    if kind == "refine":
        sc = eb.one_object_scene(seed, size="small")
        o = sc.spec["objects"][0]
        bg = scenes.BACKGROUND_PHRASE[sc.background][0]
        src = scenes.object_phrase(o, with_size=False) + " " + bg
        tgt = scenes.object_phrase(dict(o, size="big")) + " " + bg
        return sc, src, tgt, {"size": "big", "colour": o["colour"], "shape": o["shape"]}
    raise ValueError(f"unknown case kind {kind!r}")


def edit_spec(kind: str, source: str, target: str, st: eb.Settings, mask: str, blend=None):
    """The EditSpec of a case: word swap or refine with the benchmark's settings, local blend from ``mask``
    ('none', 'attention', 'prediction'); ``blend``: more LocalBlendSpec fields (e.g. prediction_threshold)."""
    from ..attention.recipe import EditSpec, LocalBlendSpec

    lb = None
    if mask != "none":
        sw, tw = blend_words(kind, source, target)
        lb = LocalBlendSpec(source_words=sw, target_words=tw, threshold=st.blend_threshold,
                            downscale=st.blend_downscale, maps=st.blend_maps, mask_from=mask, **(blend or {}))
    return EditSpec(target_prompts=(target,), mode="replace" if kind == "swap" else "refine",
                    cross_replace_steps=st.cross_replace_steps, self_replace_steps=st.self_replace_steps,
                    self_min_downscale=st.self_min_downscale, local_blend=lb, mmdit_blocks=st.mmdit_blocks)


def blend_words(kind: str, source: str, target: str) -> tuple:
    """Local blend's words: the object's colour and shape words in both prompts (swap: the swapped colour in the
    target); for refine also the added size word."""
    s, t = source.split(), target.split()
    shape = next(w for w in s if w in scenes.SHAPES)
    colour = next(w for w in s if w in scenes.COLOURS)
    new_colour = next(w for w in t if w in scenes.COLOURS)
    tw = (new_colour, shape) + (("big",) if kind == "refine" else ())  # 'swap' and 'swap_plain': the colour
    return (colour, shape), tw


def judged(img: np.ndarray, sc, want: dict) -> dict:
    truth = sc.objects[0].mask
    obj = eb.main_object(judge.judge_image(img, background=sc.background), truth)
    ok = obj is not None and all(obj[k] == v for k, v in want.items())
    edited = obj["mask"] if obj is not None else np.zeros_like(truth)
    psnr, ssim = judge.background_fidelity(img, sc.image, judge.outside_objects([truth, edited], truth.shape))
    return {"success": bool(ok), "iou": eb.iou(edited, truth) if obj is not None else 0.0, "bg_psnr": psnr,
            "bg_ssim": ssim}


def invert_timed(tm, sc, caption: str, st: eb.Settings, method: str):
    from ..comfy_bridge.sampling import invert, replay_schedule

    lat = eb.encode_image(tm, sc.image)
    t0 = time.perf_counter()
    sig = replay_schedule(tm.model, st.scheduler, st.steps)
    inv = invert(tm.model, lat, tm.encode(caption), tm.encode(""), sig, method=method, guidance_scale=st.cfg,
                 num_inner_steps=st.num_inner_steps, source_prompt=caption, null_text_mode=st.null_text_mode)
    return inv, time.perf_counter() - t0


def fidelity_case(tm, seed: int, kind: str, st: eb.Settings, inversions=UNET_INVERSIONS, masks=MASKS,
                  lock: Lock = Lock(), blend=None) -> dict:
    """One case, every inversion x mask (and the locked variants of the masks run). Returns {"case": ..., (method,
    variant): {success, iou, bg_psnr, bg_ssim, inversion_s, edit_s, seconds, [identical]}}."""
    from ..attention.masks import feathered, lock_background
    from ..nodes.edit_nodes import run_edit

    sc, source, target, want = scene_for(kind, seed)
    photo = eb.to_image(sc.image)
    out = {"case": {"seed": seed, "kind": kind, "source": source, "target": target}}
    for method in inversions:
        inv, t_inv = invert_timed(tm, sc, source, st, method)
        for mask in masks:
            t0 = time.perf_counter()
            lat, _, region = run_edit(tm.model, tm.clip, inv, edit_spec(kind, source, target, st, mask, blend))
            region = region[1:]  # the edit's row (row 0 is the reconstruction's)
            with torch.no_grad():
                pix = tm.vae.decode(lat[1:]).clamp(0, 1)
            t_edit = time.perf_counter() - t0
            img = eb.to_uint8(pix)
            out[(method, mask)] = dict(judged(img, sc, want), inversion_s=t_inv, edit_s=t_edit, seconds=t_inv + t_edit,
                                       cover=float(region.mean()))
            if mask == "none":
                continue
            t1 = time.perf_counter()
            weight = feathered(region, lock.grow, lock.feather)
            locked = eb.to_uint8(lock_background(pix[..., :3].cpu(), photo, weight))
            t_lock = time.perf_counter() - t1
            zero = weight[0].numpy() == 0
            out[(method, f"locked ({mask})")] = dict(
                judged(locked, sc, want), inversion_s=t_inv, edit_s=t_edit + t_lock, seconds=t_inv + t_edit + t_lock,
                cover=float(region.mean()), identical=bool(np.array_equal(locked[zero], sc.image[zero])))
    return out


def mask_iou_case(tm, seed: int, st: eb.Settings, method: str = "direct", mask: str = "prediction") -> float:
    """IoU of the Edit Sampler's mask (image size) with the judge's mask of the source object, on a colour swap."""
    from ..nodes.edit_nodes import run_edit

    sc, source, target, _ = scene_for("swap", seed)
    inv, _ = invert_timed(tm, sc, source, st, method)
    _, _, region = run_edit(tm.model, tm.clip, inv, edit_spec("swap", source, target, st, mask))
    return eb.iou(region[1].numpy() >= 0.5, sc.objects[0].mask)


def settings_for(model: str, **over) -> eb.Settings:
    """The benchmark's settings per model ('unet' or 'mmdit'), as the ToyWorld benchmark's."""
    st = eb.Settings(**eb.MMDIT_SETTINGS) if model == "mmdit" else eb.Settings()
    return replace(st, **over)
