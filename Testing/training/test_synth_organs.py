"""Enlarged spleen and liver (--large-organs) on maps of known shape: the organ keeps its top, back and lateral
edge and grows down, forward and toward the midline, into bowel and fat but never into a kidney and its shell,
the hilum, bone, vessels, the spine's column behind the aorta, the other organ, or beyond the labelled body."""
import numpy as np
import pytest

from training.anatomy_maps import ANATOMY
from training.synth_organs import enlarge_organs, grow_organ
from synth_one_case import generate_case

SPLEEN, LIVER, BOWEL, BONE, AORTA, SINUS = (ANATOMY[n] for n in ("spleen", "liver", "small_bowel", "bone", "aorta",
                                                                  "renal_sinus_fat"))
SHAPE = (60, 50, 80)  # (z, y, x): superior, posterior, patient left
SP = np.array([2.0, 2.0, 2.0])


def body():
    a = np.zeros(SHAPE, np.uint8)
    a[40:55, 20:40, 60:75] = SPLEEN  # upper left, at the back
    a[35:55, 10:40, 5:30] = LIVER  # upper right
    a[10:40, 2:20, 20:60] = BOWEL  # in front, below
    a[:, 24:28, 38:42] = AORTA  # x 38-41: the spine's column is x 17-62 behind y 25.5
    a[0, 0, 0] = a[0, 49, 79] = BOWEL  # the labelled body spans the whole grid in y and x
    return a


def extent(mask):
    idx = np.nonzero(mask)
    return [(int(i.min()), int(i.max())) for i in idx]


def no_kidney():
    return np.zeros(SHAPE, np.uint8)


def test_the_spleen_grows_down_forward_and_medially_from_its_fixed_corner():
    a = body()
    before = extent(a == SPLEEN)
    gained = grow_organ(a, no_kidney(), SP, "spleen", 1.4)
    after = extent(a == SPLEEN)
    assert gained > 0 and np.count_nonzero(a == SPLEEN) == 15 * 20 * 15 + gained
    assert [hi for _, hi in after] == [hi for _, hi in before]  # top, back and left edge stay
    assert before[0][0] - after[0][0] in (5, 6)  # 14 slices below the top become 14 x 1.4 = 19.6
    assert before[1][0] - after[1][0] in (3, 4)  # forward by half the excess: 19 x 1.2 = 22.8
    assert after[2][0] < before[2][0]  # and medially
    assert np.array_equal(a == LIVER, body() == LIVER)


def test_an_organ_never_takes_the_other_one():
    a = body()
    a[35:55, 10:40, 5:30] = 0
    a[30:55, 10:40, 44:58] = LIVER  # a liver reaching across, just medial to the spleen
    grow_organ(a, no_kidney(), SP, "spleen", 1.45)
    assert np.count_nonzero(a == LIVER) == 25 * 30 * 14


def test_the_liver_spares_kidney_shell_hilum_bone_and_the_spines_column():
    kidney = no_kidney()
    kidney[15:34, 12:24, 8:20] = 1  # below the liver and within its reach
    free = body()
    free[kidney > 0] = 0
    unprotected = free.copy()
    grow_organ(unprotected, no_kidney(), SP, "liver", 1.45)
    assert np.any(unprotected[kidney > 0] == LIVER)  # without its label, the kidney's place would be taken
    a = free.copy()
    rib, sinus = np.s_[28:32, 17:21, 28:32], np.s_[26:30, 21:25, 24:28]  # in the liver's reach, 10-18 mm
    a[rib], a[sinus] = BONE, SINUS                                          # from the kidney
    assert unprotected[rib].min() == LIVER and unprotected[sinus].min() == LIVER
    grow_organ(a, kidney, SP, "liver", 1.45)
    grown = (a == LIVER) & (body() != LIVER)
    assert grown.any() and np.all(a[rib] == BONE) and np.all(a[sinus] == SINUS)
    z, y, x = np.nonzero(grown)
    k = np.argwhere(kidney > 0)
    nearest = np.min([np.min(np.linalg.norm((k - p) * SP, axis=1)) for p in zip(z[::7], y[::7], x[::7])])
    assert nearest > 4.0  # the perirenal shell, mm
    assert not np.any(grown[:, 26:, :] & (np.abs(np.arange(SHAPE[2]) - 39.5) * SP[2] <= 45.0))  # spine, psoas


