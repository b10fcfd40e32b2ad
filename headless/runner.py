"""Headless runner: executes a shipped (or any API-format) workflow with ComfyUI's own executor, in-process.

::

    python -m attention_edit.runner p2p_word_swap                 # tiny embedded model, a rendered ToyWorld scene
    python -m attention_edit.runner p2p_word_swap --ckpt ~/models/v1-5-pruned-emaonly.safetensors \\
        --image my_cat.jpg --source-prompt "a photo of a cat" --edited-prompt "a photo of a dog" --out out/
    python -m attention_edit.runner --list

Without ``--ckpt``, every CheckpointLoaderSimple node is swapped for the pack's AE_ToyWorldLoader (the
embedded default: a tiny 64x64 model, NOT Stable Diffusion), the photo is scaled to 64x64 and the steps (and the
training steps of concept-training nodes) are reduced, so a run takes seconds on a CPU. The loader's ``weights``
choice is ``--toy-weights``, else the checkpoint loader's ``"_meta": {"ae_toy_weights": ...}`` in the workflow
file (TOY_WEIGHTS_META: the SDXL and SD2.x workflows name the random SDXL / SD2.x v-prediction test models, so they
run on their own family's code path; the SDXL test model works at 128x128), else the shipped ToyWorld weights.

Concept-training workflows (Custom-Edit: ``custom_edit_custom_diffusion``, ``custom_edit_textual_inversion``) take
the concept's pictures with ``--reference PATH`` (repeat it, 3-5 pictures); the trained concept file is copied
into ``--out`` next to the images::

    python -m attention_edit.runner custom_edit_custom_diffusion --ckpt ~/models/v1-5-pruned-emaonly.safetensors \\
        --image photo.jpg --reference mine1.jpg --reference mine2.jpg --reference mine3.jpg --out out/

The functions (:func:`load_workflow`, :func:`apply_overrides`, :func:`use_toyworld`, :func:`run`) are also what
the tests use.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import sys
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

PACKAGE_DIR = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = PACKAGE_DIR / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
TOYWORLD_WEIGHTS = PACKAGE_DIR / "toyworld" / "weights" / "toyworld.safetensors"

CHECKPOINT_LOADER = "CheckpointLoaderSimple"
TOY_LOADER = "AE_ToyWorldLoader"
TOY_SHIPPED = "toyworld (shipped)"
TOY_MMDIT = "toyworld MM-DiT (shipped, Flux.1 architecture)"
TOY_RANDOM = "random (untrained test model)"
TOY_SD2_V = "random SD2.x v-prediction (untrained test model)"
TOY_SDXL = "random SDXL (untrained test model)"
TOY_FLUX = "random Flux.1 (untrained test model)"
TOY_SD3 = "random SD3.5 (untrained test model)"
#: AE_ToyWorldLoader's weights choices (nodes/toyworld_nodes.py CHOICES)
TOY_CHOICES = (TOY_SHIPPED, TOY_MMDIT, TOY_RANDOM, TOY_SD2_V, TOY_SDXL, TOY_FLUX, TOY_SD3)
#: the key of a CheckpointLoaderSimple node's "_meta" that names the loader choice the runner swaps in without
#: --ckpt (e.g. "random SDXL (untrained test model)" in workflows/api/p2p_word_swap_sdxl.json)
TOY_WEIGHTS_META = "ae_toy_weights"
TOY_SIZE = 64            # the ToyWorld / tiny test model's image size (8x8 latent)
#: the test models made for another size than TOY_SIZE (comfy_bridge/models.py TINY_SDXL.image_size)
TOY_SIZES = {TOY_SDXL: 128}
#: what a real checkpoint of the family of each test model is (for the notice)
TOY_FAMILY_CKPT = {TOY_FLUX: "Flux.1 checkpoint with its text encoders and VAE (.safetensors), e.g. "
                             "flux1-dev-fp8.safetensors",
                   TOY_MMDIT: "Flux.1 checkpoint with its text encoders and VAE (.safetensors), e.g. "
                              "flux1-dev-fp8.safetensors",
                   TOY_SD2_V: "Stable Diffusion 2.x checkpoint (.safetensors), e.g. v2-1_768-ema-pruned.safetensors",
                   TOY_SDXL: "SDXL checkpoint (.safetensors), e.g. sd_xl_base_1.0.safetensors",
                   TOY_SD3: "SD3.5 checkpoint with its text encoders (.safetensors), e.g. "
                            "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors"}
TOY_STEPS = 20           # default sampling steps for the tiny model (unless --steps)
DEFAULT_PHOTO = "chelsea"  # scikit-image's cat photo
SEED_INPUTS = ("seed", "noise_seed")
#: collects reference pictures as a list (replaces core ImageBatch, deprecated in ComfyUI 0.33, which also stretches
#: pictures to the first one's size)
REFERENCES_NODE = "AE_ReferencePictures"
#: concept-training nodes: their "images" input takes the reference pictures; output 2 names the trained file
TRAIN_NODES = ("AE_TrainTextualInversion", "AE_TrainCustomDiffusion", "AE_ImagicOptimizeEmbedding", "AE_ImagicFineTune")
TOY_TRAIN_STEPS = 10     # at most this many training steps with the tiny model (unless --train-steps)
TOY_SAMPLER_STEPS = 10   # at most this many KSampler steps with the tiny model (e.g. generated prior images)

TINY_NOTICE = ("NOTE: no --ckpt given, so this runs the pack's embedded default model, a tiny test model, "
               "not Stable Diffusion: {what}. It works at {size}x{size} pixels and knows nothing about photos, so "
               "the output only shows that the workflow runs. For real edits pass --ckpt PATH, a real {ckpt_kind}.")
SD1_CKPT = "Stable Diffusion 1.x checkpoint (.safetensors), e.g. v1-5-pruned-emaonly-fp16.safetensors"

log = logging.getLogger("attention_edit.runner")


class RunnerError(Exception):
    """A problem the runner reports as one clear line (bad arguments, missing files, a failed workflow)."""


# --------------------------------------------------------------------------------------------------
# workflows
# --------------------------------------------------------------------------------------------------

def list_workflows() -> list[str]:
    """Names of the shipped API-format workflows (``workflows/api/<name>.json``)."""
    return sorted(p.stem for p in API_DIR.glob("*.json"))


def workflow_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a shipped workflow name (``p2p_word_swap_null_text``) or of a path to an API-format JSON."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p.resolve()
    cand = API_DIR / (str(name_or_path) if str(name_or_path).endswith(".json") else f"{name_or_path}.json")
    if cand.is_file():
        return cand
    raise RunnerError(f"no workflow {str(name_or_path)!r}: not a file, and not one of the shipped workflows "
                      f"({', '.join(list_workflows()) or 'none'})")


def load_workflow(name_or_path: str | os.PathLike) -> dict:
    """An API-format workflow (what POST /prompt takes) as a dict {node_id: {"class_type", "inputs"}}.

    Accepts a shipped name, a path to an API-format file, or a path to the shipped UI-format file of a shipped
    workflow (its API twin is used). Raises RunnerError with the reason otherwise."""
    path = workflow_path(name_or_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunnerError(f"cannot read workflow {path}: {exc}") from exc
    if isinstance(data, dict) and "nodes" in data and "links" in data:  # UI format
        twin = API_DIR / path.name
        if path.parent.resolve() == WORKFLOWS_DIR.resolve() and twin.is_file():
            return load_workflow(twin)
        raise RunnerError(f"{path} is a UI-format workflow (what the ComfyUI frontend loads); the runner needs the "
                          f"API format: in ComfyUI use 'Export (API)' and pass that file")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a POST /prompt body
        data = data["prompt"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) and "class_type" in v
                                                         for v in data.values()):
        raise RunnerError(f"{path} is not an API-format ComfyUI workflow ({{node_id: {{class_type, inputs}}}})")
    return {str(k): v for k, v in data.items()}


def _is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def nodes_of(prompt: Mapping[str, Any], class_type: str) -> list[str]:
    return [nid for nid, n in prompt.items() if n.get("class_type") == class_type]


def parse_size(size: str | int | tuple | None) -> tuple[int, int] | None:
    """'512' -> (512, 512); '640x480' -> (640, 480) (width x height); None -> None."""
    if size is None:
        return None
    if isinstance(size, int):
        w = h = size
    elif isinstance(size, (tuple, list)):
        w, h = (int(x) for x in size)
    else:
        s = str(size).lower().replace(" ", "")
        try:
            w, h = (int(x) for x in s.split("x")) if "x" in s else (int(s), int(s))
        except ValueError:
            raise RunnerError(f"bad --size {size!r}: give N (a square) or WIDTHxHEIGHT, e.g. 512 or 640x480") from None
    if w <= 0 or h <= 0 or w % 8 or h % 8:
        raise RunnerError(f"bad --size {size!r}: width and height must be positive multiples of 8 (the VAE works "
                          f"on 8x8 pixel blocks); e.g. 64, 512, 640x480")
    return w, h


# resolution-dependent settings for the tiny model's 64x64 images (8x8 latent): the 512px choice "1/4" would ask
# for 2x2 attention maps; "full" uses the 8x8 ones, undilated (LocalBlend.pool_radius), as the ToyWorld benchmark
TOY_MASK_RESOLUTION = "full"

#: Without --ckpt and --image, these workflows edit a rendered ToyWorld scene (what the model was trained on)
#: instead of the cat photo: the scene's caption, the source prompt (default: the caption), the edited prompt, and
#: inputs set per node class. "scene" is also what --scene renders when given without a caption.
DEFAULT_SCENE = "a red circle on the left"
TOY_SCENES: dict[str, dict] = {
    "p2p_word_swap": {"scene": DEFAULT_SCENE, "edited": "a blue circle on the left"},
    "p2p_word_swap_null_text": {"scene": DEFAULT_SCENE, "edited": "a blue circle on the left"},
    # the shipped ToyWorld MM-DiT (the workflow's checkpoint loader names it for runs without --ckpt)
    "p2p_word_swap_flux": {"scene": DEFAULT_SCENE, "edited": "a blue circle on the left"},
    "p2p_refine_local_blend": {"scene": "a small red circle on the left", "source": "a red circle on the left",
                               "edited": "a big red circle on the left",
                               "inputs": {"AE_P2PLocalBlend": {"source_words": "circle",
                                                               "target_words": "big, circle"}}},
    "p2p_reweight": {"scene": "a big red circle in the centre", "inputs": {"AE_P2PReweight": {"equalizer": "big: 3"}}},
    "adapedit_soft_edit": {"scene": "a small red circle on the left", "source": "a red circle on the left",
                           "edited": "a big red circle on the left"},
}
#: a 64x64 scene has an 8x8 latent: inject self-attention on every level (the toyworld benchmark's setting)
TOY_SCENE_INPUTS = {"AE_P2PEdit": {"self_replace_max_resolution": "full"}}


def use_toyworld(prompt: Mapping[str, Any], weights: str | None = None, seed: int = 0) -> dict:
    """A copy of *prompt* with every CheckpointLoaderSimple replaced by AE_ToyWorldLoader (same MODEL, CLIP, VAE
    output slots), and local blend's mask resolution adapted to the tiny model's 64x64 images (TOY_MASK_RESOLUTION).
    Concept-training nodes (TRAIN_NODES) train at the tiny model's resolution (TOY_SIZE) for at most
    TOY_TRAIN_STEPS steps (the tiny model cannot learn a concept anyway; apply_overrides' train_steps sets
    another count); EmptyLatentImage nodes (e.g. generated prior images) make TOY_SIZE images and KSampler nodes
    run at most TOY_SAMPLER_STEPS steps.
    *weights*: the loader's choice (TOY_CHOICES); default the workflow's (:func:`toy_weights_of`: the checkpoint
    loader's ``_meta`` TOY_WEIGHTS_META, else the shipped ToyWorld weights when the file exists, else the random
    untrained test model). The sizes above are the chosen model's (:func:`toy_size`: 128 for the SDXL one)."""
    out = copy.deepcopy(dict(prompt))
    weights = toy_weights_of(out, weights)
    size = toy_size(weights)
    for nid in nodes_of(out, CHECKPOINT_LOADER):
        meta = {k: v for k, v in out[nid].get("_meta", {}).items() if k != TOY_WEIGHTS_META}
        meta["title"] = "ToyWorld (tiny test model, replaces the checkpoint loader)"
        out[nid] = {"class_type": TOY_LOADER, "inputs": {"weights": weights, "seed": int(seed)}, "_meta": meta}
    for nid in nodes_of(out, "AE_P2PLocalBlend"):
        inp = out[nid].setdefault("inputs", {})
        if not _is_link(inp.get("mask_resolution")):
            inp["mask_resolution"] = TOY_MASK_RESOLUTION
    for nid, node in out.items():
        ct, inp = node.get("class_type"), node.setdefault("inputs", {})
        if ct in TRAIN_NODES:
            if "resolution" in inp and not _is_link(inp["resolution"]):
                inp["resolution"] = size
            if "steps" in inp and not _is_link(inp["steps"]):
                inp["steps"] = min(int(inp["steps"]), TOY_TRAIN_STEPS)
        elif ct == "EmptyLatentImage":
            for k in ("width", "height"):
                if k in inp and not _is_link(inp[k]):
                    inp[k] = size
        elif ct == "KSampler" and "steps" in inp and not _is_link(inp["steps"]):
            inp["steps"] = min(int(inp["steps"]), TOY_SAMPLER_STEPS)
    return out


