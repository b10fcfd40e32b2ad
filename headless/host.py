"""Run ComfyUI nodes inside a real, in-process ComfyUI (no mocks).

Used by the headless runner, the benchmarks and the tests::

    from attention_edit.headless import host
    host.init_comfy()                  # CPU, a temporary base directory, core nodes + this pack
    res = host.run_workflow(api_prompt)  # validated and executed by ComfyUI's own PromptExecutor
    res["outputs"]                     # UI outputs, as in GET /history (saved image names ...)
    res.value("3")                     # the value of output slot 0 of node "3" (e.g. a LATENT dict)
    res.files()                        # absolute paths of the files the output nodes wrote

Importing this module does not import ComfyUI; ``init_comfy`` does. ComfyUI reads its CPU setting when
``comfy.model_management`` is first imported, so call ``configure_cpu()`` (or ``init_comfy``) before anything
imports ComfyUI's model code. Everything version-specific is in comfy_bridge/host.py.

How the pack is loaded: exactly like ComfyUI's start-up, ``nodes.load_custom_node(<package dir>)``, which executes
the package's ``__init__.py`` under a module name derived from its PATH, so the ``comfy_entrypoint`` path is
exercised. Consequence: the node classes ComfyUI runs come from a second copy of the package's modules, distinct
from ``attention_edit.*`` imported by a caller (module-level state and ``isinstance`` across the two copies differ).
Compare behaviour, not identity.
"""
from __future__ import annotations

import asyncio
import copy
import itertools
import os
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..comfy_bridge import host as bridge

__all__ = ["PACKAGE_DIR", "comfy_root", "comfy_version", "configure_cpu", "init_comfy", "is_initialised",
           "base_dir", "pack_node_ids", "has_node", "WorkflowError", "WorkflowValidationError",
           "WorkflowExecutionError", "WorkflowInterrupted", "WorkflowResult", "new_executor", "run_workflow",
           "run_workflow_async", "interrupt", "release", "ui_files", "default_stub"]

#: The directory of this package (the repository root), what ComfyUI's custom_nodes/ would hold.
PACKAGE_DIR = Path(__file__).resolve().parent.parent

_LOCK = threading.RLock()
_STATE: dict[str, Any] = {"tmp": None}

comfy_root = bridge.comfy_root
comfy_version = bridge.comfy_version
default_stub = bridge.default_stub


def configure_cpu(cpu: bool = True) -> None:
    """Run ComfyUI on the CPU (must happen before ComfyUI's model code is imported)."""
    bridge.configure(cpu)


def init_comfy(base_dir: str | os.PathLike | None = None, *, cpu: bool = True, load_pack: bool = True,
               api_nodes: bool = False, threads: int | None = None) -> None:
    """Initialises ComfyUI in this process, once; later calls only move the folders if *base_dir* differs.

    Folders (models, input, output, temp, user) go under *base_dir* (a fresh temporary directory by default); the
    core nodes load as in main.py (partner API nodes off: they only call remote services), and this pack loads as a
    custom_nodes/ entry. *threads*: ``torch.set_num_threads`` (applied on every call). On a small, shared CPU
    machine 1 thread is MUCH faster for the tiny test models (OpenMP workers spin against other processes: a
    2-step KSampler took 0.1 s with 1 thread and 7-12 s with 2 threads on 2 busy cores). RuntimeError (with
    ComfyUI's logged reason) if the pack fails to load."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    with _LOCK:
        if base_dir is None:
            if bridge.is_initialised():
                return
            _STATE["tmp"] = tempfile.TemporaryDirectory(prefix="ae_comfy_")
            base_dir = _STATE["tmp"].name
        bridge.init(Path(base_dir), cpu=cpu, pack_dir=PACKAGE_DIR if load_pack else None, api_nodes=api_nodes)


def is_initialised() -> bool:
    return bridge.is_initialised()


def base_dir() -> Path:
    """The current base directory (input/, output/, temp/, models/ ... live under it)."""
    _require_init()
    return bridge.base_dir()


def _require_init() -> None:
    if not bridge.is_initialised():
        raise RuntimeError("call attention_edit.headless.host.init_comfy() first")


def pack_node_ids() -> list[str]:
    """Sorted ids of this pack's registered nodes (prefix ``AE_``)."""
    _require_init()
    return bridge.node_ids("AE_")


