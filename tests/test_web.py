"""The web extension: its JS is served by ComfyUI, parses, and its server route answers with the alignment."""
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent.parent / "web" / "js" / "attention_edit.js"


def test_js_is_served_by_comfyui(comfy_server):
    exts = comfy_server.get("/extensions").json()
    ours = [e for e in exts if e.endswith("/attention_edit.js")]
    assert ours, f"the pack's JS is not listed in /extensions: {exts}"
    r = comfy_server.get(ours[0])
    assert r.status_code == 200 and "AttentionEdit.AlignmentDisplay" in r.text


def test_align_route_describes_the_edit(comfy_server):
    r = comfy_server.post("/attention_edit/align", {"source": "a photo of a cat",
                                                     "target": "a photo of a dog\na photo of a cat wearing a hat"})
    assert r.status_code == 200
    swap, refine = r.json()["edits"]
    assert swap["mode"] == "replace" and swap["swaps"] == [["cat", "dog"]]
    assert refine["mode"] == "refine" and refine["added"] == ["wearing", "a", "hat"]
    bad = comfy_server.post("/attention_edit/align", {"source": "a photo of a cat", "target": "a big photo of a dog",
                                                       "mode": "replace"}).json()["edits"][0]
    assert "use mode 'refine'" in bad["error"]


def test_align_route_counts_t5_tokens_for_flux(comfy_server):
    """"encoder": "t5" (what the display sends when the sampler's text encoder is Flux's) aligns on ComfyUI's T5
    tokenizer: counts, limit and the sequence length are T5's; a prompt over 255 tokens makes the sequence 512."""
    long = "a photo of a cat " + " ".join(f"beside the old stone wall number {k}" for k in range(40))
    r = comfy_server.post("/attention_edit/align", {"source": "a photo of a cat", "encoder": "t5",
                                                     "target": "a photo of a dog\n" + long})
    assert r.status_code == 200, r.text
    swap, refine = r.json()["edits"]
    assert swap["mode"] == "replace" and swap["swaps"] == [["cat", "dog"]]
    assert (swap["stream"], swap["limit"], swap["seq_len"], swap["target_tokens"]) == ("T5", 511, 256, 7)
    assert refine["mode"] == "refine" and refine["seq_len"] == 512 and 255 < refine["target_tokens"] < 512
    clip = comfy_server.post("/attention_edit/align", {"source": "a photo of a cat", "target": "a photo of a dog"})
    assert (clip.json()["edits"][0]["stream"], clip.json()["edits"][0]["target_tokens"]) == ("CLIP", 5)
    bad = comfy_server.post("/attention_edit/align", {"source": "a cat", "target": "a dog", "encoder": "gpt"})
    assert bad.status_code == 400 and "'encoder' must be one of clip, t5" in bad.json()["error"]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed: cannot parse the JS")
def test_js_parses():
    # --check parses the module without running it (it needs a browser's window.comfyAPI to run)
    res = subprocess.run(["node", "--check", "--input-type=module"], input=JS.read_text(), capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
