"""Image geometry in ITK/LPS convention, kept beside numpy arrays in (z, y, x) order.

Conventions (the same as SimpleITK):
  * ``spacing`` (x, y, z) in mm, ``origin`` (x, y, z) = LPS position of the centre of voxel (0, 0, 0);
  * ``direction`` 3x3 row-major; column c is the physical (LPS) direction of index axis c (i, j, k);
  * ``size`` (x, y, z) voxels, i.e. the reverse of the numpy shape (z, y, x);
  * physical = origin + direction @ (spacing * ijk), with ijk in (x, y, z) order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk

Vec3 = Tuple[float, float, float]


@dataclass(frozen=True)
class Geometry:
    spacing: Vec3 = (1.0, 1.0, 1.0)
    origin: Vec3 = (0.0, 0.0, 0.0)
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    size: Optional[Tuple[int, int, int]] = None

    def __post_init__(self) -> None:
        # Plain tuples of Python floats (-0.0 -> 0.0) so instances compare, hash and serialise reliably.
        spacing, origin, direction = (tuple(float(v) + 0.0 for v in np.asarray(x, dtype=float).ravel())
                                      for x in (self.spacing, self.origin, self.direction))
        if len(spacing) != 3 or len(origin) != 3 or len(direction) != 9:
            raise ValueError("Geometry needs 3 spacing values, 3 origin values and a 3x3 direction matrix.")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)
        if self.size is not None:
            size = tuple(int(v) for v in self.size)
            if len(size) != 3:
                raise ValueError("Geometry.size must be 3 integers (x, y, z).")
            object.__setattr__(self, "size", size)

    # -- conversion -----------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Geometry":
        if img.GetDimension() != 3:
            raise ValueError("Geometry.from_sitk needs a 3D image.")
        return cls(img.GetSpacing(), img.GetOrigin(), img.GetDirection(), img.GetSize())

    def apply_to(self, img: sitk.Image) -> sitk.Image:
        """Set spacing/origin/direction on ``img`` (in place) and return it; checks the size if known."""
        if self.size is not None and tuple(img.GetSize()) != self.size:
            raise ValueError(f"Image size {img.GetSize()} does not match geometry size {self.size}.")
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def to_dict(self) -> Dict[str, Any]:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction),
                "size": None if self.size is None else list(self.size)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Geometry":
        unknown = set(d) - {"spacing", "origin", "direction", "size"}
        if unknown:
            raise ValueError(f"Unknown Geometry keys: {sorted(unknown)}.")
        return cls(d["spacing"], d["origin"], d["direction"], d.get("size"))

    # -- maths ------------------------------------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape(self) -> Tuple[int, int, int]:
        """numpy shape (z, y, x) of an array on this grid."""
        if self.size is None:
            raise ValueError("Geometry has no size.")
        return tuple(reversed(self.size))  # type: ignore[return-value]

    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) indices (x, y, z order) to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    def index_to_physical(self, ijk) -> np.ndarray:
        """(continuous) index (x, y, z), shape (3,) or (N, 3) -> LPS mm, same shape."""
        ijk = np.asarray(ijk, dtype=float)
        a = self.affine()
        return ijk @ a[:3, :3].T + a[:3, 3]

    def physical_to_index(self, points) -> np.ndarray:
        """LPS mm, shape (3,) or (N, 3) -> continuous index (x, y, z), same shape (not rounded)."""
        points = np.asarray(points, dtype=float)
        a = self.affine()
        return np.linalg.solve(a[:3, :3], (points - a[:3, 3]).T).T

    def is_close(self, other: "Geometry", atol: float = 1e-5) -> bool:
        """Same grid within ``atol`` (mm for spacing/origin, unitless for direction); sizes must match if both known."""
        if self.size is not None and other.size is not None and self.size != other.size:
            return False
        return (np.allclose(self.spacing, other.spacing, rtol=0, atol=atol)
                and np.allclose(self.origin, other.origin, rtol=0, atol=atol)
                and np.allclose(self.direction, other.direction, rtol=0, atol=atol))


@dataclass
class Image:
    """A scalar 3D image: ``array`` in (z, y, x) order plus its ``geometry`` (size filled in from the array)."""

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Image arrays must be 3D (z, y, x), got shape {self.array.shape}.")
        size = tuple(int(v) for v in reversed(self.array.shape))
        if self.geometry.size is None:
            self.geometry = Geometry(self.geometry.spacing, self.geometry.origin, self.geometry.direction, size)
        elif self.geometry.size != size:
            raise ValueError(f"Array shape {self.array.shape} (z, y, x) does not match geometry size "
                             f"{self.geometry.size} (x, y, z).")

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Image":
        return cls(sitk.GetArrayFromImage(img), Geometry.from_sitk(img))

    def to_sitk(self) -> sitk.Image:
        arr = self.array.astype(np.uint8) if self.array.dtype == bool else self.array  # SimpleITK has no bool
        return self.geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False))
