"""Dataset discovery (KiTS19/21/23, nnU-Net), label mapping, per-stage cache and splits on tiny fake data."""
import json
import shutil

import numpy as np
import pytest

from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.image_io import write_image
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.preprocessing import PreprocessingConfig
from training.datasets import (DatasetError, HeldOutError, detect_layout, discover, index_entries, load_entry,
                               make_splits, nnunet_label_mapping, preprocess_dataset)
from training.datasets.preprocess import main as preprocess_main

SPACING = (2.0, 2.0, 3.0)  # x, y, z mm
SHAPE = (20, 40, 80)       # z, y, x: 60 x 80 x 160 mm
# Oblique-free RAS-like direction (as KiTS/NIfTI often are) so reorientation to LPS is exercised.
GEOM = Geometry(SPACING, (10.0, -5.0, 3.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))


def fake_labels(horseshoe=False, values=(1, 2, 3)):
    """Two kidney ellipsoids (x centres 40 and 120 mm) with a tumor in one and a cyst in the other."""
    z, y, x = np.indices(SHAPE, dtype=float)
    z, y, x = z * 3, y * 2, x * 2
    lab = np.zeros(SHAPE, np.uint8)
    for cx in (40.0, 120.0):
        lab[((x - cx) / 10) ** 2 + ((y - 40) / 10) ** 2 + ((z - 30) / 15) ** 2 <= 1] = values[0]
    lab[((x - 44) / 4) ** 2 + ((y - 40) / 4) ** 2 + ((z - 30) / 6) ** 2 <= 1] = values[1]
    if len(values) > 2:
        lab[((x - 118) / 4) ** 2 + ((y - 40) / 4) ** 2 + ((z - 30) / 6) ** 2 <= 1] = values[2]
    if horseshoe:
        lab[(abs(y - 40) < 4) & (abs(z - 30) < 5) & (x > 40) & (x < 120)] = values[0]
    return lab


def fake_ct(lab, seed=0):
    rng = np.random.default_rng(seed)
    ct = np.full(SHAPE, -1000.0, np.float32)
    ct[:, 4:-4, 4:-4] = -80.0
    ct[lab > 0] = 150.0
    return (ct + rng.normal(0, 5, SHAPE)).astype(np.int16)


def write_case(folder, image_name, label_name, lab, geom=GEOM, label_geom=None):
    folder.mkdir(parents=True, exist_ok=True)
    if image_name:
        write_image(fake_ct(lab), geom, folder / image_name)
    if label_name:
        write_image(lab, label_geom or geom, folder / label_name)


def kits(tmp_path, layout, n=2, **kw):
    root = tmp_path / layout
    label_name = "aggregated_MAJ_seg.nii.gz" if layout == "kits21" else "segmentation.nii.gz"
    values = (1, 2) if layout == "kits19" else (1, 2, 3)
    for i in range(n):
        write_case(root / f"case_{i:05d}", "imaging.nii.gz", label_name, fake_labels(values=values, **kw))
    if layout == "kits19":
        (root / "kits.json").write_text("[]")
    return root


def nnunet(tmp_path, labels, values=(1, 2, 3)):
    root = tmp_path / "Dataset220_KiTS"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name in ("kid_001", "kid_002"):
        lab = fake_labels(values=values)
        write_image(fake_ct(lab), GEOM, root / "imagesTr" / f"{name}_0000.nii.gz")
        write_image(lab, GEOM, root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz",
                                                   "channel_names": {"0": "CT"}}))
    return root


# -- discovery and label mapping ----------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["kits19", "kits21", "kits23"])
def test_discover_kits_layouts(tmp_path, layout):
    root = kits(tmp_path, layout)
    assert detect_layout(root) == layout
    cases = discover(root)
    assert [c.case_id for c in cases] == ["case_00000", "case_00001"]
    assert all(c.layout == layout for c in cases)
    if layout == "kits21":
        assert cases[0].label_path.name == "aggregated_MAJ_seg.nii.gz"
    m = cases[0].mapping
    assert m[1] == Label.KIDNEY and m[2] == Label.TUMOR
    assert (3 in m) == (layout != "kits19")


def test_kits19_refuses_label_3_naming_the_case(tmp_path):
    root = kits(tmp_path, "kits19", n=1)
    write_image(fake_labels(values=(1, 2, 3)), GEOM, root / "case_00000" / "segmentation.nii.gz", overwrite=True)
    with pytest.raises(DatasetError, match="case_00000.*values \\[3\\]"):
        preprocess_dataset(discover(root), 1, PreprocessingConfig((4, 4, 4), mean=0, std=1), tmp_path / "c")


