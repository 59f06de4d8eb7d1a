"""KiTS label map -> Slicer segments (one per structure and patient side), and Slicer ``.seg.nrrd`` files.

A ``.seg.nrrd`` is an ordinary NRRD whose voxels are the segment label values (one layer here: segments
never overlap) and whose header carries the segment metadata as ``key:=value`` fields, in the form
vtkMRMLSegmentationStorageNode writes and reads (key names checked against a file written by Slicer's
own storage node from slicer-core). SimpleITK's NRRD writer writes the image metadata dictionary as
exactly such fields and writes ``space directions`` = direction columns x spacing and ``space origin`` in
``left-posterior-superior``, so ITK's LPS geometry goes in unchanged (Slicer converts to RAS on reading).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from scipy import ndimage

from .atomic import atomic_output, check_output
from .errors import InputError
from .geometry import Geometry, Image
from .image_io import write_sitk
from .labels import FOREGROUND, Label, Side, color_float, segment_name, terminology
from .postprocessing import PostprocessingConfig, kidney_components

PathLike = Union[str, os.PathLike]

# Segment order in the file (and in Slicer's segment list): structure first, then left, right, unknown.
_SIDE_ORDER = (Side.LEFT, Side.RIGHT, None)
_SIDE_CODE = {None: 0, Side.RIGHT: 1, Side.LEFT: 2}  # values of the per-voxel side map
# Slicer takes the segmentation's editing and conversion grid from this parameter (the rest default).
_REFERENCE_GEOMETRY_DESCRIPTION = ("Image geometry description string determining the geometry of the "
                                   "labelmap that is created in course of conversion.")


@dataclass(frozen=True)
class SegmentInfo:
    """One Slicer segment: ``value`` is its label value in the segment labelmap (1..N)."""

    id: str
    name: str
    label: Label
    side: Optional[Side]
    value: int
    color: Tuple[float, float, float]
    terminology: str


def _side_map(labels: np.ndarray, geometry: Geometry, config: Optional[PostprocessingConfig],
              midline_x: Optional[float]) -> np.ndarray:
    """uint8 array: the side code (see ``_SIDE_CODE``) of the kidney component each voxel belongs to."""
    sides = np.zeros(labels.shape, np.uint8)
    comps = kidney_components(labels, geometry.spacing, geometry, config, midline_x)
    for comp in comps:
        # mask covers the whole component (kidney, tumor and cyst), so lesions inherit the kidney's side
        region = sides[comp.slices]
        region[comp.mask] = _SIDE_CODE[comp.side]
    if comps:
        _attach_fragments(labels, sides, geometry, comps)
    return sides


def _attach_fragments(labels: np.ndarray, sides: np.ndarray, geometry: Geometry, comps) -> None:
    """Small pieces that post-processing keeps near a kidney (pole tips cut off between thick slices) take
    the side of the kidney whose centroid is nearest, so no segment is left without a side."""
    loose = np.argwhere((labels > 0) & (sides == 0))
    if not len(loose):
        return
    points = geometry.index_to_physical(loose[:, ::-1].astype(float))
    kidneys = np.array([c.centroid_lps for c in comps])
    nearest = np.argmin(np.linalg.norm(points[:, None, :] - kidneys[None], axis=2), axis=1)
    codes = np.array([_SIDE_CODE[c.side] for c in comps], np.uint8)
    sides[tuple(loose.T)] = codes[nearest]


def segments_from_labels(labels: np.ndarray, geometry: Geometry, config: Optional[PostprocessingConfig] = None,
                         midline_x: Optional[float] = None) -> Tuple[np.ndarray, List[SegmentInfo]]:
    """Split a KiTS label map (z, y, x) into per-side segments.

    Returns ``(segment_labelmap, segments)``: a uint8 (z, y, x) map holding each segment's ``value`` and
    the present segments in order kidney, tumor, cyst, each left, right, then side-less. The side of a
    voxel is that of the kidney component (see ``postprocessing.kidney_components``, with ``config`` and
    the body's ``midline_x`` when the CT is known) it belongs to, or of the nearest one for fragments outside
    every component; only when no kidney component exists at all do voxels get side None ("Kidney", ...).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"Label maps must be 3D (z, y, x), got shape {labels.shape}.")
    if geometry.size is not None and geometry.shape != labels.shape:
        raise ValueError(f"Label map shape {labels.shape} (z, y, x) does not match geometry size {geometry.size}.")
    if labels.size and (labels.min() < 0 or labels.max() > max(Label)):
        raise ValueError(f"Label values must be {[int(v) for v in Label]} (KiTS23), found "
                         f"{int(labels.min())}..{int(labels.max())}.")
    labels = labels.astype(np.uint8, copy=False)
    sides = _side_map(labels, geometry, config, midline_x)
    # Only the foreground's bounding box needs work: a kidney fills a few % of a full-size CT.
    box = ndimage.find_objects((labels > 0).view(np.uint8))
    box = box[0] if box else (slice(0, 0),) * 3
    # One lookup over (label, side) pairs instead of a mask per segment: code = label * 3 + side code.
    combined = labels[box] * np.uint8(3) + sides[box]
    present = np.bincount(combined.ravel(), minlength=3 * (max(Label) + 1)) > 0
    lut = np.zeros(3 * (max(Label) + 1), np.uint8)
    segments: List[SegmentInfo] = []
    for label in FOREGROUND:
        for side in _SIDE_ORDER:
            code = int(label) * 3 + _SIDE_CODE[side]
            if not present[code]:
                continue
            name = segment_name(label, side)
            value = len(segments) + 1
            lut[code] = value
            segments.append(SegmentInfo(name.lower().replace(" ", "_"), name, Label(label), side, value,
                                        color_float(label), terminology(label, side).serialize()))
    seg_map = np.zeros(labels.shape, np.uint8)
    seg_map[box] = lut[combined]
    return seg_map, segments


