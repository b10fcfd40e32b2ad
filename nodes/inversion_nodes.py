"""Node: invert a real photo (DDIM, null-text or negative-prompt inversion)."""
from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ..comfy_bridge import files
from ..comfy_bridge import sampling as bridge_sampling
from ..comfy_bridge import text as bridge_text
from ..comfy_bridge.sampling import P2P_DDIM, replay_schedule, schedule_names
from ..inversion import store
from ..inversion.core import DIRECT, METHODS, NULL_TEXT_MODES, inversion_advice
from .common import (CATEGORY, Inversion, Progress, check_finite_latent, edit_length,
                     empty_conditioning, encode, finite, latent_samples, supported)


class AE_InvertImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_InvertImage",
            display_name="Invert Image (Direct / Null-text / DDIM)",
            category=f"{CATEGORY}/inversion",
            description=(
                "Inverts a photo so it can be edited with Prompt-to-Prompt: DDIM inversion with the source prompt, "
                "then (direct, the default) the path kept so the edit's source branch is put back on it every step "
                "(Direct Inversion, Ju et al. 2023: the photo comes back exactly, no optimisation), or (null_text) "
                "per-step optimisation of the unconditional embedding so that sampling at the given CFG scale "
                "reconstructs the photo (Mokady et al. 2022), or (negative_prompt) the fast negative-prompt "
                "inversion (Miyake et al. 2023). One inversion serves many edits."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (an SD1.x, SD2.x or SDXL checkpoint, epsilon or "
                                                "v-prediction, or a Flux.1 dev / schnell model)."),
                io.Clip.Input("clip", tooltip="The text encoder of the same checkpoint."),
                io.Latent.Input("latent", tooltip="The photo, encoded with VAE Encode (one image)."),
                io.String.Input("source_prompt", multiline=True, default="a photo of a cat",
                                tooltip="A prompt that describes the photo. The edited prompts are compared with "
                                        "it word by word."),
                io.Combo.Input("method", options=list(METHODS), default=DIRECT,
                               tooltip="direct: Direct Inversion (PnP Inversion): DDIM inversion whose path is "
                                       "kept, and the edit's source branch is put back on it every step, so the "
                                       "photo comes back exactly with no optimisation (fast; every model, Flux "
                                       "included). null_text: optimises a null-text embedding per step (slowest). "
                                       "negative_prompt: DDIM inversion + the source prompt as negative prompt "
                                       "(fast, less faithful). ddim: plain DDIM inversion (fast; reconstructs "
                                       "poorly at CFG > 1). Flux and SD3 (rectified flow): direct, rf_solver "
                                       "(RF-Solver's second-order step, 2 model calls per step), fireflow (the same "
                                       "accuracy at about 1 call per step) or rf_euler (plain Euler)."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="Sampling steps of the inversion; the edit replays exactly these (reference: "
                                     "50)."),
                io.Float.Input("cfg", default=7.5, min=1.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance scale the inversion is made for and the edit "
                                       "uses (reference: 7.5). SD3: the edit's CFG scale (the inversion walks the "
                                       "conditional flow; SD3.5 is sampled at about 4.5). Not used on Flux: its "
                                       "guidance is the conditioning's (3.5 unless a FluxGuidance node sets it)."),
                io.Combo.Input("scheduler", options=schedule_names(), default=P2P_DDIM,
                               tooltip="Sigma schedule. p2p_ddim: the reference's DDIM timesteps (980, 960, ..., 0 "
                                       "at 50 steps), exactly 'steps' steps. The others are ComfyUI's schedulers."),
                io.Int.Input("num_inner_steps", default=10, min=1, max=100,
                             tooltip="null_text only: Adam iterations per step at most (reference: 10)."),
                io.Float.Input("early_stop_epsilon", default=1e-5, min=0.0, max=1.0, step=1e-6,
                               tooltip="null_text only: stop a step's optimisation when the loss falls below "
                                       "epsilon + 1e-3 * step / steps (reference: 1e-5 + 2e-5 * step at 50 "
                                       "steps)."),
                io.Float.Input("learning_rate", default=1e-2, min=0.0, max=1.0, step=1e-4,
                               tooltip="null_text only: Adam learning rate at the first step; decays linearly "
                                       "to half at the last (reference: 1e-2)."),
                io.Combo.Input("null_text_mode", options=list(NULL_TEXT_MODES), default="fast", optional=True,
                               tooltip="null_text only: the attention kernel of the optimisation. fast: PyTorch's "
                                       "fused attention (forward and backward); reference: the host's (on the "
                                       "CPU ComfyUI's sub-quadratic one). Both run the public notebook's loop; "
                                       "the kernels round differently, so the embeddings can end a little apart "
                                       "at the same reconstruction error (README: Figures, null-text speed)."),
            ],
            outputs=[
                Inversion.Output("inversion", tooltip="The inversion (x_T, schedule, null-text embeddings, source "
                                                      "prompt); connect it to Prompt-to-Prompt Edit Sampler."),
                io.Latent.Output("noise_latent", tooltip="x_T, the inverted latent, as a LATENT."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, latent, source_prompt, method, steps, cfg, scheduler, num_inner_steps,
                early_stop_epsilon, learning_rate, null_text_mode="fast") -> io.NodeOutput:
        finite("Invert Image", cfg=cfg, early_stop_epsilon=early_stop_epsilon, learning_rate=learning_rate)
        supported("Invert Image", model, "edit")
        x = latent_samples(latent)
        inv = invert_image(model, clip, x, source_prompt, method=method, steps=steps, cfg=cfg, scheduler=scheduler,
                           num_inner_steps=num_inner_steps, early_stop_epsilon=early_stop_epsilon,
                           learning_rate=learning_rate, null_text_mode=null_text_mode or "fast",
                           progress=Progress(steps * (2 if method == "null_text" else 1)))
        return io.NodeOutput(inv, {"samples": inv.x_T.clone()}, ui=advice_ui("Invert Image", steps, cfg, method))


def advice_ui(node: str, steps: int, cfg: float, method: str):
    """The node's UI text (and a log warning) for settings where inversion is not meaningful
    (inversion.core.inversion_advice); None when there is nothing to say."""
    import logging

    notes = inversion_advice(steps, cfg, method)
    for n in notes:
        logging.warning(f"[Attention Edit] {node}: {n}")
    return {"text": [f"{node}: {n}" for n in notes]} if notes else None


def invert_image(model, clip, latent, source_prompt: str, method: str = DIRECT, steps: int = 50,
                 cfg: float = 7.5, scheduler: str = P2P_DDIM, num_inner_steps: int = 10,
                 early_stop_epsilon: float = 1e-5, learning_rate: float = 1e-2, progress=None,
                 null_text_mode: str = "fast"):
    """Glue of Invert Image: encodes the prompts, builds the schedule and runs ``inversion.core.invert`` in
    ComfyUI's sampler. latent: [1, C, H, W] LATENT samples. Returns the Inversion; ValueError when the result is not
    finite."""
    src = encode(clip, source_prompt, "source prompt")
    empty = empty_conditioning(clip, edit_length(clip, [source_prompt]))
    sigmas = replay_schedule(model, scheduler, steps)
    inv = bridge_sampling.invert(model, latent, src, empty, sigmas, method=method, guidance_scale=cfg,
                 num_inner_steps=num_inner_steps, early_stop_epsilon=early_stop_epsilon,
                 learning_rate=learning_rate, source_prompt=source_prompt, scheduler=scheduler, progress=progress,
                 null_text_mode=null_text_mode)
    check_finite_latent("Invert Image", "check the model and the photo's latent (and lower the learning_rate)",
                        inv.x_T)
    return inv


class AE_InvertImageBatch(io.ComfyNode):
    """Invert Images (Batch): Invert Image for a LATENT batch, as one batched optimisation (faster per photo where
    the model is small for the device: inversion.core.null_text_loop). Outputs lists: every node after it runs once
    per photo."""

    @classmethod
    def define_schema(cls):
        base = AE_InvertImage.define_schema()
        inputs = []
        for inp in base.inputs:
            if inp.id == "latent":
                inp = io.Latent.Input("latent", tooltip="The photos, encoded with VAE Encode as one batch (all the "
                                                        "same size), e.g. from a batch of loaded images.")
            elif inp.id == "source_prompt":
                inp = io.String.Input("source_prompt", multiline=True, default="a photo of a cat",
                                      tooltip="One line per photo, in batch order, each describing its photo; or "
                                              "one line for all of them. The edited prompts are compared with "
                                              "the photo's line word by word.")
            inputs.append(inp)
        return io.Schema(
            node_id="AE_InvertImageBatch",
            display_name="Invert Images (Batch)",
            category=f"{CATEGORY}/inversion",
            description=(
                "Invert Image for several photos at once: each photo gets the inversion loop it gets alone (same "
                "steps; its own null-text embedding, Adam and early stop; floating-point rounding aside), computed "
                "as one batch, which is faster per photo when the model is small for the device. Its outputs are "
                "lists: every node after it (Prompt-to-Prompt Edit Sampler, Save Inversion...) runs once per photo."),
            inputs=inputs,
            outputs=[
                Inversion.Output("inversion", tooltip="One inversion per photo (a list).", is_output_list=True),
                io.Latent.Output("noise_latent", tooltip="x_T of each photo (a list of LATENTs).",
                                 is_output_list=True),
            ],
        )

    @classmethod
    def execute(cls, model, clip, latent, source_prompt, method, steps, cfg, scheduler, num_inner_steps,
                early_stop_epsilon, learning_rate, null_text_mode="fast") -> io.NodeOutput:
        finite("Invert Images (Batch)", cfg=cfg, early_stop_epsilon=early_stop_epsilon, learning_rate=learning_rate)
        supported("Invert Images (Batch)", model, "edit")
        x = latent_samples(latent)
        prompts = batch_prompts(source_prompt, x.shape[0])
        invs = invert_images(model, clip, x, prompts, method=method, steps=steps, cfg=cfg, scheduler=scheduler,
                             num_inner_steps=num_inner_steps, early_stop_epsilon=early_stop_epsilon,
                             learning_rate=learning_rate, null_text_mode=null_text_mode or "fast",
                             progress=Progress(steps * (2 if method == "null_text" else 1)))
        return io.NodeOutput(invs, [{"samples": inv.x_T.clone()} for inv in invs],
                             ui=advice_ui("Invert Images (Batch)", steps, cfg, method))


def batch_prompts(text: str, n: int) -> list:
    """The source prompts of a batch of ``n`` photos: one non-empty line per photo, or one line for all. ValueError
    naming both counts otherwise."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        raise ValueError("the source prompt is empty; type one line per photo describing it (or one for all)")
    if len(lines) == 1:
        return lines * n
    if len(lines) != n:
        raise ValueError(f"the source prompt has {len(lines)} lines but the latent batch has {n} photos; give one "
                         f"line per photo in batch order, or a single line for all of them")
    return lines


def invert_images(model, clip, latent, prompts: list, method: str = DIRECT, steps: int = 50,
                  cfg: float = 7.5, scheduler: str = P2P_DDIM, num_inner_steps: int = 10,
                  early_stop_epsilon: float = 1e-5, learning_rate: float = 1e-2, progress=None,
                  null_text_mode: str = "fast") -> list:
    """Glue of Invert Images (Batch): latent [B, C, H, W] LATENT samples, one prompt per image; returns B
    inversions (``inversion.core.invert_batch``). ValueError when a result is not finite."""
    # one sequence length for the batch (T5: a long prompt makes all 512)
    L = edit_length(clip, prompts)
    srcs = [encode(clip, p, f"source prompt of photo {k + 1}", seq_len=L) for k, p in enumerate(prompts)]
    empty = empty_conditioning(clip, L)
    sigmas = replay_schedule(model, scheduler, steps)
    invs = bridge_sampling.invert_batch(
        model, latent, srcs, empty, sigmas, method=method, guidance_scale=cfg, num_inner_steps=num_inner_steps,
        early_stop_epsilon=early_stop_epsilon, learning_rate=learning_rate, source_prompts=prompts,
        scheduler=scheduler, progress=progress, null_text_mode=null_text_mode)
    for k, inv in enumerate(invs):
        check_finite_latent("Invert Images (Batch)", f"photo {k + 1}: check the model and the photo's latent (and "
                            "lower the learning_rate)", inv.x_T)
    return invs


def _inversion_dir() -> str:
    return files.output_subdir("inversions")


def _inversion_files() -> list:
    d = _inversion_dir()
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors")) if os.path.isdir(d) else []
    return files or ["(none saved yet)"]


class AE_SaveInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_SaveInversion",
            display_name="Save Inversion",
            category=f"{CATEGORY}/inversion",
            description="Saves an inversion (x_T, schedule, null-text embeddings, source prompt) as safetensors in "
                        "output/inversions/, so a slow null-text inversion can be reused in later sessions.",
            inputs=[
                Inversion.Input("inversion", tooltip="From Invert Image."),
                io.String.Input("filename_prefix", default="inversion",
                                tooltip="File name prefix; a counter is appended (prefix_00001.safetensors)."),
            ],
            outputs=[Inversion.Output("inversion_out", display_name="inversion", tooltip="The same inversion.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, inversion, filename_prefix) -> io.NodeOutput:
        prefix = files.safe_prefix(filename_prefix, "filename_prefix of Save Inversion", "inversion")
        d = _inversion_dir()
        os.makedirs(d, exist_ok=True)
        n = 1
        while os.path.exists(os.path.join(d, f"{prefix}_{n:05d}.safetensors")):
            n += 1
        path = files.file_in_folder(d, f"{prefix}_{n:05d}.safetensors")
        files.save_safetensors(path, *store.to_file(inversion))
        return io.NodeOutput(inversion, ui={"text": [os.path.basename(path)]})


class AE_LoadInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_LoadInversion",
            display_name="Load Inversion",
            category=f"{CATEGORY}/inversion",
            description="Loads an inversion saved by Save Inversion (from output/inversions/).",
            inputs=[io.Combo.Input("file", options=_inversion_files(),
                                   tooltip="A .safetensors file in output/inversions/.")],
            outputs=[Inversion.Output("inversion", tooltip="The saved inversion.")],
        )

    @classmethod
    def fingerprint_inputs(cls, file):
        p = os.path.join(_inversion_dir(), file)
        return os.path.getmtime(p) if os.path.exists(p) else file

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        path = os.path.join(_inversion_dir(), os.path.basename(file))
        if not os.path.isfile(path):
            raise ValueError(f"no saved inversion named {file!r} in {_inversion_dir()}; run a workflow with "
                             "Save Inversion first, then refresh the node list")
        return io.NodeOutput(load_inversion_file(path))


def load_inversion_file(path: str):
    """The Inversion in ``path`` (read through comfy_bridge.files: clear errors for damaged files)."""
    tensors, meta = files.read_safetensors(path, "inversion file")
    return store.from_file(tensors, meta, f"the inversion file {os.path.basename(path)!r}")


NODES = [AE_InvertImage, AE_InvertImageBatch, AE_SaveInversion, AE_LoadInversion]