def test_nnunet_region_based_kits23_labels(tmp_path):
    # The nnU-Net KiTS23 dataset.json: regions kidney [1,2,3], masses [2,3], tumor 2 -> 3 is the cyst.
    root = nnunet(tmp_path, {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2})
    cases = discover(root)
    assert detect_layout(root) == "nnunet" and [c.case_id for c in cases] == ["kid_001", "kid_002"]
    assert cases[0].mapping == {0: Label.BACKGROUND, 1: Label.KIDNEY, 2: Label.TUMOR, 3: Label.CYST}


def test_nnunet_name_mappings():
    assert dict(nnunet_label_mapping({"background": 0, "Kidney": 2, "Tumour": 1, "renal cyst": 3})) == \
        {0: Label.BACKGROUND, 2: Label.KIDNEY, 1: Label.TUMOR, 3: Label.CYST}
    assert dict(nnunet_label_mapping({"0": "background", "1": "kidney", "2": "masses"})) == \
        {0: Label.BACKGROUND, 1: Label.KIDNEY, 2: Label.TUMOR}  # v1 form; masses without tumor = tumor
    with pytest.raises(DatasetError, match="'liver' is unknown"):
        nnunet_label_mapping({"background": 0, "kidney": 1, "liver": 2})


def test_nnunet_labels_are_remapped_in_the_cache(tmp_path):
    root = nnunet(tmp_path, {"background": 0, "kidney": 3, "tumor": 1, "cyst": 2}, values=(3, 1, 2))
    config = PreprocessingConfig((2, 2, 3), mean=0, std=1, box_min_kidney_mm3=100)
    index = preprocess_dataset(discover(root), 2, config, tmp_path / "c", label_kind="nearest")
    counts = [e["class_voxels"] for e in index_entries(index)]
    assert sum(c["1"] for c in counts) > sum(c["2"] for c in counts) > 0  # file's 3 (kidney) is our 1


def test_missing_and_mismatched_files_name_the_case(tmp_path):
    root = kits(tmp_path, "kits23", n=1)
    write_case(root / "case_00007", "imaging.nii.gz", None, fake_labels())
    with pytest.raises(DatasetError, match="case_00007: label map .* is missing"):
        discover(root)
    assert [c.case_id for c in discover(root, skip_incomplete=True)] == ["case_00000"]
    shutil.rmtree(root / "case_00007")
    write_case(root / "case_00008", None, "segmentation.nii.gz", fake_labels())
    with pytest.raises(DatasetError, match="case_00008: image .* is missing"):
        discover(root)
    shutil.rmtree(root / "case_00008")
    shifted = Geometry(SPACING, (10.0, -5.0, 9.0), GEOM.direction)
    write_case(root / "case_00009", "imaging.nii.gz", "segmentation.nii.gz", fake_labels(), label_geom=shifted)
    with pytest.raises(DatasetError, match="case_00009: image .* different geometry"):
        preprocess_dataset(discover(root), 1, PreprocessingConfig((4, 4, 4), mean=0, std=1), tmp_path / "c")


def test_held_out_example_ct_is_refused(tmp_path, shared_data):
    root = kits(tmp_path, "kits23", n=1)
    d = root / "case_00005"
    d.mkdir()
    shutil.copy(shared_data / "ct" / "example_ct.nii.gz", d / "imaging.nii.gz")  # renamed copy: checksum
    shutil.copy(shared_data / "ct" / "example_ct_kidney_left.nii.gz", d / "segmentation.nii.gz")
    with pytest.raises(HeldOutError, match="case_00005.*held-out"):
        discover(root)


