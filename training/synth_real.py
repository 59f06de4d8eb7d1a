"""Synthetic CTs painted from a REAL whole-abdomen label map with real KiTS23 kidneys in place of its own.

``make_real_case(anatomy, kits, rng)``:
  1. the anatomy map (``anatomy_maps.AnatomyMap``) is deformed (per-axis scale, a rotation about the long
     axis, a smooth elastic field) onto an axis-aligned LPS grid at a random working spacing, so a few maps
     give many bodies;
  2. its kidneys are removed, and each side's KiTS23 kidney (with its tumors and cysts) is fitted into their
     place: its parenchyma's centroid onto the map kidney's, its long axis onto the map kidney's long axis,
     scaled towards the map kidney's size (clamped, so that tumor sizes stay real). Nothing else overlaps it;
  3. ``synth_hilum`` adds the renal sinus fat, the collecting system (pelvis and ureter) and the renal
     vessels to the aorta and IVC;
  4. every structure is painted in one contrast phase (``synth_phases``), or with random intensities
     (SynthSeg style); what the map leaves unlabelled (body wall, fat, and for FLARE22/AMOS the bones,
     muscles and bowel) comes from the procedural painter (``synth_anatomy``), placed around the real organs;
  5. scanner effects (bias, blur, noise) as in the procedural generator.
Returns (CT int16 HU, KiTS labels 0-3, anatomy labels in ``anatomy_maps.ANATOMY``), all on one grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.preprocessing import reorient

from .anatomy_maps import ANATOMY, AnatomyMap
from .synth_anatomy import Painter, SynthConfig, acquire, paint_anatomy, smooth_field, uniform
from .synth_contact import organ_contact
from .synth_cysts import add_cysts
from .synth_hilum import paint_hilum
from .synth_organs import enlarge_organs
from .synth_phases import draw_appearance, scale_enhancement, separate_enhanced_tumor
from .synth_structures import paint_structures

Range = Tuple[float, float]
KIDNEY_MARK = {"right": 250, "left": 251}  # the map's kidneys while the map is resampled


@dataclass(frozen=True)
class RealSynthConfig:
    spacing: Range = (1.5, 2.5)          # working spacing, mm (x/y and z drawn separately)
    scale: Range = (0.9, 1.1)            # per-axis scale of the whole map
    rotation_deg: float = 6.0            # about the patient's long axis
    elastic_mm: Range = (0.0, 5.0)       # sd of the smooth displacement field
    elastic_scale_mm: float = 60.0
    kidney_scale: Range = (0.85, 1.15)   # clamp of the KiTS -> map kidney size fit
    twist_deg: float = 10.0              # random turn of the pasted kidney about its long axis
    random_share: float = 0.2            # SynthSeg-style random intensities
    scanner: SynthConfig = SynthConfig()  # noise, bias and blur ranges


# -- 1. the deformed map ----------------------------------------------------------------------------
def deform_map(amap: AnatomyMap, spacing, rng: np.random.Generator,
               config: RealSynthConfig = RealSynthConfig()) -> Tuple[np.ndarray, Geometry]:
    """The map (kidneys as KIDNEY_MARK values) on a new axis-aligned LPS grid at ``spacing`` (x, y, z),
    through a random scale, rotation and elastic field (nearest neighbour: labels stay labels)."""
    src = amap.labels
    arr = src.array.copy()
    arr[amap.kidney_right] = KIDNEY_MARK["right"]
    arr[amap.kidney_left] = KIDNEY_MARK["left"]
    g = src.geometry
    corners = g.index_to_physical(np.array(list(np.ndindex(2, 2, 2))) * (np.array(g.size) - 1))
    centre = corners.mean(axis=0)
    t = np.radians(uniform(rng, (-config.rotation_deg, config.rotation_deg)))
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    A = rot @ np.diag([uniform(rng, config.scale) for _ in range(3)])
    out = (corners - centre) @ A.T + centre
    spacing = np.asarray(spacing, float)
    lo = out.min(axis=0)
    size = np.ceil((out.max(axis=0) - lo) / spacing).astype(int) + 1
    grid = Geometry(spacing, lo, np.eye(3).ravel(), size)
    shape = tuple(size[::-1])
    z, y, x = (np.arange(n, dtype=np.float32) * s + o for n, s, o in zip(shape, spacing[::-1], lo[::-1]))
    sd, scale = uniform(rng, config.elastic_mm), config.elastic_scale_mm / spacing.mean()
    inv = np.linalg.inv(A).astype(np.float32)
    # Source physical point of each output voxel: centre + A^-1 (p - centre) + elastic displacement.
    p = [np.broadcast_to(v, shape) - c for v, c in zip((x[None, None, :], y[None, :, None], z[:, None, None]),
                                                        centre.astype(np.float32))]
    q = [inv[i, 0] * p[0] + inv[i, 1] * p[1] + inv[i, 2] * p[2] + centre[i] for i in range(3)]
    if sd > 0:
        q = [qi + sd * smooth_field(shape, rng, scale) for qi in q]
    a = g.affine()
    m = np.linalg.inv(a[:3, :3]).astype(np.float32)  # physical -> source index (x, y, z)
    d = [qi - a[i, 3] for i, qi in enumerate(q)]
    idx = [m[i, 0] * d[0] + m[i, 1] * d[1] + m[i, 2] * d[2] for i in range(3)]
    out_arr = ndimage.map_coordinates(arr, [idx[2], idx[1], idx[0]], order=0, mode="constant", cval=0)
    return out_arr.astype(np.uint8), grid


# -- 2. the KiTS kidneys in the map's kidney places -------------------------------------------------
def kits_kidneys(kits: Image, min_mm3: float = 5_000.0) -> Dict[str, Image]:
    """Each side's KiTS23 kidney (labels 1-3 of one component, others 0), cropped, on the LPS grid."""
    arr, g, _ = reorient(kits.array, kits.geometry, "LPS")
    fg = arr > 0
    if not fg.any():
        raise ValueError("The KiTS23 label map holds no kidney.")
    box = ndimage.find_objects(fg.astype(np.uint8))[0]  # label the kidneys' bounding box only: 512^2 x N is big
    cc, n = ndimage.label(fg[box])
    voxel = float(np.prod(g.spacing))
    sizes = np.bincount(cc.ravel())[1:] * voxel
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] >= min_mm3]
    cents = {i: np.array(ndimage.center_of_mass(cc == i)) for i in keep}
    mid_x = (np.mean([c[2] for c in cents.values()]) if len(keep) == 2 else (g.size[0] - 1) / 2 - box[2].start)
    out = {}
    for i, c in cents.items():
        sl = ndimage.find_objects((cc == i).astype(np.uint8))[0]
        lab = np.where(cc[sl] == i, arr[box][sl], 0).astype(np.uint8)
        start = np.array([s.start + b.start for s, b in zip(sl, box)])
        origin = g.index_to_physical(start[::-1].astype(float))
        side = "left" if (c[2] > mid_x) == (g.direction_matrix[0, 0] > 0) else "right"
        out[side] = Image(lab, Geometry(g.spacing, origin, g.direction, lab.shape[::-1]))
    return out


