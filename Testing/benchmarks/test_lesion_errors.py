"""benchmarks/lesion_errors.py: where false and missed lesion voxels lie, on a label map built here so that every
volume is known."""
import numpy as np
import pytest

from benchmarks.lesion_errors import COLUMNS, FALSE_IN, MISSED_AS, lesion_errors, outside_boxes, totals_markdown
from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.network_input import KidneyBox

VOCAB = {"liver": 1, "spleen": 2, "small_bowel": 7, "aorta": 10, "renal_sinus_fat": 21, "muscle": 20}
BG, KIDNEY, TUMOR, CYST = 0, 1, 2, 3


def _case():
    ref = np.zeros((10, 10, 10), np.uint8)
    anatomy = np.zeros_like(ref)
    ref[0:4, :, :] = KIDNEY        # 400 voxels
    ref[0:2, 0:5, 0:5] = TUMOR     # 50
    ref[2:3, 0:5, 0:5] = CYST      # 25
    anatomy[5, :, :] = VOCAB["liver"]
    anatomy[6, :, :] = VOCAB["small_bowel"]
    anatomy[7, :, :] = VOCAB["renal_sinus_fat"]
    anatomy[8, :, :] = VOCAB["muscle"]
    pred = ref.copy()
    pred[0, 0:5, 0:5] = BG          # 25 tumor voxels missed as background
    pred[1, 0:2, 0:5] = KIDNEY      # 10 more missed as kidney
    pred[2, 0:1, 0:5] = TUMOR       # 5 cyst voxels called tumor
    pred[3, 0:3, 0:3] = TUMOR       # 9 kidney voxels called tumor
    pred[5, 0:2, :] = TUMOR         # 20 in the liver
    pred[6, 0, 0:4] = TUMOR         # 4 in bowel
    pred[7, 0, 0:3] = CYST          # 3 cyst voxels in the sinus fat
    pred[8, 0, 0:2] = TUMOR         # 2 in muscle: "other"
    return pred, ref, anatomy


def test_every_false_and_missed_voxel_is_counted_once_where_it_lies():
    pred, ref, anatomy = _case()
    tumor, cyst = lesion_errors(pred, ref, anatomy, VOCAB, voxel_ml=0.5)
    assert tumor["kind"] == "tumor" and cyst["kind"] == "cyst"
    assert (tumor["reference_ml"], tumor["predicted_ml"], tumor["correct_ml"]) == (25.0, 27.5, 7.5)
    assert {g: tumor[f"false_in_{g}"] for g in FALSE_IN} == {
        "kidney": 4.5, "other_lesion": 2.5, "hilum": 0.0, "liver": 10.0, "spleen": 0.0, "bowel": 2.0, "vessels": 0.0,
        "other": 1.0}
    assert {g: tumor[f"missed_as_{g}"] for g in MISSED_AS} == {"background": 12.5, "kidney": 5.0, "other_lesion": 0}
    assert sum(tumor[f"false_in_{g}"] for g in FALSE_IN) == tumor["predicted_ml"] - tumor["correct_ml"]
    assert sum(tumor[f"missed_as_{g}"] for g in MISSED_AS) == tumor["reference_ml"] - tumor["correct_ml"]
    assert (cyst["reference_ml"], cyst["correct_ml"], cyst["false_in_hilum"]) == (12.5, 10.0, 1.5)
    assert cyst["missed_as_other_lesion"] == 2.5 and set(tumor) | {"case"} == set(COLUMNS)


def test_totals_name_each_place_and_grids_must_match():
    pred, ref, anatomy = _case()
    rows = [dict(case=c, **r) for c in ("a", "b") for r in lesion_errors(pred, ref, anatomy, VOCAB, 0.5)]
    md = totals_markdown(rows)
    assert "| tumor (2 cases) | 50.0 | 55.0 | 15.0 | 40.0: kidney 9.0, other_lesion 5.0, liver 20.0, bowel 4.0, " \
           "other 2.0 | 35.0: background 25.0, kidney 10.0 | - |" in md
    anatomy[9, 0, 0], pred[9, 0, 0] = 99, TUMOR  # an organ id the vocabulary lacks: "other"
    (tumor, _) = lesion_errors(pred, ref, anatomy, VOCAB, 0.5)
    assert tumor["false_in_other"] == 1.5 and tumor["false_in_hilum"] == 0.0
    with pytest.raises(ValueError, match="one grid"):
        lesion_errors(pred[:5], ref, anatomy, VOCAB, 0.5)


