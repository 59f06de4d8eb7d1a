"""NIfTI headers read with numpy, for what ITK's NiftiImageIO refuses, fills in silently or says in its own words.

``image_io`` reads NIfTI with SimpleITK and calls this module around it (docs/decisions.md #39):

* before ITK (``inspect``): the file is complete (ITK zero-fills a truncated one), its intensity scaling means
  one thing (ITK adds ``scl_inter`` when ``scl_slope`` is 0, which the standard calls unscaled, and turns a
  NaN intercept or an infinite slope into NaN/inf voxels), and one-line notes for what ITK reads silently its
  own way: no orientation codes, or sform voxel sizes that disagree with ``pixdim`` (ITK prints a raw warning
  and uses ``pixdim``);
* after ITK refused an sform-only file with "ITK only supports orthonormal direction cosines"
  (``read_reorthonormalised``): ITK wants the normalised sform columns orthonormal to 1e-4, which oblique
  scans of the TotalSegmentator data set miss. Within ``ORTHONORMAL_TOL`` the directions are replaced by the
  nearest orthonormal ones (polar decomposition, as nibabel makes the qform of such an affine) and the voxels
  are read here; beyond it the file is refused. A NIfTI-2 file ITK refused gets a sentence saying so.

What ITK already reads like the plain file (checked by Testing/core/test_nifti_io.py): ``scl_slope``/``scl_inter``
(applied, voxels as float32), a qform without an sform, a 4th (and 5th) dimension of size 1.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import InputError

ORTHONORMAL_TOL = 1e-3   # max |cos| between two normalised sform columns that is corrected (0.057 degrees)
ITK_SCALE_TOL = 1e-3     # mm: ITK warns when sform column lengths and pixdim differ by more than this
HEADER_BYTES = 544       # enough for NIfTI-2 (540) and NIfTI-1 (348)
# NIfTI datatype code -> numpy type for the scalar types a CT or label map can have.
DATATYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
# (offset, type, count) of the fields used, per version (nifti1.h and nifti2.h).
LAYOUTS = {
    1: dict(dim=(40, "i2", 8), datatype=(70, "i2", 1), bitpix=(72, "i2", 1), pixdim=(76, "f4", 8),
            vox_offset=(108, "f4", 1), scl_slope=(112, "f4", 1), scl_inter=(116, "f4", 1), xyzt_units=(123, "u1", 1),
            qform_code=(252, "i2", 1), sform_code=(254, "i2", 1), srow=(280, "f4", 12)),
    2: dict(datatype=(12, "i2", 1), bitpix=(14, "i2", 1), dim=(16, "i8", 8), pixdim=(104, "f8", 8),
            vox_offset=(168, "i8", 1), scl_slope=(176, "f8", 1), scl_inter=(184, "f8", 1), qform_code=(344, "i4", 1),
            sform_code=(348, "i4", 1), srow=(400, "f8", 12), xyzt_units=(500, "i4", 1)),
}
UNIT_MM = {1: 1000.0, 2: 1.0, 3: 0.001}  # xyzt_units & 7: metre, millimetre, micron; ITK reads others as mm
LPS = np.array([-1.0, -1.0, 1.0])        # NIfTI's RAS to ITK's LPS


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1/2 header this module uses, in plain Python/numpy types."""
    version: int                # 1 or 2
    endian: str                 # "<" or ">"
    dim: Tuple[int, ...]        # dim[0..7]
    datatype: int
    bitpix: int
    pixdim: Tuple[float, ...]   # pixdim[0..7]
    vox_offset: int
    scl_slope: float
    scl_inter: float
    xyzt_units: int
    qform_code: int
    sform_code: int
    srow: np.ndarray            # 3 x 4 (srow_x, srow_y, srow_z), RAS

    @property
    def shape(self) -> Tuple[int, ...]:
        """dim[1..dim[0]] (x fastest), empty dimensions counted as 1 (as ITK and the size check do)."""
        return tuple(max(int(d), 1) for d in self.dim[1:1 + max(min(int(self.dim[0]), 7), 0)])

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * int(self.bitpix) // 8


