"""From an edit description (prompts, schedules, words) to a P2PController.

``EditSpec`` is the value the edit nodes build and pass on (ComfyUI type AE_P2P_EDIT); ``build_controller``
resolves it against the source prompt with the real CLIP tokenizer. Every user mistake becomes a ValueError
that says what was wrong and how to fix it (words not in a prompt list the prompt's words; word swap with
different word counts suggests refine; over-long and empty prompts are refused).

Defaults follow the reference notebooks (reference-details 1.1): cross_replace_steps 0.8, self_replace_steps
0.4 (null-text notebook: 0.5-0.7 for real photos), local blend threshold 0.3, start 0.2 of the steps.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import torch

from . import align
from .adapedit import DPS, SoftPromptEdit, fwt_tau, schedule_text
from .controllers import LocalBlend, P2PController, PromptEdit, SelfInjection
from .masks import NOISE_DRAWS, NOISE_STRENGTH, PREDICTION_THRESHOLD

Window = Union[float, tuple]


#: where local blend's mask comes from: the attention maps of the blend words (P2P), or the difference of the model's
#: predictions under the source and the edited prompt (DiffEdit: no attention maps needed, so every architecture)
MASK_SOURCES = ("attention", "prediction")


@dataclass(frozen=True)
class LocalBlendSpec:
    """Local blend words and settings. source_words are looked up in the source prompt, target_words in every
    edited prompt; ``use`` picks the mask: 'both' (union, reference), 'source' (Custom-Edit), 'target'.

    mask_from: 'attention' (the words' attention maps, the reference's) or 'prediction' (the prediction-difference
    mask, DiffEdit: ``noise_draws`` draws at ``noise_strength``, binarised at ``prediction_threshold``; computed by
    the Edit Sampler before the replay, inversion/prediction_mask.py). ``mask``: a MASK the user connected ([B, H, W]
    at the image's or the latent's size), which replaces both; the words are needed only for 'attention'."""

    source_words: tuple = ()
    target_words: tuple = ()
    use: str = "both"
    threshold: float = 0.3
    start: float = 0.2
    downscale: float = 4.0
    dilation: Optional[int] = None  # max-pool radius in map pixels; None = auto (LocalBlend.pool_radius)
    maps: str = "injected"  # LocalBlend.maps: 'injected' (the reference's) or 'own' (the edited row's, before injection)
    mask_from: str = "attention"
    prediction_threshold: float = PREDICTION_THRESHOLD
    noise_draws: int = NOISE_DRAWS
    noise_strength: float = NOISE_STRENGTH
    mask: Optional[torch.Tensor] = None

    def __post_init__(self):
        from .masks import check_threshold

        if self.mask_from not in MASK_SOURCES:
            raise ValueError(f"local blend's mask_from must be one of {MASK_SOURCES}, got {self.mask_from!r}")
        check_threshold(self.threshold, "local blend threshold")
        check_threshold(self.prediction_threshold, "local blend prediction_threshold")
        if not 1 <= int(self.noise_draws) <= 64:
            raise ValueError(f"local blend's noise_draws is {self.noise_draws}; give 1 to 64 (DiffEdit: 10)")
        s = float(self.noise_strength)
        if not (s == s and 0.0 < s < 1.0):
            raise ValueError(f"local blend's noise_strength is {self.noise_strength!r}; give a fraction of the noise "
                             "schedule above 0 and below 1 (DiffEdit: 0.5)")

    @property
    def needs_words(self) -> bool:
        """Whether the mask is made from the blend words' attention maps."""
        return self.mask is None and self.mask_from == "attention"


@dataclass(frozen=True)
class DPSSpec:
    """AdapEdit DPS settings (Eq. 8-9): lambda_s (interpolation weight), lambda_sv (scale of S[V]), alpha_m (map
    threshold of the pixel mask), pixel_mask (False = the paper's 'w/o DPS*' ablation)."""

    lambda_s: float = 0.9
    lambda_sv: float = 1.0
    alpha_m: float = 0.03
    pixel_mask: bool = True


