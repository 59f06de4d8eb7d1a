"""Cross-validation splits, written once to ``splits.json`` and reused (never silently reshuffled).

Splits are by case id, so all stage-2 crops of a case, and a synthetic case generated from a KiTS23
label map (same id), fall into the same fold as the real case.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np

from KidneyTumorSegLib.atomic import write_text

from .layouts import DatasetError


def make_splits(case_ids: Sequence[str], n_folds: int = 5, seed: int = 12345,
                path: Union[str, os.PathLike, None] = None) -> List[Dict[str, List[str]]]:
    """[{"train": [...], "val": [...]}, ...] for ``n_folds`` folds; with ``path``, stored once and reused.

    If ``path`` exists it is loaded and must cover exactly ``case_ids`` with the same ``n_folds``; otherwise a
    DatasetError says what changed (delete the file on purpose to reshuffle).
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise DatasetError("Duplicate case ids given to make_splits.")
    if n_folds < 2 or n_folds > len(ids):
        raise DatasetError(f"n_folds must be between 2 and the number of cases ({len(ids)}), got {n_folds}.")
    p = Path(path) if path is not None else None
    if p is not None and p.is_file():
        return load_splits(p, ids, n_folds)
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = [sorted(ids[i] for i in order[f::n_folds]) for f in range(n_folds)]
    splits = [{"train": sorted(c for g, fold in enumerate(folds) if g != f for c in fold), "val": folds[f]}
              for f in range(n_folds)]
    if p is not None:
        p.parent.mkdir(parents=True, exist_ok=True)
        write_text(p, json.dumps({"seed": seed, "n_folds": n_folds, "folds": splits}, indent=1))
    return splits


def load_splits(path: Union[str, os.PathLike], case_ids: Sequence[str] = None, n_folds: int = None):
    """Load ``splits.json``; with ``case_ids``/``n_folds`` check it matches them."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    splits = data["folds"]
    if n_folds is not None and len(splits) != n_folds:
        raise DatasetError(f"'{path}' has {len(splits)} folds, not {n_folds}; delete it to make new splits.")
    if case_ids is not None:
        stored = {c for s in splits for c in s["val"]}
        wanted = set(case_ids)
        if stored != wanted:
            added, removed = sorted(wanted - stored), sorted(stored - wanted)
            raise DatasetError(
                f"'{path}' was made for a different case list ({len(added)} new: {added[:5]}, {len(removed)} "
                f"missing: {removed[:5]}); refusing to reshuffle silently - delete the file to make new splits "
                "or restore the case list.")
    return splits
