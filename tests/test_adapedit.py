"""AdapEdit: FWT on hand-made maps, the alpha_m mask, DPS reductions, and the nodes in a real ComfyUI."""
import math

import pytest
import torch

from attention_edit.attention import adapedit
from attention_edit.attention.recipe import DPSSpec, EditSpec, build_controller, fwt_schedule
from attention_edit.comfy_bridge.sampling import invert
from attention_edit.comfy_bridge.models import build_unet
from attention_edit.comfy_bridge.sampling import edit
from attention_edit.comfy_bridge.sampling import replay_schedule

SOURCE = "a photo of a cat"
TARGET = "a photo of a sitting cat"  # refine: 'sitting' (token 5) is the edited word
STEPS = 5


def test_fwt_matches_a_hand_computation():
    # 4 pixels, 2-d features; tokens: 1 'a', 2 'cat', 3 'sitting' (the keyword)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    maps = torch.zeros(4, 77)
    maps[:, 1] = torch.tensor([0.25, 0.25, 0.25, 0.25])   # 'a': everywhere
    maps[:, 2] = torch.tensor([0.6, 0.0, 0.2, 0.2])      # 'cat': mostly pixel 0
    maps[:, 3] = torch.tensor([0.0, 0.5, 0.5, 0.0])      # 'sitting': pixels 1, 2
    words = {"a": [1], "cat": [2], "sitting": [3]}
    taus = adapedit.fwt_tau(maps, feats, [3], words, lambda_tau=1.0, alpha_m=0.03)

    def emb(col):  # Eq. 5 by hand: column-normalised map times features, then L2
        w = [v / sum(col) for v in col]
        e = [sum(w[p] * feats[p][k].item() for p in range(4)) for k in range(2)]
        n = math.hypot(*e)
        return [x / n for x in e]

    ek = emb([0.0, 0.5, 0.5, 0.0])  # = normalise(0.5, 1.0)
    expect = {}
    for w, col in (("a", [0.25] * 4), ("cat", [0.6, 0.0, 0.2, 0.2])):
        a = sum(x * y for x, y in zip(emb(col), ek))
        expect[w] = 1.0 - math.exp(a - 1.0)
    assert taus["sitting"] == 0.0
    for w in ("a", "cat"):
        assert taus[w] == pytest.approx(expect[w], abs=1e-6), (w, taus[w], expect[w])
    assert 0 < taus["a"] < taus["cat"]  # 'a' is spread over the keyword's pixels: more related, injected less
    text = adapedit.schedule_text(taus, 0.8)
    assert text.startswith("0.8; a: ") and "sitting: 0" in text


def test_alpha_m_mask_only_matters_below_alpha_m():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(16, 8, generator=g)
    maps = torch.rand(16, 77, generator=g) * 0.2
    words = {"a": [1], "b": [2], "c": [3]}
    base = adapedit.fwt_tau(maps, feats, [3], words)
    below = maps.clone()
    small = below < adapedit.ALPHA_M
    below[small] = below[small] * 0.5  # change only values under alpha_m
    assert adapedit.fwt_tau(below, feats, [3], words) == base
    above = maps.clone()
    above[~small] = above[~small] * torch.rand(int((~small).sum()), generator=g)
    assert adapedit.fwt_tau(above, feats, [3], words) != base
    # without the mask, values under alpha_m do change the result
    assert adapedit.fwt_tau(below, feats, [3], words, pixel_mask=False) != \
        adapedit.fwt_tau(maps, feats, [3], words, pixel_mask=False)


def test_dps_interpolation_limits():
    g = torch.Generator().manual_seed(1)
    m, ms = torch.rand(2, 9, 77, generator=g), torch.rand(2, 9, 77, generator=g)
    s = torch.rand(9, generator=g)
    assert torch.equal(adapedit.dps_interpolate(m, ms, s, 0.0), m)  # lambda_S = 0: the source maps
    assert torch.allclose(adapedit.dps_interpolate(m, ms, torch.ones(9), 1.0), ms)


@pytest.fixture(scope="module", params=["tiny_test", "tiny_sd2_v", "tiny_sdxl"], ids=["sd1", "sd2_v", "sdxl"])
def setup(request):
    from attention_edit.comfy_bridge.models import CONFIGS

    m, clip, vae = build_unet(CONFIGS[request.param], seed=0)
    from attention_edit.headless.photos import photo

    with torch.no_grad():
        lat = vae.encode(photo("cat", 128)[..., :3]).detach()
    enc = lambda p: clip.encode_from_tokens_scheduled(clip.tokenize(p))  # noqa: E731
    inv = invert(m, lat, enc(SOURCE), enc(""), replay_schedule(m, "p2p_ddim", STEPS), method="ddim",
                 source_prompt=SOURCE)
    return m, clip, enc, inv


def run(setup, spec):
    m, clip, enc, inv = setup
    ctrl = build_controller(clip.tokenizer, SOURCE, spec, STEPS)
    return edit(m, inv, [enc(p) for p in spec.target_prompts], ctrl), ctrl


