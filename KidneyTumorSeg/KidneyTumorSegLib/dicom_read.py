"""Checking and reading the DICOM series :mod:`.dicom_io` chose: geometry first.

ITK's series reader assumes equidistant, untilted slices and says nothing (or prints a raw warning) when they
are not, so the slices are checked before any pixel is read: repeated files of one instance are read once,
two different images at one position, missing slices, irregular spacing and gantry tilt are refused with one
sentence. A tilted series is refused rather than resampled (docs/decisions.md 46). After reading, the place
ITK gives every slice is compared with the file's own ImagePositionPatient. An enhanced (multi-frame) CT is
read by GDCM too; its per-frame positions come from pydicom, without which it is refused.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import SimpleITK as sitk

from .dicom_io import DicomSeries, DicomSlice
from .errors import InputError
from .image_io import itk_messages_hidden

SPACING_RTOL = 0.01        # a slice step may differ from the median by this fraction (DS rounding: far less)
TILT_MAX_RAD = 1e-3        # slices shifted sideways by more than this angle (0.06 deg): a gantry tilt
POSITION_TOL = 0.05        # voxels: where ITK puts a slice vs its ImagePositionPatient


def _name(series: DicomSeries) -> str:
    return f"The DICOM {series.label(with_uid=False)} in '{series.folder}'"


def _normal(series: DicomSeries) -> np.ndarray:
    row, col = np.asarray(series.orientation[:3]), np.asarray(series.orientation[3:])
    return np.cross(row, col)


def ordered_slices(series: DicomSeries) -> List[DicomSlice]:
    """The single-frame slices of ``series``, each instance once, sorted along the slice normal and checked
    (InputError with one sentence for missing, doubled, irregular or tilted slices)."""
    seen, slices = set(), []
    for s in series.slices:
        if s.sop_uid and s.sop_uid in seen:  # the same instance copied twice: one image
            continue
        seen.add(s.sop_uid)
        slices.append(s)
    if any(s.position is None for s in slices):
        raise InputError(f"{_name(series)} has images without ImagePositionPatient, so their place in the patient "
                         "is unknown; export the series with its geometry.")
    normal = _normal(series)
    slices.sort(key=lambda s: float(np.dot(s.position, normal)))
    check_positions(np.array([s.position for s in slices]), normal, series)
    return slices


def check_positions(positions: np.ndarray, normal: np.ndarray, series: DicomSeries) -> None:
    """Refuse slice positions (in reading order) that no regular, untilted grid holds."""
    if len(positions) < 2:
        return
    depth = positions @ normal
    steps = np.diff(depth)
    if np.all(steps < 0):  # a multi-frame file stored from head to feet: the same grid, read backwards
        steps = -steps
    step = float(np.median(steps))
    if np.min(np.abs(steps)) < 1e-3 * max(abs(step), 1.0):
        k = int(np.argmin(np.abs(steps)))
        raise InputError(f"{_name(series)} has two different images at the same position ({depth[k]:.2f} mm along "
                         "the slice normal: duplicate instances from two exports, or two reconstructions under one "
                         "series UID); export the series once.")
    if np.any(steps < 0):
        raise InputError(f"{_name(series)} stores its frames out of slice order; export it as single-frame images.")
    if np.max(np.abs(steps - step)) > SPACING_RTOL * step + 1e-3:
        gaps = np.flatnonzero(steps > 1.5 * step)
        if len(gaps):
            missing = int(round(float(np.sum(steps[gaps] / step - 1))))
            k = int(gaps[0])
            detail = (f"{missing} slice{'s' if missing > 1 else ''} missing: a gap of {steps[k]:.3g} mm after "
                      f"{depth[k]:.2f} mm along the slice normal, where the others are {step:.3g} mm apart")
        else:
            detail = f"steps of {steps.min():.3g} to {steps.max():.3g} mm"
        raise InputError(f"{_name(series)} has irregular slice spacing ({detail}); export the complete series.")
    span = positions[-1] - positions[0]
    along = abs(float(np.dot(span, normal)))
    sideways = float(np.linalg.norm(span - np.dot(span, normal) * normal))
    tilt = float(np.arctan2(sideways, along))
    if tilt > TILT_MAX_RAD:
        raise InputError(f"{_name(series)} was acquired with a gantry tilt of {np.degrees(tilt):.1f} degrees "
                         "(its slices are sheared, which would misplace them); correct the tilt first, e.g. "
                         "in 3D Slicer with the DICOM setting 'Acquisition geometry regularization' and Harden "
                         "transform, and segment the corrected volume.")


def frame_geometry(series: DicomSeries) -> Tuple[np.ndarray, np.ndarray]:
    """Per-frame ImagePositionPatient (frames in stored order) and the normal, from pydicom."""
    try:
        import pydicom
    except ImportError as exc:
        raise InputError(f"{_name(series)} is an enhanced (multi-frame) CT, whose frame positions are checked with "
                         "pydicom; install it ('pip install pydicom') or export the series as single-frame "
                         "images.") from exc
    path = series.slices[0].path
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)  # GDCM reads files without a preamble too
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
        positions, orientations = [], set()
        for frame in ds.PerFrameFunctionalGroupsSequence:
            groups = [g for g in (frame, shared) if g is not None]
            position = next(g.PlanePositionSequence[0].ImagePositionPatient for g in groups
                            if "PlanePositionSequence" in g)
            orientation = next(g.PlaneOrientationSequence[0].ImageOrientationPatient for g in groups
                               if "PlaneOrientationSequence" in g)
            positions.append([float(v) for v in position])
            orientations.add(tuple(round(float(v), 4) for v in orientation))
    except (StopIteration, AttributeError, IndexError, KeyError, TypeError, ValueError, OSError) as exc:
        raise InputError(f"{_name(series)} is a multi-frame file without a plane position and orientation for "
                         "every frame; export the series as single-frame images.") from exc
    if len(orientations) != 1:
        raise InputError(f"{_name(series)} has frames of different orientations; choose a series of parallel "
                         "slices.")
    o = np.asarray(orientations.pop())
    return np.asarray(positions), np.cross(o[:3], o[3:])


def read_series(series: DicomSeries) -> sitk.Image:
    """The chosen series as one 3D image with its true geometry, or InputError with one sentence."""
    if series.multiframe:
        positions, normal = frame_geometry(series)
        check_positions(positions, normal, series)
        files = [series.slices[0].path]
    else:
        slices = ordered_slices(series)
        positions, files = np.array([s.position for s in slices]), [s.path for s in slices]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with itk_messages_hidden():
            img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Could not read {_name(series)[4:]} (corrupt files, or a compression this reader lacks); "
                         "re-export the series from the PACS.") from exc
    _check_read(img, positions, series)
    return img


def _check_read(img: sitk.Image, positions: np.ndarray, series: DicomSeries) -> None:
    """Each slice where its file says it is, to a twentieth of a voxel."""
    if img.GetDimension() != 3 or img.GetSize()[2] != len(positions):
        return  # not a volume: image_io says so in its own words
    placed = np.array([img.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(len(positions))])
    error = np.linalg.norm(placed - positions, axis=1)
    if error.max() > POSITION_TOL * min(img.GetSpacing()) + 1e-3:
        k = int(np.argmax(error))
        raise InputError(f"{_name(series)} could not be read with its true geometry (slice {k + 1} would lie "
                         f"{error[k]:.2f} mm from its ImagePositionPatient); convert it with a tool that reports "
                         "the geometry, e.g. dcm2niix, and segment the NIfTI file.")
