"""The invented anatomy around the real kidneys of a synthetic case (used by ``training.synthetic``).

Everything here is random within plausible ranges (SynthSeg-style): the network must learn the kidney from
its own shape, texture and neighbourhood, not from one scanner's look. The layout follows the real kidneys:
the spine sits behind and between them, the liver on the patient's right, the spleen on the left, ribs and
lung bases above, iliac wings and the bladder below, bowel in front. ``unenhanced`` cases (no contrast)
have kidneys at about muscle density and no bright vessels, which is the hard case the first generator
never showed (the held-out example CT is unenhanced; its kidneys are ~15 HU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy import ndimage

from .synth_packed import paint_packed_bowel

Range = Tuple[float, float]
INF = np.inf


@dataclass(frozen=True)
class SynthConfig:
    """HU ranges (a value is drawn uniformly per case/structure) and other randomisation ranges."""

    spacing: Range = (1.5, 2.5)          # working spacing, mm (x/y and z drawn separately)
    unenhanced_p: float = 0.4            # share of cases without intravenous contrast
    kidney_hu: Range = (90.0, 250.0)     # contrast: cortico-medullary to nephrographic phase
    unenhanced_kidney_hu: Range = (10.0, 45.0)
    tumor_hu: Range = (30.0, 200.0)      # contrast; unenhanced tumors differ from the kidney by 12-40 HU
    cyst_hu: Range = (0.0, 20.0)         # always at least 12 HU below the kidney
    fat_hu: Range = (-130.0, -70.0)
    organ_hu: Range = (40.0, 70.0)       # liver, spleen, muscle without contrast
    vessel_hu: Range = (150.0, 300.0)    # contrast; unenhanced blood is 30-55 HU
    bone_hu: Range = (300.0, 700.0)      # mean of a vertebra
    noise_sd: Range = (5.0, 30.0)
    extend_mm: Range = (0.0, 0.0)        # pad the grid to reach this far below the kidneys (0: keep it)
    bias: float = 0.03                   # max relative bias on HU + 1000
    necrosis_p: float = 0.3
    corticomedullary_p: float = 0.4
    bowel_walls: bool = False            # small-bowel loops with an enhancing wall around their contents
    bowel_by_kidneys: bool = False       # also 1-3 loops against the front of each kidney (needs the kidneys)
    extrarenal_pelvis: bool = False      # most kidneys get a dilated, partly extrarenal pelvis (synth_hilum)
    large_organs: bool = False           # some spleens and livers enlarged, down beside the kidneys (synth_organs)
    collapsed_loops: bool = False        # COLLAPSED_SHARE of the small-bowel loops collapsed: flat enhancing wall
    contrast_dose: bool = False          # enhancement scaled by one factor a case (synth_phases.scale_enhancement)
    packed_bowel: bool = False           # the fat in front of the kidneys filled with loops (synth_packed)
    lesion_contrast: bool = False        # enhanced tumors >= 40 HU from the cortex (synth_phases.separate_enhanced_tumor)
    organ_contact: bool = False          # some kidneys meet the liver/spleen with no fat between (synth_contact)
    extra_cysts: bool = False            # simple cysts added to some kidneys, some bulging out (synth_cysts)


COLLAPSED_SHARE = 0.4  # of the procedural small-bowel loops under --collapsed-loops (most jejunum lies collapsed)


def uniform(rng, r) -> float:
    """A value drawn uniformly from the range r = (low, high)."""
    return float(rng.uniform(r[0], r[1]))


def _bspline_matrix(n: int, c: int) -> np.ndarray:
    """(n, c) weights of a cubic B-spline with c control points sampled at n positions."""
    t = np.linspace(1.0, c - 2.0, n)[:, None] - np.arange(c)[None, :]
    a = np.abs(t)
    w = np.where(a < 1, 2 / 3 - a ** 2 + a ** 3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
    return w.astype(np.float32)


def smooth_field(shape, rng, scale_vox: float) -> np.ndarray:
    """Zero-mean, unit-sd smooth random field: coarse normal noise through a separable cubic B-spline
    (matrix products: much faster than ndimage.zoom on large volumes)."""
    coarse = [max(int(np.ceil(s / max(scale_vox, 1.0))) + 3, 4) for s in shape]
    f = rng.standard_normal(coarse).astype(np.float32)
    for axis, (n, c) in enumerate(zip(shape, coarse)):
        f = np.moveaxis(np.tensordot(_bspline_matrix(n, c), np.moveaxis(f, axis, 0), axes=1), 0, axis)
    f -= f.mean()
    return f / max(float(f.std()), 1e-6)


def acquire(ct: np.ndarray, sp, rng, config: SynthConfig) -> np.ndarray:
    """Scanner effects: bias on HU + 1000, blur (PSF + slice thickness), correlated noise, FOV circle."""
    ct = (ct + 1000) * (1 + uniform(rng, (-1, 1)) * config.bias * smooth_field(ct.shape, rng, 80 / sp.mean())) - 1000
    thick = sp[0] * uniform(rng, (1.0, 2.0))
    sig = [np.sqrt(max(thick ** 2 - sp[0] ** 2, 0)) / 2.355 / sp[0] + 0.3] + [uniform(rng, (0.3, 0.7))] * 2
    ct = ndimage.gaussian_filter(ct, sig)
    noise = ndimage.gaussian_filter(rng.standard_normal(ct.shape).astype(np.float32), 0.6)
    ct += noise * (uniform(rng, config.noise_sd) / max(noise.std(), 1e-6))
    if rng.random() < 0.3:  # scanner's circular reconstruction FOV
        ny, nx = ct.shape[1:]
        yy, xx = np.ogrid[:ny, :nx]
        ct[:, ((yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2) > (min(ny, nx) / 2) ** 2] = -1024
    return np.clip(np.round(ct), -1024, 3071).astype(np.int16)


class Painter:
    """Paints blobs into ``ct`` on an axis-aligned (LPS) grid; coordinates in mm from the grid corner."""

    def __init__(self, shape, spacing_zyx, rng):
        self.ct = np.full(shape, -1000.0, np.float32)
        self.sp = np.asarray(spacing_zyx, float)
        self.shape = shape
        self.rng = rng
        self.axes = [np.arange(n) * s for n, s in zip(shape, self.sp)]  # z, y, x in mm

    def ellipsoid(self, centre, radii, rough=0.15, within=None):
        """(slices, mask) of a rough ellipsoid; radii inf = a column along that axis."""
        sl = []
        for c, r, s, n in zip(centre, radii, self.sp, self.shape):
            if np.isinf(r):
                sl.append(slice(0, n))
            else:
                sl.append(slice(int(np.clip((c - 1.3 * r) / s, 0, n)), int(np.clip((c + 1.3 * r) / s + 1, 0, n))))
        sl = tuple(sl)
        if any(s.stop <= s.start for s in sl):
            return sl, np.zeros([0, 0, 0], bool)
        grids = np.ix_(*[a[s] for a, s in zip(self.axes, sl)])
        d = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii) if not np.isinf(r))
        shape = tuple(s.stop - s.start for s in sl)
        d = np.broadcast_to(d, shape) + rough * smooth_field(shape, self.rng, 12.0 / self.sp.mean())
        mask = d < 1.0
        if within is not None:
            mask &= within[sl]
        return sl, mask

    def paint(self, centre, radii, hu, texture=8.0, rough=0.15, within=None):
        sl, mask = self.ellipsoid(centre, radii, rough, within)
        if mask.any():
            tex = hu + texture * smooth_field(mask.shape, self.rng, 4.0)
            self.ct[sl][mask] = tex[mask]
        return sl, mask

    def tube(self, x_of_z, y_of_z, rx_of_z, ry_of_z, hu, texture=6.0, within=None):
        """A vertical tube whose centre and radii vary with z (functions of z in mm): psoas, colon."""
        z = self.axes[0][:, None, None]
        d = ((self.axes[2][None, None, :] - x_of_z(z)) / rx_of_z(z)) ** 2 \
            + ((self.axes[1][None, :, None] - y_of_z(z)) / ry_of_z(z)) ** 2
        mask = d < 1.0
        if within is not None:
            mask &= within
        self.ct[mask] = (hu + texture * smooth_field(self.shape, self.rng, 4.0))[mask]
        return mask


def paint_anatomy(P: Painter, anchors, config: SynthConfig, unenhanced: bool, skip=frozenset(),
                  spine_y=None, kidneys=None, packed_rng=None) -> np.ndarray:
    """Body, organs, bones and bowel around the kidneys; returns the body mask. ``anchors`` = (z, y of the
    kidneys' centre, x of the midline, z of their top, in mm from the grid corner; voxel positions in mm
    (z, y, x) that must lie inside the body, or None). ``skip``: groups a real anatomy map provides ("lung",
    "liver", "spleen", "bowel", "colon", "muscle", "bone", "bladder", "vessels"); ``spine_y``: the vertebral
    body's AP position when known (else drawn behind the kidneys); ``kidneys``: each kidney's (centre, half
    extents, lateral sign), mm (z, y, x), for ``config.bowel_by_kidneys``; ``packed_rng``: the generator of
    ``--packed-bowel`` (``synth_packed``), None without it."""
    rng, (zz, yy, xx) = P.rng, P.axes
    z_mid, fy, cx, top_z, pts = anchors
    ys = fy + uniform(rng, (0, 15)) if spine_y is None else spine_y  # vertebral body centre (AP)
    rb = uniform(rng, (15, 22))                            # vertebral body radius
    ax, ay = uniform(rng, (140, 190)), uniform(rng, (100, 140))
    cyb = ys + 70 - ay * uniform(rng, (0.9, 1.0))          # body centre: the back lies ~70 mm behind the spine
    if pts is not None:  # grow the body until every foreground voxel is well inside (r <= 0.8)
        r = np.sqrt(((pts[:, 2] - cx) / ax) ** 2 + ((pts[:, 1] - cyb) / ay) ** 2).max()
        ax, ay = ax * max(1.0, r / 0.8), ay * max(1.0, r / 0.8)
    mod = 1 + 0.03 * smooth_field((len(zz), 1, 1), rng, 120 / P.sp[0])
    rn = np.sqrt(((xx[None, None, :] - cx) / (ax * mod)) ** 2 + ((yy[None, :, None] - cyb) / (ay * mod)) ** 2)
    rn = rn + 0.01 * smooth_field(P.shape, rng, 50 / P.sp.mean())
    depth = (1 - rn) * np.sqrt(ax * ay)               # approximate depth below the skin, mm
    body = depth > 0
    t_fat, t_mus = uniform(rng, (8, 40)), uniform(rng, (6, 15))
    P.ct[body] = uniform(rng, config.fat_hu) + 12 * smooth_field(P.shape, rng, 3)[body]   # visceral/subcut. fat
    P.ct[body & (depth < 2.5)] = uniform(rng, (20, 60))                                   # skin
    muscle = uniform(rng, config.organ_hu)
    P.ct[body & (depth > t_fat) & (depth < t_fat + t_mus)] = muscle                  # abdominal wall
    inner = body & (depth >= t_fat + t_mus)
    packed = packed_rng is not None and "bowel" not in skip  # --packed-bowel, unless the map has its small bowel
    fat_ct = P.ct.copy() if packed else None  # what is still equal to it at the end is fat
    boost = 0.0 if unenhanced else 1.0               # organ enhancement in the portal phase
    vessel = uniform(rng, (30.0, 55.0)) if unenhanced else uniform(rng, config.vessel_hu)

    # Lung bases above the kidneys, then liver and spleen whose domes push up into them.
    lung_z = top_z + uniform(rng, (40, 90))
    for side in () if "lung" in skip else (-1, 1):
        P.paint((lung_z + 100, cyb + 0.25 * ay, cx + side * 0.5 * ax), (100, 0.6 * ay, 0.42 * ax),
                uniform(rng, (-900, -800)), 25, 0.1, inner)
    liver_z = top_z + uniform(rng, (-10, 30))
    if "liver" not in skip:
        P.paint((liver_z, cyb - 0.1 * ay, cx - 0.5 * ax), (uniform(rng, (80, 120)), 0.6 * ay, 0.45 * ax),
                uniform(rng, config.organ_hu) + boost * 30, 6, 0.25, inner)
    if "spleen" not in skip:
        P.paint((top_z + uniform(rng, (-20, 10)), ys + 10, cx + 0.6 * ax), (55, 45, 35),
                uniform(rng, config.organ_hu) + boost * 40, 6, 0.25, inner)

    _paint_bowel(P, (z_mid, fy, cx, cyb, ax, ay), inner, skip, config.bowel_walls, unenhanced,
                 kidneys if config.bowel_by_kidneys else None, config.collapsed_loops)

    # Muscles: psoas thickening downwards and moving laterally; back muscles.
    for side in () if "muscle" in skip else (-1, 1):
        grow = lambda z: np.clip((z_mid + 60 - z) / 200.0, 0.2, 1.3)  # noqa: E731 - 0.2 at the top, 1.3 low
        P.tube(lambda z, s=side: cx + s * (rb + 10 + 14 * grow(z)), lambda z: ys + 0 * z,
               lambda z: 8 + 16 * grow(z), lambda z: 8 + 14 * grow(z), muscle + uniform(rng, (-5, 5)), 6, body)
        P.paint((z_mid, ys + rb + 30, cx + side * 35), (INF, 25, 28), muscle + uniform(rng, (-5, 5)), 6, 0.1, body)

    bone = uniform(rng, config.bone_hu)
    if "bone" not in skip:
        _paint_spine(P, (z_mid, ys, cx), rb, bone, body)
        _paint_ribs_and_pelvis(P, z_mid, ys, cx, cyb, ax, depth, t_fat + t_mus, bone, muscle, inner)
    z_hip = z_mid + uniform(rng, (-260, -210))
    if "bladder" not in skip:
        radii = (uniform(rng, (25, 45)), uniform(rng, (30, 50)), uniform(rng, (35, 60)))
        P.paint((z_hip, cyb - 0.35 * ay, cx), radii, uniform(rng, (0, 20)), 3, 0.15, inner)  # bladder
    for side in () if "bone" in skip else (-1, 1):                                        # hips
        head = (z_hip + uniform(rng, (-10, 20)), ys - uniform(rng, (10, 30)), cx + side * uniform(rng, (85, 100)))
        P.paint((head[0], head[1] + 10, head[2] + side * 25), (70, 45, 40), muscle, 6, 0.2, inner)  # gluteal
        r = uniform(rng, (21, 26))
        P.paint(head, (r, r, r), bone + 200, 30, 0.0, body)
        P.paint(head, (r - 3, r - 3, r - 3), bone - 100, 40, 0.0, body)
    if "vessels" not in skip:
        P.paint((z_mid, ys - rb - 14, cx + uniform(rng, (8, 18))), (INF, 11, 11), vessel, 5, 0.05, body)   # aorta
        P.paint((z_mid, ys - rb - 10, cx - uniform(rng, (18, 30))), (INF, 9, 14), vessel * uniform(rng, (0.6, 1.0)) if
                not unenhanced else vessel, 5, 0.15, body)                                             # IVC
    if packed:  # last: it fills only the fat left between the rest
        paint_packed_bowel(P.ct, inner & (P.ct == fat_ct), P.sp, P.axes, fy, top_z, unenhanced, vessel, packed_rng)
    return body


def _paint_bowel(P: Painter, frame, inner, skip, walls: bool = False, unenhanced: bool = False,
                 kidneys=None, collapsed: bool = False) -> None:
    """Small-bowel loops and the colon inside ``inner``; ``frame`` = (kidneys' z and y, midline x, body centre
    y, body half-axes x and y), mm. ``walls``: each loop gets a wall, enhancing unless ``unenhanced``.
    ``kidneys`` (centre, half extents, lateral sign per kidney): 1-3 more loops against each kidney's front.
    ``collapsed``: some loops are collapsed (``_paint_loop``)."""
    rng, zz = P.rng, P.axes[0]
    z_mid, fy, cx, cyb, ax, ay = frame
    # Bowel: loops of fluid (as dense as an unenhanced kidney), sometimes oral contrast, gas anteriorly;
    # colon along both flanks with mottled stool.
    for _ in range(0 if "bowel" in skip else int(rng.integers(30, 60))):
        c = (z_mid + rng.uniform(-220, 100), cyb - ay * rng.uniform(0.0, 0.7), cx + ax * rng.uniform(-0.7, 0.7))
        _paint_loop(P, c, rng.uniform(10, 25), inner, walls, unenhanced, collapsed)
    for side in () if "colon" in skip else (-1, 1):
        x0, y0 = cx + side * 0.62 * ax, fy - uniform(rng, (0, 30))
        colon = P.tube(lambda z, x0=x0: x0 + 0 * z, lambda z, y0=y0: y0 + 0 * z, lambda z: 22 + 0 * z,
                       lambda z: 20 + 0 * z, uniform(rng, (10, 60)), 25, inner & (zz[:, None, None] > z_mid - 150))
        gas = colon & (smooth_field(P.shape, rng, 3.0 / P.sp.mean() + 1) > uniform(rng, (1.2, 2.2)))
        P.ct[gas] = uniform(rng, (-950, -600))
    # Loops touching the kidney's front, from its medial third (towards the duodenum and jejunum) to its lateral
    # edge (the colon's flexures): where real CTs put bowel beside the kidney and the random loops above rarely
    # reach. Whatever overlaps a labelled organ, the kidney or its perirenal fat is painted over afterwards: the
    # loops abut them.
    for centre, half, lateral in () if "bowel" in skip else (kidneys or ()):
        for _ in range(int(rng.integers(1, 4))):
            rad = rng.uniform(8, 18)
            c = (centre[0] + half[0] * rng.uniform(-0.8, 0.8), centre[1] - half[1] - rad * rng.uniform(0.3, 0.9),
                 centre[2] + lateral * half[2] * rng.uniform(-0.6, 1.0))  # smaller y is anterior (LPS)
            _paint_loop(P, c, rad, inner, walls, unenhanced, collapsed)


def _paint_loop(P: Painter, c, rad: float, inner, walls: bool, unenhanced: bool, collapsed: bool = False) -> None:
    """One small-bowel loop of radius ``rad`` mm, up to twice as long in z, holding fluid (0-50 HU) or oral
    contrast (150-300 HU, 15 %): walled (``_paint_walled_loop``) or a uniform blob with gas against its front
    in half of the loops. ``collapsed``: a share ``COLLAPSED_SHARE`` of the loops are collapsed instead
    (``_paint_collapsed_loop``; no draw is made without it, so the loops stay those of the data made before)."""
    rng = P.rng
    if collapsed and rng.random() < COLLAPSED_SHARE:
        _paint_collapsed_loop(P, c, rad, inner, unenhanced)
        return
    hu = rng.uniform(150, 300) if rng.random() < 0.15 else rng.uniform(0, 50)
    radii = (rad * rng.uniform(1, 2), rad, rad)
    if walls:
        _paint_walled_loop(P, c, radii, hu, inner, unenhanced)
        return
    _, m = P.paint(c, radii, hu, 10, 0.3, inner)
    if rng.random() < 0.5 and m.any():
        P.paint((c[0], c[1] - rad * 0.6, c[2]), (rad * 0.8, rad * 0.5, rad * 0.7), rng.uniform(-1000, -850),
                20, 0.2, inner)


def _paint_walled_loop(P: Painter, c, radii, hu: float, inner, unenhanced: bool) -> None:
    """A small-bowel loop as CT shows it: a wall of one or two voxels (about 1.5-5 mm), enhancing (70-140 HU,
    portal venous) unless ``unenhanced``, around contents of ``hu``, with gas against the anterior wall in half
    of the loops. The wall is the loop's outer shell, so no content and no gas reaches the fat outside."""
    rng = P.rng
    sl, m = P.paint(c, radii, rng.uniform(30, 50) if unenhanced else rng.uniform(70, 140), 15, 0.3, inner)
    if not m.any():
        return
    lumen = ndimage.binary_erosion(m, iterations=int(rng.integers(1, 3)))
    view = P.ct[sl]  # a view: writing into it paints the CT
    view[lumen] = (hu + 10 * smooth_field(m.shape, rng, 4.0))[lumen]
    if rng.random() < 0.5:
        y = P.axes[1][sl[1]][None, :, None]  # smaller y is anterior (LPS)
        view[lumen & (y < c[1] - radii[1] * rng.uniform(0.2, 0.6))] = rng.uniform(-1000, -850)


