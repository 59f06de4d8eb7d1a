"""The painted renal hilum on kidneys of known shape: sinus fat fills the hilum, and --extrarenal-pelvis adds a
dilated pelvis that bulges medially out of the hilum, joined to it, with calyces in the sinus, without touching
the kidney, the great vessels or the default hilum of either kidney."""
import numpy as np
import pytest
from scipy import ndimage

from training.anatomy_maps import ANATOMY
from training.synth_hilum import ellipsoid, paint_hilum, tube

SP = np.array([2.0, 2.0, 2.0])
SHAPE = (90, 70, 130)  # z, y, x voxels; LPS: x grows towards the patient's left, y towards the back
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
    right = outer & ~cavity & ~slot
    return (right | right[:, :, ::-1]).astype(np.uint8)  # and its mirror image about x = 129 mm: the left kidney


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
    assert hilum[cavity].mean() > 0.9 and hilum[:, :, ::-1][cavity].mean() > 0.9
    assert not np.any(a[kidney > 0])
    assert np.all(a[_anatomy() > 0] == _anatomy()[_anatomy() > 0])  # the great vessels stay


@pytest.fixture(scope="module")
def painted(kidney):
    """(seed, off, on) for eight seeds: the same hilum without and with --extrarenal-pelvis."""
    return [(seed, _paint(kidney, seed, False), _paint(kidney, seed, True)) for seed in range(8)]


def test_extrarenal_pelvis_bulges_medially_out_of_the_hilum(kidney, painted):
    cs = ANATOMY["collecting_system"]
    sides = 0
    for seed, off, on in painted:
        changed = on != off
        # Painted after every draw of both kidneys' default hilum: that stays as it was, only collecting system
        # is added, on fat or empty voxels, never on the kidney or the great vessels.
        assert np.all(on[changed] == cs), seed
        assert np.all(np.isin(off[changed], [0, ANATOMY["renal_sinus_fat"]]))
        assert not np.any(changed[kidney > 0])
        pieces, _ = ndimage.label(on == cs)
        for flip in (False, True):  # the right kidney, then the left one seen in a mirror
            o, c, p = (v[:, :, ::-1] if flip else v for v in (off, changed, pieces))
            c = c.copy()
            c[:, :, 65:] = False  # this side only: x < 130 mm
            if not c.any():
                continue
            sides += 1
            assert c.sum() * SP.prod() > 1500, seed  # > 1.5 mL more: the default pelvis is a 5-10 mm ball
            # Joined to the default pelvis at the sinus centre (one piece with it), not floating beside the kidney.
            ball = np.argwhere((o == cs) & (abs(np.arange(SHAPE[0]) * SP[0] - CENTRE[0]) < 12)[:, None, None])
            ball = ball[ball[:, 2] < 65]
            joined = np.isin(p, np.unique(p[tuple(ball.T)]))
            assert joined[c].mean() > 0.9, seed
            # Outside the sinus, it lies beyond the kidney's medial edge (x = 84 mm) at the hilum's level.
            outside = np.argwhere(c & (o == 0)) * SP
            assert len(outside) * SP.prod() > 300, seed
            assert outside[:, 2].mean() > CENTRE[2] + 20 and abs(outside[:, 0].mean() - CENTRE[0]) < 15, seed
            # Calyces run up and down the sinus: the collecting system spans most of the cavity's 56 mm height.
            in_sinus = np.argwhere(c & (o == ANATOMY["renal_sinus_fat"]))[:, 0] * SP[0]
            assert np.ptp(in_sinus) > 35, seed
    assert 8 <= sides <= 15  # 70 % of the 16 kidneys get one


def test_the_ellipsoid_has_its_semi_axes():
    m = _ellipsoid_mask([60, 60, 60], [20, 10, 6])
    idx = np.argwhere(m) * SP
    assert np.ptp(idx[:, 0]) == pytest.approx(40, abs=2.1) and np.ptp(idx[:, 2]) == pytest.approx(12, abs=2.1)
    assert m.sum() * SP.prod() == pytest.approx(4 / 3 * np.pi * 20 * 10 * 6, rel=0.1)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("flag", [False, True])
def test_the_command_line_flag_reaches_the_painter(shared_data, monkeypatch, tmp_path, flag):
    import training.synth_real as synth_real
    from training.synthetic import main

    seen = []

    def spy(anatomy, labels, sp, rng, large_pelvis=False):
        seen.append(large_pelvis)
        raise _Stop

    monkeypatch.setattr(synth_real, "paint_hilum", spy)
    with pytest.raises(_Stop):
        main(["--kits23", str(shared_data / "kits23" / "labels"), "-o", str(tmp_path), "--cases", "case_00534",
              "--anatomy", str(shared_data / "anatomy" / "flare22" / "FLARE22_Tr_0001.nii.gz"),
              "--spacing", "4", "4"] + ["--extrarenal-pelvis"] * flag)
    assert seen == [flag]


def test_a_tube_outside_the_volume_along_one_axis_is_empty_and_usable():
    a = np.zeros((10, 20, 20), np.uint8)
    sl, m = tube(a.shape, [(-80.0, 10.0, 10.0), (-40.0, 20.0, 20.0)], 3.0, SP)  # below the first slice
    assert m.shape == a[sl].shape and not m.any()
    a[sl][m] = 1  # what the painter does with it
    assert not a.any()


def test_a_sinus_wholly_over_3_cm_from_the_centres_level_still_gets_its_pelvis():
    """A KiTS23 map (device_run.sh's 253, 2026-12-04) whose sinus part lies wholly over 3 cm above or below the
    given centre crashed the painter (argmax of an empty band). Now it paints: the pelvis and its neck reach that
    part (the calyces, drawn only in sinus fat, run to its ends; this small part does not tell them apart)."""
    from training.synth_hilum import _paint_large_pelvis
    a, labels = _anatomy(), np.zeros(SHAPE, np.uint8)
    sinus = np.zeros((10, 10, 10), bool)
    sinus[3:7, 3:7, 3:7] = True  # box origin 60 voxels (120 mm) up: the part spans 126-132 mm
    fat = np.zeros(SHAPE, bool)
    fat[63:67, 33:37, 28:32] = True  # the sinus part's own fat
    a[fat] = ANATOMY["renal_sinus_fat"]
    centre = np.array([40.0, 70.0, 60.0])  # 86-92 mm from every sinus voxel
    _paint_large_pelvis(a, labels, SP, np.random.default_rng(0), sinus, np.array([60, 30, 25]), centre, 1.0)
    painted = a == ANATOMY["collecting_system"]
    assert painted.sum() > 0
    assert (painted & fat).any()  # the collecting system reached the sinus part: its fat became collecting system