def parse_header(head: bytes, path) -> NiftiHeader:
    """The header from the (uncompressed) first bytes of a NIfTI-1/2 file; InputError if it is neither."""
    for version, size in ((1, 348), (2, 540)):
        for endian in "<>":
            if len(head) >= size and int(np.frombuffer(head[:4], endian + "i4")[0]) == size:
                values = {name: np.frombuffer(head, endian + kind, count, offset)
                          for name, (offset, kind, count) in LAYOUTS[version].items()}
                one = {k: v[0].item() for k, v in values.items() if len(v) == 1}
                return NiftiHeader(version, endian, tuple(int(d) for d in values["dim"]), int(one["datatype"]),
                                   int(one["bitpix"]), tuple(float(p) for p in values["pixdim"]),
                                   int(one["vox_offset"]), float(one["scl_slope"]), float(one["scl_inter"]),
                                   int(one["xyzt_units"]), int(one["qform_code"]), int(one["sform_code"]),
                                   values["srow"].astype(float).reshape(3, 4))
    raise InputError(f"Image file '{path}' is not a valid NIfTI file (bad header); re-export it as NIfTI.")


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_header(path: Path) -> NiftiHeader:
    try:
        with _open(path) as f:
            head = f.read(HEADER_BYTES)
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged deflate stream
        raise InputError(f"Image file '{path}' is corrupt or truncated ({exc}); re-export or re-download it.") from exc
    return parse_header(head, path)


def check_complete(path: Path, header: NiftiHeader) -> None:
    """ITK silently zero-fills truncated NIfTI files, so compare the stored byte count with the header.

    For .nii.gz the gzip trailer's ISIZE (uncompressed size mod 2^32) is compared first, which costs
    nothing; only when it disagrees (truncated file, or a multi-member gzip) is the whole file
    decompressed to count the bytes and verify the CRC.
    """
    expected = header.vox_offset + header.data_bytes
    try:
        if not path.name.lower().endswith(".gz"):
            total = path.stat().st_size
        else:
            with open(path, "rb") as raw:
                raw.seek(-4, os.SEEK_END)
                if int.from_bytes(raw.read(4), "little") == expected % 2 ** 32:
                    return
            total = 0
            with gzip.open(path, "rb") as f:
                while True:  # read to the end: also verifies the gzip CRC
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged deflate stream
        raise InputError(f"Image file '{path}' is corrupt or truncated ({exc}); re-export or re-download it.") from exc
    if total < expected:
        raise InputError(f"Image file '{path}' is truncated ({total} of {expected} bytes); "
                         "re-export or re-download it.")


def inspect(path: Path, warn: Callable[[str], None]) -> NiftiHeader:
    """Checks before ITK reads ``path`` (see the module docstring); notes go to ``warn``. Returns the header."""
    header = read_header(path)
    check_complete(path, header)
    slope, inter = header.scl_slope, header.scl_inter
    # nifti1.h and nibabel (Nifti1Header.get_slope_inter): slope 0 or NaN means unscaled, and a valid slope
    # needs a finite intercept. ITK adds the intercept when the slope is 0, scales with an infinite slope and
    # turns a NaN intercept into NaN voxels: those headers are refused rather than read two ways.
    if slope == 0 or np.isnan(slope):
        usable = inter == 0 or np.isnan(inter)
    else:
        usable = bool(np.isfinite(slope) and np.isfinite(inter))
    if not usable:
        raise InputError(f"'{path}' has an invalid or ambiguous intensity scaling in its header (scl_slope {slope:g}, "
                         f"scl_inter {inter:g}), which ITK and the NIfTI standard read differently; set scl_slope 1 "
                         "and scl_inter to the intended offset (0 if none), or re-export it.")
    if header.qform_code <= 0 and header.sform_code <= 0:
        warn(f"'{path}' has no orientation in its NIfTI header (qform_code and sform_code are 0), so it is read as "
             "ITK reads it (identity directions, origin 0) and left and right in the results are unverified; "
             "re-export it with its orientation.")
    elif header.sform_code > 0:
        lengths = np.linalg.norm(header.srow[:, :3], axis=0)
        pixdim = np.asarray(header.pixdim[1:4])
        if np.any(np.abs(lengths - pixdim) > ITK_SCALE_TOL):
            warn(f"'{path}' has sform voxel sizes ({_sizes(lengths)}) that differ from its pixdim ({_sizes(pixdim)}); "
                 "the pixdim spacing is used, as ITK does, so check the spacing of the results.")
    return header


def _sizes(values) -> str:
    return " x ".join(f"{v:.4g}" for v in values)  # in the header's units, as ITK compares them


def is_orthonormal_refusal(exc: Exception) -> bool:
    """True for ITK's refusal of direction cosines that are not orthonormal (the words of itkNiftiImageIO.cxx)."""
    return "orthonormal direction cosines" in str(exc)


def unreadable_version(path) -> InputError:
    """The sentence for a NIfTI-2 file ITK refused (ITK 5.4's NIfTI reader knows NIfTI-1 only)."""
    return InputError(f"'{path}' is a NIfTI-2 file, which the image reader (ITK {sitk.Version.ITKVersionString()}) "
                      "cannot read; save it as NIfTI-1 (.nii.gz) or NRRD (.nrrd) and try again.")