def _paint_collapsed_loop(P: Painter, c, rad: float, inner, unenhanced: bool) -> None:
    """A collapsed small-bowel loop, as most of the jejunum lies on CT: no lumen, only its walls and folds
    pressed together. The loop's ellipsoid (half-axes ``rad`` and up to twice that along z) is flattened along
    one random axis to 6-14 mm: a band or a disc of wall-density soft tissue, avidly enhancing mucosa (80-160
    HU) in a contrast phase, 30-50 HU without, with fluid-density (0-30 HU) speckle a voxel or two across for
    the fluid between its folds (the field's 2.5 mm scale is near the voxel size). No gas. Enhancing like a
    kidney tumor, and touching the kidney under ``--bowel-by-kidneys``, it is the bowel a network can take for
    one."""
    rng = P.rng
    radii = [rad * rng.uniform(1, 2), rad, rad]
    radii[int(rng.integers(0, 3))] = rng.uniform(3, 7)   # flat along one axis
    wall = rng.uniform(30, 50) if unenhanced else rng.uniform(80, 160)
    sl, m = P.paint(c, tuple(radii), wall, 12, 0.3, inner)
    if not m.any():
        return
    folds = smooth_field(m.shape, rng, 2.5 / P.sp.mean())
    streak = m & (np.abs(folds) < rng.uniform(0.05, 0.15))
    view = P.ct[sl]  # a view: writing into it paints the CT
    view[streak] = rng.uniform(0, 30)


