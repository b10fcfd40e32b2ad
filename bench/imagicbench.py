"""ToyWorld Imagic benchmark: an attribute edit of a rendered photo by Imagic, against plain img2img (SDEdit).

Issue "Imagic", ToyWorld requirement: "an attribute edit done by Imagic, with judged success and structure figures
against plain img2img (SDEdit) at matched strength". ``bench/bench_imagic.py`` runs the cases and prints the table;
``tests/test_imagicbench.py`` runs one with tiny step counts.

One case (:func:`imagic_case`, deterministic per seed): the rendered one-object scene of
:func:`editbench.one_object_scene` is the photo, its canonical caption with ONE attribute word swapped is the
target text ("a small blue triangle at the bottom on black" -> "a small red triangle at the bottom on black";
colour by default, shape or size on request).

* Imagic (training/imagic.py, the shipped workflow's recipe): e_opt optimised from e_tgt on the photo
  (:func:`optimize_embedding`), the UNet fine-tuned on (photo, e_opt) (:func:`finetune`, LoRA by default), then
  sampled from one fixed noise with the interpolated conditioning e_bar = eta e_tgt + (1 - eta) e_opt for every
  eta of the sweep (core sampler "ddim", scheduler "ddim_uniform", cfg 7.5, empty negative prompt), as one batch
  with the same noise per row. eta 0 is the reconstruction (reported as a sanity figure).
* SDEdit (plain img2img, Meng et al. 2022): the photo's VAE latent noised to strength s and denoised with the
  target prompt by the same sampler, i.e. core KSampler with ``denoise = s`` (ComfyUI's own sampling), on the
  ORIGINAL model, at every strength of the sweep, with the same noise.

"Matched strength". Imagic always samples the whole trajectory from pure noise (its structure comes from the
fine-tuned model, not from the starting latent), so SDEdit at the same nominal trajectory fraction (s = 1) is plain
text-to-image and no baseline at all. The strength knob of Imagic is eta, that of SDEdit is s (the fraction of the
ddim_uniform trajectory re-sampled: KSampler denoise). The bench therefore reports both curves in full and matches
them on the structure they keep: for each eta, the SDEdit strength whose mean structure IoU (judged mask of the
edited object vs the expected object) is nearest to Imagic's, and compares success there ("IoU-matched",
:func:`iou_matched`; the table says when Imagic's IoU lies outside SDEdit's whole range). It also lists the two
knobs at equal nominal values (eta = s) for the reader who wants that reading.

Measured per image with the judge (toyworld/judge.py): ``success`` (the main object, the judged object overlapping
the source / expected object best, else the largest, has the new attribute), ``iou`` (its mask vs the expected
object's mask: the source scene rendered again with the new attribute and the same jitter, which for a colour edit
IS the source object's mask; 0 when no object is found), ``kept`` (its other attributes among shape / colour /
size / position equal the source's), ``bg_psnr`` (PSNR vs the photo outside the dilated source, expected and
edited objects), ``psnr`` (whole image vs the photo); :func:`faithful` = success and kept and IoU >= 0.5. Per
case also the stage times (wall and CPU s), the e_opt-e_tgt distance (:meth:`Imagic.distance`, plus
:func:`toward_source`), the stages' probe losses, and the same figures for the unedited photo through the VAE.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..toyworld import judge, scenes
from .editbench import ToyModel, decode, dilate, encode_image, iou, main_object, one_object_scene, psnr, to_image

ATTRIBUTES = ("colour", "shape", "size")


@dataclass
class ImagicSettings:
    """Settings of one case. Sampling: the shipped workflow's sampler (ddim / ddim_uniform, cfg 7.5, empty
    negative) at ``steps`` steps, for Imagic and SDEdit alike. Imagic training: ``emb_steps`` Adam steps at
    ``emb_lr`` for e_opt, ``ft_steps`` at ``ft_lr`` (None: training/imagic.py's default for ``mode``) for the
    fine-tuning.

    The training defaults were tuned on ToyWorld colour edits (seeds 1000-1011, a few variants each, on one CPU
    thread): the reference's e_opt rate 1e-3 moves e_opt only ~5% (relative L2) in 100 steps, the fine-tuned model
    then binds the photo to the target text itself and every eta gives the same picture; 3e-2 moves it ~0.5 and
    about 40% of the way towards the (unseen) source caption's encoding. LoRA at 1e-3 for 200 steps reconstructs the
    photo at eta 0 (~30 dB) where the pack's default 1e-4 does not in a few hundred steps; 3e-3 overshoots; full
    fine-tuning at 3e-5 kept the structure worse. About 18 CPU-s per case for the training."""

    steps: int = 20
    cfg: float = 7.5
    sampler: str = "ddim"
    scheduler: str = "ddim_uniform"
    emb_steps: int = 100
    emb_lr: float = 3e-2
    ft_steps: int = 200
    ft_lr: Optional[float] = 1e-3
    mode: str = "lora"
    rank: int = 8
    etas: Sequence[float] = (0.6, 0.7, 0.8, 1.0, 1.2)
    strengths: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
    train_seed: int = 0


def edit_target(seed: int, attribute: str = "colour"):
    """(scene, source attributes, new value, target caption) of case ``seed``: the canonical caption with the
    attribute word swapped for a different value drawn per seed."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
    sc = one_object_scene(seed)
    src = sc.spec["objects"][0]
    rng = random.Random(f"imagic:{attribute}:{seed}")
    pool = {"colour": list(scenes.COLOURS), "shape": list(scenes.SHAPES), "size": list(scenes.SIZES)}[attribute]
    new = rng.choice([v for v in pool if v != src[attribute]])
    target = scenes.caption_for(scenes.spec_from_attrs(**{**src, attribute: new, "background": sc.background}))
    return sc, dict(src), new, target


def expected_mask(sc, attribute: str, new: str) -> np.ndarray:
    """The mask of the ideally edited object: the source scene rendered again with the new attribute and the same
    jitter seed (same centre and extent). For a colour edit it is the source object's mask; for shape and size
    edits it is the structure the edit should keep (the source mask itself would cap the IoU of a correct size
    edit at about the area ratio)."""
    spec = scenes.spec_from_attrs(**{**sc.spec["objects"][0], attribute: new, "background": sc.background})
    return scenes.render_spec(spec, seed=sc.seed).objects[0].mask


def judge_edit(img: np.ndarray, sc, attribute: str, new: str, target_mask: Optional[np.ndarray] = None) -> dict:
    """Judged figures of one edited image against the source scene (see the module docstring); ``target_mask``:
    :func:`expected_mask` (computed when not given)."""
    src_mask = sc.objects[0].mask
    if target_mask is None:
        target_mask = expected_mask(sc, attribute, new)
    src = sc.spec["objects"][0]
    obj = main_object(judge.judge_image(img), target_mask | src_mask)
    edited_mask = obj["mask"] if obj is not None else np.zeros_like(src_mask)
    outside = ~dilate(src_mask | target_mask | edited_mask)
    return {"success": bool(obj is not None and obj[attribute] == new),
            "iou": iou(edited_mask, target_mask) if obj is not None else 0.0,
            "kept": bool(obj is not None and all(obj[k] == src[k] for k in judge.ATTRS if k != attribute)),
            "bg_psnr": psnr(img, sc.image, outside), "psnr": psnr(img, sc.image)}


def toward_source(e_tgt: torch.Tensor, e_opt: torch.Tensor, e_src: torch.Tensor) -> float:
    """How far e_opt moved from e_tgt towards the encoding of the SOURCE caption (which Imagic never sees): the
    projection of e_opt - e_tgt on e_src - e_tgt, as a fraction of that segment (0: not at all, 1: all the way)."""
    d = (e_src.float() - e_tgt.float()).flatten()
    return float(torch.dot((e_opt.float() - e_tgt.float()).flatten(), d) / d.dot(d).clamp_min(1e-12))


def _sample(model, noise, positive, negative, st: ImagicSettings, latent=None, denoise=1.0, seed=0):
    from ..comfy_bridge.sampling import core_sample

    with torch.no_grad():
        return core_sample(model, positive, negative, torch.zeros_like(noise) if latent is None else latent,
                           st.steps, st.cfg, st.sampler, st.scheduler, seed=seed, noise=noise, denoise=denoise)


def run_imagic(tm: ToyModel, photo: np.ndarray, target: str, st: ImagicSettings):
    """Imagic steps 1 and 2 on ``photo`` (uint8 HWC) for ``target``: the fine-tuned :class:`Imagic`, its metadata
    completed with each stage's CPU time (``embedding.cpu_seconds``, ``finetune.cpu_seconds``)."""
    import dataclasses

    from ..nodes import imagic_nodes as glue

    with torch.inference_mode():
        c0 = time.process_time()
        r1 = glue.optimize_embedding(tm.model, tm.vae, to_image(photo), tm.encode(target), steps=st.emb_steps,
                                     learning_rate=st.emb_lr, seed=st.train_seed)
        c1 = time.process_time()
        r2 = glue.finetune(tm.model, r1, mode=st.mode, rank=st.rank, steps=st.ft_steps, learning_rate=st.ft_lr,
                           seed=st.train_seed)
        c2 = time.process_time()
    return dataclasses.replace(r2, metadata={**r2.metadata, "embedding.cpu_seconds": c1 - c0,
                                             "finetune.cpu_seconds": c2 - c1})


def imagic_case(tm: ToyModel, seed: int, st: ImagicSettings, attribute: str = "colour",
                keep_images: bool = False) -> dict:
    """One attribute edit by Imagic (eta sweep) and by SDEdit (strength sweep), judged. Returns
    ``{"target", "source" (captions), "old", "new" (attribute values), "attribute", "seed", "imagic": {eta:
    figures}, "sdedit": {s: figures}, "vae": figures of the unedited photo through the VAE, "recon_psnr" (eta 0 vs
    the photo), "distance" (e_opt vs e_tgt, and :func:`toward_source`), "times" / "cpu_times" {embedding, finetune,
    sample_imagic, sample_sdedit} (wall / CPU seconds), "losses" {embedding_before/after,
    finetune_before/after}}`` and, with ``keep_images``, ``"images": {"photo", "recon", "imagic": {eta: img},
    "sdedit": {s: img}}``."""
    from ..nodes import imagic_nodes as glue
    from ..training import imagic as im

    sc, src, new, target = edit_target(seed, attribute)
    res = run_imagic(tm, sc.image, target, st)
    meta = res.metadata
    e_src = tm.encode(sc.caption)[0][0].float()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, 4, 8, 8), generator=gen)
    neg = tm.encode("")

    t0, c0 = time.time(), time.process_time()
    etas = [0.0] + [float(e) for e in st.etas]
    model_ft = glue.apply_imagic(tm.model, res)
    cond, _ = im.sweep(res, etas)
    lat = _sample(model_ft, noise.repeat(len(etas), 1, 1, 1), cond, neg, st, seed=seed)
    imgs = decode(tm, lat)
    t_imagic, c_imagic = time.time() - t0, time.process_time() - c0

    t0, c0 = time.time(), time.process_time()
    photo_lat = encode_image(tm, sc.image)
    pos = tm.encode(target)
    sd_imgs = {}
    for s in st.strengths:
        sd_imgs[float(s)] = decode(tm, _sample(tm.model, noise, pos, neg, st, latent=photo_lat, denoise=float(s),
                                               seed=seed))[0]
    t_sdedit, c_sdedit = time.time() - t0, time.process_time() - c0

    tmask = expected_mask(sc, attribute, new)
    vae = judge_edit(decode(tm, photo_lat)[0], sc, attribute, new, tmask)
    out = {"target": target, "source": sc.caption, "old": src[attribute], "new": new, "attribute": attribute,
           "seed": seed, "vae": vae,
           "imagic": {e: judge_edit(img, sc, attribute, new, tmask) for e, img in zip(etas[1:], imgs[1:])},
           "sdedit": {s: judge_edit(img, sc, attribute, new, tmask) for s, img in sd_imgs.items()},
           "recon_psnr": psnr(imgs[0], sc.image),
           "distance": {**res.distance(), "toward_source": toward_source(res.e_tgt, res.e_opt, e_src)},
           "times": {"embedding": float(meta["embedding.seconds"]), "finetune": float(meta["finetune.seconds"]),
                     "sample_imagic": t_imagic, "sample_sdedit": t_sdedit},
           "cpu_times": {"embedding": float(meta["embedding.cpu_seconds"]),
                         "finetune": float(meta["finetune.cpu_seconds"]), "sample_imagic": c_imagic,
                         "sample_sdedit": c_sdedit},
           "losses": {"embedding_before": meta["embedding.probe_loss_before"],
                      "embedding_after": meta["embedding.probe_loss_after"],
                      "finetune_before": meta["finetune.probe_loss_before"],
                      "finetune_after": meta["finetune.probe_loss_after"]}}
    if keep_images:
        out["images"] = {"photo": sc.image, "recon": imgs[0], "imagic": dict(zip(etas[1:], imgs[1:])),
                         "sdedit": sd_imgs}
    return out


