"""The shipped workflows (workflows/api/*.json, workflows/*.json), end to end:

- UI format: structure (links, slots, types), widget counts against the real object_info, UI -> API gives back
  the API file, and the committed UI files are what scripts/make_ui_workflows.py generates (no drift);
- every API workflow through ComfyUI's executor in-process, with the tiny model the runner swaps in;
- through a real ComfyUI server (POST /prompt, GET /history), including a clear error for a bad local blend word
  and POST /interrupt stopping a running null-text inversion;
- the runner CLI as a subprocess.
"""
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from attention_edit.headless import runner
from attention_edit.comfy_bridge import host as comfy_host
from attention_edit.headless import ui_format
from attention_edit.headless.photos import save_input_photo

WORKFLOWS = runner.list_workflows()
#: the committed UI workflows are generated on the oldest supported host (scripts/make_ui_workflows.py)
MIN_HOST = (0, 3, 75)
HOST_VERSION = comfy_host.version_tuple()
FAST = dict(steps=4, num_inner_steps=2)
SIZE = 64
SAVE_MAIN, SAVE_MAPS, SAMPLER, INVERT, BLEND = "9", "11", "7", "5", "12"


def test_at_least_three_workflows_in_both_formats():
    assert {"p2p_word_swap_null_text", "p2p_refine_local_blend", "p2p_reweight"} <= set(WORKFLOWS)
    for name in WORKFLOWS:
        assert (runner.WORKFLOWS_DIR / f"{name}.json").is_file(), f"UI format of {name} missing"


def fast_prompt(name, image, prefix="t_", **over):
    """The shipped workflow as the runner runs it without --ckpt (tiny model), with few steps."""
    p = runner.use_toyworld(runner.load_workflow(name))
    kw = dict(FAST, image=image, size=SIZE, filename_prefix=prefix)
    kw.update(over)
    return runner.apply_overrides(p, **kw)


