"""Files and folders: the pack's one atomic safetensors writer, its one safetensors/tensor reader (every loader of
the pack reads through it, so a bad file always gets the same clear message), name validation, and ComfyUI's
folder registry (``folder_paths``: model folders, the output and embeddings folders).

Nothing of a file's *content* is decided here: the format modules (``inversion/store.py``,
``training/textual_inversion.py``, ``training/custom_diffusion.py``, ``training/imagic.py``, ``comfy_bridge/models.py``)
turn results into ``(tensors, metadata)`` and back.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Iterable, Optional

import torch

__all__ = ["NAME_RE", "validate_name", "file_in_folder", "save_safetensors", "read_safetensors",
           "read_safetensors_metadata", "read_tensor_file", "FileFormatError", "register_model_folder",
           "model_file_path", "folder_files", "output_dir", "output_subdir", "embeddings_dir", "models_dir",
           "input_dir", "safe_prefix", "MAX_PREFIX"]

#: Allowed names of embeddings / concept files / folders: a letter or digit first, then letters, digits, '_', '-',
#: '.'; at most 100 characters.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
#: Longest file-name prefix a save node accepts (a counter and the extension are appended; file systems allow 255
#: bytes per name).
MAX_PREFIX = 120


class FileFormatError(ValueError):
    """A file could not be read as what it should be; the message names the file, what was wrong and what to do."""


def validate_name(name: str, what: str = "name") -> str:
    """Returns ``name`` stripped, or raises ValueError when it could escape its folder or is not a plain name.

    Rejected: empty names, path separators (``/``, ``\\``), ``..`` anywhere, a leading dot, characters other than
    letters, digits, ``_``, ``-``, ``.`` (NUL and other control characters included), and more than 100
    characters. The name is also the file name (without extension), so nothing is ever written outside the
    target folder."""
    if not isinstance(name, str):
        raise ValueError(f"the {what} must be text, got {type(name).__name__}")
    s = name.strip()
    if not s:
        raise ValueError(f"the {what} is empty; give it a short name such as 'my_teapot'")
    if "/" in s or "\\" in s or os.sep in s or (os.altsep and os.altsep in s):
        raise ValueError(f"the {what} {name!r} contains a path separator; use a plain name (it is also the file "
                         "name, and files are only written inside their folder)")
    if ".." in s:
        raise ValueError(f"the {what} {name!r} contains '..'; use a plain name without '..'")
    if len(s) > 100:
        raise ValueError(f"the {what} is {len(s)} characters long; use at most 100 (it is also the file name)")
    if not NAME_RE.match(s):
        raise ValueError(f"the {what} {name!r} is not a plain name: use 1-100 letters, digits, '_', '-' or '.', "
                         "starting with a letter or digit")
    return s


def safe_prefix(prefix: str, what: str = "filename_prefix", default: str = "output") -> str:
    """A file-name prefix for a save node: the last path component of ``prefix``, stripped. ValueError for control
    characters (a NUL byte cannot be in a file name) or more than :data:`MAX_PREFIX` characters; ``default`` when
    empty."""
    if not isinstance(prefix, str):
        raise ValueError(f"the {what} must be text, got {type(prefix).__name__}")
    bad = sorted({repr(c) for c in prefix if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ValueError(f"the {what} contains control characters ({', '.join(bad)}), which no file name may hold; "
                         "use letters, digits, '_' or '-'")
    p = os.path.basename(prefix.strip().replace("\\", "/")) or default
    if p in (".", ".."):
        p = default
    if len(p) > MAX_PREFIX:
        raise ValueError(f"the {what} is {len(p)} characters long; use at most {MAX_PREFIX} (a counter and the "
                         "extension are appended, and file systems allow 255 bytes per name)")
    return p


def file_in_folder(folder: str, filename: str) -> str:
    """The absolute path of ``filename`` inside ``folder``; ValueError if it would resolve outside it."""
    base = os.path.realpath(os.path.abspath(folder))
    path = os.path.realpath(os.path.abspath(os.path.join(base, filename)))
    if os.path.commonpath([base, path]) != base or path == base:
        raise ValueError(f"{filename!r} would be written outside {base}; refused")
    return path


def save_safetensors(path: str, tensors: dict, metadata: Optional[dict] = None) -> str:
    """Writes ``tensors`` (name -> tensor) to ``path`` as safetensors, atomically: a temporary file in the same
    folder, then ``os.replace`` (a reader never sees a half-written file; an existing file is replaced in one
    step; a failed write leaves the old file). Tensors are copied to the CPU, contiguous. Metadata values that are
    not strings are stored as JSON. Returns ``path``."""
    from safetensors.torch import save_file

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with torch.inference_mode(False):
        out = {str(k): v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {str(k): (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:60]}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(out, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _what(path: str, what: str) -> str:
    return f"the {what} {os.path.basename(path)!r}" if what else repr(os.path.basename(path))


def read_safetensors_metadata(path: str, what: str = "file") -> dict:
    """The metadata of a safetensors file (``{}`` when it has none). FileFormatError naming the file when it is
    missing, empty, truncated, not safetensors (e.g. a renamed pickle) or has a damaged header."""
    from safetensors import safe_open

    _check_exists(path, what)
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise _unreadable(path, what, exc) from None


def read_safetensors(path: str, what: str = "file", check_finite: bool = True) -> tuple:
    """(tensors {name: CPU tensor}, metadata {str: str}) of a safetensors file.

    FileFormatError naming the file, what is wrong and what to do, for a missing, empty, truncated, damaged or
    non-safetensors file (e.g. a pickle renamed to .safetensors; it is never unpickled), and, when
    ``check_finite``, for floating tensors holding NaN or infinity (a broken training run or download: applying
    them would silently give NaN images)."""
    from safetensors import safe_open

    _check_exists(path, what)
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise _unreadable(path, what, exc) from None
    if check_finite:
        check_finite_tensors(tensors, _what(path, what))
    return tensors, meta


def check_finite_tensors(tensors: dict, what: str) -> None:
    """FileFormatError naming the tensors of ``tensors`` that hold NaN or infinity."""
    bad = [k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point() and
           not bool(torch.isfinite(v).all())]
    if bad:
        raise FileFormatError(f"{what} holds NaN or infinite values in {len(bad)} tensor(s) ({', '.join(bad[:4])}); "
                              "it is damaged (a diverged training run or a broken download): train or save it again")


def read_tensor_file(path: str, what: str = "file", check_finite: bool = True):
    """The content of a ``.bin`` / ``.pt`` / ``.ckpt`` / ``.pth`` file read with ``torch.load(weights_only=True)``:
    plain tensors and containers only, no arbitrary object is ever unpickled. FileFormatError naming the file
    otherwise."""
    _check_exists(path, what)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FileFormatError(f"{_what(path, what)} could not be read as plain tensors (torch.load with "
                              f"weights_only=True refuses arbitrary objects and damaged files): "
                              f"{str(exc).splitlines()[0][:200]}; re-export it as .safetensors") from None
    if check_finite and isinstance(obj, dict):
        flat = {}

        def walk(prefix, d):
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                elif torch.is_tensor(v):
                    flat[f"{prefix}{k}"] = v

        walk("", obj)
        check_finite_tensors(flat, _what(path, what))
    return obj


def _check_exists(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileFormatError(f"{_what(path, what)} does not exist ({path})")
    if os.path.getsize(path) == 0:
        raise FileFormatError(f"{_what(path, what)} is empty (0 bytes; an interrupted copy or download?): copy or "
                              "save it again")


def _unreadable(path: str, what: str, exc: BaseException) -> FileFormatError:
    size = os.path.getsize(path) if os.path.exists(path) else 0
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        kind = "a pickle / torch.save file renamed to .safetensors (it is not unpickled, for safety)"
    else:
        kind = "not a valid safetensors file (truncated, damaged, or another format)"
    detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return FileFormatError(f"{_what(path, what)} ({size} bytes) is {kind}: {detail}. Save or download it again "
                           "(a .safetensors file written by this pack, ComfyUI or diffusers)")


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI's folders (folder_paths)
# ---------------------------------------------------------------------------------------------------------------

def register_model_folder(name: str, extensions: Iterable[str]) -> str:
    """Registers models/<name> with ComfyUI's folder registry (keeping paths already configured, e.g. by
    extra_model_paths.yaml; adding ``extensions``) and returns its default path."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, name)
    paths, exts = folder_paths.folder_names_and_paths.get(name, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[name] = (paths, set(exts) | set(extensions))
    return default


def folder_files(folder: str) -> list:
    """File names (relative, subfolders allowed) ComfyUI lists for a registered folder; [] when none."""
    import folder_paths

    try:
        return list(folder_paths.get_filename_list(folder))
    except Exception:
        return []


def folder_path(folder: str) -> str:
    """The first (default) path of a registered folder."""
    import folder_paths

    return folder_paths.get_folder_paths(folder)[0]


def model_file_path(folder: str, name: str, none_marker: str, hint: str) -> str:
    """Full path of ``name`` in the registered model folder ``folder``; ValueError naming the folder and ``hint``
    (how to make such a file) when it is missing or is the combo's ``none_marker``."""
    import folder_paths

    path = folder_paths.get_full_path(folder, name) if name and name != none_marker else None
    if path is None:
        where = folder_paths.get_folder_paths(folder)[0]
        raise ValueError(f"no file {name!r} in {where}; {hint}, then refresh the node list")
    return path


def output_dir() -> str:
    import folder_paths

    return folder_paths.get_output_directory()


def output_subdir(name: str) -> str:
    """output/<name> (not created)."""
    return os.path.join(output_dir(), name)


def input_dir() -> str:
    import folder_paths

    return folder_paths.get_input_directory()


def models_dir() -> str:
    import folder_paths

    return folder_paths.models_dir


def embeddings_dir() -> str:
    return folder_path("embeddings")


def embedding_dirs() -> list:
    import folder_paths

    return list(folder_paths.get_folder_paths("embeddings"))
