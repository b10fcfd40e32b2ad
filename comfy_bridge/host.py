"""ComfyUI itself, in this process: which version is installed, start-up settings, the in-process initialisation
(what main.py does before it serves), the prompt executor, node definitions, and the server stand-in the executor
reports to. The headless runner and the tests use it through ``headless/host.py``.

What differs between the hosts checked (see this package's header) is absorbed here: the executor's cache
arguments (``ram_inactive`` since ~0.22), the output cache's lookup (``get`` became a coroutine in ~0.17; the sync
``get_local`` is used where it exists), and the unknown-node error text.
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Optional

__all__ = ["comfy_root", "comfy_version", "version_tuple", "configure", "init", "is_initialised", "relocate",
           "output_directory",
           "ServerStub", "new_executor", "validate", "execute", "cached_outputs", "node_ids", "has_node",
           "node_class", "node_info", "register_node", "interrupt", "release", "torch_device", "is_cpu"]

log = logging.getLogger(__name__)
_LOCK = threading.RLock()
_STATE: dict = {"initialised": False, "extras": False}


def comfy_root() -> Path:
    """The ComfyUI tree on sys.path (the directory holding main.py), found without importing ComfyUI."""
    spec = importlib.util.find_spec("comfy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ComfyUI is not importable: put its tree on sys.path (scripts/setup_env.sh does it with "
                           "a .pth)")
    root = Path(list(spec.submodule_search_locations)[0]).resolve().parent
    if not (root / "main.py").is_file():
        raise RuntimeError(f"no main.py next to the 'comfy' package at {root}")
    return root


def comfy_version(root: Optional[Path] = None) -> str:
    """ComfyUI's version string (comfyui_version.py of the tree), read without importing ComfyUI; "unknown" when
    the tree has no version file."""
    root = root or comfy_root()
    f = root / "comfyui_version.py"
    if f.is_file():
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read_text(encoding="utf-8"))
        if m:
            return m.group(1)
    return "unknown"


def version_tuple(version: Optional[str] = None) -> tuple:
    v = version or comfy_version()
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3]) or (0,)


def configure(cpu: bool = True, pytorch_attention: Optional[bool] = None) -> None:
    """Start-up settings ComfyUI reads once, when ``comfy.model_management`` is first imported (cheap: imports only
    the argument parser). cpu: run on the CPU. pytorch_attention: use PyTorch's SDPA kernel (``--use-pytorch-cross-
    attention``; ComfyUI's CPU default is sub-quadratic attention). Warns if the model code was already imported
    with another setting."""
    import comfy.cli_args

    comfy.cli_args.args.cpu = bool(cpu)
    if pytorch_attention is not None:
        comfy.cli_args.args.use_pytorch_cross_attention = bool(pytorch_attention)
    mm = sys.modules.get("comfy.model_management")
    if mm is not None and cpu and getattr(mm, "cpu_state", None) != getattr(mm, "CPUState").CPU:
        log.warning("comfy.model_management was imported before args.cpu was set; ComfyUI will not run on the CPU")


def torch_device():
    import comfy.model_management

    return comfy.model_management.get_torch_device()


def is_cpu() -> bool:
    return getattr(torch_device(), "type", "cpu") == "cpu"


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
                    "comfyui_version", "hook_breaker_ac10a0", "cuda_malloc", "new_updater", "middleware", "app",
                    "api_server", "alembic_db", "blueprints")


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


def relocate(base: Path) -> None:
    """Points every folder_paths directory (models/, custom_nodes/, input/, output/, temp/, user/) at *base*."""
    import folder_paths

    base = Path(base).resolve()
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


def add_model_folder_path(folder: str, path: str) -> None:
    """Adds ``path`` as the default location of a model folder (e.g. "checkpoints" for --ckpt)."""
    import folder_paths

    folder_paths.add_model_folder_path(folder, str(path), is_default=True)
    folder_paths.filename_list_cache.pop(folder, None)


def set_output_directory(path: str) -> None:
    import folder_paths

    folder_paths.set_output_directory(str(path))


def output_directory() -> str:
    """The running host's output folder (what SaveImage writes into)."""
    import folder_paths

    return folder_paths.get_output_directory()


def directories() -> dict:
    """{"output", "input", "temp"} folders of the running host."""
    import folder_paths

    return {t: folder_paths.get_directory_by_type(t) for t in ("output", "temp", "input")}


