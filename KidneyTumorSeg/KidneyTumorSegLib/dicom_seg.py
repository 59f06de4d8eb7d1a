"""DICOM Segmentation (SEG) of the per-side segments, referencing the source CT series.

Only used when the input was a DICOM series. highdicom and pydicom are optional and imported inside
:func:`write_dicom_seg` only, so the rest of the library works without them. Source files are read
headers-only (``stop_before_pixels``): highdicom takes the geometry, patient, study and UID references
from the headers and never decodes source pixels, so JPEG 2000 series need no decoder here.

A SEG the source cannot support is skipped (``errors.OutputSkipped``, one line): a series without
FrameOfReferenceUID gets no SEG rather than a made-up frame of reference (docs/decisions.md 45), and a
series de-identified with empty UIDs gives nothing a SEG could reference.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from .atomic import atomic_output, check_output
from .dicom_io import DicomSeries, select_series
from .dicom_read import frame_geometry, ordered_slices
from .errors import InputError, OutputSkipped
from .geometry import Geometry
from .labels import COLORS, Code, terminology
from .postprocessing import PostprocessingConfig
from .segments import SegmentInfo, segments_from_labels

PathLike = Union[str, os.PathLike]

ALGORITHM_NAME = "KidneyTumorSeg"
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
POSITION_TOLERANCE = 0.01     # voxels: slice positions must lie on the label map's grid this closely
HELD = "the label map and .seg.nrrd hold the result"


def _version() -> str:
    from importlib import metadata

    import KidneyTumorSegLib
    version = getattr(KidneyTumorSegLib, "__version__", None)
    if version:
        return str(version)
    try:
        return metadata.version("kidney-tumor-seg")
    except metadata.PackageNotFoundError:  # running from a source checkout
        return "unknown"


def _sorted_sources(datasets: List, geometry: Geometry) -> List:
    """Source datasets ordered like the label map's z slices, matched by ImagePositionPatient."""
    nz, ny, nx = geometry.shape
    if len(datasets) != nz:
        raise OutputSkipped(f"DICOM SEG not written: the source series has {len(datasets)} slices but the label map "
                            f"{nz}, and a SEG needs the label map on the source series' grid; {HELD}.")
    d = geometry.direction_matrix
    by_slice = {}
    for ds in datasets:
        try:
            ijk = geometry.physical_to_index([float(v) for v in ds.ImagePositionPatient])
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            row_mm, col_mm = (float(v) for v in ds.PixelSpacing)  # DICOM: between rows (y), columns (x)
        except (AttributeError, TypeError, ValueError) as exc:
            raise OutputSkipped(f"DICOM SEG not written: source slice '{getattr(ds, 'filename', '?')}' lacks a valid "
                                "position, orientation or pixel spacing, which the SEG needs to reference it; "
                                f"{HELD}.") from exc
        k = int(round(ijk[2]))
        on_grid = (np.all(np.abs(ijk - [0, 0, k]) < POSITION_TOLERANCE) and 0 <= k < nz and k not in by_slice
                   and (int(ds.Rows), int(ds.Columns)) == (ny, nx)
                   and np.allclose(iop, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-4)
                   and np.allclose((col_mm, row_mm), geometry.spacing[:2], rtol=1e-4))
        if not on_grid:
            raise OutputSkipped(f"DICOM SEG not written: source slice '{getattr(ds, 'filename', '?')}' does not lie on "
                                "the label map's grid, and a SEG needs the label map in the source series' "
                                f"geometry; {HELD}.")
        by_slice[k] = ds
    return [by_slice[k] for k in range(nz)]


def _check_frames(series: DicomSeries, geometry: Geometry) -> None:
    """A multi-frame source: frame k must be the label map's slice k (frames in stored order)."""
    positions, _ = frame_geometry(series)
    expected = geometry.index_to_physical([[0, 0, k] for k in range(geometry.shape[0])])
    tolerance = POSITION_TOLERANCE * min(geometry.spacing)
    if positions.shape != expected.shape or np.abs(positions - expected).max() > tolerance:
        raise OutputSkipped(f"DICOM SEG not written: the frames of '{series.slices[0].path}' do not lie on the label "
                            f"map's grid, and a SEG needs the label map in the source's geometry; {HELD}.")


def _check_references(datasets: List, folder: Path) -> None:
    """The UIDs a SEG must reference, and the frame of reference it must share with the CT."""
    missing = sorted({k for ds in datasets for k in REQUIRED_UIDS if not str(getattr(ds, k, "") or "").strip()})
    if missing:
        raise OutputSkipped(f"DICOM SEG not written: the source series in '{folder}' has empty {', '.join(missing)} "
                            f"(de-identified without new UIDs), which a SEG must reference; {HELD}.")
    if any(not str(getattr(ds, "FrameOfReferenceUID", "") or "").strip() for ds in datasets):
        raise OutputSkipped(f"DICOM SEG not written: the source series in '{folder}' has no FrameOfReferenceUID "
                            "(often removed by anonymisation), which a SEG needs to share the CT's patient "
                            f"coordinates; {HELD}.")


