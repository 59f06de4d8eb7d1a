"""Preprocessing steps (reorient, resample, crop, normalise) with their inverses, and ``PreprocessingConfig``.

The steps are chained into a network input in one place only: ``network_input`` (used by the cascade and
the training cache alike).

Conventions:
  * Reorientation only permutes/flips array axes (never resamples) so that index axes i, j, k point as
    closely as possible to the canonical code (default "LPS": i -> patient Left, j -> Posterior,
    k -> Superior, as in ``sitk.DICOMOrient``). An oblique residual rotation stays in the direction matrix.
  * Resampling keeps the direction and the physical centre of the field of view:
    new_size = round(size * spacing / new_spacing) and the new grid is centred on the old one, so for an
    integer ratio the outer voxel corners coincide (e.g. halving the spacing splits every voxel in two).
    Points just outside the old grid take the nearest voxel's value (no artificial padding value).
  * Arrays are (z, y, x); functions that take ``kind="linear"`` also accept a leading channel axis (C, z, y, x).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .geometry import Geometry, Image

Vec3 = Tuple[float, float, float]
_AXES = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}
KINDS = ("linear", "bspline", "nearest", "onehot")
NORMALIZATIONS = ("clip_zscore", "window")
BOX_MERGES = ("overlap", "none")


# -- reorientation ----------------------------------------------------------------------------------
def _parse_orientation(code: str) -> Tuple[Tuple[int, int], ...]:
    axes = tuple(_AXES.get(c, (-1, 0)) for c in str(code).upper())
    if len(axes) != 3 or sorted(a for a, _ in axes) != [0, 1, 2]:
        raise ValueError(f"Invalid orientation code {code!r}; use three letters such as 'LPS' or 'RAS'.")
    return axes


@dataclass(frozen=True)
class Reorientation:
    """New index axis a is old index axis ``perm[a]``, reversed if ``flip[a]``."""

    perm: Tuple[int, int, int]
    flip: Tuple[bool, bool, bool]
    original: Geometry
    reoriented: Geometry

    def to_dict(self) -> Dict[str, Any]:
        return {"perm": list(self.perm), "flip": list(self.flip), "original": self.original.to_dict(),
                "reoriented": self.reoriented.to_dict()}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Reorientation":
        return cls(tuple(d["perm"]), tuple(bool(f) for f in d["flip"]), Geometry.from_dict(d["original"]),
                   Geometry.from_dict(d["reoriented"]))


def _with_size(geometry: Geometry, array: np.ndarray) -> Geometry:
    size = tuple(int(s) for s in reversed(array.shape[-3:]))
    if geometry.size is None:
        return Geometry(geometry.spacing, geometry.origin, geometry.direction, size)
    if geometry.size != size:
        raise ValueError(f"Array shape {array.shape} does not match geometry size {geometry.size} (x, y, z).")
    return geometry


def _spatial_axes(ndim: int, perm: Sequence[int]) -> list:
    # numpy axis ndim-1-c holds index axis c; channel axes in front stay where they are.
    return list(range(ndim - 3)) + [ndim - 1 - perm[2 - n] for n in range(3)]


def axis_permutation(direction_matrix: np.ndarray, target: str = "LPS") -> Tuple[Tuple[int, ...], Tuple[bool, ...]]:
    """(perm, flip): ``target``'s axis a is index axis perm[a] (x, y, z order), reversed where flip[a]."""
    axes, d = _parse_orientation(target), np.asarray(direction_matrix, float)
    perm = max(itertools.permutations(range(3)),  # closest canonical axes, also for oblique scans
               key=lambda p: sum(abs(d[axes[a][0], p[a]]) for a in range(3)))
    return tuple(perm), tuple(bool(d[axes[a][0], perm[a]] * axes[a][1] < 0) for a in range(3))