def _axis_and_centre(points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    centre = points.mean(axis=0)
    w, v = np.linalg.eigh(np.cov((points - centre).T))
    return v[:, -1], centre


def _rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a onto unit vector b (a . b >= 0)."""
    v, c = np.cross(a, b), float(a @ b)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def _turn(axis: np.ndarray, angle: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _physical(mask: np.ndarray, g: Geometry) -> np.ndarray:
    return g.index_to_physical(np.argwhere(mask)[:, ::-1].astype(float))


@dataclass
class KidneyFit:
    """Where one KiTS kidney went: output = target_centre + scale * R (source - source_centre)."""

    scale: float
    rotation: np.ndarray
    source_centre: np.ndarray
    target_centre: np.ndarray


def fit_kidney(kidney: Image, target: np.ndarray, grid: Geometry, rng: np.random.Generator,
               config: RealSynthConfig = RealSynthConfig()) -> Tuple[np.ndarray, KidneyFit]:
    """Paste ``kidney`` (a ``kits_kidneys`` crop) onto ``grid`` in the place of the ``target`` mask:
    parenchyma centroid on the target's centroid, long axes aligned, size matched within the clamp."""
    lab, g = kidney.array, kidney.geometry
    par = lab == Label.KIDNEY
    src_pts = _physical(par if par.sum() > 0.3 * (lab > 0).sum() else lab > 0, g)
    e_src, c_src = _axis_and_centre(src_pts)
    e_dst, c_dst = _axis_and_centre(_physical(target, grid))
    if e_src @ e_dst < 0:
        e_src = -e_src
    vol_src = len(src_pts) * float(np.prod(g.spacing))
    vol_dst = float(target.sum() * np.prod(grid.spacing))
    s = float(np.clip((vol_dst / vol_src) ** (1 / 3), *config.kidney_scale))
    R = _turn(e_dst, np.radians(uniform(rng, (-config.twist_deg, config.twist_deg)))) @ _rotation(e_src, e_dst)
    fit = KidneyFit(s, R, c_src, c_dst)
    # Output box: the source crop's corners mapped forward; then every output voxel sampled backwards.
    corners = g.index_to_physical(np.array(list(np.ndindex(2, 2, 2))) * np.array(g.size) - 0.5)
    ijk = grid.physical_to_index((corners - c_src) @ (s * R).T + c_dst)
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, grid.size)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 0, grid.size)
    out = np.zeros(grid.shape, np.uint8)
    if np.any(hi <= lo):
        return out, fit
    pts = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    src = g.physical_to_index((grid.index_to_physical(pts.astype(float)) - c_dst) @ R / s + c_src)
    vals = ndimage.map_coordinates(lab, [src[:, 2], src[:, 1], src[:, 0]], order=0, mode="constant", cval=0)
    out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = vals.reshape(hi - lo).transpose(2, 1, 0)
    return out, fit


