"""What the tests' ``comfy`` fixture yields: the product's in-process host (attention_edit.headless.host) plus the
test-only object node (tests/support/objects.py)."""
from attention_edit.headless.host import *  # noqa: F401,F403
from attention_edit.headless.host import default_stub as _default_stub  # noqa: F401
from attention_edit.headless import host as _host

from .objects import OBJECT_NODE_ID, clear_objects, register_object, unregister_object  # noqa: F401
from . import objects as _objects


def init_comfy(*args, **kwargs):
    _host.init_comfy(*args, **kwargs)
    _objects.install()


def release():
    _objects.clear_objects()
    _host.release()