class ServerStub:
    """What PromptExecutor and the progress handlers use of server.PromptServer: ``client_id``,
    ``last_node_id``, ``last_prompt_id``, ``sockets_metadata``, ``send_sync``. Events are kept in a bounded
    deque (``events``) for inspection."""

    def __init__(self, maxlen: int = 2000):
        from collections import deque

        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.events = deque(maxlen=maxlen)
        try:  # 0.33: core nodes register their replacements (e.g. ImageBatch -> BatchImagesNode) at start-up
            from app.node_replace_manager import NodeReplaceManager

            self.node_replace_manager = NodeReplaceManager()
        except Exception:
            pass

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        self.events.append(("progress_text", {"node_id": node_id, "text": text}))

    def queue_updated(self):
        pass


_STUB: Optional[ServerStub] = None


def default_stub() -> ServerStub:
    global _STUB
    if _STUB is None:
        _STUB = ServerStub()
    return _STUB


def _install_progress_hook(stub: ServerStub) -> None:
    """Mirrors main.py's hijack_progress: ProgressBar updates check for interruption and feed the progress
    registry. Installed only if no hook is set (a real server sets its own)."""
    import comfy.utils
    from comfy_execution.progress import get_progress_state
    from comfy_execution.utils import get_executing_context

    from .progress import throw_if_interrupted

    if getattr(comfy.utils, "PROGRESS_BAR_HOOK", None) is not None:
        return

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        ctx = get_executing_context()
        if prompt_id is None and ctx is not None:
            prompt_id = ctx.prompt_id
        if node_id is None and ctx is not None:
            node_id = ctx.node_id
        throw_if_interrupted()
        if node_id is None:
            node_id = stub.last_node_id
        try:
            get_progress_state().update_progress(node_id, value, total, preview_image)
        except Exception:  # pragma: no cover - progress is cosmetic
            pass
        stub.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id},
                       stub.client_id)

    comfy.utils.set_progress_bar_global_hook(hook)


def init(base_dir: Path, *, cpu: bool = True, pack_dir: Optional[Path] = None, api_nodes: bool = False) -> None:
    """Initialises ComfyUI in this process, once (what main.py does before it serves), with its folders under
    ``base_dir``; later calls only move the folders. Loads the custom node package at ``pack_dir`` exactly as
    ComfyUI's start-up loads a custom_nodes/ entry (``nodes.load_custom_node``: runs its comfy_entrypoint). Partner
    API nodes call remote services, so they are off by default. RuntimeError (with ComfyUI's logged reason) if the
    pack fails to load."""
    with _LOCK:
        base = Path(base_dir).resolve()
        if _STATE["initialised"]:
            if _STATE.get("base_dir") != base:
                relocate(base)
                _STATE["base_dir"] = base
            return
        configure(cpu)
        root = comfy_root()
        _ensure_comfy_first(root)
        base.mkdir(parents=True, exist_ok=True)
        import comfy.cli_args

        if "folder_paths" not in sys.modules:
            comfy.cli_args.args.base_directory = str(base)  # folder_paths reads it at import
        _ensure_comfy_utils_package(root)
        import folder_paths  # noqa: F401

        relocate(base)
        import execution  # noqa: F401  (imports the rest of the executor stack, as main.py does)
        import nodes

        _ensure_comfy_utils_package(root)  # in case `nodes` was imported before us
        import server as srv

        stub = default_stub()
        if srv is not None and getattr(srv, "PromptServer", None) is not None and \
                not hasattr(srv.PromptServer, "instance"):
            srv.PromptServer.instance = stub  # core nodes call PromptServer.instance.send_progress_text etc.
        if not _STATE["extras"]:  # survives a failed pack load: a retry does not reload the built-ins
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=api_nodes))
            _STATE["extras"] = True
        if pack_dir is not None:
            records: list = []
            handler = logging.Handler(logging.WARNING)
            handler.emit = records.append
            root_logger = logging.getLogger()
            root_logger.addHandler(handler)
            try:
                ok = asyncio.run(nodes.load_custom_node(str(pack_dir)))
            finally:
                root_logger.removeHandler(handler)
            if not ok:
                why = "\n".join(r.getMessage() for r in records) or "(no log message)"
                raise RuntimeError(f"ComfyUI failed to load this pack from {pack_dir}:\n{why}")
        _install_progress_hook(stub)
        _STATE["base_dir"] = base
        _STATE["initialised"] = True


def is_initialised() -> bool:
    return bool(_STATE["initialised"])


def base_dir() -> Path:
    return _STATE["base_dir"]


def node_ids(prefix: str = "") -> list:
    import nodes

    return sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith(prefix))


def has_node(node_id: str) -> bool:
    import nodes

    return node_id in nodes.NODE_CLASS_MAPPINGS


def node_class(node_id: str):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS.get(node_id)


