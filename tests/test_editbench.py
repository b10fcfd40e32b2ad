"""One ToyWorld benchmark case per edit type, on a small sample (behaviour, not figures or speed)."""
import math

import pytest

from attention_edit.toyworld import editbench as eb


@pytest.fixture(scope="module")
def tm():
    return eb.load_model()


ST = eb.Settings(steps=4, num_inner_steps=2)


def test_t2i_case(tm):
    r = eb.t2i_case(tm, 7, ST)
    assert set(r) >= {"shape", "colour", "size", "position", "caption"}
    assert all(isinstance(r[k], bool) for k in ("shape", "colour", "size", "position"))


def test_inversion_case(tm):
    r = eb.inversion_case(tm, 7, ST)
    assert set(r) == {"vae", "ddim", "negative_prompt", "null_text"}
    assert all(math.isfinite(v) and v > 0 for v in r.values())


@pytest.mark.parametrize("attribute", ["colour", "shape"])
def test_swap_case(tm, attribute):
    r = eb.swap_case(tm, 7, ST, attribute)
    src = eb.one_object_scene(7).spec["objects"][0][attribute]
    assert src not in r["target"].split()  # the attribute word was swapped
    for v in ("p2p", "p2p_blend", "regen"):
        assert isinstance(r[v]["success"], bool) and 0.0 <= r[v]["iou"] <= 1.0
        assert r[v]["bg_psnr"] > 0


def test_refine_case(tm):
    r = eb.refine_case(tm, 7, ST)
    assert r["target"].startswith("a big ") and r["area_ratio"] >= 0


def test_reweight_case(tm):
    r = eb.reweight_case(tm, 7, ST, factors=(0.0, 2.0))
    assert r["factors"] == [0.0, 2.0] and len(r["areas"]) == 2 and isinstance(r["monotonic"], bool)
    assert isinstance(r["monotonic_down"], bool) and -1.0 <= r["spearman"] <= 1.0


def test_inversions_are_shared_between_cases(tm):
    sc = eb.one_object_scene(3)
    a = eb.invert_scene(tm, sc, ST)
    assert eb.invert_scene(tm, eb.one_object_scene(3), ST) is a
    assert eb.invert_scene(tm, sc, ST, "ddim") is not a
