"""Surgical planning measurements of a kidney/tumor/cyst label map: volumes, diameters, R.E.N.A.L.

Definitions (``nephrometry`` documents the R.E.N.A.L. proxies):

* Kidney: a component of {kidney, tumor, cyst} that ``postprocessing.kidney_components`` keeps (same config,
  so at most two kidneys of >= 10 mL by default), with its patient side. ``volume_ml`` counts the whole
  component (kidney + tumor + cyst), ``parenchyma_volume_ml`` the kidney label only.
* Lesion: a connected component (the config's connectivity, 26 by default) of the tumor label or of the
  cyst label, apart. Components below ``config.min_lesion_mm3`` are specks: counted in
  ``skipped_lesion_specks``, not measured. The host kidney is the kept component that holds the lesion; a
  lesion outside every kept kidney gets side None and no R.E.N.A.L. or PADUA score. Both scores are for
  tumors only (``nephrometry``, ``padua``): cysts get the size and position fields and ``renal`` and
  ``padua`` None. A tumor under ``MIN_SCORED_DIAMETER_MM`` across (longest diameter plus one voxel) is too
  small to score: its exophytic fraction and sinus distance would come from a few voxels. ``unscored`` says
  why a lesion has no scores.
* Confidence (with a ``confidence`` map from the cascade, see ``confidence``): the mean probability of the
  lesion's own class over its voxels, in [0, 1]; None when measuring a label map without its map.
  ``uncertain_lesions`` lists what ``--min-confidence`` took out of the label map (not measured further).
* Volume: voxel count x voxel volume (mL).
* Diameters are measured between voxel centres. For a lesion many voxels across, the extreme surface
  voxels lie within a fraction of a voxel of the true surface in some direction, so the longest diameter of
  a sampled sphere of diameter D comes out in [D - one voxel, D], typically a few tenths of a mm below D.
  Adding one voxel extent along the line (the outer faces of the extreme voxels) was tried and rejected: on
  near-diagonal lines the extent is up to 1.7 voxels, so spheres measured up to 1.4 voxels too long,
  enough to flip R at 40 and 70 mm. Small lesions (a few voxels across) read up to one voxel short.
* Longest diameter (3D, Feret): the largest distance between surface-voxel centres, found exactly among the
  vertices of their convex hull, in mm.
* Axial diameters (RECIST style): "axial" is a slice of the label map reoriented to LPS (constant k); on an
  oblique scan that is the acquired slice plane, tilted from true patient axial by the obliquity. The
  longest in-plane diameter over all slices; the perpendicular one is, in the same slice, the longest chord
  perpendicular to it (pixels binned by one pixel along the long axis, extent across each bin).
* Centroid: centre of mass in LPS mm (ITK convention); ``centroid_ras`` = (-x, -y, z) for Slicer users.
* ``lines``: LPS end points of the three diameters, for drawing them (e.g. as Slicer markups lines).
Everything runs on the foreground's bounding box (a KiTS case takes 1-7 s); sides as in ``kidney_components``
(with ``midline_x``, the body's midline on the CT; without it, a single kidney's side comes from the centre of
the whole volume, not of the box).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from .atomic import write_csv, write_text
from .confidence import UncertainLesion, component_means, confidence_value
from .geometry import Geometry, Image
from .labels import Label
from .measurement_columns import CSV_COLUMNS
from .nephrometry import RenalScore, kidney_model, renal_score
from .padua import PaduaScore, padua_score
from .postprocessing import PostprocessingConfig, kidney_components
from .preprocessing import crop_or_pad, reorient
from .shapes import axial_diameters, longest_diameter

# 2: padua, confidence, min_confidence, uncertain_lesions; 3: a lesion's uncertain, unsure_below; 4: its unscored
JSON_VERSION = 4
Point = Tuple[float, float, float]
# Below 1 cm a renal lesion is "too small to characterize" in radiology reports, and at CT voxel sizes its
# exophytic fraction and sinus distance rest on a few voxels (the demo CT once scored a single 3 mm voxel).
# Compared with the longest diameter plus one voxel (the smallest spacing): the diameter runs between voxel
# centres, up to a voxel short of the edge-to-edge size a radiologist measures.
MIN_SCORED_DIAMETER_MM = 10.0
Line = Tuple[Point, Point]


def _round(v: Optional[float], ndigits: int) -> Optional[float]:
    return None if v is None else round(float(v), ndigits)


def _pt(p) -> List[float]:
    return [round(float(c), 2) for c in p]


def _ras(p) -> Point:
    return (-float(p[0]), -float(p[1]), float(p[2]))


@dataclass
class KidneyMeasurement:
    id: str
    side: Optional[str]
    volume_ml: float
    parenchyma_volume_ml: float
    tumor_volume_ml: float
    cyst_volume_ml: float
    sinus_volume_ml: Optional[float]  # the R.E.N.A.L. sinus proxy (nephrometry), for checking it; None
    # for a kidney without tumor (the proxy is only built where a score needs it)
    centroid_lps: Point

    @property
    def centroid_ras(self) -> Point:
        return _ras(self.centroid_lps)

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "side": self.side, "volume_ml": _round(self.volume_ml, 3),
                "parenchyma_volume_ml": _round(self.parenchyma_volume_ml, 3),
                "tumor_volume_ml": _round(self.tumor_volume_ml, 3), "cyst_volume_ml": _round(self.cyst_volume_ml, 3),
                "sinus_volume_ml": _round(self.sinus_volume_ml, 3), "centroid_lps": _pt(self.centroid_lps),
                "centroid_ras": _pt(_ras(self.centroid_lps))}


@dataclass
class LesionMeasurement:
    id: str
    kind: str  # "tumor" or "cyst"
    side: Optional[str]
    kidney_id: Optional[str]
    volume_ml: float
    longest_diameter_mm: float
    longest_axial_diameter_mm: float
    perpendicular_axial_diameter_mm: float
    centroid_lps: Point
    lines: Dict[str, Line] = field(default_factory=dict)  # "longest", "axial_long", "axial_short" (LPS)
    renal: Optional[RenalScore] = None
    padua: Optional[PaduaScore] = None
    confidence: Optional[float] = None  # mean probability of its class over its voxels, [0, 1]
    uncertain: Optional[bool] = None  # confidence below the model's recommended threshold (kept, not a fact)
    unscored: Optional[str] = None  # why renal and padua are None: a cyst, outside the kidneys, too small

    @property
    def centroid_ras(self) -> Point:
        return _ras(self.centroid_lps)

    @property
    def exophytic_fraction(self) -> Optional[float]:
        return None if self.renal is None else self.renal.exophytic_fraction

    @property
    def distance_to_sinus_mm(self) -> Optional[float]:
        return None if self.renal is None else self.renal.distance_to_sinus_mm

    def to_dict(self, threshold: Optional[float] = None) -> Dict[str, Any]:
        """``threshold``: the one ``uncertain`` was judged by, so that the written confidence keeps its side."""
        return {"id": self.id, "kind": self.kind, "side": self.side, "kidney_id": self.kidney_id,
                "volume_ml": _round(self.volume_ml, 3),
                "longest_diameter_mm": _round(self.longest_diameter_mm, 2),
                "longest_axial_diameter_mm": _round(self.longest_axial_diameter_mm, 2),
                "perpendicular_axial_diameter_mm": _round(self.perpendicular_axial_diameter_mm, 2),
                "centroid_lps": _pt(self.centroid_lps), "centroid_ras": _pt(_ras(self.centroid_lps)),
                "exophytic_fraction": _round(self.exophytic_fraction, 4),
                "distance_to_sinus_mm": _round(self.distance_to_sinus_mm, 2),
                "renal": None if self.renal is None else self.renal.to_dict(),
                "padua": None if self.padua is None else self.padua.to_dict(), "unscored": self.unscored,
                "confidence": confidence_value(self.confidence, threshold), "uncertain": self.uncertain,
                "lines_lps": {k: [_pt(a), _pt(b)] for k, (a, b) in self.lines.items()}}


@dataclass
class Measurements:
    kidneys: List[KidneyMeasurement] = field(default_factory=list)
    lesions: List[LesionMeasurement] = field(default_factory=list)
    skipped_lesion_specks: int = 0
    uncertain: List[UncertainLesion] = field(default_factory=list)  # below min_confidence: not drawn
    min_confidence: Optional[float] = None
    unsure_below: Optional[float] = None  # kept lesions below it are marked uncertain (see mark_uncertain)

    @property
    def tumors(self) -> List[LesionMeasurement]:
        return [m for m in self.lesions if m.kind == "tumor"]

    @property
    def cysts(self) -> List[LesionMeasurement]:
        return [m for m in self.lesions if m.kind == "cyst"]

    def to_json_dict(self) -> Dict[str, Any]:
        """Plain JSON types only (no numpy); the public shape other programs read."""
        return {"version": JSON_VERSION,
                "units": {"volume": "mL", "length": "mm", "coordinates": "mm (LPS and RAS)"},
                "kidneys": [k.to_dict() for k in self.kidneys],
                "lesions": [m.to_dict(self.unsure_below) for m in self.lesions],
                "skipped_lesion_specks": int(self.skipped_lesion_specks), "min_confidence": self.min_confidence,
                "unsure_below": self.unsure_below,
                "uncertain_lesions": [u.to_dict(self.min_confidence) for u in self.uncertain]}


# -- measure ------------------------------------------------------------------------------------------
_PAD = 2  # voxels around the foreground, so every kidney box has outside around its hull


def _foreground_box(labels: np.ndarray):
    """(start, stop) (z, y, x) of the nonzero voxels, or None; axis projections, as a full-size
    find_objects pass costs seconds on a 512 x 512 x 700 volume."""
    zs = np.flatnonzero(labels.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    slab = labels[zs[0]: zs[-1] + 1]
    ys = np.flatnonzero(slab.any(axis=(0, 2)))
    xs = np.flatnonzero(slab[:, ys[0]: ys[-1] + 1].any(axis=(0, 1)))
    return np.array([zs[0], ys[0], xs[0]]), np.array([zs[-1], ys[-1], xs[-1]]) + 1


def measure(labels: np.ndarray, geometry: Geometry, config: Optional[PostprocessingConfig] = None,
            confidence: Optional[np.ndarray] = None, midline_x: Optional[float] = None) -> Measurements:
    """Measure every kidney and lesion of a KiTS-label map (z, y, x) on ``geometry``.

    ``config``: the post-processing config that decides the kept kidneys, the lesion connectivity and the
    speck size (default ``PostprocessingConfig()``, so a post-processed map measures as it was kept).
    ``confidence``: the cascade's uint8 map on the same grid (``confidence``), for each lesion's confidence.
    ``midline_x``: the body's midline from the CT, which decides the sides (``kidney_components``)."""
    config = config or PostprocessingConfig()
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype.kind not in "iub":
        raise ValueError(f"measure needs a 3D integer label map (z, y, x), got {labels.dtype} {labels.shape}.")
    geometry = Image(labels, geometry).geometry  # fills in or checks the size
    box = _foreground_box(labels)
    if box is None:
        return Measurements()
    start, stop = box[0] - _PAD, box[1] + _PAD
    sub, g = crop_or_pad(labels, geometry, start, stop)
    conf = None
    if confidence is not None:
        if np.shape(confidence) != labels.shape:
            raise ValueError(f"Confidence map {np.shape(confidence)} and label map {labels.shape} differ in shape.")
        conf = reorient(crop_or_pad(np.asarray(confidence), geometry, start, stop)[0], g, "LPS")[0]
    if sub.max() > max(Label):
        raise ValueError(f"Label values must be {[int(v) for v in Label]} (KiTS23).")
    centre_x = float(geometry.index_to_physical((np.asarray(geometry.size, float) - 1) / 2)[0])  # not the crop's
    comps = kidney_components(sub, g.spacing, g, config, midline_x, volume_centre_x=centre_x)
    ids = np.zeros(sub.shape, np.int16)  # kept kidney component number (1-based) per voxel
    for n, c in enumerate(comps, start=1):
        ids[c.slices][c.mask] = n
    # Reorient to LPS (axis permutations and flips only) so that slices are the patient's axial plane.
    sub, lps, _ = reorient(sub, g, "LPS")
    ids, _, _ = reorient(ids, g, "LPS")
    sp = np.asarray(lps.spacing[::-1], dtype=float)  # (z, y, x)
    voxel_ml = float(np.prod(sp)) / 1000.0

    def to_lps(p_mm) -> Point:  # mm along scaled (z, y, x) index axes of ``sub`` -> LPS
        return tuple(float(v) for v in lps.index_to_physical((np.asarray(p_mm) / sp)[::-1]))

    kidneys, models, kidney_ids = [], {}, {}
    for n, box in enumerate(ndimage.find_objects(ids), start=1):
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        comp = ids[box] == n
        lab = sub[box]
        side = comps[n - 1].side
        kid = f"kidney_{side.value}" if side is not None else f"kidney_{n}"
        if kid in kidney_ids.values():  # two kept components on one side (max_kidneys > 2)
            kid = f"{kid}_{n}"
        kidney_ids[n] = kid
        if np.any(comp & (lab == Label.TUMOR)):  # the proxies cost an EDT: only where a tumor needs them
            models[n] = kidney_model(lab, comp, box, sp, lps.index_to_physical)
        offset = np.array([s.start for s in box])
        centroid = (np.array(ndimage.center_of_mass(comp)) + offset) * sp
        counts = [int(np.count_nonzero(comp & (lab == v))) for v in (Label.KIDNEY, Label.TUMOR, Label.CYST)]
        kidneys.append(KidneyMeasurement(kid, None if side is None else side.value, sum(counts) * voxel_ml,
                                         counts[0] * voxel_ml, counts[1] * voxel_ml, counts[2] * voxel_ml,
                                         models[n].sinus_volume_ml if n in models else None,
                                         to_lps(centroid)))

    lesions, skipped = [], 0
    for kind, value in (("tumor", Label.TUMOR), ("cyst", Label.CYST)):
        lc, m = ndimage.label(sub == value, structure=config.structure)
        sizes = np.bincount(lc.ravel(), minlength=m + 1)
        means = None if conf is None else component_means(lc, m, conf)
        found = []
        for j, sl in enumerate(ndimage.find_objects(lc), start=1):
            if sizes[j] * voxel_ml * 1000.0 < config.min_lesion_mm3:
                skipped += 1
                continue
            les = _lesion(kind, j, sl, lc, ids, models, kidney_ids, comps, sp, voxel_ml, to_lps)
            les.confidence = None if means is None else float(means[j])
            found.append(les)
        found.sort(key=lambda les: -les.volume_ml)
        for i, les in enumerate(found, start=1):
            les.id = f"{kind}_{i}"
        lesions += found
    return Measurements(kidneys, lesions, skipped)


