"""Collects every node of the pack into one ComfyExtension (V3 API, pinned at comfy_api.v0_0_2)."""
from comfy_api.v0_0_2 import ComfyExtension


def all_nodes():
    """Returns the list of node classes; each nodes/*.py module exports NODES."""
    from . import _modules

    out = []
    for mod in _modules():
        out.extend(mod.NODES)
    return out


class AttentionEditExtension(ComfyExtension):
    async def get_node_list(self):
        return all_nodes()


async def comfy_entrypoint() -> ComfyExtension:
    from .routes import register_routes

    register_routes()
    return AttentionEditExtension()
