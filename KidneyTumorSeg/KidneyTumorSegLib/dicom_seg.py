"""DICOM Segmentation (SEG) of the per-side segments, referencing the source CT series.

Only used when the input was a DICOM series. highdicom and pydicom are optional and imported inside
:func:`write_dicom_seg` only, so the rest of the library works without them. Source files are read
headers-only (``stop_before_pixels``): highdicom takes the geometry, patient, study and UID references
from the headers and never decodes source pixels, so JPEG 2000 series need no decoder here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from .atomic import atomic_output, check_output
from .errors import InputError
from .geometry import Geometry
from .image_io import dicom_series
from .labels import COLORS, Code, terminology
from .postprocessing import PostprocessingConfig
from .segments import SegmentInfo, segments_from_labels

PathLike = Union[str, os.PathLike]

ALGORITHM_NAME = "KidneyTumorSeg"
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
POSITION_TOLERANCE = 0.01     # voxels: slice positions must lie on the label map's grid this closely


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


def _series_files(folder: Path, series_uid: Optional[str]) -> Sequence[str]:
    """The files of the series ``image_io.read_image`` reads for the same arguments."""
    series = dicom_series(folder)
    if not series:
        raise InputError(f"No DICOM series found in folder '{folder}'; DICOM SEG needs the source CT series.")
    if series_uid is not None:
        match = [files for sid, files in series if sid == series_uid]
        if not match:
            raise InputError(f"DICOM series '{series_uid}' is not in folder '{folder}'.")
        return match[0]
    return max(series, key=lambda s: len(s[1]))[1]  # the same choice as image_io._read_dicom


def _sorted_sources(datasets: List, geometry: Geometry) -> List:
    """Source datasets ordered like the label map's z slices, matched by ImagePositionPatient."""
    nz, ny, nx = geometry.shape
    if len(datasets) != nz:
        raise InputError(f"The source series has {len(datasets)} slices but the label map {nz}; DICOM SEG "
                         "needs the label map on the source series' grid.")
    d = geometry.direction_matrix
    by_slice = {}
    for ds in datasets:
        try:
            ijk = geometry.physical_to_index([float(v) for v in ds.ImagePositionPatient])
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            row_mm, col_mm = (float(v) for v in ds.PixelSpacing)  # DICOM: between rows (y), columns (x)
        except (AttributeError, TypeError, ValueError) as exc:
            raise InputError(f"Source slice '{getattr(ds, 'filename', '?')}' lacks a valid position, orientation "
                             "or pixel spacing; DICOM SEG needs them to reference the slice.") from exc
        k = int(round(ijk[2]))
        on_grid = (np.all(np.abs(ijk - [0, 0, k]) < POSITION_TOLERANCE) and 0 <= k < nz and k not in by_slice
                   and (int(ds.Rows), int(ds.Columns)) == (ny, nx)
                   and np.allclose(iop, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-4)
                   and np.allclose((col_mm, row_mm), geometry.spacing[:2], rtol=1e-4))
        if not on_grid:
            raise InputError(f"Source slice '{getattr(ds, 'filename', '?')}' does not lie on the label map's grid; "
                             "DICOM SEG needs the label map in the source series' geometry.")
        by_slice[k] = ds
    return [by_slice[k] for k in range(nz)]


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


def write_dicom_seg(labels: np.ndarray, geometry: Geometry, source_folder: PathLike, path: PathLike,
                    overwrite: bool = False, series_uid: Optional[str] = None,
                    config: Optional[PostprocessingConfig] = None) -> Path:
    """Write a binary DICOM SEG of the per-side segments (see ``segments.segments_from_labels``).

    ``labels`` must be on the grid of the source series in ``source_folder`` (``series_uid`` as given to
    ``image_io.read_image``). Raises InputError when the source lacks the UIDs a SEG must reference,
    when the grids differ, when there is no segment, or when highdicom is missing. ``config`` as for
    ``segments_from_labels``. Atomic; never replaces a file unless ``overwrite``.
    """
    try:
        import highdicom as hd
        import pydicom
        import pydicom.errors
        from pydicom.sr.codedict import codes
    except ImportError as exc:
        raise InputError("Writing DICOM SEG needs the optional packages highdicom and pydicom; "
                         "install them with 'pip install highdicom'.") from exc
    out = Path(path).expanduser().resolve()
    folder = Path(source_folder).expanduser()
    check_output(out, overwrite)
    if not folder.is_dir():
        raise InputError(f"DICOM source folder '{folder}' does not exist; DICOM SEG needs the source CT series.")

    try:
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in _series_files(folder, series_uid)]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise InputError(f"Could not read the DICOM headers in '{folder}' ({exc}); DICOM SEG was not written.") from exc
    missing = sorted({k for ds in datasets for k in REQUIRED_UIDS if not str(getattr(ds, k, "") or "").strip()})
    if missing:
        raise InputError(f"DICOM SEG was not written because the source series in '{folder}' has empty "
                         f"{', '.join(missing)} (de-identified without new UIDs), which a SEG must reference; "
                         "the label map and .seg.nrrd were still written.")
    sources = _sorted_sources(datasets, geometry)

    seg_map, segments = segments_from_labels(labels, geometry, config)
    if not segments:
        raise InputError("DICOM SEG was not written because the label map has no kidney, tumor or cyst voxels "
                         "(a SEG needs at least one segment).")
    version = _version()
    algorithm = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, family=codes.DCM.ArtificialIntelligence,
                                                   version=version)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=seg_map,  # label-map style: value n = segment number n
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(hd, s, s.value, algorithm) for s in segments],
        series_instance_uid=hd.UID(), series_number=9000, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=ALGORITHM_NAME, manufacturer_model_name=ALGORITHM_NAME, software_versions=version,
        device_serial_number="0", content_label="KIDNEYS", content_description="Kidneys, tumors and cysts",
        series_description="KidneyTumorSeg segmentation")
    with atomic_output(out, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return out