def _lesion(kind, j, sl, lc, ids, models, kidney_ids, comps, sp, voxel_ml, to_lps) -> LesionMeasurement:
    mask = lc[sl] == j
    offset = np.array([s.start for s in sl], dtype=float) * sp
    longest, a, b = longest_diameter(mask, sp)
    ax_long, (c, d), ax_short, (e, f) = axial_diameters(mask, sp)
    centroid = to_lps(np.array(ndimage.center_of_mass(mask)) * sp + offset)
    lines = {"longest": (to_lps(a + offset), to_lps(b + offset)),
             "axial_long": (to_lps(c + offset), to_lps(d + offset)),
             "axial_short": (to_lps(e + offset), to_lps(f + offset))}
    host = int(ids[sl][mask].max())  # a lesion lies in one region component: kept (its number) or not (0)
    side = comps[host - 1].side.value if host and comps[host - 1].side is not None else None
    renal = padua = None
    unscored = unscored_reason(kind, bool(host), longest + float(min(sp)))
    if unscored is None:
        model = models[host]
        tumor = lc[model.box] == j
        renal = renal_score(tumor, model, longest, centroid)
        padua = padua_score(tumor, model, renal, longest, centroid, side)
    return LesionMeasurement("", kind, side, kidney_ids.get(host), int(mask.sum()) * voxel_ml,
                             longest, ax_long, ax_short, centroid, lines, renal, padua, unscored=unscored)