def _paint_spine(P: Painter, col, rb, bone, body) -> None:
    """Vertebral column: cancellous core, cortical shell, discs, canal, posterior arch, spinous process."""
    rng, zz = P.rng, P.axes[0]
    z_mid, ys, cx = col
    P.paint(col, (INF, rb + 2.5, rb * 1.1 + 2.5), bone + 250, 30, 0.0, body)
    P.paint(col, (INF, rb, rb * 1.1), bone - 80, 40, 0.0, body)
    period, phase = uniform(rng, (30, 36)), uniform(rng, (0, 36))
    disc = ((zz - phase) % period) < 7
    sl, m = P.ellipsoid(col, (INF, rb + 2.5, rb * 1.1 + 2.5), 0.0, body)
    P.ct[sl][m & disc[sl[0]][:, None, None]] = uniform(rng, (70, 100))
    P.paint((z_mid, ys + rb + 14, cx), (INF, 14, 14), bone + 150, 30, 0.0, body)    # arch
    P.paint((z_mid, ys + rb + 12, cx), (INF, 8, 8), uniform(rng, (0, 20)), 3, 0.0, body)  # canal
    P.paint((z_mid, ys + rb + 40, cx), (INF, 16, 4), bone + 150, 30, 0.0, body)      # spinous process


