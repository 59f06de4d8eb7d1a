"""Patch sampling from the per-stage cache: foreground oversampling, hard-case resampling, augmentation.

Determinism by construction: an epoch's patches are PLANNED up front in the training process from
(seed, epoch, rank) alone (which entry, whether foreground-centred, a per-patch seed), and each patch is
then cut and augmented from its own plan seed. So the patches do not depend on the number of loader
workers, on how many epochs ran in this process, or on any global RNG: resuming at an epoch boundary
replays exactly the patches of an uninterrupted run. Each DDP rank plans with its own rank in the seed,
so ranks see different patches (rank-sharded sampling, no DistributedSampler needed for an infinite
patch stream).

Foreground fraction: the k-th patch of a rank (counted over the whole run) is foreground-centred iff
floor((k + 1) * f) > floor(k * f), so exactly a fraction f of the patches are, not only on average.
Two kinds of "hard case" raise an entry's sampling weight: a fixed one for entries with the recipe's
``hard_case_label`` (cysts, say; ``hard_case_factor``), and one recomputed between epochs from each entry's
recent loss (``hard_loss_factor``); within an epoch the weights are fixed.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .ambiguity import tumor_separation
from .augmentation import AugmentationConfig, augment
from .datasets import index_entries, load_entry, load_index
from .datasets.cache import box_slices
from .datasets.negatives import INTERFACE_CLASS

RANDOM = -1  # plan.centre_class for a uniformly random patch
MAX_CLASSES = 16


@dataclass(frozen=True)
class PatchPlan:
    entry: int         # position in the sampler's entry list
    centre_class: int  # class whose voxel centres the patch, or RANDOM
    seed: int          # crop position and augmentation


def entries_of_cases(index: Dict[str, Any], case_ids: Sequence[str]) -> List[Dict[str, Any]]:
    """The cache entries (stage-2 crops or stage-1 volumes) of ``case_ids``, in index order."""
    wanted = set(case_ids)
    missing = wanted - set(index["cases"])
    if missing:
        raise ValueError(f"{len(missing)} case(s) of the split are not in the cache, e.g. {sorted(missing)[:3]}")
    return [e for e in index_entries(index) if e["case_id"] in wanted]


def crop_with_padding(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill) -> np.ndarray:
    """array[start:start+size] where out-of-volume parts are ``fill`` (start may be negative)."""
    out = np.full(tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape):
        lo, hi = max(s, 0), min(s + n, dim)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def in_share(i: int, share: float) -> bool:
    """Whether the i-th item (0-based) of a run is one of an exact ``share`` of them: floor((i + 1) * share) items
    are chosen among the first i + 1, however long the run."""
    return math.floor((i + 1) * share) > math.floor(i * share)


def patch_start(centre: Sequence[int], shape: Sequence[int], patch: Sequence[int]) -> List[int]:
    """Start of a patch containing ``centre``, kept inside the volume (or covering it when smaller)."""
    out = []
    for c, s, p in zip(centre, shape, patch):
        lo, hi = min(0, s - p), max(0, s - p)
        out.append(int(np.clip(c - p // 2, lo, hi)))
    return out


class PatchSampler:
    """Plans and cuts (z, y, x) training patches from cache entries.

    ``fg_class``: network class index that foreground patches are centred on; entries without it are never
    chosen for those patches (if no entry has it, any foreground class is used, else a random patch).
    ``second_fg``: (class, share): that share of the foreground patches (exactly, over the run) is centred on this
    class instead, on entries that have it (decision 112); none has it: all stay on ``fg_class``.
    ``hard_case``: per-entry bool, those entries weigh ``hard_case_factor``.
    ``interface_fraction``: the share of the other patches centred on "interface" voxels (liver, spleen or
    renal hilum next to the kidney; caches with auxiliary classes store them), where negatives matter most.
    ``augment_on_device``: patches come with their context margin, spacing and seed, unaugmented, for
    ``training.batch_augmentation.augment_batch`` on the training device (decision 111).
    ``merge``: (separation, tumor class, kidney class): patches of an entry whose tumor stands out from the kidney
    by less than the separation (``training.ambiguity.tumor_separation``, in the cached input's units) carry
    ``"merge": True``, for the marginal loss; None: every patch carries False.
    """

    def __init__(self, cache_dir, entries: List[Dict[str, Any]], patch_size: Sequence[int], fg_class: int,
                 fg_fraction: float, hard_case: Sequence[bool], hard_case_factor: float = 1.0,
                 augmentation: Optional[AugmentationConfig] = None, seed: int = 0, rank: int = 0,
                 memory_entries: int = 32, interface_fraction: float = 0.0,
                 merge: Optional[Tuple[float, int, int]] = None,
                 box_jitter_mm: Optional[Tuple[float, float]] = None, augment_on_device: bool = False,
                 second_fg: Optional[Tuple[int, float]] = None) -> None:
        if not entries:
            raise ValueError("no training entries: the split's training cases have no cached samples")
        self.cache_dir = Path(cache_dir)
        self.entries = list(entries)
        self.patch = tuple(int(v) for v in patch_size)
        self.fg_class, self.fg_fraction = int(fg_class), float(fg_fraction)
        self.interface_fraction = float(interface_fraction)
        self._interface = np.flatnonzero([int(e.get("interface_voxels", 0)) > 0 for e in self.entries])
        self.base_weights = np.where(np.asarray(hard_case, bool), float(hard_case_factor), 1.0)
        self.augmentation, self.seed, self.rank = augmentation, int(seed), int(rank)
        self.augment_on_device = bool(augment_on_device) and augmentation is not None
        self.merge = merge
        self.box_jitter_mm = None if box_jitter_mm is None else (float(box_jitter_mm[0]), float(box_jitter_mm[1]))
        # Measured once, up front: loader workers inherit the flags, and the run log can say how many there are.
        self.merge_flags = np.array([self._ambiguous(load_entry(self.cache_dir, e)) if merge else False
                                     for e in self.entries], bool)
        self._memory: "OrderedDict[int, Dict[str, Any]]" = OrderedDict()
        self._memory_entries = memory_entries
        counts = np.array([[int(e["class_voxels"].get(str(k), 0)) for k in range(1, MAX_CLASSES)]
                           for e in self.entries])
        has = counts > 0
        if has[:, self.fg_class - 1].any():
            self._fg_candidates = {self.fg_class: np.flatnonzero(has[:, self.fg_class - 1])}
        else:  # no entry has the class (tiny data, stage 1 without kidney): any foreground class
            self._fg_candidates = {k + 1: np.flatnonzero(has[:, k]) for k in range(has.shape[1]) if has[:, k].any()}
        self.second_fg = None if second_fg is None else (int(second_fg[0]), float(second_fg[1]))
        self._second_candidates = (np.flatnonzero(has[:, self.second_fg[0] - 1]) if self.second_fg
                                   else np.zeros(0, int))

    # -- planning (training process) -----------------------------------------------------------------------
    def weights(self, loss_ema: Optional[np.ndarray] = None, hard_loss_factor: float = 0.0) -> np.ndarray:
        """Sampling weight per entry: the hard-case factor, times the loss boost when enabled."""
        w = self.base_weights.copy()
        if loss_ema is not None and hard_loss_factor > 0:
            seen = np.isfinite(loss_ema)
            if seen.any():
                rel = np.where(seen, loss_ema / max(float(np.mean(loss_ema[seen])), 1e-12), 1.0)
                w = w * (1.0 + hard_loss_factor * np.maximum(0.0, rel - 1.0))
        return w

    def plan_epoch(self, epoch: int, iterations: int, batch_size: int,
                   weights: Optional[np.ndarray] = None) -> List[PatchPlan]:
        """iterations * batch_size plans for this rank's epoch ``epoch`` (0-based)."""
        rng = np.random.default_rng([self.seed, self.rank, epoch, 0x5A3])
        w = self.base_weights if weights is None else np.asarray(weights, float)
        p_all = w / w.sum()
        n = iterations * batch_size
        first = epoch * n  # patch counter over the whole run, for the exact foreground fraction
        plans = []
        for k in range(first, first + n):
            fg = in_share(k, self.fg_fraction)
            j = k - math.floor(k * self.fg_fraction)  # how many of the patches before k were not foreground
            edge = in_share(j, self.interface_fraction)
            if edge and not fg and len(self._interface):
                cand = self._interface
                cls, entry = INTERFACE_CLASS, int(cand[rng.choice(len(cand), p=w[cand] / w[cand].sum())])
            elif fg and self._fg_candidates:
                f = math.floor(k * self.fg_fraction)  # foreground patches before k: an exact share again
                share = self.second_fg[1] if self.second_fg and len(self._second_candidates) else 0.0
                if in_share(f, share):
                    cls, cand = self.second_fg[0], self._second_candidates
                else:
                    cls = self.fg_class if self.fg_class in self._fg_candidates else \
                        int(rng.choice(sorted(self._fg_candidates)))
                    cand = self._fg_candidates[cls]
                entry = int(cand[rng.choice(len(cand), p=w[cand] / w[cand].sum())])
            else:
                cls, entry = RANDOM, int(rng.choice(len(self.entries), p=p_all))
            plans.append(PatchPlan(entry, cls, int(rng.integers(2 ** 63))))
        return plans

    # -- cutting (training process or loader workers) ---------------------------------------------------
    def _load(self, i: int) -> Dict[str, Any]:
        if i in self._memory:
            self._memory.move_to_end(i)
            return self._memory[i]
        data = load_entry(self.cache_dir, self.entries[i])
        data["image_min"] = float(np.min(data["image"]))
        self._memory[i] = data
        while len(self._memory) > self._memory_entries:
            self._memory.popitem(last=False)
        return data

    def _ambiguous(self, data: Dict[str, Any]) -> bool:
        if self.merge is None:
            return False
        threshold, tumor, kidney = self.merge
        spacing_zyx = tuple(float(v) for v in np.asarray(data["spacing"])[::-1])
        sep = tumor_separation(data["image"], data["labels"], spacing_zyx, tumor, kidney)
        return sep is not None and sep < threshold

    def context_margin(self) -> List[int]:
        """Voxels cut beyond the patch on each side: rotation, scaling and elastic deformation pull in voxels from
        outside the patch, so a larger context (1/8 of the patch) is cut, augmented and its centre kept, and real
        anatomy fills the corners, not padding. 0 without spatial augmentation."""
        a = self.augmentation
        spatial = a is not None and (a.p_rotate > 0 or a.p_scale > 0 or a.p_elastic > 0)
        return [p // 8 if spatial else 0 for p in self.patch]

    def make_patch(self, plan: PatchPlan) -> Dict[str, Any]:
        data = self._load(plan.entry)
        rng = np.random.default_rng(plan.seed)
        image, labels, fill = data["image"], data["labels"], data["image_min"]
        locs = data["locations"].get(plan.centre_class) if plan.centre_class != RANDOM else None
        if "inner_zyx" in data:  # a crop cut wider than the box rule: the (moved) kidney box is the volume
            box = self._moved_box(data, rng)
            image, labels = image[box], labels[box]
            fill = float(image.min())  # what inference pads a box's input with
            if locs is not None:  # centres inside the box, in its coordinates
                locs = locs - np.array([b.start for b in box])
                locs = locs[np.all((locs >= 0) & (locs < labels.shape), axis=1)]
        shape = labels.shape
        if locs is not None and len(locs):
            start = patch_start(locs[rng.integers(len(locs))], shape, self.patch)
        else:  # uniform start over all positions (covering the volume if it is smaller than the patch)
            start = [int(rng.integers(min(0, s - p), max(0, s - p) + 1)) for s, p in zip(shape, self.patch)]
        a, margin = self.augmentation, self.context_margin()
        size = [p + 2 * m for p, m in zip(self.patch, margin)]
        start = [s - m for s, m in zip(start, margin)]
        img = crop_with_padding(image, start, size, fill).astype(np.float32)
        lab = crop_with_padding(labels, start, size, 0)
        spacing_zyx = tuple(float(v) for v in np.asarray(data["spacing"])[::-1])
        if self.augment_on_device:  # the crop with its margin; training.batch_augmentation does the rest
            return {"image": torch.from_numpy(img)[None], "labels": torch.from_numpy(lab.astype(np.uint8)),
                    "entry": plan.entry, "merge": bool(self.merge_flags[plan.entry]), "seed": plan.seed,
                    "spacing_zyx": torch.tensor(spacing_zyx, dtype=torch.float32)}
        if a is not None:
            img, lab = augment(img, lab, spacing_zyx, rng, a)
            centre = tuple(slice(m, m + p) for m, p in zip(margin, self.patch))
            img, lab = img[centre], lab[centre]
        return {"image": torch.from_numpy(np.ascontiguousarray(img, np.float32))[None],
                "labels": torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64)),
                "entry": plan.entry, "merge": bool(self.merge_flags[plan.entry])}

    def _moved_box(self, data: Dict[str, Any], rng: np.random.Generator) -> Tuple[slice, ...]:
        """The box rule's box in a wide crop, each face moved by a distance drawn in ``box_jitter_mm`` (outwards
        positive; none without it), as slices of the crop: the voxels whose centres lie inside, as
        validation cuts the rule's box (``box_slices``)."""
        lo_hi = self.box_jitter_mm or (0.0, 0.0)
        spacing_zyx = np.asarray(data["spacing"], float)[::-1]
        moved = rng.uniform(lo_hi[0], lo_hi[1], size=6) / np.concatenate([spacing_zyx, spacing_zyx])
        inner = np.asarray(data["inner_zyx"], float) + np.concatenate([-moved[:3], moved[3:]])
        return box_slices(inner, data["labels"].shape)