def has_node(node_id: str) -> bool:
    _require_init()
    return bridge.has_node(node_id)


class WorkflowError(RuntimeError):
    """A workflow failed. ``node_errors`` (validation) / ``node_id``, ``class_type``, ``exception_type``,
    ``exception_message``, ``traceback`` (execution) carry ComfyUI's details; ``original`` (also
    ``__cause__``) is the exception a node raised, when there is one."""

    def __init__(self, message: str, *, error: dict | None = None, node_errors: dict | None = None,
                 node_id: str | None = None, class_type: str | None = None, exception_type: str | None = None,
                 exception_message: str | None = None, traceback: list | None = None,
                 original: BaseException | None = None):
        super().__init__(message)
        self.error = error or {}
        self.node_errors = node_errors or {}
        self.node_id = node_id
        self.class_type = class_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback = traceback or []
        self.original = original


class WorkflowValidationError(WorkflowError):
    """ComfyUI's validation rejected the prompt."""


class WorkflowExecutionError(WorkflowError):
    """A node raised during execution."""


class WorkflowInterrupted(WorkflowExecutionError):
    """Execution was interrupted (:func:`interrupt` / POST /interrupt)."""


def _format_node_errors(error: dict, node_errors: dict) -> str:
    lines = [f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".rstrip(": ")]
    for nid, info in (node_errors or {}).items():
        for e in info.get("errors", []):
            lines.append(f"  node {nid} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


def ui_files(ui_outputs: Mapping[str, Any], dirs: Mapping[str, str | os.PathLike]) -> list[Path]:
    """Absolute paths of the files listed in UI outputs (``{node_id: {"images": [{"filename", "subfolder",
    "type"}], ...}}``), *dirs* mapping a type ("output", "temp", "input") to its folder."""
    out: list[Path] = []
    for node_ui in ui_outputs.values():
        if not isinstance(node_ui, Mapping):
            continue
        for items in node_ui.values():
            if not isinstance(items, (list, tuple)):
                continue
            for it in items:
                if isinstance(it, Mapping) and "filename" in it:
                    folder = dirs.get(it.get("type", "output"))
                    if folder is not None:
                        out.append(Path(folder) / (it.get("subfolder") or "") / it["filename"])
    return out


class WorkflowResult(dict):
    """The history entry of one in-process run: ``{"prompt_id", "outputs", "meta", "status"}`` as in
    GET /history, plus access to node output VALUES through the executor's output cache."""

    def __init__(self, history: dict, executor, prompt_id: str):
        super().__init__(history)
        self.executor = executor
        self.prompt_id = prompt_id

    def values(self, node_id: str) -> list[list[Any]]:
        """All output slots of a node; each slot is a list (one item per list-mapped call, usually 1). KeyError if
        the node has no cached output (not executed, or evicted by the cache)."""
        outs = bridge.cached_outputs(self.executor, str(node_id))
        if outs is None:
            raise KeyError(f"node {node_id!r} has no cached output (not executed, or evicted by the cache)")
        return outs

    def value(self, node_id: str, slot: int = 0) -> Any:
        """The value of one output slot: the item itself when the node produced one, else the list."""
        items = self.values(node_id)[slot]
        return items[0] if len(items) == 1 else items

    def files(self, node_id: str | None = None) -> list[Path]:
        """Absolute paths of the files the output nodes wrote (SaveImage, SaveLatent, PreviewImage ...)."""
        ui = self["outputs"] if node_id is None else {str(node_id): self["outputs"].get(str(node_id), {})}
        return ui_files(ui, bridge.directories())


def new_executor(server=None, cache: str = "classic", lru_size: int = 0):
    """A ComfyUI PromptExecutor as main.py's prompt_worker builds it ("classic", "lru", "ram" or "none" cache).
    Reuse one across run_workflow calls to keep ComfyUI's caching."""
    _require_init()
    return bridge.new_executor(server, cache, lru_size)


_PROMPT_COUNTER = itertools.count(1)


def run_workflow(prompt: Mapping[str, Any], outputs: Iterable[str] | None = None, *, executor=None,
                 extra_data: dict | None = None, prompt_id: str | None = None) -> WorkflowResult:
    """Validates and executes an API-format workflow in-process with ComfyUI's own executor.

    *outputs*: node ids to execute (with their inputs); any node, output node or not. Default: every output node of
    the prompt (what the server runs). Validation is ComfyUI's (strict: any node error raises, where the server would
    still run the valid outputs). *executor*: a :func:`new_executor` to reuse; default a fresh one.

    Returns a :class:`WorkflowResult`. Raises :class:`WorkflowValidationError` / :class:`WorkflowExecutionError` /
    :class:`WorkflowInterrupted` with ComfyUI's error details and the original exception as ``__cause__``.
    Uses ``asyncio.run``: from a coroutine, await :func:`run_workflow_async` instead."""
    return asyncio.run(run_workflow_async(prompt, outputs, executor=executor, extra_data=extra_data,
                                          prompt_id=prompt_id))


async def run_workflow_async(prompt: Mapping[str, Any], outputs: Iterable[str] | None = None, *, executor=None,
                             extra_data: dict | None = None, prompt_id: str | None = None) -> WorkflowResult:
    """:func:`run_workflow` for callers already inside an event loop."""
    _require_init()
    prompt = copy.deepcopy({str(k): v for k, v in dict(prompt).items()})
    prompt_id = prompt_id or f"ae-{next(_PROMPT_COUNTER)}-{uuid.uuid4().hex[:8]}"
    ex = executor if executor is not None else new_executor()
    ex.last_exception = None
    ex.last_error = None
    requested = None if outputs is None else [str(o) for o in outputs]
    if requested is not None:
        missing = [o for o in requested if o not in prompt]
        if missing:
            raise WorkflowValidationError(f"requested outputs not in the prompt: {missing}")
        for nid, node in prompt.items():
            if bridge.node_class(node.get("class_type")) is None:
                err = {"message": f"Cannot execute because node {node.get('class_type')} does not exist.",
                       "details": f"Node ID '#{nid}'"}
                raise WorkflowValidationError(_format_node_errors(err, {}), error=err)
    valid, error, good, node_errors = await bridge.validate(prompt_id, prompt, requested)
    if not valid or node_errors:
        raise WorkflowValidationError(_format_node_errors(error or {"message": "Prompt outputs failed validation"},
                                                          node_errors), error=error, node_errors=node_errors)
    await bridge.execute(ex, prompt, prompt_id, dict(extra_data or {}), list(good))
    history = {
        "prompt_id": prompt_id,
        "outputs": dict(getattr(ex, "history_result", {}).get("outputs", {})),
        "meta": dict(getattr(ex, "history_result", {}).get("meta", {})),
        "status": {"status_str": "success" if ex.success else "error", "completed": ex.success,
                   "messages": [list(m) for m in ex.status_messages]},
    }
    if not ex.success:
        msgs = dict(ex.status_messages)
        cause = ex.last_exception
        if "execution_interrupted" in msgs:
            d = msgs["execution_interrupted"]
            raise WorkflowInterrupted(f"execution interrupted at node {d.get('node_id')} ({d.get('node_type')})",
                                      node_id=d.get("node_id"), class_type=d.get("node_type"), original=cause) from cause
        d = msgs.get("execution_error", {})
        message = (d.get("exception_message") or "").strip()
        raise WorkflowExecutionError(
            f"node {d.get('node_id')} ({d.get('node_type')}) failed: {d.get('exception_type')}: {message}",
            node_id=d.get("node_id"), class_type=d.get("node_type"), exception_type=d.get("exception_type"),
            exception_message=message, traceback=d.get("traceback"), original=cause) from cause
    return WorkflowResult(history, ex, prompt_id)


def interrupt() -> None:
    """Asks the running in-process workflow to stop (what POST /interrupt does); it raises
    :class:`WorkflowInterrupted` at the next interruption check (every comfy op, every ProgressBar update)."""
    _require_init()
    bridge.interrupt()


def release() -> None:
    """Unloads ComfyUI's loaded models and collects garbage; call at the end of a session."""
    bridge.release()
