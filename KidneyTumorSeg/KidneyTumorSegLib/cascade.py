"""The two-stage cascade: stage 1 finds each kidney on a coarse grid, stage 2 segments each kidney box finely.

    CT (input grid) -> reorient to the stages' canonical axes (permute/flip only, no resampling)
      -> stage 1 at coarse spacing -> kidney mask -> components (at most two, patient side from LPS x)
      -> one box per kidney (+ margin in mm; overlapping boxes merged: horseshoe kidneys)
      -> stage 2 on each box at fine spacing -> class probabilities -> back onto the box's input voxels
         (a box whose labels reach a face is grown there and run again, ``box_growth`` times at most;
          boxes that grow into each other are merged and run once more)
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

from .confidence import confidence_map
from .geometry import Geometry, Image
from .inference import Cancelled, sliding_window_inference
from .labels import Label, main_labels, merge_auxiliary
from .lesion_density import cyst_hu_range, water_tumors_to_cysts
from .mirroring import mirror_axes_tuple
from .network_input import KidneyBox, boxes_around, canonical_ct, grown_box, merge_boxes, stage_input
from .postprocessing import PostprocessingConfig, body_midline_x, kidney_components, postprocess
from .preprocessing import PreprocessingConfig, undo_reorient

__all__ = ["Cascade", "CascadeConfig", "CascadeResult", "KidneyBox", "Stage", "body_midline_x"]

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
    """How the stages are chained. Distances are physical (mm), not voxels. The box itself (margin, minimum
    kidney volume, merging) is part of stage 2's input and comes from its ``PreprocessingConfig``."""

    max_kidneys: int = 2
    # Kidneys lie beside the spine. A stage-1 component centred within this distance of the body's midline
    # (a full bladder, a bowel loop: the usual false finds on unfamiliar scans) gets a box only when fewer
    # than max_kidneys components lie lateral to it; a horseshoe kidney, alone on the midline, still does.
    min_lateral_mm: float = 25.0
    mode: str = "default"                # "fast" | "default" | "accurate" (mirroring TTA)
    # Canonical axes (0, 1, 2 = z, y, x) whose mirror images stage 2 also runs on, its logits averaged, in the
    # "default" mode (a model may recommend them: models.recommended_stage2_mirror_axes). "fast" mirrors
    # nothing; "accurate" mirrors every axis in both stages. Valid because training flips every axis.
    stage2_mirror_axes: Tuple[int, ...] = ()
    # Stage 2 runs again on a box grown by box_growth_mm where its labels reach a face (network_input.grown_box),
    # at most box_growth times per box: a tumor stage 1 did not count as kidney can run out of its box.
    box_growth: int = 0
    box_growth_mm: float = 30.0
    batch_size: int = 2
    postprocessing: Optional[PostprocessingConfig] = field(default_factory=PostprocessingConfig)
    # After post-processing, tumors of median HU in this range become cysts (lesion_density.py; a model may
    # recommend it: models.recommended_cyst_hu); None leaves the network's lesion kinds.
    cyst_hu: Optional[Tuple[float, float]] = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; use one of {sorted(MODES)}.")
        if self.max_kidneys < 1 or self.min_lateral_mm < 0:
            raise ValueError("min_lateral_mm must be >= 0 and max_kidneys >= 1.")
        if self.box_growth < 0 or self.box_growth_mm <= 0:
            raise ValueError("box_growth must be >= 0 and box_growth_mm > 0.")
        object.__setattr__(self, "stage2_mirror_axes", mirror_axes_tuple(self.stage2_mirror_axes))
        if self.cyst_hu is not None:
            object.__setattr__(self, "cyst_hu", cyst_hu_range(self.cyst_hu))


@dataclass
class CascadeResult:
    labels: np.ndarray                      # (z, y, x) uint8 Label values on ``geometry``
    geometry: Geometry                      # exactly the input image's geometry
    boxes: List[KidneyBox]
    message: str
    timings: dict
    probabilities: Optional[np.ndarray] = None  # (K, z, y, x) float16 on ``geometry``, when asked for
    confidence: Optional[np.ndarray] = None  # (z, y, x) uint8: p(each voxel's label) x 255 (confidence.py)
    midline_x: Optional[float] = None  # LPS x (mm) of the body's midline, which decides left and right