# -- preprocessing cache ------------------------------------------------------------------------------
def test_stage1_cache(tmp_path):
    root = kits(tmp_path, "kits23")
    cache = tmp_path / "s1"
    index = preprocess_dataset(discover(root), 1, None, cache)  # default 4 mm, stats from the foreground
    assert index["stage"] == 1 and index["config"]["target_spacing"] == [4.0, 4.0, 4.0]
    cfg = PreprocessingConfig.from_dict(index["config"])  # expressible as the checkpoint's config
    assert cfg.mean == pytest.approx(index["normalization"]["mean"]) and 100 < cfg.mean < 200
    entries = index_entries(index)
    assert [e["file"] for e in entries] == ["case_00000.npz", "case_00001.npz"]
    data = load_entry(cache, entries[0])
    assert data["image"].dtype == np.float16 and data["labels"].dtype == np.uint8
    assert set(np.unique(data["labels"])) == {0, 1}  # kidney vs background
    assert np.allclose(data["spacing"], 4.0) and str(data["case_id"]) == "case_00000"
    assert data["image"].shape == (15, 20, 40)  # 60 x 80 x 160 mm at 4 mm
    assert data["locations"][1].shape[1] == 3 and np.all(data["labels"][tuple(data["locations"][1].T)] == 1)
    assert index["cases"]["case_00000"]["has_tumor"] and index["cases"]["case_00000"]["has_cyst"]
    # Idempotent: a re-run rewrites nothing; another spacing recomputes.
    mtime = (cache / "case_00000.npz").stat().st_mtime_ns
    log = []
    preprocess_dataset(discover(root), 1, None, cache, log=log.append)
    assert all("cached" in line for line in log) and (cache / "case_00000.npz").stat().st_mtime_ns == mtime
    index = preprocess_dataset(discover(root), 1, PreprocessingConfig((6, 6, 6), mean=0, std=1), cache)
    assert load_entry(cache, index_entries(index)[0])["image"].shape == (10, 13, 27)


@pytest.mark.parametrize("horseshoe", [False, True])
def test_stage2_crops_hold_the_kidney_with_margin(tmp_path, horseshoe):
    root = kits(tmp_path, "kits23", n=1, horseshoe=horseshoe)
    cache = tmp_path / "s2"
    config = PreprocessingConfig((1.5, 1.5, 1.5), mean=100, std=50, box_min_kidney_mm3=100)
    index = preprocess_dataset(discover(root), 2, config, cache)
    entries = index_entries(index)
    assert len(entries) == (1 if horseshoe else 2)  # one crop per kidney, a horseshoe is one
    for e in entries:
        d = load_entry(cache, e)
        assert np.allclose(d["spacing"], 1.5) and set(np.unique(d["labels"])) <= {0, 1, 2, 3}
        fg = np.argwhere(d["labels"] > 0)
        lo_mm, hi_mm = fg.min(0) * 1.5, (np.array(d["labels"].shape) - 1 - fg.max(0)) * 1.5
        # x and y have room for the 15 mm margin in the fake CT (z is clipped by the image: 60 mm)
        assert np.all(lo_mm[1:] >= 15 - 2.5) and np.all(hi_mm[1:] >= 15 - 2.5)
        assert np.all(lo_mm[1:] <= 15 + 3.5) and np.all(hi_mm[1:] <= 15 + 3.5)
        assert e["class_voxels"]["1"] > 0
    labels = [load_entry(cache, e)["labels"] for e in entries]
    assert any((lab == 2).any() for lab in labels) and any((lab == 3).any() for lab in labels)


def test_preprocess_command_line(tmp_path, capsys):
    root = kits(tmp_path, "kits21", n=1)
    assert preprocess_main([str(root), "-o", str(tmp_path / "c"), "--stage", "1", "--spacing", "5", "5", "5",
                            "--mean", "100", "--std", "80", "--dtype", "float32", "--margin-mm", "20"]) == 0
    index = json.loads((tmp_path / "c" / "index.json").read_text(encoding="utf-8"))
    assert index["config"]["mean"] == 100 and index["config"]["target_spacing"] == [5.0, 5.0, 5.0]
    assert index["config"]["box_margin_mm"] == 20  # the box rule travels in the config (to the checkpoint)
    assert "1 cases" in capsys.readouterr().out


# -- splits -------------------------------------------------------------------------------------------
def test_splits_written_once_and_checked(tmp_path):
    ids = [f"case_{i:05d}" for i in range(23)]
    path = tmp_path / "splits.json"
    splits = make_splits(ids, 5, 12345, path)
    assert len(splits) == 5 and sorted(c for s in splits for c in s["val"]) == ids
    for s in splits:
        assert not set(s["train"]) & set(s["val"]) and len(s["train"]) + len(s["val"]) == 23
    text = path.read_text(encoding="utf-8")
    assert make_splits(list(reversed(ids)), 5, 999, path) == splits  # reused, not reshuffled
    assert path.read_text(encoding="utf-8") == text
    with pytest.raises(DatasetError, match="different case list.*1 new"):
        make_splits(ids + ["case_00099"], 5, 12345, path)
    with pytest.raises(DatasetError, match="has 5 folds, not 3"):
        make_splits(ids, 3, 12345, path)
