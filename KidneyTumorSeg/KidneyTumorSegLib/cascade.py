"""The two-stage cascade: stage 1 finds each kidney on a coarse grid, stage 2 segments each kidney box finely.

    CT (input grid) -> reorient to the stages' canonical axes (permute/flip only, no resampling)
      -> stage 1 at coarse spacing -> kidney mask -> components (at most two, patient side from LPS x)
      -> one box per kidney (+ margin in mm; overlapping boxes merged: horseshoe kidneys)
      -> stage 2 on each box at fine spacing -> class probabilities -> back onto the box's input voxels
      -> labels on the canonical grid -> post-processing -> undo the reorientation
      -> a label map with exactly the input's size, spacing, origin and direction.

Stage 2 runs only inside the boxes, at the input's own voxels there, so the expensive network never sees
most of the abdomen: that is where the speed comes from.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .geometry import Geometry, Image
from .inference import Cancelled, sliding_window_inference
from .labels import Label, Side
from .postprocessing import PostprocessingConfig, kidney_components, postprocess
from .preprocessing import (PreprocessingConfig, crop_or_pad, normalize, reorient, resample,
                            resample_to_reference, undo_reorient)

Progress = Callable[[float, str], None]
MODES = {"fast": dict(overlap=0.25, mirror_axes=None), "default": dict(overlap=0.5, mirror_axes=None),
         "accurate": dict(overlap=0.5, mirror_axes=(0, 1, 2))}


@dataclass
class Stage:
    """One network with what it needs to run: preprocessing, output label names and patch size (z, y, x)."""

    model: torch.nn.Module
    preprocessing: PreprocessingConfig
    labels: Sequence[str]
    patch_size: Tuple[int, int, int]

    @classmethod
    def from_checkpoint(cls, checkpoint) -> "Stage":
        return cls(checkpoint.model, checkpoint.preprocessing, checkpoint.labels, checkpoint.patch_size)


@dataclass(frozen=True)
class CascadeConfig:
    """How the stages are chained. Margins and volumes are physical (mm, mm^3), not voxels."""

    box_margin_mm: float = 15.0          # stage 1 works at 3-4 mm: one coarse voxel of error, plus context
    min_kidney_mm3: float = 5_000.0      # stage-1 components below 5 mL are not kidneys (specks, bowel)
    max_kidneys: int = 2
    # Kidneys lie beside the spine. A stage-1 component centred within this distance of the body's midline
    # (a full bladder, a bowel loop: the usual false finds on unfamiliar scans) gets a box only when fewer
    # than max_kidneys components lie lateral to it; a horseshoe kidney, alone on the midline, still does.
    min_lateral_mm: float = 25.0
    mode: str = "default"                # "fast" | "default" | "accurate" (mirroring TTA)
    batch_size: int = 2
    postprocessing: Optional[PostprocessingConfig] = field(default_factory=PostprocessingConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; use one of {sorted(MODES)}.")
        if self.box_margin_mm < 0 or self.min_kidney_mm3 < 0 or self.max_kidneys < 1 or self.min_lateral_mm < 0:
            raise ValueError("box_margin_mm, min_kidney_mm3 and min_lateral_mm must be >= 0 and max_kidneys >= 1.")


@dataclass
class KidneyBox:
    """A stage-2 region: [start, stop) voxels (z, y, x) of the canonical grid, and where it is (LPS mm)."""

    start: Tuple[int, int, int]
    stop: Tuple[int, int, int]
    sides: Tuple[Side, ...]
    lps_min: Tuple[float, float, float]
    lps_max: Tuple[float, float, float]


@dataclass
class CascadeResult:
    labels: np.ndarray                      # (z, y, x) uint8 Label values on ``geometry``
    geometry: Geometry                      # exactly the input image's geometry
    boxes: List[KidneyBox]
    message: str
    timings: dict
    probabilities: Optional[np.ndarray] = None  # (K, z, y, x) float16 on ``geometry``, when asked for


class Cascade:
    def __init__(self, stage1: Stage, stage2: Stage, config: Optional[CascadeConfig] = None,
                 device: str | torch.device = "auto"):
        if stage1.preprocessing.orientation != stage2.preprocessing.orientation:
            raise ValueError("Both stages must use the same canonical orientation "
                             f"({stage1.preprocessing.orientation} vs {stage2.preprocessing.orientation}).")
        if len(stage2.labels) != len(Label):
            raise ValueError(f"Stage 2 must predict {[l.name for l in Label]}, not {list(stage2.labels)}.")
        self.stage1, self.stage2 = stage1, stage2
        self.config = config or CascadeConfig()
        self.device = device

    def segment(self, image: Image, progress: Optional[Progress] = None,
                should_cancel: Optional[Callable[[], bool]] = None,
                return_probabilities: bool = False, log: Optional[Callable[[str], None]] = None) -> CascadeResult:
        """Segment ``image`` (HU); raises ``inference.Cancelled`` when ``should_cancel()`` turns True."""
        report = progress or (lambda fraction, text: None)
        cancel = should_cancel or (lambda: False)
        timings: dict = {}
        t0 = time.perf_counter()
        ct, grid, reo = reorient(image.array.astype(np.float32, copy=False), image.geometry,
                                 self.stage1.preprocessing.orientation)

        report(0.0, "Stage 1: locating the kidneys")
        mask1, grid1, midline_x = self._run_stage1(
            ct, grid, lambda f: report(0.3 * f, "Stage 1: locating the kidneys"), cancel, log)
        boxes = self._boxes(mask1, grid1, grid, midline_x)
        timings["stage1_s"] = time.perf_counter() - t0

        n_classes = len(self.stage2.labels)
        labels = np.zeros(ct.shape, np.uint8)
        probs = np.zeros((n_classes,) + ct.shape, np.float16) if return_probabilities else None
        if probs is not None:
            probs[Label.BACKGROUND] = 1.0
        t1 = time.perf_counter()
        for i, box in enumerate(boxes):
            text = f"Stage 2: kidney region {i + 1} of {len(boxes)}"
            lo = 0.3 + 0.65 * i / len(boxes)
            box_probs = self._run_stage2(ct, grid, box, lambda f: report(lo + 0.65 * f / len(boxes), text),
                                         cancel, log)
            region = tuple(slice(a, b) for a, b in zip(box.start, box.stop))
            labels[region] = np.argmax(box_probs, axis=0)
            if probs is not None:
                probs[(slice(None),) + region] = box_probs
        timings["stage2_s"] = time.perf_counter() - t1

        if cancel():
            raise Cancelled("Segmentation cancelled.")
        t2 = time.perf_counter()
        report(0.95, "Post-processing")
        if self.config.postprocessing is not None:
            labels = postprocess(labels, grid.spacing, self.config.postprocessing)
        labels, _ = undo_reorient(labels, reo)
        if probs is not None:
            probs, _ = undo_reorient(probs, reo)
        timings["postprocessing_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0
        message = (f"Found {len(boxes)} kidney region(s)." if boxes else
                   "No kidney was found in this image: check that it is an abdominal CT that covers the "
                   "kidneys; the result is empty.")
        report(1.0, "Done")
        return CascadeResult(labels, image.geometry, boxes, message, timings, probs)

    # -- stages -------------------------------------------------------------------------------------
    def _infer(self, stage: Stage, x: np.ndarray, progress, cancel, log) -> np.ndarray:
        mode = MODES[self.config.mode]
        return sliding_window_inference(x, stage.model, stage.patch_size, overlap=mode["overlap"],
                                        batch_size=self.config.batch_size, device=self.device,
                                        mirror_axes=mode["mirror_axes"], progress=progress,
                                        should_cancel=cancel, log=log)

    def _run_stage1(self, ct: np.ndarray, grid: Geometry, progress, cancel,
                    log) -> Tuple[np.ndarray, Geometry, Optional[float]]:
        cfg = self.stage1.preprocessing
        x, g1 = (ct, grid) if cfg.target_spacing is None else resample(ct, grid, cfg.target_spacing, "linear")
        probs = self._infer(self.stage1, normalize(x, cfg), progress, cancel, log)
        # Every non-background class of stage 1 counts as kidney (stage 1 may also predict masses).
        return probs[0] < 0.5, g1, body_midline_x(x, g1)

    def _run_stage2(self, ct: np.ndarray, grid: Geometry, box: KidneyBox, progress, cancel, log) -> np.ndarray:
        cfg = self.stage2.preprocessing
        crop, g_crop = crop_or_pad(ct, grid, box.start, box.stop)
        if cfg.target_spacing is None:
            x, g2 = crop, g_crop
        else:
            x, g2 = resample(crop, g_crop, cfg.target_spacing, "linear")
        probs = self._infer(self.stage2, normalize(x, cfg), progress, cancel, log)
        if g2 is not g_crop:
            probs = resample_to_reference(probs, g2, g_crop, "linear")
        return probs

    # -- boxes --------------------------------------------------------------------------------------
    def _boxes(self, mask1: np.ndarray, grid1: Geometry, grid: Geometry,
               midline_x: Optional[float] = None) -> List[KidneyBox]:
        cfg = self.config
        pp = PostprocessingConfig(max_kidneys=MAX_CANDIDATES, min_kidney_mm3=cfg.min_kidney_mm3)
        comps = kidney_components(mask1.astype(np.uint8) * int(Label.KIDNEY), grid1.spacing, grid1, pp)
        comps = select_kidneys(comps, midline_x, cfg.max_kidneys, cfg.min_lateral_mm)
        boxes = [self._box_on_grid(c.slices, (c.side,), grid1, grid) for c in comps]
        return _merge_overlapping(boxes, grid)

    def _box_on_grid(self, slices, sides, grid1: Geometry, grid: Geometry) -> KidneyBox:
        # The coarse box's outer corners (voxel edges, hence +-0.5) in physical space, then on the input grid.
        lo = np.array([s.start for s in slices][::-1], float) - 0.5
        hi = np.array([s.stop for s in slices][::-1], float) - 0.5
        corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)]
                            for bits in np.ndindex(2, 2, 2)])
        ijk = grid.physical_to_index(grid1.index_to_physical(corners))
        margin = self.config.box_margin_mm / np.asarray(grid.spacing)
        start = np.maximum(np.floor(ijk.min(axis=0) + 0.5 - margin), 0).astype(int)
        stop = np.minimum(np.ceil(ijk.max(axis=0) + 0.5 + margin), grid.size).astype(int)
        return _make_box(start[::-1], stop[::-1], sides, grid)


MAX_CANDIDATES = 8  # stage-1 components considered before the choice of kidneys


def body_midline_x(ct: np.ndarray, grid: Geometry) -> Optional[float]:
    """LPS x (mm) of the body's centre of mass (voxels above -500 HU: soft tissue and bone), so that a
    patient off-centre in the field of view still gets the right midline. None without any body."""
    body = np.argwhere(ct > -500.0)
    if not len(body):
        return None
    return float(grid.index_to_physical(body.mean(axis=0)[::-1][None])[0][0])


def select_kidneys(comps, midline_x: Optional[float], max_kidneys: int, min_lateral_mm: float):
    """Up to ``max_kidneys`` of the stage-1 components (largest first): lateral ones (centre at least
    ``min_lateral_mm`` from the body midline) before medial ones; sides re-assigned from the body midline
    (LPS x above it is patient left) when it is known."""
    if midline_x is None:
        return comps[:max_kidneys]
    # A stable sort: lateral components first, each group still largest first.
    chosen = sorted(comps, key=lambda c: abs(c.centroid_lps[0] - midline_x) < min_lateral_mm)[:max_kidneys]
    for c in chosen:
        c.side = Side.LEFT if c.centroid_lps[0] > midline_x else Side.RIGHT
    return sorted(chosen, key=lambda c: -c.volume_mm3)


def _make_box(start, stop, sides, grid: Geometry) -> KidneyBox:
    corners = np.array([[(start, stop)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    lps = grid.index_to_physical(corners[:, ::-1] - 0.5)
    return KidneyBox(tuple(int(v) for v in start), tuple(int(v) for v in stop), tuple(sides),
                     tuple(lps.min(axis=0)), tuple(lps.max(axis=0)))


def _merge_overlapping(boxes: List[KidneyBox], grid: Geometry) -> List[KidneyBox]:
    """Merge boxes that overlap (e.g. both halves of a horseshoe kidney) into their bounding box."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if all(max(a.start[k], b.start[k]) < min(a.stop[k], b.stop[k]) for k in range(3)):
                    start = np.minimum(a.start, b.start)
                    stop = np.maximum(a.stop, b.stop)
                    boxes[i] = _make_box(start, stop, a.sides + b.sides, grid)
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes, key=lambda b: b.start)
