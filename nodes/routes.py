"""HTTP routes for the web extension (web/js/attention_edit.js). Registered once, only under a running server."""
from __future__ import annotations

import logging

_registered = False


def _tokenizer():
    import comfy.sd1_clip

    return comfy.sd1_clip.SDTokenizer()  # the real CLIP-L tokenizer ComfyUI ships (comfy/sd1_tokenizer)


def register_routes() -> None:
    """POST /attention_edit/align {"source", "target", "mode"?} -> describe_alignment(...) as JSON."""
    global _registered
    if _registered:
        return
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is None:
        return
    from ..attention.recipe import describe_alignment

    tok_cache = {}

    @PromptServer.instance.routes.post("/attention_edit/align")
    async def align_route(request):
        try:
            body = await request.json()
        except Exception:
            return web.json_response({"error": "send JSON: {\"source\": ..., \"target\": ...}"}, status=400)
        source, target = str(body.get("source", "")), str(body.get("target", ""))
        mode = str(body.get("mode", "auto"))
        if "tok" not in tok_cache:
            tok_cache["tok"] = _tokenizer()
        lines = [t.strip() for t in target.splitlines() if t.strip()] or [target]
        return web.json_response({"edits": [describe_alignment(tok_cache["tok"], source, t, mode) for t in lines]})

    _registered = True
    logging.info("[attention_edit] registered POST /attention_edit/align")
