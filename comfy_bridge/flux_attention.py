"""Binds a P2PController to the joint attention of ComfyUI's Flux (MM-DiT) blocks.

Patch point: ``transformer_options["optimized_attention_override"]``, which ComfyUI 0.3.75 and 0.33.0 both call from
every attention kernel (comfy/ldm/modules/attention.py ``wrap_attn``) as ``override(func, q, k, v, heads, mask=...,
skip_reshape=True, transformer_options=...)``; Flux's attention (comfy/ldm/flux/math.py) passes q, k, v as
[B, heads, L, d] after RoPE, over the joint sequence [text (T5) ; image patches], with ``block_type`` ("double" /
"single") and ``block_index`` in the options. The override is set on a clone's model options; an override another
node set is kept and called for everything this one does not edit. No model class is replaced or subclassed.

What an edited block computes (conditional rows only; Flux-dev runs at CFG 1, so usually that is every row): the
joint probabilities softmax(q k^T / sqrt(d)) in float32, then, for the image-query rows,

* cross-attention control on the image -> text block (the P2P map of a word is its column there): the
  controller's ``cross`` does exactly what it does for a UNet's attn2 (word swap, refine, reweight, the per-word
  windows; the maps are recorded for local blend and the preview);
* image -> image injection (the analogue of self_replace_steps): the edited rows take the source row's
  image -> image block within the self-injection window;
* renormalisation: each edited image-query row keeps its new text block, and its image block is rescaled so the
  row sums to 1 again (the text mass the edit asked for is kept, the image keys share what is left); when the new
  text mass alone reaches 1 the whole row is divided by its sum.

Text-query rows are never edited. The probabilities are computed a group of heads at a time
(``JointAttentionControl.max_bytes``), so the memory of an edited block stays bounded at any image size.
``attention.processor.step_index`` maps the current sigma to its step interval
(midpoint evaluations of the second-order solvers included).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..attention.controllers import LayerInfo, P2PController
from ..attention.processor import step_index
from ..attention.recipe import MMDIT_BLOCKS

__all__ = ["JointAttentionControl", "install_flux_controller", "FLUX_BLOCKS", "controlled_blocks", "head_group"]

#: which blocks are controlled: "all", "double" (the double-stream blocks only) or "vital" (Stable Flow's vital
#: layers of FLUX.1-dev: double 0, 1, 17, 18 and single 6, 9, 34, 35, 37; Avrahami et al. 2024, sec. 3.1)
FLUX_BLOCKS = MMDIT_BLOCKS
_VITAL = {("double", i) for i in (0, 1, 17, 18)} | {("single", i) for i in (6, 9, 34, 35, 37)}


def controlled_blocks(policy: str, block_type: Optional[str], block_index: Optional[int]) -> bool:
    """Whether ``policy`` (FLUX_BLOCKS) controls the block (block_type "double" / "single", block_index)."""
    if policy == "all":
        return block_type in ("double", "single")
    if policy == "double":
        return block_type == "double"
    if policy == "vital":
        return (block_type, block_index) in _VITAL
    raise ValueError(f"unknown block policy {policy!r}; choose one of {FLUX_BLOCKS}")


def head_group(prompts: int, heads: int, length: int, max_bytes: int) -> int:
    """The largest divisor g of ``heads`` whose float32 probabilities [prompts, g, length, length] fit ``max_bytes``
    (at least 1): equal groups keep the recorded maps' head average exact."""
    per_head = prompts * length * length * 4
    best = 1
    for g in range(1, heads + 1):
        if heads % g == 0 and g * per_head <= max_bytes:
            best = g
    return best


