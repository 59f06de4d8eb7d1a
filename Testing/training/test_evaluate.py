"""Evaluation metrics (vs MedPy 0.5.2 and analytic values, on anisotropic grids) and the evaluate CLI."""
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.image_io import read_labelmap, write_labelmap
from training import evaluate as ev
from training.metrics import (REGIONS, binary_metrics, max_diameter_mm, region_metrics, size_bucket,
                              surface_distances, surface_voxels, tumor_diameters_mm)

import medpy.metric.binary as medpy_binary  # independent reference implementation (test extra)

REPO = Path(__file__).resolve().parents[2]
SPACING_XYZ = (0.8, 0.8, 3.0)
SPACING_ZYX = (3.0, 0.8, 0.8)


def ellipsoid(shape, center, radii_mm, spacing_zyx):
    """Boolean (z, y, x) ellipsoid given in mm around a voxel-index centre."""
    grids = np.indices(shape, dtype=float)
    r = sum(((g - c) * s / rad) ** 2 for g, c, s, rad in zip(grids, center, spacing_zyx, radii_mm))
    return r <= 1.0


def shapes():
    """Pairs of (pred, ref) masks: deformed ellipsoids, several components, one touching the image edge."""
    rng = np.random.default_rng(1)
    shape = (14, 40, 44)
    ref = ellipsoid(shape, (7, 20, 22), (15, 10, 12), SPACING_ZYX)
    pred = ellipsoid(shape, (6.6, 21, 21.5), (13, 11, 12), SPACING_ZYX)
    yield pred, ref
    noisy = ref ^ (rng.random(shape) < 0.01)  # scattered false positives and holes: long distance tail
    yield noisy, ref
    two = ellipsoid(shape, (5, 10, 10), (9, 6, 6), SPACING_ZYX) | ellipsoid(shape, (9, 30, 34), (8, 5, 7), SPACING_ZYX)
    yield two, ref
    edge = np.zeros(shape, bool)
    edge[0:5, 0:12, 30:44] = True  # touches three image faces (they count as surface, as in MedPy)
    yield edge, two


@pytest.mark.parametrize("case", range(4))
def test_binary_metrics_match_medpy_on_anisotropic_grid(case):
    pred, ref = list(shapes())[case]
    got = binary_metrics(pred, ref, SPACING_ZYX)
    assert got["dice"] == pytest.approx(medpy_binary.dc(pred, ref), abs=1e-12)
    assert got["jaccard"] == pytest.approx(medpy_binary.jc(pred, ref), abs=1e-12)
    assert got["precision"] == pytest.approx(medpy_binary.precision(pred, ref), abs=1e-12)
    assert got["recall"] == pytest.approx(medpy_binary.recall(pred, ref), abs=1e-12)
    assert got["hd95_mm"] == pytest.approx(medpy_binary.hd95(pred, ref, voxelspacing=SPACING_ZYX), abs=1e-9)
    assert got["asd_mm"] == pytest.approx(medpy_binary.assd(pred, ref, voxelspacing=SPACING_ZYX), abs=1e-9)
    # the directional distance sets themselves, too (cropping to the objects' box changes nothing)
    d_pred, d_ref = surface_distances(pred, ref, SPACING_ZYX)
    assert np.mean(d_pred) == pytest.approx(medpy_binary.asd(pred, ref, voxelspacing=SPACING_ZYX), abs=1e-9)
    assert np.mean(d_ref) == pytest.approx(medpy_binary.asd(ref, pred, voxelspacing=SPACING_ZYX), abs=1e-9)
    assert len(d_pred) == surface_voxels(pred).sum() and len(d_ref) == surface_voxels(ref).sum()


