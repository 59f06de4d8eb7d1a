"""Synthetic test inputs with exactly known content, importable by any test (``from phantoms import ...``)."""
import gzip
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx (degrees); used to build oblique direction matrices."""
    a, b, c = np.radians([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def ellipsoid_labels(shape=(24, 40, 36)) -> np.ndarray:
    """uint8 (z, y, x) label map with three ellipsoids (labels 1, 2, 3) defined in voxel coordinates."""
    z, y, x = np.indices(shape, dtype=float)
    s = np.asarray(shape, dtype=float)
    out = np.zeros(shape, np.uint8)
    for label, c, r in [(1, (0.5, 0.35, 0.3), (0.3, 0.22, 0.2)), (2, (0.45, 0.65, 0.7), (0.25, 0.2, 0.18)),
                        (3, (0.5, 0.35, 0.3), (0.12, 0.08, 0.08))]:
        cz, cy, cx = np.asarray(c) * s
        rz, ry, rx = np.asarray(r) * s
        out[((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1] = label
    return out


def phantom_ct(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32 HU volume: air outside a body box, fat/soft-tissue inside, brighter 'organs' per label."""
    rng = np.random.default_rng(seed)
    ct = np.full(labels.shape, -1000.0, np.float32)
    ct[1:-1, 2:-2, 2:-2] = -80.0
    ct[labels > 0] = 30.0 + 60.0 * labels[labels > 0]
    return ct + rng.normal(0, 10, labels.shape).astype(np.float32)


def write_small_ct(path: Path, shape=(20, 30, 40), spacing=(4.0, 4.5, 5.0),
                   direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    """A small int16 CT-like file (noise around 40 HU, air in front) for command-line tests."""
    arr = np.random.default_rng(0).normal(40, 30, shape).astype(np.int16)
    arr[:, :3] = -1000
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((12.5, -40.0, 100.0))
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return img


# The whole NIfTI-1 header (nifti1.h), to build header variants of a file SimpleITK wrote.
NIFTI1 = np.dtype([
    ("sizeof_hdr", "<i4"), ("data_type", "S10"), ("db_name", "S18"), ("extents", "<i4"), ("session_error", "<i2"),
    ("regular", "S1"), ("dim_info", "u1"), ("dim", "<i2", (8,)), ("intent_p", "<f4", (3,)), ("intent_code", "<i2"),
    ("datatype", "<i2"), ("bitpix", "<i2"), ("slice_start", "<i2"), ("pixdim", "<f4", (8,)), ("vox_offset", "<f4"),
    ("scl_slope", "<f4"), ("scl_inter", "<f4"), ("slice_end", "<i2"), ("slice_code", "u1"), ("xyzt_units", "u1"),
    ("cal_max", "<f4"), ("cal_min", "<f4"), ("slice_duration", "<f4"), ("toffset", "<f4"), ("glmax", "<i4"),
    ("glmin", "<i4"), ("descrip", "S80"), ("aux_file", "S24"), ("qform_code", "<i2"), ("sform_code", "<i2"),
    ("quatern", "<f4", (3,)), ("qoffset", "<f4", (3,)), ("srow", "<f4", (3, 4)), ("intent_name", "S16"),
    ("magic", "S4")])
assert NIFTI1.itemsize == 348


def _nifti_open(path: Path, mode: str):
    return gzip.open(path, mode) if str(path).endswith(".gz") else open(path, mode)


def read_nifti1(path: Path):
    """(header as a NIFTI1 record, voxel bytes) of a little-endian NIfTI-1 file."""
    with _nifti_open(path, "rb") as f:
        raw = f.read()
    header = np.frombuffer(raw[:348], NIFTI1)[0].copy()
    return header, raw[int(header["vox_offset"]):]


def write_nifti1(path: Path, header, voxels: bytes, big_endian: bool = False) -> Path:
    """A NIfTI-1 file from a NIFTI1 record and voxel bytes (little-endian ones, swapped with ``big_endian``)."""
    offset = int(header["vox_offset"])
    if big_endian:
        kind = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2"}[int(header["datatype"])]
        voxels = np.frombuffer(voxels, "<" + kind).astype(">" + kind).tobytes()
        header = np.asarray(header).astype(NIFTI1.newbyteorder(">"))
    with _nifti_open(path, "wb") as f:
        f.write(np.asarray(header).tobytes() + bytes(offset - 348) + voxels)
    return path


def nifti_variant(src: Path, dst: Path, voxels: bytes = None, big_endian: bool = False, **fields) -> Path:
    """A copy of the NIfTI-1 file ``src`` with header ``fields`` replaced (and the voxel bytes, with ``voxels``)."""
    header, data = read_nifti1(src)
    for name, value in fields.items():
        header[name] = value
    return write_nifti1(dst, header, data if voxels is None else voxels, big_endian)


def sheared_srow(header, cosine: float) -> np.ndarray:
    """The header's srow with axis 0 tilted towards axis 1 so that their normalised directions have ``cosine``."""
    srow = header["srow"].astype(float)
    m = srow[:, :3] / np.linalg.norm(srow[:, :3], axis=0)
    sheared = m[:, 0] + cosine / np.sqrt(1 - cosine ** 2) * m[:, 1]
    srow[:, 0] = sheared / np.linalg.norm(sheared) * np.linalg.norm(srow[:, 0])
    return srow
