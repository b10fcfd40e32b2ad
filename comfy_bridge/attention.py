"""Binds a P2PController (attention/controllers.py) to ComfyUI's attention patch points: an attn1 / attn2 replace
patch per transformer block (``ModelPatcher.set_model_patch_replace``) and an ``attn2_patch`` that hands AdapEdit
the cross-attention layer's input features. Installed on a ``ModelPatcher.clone()``; the original model is never
changed. What a patched layer computes is ``attention/processor.py``; this module only translates ComfyUI's
``transformer_options`` (``cond_or_uncond``, ``sigmas``, ``sample_sigmas``, ``original_shape``, ``n_heads``,
``attn_precision``) and calls ComfyUI's own kernel (``comfy.ldm.modules.attention.optimized_attention``) where no
edit is needed.

Stacking: a replace patch another node already put on the same key is kept and still called (tested with core
Self-Attention Guidance); the lookup tries (block, number, transformer_index) first, then (block, number), as
ComfyUI's BasicTransformerBlock does.
"""
from __future__ import annotations

import torch

from ..attention.controllers import LayerInfo, P2PController
from ..attention.processor import edited_attention, map_size, needs_layer, step_index

__all__ = ["AttentionEditPatch", "FeatureCapture", "transformer_block_keys", "install_controller", "plain_attention"]


def plain_attention(q, k, v, heads, extra_options):
    """ComfyUI's configured attention kernel (sub-quadratic, PyTorch SDPA, xformers ... as the host chose)."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                               transformer_options=extra_options)


class AttentionEditPatch:
    """A replace patch for one attention layer: ``patch(q, k, v, extra_options) -> out`` (ComfyUI's signature)."""

    def __init__(self, controller: P2PController, is_cross: bool, previous=None):
        self.controller = controller
        self.is_cross = is_cross
        self.previous = previous

    def _baseline(self, q, k, v, heads, extra_options):
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return plain_attention(q, k, v, heads, extra_options)

    def __call__(self, q, k, v, extra_options):
        ctrl = self.controller
        heads = extra_options["n_heads"]
        chunks = list(extra_options.get("cond_or_uncond", [0]))
        if 0 not in chunks or q.shape[0] != len(chunks) * ctrl.num_prompts:
            return self._baseline(q, k, v, heads, extra_options)
        map_hw, latent_hw = map_size(extra_options.get("original_shape"), q.shape[1])
        cache = ctrl.__dict__.setdefault("_step_cache", {})
        step = step_index(extra_options.get("sigmas"), extra_options.get("sample_sigmas"), cache)
        info = LayerInfo(step, ctrl.num_steps, self.is_cross, map_hw, latent_hw)
        if not needs_layer(ctrl, info, self.is_cross):
            return self._baseline(q, k, v, heads, extra_options)
        feats = None
        if self.is_cross and ctrl.wants_features(info):
            captured = getattr(ctrl, "_captured", None)
            if captured is not None and captured.shape[0] == q.shape[0] and captured.shape[1] == q.shape[1]:
                feats = captured
        previous = None
        if self.previous is not None:
            previous = lambda q_, k_, v_: self.previous(q_, k_, v_, extra_options)  # noqa: E731
        plain = lambda q_, k_, v_: plain_attention(q_, k_, v_, heads, extra_options)  # noqa: E731
        return edited_attention(q, k, v, heads, chunks, ctrl, self.is_cross, info, plain, previous, feats)


class FeatureCapture:
    """An attn2_patch that keeps the cross-attention layer's input hidden states [B, HW, C] on the controller,
    for the replace patch that follows in the same block (AdapEdit's visual embeddings E_[V])."""

    def __init__(self, controller: P2PController):
        self.controller = controller

    def __call__(self, n, context, value, extra_options):
        self.controller._captured = n
        return n, context, value


def transformer_block_keys(model_patcher) -> list:
    """Every (block_name, number, transformer_index) of the UNet's SpatialTransformers, in forward order.

    These are the keys ComfyUI's BasicTransformerBlock looks up in ``patches_replace['attn1'|'attn2']``:
    SD1.5 has input 1,2,4,5,7,8 / middle 0 / output 3..11, each with transformer index 0.
    """
    from comfy.ldm.modules.attention import SpatialTransformer

    dm = model_patcher.model.diffusion_model
    keys = []
    for name, module in dm.named_modules():
        if not isinstance(module, SpatialTransformer):
            continue
        parts = name.split(".")
        if parts[0] == "input_blocks":
            block = ("input", int(parts[1]))
        elif parts[0] == "middle_block":
            block = ("middle", 0)
        elif parts[0] == "output_blocks":
            block = ("output", int(parts[1]))
        else:
            continue
        for j in range(len(module.transformer_blocks)):
            keys.append((block[0], block[1], j))
    order = {"input": 0, "middle": 1, "output": 2}
    return sorted(keys, key=lambda t: (order[t[0]], t[1], t[2]))


def install_controller(model_patcher, controller: P2PController):
    """Returns a clone of ``model_patcher`` with ``controller`` on every attn1 and attn2 layer.

    Replace patches already present (from other nodes) on a key are chained, not dropped. ValueError for a model
    without cross-attention transformer blocks."""
    m = model_patcher.clone()
    if not transformer_block_keys(m):
        raise ValueError("this model has no cross-attention transformer blocks (SpatialTransformer); "
                         "Prompt-to-Prompt needs an SD1.x/SD2.x-style UNet")
    replace = m.model_options.get("transformer_options", {}).get("patches_replace", {})
    if controller.records_features():
        m.set_model_attn2_patch(FeatureCapture(controller))
    for key in transformer_block_keys(m):
        for name, is_cross in (("attn1", False), ("attn2", True)):
            existing = replace.get(name, {})
            prev = existing.get(key, existing.get(key[:2]))
            m.set_model_patch_replace(AttentionEditPatch(controller, is_cross, prev), name, key[0], key[1], key[2])
    return m