def _upstream(prompt: Mapping[str, Any], start: Any, past_training: bool = True) -> set:
    """Ids of the nodes a link value *start* ([node_id, slot]) depends on, itself included. *past_training*
    False: do not follow the ``images`` input of concept-training nodes (their reference pictures)."""
    seen: set = set()
    todo = [start]
    while todo:
        v = todo.pop()
        if not _is_link(v) or v[0] in seen or v[0] not in prompt:
            continue
        seen.add(v[0])
        node = prompt[v[0]]
        todo.extend(x for k, x in node.get("inputs", {}).items() if _is_link(x) and
                    (past_training or not (node.get("class_type") in TRAIN_NODES and k == "images")))
    return seen


def _ref_nodes(prompt: Mapping[str, Any]) -> set:
    """Ids of the nodes (any type) upstream of a concept-training node's ``images`` input."""
    out: set = set()
    for nid in (n for ct in TRAIN_NODES for n in nodes_of(prompt, ct)):
        out |= _upstream(prompt, prompt[nid].get("inputs", {}).get("images"))
    return out


def _id_order(nid: str):
    return (0, int(nid), "") if str(nid).isdigit() else (1, 0, str(nid))


def reference_loaders(prompt: Mapping[str, Any]) -> list[str]:
    """The LoadImage nodes that feed nothing but the reference pictures (the ``images`` input) of concept-training
    nodes, in node-id order: these take ``--reference``; every other LoadImage is the photo to edit."""
    refs = _ref_nodes(prompt)
    elsewhere: set = set()
    for nid, node in prompt.items():
        if nid in refs:
            continue
        for k, v in node.get("inputs", {}).items():
            if not (node.get("class_type") in TRAIN_NODES and k == "images"):
                elsewhere |= _upstream(prompt, v, past_training=False)
    return sorted((n for n in refs if prompt[n].get("class_type") == "LoadImage" and n not in elsewhere),
                  key=_id_order)


