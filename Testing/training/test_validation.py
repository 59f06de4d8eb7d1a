"""training/validation.py: how the validation Dice that chooses best.pt is aggregated over crops, and how a
stage 1 with a masses class is chosen (by its kidney region, which makes the boxes). The network and the crops are
replaced by known arrays, so each Dice is known exactly."""
import numpy as np
import pytest
import torch

from training.runlog import csv_columns


def test_validation_dice_is_aggregated_so_predicting_no_tumor_scores_zero(monkeypatch, tmp_path):
    """Two kidney crops, one with a tumor: a model that never predicts tumor gets tumor Dice 0 (a per-crop
    mean with 'both empty = 1' gave it 0.5)."""
    import training.validation as validation
    from training.distributed import DistInfo

    labels = ["background", "kidney", "tumor", "cyst"]
    ref_a = np.zeros((8, 8, 8), np.uint8)
    ref_a[2:6, 2:6, 2:6] = 1
    ref_a[3:5, 3:5, 3:5] = 2          # 8 tumor voxels
    ref_b = np.where(ref_a > 0, 1, 0).astype(np.uint8)
    data = {"a": {"image": np.zeros((8, 8, 8), np.float32), "labels": ref_a},
            "b": {"image": np.ones((8, 8, 8), np.float32), "labels": ref_b}}
    monkeypatch.setattr(validation, "load_entry", lambda cache, entry: data[entry["file"]])

    def kidney_everywhere_inside(image, *args, **kwargs):  # predicts kidney on the whole kidney, no tumor
        which = "b" if image.max() > 0 else "a"
        probs = np.zeros((4, 8, 8, 8), np.float32)
        probs[1] = data[which]["labels"] > 0
        probs[0] = 1 - probs[1]
        return probs

    monkeypatch.setattr(validation, "sliding_window_inference", kidney_everywhere_inside)
    out = validation.validate(None, tmp_path, [{"file": "a"}, {"file": "b"}], labels, (8, 8, 8),
                              torch.device("cpu"), DistInfo())
    assert out["val_dice_tumor"] == 0.0
    assert "val_dice_kidney_region" not in out  # only a stage 1 with masses reports it
    # kidney: crop a has 56 reference voxels (8 are tumor) inside 64 predicted, crop b 64 of 64
    assert out["val_dice_kidney"] == pytest.approx(2 * (56 + 64) / (56 + 64 + 64 + 64))
    assert out["val_dice_cyst"] == 1.0  # no cyst anywhere, none predicted
    assert out["val_dice_mean"] == pytest.approx(np.mean([out["val_dice_kidney"], 0.0, 1.0]))


def test_a_stage1_with_masses_is_chosen_by_the_dice_of_its_kidney_region(monkeypatch, tmp_path):
    """Kidney and masses swapped everywhere: each class's Dice is 0, but the boxes (made from both) are perfect,
    so the region Dice, which chooses best.pt, is 1; without masses the mean chooses as before."""
    import training.validation as validation
    from training.distributed import DistInfo
    from training.runlog import REGION

    labels = ["background", "kidney", "masses", "aux_body"]
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[3:5, 3:5, 3:5] = 2
    ref[0] = 3  # an auxiliary class: background in the scores
    monkeypatch.setattr(validation, "load_entry", lambda cache, entry: {"image": np.zeros((8, 8, 8), np.float32),
                                                                        "labels": ref})

    def swapped(image, *args, **kwargs):
        probs = np.zeros((4, 8, 8, 8), np.float32)
        probs[1], probs[2] = ref == 2, ref == 1
        probs[0] = 1 - probs[1] - probs[2]
        return probs

    monkeypatch.setattr(validation, "sliding_window_inference", swapped)
    out = validation.validate(None, tmp_path, [{"file": "a"}], labels, (8, 8, 8), torch.device("cpu"), DistInfo())
    assert out["val_dice_kidney"] == out["val_dice_masses"] == out["val_dice_mean"] == 0.0
    assert out[REGION] == 1.0 and validation.selection_score(out) == 1.0
    assert validation.selection_name(labels) == "kidney-region Dice"
    assert validation.selection_name(["background", "kidney", "tumor", "cyst"]) == "mean Dice"
    assert REGION in csv_columns(labels) and REGION not in csv_columns(["background", "kidney", "tumor", "cyst"])
    assert validation.selection_score({"val_dice_mean": 0.4, "val_dice_kidney": 0.8}) == 0.4
