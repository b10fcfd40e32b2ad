"""The Custom-Edit workflows (workflows/api/custom_edit_*.json): learn a concept from reference pictures (Custom
Diffusion, or textual inversion), null-text-invert the photo, P2P refine with the learned word and the source-only
local-blend mask B(M_t) (Choi et al. 2023, "Custom-Edit").

test_workflows.py already runs every shipped workflow (in-process and through the server) and checks the UI files;
here: the graph choices the workflows promise, the runner's handling of reference pictures and training steps, the
trained files each run writes, and that the P2P token alignment sees a learned word as ComfyUI's conditioning
does (one vector for '<v1>' or 'embedding:name').
"""
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from attention_edit.headless import runner
from attention_edit.headless.photos import save_input_photo

CD, TI = "custom_edit_custom_diffusion", "custom_edit_textual_inversion"
TRAIN, INVERT, EDIT, SAMPLER, BLEND, PHOTO = "13", "5", "6", "7", "12", "2"
REF_SLOTS = ["14", "15", "16"]
SIZE = 64
FAST = dict(steps=4, num_inner_steps=2)
CONCEPT = "custom_edit_concept"


def wf(name):
    return runner.load_workflow(name)


def words(prompt):
    return prompt.split()


# ------------------------------------------------------------------------------------------------ graphs
def test_custom_diffusion_graph_follows_the_custom_edit_recipe():
    g = wf(CD)
    t = g[TRAIN]
    assert t["class_type"] == "AE_TrainCustomDiffusion"
    ti = t["inputs"]
    assert ti["model"] == ["1", 0] and ti["clip"] == ["1", 1] and ti["train"] == "crossattn_kv"
    assert ti["prior_loss_weight"] > 0
    # prior preservation: class images generated with the ORIGINAL model from the class prompt
    dec = g[ti["class_images"][0]]
    assert dec["class_type"] == "VAEDecode"
    ks = g[dec["inputs"]["samples"][0]]
    assert ks["class_type"] == "KSampler" and ks["inputs"]["model"] == ["1", 0]
    assert ti["class_noun"] in g[ks["inputs"]["positive"][0]]["inputs"]["text"].split()
    # inversion AND edit with the customised model: the reconstruction replays the model it was inverted with
    for nid in (INVERT, SAMPLER):
        assert g[nid]["inputs"]["model"] == [TRAIN, 0] and g[nid]["inputs"]["clip"] == [TRAIN, 1], nid
    src = g[INVERT]["inputs"]["source_prompt"]
    edited = g[EDIT]["inputs"]["edited_prompts"]
    assert g[EDIT]["inputs"]["mode"] == "refine"
    # "[modifier token] [class noun]" as trained, added to the source prompt
    assert f"{ti['modifier_token']} {ti['class_noun']}" in edited and ti["modifier_token"] not in src
    lb = g[BLEND]["inputs"]
    assert lb["use"] == "source" and lb["source_words"] in words(src) and g[SAMPLER]["inputs"]["edit"] == [BLEND, 0]
    assert runner.reference_loaders(g) == REF_SLOTS


def test_textual_inversion_graph_follows_the_custom_edit_recipe():
    g = wf(TI)
    t = g[TRAIN]
    assert t["class_type"] == "AE_TrainTextualInversion" and t["inputs"]["name"] == CONCEPT
    # the model is unchanged by textual inversion: invert with the original MODEL and CLIP (the source prompt
    # has no learned word, so its conditioning is the same), edit with the CLIP that knows the word
    assert g[INVERT]["inputs"]["model"] == ["1", 0] and g[INVERT]["inputs"]["clip"] == ["1", 1]
    assert g[SAMPLER]["inputs"]["model"] == ["1", 0] and g[SAMPLER]["inputs"]["clip"] == [TRAIN, 0]
    # the edited prompt ends with the trainer's "word" output (embedding:<name>): see the alignment test below
    cat = g[g[EDIT]["inputs"]["edited_prompts"][0]]
    assert cat["class_type"] == "StringConcatenate" and cat["inputs"]["string_b"] == [TRAIN, 1]
    assert g[EDIT]["inputs"]["mode"] == "refine"
    lb = g[BLEND]["inputs"]
    assert lb["use"] == "source" and lb["source_words"] in words(g[INVERT]["inputs"]["source_prompt"])
    assert runner.reference_loaders(g) == REF_SLOTS


