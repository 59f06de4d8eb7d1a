"""How sure the model is of each lesion, and ``--min-confidence``: unsure lesions listed apart, not drawn.

* Confidence map (``confidence_map``, made by the cascade): per voxel of the input grid, the probability
  the network gives the voxel's final label (after the auxiliary classes are merged into the background
  and after post-processing), times 255, as uint8: one byte per voxel instead of a float per class.
  A tumor that ``lesion_density`` then calls cyst keeps its tumor probability: that rule changes a lesion's
  kind, not how sure the network is that the lesion is there.
  Outside the stage-2 boxes, where stage 1 found no kidney and every voxel is background, it is 255.
* Lesion confidence: the mean of the map over the lesion's voxels, in [0, 1] (``component_means``): the
  mean probability of the lesion's own class (tumor or cyst) where it was drawn.
* ``split_uncertain``: tumor and cyst components (the measurements' lesions: ``config.structure``
  connectivity, specks below ``config.min_lesion_mm3`` left alone) whose confidence is below the threshold
  become background and are returned as ``UncertainLesion`` (kind, side, volume, centroid, confidence), so
  reports can list them without drawing them. Background rather than kidney (docs/decisions.md): the false
  lesions seen on real CTs lie in the renal sinus and the liver, and calling them kidney would add them to
  the kidney's volume and surface.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .geometry import Geometry
from .labels import Label
from .postprocessing import PostprocessingConfig

SCALE = 255  # uint8 map value of probability 1
KINDS = (("tumor", Label.TUMOR), ("cyst", Label.CYST))


def confidence_map(labels: np.ndarray, box_probabilities: Sequence[Tuple[Tuple[slice, ...], np.ndarray]]) -> np.ndarray:
    """uint8 (z, y, x): probability of each voxel's label x 255. ``box_probabilities``: (region, (C, ...)
    class probabilities on that region of ``labels``) per stage-2 box, later boxes over earlier ones."""
    out = np.full(labels.shape, SCALE, np.uint8)
    for region, probs in box_probabilities:
        lab = labels[region].astype(np.intp)[None]
        chosen = np.take_along_axis(probs, lab, axis=0)[0].astype(np.float32)
        out[region] = np.rint(np.clip(chosen, 0.0, 1.0) * SCALE).astype(np.uint8)
    return out


def component_means(components: np.ndarray, n: int, confidence: np.ndarray) -> np.ndarray:
    """Mean confidence in [0, 1] of each component id 0..n of ``components`` (same shape as the map)."""
    sums = np.bincount(components.ravel(), weights=confidence.ravel().astype(np.float64), minlength=n + 1)
    counts = np.bincount(components.ravel(), minlength=n + 1)
    return sums / np.maximum(counts, 1) / SCALE


@dataclass
class UncertainLesion:
    """A lesion below ``--min-confidence``: listed, not drawn (its voxels became background)."""

    kind: str
    side: Optional[str]
    volume_ml: float
    centroid_lps: Tuple[float, float, float]
    confidence: float
    id: str = ""

    def to_dict(self, threshold: Optional[float] = None) -> Dict[str, Any]:
        """``threshold``: the ``--min-confidence`` it fell below, so that the written value stays below it."""
        c = [round(float(v), 2) for v in self.centroid_lps]
        return {"id": self.id, "kind": self.kind, "side": self.side, "volume_ml": round(self.volume_ml, 3),
                "confidence": confidence_value(self.confidence, threshold), "centroid_lps": c,
                "centroid_ras": [-c[0], -c[1], c[2]]}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "UncertainLesion":
        return cls(d["kind"], d.get("side"), float(d["volume_ml"]), tuple(d["centroid_lps"]),
                   float(d["confidence"]), d.get("id", ""))


def _lesion_box(labels: np.ndarray) -> Optional[Tuple[slice, ...]]:
    boxes = [b for b in ndimage.find_objects(labels, max_label=int(max(Label)))[Label.TUMOR - 1:] if b]
    if not boxes:
        return None
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def split_uncertain(labels: np.ndarray, confidence: np.ndarray, geometry: Geometry, min_confidence: float,
                    config: Optional[PostprocessingConfig] = None,
                    midline_x: Optional[float] = None) -> Tuple[np.ndarray, List[UncertainLesion]]:
    """(labels with every lesion below ``min_confidence`` set to background, those lesions largest first).
    The input is not modified. ``midline_x``: the body's midline, for each lesion's side (as ``segments``)."""
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must lie in [0, 1], got {min_confidence}.")
    config = config or PostprocessingConfig()
    labels = np.asarray(labels)
    if confidence.shape != labels.shape:
        raise ValueError(f"Confidence map {confidence.shape} and label map {labels.shape} differ in shape.")
    box = _lesion_box(labels)
    if box is None:
        return labels.copy(), []
    voxel_mm3 = float(np.prod(geometry.spacing))
    sub, conf = labels[box], confidence[box]
    drop = np.zeros(sub.shape, bool)
    found = []
    for kind, value in KINDS:
        lc, n = ndimage.label(sub == value, structure=config.structure)
        means = component_means(lc, n, conf)
        sizes = np.bincount(lc.ravel(), minlength=n + 1)
        low = [j for j in range(1, n + 1)
               if means[j] < min_confidence and sizes[j] * voxel_mm3 >= config.min_lesion_mm3]
        if not low:
            continue
        centres = ndimage.center_of_mass(np.ones(sub.shape), lc, low)
        offset = np.array([s.start for s in box], float)
        for j, c in zip(low, centres):
            lps = geometry.index_to_physical((np.asarray(c) + offset)[::-1])
            found.append((UncertainLesion(kind, None, sizes[j] * voxel_mm3 / 1000.0,
                                          tuple(float(v) for v in lps), float(means[j])), lc == j))
        drop |= np.isin(lc, low)
    out = labels.copy()
    if found:
        _set_sides(labels, geometry, config, box, found, midline_x)
        out[box][drop] = Label.BACKGROUND
    found.sort(key=lambda f: -f[0].volume_ml)
    for i, (lesion, _) in enumerate(found, start=1):
        lesion.id = f"uncertain_{i}"
    return out, [lesion for lesion, _ in found]


def _set_sides(labels, geometry, config, box, found, midline_x) -> None:
    """Each lesion's side: that of the segment it would have been drawn in (``segments``' side rule)."""
    from .segments import segments_from_labels
    seg_map, segments = segments_from_labels(labels, geometry, config, midline_x)
    sides = {s.value: (None if s.side is None else s.side.value) for s in segments}
    for lesion, mask in found:
        values = seg_map[box][mask]
        lesion.side = sides.get(int(np.bincount(values).argmax())) if values.size else None


def segment_confidences(seg_map: np.ndarray, segments, confidence: np.ndarray, geometry: Geometry,
                        config: Optional[PostprocessingConfig] = None,
                        unsure_below: Optional[float] = None) -> Dict[str, Dict[str, str]]:
    """{segment id: {tag: value}} for the ``.seg.nrrd`` and Slicer: ``KidneyTumorSeg.Confidence`` (the
    segment's mean, e.g. "0.82") and ``Description``, which for tumor and cyst segments lists each lesion,
    e.g. "Model confidence 0.62; lesions: 31.0 mL at 0.85, 2.1 mL at 0.41 (uncertain)": a lesion below
    ``unsure_below`` is marked, as in the measurements (``mark_uncertain``)."""
    config = config or PostprocessingConfig()
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    boxes = ndimage.find_objects(seg_map)
    out = {}
    for s in segments:
        box = boxes[s.value - 1] if s.value <= len(boxes) else None
        if box is None:
            continue
        mask = seg_map[box] == s.value
        mean = float(confidence[box][mask].mean()) / SCALE
        text = f"Model confidence {mean:.2f}"
        if s.label in (Label.TUMOR, Label.CYST):
            lc, n = ndimage.label(mask, structure=config.structure)
            means, sizes = component_means(lc, n, confidence[box]), np.bincount(lc.ravel(), minlength=n + 1)
            order = sorted(range(1, n + 1), key=lambda j: -sizes[j])
            text += "; lesions: " + ", ".join(f"{sizes[j] * voxel_ml:.1f} mL at {_lesion_text(means[j], unsure_below)}"
                                             for j in order)
        out[s.id] = {"KidneyTumorSeg.Confidence": f"{mean:.3f}", "Description": text}
    return out


def _lesion_text(value: float, unsure_below: Optional[float]) -> str:
    unsure = unsure_below is not None and value < unsure_below
    return confidence_text(value, unsure_below) + (" (uncertain)" if unsure else "")


def confidence_text(value: float, threshold: Optional[float] = None) -> str:
    """``value`` with 2 decimals, unless that prints it on the other side of ``threshold``. A value below it is
    then cut, not rounded, to 3 decimals, which puts it below: 0.567 beside a threshold of 0.57 reads "0.567",
    0.56996 reads "0.569". A value at or above it gets the decimals it needs to stay there: 0.575 beside a
    hand-set 0.575 reads "0.575", not "0.57"."""
    text = f"{value:.2f}"
    if threshold is None or (float(text) < threshold) == (value < threshold):
        return text
    if value >= threshold:
        return next((t for t in (f"{value:.{k}f}" for k in range(3, 10)) if float(t) >= threshold), repr(float(value)))
    cut = math.floor(value * 1000) / 1000
    return f"{cut - 0.001 if cut >= threshold else cut:.3f}"  # the double just below a 3-decimal threshold


def confidence_value(value: Optional[float], threshold: Optional[float] = None, ndigits: int = 3) -> Optional[float]:
    """``value`` rounded to ``ndigits`` for the JSON and CSV files, with more digits where rounding would carry it
    across ``threshold``: 0.5697 beside 0.57 is written 0.5697, not 0.57 beside ``"uncertain": true``."""
    if value is None:
        return None
    for k in range(ndigits, 9):
        rounded = round(float(value), k)
        if threshold is None or (rounded < threshold) == (value < threshold):
            return rounded
    return float(value)


def threshold_text(threshold: float) -> str:
    """A confidence threshold: 2 decimals, or all it has (a user's 0.575 must not read 0.57)."""
    return f"{threshold:.2f}" if round(threshold, 2) == threshold else f"{threshold:g}"