def test_reference_outside_every_box_is_counted():
    """A box over z 0-2 (voxels [0, 2)) on a grid of 2 mm voxels with its origin moved: the tumor's z = 0 and 1
    rows are inside, none of the cyst (z = 2) is."""
    pred, ref, anatomy = _case()
    geometry = Geometry((2.0, 2.0, 2.0), (10.0, -5.0, 3.0), np.eye(3).ravel(), (10, 10, 10))
    box = KidneyBox.on_grid((0, 0, 0), (2, 10, 10), ("right",), geometry)
    lesion = np.isin(ref, (TUMOR, CYST))
    outside = outside_boxes(lesion, geometry, [box])
    assert outside.sum() == 25 and outside[2, 0:5, 0:5].all()  # the cyst layer only
    assert (outside_boxes(lesion, geometry, []) == lesion).all()  # no box: all of it outside
    tumor, cyst = lesion_errors(pred, ref, anatomy, VOCAB, 1.0, outside)
    assert (tumor["missed_outside_boxes"], cyst["missed_outside_boxes"]) == (0.0, 25.0)
    md = totals_markdown([dict(case="a", **r) for r in (tumor, cyst)])
    assert md.splitlines()[2].endswith("| 0.0 |") and md.splitlines()[3].endswith("| 25.0 |")


def test_false_voxels_beyond_5_mm_of_the_true_lesion_are_separate_pieces():
    """At 1 mm voxels the tumor (z 0-1, y 0-4, x 0-4) has false voxels at z 2 and 3 (1-2 mm off), in the liver
    row z 5 (4 mm off up to x 6, exactly 5 mm at x 7: near; 5.7 and 6.4 mm at x 8 and 9: beyond, y 0-1), the
    bowel at z 6 (5 mm: near) and the muscle at z 8 (7 mm: beyond, 2 voxels): 6 voxels beyond."""
    pred, ref, anatomy = _case()
    tumor, cyst = lesion_errors(pred, ref, anatomy, VOCAB, 0.5, spacing_zyx=(1.0, 1.0, 1.0))
    assert tumor["false_beyond_near_mm"] == 3.0 and cyst["false_beyond_near_mm"] == 0.0  # sinus fat: 5 mm: near
    stretched = lesion_errors(pred, ref, anatomy, VOCAB, 0.5, spacing_zyx=(3.0, 1.0, 1.0))[0]
    assert stretched["false_beyond_near_mm"] == 17.5  # 3 mm slices: all but the 5 voxels of z 2 are beyond
    md = totals_markdown([dict(case="a", **r) for r in (tumor, cyst)])
    assert "; 3.0 of it over 5 mm from a true tumor |" in md
    empty = np.zeros_like(ref)
    assert lesion_errors(pred, empty, anatomy, VOCAB, 1.0, spacing_zyx=(1, 1, 1))[0]["false_beyond_near_mm"] == \
        float((pred == TUMOR).sum())  # no true tumor: every false voxel is a piece of its own


