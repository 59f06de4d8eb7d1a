"""Time the training loader's patch cutting, per patch, and the augmentation's parts: what one loader worker
costs for a stage config on a cache.

Why: on the first lent GPU (decision 109) training ran at 1-3 iterations a second at batch 8 with 8 loader
workers per stage, so each patch cost a worker about 0.3-1 s, far more than the GPU's forward and backward
passes. This says where that time goes, on any machine: reading a cache entry (first touch; workers keep 32),
cutting the patch without augmentation, cutting it with the config's augmentation, and within that the
spatial part (rotation, scaling, elastic: ``scipy.ndimage.map_coordinates`` on the patch plus a 1/8 margin) and
the intensity part (noise, blur, contrast, gamma, low resolution), each timed again on the same crop and generator
(each step is drawn with its probability, so a patch may take none).
Each patch follows the config's own plan (foreground, interface and random centres, moved boxes); one thread,
as in a loader worker. Means over ``--patches``: the mean sets the throughput.

A recipe with ``augment_on_device`` (decision 111) has its workers cut only the crop with its margin ("cut +
augment" is then that cut), and augments each batch on the training device: ``--device`` (default: CUDA when
present) times ``training.batch_augmentation.augment_batch`` on batches of those crops, whatever the recipe says,
so the two paths can be compared on one machine.

Usage (from the repository root):
    PYTHONPATH=KidneyTumorSeg python benchmarks/loader.py --config stage2_gpu --cache WORK/cache/stage2_... \
        [--patches 24] [--batch 8] [--workers 8] [--device cuda]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.machine_info import machine  # noqa: E402
from training.augmentation import apply_grid, intensity, spatial_grid  # noqa: E402
from training.batch_augmentation import augment_batch  # noqa: E402
from training.datasets import load_entry  # noqa: E402
from training.recipe import TrainingRecipe  # noqa: E402
from training.sampling import (PatchSampler, crop_with_padding, entries_of_cases, load_cache,  # noqa: E402
                               epoch_loader, recipe_sampler)
from training.stage_config import load_stage_config, read_config  # noqa: E402


def samplers(config: str, cache: Path, seed: int = 0):
    """The trainer's sampler for ``config`` on ``cache`` (every cached case), the same without augmentation, the
    same with ``augment_on_device`` (whatever the recipe says: its crops are what ``time_batches`` augments), and
    the recipe."""
    stage = load_stage_config(config)
    recipe = TrainingRecipe.from_dict(read_config(config).get("training", {}))
    index, case_ids = load_cache(cache)
    entries = entries_of_cases(index, case_ids)
    made = [recipe_sampler(cache, index, entries, stage.labels, stage.patch_size, r, seed=seed, augment=a)
            for r, a in ((recipe, True), (recipe, False), (dataclasses.replace(recipe, augment_on_device=True), True))]
    return (*made, recipe)


def time_batches(crops: PatchSampler, n: int, batch: int, device: torch.device) -> List[float]:
    """Seconds per batch of ``training.batch_augmentation.augment_batch`` on ``device`` for ``n`` batches of the
    crops (patch + margin) that ``crops``, a sampler with ``augment_on_device``, cuts; the first batch (warm-up)
    is not counted."""
    out = []
    for i, b in enumerate(epoch_loader(crops, crops.plan_epoch(0, n + 1, batch), batch, 0)):
        image, labels = b["image"].to(device), b["labels"].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        augment_batch(image, labels, b["spacing_zyx"], b["seed"], crops.augmentation, crops.patch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            out.append(time.perf_counter() - t)
    return out


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def time_patches(aug: PatchSampler, plain: PatchSampler, n: int, batch: int) -> Dict[str, List[float]]:
    """Seconds per patch for ``n`` planned patches: entry read, cut without and with augmentation, and the
    augmentation's spatial and intensity parts on a crop of the augmented patch's size."""
    plans = aug.plan_epoch(0, -(-n // batch), batch)[:n]
    out: Dict[str, List[float]] = {k: [] for k in ("read", "cut", "cut_augmented", "spatial", "intensity")}
    cfg = aug.augmentation
    size = [p + 2 * m for p, m in zip(aug.patch, aug.context_margin())]
    for plan in plans:
        out["read"].append(_seconds(lambda: load_entry(aug.cache_dir, aug.entries[plan.entry])))
        plain._load(plan.entry), aug._load(plan.entry)  # noqa: B018 (warm both memories: reads are timed above)
        out["cut"].append(_seconds(lambda: plain.make_patch(plan)))
        out["cut_augmented"].append(_seconds(lambda: aug.make_patch(plan)))
        data = aug._load(plan.entry)
        crop = crop_with_padding(data["image"], [0, 0, 0], size, data["image_min"]).astype(np.float32)
        labels = crop_with_padding(data["labels"], [0, 0, 0], size, 0)
        spacing = tuple(float(v) for v in np.asarray(data["spacing"])[::-1])
        rng = np.random.default_rng(plan.seed)
        coords: list = []
        t = _seconds(lambda: coords.append(spatial_grid(crop.shape, spacing, rng, cfg)))
        if coords[0] is not None:
            t += _seconds(lambda: apply_grid(crop, labels, coords[0]))
        out["spatial"].append(t)
        out["intensity"].append(_seconds(lambda: intensity(crop, spacing, rng, cfg)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="stage2_gpu")
    ap.add_argument("--cache", type=Path, required=True, help="a training cache (training.datasets.preprocess)")
    ap.add_argument("--patches", type=int, default=24)
    ap.add_argument("--batch", type=int, help="batch size for the throughput line (default: the config's)")
    ap.add_argument("--workers", type=int, help="loader workers for the throughput line (default: the config's)")
    ap.add_argument("--device", help="where to time the batch augmentation (default: cuda when present, else cpu)")
    ap.add_argument("--batches", type=int, default=5, help="batches timed on --device")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    aug, plain, crops, recipe = samplers(args.config, args.cache)
    batch, workers = args.batch or recipe.batch_size, args.workers or recipe.num_workers
    t = time_patches(aug, plain, args.patches, batch)
    med = {k: statistics.fmean(v) for k, v in t.items()}  # the mean sets the throughput
    where = "on the device (decision 111): the worker cuts the crop only" if aug.augment_on_device else "in the worker"
    print(f"Machine: {machine(device.type)}\nConfig {args.config}, patch {list(aug.patch)}, cache {args.cache}, "
          f"{args.patches} patches, augmented {where}; mean seconds per patch, one thread:\n")
    print("| read entry | cut | cut + augment (worker) | scipy spatial | scipy intensity |")
    print("|---|---|---|---|---|")
    print("| " + " | ".join(f"{med[k]:.3f}" for k in ("read", "cut", "cut_augmented", "spatial", "intensity")) + " |")
    rate = workers / (batch * med["cut_augmented"])
    print(f"\n{workers} workers at batch {batch}: at most {rate:.1f} iterations a second from the loader "
          f"(entries already in the workers' memory)")
    if aug.augmentation is not None:
        torch.set_num_threads(threads if device.type == "cuda" else 1)  # as the training process on a GPU
        b = statistics.fmean(time_batches(crops, args.batches, batch, device))
        print(f"augment_batch on {device.type}: {b:.3f} s per batch of {batch} ({1 / b:.1f} batches a second"
              f"{'' if device.type == 'cuda' else ', one thread'}; in the training process, beside the step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
