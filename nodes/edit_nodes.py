"""Nodes: describe a Prompt-to-Prompt edit (word swap / refine, reweight, local blend), run it, preview maps."""
from __future__ import annotations

import dataclasses
import logging

import torch

from comfy_api.v0_0_2 import io, ui

from ..attention import align
from ..attention.masks import (check_user_mask, difference_mask, feathered, image_mask, lock_background, to_image,
                               to_latent)
from ..attention.recipe import (MASK_SOURCES, MMDIT_BLOCKS, EditSpec, LocalBlendSpec, attention_grid, build_controller,
                                split_words)
from ..comfy_bridge import models as bridge_models
from ..comfy_bridge import sampling as bridge_sampling
from .common import (CATEGORY, AttentionMaps, AttentionMapsValue, Inversion, P2PEdit, Progress,
                     check_finite_latent, edit_length, encode, finite, latent_samples, supported, token_strings)


RESOLUTIONS = ("1/4 (16x16 at 512px)", "1/2 (32x32 at 512px)", "1/8 (8x8 at 512px)", "full")


def _downscale(choice: str) -> float:
    """'1/4 (16x16 at 512px)' -> 4.0 (latent side / attention-map side)."""
    values = {"1/4": 4.0, "1/2": 2.0, "1/8": 8.0, "full": 1.0}
    key = str(choice).split(" ")[0]
    if key not in values:
        raise ValueError(f"unknown resolution {choice!r}; choose one of: {', '.join(RESOLUTIONS)}")
    return values[key]


class AE_P2PEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_P2PEdit",
            display_name="Prompt-to-Prompt Edit",
            category=f"{CATEGORY}/prompt_to_prompt",
            description=("Describes a Prompt-to-Prompt edit (Hertz et al. 2022): the edited prompt(s) reuse the "
                         "source prompt's attention maps. Word swap when the word counts match, refine when "
                         "words are added or removed."),
            inputs=[
                io.String.Input("edited_prompts", multiline=True, default="a photo of a dog",
                                tooltip="The edited prompt; several edited prompts, one per line, give one image "
                                        "each."),
                io.Combo.Input("mode", options=["auto", "replace", "refine"], default="auto",
                               tooltip="replace: word swap (same number of words). refine: words added or removed "
                                       "(tokens aligned by global alignment). auto: replace when the word counts "
                                       "match, else refine."),
                io.String.Input("cross_replace_steps", default="0.8",
                                tooltip="When the source's cross-attention maps are injected, as a fraction of "
                                        "the steps: '0.8' = first 80%; '0.2,0.8' = a range; per word: "
                                        "'0.8; lion: 0.4; cat: 0.1,0.5' (words of the edited prompt). Reference "
                                        "default 0.8."),
                io.String.Input("self_replace_steps", default="0.4",
                                tooltip="When the source's self-attention maps are injected: '0.4' = first 40% "
                                        "of the steps, or a range '0.1,0.5'. More keeps more of the layout "
                                        "(reference 0.4; real photos 0.5-0.7)."),
                io.Combo.Input("self_replace_max_resolution", options=list(RESOLUTIONS), default=RESOLUTIONS[0],
                               tooltip="Self-attention is injected only on UNet levels whose maps are at most "
                                       "this fraction of the latent per side. 1/4 is the stable notebook's 16x16 "
                                       "limit at 512px, 1/2 the null-text notebook's 32x32. The fraction carries "
                                       "the references' choice to other sizes: SDXL at 1024px has attention at "
                                       "64x64 and 32x32, and 1/4 injects at 32x32 only (1/2 also at 64x64, whose "
                                       "4096x4096 maps cost much more); SD2.x at 768px: 24x24 and smaller. "
                                       "Flux has no levels: its image->image injection follows 'flux_blocks'."),
                io.Combo.Input("flux_blocks", options=list(MMDIT_BLOCKS), default="all", optional=True,
                               tooltip="Flux (MM-DiT) only: which blocks' joint attention the edit controls. all: "
                                       "every double- and single-stream block; double: the 19 double-stream "
                                       "blocks; vital: Stable Flow's vital layers of FLUX.1-dev (double 0, 1, 17, "
                                       "18; single 6, 9, 34, 35, 37). all is the P2P recipe; vital is a lighter "
                                       "touch (refine keeps the source's attributes a little more often)."),
            ],
            outputs=[P2PEdit.Output("edit", tooltip="The edit; add Reweight / Local Blend, then connect it to "
                                                    "Prompt-to-Prompt Edit Sampler.")],
        )

    @classmethod
    def execute(cls, edited_prompts, mode, cross_replace_steps, self_replace_steps,
                self_replace_max_resolution, flux_blocks="all") -> io.NodeOutput:
        prompts = tuple(p.strip() for p in edited_prompts.splitlines() if p.strip())
        if not prompts:
            raise ValueError("the edited prompt is empty; type the prompt that describes the edited image")
        downscale = _downscale(self_replace_max_resolution)
        spec = EditSpec(target_prompts=prompts, mode=mode,
                        cross_replace_steps=align.parse_cross_replace_steps(cross_replace_steps),
                        self_replace_steps=align.parse_self_replace_steps(self_replace_steps),
                        self_min_downscale=downscale, mmdit_blocks=flux_blocks or "all")
        return io.NodeOutput(spec)


