"""A real ComfyUI server in a child process, with this pack installed, driven over loopback HTTP.

::

    from support.server import ComfyServer
    with ComfyServer() as srv:                      # ~5 s on a CPU machine
        pid = srv.post_prompt(api_prompt)           # POST /prompt
        entry = srv.wait(pid, timeout=120)          # polls GET /history/<id>; raises on an error status
        srv.output_files(entry)                     # absolute paths of SaveImage/SaveLatent files

The server runs ``python main.py --cpu --listen 127.0.0.1 --port <free> --base-directory <dir>
--database-url sqlite:///<dir>/user/comfyui.db --disable-auto-launch`` from the ComfyUI tree, with
``<dir>/custom_nodes/attention_edit`` a symlink to this package, so ComfyUI's start-up imports it
like any installed custom node. Importing this module does not import ComfyUI.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import requests

from attention_edit.headless.host import PACKAGE_DIR, comfy_root, ui_files

__all__ = ["ComfyServer", "ServerError", "PromptRejected", "PromptFailed", "PromptTimeout", "free_port"]

_LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """The server did not start, died, or answered unexpectedly. ``log`` holds the tail of its log."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message + (f"\n--- server log (tail) ---\n{log}" if log else ""))
        self.log = log


class PromptRejected(ServerError):
    """POST /prompt refused the prompt (validation). ``error`` and ``node_errors`` as ComfyUI sent them."""

    def __init__(self, message: str, error: dict, node_errors: dict):
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors


class PromptTimeout(ServerError):
    """wait() gave up: the prompt had not finished within its timeout (the server is still alive)."""


class PromptFailed(ServerError):
    """The prompt ran and ended with status "error" (or was interrupted). ``entry`` is the history entry;
    ``node_id``, ``node_type``, ``exception_type``, ``exception_message``, ``traceback`` from execution_error."""

    def __init__(self, message: str, entry: dict, details: dict, interrupted: bool = False):
        super().__init__(message)
        self.entry = entry
        self.interrupted = interrupted
        self.node_id = details.get("node_id")
        self.node_type = details.get("node_type")
        self.exception_type = details.get("exception_type")
        self.exception_message = details.get("exception_message")
        self.traceback = details.get("traceback") or []


