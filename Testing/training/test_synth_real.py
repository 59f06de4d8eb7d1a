"""Synthetic CTs from real anatomy maps: the KiTS kidneys keep their shape and take the map kidneys'
places, organs stay on their sides, HU follow the drawn phase, output is deterministic, validation data
is refused."""
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from KidneyTumorSegLib.image_io import read_image, read_labelmap
from KidneyTumorSegLib.labels import Label
from training.anatomy_maps import ANATOMY, load_anatomy
from training.datasets import HeldOutError
from training.synth_phases import HU, PHASES
from training.synth_real import (KIDNEY_MARK, RealSynthConfig, deform_map, fit_kidney, kits_kidneys,
                                 make_real_case)
from training.synthetic import main

KITS = "case_00534"  # the smallest KiTS23 label map (36 slices at 5 mm): fast
MAPS = ("flare22/FLARE22_Tr_0001.nii.gz", "amos/amos_0013.nii.gz", "totalseg/s0006.nii.gz")
SPACING = (3.0, 3.0, 3.0)
CALM = RealSynthConfig(random_share=0.0)


@pytest.fixture(scope="module")
def kits(shared_data):
    return read_labelmap(shared_data / "kits23" / "labels" / f"{KITS}.nii.gz")


@pytest.fixture(scope="module")
def cases(shared_data, kits):
    out = []
    for i, name in enumerate(MAPS):
        amap = load_anatomy(shared_data / "anatomy" / name)
        out.append(make_real_case(amap, kits, np.random.default_rng(i), CALM, spacing=SPACING))
    return out


def _centroid_mm(mask, geometry):
    return geometry.index_to_physical(np.argwhere(mask).mean(axis=0)[::-1])


def test_fitting_keeps_shape_and_takes_the_map_kidneys_place(shared_data, kits):
    amap = load_anatomy(shared_data / "anatomy" / MAPS[0])
    deformed, grid = deform_map(amap, SPACING, np.random.default_rng(0))
    for side, kidney in kits_kidneys(kits).items():
        target = deformed == KIDNEY_MARK[side]
        pasted, fit = fit_kidney(kidney, target, grid, np.random.default_rng(1))
        source_ml = (kidney.array > 0).sum() * np.prod(kidney.geometry.spacing) / 1000
        pasted_ml = (pasted > 0).sum() * np.prod(grid.spacing) / 1000
        assert pasted_ml == pytest.approx(source_ml * fit.scale ** 3, rel=0.02), side
        # Labels survive (the source's tumor is pasted as tumor) and the parenchyma sits where the map's kidney was.
        assert set(np.unique(pasted)) == set(np.unique(kidney.array))
        shift = _centroid_mm(pasted == Label.KIDNEY, grid) - _centroid_mm(target, grid)
        assert np.linalg.norm(shift) < 10.0, (side, shift)
        assert 0.85 <= fit.scale <= 1.15


def test_liver_on_the_patients_right_spleen_on_the_left(cases):
    for ct, labels, anatomy, info in cases:
        g = anatomy.geometry
        x = {name: _centroid_mm(anatomy.array == ANATOMY[name], g)[0] for name in ("liver", "spleen")}
        kidneys = _centroid_mm(labels.array > 0, g)[0]
        assert x["liver"] < kidneys < x["spleen"]  # LPS: x grows towards the patient's left


def test_nothing_overlaps_the_kidneys_and_the_hilum_is_painted(cases):
    for ct, labels, anatomy, info in cases:
        assert ct.geometry == labels.geometry == anatomy.geometry
        assert not np.any(anatomy.array[labels.array > 0])
        sinus = anatomy.array == ANATOMY["renal_sinus_fat"]
        assert sinus.sum() * np.prod(ct.geometry.spacing) > 1000  # > 1 mL of sinus fat
        near = ndimage.binary_dilation(labels.array > 0, iterations=4)
        assert np.all(near[sinus])  # in the hilum, not anywhere else
        assert (anatomy.array == ANATOMY["collecting_system"]).any()
        assert (anatomy.array == ANATOMY["body"]).sum() > 0.2 * (anatomy.array > 0).sum()  # fat, wall: the rest


