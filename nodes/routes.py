"""The web extension's route (web/js/attention_edit.js): POST /attention_edit/align describes how each edited
prompt aligns with the source prompt, for the live display on the Prompt-to-Prompt Edit node.

Bounded work: the body is at most :data:`MAX_BODY_BYTES`, the target at most :data:`MAX_LINES` edited prompts and
every prompt at most :data:`MAX_PROMPT_CHARS` characters (a 75-token CLIP prompt is far shorter; a 511-token T5
prompt about 2300 characters); anything larger is
refused with a message, and the alignment runs off ComfyUI's event loop (comfy_bridge.web)."""
from __future__ import annotations

from ..comfy_bridge import text as bridge_text
from ..comfy_bridge.web import register_json_route

ROUTE = "/attention_edit/align"
MAX_BODY_BYTES = 64 * 1024
MAX_LINES = 16
MAX_PROMPT_CHARS = 3000
MODES = ("auto", "replace", "refine")

_state: dict = {"registered": False}


#: the "encoder" values of a request: the tokens the model's attention is indexed by
ENCODERS = ("clip", "t5")


def _tokenizer(encoder: str = "clip"):
    """ComfyUI's CLIP-L tokenizer, or its Flux tokenizer (T5 sentencepiece) for "t5"; made once, no model."""
    key = f"tok_{encoder}"
    if key not in _state:
        _state[key] = bridge_text.flux_tokenizer() if encoder == "t5" else bridge_text.route_tokenizer()
    return _state[key]


def align_request(body) -> tuple:
    """(status, response) for a request body {"source": str, "target": str, "mode"?: "auto"|"replace"|"refine",
    "encoder"?: "clip"|"t5" (the tokens the model attends to: T5 for Flux; default clip)};
    the response is {"edits": [describe_alignment(...) per non-empty target line]}. ValueError (a 400) for a body
    that is not such an object, and 413 for over-long input."""
    from ..attention.recipe import describe_alignment

    if not isinstance(body, dict):
        raise ValueError(f"send a JSON object {{\"source\": ..., \"target\": ...}}, not {type(body).__name__ if body is not None else 'null'}")
    source, target, mode = body.get("source", ""), body.get("target", ""), body.get("mode", "auto")
    encoder = body.get("encoder", "clip")
    for name, value in (("source", source), ("target", target), ("mode", mode), ("encoder", encoder)):
        if not isinstance(value, str):
            raise ValueError(f"'{name}' must be a string, got {type(value).__name__}")
    if mode not in MODES:
        raise ValueError(f"'mode' must be one of {', '.join(MODES)}, got {mode[:40]!r}")
    if encoder not in ENCODERS:
        raise ValueError(f"'encoder' must be one of {', '.join(ENCODERS)}, got {encoder[:40]!r}")
    lines = [t.strip() for t in target.splitlines() if t.strip()] or [target]
    if len(lines) > MAX_LINES:
        return 413, {"error": f"the edited prompts have {len(lines)} lines; at most {MAX_LINES} are aligned (one edit "
                              "per line)"}
    for what, s in [("source prompt", source)] + [("edited prompt", t) for t in lines]:
        if len(s) > MAX_PROMPT_CHARS:
            return 413, {"error": f"the {what} is {len(s)} characters long; at most {MAX_PROMPT_CHARS} are aligned "
                                  "(Prompt-to-Prompt needs prompts of at most 75 CLIP / 511 T5 tokens)"}
    tok = _tokenizer(encoder)
    return 200, {"edits": [describe_alignment(tok, source, t, mode) for t in lines]}


def register_routes() -> None:
    """Registers the route once, only under a running server."""
    if _state["registered"]:
        return
    _state["registered"] = register_json_route(ROUTE, align_request, MAX_BODY_BYTES)
