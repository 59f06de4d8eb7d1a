"""Reading/writing CT images and label maps with full geometry, plus input validation.

* ``read_image`` returns CT as **float32** HU (exact for any int16/int32 HU value; rescale slope/intercept
  of DICOM applied by GDCM) so that NaN checks and normalisation need no casts downstream.
* ``read_labelmap`` returns **uint8** labels (uint16 if a label exceeds 255).
* Writes are atomic (temporary file in the destination folder + ``os.replace``), compressed, never
  overwrite without ``overwrite=True`` and never target an input file (or a file inside an input folder).
  Every image file is read back and compared (``write_sitk``): ITK's NIfTI writer does not report a write
  that failed (disk full, file-size limit), and its errors say "couldn't write gzip data", not why; a failed
  write is an OSError with the cause, and ITK's own messages never reach the terminal.
* NIfTI stores origin/direction as float32, so a NIfTI round trip is exact only to ~1e-5 mm / 1e-7;
  NRRD and MHA round trips are bit-exact.
* NIfTI headers are checked before ITK reads them, and a file ITK refuses only for direction cosines that are
  orthonormal to float precision is read by ``nifti_io`` (decisions #39); its notes go to ``warn``, and ITK's
  own messages never reach the terminal.

HU plausibility rule (``validate_ct``): a CT in Hounsfield units must (1) contain a voxel below
``HU_MIN_REQUIRED`` = -100 HU (air, lung, bowel gas or fat is present in any abdominal CT, even one
cropped to the body, while 0..255 screenshots, MR, masks and CT stored without its rescale intercept
(0..4095) have none) and (2) span at least ``HU_MIN_RANGE`` = 500 HU (air/fat to soft tissue or bone).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from . import nifti_io
from .atomic import atomic_output, check_output, probe_write
from .errors import InputError
from .geometry import Geometry, Image

PathLike = Union[str, os.PathLike]
LOGGER = logging.getLogger(__name__)

MIN_SLICES = 8                 # fewer voxels than this along any axis cannot be a usable abdominal CT
MAX_SPACING_MM = 20.0          # larger voxel spacing is implausible for CT (typical 0.5..5 mm)
HU_MIN_REQUIRED = -100.0       # some voxel must be at or below this (air / fat), see module docstring
HU_MIN_RANGE = 500.0           # max - min must be at least this many HU
READ_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")  # single-file formats only, so the write is atomic


def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in READ_EXTENSIONS + (".dcm",):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


# -- reading -------------------------------------------------------------------------------------
def _read_file(path: Path, warn: Callable[[str], None]) -> sitk.Image:
    ext = _extension(path)
    if ext == ".dcm":
        raise InputError(f"'{path}' is a single DICOM file; pass the folder that contains the whole series.")
    if ext not in READ_EXTENSIONS:
        raise InputError(f"Unsupported file type '{ext or path.name}' for '{path}'; use NIfTI (.nii, .nii.gz), "
                         "NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM series folder.")
    header = nifti_io.inspect(path, warn) if ext in (".nii", ".nii.gz") else None
    try:
        with itk_messages_hidden():  # ITK's own warnings are replaced by the sentences above and below
            return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        if header is not None and nifti_io.is_orthonormal_refusal(exc):
            return nifti_io.read_reorthonormalised(path, header, warn)
        if header is not None and header.version == 2:
            raise nifti_io.unreadable_version(path) from exc
        if "spacing" in str(exc).lower():  # ITK refuses zero/negative spacing while reading the header
            raise InputError(f"'{path}' has zero or negative voxel spacing in its header; fix the header "
                             "(spacing must be positive mm).") from exc
        raise InputError(f"Could not read image file '{path}' (corrupt, truncated or not a valid {ext} file); "
                         "re-export it from the source.") from exc


def _to_image(img: sitk.Image, path: Path, dtype) -> Image:
    if img.GetNumberOfComponentsPerPixel() > 1 or "complex" in img.GetPixelIDTypeAsString():
        raise InputError(f"'{path}' has vector/RGB pixels ({img.GetNumberOfComponentsPerPixel()} components); "
                         "load a grayscale CT volume in HU.")
    dim = img.GetDimension()
    if dim == 4 and img.GetSize()[3] == 1:  # a 4D file with a single time point is really 3D
        img = img[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise InputError(f"'{path}' is a {dim}D image, but a 3D CT volume is required; "
                         + ("export the full volume, not a single slice." if dim < 3 else
                            "extract one 3D volume (one time point / phase) first."))
    return Image(sitk.GetArrayFromImage(img).astype(dtype, copy=False), Geometry.from_sitk(img))


def _read_any(path, series_uid: Optional[str],
              warn: Optional[Callable[[str], None]] = None) -> Tuple[sitk.Image, Path]:
    from .dicom_io import DicomSeries, select_series  # imported here: the DICOM modules import this one
    from .dicom_read import read_series
    if isinstance(path, DicomSeries):  # a series dicom_io.select_series already chose
        return read_series(path), path.folder
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"Input '{p}' does not exist; check the path.")
    if p.is_dir():
        return read_series(select_series(p, series_uid).chosen), p
    return _read_file(p, warn or LOGGER.warning), p


def read_image(path, series_uid: Optional[str] = None, validate: bool = True,
               warn: Optional[Callable[[str], None]] = None) -> Image:
    """Read a CT (file, DICOM folder, or a ``dicom_io.DicomSeries``) as float32 HU; ``validate`` runs
    :func:`validate_ct`. ``warn(text)`` gets each one-line note about how the file was read (e.g.
    re-orthonormalised NIfTI directions; default: logged)."""
    img, p = _read_any(path, series_uid, warn)
    image = _to_image(img, p, np.float32)
    if validate:
        validate_ct(image, name=str(p))
    return image


def read_labelmap(path: PathLike, warn: Optional[Callable[[str], None]] = None) -> Image:
    """Read a label map (any integer-valued pixel type, float 0/1 masks included) as uint8 (uint16 if needed);
    ``warn`` as for :func:`read_image`."""
    img, p = _read_any(path, None, warn)
    image = _to_image(img, p, _pixel_dtype(img))
    arr = image.array
    _check_geometry(image.geometry, str(p))
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"Label map '{p}' contains NaN or infinite values; export it with integer labels.")
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(f"Label map '{p}' has non-integer values (a probability map?); threshold it or export "
                             "integer labels.")
    lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise InputError(f"Label map '{p}' has labels outside 0..65535 ({lo}..{hi}); relabel it with small "
                         "non-negative integers.")
    return Image(arr.astype(np.uint8 if hi <= 255 else np.uint16), image.geometry)


def _pixel_dtype(img: sitk.Image):
    """numpy dtype of ``img``'s pixels (keeps float masks exact until they are checked)."""
    return sitk.GetArrayViewFromImage(img).dtype if img.GetNumberOfComponentsPerPixel() == 1 else np.float64


