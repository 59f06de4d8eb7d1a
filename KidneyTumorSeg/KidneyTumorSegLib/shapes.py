"""Geometry of a voxel mask in mm: its outline (surface voxels), farthest pair, longest and axial diameters.

One implementation for the measurements (``measurements``), the R.E.N.A.L. proxies (``nephrometry``) and
the training evaluation (``training.metrics``), so a diameter means the same everywhere. Distances are
between voxel centres (``measurements`` explains why); points are (z, y, x) index axes scaled to mm.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean map of the voxels of ``mask`` with a face neighbour outside it (the image edge counts as
    outside); any number of dimensions (2D for a slice)."""
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask)


def outline(mask: np.ndarray) -> np.ndarray:
    """Indices (n, d), as floats, of the surface voxels: the only candidates for nearest or farthest pairs."""
    return np.argwhere(surface_voxels(mask)).astype(float)


def farthest_pair(pts: np.ndarray) -> Tuple[float, int, int]:
    """Largest distance among points (n, d) and the indices of that pair; searched among the convex hull
    vertices, which always hold the farthest pair."""
    if len(pts) < 2:
        return 0.0, 0, 0
    cand = np.arange(len(pts))
    if len(pts) > pts.shape[1] + 1:
        for options in (None, "QJ"):  # QJ: joggle a flat set (one slice, a line) into a full-dimensional hull
            try:
                cand = ConvexHull(pts, qhull_options=options).vertices
                break
            except QhullError:
                continue
    p = pts[cand]
    best = (-1.0, 0, 0)
    for s in range(0, len(p), 1024):  # chunks keep the distance matrix small
        d = cdist(p[s:s + 1024], p)
        r, c = np.unravel_index(np.argmax(d), d.shape)
        if d[r, c] > best[0]:
            best = (float(d[r, c]), int(cand[s + r]), int(cand[c]))
    return best


def longest_diameter(mask: np.ndarray, spacing_zyx) -> Tuple[float, np.ndarray, np.ndarray]:
    """3D longest diameter (mm) of ``mask`` and its end points (mm, (z, y, x) index axes scaled)."""
    sp = np.asarray(spacing_zyx, dtype=float)
    pts = outline(mask) * sp
    d, i, j = farthest_pair(pts)
    return d, pts[i], pts[j]


def axial_diameters(mask: np.ndarray, spacing_zyx):
    """Longest in-plane diameter over the slices (axis 0) and the longest chord perpendicular to it in the
    same slice: (long_mm, (a, b), short_mm, (c, d)), points in mm with (z, y, x) index axes scaled."""
    sp = np.asarray(spacing_zyx, dtype=float)
    sp2 = sp[1:]
    best = None
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        pts = outline(mask[k]) * sp2
        d, i, j = farthest_pair(pts)
        if best is None or d > best[0][0]:
            best = ((d, pts[i], pts[j]), k)
    (long_mm, a, b), k = best
    u = (b - a) / long_mm if long_mm > 0 else np.array([0.0, 1.0])
    v = np.array([-u[1], u[0]])
    pix = np.argwhere(mask[k]) * sp2
    s, t = pix @ u, pix @ v
    bins = np.floor((s - s.min()) / sp2.min()).astype(int)
    tmax = np.full(bins.max() + 1, -np.inf)
    tmin = np.full(bins.max() + 1, np.inf)
    np.maximum.at(tmax, bins, t)
    np.minimum.at(tmin, bins, t)
    n = int(np.argmax(tmax - tmin))
    sc = float(s[bins == n].mean())
    c, d = sc * u + tmin[n] * v, sc * u + tmax[n] * v
    z = k * sp[0]
    to3 = lambda p: np.array([z, p[0], p[1]])  # noqa: E731
    return long_mm, (to3(a), to3(b)), float(tmax[n] - tmin[n]), (to3(c), to3(d))
