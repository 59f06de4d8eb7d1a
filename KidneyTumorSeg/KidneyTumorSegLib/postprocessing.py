"""Anatomical clean-up of a kidney/tumor/cyst label map (KiTS23 labels), e.g. after network inference.

Rules, applied in this order, each configurable in ``PostprocessingConfig``:

1. Kidney components. A "kidney component" is a connected component of the whole kidney region
   {kidney, tumor, cyst} (tumor and cyst are part of the renal mass, so a kidney with a large exophytic
   tumor is one component) that holds at least one kidney voxel. Components below ``min_kidney_mm3`` are
   dropped (``small_kidney``); of the rest, only the ``max_kidneys`` largest are kept (``extra_kidney``).
2. Lesions away from the kidney. A component of the region that holds no kidney voxel (a tumor or cyst
   touching no kidney tissue) becomes background (``detached_lesion``).
   Fragments: a small kidney island or a detached lesion within ``attach_mm`` of a kept kidney is kept as
   part of it. KiTS23 ground truth has such fragments in about half of the cases (pole tips and lesion
   rims cut off between thick slices, up to 0.4 mL, 99 % within 8 mm of the kidney); dropping them removed
   real tissue. Components further away (spleen, liver, bowel false positives) are still removed.
3. Lesion specks. Tumor or cyst components below ``min_lesion_mm3`` take the majority label of the voxels
   around them (their one-voxel shell, background counted): a speck inside kidney becomes kidney, a cyst
   speck inside a tumor becomes tumor, a speck mostly outside the organ becomes background
   (``lesion_speck``). Ties go to the lower label (background before kidney), the cautious choice.
4. Holes. Background fully enclosed by a kept component, in 3D, and no bigger than ``max_hole_mm3``,
   becomes the majority label of its shell (kidney for a hole in kidney tissue, tumor for an unlabelled
   core inside a tumor) (``holes``). 3D rather than slice-wise 2D: the renal sinus opens medially at the
   hilum, so a 3D fill leaves it, whereas a per-slice 2D fill would wrongly fill the sinus fat wherever a
   slice shows a closed ring (on KiTS23 ground truth 2D filling adds up to 11 mL per case, 3D < 3.5 mL).
   The size limit exists because KiTS23 ground truth itself encloses cavities of 0.1-2 mL in most cases
   (sinus fat and collecting-system pockets the annotators left out, all walled by kidney): filling them
   would change the anatomy, while network pinholes are a few voxels (docs/postprocessing_kits23.md).

Volumes are in mm^3 (voxel count x prod(spacing)), so the same thresholds hold at any resolution.
Everything runs on the bounding box of the foreground (and holes per component box), so full-size
512x512x600 volumes take seconds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from .labels import Label, Side

RULES = ("small_kidney", "extra_kidney", "detached_lesion", "lesion_speck", "holes")


@dataclass(frozen=True)
class PostprocessingConfig:
    """Post-processing settings; every rule can be switched off.

    Defaults:
      * ``max_kidneys=2``: people have two kidneys (None keeps every component above the minimum).
      * ``min_kidney_mm3=10 000`` (10 mL): a real kidney is 100-250 mL and a kidney cut by the field of view or
        a remnant after partial nephrectomy is still tens of mL, while false positives (spleen/liver/bowel
        fragments) and annotation slivers are far below (KiTS23: kidneys 45 mL-2.7 L, islands <= 0.43 mL).
      * ``min_lesion_mm3=10`` (about a 2.7 mm sphere, 5 voxels at 0.8x0.8x3 mm): below what radiologists
        report as a lesion, so such a component is noise; 0 disables the rule.
      * ``max_hole_mm3=50`` (a 4.6 mm sphere): fills pinholes but not the enclosed sinus and
        collecting-system pockets of real kidneys (0.1-2 mL in KiTS23 ground truth); None fills every hole.
      * ``attach_mm=10``: fragments this close to a kept kidney are kept (two 5 mm slices; all but one of the
        KiTS23 ground-truth fragments are closer); 0 removes every fragment.
      * ``connectivity=26``: parts touching at an edge or corner belong together; this is the cautious
        choice (fewer components, so less is removed). 6 splits diagonally touching parts.
    """

    max_kidneys: Optional[int] = 2
    min_kidney_mm3: float = 10_000.0
    remove_detached_lesions: bool = True
    attach_mm: float = 10.0
    min_lesion_mm3: float = 10.0
    fill_holes: bool = True
    max_hole_mm3: Optional[float] = 50.0
    connectivity: int = 26

    def __post_init__(self) -> None:
        if self.max_kidneys is not None and (int(self.max_kidneys) != self.max_kidneys or self.max_kidneys < 1):
            raise ValueError(f"max_kidneys must be a positive integer or None, got {self.max_kidneys!r}.")
        if self.min_kidney_mm3 < 0 or self.min_lesion_mm3 < 0:
            raise ValueError("min_kidney_mm3 and min_lesion_mm3 must be >= 0 (mm^3).")
        if self.attach_mm < 0:
            raise ValueError("attach_mm must be >= 0 (mm).")
        if self.max_hole_mm3 is not None and self.max_hole_mm3 < 0:
            raise ValueError("max_hole_mm3 must be >= 0 (mm^3) or None (no limit).")
        if self.connectivity not in (6, 26):
            raise ValueError(f"connectivity must be 6 or 26, got {self.connectivity!r}.")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PostprocessingConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown PostprocessingConfig keys: {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**d)

    @property
    def structure(self) -> np.ndarray:
        """Neighbourhood of the foreground."""
        return ndimage.generate_binary_structure(3, 3 if self.connectivity == 26 else 1)

    @property
    def background_structure(self) -> np.ndarray:
        """The dual neighbourhood for background (6 for a 26-connected foreground and vice versa), so that
        a hole is exactly what the foreground encloses without leaks through gaps the foreground closes."""
        return ndimage.generate_binary_structure(3, 1 if self.connectivity == 26 else 3)


@dataclass
class PostprocessingReport:
    """What ``postprocess`` changed: voxels per rule, kept component volumes, removed components."""

    changed: Dict[str, int] = field(default_factory=lambda: {r: 0 for r in RULES})
    kidney_components_mm3: List[float] = field(default_factory=list)   # kept, largest first
    removed_components: List[Tuple[str, float]] = field(default_factory=list)  # (rule, volume mm^3)
    attached_fragments_mm3: List[float] = field(default_factory=list)  # kept for being near a kidney
    foreground_voxels: int = 0

    @property
    def total_changed(self) -> int:
        return int(sum(self.changed.values()))

    def to_dict(self) -> Dict[str, Any]:
        return {"changed": dict(self.changed), "total_changed": self.total_changed,
                "kidney_components_mm3": list(self.kidney_components_mm3),
                "removed_components": [list(r) for r in self.removed_components],
                "attached_fragments_mm3": list(self.attached_fragments_mm3),
                "foreground_voxels": self.foreground_voxels}


def _check(labels: np.ndarray, spacing) -> float:
    """Validate inputs; return the voxel volume in mm^3."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"Label maps must be 3D (z, y, x), got shape {labels.shape}.")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"Label maps must have an integer dtype, got {labels.dtype}.")
    sp = np.asarray(spacing, dtype=float).ravel()
    if sp.size != 3 or np.any(sp <= 0):
        raise ValueError(f"spacing must be 3 positive values (x, y, z) in mm, got {spacing!r}.")
    return float(np.prod(sp))


