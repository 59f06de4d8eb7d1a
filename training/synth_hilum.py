"""The renal hilum of a pasted kidney: sinus fat, collecting system, renal vessels (anatomy labels).

The sinus is what closes the kidney's concave hilum (a morphological closing of the kidney with an
8-12 mm ball) outside the kidney itself: fat with the renal pelvis in its middle (water-dense, dense in
the excretory phase), the ureter running down and medially from it, and a renal artery and vein joining
the aorta and the IVC. This is the structure that a model trained on solid kidneys calls tumor. Only
unlabelled voxels are claimed: a real organ next to the kidney stays.

With ``large_pelvis`` (``training.synthetic --extrarenal-pelvis``), most kidneys also get the pelvis that real
CTs often show: a water-dense sac (axes 1.2-3.6 cm long) that fills the hilum's opening and bulges medially out
of it (an extrarenal or ampullary pelvis), with major calyces up and down the sinus. Unenhanced, it has a cyst's
HU: only its place and shape tell them apart, and a small sphere in the sinus does not teach that.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy import ndimage

from .anatomy_maps import ANATOMY


def _ball(radius_mm: float, sp: np.ndarray) -> np.ndarray:
    r = np.maximum(np.round(radius_mm / sp).astype(int), 1)
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grids, sp)) <= 1.0


def _box(shape, lo_mm, hi_mm, sp: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Voxel bounds [lo, hi) covering lo_mm..hi_mm ((z, y, x) mm), clipped to the volume (hi - lo may be 0)."""
    lo = np.clip(np.floor(np.asarray(lo_mm) / sp).astype(int), 0, shape)
    hi = np.clip(np.ceil(np.asarray(hi_mm) / sp).astype(int) + 1, 0, shape)
    return lo, hi


def tube(shape, points_mm, radius_mm: float, sp: np.ndarray) -> Tuple[tuple, np.ndarray]:
    """(slices, mask) of a tube of ``radius_mm`` along the polyline ``points_mm`` ((z, y, x) mm)."""
    pts = np.asarray(points_mm, float)
    lo, hi = _box(shape, pts.min(axis=0) - radius_mm, pts.max(axis=0) + radius_mm, sp)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    if np.any(hi <= lo):
        return sl, np.zeros(tuple(np.maximum(hi - lo, 0)), bool)  # the slices' own (empty) shape
    g = np.stack(np.meshgrid(*[np.arange(a, b) * s for a, b, s in zip(lo, hi, sp)], indexing="ij"), -1)
    d = np.full(g.shape[:3], np.inf)
    for a, b in zip(pts[:-1], pts[1:]):  # distance to each segment
        ab = b - a
        t = np.clip(((g - a) @ ab) / max(ab @ ab, 1e-9), 0, 1)
        d = np.minimum(d, np.linalg.norm(g - a - t[..., None] * ab, axis=-1))
    return sl, d <= radius_mm


def _nearest(mask: np.ndarray, point: np.ndarray, sp: np.ndarray, z_window_mm: float = 40.0) -> Optional[np.ndarray]:
    """The voxel of ``mask`` nearest to ``point`` (mm) within +-z_window of its level, in mm; None if none."""
    z0 = int(point[0] / sp[0])
    w = int(z_window_mm / sp[0])
    sub = mask[max(z0 - w, 0):z0 + w + 1]
    idx = np.argwhere(sub)
    if not len(idx):
        return None
    idx[:, 0] += max(z0 - w, 0)
    mm = idx * sp
    return mm[np.argmin(((mm - point) ** 2).sum(axis=1))]


def _claim(anatomy: np.ndarray, labels: np.ndarray, sl, mask: np.ndarray, value: int, allowed) -> None:
    """Label ``mask`` as ``value`` where it is unlabelled (or ``allowed``) and not kidney."""
    view = anatomy[sl]
    view[mask & np.isin(view, allowed) & (labels[sl] == 0)] = value


def ellipsoid(shape, centre_mm, radii_mm, sp: np.ndarray) -> Tuple[tuple, np.ndarray]:
    """(slices, mask) of an axis-aligned ellipsoid with semi-axes ``radii_mm`` ((z, y, x) mm) at ``centre_mm``."""
    c, r = np.asarray(centre_mm, float), np.asarray(radii_mm, float)
    lo, hi = _box(shape, c - r, c + r, sp)
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    inside = sum(((g * s - ci) / ri) ** 2 for g, s, ci, ri in zip(grids, sp, c, r)) <= 1.0
    return tuple(slice(a, b) for a, b in zip(lo, hi)), np.broadcast_to(inside, tuple(hi - lo)).copy()