def reorient(array: np.ndarray, geometry: Geometry, target: str = "LPS") -> Tuple[np.ndarray, Geometry, Reorientation]:
    """Permute/flip ``array`` so its index axes follow ``target``; physical voxel positions are unchanged."""
    g = _with_size(geometry, array)
    d = g.direction_matrix
    perm, flip = axis_permutation(d, target)
    corner = [0.0, 0.0, 0.0]
    for a in range(3):
        if flip[a]:
            corner[perm[a]] = g.size[perm[a]] - 1.0
    new_dir = np.stack([d[:, perm[a]] * (-1.0 if flip[a] else 1.0) for a in range(3)], axis=1)
    new_g = Geometry([g.spacing[p] for p in perm], g.index_to_physical(corner), new_dir, [g.size[p] for p in perm])
    out = np.transpose(array, _spatial_axes(array.ndim, perm))
    for a in range(3):
        if flip[a]:
            out = np.flip(out, axis=array.ndim - 1 - a)
    return np.ascontiguousarray(out), new_g, Reorientation(tuple(perm), flip, g, new_g)


def undo_reorient(array: np.ndarray, info: Reorientation) -> Tuple[np.ndarray, Geometry]:
    """Exact inverse of :func:`reorient` (array on ``info.reoriented`` -> array on ``info.original``)."""
    _with_size(info.reoriented, array)
    for a in range(3):
        if info.flip[a]:
            array = np.flip(array, axis=array.ndim - 1 - a)
    array = np.transpose(array, np.argsort(_spatial_axes(array.ndim, info.perm)))
    return np.ascontiguousarray(array), info.original


# -- resampling -------------------------------------------------------------------------------------
def resampled_geometry(geometry: Geometry, target_spacing: Sequence[float]) -> Geometry:
    """Grid with ``target_spacing`` (x, y, z), same direction and same physical field-of-view centre."""
    if geometry.size is None:
        raise ValueError("resampled_geometry needs a geometry with a size.")
    old_size, old_sp = np.asarray(geometry.size, float), np.asarray(geometry.spacing)
    new_sp = np.asarray(target_spacing, dtype=float)
    if new_sp.shape != (3,) or not np.all(new_sp > 0):
        raise ValueError(f"target_spacing must be 3 positive numbers (x, y, z), got {target_spacing}.")
    new_size = np.maximum(np.floor(old_size * old_sp / new_sp + 0.5), 1)
    centre = geometry.index_to_physical((old_size - 1) / 2)
    origin = centre - geometry.direction_matrix @ (new_sp * (new_size - 1) / 2)
    return Geometry(new_sp, origin, geometry.direction, new_size.astype(int))


def _resample_sitk(array: np.ndarray, geometry: Geometry, ref: Geometry, interpolator: int) -> np.ndarray:
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in ref.size])
    f.SetOutputSpacing(ref.spacing)
    f.SetOutputOrigin(ref.origin)
    f.SetOutputDirection(ref.direction)
    f.SetInterpolator(interpolator)
    f.SetUseNearestNeighborExtrapolator(True)  # edge voxels of the target that fall just outside the source
    return sitk.GetArrayFromImage(f.Execute(Image(array, geometry).to_sitk()))


