"""Collects every node of the pack into one ComfyExtension (V3 API, comfy_api.latest)."""
from comfy_api.latest import ComfyExtension


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
