"""Run ComfyUI nodes inside a real, in-process ComfyUI (no mocks).

Used by the tests, the headless runner and the benchmarks::

    from attention_edit.testing.comfy_env import init_comfy, run_workflow
    init_comfy()                       # CPU, a temporary base directory, core nodes + this pack
    res = run_workflow(api_prompt)     # validated and executed by ComfyUI's own PromptExecutor
    res["outputs"]                     # UI outputs, as in GET /history (saved image names ...)
    res.value("3")                     # the value of output slot 0 of node "3" (e.g. a LATENT dict)
    res.files()                        # absolute paths of the files the output nodes wrote

Importing this module does not import ComfyUI; ``init_comfy`` does. ComfyUI reads
``comfy.cli_args.args.cpu`` when ``comfy.model_management`` is first imported, so call
``configure_cpu()`` (or ``init_comfy``) before anything imports ComfyUI's model code.

How the pack is loaded: exactly like ComfyUI's start-up, ``nodes.load_custom_node(<package dir>)``,
which executes the package's ``__init__.py`` under a module name derived from its PATH (e.g.
``/work/main``), so the ``comfy_entrypoint`` path is exercised. Consequence: the node classes in
``nodes.NODE_CLASS_MAPPINGS`` come from a second copy of the package's modules, distinct from
``attention_edit.*`` imported by a test (module-level state and ``isinstance`` across the two copies
differ). Compare behaviour, not identity.
"""
from __future__ import annotations

import asyncio
import copy
import importlib.util
import itertools
import logging
import os
import sys
import tempfile
import threading
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = [
    "PACKAGE_DIR",
    "comfy_root",
    "configure_cpu",
    "init_comfy",
    "is_initialised",
    "base_dir",
    "pack_node_ids",
    "has_node",
    "ServerStub",
    "WorkflowError",
    "WorkflowValidationError",
    "WorkflowExecutionError",
    "WorkflowInterrupted",
    "WorkflowResult",
    "new_executor",
    "run_workflow",
    "run_workflow_async",
    "interrupt",
    "register_object",
    "unregister_object",
    "clear_objects",
    "release",
    "OBJECT_NODE_ID",
    "ui_files",
]

#: The directory of this package (the repository root), what ComfyUI's custom_nodes/ would hold.
PACKAGE_DIR = Path(__file__).resolve().parent.parent

#: Node id of the test-only node that hands a registered Python object to a workflow.
OBJECT_NODE_ID = "AETest_PyObject"

_LOCK = threading.RLock()
_STATE: dict[str, Any] = {"initialised": False, "base_dir": None, "tmp": None, "pack_loaded": None}
_OBJECTS: dict[str, Any] = {}

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# initialisation
# --------------------------------------------------------------------------------------------------

def comfy_root() -> Path:
    """The ComfyUI tree on sys.path (the directory holding main.py), found without importing ComfyUI."""
    spec = importlib.util.find_spec("comfy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ComfyUI is not importable: put its tree on sys.path (scripts/setup_env.sh does it with a .pth)")
    root = Path(list(spec.submodule_search_locations)[0]).resolve().parent
    if not (root / "main.py").is_file():
        raise RuntimeError(f"no main.py next to the 'comfy' package at {root}")
    return root


def configure_cpu(cpu: bool = True) -> None:
    """Sets ``comfy.cli_args.args.cpu`` (cheap: imports only the argument parser).

    Must run before ``comfy.model_management`` is first imported; warns if that already happened with
    another setting.
    """
    import comfy.cli_args

    comfy.cli_args.args.cpu = bool(cpu)
    mm = sys.modules.get("comfy.model_management")
    if mm is not None and cpu and getattr(mm, "cpu_state", None) != getattr(mm, "CPUState").CPU:
        log.warning("comfy.model_management was imported before args.cpu was set; ComfyUI will not run on the CPU")