# ------------------------------------------------------------------------------------------------ runner
def test_tiny_model_cuts_training_and_prior_images():
    for name in (CD, TI):
        g = runner.use_toyworld(wf(name))
        assert g[TRAIN]["inputs"]["resolution"] == runner.TOY_SIZE
        assert g[TRAIN]["inputs"]["steps"] == runner.TOY_TRAIN_STEPS < wf(name)[TRAIN]["inputs"]["steps"]
        for nid in runner.nodes_of(g, "EmptyLatentImage"):
            assert (g[nid]["inputs"]["width"], g[nid]["inputs"]["height"]) == (runner.TOY_SIZE, runner.TOY_SIZE)
        for nid in runner.nodes_of(g, "KSampler"):
            assert g[nid]["inputs"]["steps"] == runner.TOY_SAMPLER_STEPS
        assert runner.apply_overrides(g, train_steps=7)[TRAIN]["inputs"]["steps"] == 7
    # the shipped real-model settings are not touched without the tiny model
    assert wf(CD)[TRAIN]["inputs"]["resolution"] == 512


def test_reference_pictures_go_to_the_reference_slots_only():
    g = wf(CD)
    # no references: every LoadImage takes the photo (as before)
    o = runner.apply_overrides(g, image="p.png")
    assert all(o[n]["inputs"]["image"] == "p.png" for n in [PHOTO] + REF_SLOTS)
    # fewer references than slots: repeated in order; the photo slot keeps the photo
    o = runner.apply_overrides(g, image="p.png", references=["a.png", "b.png"])
    assert [o[n]["inputs"]["image"] for n in [PHOTO] + REF_SLOTS] == ["p.png", "a.png", "b.png", "a.png"]
    # more references than slots: extra LoadImage nodes feed the trainer through AE_ReferencePictures
    refs = [f"r{i}.png" for i in range(5)]
    o = runner.apply_overrides(g, references=refs)
    assert [o[n]["inputs"]["image"] for n in REF_SLOTS] == refs[:3]
    assert o[PHOTO]["inputs"]["image"] == g[PHOTO]["inputs"]["image"]
    loads = {o[n]["inputs"]["image"] for n in runner._upstream(o, o[TRAIN]["inputs"]["images"])
             if o[n]["class_type"] == "LoadImage"}
    assert loads == set(refs)
    assert set(runner.reference_loaders(o)) == set(REF_SLOTS) | {n for n in o if n not in g and
                                                                 o[n]["class_type"] == "LoadImage"}
    # a linked edited prompt (textual inversion) survives a new source prompt
    t = runner.apply_overrides(wf(TI), source_prompt="a photo of a dog")
    assert t[EDIT]["inputs"]["edited_prompts"] == wf(TI)[EDIT]["inputs"]["edited_prompts"]
    with pytest.raises(runner.RunnerError, match="no concept-training node"):
        runner.apply_overrides(wf("p2p_reweight"), references=["a.png"])
    args = runner.build_parser().parse_args([CD, "--reference", "a.png", "--reference", "b.png",
                                             "--train-steps", "3"])
    assert args.reference == ["a.png", "b.png"] and args.train_steps == 3


# ------------------------------------------------------------------------------------------------ runs
def _fast(name, photo, refs, prefix):
    p = runner.use_toyworld(wf(name))
    return runner.apply_overrides(p, image=photo, references=refs, size=SIZE, filename_prefix=prefix, **FAST)