def place_kidneys(deformed: np.ndarray, grid: Geometry, kits: Image, rng: np.random.Generator,
                  config: RealSynthConfig = RealSynthConfig()) -> Tuple[np.ndarray, np.ndarray, Dict[str, KidneyFit]]:
    """(anatomy without kidneys, KiTS labels on the grid, fits per side). A KiTS kidney whose side has no
    map kidney goes to the mirror image of the other map kidney; a map kidney without a KiTS kidney is
    left out (a solitary kidney)."""
    anatomy = deformed.copy()
    targets = {side: deformed == v for side, v in KIDNEY_MARK.items()}
    for m in targets.values():
        anatomy[m] = 0
    labels = np.zeros(deformed.shape, np.uint8)
    fits = {}
    for side, kidney in kits_kidneys(kits).items():
        target = targets[side]
        if not target.any():
            other = targets["left" if side == "right" else "right"]
            if not other.any():
                raise ValueError("The anatomy map has no kidney to place the KiTS23 kidneys at.")
            target = _mirror(other, deformed, grid)
        pasted, fits[side] = fit_kidney(kidney, target, grid, rng, config)
        labels = np.where(pasted > 0, pasted, labels)
    anatomy[labels > 0] = 0
    return anatomy, labels, fits


def _mirror(mask: np.ndarray, deformed: np.ndarray, grid: Geometry) -> np.ndarray:
    """``mask`` mirrored in x about the aorta's (or the body's) midline."""
    aorta = deformed == ANATOMY["aorta"]
    ref = aorta if aorta.any() else deformed > 0
    mid = np.argwhere(ref)[:, 2].mean()
    x = np.arange(mask.shape[2])
    src = np.clip(np.round(2 * mid - x).astype(int), 0, mask.shape[2] - 1)
    return mask[:, :, src] & ((2 * mid - x >= 0) & (2 * mid - x < mask.shape[2]))[None, None, :]