@pytest.mark.parametrize("axis, spacing", [(0, 3.0), (1, 0.9), (2, 0.7)])
def test_cube_shifted_one_voxel(axis, spacing):
    """4^3 cube vs the same cube one voxel further along ``axis`` on spacing (z, y, x) = (3.0, 0.9, 0.7).

    Each surface has 56 voxels. Per direction: the 16 voxels of the trailing face are one spacing away,
    the 2x2 centre of the opposite face is one step from the other cube's surface (its rim in-plane or
    its face along the axis: the smallest spacing), the other 36 lie on the other surface (0).
    HD95 (pooled, 32 of 112 at one spacing) = the spacing; ASD = (32 s + 8 s_min) / 112.
    """
    sp = (3.0, 0.9, 0.7)
    a = np.zeros((10, 10, 10), bool)
    a[3:7, 3:7, 3:7] = True
    b = np.roll(a, 1, axis=axis)
    inplane = min(sp)
    got = binary_metrics(b, a, sp, tolerance_mm=1.0)
    assert got["hd95_mm"] == pytest.approx(spacing, abs=1e-12)
    assert got["asd_mm"] == pytest.approx((32 * spacing + 8 * inplane) / 112, abs=1e-12)
    assert got["dice"] == pytest.approx(2 * 48 / 128)
    assert got["jaccard"] == pytest.approx(48 / 80)
    # surface Dice counts the voxels within tolerance: the 32 one-spacing ones only when spacing <= tau
    within = 112 - 32 * (spacing > 1.0) - 8 * (inplane > 1.0)
    assert got["surface_dice"] == pytest.approx(within / 112)
    assert binary_metrics(b, a, sp, tolerance_mm=0.5)["surface_dice"] == pytest.approx(72 / 112)
    assert binary_metrics(b, a, sp, tolerance_mm=3.0)["surface_dice"] == 1.0


def test_concentric_spheres_known_distance():
    """Spheres of radius 12 and 16 mm, same centre, on (z, y, x) spacing (1.5, 0.5, 0.5): surfaces are 4 mm
    apart everywhere, up to the digitisation (at most about half a voxel diagonal per surface)."""
    sp = (1.5, 0.5, 0.5)
    shape = (30, 80, 80)
    inner = ellipsoid(shape, (14.5, 39.5, 39.5), (12, 12, 12), sp)
    outer = ellipsoid(shape, (14.5, 39.5, 39.5), (16, 16, 16), sp)
    got = binary_metrics(inner, outer, sp, tolerance_mm=1.0)
    assert got["asd_mm"] == pytest.approx(4.0, abs=0.6)
    assert 3.5 <= got["hd95_mm"] <= 4.0 + 0.8
    assert got["surface_dice"] < 0.05
    assert got["dice"] == pytest.approx(2 * 12 ** 3 / (12 ** 3 + 16 ** 3), abs=0.02)  # volumes scale as r^3
    assert got["precision"] == 1.0  # inner lies inside outer
    assert got["hd95_mm"] == pytest.approx(medpy_binary.hd95(inner, outer, voxelspacing=sp), abs=1e-9)


def test_identical_masks():
    _, ref = next(shapes())
    got = binary_metrics(ref, ref, SPACING_ZYX)
    assert got == {"dice": 1.0, "jaccard": 1.0, "precision": 1.0, "recall": 1.0, "asd_mm": 0.0, "hd95_mm": 0.0,
                   "surface_dice": 1.0}


def test_empty_mask_conventions():
    empty = np.zeros((5, 6, 7), bool)
    full = empty.copy()
    full[1:4, 2:5, 2:5] = True
    both = binary_metrics(empty, empty, SPACING_ZYX)
    assert both == {"dice": 1.0, "jaccard": 1.0, "precision": 1.0, "recall": 1.0, "asd_mm": 0.0, "hd95_mm": 0.0,
                    "surface_dice": 1.0}
    missed = binary_metrics(empty, full, SPACING_ZYX)  # prediction empty
    assert (missed["dice"], missed["jaccard"], missed["recall"], missed["surface_dice"]) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(missed["precision"]) and math.isnan(missed["hd95_mm"]) and math.isnan(missed["asd_mm"])
    false_pos = binary_metrics(full, empty, SPACING_ZYX)  # reference empty
    assert (false_pos["dice"], false_pos["precision"], false_pos["surface_dice"]) == (0.0, 0.0, 0.0)
    assert math.isnan(false_pos["recall"]) and math.isnan(false_pos["hd95_mm"])
    with pytest.raises(ValueError):
        surface_distances(empty, full, SPACING_ZYX)


