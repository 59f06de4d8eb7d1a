"""Finding and choosing the CT volume in a DICOM folder as hospitals and archives deliver it (issue #18).

A folder may hold several series (localizer, axial and coronal reconstructions, a dose report), a DICOMDIR,
subfolders (a series split across them, or one folder per series), duplicate copies of files, or one
enhanced multi-frame file. :func:`select_series` reads every file's header once (GDCM through SimpleITK,
about 1 ms a file; or the files a DICOMDIR lists, through pydicom when it is installed), groups the files
into series, names what each is, and chooses the CT volume: the axial CT series with the most images
(``series_uid`` chooses another). ``DicomSelection.describe`` says which one in one line.
:mod:`.dicom_read` then checks and reads the chosen series. ITK's own messages never reach the terminal.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .image_io import MIN_SLICES, READ_EXTENSIONS, itk_messages_hidden

PathLike = Union[str, os.PathLike]
TAGS = {"series_uid": "0020|000e", "study_uid": "0020|000d", "sop_uid": "0008|0018", "sop_class": "0008|0016",
        "modality": "0008|0060", "image_type": "0008|0008", "number": "0020|0011", "description": "0008|103e",
        "position": "0020|0032", "frame_of_reference": "0020|0052"}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame variants (.7.1 ... .7.4)
PLANES = ("sagittal", "coronal", "axial")        # by the LPS axis the slice normal is closest to
MAX_SCAN_DEPTH = 8                                 # folder levels below the input (a CD: DICOM/PT/ST/SE/IM)


@dataclass(frozen=True)
class DicomSlice:
    path: str
    sop_uid: str
    position: Optional[Tuple[float, float, float]]  # ImagePositionPatient; None in multi-frame files


@dataclass(frozen=True)
class DicomSeries:
    """One series (or the part of one with a single image size and orientation) found in a folder."""
    folder: Path
    uid: str
    number: str
    description: str
    kind: str                              # "axial CT", "coronal CT", "localizer", "secondary capture", ...
    slices: Tuple[DicomSlice, ...]         # in file-name order; one entry for a multi-frame file
    images: int                            # slices, or frames of a multi-frame file
    orientation: Tuple[float, ...]         # row and column direction cosines (ImageOrientationPatient)
    multiframe: bool = False
    study_uid: str = ""
    frame_of_reference: str = ""

    @property
    def is_volume(self) -> bool:
        return self.kind.endswith("CT") and self.images >= MIN_SLICES

    @property
    def duplicates(self) -> int:
        """Files that repeat an instance of the series (same SOPInstanceUID): read once."""
        uids = [s.sop_uid for s in self.slices if s.sop_uid]
        return len(uids) - len(set(uids))

    def label(self, with_uid: bool = True) -> str:
        name = f"series {self.number or '?'}" + (f" '{self.description}'" if self.description else "")
        unit = "frame" if self.multiframe else "image"
        what = f"{self.kind}, {self.images} {unit}{'s' if self.images != 1 else ''}"
        return f"{name} ({what}" + (f", uid '{self.uid}')" if with_uid else ")")


@dataclass(frozen=True)
class DicomSelection:
    chosen: DicomSeries
    others: Tuple[DicomSeries, ...] = ()
    non_image: int = 0                     # DICOM files without an image (structured reports, ...)
    rule: str = ""                         # why this series, when there was a choice

    def describe(self) -> str:
        """One line: the series read, why, and what else the folder holds."""
        text = f"DICOM {self.chosen.label()}"
        if self.chosen.duplicates:
            text += f", {self.chosen.duplicates} duplicate files of its instances ignored"
        if self.rule:
            text += f", {self.rule}"
        rest = [o.label(with_uid=o.is_volume) for o in self.others]
        if self.non_image:
            rest.append(f"{self.non_image} DICOM file{'s' if self.non_image > 1 else ''} without an image (reports)")
        if rest:
            text += "; also in the folder, not segmented: " + ", ".join(rest)
        if any(o.is_volume for o in self.others):
            text += "; --series-uid UID chooses another"
        return text

    def to_dict(self) -> dict:
        return {"series_uid": self.chosen.uid, "kind": self.chosen.kind, "images": self.chosen.images,
                "description": self.chosen.description, "summary": self.describe(),
                "others": [{"series_uid": o.uid, "kind": o.kind, "images": o.images} for o in self.others]}


# -- finding files ----------------------------------------------------------------------------------
def find_dicomdir(folder: Path) -> Optional[Path]:
    try:
        return next((p for p in folder.iterdir() if p.name.upper() == "DICOMDIR" and p.is_file()), None)
    except OSError:
        return None


def _candidate(name: str) -> bool:
    """A file that may be DICOM: not hidden, not the DICOMDIR, not a NIfTI/NRRD/MetaImage file."""
    return not name.startswith(".") and name.upper() != "DICOMDIR" and not name.lower().endswith(READ_EXTENSIONS)


def _files_below(folder: Path) -> Iterator[Path]:
    """Every candidate file below ``folder`` (folders deeper than MAX_SCAN_DEPTH and hidden ones left out)."""
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        deep = len(Path(root).parts) - base >= MAX_SCAN_DEPTH
        dirs[:] = [] if deep else sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if _candidate(name):
                yield Path(root) / name


def _dicomdir_files(dicomdir: Path) -> Optional[List[Path]]:
    """The files a DICOMDIR lists (pydicom), or None to scan the folder instead: no pydicom, an unreadable
    DICOMDIR, or none of its files under the names it gives (a disc copied with changed name case)."""
    try:
        import pydicom
    except ImportError:
        return None
    try:
        ds = pydicom.dcmread(str(dicomdir))
        ids = [r.ReferencedFileID for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r]
    except Exception:  # noqa: BLE001  pydicom raises many types for a damaged file; the scan still works
        return None
    paths = [dicomdir.parent.joinpath(*([i] if isinstance(i, str) else list(i))) for i in ids]
    present = [p for p in paths if p.is_file()]
    if not present:
        return None
    if len(present) < len(paths):
        missing = [p for p in paths if not p.is_file()]
        files = "1 file that is" if len(missing) == 1 else f"{len(missing)} files that are"
        raise InputError(f"The DICOMDIR in '{dicomdir.parent}' lists {files} missing (e.g. '{missing[0]}'); copy "
                         "the complete disc or folder, or pass the folder of one series.")
    return present


# -- reading headers ----------------------------------------------------------------------------------
@dataclass
class _Header:
    path: str
    tags: Dict[str, str]
    size: Tuple[int, ...]
    direction: Tuple[float, ...]
    frames: int = 1
    extra: Dict[str, str] = field(default_factory=dict)


def _read_header(reader: sitk.ImageFileReader, path: Path) -> Optional[_Header]:
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    tags = {k: reader.GetMetaData(t).strip(" \x00") if reader.HasMetaDataKey(t) else "" for k, t in TAGS.items()}
    size = reader.GetSize()
    frames = size[2] if len(size) > 2 else 1
    return _Header(str(path), tags, size, reader.GetDirection(), frames)


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _scan(files: Sequence[Path]) -> Tuple[List[_Header], int]:
    """Headers of the image files, and how many other DICOM files (reports, ...) there were."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    headers, non_image = [], 0
    with itk_messages_hidden():
        for path in files:
            header = _read_header(reader, path)
            if header is not None:
                headers.append(header)
            elif _is_dicom_file(path):
                non_image += 1
    return headers, non_image


