"""Explicit negatives: auxiliary training classes for the anatomy that a kidney model confuses with kidney or
tumor, read from the synthetic cases' ``anatomy.nii.gz`` (``training.synthetic --anatomy``).

A stage config asks for them by listing auxiliary labels after its main ones (names with the ``aux_`` prefix,
see ``KidneyTumorSegLib.labels``): ``aux_liver``, ``aux_spleen``, ``aux_hilum`` (renal sinus fat, collecting
system, renal vessels) and ``aux_body`` (every other structure inside the body: bowel, vessels, muscle, bone,
fat). The network learns them; inference adds their probabilities to the background's. Air outside the body
stays background. The grouping is decision 24 in docs/decisions.md.

The "interface" voxels (liver, spleen or hilum within ``INTERFACE_MM`` of the kidney) are where the shipped
model went wrong; the cache stores their locations so that training can centre patches on them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.geometry import Image
from KidneyTumorSegLib.image_io import read_labelmap
from KidneyTumorSegLib.labels import is_auxiliary, main_labels

from .layouts import DatasetError

AUX_GROUPS: Dict[str, Tuple[str, ...]] = {
    "aux_liver": ("liver",),
    "aux_spleen": ("spleen",),
    "aux_hilum": ("renal_sinus_fat", "collecting_system", "renal_vessel"),
    "aux_body": (),  # every other anatomy structure
}
INTERFACE_GROUPS = ("aux_liver", "aux_spleen", "aux_hilum")
INTERFACE_MM = 10.0
INTERFACE_CLASS = 255  # the cache's location key for interface voxels (no real class has this index)
ANATOMY_FILE, VOCABULARY_FILE = "anatomy.nii.gz", "anatomy_labels.json"


def auxiliary_labels(stage_labels: Optional[Sequence[str]]) -> list:
    names = [n for n in (stage_labels or ()) if is_auxiliary(n)]
    unknown = sorted(set(names) - set(AUX_GROUPS))
    if unknown:
        raise ValueError(f"Unknown auxiliary labels {unknown}; known: {sorted(AUX_GROUPS)}.")
    return names


def read_anatomy(image_path) -> Tuple[Image, Dict[str, int]]:
    """The ``anatomy.nii.gz`` beside a case's CT and the vocabulary (``anatomy_labels.json`` in the case
    folder or up to two folders above it)."""
    folder = Path(image_path).parent
    path = folder / ANATOMY_FILE
    vocab = next((p / VOCABULARY_FILE for p in (folder, folder.parent, folder.parent.parent)
                  if (p / VOCABULARY_FILE).is_file()), None)
    if not path.is_file() or vocab is None:
        raise DatasetError(f"'{folder}' has no {ANATOMY_FILE} (or no {VOCABULARY_FILE} above it), but the stage "
                           "config asks for auxiliary classes; make the data with training.synthetic --anatomy, "
                           "or use a config without 'aux_' labels.")
    return read_labelmap(path), json.loads(vocab.read_text(encoding="utf-8"))


def add_auxiliary(target: np.ndarray, anatomy: np.ndarray, vocabulary: Dict[str, int],
                  stage_labels: Sequence[str]) -> np.ndarray:
    """``target`` (main labels; 0 = background) with each auxiliary group's anatomy written where the
    target is background. ``anatomy`` lies on the same grid."""
    out = target.astype(np.uint8, copy=True)
    claimed = set()
    for name in auxiliary_labels(stage_labels):
        claimed |= {vocabulary[s] for s in AUX_GROUPS[name] if s in vocabulary}
    for name in auxiliary_labels(stage_labels):
        group = AUX_GROUPS[name]
        if group:
            mask = np.isin(anatomy, [vocabulary[s] for s in group if s in vocabulary])
        else:
            mask = (anatomy > 0) & ~np.isin(anatomy, sorted(claimed))
        out[mask & (target == 0)] = list(stage_labels).index(name)
    return out


def interface_mask(target: np.ndarray, stage_labels: Sequence[str], spacing_zyx) -> np.ndarray:
    """Voxels of the interface groups within INTERFACE_MM of a main foreground label (the kidney)."""
    n_main = len(main_labels(stage_labels))
    idx = [list(stage_labels).index(n) for n in INTERFACE_GROUPS if n in stage_labels]
    kidney = (target > 0) & (target < n_main)
    if not idx or not kidney.any():
        return np.zeros(target.shape, bool)
    near = ndimage.distance_transform_edt(~kidney, sampling=spacing_zyx) <= INTERFACE_MM
    return near & np.isin(target, idx)
