"""A test-only node that hands a Python object (a ModelPatcher, CLIP, VAE, LATENT dict, tensor ...) to a workflow,
in-process only. It is registered by the tests' ``comfy`` fixture, never by the product."""
from __future__ import annotations

import uuid
from typing import Any, Mapping

from attention_edit.comfy_bridge import host as bridge

OBJECT_NODE_ID = "AETest_PyObject"
_OBJECTS: dict = {}


class _AnyType(str):
    """A type name that every input accepts (ComfyUI's validate_node_input uses ``!=``)."""

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


class AETestPyObject:
    """Test-only node: outputs the object registered under ``key``."""

    CATEGORY = "attention_edit/testing"
    RETURN_TYPES = (_AnyType("*"),)
    RETURN_NAMES = ("object",)
    FUNCTION = "get"
    DESCRIPTION = "Returns a Python object registered with tests/support/objects.register_object."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"key": ("STRING", {"default": ""})}}

    def get(self, key):
        if key not in _OBJECTS:
            raise KeyError(f"no object registered under {key!r}")
        return (_OBJECTS[key],)


def install() -> None:
    bridge.register_node(OBJECT_NODE_ID, AETestPyObject, "Python object (tests only)")


def register_object(obj: Any, key: str | None = None) -> dict:
    """Registers *obj* and returns the API node that outputs it on slot 0, to put in a prompt:
    ``prompt["m"] = register_object(model)``, then ``"model": ["m", 0]``. Accepted by every input type. Each
    registration gets a fresh key (ComfyUI caches by input signature, so a new key means a new value)."""
    key = key or f"obj-{uuid.uuid4().hex}"
    _OBJECTS[key] = obj
    return {"class_type": OBJECT_NODE_ID, "inputs": {"key": key}}


def unregister_object(key_or_node) -> None:
    key = key_or_node["inputs"]["key"] if isinstance(key_or_node, Mapping) else key_or_node
    _OBJECTS.pop(key, None)


def clear_objects() -> None:
    _OBJECTS.clear()