def free_port() -> int:
    """A TCP port free on the loopback interface (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return s.getsockname()[1]


class ComfyServer:
    """Context manager around a ComfyUI server process (see the module docstring).

    Parameters: *base_dir* (default: a temporary directory removed on stop), *port* (default: a free one),
    *cpu* (pass ``--cpu``; default True), *extra_args* (more main.py flags, e.g. ``["--disable-api-nodes"]``),
    *startup_timeout* seconds, *link_pack* (symlink this package into custom_nodes/), *python* (the
    interpreter; default the current one), *env* (extra environment variables), *require_pack* (raise
    ServerError if ComfyUI reports "IMPORT FAILED" for the pack; otherwise the log goes to ``pack_load_error``),
    *threads* (OMP_NUM_THREADS / MKL_NUM_THREADS of the server: torch's CPU threads; see attention_edit.headless.host.init_comfy).
    """

    def __init__(self, base_dir: str | os.PathLike | None = None, *, port: int | None = None, cpu: bool = True,
                 extra_args: Iterable[str] = (), startup_timeout: float = 120.0, link_pack: bool = True,
                 python: str | None = None, env: Mapping[str, str] | None = None, pack_name: str = "attention_edit",
                 require_pack: bool = True, threads: int | None = None):
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="ae_comfy_server_")).resolve()
        self.port = port
        self.cpu = cpu
        self.extra_args = list(extra_args)
        self.startup_timeout = float(startup_timeout)
        self.link_pack = link_pack
        self.python = python or sys.executable
        self.env = dict(env or {})
        self.pack_name = pack_name
        self.require_pack = require_pack
        self.threads = threads
        self.pack_load_error: str | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui-server.log"
        self._log_file = None
        self._session = requests.Session()
        self._session.trust_env = False  # loopback only: never route through a proxy from the environment
        self.client_id = uuid.uuid4().hex
        self.startup_seconds: float | None = None

    # ---------------------------------------------------------------- life cycle
    @property
    def url(self) -> str:
        return f"http://{_LOOPBACK}:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    def command(self) -> list[str]:
        cmd = [self.python, "main.py"]
        if self.cpu:
            cmd.append("--cpu")
        cmd += ["--listen", _LOOPBACK, "--port", str(self.port), "--base-directory", str(self.base_dir),
                "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}", "--disable-auto-launch"]
        return cmd + self.extra_args

    def start(self) -> "ComfyServer":
        if self.process is not None:
            return self
        root = comfy_root()
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.link_pack:
            link = self.base_dir / "custom_nodes" / self.pack_name
            if not link.exists():
                link.symlink_to(PACKAGE_DIR, target_is_directory=True)
        if self.port is None:
            self.port = free_port()
        env = dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
        if self.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(self.threads))
        env.update(self.env)
        self._log_file = open(self.log_path, "ab")
        t0 = time.monotonic()
        self.process = subprocess.Popen(self.command(), cwd=str(root), env=env, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = t0 + self.startup_timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._close_log()
                self.process = None
                raise ServerError(f"ComfyUI exited with code {code} during start-up", self.log_tail())
            try:
                r = self._session.get(self.url + "/object_info", timeout=5)
                if r.status_code == 200:
                    self.startup_seconds = time.monotonic() - t0
                    self._check_pack_loaded()
                    return self
            except requests.RequestException as exc:
                last_exc = exc
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"ComfyUI did not answer GET /object_info within {self.startup_timeout:.0f} s ({last_exc})",
                          self.log_tail())

    def _check_pack_loaded(self) -> None:
        if not self.link_pack:
            return
        marker = os.path.join("custom_nodes", self.pack_name)
        log = self.log_tail(200_000)
        failed = [ln for ln in log.splitlines() if "IMPORT FAILED" in ln and ln.rstrip().endswith(marker)]
        if failed:
            self.pack_load_error = log
            if self.require_pack:
                self.stop()
                raise ServerError(f"ComfyUI could not import the pack ({failed[0].strip()})", log[-8000:])

    def stop(self, timeout: float = 10.0) -> None:
        """Terminates the server (SIGTERM, then SIGKILL after *timeout*); removes a temporary base dir."""
        p, self.process = self.process, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=timeout)
        self._close_log()
        self._session.close()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _close_log(self):
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-chars:].decode("utf-8", "replace")

    def _check_alive(self):
        if self.process is None:
            raise ServerError("the server is not running")
        if self.process.poll() is not None:
            raise ServerError(f"the server died (exit code {self.process.returncode})", self.log_tail())

    # ---------------------------------------------------------------- HTTP
    def get(self, path: str, timeout: float = 30.0, **kw) -> requests.Response:
        self._check_alive()
        return self._session.get(self.url + path, timeout=timeout, **kw)

    def post(self, path: str, json_body: Any = None, timeout: float = 30.0, **kw) -> requests.Response:
        """POST with a JSON body, encoded as Python's json does (NaN and Infinity are written as such, as a
        script calling the API would send them; requests' own encoder refuses them)."""
        self._check_alive()
        if json_body is not None:
            import json

            headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
            return self._session.post(self.url + path, data=json.dumps(json_body), headers=headers, timeout=timeout,
                                      **kw)
        return self._session.post(self.url + path, timeout=timeout, **kw)

    def object_info(self, node_id: str | None = None) -> dict:
        """GET /object_info (all nodes) or /object_info/<node_id> (that node's entry, {} if unknown)."""
        if node_id is None:
            r = self.get("/object_info")
            r.raise_for_status()
            return r.json()
        r = self.get(f"/object_info/{node_id}")
        r.raise_for_status()
        return r.json().get(node_id, {})

    def post_prompt(self, prompt: Mapping[str, Any], *, extra_data: dict | None = None, front: bool = False) -> str:
        """POST /prompt; returns the prompt id. Raises PromptRejected with ComfyUI's node errors on a 400."""
        body: dict[str, Any] = {"prompt": dict(prompt), "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        if front:
            body["front"] = True
        r = self.post("/prompt", body)
        try:
            data = r.json()
        except ValueError:
            raise ServerError(f"POST /prompt answered {r.status_code}: {r.text[:500]}", self.log_tail())
        if r.status_code != 200:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            node_errors = data.get("node_errors", {}) if isinstance(data, dict) else {}
            lines = [f"POST /prompt rejected the prompt: {error.get('message', '')}: {error.get('details', '')}"]
            for nid, info in (node_errors or {}).items():
                for e in info.get("errors", []):
                    lines.append(f"  node {nid} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
            raise PromptRejected("\n".join(lines), error, node_errors)
        return data["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The GET /history/<id> entry, or None while the prompt has not finished."""
        r = self.get(f"/history/{prompt_id}")
        r.raise_for_status()
        return r.json().get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict:
        """Polls GET /history/<id> until the prompt has finished; returns its entry ({"prompt", "outputs",
        "status", "meta"}). Raises PromptFailed (with the node's exception) when the status is error,
        PromptTimeout on timeout, ServerError with the log tail if the server dies."""
        deadline = time.monotonic() + timeout
        delay = poll
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or status.get("completed") is False:
                    msgs = {m[0]: m[1] for m in status.get("messages", []) if isinstance(m, (list, tuple)) and len(m) == 2}
                    if "execution_interrupted" in msgs:
                        d = msgs["execution_interrupted"]
                        raise PromptFailed(f"prompt {prompt_id} interrupted at node {d.get('node_id')} ({d.get('node_type')})",
                                           entry, d, interrupted=True)
                    d = msgs.get("execution_error", {})
                    raise PromptFailed(
                        f"prompt {prompt_id} failed at node {d.get('node_id')} ({d.get('node_type')}): "
                        f"{d.get('exception_type')}: {(d.get('exception_message') or '').strip()}", entry, d)
                return entry
            if time.monotonic() >= deadline:
                raise PromptTimeout(f"prompt {prompt_id} did not finish within {timeout:.0f} s", self.log_tail())
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def run(self, prompt: Mapping[str, Any], timeout: float = 120.0, **kw) -> dict:
        """post_prompt + wait."""
        return self.wait(self.post_prompt(prompt, **kw), timeout=timeout)

    def interrupt(self) -> None:
        """POST /interrupt (stops the running prompt at the next interruption check)."""
        r = self.post("/interrupt", {})
        r.raise_for_status()

    def queue(self) -> dict:
        """GET /queue: {"queue_running": [...], "queue_pending": [...]}."""
        r = self.get("/queue")
        r.raise_for_status()
        return r.json()

    def output_files(self, entry: Mapping[str, Any]) -> list[Path]:
        """Absolute paths of the files listed in a history entry's outputs (under this server's folders)."""
        return ui_files(entry.get("outputs", {}), {"output": self.output_dir, "temp": self.temp_dir,
                                                   "input": self.input_dir})

    def upload_image(self, path: str | os.PathLike, *, overwrite: bool = True) -> str:
        """POST /upload/image; returns the name LoadImage's ``image`` input takes."""
        p = Path(path)
        with open(p, "rb") as fh:
            r = self.post("/upload/image", None, files={"image": (p.name, fh, "image/png")},
                          data={"overwrite": "true" if overwrite else "false", "type": "input"})
        r.raise_for_status()
        d = r.json()
        return f"{d['subfolder']}/{d['name']}" if d.get("subfolder") else d["name"]