def recipe_sampler(cache_dir, index: Dict[str, Any], entries: List[Dict[str, Any]], labels: Sequence[str],
                   patch_size: Sequence[int], recipe, seed: int = 0, rank: int = 0,
                   augment: bool = True) -> PatchSampler:
    """The trainer's sampler for a ``TrainingRecipe``: its foreground class and share, hard cases, interface share,
    ambiguous crops (decision 86) and moved boxes; ``augment=False`` leaves the augmentation out."""
    merged = recipe.merged_classes(labels)  # (tumor, kidney) for ambiguous crops, or None
    return PatchSampler(cache_dir, entries, patch_size, recipe.foreground_index(labels), recipe.foreground_fraction,
                        hard_case_flags(index, entries, labels, recipe.hard_case_label), recipe.hard_case_factor,
                        recipe.augmentation_config() if augment else None, seed=seed, rank=rank,
                        interface_fraction=recipe.interface_fraction,
                        merge=None if merged is None else (recipe.ambiguous_tumor_separation, *merged),
                        box_jitter_mm=recipe.box_jitter_mm, augment_on_device=recipe.augment_on_device,
                        second_fg=recipe.second_foreground(labels))


class PlannedPatches(torch.utils.data.Dataset):
    """Map-style dataset over one epoch's plans, so a DataLoader can cut patches in worker processes."""

    def __init__(self, sampler: PatchSampler, plans: List[PatchPlan]) -> None:
        self.sampler, self.plans = sampler, plans

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.sampler.make_patch(self.plans[i])


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers run numpy/scipy; keep torch from oversubscribing the cores


