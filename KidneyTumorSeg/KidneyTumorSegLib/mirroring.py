"""Test-time mirroring: which spatial axes a network input is mirrored along, and every flip that makes.

Standard library only, so that ``models`` (read by the Slicer panel before the dependencies are installed) can
check a model entry's ``stage2_mirror_axes`` without numpy, SimpleITK or torch.
"""
from __future__ import annotations

import itertools
from typing import Any, List, Tuple


def mirror_axes_tuple(mirror_axes: Any) -> Tuple[int, ...]:
    """``mirror_axes`` (None or a sequence) as a tuple of distinct spatial axes (0, 1, 2 = z, y, x);
    ValueError for anything else (a bare number, a float, a bool, a repeated or unknown axis)."""
    if mirror_axes is None:
        return ()
    if isinstance(mirror_axes, (str, bytes)) or not hasattr(mirror_axes, "__iter__"):
        raise ValueError(f"mirror axes must be a sequence of axes among 0, 1, 2 (z, y, x); got {mirror_axes!r}")
    axes = tuple(mirror_axes)
    if (any(isinstance(a, bool) or not isinstance(a, int) or a not in (0, 1, 2) for a in axes)
            or len(set(axes)) != len(axes)):
        raise ValueError(f"mirror axes must be distinct spatial axes among 0, 1, 2 (z, y, x); got {mirror_axes!r}")
    return tuple(int(a) for a in axes)


def mirror_combinations(mirror_axes: Any) -> List[Tuple[int, ...]]:
    """Tensor dims (N, C, Z, Y, X -> 2, 3, 4) to flip, for every subset of the spatial mirror axes (2^n)."""
    dims = [a + 2 for a in mirror_axes_tuple(mirror_axes)]
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]
