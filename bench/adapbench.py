"""ToyWorld AdapEdit benchmark: AdapEdit (FWT + DPS) against plain P2P refine on the same inverted scenes.

Issue "AdapEdit", its ToyWorld requirement: a size edit and a position-bound edit, measured by the judge
(toyworld/judge.py), against plain P2P refine on the same cases. ``bench/bench_adapedit.py`` runs the cases and
prints the table; ``tests/test_adapbench.py`` runs one of each.

Every case renders a scene (deterministic per seed), inverts it with null-text under its canonical caption
(``editbench.invert_scene`` with ``editbench.Settings``) and runs every method on that one inversion:

  * ``p2p``: plain P2P refine (cross_replace_steps ``st.cross_replace_steps`` = 0.8 for every word, self-attention
    injection ``st.self_replace_steps`` = 0.4). This run is also AdapEdit's first pass: its AttentionStore (maps and
    visual features, recorded at half the latent resolution as the nodes do) is what FWT reads, as in the shipped
    workflow workflows/api/adapedit_soft_edit.json.
  * ``adapedit``: P2P refine with the FWT per-word schedule (Eq. 5-7, lambda_tau 1.0, alpha_m 0.03, default 0.8)
    and DPS (Eq. 8-9, lambda_S 0.9, lambda_S[V] 1.0, alpha_m 0.03, pixel mask on): the paper's defaults, the
    nodes' defaults.
  * ``no_fwt``: the 'w/o FWT' ablation (DPS only, every word 0.8); ``no_dps``: the 'w/o DPS' ablation (FWT only);
    ``no_mask``: FWT + DPS without the alpha_m pixel mask (the paper's 'w/o DPS*'; the nodes' pixel_mask off).
  Everything else (prompts, refine alignment, self-attention injection, seed, inversion) is identical, so with FWT
  and DPS both off the AdapEdit path is bit-identical to ``p2p`` (the test checks this).

  On ToyWorld's 8x8 latents FWT reads 4x4 maps, where an added word such as "big" often has an averaged map
  under alpha_m = 0.03 at every pixel: its embedding is then zero, every similarity A is 0 and every word gets
  tau = lambda_tau * (1 - 1/e) = 0.63 (a uniform, slightly shorter injection). Each case reports this as
  ``fwt_degenerate``; ``no_mask`` shows FWT where it does see the keyword.

  Each case also judges the reconstruction (the source row of the same runs): ``reconstruction.faithful`` (the
  judge reads every source object with all its attributes) and its PSNR, so the edit figures can be read on the
  cases where the inversion itself is faithful.

Case types (decisions documented here):

  * size edit (``size_case``): a one-object scene of a *small* object (``editbench.one_object_scene(seed,
    size="small")``). Source caption: the canonical caption *with* the size word, "a small red circle on the left
    on white"; target "a big red circle on the left on white"; mode refine (so "small" is dropped and "big" is a new
    token, the keyword FWT and DPS work from). This is the issue's own wording; unlike
    ``editbench.refine_case`` (which inverts a caption without the size word and adds "big"), the source caption
    then describes the image fully, the way the model was trained. ``source_size_word=False`` gives the
    editbench variant.
    Measures: success = the judge sees the object (the detection with the best mask IoU with the source object)
    as big; kept = same colour, shape and position; structure = the centre shift (px, judged bounding-box centre
    vs the rendered centre; "centre kept" within 4 px) and the coverage of the source mask by the edited mask (a
    grown object in place covers the small one: 1.0), and the area ratio; background PSNR vs the rendered source
    outside the objects (see ``background_psnr``).
  * position-bound edit (``position_case``): a two-object scene, objects at opposite positions (left/right or
    top/bottom), with different shapes and different colours (so every shape or colour word names exactly one
    object and the judge can tell them apart). The edit changes an attribute of the object bound to one
    position (chosen per seed), in that object's phrase only: its size ("a small red circle on the left and a small
    blue square on the right" -> "... and a big blue square on the right"; that object is rendered small) or its
    colour ("... and a green square on the right"; a colour neither object has). Mode refine.
    Measures: success = the object at that position (best mask IoU with its source mask) has the new value and
    keeps its other attributes (shape, colour / size); other kept = the other object is found with its colour,
    shape and size and a mask IoU >= 0.5 with its source mask; success & other kept is the figure that says the
    edit was bound to the position; structure = the edited object's mask IoU with its source (colour edit) or
    its centre shift and source coverage (size edit), and the other object's mask IoU; background PSNR outside
    both objects. The size and the colour edit of a seed share the scene and its inversion.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import editbench as eb
from ..toyworld import judge, scenes

# name -> (FWT on, DPS on[, alpha_m pixel mask on]); "p2p" is the plain refine (and AdapEdit's first pass)
VARIANTS = {"p2p": (False, False), "adapedit": (True, True), "no_fwt": (False, True), "no_dps": (True, False),
            "no_mask": (True, True, False)}
OTHER_IOU_MIN = 0.5  # the other object of a two-object scene counts as kept from this mask IoU on
CENTRE_KEPT_PX = 4.0  # a size edit keeps the centre within this many pixels


@dataclass(frozen=True)
class AdapSettings:
    """AdapEdit hyper-parameters (the paper's / the nodes' defaults)."""

    lambda_tau: float = 1.0
    alpha_m: float = 0.03
    pixel_mask: bool = True
    lambda_s: float = 0.9
    lambda_sv: float = 1.0


# ------------------------------------------------------------------------------------------------ the methods

def edit_variants(tm: eb.ToyModel, inv, target: str, st: eb.Settings, variants: Optional[dict] = None,
                  ad: AdapSettings = AdapSettings()) -> dict:
    """Runs plain P2P refine and each AdapEdit variant on one inversion.

    variants: {name: (fwt, dps[, pixel_mask])} (default ``VARIANTS``; pixel_mask defaults to ``ad.pixel_mask``
    and applies to both FWT and DPS). ``"p2p"`` is always run first (it records the maps FWT needs) and
    returned. Returns {"images": {name: (reconstruction, edit) uint8 HWC}, "taus": {word: tau} and "schedule"
    (the FWT cross_replace_steps text) with ``ad.pixel_mask``, "taus_nomask" with the other setting}. A variant
    with (False, False) is run again, not copied.
    """
    from ..attention.align import parse_cross_replace_steps
    from ..attention.recipe import DPSSpec, EditSpec, build_controller, fwt_schedule
    from ..comfy_bridge.sampling import edit

    variants = dict(VARIANTS if variants is None else variants)
    source = inv.source_prompt
    cond = [tm.encode(target)]

    def run(cross, dps):
        spec = EditSpec(target_prompts=(target,), mode="refine", cross_replace_steps=cross,
                        self_replace_steps=st.self_replace_steps, self_min_downscale=st.self_min_downscale, dps=dps)
        ctrl = build_controller(tm.clip.tokenizer, source, spec, inv.steps)
        with torch.no_grad():
            imgs = eb.decode(tm, edit(tm.model, inv, cond, ctrl))
        return imgs, ctrl

    p2p, ctrl = run(st.cross_replace_steps, None)
    fwt = {}
    for mask in (ad.pixel_mask, not ad.pixel_mask):  # the schedule from pass 1's store, as the FWT node computes it
        fwt[mask] = fwt_schedule(tm.clip.tokenizer, ctrl.store, [source, target], ctrl.edits[0].keyword_tokens, 1,
                                 ad.lambda_tau, ad.alpha_m, mask, st.cross_replace_steps)
    images = {"p2p": (p2p[0], p2p[1])}
    for name, v in variants.items():
        if name == "p2p":
            continue
        use_fwt, use_dps = v[0], v[1]
        mask = v[2] if len(v) > 2 else ad.pixel_mask
        cross = parse_cross_replace_steps(fwt[mask][1]) if use_fwt else st.cross_replace_steps
        dps = DPSSpec(lambda_s=ad.lambda_s, lambda_sv=ad.lambda_sv, alpha_m=ad.alpha_m, pixel_mask=mask) \
            if use_dps else None
        imgs, _ = run(cross, dps)
        images[name] = (imgs[0], imgs[1])
    return {"images": images, "taus": fwt[ad.pixel_mask][0], "schedule": fwt[ad.pixel_mask][1],
            "taus_nomask": fwt[not ad.pixel_mask][0]}


def fwt_degenerate(taus: dict) -> bool:
    """True when FWT gave every non-keyword word the same tau: the keyword's map was under alpha_m everywhere
    (its embedding is zero, every similarity A is 0 and every tau is lambda_tau * (1 - 1/e))."""
    vals = {round(t, 4) for t in taus.values() if t > 0}
    return len(vals) <= 1


# ------------------------------------------------------------------------------------------------ measures

def _find(found: list, mask: np.ndarray):
    """The detection with the best mask IoU with ``mask`` (None when none overlaps)."""
    return judge.match(found, [{"mask": mask}])[0]


def _size_measures(obj, src: scenes.SceneObject) -> dict:
    if obj is None:
        return {"centre_shift": float("nan"), "coverage": 0.0}
    shift = float(np.hypot(obj["centre"][0] - src.centre[0], obj["centre"][1] - src.centre[1]))
    cov = float(np.logical_and(obj["mask"], src.mask).sum() / max(1, src.mask.sum()))
    return {"centre_shift": shift, "coverage": cov}


def background_psnr(img: np.ndarray, source: np.ndarray, source_masks: list, found: list) -> float:
    """PSNR vs the rendered source outside the objects: outside the dilated union of the source masks and of
    every detection that touches one of them (an edited object split into two colours is one object; a new
    object elsewhere counts as background damage)."""
    near = np.zeros(source.shape[:2], bool)
    for m in source_masks:
        near |= eb.dilate(m)
    union = near.copy()
    for d in found:
        if np.logical_and(d["mask"], near).any():
            union |= d["mask"]
    return eb.psnr(img, source, ~eb.dilate(union))


def _faithful(found: list, sc: scenes.Scene) -> bool:
    """The judge reads every object of ``sc`` (matched by mask) with all its attributes."""
    for t, f in zip(sc.objects, judge.match(found, sc.objects)):
        if f is None or any(f[k] != getattr(t, k) for k in judge.ATTRS):
            return False
    return True


# ------------------------------------------------------------------------------------------------ cases

def size_scene(seed: int) -> scenes.Scene:
    """The one-object scene of a size case: editbench's, with a small object."""
    return eb.one_object_scene(seed, size="small")