# ------------------------------------------------------------------------------------------------ UI format
@pytest.fixture(scope="module")
def infos(comfy):
    apis = [runner.load_workflow(n) for n in WORKFLOWS]
    return ui_format.object_info_for(apis + [runner.use_toyworld(apis[0])])


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_structure(name, infos):
    ui = json.loads((runner.WORKFLOWS_DIR / f"{name}.json").read_text())
    assert ui["version"] == 0.4 and ui["groups"] == [] and isinstance(ui["links"], list)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "duplicate node ids"
    assert ui["last_node_id"] >= max(nodes) and ui["last_link_id"] >= max(ln[0] for ln in ui["links"])
    assert len({ln[0] for ln in ui["links"]}) == len(ui["links"]), "duplicate link ids"
    notes = [n for n in ui["nodes"] if n["type"] in ui_format.VIRTUAL_NODES]
    if runner.nodes_of(runner.load_workflow(name), "CheckpointLoaderSimple"):
        # how to run it without a checkpoint: the pack's ToyWorld loader
        assert len(notes) == 1 and "AE_ToyWorldLoader" in notes[0]["widgets_values"][0], notes
    for n in ui["nodes"]:
        for key in ("type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in n, (n["id"], key)
        assert len(n["pos"]) == 2 and len(n["size"]) == 2
        if n["type"] in ui_format.VIRTUAL_NODES:
            continue
        info = infos[n["type"]]
        # the files are generated on the oldest supported host; a newer host may give a node more outputs (0.33:
        # SaveImage gained an IMAGE output), which the frontend appends on load: the file's are a prefix
        assert len(n["outputs"]) <= len(info["output"])
        if len(n["outputs"]) < len(info["output"]):
            assert HOST_VERSION > MIN_HOST, (n["type"], "outputs missing on the host the files are made on")
        for o, t in zip(n["outputs"], info["output"]):
            assert o["type"] == t
        specs = {name: spec for name, spec, _ in ui_format.ordered_inputs(info)}
        for inp in n["inputs"]:
            assert inp["name"] in specs, (n["type"], inp["name"])
        # widget count matches object_info (plus control/upload widgets, as the frontend serializes them)
        assert len(n["widgets_values"]) == len(ui_format.widget_slots(info)), n["type"]
        for (iname, spec), v in zip(ui_format.widget_slots(info), n["widgets_values"]):
            if iname is not None and ui_format._spec_type(spec) == "COMBO" and iname != "ckpt_name" \
                    and iname != "image":
                opts = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
                assert v in opts, (n["type"], iname, v)
    for lid, src, sslot, dst, dslot, typ in ui["links"]:
        assert src in nodes and dst in nodes, f"link {lid} refers to a missing node"
        assert sslot < len(nodes[src]["outputs"]) and lid in (nodes[src]["outputs"][sslot]["links"] or [])
        assert dslot < len(nodes[dst]["inputs"]) and nodes[dst]["inputs"][dslot]["link"] == lid
        assert nodes[src]["outputs"][sslot]["type"] == typ == nodes[dst]["inputs"][dslot]["type"]
    # every connected input's link exists; every required socket is connected
    linked = {ln[0] for ln in ui["links"]}
    for n in ui["nodes"]:
        for inp in n["inputs"]:
            assert inp["link"] is None or inp["link"] in linked
        if n["type"] in ui_format.VIRTUAL_NODES:
            continue
        for iname, spec, optional in ui_format.ordered_inputs(infos[n["type"]]):
            if not optional and not ui_format.is_widget(spec):
                assert any(i["name"] == iname and i["link"] is not None for i in n["inputs"]), (n["type"], iname)
    # execution order is topological
    order = {n["id"]: n["order"] for n in ui["nodes"]}
    for _lid, src, _s, dst, _d, _t in ui["links"]:
        assert order[src] < order[dst]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_and_api_agree_and_ui_is_generated(name, infos):
    api = runner.load_workflow(name)
    ui = json.loads((runner.WORKFLOWS_DIR / f"{name}.json").read_text())
    back = ui_format.ui_to_api(ui, infos)
    assert {k: (v["class_type"], v["inputs"]) for k, v in back.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in api.items()}
    made = ui_format.api_to_ui(name, api, infos)
    if HOST_VERSION == MIN_HOST:
        assert ui == made, "out of date: run python scripts/make_ui_workflows.py (on the oldest host, 0.3.75)"
    else:  # a newer host: equal in all a loaded workflow depends on (not output slot names, not extra slots)
        assert _linkage(ui) == _linkage(made), "out of date: run python scripts/make_ui_workflows.py"


def _linkage(ui: dict) -> dict:
    """A UI workflow without what the frontend rebuilds from the node definitions on load: output slot names, and
    trailing unlinked output slots."""
    out = json.loads(json.dumps(ui))
    for n in out["nodes"]:
        outs = [{k: v for k, v in o.items() if k not in ("name", "localized_name")} for o in n["outputs"]]
        while outs and not outs[-1].get("links"):
            outs.pop()
        n["outputs"] = outs
    return out


def test_ui_to_api_rejects_broken_structure(infos):
    ui = json.loads((runner.WORKFLOWS_DIR / "p2p_word_swap_null_text.json").read_text())
    bad = json.loads(json.dumps(ui))
    bad["nodes"][0]["widgets_values"].append(1)
    with pytest.raises(ValueError, match="widgets_values"):
        ui_format.ui_to_api(bad, infos)
    bad = json.loads(json.dumps(ui))
    bad["links"][0][1] = 999
    with pytest.raises(ValueError, match="missing node|does not list"):
        ui_format.ui_to_api(bad, infos)


# ------------------------------------------------------------------------------------------------ overrides
def test_overrides_and_loader_swap():
    p = runner.load_workflow("p2p_reweight")
    assert runner.nodes_of(p, "CheckpointLoaderSimple")
    t = runner.use_toyworld(p, runner.TOY_RANDOM)
    assert not runner.nodes_of(t, "CheckpointLoaderSimple")
    [toy] = runner.nodes_of(t, "AE_ToyWorldLoader")
    assert t[toy]["inputs"]["weights"] == runner.TOY_RANDOM
    o = runner.apply_overrides(t, image="x.png", source_prompt="a photo of a dog", steps=7, num_inner_steps=3,
                               size="64x48", seed=5, filename_prefix="z_")
    inv = o[runner.nodes_of(o, "AE_InvertImage")[0]]["inputs"]
    assert (inv["source_prompt"], inv["steps"], inv["num_inner_steps"]) == ("a photo of a dog", 7, 3)
    # reweight: the edited prompt equals the source, so it follows the new source prompt
    assert o[runner.nodes_of(o, "AE_P2PEdit")[0]]["inputs"]["edited_prompts"] == "a photo of a dog"
    scale = o[runner.nodes_of(o, "ImageScale")[0]]["inputs"]
    assert (scale["width"], scale["height"]) == (64, 48)
    assert o[runner.nodes_of(o, "LoadImage")[0]]["inputs"]["image"] == "x.png"
    assert all(o[n]["inputs"]["filename_prefix"].startswith("z_") for n in runner.nodes_of(o, "SaveImage"))
    assert o[toy]["inputs"]["seed"] == 0  # --seed does not change the test model's weights
    lb = runner.use_toyworld(runner.load_workflow("p2p_refine_local_blend"))
    assert lb[runner.nodes_of(lb, "AE_P2PLocalBlend")[0]]["inputs"]["mask_resolution"] == runner.TOY_MASK_RESOLUTION
    w = runner.apply_overrides(runner.load_workflow("p2p_word_swap_null_text"), edited_prompt="a photo of a fox")
    assert w[runner.nodes_of(w, "AE_P2PEdit")[0]]["inputs"]["edited_prompts"] == "a photo of a fox"
    with pytest.raises(runner.RunnerError, match="multiples of 8"):
        runner.parse_size("63")
    with pytest.raises(runner.RunnerError, match="shipped workflows"):
        runner.load_workflow("no_such_workflow")


# ------------------------------------------------------------------------------------------------ in-process
def _check_outputs(files_main, files_maps, n_edits=1):
    assert len(files_main) == 1 + n_edits, files_main  # reconstruction + edit(s)
    for f in files_main:
        assert f.is_file() and f.suffix == ".png"
        with Image.open(f) as im:
            assert im.size == (SIZE, SIZE)
    assert len(files_maps) == 1 and files_maps[0].is_file()
    with Image.open(files_maps[0]) as im:
        assert im.size[0] > 64 and im.size[1] >= 64  # a grid of per-token maps


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs_in_process(name, comfy):
    img = save_input_photo("cat", SIZE)
    res = comfy.run_workflow(fast_prompt(name, img, prefix=f"inproc_{name}_"))
    assert res["status"]["status_str"] == "success"
    _check_outputs(res.files(SAVE_MAIN), res.files(SAVE_MAPS))
    lat = res.value(SAMPLER)["samples"]
    # SD3's latents have 16 channels; the Flux workflow runs on the shipped ToyWorld MM-DiT, which works on the
    # ToyWorld VAE's 4-channel latents
    channels = 16 if "sd3" in name else 4
    assert lat.shape == (2, channels, SIZE // 8, SIZE // 8) and torch.isfinite(lat).all()
    # the edit is Prompt-to-Prompt's: the same workflow with the injection windows closed (cross_replace_steps and
    # self_replace_steps 0: plain regeneration with the edited prompt, local blend kept) gives another image
    p2p = [n for n, v in fast_prompt(name, img).items() if v["class_type"] == "AE_P2PEdit"]
    if p2p:
        off = fast_prompt(name, img, prefix=f"inproc_off_{name}_")
        for n in p2p:  # a linked schedule (AdapEdit FWT's) is replaced too
            off[n]["inputs"].update(cross_replace_steps="0", self_replace_steps="0")
        lat_off = comfy.run_workflow(off).value(SAMPLER)["samples"]
        # the source row is not edited (explicit float32 softmax where maps are recorded vs ComfyUI's kernel)
        assert (lat_off[0] - lat[0]).abs().max() < 1e-3, "the reconstruction must not depend on the edit"
        # (the random tiny Flux model's maps are nearly flat over its 256 T5 positions, so swapping one word's maps
        # moves its output by ~1e-6: tests/test_flux.py shows its controller acting with a reweight; the same holds
        # for the random SD3's 154 text positions, tests/test_sd3.py)
        if "flux" not in name and "sd3" not in name:
            assert (lat_off[1] - lat[1]).abs().max() > 1e-3, "the attention injection had no effect on the edit"


# ------------------------------------------------------------------------------------------------ HTTP server
@pytest.fixture(scope="module")
def server_photo(comfy_server):
    return save_input_photo("cat", SIZE, input_dir=comfy_server.input_dir)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs_through_the_server(name, comfy_server, server_photo):
    srv = comfy_server
    entry = srv.run(fast_prompt(name, server_photo, prefix=f"http_{name}_"), timeout=120)
    assert entry["status"]["status_str"] == "success"
    outs = entry["outputs"]
    main = [srv.output_dir / (i.get("subfolder") or "") / i["filename"] for i in outs[SAVE_MAIN]["images"]]
    maps = [srv.output_dir / (i.get("subfolder") or "") / i["filename"] for i in outs[SAVE_MAPS]["images"]]
    _check_outputs(main, maps)


def test_bad_local_blend_word_gives_a_clear_error_in_the_history(comfy_server, server_photo):
    from support.server import PromptFailed

    srv = comfy_server
    p = fast_prompt("p2p_refine_local_blend", server_photo, prefix="bad_", steps=2, num_inner_steps=1)
    p[BLEND]["inputs"]["source_words"] = "lion"
    pid = srv.post_prompt(p)
    with pytest.raises(PromptFailed) as ei:
        srv.wait(pid, timeout=120)
    msg = ei.value.exception_message
    assert "'lion' is not a word of 'a photo of a cat'" in msg, msg
    assert "its words are: a, photo, of, a, cat" in msg, msg
    assert "Traceback" not in msg
    # the same, as GET /history shows it
    entry = srv.history(pid)
    assert entry["status"]["status_str"] == "error"
    err = dict(entry["status"]["messages"])["execution_error"]
    assert err["node_type"] == "AE_P2PEditSampler" and "its words are: a, photo, of, a, cat" in err["exception_message"]


def test_invalid_combo_value_gives_the_options(comfy_server, server_photo):
    """ComfyUI 0.3.75 checks combo values only for classic list-typed combos, not for V3 io.Combo inputs, so a bad
    value reaches the node: it must fail with a message that lists the valid choices (rejected at POST /prompt
    is fine too, should a later ComfyUI validate V3 combos)."""
    from support.server import PromptFailed, PromptRejected

    p = fast_prompt("p2p_word_swap_null_text", server_photo, steps=2, num_inner_steps=1)
    p[INVERT]["inputs"]["method"] = "magic"
    with pytest.raises((PromptRejected, PromptFailed)) as ei:
        comfy_server.run(p, timeout=120)
    msg = str(ei.value) if isinstance(ei.value, PromptRejected) else ei.value.exception_message
    assert "magic" in msg and "null_text" in msg and "negative_prompt" in msg, msg


async def _interrupt_when_running(srv, prompt, node_id, min_value, timeout=120.0):
    """Posts *prompt* with a websocket open, waits for a progress event of *node_id* at >= min_value, POSTs
    /interrupt. Returns (prompt_id, last progress event data, monotonic time of the interrupt)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{srv.url}/ws?clientId={srv.client_id}", heartbeat=30) as ws:
            pid = await asyncio.to_thread(srv.post_prompt, prompt)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no progress of node {node_id} reached {min_value} within {timeout} s")
                msg = await ws.receive(timeout=left)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise RuntimeError("the websocket closed")
                    continue
                d = json.loads(msg.data)
                data = d.get("data") or {}
                if d.get("type") == "execution_error" and data.get("prompt_id") == pid:
                    raise RuntimeError(f"the prompt failed before it could be interrupted: {data}")
                if (d.get("type") == "progress" and data.get("prompt_id") == pid and str(data.get("node")) == node_id
                        and data.get("value", 0) >= min_value):
                    t = time.monotonic()
                    await asyncio.to_thread(srv.interrupt)
                    return pid, data, t


def test_interrupt_stops_a_running_null_text_inversion(comfy_server, server_photo):
    from support.server import PromptFailed

    srv = comfy_server
    steps = 200
    # 200 steps x up to 100 Adam iterations, no early stop: many minutes if left alone
    p = fast_prompt("p2p_word_swap_null_text", server_photo, prefix="interrupted_", steps=steps, num_inner_steps=100)
    p[INVERT]["inputs"]["early_stop_epsilon"] = 0.0
    # wait until the null-text phase (after the DDIM pass: progress > steps) is running, then interrupt
    pid, last, t_int = asyncio.run(_interrupt_when_running(srv, p, INVERT, min_value=steps + 2))
    total = last["max"]
    assert total == 2 * steps
    with pytest.raises(PromptFailed) as ei:
        srv.wait(pid, timeout=60)
    stopped_after = time.monotonic() - t_int
    assert ei.value.interrupted, ei.value
    entry = srv.history(pid)
    msgs = dict(entry["status"]["messages"])
    assert "execution_interrupted" in msgs and "execution_success" not in msgs
    assert msgs["execution_interrupted"]["node_type"] == "AE_InvertImage"
    assert not entry["outputs"], "an interrupted run must not save images"
    # well before it would have finished: at most a few of the 400 progress units were done, and it stopped
    # within seconds of the request
    assert last["value"] <= steps + 20 < total
    assert stopped_after < 15, f"took {stopped_after:.1f} s to stop after POST /interrupt"
    # the server still works afterwards
    ok = srv.run(fast_prompt("p2p_word_swap_null_text", server_photo, prefix="after_interrupt_",
                             steps=2, num_inner_steps=1), timeout=120)
    assert ok["status"]["status_str"] == "success"


# ------------------------------------------------------------------------------------------------ CLI
def _cli_env():
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def test_runner_cli_end_to_end(tmp_path):
    """The main job's command (scripts/main_job.sh runs the same on the newest host): the default workflow at the tiny
    model's default steps edits the ToyWorld scene, the judge reads the edit, and each output's background PSNR
    against the source is printed beside it; the edit keeps the background (>= 30 dB: Direct Inversion, the
    prediction-difference mask and the locked background of workflows/api/p2p_word_swap.json)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "attention_edit.runner", "p2p_word_swap", "--out", str(out)]
    r = subprocess.run(cmd, cwd=tmp_path, env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"
    assert "tiny test model, not Stable Diffusion" in r.stdout
    assert "--ckpt" in r.stdout and ".safetensors" in r.stdout
    if not runner.TOYWORLD_WEIGHTS.is_file():
        assert "random (untrained test model)" in r.stdout
    paths = [Path(ln.strip()) for ln in r.stdout.splitlines() if ln.strip().endswith(".png")
             and not ln.startswith("[")]
    assert len(paths) == 6, r.stdout  # attention grid, reconstruction, edit, the mask of each, side by side
    for p in paths:
        assert p.is_file() and p.parent == out.resolve()
    assert sorted(paths) == sorted(out.glob("*.png"))
    # the default main job edits a rendered ToyWorld scene and shows source | reconstruction | edit
    assert "rendered ToyWorld scene, 'a red circle on the left'" in r.stdout
    side = out / "p2p_word_swap_side_by_side.png"
    assert side in [p.resolve() for p in paths]
    from PIL import Image

    with Image.open(side) as im:
        assert im.size[1] >= 256 and im.size[0] > 3 * im.size[1]
    judged = [ln for ln in r.stdout.splitlines() if ln.startswith("[attention_edit] judge: ")]
    assert [ln.split(": ")[1] for ln in judged] == ["source", "reconstruction", "edit"], r.stdout
    assert "red circle (left)" in judged[0] and "blue circle (left)" in judged[2], r.stdout
    import re

    bg = [re.search(r"background \(away from the objects\) vs the source: PSNR (identical|[\d.]+ dB), SSIM ([\d.]+)",
                    ln) for ln in judged[1:]]
    assert all(bg), r.stdout
    psnr = bg[1].group(1)
    assert psnr == "identical" or float(psnr.split()[0]) >= 30, r.stdout
    assert "done in" in r.stdout
    assert "Traceback" not in r.stderr, r.stderr[-4000:]


def test_flux_workflow_without_a_checkpoint_edits_the_scene_on_the_shipped_mmdit(comfy, tmp_path):
    """The MM-DiT headless (issue 26): without --ckpt, p2p_word_swap_flux runs on the shipped ToyWorld MM-DiT (the
    workflow's checkpoint loader names it), edits the rendered ToyWorld scene, and the judge reads the edit: red
    circle -> blue circle on the left, the background kept (>= 30 dB PSNR against the source)."""
    res = runner.run("p2p_word_swap_flux", out=tmp_path / "mmdit", say=lambda *_: None)
    [toy] = runner.nodes_of(res.prompt, "AE_ToyWorldLoader")
    assert res.prompt[toy]["inputs"]["weights"] == runner.TOY_MMDIT
    assert any("ToyWorld MM-DiT" in n for n in res.notices), res.notices
    assert res.side_by_side is not None and len(res.judged) == 3
    source, _, edit = res.judged
    print(f"\n[mmdit headless] judge: {source} -> {edit}; background {res.background}")
    assert [(o["colour"], o["shape"]) for o in source] == [("red", "circle")]
    assert [(o["colour"], o["shape"]) for o in edit] == [("blue", "circle")]
    assert res.background[2] is not None and res.background[2][0] >= 30


def test_runner_scene_and_photo_options(comfy, tmp_path):
    """--scene renders a caption; --photo keeps the real photo; bad combinations and captions are clear errors."""
    res = runner.run("p2p_reweight", out=tmp_path / "a", steps=3, num_inner_steps=1, scene="a big green square on the right",
                     say=lambda *_: None)
    inv = res.prompt[runner.nodes_of(res.prompt, "AE_InvertImage")[0]]["inputs"]
    assert inv["source_prompt"] == "a big green square on the right"
    assert res.side_by_side is not None and res.side_by_side.is_file() and len(res.judged) == 3
    assert res.prompt[runner.nodes_of(res.prompt, "AE_P2PEdit")[0]]["inputs"]["self_replace_max_resolution"] == "full"
    res = runner.run("p2p_word_swap_null_text", out=tmp_path / "b", steps=3, num_inner_steps=1, photo=True,
                     say=lambda *_: None)
    assert "chelsea" in res.prompt[runner.nodes_of(res.prompt, "LoadImage")[0]]["inputs"]["image"]
    assert res.judged is None and res.side_by_side is not None
    with pytest.raises(runner.RunnerError, match="also give --edited-prompt"):
        runner.run("p2p_word_swap_null_text", out=tmp_path / "c", scene="a red circle", say=lambda *_: None)
    with pytest.raises(runner.RunnerError, match="names no colour"):
        runner.run("p2p_word_swap_null_text", out=tmp_path / "c", scene="a purple circle", edited_prompt="x",
                   say=lambda *_: None)
    with pytest.raises(runner.RunnerError, match="not both"):
        runner.run("p2p_word_swap_null_text", out=tmp_path / "c", scene="a red circle", photo=True,
                   say=lambda *_: None)


def test_runner_cli_errors_are_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "attention_edit.runner", "p2p_reweight", "--image",
                        str(tmp_path / "missing.jpg")], cwd=tmp_path, env=_cli_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    assert "error: --image" in r.stderr and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "attention_edit.runner", "--list"], cwd=tmp_path, env=_cli_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(n in r.stdout for n in WORKFLOWS)
