"""Nodes: AdapEdit soft attention (FWT per-word schedule, DPS pixel weighting, S[V] preview)."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.v0_0_2 import io, ui
from PIL import Image, ImageDraw

from ..attention import adapedit
from ..attention.recipe import DPSSpec, fwt_schedule
from .common import CATEGORY, AttentionMaps, P2PEdit, finite

CAT = f"{CATEGORY}/adapedit"


def _bar_chart(taus: dict, width: int = 512, height: int = 256) -> torch.Tensor:
    """{word: tau} as a bar chart IMAGE [1, H, W, 3] (tau 0..1 on the y axis)."""
    img = Image.new("RGB", (width, height), (24, 24, 24))
    d = ImageDraw.Draw(img)
    n = max(len(taus), 1)
    left, bottom, top = 30, height - 30, 12
    d.line([(left, top), (left, bottom), (width - 6, bottom)], fill=(200, 200, 200))
    for v in (0.0, 0.5, 1.0):
        y = bottom - v * (bottom - top)
        d.text((2, y - 6), f"{v:.1f}", fill=(200, 200, 200))
    slot = (width - left - 10) / n
    for i, (w, t) in enumerate(taus.items()):
        x0 = left + 4 + i * slot
        y = bottom - min(max(t, 0.0), 1.0) * (bottom - top)
        d.rectangle([x0, y, x0 + slot * 0.7, bottom], fill=(90, 170, 90) if t > 0 else (200, 90, 90))
        d.text((x0, bottom + 4), w[: max(int(slot // 6), 3)], fill=(230, 230, 230))
        d.text((x0, max(y - 12, 0)), f"{t:.2f}", fill=(230, 230, 230))
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)[None]


class AE_AdapEditFWT(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_AdapEditFWT",
            display_name="AdapEdit FWT (per-word schedule)",
            category=CAT,
            description=("AdapEdit flexible word-level temporal scale (Eq. 5-7): from the attention maps and visual "
                         "features recorded by a first Edit Sampler run, each word of the edited prompt gets its own "
                         "injection end tau = lambda_tau * (1 - exp(A - 1)), A its similarity to the edited words "
                         "(which get 0). Output: a cross_replace_steps text for Prompt-to-Prompt Edit, and a plot."),
            inputs=[
                AttentionMaps.Input("attention", tooltip="The attention output of a first Edit Sampler run."),
                io.Clip.Input("clip", tooltip="The text encoder (for the word/token positions)."),
                io.Boolean.Input("enabled", default=True,
                                 tooltip="Off = the 'w/o FWT' ablation: the schedule is the default for every word."),
                io.Int.Input("prompt_index", default=1, min=1, max=64,
                             tooltip="Which edited prompt to analyse (1 = the first)."),
                io.Float.Input("lambda_tau", default=adapedit.LAMBDA_TAU, min=0.0, max=2.0, step=0.01,
                               tooltip="lambda_tau: scales every tau (paper Fig. 7 sweeps it; smaller lets the edit "
                                       "change more). tau = lambda_tau * (1 - exp(A - 1)) lies in [0, 0.86 "
                                       "lambda_tau]."),
                io.Float.Input("alpha_m", default=adapedit.ALPHA_M, min=0.0, max=1.0, step=0.001,
                               tooltip="alpha_m: attention values under it are ignored (paper: 0.03)."),
                io.Boolean.Input("pixel_mask", default=True,
                                 tooltip="Apply the alpha_m mask (off = the paper's 'w/o DPS*' ablation)."),
                io.Float.Input("default", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="The default window for tokens that are not words (EOS, padding)."),
            ],
            outputs=[
                io.String.Output("cross_replace_steps",
                                 tooltip="Per-word schedule in the cross_replace_steps syntax; connect it to "
                                         "Prompt-to-Prompt Edit's cross_replace_steps."),
                io.Image.Output("plot", tooltip="tau per word (red: edited words, 0)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, attention, clip, enabled, prompt_index, lambda_tau, alpha_m, pixel_mask,
                default) -> io.NodeOutput:
        finite("AdapEdit FWT", lambda_tau=lambda_tau, alpha_m=alpha_m, default=default)
        if attention.store is None:
            raise ValueError("the Edit Sampler ran without an edit: connect a Prompt-to-Prompt Edit to it")
        if not 1 <= prompt_index < len(attention.prompts):
            raise ValueError(f"prompt_index {prompt_index} is out of range: the edit has "
                             f"{len(attention.prompts) - 1} edited prompt(s)")
        if enabled:
            taus, text = fwt_schedule(clip.tokenizer, attention.store, attention.prompts,
                                      attention.keywords[prompt_index - 1], prompt_index, lambda_tau, alpha_m,
                                      pixel_mask, default)
        else:
            from ..attention.align import prompt_words

            taus = {w: default for w in dict.fromkeys(prompt_words(attention.prompts[prompt_index]))}
            text = f"{default:g}"
        plot = _bar_chart(taus)
        return io.NodeOutput(text, plot, ui={"text": [text], **ui.PreviewImage(plot, cls=cls).as_dict()})


class AE_AdapEditDPS(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_AdapEditDPS",
            display_name="AdapEdit DPS (pixel weighting)",
            category=CAT,
            description=("AdapEdit dynamic pixel-level spatial weighting (Eq. 8-9): outside each word's injection "
                         "window the edited prompt's maps M* are blended with the source's M pixel by pixel, "
                         "C = lambda_S [S M* + (1 - S) M] + (1 - lambda_S) M, with S[V] = lambda_S[V] * the "
                         "similarity of each pixel to the edited words."),
            inputs=[
                P2PEdit.Input("edit", tooltip="The Prompt-to-Prompt edit (refine is what the paper uses)."),
                io.Boolean.Input("enabled", default=True,
                                 tooltip="Off = the 'w/o DPS' ablation: the edit is passed on unchanged."),
                io.Float.Input("lambda_s", default=adapedit.LAMBDA_S, min=0.0, max=1.0, step=0.01,
                               tooltip="lambda_S, the spatial interpolation weight (paper: 0.9; 0.98 edits more; "
                                       "0 keeps the source maps)."),
                io.Float.Input("lambda_sv", default=adapedit.LAMBDA_SV, min=0.0, max=2.0, step=0.01,
                               tooltip="lambda_S[V], the scale of the similarity map S[V] (paper: 0.8 to 1.0)."),
                io.Float.Input("alpha_m", default=adapedit.ALPHA_M, min=0.0, max=1.0, step=0.001,
                               tooltip="alpha_m: attention values under it are ignored when locating the edited "
                                       "words (paper: 0.03)."),
                io.Boolean.Input("pixel_mask", default=True,
                                 tooltip="Apply the alpha_m pixel mask (off = the paper's 'w/o DPS*' ablation)."),
            ],
            outputs=[P2PEdit.Output("edit_out", display_name="edit", tooltip="The edit with DPS.")],
        )

    @classmethod
    def execute(cls, edit, enabled, lambda_s, lambda_sv, alpha_m, pixel_mask) -> io.NodeOutput:
        finite("AdapEdit DPS", lambda_s=lambda_s, lambda_sv=lambda_sv, alpha_m=alpha_m)
        if not enabled:
            return io.NodeOutput(edit)
        return io.NodeOutput(edit.with_dps(DPSSpec(lambda_s=lambda_s, lambda_sv=lambda_sv, alpha_m=alpha_m,
                                                   pixel_mask=pixel_mask)))


class AE_AdapEditSpatialMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AE_AdapEditSpatialMap",
            display_name="AdapEdit S[V] Map",
            category=CAT,
            description="The DPS similarity map S[V] of an edited prompt, averaged over the run, as an IMAGE.",
            inputs=[
                AttentionMaps.Input("attention", tooltip="The attention output of an Edit Sampler run with DPS."),
                io.Int.Input("prompt_index", default=1, min=1, max=64, tooltip="1 = the first edited prompt."),
                io.Int.Input("size", default=256, min=16, max=1024, tooltip="Pixel size of the image."),
            ],
            outputs=[io.Image.Output("image", tooltip="S[V] in [0, 1] (white = follows the edited words).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, attention, prompt_index, size) -> io.NodeOutput:
        spatial = attention.spatial[prompt_index - 1] if 0 < prompt_index <= len(attention.spatial) else None
        if spatial is None:
            raise ValueError("no S[V] map was recorded for this prompt: add AdapEdit DPS to its edit")
        m = torch.nn.functional.interpolate(spatial[None, None].float(), size=(size, size), mode="nearest")[0, 0]
        img = m.clamp(0, 1)[..., None].expand(size, size, 3)[None].contiguous()
        return io.NodeOutput(img, ui=ui.PreviewImage(img, cls=cls))


NODES = [AE_AdapEditFWT, AE_AdapEditDPS, AE_AdapEditSpatialMap]
