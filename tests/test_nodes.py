"""The pack's nodes inside a real ComfyUI, through its executor (in-process)."""
import pytest
import torch

RANDOM = "random (untrained test model)"
RANDOM_SD2_V = "random SD2.x v-prediction (untrained test model)"
RANDOM_SDXL = "random SDXL (untrained test model)"
SOURCE = "a photo of a cat"
#: the model families the inversion / P2P nodes run on, as tiny models from the loader node
FAMILIES = pytest.mark.parametrize("weights", [RANDOM, RANDOM_SD2_V, RANDOM_SDXL], ids=["sd1", "sd2_v", "sdxl"])


@pytest.fixture(scope="module")
def image_name(comfy):
    from attention_edit.headless.photos import save_input_photo

    return save_input_photo("cat", 64)


def base_graph(image_name, method="ddim", steps=4, scheduler="p2p_ddim", weights=RANDOM):
    return {
        "1": {"class_type": "AE_ToyWorldLoader", "inputs": {"weights": weights, "seed": 0}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "AE_InvertImage", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "latent": ["3", 0], "source_prompt": SOURCE, "method": method,
            "steps": steps, "cfg": 7.5, "scheduler": scheduler, "num_inner_steps": 2, "early_stop_epsilon": 1e-5,
            "learning_rate": 0.01}},
    }


@FAMILIES
def test_sampler_without_edit_is_bit_identical_to_core_sampler_custom(comfy, image_name, weights):
    """Feature off: the reconstruction equals core SamplerCustom (euler = DDIM) from the same x_T, bit for bit (SD1.x,
    SD2.x v-prediction and SDXL: there the negative's pooled vector and size conditioning come from its own
    CLIP Text Encode, as the null-text rows' do)."""
    g = base_graph(image_name, scheduler="normal", weights=weights)
    g.update({
        "5": {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1], "inversion": ["4", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": SOURCE}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "9": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 4,
                                                         "denoise": 1.0}},
        "10": {"class_type": "SamplerCustom", "inputs": {
            "model": ["1", 0], "add_noise": False, "noise_seed": 0, "cfg": 7.5, "positive": ["6", 0],
            "negative": ["7", 0], "sampler": ["8", 0], "sigmas": ["9", 0], "latent_image": ["4", 1]}},
    })
    res = comfy.run_workflow(g, outputs=["5", "10"])
    ours = res.value("5", 1)["samples"]
    core = res.value("10", 0)["samples"]
    assert torch.equal(ours, core)


@FAMILIES
def test_save_and_load_inversion_round_trip(comfy, image_name, weights):
    """Null-text inversion, a word swap, save and load (SD1.x, SD2.x v-prediction, SDXL); the file records the
    model family and prediction, and an edit with a model of another family is refused before any work."""
    g = base_graph(image_name, method="null_text", steps=3, weights=weights)
    g.update({
        "5": {"class_type": "AE_SaveInversion", "inputs": {"inversion": ["4", 0], "filename_prefix": "cat"}},
        "6": {"class_type": "AE_P2PEdit", "inputs": {"edited_prompts": "a photo of a dog", "mode": "auto",
                                                     "cross_replace_steps": "0.8", "self_replace_steps": "0.4",
                                                     "self_replace_max_resolution": "1/4 (16x16 at 512px)"}},
        "7": {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1], "inversion": ["4", 0],
                                                            "edit": ["6", 0]}},
    })
    res = comfy.run_workflow(g, outputs=["5", "7"])
    saved = res["outputs"]["5"]["text"][0]
    direct = res.value("7", 0)["samples"]
    g2 = {k: v for k, v in g.items() if k in ("1", "6")}
    g2["8"] = {"class_type": "AE_LoadInversion", "inputs": {"file": saved}}
    g2["9"] = {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1], "inversion": ["8", 0],
                                                             "edit": ["6", 0]}}
    res2 = comfy.run_workflow(g2, outputs=["9"])
    assert torch.equal(res2.value("9", 0)["samples"], direct)
    inv_a, inv_b = res.value("4", 0), res2.value("8", 0)
    assert inv_a.source_prompt == inv_b.source_prompt and inv_a.method == inv_b.method == "null_text"
    assert all(torch.equal(a, b) for a, b in zip(inv_a.uncond, inv_b.uncond))
    family = {RANDOM: "sd1", RANDOM_SD2_V: "sd2", RANDOM_SDXL: "sdxl"}[weights]
    assert (inv_b.family, inv_b.prediction) == (family, "v" if weights == RANDOM_SD2_V else "eps")
    other = RANDOM_SDXL if weights != RANDOM_SDXL else RANDOM
    g2["1"] = {"class_type": "AE_ToyWorldLoader", "inputs": {"weights": other, "seed": 0}}
    with pytest.raises(comfy.WorkflowExecutionError) as e:
        comfy.run_workflow(g2, outputs=["9"])
    shown = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
    assert (f"Prompt-to-Prompt Edit Sampler: this inversion was made with an {shown[family]} model but the MODEL "
            f"connected here is {'SDXL' if other == RANDOM_SDXL else 'SD1.x'}") in str(e.value), str(e.value)