def test_region_metrics_use_kits_regions():
    ref = np.zeros((6, 12, 12), np.uint8)
    ref[1:5, 2:10, 2:10] = 1
    ref[2:4, 4:7, 4:7] = 2
    pred = ref.copy()
    pred[pred == 2] = 3  # tumor called cyst: right for kidney_and_masses and masses, wrong for tumor and cyst
    got = region_metrics(pred, ref, SPACING_ZYX)
    assert set(got) == set(REGIONS) == {"kidney_and_masses", "masses", "tumor", "kidney", "cyst"}
    assert got["kidney_and_masses"]["dice"] == 1.0 and got["masses"]["dice"] == 1.0
    assert got["kidney"]["dice"] == 1.0
    assert got["tumor"]["dice"] == 0.0 and got["tumor"]["empty"] == "prediction"
    assert got["cyst"]["dice"] == 0.0 and got["cyst"]["empty"] == "reference"
    assert got["tumor"]["tolerance_mm"] == 1.150 and got["kidney_and_masses"]["tolerance_mm"] == 1.033
    assert got["masses"]["tolerance_mm"] == 1.133
    assert region_metrics(pred, ref, SPACING_ZYX, {"tumor": 2.0})["tumor"]["tolerance_mm"] == 2.0


def test_tumor_diameter_and_size_buckets():
    line = np.zeros((3, 3, 30), bool)
    line[1, 1, 5:25] = True  # 20 voxels in a row: 19 centre-to-centre steps
    assert max_diameter_mm(line, (3.0, 0.8, 0.7)) == pytest.approx(19 * 0.7)
    box = np.ones((4, 5, 6), bool)  # space diagonal of the voxel centres
    assert max_diameter_mm(box, (3.0, 0.8, 0.7)) == pytest.approx(math.sqrt(9.0 ** 2 + 3.2 ** 2 + 3.5 ** 2))
    sp = (1.0, 0.5, 0.5)
    big = ellipsoid((50, 120, 120), (25, 60, 60), (22, 22, 22), sp)  # > 2000 surface voxels: hull path
    assert max_diameter_mm(big, sp) == pytest.approx(44.0, abs=1.0)
    labels = np.zeros((50, 120, 120), np.uint8)
    labels[big] = 2
    labels[2:5, 2:10, 2:10] = 2  # a second, small component
    d = tumor_diameters_mm(labels, sp)
    assert len(d) == 2 and d[0] == pytest.approx(44.0, abs=1.0) and d[1] < 10
    assert tumor_diameters_mm(np.zeros((3, 3, 3), np.uint8), sp) == ()
    assert [size_bucket(x) for x in (0.0, 19.9, 20.0, 39.9, 40.0, 69.9, 70.0, 150.0)] == [
        "<2cm", "<2cm", "2-4cm", "2-4cm", "4-7cm", "4-7cm", ">=7cm", ">=7cm"]


# -- command line -------------------------------------------------------------------------------------------
def make_labels(synth):
    return synth.labels((16, 40, 36))


