"""Thin ComfyUI nodes (glue only). Node ids share the prefix ``AE_``; categories live under ``attention_edit/``."""


def _modules():
    """The node modules of the pack, in menu order. Each exports ``NODES`` (a list of io.ComfyNode classes)."""
    import importlib

    names = ["inversion_nodes", "edit_nodes", "toyworld_nodes", "training_nodes", "adapedit_nodes", "imagic_nodes"]
    mods = []
    for name in names:
        try:
            mods.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    return mods
