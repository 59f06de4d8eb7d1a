"""Enlarged spleen and liver (--large-organs) on maps of known shape: the organ keeps its top, back and lateral
edge and grows down, forward and toward the midline, into bowel and fat but never into a kidney, bone or vessel."""
import numpy as np
import pytest

from training.anatomy_maps import ANATOMY
from training.synth_organs import enlarge_organs, grow_organ

SPLEEN, LIVER, BOWEL, BONE, AORTA = (ANATOMY[n] for n in ("spleen", "liver", "small_bowel", "bone", "aorta"))
SHAPE = (60, 50, 80)  # (z, y, x): superior, posterior, patient left


def body():
    a = np.zeros(SHAPE, np.uint8)
    a[40:55, 20:40, 60:75] = SPLEEN  # upper left, at the back
    a[35:55, 10:40, 5:30] = LIVER  # upper right
    a[10:40, 5:20, 20:60] = BOWEL  # in front, below
    a[:, 42:48, 37:43] = BONE  # the spine, behind
    a[:, 30:34, 44:48] = AORTA
    return a


def extent(mask):
    idx = np.nonzero(mask)
    return [(int(i.min()), int(i.max())) for i in idx]


def test_the_spleen_grows_down_forward_and_medially_from_its_fixed_corner():
    a, labels = body(), np.zeros(SHAPE, np.uint8)
    before = extent(a == SPLEEN)
    gained = grow_organ(a, labels, "spleen", 1.4)
    after = extent(a == SPLEEN)
    assert gained > 0 and np.count_nonzero(a == SPLEEN) == 15 * 20 * 15 + gained
    assert after[0][1] == before[0][1] and after[1][1] == before[1][1] and after[2][1] == before[2][1]
    # 14 slices below the top corner become 14 * 1.4 = 19.6: the lowest edge moves down 5-6 slices
    assert before[0][0] - after[0][0] in (5, 6)
    assert after[1][0] < before[1][0] and after[2][0] < before[2][0]  # forward (anterior) and medial
    assert np.array_equal(a == LIVER, body() == LIVER)  # the other organ is untouched


def test_the_liver_grows_toward_patient_left_and_never_into_kidney_bone_or_vessels():
    def with_blocks(fill_bone, fill_vessel):
        a = body()
        a[30:34, 25:30, 30:34] = fill_bone  # a rib and a vessel where the liver grows
        a[28:33, 15:20, 32:36] = fill_vessel
        return a

    labels = np.zeros(SHAPE, np.uint8)
    labels[15:34, 22:36, 8:26] = 1  # a kidney below the liver and within its reach
    blocks = np.zeros(SHAPE, bool)
    blocks[30:34, 25:30, 30:34] = blocks[28:33, 15:20, 32:36] = True
    free = with_blocks(BOWEL, BOWEL)
    free[labels > 0] = 0
    grow_organ(free, labels, "liver", 1.45)
    assert np.any(free[blocks] == LIVER)  # as bowel, the blocks' voxels would be taken
    unprotected = free.copy()
    grow_organ(unprotected, np.zeros(SHAPE, np.uint8), "liver", 1.45)
    assert np.any(unprotected[labels > 0] == LIVER)  # and so would the kidney's, were it not a kidney
    a = with_blocks(BONE, AORTA)
    a[labels > 0] = 0
    kept = (a == BONE) | (a == AORTA)
    before = extent(a == LIVER)
    grow_organ(a, labels, "liver", 1.45)
    after = extent(a == LIVER)
    assert after[2][0] == before[2][0] and after[2][1] > before[2][1]  # right edge fixed, grows to the left
    assert after[0][1] == before[0][1] and after[0][0] < before[0][0]  # top fixed, grows down
    assert not np.any((a == LIVER) & (labels > 0))
    assert np.array_equal((a == BONE) | (a == AORTA), kept)
    assert np.any((body() == BOWEL) & (a == LIVER))  # it takes bowel in its way


def test_enlarge_organs_draws_from_its_own_rng_and_reports_what_it_grew():
    grown_any = set()
    for seed in range(30):
        a = body()
        got = enlarge_organs(a, np.zeros(SHAPE, np.uint8), np.random.default_rng(seed))
        grown_any |= set(got)
        for name, factor in got.items():
            assert 1.15 <= factor <= 1.45
            assert np.count_nonzero(a == ANATOMY[name]) > np.count_nonzero(body() == ANATOMY[name])
        for name in {"spleen", "liver"} - set(got):
            assert np.array_equal(a == ANATOMY[name], body() == ANATOMY[name])
    assert grown_any == {"spleen", "liver"}
    with pytest.raises(ValueError):
        grow_organ(body(), np.zeros(SHAPE, np.uint8), "pancreas", 1.2)
    with pytest.raises(ValueError):
        grow_organ(body(), np.zeros(SHAPE, np.uint8), "spleen", 0.8)


@pytest.mark.parametrize("flag", [False, True])
def test_the_command_line_flag_reaches_the_generator(shared_data, monkeypatch, tmp_path, flag):
    import training.synth_real as synth_real
    from training.synthetic import main

    seen = []

    class Stop(Exception):
        pass

    def spy(anatomy, labels, rng):
        seen.append(True)
        raise Stop

    def after_organs(*args, **kwargs):  # reached first when the flag is off
        seen.append(False)
        raise Stop

    monkeypatch.setattr(synth_real, "enlarge_organs", spy)
    monkeypatch.setattr(synth_real, "paint_hilum", after_organs)
    with pytest.raises(Stop):
        main(["--kits23", str(shared_data / "kits23" / "labels"), "-o", str(tmp_path), "--cases", "case_00534",
              "--anatomy", str(shared_data / "anatomy" / "flare22" / "FLARE22_Tr_0001.nii.gz"),
              "--spacing", "4", "4"] + ["--large-organs"] * flag)
    assert seen == [flag]


def test_a_case_keeps_its_phase_with_the_option(shared_data, tmp_path):
    """reproduce's check_same_cases needs each case's phase to be the same with and without --large-organs."""
    import json

    from training.synthetic import main
    entries = {}
    for flag in (False, True):
        out = tmp_path / str(flag)
        assert main(["--kits23", str(shared_data / "kits23" / "labels"), "-o", str(out), "--cases", "case_00534",
                     "--anatomy", str(shared_data / "anatomy" / "flare22" / "FLARE22_Tr_0001.nii.gz"),
                     "--spacing", "4", "4", "--seed", "13"] + ["--large-organs"] * flag) == 0
        (entries[flag],) = json.loads((out / "synthetic.json").read_text())["cases"].values()
    assert entries[True]["phase"] == entries[False]["phase"]
    assert entries[True]["random_intensities"] == entries[False]["random_intensities"]
    assert "large_organs" in entries[True] and "large_organs" not in entries[False]
