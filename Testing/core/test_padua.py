"""PADUA components on constructed kidneys whose scores are known by construction (and at each threshold)."""
import numpy as np
import pytest

from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.measurements import measure
from KidneyTumorSegLib.nephrometry import SINUS_DEPTH_MM
from KidneyTumorSegLib.padua import (COLLECTING_SYSTEM_DEPTH_MM, score_collecting_system, score_polar, score_rim,
                                     score_sinus, score_size)

K, T = int(Label.KIDNEY), int(Label.TUMOR)
RADII = (30.0, 25.0, 60.0)  # kidney semi-axes (x, y, z) mm: 25 mm deep at the centre, so it has a deep core
EXTENT = (220.0, 70.0, 135.0)  # grid centred on LPS 0; the kidney sits at x = +-50 (one side of the midline)


def sample(shapes, side="left", spacing=(1.0, 1.0, 1.5)):
    """Label map of a kidney centred at x = +50 (patient left in LPS) or -50 (right) and tumor balls given
    relative to the kidney centre with x pointing laterally (mirrored for the right kidney)."""
    sp = np.asarray(spacing, float)
    size = np.ceil(np.asarray(EXTENT) / sp).astype(int)
    g = Geometry(sp, -sp * (size - 1) / 2, np.eye(3).ravel(), tuple(size))
    k, j, i = np.indices(g.shape)
    p = g.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(g.shape + (3,))
    lateral = 1.0 if side == "left" else -1.0
    centre = np.array([50.0 * lateral, 0.0, 0.0])
    q = (p - centre) * np.array([lateral, 1.0, 1.0])  # kidney frame: +x lateral
    lab = np.zeros(g.shape, np.uint8)
    lab[np.sum((q / np.asarray(RADII)) ** 2, axis=-1) <= 1] = K
    for c, r in shapes:
        lab[np.sum((q - np.asarray(c, float)) ** 2, axis=-1) <= r * r] = T
    return lab, g


def padua_of(lab, g, side="left"):
    m = measure(lab, g)
    (tumor,) = m.tumors
    assert tumor.side == side and tumor.padua is not None
    return tumor, tumor.padua


def test_scores_at_their_thresholds():
    assert [score_size(d) for d in (39.9, 40.0, 40.1, 69.9, 70.0, 70.1)] == [1, 1, 2, 2, 2, 3]
    assert [score_polar(f) for f in (0.0, 0.5, 0.51, 1.0)] == [1, 1, 2, 2] and score_polar(None) is None
    assert [score_rim(o) for o in (-0.1, 0.0, 12.0)] == [2, 1, 1] and score_rim(None) is None
    assert score_sinus(5.0, 0.0) == 1 and score_sinus(1.0, 0.0) == 2 and score_sinus(None, SINUS_DEPTH_MM) == 2
    assert score_sinus(None, 3.0) is None
    assert [score_collecting_system(d) for d in (0, COLLECTING_SYSTEM_DEPTH_MM - 0.1, COLLECTING_SYSTEM_DEPTH_MM)] == [
        1, 1, 2]


@pytest.mark.parametrize("side", ["left", "right"])
def test_low_complexity_tumor_scores_6(side):
    """A 20 mm tumor bulging from the lateral convexity of the upper pole: every component 1."""
    # At z = +35 the lateral surface is at x = 30 * sqrt(1 - (35/60)^2) = 24.4 mm: centre 4 mm outside it.
    lab, g = sample([((28.0, 0.0, 35.0), 10.0)], side)
    tumor, p = padua_of(lab, g, side)
    assert (p.polar, p.exophytic, p.rim, p.sinus, p.collecting_system, p.size) == (1, 1, 1, 1, 1, 1)
    assert p.total == 6 and p.risk == "low"
    assert tumor.renal.R == 1  # the same size rule below 40 mm


@pytest.mark.parametrize("side", ["left", "right"])
def test_high_complexity_tumor_scores_13(side):
    """A 44 mm endophytic tumor in the middle third, centred 4 mm medially, reaching the kidney's centre:
    middle 2, endophytic 3, medial 2, sinus 2, collecting system 2, size 2."""
    lab, g = sample([((-4.0, 0.0, 0.0), 22.0)], side)
    tumor, p = padua_of(lab, g, side)
    assert (p.polar, p.exophytic, p.rim, p.sinus, p.collecting_system, p.size) == (2, 3, 2, 2, 2, 2)
    assert p.total == 13 and p.risk == "high"
    assert p.depth_mm >= COLLECTING_SYSTEM_DEPTH_MM and p.lateral_offset_mm < 0


@pytest.mark.parametrize("x, expected", [(18.0, 1), (-18.0, 2)], ids=["lateral", "medial"])
def test_rim_lateral_or_medial(x, expected):
    for side in ("left", "right"):
        lab, g = sample([((x, 0.0, 30.0), 7.0)], side)
        assert padua_of(lab, g, side)[1].rim == expected


@pytest.mark.parametrize("z, expected", [(45.0, 1), (-45.0, 1), (0.0, 2), (26.0, 1), (14.0, 2)],
                         ids=["upper", "lower", "middle", "mostly-above", "mostly-between"])
def test_longitudinal_location_against_the_polar_lines(z, expected):
    """Thirds lines of the parenchyma's axial extent (-60..60 mm): z = -20 and +20 mm."""
    lab, g = sample([((24.0 * np.sqrt(max(1 - (z / 60) ** 2, 0.05)), 0.0, z), 8.0)])
    tumor, p = padua_of(lab, g)
    assert tumor.renal.polar_source == "thirds"
    assert p.polar == expected


@pytest.mark.parametrize("x, sinus, ucs", [(24.0, 1, 1), (17.0, 2, 1), (0.0, 2, 2)],
                         ids=["cortex", "into the sinus proxy", "at the centre"])
def test_sinus_and_collecting_system_by_depth(x, sinus, ucs):
    """5 mm tumors on the kidney's lateral axis at growing depth (depth = 30 mm - x here, the lateral surface
    being the nearest): deepest point 11 mm (4 mm short of the deep core that holds the sinus proxy), 18 mm
    (inside the core, short of the collecting-system depth of 20 mm) and 25 mm (the kidney's centre)."""
    lab, g = sample([((x, 0.0, 0.0), 5.0 if x else 6.0)])
    _, p = padua_of(lab, g)
    assert (p.sinus, p.collecting_system) == (sinus, ucs)


def test_cysts_get_no_padua_and_json_carries_it():
    lab, g = sample([((28.0, 0.0, 35.0), 10.0)])
    lab[(lab == K) & (np.indices(lab.shape)[0] < 20)] = Label.CYST  # a cyst slab at the lower pole
    d = measure(lab, g).to_json_dict()
    by_kind = {x["kind"]: x for x in d["lesions"]}
    assert by_kind["cyst"]["padua"] is None
    assert by_kind["tumor"]["padua"]["total"] == 6 and by_kind["tumor"]["padua"]["score"].startswith("6")
