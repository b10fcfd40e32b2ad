"""The one fit loop of the pack's trainers (textual inversion, Custom Diffusion, Imagic's two stages), with
best-so-far bookkeeping and interruption, written against a small session protocol (comfy_bridge/training.py's
TrainingSession implements it on ComfyUI; nothing here imports ComfyUI)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch

__all__ = ["Session", "Stepper", "BestSoFar", "FitResult", "fit", "TrainingInterrupted"]


class Session(Protocol):
    """What a trainer needs from the host: ``denoise(x_t, sigma, context) -> x0`` (the model's denoised estimate of
    VE latents x_t [B, C, h, w] at noise levels sigma [B] with conditioning context [B, T, D]),
    ``sigmas_for(timesteps [B]) -> [B]``, ``num_timesteps()``, ``grad_scaler() -> Stepper``, ``device``,
    ``check_interrupt()`` (raises when the user stopped the run) and ``is_interrupt(exc)`` (whether an exception is
    the host's interrupt; hosts also raise it from inside a running model)."""

    device: torch.device

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor: ...

    def sigmas_for(self, timesteps: torch.Tensor) -> torch.Tensor: ...

    def num_timesteps(self) -> int: ...

    def grad_scaler(self) -> "Stepper": ...

    def check_interrupt(self) -> None: ...

    def is_interrupt(self, exc: BaseException) -> bool: ...


class Stepper:
    """backward + optimizer step, through a GradScaler when one is given (fp16 on CUDA)."""

    def __init__(self, scaler=None):
        self.scaler = scaler

    def step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()


class TrainingInterrupted(Exception):
    """Raised by a trainer when the host's interrupt arrived; ``result`` is the best-so-far result (the nodes save
    it, then report the run as interrupted)."""

    def __init__(self, result):
        super().__init__("training interrupted; the best result so far was kept")
        self.result = result


class BestSoFar:
    """Keeps a copy of the trainable tensors at the lowest smoothed training loss seen so far.

    The per-step loss is very noisy (random timesteps), so it is smoothed by the mean over the last ``window``
    steps; until ``window`` steps have run, the latest state counts as the best. ``state_fn`` returns the tensors
    to keep; copies go to the CPU."""

    def __init__(self, window: int, state_fn: Callable[[], dict]):
        self.window = max(1, int(window))
        self.state_fn = state_fn
        self.losses: list = []
        self.best_loss = math.inf
        self.best_step = 0
        self.state: dict = {}

    def update(self, step: int, loss: float) -> None:
        self.losses.append(float(loss))
        recent = self.losses[-self.window:]
        smooth = sum(recent) / len(recent)
        if len(self.losses) < self.window or smooth <= self.best_loss:
            if len(self.losses) >= self.window:
                self.best_loss = smooth
            self.best_step = int(step)
            self.state = {k: v.detach().float().cpu().clone() for k, v in self.state_fn().items()}


@dataclass
class FitResult:
    """What :func:`fit` ran: the loss of every step, whether it was interrupted, and on interrupt the state to keep
    (``state``: the best-so-far tensors when ``keep_best``, else the latest) and the step it is from."""

    losses: list
    steps: int
    interrupted: bool
    best_step: int
    state: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def steps_done(self) -> int:
        return len(self.losses)


def fit(step: Callable[[int], float], steps: int, state_fn: Callable[[], dict], session: Session,
        progress: Optional[Callable[[int, int], None]] = None, keep_best: bool = True,
        window: Optional[int] = None) -> FitResult:
    """Runs ``step(i) -> loss`` for i = 0 .. steps-1, checking for the host's interrupt before each step (and
    catching it from inside a step or the progress callback). ``state_fn()`` returns the trainable tensors
    {name: tensor}; with ``keep_best`` their copy at the lowest smoothed loss (window ``max(5, steps // 20)``) is
    what an interrupted run keeps, else the latest (for trainers whose state is too large to copy every step).
    progress(done, total) after each step. Other exceptions propagate."""
    t0 = time.time()
    best = BestSoFar(window or max(5, steps // 20), state_fn) if keep_best else None
    losses: list = []
    try:
        for i in range(int(steps)):
            session.check_interrupt()
            losses.append(float(step(i)))
            if best is not None:
                best.update(i + 1, losses[-1])
            if progress is not None:
                progress(i + 1, steps)
    except BaseException as exc:  # the host's interrupt is a BaseException in ComfyUI
        if not session.is_interrupt(exc):
            raise
        if best is not None and best.state:
            state, at = best.state, best.best_step
        else:
            state, at = {k: v.detach().float().cpu().clone() for k, v in state_fn().items()}, len(losses)
        return FitResult(losses, int(steps), True, at, state, time.time() - t0)
    return FitResult(losses, int(steps), False, len(losses), {}, time.time() - t0)
