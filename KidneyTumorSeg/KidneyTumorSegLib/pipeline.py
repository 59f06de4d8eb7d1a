"""One case end to end: read a CT, run the cascade, write every output. Shared by the CLI and Slicer.

Outputs for a case named NAME (after the input file, or its folder for DICOM and KiTS-style
``case_X/imaging.nii.gz`` inputs), all written atomically, none replacing a file unless ``overwrite``:
``NAME.nii.gz`` (label map, KiTS values, exactly the input's geometry), ``NAME.seg.nrrd`` (Slicer segments with
terminology), ``NAME_qc.png`` (with ``qc``), ``NAME_prob_<class>.nii.gz`` (with ``probabilities``: percent
0-100, uint8), ``NAME_seg.dcm`` (DICOM SEG, when the input is a DICOM series), ``NAME_measurements.csv``,
``NAME_measurements.json`` and ``NAME_report.html`` (with ``measure``: ``measurements``, ``report``),
``NAME_<segment>.stl`` (with ``mesh``: ``surfaces``), ``NAME_confidence.nii.gz`` (with ``confidence_map``:
p(label) x 255, uint8). With ``min_confidence`` the lesions below it are taken out of every output and
listed as uncertain (``confidence.split_uncertain``); the segments carry their confidence as tags.
Every target path is checked before inference starts, so a refused overwrite costs no compute, and a case's
files are written as one ``atomic.OutputSet``: all of them appear, or none (a failed or interrupted
``overwrite`` run leaves the earlier files exactly as they were). An optional output the input cannot support
(``errors.OutputSkipped``: a DICOM SEG of a series without FrameOfReferenceUID, ...) is left out of the set
and named with its reason in ``CaseResult.skipped``; with ``overwrite`` an earlier file of it goes, so the set
never mixes runs. A DICOM folder is read through ``dicom_io.select_series`` (``CaseResult.source`` says which
series); the DICOM SEG references exactly the files read.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .atomic import OutputSet, check_outputs_free, prepare_outputs, remove_empty_folders
from .cascade import Cascade, CascadeConfig, Stage
from .checkpoint import load_checkpoint
from .confidence import UncertainLesion, segment_confidences, split_uncertain
from .dicom_io import DicomSelection, select_series
from .errors import InputError, OutputSkipped
from .geometry import Image
from .image_io import READ_EXTENSIONS, read_image, write_image, write_labelmap
from .labels import Label
from .mirroring import mirror_axes_tuple
from .lesion_density import SIMPLE_FLUID_HU
from .models import recommended_cyst_hu, recommended_stage2_mirror_axes, resolve_model
from .segments import segments_from_labels, write_segments

if TYPE_CHECKING:
    from .cascade import CascadeResult
    from .measurements import Measurements

LOGGER = logging.getLogger(__name__)
LABELMAP_FORMATS = (".nii.gz", ".nrrd")
GENERIC_STEMS = {"imaging", "image"}  # KiTS-style case_X/imaging.nii.gz: name after the folder


@dataclass(frozen=True)
class SegmentOptions:
    model: str = "default"
    device: str = "auto"
    mode: str = "default"                 # "fast" | "default" | "accurate"
    qc: bool = False
    probabilities: bool = False
    dicom_seg: bool = True                # only applies to DICOM inputs
    labelmap_format: str = ".nii.gz"
    overwrite: bool = False
    series_uid: Optional[str] = None
    measure: bool = False                 # also write measurements (CSV, JSON) and the HTML report
    mesh: bool = False                    # also write one closed STL surface per segment
    min_confidence: Optional[float] = None  # lesions below it: listed as uncertain, not drawn
    unsure_below: Optional[float] = None    # without min_confidence: lesions below it are marked uncertain
    confidence_map: bool = False          # also write the confidence map (uint8, p(label) x 255)
    box_growth: Optional[int] = None      # stage-2 box growths (CascadeConfig.box_growth); None: its default
    # Stage 2's mirror axes in the default mode (CascadeConfig.stage2_mirror_axes); None: what the model recommends
    stage2_mirror_axes: Optional[Tuple[int, ...]] = None
    # Water-density tumors called cyst (lesion_density.py): None what the model recommends, True always
    # (the model's range, else Bosniak's simple-fluid range), False never
    cyst_by_density: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.labelmap_format not in LABELMAP_FORMATS:
            raise InputError(f"Label map format {self.labelmap_format!r} is not supported; use one of "
                             f"{', '.join(LABELMAP_FORMATS)}.")
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise InputError(f"--min-confidence must lie between 0 and 1, got {self.min_confidence}.")
        if self.box_growth is not None and self.box_growth < 0:
            raise InputError(f"box_growth must be 0 or more, got {self.box_growth}.")
        if self.stage2_mirror_axes is not None:
            try:  # a tuple, so that the options stay hashable
                object.__setattr__(self, "stage2_mirror_axes", mirror_axes_tuple(self.stage2_mirror_axes))
            except ValueError as exc:
                raise InputError(f"stage2_mirror_axes: {exc}.") from exc


@dataclass
class CaseResult:
    name: str
    outputs: Dict[str, Path]
    volumes_ml: Dict[str, float]
    seconds: float
    message: str
    warnings: list = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)  # read_s, stage1_s, stage2_s, ..., write_s
    measurements: Optional[Measurements] = None  # with options.measure
    uncertain: List[UncertainLesion] = field(default_factory=list)  # with options.min_confidence
    skipped: Dict[str, str] = field(default_factory=dict)  # optional output key -> why it was not written
    source: Optional[DicomSelection] = None  # the DICOM series read (DICOM folders only)
    midline_x: Optional[float] = None  # the body's midline (LPS x, mm) every output's left and right came from


def case_name(input_path: Path) -> str:
    """NAME for the outputs: the file name without its image extension, or the folder for DICOM/KiTS."""
    if input_path.is_dir():
        return input_path.name
    lower = input_path.name.lower()
    stem = next((input_path.name[: -len(e)] for e in READ_EXTENSIONS + (".dcm",) if lower.endswith(e)),
                input_path.stem)
    return input_path.parent.name if stem.lower() in GENERIC_STEMS and input_path.parent.name else stem


def output_paths(name: str, outdir: Path, options: SegmentOptions, is_dicom: bool,
                 prob_labels=("kidney", "tumor", "cyst")) -> Dict[str, Path]:
    paths = {"labelmap": outdir / f"{name}{options.labelmap_format}", "seg_nrrd": outdir / f"{name}.seg.nrrd"}
    if options.qc:
        paths["qc"] = outdir / f"{name}_qc.png"
    if options.probabilities:
        paths.update({f"prob_{c}": outdir / f"{name}_prob_{c}.nii.gz" for c in prob_labels})
    if is_dicom and options.dicom_seg:
        paths["dicom_seg"] = outdir / f"{name}_seg.dcm"
    if options.measure:
        paths.update(measurement_paths(name, outdir))
    if options.confidence_map:
        paths["confidence"] = outdir / f"{name}_confidence{options.labelmap_format}"
    return paths


def measurement_paths(name: str, outdir: Path) -> Dict[str, Path]:
    """The measurement outputs of a case NAME (shared by ``segment --measure`` and ``measure``)."""
    return {"measurements_csv": outdir / f"{name}_measurements.csv",
            "measurements_json": outdir / f"{name}_measurements.json", "report": outdir / f"{name}_report.html"}


def write_measurement_outputs(labels: np.ndarray, geometry, paths: Dict[str, Path], ct=None, overwrite: bool = False,
                              source: Optional[str] = None, confidence: Optional[np.ndarray] = None,
                              uncertain: Sequence[UncertainLesion] = (), min_confidence: Optional[float] = None,
                              unsure_below: Optional[float] = None,
                              midline_x: Optional[float] = None) -> Tuple[Measurements, Dict[str, Path]]:
    """Measure a KiTS label map (with its confidence map, when known) and write the ``measurement_paths``
    files: (Measurements, written paths). ``uncertain``: the lesions ``min_confidence`` took out, listed.
    ``midline_x``: the body's midline, which decides the sides. Imported lazily, like the QC picture:
    segmenting alone does not need them."""
    from .measurements import mark_uncertain, measure, write_measurements
    from .report import write_report
    m = measure(labels, geometry, confidence=confidence, midline_x=midline_x)
    m.uncertain, m.min_confidence = list(uncertain), min_confidence
    mark_uncertain(m, unsure_below)
    csv_path = paths["measurements_csv"]
    files = write_measurements(m, csv_path.parent, csv_path.name[: -len(".csv")], overwrite=overwrite)
    written = {"measurements_csv": files["csv"], "measurements_json": files["json"]}
    written["report"] = write_report(m, labels, geometry, paths["report"], ct=ct, overwrite=overwrite,
                                     source=source)
    return m, written


def load_cascade(options: SegmentOptions, download_progress=None,
                 warn: Optional[Callable[[str], None]] = None) -> Cascade:
    """The two stages of ``options.model``; ``download_progress(bytes, total)`` while a model downloads;
    ``warn(text)`` once for a model that could not be verified (a folder without models_entry.json)."""
    files = resolve_model(options.model, progress=download_progress)
    if files.warning and warn is not None:
        warn(files.warning)
    mirror = options.stage2_mirror_axes  # the model's own is read only where it applies, before the slow loads
    if mirror is None:
        mirror = recommended_stage2_mirror_axes(options.model) if options.mode == "default" else ()
    growth = {} if options.box_growth is None else {"box_growth": options.box_growth}
    cyst_hu = None if options.cyst_by_density is False else recommended_cyst_hu(options.model)
    if options.cyst_by_density and cyst_hu is None:
        cyst_hu = SIMPLE_FLUID_HU
    config = CascadeConfig(mode=options.mode, stage2_mirror_axes=mirror, cyst_hu=cyst_hu, **growth)
    stage1, stage2 = (Stage.from_checkpoint(load_checkpoint(f)) for f in (files.stage1, files.stage2))
    return Cascade(stage1, stage2, config, device=options.device)


def volumes_ml(seg_map: np.ndarray, segments, geometry) -> Dict[str, float]:
    """Volume of each segment (per side) in mL, named as in the .seg.nrrd."""
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    counts = np.bincount(seg_map.ravel(), minlength=len(segments) + 1)
    return {s.name: round(float(counts[s.value]) * voxel_ml, 2) for s in segments}


def segment_case(input_path, outdir, cascade: Cascade, options: SegmentOptions,
                 progress: Optional[Callable[[float, str], None]] = None,
                 should_cancel: Optional[Callable[[], bool]] = None) -> CaseResult:
    """Segment one CT file or DICOM folder into ``outdir`` (created when missing)."""
    t0 = time.perf_counter()
    input_path, outdir = Path(input_path).expanduser(), Path(outdir).expanduser().resolve()  # absolute paths out
    name = case_name(input_path)
    is_dicom = input_path.is_dir()
    paths = output_paths(name, outdir, options, is_dicom)
    meshes = {f"mesh:{p.name}": p for p in mesh_paths(name, outdir, options)}
    check_outputs_free(list(paths.values()) + list(meshes.values()), options.overwrite)
    created = prepare_outputs(list(paths.values()) + list(meshes.values()))
    notes: List[str] = []  # how the input was read (e.g. re-orthonormalised NIfTI directions): case warnings
    try:
        dicom = select_series(input_path, options.series_uid) if is_dicom else None
        image = read_image(dicom.chosen if dicom else input_path, warn=notes.append)
        t_read = time.perf_counter() - t0
        result = cascade.segment(image, progress=progress, should_cancel=should_cancel,
                                 return_probabilities=options.probabilities)
        t1 = time.perf_counter()
        uncertain: List[UncertainLesion] = []
        if options.min_confidence is not None:
            labels, uncertain = split_uncertain(result.labels, result.confidence, image.geometry,
                                                options.min_confidence, midline_x=result.midline_x)
            result = replace(result, labels=labels)
        seg_map, segments = segments_from_labels(result.labels, image.geometry, midline_x=result.midline_x)
        case = _Case(input_path, name, dicom, image, result, seg_map, segments,
                     segment_confidences(seg_map, segments, result.confidence, image.geometry,
                                         unsure_below=options.unsure_below), uncertain)
        # Written beside the final files, renamed into place together at the end; with overwrite, an earlier
        # surface of a segment this result lacks goes too, and so does an earlier DICOM SEG this run skipped.
        with OutputSet({**paths, **meshes}, options.overwrite, drop_unwritten=[*meshes, "dicom_seg"]) as staged:
            written, skipped, measurements = _write_case(case, staged, options)
    except BaseException:
        remove_empty_folders(created)
        raise
    timings = {"read_s": t_read, **{k: v for k, v in result.timings.items() if k != "total_s"},
               "write_s": time.perf_counter() - t1, "total_s": time.perf_counter() - t0}
    final = {key: outdir / Path(path).name for key, path in written.items()}  # where the staged files now are
    return CaseResult(name, final, volumes_ml(seg_map, segments, image.geometry), timings["total_s"],
                      result.message, notes, timings, measurements, uncertain, skipped, dicom, result.midline_x)


@dataclass(frozen=True)
class _Case:
    """One segmented case, as its outputs are written from it."""
    input_path: Path
    name: str                           # the outputs' base name (case_name)
    dicom: Optional[DicomSelection]     # the series read, for a DICOM input
    image: Image                        # the CT as read
    result: "CascadeResult"             # labels, confidence, midline, ... after --min-confidence
    seg_map: np.ndarray                 # segments_from_labels: one value per segment
    segments: list                      # their SegmentInfo
    tags: Dict[str, Dict[str, str]]     # segment_confidences: per-segment confidence tags
    uncertain: List[UncertainLesion]    # the lesions --min-confidence took out


def _write_case(case: _Case, staged: Dict[str, Path], options: SegmentOptions):
    """Every output of one case into the staging paths: (written, skipped, measurements)."""
    written, skipped = _write_outputs(case, staged, options)
    measurements, result, geometry = None, case.result, case.image.geometry
    if options.measure:
        measurements, files = write_measurement_outputs(
            result.labels, geometry, staged, ct=case.image, overwrite=options.overwrite,
            source=case.input_path.name, confidence=result.confidence, uncertain=case.uncertain,
            min_confidence=options.min_confidence, unsure_below=options.unsure_below, midline_x=result.midline_x)
        written.update(files)
    if options.mesh:
        from .surfaces import write_segment_surfaces
        written.update(write_segment_surfaces(case.seg_map, case.segments, geometry, staged["labelmap"].parent,
                                              case.name, options.overwrite))
    return written, skipped, measurements


def mesh_paths(name: str, outdir: Path, options) -> List[Path]:
    """Every STL file a case may get (checked before any compute), when ``options.mesh``."""
    if not getattr(options, "mesh", False):
        return []
    from .surfaces import possible_surface_paths
    return possible_surface_paths(outdir, name)


def _write_outputs(case: _Case, paths: Dict[str, Path], options: SegmentOptions):
    """The label map, segments and the optional images and DICOM SEG: (written, skipped)."""
    image, result, input_path = case.image, case.result, case.input_path
    kw = dict(overwrite=options.overwrite)
    written: Dict[str, Path] = {}
    skipped: Dict[str, str] = {}
    written["labelmap"] = write_labelmap(result.labels, image.geometry, paths["labelmap"],
                                         input_paths=[input_path], **kw)
    written["seg_nrrd"] = write_segments(case.seg_map, case.segments, image.geometry, paths["seg_nrrd"],
                                         tags=case.tags, **kw)
    if "confidence" in paths:
        written["confidence"] = write_image(result.confidence, image.geometry, paths["confidence"],
                                            input_paths=[input_path], **kw)
    if "qc" in paths:
        from .qc import write_qc_png
        written["qc"] = write_qc_png(image, result.labels, paths["qc"], **kw)
    if result.probabilities is not None:
        for label in (Label.KIDNEY, Label.TUMOR, Label.CYST):
            key = f"prob_{label.name.lower()}"
            percent = np.rint(result.probabilities[label].astype(np.float32) * 100).astype(np.uint8)
            written[key] = write_image(percent, image.geometry, paths[key], input_paths=[input_path], **kw)
    if "dicom_seg" in paths:
        from .dicom_seg import write_dicom_seg
        try:
            written["dicom_seg"] = write_dicom_seg(result.labels, image.geometry, case.dicom.chosen,
                                                   paths["dicom_seg"], midline_x=result.midline_x, **kw)
        except OutputSkipped as exc:  # e.g. no FrameOfReferenceUID: the other outputs stand, the line says why
            skipped["dicom_seg"] = str(exc)
    return written, skipped
