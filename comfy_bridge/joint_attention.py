"""Binds a P2PController to the joint attention of ComfyUI's MM-DiT models (the families whose record says
``binder="joint"``: Flux.1, SD3). What an edited call computes is attention/joint.py; this module only reads ComfyUI's
call and its ``transformer_options``.

Patch point: ``transformer_options["optimized_attention_override"]``, which ComfyUI 0.3.75 and 0.33.0 both call from
every attention kernel (comfy/ldm/modules/attention.py ``wrap_attn``) as ``override(func, q, k, v, heads, mask=...,
skip_reshape=True, transformer_options=...)``; Flux's attention (comfy/ldm/flux/math.py) passes q, k, v as
[B, heads, L, d] after RoPE, over the joint sequence [text (T5) ; image patches], with ``block_type`` ("double" /
"single") and ``block_index`` in the options; SD3's joint blocks (comfy/ldm/modules/diffusionmodules/mmdit.py
``_block_mixing``) pass [B, L, heads * d] with ``heads`` and no block labels (each such call is one joint block;
SD3.5's image-only second attention of an MMDiT-X block has L = HW and is left alone). The override is set on a
clone's model options; an override another node set is kept and called for everything this one does not edit. No
model class is replaced or subclassed.

Only the conditional chunk (``cond_or_uncond`` 0) is edited; Flux-dev runs at CFG 1, so usually that is every row.
``attention.processor.step_index`` maps the current sigma to its step interval (midpoint evaluations of the
second-order solvers included).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..attention.controllers import LayerInfo, P2PController
from ..attention.joint import MMDIT_BLOCKS, controlled_blocks, edited_joint_attention, head_group
from ..attention.processor import step_index

__all__ = ["JointAttentionControl", "install_joint_controller", "MMDIT_BLOCKS", "controlled_blocks", "head_group"]


class JointAttentionControl:
    """The ``optimized_attention_override`` of an edit (see the module docstring). ``text_len``: the number of text
    tokens T at the front of the joint sequence; ``latent_hw``: (H, W) of the latent (the image tokens are its
    2x2 patches); ``blocks``: a :data:`MMDIT_BLOCKS` policy; ``previous``: an override another node set."""

    #: the largest explicit probability tensor one group of heads may take (bytes); Flux.1 at 1024x1024 has
    #: L = 256 + 4096 tokens, so one head of one prompt is 76 MB in float32
    max_bytes = 1 << 30

    def __init__(self, controller: P2PController, text_len: int, latent_hw: tuple, blocks: str = "all",
                 previous=None, unlabelled: Optional[str] = None):
        controlled_blocks(blocks, "double", 0)  # validates the policy
        if unlabelled is not None and blocks == "vital":
            raise ValueError("the MM-DiT block choice 'vital' names FLUX.1-dev's vital layers (Stable Flow); this "
                             "model's blocks are not Flux's: choose 'all' or 'double'")
        #: the block type of a call whose options name none (SD3's joint blocks: "double"); None: such a call is
        #: left alone (Flux labels every block)
        self.unlabelled = unlabelled
        self.controller = controller
        self.text_len = int(text_len)
        for e in controller.edits:
            if int(e.cross_alpha.shape[-1]) != self.text_len:
                raise ValueError(
                    f"the edit's token maps have {int(e.cross_alpha.shape[-1])} positions but the conditioning has "
                    f"{self.text_len} text tokens: every prompt of an edit must be encoded at the same length "
                    "(attention.align.common_length); encode them with comfy_bridge.text.encode(..., seq_len=...)")
        self.latent_hw = tuple(int(v) for v in latent_hw)
        self.map_hw = (self.latent_hw[0] // 2, self.latent_hw[1] // 2)
        self.blocks = blocks
        self.previous = previous

    def _baseline(self, func, args, kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        q, k, v = args[0], args[1], args[2]
        to = kwargs.get("transformer_options") or {}
        ctrl = self.controller
        chunks = list(to.get("cond_or_uncond", [0]))
        T = self.text_len
        n_img = self.map_hw[0] * self.map_hw[1]
        heads = kwargs.get("heads", args[3] if len(args) > 3 else None)
        if q.ndim == 3 and not kwargs.get("skip_reshape") and isinstance(heads, int) and heads > 0 \
                and q.shape[-1] % heads == 0:
            # SD3's layout [B, L, heads * d] (Flux passes [B, heads, L, d] with skip_reshape)
            B, L = q.shape[0], q.shape[1]
            q, k, v = (t.reshape(B, L, heads, -1).transpose(1, 2) for t in (q, k, v))
        elif q.ndim != 4 or not kwargs.get("skip_reshape"):
            return self._baseline(func, args, kwargs)
        block_type = to.get("block_type", self.unlabelled)
        if (kwargs.get("mask") is not None or 0 not in chunks
                or q.shape[0] != len(chunks) * ctrl.num_prompts or q.shape[2] != T + n_img
                or not controlled_blocks(self.blocks, block_type, to.get("block_index"))):
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
        edited = edited_joint_attention(ctrl, q[sl], k[sl], v[sl], T, info, self_on, self.max_bytes)  # [P, h, L, d]
        edited = edited.transpose(1, 2).reshape(P, edited.shape[2], -1)
        if len(chunks) == 1:
            return edited
        if self.previous is not None:  # another node's override sees the whole batch, as it would without us
            out = self._baseline(func, args, kwargs).clone()
            out[sl] = edited.to(out.dtype)
            return out
        # the other chunks (CFG's unconditional rows) go to the kernel on their own: their rows only
        others = lambda t: torch.cat([t[:sl.start], t[sl.stop:]])  # noqa: E731 - the rows outside sl
        base = self._baseline(func, tuple(others(a) if i < 3 else a for i, a in enumerate(args)), kwargs)
        return torch.cat([base[:sl.start], edited.to(base.dtype), base[sl.start:]])


def install_joint_controller(model_patcher, controller: P2PController, text_len: int, latent_hw: tuple,
                             blocks: str = "all"):
    """A clone of ``model_patcher`` (an MM-DiT MODEL) whose joint attention is edited by ``controller``; an
    ``optimized_attention_override`` already set (another node's) is chained. Whether the model labels its blocks
    (Flux) or every joint call is one joint block (SD3) is the family record's ``block_labels``."""
    from .families import family_of

    fam = family_of(model_patcher)
    unlabelled = None if fam is None or fam.block_labels else "double"
    m = model_patcher.clone()
    to = dict(m.model_options.get("transformer_options", {}))
    previous = to.get("optimized_attention_override")
    to["optimized_attention_override"] = JointAttentionControl(controller, text_len, latent_hw, blocks, previous,
                                                               unlabelled)
    m.model_options["transformer_options"] = to
    return m
