"""Prompt-to-Prompt attention controllers, written against tensors.

Each controller edits the attention probabilities of the *conditional* branch of a batch whose rows are
prompts: row 0 is the source prompt (the reconstruction), rows 1..P-1 are the edited prompts.
Nothing here knows about ComfyUI; ``comfy_bridge/attention.py`` binds a controller to the UNet's attn1/attn2 layers.

Source: Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control" (2022), section 3.2
(word swap Eq. "Edit(M_t, M*_t, t)", prompt refinement, attention re-weighting) and section 3.3 / appendix
(local blend); reference repo google/prompt-to-prompt, notebook classes AttentionStore, AttentionControlEdit,
AttentionReplace, AttentionRefine, AttentionReweight and LocalBlend.

Shapes used throughout:
    cross-attention probabilities  [P, heads, HW, T]   (T = 77 CLIP tokens)
    self-attention probabilities   [heads, HW, HW]     (the source row only; see ``SelfInjection``)
    latents                        [P, C, H, W]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LayerInfo:
    """Where and when an attention call happens.

    step:      0-based sampling step (index into the replayed sigma schedule).
    num_steps: number of sampling steps.
    is_cross:  True for attn2 (cross-attention to the text), False for attn1 (self-attention).
    map_hw:    (h, w) of the layer's query map, e.g. (16, 16) for a 16x16 UNet level.
    latent_hw: (H, W) of the latent, e.g. (64, 64) for a 512x512 image with SD1.x.
    """

    step: int
    num_steps: int
    is_cross: bool
    map_hw: tuple[int, int]
    latent_hw: tuple[int, int]

    @property
    def downscale(self) -> float:
        """How many latent pixels one map pixel covers along a side (1 = full latent resolution)."""
        return self.latent_hw[0] / max(self.map_hw[0], 1)


@dataclass
class PromptEdit:
    """How one edited prompt (row i >= 1) takes the source's cross-attention maps.

    kind:        'replace' (word swap, P2P sec. 3.2 "Word Swap") or 'refine' (added/removed words,
                 P2P "Adding a New Phrase").
    mapper:      'replace': float [T, T] matrix M[src_token, tgt_token] (reference seq_aligner
                 get_replacement_mapper); 'refine': long [T] source index per target token, -1 for new tokens
                 (reference get_refinement_mapper).
    alphas:      float [T]; 'refine' only: 1 where the target token has a source token, 0 for new tokens.
    cross_alpha: float [num_steps + 1, T]; 1 where the source map is injected into that target token at that
                 step (reference ptp_utils.get_time_words_attention_alpha; the +1 row is the reference's).
    equalizer:   optional float [T] per-token scale of the injected map (P2P "Attention Re-weighting").
    """

    kind: str
    mapper: torch.Tensor
    cross_alpha: torch.Tensor
    alphas: Optional[torch.Tensor] = None
    equalizer: Optional[torch.Tensor] = None
    keyword_tokens: tuple = ()  # target positions of the edited words (swapped or added)

    def __post_init__(self):
        if self.kind not in ("replace", "refine"):
            raise ValueError(f"PromptEdit.kind must be 'replace' or 'refine', got {self.kind!r}")
        if self.kind == "refine" and self.alphas is None:
            raise ValueError("a 'refine' PromptEdit needs alphas (0 for new target tokens, 1 elsewhere)")
        self._moved: dict = {}

    def _on(self, name: str, dev, dt=None) -> torch.Tensor:
        """``getattr(self, name)`` on device ``dev`` (and dtype ``dt``), moved once and kept: the patch calls
        this for every layer of every step."""
        key = (name, str(dev), dt)
        t = self._moved.get(key)
        if t is None:
            t = getattr(self, name).to(dev) if dt is None else getattr(self, name).to(dev, dt)
            self._moved[key] = t
        return t

    def mapped(self, base: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
        """R(M_src): the source row's maps moved to the edited prompt's tokens (the word-swap mapping, an einsum over
        the mapper; or the refinement gather, where new tokens keep their own maps), times the equalizer.
        base, edit: [heads, HW, T]."""
        dev, dt = edit.device, edit.dtype
        if self.kind == "replace":
            out = torch.einsum("hpw,wn->hpn", base, self._on("mapper", dev, dt))
        else:
            alphas = self._on("alphas", dev, dt)
            # index -1 (a new token) gathers the last column; alphas == 0 there masks it out
            out = base[:, :, self._on("mapper", dev)] * alphas + edit * (1 - alphas)
        if self.equalizer is not None:
            out = out * self._on("equalizer", dev, dt)
        return out

    def own_maps(self, mapped: torch.Tensor, edit: torch.Tensor, alpha: torch.Tensor,
                 features: Optional[torch.Tensor], map_hw) -> torch.Tensor:
        """The maps the edited row keeps where it is not injected: its own (P2P). Extensions (AdapEdit's DPS)
        override this."""
        return edit

    def inject(self, base: torch.Tensor, edit: torch.Tensor, step: int, features: Optional[torch.Tensor] = None,
               map_hw=None) -> torch.Tensor:
        """Returns the edited row's new cross-attention probabilities.

        base, edit: [heads, HW, T] (source row, this edited row); features: optional [HW, d] input features of the
        layer. Implements ``M_new = alpha_t * R(M_src) + (1 - alpha_t) * own`` with R from :meth:`mapped` and
        ``own`` from :meth:`own_maps` (the edit's own maps). No renormalisation, as in the reference.
        """
        mapped = self.mapped(base, edit)
        a = self._on("cross_alpha", edit.device, edit.dtype)[min(step, self.cross_alpha.shape[0] - 1)]
        return mapped * a + self.own_maps(mapped, edit, a, features, map_hw) * (1 - a)

    def active(self, step: int) -> bool:
        """True when this edit changes any token's map at ``step`` (otherwise the layer can skip it)."""
        row = self.cross_alpha[min(step, self.cross_alpha.shape[0] - 1)]
        return bool((row != 0).any())

    def needs_features(self) -> bool:
        """Whether :meth:`inject` uses the layer's input features (AdapEdit's DPS does)."""
        return False


class AttentionStore:
    """Cross-attention maps of every prompt, averaged over heads, layers and steps, per map resolution.

    ``add`` takes [P, heads, HW, T]; ``average(hw)`` returns [P, h, w, T]. Used by local blend and by the
    attention-map preview (reference AttentionStore / get_average_attention, which averages the same way).
    """

    def __init__(self):
        self.sums: dict[tuple[int, int], torch.Tensor] = {}
        self.counts: dict[tuple[int, int], int] = {}
        self.feature_sums: dict[tuple[int, int], torch.Tensor] = {}
        self.feature_counts: dict[tuple[int, int], int] = {}

    def add_features(self, features: torch.Tensor, map_hw: tuple[int, int]) -> None:
        """Visual embeddings [P, HW, d] of the cross-attention layers' inputs, averaged like the maps (for
        AdapEdit's FWT analysis). Layers of one resolution must share d (true for SD1.x UNet levels)."""
        f = features.detach().float()
        if map_hw in self.feature_sums and self.feature_sums[map_hw].shape == f.shape:
            self.feature_sums[map_hw] = self.feature_sums[map_hw] + f
            self.feature_counts[map_hw] += 1
        elif map_hw not in self.feature_sums:
            self.feature_sums[map_hw] = f
            self.feature_counts[map_hw] = 1

    def features(self, map_hw: tuple[int, int]) -> torch.Tensor:
        """[P, HW, d] average features at ``map_hw``."""
        if map_hw not in self.feature_sums:
            raise KeyError(f"no features were recorded at {map_hw}; recorded: {sorted(self.feature_sums)}")
        return self.feature_sums[map_hw] / self.feature_counts[map_hw]

    def add(self, probs: torch.Tensor, map_hw: tuple[int, int]) -> None:
        m = probs.detach().float().mean(1)
        if map_hw in self.sums:
            self.sums[map_hw] = self.sums[map_hw] + m
            self.counts[map_hw] += 1
        else:
            self.sums[map_hw] = m
            self.counts[map_hw] = 1

    def resolutions(self) -> list[tuple[int, int]]:
        return sorted(self.sums, key=lambda hw: hw[0] * hw[1])

    def average(self, map_hw: tuple[int, int]) -> torch.Tensor:
        if map_hw not in self.sums:
            raise KeyError(f"no attention maps were stored at {map_hw}; stored: {self.resolutions()}")
        s = self.sums[map_hw] / self.counts[map_hw]
        return s.reshape(s.shape[0], map_hw[0], map_hw[1], s.shape[-1])

    def nearest(self, target_hw: tuple[int, int]) -> tuple[int, int]:
        """The stored resolution closest (in pixel count) to ``target_hw``."""
        if not self.sums:
            raise KeyError("the attention store is empty: no cross-attention maps were recorded")
        area = target_hw[0] * target_hw[1]
        return min(self.sums, key=lambda hw: (abs(hw[0] * hw[1] - area), -hw[0]))


@dataclass
class LocalBlend:
    """Local blend: keep the source latent outside the edited words' attention mask (P2P sec. 3.3).

    source_tokens: token positions of the blend words in the source prompt (row 0).
    target_tokens: per edited prompt, token positions of its blend words (may be empty).
    use:           'both' (union of source and target masks, the reference), 'source' (only the source
                   words' mask: Custom-Edit's B(M_t)) or 'target'.
    threshold:     on the max-normalised map (reference default 0.3).
    start_step:    blend only from this step on (NTI notebook start_blend = 0.2 of the steps).
    downscale:     map resolution used, as latent side / map side (4 = the reference's 16x16 maps at 512px).

    dilation:      max-pool radius in map pixels; None = auto (``pool_radius``: the reference's 3x3 pool on its
                   16x16 maps, scaled with the map side, so none on tiny maps).
    maps:          which maps of an edited row make its mask: 'injected' (the default: after injection, as the
                   reference: its AttentionStore keeps the tensor AttentionControlEdit then overwrites in place, so
                   in a word swap the edited word's mask comes from the source word's injected maps) or 'own' (its
                   attention maps as computed, before the source's are injected). ToyWorld colour swap with local
                   blend, 48 seeds (bench/bench_defaults.py local_blend): injected 69% / IoU 0.587 / background
                   37.3 dB, own 67% / 0.546 / 36.3 dB.

    fixed:         masks that need no attention maps, [P-1 or 1, 1, h, w] in {0, 1} (1 = take the edit): the
                   prediction-difference mask (DiffEdit, inversion/prediction_mask.py) or a MASK the user connected,
                   set by the edit glue before the replay; when set they replace the maps' masks (the words are then
                   not needed) and are resized (nearest) to the latent.

    Mask recipe (reference LocalBlend): mean map of the words' tokens -> 3x3 max-pool (stride 1; radius scaled
    with the map side here) -> nearest resize to the latent -> divide by its max -> > threshold.
    """

    source_tokens: Sequence[int]
    target_tokens: Sequence[Sequence[int]]
    use: str = "both"
    threshold: float = 0.3
    start_step: int = 0
    downscale: float = 4.0
    dilation: Optional[int] = None
    maps: str = "injected"
    fixed: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.maps not in ("own", "injected"):
            raise ValueError(f"local blend 'maps' must be 'own' or 'injected', got {self.maps!r}")
        if self.dilation is not None and int(self.dilation) < 0:
            raise ValueError(f"local blend dilation must be >= 0 map pixels (or None for auto), got {self.dilation}")
        if self.use not in ("both", "source", "target"):
            raise ValueError(f"local blend 'use' must be 'both', 'source' or 'target', got {self.use!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"local blend threshold must be within [0, 1], got {self.threshold}")

    def pool_radius(self, map_hw) -> int:
        """Max-pool radius in map pixels: ``dilation`` if set, else the reference's geometry (a 3x3 pool on 16x16
        maps = a dilation of 1/16 of the side): round(min(h, w) / 16), so 0 (no dilation) on maps of 7x7 or
        less, where one map pixel is a large part of the image (e.g. the 8x8 maps of a 64px model)."""
        if self.dilation is not None:
            return int(self.dilation)
        return int(round(min(int(map_hw[0]), int(map_hw[1])) / 16.0))

    def _word_mask(self, maps: torch.Tensor, tokens: Sequence[int], latent_hw) -> torch.Tensor:
        # maps: [h, w, T] -> [1, 1, H, W] bool
        if len(tokens) == 0:
            return torch.zeros((1, 1) + tuple(latent_hw), dtype=torch.bool, device=maps.device)
        m = maps[..., list(tokens)].sum(-1)[None, None]
        r = self.pool_radius(m.shape[-2:])
        if r > 0:
            m = F.max_pool2d(m, kernel_size=2 * r + 1, stride=1, padding=r)
        m = F.interpolate(m, size=tuple(latent_hw), mode="nearest")
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        return m > self.threshold

    def masks(self, store: Optional[AttentionStore], latent_hw, rows: Optional[int] = None) -> torch.Tensor:
        """Float masks [P-1, 1, H, W] (1 = take the edit, 0 = keep the source) for the edited rows (``rows``: P - 1,
        needed only with ``fixed`` masks; from the store's prompts otherwise)."""
        if self.fixed is not None:
            m = self.fixed.float()
            if tuple(m.shape[-2:]) != tuple(latent_hw):
                m = F.interpolate(m, size=tuple(int(v) for v in latent_hw), mode="nearest")
            n = rows if rows is not None else m.shape[0]
            if m.shape[0] not in (1, n):
                raise ValueError(f"local blend has {m.shape[0]} masks for {n} edited prompts; give one mask, or one "
                                 "per edited prompt")
            return m.expand(n, *m.shape[1:])
        hw = store.nearest((max(int(latent_hw[0] / self.downscale), 1), max(int(latent_hw[1] / self.downscale), 1)))
        maps = store.average(hw)  # [P, h, w, T]
        src = self._word_mask(maps[0], self.source_tokens, latent_hw)
        out = []
        for i in range(1, maps.shape[0]):
            tgt_tokens = self.target_tokens[i - 1] if i - 1 < len(self.target_tokens) else []
            tgt = self._word_mask(maps[i], tgt_tokens, latent_hw)
            m = {"both": src | tgt, "source": src, "target": tgt}[self.use]
            out.append(m.float())
        return torch.cat(out, 0)

    def apply(self, x: torch.Tensor, store: AttentionStore, step: int) -> torch.Tensor:
        """x: [P, C, H, W]. Returns x with each edited row equal to the source row outside its mask."""
        if step < self.start_step or x.shape[0] < 2:
            return x
        m = self.masks(store, x.shape[-2:], x.shape[0] - 1).to(x.device, x.dtype)
        base = x[:1]
        return torch.cat([base, base + m * (x[1:] - base)], 0)


@dataclass
class SelfInjection:
    """Self-attention injection: edited rows reuse the source row's self-attention probabilities.

    Active for steps in [start_step, end_step) (reference num_self_replace) and only on layers whose map is
    at least ``min_downscale`` times smaller than the latent along a side. min_downscale = 4 is the stable
    notebook's limit (maps of 16x16 or smaller at 512px, i.e. latent 64 / 16); 2 is the null-text notebook's
    (32x32 at 512px). Source: P2P sec. 3.2 / reference AttentionControlEdit.replace_self_attention.
    """

    start_step: int
    end_step: int
    min_downscale: float = 4.0

    def active(self, info: LayerInfo) -> bool:
        return self.start_step <= info.step < self.end_step and info.downscale >= self.min_downscale - 1e-6


@dataclass
class P2PController:
    """The whole Prompt-to-Prompt edit for one batch of prompts [source, edit_1, ..., edit_{P-1}].

    edits:         one PromptEdit per edited prompt (P - 1 of them).
    self_injection: optional SelfInjection.
    local_blend:   optional LocalBlend, applied to the latents after each step.
    store:         records cross-attention maps (always on: cheap, and used by local blend and the preview).
    store_min_downscale: record maps only on layers at least this much smaller than the latent (2 keeps the
                   reference's <= 32x32 at 512px; the full-resolution maps are the most expensive).
    """

    edits: list
    num_steps: int
    self_injection: Optional[SelfInjection] = None
    local_blend: Optional[LocalBlend] = None
    store: AttentionStore = field(default_factory=AttentionStore)
    #: the maps after injection, kept only when local blend builds its masks from them (LocalBlend.maps)
    injected_store: Optional[AttentionStore] = None
    store_min_downscale: float = 2.0
    feature_downscale: Optional[float] = 2.0  # record features on maps this much smaller than the latent (FWT)
    #: MM-DiT models (Flux): which blocks' joint attention is controlled, "all", "double" or "vital"
    #: (attention/joint.py controlled_blocks); UNets ignore it
    mmdit_blocks: str = "all"

    @property
    def num_prompts(self) -> int:
        return len(self.edits) + 1

    def wants_cross(self, info: LayerInfo) -> bool:
        """Whether this cross-attention layer must compute explicit probabilities at this step."""
        if any(e.active(info.step) for e in self.edits):
            return True
        return info.downscale >= self.store_min_downscale - 1e-6

    def wants_self(self, info: LayerInfo) -> bool:
        """Whether this self-attention layer injects the source's probabilities at this step."""
        return self.self_injection is not None and self.self_injection.active(info)

    def wants_features(self, info: LayerInfo) -> bool:
        """Whether this cross-attention layer needs its input hidden states (an edit that uses them, or the feature
        recording for AdapEdit's FWT analysis)."""
        if any(e.needs_features() for e in self.edits):
            return True
        return self.feature_downscale is not None and abs(info.downscale - self.feature_downscale) < 1e-6

    def records_features(self) -> bool:
        """Whether any layer needs its input features (so the binding captures them)."""
        return self.feature_downscale is not None or any(e.needs_features() for e in self.edits)

    def cross(self, probs: torch.Tensor, info: LayerInfo, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """probs: [P, heads, HW, T] of the conditional rows; features: optional [P, HW, d] hidden states.
        Returns the edited probabilities (same shape)."""
        if probs.shape[0] != self.num_prompts:
            raise ValueError(f"expected {self.num_prompts} prompt rows, got {probs.shape[0]}")
        if info.downscale >= self.store_min_downscale - 1e-6:
            self.store.add(probs, info.map_hw)
        if features is not None and self.feature_downscale is not None and \
                abs(info.downscale - self.feature_downscale) < 1e-6:
            self.store.add_features(features, info.map_hw)
        rows = [probs[0]]
        for i, e in enumerate(self.edits, start=1):
            if e.active(info.step):
                rows.append(e.inject(probs[0], probs[i], info.step,
                                     features[i] if features is not None else None, info.map_hw))
            else:
                rows.append(probs[i])
        out = torch.stack(rows, 0)
        if self.local_blend is not None and self.local_blend.maps == "injected" and \
                info.downscale >= self.store_min_downscale - 1e-6:
            if self.injected_store is None:
                self.injected_store = AttentionStore()
            self.injected_store.add(out, info.map_hw)
        return out

    def after_step(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Called with the latents [P, C, H, W] after each sampling step (local blend)."""
        if self.local_blend is None:
            return x
        store = self.injected_store if self.local_blend.maps == "injected" else self.store
        return self.local_blend.apply(x, store if store is not None else self.store, step)
