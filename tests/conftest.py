"""Shared fixtures: a real in-process ComfyUI (``comfy``), a real photo (``photo``) and a real ComfyUI server
process (``comfy_server``, started lazily, only by tests that request it; those tests get the ``server`` marker,
so ``pytest -m "not server"`` skips them)."""
import os

import pytest

from support import comfy as comfy_env

# ComfyUI reads args.cpu when comfy.model_management is first imported: set it before any test module
# (or the code it imports) gets there.
comfy_env.configure_cpu()

# torch CPU threads for the whole test session and the server (AE_TEST_THREADS, default 1; 0 = torch's default):
# on a small shared machine OpenMP workers spin against other processes, and a tiny-model KSampler went from
# 0.1 s (1 thread) to 7-12 s (2 threads on 2 busy cores).
THREADS = int(os.environ.get("AE_TEST_THREADS", "1"))
if THREADS:
    import torch

    torch.set_num_threads(THREADS)


def pytest_configure(config):
    config.addinivalue_line("markers", "server: starts a real ComfyUI server process (about 5-10 s, once per session)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "comfy_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI initialised in-process (CPU, core nodes + this pack); yields the comfy_env module."""
    comfy_env.init_comfy(tmp_path_factory.mktemp("comfy_base"), threads=THREADS or None)
    yield comfy_env
    comfy_env.release()


@pytest.fixture(scope="session")
def _cat64():
    from attention_edit.headless.photos import photo

    return photo("cat", 64)


@pytest.fixture
def photo(_cat64):
    """The cat photo (skimage chelsea) as an IMAGE tensor [1, 64, 64, 3] in [0, 1]; a fresh copy per test."""
    return _cat64.clone()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A real ComfyUI server (main.py --cpu on a free loopback port) with this pack in custom_nodes/."""
    from support.server import ComfyServer

    with ComfyServer(tmp_path_factory.mktemp("comfy_server"), threads=THREADS or None) as srv:
        watch = _Responsiveness(srv)
        try:
            yield srv
        finally:
            watch.stop()
            import sys

            sys.__stderr__.write(f"\n[server responsiveness] GET /queue: {watch.count} polls during the run, median "
                                 f"{watch.median * 1000:.0f} ms, worst {watch.worst * 1000:.0f} ms\n")
        # the server stays responsive throughout the test run (hostile-input issue): its event loop never stalls
        assert watch.worst < RESPONSIVE_S, (f"GET /queue took {watch.worst:.2f} s once during the test run "
                                            f"({watch.count} polls, median {watch.median * 1000:.0f} ms)")


#: the longest GET /queue may take while the tests use the server (prompts executing, the route busy). Work done on
#: the event loop (a route or node computing there) stalls it for the whole computation, tens of seconds for a
#: training or inversion prompt; a GIL-bound executor thread on a loaded 2-core machine delays a poll by about a
#: second at worst (1.18 s seen in CI), so the bound separates the two without timing the machine.
RESPONSIVE_S = 5.0


class _Responsiveness:
    """Polls GET /queue twice a second in a thread while the server is in use and keeps the latencies."""

    def __init__(self, srv):
        import threading

        import requests

        self.lat: list = []
        self._stop = threading.Event()
        self._session = requests.Session()
        self._session.trust_env = False
        self._url = srv.url + "/queue"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import time

        while not self._stop.wait(0.5):
            t0 = time.monotonic()
            try:
                self._session.get(self._url, timeout=30)
            except Exception:  # noqa: BLE001 - a dead server is reported by the tests themselves
                continue
            self.lat.append(time.monotonic() - t0)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=35)

    @property
    def worst(self) -> float:
        return max(self.lat, default=0.0)

    @property
    def median(self) -> float:
        return sorted(self.lat)[len(self.lat) // 2] if self.lat else 0.0

    @property
    def count(self) -> int:
        return len(self.lat)
