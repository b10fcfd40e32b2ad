"""Nodes: Imagic (Kawar et al. 2023) - edit one real photo from a target text alone.

Glue only: the algorithm and the file format live in ``training/imagic.py``. The chain is

    Load Image + CLIP Text Encode (target text) -> Imagic 1: Optimise Embedding -> Imagic 2: Fine-tune Model
    -> Imagic 3: Interpolate (eta) -> core KSampler (with the fine-tuned MODEL) -> VAE Decode

or, to compare several eta, Imagic Eta Sweep -> KSampler -> VAE Decode -> Imagic Eta Grid. Sampling is ComfyUI's
own. Both training nodes work on clones (the graph's MODEL is never changed), report progress, and on /interrupt
save what was learned so far to models/attention_edit_imagic/<name>.safetensors before the run is reported as
interrupted; Load Imagic makes that file usable again.
"""
from __future__ import annotations

import os

from comfy_api.v0_0_2 import io, ui

from ..comfy_bridge import files
from ..comfy_bridge import progress as bridge_progress
from ..comfy_bridge import sampling as bridge_sampling
from ..comfy_bridge import training as bridge_training
from ..training import imagic as im
from ..training.common import loss_plot
from ..training.fit import TrainingInterrupted
from .common import (CATEGORY, Progress, check_finite_result, finite, model_file_path,
                     register_model_folder, supported)

#: the pack's custom type carrying an Imagic run (training.imagic.Imagic)
ImagicType = io.Custom("AE_IMAGIC")
#: folder_paths name of the Imagic folder (models/attention_edit_imagic/)
IMAGIC_FOLDER = "attention_edit_imagic"
NONE_YET = "(no Imagic files yet)"
SUBCATEGORY = f"{CATEGORY}/imagic"


def register_imagic_folder() -> str:
    """Registers models/attention_edit_imagic with folder_paths and returns its default path."""
    return register_model_folder(IMAGIC_FOLDER, {".safetensors"})

register_imagic_folder()


def imagic_dir() -> str:
    register_imagic_folder()
    return files.folder_path(IMAGIC_FOLDER)


def _imagic_files() -> list:
    register_imagic_folder()
    names = [f for f in files.folder_files(IMAGIC_FOLDER) if not os.path.basename(f).startswith(".")]
    return names or [NONE_YET]


def _imagic_path(name: str) -> str:
    register_imagic_folder()
    return model_file_path(IMAGIC_FOLDER, name, NONE_YET, "run 'Imagic 1: Optimise Embedding' first")


def _save(result: im.Imagic, name: str) -> str:
    name = files.validate_name(name or result.name, "Imagic name")
    path = files.file_in_folder(imagic_dir(), name + ".safetensors")
    return files.save_safetensors(path, *im.imagic_file(result, name))


def load_imagic(path: str) -> im.Imagic:
    """The Imagic result in ``path`` (read through comfy_bridge.files: clear errors for damaged files)."""
    tensors, meta = files.read_safetensors(path, "Imagic file")
    return im.imagic_from_file(tensors, meta, f"the Imagic file {os.path.basename(path)!r}")


def _photo_latent(model, vae, image):
    img = im.check_photo(image, bridge_training.vae_factor(vae))
    if vae is None:
        raise ValueError("no VAE was connected: connect the VAE of the checkpoint")
    latent = bridge_training.encode_image(vae, img)
    im.check_latent_channels(latent, bridge_sampling.latent_channels(model))
    return latent


def optimize_embedding(model, vae, image, target, name: str = "imagic", steps: int = 500, learning_rate: float = 1e-3,
                       seed: int = 0, gradient_checkpointing: bool = False, progress=None) -> im.Imagic:
    """Glue of Imagic 1: checks and encodes the photo and the target, trains e_opt on a clone of ``model``."""
    if image is None:
        raise ValueError("no photo was connected: Imagic edits one photo (Load Image)")
    e_tgt, pooled = im.target_embedding(target, bridge_training.context_dim(model))
    latent = _photo_latent(model, vae, image)
    x0 = bridge_training.model_latent(model, latent)
    mp = bridge_training.training_clone(model)
    with bridge_training.TrainingSession(mp, None, gradient_checkpointing, group="imagic") as sess:
        return im.optimize_embedding(sess, x0, latent, e_tgt, pooled, steps=steps, learning_rate=learning_rate,
                                     seed=seed, name=name, progress=progress,
                                     pooled_width=bridge_sampling.model_pooled_width(model))


