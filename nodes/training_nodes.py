"""Nodes: learn a concept from 3-5 pictures (textual inversion, Custom Diffusion), load and export concepts.

Glue only: the training loops and file formats live in ``training/``. Training runs on the MODEL, CLIP and VAE
already in the graph (clones; the inputs are never changed), reports progress, and stops on /interrupt after
saving the best result so far (the run is then reported as interrupted; the saved file stays).

Both trainers take their inputs as lists (``is_input_list``), so the reference pictures can be one IMAGE batch or
the list output of core "Load Image Dataset from Folder" (pictures of different sizes are centre-cropped and
resized to ``resolution``).
"""
from __future__ import annotations

import os

from comfy_api.v0_0_2 import io, ui

from ..comfy_bridge import files
from ..comfy_bridge import progress as bridge_progress
from ..comfy_bridge import sampling as bridge_sampling
from ..comfy_bridge import text as bridge_text
from ..comfy_bridge import training as bridge_training
from ..training import custom_diffusion as cd
from ..training import textual_inversion as ti
from ..training.common import TEMPLATES, build_pool, collect_images, loss_plot, prepare_pixels
from ..training.fit import TrainingInterrupted
from .common import (CATEGORY, Progress, check_finite_result, finite, model_file_path,
                     register_model_folder, supported)

#: folder_paths name of the pack's concept folder (models/attention_edit_concepts/)
CONCEPTS = "attention_edit_concepts"
CONCEPT_EXTENSIONS = {".safetensors", ".bin", ".pt", ".ckpt"}
NONE_YET = "(no concepts yet)"


def register_concept_folder() -> str:
    """Registers models/attention_edit_concepts with folder_paths and returns its default path."""
    return register_model_folder(CONCEPTS, CONCEPT_EXTENSIONS)

register_concept_folder()


def concepts_dir() -> str:
    register_concept_folder()
    return files.folder_path(CONCEPTS)


def embeddings_dir() -> str:
    return files.embeddings_dir()


def _concept_files() -> list:
    register_concept_folder()
    names = files.folder_files(CONCEPTS)
    # diffusers token files (<new1>.safetensors) are read with the weights file next to them: list only that one
    weights_dirs = {os.path.dirname(f) for f in names if os.path.basename(f) in (cd.DIFFUSERS_WEIGHTS_NAME,
                                                                               "pytorch_custom_diffusion_weights.bin")}
    keep = [f for f in names if not os.path.basename(f).startswith(".") and
            (os.path.dirname(f) not in weights_dirs or os.path.basename(f).startswith("pytorch_custom_diffusion"))]
    return keep or [NONE_YET]


def _concept_path(name: str) -> str:
    register_concept_folder()
    return model_file_path(CONCEPTS, name, NONE_YET, "train one with Train Custom Diffusion, or put a diffusers / "
                                                     "delta.bin file there")


def _one(x):
    """A scalar input of a list-input node: the first item."""
    if isinstance(x, list):
        return x[0] if x else None
    return x


# --------------------------------------------------------------------------------------------------------------
# glue: bridge (model, tokenizer, session, files) + the pure trainers in training/
# --------------------------------------------------------------------------------------------------------------

def _pixels(images, resolution, vae, what="reference images", size=None):
    factor = bridge_training.vae_factor(vae)
    return prepare_pixels(collect_images(images, what), 0 if size else int(resolution), multiple=factor, size=size)


def _pool(pixels, vae, model, augment: str, variants: int, seed: int):
    return build_pool(pixels, lambda px: bridge_training.encode_images(vae, model, px), augment, variants, seed)


