"""ToyWorld: a seeded procedural world of 64x64 RGB images of simple shapes, with captions and ground truth.

* shapes: circle, square, triangle; colours: red, green, blue, yellow; sizes: small, big;
  positions: left, right, top, bottom, centre; backgrounds: white, gray, black (plain) and stripes (texture).
* one or two objects; two objects sit at opposite positions (left/right or top/bottom).
* ``sample_scene(seed)`` is deterministic per seed; ``render_spec(spec, seed)`` renders a structured spec, so a
  benchmark can render "a red circle on the left" and the same scene (same jitter seed) with a blue circle.
* ground truth: every object with shape, colour, size, position, centre (x, y), and a 64x64 bool mask.

Drawing is done with PIL at 4x resolution and box-downsampled (anti-aliased edges).
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SS = 4  # supersampling factor

SHAPES = ["circle", "square", "triangle"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
}
SIZES = ["small", "big"]
POSITIONS = {
    "left": (16, 32),
    "right": (48, 32),
    "top": (32, 16),
    "bottom": (32, 48),
    "centre": (32, 32),
}
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "stripes": ((235, 225, 200), (175, 165, 145)),  # diagonal beige stripes
}
# object extent (px at 64x64): diameter of the circle, side of the square, side of the triangle's bounding box
EXTENT = {"small": 15, "big": 27}
JITTER = 3  # max centre jitter (px)
EXTENT_JITTER = 1

POSITION_PHRASE = {
    "left": ["on the left", "at the left"],
    "right": ["on the right", "at the right"],
    "top": ["at the top", "on the top"],
    "bottom": ["at the bottom", "on the bottom"],
    "centre": ["in the centre", "in the middle"],
}
BACKGROUND_PHRASE = {
    "white": ["on white", "on a white background"],
    "gray": ["on gray", "on a gray background"],
    "black": ["on black", "on a black background"],
    "stripes": ["on stripes", "on a striped background"],
}


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    centre: tuple = (0.0, 0.0)  # (x, y) in pixels
    extent: float = 0.0
    mask: np.ndarray | None = field(default=None, repr=False)

    def attrs(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "position": self.position}


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8
    caption: str
    spec: dict
    objects: list
    background: str
    seed: int = 0


# ----------------------------------------------------------------------------------------------------------------
# specs and captions
# ----------------------------------------------------------------------------------------------------------------

def random_spec(rng: random.Random, two_prob: float = 0.35) -> dict:
    bg = rng.choice(list(BACKGROUNDS))
    if rng.random() < two_prob:
        p1 = rng.choice(list(OPPOSITE))
        positions = [p1, OPPOSITE[p1]]
    else:
        positions = [rng.choice(list(POSITIONS))]
    objs = []
    for p in positions:
        objs.append({"shape": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)), "size": rng.choice(SIZES),
                     "position": p})
    return {"objects": objs, "background": bg}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(o: dict, with_position: bool = True, with_size: bool = True, rng: random.Random | None = None) -> str:
    words = []
    if with_size:
        words.append(o["size"])
    words += [o["colour"], o["shape"]]
    s = f"{_article(words[0])} {' '.join(words)}"
    if with_position:
        phr = POSITION_PHRASE[o["position"]]
        s += " " + (phr[0] if rng is None else rng.choice(phr))
    return s


def caption_for(spec: dict, rng: random.Random | None = None, full: bool = True) -> str:
    """A natural caption. ``rng=None``: the canonical full caption (every attribute, background named).

    With an rng the template varies (phrasing, background named or not) and, when ``full`` is False, size or
    position may be omitted."""
    objs = spec["objects"]
    bg = spec.get("background", "white")
    if rng is None:
        parts = [object_phrase(o) for o in objs]
        return " and ".join(parts) + " " + BACKGROUND_PHRASE[bg][0]
    with_pos = full or rng.random() < 0.8
    with_size = full or rng.random() < 0.8
    parts = [object_phrase(o, with_pos, with_size, rng) for o in objs]
    cap = " and ".join(parts)
    if rng.random() < 0.7:
        cap += " " + rng.choice(BACKGROUND_PHRASE[bg])
    return cap


# ----------------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------------

def _background(name: str, rng: random.Random) -> Image.Image:
    big = SIZE * SS
    val = BACKGROUNDS[name]
    if name == "stripes":
        c1, c2 = val
        img = Image.new("RGB", (big, big), c1)
        d = ImageDraw.Draw(img)
        period = 12 * SS
        off = rng.randrange(period)
        w = period // 2
        for k in range(-big, 2 * big, period):
            x = k + off
            d.polygon([(x, 0), (x + w, 0), (x + w - big, big), (x - big, big)], fill=c2)
        return img
    return Image.new("RGB", (big, big), val)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, ext: float, fill) -> None:
    h = ext / 2.0
    x0, y0, x1, y1 = (cx - h) * SS, (cy - h) * SS, (cx + h) * SS, (cy + h) * SS
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_spec(spec: dict, seed: int = 0, jitter: bool = True) -> Scene:
    """Renders a structured spec ``{"objects": [{shape, colour, size, position}, ...], "background": name}``.

    ``seed`` drives only the jitter (centre/extent offsets, stripe phase); the same seed with a spec that differs
    only in, e.g., colour gives the same geometry."""
    rng = random.Random(f"render:{seed}")
    bgname = spec.get("background", "white")
    img = _background(bgname, rng)
    draw = ImageDraw.Draw(img)
    objects = []
    for i, o in enumerate(spec["objects"]):
        bx, by = POSITIONS[o["position"]]
        dx = rng.uniform(-JITTER, JITTER) if jitter else 0.0
        dy = rng.uniform(-JITTER, JITTER) if jitter else 0.0
        de = rng.uniform(-EXTENT_JITTER, EXTENT_JITTER) if jitter else 0.0
        ext = EXTENT[o["size"]] + de
        cx, cy = bx + dx, by + dy
        _draw_shape(draw, o["shape"], cx, cy, ext, COLOURS[o["colour"]])
        m = Image.new("L", (SIZE * SS, SIZE * SS), 0)
        _draw_shape(ImageDraw.Draw(m), o["shape"], cx, cy, ext, 255)
        mask = np.asarray(m.resize((SIZE, SIZE), Image.BOX)) >= 128
        objects.append(SceneObject(o["shape"], o["colour"], o["size"], o["position"], (cx, cy), ext, mask))
    # later objects occlude earlier ones in the masks too
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            objects[i].mask = objects[i].mask & ~objects[j].mask
    image = np.asarray(img.resize((SIZE, SIZE), Image.BOX), dtype=np.uint8).copy()
    return Scene(image=image, caption=caption_for(spec), spec=copy.deepcopy(spec), objects=objects,
                 background=bgname, seed=seed)


def sample_scene(seed: int, two_prob: float = 0.35, caption_variety: bool = True) -> Scene:
    """A random scene, deterministic per seed; the caption is a varied natural template naming every attribute."""
    rng = random.Random(f"scene:{seed}")
    spec = random_spec(rng, two_prob)
    sc = render_spec(spec, seed=seed)
    if caption_variety:
        sc.caption = caption_for(spec, rng, full=True)
    return sc


def make_dataset(n: int, seed: int = 0, two_prob: float = 0.35, partial_caption_prob: float = 0.1):
    """``n`` scenes: uint8 images [n, 64, 64, 3], captions, specs. Deterministic per (n, seed)."""
    imgs = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    caps, specs = [], []
    for i in range(n):
        s = seed * 10_000_000 + i
        sc = sample_scene(s, two_prob)
        rng = random.Random(f"cap:{s}")
        if rng.random() < partial_caption_prob:
            sc.caption = caption_for(sc.spec, rng, full=False)
        imgs[i] = sc.image
        caps.append(sc.caption)
        specs.append(sc.spec)
    return imgs, caps, specs


def spec_from_caption(caption: str) -> dict:
    """The spec of a one-object caption in ToyWorld's words, e.g. "a red circle on the left" or
    "a small blue square at the top on stripes". Unnamed attributes default to big, centre, white.

    Raises ValueError naming what is missing or unknown (the world's vocabulary is listed in the message)."""
    text = " " + " ".join(str(caption).lower().replace(",", " ").split()) + " "
    vocab = (f"shapes {', '.join(SHAPES)}; colours {', '.join(COLOURS)}; sizes {', '.join(SIZES)}; positions "
             f"{', '.join(p for v in POSITION_PHRASE.values() for p in v)}; backgrounds "
             f"{', '.join(p for v in BACKGROUND_PHRASE.values() for p in v)}")

    def pick(options, what, default=None):
        found = [o for o in options if f" {o} " in text]
        if len(found) > 1:
            raise ValueError(f"caption {caption!r} names more than one {what} ({', '.join(found)}): a ToyWorld scene "
                             f"from a caption has one object")
        if not found:
            if default is None:
                raise ValueError(f"caption {caption!r} names no {what}; ToyWorld knows {vocab}")
            return default
        return found[0]

    def phrase(table, what, default):
        found = [k for k, phrases in table.items() if any(f" {ph} " in text for ph in phrases)]
        if len(found) > 1:
            raise ValueError(f"caption {caption!r} names more than one {what} ({', '.join(found)})")
        return found[0] if found else default

    return spec_from_attrs(pick(SHAPES, "shape"), pick(list(COLOURS), "colour"), pick(SIZES, "size", "big"),
                           phrase(POSITION_PHRASE, "position", "centre"),
                           phrase(BACKGROUND_PHRASE, "background", "white"))


def spec_from_attrs(shape="circle", colour="red", size="big", position="centre", background="white") -> dict:
    return {"objects": [{"shape": shape, "colour": colour, "size": size, "position": position}],
            "background": background}


if __name__ == "__main__":  # writes a contact sheet: python -m attention_edit.toyworld.scenes out.png
    import sys

    tiles = [sample_scene(i) for i in range(48)]
    sheet = np.zeros((6 * SIZE, 8 * SIZE, 3), np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, 8)
        sheet[r * SIZE:(r + 1) * SIZE, c * SIZE:(c + 1) * SIZE] = t.image
        print(k, t.caption)
    Image.fromarray(sheet).resize((16 * SIZE, 12 * SIZE), Image.NEAREST).save(sys.argv[1] if len(sys.argv) > 1 else "/tmp/toyworld.png")