def _ensure_comfy_utils_package(root: Path) -> None:
    """Trap: nodes.py inserts ComfyUI/comfy/ at sys.path[0], after which ``import utils`` finds comfy/utils.py
    instead of ComfyUI's ``utils`` package, and ``server`` (imported by comfy_extras/nodes_images.py) fails
    with "No module named 'utils.install_util'". main.py avoids it by importing utils.extra_config first;
    do the same, repairing sys.modules if the wrong module got there."""
    pkg_init = root / "utils" / "__init__.py"
    mod = sys.modules.get("utils")
    if mod is not None and Path(getattr(mod, "__file__", "") or "").resolve() == pkg_init.resolve():
        return
    if mod is not None:
        del sys.modules["utils"]
    spec = importlib.util.spec_from_file_location("utils", pkg_init, submodule_search_locations=[str(pkg_init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["utils"] = module
    spec.loader.exec_module(module)
    importlib.import_module("utils.extra_config")
    importlib.import_module("utils.install_util")


# top-level module names of ComfyUI that a checkout of this pack can shadow (the repo has nodes/, models/ ...)
_COMFY_TOP_LEVEL = ("nodes", "execution", "server", "folder_paths", "node_helpers", "latent_preview", "protocol",
                    "comfyui_version", "hook_breaker_ac10a0", "cuda_malloc", "new_updater")


def _ensure_comfy_first(root: Path) -> None:
    """Trap: ``python -m pytest`` (or any script run from the repository root) puts the root on sys.path[0],
    and the pack's own ``nodes/`` package then shadows ComfyUI's ``nodes.py``. ComfyUI's main.py runs with
    its own directory first on sys.path; do the same, and drop wrongly imported top-level modules."""
    r = str(root)
    if not sys.path or sys.path[0] != r:
        while r in sys.path:
            sys.path.remove(r)
        sys.path.insert(0, r)
    for name in _COMFY_TOP_LEVEL:
        mod = sys.modules.get(name)
        f = getattr(mod, "__file__", None) if mod is not None else None
        if mod is not None and (f is None or not Path(f).resolve().is_relative_to(root)):
            del sys.modules[name]


def _relocate(base: Path) -> None:
    """Points every folder_paths directory (models/, custom_nodes/, input/, output/, temp/, user/) at *base*."""
    import folder_paths

    base = base.resolve()
    old = os.path.abspath(folder_paths.base_path)
    new = str(base)
    for name, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
        moved = []
        for p in paths:
            ap = os.path.abspath(p)
            if ap == old or ap.startswith(old + os.sep):
                p = new + ap[len(old):]
            moved.append(p)
        folder_paths.folder_names_and_paths[name] = (moved, exts)
    folder_paths.base_path = new
    folder_paths.models_dir = os.path.join(new, "models")
    folder_paths.set_output_directory(os.path.join(new, "output"))
    folder_paths.set_input_directory(os.path.join(new, "input"))
    folder_paths.set_temp_directory(os.path.join(new, "temp"))
    folder_paths.set_user_directory(os.path.join(new, "user"))
    for sub in ("output", "input", "temp", "user", "models", "custom_nodes"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    folder_paths.filename_list_cache.clear()
    helper = getattr(folder_paths, "cache_helper", None)
    if helper is not None:
        helper.clear()


def _install_progress_hook(stub: "ServerStub") -> None:
    """Mirrors main.py's hijack_progress: ProgressBar updates check for interruption and feed the progress
    registry. Installed only if no hook is set (a real server sets its own)."""
    import comfy.model_management
    import comfy.utils
    from comfy_execution.progress import get_progress_state
    from comfy_execution.utils import get_executing_context

    if getattr(comfy.utils, "PROGRESS_BAR_HOOK", None) is not None:
        return

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        ctx = get_executing_context()
        if prompt_id is None and ctx is not None:
            prompt_id = ctx.prompt_id
        if node_id is None and ctx is not None:
            node_id = ctx.node_id
        comfy.model_management.throw_exception_if_processing_interrupted()
        if node_id is None:
            node_id = stub.last_node_id
        try:
            get_progress_state().update_progress(node_id, value, total, preview_image)
        except Exception:  # pragma: no cover - progress is cosmetic
            pass
        stub.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id}, stub.client_id)

    comfy.utils.set_progress_bar_global_hook(hook)


def init_comfy(base_dir: str | os.PathLike | None = None, *, cpu: bool = True, load_pack: bool = True,
               api_nodes: bool = False, threads: int | None = None) -> None:
    """Initialises ComfyUI in this process, once; later calls only move the folders if *base_dir* differs.

    - ``comfy.cli_args.args.cpu = cpu`` (before ComfyUI's model code is imported);
    - folder_paths base/models/input/output/temp/user dirs -> *base_dir* (a fresh temporary directory by default);
    - ``nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=api_nodes)`` (async in 0.3.75), as main.py
      (main.py also loads the partner API nodes; they only call remote services, so they are off by default);
    - ``nodes.load_custom_node(PACKAGE_DIR)`` exactly as ComfyUI loads a custom_nodes/ entry (runs comfy_entrypoint);
    - registers the test-only ``AETest_PyObject`` node (see :func:`register_object`).
    *threads*: ``torch.set_num_threads`` (applied on every call). On a small, shared CPU machine 1 thread is
    MUCH faster for the tiny test models (OpenMP workers spin against other processes: a 2-step KSampler took
    0.1 s with 1 thread and 7-12 s with 2 threads on 2 busy cores).
    Raises RuntimeError (with ComfyUI's logged reason) if the pack fails to load.
    """
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    with _LOCK:
        if base_dir is None and _STATE["base_dir"] is None:
            _STATE["tmp"] = tempfile.TemporaryDirectory(prefix="ae_comfy_")
            base_dir = _STATE["tmp"].name
        if _STATE["initialised"]:
            if base_dir is not None and Path(base_dir).resolve() != _STATE["base_dir"]:
                _relocate(Path(base_dir))
                _STATE["base_dir"] = Path(base_dir).resolve()
            return

        configure_cpu(cpu)
        root = comfy_root()
        _ensure_comfy_first(root)
        base = Path(base_dir).resolve()
        base.mkdir(parents=True, exist_ok=True)
        import comfy.cli_args

        if "folder_paths" not in sys.modules:
            comfy.cli_args.args.base_directory = str(base)  # folder_paths reads it at import
        _ensure_comfy_utils_package(root)
        import folder_paths  # noqa: F401

        _relocate(base)
        import nodes
        import execution  # noqa: F401  (imports the rest of the executor stack, as main.py does)

        _ensure_comfy_utils_package(root)  # in case `nodes` was imported before us
        if not _STATE.get("extras"):  # survives a failed pack load: a retry does not reload the built-ins
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=api_nodes))
            _STATE["extras"] = True

        if load_pack:
            # load_custom_node swallows the exception and only logs it: capture the log to report it
            records: list[logging.LogRecord] = []
            handler = logging.Handler(logging.WARNING)
            handler.emit = records.append
            root_logger = logging.getLogger()
            root_logger.addHandler(handler)
            try:
                ok = asyncio.run(nodes.load_custom_node(str(PACKAGE_DIR)))
            finally:
                root_logger.removeHandler(handler)
            if not ok:
                why = "\n".join(r.getMessage() for r in records) or "(no log message)"
                raise RuntimeError(f"ComfyUI failed to load this pack from {PACKAGE_DIR}:\n{why}")
        _STATE["pack_loaded"] = bool(load_pack)
        nodes.NODE_CLASS_MAPPINGS[OBJECT_NODE_ID] = _object_node_class()
        nodes.NODE_DISPLAY_NAME_MAPPINGS[OBJECT_NODE_ID] = "Python object (tests only)"

        stub = _default_stub()
        _install_progress_hook(stub)
        srv = sys.modules.get("server")
        if srv is not None and getattr(srv, "PromptServer", None) is not None and not hasattr(srv.PromptServer, "instance"):
            srv.PromptServer.instance = stub  # some core nodes call PromptServer.instance.send_progress_text
        _STATE["base_dir"] = base
        _STATE["initialised"] = True