def sform_geometry(path, header: NiftiHeader) -> Tuple[Tuple[float, ...], Tuple[float, ...], np.ndarray]:
    """(spacing, origin, normalised direction columns) in mm and LPS, as ITK derives them from the sform."""
    unit = UNIT_MM.get(header.xyzt_units & 7, 1.0)
    spacing = tuple(float(p) * unit for p in header.pixdim[1:4])
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(f"'{path}' has zero or negative voxel spacing in its header; fix the header "
                         "(spacing must be positive mm).")
    matrix = LPS[:, None] * header.srow[:, :3]
    lengths = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(lengths == 0):
        raise InputError(f"'{path}' has a degenerate sform (an axis of length zero); fix the header or re-export it.")
    origin = tuple(float(v) for v in LPS * header.srow[:, 3] * unit)
    return spacing, origin, matrix / lengths


def nearest_orthonormal(path, direction: np.ndarray, spacing, size) -> Tuple[np.ndarray, str]:
    """The polar factor of ``direction`` (the orthonormal matrix nearest to it) and the one-line note; an
    InputError when two axes are further than ``ORTHONORMAL_TOL`` from perpendicular."""
    worst = float(np.max(np.abs(direction.T @ direction - np.eye(3))))
    degrees = np.degrees(np.arcsin(min(worst, 1.0)))
    limit = np.degrees(np.arcsin(ORTHONORMAL_TOL))
    if not worst <= ORTHONORMAL_TOL:
        raise InputError(f"'{path}' has sheared voxel axes in its sform (two axes are {degrees:.2g} degrees from "
                         f"perpendicular, more than the {limit:.2g} degrees of rounding that is corrected); resample "
                         "it to an orthogonal grid first.")
    u, _, vt = np.linalg.svd(direction)
    rotation = u @ vt
    # The change is linear in the index, so the voxel that moves most is a corner of the grid.
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in size], indexing="ij")).reshape(3, -1)
    moved = float(np.max(np.linalg.norm((rotation - direction) @ (np.asarray(spacing)[:, None] * corners), axis=0)))
    note = (f"'{path}' has voxel axes {degrees:.2g} degrees from perpendicular in its sform (rounding in an oblique "
            f"scan), which ITK refuses; they were made exactly perpendicular, which moves no voxel more than "
            f"{moved:.2g} mm.")
    return rotation, note


def read_voxels(path: Path, header: NiftiHeader) -> np.ndarray:
    """The voxels as a numpy array (slowest axis first), scaled by scl_slope/scl_inter as ITK does."""
    kind = DATATYPES.get(header.datatype)
    if kind is None or np.dtype(kind).itemsize * 8 != header.bitpix:
        raise InputError(f"'{path}' stores NIfTI datatype {header.datatype}, not grayscale numbers; load a grayscale "
                         "CT volume in HU.")
    shape = header.shape + (1,) * (3 - len(header.shape))
    if any(n != 1 for n in shape[3:]):
        raise InputError(f"'{path}' is a {len(shape)}D image, but a 3D CT volume is required; extract one 3D volume "
                         "(one time point / phase) first.")
    try:
        with _open(path) as f:
            f.seek(header.vox_offset)
            data = f.read(header.data_bytes)
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged deflate stream
        raise InputError(f"Image file '{path}' is corrupt or truncated ({exc}); re-export or re-download it.") from exc
    stored = np.frombuffer(data, np.dtype(header.endian + kind)).reshape(shape[2::-1])
    slope, inter = header.scl_slope, header.scl_inter
    if not np.isfinite(slope) or slope == 0 or (slope == 1 and inter == 0):
        return stored.astype(stored.dtype.newbyteorder("="), copy=False)
    scaled = np.empty(stored.shape, np.float32)  # ITK: computed in double, stored as float
    for k in range(stored.shape[0]):  # slice by slice: no float64 copy of the whole volume
        scaled[k] = stored[k] * slope + inter
    return scaled


def read_reorthonormalised(path: Path, header: NiftiHeader, warn: Callable[[str], None]) -> sitk.Image:
    """The image ITK refused, with its directions made orthonormal (see the module docstring); the note goes to
    ``warn``. Only the sform is read: ITK refuses only when there is no qform to fall back on."""
    spacing, origin, direction = sform_geometry(path, header)
    rotation, note = nearest_orthonormal(path, direction, spacing, (header.shape + (1, 1))[:3])  # before the voxels
    voxels = read_voxels(path, header)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(float(v) for v in rotation.ravel()))
    warn(note)
    return image
