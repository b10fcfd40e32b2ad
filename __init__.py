"""Attention Edit: ComfyUI entry point. Registers the nodes (V3 API) and the web extension, nothing else.

Outside ComfyUI (``import attention_edit`` with no ComfyUI on the path) only the algorithm modules are usable.
"""
import importlib.util

WEB_DIRECTORY = "./web/js"

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes.registry import comfy_entrypoint  # noqa: F401
else:  # pragma: no cover - imported without ComfyUI
    comfy_entrypoint = None

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