def _add_references(out: dict, names: list[str]) -> None:
    """Appends LoadImage nodes for *names* to the ``images`` input of every concept-training node, through a new
    AE_ReferencePictures node that puts the existing pictures first (for more reference pictures than the workflow
    has LoadImage slots)."""
    next_id = max((int(k) for k in out if str(k).isdigit()), default=0) + 1
    per = 8  # AE_ReferencePictures' image inputs
    for nid in (n for ct in TRAIN_NODES for n in nodes_of(out, ct)):
        inp = out[nid].setdefault("inputs", {})
        src = inp.get("images")
        if not _is_link(src):
            continue
        for start in range(0, len(names), per):
            refs = {"more": src}
            for j, name in enumerate(names[start:start + per], start=1):
                load = str(next_id)
                next_id += 1
                out[load] = {"class_type": "LoadImage", "inputs": {"image": name},
                             "_meta": {"title": f"Reference picture (added by the runner): {name}"}}
                refs[f"image_{j}"] = [load, 0]
            collect = str(next_id)
            next_id += 1
            out[collect] = {"class_type": REFERENCES_NODE, "inputs": refs,
                            "_meta": {"title": "Reference pictures (added by the runner)"}}
            src = [collect, 0]
        inp["images"] = src


def default_toy_weights() -> str:
    return TOY_SHIPPED if TOYWORLD_WEIGHTS.is_file() else TOY_RANDOM


def toy_weights_of(prompt: Mapping[str, Any], weights: str | None = None) -> str:
    """The AE_ToyWorldLoader choice that replaces the checkpoint loader of *prompt*: *weights* (--toy-weights)
    when given, else the first CheckpointLoaderSimple's ``"_meta": {"ae_toy_weights": ...}`` (a workflow made for
    another model family names its test model, e.g. "random SDXL (untrained test model)"), else
    :func:`default_toy_weights`. RunnerError for a choice the loader does not have."""
    if weights is None:
        for nid in sorted(nodes_of(prompt, CHECKPOINT_LOADER), key=_id_order):
            weights = (prompt[nid].get("_meta") or {}).get(TOY_WEIGHTS_META)
            if weights is not None:
                break
    weights = weights or default_toy_weights()
    if weights not in TOY_CHOICES:
        raise RunnerError(f"unknown tiny-model weights {weights!r} (--toy-weights, or the checkpoint loader's "
                          f"_meta {TOY_WEIGHTS_META!r}); the loader's choices: {', '.join(TOY_CHOICES)}")
    return weights


def toy_size(weights: str) -> int:
    """The image size (pixels, square) the tiny model of *weights* works at: TOY_SIZE, 128 for the SDXL one."""
    return TOY_SIZES.get(weights, TOY_SIZE)


