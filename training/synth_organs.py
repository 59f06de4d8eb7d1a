"""Enlarged spleens and livers for the real-anatomy generator (``training.synthetic --large-organs``).

Why: on held-out synthetic cases the from-scratch stage 2 took a whole spleen that lay beside the left kidney,
at its level, for kidney and tumor (model card, run sc). The 46 training bodies rarely put spleen or liver
there; splenomegaly and hepatomegaly, common in the patients who get abdominal CTs (cirrhosis, portal
hypertension, blood diseases), do. An enlarged spleen grows down, forward and toward the midline from its
fixed place under the left diaphragm, and a Riedel lobe or a large liver reaches down beside the right kidney.

So, on the anatomy map after the kidneys are placed, the organ is scaled about the cranial, posterior,
lateral corner of its bounding box: it keeps its top and back and grows the other ways. It takes voxels of
bowel, stomach, pancreas, fat and the like (replaced, not pushed aside: a simplification), never a kidney,
bone, a large vessel, lung, heart or bladder. The grid is the generator's axis-aligned LPS grid: array axes
(z, y, x) run superior, posterior and patient-left.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from .anatomy_maps import ANATOMY

GROWTH_P = {"spleen": 0.35, "liver": 0.2}  # share of cases whose organ is enlarged
GROWTH = (1.15, 1.45)  # linear factor: 1.5-3x the volume, moderate to marked enlargement
PROTECTED = ("bone", "aorta", "inferior_vena_cava", "portal_splenic_vein", "lung", "heart", "urinary_bladder",
             "liver", "spleen")


def grow_organ(anatomy: np.ndarray, labels: np.ndarray, name: str, factor: float) -> int:
    """Scale organ ``name`` of ``anatomy`` (in place) by ``factor`` about its cranial, posterior, lateral
    corner; it takes only voxels without a kidney label (``labels`` > 0) and outside :data:`PROTECTED`.
    Lateral is patient left for the spleen, right for the liver. Returns the number of voxels it gained."""
    if name not in ("spleen", "liver"):
        raise ValueError(f"grow_organ enlarges the spleen or the liver, not {name!r}.")
    if not factor >= 1.0:
        raise ValueError(f"grow_organ needs a factor >= 1 (it enlarges), got {factor!r}.")
    value = ANATOMY[name]
    mask = anatomy == value
    if not mask.any():
        return 0
    idx = np.nonzero(mask)
    lo = np.array([i.min() for i in idx])
    hi = np.array([i.max() for i in idx])
    anchor = np.array([hi[0], hi[1], hi[2] if name == "spleen" else lo[2]], dtype=float)
    new_lo = np.maximum(np.floor(anchor + (lo - anchor) * factor), 0).astype(int)
    new_hi = np.minimum(np.ceil(anchor + (hi - anchor) * factor), np.array(anatomy.shape) - 1).astype(int)
    box = tuple(slice(a, b + 1) for a, b in zip(new_lo, new_hi))
    grid = np.indices(tuple(new_hi - new_lo + 1), dtype=float)
    src = [np.rint(anchor[i] + (grid[i] + new_lo[i] - anchor[i]) / factor).astype(int) for i in range(3)]
    inside = np.all([(s >= 0) & (s < n) for s, n in zip(src, anatomy.shape)], axis=0)
    scaled = np.zeros(inside.shape, bool)
    scaled[inside] = mask[tuple(s[inside] for s in src)]
    protected = np.isin(anatomy[box], [ANATOMY[n] for n in PROTECTED]) | (labels[box] > 0)
    gain = scaled & ~protected
    anatomy[box][gain] = value
    return int(gain.sum())


def enlarge_organs(anatomy: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Dict[str, float]:
    """Enlarge the spleen and the liver each with its :data:`GROWTH_P` chance, by a factor drawn from
    :data:`GROWTH`; returns {organ: factor} for those enlarged (the case's info records it)."""
    grown = {}
    for name, p in GROWTH_P.items():
        if rng.random() < p:
            factor = float(rng.uniform(*GROWTH))
            if grow_organ(anatomy, labels, name, factor):
                grown[name] = round(factor, 3)
    return grown
