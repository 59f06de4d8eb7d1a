"""Segmentation metrics on the true (anisotropic) voxel spacing, per KiTS region.

All arrays are (z, y, x); functions that take ``spacing_zyx`` want it in that order (the reverse of
:class:`Geometry.spacing`). Distances are in mm.

Definitions (chosen to match MedPy 0.5.2 ``medpy.metric.binary``, which the tests compare against):
  * surface voxels (``KidneyTumorSegLib.shapes.surface_voxels``): the mask minus its erosion by the
    6-connected cross (``border_value`` 0, so voxels on the image edge count as surface), as MedPy does;
  * directional distances: for each surface voxel of A, the Euclidean distance (``distance_transform_edt``
    with ``sampling=spacing_zyx``) to the nearest surface voxel of B, voxel centre to voxel centre;
  * HD95: 95th percentile (numpy linear interpolation) of BOTH directions' distances pooled into one set,
    as MedPy ``hd95`` (not the max of the two directional 95th percentiles);
  * ASD (average symmetric surface distance): mean of BOTH directions' distances pooled, i.e.
    (sum d(A->B) + sum d(B->A)) / (|S_A| + |S_B|), as MedPy 0.5 ``assd`` (not the mean of the two
    directional means);
  * surface Dice at tolerance tau: (#surface voxels of A within tau of B + #of B within tau of A) /
    (#surface voxels of A + #of B), counted on voxels (not on surfel areas as DeepMind's surface-distance).

Empty masks (the CSV's ``empty`` column names the case):
  * both empty: Dice, Jaccard, precision, recall and surface Dice are 1, HD95 and ASD 0 (perfect agreement
    on absence: a correctly absent cyst or tumor is not an error);
  * only one empty: Dice, Jaccard and surface Dice 0, HD95 and ASD NaN (no surface to measure from, so
    undefined; summaries use nan-aware statistics and report how many values were defined), precision 0
    when the prediction is not empty (all false positives), recall 0 when the reference is not empty, and
    the other one of the two NaN (0/0).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.shapes import farthest_pair, outline, surface_voxels

# KiTS21/23 hierarchical evaluation classes plus the plain classes not already among them
# (plain tumor {2} is the same set as the hierarchical "tumor" region, so it appears once).
REGIONS: Dict[str, Tuple[int, ...]] = {
    "kidney_and_masses": (1, 2, 3),
    "masses": (2, 3),
    "tumor": (2,),
    "kidney": (1,),
    "cyst": (3,),
}
# KiTS surface-Dice tolerances (mm); the plain classes take the one of the KiTS region they refine.
KITS_TOLERANCES_MM: Dict[str, float] = {
    "kidney_and_masses": 1.033,
    "masses": 1.133,
    "tumor": 1.150,
    "kidney": 1.033,
    "cyst": 1.133,
}
METRICS = ("dice", "jaccard", "precision", "recall", "asd_mm", "hd95_mm", "surface_dice")

# Reference tumor size buckets by longest diameter (mm): [lower, upper).
SIZE_BUCKETS: Tuple[Tuple[str, float, float], ...] = (
    ("<2cm", 0.0, 20.0), ("2-4cm", 20.0, 40.0), ("4-7cm", 40.0, 70.0), (">=7cm", 70.0, math.inf))

def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def overlap_metrics(pred: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    """Dice, Jaccard, precision and recall of two boolean masks (empty-mask conventions in the module doc)."""
    pred = np.asarray(pred, bool)
    ref = np.asarray(ref, bool)
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if n_pred == 0 and n_ref == 0:
        return {"dice": 1.0, "jaccard": 1.0, "precision": 1.0, "recall": 1.0}
    return {"dice": 2.0 * tp / (n_pred + n_ref), "jaccard": tp / (n_pred + n_ref - tp),
            "precision": _ratio(tp, n_pred), "recall": _ratio(tp, n_ref)}


def _crop_box(a: np.ndarray, b: np.ndarray) -> Tuple[slice, ...]:
    """Bounding box of a | b grown by one voxel (clipped), so erosion and EDT inside it equal the full ones.

    The margin keeps the crop edge outside both masks, so cropping creates no false surface; all surface
    voxels lie inside the box, so nearest-surface distances found inside it are exact.
    """
    union = a | b
    box = []
    for axis in range(union.ndim):
        any_other = np.any(union, axis=tuple(i for i in range(union.ndim) if i != axis))
        idx = np.flatnonzero(any_other)
        box.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, union.shape[axis])))
    return tuple(box)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """(distances of pred's surface voxels to ref's surface, distances of ref's to pred's), in mm.

    Both masks must be non-empty (ValueError otherwise).
    """
    pred = np.asarray(pred, bool)
    ref = np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"Masks differ in shape: {pred.shape} vs {ref.shape}.")
    if not pred.any() or not ref.any():
        raise ValueError("surface_distances needs two non-empty masks.")
    box = _crop_box(pred, ref)  # EDT cost scales with the volume: work on the objects' box only
    sp = np.asarray(spacing_zyx, dtype=float)
    s_pred, s_ref = surface_voxels(pred[box]), surface_voxels(ref[box])
    d_pred = ndimage.distance_transform_edt(~s_ref, sampling=sp)[s_pred]
    d_ref = ndimage.distance_transform_edt(~s_pred, sampling=sp)[s_ref]
    return d_pred, d_ref


def distance_metrics(d_pred: np.ndarray, d_ref: np.ndarray, tolerance_mm: float) -> Dict[str, float]:
    """ASD, HD95 and surface Dice from the two directional distance sets (see the module doc)."""
    pooled = np.concatenate([d_pred, d_ref])
    within = np.count_nonzero(d_pred <= tolerance_mm) + np.count_nonzero(d_ref <= tolerance_mm)
    return {"asd_mm": float(pooled.mean()),
            "hd95_mm": float(np.percentile(pooled, 95)),
            "surface_dice": float(within / pooled.size)}


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float],
                   tolerance_mm: float = 1.0) -> Dict[str, float]:
    """All :data:`METRICS` for two boolean masks on a grid of ``spacing_zyx`` mm."""
    pred = np.asarray(pred, bool)
    ref = np.asarray(ref, bool)
    out = overlap_metrics(pred, ref)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if has_pred and has_ref:
        out.update(distance_metrics(*surface_distances(pred, ref, spacing_zyx), tolerance_mm))
    elif not has_pred and not has_ref:
        out.update(asd_mm=0.0, hd95_mm=0.0, surface_dice=1.0)
    else:
        out.update(asd_mm=math.nan, hd95_mm=math.nan, surface_dice=0.0)
    return out


def empty_status(pred: np.ndarray, ref: np.ndarray) -> str:
    """'none', 'both', 'reference' or 'prediction': which of the two masks is empty."""
    has_pred, has_ref = bool(np.any(pred)), bool(np.any(ref))
    return {(True, True): "none", (False, False): "both", (True, False): "reference",
            (False, True): "prediction"}[(has_pred, has_ref)]


def region_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray, spacing_zyx: Sequence[float],
                   tolerances_mm: Optional[Mapping[str, float]] = None,
                   regions: Optional[Mapping[str, Sequence[int]]] = None) -> Dict[str, Dict[str, object]]:
    """{region: {metric: value, 'empty': status, 'tolerance_mm': tau}} for two label maps (z, y, x)."""
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(f"Label maps differ in shape: {pred_labels.shape} vs {ref_labels.shape}.")
    regions = REGIONS if regions is None else regions
    tolerances = dict(KITS_TOLERANCES_MM)
    tolerances.update(tolerances_mm or {})
    out: Dict[str, Dict[str, object]] = {}
    for name, labels in regions.items():
        pred = np.isin(pred_labels, labels)
        ref = np.isin(ref_labels, labels)
        tau = float(tolerances.get(name, 1.0))
        row: Dict[str, object] = dict(binary_metrics(pred, ref, spacing_zyx, tau))
        row["empty"] = empty_status(pred, ref)
        row["tolerance_mm"] = tau
        out[name] = row
    return out


# -- tumor size -----------------------------------------------------------------------------------------
def max_diameter_mm(mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """Longest centre-to-centre distance (mm) between two voxels of ``mask`` (0 for empty/one voxel): the
    measurements' longest diameter (``KidneyTumorSegLib.shapes``), so buckets and reports agree. A straight
    line of n voxels measures (n - 1) spacings."""
    return farthest_pair(outline(mask) * np.asarray(spacing_zyx, dtype=float))[0]


def tumor_diameters_mm(labels: np.ndarray, spacing_zyx: Sequence[float], tumor_labels: Sequence[int] = (2,)
                       ) -> Tuple[float, ...]:
    """Longest diameter of each 26-connected tumor component, largest first."""
    mask = np.isin(labels, tumor_labels)
    if not mask.any():
        return ()
    comps, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    diameters = [max_diameter_mm(comps[sl] == i + 1, spacing_zyx)
                 for i, sl in enumerate(ndimage.find_objects(comps))]
    return tuple(sorted(diameters, reverse=True))


def size_bucket(diameter_mm: float) -> str:
    """Name of the :data:`SIZE_BUCKETS` entry holding ``diameter_mm``."""
    for name, lo, hi in SIZE_BUCKETS:
        if lo <= diameter_mm < hi:
            return name
    raise ValueError(f"Invalid diameter {diameter_mm!r}.")
