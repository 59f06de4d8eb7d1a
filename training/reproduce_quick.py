"""``training.reproduce --quick``: the tiny networks and few-iteration recipe of its smoke run (CPU, minutes)."""
from __future__ import annotations

import json
from pathlib import Path

from KidneyTumorSegLib.atomic import write_text
from KidneyTumorSegLib.labels import main_labels
from KidneyTumorSegLib.networks import STAGE1_TINY, config_to_dict

from .reproduce_checks import config_file
from .stage_config import load_stage_config, read_config

QUICK = {"synthetic": 4, "folds": 2, "synthetic_spacing": (3.0, 4.0)}
# --quick: stage 2 is the trainer's CI recipe (configs/smoke.json: tiny V-Net, 32^3 patches at 4 mm, a few
# iterations); stage 1 is the default stage-1 definition with the tiny U-Net preset and the same recipe.
QUICK_STAGE2 = "smoke"
QUICK_STAGE1_TRAINING = {"foreground_label": "kidney", "hard_loss_factor": 0.0,
                         "loss": {"class_weights": [0.2, 0.8], "dice_weight": 0.6, "ce_weight": 0.4}}


def quick_config(stage: int, base: str, out: Path) -> Path:
    """The --quick definition of a stage: smoke.json for stage 2, the tiny U-Net for stage 1."""
    smoke = read_config(QUICK_STAGE2)
    if stage == 2:
        d = smoke
    else:
        d = read_config(config_file(base))
        n = len(d["labels"])  # a base with auxiliary classes (stage1_v2) keeps them: one output each
        n_main = len(main_labels(d["labels"]))  # kidney, and masses where the base has them, weigh as the kidney
        back, kidney = QUICK_STAGE1_TRAINING["loss"]["class_weights"]
        weights = [back] + [kidney] * (n_main - 1) + [back] * (n - n_main)
        training = {**smoke["training"], **QUICK_STAGE1_TRAINING,
                    "loss": {**QUICK_STAGE1_TRAINING["loss"], "class_weights": weights}}
        d.update(description="--quick smoke test: stage 1 with the tiny residual U-Net preset",
                 network={"name": "residual_unet", "config": {**config_to_dict(STAGE1_TINY), "num_classes": n}},
                 preprocessing=smoke["preprocessing"], patch_size=[32, 32, 32], training=training)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(d, indent=1))
    load_stage_config(out)  # fail here, not in the trainer, if the preset does not fit the config
    return out