def unscored_reason(kind: str, in_kidney: bool, across_mm: float) -> Optional[str]:
    """Why a lesion gets no R.E.N.A.L. or PADUA score, or None when it is scored. ``across_mm``: its size edge
    to edge (the longest diameter between voxel centres plus one voxel)."""
    if kind != "tumor":
        return "cyst"
    if not in_kidney:
        return "outside the kidneys"
    if across_mm < MIN_SCORED_DIAMETER_MM:
        return f"too small to score: under {MIN_SCORED_DIAMETER_MM:.0f} mm"
    return None


def mark_uncertain(m: Measurements, below: Optional[float]) -> None:
    """Mark each lesion whose confidence is below ``below`` as uncertain: it stays in every output but is never
    reported as a fact (issue #14). The same comparison as ``--min-confidence`` (``split_uncertain``), so a
    lesion that option would leave out is never reported as certain; ``confidence_text`` prints such a
    confidence unlike the threshold. ``below`` None: no flag (unknown threshold)."""
    m.unsure_below = below
    for lesion in m.lesions:
        lesion.uncertain = None if below is None or lesion.confidence is None else lesion.confidence < below


# -- files ----------------------------------------------------------------------------------------------
def csv_rows(measurements: Measurements) -> List[Dict[str, Any]]:
    """One row per kidney, per lesion and per uncertain lesion (record "uncertain"): the CSV file's content."""
    d = measurements.to_json_dict()
    rows = []
    for rec, items in (("kidney", d["kidneys"]), ("lesion", d["lesions"]), ("uncertain", d["uncertain_lesions"])):
        for it in items:
            row = {k: it.get(k) for k in CSV_COLUMNS if k in it}
            # an uncertain lesion was taken out before the kidneys were measured: it has no host kidney
            host = it["id"] if rec == "kidney" else it.get("kidney_id")
            row.update(record=rec, kind=it.get("kind", "kidney"), kidney_id=host)
            if rec == "uncertain":  # what --min-confidence took out is uncertain by definition
                row["uncertain"] = True
            for frame in ("lps", "ras"):
                row.update({f"centroid_{frame}_{a}": v for a, v in zip("xyz", it[f"centroid_{frame}"])})
            row.update({k: v for k, v in (it.get("renal") or {}).items() if k in CSV_COLUMNS})
            row.update({f"padua_{k}": v for k, v in (it.get("padua") or {}).items() if f"padua_{k}" in CSV_COLUMNS})
            rows.append(row)
    return rows


def write_measurements(measurements: Measurements, outdir, basename: str, overwrite: bool = False) -> Dict[str, Path]:
    """Write ``<basename>.csv`` and ``<basename>.json`` into ``outdir`` (created if needed), atomically.

    Refuses (FileExistsError, nothing written) if either file exists, unless ``overwrite``."""
    outdir = Path(outdir)
    paths = {"csv": outdir / f"{basename}.csv", "json": outdir / f"{basename}.json"}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"Measurement files exist: {', '.join(existing)}; pass overwrite=True to replace.")
    outdir.mkdir(parents=True, exist_ok=True)
    write_csv(paths["csv"], CSV_COLUMNS, csv_rows(measurements), extrasaction="ignore", lineterminator="\n")
    write_text(paths["json"], json.dumps(measurements.to_json_dict(), indent=2, allow_nan=False) + "\n")
    return paths