def textual_inversion(model, clip, vae, images, name: str, initializer: str, num_vectors: int = 1, steps: int = 1000,
                      learning_rate: float = 5e-3, batch_size: int = 1, seed: int = 0, templates: str = "object",
                      resolution: int = 512, gradient_checkpointing: bool = False, progress=None,
                      weight_decay: float = 1e-2) -> ti.TIResult:
    """Glue of Train Textual Inversion: checks the word, prepares and encodes the pictures once, and trains the
    vectors (training.textual_inversion) in a session on a clone of ``model``. ``model``/``clip``/``vae`` are not
    changed. Raises ValueError on bad input, TrainingInterrupted (with the best-so-far result) on interrupt."""
    name = files.validate_name(name, "placeholder name")
    bridge_text.check_new_token(clip, name, "placeholder name")
    num_vectors = int(num_vectors)
    if num_vectors < 1:
        raise ValueError("num_vectors must be at least 1")
    width = bridge_text.embedding_width(clip)
    init = bridge_text.token_rows(clip, initializer, num_vectors)
    pixels = _pixels(images, resolution, vae)
    pool = _pool(pixels, vae, model, "flip", 2, seed)
    enc = bridge_text.PromptEncoder(clip, name, num_vectors, width, bridge_sampling.model_pooled_width(model))
    settings = dict(initializer=initializer, resolution=int(resolution), images=int(pixels.shape[0]),
                    image_size=list(pixels.shape[-2:]))
    mp = bridge_training.training_clone(model)
    with bridge_training.TrainingSession(mp, enc.clip, gradient_checkpointing) as sess:
        return ti.train_textual_inversion(sess, enc, pool, init, name, steps=steps, learning_rate=learning_rate,
                                          batch_size=batch_size, seed=seed, templates=templates, progress=progress,
                                          weight_decay=weight_decay, settings=settings)


def save_embedding(folder: str, result: ti.TIResult, clip=None) -> str:
    """Writes the embedding file (SDXL: clip_l and clip_g tensors, from ``clip``'s encoders)."""
    path = files.file_in_folder(folder, files.validate_name(result.name, "embedding name") + ".safetensors")
    layout = [(ekey, w) for _, ekey, w in bridge_text.encoders(clip)] if clip is not None else None
    return files.save_safetensors(path, *ti.embedding_file(result, layout=layout))


def custom_diffusion(model, clip, vae, images, modifier_token: str = "<v1>", class_noun: str = "object",
                     initializer: str = "ktn", class_images=None, prior_loss_weight: float = 1.0,
                     mode: str = "crossattn_kv", steps: int = 500, learning_rate: float = 2e-5, batch_size: int = 2,
                     seed: int = 0, resolution: int = 512, augment: bool = True, gradient_checkpointing: bool = False,
                     progress=None, weight_decay: float = 1e-2, variants_per_image: int = 10) -> cd.CDResult:
    """Glue of Train Custom Diffusion: checks the token, prepares and encodes the pictures (and class pictures)
    once, wraps the trained weights of a clone of ``model`` as W + dW and trains them with the token
    (training.custom_diffusion). Raises ValueError on bad input, TrainingInterrupted on interrupt."""
    token = cd.validate_modifier_token(modifier_token)
    bridge_text.check_new_token(clip, token, "modifier token")
    keys = cd.trained_keys(bridge_training.parameter_shapes(model), mode)
    width = bridge_text.embedding_width(clip)
    init = bridge_text.token_rows(clip, initializer, 1)
    pixels = _pixels(images, resolution, vae)
    pool = _pool(pixels, vae, model, "rescale" if augment else "flip", variants_per_image, seed)
    class_pool = None
    if class_images is not None and (not isinstance(class_images, (list, tuple)) or len(class_images) > 0):
        cpx = _pixels(class_images, 0, vae, "class images", size=tuple(pixels.shape[-2:]))
        class_pool = _pool(cpx, vae, model, "flip", 2, seed + 1)
    enc = bridge_text.PromptEncoder(clip, token, 1, width, bridge_sampling.model_pooled_width(model))
    settings = dict(initializer=initializer, mode=mode, resolution=int(resolution), augment=bool(augment),
                    images=int(pixels.shape[0]), image_size=list(pixels.shape[-2:]),
                    text_encoders=[[ekey, w] for _, ekey, w in bridge_text.encoders(clip)])
    mp = bridge_training.training_clone(model)
    deltas = bridge_training.add_delta_wrappers(mp, model, keys)
    with bridge_training.TrainingSession(mp, enc.clip, gradient_checkpointing) as sess:
        return cd.train_custom_diffusion(sess, enc, pool, deltas, init, token, class_noun, class_pool,
                                         prior_loss_weight, steps=steps, learning_rate=learning_rate,
                                         batch_size=batch_size, seed=seed, progress=progress,
                                         weight_decay=weight_decay, settings=settings)


