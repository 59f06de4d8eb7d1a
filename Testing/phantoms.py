"""Synthetic test inputs with exactly known content, importable by any test (``from phantoms import ...``)."""
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
