"""Progress and interruption: ComfyUI's ProgressBar (which also stops a run on /interrupt) and its interrupt flag.

The pack's loops check for interruption through :func:`throw_if_interrupted`; a trainer's fit loop recognises
ComfyUI's interrupt with :func:`is_interrupt` (ComfyUI also raises it from inside every op of a running model).
"""
from __future__ import annotations

__all__ = ["Progress", "throw_if_interrupted", "is_interrupt", "interrupted_error", "interrupt"]


class Progress:
    """``Progress(total)(done, total)``: reports to ComfyUI's ProgressBar (the UI's progress bar and websocket
    "progress" events; its hook raises on /interrupt)."""

    def __init__(self, total: int):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, done: int, total: int) -> None:
        self.bar.update_absolute(done, total)


def throw_if_interrupted() -> None:
    """Raises ComfyUI's InterruptProcessingException when /interrupt was requested."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def is_interrupt(exc: BaseException) -> bool:
    import comfy.model_management

    return isinstance(exc, comfy.model_management.InterruptProcessingException)


def interrupted_error(message: str = "interrupted") -> BaseException:
    """The exception that makes ComfyUI's executor report a run as interrupted (not failed)."""
    import comfy.model_management

    return comfy.model_management.InterruptProcessingException(message)


def interrupt() -> None:
    """Asks the running workflow to stop (what POST /interrupt does)."""
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(True)
