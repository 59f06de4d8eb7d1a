"""benchmarks/model_card.py's breakdown of the held-out synthetic figures by appearance."""
import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

# benchmarks/ is not an installed package: load the script by path (it puts the repository on sys.path itself).
_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "model_card.py"
_spec = importlib.util.spec_from_file_location("benchmarks_model_card", _SCRIPT)
mc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mc
_spec.loader.exec_module(mc)
appearance_markdown, appearance_of, dice_by_appearance = mc.appearance_markdown, mc.appearance_of, mc.dice_by_appearance

COLUMNS = ["case", "region", "labels", "empty", "dice"]


def test_dice_by_appearance_groups_cases_as_the_generator_painted_them(tmp_path):
    cases = {"a": {"phase": "portal"}, "b": {"phase": "arterial"}, "c": {"phase": "unenhanced"},
             "d": {"phase": "unenhanced", "random_intensities": True}}
    (tmp_path / "synthetic.json").write_text(json.dumps({"cases": cases}))
    rows = []
    for case, tumor, cyst, empty in (("a", 0.8, 0.5, "none"), ("b", 0.4, 0.0, "reference"),
                                     ("c", 0.1, 1.0, "both"), ("d", 0.0, 0.2, "none")):
        rows += [dict(case=case, region="kidney_and_masses", labels="1+2+3", empty="none", dice=0.9),
                 dict(case=case, region="tumor", labels="2", empty="none", dice=tumor),
                 dict(case=case, region="cyst", labels="3", empty=empty, dice=cyst)]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    table = dice_by_appearance(tmp_path / "metrics.csv", tmp_path / "synthetic.json")
    assert list(table) == ["contrast-enhanced", "unenhanced", "random intensities"]
    enhanced = table["contrast-enhanced"]
    assert enhanced["n"] == 2 and enhanced["tumor"] == {"n": 2, "mean": pytest.approx(0.6)}
    assert enhanced["cyst_with_reference"] == {"n": 1, "mean": 0.5}  # b has no reference cyst
    assert table["unenhanced"]["cyst_with_reference"] == {"n": 0, "mean": None}  # both empty is not a cyst
    assert table["random intensities"]["tumor"]["mean"] == 0.0 and appearance_of(cases["d"]) == "random intensities"
    assert appearance_of({}) == appearance_of({"kits_case": "case_00001"}) == "unknown"  # older generators
    text = appearance_markdown(table)
    assert "| contrast-enhanced | 2 | 0.900 (n=2) | 0.600 (n=2) | 0.500 (n=1) |" in text and "| n/a |" in text
    with_organs = dice_by_appearance(tmp_path / "metrics.csv", tmp_path / "synthetic.json",
                                     {"a": 30.0, "b": 2.0, "c": 0.5, "d": None})
    assert with_organs["contrast-enhanced"]["in_liver_spleen_ml"] == {"n": 2, "mean_ml": 16.0, "max_ml": 30.0,
                                                                      "cases_over_10_ml": 1}
    assert with_organs["random intensities"]["in_liver_spleen_ml"] is None
    assert "| 16.0 (n=2; max 30.0; 1 > 10 mL) |" in appearance_markdown(with_organs)