def holds_dicom(folder: PathLike) -> bool:
    """Whether a DICOMDIR or a DICOM image file lies in ``folder`` or below (stops at the first)."""
    folder = Path(folder)
    return _dicomdir_or_image(folder, _files_below(folder))


def has_dicom_images(folder: PathLike) -> bool:
    """Whether ``folder`` itself (not its subfolders) holds a DICOMDIR or DICOM image files."""
    folder = Path(folder)
    return _dicomdir_or_image(folder, _files_here(folder))


def _files_here(folder: Path) -> Iterator[Path]:
    try:
        files = sorted(p for p in folder.iterdir() if _candidate(p.name) and p.is_file())
    except OSError:
        return
    yield from files


def _dicomdir_or_image(folder: Path, files: Iterable[Path]) -> bool:
    """A DICOMDIR in ``folder``, else the first of ``files`` (read lazily) that GDCM reads as an image."""
    if find_dicomdir(folder) is not None:
        return True
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    with itk_messages_hidden():
        return any(_read_header(reader, p) is not None for p in files)


def study_uids(folder: PathLike) -> set:
    """StudyInstanceUIDs of the DICOM images below ``folder`` ('' for images without one), from the first image
    of each folder, and only until the answer is plainly "more than one study" (two UIDs, or one missing):
    telling a batch of patients from one study in several folders must not read every header of a large
    batch before the first case starts."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    found, done_folders = set(), set()
    with itk_messages_hidden():
        for path in _files_below(Path(folder)):
            if path.parent in done_folders:
                continue
            header = _read_header(reader, path)
            if header is None:
                continue
            done_folders.add(path.parent)
            found.add(header.tags["study_uid"])
            if len(found) > 1 or "" in found:
                break
    return found


# -- grouping and choosing ----------------------------------------------------------------------------
def _kind(h: _Header) -> str:
    t = h.tags
    if "LOCALIZER" in t["image_type"].upper():
        return "localizer"
    if t["sop_class"].startswith(SECONDARY_CAPTURE):
        return "secondary capture"  # dose screens, screenshots
    if t["modality"] not in ("CT", ""):
        return f"{t['modality']} images"
    d = np.asarray(h.direction, float).reshape(3, 3)
    return f"{PLANES[int(np.argmax(np.abs(np.cross(d[:, 0], d[:, 1]))))]} CT"


def _position(text: str) -> Optional[Tuple[float, float, float]]:
    try:
        values = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None
    return values if len(values) == 3 else None


def _group(headers: List[_Header], folder: Path) -> List[DicomSeries]:
    """Series by SeriesInstanceUID (per folder when it is empty), split further by image size and
    orientation (a localizer stored in the CT's series); each multi-frame file is a series of its own."""
    groups: Dict[tuple, List[_Header]] = {}
    for h in headers:
        uid = h.tags["series_uid"]
        d = np.asarray(h.direction, float).reshape(3, 3)
        key = (uid, "" if uid else os.path.dirname(h.path), tuple(h.size[:2]),
               tuple(np.round(np.concatenate([d[:, 0], d[:, 1]]), 3)), h.path if h.frames > 1 else "")
        groups.setdefault(key, []).append(h)
    series = []
    for members in groups.values():
        first, t = members[0], members[0].tags
        d = np.asarray(first.direction, float).reshape(3, 3)
        slices = tuple(DicomSlice(h.path, h.tags["sop_uid"], _position(h.tags["position"])) for h in members)
        images = first.frames if first.frames > 1 else len({s.sop_uid or s.path for s in slices})
        series.append(DicomSeries(folder, t["series_uid"], t["number"], t["description"], _kind(first), slices,
                                  images, tuple(np.concatenate([d[:, 0], d[:, 1]])), first.frames > 1,
                                  t["study_uid"], t["frame_of_reference"]))
    return sorted(series, key=lambda s: (_number(s.number), s.uid, s.slices[0].path))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def find_series(folder: PathLike) -> Tuple[List[DicomSeries], int]:
    """Every series in ``folder`` and its subfolders (or the files its DICOMDIR lists), and the number of
    DICOM files without an image."""
    folder = Path(folder)
    dicomdir = find_dicomdir(folder)
    listed = _dicomdir_files(dicomdir) if dicomdir is not None else None
    headers, non_image = _scan(listed if listed is not None else list(_files_below(folder)))
    return _group(headers, folder), non_image


def _available(series: List[DicomSeries]) -> str:
    counts: Dict[str, int] = {}
    for s in series:
        counts[s.uid] = counts.get(s.uid, 0) + len(s.slices)
    return ", ".join(f"'{uid}' ({n} files)" for uid, n in counts.items())


def select_series(folder: PathLike, series_uid: Optional[str] = None) -> DicomSelection:
    """The CT volume of ``folder``: the series ``series_uid``, or else the axial CT series with the most
    images (then any CT series with the most images). InputError with one sentence when there is none."""
    folder = Path(folder)
    series, non_image = find_series(folder)
    if not series:
        raise InputError(f"No DICOM series found in folder '{folder}'; choose the folder that holds the .dcm files "
                         "of one CT series" + (" (it holds only DICOM files without an image, such as reports)."
                                               if non_image else "."))
    pool = series if series_uid is None else [s for s in series if s.uid == series_uid]
    if not pool:
        raise InputError(f"DICOM series '{series_uid}' is not in folder '{folder}'; available series ids: "
                         f"{_available(series)}.")
    volumes = [s for s in pool if s.is_volume]
    if not volumes:
        found = "; ".join(s.label() for s in pool)
        raise InputError(f"Folder '{folder}' holds no CT volume of at least {MIN_SLICES} slices"
                         f"{'' if series_uid is None else ' in series ' + repr(series_uid)} (found: {found}); "
                         "choose the folder of the CT series itself.")
    chosen = max(volumes, key=lambda s: (s.kind == "axial CT", s.images))
    rule = ""
    if series_uid is None and len(volumes) > 1:
        rule = ("chosen as the axial CT series with the most images" if chosen.kind == "axial CT"
                else "chosen as the CT series with the most images")
    return DicomSelection(chosen, tuple(s for s in series if s is not chosen), non_image, rule)