# -- validation ------------------------------------------------------------------------------------
def _check_geometry(g: Geometry, name: str) -> None:
    sp = np.asarray(g.spacing)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"'{name}' has zero, negative or undefined voxel spacing {g.spacing}; fix the file header "
                         "(spacing must be positive mm).")
    if np.any(sp > MAX_SPACING_MM):
        raise InputError(f"'{name}' has implausible voxel spacing {g.spacing} mm (more than {MAX_SPACING_MM} mm); "
                         "check that the header stores the spacing in mm.")
    d = g.direction_matrix
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        raise InputError(f"'{name}' has a non-orthonormal direction matrix (sheared or degenerate axes); "
                         "resample it to an orthogonal grid first.")


def validate_ct(image: Image, name: str = "image") -> None:
    """Raise :class:`InputError` unless ``image`` plausibly is a 3D abdominal CT in HU (see module docstring)."""
    arr = image.array
    if arr.ndim != 3:
        raise InputError(f"'{name}' is a {arr.ndim}D array, but a 3D CT volume is required.")
    if arr.dtype.kind not in "iuf":
        raise InputError(f"'{name}' has pixel type {arr.dtype}, not a number; load a grayscale CT volume in HU.")
    if min(arr.shape) < MIN_SLICES:
        raise InputError(f"'{name}' has only {min(arr.shape)} voxels along one axis (shape z,y,x = {arr.shape}); "
                         f"at least {MIN_SLICES} slices are needed, load the full CT volume.")
    _check_geometry(image.geometry, name)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"'{name}' contains NaN or infinite voxel values; re-export the CT without them.")
    lo, hi = float(arr.min()), float(arr.max())
    if 0 <= lo and hi <= 255:
        raise InputError(f"'{name}' has values {lo:g}..{hi:g}, like an 8-bit screenshot or mask, not CT in "
                         "Hounsfield units; load the original CT volume.")
    if lo > HU_MIN_REQUIRED:
        raise InputError(f"'{name}' has no voxel below {HU_MIN_REQUIRED:g} HU (range {lo:g}..{hi:g}: no air or fat), "
                         "so it is not CT in Hounsfield units (MR or CT without rescale intercept?); load a CT in HU.")
    if hi - lo < HU_MIN_RANGE:
        raise InputError(f"'{name}' spans only {lo:g}..{hi:g}, too narrow for CT in Hounsfield units "
                         "(normalised or non-CT data?); load the original CT in HU.")