def test_the_foreground_inside_the_anatomy_maps_liver_and_spleen_is_measured_in_ml(tmp_path):
    from KidneyTumorSegLib.geometry import Geometry
    from KidneyTumorSegLib.image_io import write_labelmap
    g = Geometry(spacing=(2.0, 2.0, 2.5), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    anatomy, pred = np.zeros((10, 12, 14), np.uint8), np.zeros((10, 12, 14), np.uint8)
    anatomy[:5, :, :4] = 7   # liver (vocabulary below): 10 mm3 voxels
    anatomy[:5, :, 10:] = 3  # spleen
    anatomy[5:] = 1          # another organ: not counted
    pred[2, 2, 2:5] = 1      # two voxels of kidney in the liver, one beside it
    pred[3, 3, 11] = 3       # a cyst in the spleen
    pred[7, 7, 7] = 2        # a tumor in the other organ
    case = tmp_path / "case_00001"
    case.mkdir()
    write_labelmap(anatomy, g, case / "anatomy.nii.gz")
    write_labelmap(pred, g, tmp_path / "pred.nii.gz")
    (tmp_path / "anatomy_labels.json").write_text(json.dumps({"liver": 7, "spleen": 3, "bowel": 1}))
    from KidneyTumorSegLib.image_io import read_labelmap
    ct = read_labelmap(tmp_path / "pred.nii.gz")  # only its grid matters here
    pred = read_labelmap(tmp_path / "pred.nii.gz")
    organs = mc.liver_spleen(case / "imaging.nii.gz", ct)
    assert sorted(organs) == ["liver", "spleen"] and organs["liver"].sum() == 5 * 12 * 4
    assert mc.in_liver_spleen_ml(pred, organs, ct) == pytest.approx(3 * 10.0 / 1000)
    assert mc.in_liver_spleen_ml(pred, {"liver": organs["liver"]}, ct) == pytest.approx(2 * 10.0 / 1000)
    assert mc.liver_spleen(tmp_path / "elsewhere" / "imaging.nii.gz", ct) is None  # no map
    assert mc.in_liver_spleen_ml(pred, None, ct) is None
    # a prediction off the CT's grid (same shape, other origin; or another shape) is left out, not misread
    off = Geometry(spacing=g.spacing, origin=(0.0, 4.0, 0.0), direction=g.direction)
    write_labelmap(pred.array, off, tmp_path / "off.nii.gz")
    assert mc.in_liver_spleen_ml(read_labelmap(tmp_path / "off.nii.gz"), organs, ct) is None
    write_labelmap(pred.array[:-1], g, tmp_path / "small.nii.gz")
    assert mc.in_liver_spleen_ml(read_labelmap(tmp_path / "small.nii.gz"), organs, ct) is None
    # a map on another grid (same shape, other origin) is left out, not misread
    moved = Geometry(spacing=g.spacing, origin=(5.0, 0.0, 0.0), direction=g.direction)
    write_labelmap(anatomy, moved, case / "anatomy.nii.gz", overwrite=True)
    assert mc.liver_spleen(case / "imaging.nii.gz", ct) is None
    write_labelmap(anatomy, g, case / "anatomy.nii.gz", overwrite=True)
    (tmp_path / "anatomy_labels.json").write_text(json.dumps({"bowel": 1}))  # nothing to measure
    assert mc.liver_spleen(case / "imaging.nii.gz", ct) == {}
    assert mc.in_liver_spleen_ml(pred, {}, ct) is None
    summary = mc.organ_summary({"a": 12.0, "b": 3.0, "c": None})
    assert summary == {"n": 2, "mean_ml": 7.5, "max_ml": 12.0, "cases_over_10_ml": 1}
    assert mc.organ_summary({"c": None}) is None


def test_organ_hu_reads_the_kidney_liver_and_spleen_means_of_the_ct(tmp_path):
    from KidneyTumorSegLib.geometry import Geometry
    from KidneyTumorSegLib.image_io import write_image, write_labelmap
    g = Geometry(spacing=(2.0, 2.0, 2.5), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    ct = np.full((8, 8, 10), -100, np.int16)
    ct[7] = -1000  # air, so that the CT check takes it for HU
    anatomy, labels = np.zeros(ct.shape, np.uint8), np.zeros(ct.shape, np.uint8)
    ct[:3, :, :3], anatomy[:3, :, :3] = 110, 7  # liver
    ct[:3, :, 7:], anatomy[:3, :, 7:] = 130, 3  # spleen
    ct[4, 4, 4:6], labels[4, 4, 4:6] = (150, 170), 1  # kidney: mean 160
    ct[5, 5, 5], labels[5, 5, 5] = 40, 2  # a tumor is not kidney
    case = tmp_path / "case_00001"
    case.mkdir()
    write_image(ct, g, case / "imaging.nii.gz")
    write_labelmap(labels, g, case / "segmentation.nii.gz")
    write_labelmap(anatomy, g, case / "anatomy.nii.gz")
    (tmp_path / "anatomy_labels.json").write_text(json.dumps({"liver": 7, "spleen": 3}))
    from KidneyTumorSegLib.image_io import read_image
    image = read_image(case / "imaging.nii.gz")
    kidney = labels == 1

    def hu():
        return mc.organ_hu(image, kidney, mc.liver_spleen(case / "imaging.nii.gz", image))
    assert hu() == {"kidney_hu": pytest.approx(160.0), "liver_hu": pytest.approx(110.0),
                    "spleen_hu": pytest.approx(130.0)}
    (tmp_path / "anatomy_labels.json").write_text(json.dumps({"liver": 7}))  # no spleen in the vocabulary
    assert hu()["spleen_hu"] is None and hu()["liver_hu"] == pytest.approx(110.0)
    moved = Geometry(spacing=g.spacing, origin=(5.0, 0.0, 0.0), direction=g.direction)
    write_labelmap(anatomy, moved, case / "anatomy.nii.gz", overwrite=True)  # another grid: not read
    assert hu() == {"kidney_hu": pytest.approx(160.0), "liver_hu": None, "spleen_hu": None}


def test_synthetic_measures_each_case_against_its_own_anatomy_map(tmp_path, model_dir):
    """synthetic() wires the shared liver/spleen reader into organs.csv and the per-case mL: the mL is exactly the
    written prediction inside the map's liver and spleen, and the HU columns are the CT's means there."""
    from KidneyTumorSegLib.geometry import Geometry
    from KidneyTumorSegLib.image_io import read_labelmap, write_image, write_labelmap
    from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade
    g = Geometry(spacing=(3.0, 3.0, 3.0), origin=(-40.0, 10.0, 5.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    ct = np.full((40, 40, 40), -1000, np.int16)
    anatomy, labels = np.zeros(ct.shape, np.uint8), np.zeros(ct.shape, np.uint8)
    ct[5:35, 5:35, 5:35] = 0
    ct[8:18, 8:30, 8:30], anatomy[8:18, 8:30, 8:30] = 90, 7  # liver
    ct[22:30, 8:20, 8:20], anatomy[22:30, 8:20, 8:20] = 120, 3  # spleen
    ct[22:30, 22:30, 22:30], labels[22:30, 22:30, 22:30] = 180, 1  # kidney
    data = tmp_path / "data"
    case = data / "case_00003"
    case.mkdir(parents=True)
    write_image(ct, g, case / "imaging.nii.gz")
    write_labelmap(labels, g, case / "segmentation.nii.gz")
    write_labelmap(anatomy, g, case / "anatomy.nii.gz")
    (data / "anatomy_labels.json").write_text(json.dumps({"liver": 7, "spleen": 3}))
    options = SegmentOptions(model=str(model_dir), device="cpu", overwrite=True)
    _, organs = mc.synthetic(load_cascade(options), options, data, tmp_path / "work", tmp_path / "out")
    pred = read_labelmap(tmp_path / "work" / "synthetic" / "case_00003" / "case_00003.nii.gz")  # written
    expected = np.count_nonzero((pred.array > 0) & np.isin(anatomy, [7, 3])) * 27.0 / 1000.0
    assert expected > 0 and organs == {"case_00003": pytest.approx(expected)}  # random nets paint the organs
    with open(tmp_path / "out" / "synthetic" / "organs.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["in_liver_spleen_ml"]) == pytest.approx(expected)
    assert [float(row[k]) for k in ("kidney_hu", "liver_hu", "spleen_hu")] == pytest.approx([180.0, 90.0, 120.0])