class AE_P2PReweight(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_P2PReweight",
            display_name="Prompt-to-Prompt Reweight (Equalizer)",
            category=f"{CATEGORY}/prompt_to_prompt",
            description=("Scales the attention of words of the edited prompt (P2P attention re-weighting): "
                         "above 1 strengthens a word, 0 removes its influence, negative values invert it."),
            inputs=[
                P2PEdit.Input("edit", tooltip="The edit to add the equalizer to."),
                io.String.Input("equalizer", default="smiling: 2",
                                tooltip="word: factor pairs, separated by commas, e.g. 'smiling: 5, pink: -1'. "
                                        "Words of the edited prompt."),
            ],
            outputs=[P2PEdit.Output("edit_out", display_name="edit", tooltip="The edit with the equalizer.")],
        )

    @classmethod
    def execute(cls, edit, equalizer) -> io.NodeOutput:
        return io.NodeOutput(edit.with_equalizer(align.parse_word_values(equalizer)))


#: local blend's map choices (attention.controllers.LocalBlend.maps), the default first
BLEND_MAPS = ("injected", "own")


class AE_P2PLocalBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_P2PLocalBlend",
            display_name="Prompt-to-Prompt Local Blend",
            category=f"{CATEGORY}/prompt_to_prompt",
            description=("Keeps the photo unchanged outside a mask. The mask comes from the attention maps of the "
                         "given words (P2P local blend: map -> 3x3 max-pool -> normalise -> threshold), from the "
                         "difference of the model's predictions under the source and the edited prompt (DiffEdit: "
                         "needs no attention maps, so it also works on Flux), or from a MASK you connect. The Edit "
                         "Sampler's 'mask' output shows the mask used."),
            inputs=[
                P2PEdit.Input("edit", tooltip="The edit to add local blend to."),
                io.String.Input("source_words", default="cat",
                                tooltip="Words of the source prompt whose region may change, comma-separated "
                                        "(mask_from 'attention' only)."),
                io.String.Input("target_words", default="dog",
                                tooltip="Words of the edited prompt whose region may change, comma-separated "
                                        "(mask_from 'attention' only)."),
                io.Combo.Input("use", options=["both", "source", "target"], default="both",
                               tooltip="Which words make the mask: both (union, reference), source only "
                                       "(Custom-Edit), or target only (mask_from 'attention' only)."),
                io.Float.Input("threshold", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="Mask threshold on the max-normalised attention map (reference 0.3)."),
                io.Float.Input("start", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Blend from this fraction of the steps on (reference 0.2)."),
                io.Combo.Input("mask_resolution", options=list(RESOLUTIONS), default=RESOLUTIONS[0], optional=True,
                               tooltip="Which attention maps make the mask, as a fraction of the latent per side: "
                                       "1/4 is the reference's 16x16 maps at 512px (SDXL at 1024px: its 32x32 "
                                       "maps); use 1/2 or full for small images (e.g. 64px models)."),
                io.Combo.Input("maps", options=list(BLEND_MAPS), default=BLEND_MAPS[0], optional=True,
                               tooltip="Which attention maps of the edited prompt make its mask: 'injected' "
                                       "(after the source's are injected, as the reference code; in a word swap "
                                       "the new word's mask is then the source word's) or 'own' (its maps as "
                                       "computed, before injection). README: Figures, local blend's maps."),
                io.Combo.Input("mask_from", options=list(MASK_SOURCES), default=MASK_SOURCES[0], optional=True,
                               tooltip="attention: the words' attention maps (Prompt-to-Prompt). prediction: where "
                                       "the model's predictions for the source and the edited prompt differ, on "
                                       "the noised photo (DiffEdit); needs no words and no attention maps, so it "
                                       "works on every model, Flux included (README: Figures, fidelity)."),
                io.Float.Input("prediction_threshold", default=0.5, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="mask_from 'prediction': threshold on the difference map rescaled to 0..1 "
                                       "after clamping at 3x its mean (DiffEdit: 0.5). Lower = a larger mask: edits "
                                       "that enlarge an object want 0.2-0.3 (README: Figures, fidelity)."),
                io.Int.Input("noise_draws", default=10, min=1, max=64, optional=True,
                             tooltip="mask_from 'prediction': noise draws averaged (DiffEdit: 10); one model call "
                                     "per draw."),
                io.Float.Input("noise_strength", default=0.5, min=0.05, max=0.95, step=0.05, optional=True,
                               tooltip="mask_from 'prediction': how much noise is added to the photo before the two "
                                       "predictions, as a fraction of the schedule (DiffEdit: 0.5)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: your own mask (white = may change), at the photo's size. It "
                                      "replaces mask_from."),
            ],
            outputs=[P2PEdit.Output("edit_out", display_name="edit", tooltip="The edit with local blend.")],
        )

    @classmethod
    def execute(cls, edit, source_words, target_words, use, threshold, start, mask_resolution=None, maps=None,
                mask_from=None, prediction_threshold=0.5, noise_draws=10, noise_strength=0.5,
                mask=None) -> io.NodeOutput:
        node = "Prompt-to-Prompt Local Blend"
        finite(node, threshold=threshold, start=start, prediction_threshold=prediction_threshold,
               noise_strength=noise_strength)
        if mask is not None:
            mask = image_mask(mask)  # checked against the image's size by the Edit Sampler
        try:
            lb = LocalBlendSpec(source_words=split_words(source_words), target_words=split_words(target_words),
                                use=use, threshold=threshold, start=start,
                                downscale=_downscale(mask_resolution or RESOLUTIONS[0]), maps=maps or BLEND_MAPS[0],
                                mask_from=mask_from or MASK_SOURCES[0], prediction_threshold=prediction_threshold,
                                noise_draws=noise_draws, noise_strength=noise_strength, mask=mask)
        except ValueError as exc:
            raise ValueError(f"{node}: {exc}") from None
        return io.NodeOutput(edit.with_local_blend(lb))


