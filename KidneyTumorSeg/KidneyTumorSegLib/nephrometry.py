"""R.E.N.A.L. nephrometry (Kutikov & Uzzo 2009) estimated automatically from a kidney/tumor/cyst label map.

The scores are estimates for planning, not a radiologist's reading. Standard thresholds:
  R  longest diameter <= 40 mm: 1, 40-70 mm: 2, >= 70 mm: 3;
  E  >= 50 % exophytic: 1, < 50 %: 2, entirely endophytic: 3;
  N  distance to the collecting system or sinus >= 7 mm: 1, 4-7 mm: 2, <= 4 mm: 3;
  A  descriptor "a" (anterior), "p" (posterior) or "x" (neither);
  L  entirely above the upper or below the lower polar line: 1; crossing a polar line: 2; more than 50 %
     between the polar lines, crossing the axial midline between them, or entirely between them: 3.
Total = R + E + N + L (4-12); suffix = A. The "h" suffix (tumor touching the main renal artery or vein) is
never assigned: the labels hold no vessels.

KiTS labels have no sinus, collecting system or vessels, so we use proxies, following
neheller/seg-to-nephrometry (which derives them slice by slice in the axial plane) where sensible:

* Axial plane: a slice of constant k of the label map reoriented to LPS (``preprocessing.reorient``). For
  an oblique scan it is the acquired slice plane, tilted from true patient axial by the obliquity.
* Filled kidney ``hull``: per axial slice, the 2D convex hull of the kidney parenchyma (label 1) of the
  component. Per slice rather than in 3D because a kidney is bean-shaped: the 3D hull would bridge the
  whole medial concavity from pole to pole, while the 2D hull bridges only the slices where the hilum is
  open. The parenchyma alone (without tumor or cyst) is "the kidney without the tumor", so an exophytic
  mass does not inflate its own reference shape; an endophytic one still lies inside it.
* Sinus proxy. KiTS annotators label the renal sinus as kidney in most cases and leave it unlabelled in
  others (seg-to-nephrometry finds it from CT fat, HU < -30, inside the filled kidney; we have labels
  only). So the proxy is the union of (a) the unlabelled pockets: hull minus every labelled voxel, opened
  per slice with a disk of radius ``SINUS_OPENING_MM`` to drop the one-pixel slivers between a convex
  outline and its pixel staircase, keeping 3D components of at least ``SINUS_MIN_FRACTION`` of the largest
  (seg-to-nephrometry keeps the largest only; a tumor can split the sinus, and the part next to it matters
  for N); and (b) the core: voxels of the filled kidney (``hull``) at least ``SINUS_DEPTH_MM`` (15 mm, a
  normal parenchymal thickness) from its outer surface, less the tumors and cysts. Sinus fat and the
  collecting system cannot be told apart from labels, so N is the distance to the sinus proxy.
* N: the smallest gap between the tumor and the sinus proxy, measured between voxel surfaces: the
  centre-to-centre distance of the closest voxel pair minus one voxel extent along the line joining them
  (touching voxels give 0). seg-to-nephrometry reports the centre-to-centre distance, about one voxel more.
* E: exophytic fraction = the share of tumor voxels outside ``hull`` (seg-to-nephrometry uses the per-slice
  hull of the kidney without the tumor too). "Entirely endophytic" allows ``E_ENDOPHYTIC_TOLERANCE`` (1 %)
  outside, because the hull chord across a tumor that reaches the capsule cuts a few voxels of its bulge.
* Polar lines: the first and last axial slices where the unlabelled pockets open to the outside of the
  hull (the hilum lip) over a width of at least ``HILUM_MIN_WIDTH_MM`` (a real hilum is 2-3 cm), as
  seg-to-nephrometry does with its sinus (``polar_source`` "hilum"), if those slices span at least
  ``HILUM_MIN_EXTENT_MM``. When the labels close the hilum (most KiTS cases) the planes at one and two
  thirds of the parenchyma's axial extent (``polar_source`` "thirds"): the hilum spans roughly the middle
  third of a kidney, while the deep core reaches far towards the poles, so its extent would make nearly
  every tumor L = 3. The axial midline is the plane halfway between the polar lines. The L fraction is
  the share of tumor voxels in slices between the polar lines (inclusive).
* A: tumor centroid minus the host kidney's parenchyma centroid along LPS y (+y posterior); beyond
  ``A_TOLERANCE_MM`` (10 mm, as seg-to-nephrometry) "a" or "p", else "x". seg-to-nephrometry compares with
  the centroid of kidney + tumor, which a large tumor drags towards itself; the parenchyma does not.
* R: the exact 3D longest diameter (``measurements``); seg-to-nephrometry uses twice the largest in-plane
  radius of the tumor's central slice.
Where no sinus proxy is found (a kidney thinner than twice ``SINUS_DEPTH_MM`` with its sinus labelled as
kidney) N is None, and so is the total.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError, cKDTree

from .shapes import outline, surface_voxels

R_THRESHOLDS_MM = (40.0, 70.0)
N_THRESHOLDS_MM = (4.0, 7.0)
E_ENDOPHYTIC_TOLERANCE = 0.01
A_TOLERANCE_MM = 10.0
SINUS_OPENING_MM = 2.0
SINUS_MIN_FRACTION = 0.1
SINUS_DEPTH_MM = 15.0
HILUM_MIN_WIDTH_MM = 10.0
HILUM_MIN_EXTENT_MM = 15.0


# -- component scores -------------------------------------------------------------------------------
def score_R(longest_diameter_mm: float) -> int:
    lo, hi = R_THRESHOLDS_MM
    return 1 if longest_diameter_mm <= lo else (2 if longest_diameter_mm < hi else 3)


def score_E(exophytic_fraction: float) -> int:
    if exophytic_fraction < E_ENDOPHYTIC_TOLERANCE:
        return 3
    return 1 if exophytic_fraction >= 0.5 else 2


def score_N(distance_mm: Optional[float]) -> Optional[int]:
    if distance_mm is None:
        return None
    lo, hi = N_THRESHOLDS_MM
    return 1 if distance_mm >= hi else (2 if distance_mm > lo else 3)


def score_A(posterior_offset_mm: float) -> str:
    """Offset of the tumor centroid along LPS y (+ posterior) from the kidney centroid."""
    if abs(posterior_offset_mm) < A_TOLERANCE_MM:
        return "x"
    return "p" if posterior_offset_mm > 0 else "a"


def score_L(interpolar_fraction: Optional[float], crosses_midline: Optional[bool]) -> Optional[int]:
    if interpolar_fraction is None:
        return None
    if crosses_midline or interpolar_fraction > 0.5:
        return 3
    return 2 if interpolar_fraction > 0 else 1


@dataclass
class RenalScore:
    R: int
    E: int
    N: Optional[int]
    A: str
    L: Optional[int]
    exophytic_fraction: float
    distance_to_sinus_mm: Optional[float]
    posterior_offset_mm: float
    interpolar_fraction: Optional[float]
    crosses_midline: Optional[bool]
    polar_source: Optional[str] = None

    @property
    def total(self) -> Optional[int]:
        if self.N is None or self.L is None:
            return None
        return self.R + self.E + self.N + self.L

    @property
    def suffix(self) -> str:
        return self.A  # "h" (hilar) cannot be told from kidney/tumor/cyst labels: never added

    def to_dict(self) -> Dict[str, Any]:
        total = self.total
        return {"R": self.R, "E": self.E, "N": self.N, "A": self.A, "L": self.L, "total": total,
                "suffix": self.suffix, "score": None if total is None else f"{total}{self.suffix}",
                "posterior_offset_mm": round(self.posterior_offset_mm, 2),
                "interpolar_fraction": None if self.interpolar_fraction is None
                else round(self.interpolar_fraction, 4),
                "crosses_midline": self.crosses_midline, "polar_source": self.polar_source}


# -- kidney model: filled shape, sinus proxy, polar lines ------------------------------------------
def _in_plane_disk(radius_mm: float, spacing_zyx) -> np.ndarray:
    """Flat (1, ny, nx) ellipse footprint of ``radius_mm``; at least a 3x3 cross so it always opens."""
    ry, rx = (max(radius_mm / s, 1.0) for s in spacing_zyx[1:])
    ny, nx = int(ry), int(rx)
    y, x = np.ogrid[-ny: ny + 1, -nx: nx + 1]
    return ((y / ry) ** 2 + (x / rx) ** 2 <= 1.0)[None]


def slice_hulls(mask: np.ndarray) -> np.ndarray:
    """Per axial slice (axis 0), the filled 2D convex hull of ``mask`` (pixel centres; index space is
    enough because convexity survives the anisotropic scaling to mm)."""
    out = np.zeros_like(mask, dtype=bool)
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        sl = mask[k]
        pts = np.argwhere(surface_voxels(sl))  # the hull only needs the outline
        out[k] = sl
        try:
            hull = ConvexHull(pts)
        except (QhullError, ValueError):  # fewer than 3 points or all on a line: the pixels are the hull
            continue
        lo, hi = pts.min(axis=0), pts.max(axis=0) + 1
        yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]]
        q = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(float)
        inside = np.all(q @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9, axis=1)
        out[k, lo[0]:hi[0], lo[1]:hi[1]] |= inside.reshape(yy.shape)
    return out


@dataclass
class KidneyModel:
    """Proxies of one kidney component, on the box ``box`` of the (LPS-reoriented) label map."""

    box: Tuple[slice, ...]
    hull: np.ndarray
    sinus: np.ndarray
    spacing_zyx: np.ndarray
    polar_slices: Tuple[int, int]  # slice indices (axis 0) within ``box``
    polar_source: str  # "hilum" or "thirds"
    parenchyma_centroid_lps: np.ndarray
    depth: Optional[np.ndarray] = None  # mm from the outside of ``hull`` (0 outside it): PADUA's depth proxies
    _tree: Optional[cKDTree] = None
    _sinus_pts: Optional[np.ndarray] = None

    @property
    def sinus_volume_ml(self) -> float:
        return float(self.sinus.sum() * np.prod(self.spacing_zyx) / 1000.0)

    def distance_to_sinus_mm(self, mask: np.ndarray) -> Optional[float]:
        """Smallest surface gap (mm) between ``mask`` (on ``box``) and the sinus proxy; None without one."""
        if self._sinus_pts is None:
            if not self.sinus.any():
                return None
            self._sinus_pts = outline(self.sinus) * self.spacing_zyx
            self._tree = cKDTree(self._sinus_pts)
        pts = outline(mask) * self.spacing_zyx
        d, idx = self._tree.query(pts)
        vec = (self._sinus_pts[idx] - pts) / np.maximum(d, 1e-12)[:, None]
        return float(max(np.min(d - voxel_extent(vec, self.spacing_zyx)), 0.0))


def voxel_extent(unit: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Length of the chord through a voxel's centre along unit vector(s) ``unit`` (same axis order as
    ``spacing``): the spacing along an axis, more on a diagonal. (..., d) -> (...)."""
    with np.errstate(divide="ignore"):
        return np.min(np.asarray(spacing, float) / np.abs(unit), axis=-1)