def _meta(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata(), list(f.keys())


def test_custom_diffusion_workflow_trains_saves_and_edits(comfy):
    import folder_paths

    photo = save_input_photo("cat", SIZE)
    refs = [save_input_photo(n, SIZE) for n in ("coffee", "astronaut", "rocket", "camera")]  # 4 > 3 slots
    res = comfy.run_workflow(_fast(CD, photo, refs, "ce_cd_"))
    assert res["status"]["status_str"] == "success"
    rel = res.value(TRAIN, 2)
    path = Path(folder_paths.get_full_path("attention_edit_concepts", rel))
    assert path.name == f"{CONCEPT}.safetensors" and path.is_file()
    meta, keys = _meta(path)
    assert meta["train.images"] == "4" and meta["train.class_images"] == "8"  # all references + generated priors
    assert meta["steps_done"] == str(runner.TOY_TRAIN_STEPS) and meta["modifier_tokens"] == '["<v1>"]'
    assert keys and all(".attn2.to_k." in k or ".attn2.to_v." in k or k.startswith("modifier_token.")
                        for k in keys)
    assert "modifier_token.<v1>" in keys
    assert len(res.files("24")) == 1  # the loss plot
    lat = res.value(SAMPLER)["samples"]
    assert lat.shape == (2, 4, SIZE // 8, SIZE // 8) and (lat[1] - lat[0]).abs().max() > 1e-4


def test_textual_inversion_workflow_trains_saves_and_edits(comfy, caplog):
    import folder_paths

    photo = save_input_photo("cat", SIZE)
    refs = [save_input_photo(n, SIZE) for n in ("coffee", "astronaut", "rocket")]
    with caplog.at_level(logging.WARNING):
        res = comfy.run_workflow(_fast(TI, photo, refs, "ce_ti_"))
    assert res["status"]["status_str"] == "success"
    path = Path(res.value(TRAIN, 2))
    assert path == Path(folder_paths.get_folder_paths("embeddings")[0]) / f"{CONCEPT}.safetensors"
    meta, keys = _meta(path)
    assert keys == ["emb_params"] and meta["train.images"] == "3"
    assert res.value("19") == f"a photo of a embedding:{CONCEPT}"
    # the edited prompt's embedding was found (ComfyUI only logs a warning and drops the word otherwise)
    assert "does not exist" not in caplog.text
    lat = res.value(SAMPLER)["samples"]
    assert (lat[1] - lat[0]).abs().max() > 1e-4


def test_runner_run_copies_the_trained_concept(comfy, tmp_path):
    import folder_paths

    ref = tmp_path / "ref.png"
    from attention_edit.headless.photos import photo_pil

    photo_pil("coffee", 48).save(ref)
    out_before = folder_paths.get_output_directory()
    try:
        res = runner.run(CD, out=tmp_path / "out", references=[str(ref)], steps=2, num_inner_steps=1,
                         train_steps=3, say=lambda *_: None)
    finally:
        folder_paths.set_output_directory(out_before)
    assert [p.name for p in res.trained] == [f"{CONCEPT}.safetensors"]
    assert res.trained[0].parent == (tmp_path / "out").resolve()
    meta, _ = _meta(res.trained[0])
    assert meta["steps_done"] == "3" and meta["train.images"] == "3"  # one picture, in all 3 slots
    assert len([f for f in res.files if "_loss_" in f.name]) == 1
    assert not any("no --reference" in n for n in res.notices)


# ------------------------------------------------------------------------------------------------ known defect
@pytest.mark.parametrize("variant", ["custom_diffusion", "textual_inversion"])
def test_p2p_alignment_positions_match_comfyui_conditioning(comfy, variant):
    from attention_edit.attention import align
    from attention_edit.nodes.toyworld_nodes import load_toyworld
    from attention_edit.nodes import training_nodes
    from attention_edit.comfy_bridge.text import clip_with_embeddings, embedding_width

    _mp, clip, _vae = load_toyworld(runner.TOY_RANDOM)
    vec = torch.randn(1, embedding_width(clip))
    src = "a photo of a cat"
    if variant == "custom_diffusion":
        _m, c = training_nodes.apply_concept(None, clip, {}, {"<v1>": vec})
        target, n_words = "a photo of a <v1> cat", 6   # BOS a photo of a V* cat EOS
    else:
        c = clip_with_embeddings(clip, {CONCEPT: vec})
        target, n_words = f"a photo of a embedding:{CONCEPT}", 5  # BOS a photo of a V* EOS
    chunk = next(iter(c.tokenize(target).values()))[0]
    assert sum(1 for t in chunk[1:] if torch.is_tensor(t[0]) or t[0] != 49407) == n_words  # ComfyUI's view
    a = align.align_prompts(c.tokenizer, src, target, "refine")
    # what the edit needs: after the learned word (position 5) every position reads its source counterpart
    if variant == "custom_diffusion":
        assert int(a.mapper[6]) == 5 and float(a.alphas[6]) == 1.0   # cat <- source cat
        assert int(a.mapper[7]) == 6 and float(a.alphas[7]) == 1.0   # EOS <- source EOS
    else:
        assert int(a.mapper[6]) == 6 and float(a.alphas[6]) == 1.0   # EOS <- source EOS


def test_runner_reference_errors(comfy, tmp_path):
    import folder_paths

    from attention_edit.headless.photos import photo_pil

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        photo_pil("coffee" if d == "a" else "rocket", 32).save(tmp_path / d / "same.png")
    out_before = folder_paths.get_output_directory()
    try:
        with pytest.raises(runner.RunnerError, match="same file name"):
            runner.run(CD, out=tmp_path / "out", references=[str(tmp_path / "a" / "same.png"),
                                                            str(tmp_path / "b" / "same.png")], say=lambda *_: None)
        with pytest.raises(runner.RunnerError, match="no such file"):
            runner.run(CD, out=tmp_path / "out", references=[str(tmp_path / "missing.png")], say=lambda *_: None)
        with pytest.raises(runner.RunnerError, match="no concept-training node"):
            runner.run("p2p_reweight", out=tmp_path / "out", references=[str(tmp_path / "a" / "same.png")],
                       say=lambda *_: None)
    finally:
        folder_paths.set_output_directory(out_before)
