"""ToyWorld concept benchmark: learn a shape the model has never seen from 4 renders (issue "concept training").

The concept is a CROSS (a plus sign, arms a third of its extent wide), drawn like ToyWorld's own shapes
(``scenes._draw_shape`` conventions: PIL at 4x, box-downsampled, the same colours, sizes, positions, backgrounds and
jitter). ToyWorld's training data has only circles, squares and triangles, so neither its text encoder nor its
UNet has seen a cross (and all three known shapes are convex). Four seeded renders of the concept (a big red cross
at four positions on four backgrounds) train, through the same public functions the nodes call:

  * textual inversion (``nodes.training_nodes.textual_inversion``, the node's glue): a new word ``embedding:tw_cross``
    of 2 vectors that start from the initializer words "red square" (so before training the word IS "red square");
    the model is frozen;
  * Custom Diffusion (``nodes.training_nodes.custom_diffusion``): modifier token "<v1>" (started from
    the reference's rare token "ktn"), class noun "red square", so training prompts read "a photo of a <v1> red
    square"; prior preservation on 8 rendered red squares. Mode "crossattn" (all of attn2; the node's option)
    and no rescale augmentation: in the tuning runs the K/V-only reference mode drew crosses less often and with
    drifting colours, and the rescale augmentation shrinks a 64 px picture to 3-8 latent pixels.

Then, for each seed, three images are generated from the same initial noise with the training templates' wording
(the text encoder conditions on it; ToyWorld captions such as "a big red <v1> square" make the model ignore the
new word): (a) the base model, "a photo of a red square" (the initializer words alone), (b) the base model,
"a photo of a embedding:tw_cross", (c) the Custom Diffusion model, "a photo of a <v1> red square".

Closeness to the concept (:func:`closeness`): the silhouette of the generated object (the connected component of
the judge's saturated-pixel mask holding the judge's largest object; when the judge finds nothing, the largest
component) is compared with shape templates over a small grid of centre/extent alignments around its bounding box
(:func:`shape_fit`, best IoU). ``iou`` is the cross template's (a perfect square scores about 0.58, a perfect
circle about 0.7, the references after the VAE round trip about 0.85); ``margin``, the closeness score, is the
cross's IoU minus the best of circle / square / triangle (> 0: the cross explains the object better than any shape
ToyWorld knows; "recognised" also needs the right colour). Also reported: whether the colour is right and how often
the judge (which knows only ToyWorld's three shapes) calls the object the initializer shape. A win is a seed whose
learned-word image has a higher margin (and, reported too, a higher IoU) than the initializer image of that seed.

Everything is deterministic per seed (renders, training seed, initial noise). ``bench/bench_concepts.py`` runs it
and prints the table; ``tests/test_conceptbench.py`` runs a few steps.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import editbench as eb
from ..toyworld import judge, scenes

CONCEPT_SHAPE = "cross"
ARM = 1.0 / 3.0  # arm width of the cross as a fraction of its extent
ALL_SHAPES = list(scenes.SHAPES) + [CONCEPT_SHAPE]


@dataclass
class ConceptSettings:
    """What is learned, how, and how it is sampled. Defaults: tuned on the shipped weights with 8 seeds per try:
    TI lr 2e-2 x 400 steps (lr 5e-3 x 800 steps, or 4 vectors, did no better); Custom Diffusion crossattn lr 5e-4
    x 800 steps (K/V only at lr 1e-3: fewer crosses and colours drifting to blue; at 2e-3 the class prompt drifted
    too; 400 steps: mostly blobs); cfg 3 (cfg 6 distorted the Custom Diffusion crosses more)."""

    colour: str = "red"
    size: str = "big"
    shape: str = "square"            # the known shape the concept is compared with (a cross fits in its box)
    n_refs: int = 4
    ref_seed: int = 0
    ti_name: str = "tw_cross"        # the textual-inversion word (used as embedding:tw_cross)
    modifier: str = "<v1>"           # the Custom Diffusion modifier token
    # prompts: "{}" is the initializer words, the TI word or "<v1> <initializer words>" (the first TI template)
    template: str = "a photo of a {}"
    # textual inversion
    ti_steps: int = 400
    ti_lr: float = 2e-2
    ti_batch: int = 2
    ti_vectors: int = 2
    # Custom Diffusion
    cd_token_init: str = "ktn"       # the modifier token starts from this word's embedding (the reference's)
    cd_steps: int = 800
    cd_lr: float = 5e-4
    cd_batch: int = 2
    cd_class_images: int = 8
    cd_prior_weight: float = 1.0
    cd_augment: bool = False
    cd_mode: str = "crossattn"
    train_seed: int = 0
    # generation
    steps: int = 20
    cfg: float = 3.0

    @property
    def initializer(self) -> str:
        """The initializer words of textual inversion and the class noun of Custom Diffusion: "red square"."""
        return f"{self.colour} {self.shape}"

    def prompt(self, word: str) -> str:
        return self.template.format(word)

    def prompts(self) -> dict:
        return {"initializer": self.prompt(self.initializer), "ti": self.prompt(f"embedding:{self.ti_name}"),
                "cd": self.prompt(f"{self.modifier} {self.initializer}")}


# ------------------------------------------------------------------------------------------------ rendering

def draw_cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, ext: float, fill) -> None:
    """A plus sign of extent ``ext`` (px at 64x64) centred at (cx, cy), on a 4x supersampled canvas."""
    ss = scenes.SS
    h, w = ext / 2.0, ext * ARM / 2.0
    draw.rectangle([(cx - h) * ss, (cy - w) * ss, (cx + h) * ss, (cy + w) * ss], fill=fill)
    draw.rectangle([(cx - w) * ss, (cy - h) * ss, (cx + w) * ss, (cy + h) * ss], fill=fill)


def _draw(draw, shape: str, cx: float, cy: float, ext: float, fill) -> None:
    if shape == CONCEPT_SHAPE:
        draw_cross(draw, cx, cy, ext, fill)
    else:
        scenes._draw_shape(draw, shape, cx, cy, ext, fill)


def shape_mask(shape: str, cx: float, cy: float, ext: float) -> np.ndarray:
    """The 64x64 bool mask of ``shape`` (a ToyWorld shape or "cross") as the renderer draws it."""
    big = scenes.SIZE * scenes.SS
    m = Image.new("L", (big, big), 0)
    _draw(ImageDraw.Draw(m), shape, cx, cy, ext, 255)
    return np.asarray(m.resize((scenes.SIZE, scenes.SIZE), Image.BOX)) >= 128


def render_concept(seed: int, colour: str = "red", size: str = "big", position: str = "centre",
                   background: str = "white", jitter: bool = True, shape: str = CONCEPT_SHAPE) -> scenes.Scene:
    """A one-object ToyWorld scene of ``shape`` (default the cross), with the renderer's jitter conventions (centre
    +-3 px, extent +-1 px, stripe phase), deterministic per seed. The caption names the cross."""
    rng = random.Random(f"render:{seed}")
    img = scenes._background(background, rng)
    bx, by = scenes.POSITIONS[position]
    dx = rng.uniform(-scenes.JITTER, scenes.JITTER) if jitter else 0.0
    dy = rng.uniform(-scenes.JITTER, scenes.JITTER) if jitter else 0.0
    de = rng.uniform(-scenes.EXTENT_JITTER, scenes.EXTENT_JITTER) if jitter else 0.0
    ext = scenes.EXTENT[size] + de
    cx, cy = bx + dx, by + dy
    _draw(ImageDraw.Draw(img), shape, cx, cy, ext, scenes.COLOURS[colour])
    image = np.asarray(img.resize((scenes.SIZE, scenes.SIZE), Image.BOX), dtype=np.uint8).copy()
    obj = scenes.SceneObject(shape, colour, size, position, (cx, cy), ext, shape_mask(shape, cx, cy, ext))
    spec = scenes.spec_from_attrs(shape, colour, size, position, background)
    return scenes.Scene(image=image, caption=scenes.caption_for(spec), spec=spec, objects=[obj],
                        background=background, seed=seed)


def reference_scenes(cs: ConceptSettings, shape: str = CONCEPT_SHAPE) -> list:
    """``cs.n_refs`` renders of the concept: distinct positions and backgrounds (seeded by ``cs.ref_seed``)."""
    rng = random.Random(f"concept-refs:{cs.ref_seed}")
    positions = list(scenes.POSITIONS)
    rng.shuffle(positions)
    backgrounds = list(scenes.BACKGROUNDS)
    rng.shuffle(backgrounds)
    return [render_concept(cs.ref_seed * 1000 + i, cs.colour, cs.size, positions[i % len(positions)],
                           backgrounds[i % len(backgrounds)], shape=shape) for i in range(cs.n_refs)]


def class_scenes(cs: ConceptSettings) -> list:
    """Prior-preservation pictures for Custom Diffusion: rendered ToyWorld objects of the class (the initializer
    shape) in the concept's colour and size, at random positions and backgrounds."""
    out = []
    for i in range(cs.cd_class_images):
        rng = random.Random(f"concept-class:{cs.ref_seed}:{i}")
        spec = scenes.spec_from_attrs(cs.shape, cs.colour, cs.size, rng.choice(list(scenes.POSITIONS)),
                                      rng.choice(list(scenes.BACKGROUNDS)))
        out.append(scenes.render_spec(spec, seed=50_000 + cs.ref_seed * 1000 + i))
    return out


