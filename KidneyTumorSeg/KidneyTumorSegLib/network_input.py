"""A cascade stage's network input, built one way for training and for inference, and its way back.

    CT (HU, any axis order)      --canonical_ct-->  canonical grid (stage orientation; permute/flip only)
    kidney components            --boxes_around-->  stage-2 boxes on the canonical grid (+ margin, merged)
    stage-2 labels at a box face --grown_box----->  the box grown there (inference: a lesion stage 1 cut off)
    canonical CT [+ box]         --stage_input-->   crop -> resample (image_interpolation) -> normalise
    network output (C, z, y, x)  --InputGrid.back-> the box (or the whole canonical grid) at the CT's spacing

Every parameter comes from the stage's ``PreprocessingConfig``, which the checkpoint stores: orientation,
spacing, interpolation, normalisation and, for stage 2, the box rule (``box_margin_mm``,
``box_min_kidney_mm3``, ``box_merge``). Callers differ only in where the kidney components come from: the
cascade takes stage 1's output (``cascade.Cascade.kidney_boxes``), the training cache the reference labels
(:func:`reference_boxes`). Output classes are not interpreted here (``back`` resamples any channels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .geometry import Geometry, Image
from .labels import Side
from .postprocessing import PostprocessingConfig, kidney_components
from .preprocessing import (PreprocessingConfig, Reorientation, crop_geometry, crop_or_pad, normalize, reorient,
                            resample_to_reference, resampled_geometry)

ROUNDING_TOLERANCE = 1e-6  # voxels: a box edge this close to a voxel edge counts as on it (float noise)


# -- boxes ------------------------------------------------------------------------------------------
@dataclass
class KidneyBox:
    """A stage-2 region: [start, stop) voxels (z, y, x) of the canonical grid, and where it is (LPS mm)."""

    start: Tuple[int, int, int]
    stop: Tuple[int, int, int]
    sides: Tuple[Side, ...]
    lps_min: Tuple[float, float, float]
    lps_max: Tuple[float, float, float]

    @classmethod
    def on_grid(cls, start, stop, sides, grid: Geometry) -> "KidneyBox":
        corners = np.array([[(start, stop)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
        lps = grid.index_to_physical(corners[:, ::-1] - 0.5)
        return cls(tuple(int(v) for v in start), tuple(int(v) for v in stop), tuple(sides),
                   tuple(lps.min(axis=0)), tuple(lps.max(axis=0)))


def box_around(slices: Sequence[slice], component_grid: Geometry, grid: Geometry, margin_mm: float,
               sides: Sequence[Side] = ()) -> KidneyBox:
    """The box on ``grid`` that holds the voxels ``slices`` (z, y, x) of ``component_grid`` (outer voxel
    corners, so a coarse voxel counts whole) plus ``margin_mm`` on every side, clipped to ``grid``."""
    lo = np.array([s.start for s in slices][::-1], float) - 0.5  # voxel edges, index order x, y, z
    hi = np.array([s.stop for s in slices][::-1], float) - 0.5
    if component_grid is grid:
        ijk = np.stack([lo, hi])
    else:
        corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
        ijk = grid.physical_to_index(component_grid.index_to_physical(corners))
    margin = margin_mm / np.asarray(grid.spacing)
    start = np.floor(ijk.min(axis=0) + 0.5 - margin + ROUNDING_TOLERANCE)
    stop = np.ceil(ijk.max(axis=0) + 0.5 + margin - ROUNDING_TOLERANCE)
    start = np.maximum(start, 0).astype(int)
    stop = np.minimum(stop, grid.size).astype(int)
    return KidneyBox.on_grid(start[::-1], stop[::-1], sides, grid)


def merge_boxes(boxes: Sequence[KidneyBox], grid: Geometry, rule: str = "overlap") -> List[KidneyBox]:
    """``rule`` "overlap": boxes that share a voxel (e.g. both halves of a horseshoe kidney) become their
    bounding box, until none overlap; "none": kept as they are. Sorted by start (z, y, x)."""
    boxes = list(boxes)
    while rule == "overlap":
        pair = next(((i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                     if _overlap(boxes[i], boxes[j])), None)
        if pair is None:
            break
        a, b = boxes[pair[0]], boxes.pop(pair[1])
        boxes[pair[0]] = KidneyBox.on_grid(np.minimum(a.start, b.start), np.maximum(a.stop, b.stop),
                                           a.sides + b.sides, grid)
    return sorted(boxes, key=lambda b: b.start)


def _overlap(a: KidneyBox, b: KidneyBox) -> bool:
    return all(max(a.start[k], b.start[k]) < min(a.stop[k], b.stop[k]) for k in range(3))


def boxes_around(components, component_grid: Geometry, grid: Geometry,
                 config: PreprocessingConfig) -> List[KidneyBox]:
    """Stage 2's boxes on ``grid`` for kidney components (``postprocessing.KidneyComponent``: ``slices`` on
    ``component_grid``, ``side``): the config's margin, then its merge rule."""
    boxes = [box_around(c.slices, component_grid, grid, config.box_margin_mm, (c.side,)) for c in components]
    return merge_boxes(boxes, grid, config.box_merge)


