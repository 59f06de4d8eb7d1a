"""benchmarks/train_step.py --flops: the compute table's parameters and FLOPs per step."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

torch = pytest.importorskip("torch")
from benchmarks.train_step import step_cost  # noqa: E402
from training.stage_config import load_stage_config  # noqa: E402


def test_step_cost_counts_the_network_and_scales_with_the_patch():
    cpu = torch.device("cpu")
    small = step_cost("stage2_v2_scratch", cpu, patch_size=(32, 32, 32))
    large = step_cost("stage2_v2_scratch", cpu, patch_size=(64, 32, 32))
    stage = load_stage_config("stage2_v2_scratch")
    assert small["parameters"] == sum(p.numel() for p in stage.build(0).parameters())
    assert small["patch_size"] == [32, 32, 32] and large["patch_size"] == [64, 32, 32]
    # convolutions dominate and cost per voxel: twice the voxels, about twice the FLOPs (the network pads a
    # side to a multiple of its down-sampling, so both sides are multiples of 32 here)
    assert small["flops"] > 0
    assert 1.8 < large["flops"] / small["flops"] < 2.2