def size_case(tm: eb.ToyModel, seed: int, st: eb.Settings, variants: Optional[dict] = None,
              ad: AdapSettings = AdapSettings(), source_size_word: bool = True, keep_images: bool = False) -> dict:
    """'a small red circle on the left on white' -> 'a big red circle on the left on white' (refine) on a scene of
    a small object; every method on one null-text inversion.

    Returns {"source", "target", "taus", "fwt_degenerate", "reconstruction": {faithful, psnr}, method: {success,
    kept, success_kept, centre_shift, centre_kept, coverage, area_ratio, bg_psnr}} (+ "images" when asked)."""
    sc = size_scene(seed)
    o = sc.spec["objects"][0]
    bg = scenes.BACKGROUND_PHRASE[sc.background][0]
    sc.caption = scenes.object_phrase(o, with_size=source_size_word) + " " + bg
    target = scenes.object_phrase(dict(o, size="big")) + " " + bg
    inv = eb.invert_scene(tm, sc, st)
    res = edit_variants(tm, inv, target, st, variants, ad)
    src = sc.objects[0]
    rec = res["images"]["p2p"][0]
    out = {"source": sc.caption, "target": target, "taus": res["taus"], "taus_nomask": res["taus_nomask"],
           "fwt_degenerate": fwt_degenerate(res["taus"]),
           "reconstruction": {"faithful": _faithful(judge.judge_image(rec), sc), "psnr": eb.psnr(rec, sc.image)}}
    for name, (_, img) in res["images"].items():
        found = judge.judge_image(img)
        obj = _find(found, src.mask)
        success = obj is not None and obj["size"] == "big"
        kept = obj is not None and all(obj[k] == o[k] for k in ("colour", "shape", "position"))
        r = {"success": success, "kept": kept, "success_kept": success and kept}
        r.update(_size_measures(obj, src))
        r["centre_kept"] = bool(r["centre_shift"] <= CENTRE_KEPT_PX)
        r["area_ratio"] = float(obj["area"]) / max(1, int(src.mask.sum())) if obj is not None else 0.0
        r["bg_psnr"] = background_psnr(img, sc.image, [src.mask], found)
        out[name] = r
    if keep_images:
        out["images"] = {"source": sc.image, "reconstruction": rec, **{k: v[1] for k, v in res["images"].items()}}
    return out


