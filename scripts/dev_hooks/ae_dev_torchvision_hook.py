"""Development/test-only import hook: lets torchvision 0.28 (a CUDA build) import on a CPU-only torch.

ComfyUI imports torchvision at start-up; the only torchvision pinned to torch 2.13.0 is a CUDA build whose
compiled ops fail to load here, and its import then dies on ``operator torchvision::nms does not exist``.
Defining the two op schemas before torchvision is first imported is enough for the pure-Python part
(transforms, models) that ComfyUI uses. Installed by scripts/setup_env.sh into the dev venv only.
"""
import importlib.abc
import sys

_done = False


def _define_ops():
    global _done
    if _done:
        return
    _done = True
    try:
        import torch

        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        sys.modules[__name__]._lib = lib  # keep the registration alive
    except Exception:  # already defined, or torch missing: nothing to do
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torchvision":
            _define_ops()
        return None


sys.meta_path.insert(0, _Finder())
