"""benchmarks/stage1_support.py: the distance from stage 1's foreground and what a cut at X mm removes, on arrays
built here so that every figure is known."""
import math

import numpy as np
import pytest

from benchmarks.stage1_support import cut_rows, distance_from, totals, totals_markdown
from KidneyTumorSegLib.geometry import Geometry

EYE = np.eye(3).ravel()


def test_distance_is_in_mm_on_an_anisotropic_grid_and_follows_the_target_grid():
    coarse = Geometry((4.0, 4.0, 5.0), (0.0, 0.0, 0.0), EYE, (10, 10, 10))  # x, y, z
    mask = np.zeros((10, 10, 10), bool)  # z, y, x
    mask[5, 5, 5] = True
    d = distance_from(mask, coarse, coarse)
    assert d[5, 5, 5] == 0
    assert d[5, 5, 8] == pytest.approx(12.0)   # three voxels along x at 4 mm
    assert d[7, 5, 5] == pytest.approx(10.0)   # two along z at 5 mm
    # A finer grid over the same space: its voxel centres 2 mm apart, on the coarse centres every other voxel.
    fine = Geometry((2.0, 2.0, 2.5), (0.0, 0.0, 0.0), EYE, (19, 19, 19))
    f = distance_from(mask, coarse, fine)
    assert f.shape == (19, 19, 19)
    assert f[10, 10, 16] == pytest.approx(12.0)
    assert f[10, 10, 15] == pytest.approx(10.0, abs=0.5)  # halfway between 8 and 12 mm, linearly


def test_an_empty_stage_1_gives_no_distance():
    g = Geometry((4.0, 4.0, 4.0), (0.0, 0.0, 0.0), EYE, (4, 4, 4))
    assert distance_from(np.zeros((4, 4, 4), bool), g, g) is None


def _case():
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[:, 0:4, 0:4] = 1       # 64 kidney voxels
    ref[:, 0:2, 0:2] = 2       # 16 of them tumor
    labels = ref.copy()
    labels[:, 0:4, 8:10] = 1   # 32 false kidney voxels
    distance = np.zeros(ref.shape, np.float32)
    distance[:, :, 8:10] = 20.0  # the false voxels lie 20 mm from stage 1's foreground
    distance[:, 0, 0] = 10.0     # 4 true tumor voxels 10 mm from it
    return labels, ref, distance


def test_a_cut_removes_exactly_the_voxels_beyond_x():
    labels, ref, distance = _case()
    organs = np.zeros(ref.shape, bool)
    organs[:, 0:2, 8:10] = True  # 16 of the false voxels lie in the "liver"
    rows = cut_rows("c", labels, distance, 0.5, [5.0, 15.0], ref, organs)
    assert [r["x_mm"] for r in rows] == [5.0, 15.0, math.inf]
    at5, at15, none = rows
    assert none["false_ml"] == 16.0 and none["in_liver_spleen_ml"] == 8.0 and none["true_voxels"] == 64
    assert at15["false_ml"] == 0.0 and at15["in_liver_spleen_ml"] == 0.0 and at15["true_voxels"] == 64
    assert at5["true_voxels"] == 60 and at5["true_tumor_voxels"] == 12
    assert at15["kidney_and_masses_dice"] == pytest.approx(1.0)
    assert none["kidney_and_masses_dice"] == pytest.approx(2 * 64 / (96 + 64))
    assert at5["tumor_dice"] == pytest.approx(2 * 12 / (12 + 16))
    table = {t["x_mm"]: t for t in totals(rows)}
    assert table[5.0]["true_voxels_removed_pct"] == pytest.approx(100 * 4 / 64, abs=0.01)
    assert table[5.0]["true_tumor_voxels_removed_pct"] == pytest.approx(25.0)
    assert table[math.inf]["true_voxels_removed_pct"] == 0.0
    assert "| no cut |" in totals_markdown(totals(rows), "m", "d")