def test_without_dps_and_fwt_it_is_exactly_p2p_refine(setup):
    """The nodes' ablation switches: DPS off passes the edit on unchanged and FWT off gives the default window,
    so the result is bit-identical to plain P2P refine; with DPS on it differs (and the reconstruction does not)."""
    from attention_edit.attention.align import parse_cross_replace_steps
    from attention_edit.nodes.adapedit_nodes import AE_AdapEditDPS, AE_AdapEditFWT

    p2p_spec = EditSpec(target_prompts=(TARGET,), mode="refine", cross_replace_steps=0.8)
    p2p, ctrl = run(setup, p2p_spec)
    from attention_edit.nodes.common import AttentionMapsValue

    maps = AttentionMapsValue(store=ctrl.store, prompts=[SOURCE, TARGET], keywords=[list(ctrl.edits[0].keyword_tokens)])
    text = AE_AdapEditFWT.execute(maps, setup[1], False, 1, 1.0, 0.03, True, 0.8).args[0]
    spec = EditSpec(target_prompts=(TARGET,), mode="refine", cross_replace_steps=parse_cross_replace_steps(text))
    spec = AE_AdapEditDPS.execute(spec, False, 0.9, 1.0, 0.03, True).args[0]
    ablated, _ = run(setup, spec)
    assert torch.equal(ablated, p2p)
    dps, ctrl = run(setup, p2p_spec.with_dps(DPSSpec()))
    assert (dps[1] - p2p[1]).abs().max() > 1e-4
    assert torch.equal(dps[0], p2p[0])  # the reconstruction is untouched
    assert ctrl.edits[0].keyword_tokens == (5,)


def test_lambda_s_zero_gives_the_source_maps(setup):
    m, clip, enc, inv = setup
    spec = EditSpec(target_prompts=(TARGET,), mode="refine", cross_replace_steps=0.4, dps=DPSSpec(lambda_s=0.0))
    ctrl = build_controller(clip.tokenizer, SOURCE, spec, STEPS)
    seen = []
    orig = ctrl.cross

    def spy(probs, info, feats=None):
        out = orig(probs, info, feats)
        seen.append((probs.clone(), out.clone()))
        return out

    ctrl.cross = spy
    edit(m, inv, [enc(TARGET)], ctrl)
    e = ctrl.edits[0]
    assert seen
    for probs, out in seen:
        mapped = probs[0][:, :, e.mapper] * e.alphas + probs[1] * (1 - e.alphas)
        assert torch.allclose(out[1], mapped, atol=1e-6)


def test_fwt_schedule_from_a_run_feeds_p2p(setup):
    from attention_edit.attention.align import parse_cross_replace_steps

    out, ctrl = run(setup, EditSpec(target_prompts=(TARGET,), mode="refine"))
    m, clip, enc, inv = setup
    taus, text = fwt_schedule(clip.tokenizer, ctrl.store, [SOURCE, TARGET], ctrl.edits[0].keyword_tokens)
    assert taus["sitting"] == 0.0 and set(taus) == {"a", "photo", "of", "sitting", "cat"}
    sched = parse_cross_replace_steps(text)
    assert sched["default_"] == 0.8 and sched["sitting"] == 0.0
    again, _ = run(setup, EditSpec(target_prompts=(TARGET,), mode="refine", cross_replace_steps=sched,
                                   dps=DPSSpec()))
    assert torch.isfinite(again).all()


@pytest.mark.parametrize("weights", ["random (untrained test model)", "random SD2.x v-prediction (untrained test model)",
                                     "random SDXL (untrained test model)"], ids=["sd1", "sd2_v", "sdxl"])
def test_nodes_in_comfyui(comfy, weights):
    from attention_edit.headless.photos import save_input_photo

    img = save_input_photo("cat", 64)
    g = {
        "1": {"class_type": "AE_ToyWorldLoader", "inputs": {"weights": weights, "seed": 0}},
        "2": {"class_type": "LoadImage", "inputs": {"image": img}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "AE_InvertImage", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "latent": ["3", 0], "source_prompt": SOURCE, "method": "ddim",
            "steps": 3, "cfg": 7.5, "scheduler": "p2p_ddim", "num_inner_steps": 1, "early_stop_epsilon": 1e-5,
            "learning_rate": 0.01}},
        "5": {"class_type": "AE_P2PEdit", "inputs": {"edited_prompts": TARGET, "mode": "refine",
                                                     "cross_replace_steps": "0.8", "self_replace_steps": "0.4",
                                                     "self_replace_max_resolution": "full"}},
        "6": {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1], "inversion": ["4", 0],
                                                            "edit": ["5", 0]}},
        "7": {"class_type": "AE_AdapEditFWT", "inputs": {"attention": ["6", 3], "clip": ["1", 1], "enabled": True,
                                                         "prompt_index": 1, "lambda_tau": 1.0, "alpha_m": 0.03,
                                                         "pixel_mask": True, "default": 0.8}},
        "8": {"class_type": "AE_P2PEdit", "inputs": {"edited_prompts": TARGET, "mode": "refine",
                                                     "cross_replace_steps": ["7", 0], "self_replace_steps": "0.4",
                                                     "self_replace_max_resolution": "full"}},
        "9": {"class_type": "AE_AdapEditDPS", "inputs": {"edit": ["8", 0], "enabled": True, "lambda_s": 0.9,
                                                         "lambda_sv": 1.0, "alpha_m": 0.03, "pixel_mask": True}},
        "10": {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                             "inversion": ["4", 0], "edit": ["9", 0]}},
        "11": {"class_type": "AE_AdapEditSpatialMap", "inputs": {"attention": ["10", 3], "prompt_index": 1,
                                                                 "size": 64}},
    }
    res = comfy.run_workflow(g)
    text = res.value("7", 0)
    assert "sitting: 0" in text and res.value("7", 1).shape[-1] == 3
    s = res.value("11", 0)
    assert s.shape == (1, 64, 64, 3) and 0 <= s.min() and s.max() <= 1
    assert res.value("10", 0)["samples"].shape[0] == 2