@dataclass(frozen=True)
class EditSpec:
    """A Prompt-to-Prompt edit, independent of the model and of the source prompt.

    target_prompts:      edited prompts (one output image each).
    mode:                'auto' (replace when word counts match, else refine), 'replace' or 'refine'.
    cross_replace_steps: fraction f (= (0, f)), a (start, end) pair of fractions, or a dict
                         {'default_': window, word: window} of per-word windows (words of the edited prompts).
    self_replace_steps:  fraction or (start, end) pair.
    self_min_downscale:  self-attention is injected only on maps at least this many times smaller than the
                         latent per side (4: <= 16x16 at 512px, the stable notebook; 2: <= 32x32, NTI notebook).
    equalizer:           ((word, factor), ...) attention re-weighting of words of the edited prompts.
    local_blend:         optional LocalBlendSpec.
    mmdit_blocks:        MM-DiT models (Flux): the blocks whose joint attention is controlled, "all", "double" or
                         "vital" (attention/joint.py); UNets ignore it.
    """

    target_prompts: tuple
    mode: str = "auto"
    cross_replace_steps: object = 0.8
    self_replace_steps: object = 0.4
    self_min_downscale: float = 4.0
    equalizer: tuple = ()
    local_blend: Optional[LocalBlendSpec] = None
    dps: Optional[DPSSpec] = None
    mmdit_blocks: str = "all"

    def with_dps(self, dps: Optional[DPSSpec]) -> "EditSpec":
        return replace(self, dps=dps)

    def with_equalizer(self, word_values: Sequence) -> "EditSpec":
        return replace(self, equalizer=tuple(self.equalizer) + tuple((w, float(v)) for w, v in word_values))

    def with_local_blend(self, lb: LocalBlendSpec) -> "EditSpec":
        return replace(self, local_blend=lb)


#: the block choices of an MM-DiT edit (attention/joint.py controlled_blocks)
MMDIT_BLOCKS = ("all", "double", "vital")


def _tokens(tokenizer, prompt: str, words: Sequence[str]) -> list[int]:
    out: list[int] = []
    for w in words:
        out.extend(align.word_token_indices(tokenizer, prompt, w))
    return sorted(set(out))


def build_controller(tokenizer, source_prompt: str, spec: EditSpec, num_steps: int,
                     text_len: Optional[int] = None) -> P2PController:
    """Resolves ``spec`` for ``source_prompt`` into a P2PController for ``num_steps`` sampling steps.

    For a joint-sequence text encoder (SD3: [77 CLIP positions ; T5 sequence], align.joint_sections) each stream is
    aligned with its own tokenizer and the results are joined block-diagonally (:func:`join_streams`): a word's
    maps are its CLIP and its T5 positions. ``text_len``: the conditioning's text length when the caller knows it;
    77 on such a model means a CLIP-only text encoder (an SD3 checkpoint without T5), and only the CLIP stream is
    used."""
    if not spec.target_prompts:
        raise ValueError("the edit has no edited prompt; type at least one edited prompt")
    sections = align.joint_sections(tokenizer)
    if sections is not None:
        parts = [_build_one(sec, source_prompt, spec, num_steps) for sec in sections]
        lengths = [int(c.edits[0].cross_alpha.shape[-1]) for c in parts]
        if text_len is not None and int(text_len) == lengths[0]:
            return parts[0]
        joined = join_streams(parts, lengths)
        n = int(joined.edits[0].cross_alpha.shape[-1])
        if text_len is not None and int(text_len) != n:
            raise ValueError(f"the conditioning has {int(text_len)} text tokens but the prompts' streams give {n} "
                             f"({' + '.join(str(v) for v in lengths)}); encode every prompt of the edit with the "
                             "same CLIP (the checkpoint's text encoder)")
        return joined
    return _build_one(tokenizer, source_prompt, spec, num_steps)


def _offset(tokens, by: int) -> list:
    return [int(t) + by for t in tokens]


