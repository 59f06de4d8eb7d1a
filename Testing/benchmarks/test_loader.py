"""benchmarks/loader.py on a one-case cache: the trainer's sampler for the config, the same without
augmentation, one timing per patch and part, and the table and throughput line it prints."""
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

from benchmarks.loader import main, samplers, time_batches, time_patches  # noqa: E402
from training.datasets import discover, preprocess_dataset  # noqa: E402
from training.stage_config import load_stage_config  # noqa: E402

CONFIG = "stage2_v2_mo"


@pytest.fixture(scope="module")
def cache(one_synthetic_case, tmp_path_factory):
    cfg = load_stage_config(CONFIG)
    out = tmp_path_factory.mktemp("cache") / "c"
    preprocess_dataset(discover(one_synthetic_case), 2, replace(cfg.preprocessing, target_spacing=(3.0, 3.0, 3.0)), out,
                       stage_labels=cfg.labels)
    return out


def test_the_samplers_are_the_trainers_with_and_without_augmentation(cache):
    aug, plain, crops, recipe = samplers(CONFIG, cache)
    assert aug.augmentation is not None and plain.augmentation is None
    assert aug.patch == plain.patch == crops.patch == tuple(load_stage_config(CONFIG).patch_size)
    assert aug.box_jitter_mm == plain.box_jitter_mm == crops.box_jitter_mm == tuple(recipe.box_jitter_mm)  # moved boxes
    assert aug.interface_fraction == crops.interface_fraction == recipe.interface_fraction > 0  # mo's interface share
    assert not recipe.augment_on_device and not aug.augment_on_device and crops.augment_on_device
    plan = aug.plan_epoch(0, 1, 1)[0]
    assert plain.make_patch(plan)["image"].shape == (1, *aug.patch)


def test_each_patch_is_timed_once_per_part(cache):
    aug, plain, _, _ = samplers(CONFIG, cache)
    t = time_patches(aug, plain, 3, batch=2)
    assert set(t) == {"read", "cut", "cut_augmented", "spatial", "intensity"}
    assert all(len(v) == 3 and all(x >= 0 for x in v) for v in t.values())


def test_the_table_and_the_throughput_line(cache, capsys):
    assert main(["--config", CONFIG, "--cache", str(cache), "--patches", "2", "--batch", "4", "--workers", "6"]) == 0
    out = capsys.readouterr().out
    assert "| read entry | cut | cut + augment (worker) | scipy spatial | scipy intensity |" in out
    assert "6 workers at batch 4: at most" in out and "augmented in the worker" in out
    assert "augment_batch on cpu:" in out and "per batch of 4" in out


def test_a_gpu_recipe_cuts_crops_with_a_margin_and_augments_batches_on_the_device(cache):
    aug, plain, crops, recipe = samplers("stage2_gpu", cache)
    assert recipe.augment_on_device and aug.augment_on_device and crops.augment_on_device
    assert not plain.augment_on_device
    plan = aug.plan_epoch(0, 1, 1)[0]
    crop = aug.make_patch(plan)["image"]
    assert crop.shape == (1, *[p + 2 * (p // 8) for p in aug.patch]) == (1, *[p + 2 * m for p, m in zip(
        aug.patch, aug.context_margin())])  # 1/8 of the patch each side
    seconds = time_batches(crops, 2, 2, torch.device("cpu"))
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