# ------------------------------------------------------------------------------------------------ summaries

def mean(xs) -> float:
    """Mean of the finite values (bools count as 0/1); NaN when there are none."""
    xs = [float(x) for x in xs if x is not None and np.isfinite(float(x))]
    return float(np.mean(xs)) if xs else float("nan")


def faithful(f: dict) -> bool:
    """An edit that succeeds, keeps the other attributes and the structure (IoU >= 0.5 with the source object)."""
    return bool(f["success"] and f["kept"] and f["iou"] >= 0.5)


def summarise(results: list, kind: str, knob: float) -> dict:
    """Mean figures over cases of one method ("imagic" or "sdedit") at one eta / strength."""
    fs = [r[kind][knob] for r in results]
    return {"success": mean([f["success"] for f in fs]), "iou": mean([f["iou"] for f in fs]),
            "kept": mean([f["kept"] for f in fs]), "faithful": mean([faithful(f) for f in fs]),
            "bg_psnr": mean([f["bg_psnr"] for f in fs]), "psnr": mean([f["psnr"] for f in fs])}


def iou_matched(imagic: dict, sdedit: dict) -> dict:
    """The matched-strength pairing: eta -> the SDEdit strength whose mean structure IoU is nearest to Imagic's
    mean IoU at that eta (ties: the lower strength). Inputs: {knob: {"iou": ...}} summaries."""
    return {e: min(sdedit, key=lambda s: (abs(sdedit[s]["iou"] - v["iou"]), s)) for e, v in imagic.items()}