# -- 3-5. painting ----------------------------------------------------------------------------------
def _anchors(anatomy: np.ndarray, labels: np.ndarray, sp: np.ndarray, rng):
    """The procedural painter's anchors from the real organs: kidneys' centre and top, the midline beside
    the aorta, the spine behind it, and every labelled voxel (the body must enclose them)."""
    fg = labels > 0
    kz, ky, _ = np.argwhere(fg).mean(axis=0) * sp
    top = (np.nonzero(fg.any(axis=(1, 2)))[0][-1] + 1) * sp[0]
    aorta = np.argwhere(anatomy == ANATOMY["aorta"])
    if len(aorta):
        _, ay, ax = aorta.mean(axis=0) * sp
        cx, spine_y = ax - uniform(rng, (8, 18)), ay + uniform(rng, (25, 35))
    else:
        cx, spine_y = np.argwhere(fg)[:, 2].mean() * sp[2], None
    pts = np.argwhere((anatomy > 0) | fg)
    pts = pts[:: max(1, len(pts) // 20000)] * sp
    return (kz, ky, cx, top, pts), spine_y


def kidney_frames(labels: np.ndarray, sp: np.ndarray, midline_x: float):
    """Each kidney's (centre, half extents, lateral sign) in mm (z, y, x) from its bounding box: the two largest
    components of the KiTS labels (a kidney split in pieces gets its largest piece's box, a solitary kidney may
    get a second frame from a piece of itself: both only move where the extra loops go); the lateral sign
    points away from ``midline_x``."""
    cc, n = ndimage.label(labels > 0)
    sizes = np.bincount(cc.ravel(), minlength=n + 1)[1:]
    frames = []
    boxes = ndimage.find_objects(cc)
    for i in np.argsort(sizes)[::-1][:2]:
        box = boxes[i]
        lo, hi = (np.array([s.start for s in box]) * sp, np.array([s.stop for s in box]) * sp)
        centre = (lo + hi) / 2
        frames.append((tuple(centre), tuple((hi - lo) / 2), 1.0 if centre[2] >= midline_x else -1.0))
    return frames


SKIP_WHEN_PROVIDED = {"lung": "lung", "liver": "liver", "spleen": "spleen", "small_bowel": "bowel",
                      "colon": "colon", "muscle": "muscle", "bone": "bone", "urinary_bladder": "bladder",
                      "aorta": "vessels"}


def make_real_case(amap: AnatomyMap, kits: Image, rng: np.random.Generator,
                   config: RealSynthConfig = RealSynthConfig(), spacing=None) -> Tuple[Image, Image, Image, dict]:
    """(CT int16 HU, KiTS labels 0-3, anatomy labels, info) on one axis-aligned LPS grid."""
    if spacing is None:
        s_xy = uniform(rng, config.spacing)
        spacing = (s_xy, s_xy, uniform(rng, config.spacing))
    deformed, grid = deform_map(amap, spacing, rng, config)
    anatomy, labels, fits = place_kidneys(deformed, grid, kits, rng, config)
    sp = np.asarray(grid.spacing[::-1], float)
    phase, randomised, hu = draw_appearance(rng, config.random_share)
    paint_hilum(anatomy, labels, sp, rng, config.scanner.extrarenal_pelvis)
    # Generators of their own: with either option, the rest of the case (phase included) is drawn as without it,
    # and each option's draws do not depend on the other (spawn(2)[0] is the spawn(1)[0] of earlier data).
    organs_rng, dose_rng = rng.spawn(2)
    grown = enlarge_organs(anatomy, labels, sp, organs_rng) if config.scanner.large_organs else None
    if config.scanner.contrast_dose:  # labels and anatomy stay; a changed HU may change later texture draws
        hu, dose = scale_enhancement(hu, phase, randomised, dose_rng)
    P = Painter(anatomy.shape, sp, rng)
    anchors, spine_y = _anchors(anatomy, labels, sp, rng)
    skip = {g for name, g in SKIP_WHEN_PROVIDED.items() if name in amap.provided}
    kidneys = kidney_frames(labels, sp, anchors[2]) if config.scanner.bowel_by_kidneys else None
    packed_rng = rng.spawn(1)[0] if config.scanner.packed_bowel else None  # the third child: the others as before
    body = paint_anatomy(P, anchors, config.scanner, phase == "unenhanced", frozenset(skip), spine_y, kidneys,
                         packed_rng)
    drawn = hu
    # Each of the next options draws from a child of its own, so every other draw is as without it. Spawning
    # counts children: which child an option gets depends on the options spawned before it (packed bowel,
    # lesion contrast), so a case is reproduced by the same set of options, as recorded in synthetic.json.
    if config.scanner.lesion_contrast:
        hu = separate_enhanced_tumor(hu, phase, randomised, rng.spawn(1)[0])
    # After the painter, which sizes the body by the labelled voxels. The organs take unlabelled voxels only,
    # which the painter filled with fat or now and then a procedural bowel loop; the organ paints over either.
    contact = organ_contact(anatomy, labels, sp, rng.spawn(1)[0]) if config.scanner.organ_contact else None
    cysts = add_cysts(anatomy, labels, sp, rng.spawn(1)[0], body) if config.scanner.extra_cysts else None  # last
    paint_structures(P, anatomy, labels, hu, phase)
    anatomy[(anatomy == 0) & (labels == 0) & (body | (anatomy > 0))] = ANATOMY["body"]
    ct = acquire(P.ct, sp, rng, config.scanner)
    info = {"phase": phase, "random_intensities": randomised, "spacing": list(grid.spacing),
            "kidney_scale": {side: round(f.scale, 3) for side, f in fits.items()}}
    if grown is not None:
        info["large_organs"] = grown
    if config.scanner.contrast_dose:
        info["contrast_dose"] = round(dose, 3)
    if config.scanner.lesion_contrast:
        info["tumor_moved"] = bool(hu["tumor"] != drawn["tumor"])  # synthetic.json takes Python types only
    if config.scanner.organ_contact:
        info["organ_contact_mm"], info["organ_contact_ml"] = contact
    if cysts is not None:
        info["extra_cysts"], info["extra_cysts_ml"] = cysts
    return Image(ct, grid), Image(labels, grid), Image(anatomy, grid), info
