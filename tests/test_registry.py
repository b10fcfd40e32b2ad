"""The Comfy Registry metadata in pyproject.toml: checked by comfy-cli's own `comfy node validate` (offline: it reads
the metadata as publishing does and runs its security lint) and by the rules of the registry's specification
(docs.comfy.org/registry/specifications: the node id, semantic version, the license as a file or text table, the
repository URL, PublisherId, DisplayName, the icon, requires-comfyui)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the ComfyUI versions the test command runs on (scripts/test.sh)
TESTED_HOSTS = ("0.3.75", "0.33.0")


@pytest.fixture(scope="module")
def meta():
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_comfy_cli_validates_the_node_for_publishing():
    """`comfy node validate` (comfy-cli, the registry's CLI) accepts the pack with no warning: it parses every
    field publishing sends (a malformed license or requires-comfyui is a printed warning, not an exit code, so the
    output is read) and finds no exec / eval / one-line compound statements."""
    comfy = Path(sys.executable).with_name("comfy")
    assert comfy.is_file(), "comfy-cli is a test dependency (pyproject [project.optional-dependencies] test)"
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    r = subprocess.run([str(comfy), "--skip-prompt", "node", "validate"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "All validation checks passed" in out, out
    assert not re.search(r"warning|error", out, re.IGNORECASE), out


def test_project_fields_follow_the_registry_specification(meta):
    p = meta["project"]
    name = p["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name), name
    assert not re.search(r"[-_.]{2}", name), "no consecutive special characters"
    assert re.fullmatch(r"\d+\.\d+\.\d+", p["version"]), "semantic version X.Y.Z"
    lic = p["license"]
    assert isinstance(lic, dict) and set(lic) <= {"file", "text"} and lic, "license = { file = ... } or { text = ... }"
    if "file" in lic:
        assert (ROOT / lic["file"]).is_file() and "MIT" in (ROOT / lic["file"]).read_text()
    assert p["description"] and p["requires-python"]
    assert p["urls"]["Repository"].startswith("https://github.com/")


def test_tool_comfy_fields_follow_the_registry_specification(meta):
    from packaging.specifiers import SpecifierSet
    from PIL import Image

    c = meta["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9-]*", c["PublisherId"]), c["PublisherId"]
    assert c["DisplayName"].strip()
    # the icon: an https URL of a file of this repository (raw GitHub of the Repository URL), square, <= 400 px
    repo = meta["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert c["Icon"].startswith(prefix), c["Icon"]
    icon = ROOT / c["Icon"][len(prefix):]
    with Image.open(icon) as im:
        assert im.size[0] == im.size[1] <= 400, im.size
    assert isinstance(c["includes"], list)
    # requires-comfyui: comfy-cli's pattern ([operator]X.Y.Z, comma-separated), and every tested host inside it
    parts = [q.strip() for q in c["requires-comfyui"].split(",")]
    assert all(re.fullmatch(r"(==|>=|<=|!=|~=|>|<)?\d+\.\d+\.\d+", q) for q in parts), parts
    spec = SpecifierSet(c["requires-comfyui"])
    assert all(spec.contains(v) for v in TESTED_HOSTS), (c["requires-comfyui"], TESTED_HOSTS)
    assert not spec.contains("0.3.74"), "the range starts at the oldest tested host"


def test_the_running_host_is_one_the_metadata_accepts(comfy, meta):
    """The ComfyUI this suite runs on is inside requires-comfyui (both hosts run the suite)."""
    from packaging.specifiers import SpecifierSet

    from attention_edit.comfy_bridge import host

    assert SpecifierSet(meta["tool"]["comfy"]["requires-comfyui"]).contains(host.comfy_version())
