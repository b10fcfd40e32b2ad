"""Seeded explicit initialisation of the pack's test and ToyWorld models (every builder: models.py, flux_models.py,
sd3_models.py, ...). ComfyUI creates layers with ``torch.empty``; without a state dict every tensor is set here from
a seeded CPU generator, so the same seed gives bit-identical weights on every machine."""
from __future__ import annotations

import math

import torch

__all__ = ["init_weights"]


@torch.no_grad()
def init_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Seeded explicit initialisation (the torch defaults, drawn from a CPU generator in parameter-name order).

    Linear / Conv: kaiming-uniform(a=sqrt(5)) weights and uniform(+-1/sqrt(fan_in)) biases, as torch does;
    norms: weight 1, bias 0; embeddings: N(0, 0.02). In place; nothing is returned."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    done = set()
    for mname, mod in sorted(module.named_modules(), key=lambda kv: kv[0]):
        for pname, p in sorted(mod.named_parameters(recurse=False), key=lambda kv: kv[0]):
            if id(p) in done:
                continue
            done.add(id(p))
            shape = tuple(p.shape)
            if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                val = torch.ones(shape) if pname == "weight" else torch.zeros(shape)
            elif isinstance(mod, torch.nn.Embedding):
                val = torch.randn(shape, generator=gen) * 0.02
            elif pname == "logit_scale":
                val = torch.full(shape, math.log(1 / 0.07))
            elif len(shape) >= 2:
                fan_in = int(torch.tensor(shape[1:]).prod())
                bound = 1.0 / math.sqrt(fan_in)  # == kaiming_uniform(a=sqrt(5))
                val = (torch.rand(shape, generator=gen) * 2 - 1) * bound
            elif pname == "bias":
                w = getattr(mod, "weight", None)
                fan_in = int(torch.tensor(w.shape[1:]).prod()) if w is not None and w.dim() >= 2 else max(1, shape[0])
                bound = 1.0 / math.sqrt(fan_in)
                val = (torch.rand(shape, generator=gen) * 2 - 1) * bound
            else:
                val = torch.randn(shape, generator=gen) * 0.02
            p.copy_(val.to(dtype=p.dtype, device=p.device))