def test_without_a_reference_only_volumes_are_reported_and_no_distance_means_no_cut():
    labels, _, distance = _case()
    rows = cut_rows("ct", labels, None, 1.0, [5.0])
    assert all(r["kidney_ml"] == 80.0 and r["tumor_ml"] == 16.0 for r in rows)
    assert "tumor_dice" not in rows[0]
    cut = cut_rows("ct", labels, distance, 1.0, [15.0])[0]
    assert cut["kidney_ml"] == 48.0


def test_totals_pool_the_found_voxels_over_cases_and_skip_cases_without_the_structure():
    labels, ref, distance = _case()
    rows = cut_rows("a", labels, distance, 0.5, [5.0], ref)
    empty = np.zeros_like(ref)  # no tumor anywhere: no tumor Dice, and it adds nothing to the pooled shares
    big = np.zeros((4, 10, 30), np.uint8)
    big[:, :, :20] = 1  # 800 true kidney voxels, none cut
    rows += cut_rows("b", big, np.zeros(big.shape, np.float32), 0.5, [5.0], big)
    rows += cut_rows("c", empty, None, 0.5, [5.0], empty)
    table = {t["x_mm"]: t for t in totals(rows)}
    assert table[5.0]["true_voxels_removed_pct"] == pytest.approx(100 * 4 / (64 + 800), abs=0.01)  # pooled
    assert table[5.0]["tumor_dice"] == pytest.approx(2 * 12 / (12 + 16), abs=1e-4)  # case a only (rounded)


def _fake_cascade(threshold: float):
    """Stage 1 replaced by a known rule: kidney where the network input (normalised HU) exceeds ``threshold``;
    what is tested is the path around it (reorientation, grids, the way back)."""
    from types import SimpleNamespace

    from KidneyTumorSegLib.preprocessing import PreprocessingConfig

    def stage1_probabilities(x):
        kidney = (x > threshold).astype(np.float32)  # x: (z, y, x) on stage 1's grid
        return np.stack([1.0 - kidney, kidney])
    stage1 = SimpleNamespace(preprocessing=PreprocessingConfig(target_spacing=(4.0, 4.0, 4.0)),
                             labels=["background", "kidney"])
    return SimpleNamespace(stage1=stage1, stage1_probabilities=stage1_probabilities)


@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, 1, 1), (-1, -1, 1), (1, 1, -1)])
def test_the_distance_lands_on_the_ct_whatever_its_axis_directions(flip):
    """The same bright blob in the same place, stored along flipped axes (RAS-like, LPI, ...): stage1_distance
    gives each CT's voxels the distance of their physical point, so the maps agree once the arrays are flipped
    back; and it is 0 inside the blob and grows, in mm, away from it."""
    from benchmarks.stage1_support import stage1_distance
    from KidneyTumorSegLib.geometry import Image
    shape, spacing = (12, 16, 20), (2.0, 2.0, 3.0)  # array (z, y, x); spacing (x, y, z)
    hu = np.full(shape, -50.0, np.float32)
    hu[5:8, 4:8, 3:7] = 300.0  # off-centre in every axis, so that a wrong flip moves it
    lps = Image(hu, Geometry(spacing, (0.0, 0.0, 0.0), EYE, shape[::-1]))
    # The flipped CT: axis a reversed, its origin at the far end, so every voxel keeps its physical point.
    origin = [0.0 if f > 0 else (n - 1) * s for f, n, s in zip(flip, shape[::-1], spacing)]
    flipped = hu[tuple(slice(None, None, f) for f in flip[::-1])]
    other = Image(np.ascontiguousarray(flipped), Geometry(spacing, origin, np.diag(flip).ravel(), shape[::-1]))
    cascade = _fake_cascade(threshold=1.0)
    d_lps, d_other = stage1_distance(cascade, lps), stage1_distance(cascade, other)
    assert d_lps.shape == d_other.shape == shape
    back = d_other[tuple(slice(None, None, f) for f in flip[::-1])]
    np.testing.assert_allclose(back, d_lps, atol=1e-3)
    assert d_lps[6, 6, 5] == pytest.approx(0.0, abs=0.5)
    assert d_lps[6, 6, 18] > d_lps[6, 6, 12] > 10.0  # along x, away from the blob: tens of mm, growing