def register_node(node_id: str, cls, display_name: str) -> None:
    """Adds a classic node class to the running host's registry (used by the tests for a test-only node)."""
    import nodes

    nodes.NODE_CLASS_MAPPINGS[node_id] = cls
    nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] = display_name


def node_info(class_type: str) -> dict:
    """GET /object_info/<class_type>, computed in-process as ComfyUI's server.py does it (``GET_NODE_INFO_V1()``
    for V3 nodes). KeyError for an unknown node type."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS.get(class_type)
    if cls is None:
        raise KeyError(f"node type {class_type!r} is not registered in ComfyUI")
    if callable(getattr(cls, "GET_NODE_INFO_V1", None)):  # a V3 node (of any comfy_api version)
        return cls.GET_NODE_INFO_V1()
    it = cls.INPUT_TYPES()
    info = {
        "input": it,
        "input_order": {k: list(v.keys()) for k, v in it.items()},
        "output": cls.RETURN_TYPES,
        "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
        "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
        "name": class_type,
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }
    return info


def _executor_class():
    import execution

    class _CapturingExecutor(execution.PromptExecutor):
        """PromptExecutor that also keeps the exception object of a failed node (ComfyUI keeps only its text)."""

        def handle_execution_error(self, prompt_id, prompt, current_outputs, executed, error, ex):
            self.last_exception = ex
            self.last_error = error
            return super().handle_execution_error(prompt_id, prompt, current_outputs, executed, error, ex)

    return _CapturingExecutor


def new_executor(server=None, cache: str = "classic", lru_size: int = 0):
    """A ComfyUI PromptExecutor as main.py's prompt_worker builds it. *cache* is "classic", "lru", "ram" or
    "none". The cache arguments carry every key the hosts read (0.33 added ``ram_inactive``)."""
    import execution

    kinds = {"classic": execution.CacheType.CLASSIC, "lru": execution.CacheType.LRU,
             "ram": execution.CacheType.RAM_PRESSURE, "none": execution.CacheType.NONE}
    ex = _executor_class()(server or default_stub(), cache_type=kinds[cache],
                           cache_args={"lru": lru_size, "ram": 0.0, "ram_inactive": 0.0})
    ex.last_exception = None
    ex.last_error = None
    return ex


async def validate(prompt_id: str, prompt: dict, outputs: Optional[list]):
    """ComfyUI's validation: (valid, error, good_outputs, node_errors) for the whole prompt when *outputs* is
    None (execution.validate_prompt), else per requested node (execution.validate_inputs)."""
    import execution

    if outputs is None:
        return await execution.validate_prompt(prompt_id, prompt, None)
    validated: dict = {}
    node_errors: dict = {}
    for o in outputs:
        ok, _reasons, _ = await execution.validate_inputs(prompt_id, prompt, o, validated)
        if ok is not True:
            for nid, (v, rs, _) in validated.items():
                if v is not True and rs:
                    node_errors[nid] = {"errors": rs, "dependent_outputs": [o],
                                        "class_type": prompt[nid]["class_type"]}
    ok = not node_errors
    err = None if ok else {"message": "Prompt outputs failed validation", "details": ""}
    return ok, err, list(outputs), node_errors


async def execute(executor, prompt: dict, prompt_id: str, extra: dict, outputs: list) -> None:
    executor.server.last_prompt_id = prompt_id
    await executor.execute_async(prompt, prompt_id, extra, outputs)


def cached_outputs(executor, node_id: str):
    """The output slots (a list per slot) a node of the last run left in the executor's cache, or None. The
    cache's ``get`` is a coroutine since ~0.17; its sync ``get_local`` is used where it exists."""
    cache = executor.caches.outputs
    getter = getattr(cache, "get_local", None)
    if getter is not None:
        entry = getter(str(node_id))
    else:
        entry = cache.get(str(node_id))
        if asyncio.iscoroutine(entry):
            entry = asyncio.run(entry)
    if entry is None:
        return None
    return getattr(entry, "outputs", entry)


def interrupt() -> None:
    """Asks the running in-process workflow to stop (what POST /interrupt does)."""
    import nodes

    nodes.interrupt_processing(True)


def release() -> None:
    """Unloads ComfyUI's loaded models and collects garbage (ModelPatchers alive at interpreter shutdown print
    "'NoneType' object has no attribute 'ON_DETACH'" from ModelPatcher.__del__)."""
    import gc

    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
    gc.collect()


def soft_empty_cache() -> None:
    import comfy.model_management

    comfy.model_management.soft_empty_cache()


def load_models_gpu(models, force_full_load: bool = False) -> None:
    """Loads MODEL patchers onto their devices (``comfy.model_management.load_models_gpu``)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu(list(models), force_full_load=force_full_load)
