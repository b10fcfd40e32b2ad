"""Thin ComfyUI nodes (glue only). Node ids share the prefix ``AE_``; categories live under ``attention_edit/``."""

MODULES = ("inversion_nodes", "edit_nodes", "adapedit_nodes", "training_nodes", "imagic_nodes", "toyworld_nodes")


def _modules():
    """The node modules of the pack, in menu order. Each exports ``NODES`` (a list of io.ComfyNode classes)."""
    import importlib

    return [importlib.import_module(f"{__name__}.{name}") for name in MODULES]