def test_hu_follow_the_drawn_phase(cases):
    for ct, labels, anatomy, info in cases:
        phase = PHASES.index(info["phase"])
        a = ct.array.astype(float)
        for name in ("liver", "spleen"):
            inner = ndimage.binary_erosion(anatomy.array == ANATOMY[name], iterations=2)
            lo, hi = HU[name][phase]
            assert lo - 25 <= np.median(a[inner]) <= hi + 25, (info, name)
        sinus = np.median(a[anatomy.array == ANATOMY["renal_sinus_fat"]])  # fat, blurred by the kidney around it
        assert sinus < np.median(a[labels.array == Label.KIDNEY]), info
        assert a.min() >= -1024 and a.max() <= 3071 and ct.array.dtype == np.int16


def test_same_seed_same_case(shared_data, kits, cases):
    amap = load_anatomy(shared_data / "anatomy" / MAPS[0])
    again = make_real_case(amap, kits, np.random.default_rng(0), CALM, spacing=SPACING)
    for a, b in zip(cases[0][:3], again[:3]):
        assert np.array_equal(a.array, b.array) and a.geometry == b.geometry


def test_cli_is_deterministic_whatever_the_workers(shared_data, tmp_path):
    anatomy = tmp_path / "anatomy"
    shutil.copytree(shared_data / "anatomy" / "amos", anatomy / "amos")
    args = ["--kits23", str(shared_data / "kits23" / "labels"), "--anatomy", str(anatomy), "-n", "2",
            "--seed", "3", "--spacing", "3", "3.5", "--cases", KITS, "case_00003"]
    assert main(args + ["-o", str(tmp_path / "a")]) == 0
    assert main(args + ["-o", str(tmp_path / "b"), "--workers", "2"]) == 0
    log = json.loads((tmp_path / "a" / "synthetic.json").read_text(encoding="utf-8"))
    assert json.loads((tmp_path / "a" / "anatomy_labels.json").read_text(encoding="utf-8")) == ANATOMY
    assert sorted(log["cases"]) == ["case_00003_amos0013", f"{KITS}_amos0013"]
    for case_id in log["cases"]:
        for f, read in (("imaging.nii.gz", read_image), ("segmentation.nii.gz", read_labelmap),
                        ("anatomy.nii.gz", read_labelmap)):
            a, b = (read(tmp_path / d / case_id / f) for d in "ab")
            assert np.array_equal(a.array, b.array) and a.geometry == b.geometry
        lab = read_labelmap(tmp_path / "a" / case_id / "segmentation.nii.gz").array
        assert set(np.unique(lab)) <= {0, 1, 2, 3} and (lab == Label.TUMOR).any()


def test_validation_ct_and_its_anatomy_are_refused(shared_data, tmp_path):
    src = shared_data / "real_ct" / "totalseg_s0009"
    with pytest.raises(HeldOutError):
        load_anatomy(src / "labels.nii.gz")
    disguised = tmp_path / "totalseg"  # a renamed copy beside a classes.csv: caught by its checksum
    disguised.mkdir()
    shutil.copy(src / "classes.csv", disguised / "classes.csv")
    shutil.copy(src / "labels.nii.gz", disguised / "s9999.nii.gz")
    with pytest.raises(HeldOutError):
        load_anatomy(disguised / "s9999.nii.gz")
    with pytest.raises(HeldOutError):
        main(["--kits23", str(shared_data / "kits23" / "labels"), "--anatomy", str(disguised), "-n", "1",
              "-o", str(tmp_path / "out")])