def test_growth_stays_inside_the_labelled_body_away_from_its_wall(monkeypatch):
    """The painter puts the abdominal wall and ribs just inside the labelled voxels' extent: growth stays within
    the ellipse inscribed 20 mm inside it, per axial slice."""
    import training.synth_organs as so
    a = body()
    a[0, 0, 0] = a[0, 49, 79] = 0
    a[:, :4] = 0  # the labelled voxels span y 4-39 and x 5-74
    (_, (ylo, yhi), (xlo, xhi)) = extent(a > 0)
    (cy, ry), (cx, rx) = [((lo + hi) / 2, (hi - lo) / 2 - 20.0 / 2.0) for lo, hi in ((ylo, yhi), (xlo, xhi))]
    y, x = np.indices(SHAPE[1:])
    outside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 > 1
    wide = a.copy()
    monkeypatch.setattr(so, "BODY_MARGIN_MM", 0.0)
    grow_organ(wide, no_kidney(), SP, "liver", 1.45)
    assert np.any(((wide == LIVER) & (a != LIVER))[:, outside])  # without the margin it would reach the wall
    monkeypatch.setattr(so, "BODY_MARGIN_MM", 20.0)
    assert grow_organ(a, no_kidney(), SP, "liver", 1.45) > 0
    assert not np.any(((a == LIVER) & (body() != LIVER))[:, outside])
    assert extent(a > 0)[1:] == [(ylo, yhi), (xlo, xhi)]


def test_enlarge_organs_reports_what_it_grew():
    grown_any = set()
    for seed in range(30):
        a = body()
        got = enlarge_organs(a, no_kidney(), SP, np.random.default_rng(seed))
        grown_any |= set(got)
        for name, factor in got.items():
            assert 1.15 <= factor <= 1.45
            assert np.count_nonzero(a == ANATOMY[name]) > np.count_nonzero(body() == ANATOMY[name])
        for name in {"spleen", "liver"} - set(got):
            assert np.array_equal(a == ANATOMY[name], body() == ANATOMY[name])
    assert grown_any == {"spleen", "liver"}
    with pytest.raises(ValueError):
        grow_organ(body(), no_kidney(), SP, "pancreas", 1.2)
    with pytest.raises(ValueError):
        grow_organ(body(), no_kidney(), SP, "spleen", 0.8)


def _generate(shared_data, out, seed, flag):
    return generate_case(shared_data, out, seed, ["--large-organs"] * flag)


def test_with_the_option_only_the_enlarged_organs_change(shared_data, tmp_path):
    """A case keeps its phase (reproduce's check_same_cases) and its kidneys; one whose organs were not enlarged
    is byte-identical to the case made without the option."""
    seen = {}
    for seed in range(13, 23):
        off, off_dir = _generate(shared_data, tmp_path / f"{seed}_off", seed, False)
        on, on_dir = _generate(shared_data, tmp_path / f"{seed}_on", seed, True)
        assert on["phase"] == off["phase"] and on["random_intensities"] == off["random_intensities"]
        assert "large_organs" not in off
        files = {n: ((on_dir / n).read_bytes() == (off_dir / n).read_bytes())
                 for n in ("imaging.nii.gz", "segmentation.nii.gz", "anatomy.nii.gz")}
        seen[bool(on["large_organs"])] = files
        if len(seen) == 2:
            break
    assert seen[False] == {"imaging.nii.gz": True, "segmentation.nii.gz": True, "anatomy.nii.gz": True}
    assert seen[True] == {"imaging.nii.gz": False, "segmentation.nii.gz": True, "anatomy.nii.gz": False}