class JointAttentionControl:
    """The ``optimized_attention_override`` of an edit (see the module docstring). ``text_len``: the number of text
    tokens T at the front of the joint sequence; ``latent_hw``: (H, W) of the latent (the image tokens are its
    2x2 patches)."""

    #: the largest explicit probability tensor one group of heads may take (bytes); Flux.1 at 1024x1024 has
    #: L = 256 + 4096 tokens, so one head of one prompt is 76 MB in float32
    max_bytes = 1 << 30

    def __init__(self, controller: P2PController, text_len: int, latent_hw: tuple, blocks: str = "all",
                 previous=None):
        controlled_blocks(blocks, "double", 0)  # validates the policy
        self.controller = controller
        self.text_len = int(text_len)
        for e in controller.edits:
            if int(e.cross_alpha.shape[-1]) != self.text_len:
                raise ValueError(
                    f"the edit's token maps have {int(e.cross_alpha.shape[-1])} positions but the conditioning has "
                    f"{self.text_len} T5 tokens: every prompt of an edit must be encoded at the same length "
                    "(attention.align.common_length); encode them with comfy_bridge.text.encode(..., seq_len=...)")
        self.latent_hw = tuple(int(v) for v in latent_hw)
        self.map_hw = (self.latent_hw[0] // 2, self.latent_hw[1] // 2)
        self.blocks = blocks
        self.previous = previous

    def joint_probs(self, q: torch.Tensor, k: torch.Tensor, info: LayerInfo, self_on: bool) -> torch.Tensor:
        """The edited joint attention probabilities [P, heads, T + HW, T + HW] of the P prompt rows (q, k: [P, heads,
        L, d] float32, after RoPE); see the module docstring."""
        ctrl, T, P = self.controller, self.text_len, q.shape[0]
        probs = torch.softmax(q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5), dim=-1)  # [P, h, L, L]
        img = probs[:, :, T:]                                   # image-query rows [P, h, HW, L]
        text = ctrl.cross(img[..., :T].contiguous(), info)      # [P, h, HW, T], row 0 as it was
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

    def _baseline(self, func, args, kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        q, k, v = args[0], args[1], args[2]
        heads = args[3] if len(args) > 3 else kwargs.get("heads")
        to = kwargs.get("transformer_options") or {}
        ctrl = self.controller
        chunks = list(to.get("cond_or_uncond", [0]))
        T = self.text_len
        n_img = self.map_hw[0] * self.map_hw[1]
        if (q.ndim != 4 or not kwargs.get("skip_reshape") or kwargs.get("mask") is not None or 0 not in chunks
                or q.shape[0] != len(chunks) * ctrl.num_prompts or q.shape[2] != T + n_img
                or not controlled_blocks(self.blocks, to.get("block_type"), to.get("block_index"))):
            return self._baseline(func, args, kwargs)
        cache = ctrl.__dict__.setdefault("_step_cache", {})
        step = step_index(to.get("sigmas"), to.get("sample_sigmas"), cache)
        info = LayerInfo(step, ctrl.num_steps, True, self.map_hw, self.latent_hw)
        inj = ctrl.self_injection
        self_on = inj is not None and inj.start_step <= step < inj.end_step
        if not (ctrl.wants_cross(info) or self_on):
            return self._baseline(func, args, kwargs)
        P = ctrl.num_prompts
        c = chunks.index(0)
        sl = slice(c * P, (c + 1) * P)
        qc, kc, vc = q[sl].float(), k[sl].float(), v[sl].float()
        group = head_group(P, qc.shape[1], qc.shape[2], self.max_bytes)
        parts = []
        for h0 in range(0, qc.shape[1], group):  # a few heads at a time: [P, g, L, L] float32 stays within max_bytes
            hs = slice(h0, h0 + group)
            parts.append(self.joint_probs(qc[:, hs], kc[:, hs], info, self_on) @ vc[:, hs])
        edited = torch.cat(parts, 1).to(q.dtype)                              # [P, h, L, d]
        edited = edited.transpose(1, 2).reshape(P, edited.shape[2], -1)
        if len(chunks) == 1:
            return edited
        base = self._baseline(func, args, kwargs)
        out = base.clone()
        out[sl] = edited
        return out


def install_flux_controller(model_patcher, controller: P2PController, text_len: int, latent_hw: tuple,
                            blocks: str = "all"):
    """A clone of ``model_patcher`` (a Flux MODEL) whose joint attention is edited by ``controller``; an
    ``optimized_attention_override`` already set (another node's) is chained."""
    m = model_patcher.clone()
    to = dict(m.model_options.get("transformer_options", {}))
    previous = to.get("optimized_attention_override")
    to["optimized_attention_override"] = JointAttentionControl(controller, text_len, latent_hw, blocks, previous)
    m.model_options["transformer_options"] = to
    return m