@FAMILIES
def test_preview_node_makes_a_labelled_grid(comfy, image_name, weights):
    g = base_graph(image_name, weights=weights)
    g.update({
        "6": {"class_type": "AE_P2PEdit", "inputs": {"edited_prompts": "a photo of a dog", "mode": "auto",
                                                     "cross_replace_steps": "0.8", "self_replace_steps": "0.4",
                                                     "self_replace_max_resolution": "1/4 (16x16 at 512px)"}},
        "7": {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1], "inversion": ["4", 0],
                                                            "edit": ["6", 0]}},
        "8": {"class_type": "AE_AttentionMapPreview", "inputs": {"attention": ["7", 3], "prompt_index": 1,
                                                                 "cell_size": 32}},
    })
    res = comfy.run_workflow(g)
    img = res.value("8", 0)
    assert img.shape == (1, 32 + 14, 5 * 32, 3)  # one cell per token of "a photo of a dog"
    assert res.files("8"), "the preview was not shown in the UI"


@pytest.mark.parametrize("edit_inputs, needle", [
    ({"edited_prompts": "a big photo of a dog", "mode": "replace"}, "use mode 'refine'"),
    ({"edited_prompts": "   ", "mode": "auto"}, "edited prompt is empty"),
    ({"edited_prompts": "a photo of a dog", "mode": "auto", "cross_replace_steps": "0.8; horse: 0.3"},
     "'horse' is not a word of 'a photo of a dog'"),
    ({"edited_prompts": "a photo of a dog", "mode": "auto", "self_replace_steps": "0.2-0.8"}, "'0.2,0.6' (from 20% to 60%"),
])
def test_bad_edit_input_through_the_executor(comfy, image_name, edit_inputs, needle):
    g = base_graph(image_name, steps=2)
    inputs = {"mode": "auto", "cross_replace_steps": "0.8", "self_replace_steps": "0.4",
              "self_replace_max_resolution": "1/4 (16x16 at 512px)"}
    inputs.update(edit_inputs)
    g["6"] = {"class_type": "AE_P2PEdit", "inputs": inputs}
    g["7"] = {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1], "inversion": ["4", 0],
                                                            "edit": ["6", 0]}}
    with pytest.raises(comfy.WorkflowExecutionError) as e:
        comfy.run_workflow(g, outputs=["7"])
    assert needle in str(e.value)


def test_empty_source_prompt_and_other_steps_are_refused(comfy, image_name):
    g = base_graph(image_name, steps=2)
    g["4"]["inputs"]["source_prompt"] = "  "
    with pytest.raises(comfy.WorkflowExecutionError, match="source prompt is empty"):
        comfy.run_workflow(g, outputs=["4"])
    g = base_graph(image_name, steps=2)
    g["7"] = {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1], "inversion": ["4", 0],
                                                            "steps": 50}}
    with pytest.raises(comfy.WorkflowExecutionError, match="made with 2 steps but the edit asks for 50"):
        comfy.run_workflow(g, outputs=["7"])


