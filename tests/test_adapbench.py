"""ToyWorld AdapEdit benchmark: one case of each type runs and returns its figures; with FWT and DPS off the
AdapEdit path is bit-identical to plain P2P refine on the same inversion (behaviour, not figures or speed)."""
import math

import numpy as np
import pytest

from attention_edit.bench import adapbench as ab
from attention_edit.bench import editbench as eb
from attention_edit.toyworld import scenes

ST = eb.Settings(steps=4, num_inner_steps=2)
TWO = {"p2p": ab.VARIANTS["p2p"], "adapedit": ab.VARIANTS["adapedit"]}


@pytest.fixture(scope="module")
def tm():
    return eb.load_model()


def _in_range(r):
    assert isinstance(r["success"], bool)
    assert math.isfinite(r["bg_psnr"]) and r["bg_psnr"] > 0


def test_size_case(tm):
    r = ab.size_case(tm, 7, ST, TWO, keep_images=True)
    o = ab.size_scene(7).spec["objects"][0]
    assert o["size"] == "small"
    assert r["source"].startswith(f"a small {o['colour']} {o['shape']} ")
    assert r["target"] == r["source"].replace("a small ", "a big ", 1)
    assert r["taus"]["big"] == 0.0 and all(0.0 <= t <= 1.0 for t in r["taus"].values())
    assert isinstance(r["fwt_degenerate"], bool) and isinstance(r["reconstruction"]["faithful"], bool)
    for v in TWO:
        m = r[v]
        _in_range(m)
        assert m["success_kept"] == (m["success"] and m["kept"])
        assert 0.0 <= m["coverage"] <= 1.0 and m["area_ratio"] >= 0.0
        assert math.isnan(m["centre_shift"]) or m["centre_shift"] >= 0
    imgs = r["images"]
    assert set(imgs) == {"source", "reconstruction", "p2p", "adapedit"}
    assert all(a.shape == (64, 64, 3) and a.dtype == np.uint8 for a in imgs.values())
    # the size word can also be left out of the source caption (editbench.refine_case's convention)
    r2 = ab.size_case(tm, 7, ST, {"p2p": ab.VARIANTS["p2p"]}, source_size_word=False)
    assert "small" not in r2["source"].split() and r2["target"] == r["target"]


def test_two_object_scene():
    for seed in range(20):
        sc, k, new = ab.two_object_scene(seed)
        a, b = sc.spec["objects"]
        assert scenes.OPPOSITE[a["position"]] == b["position"]
        assert a["shape"] != b["shape"] and a["colour"] != b["colour"]
        assert sc.spec["objects"][k]["size"] == "small" and new not in (a["colour"], b["colour"])
    assert ab.two_object_scene(3)[0].caption == ab.two_object_scene(3)[0].caption


def test_position_case(tm):
    r = ab.position_case(tm, 7, ST, ("size", "colour"), TWO)
    sc, k, new = ab.two_object_scene(7)
    phrase = scenes.object_phrase(sc.spec["objects"][k])
    assert r["source"] == sc.caption and r["position"] == sc.spec["objects"][k]["position"]
    assert r["size"]["target"] == sc.caption.replace(phrase, phrase.replace("a small ", "a big ", 1))
    assert r["colour"]["target"] == sc.caption.replace(phrase, phrase.replace(sc.spec["objects"][k]["colour"], new))
    for attr in ("size", "colour"):
        for v in TWO:
            m = r[attr][v]
            _in_range(m)
            assert isinstance(m["other_kept"], bool) and 0.0 <= m["other_iou"] <= 1.0
            assert m["success_other_kept"] == (m["success"] and m["other_kept"])
            if attr == "colour":
                assert 0.0 <= m["iou"] <= 1.0
            else:
                assert 0.0 <= m["coverage"] <= 1.0
    with pytest.raises(ValueError, match="size' or 'colour"):
        ab.position_case(tm, 7, ST, ("shape",), TWO)


def test_fwt_and_dps_off_is_plain_refine(tm):
    sc = ab.size_scene(7)
    target = sc.caption.replace("a small ", "a big ", 1)
    inv = eb.invert_scene(tm, sc, ST)
    res = ab.edit_variants(tm, inv, target, ST, {"p2p": (False, False), "off": (False, False),
                                                 "adapedit": (True, True)})
    imgs = res["images"]
    assert np.array_equal(imgs["off"][1], imgs["p2p"][1]) and np.array_equal(imgs["off"][0], imgs["p2p"][0])
    assert np.array_equal(imgs["adapedit"][0], imgs["p2p"][0])  # the reconstruction row is untouched
    assert not np.array_equal(imgs["adapedit"][1], imgs["p2p"][1])  # DPS and FWT do change the edit
    assert res["schedule"].startswith("0.8; ") and "big: 0" in res["schedule"]