def test_exclude_removes_the_kits_cases_and_the_anatomy_maps_of_another_set(shared_data, tmp_path, monkeypatch):
    import training.synthetic as synthetic
    train = tmp_path / "train"
    train.mkdir()
    used = {"case_00003_FLARE22Tr0001": {"kits_case": "case_00003", "anatomy": "x/flare22/FLARE22_Tr_0001.nii.gz"}}
    (train / "synthetic.json").write_text(json.dumps({"cases": used}), encoding="utf-8")
    jobs = []  # record the pairs instead of painting them
    monkeypatch.setattr(synthetic, "_synth_real_one", lambda job: jobs.append(job) or (job[3], {"kits_case": job[6]}))
    assert main(["--kits23", str(shared_data / "kits23" / "labels"), "--anatomy", str(shared_data / "anatomy"),
                 "-n", "200", "--seed", "1", "-o", str(tmp_path / "test"), "--exclude", str(train)]) == 0
    assert len(jobs) == 200 and "case_00003" not in {j[6] for j in jobs}
    maps = [j[1].name for j in jobs]
    assert "FLARE22_Tr_0001.nii.gz" not in maps
    assert {"s0001.nii.gz", "amos_0013.nii.gz", "FLARE22_Tr_0002.nii.gz"} <= set(maps)  # every source is used


def test_bowel_walls_ring_each_loop_and_are_off_by_default():
    """--bowel-walls: every small-bowel loop's outer shell is wall (enhancing, 70-140 HU +- texture), so neither
    its fluid, contrast nor gas touches the fat around it; without it the loops are uniform as before."""
    from training.synth_anatomy import Painter, _paint_bowel
    from training.synthetic import real_config
    share = {}
    for walls in (False, True):
        P = Painter((60, 100, 120), (2.0, 2.0, 2.0), np.random.default_rng(3))
        P.ct[:] = -100.0  # fat
        _paint_bowel(P, (60.0, 140.0, 120.0, 100.0, 100.0, 80.0), np.ones(P.shape, bool), {"colon"}, walls, False)
        painted = P.ct != -100.0
        rim = painted & ~ndimage.binary_erosion(painted)
        share[walls] = np.mean((P.ct[rim] > 40) & (P.ct[rim] < 180))
    assert share[True] > 0.95 and share[False] < 0.4
    assert real_config().scanner.bowel_walls is False
    assert real_config(None, bowel_walls=True).scanner.bowel_walls is True
    assert real_config([1.0, 2.0], bowel_walls=True).spacing == (1.0, 2.0)
    assert real_config([1.0, 2.0]) == RealSynthConfig(spacing=(1.0, 2.0))


def test_bowel_by_kidneys_puts_loops_against_each_kidneys_front_and_is_off_by_default():
    """--bowel-by-kidneys: extra loops in front of each kidney (where v3 took real bowel for tumor); off, the
    painter gives exactly what it gave without kidneys."""
    from training.synth_anatomy import Painter, SynthConfig, _paint_bowel, paint_anatomy
    from training.synth_real import kidney_frames
    labels = np.zeros((60, 100, 120), np.uint8)
    labels[15:45, 60:80, 78:93] = Label.KIDNEY   # patient left (larger x), 2 mm voxels
    labels[15:45, 60:80, 20:30] = Label.KIDNEY   # patient right, the smaller one
    sp = np.array([2.0, 2.0, 2.0])
    frames = kidney_frames(labels, sp, midline_x=120.0)
    assert frames == [((60.0, 140.0, 171.0), (30.0, 20.0, 15.0), 1.0), ((60.0, 140.0, 50.0), (30.0, 20.0, 10.0), -1.0)]
    front = np.zeros(labels.shape, bool)
    front[15:45, 40:60, 70:100] = True           # the 40 mm in front of the left kidney
    painted = {}
    for kidneys in (None, frames):
        P = Painter(labels.shape, tuple(sp), np.random.default_rng(5))
        P.ct[:] = -100.0
        _paint_bowel(P, (60.0, 140.0, 120.0, 100.0, 100.0, 80.0), np.ones(P.shape, bool), {"colon"}, False, False,
                     kidneys)
        painted[kidneys is None] = np.mean(P.ct[front] != -100.0)
    assert painted[False] > painted[True] + 0.1, painted
    cts = []
    for kidneys in (None, frames):  # the flag off (the default): the kidneys change nothing
        P = Painter(labels.shape, tuple(sp), np.random.default_rng(5))
        paint_anatomy(P, (60.0, 140.0, 120.0, 100.0, None), SynthConfig(), False, kidneys=kidneys)
        cts.append(P.ct.copy())
    assert SynthConfig().bowel_by_kidneys is False and np.array_equal(cts[0], cts[1])