def is_initialised() -> bool:
    return bool(_STATE["initialised"])


def base_dir() -> Path:
    """The current base directory (input/, output/, temp/, models/ ... live under it)."""
    _require_init()
    return _STATE["base_dir"]


def _require_init() -> None:
    if not _STATE["initialised"]:
        raise RuntimeError("call attention_edit.testing.comfy_env.init_comfy() first")


def pack_node_ids() -> list[str]:
    """Sorted ids of this pack's registered nodes (prefix ``AE_``)."""
    _require_init()
    import nodes

    return sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("AE_"))


def has_node(node_id: str) -> bool:
    _require_init()
    import nodes

    return node_id in nodes.NODE_CLASS_MAPPINGS


# --------------------------------------------------------------------------------------------------
# a minimal PromptServer stand-in for PromptExecutor
# --------------------------------------------------------------------------------------------------

class ServerStub:
    """What PromptExecutor and the progress handlers use of server.PromptServer: ``client_id``,
    ``last_node_id``, ``last_prompt_id``, ``sockets_metadata``, ``send_sync``. Events are kept in a bounded
    deque (``events``) for inspection."""

    def __init__(self, maxlen: int = 2000):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.events: deque = deque(maxlen=maxlen)

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        self.events.append(("progress_text", {"node_id": node_id, "text": text}))

    def queue_updated(self):
        pass