def join_streams(parts: Sequence[P2PController], lengths: Sequence[int]) -> P2PController:
    """One controller over a joint text sequence from one controller per stream (the streams' positions follow
    each other: stream k starts at sum(lengths[:k])): word-swap mappers block-diagonal, refinement indices and
    every token list shifted by the stream's start, cross_replace_steps windows, alphas and equalizers
    concatenated along the token axis. The streams must agree on the edit's kind (they do: the kind follows the
    prompts' words, which every stream shares). Source: P2P sec. 3.2 applied per text stream; the SD3 note in
    docs/sd3.md."""
    first = parts[0]
    starts = [sum(lengths[:k]) for k in range(len(lengths))]
    edits = []
    for i, e0 in enumerate(first.edits):
        es = [p.edits[i] for p in parts]
        kinds = {e.kind for e in es}
        if len(kinds) != 1:
            raise ValueError(f"the text streams disagree on the edit of prompt {i + 1} ({sorted(kinds)}); choose the "
                             "mode explicitly (replace or refine)")
        if e0.kind == "replace":
            mapper = torch.block_diag(*[e.mapper for e in es])
            alphas = None
        else:
            mapper = torch.cat([torch.where(e.mapper >= 0, e.mapper + s, e.mapper) for e, s in zip(es, starts)])
            alphas = torch.cat([e.alphas for e in es], -1)
        cross = torch.cat([e.cross_alpha for e in es], -1)
        eq = None
        if any(e.equalizer is not None for e in es):
            eq = torch.cat([e.equalizer if e.equalizer is not None else torch.ones(n)
                            for e, n in zip(es, lengths)], -1)
        kw = tuple(t for e, s in zip(es, starts) for t in _offset(e.keyword_tokens, s))
        common = dict(kind=e0.kind, mapper=mapper, alphas=alphas, cross_alpha=cross, equalizer=eq, keyword_tokens=kw)
        dps = getattr(e0, "dps", None)
        if dps is not None:
            edits.append(SoftPromptEdit(**common, dps=replace(dps, keyword_tokens=list(kw))))
        else:
            edits.append(PromptEdit(**common))
    blend = first.local_blend
    if blend is not None:
        blends = [p.local_blend for p in parts]
        blend = replace(blend,
                        source_tokens=[t for b, s in zip(blends, starts) for t in _offset(b.source_tokens, s)],
                        target_tokens=[[t for b, s in zip(blends, starts) for t in _offset(b.target_tokens[j], s)]
                                       for j in range(len(blend.target_tokens))])
    return replace(first, edits=edits, local_blend=blend)