def finetune(model, imagic, mode: str = "lora", rank: int = 8, steps: int = 500, learning_rate=None, seed: int = 0,
             gradient_checkpointing: bool = False, progress=None) -> im.Imagic:
    """Glue of Imagic 2: trainable LoRA adapters (or deltas) on a clone of ``model``, then the fine-tuning."""
    if not im.is_imagic(imagic):
        raise ValueError("connect the IMAGIC output of 'Imagic 1: Optimise Embedding' (or Load Imagic)")
    im.finetune_learning_rate(mode, learning_rate)
    if mode == "lora" and int(rank) < 1:
        raise ValueError(f"the LoRA rank must be at least 1, got {rank}")
    im.target_embedding([[imagic.e_opt, {}]], bridge_training.context_dim(model), "optimised embedding (e_opt)")
    check_imagic_model(imagic, model)
    im.check_latent_channels(imagic.photo_latent, bridge_sampling.latent_channels(model))
    x0 = bridge_training.model_latent(model, imagic.photo_latent)
    keys = im.trained_keys(bridge_training.weight_keys(model), mode)
    mp = bridge_training.training_clone(model)
    if mode == "lora":
        params, constants = bridge_training.add_lora_adapters(mp, model, keys, int(rank), seed)
    else:
        deltas = bridge_training.add_delta_wrappers(mp, model, keys)
        params, constants = {im.file_key(k): v for k, v in deltas.items()}, {}
    with bridge_training.TrainingSession(mp, None, gradient_checkpointing, group="imagic") as sess:
        return im.finetune(sess, x0, imagic, params, constants, mode=mode, rank=rank, steps=steps,
                           learning_rate=learning_rate, seed=seed, progress=progress, trained_tensors=len(keys))


def check_imagic_model(imagic, model) -> None:
    """ValueError when an Imagic result was made for a model that takes a pooled text vector (SDXL) and ``model``
    does not, or the other way round."""
    want, have = imagic.pooled_width, bridge_sampling.model_pooled_width(model)
    if want != have:
        made = "an SDXL model" if want else "a model without pooled text conditioning (SD1.x / SD2.x)"
        raise ValueError(f"this Imagic result was made with {made}, but the MODEL connected here "
                         f"{'takes a pooled text vector (SDXL)' if have else 'does not take one'}: use the "
                         "checkpoint of step 1")


def apply_imagic(model, imagic_or_unet, strength: float = 1.0, what: str = "the Imagic result"):
    """A clone of ``model`` with the fine-tuned change as weight patches at ``strength`` (made by ComfyUI's LoRA
    loader; ValueError naming the keys that do not fit). An embedding-only result gives a plain clone."""
    unet = im.unet_tensors(imagic_or_unet)
    if not unet:
        return model.clone()
    tensors = {k: v for k, v in unet.items() if not k.startswith(im.PREFIX)}
    patches = bridge_training.lora_patches(model, tensors)
    im.check_patches(patches, unet, bridge_training.parameter_shapes(model), what)
    return bridge_training.patched_clone(model, patches, strength)


def _check_result(node: str, res: im.Imagic) -> None:
    check_finite_result(node, {"e_opt": res.e_opt, **res.unet}, "Lower learning_rate.")


def _interrupted(stop: TrainingInterrupted, key: str, name: str, node: str):
    if stop.result.metadata.get(key, 0) > 0:
        _check_result(node, stop.result)
        _save(stop.result, name)
    return bridge_progress.interrupted_error(str(stop))


_ETA_TOOLTIP = ("eta = 1 is the plain target text, eta = 0 the optimised embedding, which the fine-tuned model "
                "turns back into the photo; in between the photo changes towards the text. The paper picks 0.6-0.8 "
                "(default 0.7). Above 1 extrapolates past the target (the diffusers community pipeline's "
                f"alpha = 1.2); {im.ETA_MIN}-{im.ETA_MAX} accepted.")