def apply_overrides(prompt: Mapping[str, Any], *, image: str | None = None, source_prompt: str | None = None,
                    edited_prompt: str | None = None, mode: str | None = None, ckpt_name: str | None = None,
                    seed: int | None = None, steps: int | None = None, num_inner_steps: int | None = None,
                    method: str | None = None, size: str | int | tuple | None = None,
                    filename_prefix: str | None = None, references: list[str] | None = None,
                    train_steps: int | None = None) -> dict:
    """A copy of an API workflow with the runner's overrides applied (None = leave as is).

    image: LoadImage's file name (in the input folder). source_prompt: AE_InvertImage's source prompt (and, for
    a workflow whose edited prompt equals its source prompt, e.g. reweight, the edited prompt too, unless
    *edited_prompt* is given). edited_prompt / mode: AE_P2PEdit's edited prompt(s) and mode. ckpt_name:
    CheckpointLoaderSimple's checkpoint. seed: every ``seed``/``noise_seed`` input (not the ToyWorld loader's,
    which selects the random test model's weights). steps / num_inner_steps / method: AE_InvertImage's (the
    edit sampler follows the inversion). size: (width, height) of every ImageScale node. filename_prefix:
    prepended to every SaveImage prefix. references: file names (in the input folder) of the concept's pictures
    for the LoadImage nodes of :func:`reference_loaders`, in order; fewer names than nodes are repeated, more get
    extra LoadImage nodes (through AE_ReferencePictures); without it those nodes take *image* like every LoadImage. train_steps: the
    ``steps`` of every concept-training node (TRAIN_NODES).
    """
    out = copy.deepcopy({str(k): v for k, v in dict(prompt).items()})
    wh = parse_size(size)
    ref_ids: set = set()
    if references:
        refs = [str(r) for r in references]
        if not any(nodes_of(out, ct) for ct in TRAIN_NODES):
            raise RunnerError("reference pictures (--reference) were given but the workflow has no concept-training "
                              f"node ({', '.join(TRAIN_NODES)})")
        slots = reference_loaders(out)
        if not slots:
            raise RunnerError("reference pictures (--reference) were given but no LoadImage node feeds only the "
                              "training node's 'images' input; edit the workflow in ComfyUI")
        ref_ids = set(slots)
        for i, nid in enumerate(slots):
            out[nid].setdefault("inputs", {})["image"] = refs[i % len(refs)]
        if len(refs) > len(slots):
            _add_references(out, refs[len(slots):])
    inverts = nodes_of(out, "AE_InvertImage")
    old_sources = {out[n]["inputs"].get("source_prompt") for n in inverts}
    for nid, node in out.items():
        ct, inp = node.get("class_type"), node.setdefault("inputs", {})
        if ct == "LoadImage" and image is not None and nid not in ref_ids:
            inp["image"] = image
        elif ct == CHECKPOINT_LOADER and ckpt_name is not None:
            inp["ckpt_name"] = ckpt_name
        elif ct == "AE_InvertImage":
            if source_prompt is not None:
                inp["source_prompt"] = source_prompt
            if steps is not None:
                inp["steps"] = int(steps)
            if num_inner_steps is not None:
                inp["num_inner_steps"] = int(num_inner_steps)
            if method is not None:
                inp["method"] = method
        elif ct == "AE_P2PEdit":
            if edited_prompt is not None:
                inp["edited_prompts"] = edited_prompt
            elif (source_prompt is not None and isinstance(inp.get("edited_prompts"), str)
                  and inp["edited_prompts"].strip() in {s.strip() for s in old_sources if isinstance(s, str)}):
                inp["edited_prompts"] = source_prompt  # a same-prompt edit (reweight) follows the source
            if mode is not None:
                inp["mode"] = mode
        elif ct == "AE_P2PEditSampler" and steps is not None and not _is_link(inp.get("steps")):
            inp["steps"] = 0  # 0 = the inversion's steps
        elif ct in TRAIN_NODES and train_steps is not None and not _is_link(inp.get("steps")):
            inp["steps"] = int(train_steps)
        elif ct == "ImageScale" and wh is not None:
            inp["width"], inp["height"] = wh
        elif ct == "SaveImage" and filename_prefix:
            inp["filename_prefix"] = f"{filename_prefix}{inp.get('filename_prefix', '')}"
        if seed is not None and ct != TOY_LOADER:
            for k in SEED_INPUTS:
                if k in inp and not _is_link(inp[k]):
                    inp[k] = int(seed)
    return out


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    files: list[Path]
    seconds: float                 # executing the workflow
    total_seconds: float           # including ComfyUI start-up
    prompt: dict                   # the API prompt that ran
    notices: list[str] = field(default_factory=list)
    history: dict | None = None
    trained: list[Path] = field(default_factory=list)  # copies (in *out*) of the concept files training wrote
    side_by_side: Path | None = None  # [source | reconstruction | edit ...] as one PNG
    judged: list | None = None        # for a ToyWorld scene: the judge's objects in each tile of side_by_side
    #: for a ToyWorld scene: per tile of side_by_side, (PSNR dB, SSIM) against the source over the background (the
    #: pixels away from the source's and the tile's objects: toyworld.judge.background_fidelity), or None
    background: list | None = None


def prepare_image(image: str | os.PathLike | None, input_dir: Path, size: tuple[int, int] | None) -> str:
    """Copies the photo (a path, or None for scikit-image's cat) into ComfyUI's input folder; returns the name
    LoadImage takes. *size*: also centre-crop and resize the file (for workflows without an ImageScale node)."""
    from PIL import Image

    input_dir.mkdir(parents=True, exist_ok=True)
    if image is None:
        try:
            from .photos import photo_pil
        except ImportError as exc:  # pragma: no cover - scikit-image missing
            raise RunnerError(f"the default photo needs scikit-image ({exc}); pass --image PATH") from exc
        img = photo_pil(DEFAULT_PHOTO, size)
        name = f"ae_{DEFAULT_PHOTO}.png" if size is None else f"ae_{DEFAULT_PHOTO}_{size[0]}x{size[1]}.png"
        img.save(input_dir / name, format="PNG")
        return name
    src = Path(image).expanduser()
    if not src.is_file():
        raise RunnerError(f"--image {str(image)!r}: no such file")
    try:
        with Image.open(src) as im:
            im.verify()
    except Exception as exc:
        raise RunnerError(f"--image {str(image)!r} is not an image PIL can read ({exc})") from exc
    if size is None:
        shutil.copyfile(src, input_dir / src.name)
        return src.name
    with Image.open(src) as im:
        img = im.convert("RGB")
    w, h = size
    sw, sh = img.size
    if sw / sh > w / h:
        cw, ch = round(sh * w / h), sh
    else:
        cw, ch = sw, round(sw * h / w)
    left, top = (sw - cw) // 2, (sh - ch) // 2
    img = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.LANCZOS)
    name = f"{src.stem}_{w}x{h}.png"
    img.save(input_dir / name, format="PNG")
    return name


