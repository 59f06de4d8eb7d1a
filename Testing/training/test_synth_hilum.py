"""The painted renal hilum on a kidney of known shape: sinus fat fills the hilum, and --extrarenal-pelvis adds a
dilated pelvis that bulges medially out of the kidney, with calyces in the sinus, without touching the
kidney, the great vessels or the default hilum."""
import numpy as np
import pytest

from training.anatomy_maps import ANATOMY
from training.synth_hilum import ellipsoid, paint_hilum

SP = np.array([2.0, 2.0, 2.0])
SHAPE = (90, 70, 100)  # z, y, x voxels; LPS: x grows towards the patient's left, y towards the back
CENTRE = np.array([90.0, 70.0, 60.0])  # the right kidney's centre, mm (z, y, x); the midline is at x = 130 mm


def _ellipsoid_mask(centre, radii):
    sl, m = ellipsoid(SHAPE, centre, radii, SP)
    out = np.zeros(SHAPE, bool)
    out[sl] = m
    return out


@pytest.fixture(scope="module")
def kidney():
    """A bean: an ellipsoid with a cavity (the sinus) open to the midline through a 12 mm slot (the hilum)."""
    outer = _ellipsoid_mask(CENTRE, (50, 24, 24))
    cavity = _ellipsoid_mask(CENTRE + [0, 0, 6], (28, 6, 12))
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SP)], indexing="ij")
    slot = (abs(z - CENTRE[0]) < 14) & (abs(y - CENTRE[1]) < 6) & (x > CENTRE[2])
    return (outer & ~cavity & ~slot).astype(np.uint8)


def _anatomy():
    a = np.zeros(SHAPE, np.uint8)
    a[:, 30:40, 62:68] = ANATOMY["aorta"]  # x 124-136 mm: the midline
    a[:, 26:36, 54:61] = ANATOMY["inferior_vena_cava"]
    return a


def _paint(kidney, seed, large):
    a = _anatomy()
    paint_hilum(a, kidney, SP, np.random.default_rng(seed), large_pelvis=large)
    return a


def test_the_hilum_fills_the_kidneys_concavity_and_keeps_off_the_kidney(kidney):
    a = _paint(kidney, 0, False)
    hilum = np.isin(a, [ANATOMY[n] for n in ("renal_sinus_fat", "collecting_system")])
    cavity = _ellipsoid_mask(CENTRE + [0, 0, 6], (26, 4, 10)) & (kidney == 0)
    assert hilum[cavity].mean() > 0.9
    assert not np.any(a[kidney > 0])
    assert np.all(a[_anatomy() > 0] == _anatomy()[_anatomy() > 0])  # the great vessels stay


def test_extrarenal_pelvis_bulges_medially_out_of_the_hilum(kidney):
    seeds = [s for s in range(12) if not np.array_equal(_paint(kidney, s, True), _paint(kidney, s, False))]
    assert 4 <= len(seeds) <= 12  # 70 % of the kidneys get one
    bulging = 0
    for seed in seeds:
        off, on = _paint(kidney, seed, False), _paint(kidney, seed, True)
        changed = on != off
        # Painted after every default draw: the default hilum stays as it was, only collecting system is added,
        # on fat or empty voxels, never on the kidney or the great vessels.
        assert np.all(on[changed] == ANATOMY["collecting_system"])
        assert np.all(np.isin(off[changed], [0, ANATOMY["renal_sinus_fat"]]))
        assert not np.any(changed[kidney > 0])
        pelvis = on == ANATOMY["collecting_system"]
        assert changed.sum() * SP.prod() > 1500, seed  # > 1.5 mL more: the default pelvis is a 5-10 mm ball
        # Outside the sinus, it lies beyond the kidney's medial edge (x grows towards the midline here).
        outside = changed & (off == 0)
        if outside.sum() * SP.prod() > 300:
            bulging += 1
            assert np.argwhere(outside)[:, 2].mean() * SP[2] > CENTRE[2] + 20, seed  # the edge: + 24
        # Calyces run up and down the sinus: the collecting system spans most of the cavity's 56 mm height.
        in_sinus = np.argwhere(pelvis & (off == ANATOMY["renal_sinus_fat"]))[:, 0] * SP[0]
        assert np.ptp(in_sinus) > 35, seed
    assert bulging >= len(seeds) / 2  # most are partly extrarenal


def test_the_ellipsoid_has_its_semi_axes():
    m = _ellipsoid_mask([60, 60, 60], [20, 10, 6])
    idx = np.argwhere(m) * SP
    assert np.ptp(idx[:, 0]) == pytest.approx(40, abs=2.1) and np.ptp(idx[:, 2]) == pytest.approx(12, abs=2.1)
    assert m.sum() * SP.prod() == pytest.approx(4 / 3 * np.pi * 20 * 10 * 6, rel=0.1)
