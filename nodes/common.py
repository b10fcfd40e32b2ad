"""Shared glue for the pack's nodes: custom types, categories, prompt encoding, progress, file-combo helpers."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from comfy_api.v0_0_2 import io

from ..attention import align
from ..comfy_bridge import files
from ..comfy_bridge import text as bridge_text
from ..comfy_bridge.progress import Progress  # noqa: F401  (re-exported for the node modules)

CATEGORY = "attention_edit"

# Custom ComfyUI types passed between the pack's nodes
Inversion = io.Custom("AE_INVERSION")
P2PEdit = io.Custom("AE_P2P_EDIT")
AttentionMaps = io.Custom("AE_ATTENTION_MAPS")


@dataclass
class AttentionMapsValue:
    """Cross-attention maps recorded during an edit (AE_ATTENTION_MAPS).

    store: the AttentionStore; prompts: [source, edit_1, ...]; tokens: per prompt, the decoded token strings
    of its words (without BOS/EOS), in token order.
    """

    store: object
    prompts: list
    tokens: list = field(default_factory=list)
    keywords: list = field(default_factory=list)  # per edited prompt: target positions of its edited words
    spatial: list = field(default_factory=list)   # per edited prompt: mean S[V] map [h, w] of DPS, or None


def encode(clip, prompt: str, what: str = "prompt", seq_len=None):
    """CONDITIONING of ``prompt``; refuses empty and over-long prompts with a clear message. ``seq_len``: the
    sequence length shared by all prompts of an edit (align.common_length); on a T5 model (Flux) the prompt is
    encoded at that length (default: the shortest that holds it, 256 for up to 255 tokens, as ComfyUI's own)."""
    if clip is None:
        raise ValueError("no CLIP was connected; connect the CLIP output of your checkpoint loader")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"the {what} is empty; type a prompt that describes the image")
    n = align.token_count(clip.tokenizer, prompt)
    st = align.stream_of(clip.tokenizer)
    limit = st.limit if seq_len is None else int(seq_len) - st.offset - 1
    if n > limit:
        raise ValueError(f"the {what} is {n} {st.name} tokens long; Prompt-to-Prompt needs at most {limit} (one "
                         f"{limit + st.offset + 1}-token sequence): shorten it")
    if not st.variable_length:
        return bridge_text.encode(clip, prompt)
    return bridge_text.encode(clip, prompt, t5_length=seq_len or st.length_for(n))


def empty_conditioning(clip, seq_len=None):
    """CONDITIONING of the empty prompt (the unconditional of CFG / null-text's start), at ``seq_len`` on a T5
    model so it batches with the edit's prompts."""
    sized = align.stream_of(clip.tokenizer).variable_length
    return bridge_text.encode(clip, "", t5_length=seq_len if sized else None)


def edit_length(clip, prompts) -> int:
    """The sequence length all ``prompts`` of one edit (or one batch inversion) are encoded at
    (align.common_length: 77 CLIP; 256 or 512 T5); an over-long prompt is left to encode(), which names it."""
    if clip is None:
        raise ValueError("no CLIP was connected; connect the CLIP output of your checkpoint loader")
    return align.common_length(clip.tokenizer, prompts, strict=False)


def token_strings(clip, prompt: str) -> list:
    """Labels of the prompt's tokens in conditioning order (an embedding's vectors are labelled by its word)."""
    return align.token_labels(clip.tokenizer, prompt)


def supported(node: str, model, group: str):
    """The MODEL's family record when node group ``group`` ("edit", "train", "imagic": comfy_bridge.families.GROUPS)
    accepts it; else a ValueError naming the node, the MODEL's family and what to use instead, before any work
    starts (comfy_bridge.families.require)."""
    from ..comfy_bridge.families import require

    return require(node, model, group)


def finite(node: str, **values) -> None:
    """ValueError naming the node and the input when a float input is NaN or infinite (ComfyUI's min/max check
    lets them through)."""
    for name, v in values.items():
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{node}: the input '{name}' must be a number, got {v!r}") from None
        if not math.isfinite(f):
            raise ValueError(f"{node}: the input '{name}' is {v}; give a finite number (within the widget's range)")


def check_finite_latent(node: str, what: str, x: torch.Tensor) -> torch.Tensor:
    """Stops a run whose result is not finite, naming the node and the input to look at."""
    if torch.is_tensor(x) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        frac = float((~torch.isfinite(x)).float().mean())
        raise ValueError(f"{node} produced a latent that is {frac:.0%} NaN/infinite; {what}")
    return x


def check_finite_result(node: str, tensors: dict, hint: str) -> None:
    """Stops a training node whose learned tensors hold NaN/inf (a diverged run) before anything is saved or
    applied, naming the node, the tensors and what to change."""
    bad = [k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point() and
           not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{node}: the training diverged (NaN/infinite values in {', '.join(sorted(bad)[:3])}"
                         f"{' ...' if len(bad) > 3 else ''}); nothing was saved. {hint}")


def register_model_folder(name: str, extensions) -> str:
    return files.register_model_folder(name, extensions)


def model_file_path(folder: str, name: str, none_marker: str, hint: str) -> str:
    return files.model_file_path(folder, name, none_marker, hint)


def latent_samples(latent: dict) -> torch.Tensor:
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError("expected a LATENT (e.g. from VAE Encode)")
    return latent["samples"]