def write_cases(tmp_path, synth):
    """pred/: case_00001 (perfect), case_00002 (shifted one slice along z), case_00099 (unpaired);
    ref/: case_00001.nii.gz (flat) and case_00002/segmentation.nii.gz (KiTS layout)."""
    labels = make_labels(synth)
    geom = Geometry(SPACING_XYZ, (10.0, -5.0, 3.0))
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    (ref_dir / "case_00002").mkdir(parents=True)
    pred_dir.mkdir()
    shifted = np.zeros_like(labels)
    shifted[1:] = labels[:-1]
    write_labelmap(labels, geom, ref_dir / "case_00001.nii.gz")
    write_labelmap(labels, geom, ref_dir / "case_00002" / "segmentation.nii.gz")
    write_labelmap(labels, geom, pred_dir / "case_00001.nii.gz")
    write_labelmap(shifted, geom, pred_dir / "case_00002.nii.gz")
    write_labelmap(labels, geom, pred_dir / "case_00099.nii.gz")
    (pred_dir / "notes.txt").write_text("not an image")
    return pred_dir, ref_dir, labels, shifted


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_end_to_end(tmp_path, synth, capsys):
    pred_dir, ref_dir, labels, shifted = write_cases(tmp_path, synth)
    out = tmp_path / "out"
    assert ev.main([str(pred_dir), str(ref_dir), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "case_00099" in err and "without a reference" in err
    rows = read_csv(out / "metrics.csv")
    assert list(rows[0]) == list(ev.CSV_COLUMNS)
    assert len(rows) == 2 * len(REGIONS)
    by = {(r["case"], r["region"]): r for r in rows}
    for region in REGIONS:
        perfect = by[("case_00001", region)]
        assert float(perfect["dice"]) == 1.0 and float(perfect["hd95_mm"]) == 0.0
    for region, labs in REGIONS.items():
        r = by[("case_00002", region)]
        p, q = np.isin(shifted, labs), np.isin(labels, labs)
        assert float(r["dice"]) == pytest.approx(medpy_binary.dc(p, q), abs=1e-9)
        assert float(r["hd95_mm"]) == pytest.approx(medpy_binary.hd95(p, q, voxelspacing=SPACING_ZYX), abs=1e-6)
        assert float(r["asd_mm"]) == pytest.approx(medpy_binary.assd(p, q, voxelspacing=SPACING_ZYX), abs=1e-6)
        assert r["empty"] == "none" and r["tumor_size_bucket"] == "2-4cm"
        assert float(r["ref_tumor_diameter_mm"]) == pytest.approx(tumor_diameters_mm(labels, SPACING_ZYX)[0])
    # the whole kidney_and_masses region moved one slice: its HD95 is one z spacing
    assert float(by[("case_00002", "kidney_and_masses")]["hd95_mm"]) == pytest.approx(3.0)
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "Mean per region" in md and "Median per region" in md and "| kidney_and_masses | 2 |" in md
    assert "Tumor Dice by reference tumor size" in md and "| 2-4cm | 2 |" in md
    assert "case_00099" in md
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_subprocess_and_tolerance(tmp_path, synth):
    pred_dir, ref_dir, _, _ = write_cases(tmp_path, synth)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "KidneyTumorSeg"), str(REPO)]))
    res = subprocess.run([sys.executable, "-m", "training.evaluate", str(pred_dir), str(ref_dir), "-o", str(out),
                          "--tolerance-mm", "3.0"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = read_csv(out / "metrics.csv")
    assert {float(r["tolerance_mm"]) for r in rows} == {3.0}
    # shifted by one 3 mm slice: every surface voxel is within 3 mm
    assert all(float(r["surface_dice"]) == 1.0 for r in rows)


def test_parse_tolerances():
    assert ev.parse_tolerances(None)["tumor"] == 1.150
    assert set(ev.parse_tolerances(["2"]).values()) == {2.0}
    t = ev.parse_tolerances(["tumor=1.5", "cyst=0.5"])
    assert (t["tumor"], t["cyst"], t["kidney"]) == (1.5, 0.5, 1.033)
    for bad in (["liver=1"], ["abc"], ["-1"]):
        with pytest.raises(InputError):
            ev.parse_tolerances(bad)


def test_nothing_paired_fails(tmp_path, synth, capsys):
    pred_dir, _, _, _ = write_cases(tmp_path, synth)
    empty = tmp_path / "empty_ref"
    empty.mkdir()
    assert ev.main([str(pred_dir), str(empty), "-o", str(tmp_path / "o")]) == 1
    assert "no prediction" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.csv").exists()
    assert ev.main([str(tmp_path / "missing"), str(empty), "-o", str(tmp_path / "o")]) == 1


def test_pairing_layouts_and_duplicates(tmp_path, synth):
    pred_dir, ref_dir, _, _ = write_cases(tmp_path, synth)
    pairs, only_pred, only_ref = ev.pair_cases(pred_dir, ref_dir)
    assert [c for c, _, _ in pairs] == ["case_00001", "case_00002"]
    assert pairs[1][2].name == "segmentation.nii.gz"
    assert only_pred == ["case_00099"] and only_ref == []
    write_labelmap(make_labels(synth), Geometry(SPACING_XYZ), pred_dir / "case_00001.nrrd")
    with pytest.raises(InputError, match="case_00001.*twice"):
        ev.pair_cases(pred_dir, ref_dir)


def test_geometry_mismatch_names_the_case(tmp_path, synth, capsys):
    pred_dir, ref_dir, labels, _ = write_cases(tmp_path, synth)
    write_labelmap(labels, Geometry((0.8, 0.8, 2.5), (10.0, -5.0, 3.0)), pred_dir / "case_00002.nii.gz",
                   overwrite=True)
    with pytest.raises(InputError, match="case_00002.*different grids"):
        ev.evaluate_case("case_00002", pred_dir / "case_00002.nii.gz", ref_dir / "case_00002" / "segmentation.nii.gz")
    assert ev.main([str(pred_dir), str(ref_dir), "-o", str(tmp_path / "o")]) == 1
    assert "case_00002" in capsys.readouterr().err
    # a different size is a mismatch, too
    write_labelmap(labels[:-1], Geometry(SPACING_XYZ, (10.0, -5.0, 3.0)), pred_dir / "case_00002.nii.gz",
                   overwrite=True)
    with pytest.raises(InputError, match="case_00002"):
        ev.evaluate_case("case_00002", pred_dir / "case_00002.nii.gz", ref_dir / "case_00002" / "segmentation.nii.gz")


# -- real KiTS23 label maps ------------------------------------------------------------------------------------
def test_real_kits23_case(shared_data):
    path = shared_data / "kits23" / "labels" / "case_00004.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    ref = read_labelmap(path)
    spacing_zyx = tuple(reversed(ref.geometry.spacing))  # anisotropic: (0.977, 0.977, 4.0) mm
    rows = {r["region"]: r for r in ev.evaluate_arrays(ref.array, ref.array, ref.geometry.spacing, "case_00004")}
    for region in ("kidney_and_masses", "masses", "tumor", "kidney"):
        assert rows[region]["dice"] == 1.0 and rows[region]["hd95_mm"] == 0.0 and rows[region]["empty"] == "none"
    assert rows["cyst"]["empty"] == "both"
    assert rows["tumor"]["tumor_size_bucket"] in ("2-4cm", "4-7cm", ">=7cm")
    # shifted by one voxel along the 4 mm axis; MedPy on the objects' bounding box (it is too slow on the
    # full 16-million-voxel grid, and the crop keeps a 2-voxel margin so it changes no distance)
    shifted = np.zeros_like(ref.array)
    shifted[:, :, 1:] = ref.array[:, :, :-1]
    rows = {r["region"]: r for r in ev.evaluate_arrays(shifted, ref.array, ref.geometry.spacing, "case_00004")}
    nz = np.argwhere(ref.array > 0)
    box = tuple(slice(max(lo - 2, 0), hi + 3) for lo, hi in zip(nz.min(0), nz.max(0)))
    for region in ("kidney_and_masses", "tumor"):
        p, q = np.isin(shifted[box], REGIONS[region]), np.isin(ref.array[box], REGIONS[region])
        assert rows[region]["dice"] == pytest.approx(medpy_binary.dc(p, q), abs=1e-12)
        assert rows[region]["hd95_mm"] == pytest.approx(medpy_binary.hd95(p, q, voxelspacing=spacing_zyx), abs=1e-9)
        assert rows[region]["asd_mm"] == pytest.approx(medpy_binary.assd(p, q, voxelspacing=spacing_zyx), abs=1e-9)
    assert rows["kidney_and_masses"]["hd95_mm"] == pytest.approx(4.0)