def grown_box(box: KidneyBox, labels: np.ndarray, grid: Geometry, grow_mm: float, band_mm: float = 2.0,
              min_mm3: float = 100.0) -> Optional[KidneyBox]:
    """``box`` grown by ``grow_mm`` at each face where ``labels`` (stage 2's labels on the box, z, y, x) has at
    least ``min_mm3`` of foreground within ``band_mm`` of the face (a stray voxel does not count), unless the
    face lies at the edge of ``grid``; None when no face grows. Stage 1 boxes the kidney it finds, so a tumor
    it missed can run out of the box (a cut tumor is measured and scored wrong); training boxes hold the
    whole reference kidney, tumor included."""
    if labels.shape != tuple(b - a for a, b in zip(box.start, box.stop)):
        raise ValueError(f"Labels {labels.shape} do not match the box {box.start}-{box.stop}.")
    spacing, size = np.asarray(grid.spacing)[::-1], np.asarray(grid.size)[::-1]  # z, y, x
    band = np.maximum(1, np.ceil(band_mm / spacing - ROUNDING_TOLERANCE)).astype(int)
    grow = np.ceil(grow_mm / spacing - ROUNDING_TOLERANCE).astype(int)
    start, stop = np.array(box.start), np.array(box.stop)
    foreground = labels > 0
    min_voxels = max(1.0, min_mm3 / float(np.prod(spacing)))
    for axis in range(3):
        n = labels.shape[axis]
        near_low = np.count_nonzero(np.take(foreground, range(min(band[axis], n)), axis=axis)) >= min_voxels
        near_high = np.count_nonzero(np.take(foreground, range(max(0, n - band[axis]), n), axis=axis)) >= min_voxels
        if near_low and start[axis] > 0:
            start[axis] = max(0, start[axis] - grow[axis])
        if near_high and stop[axis] < size[axis]:
            stop[axis] = min(int(size[axis]), stop[axis] + grow[axis])
    if tuple(start) == box.start and tuple(stop) == box.stop:
        return None
    return KidneyBox.on_grid(start, stop, box.sides, grid)


def reference_boxes(labels: np.ndarray, grid: Geometry, config: PreprocessingConfig,
                    max_kidneys: int = 2) -> List[KidneyBox]:
    """Stage 2's boxes from a reference label map on the canonical ``grid`` (training; oracle benchmarks):
    its kidney components (labels 1-3, each >= ``box_min_kidney_mm3``, largest ``max_kidneys``)."""
    pp = PostprocessingConfig(max_kidneys=max_kidneys, min_kidney_mm3=config.box_min_kidney_mm3)
    return boxes_around(kidney_components(labels, grid.spacing, grid, pp), grid, grid, config)


# -- the input --------------------------------------------------------------------------------------
def canonical_ct(image: Image, config: PreprocessingConfig) -> Tuple[np.ndarray, Geometry, Reorientation]:
    """The CT as float32 on the stage's canonical axes (no resampling); ``undo_reorient`` goes back."""
    return reorient(image.array.astype(np.float32, copy=False), image.geometry, config.orientation)


@dataclass(frozen=True)
class InputGrid:
    """Where a network input lies: ``region`` (the box, or the whole canonical grid, at the CT's spacing)
    resampled to ``geometry`` (the stage's spacing; ``region`` itself when the config keeps the spacing)."""

    canonical: Geometry
    box: Optional[KidneyBox]
    region: Geometry
    geometry: Geometry

    @classmethod
    def of(cls, canonical: Geometry, config: PreprocessingConfig, box: Optional[KidneyBox] = None) -> "InputGrid":
        region = canonical if box is None else crop_geometry(canonical, box.start, box.stop)
        spacing = config.target_spacing
        return cls(canonical, box, region, region if spacing is None else resampled_geometry(region, spacing))

    def cut(self, array: np.ndarray, kind: str) -> np.ndarray:
        """An array on the canonical grid -> on ``geometry``: the CT with the config's image_interpolation,
        label maps with "nearest" or "onehot" (training targets take exactly the CT's path)."""
        if self.box is not None:
            array, _ = crop_or_pad(array, self.canonical, self.box.start, self.box.stop)
        return array if self.geometry is self.region else resample_to_reference(array, self.region,
                                                                                self.geometry, kind)

    def back(self, array: np.ndarray, kind: str = "linear") -> np.ndarray:
        """A network output ((C,) z, y, x on ``geometry``: probabilities "linear", labels "nearest"/"onehot")
        -> onto ``region``: the box's voxels of the canonical grid."""
        return array if self.geometry is self.region else resample_to_reference(array, self.geometry,
                                                                                self.region, kind)


@dataclass
class StageInput:
    image: np.ndarray   # (z, y, x) float32, normalised: exactly what the network is given
    hu: np.ndarray      # the same voxels before normalisation (HU)
    grid: InputGrid

    @property
    def geometry(self) -> Geometry:
        return self.grid.geometry


def stage_input(ct: np.ndarray, canonical: Geometry, config: PreprocessingConfig,
                box: Optional[KidneyBox] = None) -> StageInput:
    """The network input of a stage: ``ct`` (HU, float32 on the ``canonical`` grid, see :func:`canonical_ct`)
    cut to ``box`` (stage 2) or whole (stage 1), resampled and normalised as ``config`` says."""
    grid = InputGrid.of(canonical, config, box)
    hu = grid.cut(ct, config.image_interpolation)
    return StageInput(normalize(hu, config), hu, grid)
