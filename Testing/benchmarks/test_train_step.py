"""benchmarks/train_step.py --flops: the compute table's parameters and FLOPs per step."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

torch = pytest.importorskip("torch")
from benchmarks.train_step import main, step_cost  # noqa: E402


def test_step_cost_counts_the_network_and_scales_with_the_patch():
    cpu = torch.device("cpu")
    small = step_cost("stage2_v2_scratch", cpu, patch_size=(32, 32, 32))
    large = step_cost("stage2_v2_scratch", cpu, patch_size=(64, 32, 32))
    assert small["parameters"] == large["parameters"] > 10 ** 6
    assert small["patch_size"] == [32, 32, 32] and large["patch_size"] == [64, 32, 32]
    # convolutions dominate and cost per voxel: twice the voxels, about twice the FLOPs (the network pads a
    # side to a multiple of its down-sampling, so both sides are multiples of 32 here)
    assert small["flops"] > 0
    assert 1.8 < large["flops"] / small["flops"] < 2.2


def test_the_compute_table_row_of_stage2_default_is_what_the_script_counts():
    readme = (REPO / "training" / "README.md").read_text(encoding="utf-8")
    cost = step_cost("stage2_default", torch.device("cpu"))
    assert f"| 1.80 M | {'×'.join(map(str, cost['patch_size']))} | {round(cost['flops'] / 1e9)} |" in readme
    assert round(cost["parameters"] / 1e6, 2) == 1.80


def test_patch_without_flops_is_refused():
    with pytest.raises(SystemExit):
        main(["--patch", "8", "8", "8"])