def _foreground_box(labels: np.ndarray) -> Optional[Tuple[slice, ...]]:
    """Bounding box of labels 1-3; find_objects on the labels themselves avoids a full-size mask."""
    if labels.dtype.kind == "b":
        labels = labels.view(np.uint8)
    if labels.size and (labels.min() < 0 or labels.max() > max(Label)):
        raise ValueError(f"Label values must be in {[int(v) for v in Label]} (KiTS23), found "
                         f"{int(labels.min())}..{int(labels.max())}.")
    boxes = [b for b in ndimage.find_objects(labels, max_label=int(max(Label))) if b is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def _padded(sl: Tuple[slice, ...], shape, pad: int = 1) -> Tuple[slice, ...]:
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, shape))


def _majority_of_shell(work: np.ndarray, region: np.ndarray, structure: np.ndarray) -> int:
    """Most common label of the voxels next to ``region`` (ties: the lower label)."""
    shell = ndimage.binary_dilation(region, structure) & ~region
    if not shell.any():
        return int(Label.BACKGROUND)
    return int(np.argmax(np.bincount(work[shell].astype(np.int64), minlength=len(Label))))


def _relabel_specks(work: np.ndarray, lesion: Label, config: PostprocessingConfig, voxel_mm3: float) -> int:
    """Give every ``lesion`` component below ``min_lesion_mm3`` the majority label of its one-voxel shell,
    all specks at once (a noisy prediction can hold thousands). Labels are read before any speck changes,
    so the result does not depend on the order of the specks; a shell voxel touching two specks counts for
    one of them. Returns the number of voxels changed."""
    lc, m = ndimage.label(work == lesion, structure=config.structure)
    if m == 0:
        return 0
    small = np.bincount(lc.ravel(), minlength=m + 1) * voxel_mm3 < config.min_lesion_mm3
    small[0] = False
    if not small.any():
        return 0
    specks = np.where(small, np.arange(m + 1), 0)[lc]
    box = _padded(_foreground_box(specks > 0), work.shape)
    ids, sub = specks[box], work[box]
    grown = ndimage.grey_dilation(ids, footprint=config.structure)
    shell = (ids == 0) & (grown > 0)
    counts = np.zeros((m + 1, len(Label)), np.int64)
    np.add.at(counts, (grown[shell], sub[shell].astype(np.int64)), 1)
    new = counts.argmax(axis=1).astype(work.dtype)  # ties -> the lower label; no shell -> background
    inside = ids > 0
    sub[inside] = new[ids[inside]]
    return int(np.count_nonzero(inside))