class Cascade:
    """Both stages on one CT. Stage 2's boxes come from :meth:`kidney_boxes`, the one method meant to be
    overridden (e.g. boxes from reference masks in benchmarks, see ``network_input.reference_boxes``)."""

    def __init__(self, stage1: Stage, stage2: Stage, config: Optional[CascadeConfig] = None,
                 device: str | torch.device = "auto"):
        if stage1.preprocessing.orientation != stage2.preprocessing.orientation:
            raise ValueError("Both stages must use the same canonical orientation "
                             f"({stage1.preprocessing.orientation} vs {stage2.preprocessing.orientation}).")
        if len(main_labels(stage2.labels)) != len(Label):
            raise ValueError(f"Stage 2 must predict {[l.name for l in Label]} (and any auxiliary 'aux_' classes), "
                             f"not {list(stage2.labels)}.")
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
        ct, grid, reo = canonical_ct(image, self.stage1.preprocessing)

        report(0.0, "Stage 1: locating the kidneys")
        x1 = stage_input(ct, grid, self.stage1.preprocessing)
        probs1 = self.stage1_probabilities(x1.image, lambda f: report(0.3 * f, "Stage 1: locating the kidneys"),
                                           cancel, log)
        # Every main non-background class of stage 1 counts as kidney (stage 1 may also predict masses);
        # auxiliary classes (liver, spleen, ...) count as background.
        background1 = merge_auxiliary(probs1, self.stage1.labels)[0]
        midline = body_midline_x(x1.hu, x1.geometry)  # physical: the same on every grid of this CT
        boxes = self.kidney_boxes(background1 < 0.5, x1.geometry, grid, midline)
        timings["stage1_s"] = time.perf_counter() - t0

        n_classes = len(Label)
        labels = np.zeros(ct.shape, np.uint8)
        probs = np.zeros((n_classes,) + ct.shape, np.float16) if return_probabilities else None
        if probs is not None:
            probs[Label.BACKGROUND] = 1.0
        t1 = time.perf_counter()
        kept = []  # (region, probabilities) per box, for the confidence map after post-processing
        runs = self._run_boxes(ct, grid, boxes, report, cancel, log)
        boxes = [box for box, _ in runs]
        for box, box_probs in runs:
            region = tuple(slice(a, b) for a, b in zip(box.start, box.stop))
            labels[region] = np.argmax(box_probs, axis=0)
            kept.append((region, box_probs.astype(np.float16)))
            if probs is not None:
                probs[(slice(None),) + region] = box_probs
        timings["stage2_s"] = time.perf_counter() - t1

        if cancel():
            raise Cancelled("Segmentation cancelled.")
        t2 = time.perf_counter()
        report(0.95, "Post-processing")
        if self.config.postprocessing is not None:
            labels = postprocess(labels, grid.spacing, self.config.postprocessing)
        # The map before the density rule: it changes a lesion's kind, not how sure the network is of the lesion.
        confidence, _ = undo_reorient(confidence_map(labels, kept), reo)
        relabelled = ""  # said in the message, which the command line and Slicer show
        if self.config.cyst_hu is not None:
            pp = self.config.postprocessing
            labels, n = water_tumors_to_cysts(labels, ct, grid.spacing, self.config.cyst_hu,
                                              structure=pp.structure if pp is not None else None)
            relabelled = (f" {n} tumor(s) of water density ({self.config.cyst_hu[0]:g} to "
                          f"{self.config.cyst_hu[1]:g} HU) called cyst." if n else "")
        labels, _ = undo_reorient(labels, reo)
        if probs is not None:
            probs, _ = undo_reorient(probs, reo)
        timings["postprocessing_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0
        message = (f"Found {len(boxes)} kidney region(s).{relabelled}" if boxes else
                   "No kidney was found in this image: check that it is an abdominal CT that covers the "
                   "kidneys; the result is empty.")
        report(1.0, "Done")
        return CascadeResult(labels, image.geometry, boxes, message, timings, probs, confidence, midline)

    # -- stages -------------------------------------------------------------------------------------
    def stage1_probabilities(self, x: np.ndarray, progress: Optional[Callable[[float], None]] = None,
                             should_cancel: Optional[Callable[[], bool]] = None, log=None) -> np.ndarray:
        """Stage 1's probabilities (one channel per ``stage1.labels``) on its input ``x``
        (``stage_input(...).image``, on stage 1's grid): what ``segment`` finds the kidneys from."""
        return self._infer(self.stage1, None, x, progress or (lambda f: None), should_cancel or (lambda: False), log)

    def _infer(self, stage: Stage, default_mirror: Optional[Tuple[int, ...]], x: np.ndarray, progress, cancel,
               log) -> np.ndarray:
        """``stage``'s probabilities on ``x``; ``default_mirror``: its mirror axes in the default mode."""
        mode = MODES[self.config.mode]
        mirror = (default_mirror or None) if self.config.mode == "default" else mode["mirror_axes"]
        return sliding_window_inference(x, stage.model, stage.patch_size, overlap=mode["overlap"],
                                        batch_size=self.config.batch_size, device=self.device,
                                        mirror_axes=mirror, progress=progress,
                                        should_cancel=cancel, log=log)

    def _run_boxes(self, ct: np.ndarray, grid: Geometry, boxes: Sequence[KidneyBox], report, cancel,
                   log) -> List[Tuple[KidneyBox, np.ndarray]]:
        """(box, main-class probabilities on it) per stage-2 box, each grown as ``box_growth`` allows. Boxes
        that grew into each other are merged by the box rule and run once more (not grown), so that no voxel
        is labelled from the edge of one box over another's."""
        runs = []
        for i, box in enumerate(boxes):
            text, lo = f"Stage 2: kidney region {i + 1} of {len(boxes)}", 0.3 + 0.65 * i / len(boxes)
            runs.append(self._stage2(ct, grid, box, self.config.box_growth,
                                     lambda f: report(lo + 0.65 * f / len(boxes), text), cancel, log))
        merged = merge_boxes([box for box, _ in runs], grid, self.stage2.preprocessing.box_merge)
        if len(merged) == len(runs):
            return runs
        ran = {(box.start, box.stop): probs for box, probs in runs}
        def again(fraction: float) -> None:
            report(0.95, "Stage 2: kidney regions that grew into each other")
        return [(box, ran[(box.start, box.stop)]) if (box.start, box.stop) in ran else
                self._stage2(ct, grid, box, 0, again, cancel, log) for box in merged]

    def _stage2(self, ct: np.ndarray, grid: Geometry, box: KidneyBox, growth: int, progress, cancel,
                log) -> Tuple[KidneyBox, np.ndarray]:
        """(the box stage 2 last ran on, its main-class probabilities on that box): grown and run again while
        its labels reach a face that is not the image edge, ``growth`` times at most."""
        grown = 0
        while True:
            x2 = stage_input(ct, grid, self.stage2.preprocessing, box)
            probs = self._infer(self.stage2, self.config.stage2_mirror_axes, x2.image,
                                lambda f: progress((grown + f) / (growth + 1)), cancel, log)
            probs = x2.grid.back(merge_auxiliary(probs, self.stage2.labels))
            bigger = (None if grown == growth else
                      grown_box(box, np.argmax(probs, axis=0), grid, self.config.box_growth_mm))
            if bigger is None:
                return box, probs
            if log is not None:
                log(f"Stage 2: labels reach a face of the box; growing it there (up to "
                    f"{self.config.box_growth_mm:g} mm)")
            box, grown = bigger, grown + 1

    # -- boxes --------------------------------------------------------------------------------------
    def kidney_boxes(self, mask1: np.ndarray, grid1: Geometry, grid: Geometry,
                     midline_x: Optional[float] = None) -> List[KidneyBox]:
        """Stage 2's boxes on the canonical ``grid`` from stage 1's kidney mask (on ``grid1``): components
        >= stage 2's ``box_min_kidney_mm3``, chosen by :func:`_select_kidneys`, boxed by its box rule."""
        box_rule = self.stage2.preprocessing
        candidates = PostprocessingConfig(max_kidneys=MAX_CANDIDATES, min_kidney_mm3=box_rule.box_min_kidney_mm3)
        comps = kidney_components(mask1.astype(np.uint8) * int(Label.KIDNEY), grid1.spacing, grid1, candidates,
                                  midline_x)  # sides from the body's midline when it is known
        comps = _select_kidneys(comps, midline_x, self.config.max_kidneys, self.config.min_lateral_mm)
        return boxes_around(comps, grid1, grid, box_rule)


MAX_CANDIDATES = 8  # stage-1 components considered before the choice of kidneys


def _select_kidneys(comps, midline_x: Optional[float], max_kidneys: int, min_lateral_mm: float):
    """Up to ``max_kidneys`` of the stage-1 components (largest first): lateral ones (centre at least
    ``min_lateral_mm`` from the body midline) before medial ones, when the midline is known. Sides are
    ``kidney_components``' (from the same midline)."""
    if midline_x is None:
        return comps[:max_kidneys]
    # A stable sort: lateral components first, each group still largest first.
    chosen = sorted(comps, key=lambda c: abs(c.centroid_lps[0] - midline_x) < min_lateral_mm)[:max_kidneys]
    return sorted(chosen, key=lambda c: -c.volume_mm3)