class AE_ImagicOptimizeEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_ImagicOptimizeEmbedding",
            display_name="Imagic 1: Optimise Embedding",
            category=SUBCATEGORY,
            description=(
                "Imagic step 1 (Kawar et al. 2023): starting from the target text's embedding, optimises a text "
                "embedding e_opt with which the frozen model reconstructs the photo. Saves models/"
                "attention_edit_imagic/<name>.safetensors. Interrupting keeps and saves the best embedding so far."),
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.x-style); it is not changed."),
                io.Vae.Input("vae", tooltip="Its VAE, to encode the photo once."),
                io.Image.Input("image", tooltip="The ONE photo to edit; width and height must be multiples of 8 "
                                                "(512x512 suits SD1.5: use Image Scale)."),
                io.Conditioning.Input("target", tooltip="The target text, encoded with CLIP Text Encode: what the "
                                                        "photo should show after the edit, e.g. 'a photo of a "
                                                        "sitting dog'."),
                io.String.Input("name", default="imagic",
                                tooltip="File name of the result (letters, digits, '_', '-', '.'); an existing file "
                                        "of that name is replaced."),
                io.Int.Input("steps", default=im.EMBEDDING_DEFAULTS["steps"], min=1, max=100000,
                             tooltip="Adam steps (diffusers community pipeline: 500; paper: about 100 on Imagen). "
                                     "Few steps keep e_opt close to the target text, which makes the edit "
                                     "work."),
                io.Float.Input("learning_rate", default=im.EMBEDDING_DEFAULTS["learning_rate"], min=1e-7, max=1.0,
                               step=1e-4, tooltip="Adam learning rate of the embedding (reference: 1e-3)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the noise and timesteps (one random timestep per step)."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute UNet activations in the backward pass: less memory, about a "
                                         "third slower."),
            ],
            outputs=[
                ImagicType.Output("imagic", tooltip="e_tgt, e_opt and the photo: connect to Imagic 2: Fine-tune."),
                io.Image.Output("loss_plot", tooltip="The reconstruction loss per step (grey) and its running mean."),
                io.String.Output("path", tooltip="The saved file."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, image, target, name, steps, learning_rate, seed,
                gradient_checkpointing) -> io.NodeOutput:
        finite("Imagic 1: Optimise Embedding", learning_rate=learning_rate)
        supported("Imagic 1: Optimise Embedding", model, "imagic")
        name = files.validate_name(name, "name")
        files.file_in_folder(imagic_dir(), name + ".safetensors")
        try:
            res = optimize_embedding(model, vae, image, target, name, steps=steps, learning_rate=learning_rate,
                                     seed=seed, gradient_checkpointing=gradient_checkpointing,
                                     progress=Progress(int(steps)))
        except TrainingInterrupted as stop:
            raise _interrupted(stop, "embedding.steps_done", name, "Imagic 1: Optimise Embedding") from None
        _check_result("Imagic 1: Optimise Embedding", res)
        path = _save(res, name)
        m, d = res.metadata, res.distance()
        plot = loss_plot(res.embedding_losses, f"Imagic embedding '{name}': probe loss "
                                               f"{m['embedding.probe_loss_before']:.4f} -> "
                                               f"{m['embedding.probe_loss_after']:.4f}, |e_opt-e_tgt|/|e_tgt| "
                                               f"{d['relative_l2']:.3f}")
        return io.NodeOutput(res, plot, path, ui=ui.PreviewImage(plot, cls=cls))


class AE_ImagicFineTune(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_ImagicFineTune",
            display_name="Imagic 2: Fine-tune Model",
            category=SUBCATEGORY,
            description=(
                "Imagic step 2: fine-tunes the model on the photo with the optimised embedding fixed, so that e_opt "
                "reconstructs the photo exactly. The change is applied as weight patches to a clone (the input MODEL "
                "is not changed) and saved with the embedding in one file. Interrupting keeps and saves what was "
                "learned so far."),
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The same diffusion model as in step 1 (the checkpoint's, not a fine-tuned "
                                                "one: the file stores the change relative to it); it is not "
                                                "changed."),
                ImagicType.Input("imagic", tooltip="From Imagic 1: Optimise Embedding (or Load Imagic)."),
                io.Combo.Input("train", options=list(im.TRAIN_MODES), default=im.FINETUNE_DEFAULTS["mode"],
                               tooltip="lora: a low-rank adapter on every linear/conv weight of the UNet (small "
                                       "file, modest memory; the default). attention: full changes of the "
                                       "self/cross-attention projections only. full: every UNet weight, as in the "
                                       "paper (diffusers community pipeline: about 24 GB of GPU memory at 512 px, "
                                       "a file as large as the UNet in float32)."),
                io.Int.Input("rank", default=im.FINETUNE_DEFAULTS["rank"], min=1, max=256,
                             tooltip="lora only: the adapter's rank (alpha = rank)."),
                io.Int.Input("steps", default=im.FINETUNE_DEFAULTS["steps"], min=1, max=100000,
                             tooltip="Adam steps (diffusers community pipeline: 1000 on the full UNet; paper: about "
                                     "1500). 500 is our default for lora."),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.0, step=1e-6,
                               tooltip="Adam learning rate; 0 = automatic: 2e-6 for full and attention (diffusers "
                                       "community pipeline), 1e-4 for lora (usual LoRA rate; Imagic has no LoRA "
                                       "setting)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the noise, timesteps and adapter initialisation."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute UNet activations in the backward pass: less memory, about a "
                                         "third slower."),
                io.String.Input("name", default="", optional=True,
                                tooltip="File name of the result; empty = the name given in step 1 (that file is "
                                        "replaced by the complete result)."),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="model",
                                tooltip="A clone with the fine-tuned change; sample with it and Imagic 3's "
                                        "conditioning."),
                ImagicType.Output("imagic_out", display_name="imagic",
                                  tooltip="The complete result (embedding + fine-tuned change)."),
                io.String.Output("path", tooltip="The saved file."),
                io.Image.Output("loss_plot", tooltip="The fine-tuning loss per step (grey) and its running mean."),
            ],
        )

    @classmethod
    def execute(cls, model, imagic, train, rank, steps, learning_rate, seed, gradient_checkpointing,
                name="") -> io.NodeOutput:
        finite("Imagic 2: Fine-tune Model", learning_rate=learning_rate)
        supported("Imagic 2: Fine-tune Model", model, "imagic")
        if not im.is_imagic(imagic):
            raise ValueError("connect the imagic output of 'Imagic 1: Optimise Embedding' or 'Load Imagic'")
        name = files.validate_name((name or "").strip() or imagic.name or "imagic", "name")
        files.file_in_folder(imagic_dir(), name + ".safetensors")
        try:
            res = finetune(model, imagic, mode=train, rank=rank, steps=steps, learning_rate=learning_rate,
                           seed=seed, gradient_checkpointing=gradient_checkpointing, progress=Progress(int(steps)))
        except TrainingInterrupted as stop:
            raise _interrupted(stop, "finetune.steps_done", name, "Imagic 2: Fine-tune Model") from None
        _check_result("Imagic 2: Fine-tune Model", res)
        path = _save(res, name)
        out = apply_imagic(model, res)
        m = res.metadata
        plot = loss_plot(res.finetune_losses, f"Imagic fine-tuning ({train}) '{name}': probe loss "
                                              f"{m['finetune.probe_loss_before']:.4f} -> "
                                              f"{m['finetune.probe_loss_after']:.4f}")
        return io.NodeOutput(out, res, path, plot, ui=ui.PreviewImage(plot, cls=cls))


