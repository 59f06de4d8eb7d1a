"""R.E.N.A.L. components on constructed kidneys, at both sides of every threshold."""
import numpy as np
import pytest

from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.measurements import measure
from KidneyTumorSegLib.nephrometry import score_A, score_E, score_L, score_N, score_R
from phantoms import rotation

K, T = int(Label.KIDNEY), int(Label.TUMOR)


def sample(shapes, extent_mm, spacing=(0.8, 0.8, 1.0), direction=np.eye(3)):
    """Label map of analytic shapes sampled at the voxel centres of a grid centred on LPS (0, 0, 0)."""
    sp = np.asarray(spacing, float)
    size = np.ceil(np.asarray(extent_mm) / sp).astype(int)
    g = Geometry(sp, -np.asarray(direction) @ (sp * (size - 1) / 2), np.asarray(direction).ravel(), tuple(size))
    k, j, i = np.indices(g.shape)
    p = g.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(g.shape + (3,))
    lab = np.zeros(g.shape, np.uint8)
    for label, inside in shapes:
        lab[inside(p)] = label
    return lab, g


def ball(centre, r):
    return lambda p: np.sum((p - np.asarray(centre, float)) ** 2, axis=-1) <= r * r


def ellipsoid(centre, radii):
    return lambda p: np.sum(((p - np.asarray(centre, float)) / np.asarray(radii, float)) ** 2, axis=-1) <= 1


def hilum_kidney(p):
    """A thin kidney (semi-axes 28, 13, 55 mm; too thin for a deep core) whose unlabelled sinus cavity
    (semi-axes 10, 7, 30 mm at x = -6, lateral tip at x = +4) opens medially (-x) through a 12 mm wide
    hilum channel for |z| <= 18 mm: the polar lines are the planes z = +-18 mm."""
    outer = ellipsoid((0, 0, 0), (28, 13, 55))(p)
    cavity = ellipsoid((-6, 0, 0), (10, 7, 30))(p)
    channel = (p[..., 0] < -6) & (np.abs(p[..., 1]) <= 6) & (np.abs(p[..., 2]) <= 18)
    return outer & ~cavity & ~channel


def renal_of(lab, g):
    (tumor,) = measure(lab, g).tumors
    assert tumor.renal is not None
    return tumor, tumor.renal


HILUM_EXTENT = (70, 34, 120)
FAT = ellipsoid((0, 0, 0), (25, 20, 50))  # a plain kidney for E and A
FAT_EXTENT = (70, 60, 110)


def test_scores_at_their_thresholds():
    assert [score_R(d) for d in (38, 40, 40.01, 68, 69.99, 70, 72)] == [1, 1, 2, 2, 2, 3, 3]
    assert [score_E(f) for f in (0.0, 0.009, 0.2, 0.49, 0.5, 0.9)] == [3, 3, 2, 2, 1, 1]
    assert [score_N(d) for d in (0, 3, 4, 4.01, 6.99, 7, 9)] == [3, 3, 3, 2, 2, 1, 1]
    assert score_N(None) is None
    assert [score_A(o) for o in (-15, -9.9, 0, 9.9, 15)] == ["a", "x", "x", "x", "p"]
    assert [score_L(f, c) for f, c in ((0, False), (0.3, False), (0.5, False), (0.6, False), (0.2, True))] == \
        [1, 2, 2, 3, 3]


@pytest.mark.parametrize("diameter, expected", [(38, 1), (42, 2), (68, 2), (72, 3)])
def test_R_on_spheres_oblique(diameter, expected):
    r = diameter / 2  # inside a kidney just larger than the tumor, on a small oblique grid
    lab, g = sample([(K, ellipsoid((0, 0, 0), (r + 4, r + 4, r + 8))), (T, ball((0, 0, 0), r))],
                    (2 * r + 10, 2 * r + 10, 2 * r + 18), spacing=(0.9, 0.9, 1.0), direction=rotation(15, 10, -25))
    tumor, renal = renal_of(lab, g)
    assert diameter - 1.0 <= tumor.longest_diameter_mm <= diameter
    assert renal.R == expected
    assert renal.E == 3  # inside the kidney


@pytest.mark.parametrize("x, r, expected", [(31, 10, 1), (19, 10, 2), (8, 7, 3)])
def test_E_mostly_outside_mostly_inside_fully_inside(x, r, expected):
    lab, g = sample([(K, FAT), (T, ball((x, 0, 0), r))], FAT_EXTENT)
    tumor, renal = renal_of(lab, g)
    assert renal.E == expected
    if expected == 3:
        assert tumor.exophytic_fraction == 0.0


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0])], ids=["axial", "flipped"])
@pytest.mark.parametrize("gap, expected", [(3, 3), (5, 2), (9, 1)])
def test_N_gap_to_the_sinus(gap, expected, direction):
    lab, g = sample([(K, hilum_kidney), (T, ball((4 + gap + 8, 0, 0), 8))], HILUM_EXTENT, direction=direction)
    tumor, renal = renal_of(lab, g)
    assert abs(tumor.distance_to_sinus_mm - gap) <= 1.0
    assert renal.N == expected


@pytest.mark.parametrize("y, expected", [(-16, "a"), (16, "p"), (0, "x")])
def test_A_anterior_posterior_neither(y, expected):
    x = 0 if y else 18  # the "neither" tumor sits on the lateral edge
    lab, g = sample([(K, FAT), (T, ball((x, y, 20), 7))], FAT_EXTENT)
    _, renal = renal_of(lab, g)
    assert renal.A == expected and renal.suffix == expected


@pytest.mark.parametrize("z, expected", [(35, 1), (-35, 1), (22, 2), (12, 3), (0, 3)],
                         ids=["above", "below", "crossing", "mostly-between", "midline"])
def test_L_relative_to_the_polar_lines(z, expected):
    lab, g = sample([(K, hilum_kidney), (T, ball((16, 0, z), 8))], HILUM_EXTENT)
    _, renal = renal_of(lab, g)
    assert renal.polar_source == "hilum"
    assert renal.L == expected
    assert renal.crosses_midline == (z == 0)


def test_sinus_proxy_of_the_hilum_kidney():
    lab, g = sample([(K, hilum_kidney), (T, ball((16, 0, 35), 6))], HILUM_EXTENT)
    (kid,) = measure(lab, g).kidneys
    cavity = 4 / 3 * np.pi * 10 * 7 * 30 / 1000  # 8.8 mL, plus the channel inside the hull
    assert cavity * 0.9 < kid.sinus_volume_ml < cavity * 1.5