def _components(work: np.ndarray, config: PostprocessingConfig, voxel_mm3: float):
    """Label the region {1,2,3}; return (component ids, n, volumes mm^3 per id, has-kidney per id).

    Arrays are indexed by component id (index 0 is the background and unused)."""
    cc, n = ndimage.label(work > 0, structure=config.structure)
    volumes = np.bincount(cc.ravel(), minlength=n + 1) * voxel_mm3
    has_kidney = np.bincount(cc.ravel(), weights=(work == Label.KIDNEY).ravel(), minlength=n + 1) > 0
    return cc, n, volumes, has_kidney


def _near(cc: np.ndarray, i: int, box: Tuple[slice, ...], kept: np.ndarray, spacing_zyx, limit_mm: float) -> bool:
    """Whether component ``i`` lies within ``limit_mm`` of ``kept``; EDT only on its box padded by the limit
    (a kept voxel outside that box is further away anyway)."""
    pad = np.ceil(limit_mm / np.asarray(spacing_zyx)).astype(int)
    sl = tuple(slice(max(s.start - p, 0), s.stop + p) for s, p in zip(box, pad))
    if not kept[sl].any():
        return False
    dist = ndimage.distance_transform_edt(~kept[sl], sampling=spacing_zyx)
    return bool(dist[cc[sl] == i].min() <= limit_mm)


def _select(cc: np.ndarray, n: int, volumes: np.ndarray, has_kidney: np.ndarray, config: PostprocessingConfig,
            spacing) -> Dict[int, str]:
    """Decide each component's fate: 'keep', 'fragment' (kept, near a kept kidney) or the removing rule."""
    fate: Dict[int, str] = {}
    candidates = []
    for i in range(1, n + 1):
        if not has_kidney[i]:
            fate[i] = "detached_lesion" if config.remove_detached_lesions else "keep"
        elif volumes[i] < config.min_kidney_mm3:
            fate[i] = "small_kidney"
        else:
            candidates.append(i)
    candidates.sort(key=lambda i: -volumes[i])
    limit = len(candidates) if config.max_kidneys is None else config.max_kidneys
    for rank, i in enumerate(candidates):
        fate[i] = "keep" if rank < limit else "extra_kidney"
    small = [i for i, f in fate.items() if f in ("small_kidney", "detached_lesion")]
    if config.attach_mm > 0 and small:
        kept = np.isin(cc, [i for i in candidates[:limit]])
        boxes = ndimage.find_objects(cc)
        spacing_zyx = tuple(float(v) for v in np.asarray(spacing, dtype=float).ravel()[::-1])
        for i in small:
            if _near(cc, i, boxes[i - 1], kept, spacing_zyx, config.attach_mm):
                fate[i] = "fragment"
    return fate