def test_contrast_compares_the_lesion_with_the_kidney_beside_it():
    """A tumor at 60 +- 10 HU, kidney tissue within 10 mm at 160 +- 10 HU (separation 10), and kidney tissue
    farther away at 500 HU that must not count: on 1 mm voxels, and on 2 mm voxels along x, where only x 10-14
    lie within 10 mm."""
    pred = ref = np.full((1, 1, 40), KIDNEY, np.uint8)
    ref = ref.copy()
    ref[0, 0, 0:10] = TUMOR  # x 0-9; on 1 mm voxels kidney x 10-19 lies within 10 mm of it
    ct = np.full(ref.shape, 500.0)
    ct[0, 0, 0:20] = np.tile([50.0, 70.0], 10) + np.repeat([0.0, 100.0], 10)
    anatomy = np.zeros_like(ref)
    (tumor, cyst) = lesion_errors(pred, ref, anatomy, VOCAB, 1.0, spacing_zyx=(1.0, 1.0, 1.0), ct=ct)
    assert (tumor["lesion_hu"], tumor["kidney_hu_near"], tumor["separation"]) == (60.0, 160.0, 10.0)
    assert (cyst["lesion_hu"], cyst["kidney_hu_near"], cyst["separation"]) == (None, None, None)
    ct[0, 0, 10:15] = np.tile([150.0, 170.0], 3)[:5]  # on 2 mm voxels only x 10-14 count: 150, 170, 150, 170, 150
    (tumor, _) = lesion_errors(pred, ref, anatomy, VOCAB, 1.0, spacing_zyx=(1.0, 1.0, 2.0), ct=ct)
    assert tumor["kidney_hu_near"] == 158.0
    assert lesion_errors(pred, ref, anatomy, VOCAB, 1.0, ct=ct)[0]["separation"] is None  # no spacing: not known
    with pytest.raises(ValueError, match="one grid"):
        lesion_errors(pred, ref, anatomy, VOCAB, 1.0, spacing_zyx=(1.0, 1.0, 1.0), ct=ct[..., :20])
    flat = np.where(ref == TUMOR, 60.0, 160.0)  # no noise: no separation
    assert lesion_errors(pred, ref, anatomy, VOCAB, 1.0, spacing_zyx=(1, 1, 1), ct=flat)[0]["separation"] is None


def _contrast_rows(values):
    return [{"case": c, "kind": "tumor", "reference_ml": 10.0, "predicted_ml": 10.0, "correct_ml": ok,
             "dice": ok / 10.0, "separation": sep, **{k: 0.0 for k in COLUMNS if k.startswith(("false", "missed"))}}
            for c, (sep, ok) in zip("abcd", values)]


def test_totals_give_the_rank_correlation_of_separation_and_dice():
    """Three cases whose Dice rises with separation: rho 1, and the halves' mean Dice; a constant Dice or tied
    low separations say so rather than print nan; under three cases, no line."""
    md = totals_markdown(_contrast_rows([(0.5, 1.0), (2.0, 5.0), (4.0, 9.0)]))
    assert "tumor: separation from the kidney beside it (|HU difference| / pooled SD) median 2.00 over 3 cases; " \
           "Spearman rho with the case's Dice 1.00; mean Dice 0.100 below the median separation, 0.700 at or " \
           "above it." in md
    assert "cyst: separation" not in md  # no cyst rows
    md = totals_markdown(_contrast_rows([(1.0, 0.0), (1.0, 0.0), (2.0, 0.0)]))
    assert "median 1.00 over 3 cases; Spearman rho with the case's Dice undefined (one value throughout)." in md
    assert "nan" not in md
    assert "separation" not in totals_markdown(_contrast_rows([(1.0, 1.0), (2.0, 5.0)]))


def test_a_ct_gives_each_row_its_contrast():
    pred, ref, anatomy = _case()
    ct = np.where(ref == TUMOR, 40.0, np.where(ref == KIDNEY, 140.0, 0.0)) + np.indices(ref.shape).sum(0) % 2
    tumor, cyst = lesion_errors(pred, ref, anatomy, VOCAB, 0.5, spacing_zyx=(1.0, 1.0, 1.0), ct=ct)
    assert tumor["kidney_hu_near"] - tumor["lesion_hu"] == pytest.approx(100.0, abs=0.5)
    assert tumor["separation"] > 100 and cyst["lesion_hu"] < 10
    assert tumor["dice"] == pytest.approx(30 / 105, abs=1e-4) and cyst["dice"] == pytest.approx(40 / 48, abs=1e-4)
    assert lesion_errors(pred, ref, anatomy, VOCAB, 0.5)[0]["separation"] is None
