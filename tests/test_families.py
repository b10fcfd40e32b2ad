"""The family registry (comfy_bridge/families.py) agrees with what ComfyUI builds and with the other probes.

Each registered family's tiny test model, built from ComfyUI's own classes, is detected as its record; what the
record says about the family (prediction kind, text stream, tokenizer sections, pooled vector, attention binder) is
checked against the model itself and against the text-side probe (``attention.align.stream_of``); every node group
that a family's record leaves out refuses it, naming the family and what to use instead, and a model of no
registered family (ComfyUI's SDXL refiner) is refused by every group, naming ComfyUI's config class.
"""
from __future__ import annotations

import pytest
import torch

#: (test model, the family key it must be detected as)
MODELS = [("tiny_test", "sd1"), ("tiny_sd2_v", "sd2"), ("tiny_sdxl", "sdxl"), ("tiny_flux", "flux"),
          ("tiny_flux_schnell", "flux")]


def _build(name):
    from attention_edit.comfy_bridge.flux_models import FLUX_CONFIGS, build_flux
    from attention_edit.comfy_bridge.models import CONFIGS, build_unet

    with torch.inference_mode():
        return build_flux(FLUX_CONFIGS[name]) if name in FLUX_CONFIGS else build_unet(CONFIGS[name], seed=0)


@pytest.fixture(scope="module", params=MODELS, ids=[m for m, _ in MODELS])
def built(comfy, request):
    name, key = request.param
    mp, clip, vae = _build(name)
    return dict(name=name, key=key, mp=mp, clip=clip, vae=vae)


def test_every_record_names_real_config_classes_and_known_values(comfy):
    import comfy.supported_models as sm
    from attention_edit.comfy_bridge.families import FAMILIES, GROUPS
    from attention_edit.inversion.core import DIFFUSION_METHODS, FLOW_MODEL_METHODS

    keys = [f.key for f in FAMILIES.values()]
    assert len(set(keys)) == len(keys) and all(k == f.key for k, f in FAMILIES.items())
    for fam in FAMILIES.values():
        for name in fam.configs + fam.excluded:
            assert isinstance(getattr(sm, name, None), type), f"{fam.key}: comfy.supported_models has no {name}"
        assert set(fam.predictions) <= {"eps", "v", "flow"}
        assert fam.sequence in ("clip", "t5", "clip+t5") and fam.pooled in ("none", "adm", "vector")
        assert fam.binder in ("unet", "joint") and fam.groups <= set(GROUPS) and fam.groups
        assert set(fam.inversion_methods) <= set(DIFFUSION_METHODS) | set(FLOW_MODEL_METHODS)
        # flow models invert with the rectified-flow methods only, diffusion models with the diffusion ones
        assert set(fam.inversion_methods) <= set(FLOW_MODEL_METHODS if fam.is_flow else DIFFUSION_METHODS)
        assert fam.instead or fam.groups == set(GROUPS), f"{fam.key} is refused somewhere and says no alternative"


def test_each_test_model_is_detected_as_its_record_and_the_record_is_true(built):
    from attention_edit.attention.align import stream_of
    from attention_edit.comfy_bridge.families import FAMILIES, family_key, family_of, prediction_type
    from attention_edit.comfy_bridge.sampling import model_pooled_width

    mp, clip, fam = built["mp"], built["clip"], FAMILIES[built["key"]]
    assert family_of(mp) is fam and family_of(mp.model) is fam and family_key(mp) == fam.key
    assert prediction_type(mp) in fam.predictions
    # the text side: the tokenizer sections ComfyUI's tokenizer gives, and the stream the attention maps index
    sections = set(clip.tokenize("a photo of a cat"))
    assert set(fam.tokenizers) == sections, (fam.tokenizers, sections)
    stream = stream_of(clip.tokenizer)
    assert {"clip": "CLIP", "t5": "T5"}[fam.sequence] == stream.name
    assert stream.variable_length == (fam.sequence != "clip")
    # the pooled vector: SDXL's ADM input starts with it, Flux takes it as its vector input, SD1.x/SD2.x ignore it
    dm = mp.model.diffusion_model
    assert (fam.pooled == "adm") == (model_pooled_width(mp) > 0) == bool(getattr(mp.model, "adm_channels", 0))
    if fam.pooled == "vector":
        assert hasattr(dm, "vector_in")
    # the binder: the joint one for models with MM-DiT double blocks, the UNet one for attn1 / attn2
    names = {n.split(".")[-1] for n, _ in dm.named_modules()}
    assert (fam.binder == "joint") == hasattr(dm, "double_blocks")
    assert (fam.binder == "unet") == ("attn2" in names)


def test_node_groups_accept_or_refuse_by_the_record(built):
    from attention_edit.comfy_bridge.families import FAMILIES, GROUPS, families_in, require

    fam = FAMILIES[built["key"]]
    for group in GROUPS:
        assert (fam.key in families_in(group)) == (group in fam.groups)
        if group in fam.groups:
            assert require("Some Node", built["mp"], group) is fam
            continue
        with pytest.raises(ValueError) as e:
            require("Some Node", built["mp"], group)
        msg = str(e.value)
        assert msg.startswith("Some Node: this MODEL is") and f"{fam.article} {fam.short} model" in msg
        assert fam.instead in msg and GROUPS[group].split(" (")[0] in msg
        for key in families_in(group):
            assert FAMILIES[key].description in msg  # what the node works with


def test_a_model_of_no_registered_family_is_refused_by_every_group_naming_comfyuis_config(comfy):
    from attention_edit.comfy_bridge.families import FAMILIES, GROUPS, family_key, family_of, require
    from attention_edit.comfy_bridge.models import build_tiny_sdxl_refiner

    mp = build_tiny_sdxl_refiner()
    assert family_of(mp) is None and family_key(mp) == "SDXLRefiner"
    for group in GROUPS:
        with pytest.raises(ValueError, match="this MODEL is SDXLRefiner \\(ComfyUI's model config\\)") as e:
            require("Some Node", mp, group)
        assert all(f.short in str(e.value) for f in FAMILIES.values())
        assert "Load a checkpoint of a supported family" in str(e.value)
    with pytest.raises(ValueError, match="unknown node group 'paint'"):
        require("Some Node", mp, "paint")


def test_training_and_imagic_sessions_read_the_record(comfy):
    """The bridge's training session refuses, on entry, a family its node group leaves out (here Flux.1 for
    concept training and for Imagic), before any weights load."""
    from attention_edit.comfy_bridge.flux_models import build_tiny_flux_model
    from attention_edit.comfy_bridge.training import TrainingSession

    mp = build_tiny_flux_model()
    for group, node in (("train", "Concept training"), ("imagic", "Imagic")):
        with pytest.raises(ValueError, match=f"^{node}: this MODEL is a Flux.1 model"):
            with TrainingSession(mp.clone(), group=group):
                pass
