"""Validation on whole cache volumes (stage-2 crops or stage-1 CTs) with sliding-window inference.

The same sliding-window inference as the Slicer module and the command line (``sliding_window_inference``,
Gaussian-weighted patches), on each cached crop (stage 2: boxes from the reference kidneys; no stage 1, no
post-processing), so the best-by-Dice model is chosen on whole volumes, not on random patches. The Dice of a class is
aggregated over the entries: 2 * sum(overlap) / sum(predicted + reference voxels). A per-entry mean would
count every kidney without a tumor as Dice 1 when nothing is predicted there, and so reward a model that
never predicts a tumor (docs/decisions.md, entry 38). The score is the mean over the foreground classes.
Under DDP each rank validates its share of the entries and the sums are all-reduced, so every rank gets
the same numbers.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from KidneyTumorSegLib.inference import sliding_window_inference
from KidneyTumorSegLib.labels import main_labels, merge_auxiliary

from .datasets import load_entry
from .datasets.cache import box_slices
from .distributed import DistInfo, all_reduce_sum
from .runlog import REGION, csv_extra


def validate(model: torch.nn.Module, cache_dir, entries: List[Dict[str, Any]], labels: Sequence[str],
             patch_size: Sequence[int], device: torch.device, info: DistInfo, overlap: float = 0.5,
             batch_size: int = 2, amp: bool = True) -> Dict[str, float]:
    """{"val_dice_<label>": ..., "val_dice_mean": ...} over ``entries`` (all ranks get the result), for the
    main labels: auxiliary classes count as background, in the prediction (as at inference) and the reference."""
    main = main_labels(labels)
    n_fg = len(main) - 1
    region = REGION in csv_extra(labels)
    # per class, then (a stage 1 with masses: last column) their union: 2 x overlap, predicted + reference voxels
    sums = torch.zeros(2, n_fg + region, dtype=torch.float64)
    for entry in entries[info.rank::info.world_size]:
        data = load_entry(cache_dir, entry)
        if "inner_zyx" in data:  # a crop cut wider than the box rule (box_jitter_mm): judged on the rule's box
            box = box_slices(data["inner_zyx"], data["labels"].shape)
            data["image"], data["labels"] = data["image"][box], data["labels"][box]
        probs = sliding_window_inference(
            data["image"].astype(np.float32), model, patch_size, overlap=overlap, batch_size=batch_size,
            device=device, return_probabilities=True, amp_dtype=torch.float16 if amp else None)
        pred = np.argmax(merge_auxiliary(probs, labels), axis=0)
        ref = np.where(data["labels"] <= n_fg, data["labels"], 0)
        for k in range(1, n_fg + region + 1):
            p, r = (pred == k, ref == k) if k <= n_fg else (pred > 0, ref > 0)
            sums[0, k - 1] += 2 * np.count_nonzero(p & r)
            sums[1, k - 1] += np.count_nonzero(p) + np.count_nonzero(r)
    # gloo reduces CPU tensors, nccl GPU tensors: reduce on the training device.
    sums = all_reduce_sum(sums.to(device), info).cpu()
    if not entries:
        return {}
    # No voxel of a class predicted or in the reference anywhere: nothing to get wrong, Dice 1.
    dice = [float(sums[0, k] / sums[1, k]) if sums[1, k] > 0 else 1.0 for k in range(n_fg + region)]
    out = {f"val_dice_{name}": dice[k - 1] for k, name in enumerate(main) if k > 0}
    out["val_dice_mean"] = float(np.mean(dice[:n_fg]))
    if region:
        out[REGION] = dice[n_fg]
    return out


def selection_name(labels: Sequence[str]) -> str:
    """What ``selection_score`` chooses by for a stage with these labels, in words (for the run's log)."""
    return "kidney-region Dice" if REGION in csv_extra(labels) else "mean Dice"


def selection_score(scores: Dict[str, float]) -> float:
    """What chooses best.pt: the kidney region's Dice for a stage 1 with masses (the boxes do not care which of
    the two a voxel is), else the mean Dice over the main classes."""
    return scores.get(REGION, scores["val_dice_mean"])