def postprocess(labels: np.ndarray, spacing, config: Optional[PostprocessingConfig] = None,
                return_report: bool = False):
    """Clean up a label map; returns a new array of the same shape and dtype (the input is not modified).

    ``spacing`` is (x, y, z) in mm as SimpleITK gives it. With ``return_report=True`` returns
    ``(array, PostprocessingReport)``.
    """
    config = config or PostprocessingConfig()
    voxel_mm3 = _check(labels, spacing)
    out = np.array(labels, copy=True)
    report = PostprocessingReport()
    box = _foreground_box(out)
    if box is None:
        return (out, report) if return_report else out
    work = out[box]  # a view: edits land in ``out``
    report.foreground_voxels = int(np.count_nonzero(work))

    # Rules 1-2: kidney components and detached lesions.
    cc, n, volumes, has_kidney = _components(work, config, voxel_mm3)
    fate = _select(cc, n, volumes, has_kidney, config, spacing)
    fate_of_id = np.zeros(n + 1, dtype=np.int8)  # 0 keep / background id, then the rule's index + 1
    for i, f in fate.items():
        if f == "fragment":
            report.attached_fragments_mm3.append(float(volumes[i]))
        elif f != "keep":
            fate_of_id[i] = RULES.index(f) + 1
            report.removed_components.append((f, float(volumes[i])))
    removed = fate_of_id[cc]
    for r, rule in enumerate(RULES[:3], start=1):
        report.changed[rule] = int(np.count_nonzero(removed == r))
    work[removed > 0] = Label.BACKGROUND
    kept = sorted((i for i, f in fate.items() if f == "keep"), key=lambda i: -volumes[i])
    report.kidney_components_mm3 = [float(volumes[i]) for i in kept if has_kidney[i]]

    # Rule 3: lesion specks take the majority label around them.
    if config.min_lesion_mm3 > 0:
        for lesion in (Label.TUMOR, Label.CYST):
            report.changed["lesion_speck"] += _relabel_specks(work, lesion, config, voxel_mm3)

    # Rule 4: 3D holes, per kept component, within its bounding box.
    if config.fill_holes and kept:
        boxes = ndimage.find_objects(cc)
        for i in kept:
            sl = _padded(boxes[i - 1], work.shape)
            sub = work[sl]
            mask = (cc[sl] == i) & (sub > 0)  # speck removal may have cleared a few voxels
            holes = ndimage.binary_fill_holes(mask, structure=config.background_structure) & ~mask & (sub == 0)
            if not holes.any():
                continue
            hc, h = ndimage.label(holes, structure=config.background_structure)
            sizes = np.bincount(hc.ravel(), minlength=h + 1)
            limit = np.inf if config.max_hole_mm3 is None else config.max_hole_mm3
            for j, hsl in enumerate(ndimage.find_objects(hc), start=1):
                if sizes[j] * voxel_mm3 > limit:
                    continue
                hsl = _padded(hsl, sub.shape)
                region = hc[hsl] == j
                # The shell of a hole is all foreground; max() only guards the impossible empty shell.
                sub[hsl][region] = max(_majority_of_shell(sub[hsl], region, config.background_structure),
                                       int(Label.KIDNEY))
                report.changed["holes"] += int(sizes[j])
    return (out, report) if return_report else out


# --- kidney components with their side --------------------------------------------------------------


@dataclass
class KidneyComponent:
    """One kept kidney component: its voxels (``mask`` within ``slices`` of the full array), volume,
    physical centroid (LPS mm) and patient side."""

    slices: Tuple[slice, ...]
    mask: np.ndarray
    volume_mm3: float
    centroid_lps: Tuple[float, float, float]
    side: Optional[Side]


