"""Textual inversion (Gal et al. 2022, "An Image is Worth One Word"), trained on the MODEL/CLIP/VAE of the graph.

A new word v* (the placeholder) gets ``n`` embedding vectors, initialised from the token embeddings of an
initializer word. Everything else is frozen; the vectors minimise the diffusion loss (Gal et al., Eq. 2)

    v* = argmin_v  E_{x, y, eps, t} || eps - eps_theta(z_t, t, c_theta(y(v))) ||^2

over the reference images x (VAE latents z, random horizontal flips), prompts y drawn from a template set
("a photo of a {}", or style templates "a painting in the style of {}") with the placeholder in the blank, and
uniform timesteps t. The text encoder sees the vectors exactly where ComfyUI puts an ``embedding:<name>`` later
(the vectors replace token embeddings before the position embeddings), so training and use agree.

Only the new vectors are optimised: no row of the token embedding matrix and no weight of the UNet or text
encoder changes (the vectors live outside the model). Optimiser: AdamW (weight decay 1e-2 as the references),
constant learning rate; reference defaults are lr 5e-3 at batch 2 (rinongal/textual_inversion, scaled to 0.01
there by --scale_lr), 3000-6000 steps on SD1.x at 512 x 512.

File format: ``{"emb_params": float32 [n, width]}`` in safetensors, with metadata (format, name, initializer,
steps, ...). ComfyUI's ``comfy/sd1_clip.py: load_embed`` reads it through ``embedding:<name>`` (it takes the
file's only tensor), as do A1111 and kohya (``emb_params`` is their safetensors key).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .common import (TEMPLATES, BestSoFar, PromptEncoder, TrainingInterrupted, TrainingSession, build_pool,
                     check_new_token, collect_images, embedding_width, eps_loss, file_in_folder, prepare_pixels,
                     save_safetensors_atomic, throw_if_interrupted, token_rows, validate_name)
from comfy.model_management import InterruptProcessingException

__all__ = ["TIResult", "train_textual_inversion", "save_embedding", "FORMAT", "prompt_for"]

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


def prompt_for(template: str, concept: str, prefix: str = "") -> str:
    """A training prompt: the template with the concept in the blank; an augmentation prefix ("a tiny",
    "a close-up" ...) replaces the template's leading article ("a tiny photo of a <v1> pot")."""
    text = template.format(concept)
    if prefix:
        for art in ("a ", "an "):
            if text.startswith(art):
                text = text[len(art):]
                break
        text = f"{prefix} {text}"
    return text