def images_tensor(imgs: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> a ComfyUI IMAGE batch [B, 64, 64, 3]."""
    return torch.cat([eb.to_image(a) for a in imgs])


# ------------------------------------------------------------------------------------------------ closeness

def object_mask(img: np.ndarray):
    """(silhouette, colour name or None, the judge's object or None) of the main object of a generated image.

    The judge's largest object gives the colour; the silhouette is the connected component of the saturated-pixel
    mask (the judge's object pixels of any palette colour) that holds it, so a cross with a yellow tip is judged
    by its whole outline. When the judge finds nothing: the largest saturated component, colour None.
    (None, None, None) when the image has no saturated pixel."""
    found = judge.judge_image(img)
    a = img.astype(np.float32)
    sat = (a.max(-1) - a.min(-1)) > judge.SAT_THRESHOLD
    comps = judge._components(sat) if sat.any() else []
    if found:
        obj = found[0]
        best = max(comps, key=lambda c: int((c & obj["mask"]).sum()), default=None)
        return (best if best is not None else obj["mask"]), obj["colour"], obj
    if not comps:
        return None, None, None
    return max(comps, key=lambda c: int(c.sum())), None, None


_OFFSETS = (-1.0, 0.0, 1.0)
_SCALES = (-3.0, -1.5, 0.0, 1.5)


def shape_fit(mask: np.ndarray, shape: str) -> float:
    """Best IoU of ``mask`` with the template of ``shape`` over alignments around the mask's bounding box: centre
    offsets -1, 0, +1 px on each axis and extents max(w, h) -3 .. +1.5 px."""
    if mask is None or not mask.any():
        return 0.0
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    cx, cy, ext = (x0 + x1) / 2.0, (y0 + y1) / 2.0, float(max(x1 - x0, y1 - y0))
    best = 0.0
    for de in _SCALES:
        if ext + de < 3:
            continue
        for dx in _OFFSETS:
            for dy in _OFFSETS:
                best = max(best, eb.iou(mask, shape_mask(shape, cx + dx, cy + dy, ext + de)))
    return best


def closeness(img: np.ndarray, colour: str = "red", initializer: str = "square") -> dict:
    """How close a generated image is to the concept (a ``colour`` cross).

    fits: per shape (circle, square, triangle, cross) the best aligned IoU of the object's silhouette with its
    template (:func:`shape_fit`); iou: the cross's; margin (the closeness score): the cross's IoU minus the best
    IoU of the three ToyWorld shapes, in [-1, 1] (a perfect cross about +0.25, a perfect circle about -0.27, a
    perfect square about -0.4; -1 when there is no object); recognised: the margin is positive and the colour
    right; colour_ok: the judge's colour of the object is ``colour``; judged_initializer: the judge (which knows
    only ToyWorld's three shapes) calls the object ``initializer``."""
    mask, col, obj = object_mask(img)
    fits = {s: shape_fit(mask, s) for s in ALL_SHAPES}
    margin = fits[CONCEPT_SHAPE] - max(fits[s] for s in scenes.SHAPES) if mask is not None else -1.0
    nearest = max(fits, key=fits.get) if mask is not None else None
    return {"iou": fits[CONCEPT_SHAPE], "margin": margin, "colour_ok": col == colour, "fits": fits,
            "nearest": nearest, "recognised": margin > 0 and col == colour,
            "judged_initializer": obj is not None and obj["shape"] == initializer,
            "judged_shape": None if obj is None else obj["shape"], "found": mask is not None}


# ------------------------------------------------------------------------------------------------ training

def train_ti(tm: eb.ToyModel, refs: Sequence[np.ndarray], cs: ConceptSettings, steps: Optional[int] = None):
    """Textual inversion on the references (the node's function): (TIResult, CLIP clone that knows the word)."""
    from ..comfy_bridge.text import clip_with_embeddings
    from ..nodes.training_nodes import textual_inversion

    res = textual_inversion(tm.model, tm.clip, tm.vae, images_tensor(refs), cs.ti_name, cs.initializer,
                                  num_vectors=cs.ti_vectors, steps=cs.ti_steps if steps is None else steps,
                                  learning_rate=cs.ti_lr, batch_size=cs.ti_batch, seed=cs.train_seed,
                                  templates="object", resolution=scenes.SIZE)
    return res, clip_with_embeddings(tm.clip, {cs.ti_name: res.vectors})


def train_cd(tm: eb.ToyModel, refs: Sequence[np.ndarray], cs: ConceptSettings, steps: Optional[int] = None):
    """Custom Diffusion on the references with rendered class images (the node's function):
    (CDResult, MODEL clone with the deltas, CLIP clone that knows the modifier token)."""
    from ..nodes.training_nodes import apply_concept, custom_diffusion

    cls = [s.image for s in class_scenes(cs)]
    res = custom_diffusion(tm.model, tm.clip, tm.vae, images_tensor(refs), modifier_token=cs.modifier,
                                 class_noun=cs.initializer, initializer=cs.cd_token_init,
                                 class_images=images_tensor(cls) if cls else None,
                                 prior_loss_weight=cs.cd_prior_weight, mode=cs.cd_mode,
                                 steps=cs.cd_steps if steps is None else steps, learning_rate=cs.cd_lr,
                                 batch_size=cs.cd_batch, seed=cs.train_seed, resolution=scenes.SIZE,
                                 augment=cs.cd_augment)
    m, c = apply_concept(tm.model, tm.clip, res.deltas, res.tokens)
    return res, m, c


# ------------------------------------------------------------------------------------------------ generation

def generate(tm: eb.ToyModel, model, clip, prompt: str, seed: int, cs: ConceptSettings) -> np.ndarray:
    """One 64x64 image of ``prompt`` from the seed's initial noise (euler, ``cs.steps``, cfg ``cs.cfg``), with
    the given MODEL/CLIP (the base model or a concept clone); decoded with ``tm``'s VAE."""
    from ..comfy_bridge.sampling import core_sample
    from ..comfy_bridge.text import encode

    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((1, 4, 8, 8), generator=gen)
    with torch.no_grad():
        lat = core_sample(model, encode(clip, prompt), encode(clip, ""), torch.zeros_like(noise), cs.steps, cs.cfg,
                          "euler", "normal", seed=int(seed), noise=noise)
    return eb.decode(tm, lat)[0]


VARIANTS = ("initializer", "ti", "cd")
#: also generated: the Custom Diffusion model with the initializer words (does "red square" still draw squares,
#: i.e. did prior preservation keep the class?)
EXTRA = ("cd_class",)


def all_prompts(cs: ConceptSettings) -> dict:
    """The prompt of every variant and of EXTRA."""
    p = cs.prompts()
    return p | {"cd_class": p["initializer"]}


def concept_case(tm: eb.ToyModel, seed: int, cs: ConceptSettings, trained: dict) -> dict:
    """One seed: the images of every variant (and of EXTRA) from the same initial noise and their closeness.
    ``trained`` is what :func:`train_concepts` returns."""
    p = all_prompts(cs)
    out = {"seed": seed}
    for v in VARIANTS + EXTRA:
        t = trained["cd" if v == "cd_class" else v]
        img = generate(tm, t["model"], t["clip"], p[v], seed, cs)
        out[v] = closeness(img, cs.colour, cs.shape) | {"image": img, "prompt": p[v]}
    return out


def train_concepts(tm: eb.ToyModel, cs: ConceptSettings, ti_steps: Optional[int] = None,
                   cd_steps: Optional[int] = None) -> dict:
    """Trains both methods on the references; per variant the MODEL/CLIP to sample with, plus training figures
    (seconds, steps, probe loss before/after)."""
    refs = [s.image for s in reference_scenes(cs)]
    ti_res, ti_clip = train_ti(tm, refs, cs, ti_steps)
    cd_res, cd_model, cd_clip = train_cd(tm, refs, cs, cd_steps)
    return {
        "refs": refs,
        "initializer": {"model": tm.model, "clip": tm.clip},
        "ti": {"model": tm.model, "clip": ti_clip, "seconds": ti_res.seconds, "steps": ti_res.steps_done,
               "probe_before": ti_res.probe_before, "probe_after": ti_res.probe_after},
        "cd": {"model": cd_model, "clip": cd_clip, "seconds": cd_res.seconds, "steps": cd_res.steps_done,
               "probe_before": cd_res.probe_before, "probe_after": cd_res.probe_after},
    }


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return float(np.mean(xs)) if xs else float("nan")


def concept_bench(tm: eb.ToyModel, seeds: Sequence[int], cs: Optional[ConceptSettings] = None,
                  ti_steps: Optional[int] = None, cd_steps: Optional[int] = None, keep_images: int = 8) -> dict:
    """The whole benchmark: train both methods, generate the three variants for every seed, summarise.

    Returns {"settings", "prompts", "refs" (uint8 images), "ref_closeness" (references and their VAE round trip),
    "train": {ti/cd: seconds, steps, probe_before, probe_after}, "summary": {variant: iou, colour, recognised,
    judged_initializer, found, wins (learned variants: fraction of seeds closer than the initializer image),
    ties}, "cases": per seed closeness (images of the first ``keep_images`` seeds kept)}."""
    cs = cs or ConceptSettings()
    trained = train_concepts(tm, cs, ti_steps, cd_steps)
    refs = trained["refs"]
    ref_close = [closeness(a, cs.colour, cs.shape) for a in refs]
    vae_close = [closeness(eb.decode(tm, eb.encode_image(tm, a))[0], cs.colour, cs.shape) for a in refs]
    cases = []
    for k, s in enumerate(seeds):
        c = concept_case(tm, s, cs, trained)
        if k >= keep_images:
            for v in VARIANTS + EXTRA:
                c[v].pop("image")
        cases.append(c)
    summary = {}
    for v in VARIANTS + EXTRA:
        rs = [c[v] for c in cases]
        summary[v] = {"margin": _mean(r["margin"] for r in rs), "iou": _mean(r["iou"] for r in rs),
                      "colour": _mean(r["colour_ok"] for r in rs),
                      "recognised": _mean(r["recognised"] for r in rs),
                      "judged_initializer": _mean(r["judged_initializer"] for r in rs),
                      "found": _mean(r["found"] for r in rs)}
        if v in ("ti", "cd"):
            summary[v]["wins"] = _mean(c[v]["margin"] > c["initializer"]["margin"] for c in cases)
            summary[v]["ties"] = _mean(c[v]["margin"] == c["initializer"]["margin"] for c in cases)
            summary[v]["wins_iou"] = _mean(c[v]["iou"] > c["initializer"]["iou"] for c in cases)
    train = {v: {k: trained[v][k] for k in ("seconds", "steps", "probe_before", "probe_after")} for v in ("ti", "cd")}
    return {"settings": asdict(cs), "prompts": all_prompts(cs), "refs": refs,
            "ref_closeness": {"render": _mean(r["margin"] for r in ref_close),
                              "render_iou": _mean(r["iou"] for r in ref_close),
                              "vae": _mean(r["margin"] for r in vae_close),
                              "vae_iou": _mean(r["iou"] for r in vae_close),
                              "vae_recognised": _mean(r["recognised"] for r in vae_close)},
            "train": train, "summary": summary, "cases": cases, "seeds": list(seeds)}