def _index_to_physical(geometry, spacing) -> Any:
    """A function (N, 3) index (x, y, z) -> LPS mm, from a Geometry-like object or an
    (origin, spacing, direction) tuple; None gives identity direction and zero origin."""
    if geometry is not None and hasattr(geometry, "index_to_physical"):
        return geometry.index_to_physical
    if geometry is None:
        origin, sp, direction = (0.0, 0.0, 0.0), spacing, np.eye(3)
    else:
        origin, sp, direction = geometry
    origin = np.asarray(origin, dtype=float)
    matrix = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(sp, dtype=float)[None, :]
    return lambda ijk: np.asarray(ijk, dtype=float) @ matrix.T + origin


BODY_FILLS_VOLUME = 0.95  # more voxels above -500 HU: no air around the body (a full-FOV CT has <= ~80 %)


def body_midline_x(ct: np.ndarray, grid) -> Optional[float]:
    """LPS x (mm) of the body's centre of mass (voxels above -500 HU: soft tissue and bone), so that a
    patient off-centre in the field of view still gets the right midline. None without any body, and None
    when nearly all the volume is "body" (a crop without the air around the patient, an image not in HU):
    there the centre of mass is the crop's, not the body's. ``grid``: the CT's ``Geometry``. Per-axis sums,
    not a list of voxels: a full-size CT stays cheap."""
    body = np.asarray(ct) > -500.0
    n = int(np.count_nonzero(body))
    if not n or n > BODY_FILLS_VOLUME * body.size:
        return None
    zyx = [float(np.dot(np.count_nonzero(body, axis=tuple(a for a in range(3) if a != k)), np.arange(body.shape[k])))
           / n for k in range(3)]
    return float(grid.index_to_physical(np.array(zyx[::-1])[None])[0][0])


def kidney_components(labels: np.ndarray, spacing, geometry=None, config: Optional[PostprocessingConfig] = None,
                      midline_x: Optional[float] = None,
                      volume_centre_x: Optional[float] = None) -> List[KidneyComponent]:
    """The kidney components ``postprocess`` would keep (rules 1-2), largest first, with their side.

    ``geometry``: a ``KidneyTumorSegLib.geometry.Geometry`` (anything with ``index_to_physical``) or an
    (origin, spacing, direction) tuple in ITK convention; without it, side comes from an identity
    direction. Side: LPS x greater than the midline is patient LEFT. The midline is ``midline_x``, the
    body's midline measured on the CT (``body_midline_x``), when the caller knows it: right for a solitary
    kidney, for two pieces of one, and for a kidney beside a false find on its own side. Without it, the
    midline is halfway between the two largest components, and with a single component the physical
    centre of the volume (``volume_centre_x``, the whole CT's when ``labels`` is a crop of it), a heuristic that
    assumes the patient is roughly centred in the field of view.
    """
    config = config or PostprocessingConfig()
    voxel_mm3 = _check(labels, spacing)
    labels = np.asarray(labels)
    box = _foreground_box(labels)
    if box is None:
        return []
    work = labels[box]
    cc, n, volumes, has_kidney = _components(work, config, voxel_mm3)
    fate = _select(cc, n, volumes, has_kidney, config, spacing)
    kept = sorted((i for i, f in fate.items() if f == "keep" and has_kidney[i]), key=lambda i: -volumes[i])
    to_lps = _index_to_physical(geometry, spacing)
    offset = np.array([s.start for s in box], dtype=float)
    boxes = ndimage.find_objects(cc)
    comps = []
    for i in kept:
        zyx = np.array(ndimage.center_of_mass(cc == i)) + offset
        centroid = np.asarray(to_lps(zyx[::-1]), dtype=float).ravel()
        full = tuple(slice(s.start + o.start, s.stop + o.start) for s, o in zip(boxes[i - 1], box))
        comps.append(KidneyComponent(full, cc[boxes[i - 1]] == i, float(volumes[i]),
                                     tuple(float(v) for v in centroid), None))
    if midline_x is not None:
        midline = float(midline_x)
    elif len(comps) >= 2:
        midline = 0.5 * (comps[0].centroid_lps[0] + comps[1].centroid_lps[0])
    elif comps and volume_centre_x is not None:
        midline = float(volume_centre_x)
    elif comps:
        centre = (np.array(labels.shape[::-1], dtype=float) - 1) / 2
        midline = float(np.asarray(to_lps(centre), dtype=float).ravel()[0])
    for c in comps:
        c.side = Side.LEFT if c.centroid_lps[0] > midline else Side.RIGHT
    return comps