def two_object_scene(seed: int):
    """A two-object scene for a position-bound edit: (scene, index of the edited object, new colour).

    Opposite positions, different shapes and colours; the edited object is small (a size edit makes it big), the
    new colour of a colour edit is one neither object has. Deterministic per seed; both edits of a seed share it."""
    rng = random.Random(f"adap-pos:{seed}")
    p = rng.choice(list(scenes.OPPOSITE))
    shapes = rng.sample(scenes.SHAPES, 2)
    colours = rng.sample(list(scenes.COLOURS), 2)
    sizes = [rng.choice(scenes.SIZES) for _ in range(2)]
    k = rng.randrange(2)
    sizes[k] = "small"
    bg = rng.choice(list(scenes.BACKGROUNDS))
    new_colour = rng.choice([c for c in scenes.COLOURS if c not in colours])
    objs = [{"shape": shapes[i], "colour": colours[i], "size": sizes[i], "position": pos}
            for i, pos in enumerate((p, scenes.OPPOSITE[p]))]
    return scenes.render_spec({"objects": objs, "background": bg}, seed=seed), k, new_colour


def position_case(tm: eb.ToyModel, seed: int, st: eb.Settings, attributes=("size", "colour"),
                  variants: Optional[dict] = None, ad: AdapSettings = AdapSettings(),
                  keep_images: bool = False) -> dict:
    """Position-bound edits of one two-object scene (one inversion): for each of ``attributes`` (size, colour),
    change it on the object at one position, in that object's phrase only.

    Returns {"source", "position", "reconstruction": {faithful, psnr}, attribute: {"target", "taus",
    "fwt_degenerate", method: {success, other_kept, success_other_kept, other_iou, structure (size: centre_shift,
    coverage; colour: iou), bg_psnr}} (+ "images" when asked)}."""
    for a in attributes:
        if a not in ("size", "colour"):
            raise ValueError(f"a position-bound edit changes 'size' or 'colour', not {a!r}")
    sc, k, new_colour = two_object_scene(seed)
    objs = sc.spec["objects"]
    src, other = sc.objects[k], sc.objects[1 - k]
    osrc = objs[1 - k]
    inv = eb.invert_scene(tm, sc, st)
    out = {"source": sc.caption, "position": objs[k]["position"]}
    for attribute in attributes:
        edited = dict(objs[k], **{attribute: "big" if attribute == "size" else new_colour})
        target = " and ".join(scenes.object_phrase(edited if i == k else o) for i, o in enumerate(objs)) + " " + \
            scenes.BACKGROUND_PHRASE[sc.background][0]
        res = edit_variants(tm, inv, target, st, variants, ad)
        rec = res["images"]["p2p"][0]
        if "reconstruction" not in out:
            out["reconstruction"] = {"faithful": _faithful(judge.judge_image(rec), sc), "psnr": eb.psnr(rec, sc.image)}
        ra = {"target": target, "taus": res["taus"], "taus_nomask": res["taus_nomask"],
              "fwt_degenerate": fwt_degenerate(res["taus"])}
        for name, (_, img) in res["images"].items():
            found = judge.judge_image(img)
            obj, oth = _find(found, src.mask), _find(found, other.mask)
            success = obj is not None and all(obj[a] == edited[a] for a in ("shape", "colour", "size"))
            other_iou = eb.iou(oth["mask"], other.mask) if oth is not None else 0.0
            other_kept = oth is not None and oth is not obj and other_iou >= OTHER_IOU_MIN and \
                all(oth[a] == osrc[a] for a in ("shape", "colour", "size"))
            r = {"success": success, "other_kept": other_kept, "success_other_kept": success and other_kept,
                 "other_iou": other_iou}
            if attribute == "size":
                r.update(_size_measures(obj, src))
            else:
                r["iou"] = eb.iou(obj["mask"], src.mask) if obj is not None else 0.0
            r["bg_psnr"] = background_psnr(img, sc.image, [src.mask, other.mask], found)
            ra[name] = r
        if keep_images:
            ra["images"] = {"source": sc.image, "reconstruction": rec, **{n: v[1] for n, v in res["images"].items()}}
        out[attribute] = ra
    return out
