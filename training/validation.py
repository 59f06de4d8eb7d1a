"""Validation on whole cache volumes (stage-2 crops or stage-1 CTs) with sliding-window inference.

Exactly the inference path of the Slicer module (``sliding_window_inference``, Gaussian-weighted patches),
so the best-by-Dice model is chosen on what users will run, not on random patches. Per-class Dice is
computed per entry (empty in both reference and prediction counts 1, see ``training.metrics``) and
averaged over entries; the score is the mean over the foreground classes. Under DDP each rank validates
its share of the entries and the sums are all-reduced, so every rank gets the same numbers.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from KidneyTumorSegLib.inference import sliding_window_inference
from KidneyTumorSegLib.labels import main_labels, merge_auxiliary

from .datasets import load_entry
from .distributed import DistInfo, all_reduce_sum
from .metrics import overlap_metrics


def validate(model: torch.nn.Module, cache_dir, entries: List[Dict[str, Any]], labels: Sequence[str],
             patch_size: Sequence[int], device: torch.device, info: DistInfo, overlap: float = 0.5,
             batch_size: int = 2, amp: bool = True) -> Dict[str, float]:
    """{"val_dice_<label>": ..., "val_dice_mean": ...} over ``entries`` (all ranks get the result), for the
    main labels: auxiliary classes count as background, in the prediction (as at inference) and the reference."""
    main = main_labels(labels)
    n_fg = len(main) - 1
    sums = torch.zeros(n_fg + 1, dtype=torch.float64)  # per-class Dice sums, then the entry count
    for entry in entries[info.rank::info.world_size]:
        data = load_entry(cache_dir, entry)
        probs = sliding_window_inference(
            data["image"].astype(np.float32), model, patch_size, overlap=overlap, batch_size=batch_size,
            device=device, return_probabilities=True, amp_dtype=torch.float16 if amp else None)
        pred = np.argmax(merge_auxiliary(probs, labels), axis=0)
        ref = np.where(data["labels"] <= n_fg, data["labels"], 0)
        for k in range(1, n_fg + 1):
            sums[k - 1] += overlap_metrics(pred == k, ref == k)["dice"]
        sums[n_fg] += 1
    # gloo reduces CPU tensors, nccl GPU tensors: reduce on the training device.
    sums = all_reduce_sum(sums.to(device), info).cpu()
    count = float(sums[n_fg])
    if count == 0:
        return {}
    out = {f"val_dice_{name}": float(sums[k - 1]) / count for k, name in enumerate(main) if k > 0}
    out["val_dice_mean"] = float(np.mean([out[f"val_dice_{name}"] for name in main[1:]]))
    return out
