"""benchmarks/confidence_threshold.py: lesion listing and the threshold choice on arrays and lists whose
answer is known by construction (the model runs themselves are the script's job, not a test's)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "confidence_threshold.py"
_spec = importlib.util.spec_from_file_location("benchmarks_confidence_threshold", _SCRIPT)
ct = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ct
_spec.loader.exec_module(ct)


def test_lesions_with_confidence_and_hits():
    labels = np.zeros((6, 10, 20), np.uint8)
    conf = np.full(labels.shape, 255, np.uint8)
    labels[1:3, 1:3, 1:3], conf[1:3, 1:3, 1:3] = 2, 51      # tumor, 8 voxels, 0.2, hits the reference
    labels[1:3, 1:3, 10:13], conf[1:3, 1:3, 10:13] = 3, 204  # cyst, 12 voxels, 0.8, misses
    labels[4, 8, 18] = 2                                     # a 1-voxel speck (2 mm^3): not a lesion
    ref = np.zeros_like(labels)
    ref[2, 2, 2] = 2
    got = ct.lesions(labels, conf, (1.0, 1.0, 2.0), ref, "c")
    assert got == [{"case": "c", "kind": "tumor", "volume_ml": 0.02, "confidence": 0.2, "true": True},
                   {"case": "c", "kind": "cyst", "volume_ml": 0.02, "confidence": 0.8, "true": False}]
    assert [x["true"] for x in ct.lesions(labels, conf, (1.0, 1.0, 2.0))] == [None, None]


def test_the_threshold_maximises_false_minus_true_removed_and_prefers_the_lowest():
    true = [{"confidence": c, "volume_ml": 1.0} for c in (0.55, 0.7, 0.9)]
    false = [{"confidence": c, "volume_ml": 2.0} for c in (0.3, 0.4, 0.6)]
    rows = ct.sweep(true, false)
    chosen = ct.choose(rows)
    # (0.40, 0.55] removes 2 of 3 false and no true lesion, (0.60, 0.70] all false and 1 of 3 true: both J = 2/3;
    # the tie goes to the lowest threshold, 0.41.
    assert chosen["threshold"] == pytest.approx(0.41)
    assert chosen["false_removed"] == pytest.approx(2 / 3) and chosen["true_removed"] == 0.0
    assert chosen["false_removed_ml"] == 4.0 and chosen["true_removed_ml"] == 0.0


def test_the_real_ct_lesions_are_checked_at_the_choice_but_never_move_it():
    true = [{"confidence": c, "volume_ml": 1.0} for c in (0.55, 0.7, 0.9)]
    false_synthetic = [{"confidence": c, "volume_ml": 2.0} for c in (0.3, 0.4)]
    # On their own these real lesions would ask for 0.51 (two of three removed, no true one; 0.61 ties with all three
    # and one true one), not the synthetic choice of 0.41, which removes none of them.
    false_real = [{"confidence": c, "volume_ml": 5.0} for c in (0.45, 0.5, 0.6)]
    groups = {"true_synthetic": true, "false_synthetic": false_synthetic, "false_real": false_real}
    chosen, real, rows = ct.choose_from_synthetic(groups)
    assert chosen["threshold"] == pytest.approx(0.41) and chosen["false_removed"] == 1.0
    assert ct.choose(ct.sweep(true, false_real))["threshold"] == pytest.approx(0.51)
    assert real == {"threshold": pytest.approx(0.41), "false_removed": 0.0, "false_removed_ml": 0.0}
    groups["false_real"] = [{"confidence": 0.35, "volume_ml": 5.0}] + false_real
    assert ct.choose_from_synthetic(groups)[0] == chosen  # more real lesions: the same choice
    assert ct.choose_from_synthetic(groups)[1]["false_removed"] == pytest.approx(1 / 4)


def test_no_choice_without_both_synthetic_groups():
    true = [{"confidence": 0.7, "volume_ml": 1.0}]
    for groups, match in (({"true_synthetic": true, "false_synthetic": [], "false_real": true}, "No false synthetic"),
                          ({"true_synthetic": [], "false_synthetic": [], "false_real": []},
                           "No true synthetic and no false synthetic")):
        with pytest.raises(ValueError, match=match):
            ct.choose_from_synthetic(groups)
