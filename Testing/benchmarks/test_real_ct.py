"""benchmarks/real_ct.py: the mask algebra on exact synthetic arrays, case discovery on the shared data, and
one end-to-end run on the small example CT."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

# benchmarks/ is not an installed package: load the script by path (it puts the repository on sys.path itself).
_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "real_ct.py"
_spec = importlib.util.spec_from_file_location("benchmarks_real_ct", _SCRIPT)
real_ct = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = real_ct  # dataclasses look their module up there
_spec.loader.exec_module(real_ct)

SPACING = (0.5, 2.0, 4.0)  # x, y, z mm: a voxel is 4 mm³ = 0.004 mL; anisotropic on purpose
ML = 0.004


def _scene():
    """(z, y, x) = (8, 8, 20). Reference kidneys: 3³ boxes at x 2-4 (right) and x 14-16 (left). Predicted: the
    right box, the left box's x 14-15 (18 voxels), and a lesion row at z=y=3 over x 6-12 (tumor 6-9, cyst 10-12)."""
    shape = (8, 8, 20)
    right, left = np.zeros(shape, bool), np.zeros(shape, bool)
    right[2:5, 2:5, 2:5] = True
    left[2:5, 2:5, 14:17] = True
    labels = np.zeros(shape, np.uint8)
    labels[right] = 1
    labels[2:5, 2:5, 14:16] = 1
    labels[3, 3, 6:10] = 2
    labels[3, 3, 10:13] = 3
    liver, spleen = np.zeros(shape, bool), np.zeros(shape, bool)
    liver[:, :, 10:13] = True   # holds lesion voxels x 10, 11, 12
    spleen[:, :, 6] = True      # holds lesion voxel x 6
    return labels, {"kidney_right": right, "kidney_left": left, "liver": liver, "spleen": spleen}


def test_outside_counts_voxels_not_mm():
    labels, refs = _scene()
    masses = labels >= 2
    # Distance (voxels) to the nearer kidney along the row: x6 2, x7 3, x8 4, x9 5, x10 4, x11 3, x12 2.
    # More than 3 voxels: x 8, 9, 10 (in mm along x, at 0.5 mm, none would be).
    assert real_ct.outside_ml(masses, refs["kidney_right"] | refs["kidney_left"], SPACING) == pytest.approx(3 * ML)
    assert real_ct.outside_ml(masses, np.zeros_like(masses), SPACING) == pytest.approx(7 * ML)


def test_in_organs_unions_the_organs_and_is_none_without_them():
    labels, refs = _scene()
    masses = labels >= 2
    assert real_ct.in_organs_ml(masses, [refs["liver"], refs["spleen"]], SPACING) == pytest.approx(4 * ML)
    assert real_ct.in_organs_ml(masses, [refs["liver"]], SPACING) == pytest.approx(3 * ML)
    assert real_ct.in_organs_ml(masses, [], SPACING) is None


def test_side_dice_assigns_voxels_to_the_nearer_kidney_in_mm():
    labels, refs = _scene()
    sides = {"right": refs["kidney_right"], "left": refs["kidney_left"]}
    # In mm the lesion's x 6-8 are nearer the right kidney, x 9 is a tie (goes left), x 10-12 are nearer the left.
    dice = real_ct.side_dice(labels > 0, sides, tuple(reversed(SPACING)))
    assert dice["right"] == pytest.approx(2 * 27 / (30 + 27))
    assert dice["left"] == pytest.approx(2 * 18 / (22 + 27))


def test_both_found_needs_overlap_with_each_kidney():
    labels, refs = _scene()
    sides = {"right": refs["kidney_right"], "left": refs["kidney_left"]}
    assert real_ct.both_found(labels > 0, sides)
    labels[labels == 1] = 0
    labels[refs["kidney_right"]] = 1  # the lesion row touches neither kidney, so the left one is now missed
    assert not real_ct.both_found(labels > 0, sides)


