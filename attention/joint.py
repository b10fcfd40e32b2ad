"""What an edited MM-DiT joint-attention call computes, written against tensors (the counterpart of
attention/processor.py for the UNet; comfy_bridge/joint_attention.py binds it to ComfyUI's attention override;
nothing here imports ComfyUI).

An MM-DiT block (Flux's double- and single-stream blocks, SD3's joint blocks) attends over one joint sequence
[text tokens (T) ; image tokens (HW)]. For the P prompt rows of the conditional chunk (q, k, v [P, heads, L, d],
L = T + HW) an edited call computes the joint probabilities softmax(q k^T / sqrt(d)) in float32, then, for the
image-query rows:

* cross-attention control on the image -> text block (the P2P map of a word is its column there): the
  controller's ``cross`` does exactly what it does for a UNet's attn2 (word swap, refine, reweight, the per-word
  windows; the maps are recorded for local blend and the preview);
* image -> image injection (the analogue of self_replace_steps): the edited rows take the source row's
  image -> image block within the self-injection window;
* renormalisation: each edited image-query row keeps its new text block, and its image block is rescaled so the
  row sums to 1 again (the text mass the edit asked for is kept, the image keys share what is left); when the new
  text mass alone reaches 1 the whole row is divided by its sum.

Text-query rows and the source row are never edited. The probabilities are computed a group of heads at a time
(:func:`head_group`), so the memory of an edited call stays bounded at any image size. The block choices
(:func:`controlled_blocks`) include Stable Flow's vital layers of FLUX.1-dev (Avrahami et al. 2024, "Stable Flow:
Vital Layers for Training-Free Image Editing", sec. 3.1).
"""
from __future__ import annotations

from typing import Optional

import torch

from .controllers import LayerInfo, P2PController
from .recipe import MMDIT_BLOCKS

__all__ = ["MMDIT_BLOCKS", "controlled_blocks", "head_group", "joint_probs", "edited_joint_attention"]

_VITAL = {("double", i) for i in (0, 1, 17, 18)} | {("single", i) for i in (6, 9, 34, 35, 37)}


def controlled_blocks(policy: str, block_type: Optional[str], block_index: Optional[int]) -> bool:
    """Whether ``policy`` (:data:`MMDIT_BLOCKS`: "all", "double": the double-stream (joint) blocks only, "vital":
    Stable Flow's vital layers of FLUX.1-dev, double 0, 1, 17, 18 and single 6, 9, 34, 35, 37) controls the block
    (``block_type`` "double" / "single", ``block_index``). ValueError for an unknown policy."""
    if policy == "all":
        return block_type in ("double", "single")
    if policy == "double":
        return block_type == "double"
    if policy == "vital":
        return (block_type, block_index) in _VITAL
    raise ValueError(f"unknown block policy {policy!r}; choose one of {MMDIT_BLOCKS}")


def head_group(prompts: int, heads: int, length: int, max_bytes: int) -> int:
    """The largest divisor g of ``heads`` whose float32 probabilities [prompts, g, length, length] fit ``max_bytes``
    (at least 1): equal groups keep the recorded maps' head average exact."""
    per_head = prompts * length * length * 4
    best = 1
    for g in range(1, heads + 1):
        if heads % g == 0 and g * per_head <= max_bytes:
            best = g
    return best


def joint_probs(controller: P2PController, q: torch.Tensor, k: torch.Tensor, text_len: int, info: LayerInfo,
                self_on: bool) -> torch.Tensor:
    """The edited joint attention probabilities [P, heads, T + HW, T + HW] of the P prompt rows (q, k: [P, heads,
    L, d] float32, after any RoPE / q-k norm; T = ``text_len`` text tokens first); see the module docstring."""
    T, P = int(text_len), q.shape[0]
    probs = torch.softmax(q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5), dim=-1)  # [P, h, L, L]
    img = probs[:, :, T:]                                         # image-query rows [P, h, HW, L]
    text = controller.cross(img[..., :T].contiguous(), info)      # [P, h, HW, T], row 0 as it was
    image = img[..., T:]
    if self_on and P > 1:
        image = torch.cat([image[:1], image[:1].expand(P - 1, -1, -1, -1)], 0)
    text_mass = text.sum(-1, keepdim=True)
    image_mass = image.sum(-1, keepdim=True).clamp_min(1e-12)
    room = (1.0 - text_mass).clamp_min(0.0)
    rows = torch.cat([text, image * (room / image_mass)], -1)
    over = (text_mass > 1.0).squeeze(-1)
    if bool(over.any()):
        rows = torch.where(over[..., None], rows / rows.sum(-1, keepdim=True).clamp_min(1e-12), rows)
    rows[0] = img[0]  # the source row is never edited
    return torch.cat([probs[:, :, :T], rows], 2)


def edited_joint_attention(controller: P2PController, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           text_len: int, info: LayerInfo, self_on: bool, max_bytes: int) -> torch.Tensor:
    """The edited output [P, heads, L, d] (q's dtype) of the P prompt rows (q, k, v: [P, heads, L, d]): the
    :func:`joint_probs` of a group of heads at a time (:func:`head_group` within ``max_bytes``) times v."""
    qc, kc, vc = q.float(), k.float(), v.float()
    group = head_group(qc.shape[0], qc.shape[1], qc.shape[2], max_bytes)
    parts = []
    for h0 in range(0, qc.shape[1], group):
        hs = slice(h0, h0 + group)
        parts.append(joint_probs(controller, qc[:, hs], kc[:, hs], text_len, info, self_on) @ vc[:, hs])
    return torch.cat(parts, 1).to(q.dtype)
