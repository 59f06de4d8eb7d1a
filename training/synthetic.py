"""Synthetic CT-like volumes around REAL KiTS23 kidney/tumor/cyst shapes (SynthSeg-style randomisation).

``make_case(label_map, rng)``: the real label map is reoriented to LPS and downsampled (nearest) to a random
working spacing; these labels are returned unchanged, and the CT is painted from them, so image and
labels agree exactly whatever the downsampling did. Everything else is invented, with random parameters:
air (-1000 HU) outside an elliptic, slightly irregular body; skin, subcutaneous fat (-100 +- 30) and an
abdominal muscle wall; visceral fat; a vertebral column behind and between the kidneys (cortical shell,
cancellous core, discs, canal, posterior arch: 300-700 HU on average); psoas and back muscles; aorta and
IVC in front of the spine (contrast, 150-300 HU); liver (patient right) and spleen (left) as smooth blobs
(40-70 HU); bowel loops with gas pockets (anterior, the non-dependent side of a supine patient) and
sometimes oral contrast; perirenal fat; kidneys (20-250 HU: unenhanced to nephrographic phase, sometimes
cortico-medullary differentiation), tumors (30-200 HU, smooth heterogeneity, sometimes a necrotic core), cysts (0-20 HU).
Then a smooth multiplicative bias on HU + 1000 (air stays air), blur (in-plane PSF and slice thickness),
correlated Gaussian noise (sd 5-30 HU), sometimes a circular reconstruction field of view (-1024 outside).
All randomness comes from the given ``numpy.random.Generator``: the same seed gives the same case.

``insert_lesions(ct, kidney_mask, rng)``: a real CT with kidney masks gets synthetic tumors/cysts blended
into the kidneys (soft edge, noise matched to the CT's own noise). The held-out example CT
(shared/data/ct/example_ct*) is refused, as is any copy of it (checksum / geometry).

Command line (writes the KiTS23 layout, ``OUTDIR/case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``):
    python -m training.synthetic --kits23 DIR -o OUTDIR -n N --seed S [--spacing LO HI]
    python -m training.synthetic --insert-lesions CT --kidney-mask M [M ...] -o OUTDIR -n N --seed S
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.geometry import Image
from KidneyTumorSegLib.image_io import read_image, read_labelmap, write_image, write_labelmap
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.preprocessing import reorient, resample

from .datasets.heldout import check_not_held_out

Range = Tuple[float, float]


@dataclass(frozen=True)
class SynthConfig:
    """HU ranges (a value is drawn uniformly per case/structure) and other randomisation ranges."""

    spacing: Range = (1.5, 2.5)          # working spacing, mm (x/y and z drawn separately)
    kidney_hu: Range = (20.0, 250.0)     # unenhanced (20-45) to nephrographic phase: real CTs vary
    tumor_hu: Range = (30.0, 200.0)
    cyst_hu: Range = (0.0, 20.0)
    fat_hu: Range = (-130.0, -70.0)
    organ_hu: Range = (40.0, 70.0)       # liver, spleen, muscle
    vessel_hu: Range = (150.0, 300.0)
    bone_hu: Range = (300.0, 700.0)      # mean of a vertebra
    noise_sd: Range = (5.0, 30.0)
    bias: float = 0.03                   # max relative bias on HU + 1000
    necrosis_p: float = 0.3
    corticomedullary_p: float = 0.4


def _u(rng, r) -> float:
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


class _Painter:
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


def downsample_labels(label_map: Image, spacing_xyz) -> Image:
    """The label map on the LPS grid at ``spacing_xyz`` (nearest): exactly the labels make_case returns."""
    arr, g, _ = reorient(label_map.array, label_map.geometry, "LPS")
    arr, g = resample(arr, g, spacing_xyz, "nearest")
    return Image(arr.astype(np.uint8), g)


def make_case(label_map: Image, rng: np.random.Generator, config: SynthConfig = SynthConfig(),
              spacing: Optional[Sequence[float]] = None) -> Tuple[Image, Image]:
    """(synthetic CT as int16 HU, labels) on the LPS grid at a random (or the given) spacing."""
    if spacing is None:
        s_xy = _u(rng, config.spacing)
        spacing = (s_xy, s_xy, _u(rng, config.spacing))
    labels = downsample_labels(label_map, spacing)
    lab, g = labels.array, labels.geometry
    if np.any(lab > max(Label)):
        raise ValueError(f"Label values must be 0-3 (KiTS23), found up to {int(lab.max())}.")
    P = _Painter(lab.shape, g.spacing[::-1], rng)
    zz, yy, xx = P.axes
    fg = lab > 0

    # Anatomy anchors from the real kidneys: midline between the two largest components, spine behind.
    cc, n = ndimage.label(fg)
    if n:
        sizes = np.bincount(cc.ravel())[1:]
        cents = [np.array(ndimage.center_of_mass(cc == i + 1)) * P.sp for i in np.argsort(sizes)[::-1][:2]]
        fz, fy = np.mean([c[0] for c in cents]), np.mean([c[1] for c in cents])
        cx = np.mean([c[2] for c in cents]) if len(cents) == 2 else xx[-1] / 2
        box = ndimage.find_objects(fg.astype(np.uint8))[0]
        top_z = box[0].stop * P.sp[0]
    else:
        fz, fy, cx, top_z = zz[-1] / 2, yy[-1] * 0.55, xx[-1] / 2, zz[-1] * 0.7
    ys = fy + _u(rng, (0, 15))                       # vertebral body centre (AP)
    rb = _u(rng, (15, 22))                            # vertebral body radius
    ax, ay = _u(rng, (140, 190)), _u(rng, (100, 140))
    cyb = ys + 70 - ay * _u(rng, (0.9, 1.0))          # body centre: the back lies ~70 mm behind the spine
    if n:  # grow the body until every foreground voxel is well inside (r <= 0.8)
        pts = np.argwhere(fg)[:: max(1, int(fg.sum()) // 5000)] * P.sp
        r = np.sqrt(((pts[:, 2] - cx) / ax) ** 2 + ((pts[:, 1] - cyb) / ay) ** 2).max()
        ax, ay = ax * max(1.0, r / 0.8), ay * max(1.0, r / 0.8)
    mod = 1 + 0.03 * smooth_field((len(zz), 1, 1), rng, 120 / P.sp[0])
    rn = np.sqrt(((xx[None, None, :] - cx) / (ax * mod)) ** 2 + ((yy[None, :, None] - cyb) / (ay * mod)) ** 2)
    rn = rn + 0.01 * smooth_field(P.shape, rng, 50 / P.sp.mean())
    depth = (1 - rn) * np.sqrt(ax * ay)               # approximate depth below the skin, mm
    body = depth > 0
    t_fat, t_mus = _u(rng, (8, 40)), _u(rng, (6, 15))
    fat = _u(rng, config.fat_hu)
    P.ct[body] = fat + 12 * smooth_field(P.shape, rng, 3)[body]                     # visceral/subcut. fat
    P.ct[body & (depth < 2.5)] = _u(rng, (20, 60))                                   # skin
    wall = body & (depth > t_fat) & (depth < t_fat + t_mus)
    P.ct[wall] = _u(rng, config.organ_hu)                                            # muscle wall
    inner = body & (depth >= t_fat + t_mus)

    # Organs (kidney tissue is painted last and overrides all of them).
    z_mid, inf = fz, np.inf
    liver_z = top_z + _u(rng, (-10, 30))
    P.paint((liver_z, cyb - 0.1 * ay, cx - 0.5 * ax), (_u(rng, (80, 120)), 0.6 * ay, 0.45 * ax),
            _u(rng, config.organ_hu) + 30, 6, 0.25, inner)                            # liver (portal phase)
    P.paint((top_z + _u(rng, (-20, 10)), ys + 10, cx + 0.6 * ax), (55, 45, 35), _u(rng, config.organ_hu) + 40,
            6, 0.25, inner)                                                           # spleen
    for _ in range(int(rng.integers(20, 40))):                                         # bowel loops
        c = (z_mid + rng.uniform(-120, 120), cyb - ay * rng.uniform(0.1, 0.7), cx + ax * rng.uniform(-0.7, 0.7))
        rad = rng.uniform(10, 25)
        hu = rng.uniform(150, 300) if rng.random() < 0.15 else rng.uniform(0, 50)
        sl, m = P.paint(c, (rad * rng.uniform(1, 2), rad, rad), hu, 10, 0.3, inner)
        if rng.random() < 0.5 and m.any():                                             # gas rises anteriorly
            P.paint((c[0], c[1] - rad * 0.6, c[2]), (rad * 0.8, rad * 0.5, rad * 0.7), rng.uniform(-1000, -850),
                    20, 0.2, inner)
    for side in (-1, 1):
        P.paint((z_mid, ys + rb + 30, cx + side * 35), (inf, 25, 28), _u(rng, config.organ_hu), 6, 0.1, body)
        P.paint((z_mid, ys, cx + side * (rb + 22)), (inf, 18, 20), _u(rng, config.organ_hu), 6, 0.15, body)
    # Spine: cancellous core, cortical shell, discs, canal, posterior arch and spinous process.
    bone = _u(rng, config.bone_hu)
    col = (z_mid, ys, cx)
    P.paint(col, (inf, rb + 2.5, rb * 1.1 + 2.5), bone + 250, 30, 0.0, body)
    P.paint(col, (inf, rb, rb * 1.1), bone - 80, 40, 0.0, body)
    period, phase = _u(rng, (30, 36)), _u(rng, (0, 36))
    disc = ((zz - phase) % period) < 7
    sl, m = P.ellipsoid(col, (inf, rb + 2.5, rb * 1.1 + 2.5), 0.0, body)
    P.ct[sl][m & disc[sl[0]][:, None, None]] = _u(rng, (70, 100))
    P.paint((z_mid, ys + rb + 14, cx), (inf, 14, 14), bone + 150, 30, 0.0, body)    # arch
    P.paint((z_mid, ys + rb + 12, cx), (inf, 8, 8), _u(rng, (0, 20)), 3, 0.0, body)  # canal
    P.paint((z_mid, ys + rb + 40, cx), (inf, 16, 4), bone + 150, 30, 0.0, body)      # spinous process
    vessel = _u(rng, config.vessel_hu)
    P.paint((z_mid, ys - rb - 14, cx + _u(rng, (8, 18))), (inf, 11, 11), vessel, 5, 0.05, body)   # aorta
    P.paint((z_mid, ys - rb - 10, cx - _u(rng, (18, 30))), (inf, 9, 14), vessel * _u(rng, (0.6, 1.0)), 5,
            0.15, body)                                                                            # IVC

    # Perirenal fat, then kidney, tumor, cyst from the real labels.
    if n:
        sl = tuple(slice(max(s.start - 8, 0), s.stop + 8) for s in box)
        near = ndimage.distance_transform_edt(~fg[sl], sampling=P.sp) < _u(rng, (2, 10))
        P.ct[sl][near & ~fg[sl]] = _u(rng, config.fat_hu) + 10 * rng.standard_normal(int((near & ~fg[sl]).sum()))
        sub, view = lab[sl], P.ct[sl]
        k_hu = _u(rng, config.kidney_hu)
        kid = sub == Label.KIDNEY
        view[kid] = k_hu + 8 * smooth_field(sub.shape, rng, 3)[kid]
        if rng.random() < config.corticomedullary_p:  # darker medulla below a 4-8 mm cortex
            deep = kid & (ndimage.distance_transform_edt(sub > 0, sampling=P.sp) > _u(rng, (4, 8)))
            view[deep] -= _u(rng, (0, k_hu - config.kidney_hu[0]))
        tum = sub == Label.TUMOR
        if tum.any():
            view[tum] = (_u(rng, config.tumor_hu) + _u(rng, (10, 40)) * smooth_field(sub.shape, rng, 3))[tum]
            if rng.random() < config.necrosis_p:
                d = ndimage.distance_transform_edt(tum, sampling=P.sp)
                core = d > d.max() * _u(rng, (0.4, 0.7))
                view[core] = _u(rng, (5, 30)) + 5 * rng.standard_normal(int(core.sum()))
        cyst = sub == Label.CYST
        view[cyst] = _u(rng, config.cyst_hu) + 2 * rng.standard_normal(int(cyst.sum()))
    return Image(_acquire(P.ct, P.sp, rng, config), g), labels


def _acquire(ct: np.ndarray, sp, rng, config: SynthConfig) -> np.ndarray:
    """Scanner effects: bias on HU + 1000, blur (PSF + slice thickness), correlated noise, FOV circle."""
    ct = (ct + 1000) * (1 + _u(rng, (-1, 1)) * config.bias * smooth_field(ct.shape, rng, 80 / sp.mean())) - 1000
    thick = sp[0] * _u(rng, (1.0, 2.0))
    sig = [np.sqrt(max(thick ** 2 - sp[0] ** 2, 0)) / 2.355 / sp[0] + 0.3] + [_u(rng, (0.3, 0.7))] * 2
    ct = ndimage.gaussian_filter(ct, sig)
    noise = ndimage.gaussian_filter(rng.standard_normal(ct.shape).astype(np.float32), 0.6)
    ct += noise * (_u(rng, config.noise_sd) / max(noise.std(), 1e-6))
    if rng.random() < 0.3:  # scanner's circular reconstruction FOV
        ny, nx = ct.shape[1:]
        yy, xx = np.ogrid[:ny, :nx]
        ct[:, ((yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2) > (min(ny, nx) / 2) ** 2] = -1024
    return np.clip(np.round(ct), -1024, 3071).astype(np.int16)


def insert_lesions(ct: Image, kidney_mask: Image, rng: np.random.Generator, config: SynthConfig = SynthConfig(),
                   n_lesions: Tuple[int, int] = (1, 3), source: str = "ct") -> Tuple[Image, Image]:
    """Blend 1-3 synthetic tumors/cysts (5-25 mm radius, centred in the kidney) into a real CT.

    ``kidney_mask``: non-zero = kidney, on the CT's grid. Returns (CT, labels 0-3) on the CT's grid.
    """
    check_not_held_out(source, ct.geometry)
    if not ct.geometry.is_close(kidney_mask.geometry, atol=1e-3):
        raise ValueError("The kidney mask must lie on the CT's voxel grid.")
    kid = kidney_mask.array > 0
    if not kid.any():
        raise ValueError("The kidney mask is empty; lesions are inserted into the kidneys.")
    arr = ct.array.astype(np.float32)
    labels = kid.astype(np.uint8)
    sp = np.asarray(ct.geometry.spacing[::-1])
    resid = (arr - ndimage.gaussian_filter(arr, 1.0))[kid]  # the CT's own noise level inside the kidney
    noise_sd = 1.4826 * np.median(np.abs(resid - np.median(resid))) * 1.3
    pts = np.argwhere(kid)
    P = _Painter(arr.shape, sp, rng)
    for _ in range(int(rng.integers(n_lesions[0], n_lesions[1] + 1))):
        centre = pts[rng.integers(len(pts))] * sp
        r = _u(rng, (5, 25))
        sl, m = P.ellipsoid(centre, tuple(r * rng.uniform(0.8, 1.2, 3)), 0.2)
        if not m.any():
            continue
        is_tumor = rng.random() < 0.6
        hu = _u(rng, config.tumor_hu if is_tumor else config.cyst_hu)
        tex = hu + (_u(rng, (10, 40)) * smooth_field(m.shape, rng, 3) if is_tumor else 0)
        tex = tex + noise_sd * rng.standard_normal(m.shape)
        alpha = np.clip(ndimage.gaussian_filter(m.astype(np.float32), 0.7) * 1.5 - 0.25, 0, 1)
        alpha[m] = np.maximum(alpha[m], 0.5)
        arr[sl] = (1 - alpha) * arr[sl] + alpha * tex
        labels[sl][m] = Label.TUMOR if is_tumor else Label.CYST
    return Image(np.round(arr).astype(np.int16), ct.geometry), Image(labels, ct.geometry)


# -- command line -----------------------------------------------------------------------------------
def find_label_maps(root) -> list:
    """KiTS23 label maps under ``root``: ``case_X.nii.gz`` files or ``case_X/segmentation.nii.gz``."""
    root = Path(root)
    found = {p.name[:-7]: p for p in root.glob("case_*.nii.gz")}
    for base in (root, root / "dataset"):
        found.update({p.parent.name: p for p in base.glob("case_*/segmentation.nii.gz")})
    return sorted(found.items())


def _case_seed(seed: int, case_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case_id.encode())])  # independent of N and order


def _write(out: Path, case_id: str, ct: Image, labels: Image) -> None:
    d = out / case_id
    d.mkdir(parents=True, exist_ok=True)
    write_image(ct.array, ct.geometry, d / "imaging.nii.gz", overwrite=True)
    write_labelmap(labels.array, labels.geometry, d / "segmentation.nii.gz", overwrite=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--kits23", help="folder of KiTS23 label maps (case_X.nii.gz or case_X/segmentation.nii.gz)")
    src.add_argument("--insert-lesions", metavar="CT", help="real CT to insert lesions into (not example_ct)")
    p.add_argument("--kidney-mask", nargs="+", help="kidney mask(s) of the --insert-lesions CT")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-n", type=int, default=1, help="number of cases (KiTS23 sources drawn without replacement)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=float, nargs=2, metavar=("LO", "HI"), help="working spacing range, mm")
    p.add_argument("--cases", nargs="+", help="use these KiTS23 case ids instead of a random draw")
    args = p.parse_args(argv)
    config = SynthConfig(spacing=tuple(args.spacing)) if args.spacing else SynthConfig()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    log = {"seed": args.seed, "config": asdict(config), "cases": {}}
    if args.insert_lesions:
        if not args.kidney_mask:
            p.error("--insert-lesions needs --kidney-mask")
        for path in [args.insert_lesions] + args.kidney_mask:
            check_not_held_out(path)
        ct = read_image(args.insert_lesions)
        mask = read_labelmap(args.kidney_mask[0])
        for m in args.kidney_mask[1:]:
            mask = Image(np.maximum(mask.array, read_labelmap(m).array), mask.geometry)
        stem = re.sub(r"\W", "_", Path(args.insert_lesions).name.split(".")[0])
        for i in range(args.n):
            case_id = f"case_{stem}_{i:03d}"
            ct_i, lab_i = insert_lesions(ct, mask, _case_seed(args.seed, case_id), config, source=args.insert_lesions)
            _write(out, case_id, ct_i, lab_i)
            log["cases"][case_id] = {"source": str(args.insert_lesions)}
            print(case_id)
    else:
        maps = dict(find_label_maps(args.kits23))
        if not maps:
            p.error(f"no KiTS23 label maps in {args.kits23}")
        ids = args.cases or sorted(np.random.default_rng(args.seed).choice(sorted(maps), min(args.n, len(maps)),
                                                                           replace=False).tolist())
        for case_id in ids:
            check_not_held_out(maps[case_id], case_id=case_id)
            ct, labels = make_case(read_labelmap(maps[case_id]), _case_seed(args.seed, case_id), config)
            _write(out, case_id, ct, labels)
            log["cases"][case_id] = {"source": str(maps[case_id]), "spacing": list(ct.geometry.spacing)}
            print(case_id, ct.geometry.size)
    (out / "synthetic.json").write_text(json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
