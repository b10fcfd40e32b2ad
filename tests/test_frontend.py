"""The web extension in the real ComfyUI frontend (headless Chromium): every shipped workflow loads without errors,
and the alignment line under each Prompt-to-Prompt Edit node says what the edit does, including when the edited
prompt arrives through a link and when the edit passes through other nodes of the pack (tests/support/frontend.py
drives the page; the displayed text is read from the node and from what was drawn on the canvas)."""
import json
import re

import pytest

from attention_edit.headless import runner, ui_format
from support.frontend import FrontendSession

WORKFLOWS = runner.list_workflows()
#: what the alignment line says on each shipped workflow's edit nodes (in node order)
EXPECTED = {
    "p2p_word_swap": ["word swap · cat→dog · 5/75 tokens"],
    "p2p_word_swap_null_text": ["word swap · cat→dog · 5/75 tokens"],
    "p2p_refine_local_blend": ["refine · + silver sculpture · 7/75 tokens"],
    "p2p_reweight": ["word swap · 6/75 tokens"],
    # the second edit node reaches the sampler through AE_AdapEditDPS (a pass-through found from the node defs)
    "adapedit_soft_edit": ["refine · + sleeping · 6/75 tokens"] * 2,
    # the edited prompt comes from Concatenate of the trainer's word: not the edit node's stale widget text (the core
    # node's display name differs between hosts: "Concatenate" in 0.3.75, "Concatenate Text" in 0.33)
    "custom_edit_textual_inversion": [re.compile(r"the edited prompt comes from a link \(Concatenate( Text)? ← Train "
                                                 r"Textual Inversion\): aligned when the workflow runs")],
    "custom_edit_custom_diffusion": ["refine · + <v1> · 9/75 tokens"],
    "imagic_edit": [],
    "p2p_word_swap_sdxl": ["word swap · cat→dog · 5/75 tokens"],
    "p2p_word_swap_sd2": ["word swap · cat→dog · 5/75 tokens"],
    # on Flux the display counts T5 tokens (the loader's weights name Flux.1: the JS asks the route for T5)
    "p2p_word_swap_flux": ["word swap · cat→dog · 7/511 T5 tokens"],  # T5 pieces: ▁ a photo of ▁ a dog
    # SD3 aligns its CLIP and its T5 tokens; CLIP's 75 is the limit that binds, so the display counts CLIP tokens
    "p2p_word_swap_sd3": ["word swap · cat→dog · 5/75 tokens"],
}


@pytest.fixture(scope="module")
def linked_primitive(comfy, tmp_path_factory):
    """The word-swap workflow with its edited prompt coming from a core String (Multiline) primitive node."""
    api = runner.load_workflow("p2p_word_swap_null_text")
    api["30"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a photo of a fox"},
                 "_meta": {"title": "Edited prompt"}}
    edit = runner.nodes_of(api, "AE_P2PEdit")[0]
    api[edit]["inputs"]["edited_prompts"] = ["30", 0]
    ui = ui_format.api_to_ui("linked_primitive", api, ui_format.object_info_for([api]))
    path = tmp_path_factory.mktemp("wf") / "linked_primitive.json"
    path.write_text(json.dumps(ui))
    return path


@pytest.fixture(scope="module")
def frontend(linked_primitive):
    paths = [runner.WORKFLOWS_DIR / f"{n}.json" for n in WORKFLOWS] + [linked_primitive]
    with FrontendSession(paths) as fe:
        yield fe


def test_expectations_cover_every_shipped_workflow():
    assert set(EXPECTED) == set(WORKFLOWS)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_loads_and_shows_its_alignment(frontend, name):
    r = frontend.check(runner.WORKFLOWS_DIR / f"{name}.json")
    assert not r["problems"], r["problems"]
    expected = EXPECTED[name]
    assert len(r["align_text"]) == len(expected), r["align_text"]
    for text, want in zip(r["align_text"], expected):
        assert (want.fullmatch(text) if isinstance(want, re.Pattern) else text == want), (text, want)
        assert text in r["drawn"], f"{text!r} was not drawn on the canvas"
    assert not any(t.startswith("connect to an Edit Sampler") for t in r["drawn"])


def test_a_linked_prompt_is_resolved_where_the_frontend_knows_it(frontend, linked_primitive):
    r = frontend.check(linked_primitive)
    assert not r["problems"], r["problems"]
    assert r["align_text"] == ["word swap · cat→fox · 5/75 tokens"], r["align_text"]
    assert "word swap · cat→fox · 5/75 tokens" in r["drawn"]