def _paint_ribs_and_pelvis(P: Painter, z_mid, ys, cx, cyb, ax, depth, wall, bone, muscle, inner) -> None:
    """Ribs (bands of bone under the muscle wall, every 20-30 mm, from the kidneys' middle upwards) and
    iliac wings (the lower half of an ellipsoidal shell lateral to the psoas: a bowl whose rim, the iliac
    crest, lies 70-110 mm below the kidneys' middle; the iliacus muscle fills it)."""
    rng, (zz, yy, xx) = P.rng, P.axes
    period, start = uniform(rng, (20, 30)), z_mid - uniform(rng, (0, 40))
    # Ribs slope down from the spine to the front (about 0.7 period per half turn), so one axial slice cuts
    # several of them as separate arcs, as on a real CT, instead of one closed ring.
    angle = np.abs(np.arctan2(xx[None, None, :] - cx, cyb - yy[None, :, None])) / np.pi  # 0 front, 1 back
    z_rib = zz[:, None, None] + 0.7 * period * (1 - angle)
    band = ((z_rib - start) % period < uniform(rng, (7, 10))) & (z_rib > start)
    anterior_gap = (np.abs(xx[None, None, :] - cx) < 0.35 * ax) & (yy[None, :, None] < cyb)
    ribs = (depth > wall + 1) & (depth < wall + 9) & band & ~anterior_gap
    P.ct[ribs] = bone + 100 + 40 * rng.standard_normal(int(ribs.sum()))
    top = z_mid - uniform(rng, (70, 110))
    for side in (-1, 1):  # the wing opens anteriorly and medially (iliac fossa, filled by the iliacus)
        centre = (top, ys - uniform(rng, (0, 20)), cx + side * uniform(rng, (65, 85)))
        radii = (70, uniform(rng, (40, 55)), uniform(rng, (50, 65)))
        sl, outer = P.ellipsoid(centre, radii, 0.05, inner)
        if not outer.any():
            continue
        t = uniform(rng, (5, 9))  # bone thickness, mm: the core is the ellipsoid shrunk by t on every axis
        g = np.ix_(*[a[s] for a, s in zip(P.axes, sl)])
        core = sum(((q - c) / (r - t)) ** 2 for q, c, r in zip(g, centre, radii)) < 1.0
        below = (zz[sl[0]] < top)[:, None, None]
        P.ct[sl][core & outer & below] = muscle + 10 * rng.standard_normal(int((core & outer & below).sum()))
        keep = ((yy[sl[1]] - centre[1])[None, :, None] > -0.4 * radii[1]) \
            & ((side * (xx[sl[2]] - centre[2]))[None, None, :] > -0.3 * radii[2])
        shell = outer & ~core & below & keep
        P.ct[sl][shell] = bone + 150 + 40 * rng.standard_normal(int(shell.sum()))