_STUB: ServerStub | None = None


def _default_stub() -> ServerStub:
    global _STUB
    if _STUB is None:
        _STUB = ServerStub()
    return _STUB


# --------------------------------------------------------------------------------------------------
# errors and results
# --------------------------------------------------------------------------------------------------

class WorkflowError(RuntimeError):
    """A workflow failed. ``node_errors`` (validation) / ``node_id``, ``class_type``, ``exception_type``,
    ``exception_message``, ``traceback`` (execution) carry ComfyUI's details; ``original`` (also
    ``__cause__``) is the exception a node raised, when there is one."""

    def __init__(self, message: str, *, error: dict | None = None, node_errors: dict | None = None,
                 node_id: str | None = None, class_type: str | None = None, exception_type: str | None = None,
                 exception_message: str | None = None, traceback: list | None = None, original: BaseException | None = None):
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
    """``execution.validate_prompt`` (or validate_inputs for requested non-output nodes) rejected the prompt."""


class WorkflowExecutionError(WorkflowError):
    """A node raised during execution."""


class WorkflowInterrupted(WorkflowExecutionError):
    """Execution was interrupted (``nodes.interrupt_processing()`` / POST /interrupt)."""


def _format_node_errors(error: dict, node_errors: dict) -> str:
    lines = [f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".rstrip(": ")]
    for nid, info in (node_errors or {}).items():
        for e in info.get("errors", []):
            lines.append(f"  node {nid} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


def ui_files(ui_outputs: Mapping[str, Any], dirs: Mapping[str, str | os.PathLike]) -> list[Path]:
    """Absolute paths of the files listed in UI outputs (``{node_id: {"images": [{"filename", "subfolder",
    "type"}], "latents": [...], ...}}``), *dirs* mapping a type ("output", "temp", "input") to its folder."""
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

    def entry(self, node_id: str):
        """ComfyUI's CacheEntry(ui, outputs) of a node of this run, or KeyError if it has none."""
        e = self.executor.caches.outputs.get(str(node_id))
        if e is None:
            raise KeyError(f"node {node_id!r} has no cached output (not executed, or evicted by the cache)")
        return e

    def values(self, node_id: str) -> list[list[Any]]:
        """All output slots of a node; each slot is a list (one item per list-mapped call, usually 1)."""
        return self.entry(node_id).outputs

    def value(self, node_id: str, slot: int = 0) -> Any:
        """The value of one output slot: the item itself when the node produced one, else the list."""
        items = self.values(node_id)[slot]
        return items[0] if len(items) == 1 else items

    def files(self, node_id: str | None = None) -> list[Path]:
        """Absolute paths of the files the output nodes wrote (SaveImage, SaveLatent, PreviewImage ...)."""
        import folder_paths

        ui = self["outputs"] if node_id is None else {str(node_id): self["outputs"].get(str(node_id), {})}
        dirs = {t: folder_paths.get_directory_by_type(t) for t in ("output", "temp", "input")}
        return ui_files(ui, dirs)


# --------------------------------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------------------------------

def _executor_class():
    import execution

    class _CapturingExecutor(execution.PromptExecutor):
        """PromptExecutor that also keeps the exception object of a failed node (ComfyUI keeps only its text)."""

        def handle_execution_error(self, prompt_id, prompt, current_outputs, executed, error, ex):
            self.last_exception = ex
            self.last_error = error
            return super().handle_execution_error(prompt_id, prompt, current_outputs, executed, error, ex)

    return _CapturingExecutor


def new_executor(server: ServerStub | None = None, cache: str = "classic", lru_size: int = 0):
    """A ComfyUI PromptExecutor as main.py's prompt_worker builds it. *cache* is "classic" (ComfyUI's
    default), "lru", "ram" or "none". Reuse one across run_workflow calls to keep ComfyUI's caching."""
    _require_init()
    import execution

    kinds = {"classic": execution.CacheType.CLASSIC, "lru": execution.CacheType.LRU,
             "ram": execution.CacheType.RAM_PRESSURE, "none": execution.CacheType.NONE}
    ex = _executor_class()(server or _default_stub(), cache_type=kinds[cache],
                           cache_args={"lru": lru_size, "ram": 0.0})
    ex.last_exception = None
    ex.last_error = None
    return ex


_PROMPT_COUNTER = itertools.count(1)


def run_workflow(prompt: Mapping[str, Any], outputs: Iterable[str] | None = None, *, executor=None,
                 extra_data: dict | None = None, prompt_id: str | None = None) -> "WorkflowResult":
    """Validates and executes an API-format workflow in-process with ComfyUI's own executor.

    *outputs*: node ids to execute (with their inputs); any node, output node or not. Default: every
    output node of the prompt (what the server runs). Validation is ``execution.validate_prompt`` (strict: any
    node error raises, where the server would still run the valid outputs); node ids in *outputs* that are not
    output nodes are validated with ``execution.validate_inputs``.
    *executor*: a :func:`new_executor` to reuse (keeps ComfyUI's output cache across runs); default a fresh one.

    Returns a :class:`WorkflowResult` (a dict like a GET /history entry; ``.value(node_id, slot)`` gives
    node output values). Raises :class:`WorkflowValidationError` / :class:`WorkflowExecutionError` /
    :class:`WorkflowInterrupted` with ComfyUI's error details and the original exception as ``__cause__``.
    Uses ``asyncio.run``: from a coroutine, await :func:`run_workflow_async` instead.
    """
    return asyncio.run(run_workflow_async(prompt, outputs, executor=executor, extra_data=extra_data,
                                          prompt_id=prompt_id))


async def run_workflow_async(prompt: Mapping[str, Any], outputs: Iterable[str] | None = None, *, executor=None,
                             extra_data: dict | None = None, prompt_id: str | None = None) -> "WorkflowResult":
    """:func:`run_workflow` for callers already inside an event loop."""
    _require_init()
    import execution
    import nodes

    prompt = copy.deepcopy({str(k): v for k, v in dict(prompt).items()})
    prompt_id = prompt_id or f"ae-{next(_PROMPT_COUNTER)}-{uuid.uuid4().hex[:8]}"
    ex = executor if executor is not None else new_executor()
    ex.last_exception = None
    ex.last_error = None
    extra = dict(extra_data or {})
    requested = None if outputs is None else [str(o) for o in outputs]

    if requested is None:
        valid, error, good, node_errors = await execution.validate_prompt(prompt_id, prompt, None)
        if not valid or node_errors:
            raise WorkflowValidationError(_format_node_errors(error or {"message": "Prompt outputs failed validation"}, node_errors),
                                          error=error, node_errors=node_errors)
        to_run = list(good)
    else:
        missing = [o for o in requested if o not in prompt]
        if missing:
            raise WorkflowValidationError(f"requested outputs not in the prompt: {missing}")
        for nid, node in prompt.items():
            if nodes.NODE_CLASS_MAPPINGS.get(node.get("class_type")) is None:
                err = {"message": f"Cannot execute because node {node.get('class_type')} does not exist.",
                       "details": f"Node ID '#{nid}'"}
                raise WorkflowValidationError(_format_node_errors(err, {}), error=err)
        validated: dict = {}
        node_errors: dict = {}
        for o in requested:
            ok, _reasons, _ = await execution.validate_inputs(prompt_id, prompt, o, validated)
            if ok is not True:
                for nid, (v, rs, _) in validated.items():
                    if v is not True and rs:
                        node_errors[nid] = {"errors": rs, "dependent_outputs": [o],
                                            "class_type": prompt[nid]["class_type"]}
        if node_errors:
            err = {"message": "Prompt outputs failed validation", "details": ""}
            raise WorkflowValidationError(_format_node_errors(err, node_errors), error=err, node_errors=node_errors)
        to_run = requested

    ex.server.last_prompt_id = prompt_id
    await ex.execute_async(prompt, prompt_id, extra, to_run)

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
    """Asks the running in-process workflow to stop (``nodes.interrupt_processing()``, what POST /interrupt
    does); it raises :class:`WorkflowInterrupted` at the next interruption check (every comfy op, every
    ProgressBar update)."""
    _require_init()
    import nodes

    nodes.interrupt_processing(True)


# --------------------------------------------------------------------------------------------------
# handing Python objects to a workflow (in-process only)
# --------------------------------------------------------------------------------------------------

class _AnyType(str):
    """A type name that every input accepts (ComfyUI's validate_node_input uses ``!=``)."""

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


def _object_node_class():
    class AETestPyObject:
        """Test-only node (never part of the pack): outputs the object registered under ``key``."""

        CATEGORY = "attention_edit/testing"
        RETURN_TYPES = (_AnyType("*"),)
        RETURN_NAMES = ("object",)
        FUNCTION = "get"
        DESCRIPTION = "Returns a Python object registered with attention_edit.testing.comfy_env.register_object."

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"key": ("STRING", {"default": ""})}}

        def get(self, key):
            if key not in _OBJECTS:
                raise KeyError(f"no object registered under {key!r}")
            return (_OBJECTS[key],)

    return AETestPyObject


def register_object(obj: Any, key: str | None = None) -> dict:
    """Registers *obj* (a ModelPatcher, CLIP, VAE, LATENT dict, tensor ...) and returns the API node that
    outputs it on slot 0, to put in a prompt: ``prompt["m"] = register_object(model)``, then
    ``"model": ["m", 0]``. Accepted by every input type. Each registration gets a fresh key (ComfyUI caches
    by input signature, so a new key means a new value)."""
    key = key or f"obj-{uuid.uuid4().hex}"
    _OBJECTS[key] = obj
    return {"class_type": OBJECT_NODE_ID, "inputs": {"key": key}}


def unregister_object(key_or_node: str | Mapping) -> None:
    key = key_or_node["inputs"]["key"] if isinstance(key_or_node, Mapping) else key_or_node
    _OBJECTS.pop(key, None)


def clear_objects() -> None:
    _OBJECTS.clear()


def release() -> None:
    """Drops registered objects and unloads ComfyUI's loaded models, then collects garbage. Call at the end of
    a session: ModelPatchers still alive at interpreter shutdown print "'NoneType' object has no attribute
    'ON_DETACH'" from ModelPatcher.__del__."""
    import gc

    clear_objects()
    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
    gc.collect()