def _paint_large_pelvis(anatomy, labels, sp, rng, sinus: np.ndarray, start: np.ndarray, centre: np.ndarray,
                        medial: float) -> None:
    """A dilated renal pelvis that fills the hilum's opening and bulges medially out of it (a little behind the
    vessels), joined by a neck to the sinus centre, with 2-3 major calyces from there up and down the sinus fat.
    ``sinus`` is the kidney's sinus in its box (origin ``start``, voxels), ``centre`` the sinus centre (mm)."""
    free, fat = [0, ANATOMY["renal_sinus_fat"]], [ANATOMY["renal_sinus_fat"]]
    parts, _ = ndimage.label(sinus)
    idx = np.argwhere(sinus)
    nearest = idx[np.argmin((((idx + start) * sp - centre) ** 2).sum(axis=1))]
    hilum = (np.argwhere(parts == parts[tuple(nearest)]) + start) * sp  # the sinus part around the centre, mm
    level = hilum[np.abs(hilum[:, 0] - centre[0]) <= 10]  # the hilum's opening is at the centre's level
    level = level if len(level) else hilum
    lip = level[np.argmax(medial * level[:, 2])]  # its most medial voxel
    at = lip + [rng.uniform(-6, 2), rng.uniform(0, 4), medial * rng.uniform(2, 10)]
    radii = [rng.uniform(10, 18), rng.uniform(6, 13), rng.uniform(8, 16)]
    sl, m = ellipsoid(anatomy.shape, at, radii, sp)
    _claim(anatomy, labels, sl, m, ANATOMY["collecting_system"], free)
    sl, m = tube(anatomy.shape, [centre, lip, at], rng.uniform(3, 5), sp)  # the neck through the opening
    _claim(anatomy, labels, sl, m, ANATOMY["collecting_system"], free)
    band = hilum[np.abs(hilum[:, 0] - centre[0]) <= 30]  # major calyces reach 2-3 cm up and down
    band = band if len(band) else hilum  # a sinus part wholly over 3 cm from the centre's level
    ends = [band[np.argmax(band[:, 0])], band[np.argmin(band[:, 0])]]
    if rng.uniform() < 0.5:  # a middle calyx to the lateral edge of the sinus at the centre's level
        ends.append(level[np.argmax(-medial * level[:, 2])])
    for end in ends:
        sl, m = tube(anatomy.shape, [centre, end], rng.uniform(2, 4), sp)
        _claim(anatomy, labels, sl, m, ANATOMY["collecting_system"], fat)


def paint_hilum(anatomy: np.ndarray, labels: np.ndarray, sp: np.ndarray, rng: np.random.Generator,
                large_pelvis: bool = False) -> None:
    """Add renal_sinus_fat, collecting_system and renal_vessel to ``anatomy`` around each pasted kidney;
    ``large_pelvis``: 70 % of the kidneys get a dilated, partly extrarenal pelvis with calyces as well."""
    sp = np.asarray(sp, float)
    cc, n = ndimage.label(labels > 0)
    if not n:
        return
    sizes = np.bincount(cc.ravel())[1:]
    aorta, ivc = anatomy == ANATOMY["aorta"], anatomy == ANATOMY["inferior_vena_cava"]
    free = [0, ANATOMY["renal_sinus_fat"]]
    midline = np.argwhere(aorta)[:, 2].mean() * sp[2] if aorta.any() else anatomy.shape[2] * sp[2] / 2  # x, mm
    hila = []
    for i in np.argsort(sizes)[::-1][:2]:
        r = float(rng.uniform(8, 12))
        pad = np.ceil((r + 3) / sp).astype(int)
        box = ndimage.find_objects((cc == i + 1).astype(np.uint8))[0]
        box = tuple(slice(max(s.start - p, 0), s.stop + p) for s, p in zip(box, pad))
        kid = cc[box] == i + 1
        sinus = ndimage.binary_closing(np.pad(kid, [(p, p) for p in pad]), _ball(r, sp))
        sinus = sinus[tuple(slice(p, -p) for p in pad)] & (labels[box] == 0) & (anatomy[box] == 0)
        if sinus.sum() * np.prod(sp) < 500:  # < 0.5 mL: no hilum to speak of (e.g. a cropped kidney)
            continue
        anatomy[box][sinus] = ANATOMY["renal_sinus_fat"]
        start = np.array([s.start for s in box])
        centre = (np.argwhere(sinus).mean(axis=0) + start) * sp
        local = centre / sp - start  # the sinus centre in box voxels; the renal pelvis lies around it
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(np.ogrid[tuple(slice(0, k) for k in sinus.shape)], local, sp))
        pelvis = sinus & (d2 < rng.uniform(5, 10) ** 2)
        anatomy[box][pelvis] = ANATOMY["collecting_system"]
        medial = np.sign(midline - centre[2])
        ureter = [centre, centre + [-30, -5, medial * 12], centre + [-rng.uniform(100, 160), -5, medial * 25]]
        sl, m = tube(anatomy.shape, ureter, rng.uniform(2, 3.5), sp)
        _claim(anatomy, labels, sl, m, ANATOMY["collecting_system"], free)
        for vessel, radius in ((aorta, rng.uniform(2.5, 3.5)), (ivc, rng.uniform(3.5, 5.5))):
            end = _nearest(vessel, centre, sp)
            if end is not None:
                sl, m = tube(anatomy.shape, [centre, end], radius, sp)
                _claim(anatomy, labels, sl, m, ANATOMY["renal_vessel"], free)
        hila.append((sinus, start, centre, medial))
    for hilum in hila:  # after every draw of the default hilum: off, nothing changes; on, only pelvises are added
        if large_pelvis and rng.uniform() < 0.7:
            _paint_large_pelvis(anatomy, labels, sp, rng, *hilum)