def epoch_loader(sampler: PatchSampler, plans: List[PatchPlan], batch_size: int, num_workers: int,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches in plan order (no shuffling: the plan is already random)."""
    return torch.utils.data.DataLoader(
        PlannedPatches(sampler, plans), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=pin_memory, drop_last=False, worker_init_fn=_worker_init if num_workers else None,
        persistent_workers=False)


def hard_case_flags(index: Dict[str, Any], entries: List[Dict[str, Any]], labels: Sequence[str],
                    hard_label: str) -> List[bool]:
    """Per entry: does it contain ``hard_label`` (a stage label), or its case (``has_<label>`` in the index)?"""
    if hard_label in labels:
        k = str(list(labels).index(hard_label))
        return [int(e["class_voxels"].get(k, 0)) > 0 for e in entries]
    key = f"has_{hard_label}"
    return [bool(index["cases"][e["case_id"]].get(key, False)) for e in entries]


def random_intensity_cases(index: Dict[str, Any], case_ids: Sequence[str]) -> List[str]:
    """Of ``case_ids``, those the real-anatomy generator painted with SynthSeg-style random intensities
    (``random_intensities`` in the ``synthetic.json`` beside each case's source folder)."""
    logs: Dict[Path, Dict[str, Any]] = {}
    found = []
    for case_id in case_ids:
        folder = Path(index["cases"][case_id]["source_image"]).parent.parent
        if folder not in logs:
            log_path = folder / "synthetic.json"
            if not log_path.is_file():
                raise ValueError(f"training.skip_random_intensity_cases needs the generator's record {log_path}, "
                                 "which is missing: train on the folder training.synthetic wrote, or set the "
                                 "option to false (it is meant for synthetic data only).")
            logs[folder] = json.loads(log_path.read_text(encoding="utf-8"))["cases"]
        if logs[folder].get(case_id, {}).get("random_intensities", False):
            found.append(case_id)
    return found


def without_random_intensity_cases(index: Dict[str, Any], split: Dict[str, List[str]], say) -> Dict[str, List[str]]:
    """``split`` with the random-intensity cases left out of "train" (``say`` tells how many); validation keeps
    them. SystemExit with the reason when the generator's record is missing."""
    try:
        skipped = set(random_intensity_cases(index, split["train"]))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    say(f"training without {len(skipped)} random-intensity case(s) (training.skip_random_intensity_cases)")
    return {"train": [c for c in split["train"] if c not in skipped], "val": split["val"]}


def load_cache(cache_dir) -> Tuple[Dict[str, Any], List[str]]:
    """(index, all case ids). Splits are over all cases (as ``make_splits`` elsewhere sees them); a case
    without entries (stage 2: no kidney found) simply contributes no patches."""
    index = load_index(cache_dir)
    return index, sorted(index["cases"])