def test_invert_images_batch_node_inverts_each_photo_and_maps_the_edit(comfy, image_name):
    """Invert Images (Batch) through the executor: a batch of two photos (one source prompt per line) gives two
    inversions, each the same as Invert Image of that photo alone, and the edit sampler after it runs once per
    photo."""
    from attention_edit.headless.photos import save_input_photo

    other = save_input_photo("coffee", 64)
    g = base_graph(image_name, method="null_text", steps=3)
    g.update({
        "10": {"class_type": "LoadImage", "inputs": {"image": other}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "LatentBatch", "inputs": {"samples1": ["3", 0], "samples2": ["11", 0]}},
        "13": {"class_type": "AE_InvertImageBatch", "inputs": {
            **g["4"]["inputs"], "latent": ["12", 0], "source_prompt": SOURCE + "\n a photo of a cup of coffee "}},
        "14": {"class_type": "AE_InvertImage", "inputs": {
            **g["4"]["inputs"], "latent": ["11", 0], "source_prompt": "a photo of a cup of coffee"}},
        "15": {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                             "inversion": ["13", 0]}},
    })
    res = comfy.run_workflow(g, outputs=["4", "13", "14", "15"])
    invs = res.values("13")[0]
    assert len(invs) == 2 and len(res.values("13")[1]) == 2
    assert [i.source_prompt for i in invs] == [SOURCE, "a photo of a cup of coffee"]
    for inv, alone in zip(invs, (res.value("4", 0), res.value("14", 0))):
        assert [len(x) for x in inv.losses] == [len(x) for x in alone.losses]
        assert torch.allclose(inv.x_T, alone.x_T, atol=1e-4)
    assert len(res.values("15")[0]) == 2  # the sampler ran once per photo


def test_invert_images_batch_node_refuses_a_prompt_count_that_does_not_match(comfy, image_name):
    g = base_graph(image_name, steps=2)
    g["12"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["3", 0], "amount": 2}}
    g["13"] = {"class_type": "AE_InvertImageBatch", "inputs": {**g["4"]["inputs"], "latent": ["12", 0],
                                                              "source_prompt": "a\nb\nc"}}
    with pytest.raises(comfy.WorkflowExecutionError, match="3 lines but the latent batch has 2 photos"):
        comfy.run_workflow(g, outputs=["13"])


def test_sd2_and_sdxl_models_are_taken_and_flux_is_refused_naming_all_three(comfy):
    """The per-node family check reads the family record: SD2.x v-prediction and SDXL MODELs pass the concept
    training group, a Flux MODEL is refused by it with its family, the three supported families and what to use
    instead named."""
    from attention_edit.comfy_bridge.families import family_key, prediction_type, require
    from attention_edit.comfy_bridge.flux_models import build_tiny_flux_model
    from attention_edit.nodes.toyworld_nodes import load_toyworld

    sd2, _, _ = load_toyworld(RANDOM_SD2_V)
    xl, _, _ = load_toyworld(RANDOM_SDXL)
    assert (family_key(sd2), prediction_type(sd2)) == ("sd2", "v")
    assert (family_key(xl), prediction_type(xl)) == ("sdxl", "eps")
    for m in (sd2, xl):
        assert require("Train Custom Diffusion", m, "train").key == family_key(m)
    with pytest.raises(ValueError) as e:
        require("Train Custom Diffusion", build_tiny_flux_model(), "train")
    msg = str(e.value)
    assert msg.startswith("Train Custom Diffusion: this MODEL is a Flux.1 model") and "SD1.x checkpoints" in msg and \
        "SD2.x checkpoints" in msg and "SDXL checkpoints" in msg and "For Flux.1, use an SD1.x" in msg, msg


@pytest.mark.parametrize("steps, cfg, method, notes", [
    (1, 1.0, "null_text", ["is coarse", "cannot change anything"]),
    (4, 1.5, "null_text", ["is coarse"]),
    (2, 1.0, "ddim", ["is coarse"]),
    (12, 7.5, "null_text", []),
])
def test_few_step_inversion_runs_and_says_when_it_is_not_meaningful(comfy, image_name, steps, cfg, method, notes):
    """SDXL Turbo / Lightning settings (1-4 steps, CFG 1-1.5) on an SDXL model: inversion and the edit run, and the
    Invert Image node says in its UI (and the log) why the inversion is coarse, or that null-text cannot act at
    CFG 1; at ordinary settings it says nothing."""
    g = base_graph(image_name, method=method, steps=steps, weights=RANDOM_SDXL)
    g["4"]["inputs"]["cfg"] = cfg
    g["6"] = {"class_type": "AE_P2PEdit", "inputs": {"edited_prompts": "a photo of a dog", "mode": "auto",
                                                     "cross_replace_steps": "0.8", "self_replace_steps": "0.4",
                                                     "self_replace_max_resolution": "1/4 (16x16 at 512px)"}}
    g["7"] = {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1], "inversion": ["4", 0],
                                                            "edit": ["6", 0]}}
    res = comfy.run_workflow(g, outputs=["4", "7"])
    assert torch.isfinite(res.value("7", 0)["samples"]).all()
    shown = (res["outputs"].get("4") or {}).get("text", [])
    assert len(shown) == len(notes), shown
    for text, needle in zip(shown, notes):
        assert text.startswith("Invert Image: ") and needle in text, shown
