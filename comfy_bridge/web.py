"""The pack's HTTP route on ComfyUI's server (``server.PromptServer.instance.routes``, aiohttp).

:func:`register_json_route` puts a plain Python handler behind ``POST <path>``: the body is read with a size limit
(413 beyond it), parsed as JSON (400 with a message otherwise), and the handler runs in a worker thread with a
time limit, never on the server's event loop, so a large request cannot stall the queue, the websocket or the
UI. The handler returns ``(status, json-able dict)`` and may raise ValueError for a 400 with its message.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from typing import Any, Callable

__all__ = ["register_json_route", "server_running"]

_POOL: dict = {}


def server_running() -> bool:
    """True inside a real ComfyUI server (PromptServer.instance with routes)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    inst = getattr(PromptServer, "instance", None)
    return inst is not None and hasattr(inst, "routes")


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    if "pool" not in _POOL:
        _POOL["pool"] = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="attention_edit_route")
    return _POOL["pool"]


def register_json_route(path: str, handler: Callable[[Any], tuple], max_body_bytes: int,
                        timeout_s: float = 20.0) -> bool:
    """Registers ``POST path`` on the running server; False when there is none (in-process hosts, tests)."""
    if not server_running():
        return False
    from aiohttp import web
    from server import PromptServer

    def answer(status: int, data: dict):
        return web.json_response(data, status=status)

    @PromptServer.instance.routes.post(path)
    async def route(request):
        length = request.content_length
        if length is not None and length > max_body_bytes:
            return answer(413, {"error": f"the request body is {length} bytes; at most {max_body_bytes} are "
                                         "accepted: shorten the prompts"})
        try:
            raw = await request.content.read(max_body_bytes + 1)
        except Exception as exc:  # pragma: no cover - a broken connection
            return answer(400, {"error": f"could not read the request body: {exc}"})
        if len(raw) > max_body_bytes:
            return answer(413, {"error": f"the request body is over {max_body_bytes} bytes; shorten the prompts"})
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            return answer(400, {"error": "the body is not JSON: send {\"source\": ..., \"target\": ...}"})
        loop = asyncio.get_running_loop()
        try:
            status, data = await asyncio.wait_for(loop.run_in_executor(_pool(), handler, body), timeout_s)
        except ValueError as exc:
            return answer(400, {"error": str(exc)})
        except asyncio.TimeoutError:
            return answer(503, {"error": f"the request took longer than {timeout_s:.0f} s; shorten the prompts"})
        except Exception as exc:  # never a 500 without a message
            logging.exception("[attention_edit] %s failed", path)
            return answer(500, {"error": f"{type(exc).__name__}: {exc}"})
        return answer(status, data)

    logging.info("[attention_edit] registered POST %s", path)
    return True