# -- .seg.nrrd ---------------------------------------------------------------------------------------
def _extent(box: Optional[Tuple[slice, ...]]) -> str:
    """Slicer's segment extent 'x0 x1 y0 y1 z0 z1' (inclusive voxel indices) from a (z, y, x) box."""
    if box is None:
        return "0 -1 0 -1 0 -1"  # what Slicer writes for an empty segment
    return " ".join(f"{s.start} {s.stop - 1}" for s in reversed(box))


def _reference_geometry(geometry: Geometry) -> str:
    """vtkSegmentationConverter::SerializeImageGeometry: IJK-to-RAS matrix (row-major) then extent."""
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geometry.affine()
    extent = [v for n in geometry.size for v in (0, n - 1)]
    return "".join(f"{v:.17g};" for v in list(ijk_to_ras.ravel() + 0.0) + extent)


def tags_text(terminology_entry: str, extra: Optional[Dict[str, str]] = None) -> str:
    """A segment's tags as Slicer stores them: "key:value" items each ended by "|" (so "|" cannot occur in
    a value: replaced by "/"); the terminology entry first."""
    items = {"TerminologyEntry": terminology_entry, **(extra or {})}
    return "".join(f"{k}:{str(v).replace('|', '/')}|" for k, v in items.items())


def seg_nrrd_metadata(segments: List[SegmentInfo], segment_labelmap: np.ndarray,
                      geometry: Geometry, tags: Optional[Dict[str, Dict[str, str]]] = None) -> dict:
    """The ``key:=value`` header fields of a single-layer ``.seg.nrrd`` (see Slicer's storage node);
    ``tags``: extra segment tags by segment id (e.g. ``confidence.segment_confidences``)."""
    boxes = ndimage.find_objects(segment_labelmap)  # one pass for every segment's bounding box
    meta = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        "Segmentation_ConversionParameters":
            f"Reference image geometry|{_reference_geometry(geometry)}|{_REFERENCE_GEOMETRY_DESCRIPTION}&",
    }
    for i, s in enumerate(segments):
        p = f"Segment{i}_"
        meta.update({
            p + "ID": s.id,
            p + "Name": s.name,
            p + "NameAutoGenerated": "0",
            p + "Color": " ".join(f"{c:.6g}" for c in s.color),
            p + "ColorAutoGenerated": "0",
            p + "Extent": _extent(boxes[s.value - 1] if s.value <= len(boxes) else None),
            p + "LabelValue": str(s.value),
            p + "Layer": "0",
            p + "Tags": tags_text(s.terminology, (tags or {}).get(s.id)),
        })
    return meta


def write_seg_nrrd(labels: np.ndarray, geometry: Geometry, path: PathLike, overwrite: bool = False,
                   config: Optional[PostprocessingConfig] = None, midline_x: Optional[float] = None) -> Path:
    """Write the segments of a KiTS label map as a Slicer ``.seg.nrrd`` (gzip), atomically.

    Refuses (InputError) to replace an existing file unless ``overwrite``. Returns the resolved path.
    """
    seg_map, segments = segments_from_labels(labels, geometry, config, midline_x)
    return write_segments(seg_map, segments, geometry, path, overwrite)


def write_segments(seg_map: np.ndarray, segments: List[SegmentInfo], geometry: Geometry, path: PathLike,
                   overwrite: bool = False, tags: Optional[Dict[str, Dict[str, str]]] = None) -> Path:
    """Write segments from :func:`segments_from_labels` as a ``.seg.nrrd``.

    Only the bounding box of the segments is stored, with its offset in the reference grid
    (``Segmentation_ReferenceImageExtentOffset``), as Slicer itself saves segmentations: a kidney
    segmentation of a 512 x 512 x 400 CT then writes in a fraction of the time and space, while the
    reference geometry keeps the full grid.
    """
    out = Path(path).expanduser().resolve()
    if not out.name.lower().endswith(".nrrd"):
        raise InputError(f"Cannot write '{out.name}' as a Slicer segmentation; name it '*.seg.nrrd'.")
    check_output(out, overwrite)
    full = Image(seg_map, geometry).geometry  # fills in / checks the size
    box = ndimage.find_objects((seg_map > 0).astype(np.uint8))
    box = box[0] if box else (slice(0, 1),) * 3  # an empty segmentation still needs one voxel
    start = np.array([b.start for b in box])
    cropped = Geometry(full.spacing, full.index_to_physical(start[::-1].astype(float)), full.direction)
    sitk_img = Image(np.ascontiguousarray(seg_map[box]), cropped).to_sitk()
    meta = seg_nrrd_metadata(segments, seg_map[box], full, tags)
    meta["Segmentation_ReferenceImageExtentOffset"] = " ".join(str(int(v)) for v in start[::-1])
    for key, value in meta.items():
        sitk_img.SetMetaData(key, value)
    with atomic_output(out, suffix=".nrrd") as tmp:  # ".nrrd" selects SimpleITK's writer
        write_sitk(sitk_img, tmp, out)
    return out
