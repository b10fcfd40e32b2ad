"""The ToyWorld Imagic benchmark case on one seed with tiny step counts (behaviour, not figures or speed)."""
import math

import pytest

from attention_edit.bench import editbench as eb
from attention_edit.bench import imagicbench as ib

FIGURES = {"success", "iou", "kept", "bg_psnr", "psnr"}


@pytest.fixture(scope="module")
def tm():
    return eb.load_model()


ST = ib.ImagicSettings(steps=4, emb_steps=3, ft_steps=3, rank=2, etas=(0.7, 1.0), strengths=(0.5, 0.9))


def check_figures(f):
    assert set(f) == FIGURES
    assert isinstance(f["success"], bool) and isinstance(f["kept"], bool)
    assert 0.0 <= f["iou"] <= 1.0
    assert f["bg_psnr"] > 0 and f["psnr"] > 0


def test_edit_target_swaps_one_attribute_word():
    for attribute in ib.ATTRIBUTES:
        sc, src, new, target = ib.edit_target(7, attribute)
        assert new != src[attribute] and target != sc.caption
        assert target.split() == [new if w == src[attribute] else w for w in sc.caption.split()]
        assert ib.edit_target(7, attribute)[3] == target  # deterministic per seed
        tmask = ib.expected_mask(sc, attribute, new)
        if attribute == "colour":
            assert (tmask == sc.objects[0].mask).all()
        else:  # same place, other outline
            assert ib.iou(tmask, sc.objects[0].mask) > 0.2 and not (tmask == sc.objects[0].mask).all()
    with pytest.raises(ValueError, match="unknown attribute"):
        ib.edit_target(7, "texture")


def test_imagic_case(tm):
    r = ib.imagic_case(tm, 7, ST, "colour", keep_images=True)
    sc, src, new, target = ib.edit_target(7, "colour")
    assert (r["target"], r["source"], r["old"], r["new"]) == (target, sc.caption, src["colour"], new)
    assert set(r["imagic"]) == {0.7, 1.0} and set(r["sdedit"]) == {0.5, 0.9}
    for f in list(r["imagic"].values()) + list(r["sdedit"].values()):
        check_figures(f)
    check_figures(r["vae"])
    assert math.isfinite(r["recon_psnr"]) and r["recon_psnr"] > 0
    d = r["distance"]
    assert d["relative_l2"] > 0 and -1.0 <= d["min_cosine"] <= d["mean_cosine"] <= 1.0
    assert math.isfinite(d["toward_source"])
    assert all(v >= 0 for v in r["times"].values()) and set(r["cpu_times"]) == set(r["times"])
    assert all(v >= 0 for v in r["cpu_times"].values())
    assert all(math.isfinite(v) and v >= 0 for v in r["losses"].values())
    ims = r["images"]
    assert ims["photo"].shape == ims["recon"].shape == (64, 64, 3)
    assert set(ims["imagic"]) == {0.7, 1.0} and all(a.shape == (64, 64, 3) for a in ims["sdedit"].values())


def test_summaries_and_iou_matching():
    imagic = {0.7: {"iou": 0.8}, 1.0: {"iou": 0.5}}
    sdedit = {0.3: {"iou": 0.85}, 0.6: {"iou": 0.6}, 0.9: {"iou": 0.45}}
    assert ib.iou_matched(imagic, sdedit) == {0.7: 0.3, 1.0: 0.9}
    f = {"success": True, "kept": True, "iou": 0.6, "bg_psnr": 30.0, "psnr": float("inf")}
    cases = [{"imagic": {0.7: f}}, {"imagic": {0.7: dict(f, success=False, iou=0.2)}}]
    s = ib.summarise(cases, "imagic", 0.7)
    assert s["success"] == 0.5 and s["faithful"] == 0.5 and abs(s["iou"] - 0.4) < 1e-9 and s["psnr"] != s["psnr"]