def _build_one(tokenizer, source_prompt: str, spec: EditSpec, num_steps: int) -> P2PController:
    prompts = [source_prompt] + list(spec.target_prompts)
    # every prompt's maps on one sequence length (CLIP: 77; T5: 256, or 512 when a prompt needs it), the length
    # the edit glue encodes all the prompts at (align.common_length)
    tokenizer = align.fixed_length(tokenizer, align.common_length(tokenizer, prompts))
    alpha = align.cross_replace_alpha(tokenizer, prompts, num_steps, spec.cross_replace_steps)  # [N+1, P-1, 77]
    edits = []
    for i, target in enumerate(spec.target_prompts):
        a = align.align_prompts(tokenizer, source_prompt, target, spec.mode)
        eq = None
        if spec.equalizer:
            eq = align.equalizer(tokenizer, target, list(spec.equalizer))
        kw = keyword_tokens(tokenizer, source_prompt, target, a)
        dps = None
        if spec.dps is not None:
            if not kw:
                raise ValueError(f"AdapEdit DPS needs edited words, but {target!r} does not change any word of "
                                 f"{source_prompt!r}")
            d = spec.dps
            dps = DPS(keyword_tokens=kw, lambda_s=d.lambda_s, lambda_sv=d.lambda_sv, alpha_m=d.alpha_m,
                      pixel_mask=d.pixel_mask)
        common = dict(kind=a.mode, mapper=a.mapper, alphas=None if a.mode == "replace" else a.alphas,
                      cross_alpha=alpha[:, i, :].clone(), equalizer=eq, keyword_tokens=tuple(kw))
        edits.append(SoftPromptEdit(**common, dps=dps) if dps is not None else PromptEdit(**common))
    start, end = align.self_replace_range(num_steps, spec.self_replace_steps)
    self_inj = SelfInjection(start, end, spec.self_min_downscale) if end > start else None
    blend = None
    lb = spec.local_blend
    if lb is not None:
        if lb.needs_words and not lb.source_words and not lb.target_words:
            raise ValueError("local blend needs at least one word: give the source words (what to change in the "
                             "photo) and/or the target words (what it becomes), or make the mask from the "
                             "predictions (mask_from 'prediction') or connect a mask")
        if lb.needs_words and lb.use == "source" and not lb.source_words:
            raise ValueError("local blend 'use' is 'source' but no source words were given")
        if lb.needs_words and lb.use == "target" and not lb.target_words:
            raise ValueError("local blend 'use' is 'target' but no target words were given")
        words = lb.needs_words  # a prediction or user mask needs no words: they are not looked up
        blend = LocalBlend(
            source_tokens=_tokens(tokenizer, source_prompt, lb.source_words) if words else [],
            target_tokens=[_tokens(tokenizer, t, lb.target_words) if words else [] for t in spec.target_prompts],
            use=lb.use, threshold=lb.threshold, start_step=int(round(lb.start * num_steps)),
            downscale=lb.downscale, dilation=lb.dilation, maps=lb.maps)
    # record the maps local blend reads even when they are finer than the default store limit (small latents)
    store_min = min(2.0, blend.downscale) if blend is not None else 2.0
    if spec.mmdit_blocks not in MMDIT_BLOCKS:
        raise ValueError(f"unknown MM-DiT block choice {spec.mmdit_blocks!r}; choose one of {MMDIT_BLOCKS}")
    return P2PController(edits=edits, num_steps=num_steps, self_injection=self_inj, local_blend=blend,
                         store_min_downscale=store_min, mmdit_blocks=spec.mmdit_blocks)


def keyword_tokens(tokenizer, source: str, target: str, alignment: "align.Alignment") -> list:
    """Token positions (in the target) of the edited words: swapped words for a word swap, the target tokens
    without a source counterpart (alphas == 0) for a refine."""
    if alignment.mode == "replace":
        sw, tw = align.prompt_words(source), align.prompt_words(target)
        out = []
        for i, (a, b) in enumerate(zip(sw, tw)):
            if a.lower() != b.lower():
                out.extend(align.word_token_indices(tokenizer, target, i))
        return out
    st = align.stream_of(tokenizer)
    first = st.offset  # the words take positions first .. first + n - 1
    n = align.token_count(tokenizer, target)
    return [j for j in range(first, first + n) if float(alignment.alphas[j]) == 0.0]


def word_positions(tokenizer, prompt: str) -> dict:
    """{word: [token positions]} for the words of ``prompt``; a repeated word gets all its positions."""
    out: dict = {}
    for i, w in enumerate(align.prompt_words(prompt)):
        out.setdefault(w, []).extend(align.word_token_indices(tokenizer, prompt, i))
    return out


