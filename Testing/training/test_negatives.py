"""Explicit negatives: auxiliary classes from the synthetic cases' anatomy maps in the training cache, the
interface locations, the sampler's interface patches, and the trainer's refusal of a cache made for other
classes."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from training.anatomy_maps import ANATOMY
from training.datasets import DatasetError, discover, load_entry, preprocess_dataset
from training.datasets.negatives import INTERFACE_CLASS, INTERFACE_MM, add_auxiliary
from training.sampling import PatchSampler, entries_of_cases
from training.stage_config import load_stage_config, read_config
from training.train import main as train

KITS = "case_00534"  # the smallest KiTS23 label map: fast


@pytest.fixture(scope="module")
def data(one_synthetic_case):
    return one_synthetic_case  # KITS painted into AMOS 0013 (Testing/conftest.py)


def _cache(data, tmp_path, name, stage, spacing, with_aux=True):
    cfg = load_stage_config(f"stage{stage}_v2")
    pp = replace(cfg.preprocessing, target_spacing=spacing)
    labels = cfg.labels if with_aux else cfg.labels[:4 if stage == 2 else 2]
    index = preprocess_dataset(discover(data), stage, pp, tmp_path / name, stage_labels=labels)
    return index, labels


def test_add_auxiliary_groups_and_never_touches_the_kidney():
    target = np.array([0, 1, 2, 0, 0, 0, 0, 0])
    anatomy = np.array([0, ANATOMY["liver"], ANATOMY["liver"], ANATOMY["liver"], ANATOMY["spleen"],
                        ANATOMY["renal_sinus_fat"], ANATOMY["colon"], ANATOMY["body"]])
    labels = ["background", "kidney", "tumor", "cyst", "aux_liver", "aux_spleen", "aux_hilum", "aux_body"]
    np.testing.assert_array_equal(add_auxiliary(target, anatomy, ANATOMY, labels), [0, 1, 2, 4, 5, 6, 7, 7])
    # without aux_hilum, the sinus fat is part of the rest of the body
    np.testing.assert_array_equal(add_auxiliary(target, anatomy, ANATOMY, labels[:6] + ["aux_body"]),
                                  [0, 1, 2, 4, 5, 6, 6, 6])


@pytest.mark.parametrize("stage, spacing", [(2, (3.0, 3.0, 3.0)), (1, (6.0, 6.0, 6.0))])
def test_cache_holds_the_negatives_and_the_same_kidney(data, tmp_path, stage, spacing):
    index, labels = _cache(data, tmp_path, "aux", stage, spacing)
    plain, _ = _cache(data, tmp_path, "plain", stage, spacing, with_aux=False)
    assert index["labels"] == list(labels) and "labels" not in plain
    n_main = 4 if stage == 2 else 2
    for entry, ref in zip(entries_of_cases(index, [f"{KITS}_amos0013"]), entries_of_cases(plain, [f"{KITS}_amos0013"])):
        a, b = load_entry(tmp_path / "aux", entry), load_entry(tmp_path / "plain", ref)
        np.testing.assert_array_equal(a["image"], b["image"])
        main = np.where(a["labels"] < n_main, a["labels"], 0)
        np.testing.assert_array_equal(main, b["labels"])  # the negatives change nothing of the kidney
        present = set(np.unique(a["labels"]).tolist())
        assert labels.index("aux_body") in present and labels.index("aux_hilum") in present
        # interface locations: liver/spleen/hilum voxels within 10 mm of the kidney
        locs = a["locations"][INTERFACE_CLASS]
        assert entry["interface_voxels"] > 0 and len(locs)
        values = a["labels"][tuple(locs.T)]
        assert set(values.tolist()) <= {labels.index(n) for n in ("aux_liver", "aux_spleen", "aux_hilum")}
        dist = ndimage.distance_transform_edt(~((a["labels"] > 0) & (a["labels"] < n_main)),
                                              sampling=np.asarray(a["spacing"])[::-1])
        assert dist[tuple(locs.T)].max() <= INTERFACE_MM


def test_sampler_centres_interface_patches(data, tmp_path):
    index, labels = _cache(data, tmp_path, "aux", 2, (3.0, 3.0, 3.0))
    entries = entries_of_cases(index, list(index["cases"]))
    sampler = PatchSampler(tmp_path / "aux", entries, (16, 16, 16), 2, 0.5, [False] * len(entries),
                           interface_fraction=0.5)
    plans = sampler.plan_epoch(0, 10, 2)
    centres = [p.centre_class for p in plans]
    assert centres.count(2) == 10 and centres.count(INTERFACE_CLASS) >= 4  # half the rest, when not tumor
    patch = sampler.make_patch(next(p for p in plans if p.centre_class == INTERFACE_CLASS))
    assert set(np.unique(patch["labels"].numpy())) & {4, 5, 6}


def test_trainer_refuses_a_cache_made_for_other_classes(data, tmp_path):
    _cache(data, tmp_path, "plain", 2, (3.0, 3.0, 3.0), with_aux=False)
    with pytest.raises(SystemExit, match="cached for the classes"):
        train(["--config", "stage2_v2", "--data", str(tmp_path / "plain"), "--out", str(tmp_path / "run"),
               "--fold", "all", "--device", "cpu", "--quiet", "--epochs", "1", "--iterations", "1"])


def test_trainer_refuses_a_binary_stage1_cache_for_a_masses_config(data, tmp_path):
    _cache(data, tmp_path, "binary", 1, (6.0, 6.0, 6.0), with_aux=False)  # records no labels
    d = read_config("stage1_v2")
    d["labels"], d["network"]["config"]["num_classes"] = ["background", "kidney", "masses"], 3
    d["training"]["loss"]["class_weights"] = [0.3, 1.0, 2.0]
    (tmp_path / "masses.json").write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(SystemExit, match="cached for the classes None"):
        train(["--config", str(tmp_path / "masses.json"), "--data", str(tmp_path / "binary"), "--out",
               str(tmp_path / "run"), "--fold", "all", "--device", "cpu", "--quiet", "--epochs", "1",
               "--iterations", "1"])


def test_a_case_without_anatomy_is_refused_for_auxiliary_classes(data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    for f in copy.glob("*/anatomy.nii.gz"):
        f.unlink()
    with pytest.raises(DatasetError, match="anatomy"):
        preprocess_dataset(discover(copy), 2, load_stage_config("stage2_v2").preprocessing, tmp_path / "c",
                           stage_labels=load_stage_config("stage2_v2").labels)
    assert json.loads((copy / "anatomy_labels.json").read_text(encoding="utf-8")) == ANATOMY


def test_stage1_target_splits_masses_off_the_kidney_only_when_the_stage_names_them():
    from training.datasets.cache import stage1_target
    kits = np.array([0, 1, 2, 3, 1])
    np.testing.assert_array_equal(stage1_target(kits), [0, 1, 1, 1, 1])  # the default: one kidney class
    np.testing.assert_array_equal(stage1_target(kits, ["background", "kidney", "aux_liver"]), [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(stage1_target(kits, ["background", "kidney", "masses", "aux_body"]),
                                  [0, 1, 2, 2, 1])
    np.testing.assert_array_equal(stage1_target(kits, ["background", "masses", "kidney"]), [0, 2, 1, 1, 2])


def test_a_stage1_cache_with_masses_keeps_the_kidney_region_and_its_negatives(data, tmp_path):
    cfg = load_stage_config("stage1_v2")
    pp = replace(cfg.preprocessing, target_spacing=(6.0, 6.0, 6.0))
    labels = ["background", "kidney", "masses"] + list(cfg.labels[2:])
    index = preprocess_dataset(discover(data), 1, pp, tmp_path / "masses", stage_labels=labels)
    binary = preprocess_dataset(discover(data), 1, pp, tmp_path / "binary", stage_labels=cfg.labels)
    assert index["labels"] == labels and index["config_hash"] != binary["config_hash"]
    (entry,), (ref,) = (entries_of_cases(i, [f"{KITS}_amos0013"]) for i in (index, binary))
    a, b = load_entry(tmp_path / "masses", entry), load_entry(tmp_path / "binary", ref)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert (a["labels"] == 2).sum() > 0  # the tumor has its own class
    np.testing.assert_array_equal(np.isin(a["labels"], [1, 2]), b["labels"] == 1)  # the same kidney region
    np.testing.assert_array_equal(np.where(a["labels"] > 2, a["labels"] - 1, 0), np.where(b["labels"] > 1,
                                                                                           b["labels"], 0))