class AE_ImagicInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_ImagicInterpolate",
            display_name="Imagic 3: Interpolate (eta)",
            category=SUBCATEGORY,
            description=(
                "Imagic step 3: the conditioning eta * e_tgt + (1 - eta) * e_opt. Use it as the positive "
                "conditioning of a KSampler with the fine-tuned MODEL (negative: CLIP Text Encode of an empty "
                "text; the reference samples at CFG 7.5, 50 steps)."),
            inputs=[
                ImagicType.Input("imagic", tooltip="From Imagic 2 (or 1, or Load Imagic)."),
                io.Float.Input("eta", default=im.ETA_DEFAULT, min=im.ETA_MIN, max=im.ETA_MAX, step=0.01,
                               tooltip=_ETA_TOOLTIP),
                io.Conditioning.Input("target", optional=True,
                                      tooltip="Optional: another encoding of the target text to use as e_tgt (e.g. "
                                              "other wording); it must have as many tokens (77 per chunk) as the "
                                              "one step 1 was given. Unconnected: step 1's target."),
            ],
            outputs=[io.Conditioning.Output("conditioning", tooltip="The interpolated text embedding.")],
        )

    @classmethod
    def execute(cls, imagic, eta, target=None) -> io.NodeOutput:
        finite("Imagic 3: Interpolate", eta=eta)
        return io.NodeOutput(im.conditioning(imagic, eta, target))


