"""The ToyWorld concept benchmark (bench/conceptbench.py): the never-seen concept, its closeness score, and a
few-step textual-inversion and Custom Diffusion run through the benchmark function (behaviour, not figures)."""
import math

import numpy as np
import pytest

from attention_edit.bench import conceptbench as cb
from attention_edit.bench import editbench as eb
from attention_edit.toyworld import judge, scenes


@pytest.fixture(scope="module")
def tm():
    return eb.load_model()


def test_concept_renders_are_deterministic_and_new():
    cs = cb.ConceptSettings()
    a, b = cb.reference_scenes(cs), cb.reference_scenes(cs)
    assert len(a) == cs.n_refs == 4
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert len({(s.spec["objects"][0]["position"], s.background) for s in a}) == 4  # varied references
    assert not np.array_equal(a[0].image, cb.render_concept(1, position=a[0].spec["objects"][0]["position"],
                                                             background=a[0].background).image)
    for sc in a:
        assert sc.image.shape == (64, 64, 3) and sc.image.dtype == np.uint8
        found = judge.judge_image(sc.image)
        assert found and found[0]["colour"] == cs.colour
        assert found[0]["shape"] != cs.shape  # the judge does not take the cross for the initializer shape
        c = cb.closeness(sc.image, cs.colour, cs.shape)
        # no ToyWorld shape explains the cross, the cross template does
        assert max(c["fits"][s] for s in scenes.SHAPES) < 0.8 < c["fits"]["cross"]
        assert c["nearest"] == "cross" and c["recognised"] and not c["judged_initializer"]
    for sh in scenes.SHAPES:  # and each ToyWorld shape is explained by its own template, not by the cross
        sc = eb.one_object_scene(3, shape=sh, colour="red", size="big")
        c = cb.closeness(sc.image)
        assert c["nearest"] == sh and c["margin"] < 0 and not c["recognised"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_closeness_prefers_the_concept(seed):
    rng = np.random.default_rng(seed)
    pos = list(scenes.POSITIONS)[seed % 5]
    bg = list(scenes.BACKGROUNDS)[int(rng.integers(4))]
    cross = cb.closeness(cb.render_concept(seed, position=pos, background=bg).image)
    square = cb.closeness(cb.render_concept(seed, position=pos, background=bg, shape="square").image)
    assert cross["margin"] > 0 > square["margin"]
    assert cross["iou"] > square["iou"] + 0.2
    assert square["judged_initializer"] and square["colour_ok"]
    empty = cb.closeness(np.full((64, 64, 3), 245, np.uint8))
    assert not empty["found"] and empty["margin"] == -1.0 and empty["iou"] == 0.0


def test_few_step_bench_returns_the_figures(tm):
    cs = cb.ConceptSettings(ti_steps=2, cd_steps=2, cd_class_images=2, steps=4)
    res = cb.concept_bench(tm, [5, 6], cs, keep_images=1)
    assert set(res) >= {"settings", "prompts", "refs", "ref_closeness", "train", "summary", "cases", "seeds"}
    assert res["prompts"] == {"initializer": "a photo of a red square", "ti": "a photo of a embedding:tw_cross",
                              "cd": "a photo of a <v1> red square", "cd_class": "a photo of a red square"}
    for m in ("ti", "cd"):
        t = res["train"][m]
        assert t["steps"] == 2 and t["seconds"] > 0
        assert math.isfinite(t["probe_before"]) and math.isfinite(t["probe_after"])
    for v in cb.VARIANTS + cb.EXTRA:
        s = res["summary"][v]
        assert -1.0 <= s["margin"] <= 1.0 and 0.0 <= s["iou"] <= 1.0
        for k in ("colour", "recognised", "judged_initializer", "found"):
            assert 0.0 <= s[k] <= 1.0
    for v in ("ti", "cd"):
        assert 0.0 <= res["summary"][v]["wins"] <= 1.0 and 0.0 <= res["summary"][v]["wins_iou"] <= 1.0
    assert "wins" not in res["summary"]["initializer"]
    assert [c["seed"] for c in res["cases"]] == [5, 6]
    assert res["cases"][0]["ti"]["image"].shape == (64, 64, 3) and "image" not in res["cases"][1]["ti"]
    assert res["ref_closeness"]["render"] > 0 and len(res["refs"]) == 4
    # the initializer images come from the base model: the same seed gives the same picture again
    img = cb.generate(tm, tm.model, tm.clip, res["prompts"]["initializer"], 5, cs)
    assert np.array_equal(img, res["cases"][0]["initializer"]["image"])