def _pockets(hull: np.ndarray, labels_box: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Unlabelled voxels inside the parenchyma hull, without slivers and crumbs."""
    pockets = ndimage.binary_opening(hull & (labels_box == 0), structure=_in_plane_disk(SINUS_OPENING_MM, spacing_zyx))
    cc, n = ndimage.label(pockets, structure=np.ones((3, 3, 3)))
    if n > 1:
        sizes = np.bincount(cc.ravel())[1:]
        pockets = np.isin(cc, np.flatnonzero(sizes >= SINUS_MIN_FRACTION * sizes.max()) + 1)
    return pockets


def kidney_model(labels_box: np.ndarray, component_box: np.ndarray, box: Tuple[slice, ...],
                 spacing_zyx, index_to_lps: Callable) -> KidneyModel:
    """Build the proxies of one kidney component.

    ``labels_box``/``component_box``: the label map and the component's mask on ``box`` (pad the box by a
    voxel so the outside of the hull is present); ``index_to_lps`` maps (N, 3) (x, y, z) indices of the
    full array to LPS mm.
    """
    spacing_zyx = np.asarray(spacing_zyx, dtype=float)
    parenchyma = component_box & (labels_box == 1)
    hull = slice_hulls(parenchyma)
    pockets = _pockets(hull, labels_box, spacing_zyx)
    depth = ndimage.distance_transform_edt(hull, sampling=spacing_zyx)
    sinus = pockets | ((depth >= SINUS_DEPTH_MM) & (labels_box <= 1))
    # Hilum: pocket pixels next (in-plane) to pixels outside the hull; their count x pixel size ~ its width.
    cross = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)
    opening = pockets & ndimage.binary_dilation(~hull, structure=cross)
    width = opening.sum(axis=(1, 2)) * np.sqrt(spacing_zyx[1] * spacing_zyx[2])
    ks = np.flatnonzero(width >= HILUM_MIN_WIDTH_MM)
    if ks.size and (ks.max() - ks.min()) * spacing_zyx[0] >= HILUM_MIN_EXTENT_MM:
        polar, source = (int(ks.min()), int(ks.max())), "hilum"
    else:
        kk = np.flatnonzero(parenchyma.any(axis=(1, 2)))
        lo, hi = kk.min(), kk.max()
        polar, source = (int(round(lo + (hi - lo) / 3)), int(round(lo + 2 * (hi - lo) / 3))), "thirds"
    offset = np.array([s.start for s in box], dtype=float)
    zyx = np.array(ndimage.center_of_mass(parenchyma)) + offset
    centroid = np.asarray(index_to_lps(zyx[::-1]), dtype=float).ravel()
    return KidneyModel(box, hull, sinus, spacing_zyx, polar, source, centroid, depth.astype(np.float32))


def renal_score(tumor_box: np.ndarray, model: KidneyModel, longest_diameter_mm: float,
                tumor_centroid_lps) -> RenalScore:
    """R.E.N.A.L. components of one tumor (its mask on ``model.box``) in its host kidney."""
    n_tumor = int(tumor_box.sum())
    exophytic = float(np.count_nonzero(tumor_box & ~model.hull)) / max(n_tumor, 1)
    distance = model.distance_to_sinus_mm(tumor_box)
    offset = float(tumor_centroid_lps[1] - model.parenchyma_centroid_lps[1])
    lo, hi = model.polar_slices
    per_slice = tumor_box.sum(axis=(1, 2))
    fraction = float(per_slice[lo: hi + 1].sum()) / max(n_tumor, 1)
    ks = np.flatnonzero(per_slice)
    crosses = bool(ks.min() <= 0.5 * (lo + hi) <= ks.max())
    return RenalScore(R=score_R(longest_diameter_mm), E=score_E(exophytic), N=score_N(distance),
                      A=score_A(offset), L=score_L(fraction, crosses), exophytic_fraction=exophytic,
                      distance_to_sinus_mm=distance, posterior_offset_mm=offset,
                      interpolar_fraction=fraction, crosses_midline=crosses, polar_source=model.polar_source)
