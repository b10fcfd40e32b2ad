"""AdapEdit soft attention: FWT per-word temporal scale and DPS pixel-level spatial weighting (tensors only).

Source: "AdapEdit: Spatio-Temporal Guided Adaptive Editing Algorithm for Text-Based Continuity-Sensitive Image
Editing" (AAAI 2024, arXiv 2312.08019), sec. 3.2: Eq. 4 (per-word switch between injected and interpolated maps),
Eq. 5-7 (FWT), Eq. 8-9 (DPS). Reference code AnonymousPony/adap-edit (class AttentionRelation, method
AttentionRefine.mask_cross_attention) was read for its intent; its bugs are not reproduced (the analysis fires
after the last step explicitly, not on the 51st UNet call of PNDM; no BOS off-by-one; repeated words are merged).

Conventions. Maps M are cross-attention probabilities over the 77 tokens; "features" X are the visual embeddings
E_[V]: the cross-attention layer's input hidden states at each pixel, [HW, d]. Keyword tokens are the edited
words of the target prompt (new tokens of a refine, swapped tokens of a word swap).

Deliberate choices, where the paper leaves room:
  * Eq. 5 normalises the maps "by a softmax" before multiplying with E_[V]; a softmax over pixels of
    probabilities in [0, 1] is nearly uniform (every token would get the mean feature), so each token's map is
    normalised to sum 1 over the pixels instead (what the released code does).
  * Eq. 7 uses the cosine similarity A_i in [-1, 1], so tau_i = lambda_tau * (1 - exp(A_i - 1)) lies in
    [0, 0.865 * lambda_tau]; tau is a fraction of the steps (the cross_replace_steps of that word), 0 for keywords.
  * lambda_tau is not given numerically in the paper; default 1.0 (tau in [0, 0.86]); it sweeps it in Fig. 7.
  * S[V] = lambda_S[V] * cos(E_k, E_[V]) is clamped to [0, 1] so Eq. 8 stays an interpolation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .controllers import PromptEdit

ALPHA_M = 0.03  # paper: the empirical map threshold alpha_m
LAMBDA_S = 0.9  # paper Fig. 7: lambda_S = 0.9 (0.98 for a stronger edit)
LAMBDA_SV = 1.0  # paper Fig. 7: lambda_S[V] from 0.8 to 1.0
LAMBDA_TAU = 1.0  # not given numerically in the paper (see the module docstring)


def keyword_embedding(maps: torch.Tensor, features: torch.Tensor, keyword_tokens: Sequence[int],
                      alpha_m: float = ALPHA_M, pixel_mask: bool = True) -> torch.Tensor:
    """E_{e*_k}: the keywords' text-side visual embedding (Eq. 5, then average pooling over the keywords).

    maps: [HW, T] one prompt's cross-attention maps (averaged over heads); features: [HW, d]; keyword_tokens:
    token positions. Maps under ``alpha_m`` are zeroed first when ``pixel_mask``. Returns [d], L2-normalised.
    """
    e = token_embeddings(maps, features, alpha_m, pixel_mask)
    return F.normalize(e[list(keyword_tokens)].mean(0), dim=0)


def token_embeddings(maps: torch.Tensor, features: torch.Tensor, alpha_m: float = ALPHA_M,
                     pixel_mask: bool = True) -> torch.Tensor:
    """E_{c*} (Eq. 5): per token, the map-weighted mean of the pixels' features. maps [HW, T], features
    [HW, d] -> [T, d], each row L2-normalised. A token whose (masked) map is all zero gets a zero row."""
    m = maps.float()
    if pixel_mask:
        m = torch.where(m < alpha_m, torch.zeros_like(m), m)
    m = m / m.sum(0, keepdim=True).clamp_min(1e-12)
    return F.normalize(m.transpose(0, 1) @ features.float(), dim=1)


def fwt_tau(maps: torch.Tensor, features: torch.Tensor, keyword_tokens: Sequence[int],
            word_tokens: dict, lambda_tau: float = LAMBDA_TAU, alpha_m: float = ALPHA_M,
            pixel_mask: bool = True) -> dict:
    """FWT (Eq. 6-7): the injection end (fraction of the steps) of every word of the target prompt.

    maps: [HW, T] the target prompt's cross-attention maps averaged over heads, layers and steps at one
    resolution; features: [HW, d] the visual embeddings at that resolution; keyword_tokens: positions of the
    edited words; word_tokens: {word: [token positions]} of the target's words (a word's A is the mean over its
    tokens). Returns {word: tau}: 0 for keywords, lambda_tau * (1 - exp(A - 1)) otherwise, A = cos(E_word, E_k).
    """
    if not keyword_tokens:
        raise ValueError("FWT needs the edited words (keywords): the edited prompt does not differ from the source")
    e = token_embeddings(maps, features, alpha_m, pixel_mask)
    ek = F.normalize(e[list(keyword_tokens)].mean(0), dim=0)
    kw = set(int(t) for t in keyword_tokens)
    out = {}
    for word, toks in word_tokens.items():
        if kw.intersection(toks):
            out[word] = 0.0
            continue
        a = float((e[list(toks)] @ ek).mean())
        out[word] = max(0.0, lambda_tau * (1.0 - math.exp(a - 1.0)))
    return out


def schedule_text(taus: dict, default: float = 0.8) -> str:
    """{word: tau} -> the cross_replace_steps widget syntax: '0.8; red: 0.35; circle: 0'."""
    parts = [f"{default:g}"] + [f"{w}: {round(t, 4):g}" for w, t in taus.items()]
    return "; ".join(parts)


def spatial_similarity(edit_maps: torch.Tensor, features: torch.Tensor, keyword_tokens: Sequence[int],
                       lambda_sv: float = LAMBDA_SV, alpha_m: float = ALPHA_M, pixel_mask: bool = True) -> torch.Tensor:
    """S[V] (Eq. 9): lambda_S[V] * cos(E_k, E_[V]) per pixel, clamped to [0, 1].

    edit_maps: [heads, HW, T] the edited prompt's current maps at this layer; features: [HW, d] the layer's
    visual embeddings. Returns [HW].
    """
    ek = keyword_embedding(edit_maps.float().mean(0), features, keyword_tokens, alpha_m, pixel_mask)
    s = F.normalize(features.float(), dim=1) @ ek
    return (lambda_sv * s).clamp(0.0, 1.0)


def dps_interpolate(m_src: torch.Tensor, m_edit: torch.Tensor, s: torch.Tensor, lambda_s: float = LAMBDA_S) -> torch.Tensor:
    """C(M, M*) (Eq. 8) = lambda_S [S M* + (1 - S) M] + (1 - lambda_S) M.

    m_src, m_edit: [heads, HW, T] (the source's maps mapped to the target's tokens, and the edited prompt's);
    s: [HW]. lambda_S = 0 gives the source maps; lambda_S = 1 with S = 1 gives the edited maps.
    """
    s = s.to(m_edit.dtype)[None, :, None]
    return lambda_s * (s * m_edit + (1 - s) * m_src) + (1 - lambda_s) * m_src


@dataclass
class DPS:
    """DPS settings for one edited prompt. keyword_tokens: positions of its edited words."""

    keyword_tokens: Sequence[int]
    lambda_s: float = LAMBDA_S
    lambda_sv: float = LAMBDA_SV
    alpha_m: float = ALPHA_M
    pixel_mask: bool = True
    # mean S[V] per map resolution (for the S[V] image output): hw -> (sum [HW], count)
    record: dict = field(default_factory=dict)

    def weights(self, edit_maps: torch.Tensor, features: torch.Tensor, map_hw) -> torch.Tensor:
        s = spatial_similarity(edit_maps, features, self.keyword_tokens, self.lambda_sv, self.alpha_m,
                               self.pixel_mask)
        acc, n = self.record.get(tuple(map_hw), (0.0, 0))
        self.record[tuple(map_hw)] = (acc + s.detach().cpu(), n + 1)
        return s

    def mean_map(self, map_hw) -> Optional[torch.Tensor]:
        if tuple(map_hw) not in self.record:
            return None
        acc, n = self.record[tuple(map_hw)]
        return (acc / n).reshape(map_hw)


@dataclass
class SoftPromptEdit(PromptEdit):
    """A Prompt-to-Prompt edit with AdapEdit's DPS (Eq. 4 and 8): outside a word's injection window the edited row
    keeps C(R(M_src), M*) instead of its own maps M*, with the pixel weights S[V] of :class:`DPS`. Without DPS
    (``dps`` None) it is exactly a :class:`PromptEdit`."""

    dps: Optional[DPS] = None

    def own_maps(self, mapped, edit, alpha, features, map_hw):
        if self.dps is None or features is None or not bool((alpha < 1).any()):
            return edit
        return dps_interpolate(mapped, edit, self.dps.weights(edit, features, map_hw), self.dps.lambda_s)

    def active(self, step: int) -> bool:
        return True if self.dps is not None else super().active(step)

    def needs_features(self) -> bool:
        return self.dps is not None