def fwt_schedule(tokenizer, store, prompts: Sequence[str], keywords: Sequence[int], prompt_index: int = 1,
                 lambda_tau: float = 1.0, alpha_m: float = 0.03, pixel_mask: bool = True,
                 default: float = 0.8) -> tuple:
    """AdapEdit FWT from a finished edit's recorded maps and features: (taus {word: tau}, widget text).

    store: the AttentionStore of the run (maps and features recorded at half the latent resolution, the
    paper's 32x32 at 512px); prompts: [source, edit_1, ...]; keywords: target positions of the edited words of
    ``prompts[prompt_index]``. The analysis runs after the last step, so it does not depend on how many model
    calls the sampler made.
    """
    if not store.feature_sums:
        raise ValueError("no visual features were recorded: run the Edit Sampler with an edit first, then FWT")
    if not 1 <= prompt_index < len(prompts):
        raise ValueError(f"prompt_index must be an edited prompt, 1..{len(prompts) - 1}")
    hw = sorted(store.feature_sums, key=lambda r: -r[0] * r[1])[0]
    maps = store.average(hw)[prompt_index].reshape(hw[0] * hw[1], -1)
    feats = store.features(hw)[prompt_index]
    target = prompts[prompt_index]
    taus = fwt_tau(maps, feats, keywords, word_positions(tokenizer, target), lambda_tau, alpha_m, pixel_mask)
    return taus, schedule_text(taus, default)


def split_words(text: str) -> tuple:
    """'cat, dog' -> ('cat', 'dog'); empty pieces dropped."""
    return tuple(w.strip() for w in text.replace(";", ",").split(",") if w.strip())


def attention_grid(maps: torch.Tensor, tokens: Sequence[str], cell: int = 64) -> torch.Tensor:
    """Per-token attention maps as a labelled IMAGE grid.

    maps: [h, w, T] (one prompt, T = 77, BOS at 0); tokens: the prompt's token strings (positions 1..len).
    Returns [1, rows * (cell + 14), cols * cell, 3] floats in [0, 1]: each map bilinearly resized to
    cell x cell and normalised to its own max (as the reference show_cross_attention does), its token below it.
    """
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image, ImageDraw

    n = max(len(tokens), 1)
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    label = 14
    canvas = Image.new("RGB", (cols * cell, rows * (cell + label)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, tok in enumerate(tokens):
        m = maps[..., j + 1][None, None].float()
        m = F.interpolate(m, size=(cell, cell), mode="bilinear", align_corners=False)[0, 0]
        m = (m / m.max().clamp_min(1e-12)).clamp(0, 1)
        tile = Image.fromarray((m.cpu().numpy() * 255).astype(np.uint8)).convert("RGB")
        r, c = divmod(j, cols)
        canvas.paste(tile, (c * cell, r * (cell + label)))
        draw.text((c * cell + 2, r * (cell + label) + cell + 1), str(tok)[: max(cell // 6, 3)], fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)[None]


def describe_alignment(tokenizer, source: str, target: str, mode: str = "auto") -> dict:
    """A human-readable summary of how ``target`` edits ``source`` (for the UI's alignment display).

    Returns {"mode": 'replace'|'refine', "swaps": [[src_word, tgt_word], ...], "added": [words],
    "removed": [words], "source_tokens": n, "target_tokens": m, "stream": "CLIP"|"T5", "limit": most prompt
    tokens (75 / 511), "seq_len": the edit's sequence length (77; T5 256 or 512)} or {"error": message} when the
    prompts cannot be aligned (the same ValueError text the sampler would raise).
    """
    import difflib

    try:
        a = align.align_prompts(tokenizer, source, target, mode)
    except ValueError as exc:
        return {"error": str(exc)}
    sw, tw = align.prompt_words(source), align.prompt_words(target)
    swaps, added, removed = [], [], []
    if a.mode == "replace":
        swaps = [[s, t] for s, t in zip(sw, tw) if s != t]
    else:
        ops = difflib.SequenceMatcher(a=[w.lower() for w in sw], b=[w.lower() for w in tw], autojunk=False)
        for tag, i1, i2, j1, j2 in ops.get_opcodes():
            if tag in ("insert", "replace"):
                added.extend(tw[j1:j2])
            if tag in ("delete", "replace"):
                removed.extend(sw[i1:i2])
    st = align.stream_of(tokenizer)
    return {"mode": a.mode, "swaps": swaps, "added": added, "removed": removed,
            "source_tokens": align.token_count(tokenizer, source), "target_tokens": align.token_count(tokenizer, target),
            "stream": st.name, "limit": st.limit, "seq_len": align.common_length(tokenizer, [source, target])}