def _coded(hd, code: Code):
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _description(hd, segment: SegmentInfo, number: int, algorithm):
    """SegmentDescription with the same codes, name and color as the .seg.nrrd segment."""
    t = terminology(segment.label, segment.side)
    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=segment.name,
        segmented_property_category=_coded(hd, t.category), segmented_property_type=_coded(hd, t.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        tracking_uid=hd.UID(), tracking_id=segment.id,
        anatomic_regions=[_coded(hd, t.region)] if t.region else None,
        display_color=hd.color.CIELabColor.from_rgb(*COLORS[segment.label]))
    # highdicom has no arguments for the modifiers; they are plain sequence attributes (PS3.3 C.8.20.4).
    if t.type_modifier:
        desc.SegmentedPropertyTypeModifierCodeSequence = [_coded(hd, t.type_modifier)]
    if t.region_modifier:
        desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_coded(hd, t.region_modifier)]
    return desc


def write_dicom_seg(labels: np.ndarray, geometry: Geometry, source: Union[DicomSeries, PathLike], path: PathLike,
                    overwrite: bool = False, series_uid: Optional[str] = None,
                    config: Optional[PostprocessingConfig] = None, midline_x: Optional[float] = None) -> Path:
    """Write a binary DICOM SEG of the per-side segments (see ``segments.segments_from_labels``).

    ``source``: the ``dicom_io.DicomSeries`` the label map was read from, or its folder (then the series
    ``dicom_io.select_series`` chooses for ``series_uid``); ``labels`` must be on its grid. Raises
    OutputSkipped (one line) when this source or result cannot give a SEG: no highdicom, empty UIDs, no
    FrameOfReferenceUID, another grid, no segment, or highdicom refusing the source; InputError when
    ``path`` exists. ``config`` and ``midline_x`` as for ``segments_from_labels``. Atomic; never replaces a file
    unless ``overwrite``.
    """
    try:
        import highdicom as hd
        import pydicom
        import pydicom.errors
        from pydicom.sr.codedict import codes
    except ImportError as exc:
        raise OutputSkipped("DICOM SEG not written: it needs the optional packages highdicom and pydicom; install "
                            f"them with 'pip install highdicom'; {HELD}.") from exc
    out = Path(path).expanduser().resolve()
    check_output(out, overwrite)
    if isinstance(source, DicomSeries):
        series = source
    else:
        if not Path(source).expanduser().is_dir():
            raise InputError(f"DICOM source folder '{source}' does not exist; DICOM SEG needs the source CT series.")
        series = select_series(Path(source).expanduser(), series_uid).chosen
    files = [series.slices[0].path] if series.multiframe else [s.path for s in ordered_slices(series)]
    try:
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise OutputSkipped(f"DICOM SEG not written: the headers in '{series.folder}' could not be read again "
                            f"({exc}); {HELD}.") from exc
    _check_references(datasets, series.folder)
    if series.multiframe:
        _check_frames(series, geometry)
        sources = datasets
    else:
        sources = _sorted_sources(datasets, geometry)
    seg_map, segments = segments_from_labels(labels, geometry, config, midline_x)
    if not segments:
        raise OutputSkipped("DICOM SEG not written: the label map has no kidney, tumor or cyst voxels, and a SEG "
                            "needs at least one segment.")
    try:
        seg = _segmentation(hd, codes, sources, seg_map, segments)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:  # the source, as highdicom sees it
        raise OutputSkipped(f"DICOM SEG not written: highdicom refused the source series in '{series.folder}' "
                            f"({exc}); {HELD}.") from exc
    with atomic_output(out, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return out


def _segmentation(hd, codes, sources: List, seg_map: np.ndarray, segments: List[SegmentInfo]):
    version = _version()
    algorithm = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, family=codes.DCM.ArtificialIntelligence,
                                                   version=version)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=seg_map,  # label-map style: value n = segment number n
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(hd, s, s.value, algorithm) for s in segments],
        series_instance_uid=hd.UID(), series_number=9000, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=ALGORITHM_NAME, manufacturer_model_name=ALGORITHM_NAME, software_versions=version,
        device_serial_number="0", content_label="KIDNEYS", content_description="Kidneys, tumors and cysts",
        series_description="KidneyTumorSeg segmentation")
