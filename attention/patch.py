"""Binds a P2PController to ComfyUI's attention patch points (attn1 / attn2 replace, per transformer block).

This is the only module that knows ComfyUI's ``transformer_options`` layout (``patches_replace``,
``cond_or_uncond``, ``sigmas``, ``sample_sigmas``, ``original_shape``). Everything is installed on a
``ModelPatcher.clone()``; the original model is never changed.

How a patched layer computes (``AttentionEditPatch.__call__``), q: [B, HW, heads*d], k/v: [B, T, heads*d]:
  * the batch is ``len(cond_or_uncond)`` chunks of P prompt rows; only the conditional chunk (0) is edited,
    as in the reference (google/prompt-to-prompt edits ``attn[h // 2:]``);
  * when the controller does not need this layer at this step, the layer runs ComfyUI's own kernel
    (``optimized_attention``), so cost is unchanged there;
  * otherwise the conditional rows get explicit probabilities softmax(q k^T / sqrt(d)) (float32), which the
    controller edits, then ``probs @ v``;
  * self-attention injection only needs the source row's probabilities: every row i gets P_src @ v_i.

Stacking: if another node already put a replace patch on the same key, it is kept and still called; our
edit is added on top as ``previous(q,k,v) + (ours - plain)`` on the conditional rows, so both take effect.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .controllers import LayerInfo, P2PController


def _plain_attention(q, k, v, heads, extra_options):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                               transformer_options=extra_options)


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) in float32. q: [b, n, heads*d], k: [b, m, heads*d] -> [b, heads, n, m]."""
    b, n, hd = q.shape
    d = hd // heads
    qh = q.reshape(b, n, heads, d).transpose(1, 2).float()
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2).float()
    return torch.softmax(qh @ kh.transpose(-1, -2) * (d ** -0.5), dim=-1)


def apply_probs(probs: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """probs: [b, heads, n, m] (or [heads, n, m], shared by all b rows), v: [b, m, heads*d] -> [b, n, heads*d]."""
    b, m, hd = v.shape
    d = hd // heads
    vh = v.reshape(b, m, heads, d).transpose(1, 2)
    out = probs.to(vh.dtype) @ vh
    return out.transpose(1, 2).reshape(b, -1, hd)


def step_index(extra_options: dict, cache: Optional[dict] = None) -> int:
    """0-based step of the current call: the index of the current sigma in the sampler's schedule.

    ``cache`` (a dict kept by the caller) remembers the answer per sigma, so the schedule is searched once per
    step rather than once per layer."""
    sigmas = extra_options.get("sigmas")
    schedule = extra_options.get("sample_sigmas")
    if sigmas is None or schedule is None:
        return 0
    s = float(sigmas.reshape(-1)[0])
    if cache is not None and cache.get("sigma") == s and cache.get("schedule") is schedule:
        return cache["step"]
    step = int(torch.argmin((schedule[:-1].float().cpu() - s).abs()).item()) if len(schedule) > 1 else 0
    if cache is not None:
        cache.update(sigma=s, schedule=schedule, step=step)
    return step


def _map_hw(extra_options: dict, n_query: int) -> tuple[tuple[int, int], tuple[int, int]]:
    shape = extra_options.get("original_shape")
    if shape is None:
        side = int(round(math.sqrt(n_query)))
        return (side, side), (side, side)
    H, W = int(shape[-2]), int(shape[-1])
    ds = math.sqrt(H * W / n_query)
    h = max(int(round(H / ds)), 1)
    w = max(n_query // h, 1)
    return (h, w), (H, W)


class AttentionEditPatch:
    """A replace patch for one attention layer; see the module docstring for what it computes."""

    def __init__(self, controller: P2PController, is_cross: bool, previous=None):
        self.controller = controller
        self.is_cross = is_cross
        self.previous = previous

    def _baseline(self, q, k, v, heads, extra_options):
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return _plain_attention(q, k, v, heads, extra_options)

    def __call__(self, q, k, v, extra_options):
        ctrl = self.controller
        heads = extra_options["n_heads"]
        chunks = list(extra_options.get("cond_or_uncond", [0]))
        P = ctrl.num_prompts
        if 0 not in chunks or q.shape[0] != len(chunks) * P:
            return self._baseline(q, k, v, heads, extra_options)
        map_hw, latent_hw = _map_hw(extra_options, q.shape[1])
        cache = ctrl.__dict__.setdefault("_step_cache", {})
        info = LayerInfo(step_index(extra_options, cache), ctrl.num_steps, self.is_cross, map_hw, latent_hw)
        if not (ctrl.wants_cross(info) if self.is_cross else ctrl.wants_self(info)):
            return self._baseline(q, k, v, heads, extra_options)

        c = chunks.index(0)
        sl = slice(c * P, (c + 1) * P)
        qc, kc, vc = q[sl], k[sl], v[sl]
        if self.is_cross:
            feats = None
            if ctrl.wants_features(info):
                captured = getattr(ctrl, "_captured", None)
                if captured is not None and captured.shape[0] == q.shape[0] and captured.shape[1] == q.shape[1]:
                    feats = captured[sl]
            probs = ctrl.cross(attention_probs(qc, kc, heads), info, feats)
            edited = apply_probs(probs, vc, heads)
        else:
            src = attention_probs(qc[:1], kc[:1], heads)[0]  # [heads, HW, HW]
            edited = apply_probs(src, vc, heads)
        edited = edited.to(q.dtype)

        if self.previous is not None:
            base = self.previous(q, k, v, extra_options)
            plain_c = _plain_attention(qc, kc, vc, heads, extra_options)
            out = base.clone()
            out[sl] = base[sl] + (edited - plain_c)
            return out
        if len(chunks) == 1:
            return edited
        parts = []
        for j in range(len(chunks)):
            if j == c:
                parts.append(edited)
            else:
                s = slice(j * P, (j + 1) * P)
                parts.append(_plain_attention(q[s], k[s], v[s], heads, extra_options))
        return torch.cat(parts, 0)


class FeatureCapture:
    """An attn2_patch that keeps the cross-attention layer's input hidden states [B, HW, C] on the controller,
    for the replace patch that follows in the same block (AdapEdit's visual embeddings E_[V])."""

    def __init__(self, controller: P2PController):
        self.controller = controller

    def __call__(self, n, context, value, extra_options):
        self.controller._captured = n
        return n, context, value


def transformer_block_keys(model_patcher) -> list[tuple[str, int, int]]:
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

    Replace patches already present (from other nodes) on a key are chained, not dropped.
    """
    m = model_patcher.clone()
    if not transformer_block_keys(m):
        raise ValueError("this model has no cross-attention transformer blocks (SpatialTransformer); "
                         "Prompt-to-Prompt needs an SD1.x/SD2.x-style UNet")
    replace = m.model_options.get("transformer_options", {}).get("patches_replace", {})
    if any(e.dps is not None for e in controller.edits) or controller.feature_downscale is not None:
        m.set_model_attn2_patch(FeatureCapture(controller))
    for key in transformer_block_keys(m):
        for name, is_cross in (("attn1", False), ("attn2", True)):
            existing = replace.get(name, {})
            prev = existing.get(key, existing.get(key[:2]))
            m.set_model_patch_replace(AttentionEditPatch(controller, is_cross, prev), name, key[0], key[1], key[2])
    return m
