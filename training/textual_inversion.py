"""Textual inversion (Gal et al. 2022, "An Image is Worth One Word"), written against a training session.

A new word v* (the placeholder) gets ``n`` embedding vectors, initialised from the token embeddings of an
initializer word. Everything else is frozen; the vectors minimise the diffusion loss (Gal et al., Eq. 2)

    v* = argmin_v  E_{x, y, eps, t} || eps - eps_theta(z_t, t, c_theta(y(v))) ||^2

over the reference images x (latents z, random horizontal flips), prompts y drawn from a template set
("a photo of a {}", or style templates "a painting in the style of {}") with the placeholder in the blank, and
uniform timesteps t. The text encoder sees the vectors exactly where ComfyUI puts an ``embedding:<name>`` later
(comfy_bridge.text.PromptEncoder splices them in before the position embeddings), so training and use agree.

Only the new vectors are optimised: no row of the token embedding matrix and no weight of the UNet or text
encoder changes (the vectors live outside the model). Optimiser: AdamW (weight decay 1e-2 as the references),
constant learning rate; reference defaults are lr 5e-3 at batch 2 (rinongal/textual_inversion, scaled to 0.01
there by --scale_lr), 3000-6000 steps on SD1.x at 512 x 512.

File format (:func:`embedding_file`): ``{"emb_params": float32 [n, width]}`` in safetensors, with metadata
(format, name, initializer, steps, ...). ComfyUI's ``comfy/sd1_clip.py: load_embed`` reads it through
``embedding:<name>`` (it takes the file's only tensor), as do A1111 and kohya (``emb_params`` is their safetensors
key). SDXL: ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``, the SDXL embedding format of A1111 and ComfyUI (whose
SDXL tokenizers look up their own ``embedding_key``). Nothing here imports ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .common import TEMPLATES, Pool, prompt_for
from .fit import TrainingInterrupted, fit
from .objectives import eps_loss

__all__ = ["TIResult", "train_textual_inversion", "embedding_file", "FORMAT", "prompt_for", "probe_set"]

FORMAT = "attention_edit.textual_inversion"


@dataclass
class TIResult:
    """What a textual-inversion run learned.

    vectors: float32 [n, width] on the CPU (the best-so-far vectors when interrupted); losses: the training loss
    of every step run; probe_before / probe_after: the loss on a fixed probe set (fixed images, prompts, noise and
    timesteps spread over the schedule) before and after training, a less noisy measure than the step losses."""

    name: str
    vectors: torch.Tensor
    losses: list
    steps: int
    steps_done: int
    probe_before: float
    probe_after: float
    interrupted: bool = False
    best_step: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        return {"format": FORMAT, "version": "1", "name": self.name, "num_vectors": int(self.vectors.shape[0]),
                "width": int(self.vectors.shape[1]), "steps_done": self.steps_done, "interrupted": self.interrupted,
                "best_step": self.best_step, "probe_loss_before": self.probe_before,
                "probe_loss_after": self.probe_after, **{f"train.{k}": v for k, v in self.settings.items()}}


def probe_set(pool: Pool, templates, concept: str, T: int, seed: int, k: int = 8):
    """Fixed evaluation examples [(pool index, prompt, timestep, noise)], timesteps evenly over the schedule."""
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    out = []
    for j in range(k):
        i = j % len(pool)
        text = prompt_for(templates[j % len(templates)], concept, pool.prefixes[i])
        t = int((j + 0.5) / k * T)
        noise = torch.randn(pool.latents[i:i + 1].shape, generator=gen)
        out.append((i, text, t, noise))
    return out


def probe_loss(session, encoder, vectors, pool: Pool, probe) -> float:
    """Mean loss on a :func:`probe_set` (no gradient)."""
    total = 0.0
    with torch.no_grad():
        for i, text, t, noise in probe:
            ctx = encoder.encode(text, vectors)
            s = session.sigmas_for(torch.tensor([t]))
            total += float(eps_loss(session, pool.latents[i:i + 1], noise, s, ctx, pool.masks[i:i + 1]))
    return total / len(probe)


def train_textual_inversion(session, encoder, pool: Pool, init_vectors: torch.Tensor, name: str, steps: int = 1000,
                            learning_rate: float = 5e-3, batch_size: int = 1, seed: int = 0, templates: str = "object",
                            progress: Optional[Callable[[int, int], None]] = None, weight_decay: float = 1e-2,
                            settings: Optional[dict] = None) -> TIResult:
    """Learns the vectors of the new word ``name`` from the reference ``pool``.

    session: a ``training.fit.Session`` (comfy_bridge.training.TrainingSession over a clone of the MODEL, with the
    encoder's CLIP); encoder: prompts -> conditioning with the placeholder rows taken from the trained vectors
    (comfy_bridge.text.PromptEncoder: ``encode(text, vectors)``, ``placeholder()``); pool: the encoded reference
    images (training.common.build_pool, "flip"); init_vectors: [n, width] start vectors. Raises ValueError on bad
    settings, TrainingInterrupted (carrying the best-so-far TIResult) on interrupt.
    """
    if templates not in TEMPLATES:
        raise ValueError(f"unknown template set {templates!r}; choose one of {sorted(TEMPLATES)}")
    steps, batch_size = int(steps), int(batch_size)
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be at least 1")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    tmpl = TEMPLATES[templates]
    ph = encoder.placeholder()
    gen = torch.Generator().manual_seed(int(seed))
    T = session.num_timesteps()
    vectors = torch.nn.Parameter(init_vectors.clone().to(session.device))
    opt = torch.optim.AdamW([vectors], lr=float(learning_rate), weight_decay=float(weight_decay))
    stepper = session.grad_scaler()
    probe = probe_set(pool, tmpl, ph, T, seed)
    before = probe_loss(session, encoder, vectors, pool, probe)

    def step(_):
        idx = torch.randint(0, len(pool), (batch_size,), generator=gen)
        tix = torch.randint(0, len(tmpl), (batch_size,), generator=gen)
        texts = [prompt_for(tmpl[int(j)], ph, pool.prefixes[int(i)]) for i, j in zip(idx, tix)]
        ctx = torch.cat([encoder.encode(t, vectors) for t in texts])
        ts = torch.randint(0, T, (batch_size,), generator=gen)
        noise = torch.randn(pool.latents[idx].shape, generator=gen)
        loss = eps_loss(session, pool.latents[idx], noise, session.sigmas_for(ts), ctx, pool.masks[idx])
        stepper.step(opt, loss)
        return float(loss.detach())

    run = fit(step, steps, lambda: {"vectors": vectors}, session, progress)
    cfg = dict(settings or {})
    cfg.update(num_vectors=int(init_vectors.shape[0]), steps=steps, learning_rate=learning_rate,
               batch_size=batch_size, seed=int(seed), templates=templates, weight_decay=weight_decay)
    if run.interrupted:
        vecs = run.state.get("vectors", vectors.detach())
        raise TrainingInterrupted(TIResult(name, vecs.detach().float().cpu().clone(), run.losses, steps,
                                           run.steps_done, before, float("nan"), True, run.best_step, run.seconds,
                                           cfg))
    after = probe_loss(session, encoder, vectors, pool, probe)
    return TIResult(name, vectors.detach().float().cpu().clone(), run.losses, steps, run.steps_done, before, after,
                    False, run.steps_done, run.seconds, cfg)


def embedding_file(result_or_vectors, name: Optional[str] = None, metadata: Optional[dict] = None,
                   layout: Optional[list] = None) -> tuple:
    """(tensors, metadata) of an embedding file: {"emb_params": [n, width] float32} and the run's metadata; with a
    ``layout`` of several text encoders [(tensor name, width), ...] (SDXL: [("clip_l", 768), ("clip_g", 1280)],
    comfy_bridge.text.encoders) the vectors [n, sum of widths] are split into one tensor per encoder, the SDXL
    embedding format A1111 and ComfyUI read (ComfyUI's SDXL tokenizers take "clip_l" / "clip_g").

    ``result_or_vectors``: a TIResult (its name and metadata are used) or a tensor [n, width] with ``name``.
    ValueError when the layout's widths do not add up to the vectors' width."""
    if isinstance(result_or_vectors, TIResult):
        vectors = result_or_vectors.vectors
        meta = {**result_or_vectors.metadata(), **(metadata or {})}
    else:
        vectors = result_or_vectors
        meta = {"format": FORMAT, "version": "1", "name": name, **(metadata or {})}
    if vectors.ndim == 1:
        vectors = vectors[None]
    vectors = vectors.detach().float().cpu()
    if not layout or len(layout) == 1:
        return {"emb_params": vectors}, meta
    if sum(int(w) for _, w in layout) != vectors.shape[-1]:
        raise ValueError(f"the vectors are {vectors.shape[-1]} wide but the encoders {layout} add up to "
                         f"{sum(int(w) for _, w in layout)}")
    tensors, start = {}, 0
    for key, w in layout:
        tensors[key] = vectors[:, start:start + int(w)].contiguous()
        start += int(w)
    return tensors, meta