# -- writing ----------------------------------------------------------------------------------------
def _is_protected(out: Path, inputs: Iterable[PathLike]) -> bool:
    for inp in inputs:
        if inp is None:
            continue
        q = Path(inp).expanduser().resolve()
        if out == q or (q.is_dir() and q in out.parents):
            return True
    return False


def write_image(array: np.ndarray, geometry: Geometry, path: PathLike, *, overwrite: bool = False,
                input_paths: Sequence[PathLike] = ()) -> Path:
    """Write a (z, y, x) array with exactly ``geometry`` to .nii.gz/.nii/.nrrd/.mha (compressed), atomically.

    Refuses (InputError) to overwrite an existing file unless ``overwrite``, and always refuses to write onto
    one of ``input_paths`` or into an input DICOM folder. Returns the resolved output path.
    """
    out = Path(path).expanduser().resolve()
    ext = _extension(out)
    if ext not in WRITE_EXTENSIONS:
        raise InputError(f"Cannot write '{out.name}': unsupported output type '{ext}'; use .nii.gz, .nrrd or .mha.")
    if _is_protected(out, input_paths):
        raise InputError(f"Refusing to write '{out}' because it is (inside) the input; choose another output path.")
    check_output(out, overwrite)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_image needs a 3D (z, y, x) array, got shape {array.shape}.")
    img = Image(array.astype(np.uint8) if array.dtype == bool else array, geometry).to_sitk()
    with atomic_output(out, suffix=ext) as tmp:  # the extension tells SimpleITK the format
        write_sitk(img, tmp, out)
    return out


@contextlib.contextmanager
def itk_messages_hidden():
    """ITK's C++ code prints warnings and errors to the process's stderr (file descriptor 2), past Python:
    for the block, warnings are switched off and descriptor 2 points to the null device."""
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    saved = None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 (some GUI apps): nothing to hide
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)


def write_sitk(img: sitk.Image, tmp: PathLike, final: PathLike, compress: bool = True) -> None:
    """``sitk.WriteImage(img, tmp)``, then read back and compared voxel for voxel. A failure raises an
    OSError naming ``final`` with the cause found by :func:`atomic.probe_write` (ENOSPC, EFBIG, ...)."""
    try:
        with itk_messages_hidden():
            sitk.WriteImage(img, str(tmp), useCompression=compress)
            back = sitk.ReadImage(str(tmp))
        ok = back.GetSize() == img.GetSize() and back.GetNumberOfComponentsPerPixel() == \
            img.GetNumberOfComponentsPerPixel() and np.array_equal(sitk.GetArrayViewFromImage(back),
                                                                   sitk.GetArrayViewFromImage(img), equal_nan=True)
    except RuntimeError:
        ok = False
    if not ok:
        size = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        cause = probe_write(os.path.dirname(os.path.abspath(tmp)), size + 1)
        if cause is None:
            cause = OSError(errno.EIO, "the image writer failed without saying why")
        cause.filename = str(final)
        raise cause


def write_labelmap(labels: np.ndarray, geometry: Geometry, path: PathLike, *, overwrite: bool = False,
                   input_paths: Sequence[PathLike] = ()) -> Path:
    """Write an integer (z, y, x) label map as uint8 (see :func:`write_image` for the safety rules)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"Label maps must have an integer or bool dtype, got {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"Labels must lie in 0..255 to be written as uint8, got {labels.min()}..{labels.max()}.")
    return write_image(labels.astype(np.uint8), geometry, path, overwrite=overwrite, input_paths=input_paths)