def test_case_metrics_rounds_the_exact_figures():
    labels, refs = _scene()
    m = real_ct.case_metrics(labels, refs, SPACING)
    assert m["kidney_dice"] == round(2 * 45 / (52 + 54), 4)
    assert (m["masses_ml"], m["outside_kidneys_ml"], m["in_liver_spleen_ml"]) == (0.0, 0.0, 0.0)  # < 0.05 mL
    assert m["both_found"] is True and m["hd95_mm"] > 0
    m = real_ct.case_metrics(labels, {k: refs[k] for k in ("kidney_right", "kidney_left")}, (10.0, 10.0, 10.0))
    assert (m["masses_ml"], m["outside_kidneys_ml"], m["in_liver_spleen_ml"]) == (7.0, 3.0, None)
    assert real_ct.case_metrics(np.zeros_like(labels), refs, SPACING)["hd95_mm"] is None  # NaN is not JSON
    # Kidney label inside the liver or spleen is organ tissue taken for kidney; lesions do not count there.
    assert real_ct.case_metrics(labels, refs, (10.0, 10.0, 10.0))["kidney_in_liver_spleen_ml"] == 0.0
    labels[0, 0, 11] = 1  # in the liver
    labels[7, 7, 6] = 1   # in the spleen
    assert real_ct.case_metrics(labels, refs, (10.0, 10.0, 10.0))["kidney_in_liver_spleen_ml"] == 2.0
    assert real_ct.case_metrics(labels, {k: refs[k] for k in ("kidney_right", "kidney_left")},
                                (10.0, 10.0, 10.0))["kidney_in_liver_spleen_ml"] is None


def test_masks_from_labels_merges_cysts_into_the_kidney():
    labels = np.array([2, 24, 3, 23, 5, 1, 7], np.uint8)
    classes = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "kidney_cyst_left": 23,
               "kidney_cyst_right": 24}
    masks = real_ct.masks_from_labels(labels, classes)
    assert masks["kidney_right"].tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert masks["kidney_left"].tolist() == [0, 0, 1, 1, 0, 0, 0]
    assert masks["liver"].tolist() == [0, 0, 0, 0, 1, 0, 0] and masks["spleen"].tolist() == [0, 0, 0, 0, 0, 1, 0]
    assert set(real_ct.masks_from_labels(labels, {"kidney_right": 2, "kidney_left": 3})) == {"kidney_right",
                                                                                             "kidney_left"}


def test_discover_cases_on_the_shared_data(shared_data):
    cases = {c.name: c for c in real_ct.discover_cases(shared_data)}
    assert list(cases)[:1] == ["example_ct"] and {"ircadb_1.1", "totalseg_s0009"} <= set(cases)
    assert set(cases["example_ct"].masks) == {"kidney_right", "kidney_left"}
    assert set(cases["ircadb_1.1"].masks) == {"kidney_right", "kidney_left", "liver", "spleen"}
    ts = cases["totalseg_s0009"]
    assert ts.masks == {} and ts.labels.name == "labels.nii.gz"
    assert real_ct.read_classes(ts.classes)["kidney_cyst_left"] == 23
    assert all(c.ct.is_file() for c in cases.values())


def test_discover_cases_skips_incomplete_folders(tmp_path):
    for name, files in {"a": ["ct.nii.gz", "kidney_left.nii.gz", "kidney_right.nii.gz"],
                        "b": ["ct.nii.gz", "kidney_left.nii.gz"], "c": ["kidney_left.nii.gz", "kidney_right.nii.gz"],
                        "d": ["ct.nii.gz", "labels.nii.gz", "classes.csv"]}.items():
        (tmp_path / "real_ct" / name).mkdir(parents=True)
        for f in files:
            (tmp_path / "real_ct" / name / f).write_bytes(b"")
    assert [c.name for c in real_ct.discover_cases(tmp_path)] == ["a", "d"]


def test_end_to_end_on_the_example_ct(shared_data, tmp_path, capsys):
    assert real_ct.main(["--cases", "example_ct", "-o", str(tmp_path), "--data", str(shared_data)]) == 0
    report = json.loads((tmp_path / "real_ct.json").read_text(encoding="utf-8"))
    (row,) = report["cases"]
    assert row["case"] == "example_ct" and row["phase"] == "unenhanced"
    assert all(0 <= row[k] <= 1 for k in ("kidney_dice", "dice_right", "dice_left"))
    assert math.isfinite(row["hd95_mm"]) and 0 <= row["outside_kidneys_ml"] <= row["masses_ml"]
    assert row["in_liver_spleen_ml"] is None and Path(row["qc_png"]).is_file()
    table = (tmp_path / "real_ct.md").read_text(encoding="utf-8")
    assert "| case | phase | kidney Dice |" in table and "| example_ct | unenhanced |" in table
    assert table.splitlines()[0] in capsys.readouterr().out
