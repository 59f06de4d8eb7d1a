"""The real CTs kept for validation must never reach a training set: the held-out example CT
(``shared/data/ct/example_ct.nii.gz``) and the validation CTs (``shared/data/real_ct/``: 3D-IRCADb patient 1,
TotalSegmentator subject s0009), with their masks and anatomy.

They are recognised three ways, so a renamed copy or a re-encoded copy is caught as well:
  * by file checksum (sha256 of each CT and mask, from shared/data/README.md and SHA256SUMS); only
    files of exactly the known byte size are hashed, so checking a large dataset costs nothing;
  * by name (``example_ct*``, anything inside a ``real_ct`` folder);
  * by geometry (each CT's size, spacing and origin), for a copy saved in another format.
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
    # real_ct/ircadb_1.1 (CT and masks) and real_ct/totalseg_s0009 (CT and 117-class labels)
    32086788: "c9348c4cbe153b5f3c4987504b1c055afd5ca3fd599bf93d93cf3dd76729e477",
    48404: "21255e76d5b20f7ac63fee48c83e896740ff5667942e6bdcd99acf79a1602280",
    45086: "7b354e46a7e820872457a82b029586aa0624a7fee8a0e78e0aa45d6504813190",
    118154: "e9cef85eda7c8ddcd2973e7d890ae1898639d710629592bac04ed52aa0f24db4",
    46369: "a1e29cab7720359d5085a5e9f503aeb9b1e813e154ca771ae827662c026c59bf",
    3524400: "6566ccfc2f38c6ca89aa579963dd83df4286b71d2a7cda22bd5e14f6e77ff9c3",
    231257: "d3097327ee6ffb571e3c91984986d0ae17eead60a402e74c2489546a1c1ac9bc",
}
HELD_OUT_SIZE = (122, 101, 112)
HELD_OUT_SPACING = (3.0, 3.0, 3.0)
HELD_OUT_ORIGIN = (177.956, -11.319, 94.302)
HELD_OUT_GRIDS = (  # (size, spacing, origin) of every held-out CT
    (HELD_OUT_SIZE, HELD_OUT_SPACING, HELD_OUT_ORIGIN),
    ((512, 512, 129), (0.57, 0.57, 1.6), (0.0, 0.0, 0.0)),                     # ircadb_1.1
    ((119, 119, 185), (1.5, 1.5, 1.5), (111.3251953125, -10.6748046875, 136.0)),  # totalseg_s0009
)


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
    if p.name.lower().startswith("example_ct") or "real_ct" in (q.lower() for q in p.parts[:-1]):
        return True
    try:
        size = p.stat().st_size
    except OSError:
        return False
    return size in HELD_OUT_FILES and _sha256(p) == HELD_OUT_FILES[size]


def is_held_out_geometry(geometry: Geometry) -> bool:
    return any(geometry.size == size and np.allclose(geometry.spacing, spacing, atol=1e-3)
               and np.allclose(geometry.origin, origin, atol=0.01) for size, spacing, origin in HELD_OUT_GRIDS)


def check_not_held_out(path: Union[str, os.PathLike], geometry: Optional[Geometry] = None,
                       case_id: str = "") -> None:
    """Raise :class:`HeldOutError` if ``path`` (or an image with ``geometry``) is a held-out validation CT."""
    if is_held_out_file(path) or (geometry is not None and is_held_out_geometry(geometry)):
        who = f"{case_id}: " if case_id else ""
        raise HeldOutError(f"{who}'{path}' is a held-out validation CT (shared/data/ct/example_ct* or "
                           "shared/data/real_ct/), or its masks or anatomy, which are reserved for the real-data "
                           "check and must never be used for training or synthetic data; remove it from the "
                           "dataset.")