def _v2_bowel_loops(P, frame, inner, walls, unenhanced):
    """The small-bowel loops exactly as the v2 data were painted (before --bowel-by-kidneys): the reference
    that keeps the v2 recipe's data reproducible (same draws in the same order)."""
    from training.synth_anatomy import _paint_walled_loop
    rng = P.rng
    z_mid, fy, cx, cyb, ax, ay = frame
    for _ in range(int(rng.integers(30, 60))):
        c = (z_mid + rng.uniform(-220, 100), cyb - ay * rng.uniform(0.0, 0.7), cx + ax * rng.uniform(-0.7, 0.7))
        rad = rng.uniform(10, 25)
        hu = rng.uniform(150, 300) if rng.random() < 0.15 else rng.uniform(0, 50)
        radii = (rad * rng.uniform(1, 2), rad, rad)
        if walls:
            _paint_walled_loop(P, c, radii, hu, inner, unenhanced)
            continue
        sl, m = P.paint(c, radii, hu, 10, 0.3, inner)
        if rng.random() < 0.5 and m.any():
            P.paint((c[0], c[1] - rad * 0.6, c[2]), (rad * 0.8, rad * 0.5, rad * 0.7), rng.uniform(-1000, -850),
                    20, 0.2, inner)


@pytest.mark.parametrize("walls", [False, True])
def test_bowel_loops_paint_exactly_as_the_v2_data_were_painted(walls):
    from training.synth_anatomy import Painter, _paint_bowel
    frame = (60.0, 140.0, 120.0, 100.0, 100.0, 80.0)
    cts = []
    for paint in (lambda P, inner: _v2_bowel_loops(P, frame, inner, walls, False),
                  lambda P, inner: _paint_bowel(P, frame, inner, {"colon"}, walls, False)):
        P = Painter((40, 80, 100), (2.5, 2.5, 2.5), np.random.default_rng(11))
        paint(P, np.ones(P.shape, bool))
        cts.append(P.ct.copy())
        cts.append(P.rng.random())  # and the generator left in the same state
    assert np.array_equal(cts[0], cts[2]) and cts[1] == cts[3]


def test_loops_by_the_kidneys_lie_in_front_of_each_kidney_on_its_side_and_respect_skip(monkeypatch):
    from training import synth_anatomy
    from training.synth_anatomy import Painter, _paint_bowel
    calls = []
    monkeypatch.setattr(synth_anatomy, "_paint_loop", lambda P, c, rad, *a: calls.append((c, rad)))
    frame = (60.0, 140.0, 120.0, 100.0, 100.0, 80.0)
    kidneys = [((60.0, 140.0, 171.0), (30.0, 20.0, 15.0), 1.0), ((60.0, 140.0, 50.0), (30.0, 20.0, 10.0), -1.0)]
    for seed in range(5):
        for kidney in kidneys:
            counts = []
            for frames in (None, [kidney]):
                calls.clear()
                _paint_bowel(Painter((48, 100, 120), (2.0, 2.0, 2.0), np.random.default_rng(seed)), frame,
                             np.ones((48, 100, 120), bool), {"colon"}, False, False, frames)
                counts.append(len(calls))
            extra = calls[counts[0]:]  # the random loops come first, drawn as without kidneys
            (cz, cy, cx), (hz, hy, hx), lateral = kidney
            assert 1 <= len(extra) <= 3
            for (z, y, x), rad in extra:
                assert 8 <= rad <= 18 and abs(z - cz) <= 0.8 * hz
                assert cy - hy - 0.9 * rad <= y <= cy - hy - 0.3 * rad  # in front (LPS: smaller y)
                assert -0.6 * hx <= lateral * (x - cx) <= hx            # medial third to the lateral edge
    calls.clear()
    _paint_bowel(Painter((48, 100, 120), (2.0, 2.0, 2.0), np.random.default_rng(0)), frame,
                 np.ones((48, 100, 120), bool), {"bowel", "colon"}, False, False, kidneys)
    assert calls == []  # a map with its own bowel gets no procedural loops, by the kidneys neither