class AE_ImagicEtaSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_ImagicEtaSweep",
            display_name="Imagic Eta Sweep",
            category=SUBCATEGORY,
            description=(
                "Several eta at once, to pick the best: a batch of conditionings (one per eta) and a batch of empty "
                "latents of the photo's size that all get the same noise. Connect both to a KSampler with the "
                "fine-tuned MODEL, decode, and lay the images out with Imagic Eta Grid."),
            inputs=[
                ImagicType.Input("imagic", tooltip="From Imagic 2 (or Load Imagic)."),
                io.String.Input("etas", default="0, 0.6, 0.7, 0.8, 0.9, 1",
                                tooltip="eta values separated by commas. 0 should give back the photo (a check of "
                                        "the fine-tuning), 1 the plain target text, the paper's edits are at "
                                        f"0.6-0.8; {im.ETA_MIN}-{im.ETA_MAX} accepted."),
                io.Conditioning.Input("target", optional=True,
                                      tooltip="Optional: another encoding of the target text (same token count)."),
            ],
            outputs=[
                io.Conditioning.Output("positive", tooltip="One conditioning row per eta."),
                io.Latent.Output("latent", tooltip="Empty latents of the photo's size, one per eta, all with the "
                                                   "same noise (batch_index 0)."),
                io.String.Output("etas_out", display_name="etas", tooltip="The eta values, for Imagic Eta Grid."),
            ],
        )

    @classmethod
    def execute(cls, imagic, etas, target=None) -> io.NodeOutput:
        values = im.parse_etas(etas)
        cond, latent = im.sweep(imagic, values, target)
        return io.NodeOutput(cond, latent, ", ".join(f"{v:g}" for v in values))


class AE_ImagicEtaGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_ImagicEtaGrid",
            display_name="Imagic Eta Grid",
            category=SUBCATEGORY,
            description="Lays out the decoded images of an eta sweep side by side, each labelled with its eta.",
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The decoded images of the sweep (VAE Decode of the KSampler)."),
                io.String.Input("etas", default="0, 0.6, 0.7, 0.8, 0.9, 1",
                                tooltip="Connect the sweep's etas output (one value per image)."),
                io.Int.Input("columns", default=0, min=0, max=64, tooltip="Images per row; 0 = up to 8."),
            ],
            outputs=[io.Image.Output("grid", tooltip="The labelled grid.")],
        )

    @classmethod
    def execute(cls, images, etas, columns) -> io.NodeOutput:
        grid = im.eta_grid(images, im.parse_etas(etas, max_count=10000), columns)
        return io.NodeOutput(grid, ui=ui.PreviewImage(grid, cls=cls))


class AE_ImagicLoad(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_ImagicLoad",
            display_name="Load Imagic",
            category=SUBCATEGORY,
            description=(
                "Loads a saved Imagic result from models/attention_edit_imagic/: the MODEL with the fine-tuned "
                "change (a clone; none for a file saved after step 1 only) and the embeddings for Imagic 3 or the "
                "sweep. Also reads the files of interrupted runs."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the result was made with."),
                io.Combo.Input("imagic_file", options=_imagic_files(),
                               tooltip="A file in models/attention_edit_imagic/."),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="Scale of the fine-tuned change (1 = as trained)."),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="model", tooltip="A clone with the fine-tuned change."),
                ImagicType.Output("imagic", tooltip="The embeddings and the photo latent."),
                io.String.Output("stage", tooltip="'embedding' (step 1 only) or 'finetuned'."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, model, imagic_file, strength):
        try:
            return (imagic_file, os.path.getmtime(_imagic_path(imagic_file)), strength)
        except Exception:
            return imagic_file

    @classmethod
    def execute(cls, model, imagic_file, strength) -> io.NodeOutput:
        finite("Load Imagic", strength=strength)
        supported("Load Imagic", model, "imagic")
        res = load_imagic(_imagic_path(imagic_file))
        im.target_embedding([[res.e_opt, {}]], bridge_training.context_dim(model), f"embedding in {imagic_file!r}")
        check_imagic_model(res, model)
        out = apply_imagic(model, res, strength, what=f"Imagic file {imagic_file!r}")
        return io.NodeOutput(out, res, res.stage)


NODES = [AE_ImagicOptimizeEmbedding, AE_ImagicFineTune, AE_ImagicInterpolate, AE_ImagicEtaSweep, AE_ImagicEtaGrid,
         AE_ImagicLoad]