def save_concept(folder: str, name: str, concept) -> str:
    name = files.validate_name(name, "concept name")
    tensors, meta = cd.concept_file(concept)
    meta["name"] = name
    return files.save_safetensors(files.file_in_folder(folder, name + ".safetensors"), tensors, meta)


def load_concept(path: str) -> cd.Concept:
    """A concept file in any supported format, read through comfy_bridge.files (one clear message for a missing,
    empty, truncated, damaged or renamed file; NaN/inf tensors refused; .bin read with weights_only)."""
    what = "concept file"
    name = f"the concept file {os.path.basename(path)!r}"
    low = path.lower()
    if low.endswith(".safetensors"):
        tensors, meta = files.read_safetensors(path, what)
        token_files = []
        if not meta.get("format") == cd.FORMAT:
            token_files = _sibling_token_files(path)
        concept = cd.concept_from_safetensors(tensors, meta, name, token_files)
    elif low.endswith((".bin", ".pt", ".ckpt", ".pth")):
        concept = cd.concept_from_torch(files.read_tensor_file(path, what), name, _sibling_token_files(path))
    else:
        raise ValueError(f"{name}: unsupported file type (use .safetensors, .bin, .pt or .ckpt)")
    files.check_finite_tensors(concept.tokens, f"{name} (its modifier tokens)")
    return concept


def _sibling_token_files(path: str) -> list:
    """(tensors, token name) of the other .safetensors / .bin files next to a diffusers weights file (token files;
    the name is a safetensors file's ``token`` metadata, else its stem)."""
    out = []
    folder = os.path.dirname(path)
    for f in sorted(os.listdir(folder)):
        p = os.path.join(folder, f)
        if p == path or not os.path.isfile(p) or not f.endswith((".safetensors", ".bin")):
            continue
        try:
            if f.endswith(".safetensors"):
                sd, meta = files.read_safetensors(p, "token file", check_finite=False)
            else:
                sd, meta = files.read_tensor_file(p, "token file", check_finite=False), {}
        except ValueError:
            continue
        if isinstance(sd, dict):
            out.append((sd, meta.get("token") or os.path.splitext(f)[0]))
    return out


def resolve_concept(concept: cd.Concept, model, clip=None, what: str = "the concept file"):
    """(deltas, tokens) of ``concept`` matched to ``model`` (and ``clip``'s token width)."""
    width = bridge_text.embedding_width(clip) if clip is not None else None
    return cd.resolve_concept(concept, bridge_training.UNetFacts(model), width, what)


def apply_concept(model, clip, deltas: dict, tokens: dict, strength: float = 1.0):
    """(MODEL clone with the deltas as ("diff", (dW,)) weight patches at ``strength``, CLIP clone whose tokenizer
    knows the modifier tokens, bare in prompts or as ``embedding:<token>``). The inputs are unchanged."""
    m = bridge_training.patched_clone(model, {k: ("diff", (v,)) for k, v in deltas.items()}, strength) \
        if model is not None else None
    c = bridge_text.clip_with_embeddings(clip, tokens, bare_words=True) if clip is not None else None
    return m, c


def concept_layout(concept) -> list | None:
    """The text encoders [(tensor name, width)] a concept's tokens were trained for (recorded in its metadata;
    None for concepts that do not say: one encoder)."""
    import json

    raw = (concept.metadata or {}).get("train.text_encoders")
    try:
        layout = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    return [(str(k), int(w)) for k, w in layout] if layout else None


