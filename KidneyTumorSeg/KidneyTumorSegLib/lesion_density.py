"""Water-density tumors called cysts: the attenuation rule radiologists use, applied after the network.

A renal mass of homogeneous simple-fluid attenuation, -9 to 20 HU, is a simple cyst (Bosniak class I/II in
the 2019 Bosniak classification, Silverman et al., Radiology 2019), in an unenhanced and in a contrast-enhanced
CT alike: fluid does not enhance, while solid tumors measure 20-50 HU unenhanced and more once enhanced. The
stage-2 networks call almost every lesion tumor (no model so far finds KiTS23's few, small cysts), so a model
may recommend this rule (``cyst_hu`` in its entry, ``models.recommended_cyst_hu``): every tumor component whose
median HU lies in the range becomes cyst. The rule changes a lesion's kind, never whether it is a lesion.

Limits, on purpose:
* Components under ``min_ml`` (0.5 mL, a 1 cm sphere) keep the network's label: below about 1 cm, partial
  volume with the kidney around them moves the measured HU, and radiologists call such lesions "too small to
  characterise".
* The median, not the mean: it ignores the rim of partial-volume voxels (against bright cortex or fat) as long
  as the rim is under half the lesion. Homogeneity itself is not checked: a mostly necrotic tumor with a thin
  enhancing wall could read as water, which is why the rule is a model's recommendation that can be turned off.
* Only the network's tumors are relabelled; its cysts, kidney and background stay as they are.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .labels import Label

SIMPLE_FLUID_HU = (-9.0, 20.0)  # Bosniak 2019: homogeneous simple-fluid attenuation
MIN_CHARACTERISED_ML = 0.5


def cyst_hu_range(values: Sequence[float], where: str = "cyst_hu") -> Tuple[float, float]:
    """(low, high) HU from a list or tuple of two numbers, low < high; ValueError naming ``where`` otherwise."""
    if (not isinstance(values, (list, tuple)) or len(values) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values)):
        raise ValueError(f"{where} must be two numbers (low and high HU), not {values!r}")
    low, high = (float(v) for v in values)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{where} must be two finite numbers with low < high, not {values!r}")
    return low, high


def water_tumors_to_cysts(labels: np.ndarray, ct: np.ndarray, spacing, hu_range: Tuple[float, float],
                          min_ml: float = MIN_CHARACTERISED_ML, structure: Optional[np.ndarray] = None
                          ) -> Tuple[np.ndarray, int]:
    """(labels with every tumor component of median HU in ``hu_range`` (inclusive) and at least ``min_ml``
    relabelled cyst, the number of components relabelled). ``labels`` and ``ct`` share one (z, y, x) grid of
    ``spacing`` (mm); ``structure``: the components' connectivity (default 26). ``labels`` is not modified."""
    if labels.shape != ct.shape:
        raise ValueError(f"labels {labels.shape} and CT {ct.shape} must be on one grid.")
    low, high = cyst_hu_range(hu_range)
    tumor = labels == Label.TUMOR
    if not tumor.any():
        return labels, 0
    components, n = ndimage.label(tumor, structure if structure is not None else np.ones((3, 3, 3), bool))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out, changed = labels.copy(), 0
    for i, box in enumerate(ndimage.find_objects(components), 1):
        inside = components[box] == i
        if inside.sum() * voxel_ml < min_ml:
            continue
        if low <= float(np.median(ct[box][inside])) <= high:
            out[box][inside] = Label.CYST
            changed += 1
    return out, changed