class AE_P2PEditSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_P2PEditSampler",
            display_name="Prompt-to-Prompt Edit Sampler",
            category=f"{CATEGORY}/prompt_to_prompt",
            description=("Replays an inversion with the source prompt and the edited prompt(s) as one batch, the "
                         "attention controller installed on a clone of the model. Output 0 of the batch is the "
                         "reconstruction, then one image per edited prompt."),
            inputs=[
                io.Model.Input("model", tooltip="The same model the image was inverted with."),
                io.Clip.Input("clip", tooltip="The text encoder of the same checkpoint."),
                Inversion.Input("inversion", tooltip="From Invert Image."),
                P2PEdit.Input("edit", optional=True,
                              tooltip="The edit. Without it, only the reconstruction is made."),
                io.Int.Input("steps", default=0, min=0, max=1000, optional=True,
                             tooltip="0 = the inversion's steps. Any other value must equal them."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional: the encoded photo, to check it has the inversion's size."),
            ],
            outputs=[
                io.Latent.Output("latents", tooltip="Reconstruction followed by the edits, as one batch."),
                io.Latent.Output("reconstruction", tooltip="The reconstruction of the photo."),
                io.Latent.Output("edited", tooltip="The edited image(s)."),
                AttentionMaps.Output("attention", tooltip="Averaged cross-attention maps, for the preview node."),
                io.Mask.Output("mask", tooltip="Where each image of 'latents' may differ from the photo, at the "
                                               "image's size: the reconstruction's row all white, then each edit's "
                                               "region (local blend's final mask; all white without local blend). "
                                               "For Lock Background (with 'latents' or 'edited' decoded), or to look "
                                               "at (Convert Mask to Image)."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, inversion, edit=None, steps=0, latent=None) -> io.NodeOutput:
        supported("Prompt-to-Prompt Edit Sampler", model, "edit")
        bridge_sampling.check_inversion_model(inversion, model, "Prompt-to-Prompt Edit Sampler")
        inversion.check_compatible(steps=steps or None,
                                   latent_shape=latent_samples(latent).shape if latent is not None else None)
        out, maps, mask = run_edit(model, clip, inversion, edit, progress=Progress(inversion.steps))
        return io.NodeOutput({"samples": out}, {"samples": out[:1].clone()},
                             {"samples": out[1:].clone() if out.shape[0] > 1 else out[:1].clone()}, maps, mask)


def run_edit(model, clip, inversion, edit=None, progress=None):
    """Glue of the Edit Sampler: builds the controller of ``edit`` (an EditSpec, or None for the reconstruction
    only), encodes the edited prompts, sets local blend's mask when it needs no attention maps (a MASK the user
    connected, or the prediction-difference mask computed here before the replay), and replays the inversion in
    ComfyUI's sampler with the controller on a clone of ``model``. Returns (latents [1 + edits, C, H, W]: the
    reconstruction first, AttentionMapsValue, the mask of each row [1 + edits, H_img, W_img]: 1 where it may differ
    from the photo, :func:`edit_region`)."""
    N = inversion.steps
    controller = None
    conds = []
    prompts = [inversion.source_prompt]
    if edit is not None:
        L = edit_length(clip, [inversion.source_prompt] + list(edit.target_prompts))
        conds = [encode(clip, p, "edited prompt", seq_len=L) for p in edit.target_prompts]
        controller = build_controller(clip.tokenizer, inversion.source_prompt, edit, N,
                                      text_len=int(conds[0][0][0].shape[1]) if conds else None)
        prompts += list(edit.target_prompts)
        inversion = _source_at_length(clip, inversion, L)
        if controller.local_blend is not None:
            controller.local_blend.fixed = blend_mask(model, inversion, edit.local_blend, conds)
    out = bridge_sampling.edit(model, inversion, conds, controller, progress=progress)
    check_finite_latent("Prompt-to-Prompt Edit Sampler", "check the inversion (Load Inversion / Invert Image) and "
                        "the edit's equalizer factors", out)
    final = final_blend_masks(controller, tuple(out.shape[-2:]))
    blend_advice(controller, final)
    spatial = []
    for e in (controller.edits if controller else []):
        dps = getattr(e, "dps", None)
        rec = dps.record if dps is not None else {}
        hw = max(rec, key=lambda r: r[0] * r[1]) if rec else None
        spatial.append(dps.mean_map(hw) if hw else None)
    maps = AttentionMapsValue(store=controller.store if controller else None, prompts=prompts,
                              tokens=[token_strings(clip, p) for p in prompts],
                              keywords=[list(e.keyword_tokens) for e in controller.edits] if controller else [],
                              spatial=spatial)
    return out, maps, edit_region(model, final, out)


def blend_mask(model, inversion, lb, conds):
    """Local blend's masks that need no attention maps, [edits or 1, 1, h, w] at the latent's resolution, or None
    (mask_from 'attention'): the MASK the user connected (checked against the image's size), or the
    prediction-difference mask (DiffEdit) of each edited prompt."""
    hw = tuple(inversion.x_T.shape[-2:])
    image_hw = _image_size(model, hw)
    if lb.mask is not None:
        m = check_user_mask(lb.mask, "mask connected to Prompt-to-Prompt Local Blend", image_hw, hw)
        if m.shape[0] not in (1, len(conds)):
            raise ValueError(f"the mask connected to Prompt-to-Prompt Local Blend holds {m.shape[0]} masks for "
                             f"{len(conds)} edited prompt(s); give one mask, or one per edited prompt")
        return to_latent(m, hw)
    if lb.mask_from != "prediction":
        return None
    diff = bridge_sampling.prediction_mask(model, inversion, conds, draws=lb.noise_draws, strength=lb.noise_strength)
    return difference_mask(diff, lb.prediction_threshold)


def _image_size(model, latent_hw) -> tuple:
    """(H, W) in pixels of an image whose latent is ``latent_hw`` for this model."""
    return tuple(int(v) * bridge_models.pixels_per_latent(model) for v in latent_hw)


def edit_region(model, final, out) -> torch.Tensor:
    """The Edit Sampler's 'mask' output, one row per row of ``out`` (the 'latents' output) at the image's size
    [1 + edits, H, W]: the reconstruction's row all ones (it is the model's redraw; Lock Background leaves it as it
    is), then per edited row where local blend lets the edit change the photo (``final``: its last masks,
    :func:`final_blend_masks`); all ones without local blend."""
    image_hw = _image_size(model, out.shape[-2:])
    region = torch.ones((out.shape[0],) + image_hw)
    if final is not None:
        region[1:] = to_image(final.cpu(), image_hw)
    return region


def final_blend_masks(controller, latent_hw):
    """Local blend's last masks [edits, 1, h, w] (the step-by-step attention mask is rebuilt from the maps recorded
    so far, so the last is the one after the whole run), or None without local blend or maps."""
    lb = getattr(controller, "local_blend", None) if controller is not None else None
    if lb is None or (lb.fixed is None and not controller.store.sums):
        return None
    store = controller.injected_store if (lb.maps == "injected" and controller.injected_store is not None) \
        else controller.store
    return lb.masks(store, latent_hw, len(controller.edits))


def blend_advice(controller, final) -> None:
    """Logs when local blend's final mask covers almost all of the image or almost none of it: the blend then
    changes nothing, or keeps the source everywhere, and the log says which setting to move. A model whose maps do
    not locate words (measured on the ToyWorld MM-DiT: flat image->text maps) gives the first with attention masks;
    an edit whose prompts differ in no word (a reweight) gives the second with the prediction mask. ``final``: the
    last masks (:func:`final_blend_masks`), None without local blend."""
    if final is None:
        return
    lb = controller.local_blend
    cover = float(final.float().mean())
    knob = "'prediction_threshold'" if lb.fixed is not None else "'threshold'"
    if cover > 0.95:
        logging.warning(f"[Attention Edit] Local Blend: the mask covers {cover:.0%} of the image, so the blend keeps "
                        f"almost nothing of the source; raise {knob} (or check the words: the model's attention "
                        "maps of them may not locate anything; see them with Attention Map Preview, or use "
                        "mask_from 'prediction')")
    elif cover < 0.005:
        logging.warning(f"[Attention Edit] Local Blend: the mask covers {cover:.1%} of the image, so the edit is "
                        f"undone almost everywhere; lower {knob}, or check that the blend words are the edited ones "
                        "(the prediction mask is empty when the prompts differ in no word)")


def _source_at_length(clip, inversion, seq_len: int):
    """The inversion with its source prompt's conditioning at ``seq_len`` text tokens. Only a T5 model (Flux) can
    need it: an edited prompt of over 255 T5 tokens makes the edit's sequence 512 long while the photo was inverted
    with its shorter source prompt at 256. The source is then re-encoded at 512 (ComfyUI's T5 runs without a mask,
    so padding changes every token's embedding a little, and the reconstruction drifts slightly from the
    inversion's); the log says so. To avoid it, invert with a source prompt of over 255 tokens too."""
    emb, extras = inversion.source_cond[0][0], inversion.source_cond[0][1]
    if not align.stream_of(clip.tokenizer).variable_length or int(emb.shape[1]) == int(seq_len):
        return inversion
    logging.warning(f"[Attention Edit] Prompt-to-Prompt Edit Sampler: an edited prompt needs {seq_len} T5 tokens but "
                    f"the photo was inverted with a {emb.shape[1]}-token source; the source prompt is re-encoded at "
                    f"{seq_len} (the reconstruction can differ slightly from the inversion's; invert with a source "
                    f"prompt of the same length class to avoid it)")
    new = encode(clip, inversion.source_prompt, "source prompt", seq_len=seq_len)[0][0]
    return dataclasses.replace(inversion, source_cond=[[new.to(emb), extras]])


class AE_LockBackground(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_LockBackground",
            display_name="Lock Background (photo outside the mask)",
            category=f"{CATEGORY}/prompt_to_prompt",
            description=("Puts the input photo's own pixels back everywhere outside the edit's mask (grown and "
                         "feathered), after VAE Decode: outside it every pixel is bit-identical to the photo, so "
                         "nothing but the edited region can change."),
            inputs=[
                io.Image.Input("edited", tooltip="The edited image(s), from VAE Decode of the Edit Sampler's 'edited' "
                                                 "output."),
                io.Image.Input("photo", tooltip="The input photo, as it was scaled for the inversion (the image VAE "
                                                "Encode took)."),
                io.Mask.Input("mask", tooltip="Where the edit may change the photo (white): the Edit Sampler's 'mask' "
                                              "output, or any mask of the photo's size. One mask for all images, "
                                              "one per image, or the Edit Sampler's (one row more than 'edited': "
                                              "its first, the reconstruction's, is then left out)."),
                io.Int.Input("grow", default=0, min=0, max=512,
                             tooltip="Grow the mask by this many pixels first (the full edit is kept there)."),
                io.Int.Input("feather", default=8, min=0, max=512,
                             tooltip="Then blend from the edit to the photo over this many pixels outside the "
                                     "grown mask; beyond, the photo's own pixels. One latent pixel is 8 image "
                                     "pixels on Stable Diffusion and Flux."),
            ],
            outputs=[io.Image.Output("image", tooltip="The edit inside the mask, the photo outside.")],
        )

    @classmethod
    def execute(cls, edited, photo, mask, grow, feather) -> io.NodeOutput:
        node = "Lock Background"
        if edited.ndim != 4:
            raise ValueError(f"{node}: 'edited' is not an image batch (shape {list(edited.shape)})")
        H, W = int(edited.shape[1]), int(edited.shape[2])
        try:
            m = image_mask(mask)
            if m.shape[0] == edited.shape[0] + 1:  # the Edit Sampler's mask with its 'edited' output: skip row 0
                m = m[1:]
            m = check_user_mask(m, "mask of Lock Background", (H, W), allow_full=True)
            weight = feathered(m, grow, feather)
            out = lock_background(edited, photo, weight)
        except ValueError as exc:
            raise ValueError(f"{node}: {exc}") from None
        if bool((m >= 0.5).all()):
            note = (f"{node}: the mask covers the whole image, so nothing is locked (the edit is passed on as it "
                    "is): give the Edit Sampler's edit a Local Blend (mask_from 'prediction' works on every model) "
                    "or connect a mask of the region to edit")
            logging.warning(f"[Attention Edit] {note}")
            return io.NodeOutput(out, ui={"text": [note]})
        return io.NodeOutput(out)


class AE_AttentionMapPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_AttentionMapPreview",
            display_name="Attention Map Preview",
            category=f"{CATEGORY}/prompt_to_prompt",
            description="Shows the averaged cross-attention map of each token of a prompt as an image grid.",
            inputs=[
                AttentionMaps.Input("attention", tooltip="From Prompt-to-Prompt Edit Sampler."),
                io.Int.Input("prompt_index", default=0, min=0, max=64,
                             tooltip="0 = the source prompt, 1 = the first edited prompt, ..."),
                io.Int.Input("cell_size", default=64, min=16, max=512,
                             tooltip="Pixel size of each token's map in the grid."),
            ],
            outputs=[io.Image.Output("image", tooltip="One cell per token, in prompt order.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, attention, prompt_index, cell_size) -> io.NodeOutput:
        if attention.store is None:
            raise ValueError("no attention maps were recorded: connect an edit to the Edit Sampler")
        if not attention.store.sums:
            raise ValueError("no attention maps were recorded: this model has no cross-attention layer at half the "
                             "latent resolution or smaller (maps are recorded there, as in the reference)")
        if prompt_index >= len(attention.prompts):
            raise ValueError(f"prompt_index {prompt_index} is out of range: the edit has "
                             f"{len(attention.prompts)} prompts (0 = source)")
        store = attention.store
        hw = store.nearest(max(store.resolutions(), key=lambda r: r[0] * r[1]))
        maps = store.average(hw)[prompt_index]
        img = attention_grid(maps, attention.tokens[prompt_index], cell=cell_size)
        return io.NodeOutput(img, ui=ui.PreviewImage(img, cls=cls))


NODES = [AE_P2PEdit, AE_P2PReweight, AE_P2PLocalBlend, AE_P2PEditSampler, AE_LockBackground, AE_AttentionMapPreview]
