"""The held-out real check CT (``shared/data/ct/example_ct.nii.gz``) must never reach a training set.

It is recognised three ways, so a renamed copy or a re-encoded copy is caught as well:
  * by file checksum (sha256 of the CT and of its two kidney masks, from shared/data/README.md); only
    files of exactly the known byte size are hashed, so checking a large dataset costs nothing;
  * by name (``example_ct*``);
  * by geometry (size 122 x 101 x 112 at 3 mm with its origin), for a copy saved in another format.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from KidneyTumorSegLib.geometry import Geometry

HELD_OUT_FILES = {  # byte size -> sha256
    2206612: "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",  # example_ct.nii.gz
    52712: "54e4dc322c42fed96785c4f174b6fe912a774fbeb43dabebf501cddc2deaf9a7",    # kidney_left mask
    53144: "a94f98dede145174b610fcd11d118f7d70f208570d675d28b6cec76362e4cbc0",    # kidney_right mask
}
HELD_OUT_SIZE = (122, 101, 112)
HELD_OUT_SPACING = (3.0, 3.0, 3.0)
HELD_OUT_ORIGIN = (177.956, -11.319, 94.302)


class HeldOutError(ValueError):
    """Raised when the held-out example CT (or a copy of it) is about to be used for training."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_held_out_file(path: Union[str, os.PathLike]) -> bool:
    p = Path(path)
    if p.name.lower().startswith("example_ct"):
        return True
    try:
        size = p.stat().st_size
    except OSError:
        return False
    return size in HELD_OUT_FILES and _sha256(p) == HELD_OUT_FILES[size]


def is_held_out_geometry(geometry: Geometry) -> bool:
    return (geometry.size == HELD_OUT_SIZE and np.allclose(geometry.spacing, HELD_OUT_SPACING, atol=1e-3)
            and np.allclose(geometry.origin, HELD_OUT_ORIGIN, atol=0.01))


def check_not_held_out(path: Union[str, os.PathLike], geometry: Optional[Geometry] = None,
                       case_id: str = "") -> None:
    """Raise :class:`HeldOutError` if ``path`` (or an image with ``geometry``) is the held-out example CT."""
    if is_held_out_file(path) or (geometry is not None and is_held_out_geometry(geometry)):
        who = f"{case_id}: " if case_id else ""
        raise HeldOutError(f"{who}'{path}' is the held-out example CT (shared/data/ct/example_ct*), which is "
                           "reserved for the final real-data check and must never be used for training or "
                           "synthetic data; remove it from the dataset.")