def resample_to_reference(array: np.ndarray, geometry: Geometry, reference: Geometry,
                          kind: str = "linear") -> np.ndarray:
    """Resample ``array`` (on ``geometry``) onto the ``reference`` grid (size, spacing, origin, direction).

    kind: "linear"/"bspline" (images, probabilities; float32 out, leading channel axis allowed),
    "nearest" (labels, dtype kept) or "onehot" (labels: each label's one-hot channel linearly, then argmax).
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown resampling kind {kind!r}; use one of {KINDS}.")
    if reference.size is None:
        raise ValueError("The reference geometry needs a size.")
    geometry = _with_size(geometry, array)
    if array.ndim == 4 and kind in ("linear", "bspline"):
        return np.stack([resample_to_reference(c, geometry, reference, kind) for c in array])
    if array.ndim != 3:
        raise ValueError(f"Expected a (z, y, x) array for kind {kind!r}, got shape {array.shape}.")
    if geometry.is_close(reference, atol=1e-9):  # same grid: exact copy, no interpolation error
        return array.astype(np.float32) if kind in ("linear", "bspline") else array.copy()
    if kind in ("linear", "bspline"):
        return _resample_sitk(array.astype(np.float32, copy=False), geometry, reference, _INTERPOLATORS[kind])
    if kind == "nearest":
        src = array.astype(np.uint8) if array.dtype == bool else array
        return _resample_sitk(src, geometry, reference, sitk.sitkNearestNeighbor).astype(array.dtype, copy=False)
    # one-hot: smoother label boundaries than nearest; ties go to the lower label.
    best_p = best_l = None
    for label in np.unique(array):
        p = _resample_sitk((array == label).astype(np.float32), geometry, reference, sitk.sitkLinear)
        if best_p is None:
            best_p, best_l = p, np.full(p.shape, label, dtype=array.dtype)
        else:
            better = p > best_p
            best_p[better], best_l[better] = p[better], label
    return best_l


def resample(array: np.ndarray, geometry: Geometry, target_spacing: Sequence[float],
             kind: str = "linear") -> Tuple[np.ndarray, Geometry]:
    """Resample to ``target_spacing`` (x, y, z) mm keeping the field-of-view centre; returns (array, geometry)."""
    geometry = _with_size(geometry, array)
    ref = resampled_geometry(geometry, target_spacing)
    return resample_to_reference(array, geometry, ref, kind), ref


# -- crop / pad -------------------------------------------------------------------------------------
def crop_or_pad(array: np.ndarray, geometry: Geometry, start: Sequence[int], stop: Sequence[int],
                pad_value: float = 0) -> Tuple[np.ndarray, Geometry]:
    """Box [start, stop) in (z, y, x) voxels; parts outside the array are filled with ``pad_value``.

    The returned geometry's origin is the physical position of voxel ``start`` of the input grid.
    """
    box = crop_geometry(_with_size(geometry, array), start, stop)
    start, stop = np.asarray(start, dtype=int), np.asarray(stop, dtype=int)
    shape = np.asarray(array.shape[-3:])
    out = np.full(array.shape[:-3] + tuple(stop - start), pad_value, dtype=array.dtype)
    lo, hi = np.maximum(start, 0), np.minimum(stop, shape)
    if np.all(hi > lo):
        src = tuple(slice(a, b) for a, b in zip(lo, hi))
        dst = tuple(slice(a, b) for a, b in zip(lo - start, hi - start))
        out[(Ellipsis,) + dst] = array[(Ellipsis,) + src]
    return out, box


def crop_geometry(geometry: Geometry, start: Sequence[int], stop: Sequence[int]) -> Geometry:
    """The grid of the box [start, stop) (z, y, x voxels) of ``geometry``, as :func:`crop_or_pad` returns it."""
    start, stop = np.asarray(start, dtype=int), np.asarray(stop, dtype=int)
    if start.shape != (3,) or stop.shape != (3,) or np.any(stop <= start):
        raise ValueError(f"Crop box needs 3 start and 3 larger stop indices (z, y, x), got {start}, {stop}.")
    origin = geometry.index_to_physical(start[::-1].astype(float))
    return Geometry(geometry.spacing, origin, geometry.direction, tuple(int(v) for v in (stop - start)[::-1]))


def uncrop(array: np.ndarray, start: Sequence[int], original: Geometry, fill_value: float = 0) -> np.ndarray:
    """Inverse of :func:`crop_or_pad`: paste a box that started at ``start`` back into the ``original`` grid."""
    start = np.asarray(start, dtype=int)
    box = Geometry(original.spacing, original.index_to_physical(start[::-1].astype(float)), original.direction)
    out, _ = crop_or_pad(array, box, -start, np.asarray(original.shape) - start, fill_value)
    return out


# -- configuration and normalisation ----------------------------------------------------------------
def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"PreprocessingConfig.{name} must be a finite number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class PreprocessingConfig:
    target_spacing: Optional[Vec3] = (1.5, 1.5, 1.5)   # (x, y, z) mm after reorientation; None = keep
    normalization: str = "clip_zscore"                  # "clip_zscore" or "window"
    clip_range: Tuple[float, float] = (-100.0, 400.0)   # HU, clip_zscore only
    mean: Optional[float] = None                        # clip_zscore: fixed statistics (e.g. from the
    std: Optional[float] = None                         # training set); None = computed per volume
    window_level: float = 50.0                          # window: HU mapped to [0, 1]
    window_width: float = 400.0
    orientation: str = "LPS"
    image_interpolation: str = "linear"                 # "linear" or "bspline" for the CT
    # Stage 2's field of view (network_input.boxes_around; stage 1 sees the whole CT and ignores these):
    box_margin_mm: float = 15.0                         # added on every side of a kidney's bounding box
    box_min_kidney_mm3: float = 5_000.0                 # smaller kidney-like components get no box
    box_merge: str = "overlap"                          # "overlap": boxes sharing a voxel become one; "none"

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.target_spacing is not None:
            sp = tuple(_number("target_spacing", v) for v in self.target_spacing)
            if len(sp) != 3 or min(sp) <= 0 or max(sp) > 20:
                raise ValueError(f"PreprocessingConfig.target_spacing must be 3 values in (0, 20] mm, got {sp}.")
            put("target_spacing", sp)
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"Unknown normalization {self.normalization!r}; use one of {NORMALIZATIONS}.")
        clip = tuple(_number("clip_range", v) for v in self.clip_range)
        if len(clip) != 2 or clip[0] >= clip[1]:
            raise ValueError(f"PreprocessingConfig.clip_range must be (low, high) with low < high, got {clip}.")
        put("clip_range", clip)
        if (self.mean is None) != (self.std is None):
            raise ValueError("PreprocessingConfig.mean and std must be given together (or both None).")
        if self.mean is not None:
            put("mean", _number("mean", self.mean))
            put("std", _number("std", self.std))
            if self.std <= 0:
                raise ValueError(f"PreprocessingConfig.std must be positive, got {self.std}.")
        put("window_level", _number("window_level", self.window_level))
        put("window_width", _number("window_width", self.window_width))
        if self.window_width <= 0:
            raise ValueError(f"PreprocessingConfig.window_width must be positive, got {self.window_width}.")
        _parse_orientation(self.orientation)
        put("orientation", str(self.orientation).upper())
        if self.image_interpolation not in ("linear", "bspline"):
            raise ValueError(f"image_interpolation must be 'linear' or 'bspline', got {self.image_interpolation!r}.")
        for name in ("box_margin_mm", "box_min_kidney_mm3"):
            put(name, _number(name, getattr(self, name)))
            if getattr(self, name) < 0:
                raise ValueError(f"PreprocessingConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if self.box_merge not in BOX_MERGES:
            raise ValueError(f"PreprocessingConfig.box_merge must be one of {BOX_MERGES}, got {self.box_merge!r}.")

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict (lists instead of tuples); ``from_dict(to_dict())`` returns an equal config."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PreprocessingConfig":
        if not isinstance(d, dict):
            raise ValueError(f"PreprocessingConfig.from_dict needs a dict, got {type(d).__name__}.")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Unknown PreprocessingConfig keys {sorted(unknown)}; this checkpoint needs a newer "
                             "version of the extension or is corrupt.")
        return cls(**d)


def normalize(array: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    """HU -> network input (float32): clip + z-score, or window [level - width/2, level + width/2] -> [0, 1]."""
    x = np.asarray(array, dtype=np.float32)
    if config.normalization == "window":
        lo = config.window_level - config.window_width / 2
        return ((np.clip(x, lo, lo + config.window_width) - lo) / config.window_width).astype(np.float32)
    x = np.clip(x, *config.clip_range)
    if config.mean is not None:
        mean, std = config.mean, config.std
    else:
        mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
    return ((x - mean) / max(std, 1e-6)).astype(np.float32)  # constant volume: avoid division by zero