def train_textual_inversion(model_patcher, clip, vae, images, name: str, initializer: str, num_vectors: int = 1,
                            steps: int = 1000, learning_rate: float = 5e-3, batch_size: int = 1, seed: int = 0,
                            templates: str = "object", resolution: int = 512, gradient_checkpointing: bool = False,
                            progress: Optional[Callable[[int, int], None]] = None,
                            weight_decay: float = 1e-2) -> TIResult:
    """Learns ``num_vectors`` embedding vectors for the new word ``name`` from reference ``images``.

    model_patcher / clip / vae: the graph's MODEL, CLIP and VAE (not modified; the model is trained through a
    clone). images: IMAGE [B, H, W, 3] or a list of IMAGEs (mixed sizes are cropped/resized, see
    ``common.prepare_pixels``). name: the new word (also the file name): a plain name that is not yet a CLIP
    vocabulary word. initializer: word(s) whose token embeddings start the vectors. templates: "object" or
    "style". progress(done, total) is called after every step (ComfyUI's ProgressBar, which also raises on
    /interrupt). Raises ValueError on bad input, TrainingInterrupted (carrying the best-so-far TIResult) on
    interrupt.
    """
    t0 = time.time()
    name = validate_name(name, "placeholder name")
    check_new_token(clip, name, "placeholder name")
    if templates not in TEMPLATES:
        raise ValueError(f"unknown template set {templates!r}; choose one of {sorted(TEMPLATES)}")
    num_vectors, steps, batch_size = int(num_vectors), int(steps), int(batch_size)
    if num_vectors < 1 or steps < 1 or batch_size < 1:
        raise ValueError("num_vectors, steps and batch_size must be at least 1")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    width = embedding_width(clip)
    init = token_rows(clip, initializer, num_vectors)
    pixels = prepare_pixels(collect_images(images), int(resolution), multiple=_vae_factor(vae))
    pool = build_pool(pixels, vae, model_patcher, "flip", 2, seed)
    tmpl = TEMPLATES[templates]
    enc = PromptEncoder(clip, name, num_vectors, width)
    ph = enc.placeholder()
    settings = dict(initializer=initializer, num_vectors=num_vectors, steps=steps, learning_rate=learning_rate,
                    batch_size=batch_size, seed=int(seed), templates=templates, resolution=int(resolution),
                    images=int(pixels.shape[0]), image_size=list(pixels.shape[-2:]), weight_decay=weight_decay)

    gen = torch.Generator().manual_seed(int(seed))
    mp = model_patcher.clone()
    with TrainingSession(mp, enc.clip, gradient_checkpointing) as sess:
        dev = sess.device
        T = sess.num_timesteps()
        vectors = torch.nn.Parameter(init.clone().to(dev))
        opt = torch.optim.AdamW([vectors], lr=float(learning_rate), weight_decay=float(weight_decay))
        stepper = sess.grad_scaler()
        probe = _probe_set(pool, tmpl, ph, T, seed)

        def probe_loss():
            with torch.no_grad():
                return _eval_probe(sess, enc, vectors, pool, probe)

        before = probe_loss()
        best = BestSoFar(max(5, steps // 20), lambda: {"vectors": vectors})
        losses = []

        def result(interrupted: bool, vecs: torch.Tensor, after: float) -> TIResult:
            return TIResult(name, vecs.detach().float().cpu().clone(), list(losses), steps, len(losses), before,
                            after, interrupted, best.best_step if interrupted else len(losses), time.time() - t0,
                            settings)

        try:
            for step in range(steps):
                throw_if_interrupted()
                idx = torch.randint(0, len(pool), (batch_size,), generator=gen)
                tix = torch.randint(0, len(tmpl), (batch_size,), generator=gen)
                texts = [prompt_for(tmpl[int(j)], ph, pool.prefixes[int(i)]) for i, j in zip(idx, tix)]
                ctx = torch.cat([enc.encode(t, vectors) for t in texts])
                ts = torch.randint(0, T, (batch_size,), generator=gen)
                noise = torch.randn(pool.latents[idx].shape, generator=gen)
                loss = eps_loss(sess, pool.latents[idx], noise, sess.sigmas_for(ts), ctx, pool.masks[idx])
                stepper.step(opt, loss)
                losses.append(float(loss.detach()))
                best.update(step + 1, losses[-1])
                if progress is not None:
                    progress(step + 1, steps)
        except InterruptProcessingException:
            vecs = best.state.get("vectors", vectors.detach())
            raise TrainingInterrupted(result(True, vecs, float("nan"))) from None
        after = probe_loss()
        return result(False, vectors.detach(), after)


def _vae_factor(vae) -> int:
    f = getattr(vae, "downscale_ratio", 8)
    return int(f) if isinstance(f, (int, float)) else 8


def _probe_set(pool, templates, concept: str, T: int, seed: int, k: int = 8):
    """Fixed evaluation examples: (pool index, prompt, timestep, noise), timesteps evenly over the schedule."""
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    out = []
    for j in range(k):
        i = j % len(pool)
        text = prompt_for(templates[j % len(templates)], concept, pool.prefixes[i])
        t = int((j + 0.5) / k * T)
        noise = torch.randn(pool.latents[i:i + 1].shape, generator=gen)
        out.append((i, text, t, noise))
    return out


def _eval_probe(sess, enc, vectors, pool, probe) -> float:
    total = 0.0
    for i, text, t, noise in probe:
        ctx = enc.encode(text, vectors)
        s = sess.sigmas_for(torch.tensor([t]))
        total += float(eps_loss(sess, pool.latents[i:i + 1], noise, s, ctx, pool.masks[i:i + 1]))
    return total / len(probe)


def save_embedding(folder: str, result_or_vectors, name: Optional[str] = None, metadata: Optional[dict] = None) -> str:
    """Writes ``<folder>/<name>.safetensors`` = {"emb_params": [n, width] float32} atomically; returns the path.

    ``result_or_vectors``: a TIResult (its name and metadata are used) or a tensor [n, width] with ``name``."""
    if isinstance(result_or_vectors, TIResult):
        vectors = result_or_vectors.vectors
        name = name or result_or_vectors.name
        meta = {**result_or_vectors.metadata(), **(metadata or {})}
    else:
        vectors = result_or_vectors
        meta = {"format": FORMAT, "version": "1", "name": name, **(metadata or {})}
    name = validate_name(name or "", "embedding name")
    if vectors.ndim == 1:
        vectors = vectors[None]
    path = file_in_folder(folder, name + ".safetensors")
    return save_safetensors_atomic(path, {"emb_params": vectors.detach().float().cpu()}, meta)