def export_diffusers(out_dir: str, model, deltas: dict, tokens: dict, layout=None) -> list:
    """Writes the diffusers format (training.custom_diffusion.diffusers_files; with a ``layout`` of several text
    encoders, SDXL, the token files in the clip_l / clip_g format) into ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    return [files.save_safetensors(files.file_in_folder(out_dir, fname), tensors, meta)
            for fname, tensors, meta in cd.diffusers_files(bridge_training.UNetFacts(model), deltas, tokens, layout)]


class AE_TrainTextualInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_TrainTextualInversion",
            display_name="Train Textual Inversion",
            category=f"{CATEGORY}/training",
            description=(
                "Learns a new word for a thing or a style from a few pictures (textual inversion, Gal et al. 2022): "
                "only the new word's embedding vectors are trained, the model is frozen. Saves "
                "embeddings/<name>.safetensors (use it as 'embedding:<name>' in any prompt) and returns a CLIP that "
                "knows it at once. Interrupting keeps and saves the best vectors so far."),
            is_input_list=True,
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model of the graph (SD1.x, SD2.x or SDXL); it is not changed."),
                io.Clip.Input("clip", tooltip="Its text encoder; it is not changed (the output CLIP is a clone)."),
                io.Vae.Input("vae", tooltip="Its VAE, to encode the reference pictures once."),
                io.Image.Input("images", tooltip="3-5 pictures of the concept: an IMAGE batch, or the list from "
                                                 "Load Image Dataset from Folder (mixed sizes are centre-cropped "
                                                 "and resized)."),
                io.String.Input("name", default="my_concept",
                                tooltip="The new word and the file name: letters, digits, '_', '-', '.'; it must "
                                        "not be a word CLIP already knows. An existing file of that name is "
                                        "replaced."),
                io.String.Input("initializer", default="object",
                                tooltip="Word(s) close to the concept, e.g. 'teapot' or 'watercolor'; their token "
                                        "embeddings start the new vectors."),
                io.Int.Input("num_vectors", default=1, min=1, max=16,
                             tooltip="Vectors per word: 1 (reference) is most editable; more capture more detail "
                                     "and use up more of the 75-token prompt."),
                io.Int.Input("steps", default=1000, min=1, max=100000,
                             tooltip="Optimisation steps (reference: 3000-6000 at 512 px on SD1.x)."),
                io.Float.Input("learning_rate", default=0.005, min=1e-6, max=1.0, step=1e-4,
                               tooltip="AdamW learning rate of the vectors (reference: 5e-3 at batch 2)."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Examples per step; memory grows with it."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the noise, timesteps, prompts and picture order."),
                io.Combo.Input("templates", options=list(TEMPLATES), default="object",
                               tooltip="object: prompts like 'a photo of a <word>'. style: prompts like 'a painting "
                                       "in the style of <word>'."),
                io.Int.Input("resolution", default=512, min=0, max=2048, step=8,
                             tooltip="Pictures are centre-cropped to a square and resized to this size (512 for "
                                     "SD1.5, 64 for ToyWorld). 0 keeps the first picture's size."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute UNet activations in the backward pass: much less memory, about "
                                         "a third slower."),
            ],
            outputs=[
                io.Clip.Output("clip_out", display_name="clip",
                               tooltip="A clone of the CLIP that finds the new embedding ('embedding:<name>')."),
                io.String.Output("word", tooltip="What to write in prompts: embedding:<name>."),
                io.String.Output("path", tooltip="The saved embedding file."),
                io.Image.Output("loss_plot", tooltip="The training loss per step (grey) and its running mean."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, images, name, initializer, num_vectors, steps, learning_rate, batch_size,
                seed, templates, resolution, gradient_checkpointing) -> io.NodeOutput:
        model, clip, vae = _one(model), _one(clip), _one(vae)
        finite("Train Textual Inversion", learning_rate=_one(learning_rate))
        supported("Train Textual Inversion", model, "train")
        name = files.validate_name(_one(name), "name")
        folder = embeddings_dir()
        path = files.file_in_folder(folder, name + ".safetensors")
        steps = int(_one(steps))
        try:
            res = textual_inversion(
                model, clip, vae, images, name, _one(initializer), num_vectors=_one(num_vectors), steps=steps,
                learning_rate=_one(learning_rate), batch_size=_one(batch_size), seed=_one(seed),
                templates=_one(templates), resolution=_one(resolution),
                gradient_checkpointing=bool(_one(gradient_checkpointing)), progress=Progress(steps))
        except TrainingInterrupted as stop:
            if stop.result.steps_done > 0:
                check_finite_result("Train Textual Inversion", {"vectors": stop.result.vectors}, "lower learning_rate")
                save_embedding(folder, stop.result, clip)
            raise bridge_progress.interrupted_error(str(stop)) from None
        check_finite_result("Train Textual Inversion", {"vectors": res.vectors},
                            f"Lower learning_rate (now {_one(learning_rate)}).")
        save_embedding(folder, res, clip)
        plot = loss_plot(res.losses, f"textual inversion '{name}': probe loss {res.probe_before:.4f} -> "
                                     f"{res.probe_after:.4f}")
        out_clip = bridge_text.clip_with_embeddings(clip, extra_dirs=[folder])
        return io.NodeOutput(out_clip, f"embedding:{name}", path, plot, ui=ui.PreviewImage(plot, cls=cls))


class AE_TrainCustomDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_TrainCustomDiffusion",
            display_name="Train Custom Diffusion",
            category=f"{CATEGORY}/training",
            description=(
                "Learns a concept from a few pictures with Custom Diffusion (Kumari et al. 2023): trains only the "
                "cross-attention key/value projections and a new modifier token ('photo of a <v1> wooden pot'), "
                "with prior preservation on class images. Saves one file to models/attention_edit_concepts/ and "
                "returns the MODEL and CLIP with the concept applied (clones). Interrupting keeps and saves the best "
                "result so far."),
            is_input_list=True,
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model of the graph (SD1.x, SD2.x or SDXL); it is not changed."),
                io.Clip.Input("clip", tooltip="Its text encoder; it is not changed."),
                io.Vae.Input("vae", tooltip="Its VAE, to encode the pictures once."),
                io.Image.Input("images", tooltip="3-5 pictures of the concept (IMAGE batch or a list from Load Image "
                                                 "Dataset from Folder; mixed sizes are centre-cropped and resized)."),
                io.String.Input("name", default="my_concept",
                                tooltip="File name of the concept (letters, digits, '_', '-', '.'); an existing file "
                                        "of that name is replaced."),
                io.String.Input("modifier_token", default="<v1>",
                                tooltip="The new word written before the class noun in prompts, e.g. '<v1>'. It "
                                        "must not be a word CLIP already knows."),
                io.String.Input("class_noun", default="object",
                                tooltip="What the concept is, with modifiers: 'wooden pot', 'cat'. Training prompts "
                                        "read 'photo of a <v1> wooden pot'; class prompts 'photo of a wooden pot'."),
                io.String.Input("initializer", default="ktn",
                                tooltip="Word whose token embedding starts the modifier token (reference: the rare "
                                        "token 'ktn')."),
                io.Image.Input("class_images", optional=True,
                               tooltip="Pictures of other things of the same class for prior preservation (the "
                                       "reference uses 200). Leave empty to train without a prior loss."),
                io.Float.Input("prior_loss_weight", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Weight of the class-image (prior preservation) loss (reference: 1.0)."),
                io.Combo.Input("train", options=list(cd.TRAIN_MODES), default="crossattn_kv",
                               tooltip="crossattn_kv: only attn2.to_k / to_v (reference). crossattn: all of attn2 "
                                       "(q, k, v, out)."),
                io.Int.Input("steps", default=500, min=1, max=100000,
                             tooltip="Optimisation steps (reference: 250 on 2 GPUs, 500 on one)."),
                io.Float.Input("learning_rate", default=2e-5, min=1e-8, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate (reference: 1e-5 x batch size x GPUs)."),
                io.Int.Input("batch_size", default=2, min=1, max=64,
                             tooltip="Concept pictures per step (plus as many class pictures)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the noise, timesteps, prompts, augmentation and picture order."),
                io.Int.Input("resolution", default=512, min=0, max=2048, step=8,
                             tooltip="Pictures are centre-cropped to a square and resized to this size (512 for "
                                     "SD1.5). 0 keeps the first picture's size."),
                io.Boolean.Input("augment", default=True,
                                 tooltip="Custom Diffusion's augmentation: random shrinking (loss masked to the "
                                         "picture, prompt 'a tiny ...') and enlarging ('a close-up ...'), and "
                                         "mirroring. Off: mirroring only."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute UNet activations in the backward pass: much less memory, about "
                                         "a third slower."),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="model", tooltip="A clone with the learned K/V deltas."),
                io.Clip.Output("clip_out", display_name="clip",
                               tooltip="A clone of the CLIP that knows the modifier token."),
                io.String.Output("concept", tooltip="The saved concept file (in models/attention_edit_concepts/)."),
                io.Image.Output("loss_plot", tooltip="The training loss per step (grey) and its running mean."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, images, name, modifier_token, class_noun, initializer, prior_loss_weight,
                train, steps, learning_rate, batch_size, seed, resolution, augment, gradient_checkpointing,
                class_images=None) -> io.NodeOutput:
        model, clip, vae = _one(model), _one(clip), _one(vae)
        finite("Train Custom Diffusion", learning_rate=_one(learning_rate), prior_loss_weight=_one(prior_loss_weight))
        supported("Train Custom Diffusion", model, "train")
        name = files.validate_name(_one(name), "name")
        folder = concepts_dir()
        files.file_in_folder(folder, name + ".safetensors")
        steps = int(_one(steps))
        try:
            res = custom_diffusion(
                model, clip, vae, images, modifier_token=_one(modifier_token), class_noun=_one(class_noun),
                initializer=_one(initializer), class_images=class_images,
                prior_loss_weight=_one(prior_loss_weight), mode=_one(train), steps=steps,
                learning_rate=_one(learning_rate), batch_size=_one(batch_size), seed=_one(seed),
                resolution=_one(resolution), augment=bool(_one(augment)),
                gradient_checkpointing=bool(_one(gradient_checkpointing)), progress=Progress(steps))
        except TrainingInterrupted as stop:
            if stop.result.steps_done > 0:
                check_finite_result("Train Custom Diffusion", {**stop.result.deltas, **stop.result.tokens},
                                    "lower learning_rate")
                save_concept(folder, name, stop.result)
            raise bridge_progress.interrupted_error(str(stop)) from None
        check_finite_result("Train Custom Diffusion", {**res.deltas, **res.tokens},
                            f"Lower learning_rate (now {_one(learning_rate)}).")
        path = save_concept(folder, name, res)
        m, c = apply_concept(model, clip, res.deltas, res.tokens)
        plot = loss_plot(res.losses, f"custom diffusion '{name}': probe loss {res.probe_before:.4f} -> "
                                     f"{res.probe_after:.4f}")
        return io.NodeOutput(m, c, os.path.relpath(path, folder), plot, ui=ui.PreviewImage(plot, cls=cls))


class AE_LoadCustomDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_LoadCustomDiffusion",
            display_name="Load Custom Diffusion Concept",
            category=f"{CATEGORY}/training",
            description=(
                "Applies a Custom Diffusion concept to MODEL (K/V weight patches on a clone) and CLIP (the modifier "
                "token; write it in prompts as it was trained, e.g. 'photo of a <v1> wooden pot'). Reads this "
                "pack's files, diffusers' pytorch_custom_diffusion_weights.safetensors (with the <new1>.safetensors "
                "token files next to it) and the original delta.bin, from models/attention_edit_concepts/."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the concept was trained for."),
                io.Clip.Input("clip", tooltip="Its text encoder."),
                io.Combo.Input("concept", options=_concept_files(),
                               tooltip="A concept file in models/attention_edit_concepts/ (subfolders allowed)."),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="Scale of the weight changes (1 = as trained; 0 = the token only)."),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="model", tooltip="A clone with the concept's weights."),
                io.Clip.Output("clip_out", display_name="clip", tooltip="A clone that knows the modifier token(s)."),
                io.String.Output("modifier_tokens", tooltip="The concept's modifier token(s), comma-separated."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, model, clip, concept, strength):
        try:
            return (concept, os.path.getmtime(_concept_path(concept)), strength)
        except Exception:
            return concept

    @classmethod
    def execute(cls, model, clip, concept, strength) -> io.NodeOutput:
        finite("Load Custom Diffusion Concept", strength=strength)
        supported("Load Custom Diffusion Concept", model, "train")
        path = _concept_path(concept)
        c = load_concept(path)
        deltas, tokens = resolve_concept(c, model, clip, what=f"concept {concept!r}")
        m, cl = apply_concept(model, clip, deltas, tokens, strength)
        return io.NodeOutput(m, cl, ", ".join(tokens))


class AE_ExportCustomDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_ExportCustomDiffusion",
            display_name="Export Custom Diffusion (diffusers)",
            category=f"{CATEGORY}/training",
            description=(
                "Writes a concept in the diffusers format (output/custom_diffusion/<folder>/"
                "pytorch_custom_diffusion_weights.safetensors with full K/V weights, and <token>.safetensors), "
                "for diffusers' load_attn_procs / load_textual_inversion."),
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The base model the concept belongs to (its weights are added to "
                                                "the deltas)."),
                io.Combo.Input("concept", options=_concept_files(),
                               tooltip="A concept file in models/attention_edit_concepts/."),
                io.String.Input("folder", default="",
                                tooltip="Output folder name under output/custom_diffusion/ (empty: the concept's "
                                        "name)."),
            ],
            outputs=[io.String.Output("path", tooltip="The folder written.")],
        )

    @classmethod
    def execute(cls, model, concept, folder) -> io.NodeOutput:
        supported("Export Custom Diffusion (diffusers)", model, "train")
        path = _concept_path(concept)
        stem = os.path.splitext(os.path.basename(concept))[0]
        name = files.validate_name(folder.strip() or stem, "folder name")
        out_dir = files.file_in_folder(files.output_subdir("custom_diffusion"), name)
        c = load_concept(path)
        deltas, tokens = resolve_concept(c, model, None, what=f"concept {concept!r}")
        export_diffusers(out_dir, model, deltas, tokens, layout=concept_layout(c))
        return io.NodeOutput(out_dir, ui={"text": [out_dir]})


MAX_PICTURES = 8


class AE_ReferencePictures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_ReferencePictures",
            display_name="Reference Pictures (Attention Edit)",
            category=f"{CATEGORY}/training",
            description=(
                "Collects the pictures of a concept for Train Textual Inversion / Train Custom Diffusion as a list: "
                "pictures of different sizes stay as they are (the trainers centre-crop and resize each), where core "
                "Image Batch would stretch them to the first one's size. Chain another one into 'more' for more "
                f"than {MAX_PICTURES} pictures."),
            is_input_list=True,
            inputs=[io.Image.Input("image_1", tooltip="A picture of the concept (or a batch of them).")] +
                   [io.Image.Input(f"image_{i}", optional=True, tooltip="Another picture of the concept.")
                    for i in range(2, MAX_PICTURES + 1)] +
                   [io.Image.Input("more", optional=True,
                                   tooltip="The pictures of another Reference Pictures node, put first.")],
            outputs=[io.Image.Output("images", is_output_list=True,
                                     tooltip="The pictures, one IMAGE per picture, for the trainers' 'images'.")],
        )

    @classmethod
    def execute(cls, image_1, more=None, **others) -> io.NodeOutput:
        pictures = []
        for x in [more] + [image_1] + [others.get(f"image_{i}") for i in range(2, MAX_PICTURES + 1)]:
            for item in (x or []):
                if item is None:
                    continue
                pictures.extend(item[i:i + 1] for i in range(item.shape[0]))
        if not pictures:
            raise ValueError("no picture was connected: connect Load Image to image_1")
        return io.NodeOutput(pictures)


NODES = [AE_TrainTextualInversion, AE_TrainCustomDiffusion, AE_LoadCustomDiffusion, AE_ExportCustomDiffusion,
         AE_ReferencePictures]