def _install_quiet_logging(verbose: bool) -> None:
    """For the command line only: ComfyUI logs a lot at start-up (e.g. the audio nodes that need torchaudio),
    through the handler logging.basicConfig added when ComfyUI first logged. Replace the root logger's stderr
    handlers by one that shows errors only, unless verbose; the root logger stays at WARNING so the host
    still captures why a pack failed to load."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout):
            root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    h.setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:  # a failing node: ComfyUI's executor logs its traceback; the runner prints one line instead
        h.addFilter(lambda r: not os.path.basename(r.pathname or "").startswith("execution."))
    root.addHandler(h)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


@dataclass
class RunOptions:
    """What one run of :func:`run` may change (every field None: the workflow's own values, or the tiny model's
    defaults). image: the photo to edit (a path); source_prompt / edited_prompt / mode: the edit; ckpt: an SD1.x
    checkpoint file to load instead of the embedded tiny model; seed, steps, num_inner_steps, method: the inversion
    and sampling settings; size: "WxH", "N" or (w, h) pixels the photo is scaled to; out: the output folder;
    toy_weights: the ToyWorld loader's weights choice; base_dir: the host's base folder; cpu / threads: the device
    and torch threads; references: paths of a concept's pictures for the training workflows; train_steps: the
    training nodes' steps; scene: a ToyWorld caption rendered as the photo; photo: scikit-image's cat photo as the
    image."""

    image: str | os.PathLike | None = None
    source_prompt: str | None = None
    edited_prompt: str | None = None
    mode: str | None = None
    ckpt: str | os.PathLike | None = None
    seed: int | None = None
    steps: int | None = None
    num_inner_steps: int | None = None
    method: str | None = None
    size: str | int | tuple | None = None
    out: str | os.PathLike = "out"
    toy_weights: str | None = None
    base_dir: str | os.PathLike | None = None
    cpu: bool | None = None
    threads: int | None = None
    references: list | None = None
    train_steps: int | None = None
    scene: str | None = None
    photo: bool = False


def run(workflow: str | os.PathLike | Mapping[str, Any], options: RunOptions | None = None, *, say=print,
        **fields) -> RunResult:
    """Runs a workflow in-process through ComfyUI's executor and returns the PNGs it wrote into *out*.

    *options*: a :class:`RunOptions`; keyword *fields* set (or override) single fields of it
    (``run("p2p_word_swap", steps=3)``), a name that is no field is a TypeError.

    *workflow*: a shipped name, a path, or an API prompt dict. Without *ckpt*, the embedded tiny model replaces
    the checkpoint loader (see the module docstring). *references*: paths of the concept's pictures for
    concept-training workflows (default: the photo itself, which only shows that the workflow runs);
    *train_steps*: the training nodes' steps. The concept files the training nodes write are copied into *out*
    (RunResult.trained). *scene*: render this ToyWorld caption (toyworld.scenes.spec_from_caption) as the photo;
    without *ckpt*, *image* and *photo*, the workflows of TOY_SCENES edit their default scene. After the run the
    main SaveImage's images (reconstruction, edits) are written side by side after the source image
    (``<prefix>_side_by_side.png``; RunResult.side_by_side), and for a scene the judge's reading of each is
    reported. *say* prints the notices. Raises RunnerError (clear message) or host.WorkflowError on failure."""
    try:
        opts = dataclasses.replace(options or RunOptions(), **fields)
    except TypeError as exc:
        raise TypeError(f"run(): {exc}; the options are the fields of RunOptions") from None
    return _run(workflow, opts, say)


def _run(workflow, o: RunOptions, say) -> RunResult:
    """:func:`run` with its options resolved."""
    image, source_prompt, edited_prompt, mode, ckpt = o.image, o.source_prompt, o.edited_prompt, o.mode, o.ckpt
    seed, steps, num_inner_steps, method, size, out = o.seed, o.steps, o.num_inner_steps, o.method, o.size, o.out
    toy_weights, base_dir, cpu, threads, references = o.toy_weights, o.base_dir, o.cpu, o.threads, o.references
    train_steps, scene, photo = o.train_steps, o.scene, o.photo
    t0 = time.perf_counter()
    prompt = load_workflow(workflow) if not isinstance(workflow, Mapping) else copy.deepcopy(dict(workflow))
    notices: list[str] = []
    size_wh = parse_size(size)
    ckpt_path = None
    if ckpt is not None:
        ckpt_path = Path(ckpt).expanduser().resolve()
        if not ckpt_path.is_file():
            raise RunnerError(f"--ckpt {str(ckpt)!r}: no such file (give the path of an SD1.x .safetensors checkpoint)")
        if ckpt_path.suffix.lower() not in (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft"):
            raise RunnerError(f"--ckpt {str(ckpt)!r} is not a checkpoint file; expected an SD1.x .safetensors file")
        if not nodes_of(prompt, CHECKPOINT_LOADER):
            raise RunnerError("--ckpt was given but the workflow has no CheckpointLoaderSimple node to load it")
    if image is not None and not Path(image).expanduser().is_file():
        raise RunnerError(f"--image {str(image)!r}: no such file")
    if scene is not None and (image is not None or photo):
        raise RunnerError("--scene renders the photo to edit: give either --scene or --image/--photo, not both")
    references = [str(r) for r in (references or [])]
    for r in references:
        if not Path(r).expanduser().is_file():
            raise RunnerError(f"--reference {r!r}: no such file")
    if train_steps is not None and int(train_steps) < 1:
        raise RunnerError(f"bad --train-steps {train_steps}: give at least 1")
    trains = [n for ct in TRAIN_NODES for n in nodes_of(prompt, ct)]
    if references and not trains:
        raise RunnerError("--reference was given but the workflow has no concept-training node "
                          f"({', '.join(TRAIN_NODES)})")
    tiny = ckpt_path is None and bool(nodes_of(prompt, CHECKPOINT_LOADER))
    weights = None
    if tiny:
        weights = toy_weights_of(prompt, toy_weights)
        tsize = toy_size(weights)
        if weights == TOY_SHIPPED:
            what = "ToyWorld, a small model of coloured shapes shipped with the pack"
        elif weights == TOY_MMDIT:
            what = ("the ToyWorld MM-DiT, a small Flux.1-architecture model of coloured shapes shipped with the "
                    "pack")
        elif weights == TOY_RANDOM and weights == default_toy_weights():
            what = ("its ToyWorld weights are not shipped yet, so the loader's 'random (untrained test model)' "
                    "option is used: random weights, the outputs are noise")
        else:
            what = f"the loader's {weights!r} option: random weights, the outputs are noise"
        notices.append(TINY_NOTICE.format(what=what, size=tsize, ckpt_kind=TOY_FAMILY_CKPT.get(weights, SD1_CKPT)))
        if size_wh is None:
            size_wh = (tsize, tsize)
            notices.append(f"the photo is scaled to {tsize}x{tsize}, the tiny model's resolution (--size changes it)")
        if steps is None:
            steps = TOY_STEPS
            notices.append(f"steps reduced to {TOY_STEPS} for the tiny model (--steps changes it)")
        if trains and train_steps is None:
            notices.append(f"training steps reduced to at most {TOY_TRAIN_STEPS} and training resolution to "
                           f"{tsize} for the tiny model (--train-steps changes the steps)")
    scene_cfg: dict = {}
    wf_name = Path(str(workflow)).stem if not isinstance(workflow, Mapping) else ""
    if scene is None and tiny and image is None and not photo and wf_name in TOY_SCENES and nodes_of(prompt, "LoadImage"):
        scene_cfg = TOY_SCENES[wf_name]
        scene = scene_cfg["scene"]
        source_prompt = source_prompt if source_prompt is not None else scene_cfg.get("source", scene)
        if edited_prompt is None and "edited" in scene_cfg:
            edited_prompt = scene_cfg["edited"]
        notices.append(f"no --image: the photo is a rendered ToyWorld scene, {scene!r}, edited from "
                       f"{source_prompt!r} to {edited_prompt or source_prompt!r} (--photo edits scikit-image's cat "
                       f"photo instead, --image PATH your own; real photos want --ckpt)")
    elif scene is not None:
        if not nodes_of(prompt, "LoadImage"):
            raise RunnerError("--scene was given but the workflow has no LoadImage node to take the rendered scene")
        if edited_prompt is None and any(isinstance(prompt[n]["inputs"].get("edited_prompts"), str) and
                                         prompt[n]["inputs"]["edited_prompts"].strip() not in
                                         {str(prompt[i]["inputs"].get("source_prompt", "")).strip()
                                          for i in nodes_of(prompt, "AE_InvertImage")}
                                         for n in nodes_of(prompt, "AE_P2PEdit")):
            raise RunnerError(f"--scene {scene!r}: also give --edited-prompt, the scene's edited description "
                              f"(e.g. --scene {DEFAULT_SCENE!r} --edited-prompt 'a blue circle on the left')")
        source_prompt = source_prompt if source_prompt is not None else scene
        scene_cfg = {"inputs": TOY_SCENES.get(wf_name, {}).get("inputs", {})}  # e.g. the equalizer's word "big"
    if trains and not references:
        notices.append("no --reference given: the concept is learned from the photo itself, which only shows that "
                       "the workflow runs; pass the concept's 3-5 pictures with --reference PATH (repeated)")
    for n in notices:
        say(f"[attention_edit] {n}")

    if cpu is None:
        try:
            import torch

            cpu = not torch.cuda.is_available()
        except Exception:  # pragma: no cover
            cpu = True
    if threads is None and tiny and cpu:
        threads = 1  # tiny models: OpenMP threads only spin against each other on a small CPU

    from ..comfy_bridge import files as bridge_files
    from ..comfy_bridge import host as bridge_host
    from . import host

    host.configure_cpu(cpu)
    host.init_comfy(base_dir, cpu=cpu, threads=threads)
    say(f"[attention_edit] ComfyUI {host.comfy_version()} at {host.comfy_root()}")

    if tiny and not host.has_node(TOY_LOADER):
        raise RunnerError(f"the pack's {TOY_LOADER} node is not registered; cannot run the embedded default model")

    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    previous_output = bridge_host.output_directory()
    bridge_host.set_output_directory(str(out_dir))
    try:  # an in-process host (tests, a notebook) gets its output folder back afterwards
        ckpt_name = None
        if ckpt_path is not None:
            bridge_host.add_model_folder_path("checkpoints", str(ckpt_path.parent))
            ckpt_name = ckpt_path.name

        has_scale = bool(nodes_of(prompt, "ImageScale"))
        image_name = None
        scene_obj = None
        if scene is not None:
            scene_obj, image_name = prepare_scene(scene, Path(bridge_files.input_dir()), seed or 0)
        elif nodes_of(prompt, "LoadImage"):
            image_name = prepare_image(image, Path(bridge_files.input_dir()),
                                       None if has_scale else size_wh)
        elif image is not None:
            raise RunnerError("--image was given but the workflow has no LoadImage node")
        ref_names = _prepare_references(references, image, Path(bridge_files.input_dir())) or None

        if tiny:
            prompt = use_toyworld(prompt, weights)
        prompt = apply_overrides(prompt, image=image_name, source_prompt=source_prompt, edited_prompt=edited_prompt,
                                 mode=mode, ckpt_name=ckpt_name, seed=seed, steps=steps, num_inner_steps=num_inner_steps,
                                 method=method, size=size_wh if has_scale else None, references=ref_names,
                                 train_steps=train_steps)
        if scene is not None and tiny:
            for ct, values in list(TOY_SCENE_INPUTS.items()) + list(scene_cfg.get("inputs", {}).items()):
                for nid in nodes_of(prompt, ct):
                    prompt[nid]["inputs"].update(values)
        if seed is not None:
            import torch

            torch.manual_seed(int(seed))

        before = {p for p in out_dir.rglob("*") if p.is_file()}
        t1 = time.perf_counter()
        res = host.run_workflow(prompt)
        t2 = time.perf_counter()
        # the files saved into the output folder (SaveImage ...); previews in ComfyUI's temp folder are left out
        files = [f for f in host.ui_files(res["outputs"], {"output": out_dir}) if f.is_file()]
        if not files:  # output nodes that do not report their files
            files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p not in before)
        trained = _copy_trained(res, prompt, out_dir)
        source_file = Path(bridge_files.input_dir()) / image_name if image_name else None
        side, verdicts, backgrounds = _side_by_side(prompt, res["outputs"], out_dir, source_file, scene_obj)
        if side is not None:
            files.append(side)
        return RunResult(files=files, seconds=t2 - t1, total_seconds=t2 - t0, prompt=prompt, notices=notices,
                         history=dict(res), trained=trained, side_by_side=side, judged=verdicts, background=backgrounds)
    finally:
        bridge_host.set_output_directory(previous_output)


def prepare_scene(caption: str, input_dir: Path, seed: int = 0):
    """Renders the ToyWorld scene of *caption* (64x64, jitter from *seed*) into ComfyUI's input folder;
    returns (the Scene, the name LoadImage takes). RunnerError when the caption is not a ToyWorld scene."""
    from PIL import Image

    from ..toyworld import scenes

    try:
        spec = scenes.spec_from_caption(caption)
    except ValueError as exc:
        raise RunnerError(f"--scene: {exc}") from exc
    sc = scenes.render_spec(spec, seed=int(seed))
    input_dir.mkdir(parents=True, exist_ok=True)
    slug = "_".join(caption.lower().split())[:60]
    slug = "".join(c for c in slug if c.isalnum() or c == "_")
    name = f"ae_scene_{slug}_{int(seed)}.png"
    Image.fromarray(sc.image).save(input_dir / name, format="PNG")
    return sc, name


def _main_save_node(prompt: Mapping[str, Any]) -> str | None:
    """The SaveImage node that shows the edit: the first (by id) whose images come through VAEDecode from a
    Prompt-to-Prompt Edit Sampler."""
    for nid in sorted(nodes_of(prompt, "SaveImage"), key=_id_order):
        up = _upstream(prompt, prompt[nid].get("inputs", {}).get("images"))
        if any(prompt[u].get("class_type") == "AE_P2PEditSampler" for u in up) and \
                any(prompt[u].get("class_type") == "VAEDecode" for u in up):
            return nid
    return None


def _side_by_side(prompt, outputs, out_dir: Path, source_file: Path | None, scene_obj=None):
    """Writes [source | reconstruction | edit ...] as one PNG (nearest-neighbour upscaled to >= 256 px high) next
    to the outputs; returns (its path or None, the judge's readings for a ToyWorld scene or None, per tile the
    background's (PSNR, SSIM) against the source for a ToyWorld scene or None)."""
    from PIL import Image, ImageOps

    nid = _main_save_node(prompt)
    if nid is None or source_file is None or not source_file.is_file():
        return None, None, None
    items = [it for it in (outputs.get(nid) or {}).get("images", []) if it.get("type", "output") == "output"]
    tiles = [Image.open(out_dir / (it.get("subfolder") or "") / it["filename"]).convert("RGB") for it in items]
    if len(tiles) < 2:
        return None, None, None
    w, h = tiles[0].size
    src = ImageOps.fit(Image.open(source_file).convert("RGB"), (w, h), Image.Resampling.LANCZOS)
    tiles = [src] + tiles
    k = max(1, -(-256 // h))
    gap = 4
    sheet = Image.new("RGB", (len(tiles) * w * k + gap * (len(tiles) - 1), h * k), (40, 40, 40))
    for i, t in enumerate(tiles):
        sheet.paste(t.resize((w * k, h * k), Image.Resampling.NEAREST), (i * (w * k + gap), 0))
    prefix = str(prompt[nid]["inputs"].get("filename_prefix", "edit")).replace("/", "_")
    path = out_dir / f"{prefix}_side_by_side.png"
    sheet.save(path, format="PNG")
    verdicts = backgrounds = None
    if scene_obj is not None and (w, h) == (64, 64):
        import numpy as np

        from ..toyworld import judge

        verdicts, backgrounds = [], []
        source = np.asarray(tiles[0])
        for t in tiles:
            a = np.asarray(t)
            found = judge.judge_image(a, background=scene_obj.background)
            verdicts.append([{k: o[k] for k in judge.ATTRS} for o in found])
            outside = judge.outside_objects([o.mask for o in scene_obj.objects] + [o["mask"] for o in found],
                                            a.shape[:2])
            try:
                backgrounds.append(judge.background_fidelity(a, source, outside))
            except ImportError:  # scikit-image is not installed (the pack's test extra has it)
                backgrounds.append(None)
    return path, verdicts, backgrounds


def describe_judged(objs: list) -> str:
    if not objs:
        return "no object"
    return " and ".join(f"a {o['size']} {o['colour']} {o['shape']} ({o['position']})" for o in objs)


def _prepare_references(references: list[str], image, input_dir: Path) -> list[str]:
    """Copies the reference pictures into ComfyUI's input folder (as the photo); returns their LoadImage names.
    Two different files with the same name (each other's, or the photo's) would overwrite one another there."""
    names: dict = {}
    if image is not None:
        names[Path(image).expanduser().name] = Path(image).expanduser().resolve()
    out = []
    for r in references:
        src = Path(r).expanduser().resolve()
        if names.get(src.name, src) != src:
            raise RunnerError(f"--reference {r!r} has the same file name as another picture of this run "
                              f"({names[src.name]}); rename one of them")
        names[src.name] = src
        out.append(prepare_image(src, input_dir, None))
    return out


def _copy_trained(res, prompt: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Copies the concept files the training nodes of *prompt* wrote (their output 2: a path, or a name in the
    pack's concept folder) into *out_dir*: ComfyUI's folders of a runner session are temporary."""
    from ..comfy_bridge import files as bridge_files

    copied = []
    for nid in (n for ct in TRAIN_NODES for n in nodes_of(prompt, ct)):
        try:
            name = res.value(nid, 2)
        except (KeyError, IndexError):
            continue
        if not isinstance(name, str) or not name:
            continue
        src = Path(name)
        if not src.is_absolute():
            try:
                src = Path(bridge_files.model_file_path("attention_edit_concepts", name, "", ""))
            except ValueError:
                pass
        if src.is_file():
            dst = out_dir / src.name
            shutil.copyfile(src, dst)  # Imagic's two steps share one file: the later (complete) copy wins
            if dst not in copied:
                copied.append(dst)
    return copied


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m attention_edit.runner",
        description="Runs an Attention Edit workflow (API format) headless, through ComfyUI's own executor.",
        epilog="Without --ckpt the embedded tiny test model (not Stable Diffusion) replaces the checkpoint loader, "
               "at 64x64 and 20 steps: a seconds-long smoke run on a CPU. Which one: --toy-weights, else the "
               f"checkpoint loader's \"_meta\": {{\"{TOY_WEIGHTS_META}\": ...}} in the workflow file (the SDXL and "
               "SD2.x workflows name the random SDXL (128x128) / SD2.x v-prediction test models), else ToyWorld. "
               "Shipped workflows: "
               + ", ".join(list_workflows()))
    p.add_argument("workflow", nargs="?", help="a shipped workflow name (see --list) or a path to an API-format JSON")
    p.add_argument("--list", action="store_true", help="list the shipped workflows and exit")
    p.add_argument("--image", help="the photo to edit (default without --ckpt: a rendered ToyWorld scene for the "
                                   "P2P/AdapEdit workflows, else scikit-image's cat photo 'chelsea')")
    p.add_argument("--photo", action="store_true", help="edit scikit-image's cat photo instead of the default "
                                                        "ToyWorld scene")
    p.add_argument("--scene", nargs="?", const=DEFAULT_SCENE, metavar="CAPTION",
                   help=f"render this ToyWorld caption as the photo (default caption: {DEFAULT_SCENE!r}); the "
                        "source prompt defaults to it; give --edited-prompt too")
    p.add_argument("--source-prompt", help="a prompt describing the photo (AE_InvertImage)")
    p.add_argument("--edited-prompt", help="the edited prompt (AE_P2PEdit); several: one per line")
    p.add_argument("--mode", choices=["auto", "replace", "refine"], help="AE_P2PEdit's mode")
    p.add_argument("--ckpt", help="a real Stable Diffusion 1.x checkpoint (.safetensors; SD2.x / SDXL for the "
                                  "*_sd2 / *_sdxl workflows), loaded by CheckpointLoaderSimple (default: the "
                                  "embedded tiny test model)")
    p.add_argument("--seed", type=int, help="seed inputs of the workflow and torch's global seed (the shipped "
                                            "workflows are deterministic: inversion draws no noise)")
    p.add_argument("--steps", type=int, help="inversion and edit steps (default: the workflow's, 50; 20 with the "
                                             "tiny model)")
    p.add_argument("--num-inner-steps", type=int, help="null-text optimisation iterations per step (default 10)")
    from ..comfy_bridge.sampling import INVERSION_METHODS

    p.add_argument("--method", choices=list(INVERSION_METHODS), help="AE_InvertImage's inversion method")
    p.add_argument("--reference", action="append", metavar="PATH",
                   help="a picture of the concept for concept-training workflows (custom_edit_*); repeat it for "
                        "3-5 pictures (default: the photo itself, a smoke run)")
    p.add_argument("--train-steps", type=int, help="training steps of the concept-training nodes (default: the "
                                                   f"workflow's; at most {TOY_TRAIN_STEPS} with the tiny model)")
    p.add_argument("--size", help="resize (centre crop) the photo to N or WIDTHxHEIGHT pixels, multiples of 8 "
                                  "(default: the workflow's 512x512; 64x64 with the tiny model, 128x128 with the "
                                  "SDXL test model)")
    p.add_argument("--out", default="out", help="folder for the output PNGs (default: ./out)")
    p.add_argument("--toy-weights", choices=list(TOY_CHOICES),
                   help="the tiny model's weights (AE_ToyWorldLoader's choice; default: the workflow's checkpoint "
                        f"loader's _meta {TOY_WEIGHTS_META!r}, e.g. the random SDXL model for p2p_word_swap_sdxl, "
                        "else shipped if present, else random)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is available")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for the tiny model, else torch's)")
    p.add_argument("--verbose", "-v", action="store_true", help="show ComfyUI's log")
    return p


def missing_model_hint(message: str) -> str | None:
    """What to do when a workflow stopped because a model file is missing (ComfyUI: "ckpt_name ... not in []")."""
    if "not in" not in message or not any(k in message for k in ("ckpt_name", "unet_name", "checkpoint")):
        return None
    return (f"no such model file: pass --ckpt PATH (an SD1.x .safetensors checkpoint), or run without --ckpt to use "
            f"the pack's own tiny model: the runner then replaces every {CHECKPOINT_LOADER} by {TOY_LOADER} "
            f"('ToyWorld Model Loader (Attention Edit)'); in the ComfyUI editor, put {TOY_LOADER} where the "
            f"checkpoint loader was")


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    return msg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for name in list_workflows():
            desc = ""
            try:
                wf = load_workflow(name)
                types = list(dict.fromkeys(n["class_type"] for n in wf.values()))
                desc = "  (" + ", ".join(types) + ")"
            except RunnerError:
                pass
            print(f"{name}{desc}")
        return 0
    if not args.workflow:
        build_parser().print_usage(sys.stderr)
        print("error: give a workflow name or path (see --list)", file=sys.stderr)
        return 2
    _install_quiet_logging(args.verbose)
    from .host import WorkflowError, WorkflowInterrupted

    t0 = time.perf_counter()
    try:
        path = workflow_path(args.workflow)
        print(f"[attention_edit] workflow: {path}")
        res = run(str(path), RunOptions(
            image=args.image, source_prompt=args.source_prompt, edited_prompt=args.edited_prompt, mode=args.mode,
            ckpt=args.ckpt, seed=args.seed, steps=args.steps, num_inner_steps=args.num_inner_steps,
            method=args.method, size=args.size, out=args.out, toy_weights=args.toy_weights,
            cpu=True if args.cpu else None, threads=args.threads, references=args.reference,
            train_steps=args.train_steps, scene=args.scene, photo=args.photo))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except WorkflowInterrupted as exc:
        print(f"error: the workflow was interrupted ({_one_line(exc)})", file=sys.stderr)
        return 1
    except (RunnerError, WorkflowError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        hint = missing_model_hint(str(exc))
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 1
    except Exception as exc:  # anything else: still one message, the traceback only with --verbose
        if args.verbose:
            raise
        print(f"error: {type(exc).__name__}: {_one_line(exc)} (run with --verbose for the traceback)", file=sys.stderr)
        return 1
    print(f"[attention_edit] wrote {len(res.files)} file(s):")
    for f in res.files:
        print(f"  {f}")
    if res.side_by_side is not None:
        print(f"[attention_edit] side by side (source | reconstruction | edit): {res.side_by_side}")
    if res.judged:
        names = ["source", "reconstruction"] + [f"edit {i}" if len(res.judged) > 3 else "edit"
                                                for i in range(1, len(res.judged) - 1)]
        bgs = res.background or [None] * len(res.judged)
        for name, objs, bg in zip(names, res.judged, bgs):
            extra = ""
            if name != "source":
                extra = ("; background (away from the objects) vs the source: PSNR "
                         f"{'identical' if bg[0] >= 100 else f'{bg[0]:.1f} dB'}, SSIM {bg[1]:.3f}" if bg else
                         "; background PSNR: install scikit-image to measure it")
            print(f"[attention_edit] judge: {name}: {describe_judged(objs)}{extra}")
    if res.trained:
        print("[attention_edit] trained concept file(s), copied from ComfyUI's models folder:")
        for f in res.trained:
            print(f"  {f}")
    print(f"[attention_edit] done in {res.total_seconds:.1f} s (workflow {res.seconds:.1f} s, "
          f"ComfyUI start-up {res.total_seconds - res.seconds:.1f} s; total {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
