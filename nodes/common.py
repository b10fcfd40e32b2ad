"""Shared glue for the pack's nodes: custom types, categories, prompt encoding, progress."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

import comfy.utils

from ..attention import align

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


def encode(clip, prompt: str, what: str = "prompt"):
    """CONDITIONING of ``prompt``; refuses empty and over-long prompts with a clear message."""
    if clip is None:
        raise ValueError("no CLIP was connected; connect the CLIP output of your checkpoint loader")
    if not prompt.strip():
        raise ValueError(f"the {what} is empty; type a prompt that describes the image")
    n = align.token_count(clip.tokenizer, prompt)
    if n > align.MAX_PROMPT_TOKENS:
        raise ValueError(f"the {what} is {n} CLIP tokens long; Prompt-to-Prompt needs at most "
                         f"{align.MAX_PROMPT_TOKENS} (one 77-token chunk): shorten it")
    return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))


def token_strings(clip, prompt: str) -> list:
    """Labels of the prompt's tokens in conditioning order (an embedding's vectors are labelled by its word)."""
    return align.token_labels(clip.tokenizer, prompt)


class Progress:
    """Progress reporting through ComfyUI's ProgressBar (which also stops the run on /interrupt)."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, done: int, total: int) -> None:
        self.bar.update_absolute(done, total)


def register_model_folder(name: str, extensions) -> str:
    """Registers models/<name> with folder_paths (keeping paths already configured, e.g. by
    extra_model_paths.yaml; adding ``extensions``) and returns its default path."""
    import os

    import folder_paths

    default = os.path.join(folder_paths.models_dir, name)
    paths, exts = folder_paths.folder_names_and_paths.get(name, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[name] = (paths, set(exts) | set(extensions))
    return default


def model_file_path(folder: str, name: str, none_marker: str, hint: str) -> str:
    """Full path of ``name`` in the registered model folder ``folder``; ValueError naming the folder and ``hint``
    (how to make such a file) when it is missing or is the combo's ``none_marker``."""
    import folder_paths

    path = folder_paths.get_full_path(folder, name) if name and name != none_marker else None
    if path is None:
        where = folder_paths.get_folder_paths(folder)[0]
        raise ValueError(f"no file {name!r} in {where}; {hint}, then refresh the node list")
    return path


def latent_samples(latent: dict) -> torch.Tensor:
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError("expected a LATENT (e.g. from VAE Encode)")
    return latent["samples"]
