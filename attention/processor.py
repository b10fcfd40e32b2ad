"""What one patched attention layer computes, written against tensors (comfy_bridge/attention.py binds it to
ComfyUI's attn1/attn2 replace patches; nothing here imports ComfyUI).

q: [B, n, heads*d], k/v: [B, m, heads*d]; the batch is ``len(chunks)`` chunks of P prompt rows, ``chunks[j]`` is 0
for the conditional chunk and 1 for the unconditional one:
  * only the conditional chunk is edited, as in the reference (google/prompt-to-prompt edits ``attn[h // 2:]``);
  * when the controller does not need this layer at this step, the layer runs the host's own kernel
    (``plain``), so cost is unchanged there;
  * otherwise the conditional rows get explicit probabilities softmax(q k^T / sqrt(d)) (float32), which the
    controller edits (cross-attention), then ``probs @ v``;
  * self-attention injection only needs the source row's probabilities: every row i gets P_src @ v_i.
Stacking: with ``previous`` (another extension's replace patch on the same layer) the edit is added on top as
``previous(q,k,v) + (ours - plain)`` on the conditional rows, so both take effect.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .controllers import LayerInfo, P2PController


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


def step_index(sigma: Optional[torch.Tensor], schedule: Optional[torch.Tensor], cache: Optional[dict] = None) -> int:
    """0-based step of the current call: the step interval of the sampler's (descending) schedule that holds the
    current sigma, i.e. the sigma's index when it is one of the schedule's (0 when either is unknown). ``cache`` (a dict kept by the caller) remembers the answer per sigma, so the schedule is searched once
    per step rather than once per layer."""
    if sigma is None or schedule is None:
        return 0
    s = float(sigma.reshape(-1)[0])
    if cache is not None and cache.get("sigma") == s and cache.get("schedule") is schedule:
        return cache["step"]
    # the step whose interval holds the sigma (schedule[i] >= s > schedule[i + 1], descending): a schedule sigma is
    # its own step, and the midpoint evaluations of second-order solvers count to the step they belong to
    sched = schedule.float().cpu()
    tol = 1e-6 * max(abs(s), 1e-3)
    step = int((sched[1:-1] >= s - tol).sum().item()) if len(sched) > 1 else 0
    if cache is not None:
        cache.update(sigma=s, schedule=schedule, step=step)
    return step


def map_size(latent_shape, n_query: int) -> tuple:
    """((h, w) of a layer's query map, (H, W) of the latent) from the latent's shape [B, C, H, W] (or None: a
    square map is assumed) and the layer's number of queries."""
    if latent_shape is None:
        side = int(round(math.sqrt(n_query)))
        return (side, side), (side, side)
    H, W = int(latent_shape[-2]), int(latent_shape[-1])
    ds = math.sqrt(H * W / n_query)
    h = max(int(round(H / ds)), 1)
    w = max(n_query // h, 1)
    return (h, w), (H, W)


def edited_attention(q, k, v, heads: int, chunks: list, controller: P2PController, is_cross: bool, info: LayerInfo,
                     plain: Callable, previous: Optional[Callable] = None, features: Optional[torch.Tensor] = None):
    """The layer's output [B, n, heads*d] with the controller's edit on the conditional chunk (see the module
    docstring). plain(q, k, v) is the host's kernel on any rows; previous(q, k, v) another extension's patch of
    this layer (or None); features: the layer input's hidden states [B, n, C] when the controller wants them."""
    ctrl = controller
    P = ctrl.num_prompts
    c = chunks.index(0)
    sl = slice(c * P, (c + 1) * P)
    qc, kc, vc = q[sl], k[sl], v[sl]
    if is_cross:
        probs = ctrl.cross(attention_probs(qc, kc, heads), info, features[sl] if features is not None else None)
        edited = apply_probs(probs, vc, heads)
    else:
        src = attention_probs(qc[:1], kc[:1], heads)[0]  # [heads, HW, HW]
        edited = apply_probs(src, vc, heads)
    edited = edited.to(q.dtype)

    if previous is not None:
        base = previous(q, k, v)
        out = base.clone()
        out[sl] = base[sl] + (edited - plain(qc, kc, vc))
        return out
    if len(chunks) == 1:
        return edited
    parts = []
    for j in range(len(chunks)):
        if j == c:
            parts.append(edited)
        else:
            s = slice(j * P, (j + 1) * P)
            parts.append(plain(q[s], k[s], v[s]))
    return torch.cat(parts, 0)


def needs_layer(controller: P2PController, info: LayerInfo, is_cross: bool) -> bool:
    return controller.wants_cross(info) if is_cross else controller.wants_self(info)
