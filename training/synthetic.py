"""Synthetic CT-like volumes around REAL KiTS23 kidney/tumor/cyst shapes (SynthSeg-style randomisation).

``make_case(label_map, rng)``: the real label map is reoriented to LPS and downsampled (nearest) to a random
working spacing; these labels are returned unchanged, and the CT is painted from them, so image and
labels agree exactly whatever the downsampling did. Everything else is invented with random parameters
(``synth_anatomy``: body, fat, muscles, spine, ribs, lung bases, liver, spleen, bowel and colon, iliac
wings, bladder, vessels). 40 % of cases are unenhanced (kidney 10-45 HU, blood 30-55 HU, organs without
enhancement), the rest contrast-enhanced (kidney 90-250 HU, sometimes cortico-medullary differentiation).
Tumors: 30-200 HU with contrast, 12-40 HU brighter or darker than the kidney without; smooth heterogeneity,
sometimes a necrotic core. Cysts: 0-20 HU and always 12 HU or more below their kidney.
Then a smooth multiplicative bias on HU + 1000 (air stays air), blur (in-plane PSF and slice thickness),
correlated Gaussian noise (sd 5-30 HU), sometimes a circular reconstruction field of view (-1024 outside).
All randomness comes from the given ``numpy.random.Generator``: the same seed gives the same case.

``insert_lesions(ct, kidney_mask, rng)``: a real CT with kidney masks gets synthetic tumors/cysts blended
into the kidneys (soft edge, noise matched to the CT's own noise). The held-out example CT
(shared/data/ct/example_ct*) is refused, as is any copy of it (checksum / geometry).

With ``--anatomy``, each case is painted from a REAL whole-abdomen label map instead (``synth_real``): the
KiTS23 kidneys replace the map's own, and ``anatomy.nii.gz`` (every other structure, values in
``OUTDIR/anatomy_labels.json``) is written beside the CT.

Command line (writes the KiTS23 layout, ``OUTDIR/case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``):
    python -m training.synthetic --kits23 DIR -o OUTDIR -n N --seed S [--spacing LO HI] [--extend-mm LO HI]
        [--workers W] [--exclude DIR]
    python -m training.synthetic --kits23 DIR --anatomy DIR [DIR ...] -o OUTDIR -n N --seed S [--workers W]
        [--exclude DIR] [--bowel-walls] [--bowel-by-kidneys] [--extrarenal-pelvis] [--large-organs]
        [--collapsed-loops] [--contrast-dose] [--packed-bowel] [--lesion-contrast] [--organ-contact]
        [--extra-cysts]
    python -m training.synthetic --insert-lesions CT --kidney-mask M [M ...] -o OUTDIR -n N --seed S
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.image_io import read_image, read_labelmap, write_image, write_labelmap
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.preprocessing import reorient, resample

from KidneyTumorSegLib.atomic import write_text

from .anatomy_maps import ANATOMY, find_anatomy_maps, load_anatomy, source_table
from .datasets.heldout import check_not_held_out
from .painter_options import (PAINTER_OPTIONS, add_painter_options, args_config, dest,  # noqa: F401
                              real_config)  # real_config: re-exported for the tests
from .synth_real import make_real_case

from .synth_anatomy import Painter, SynthConfig, acquire, paint_anatomy, smooth_field, uniform

__all__ = ["SynthConfig", "downsample_labels", "make_case", "insert_lesions", "find_label_maps", "main"]


def downsample_labels(label_map: Image, spacing_xyz) -> Image:
    """The label map on the LPS grid at ``spacing_xyz`` (nearest): exactly the labels make_case returns."""
    arr, g, _ = reorient(label_map.array, label_map.geometry, "LPS")
    arr, g = resample(arr, g, spacing_xyz, "nearest")
    return Image(arr.astype(np.uint8), g)


def _extend(labels: Image, below_mm: float, above_mm: float) -> Image:
    """Pad the (LPS) grid with background slices so that it reaches ``below_mm`` under the kidneys' lowest
    slice and ``above_mm`` over their highest: the pelvis and the lung bases that a whole-abdomen CT shows
    (many KiTS23 scans stop close to the kidneys). Never crops; the labels keep their physical places."""
    lab, g = labels.array, labels.geometry
    z = np.nonzero(lab.any(axis=(1, 2)))[0]
    if not len(z):
        return labels
    sz = g.spacing[2]
    lo = max(0, int(np.ceil(below_mm / sz)) - int(z[0]))
    hi = max(0, int(np.ceil(above_mm / sz)) - (lab.shape[0] - 1 - int(z[-1])))
    if not lo and not hi:
        return labels
    origin = g.index_to_physical(np.array([[0.0, 0.0, -lo]]))[0]
    grid = Geometry(g.spacing, origin, g.direction, (g.size[0], g.size[1], g.size[2] + lo + hi))
    return Image(np.pad(lab, ((lo, hi), (0, 0), (0, 0))), grid)


def make_case(label_map: Image, rng: np.random.Generator, config: SynthConfig = SynthConfig(),
              spacing: Optional[Sequence[float]] = None) -> Tuple[Image, Image]:
    """(synthetic CT as int16 HU, labels) on the LPS grid at a random (or the given) spacing."""
    if spacing is None:
        s_xy = uniform(rng, config.spacing)
        spacing = (s_xy, s_xy, uniform(rng, config.spacing))
    labels = downsample_labels(label_map, spacing)
    if np.any(labels.array > max(Label)):
        raise ValueError(f"Label values must be 0-3 (KiTS23), found up to {int(labels.array.max())}.")
    if config.extend_mm[1] > 0:
        labels = _extend(labels, uniform(rng, config.extend_mm), uniform(rng, (40.0, 120.0)))
    lab, g = labels.array, labels.geometry
    P = Painter(lab.shape, g.spacing[::-1], rng)
    zz, yy, xx = P.axes
    fg = lab > 0
    unenhanced = rng.random() < config.unenhanced_p

    # Anatomy anchors from the real kidneys: midline between the two largest components, spine behind.
    cc, n = ndimage.label(fg)
    if n:
        sizes = np.bincount(cc.ravel())[1:]
        cents = [np.array(ndimage.center_of_mass(cc == i + 1)) * P.sp for i in np.argsort(sizes)[::-1][:2]]
        fz, fy = np.mean([c[0] for c in cents]), np.mean([c[1] for c in cents])
        cx = np.mean([c[2] for c in cents]) if len(cents) == 2 else xx[-1] / 2
        box = ndimage.find_objects(fg.astype(np.uint8))[0]
        top_z = box[0].stop * P.sp[0]
        pts = np.argwhere(fg)[:: max(1, int(fg.sum()) // 5000)] * P.sp
    else:
        fz, fy, cx, top_z, pts = zz[-1] / 2, yy[-1] * 0.55, xx[-1] / 2, zz[-1] * 0.7, None
    paint_anatomy(P, (fz, fy, cx, top_z, pts), config, unenhanced)

    # Perirenal fat, then kidney, tumor, cyst from the real labels.
    if n:
        sl = tuple(slice(max(s.start - 8, 0), s.stop + 8) for s in box)
        near = ndimage.distance_transform_edt(~fg[sl], sampling=P.sp) < uniform(rng, (2, 10))
        P.ct[sl][near & ~fg[sl]] = uniform(rng, config.fat_hu) + 10 * rng.standard_normal(int((near & ~fg[sl]).sum()))
        sub, view = lab[sl], P.ct[sl]
        k_range = config.unenhanced_kidney_hu if unenhanced else config.kidney_hu
        k_hu = uniform(rng, k_range)
        kid = sub == Label.KIDNEY
        view[kid] = k_hu + 8 * smooth_field(sub.shape, rng, 3)[kid]
        if not unenhanced and rng.random() < config.corticomedullary_p:  # darker medulla below a 4-8 mm cortex
            deep = kid & (ndimage.distance_transform_edt(sub > 0, sampling=P.sp) > uniform(rng, (4, 8)))
            view[deep] -= uniform(rng, (0, k_hu - k_range[0]))
        tum = sub == Label.TUMOR
        if tum.any():
            t_hu = k_hu + rng.choice([-1, 1]) * uniform(rng, (12, 40)) if unenhanced else uniform(rng, config.tumor_hu)
            view[tum] = (t_hu + uniform(rng, (10, 40)) * smooth_field(sub.shape, rng, 3))[tum]
            if rng.random() < config.necrosis_p:
                d = ndimage.distance_transform_edt(tum, sampling=P.sp)
                core = d > d.max() * uniform(rng, (0.4, 0.7))
                view[core] = uniform(rng, (5, 30)) + 5 * rng.standard_normal(int(core.sum()))
        cyst = sub == Label.CYST
        c_hu = min(uniform(rng, config.cyst_hu), k_hu - 12)  # a cyst is always darker than its kidney
        view[cyst] = c_hu + 2 * rng.standard_normal(int(cyst.sum()))
    return Image(acquire(P.ct, P.sp, rng, config), g), labels


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
    P = Painter(arr.shape, sp, rng)
    for _ in range(int(rng.integers(n_lesions[0], n_lesions[1] + 1))):
        centre = pts[rng.integers(len(pts))] * sp
        r = uniform(rng, (5, 25))
        sl, m = P.ellipsoid(centre, tuple(r * rng.uniform(0.8, 1.2, 3)), 0.2)
        if not m.any():
            continue
        is_tumor = rng.random() < 0.6
        hu = uniform(rng, config.tumor_hu if is_tumor else config.cyst_hu)
        tex = hu + (uniform(rng, (10, 40)) * smooth_field(m.shape, rng, 3) if is_tumor else 0)
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


def _write(out: Path, case_id: str, ct: Image, labels: Image, anatomy: Optional[Image] = None) -> None:
    d = out / case_id
    d.mkdir(parents=True, exist_ok=True)
    write_image(ct.array, ct.geometry, d / "imaging.nii.gz", overwrite=True)
    write_labelmap(labels.array, labels.geometry, d / "segmentation.nii.gz", overwrite=True)
    if anatomy is not None:
        write_labelmap(anatomy.array, anatomy.geometry, d / "anatomy.nii.gz", overwrite=True)


def _synth_one(job):
    path, seed, case_id, config, out = job
    ct, labels = make_case(read_labelmap(path), _case_seed(seed, case_id), config)
    _write(out, case_id, ct, labels)
    return case_id, {"kits_case": case_id, "source": str(path), "spacing": list(ct.geometry.spacing)}


def _synth_real_one(job):
    kits_path, anatomy_path, seed, case_id, config, out, kits_case = job
    t0 = time.perf_counter()
    ct, labels, anatomy, info = make_real_case(load_anatomy(anatomy_path), read_labelmap(kits_path),
                                               _case_seed(seed, case_id), config)
    _write(out, case_id, ct, labels, anatomy)
    return case_id, {"kits_case": kits_case, "source": str(kits_path), "anatomy": str(anatomy_path), **info,
                     "seconds": round(time.perf_counter() - t0, 1)}  # read, paint and write, one process


SOURCE_WEIGHT = {"totalseg": 3.0, "amos": 1.0, "flare22": 6.0}


def _real_jobs(args, maps: dict, excluded_maps: set, out: Path) -> list:
    """One job per case: KiTS23 cases drawn without replacement, anatomy maps in a seeded shuffled cycle."""
    anatomy = [p for p in find_anatomy_maps(args.anatomy) if p.name.split(".")[0] not in excluded_maps]
    if not anatomy:
        raise ValueError("Every anatomy map is excluded; give other --anatomy folders.")
    rng = np.random.default_rng(args.seed)
    ids = args.cases or sorted(rng.choice(sorted(maps), min(args.n, len(maps)), replace=False).tolist())
    # Sources by weight (the 3 TotalSegmentator maps label the most structures; FLARE22 has 50 maps), then
    # each source's maps in a shuffled cycle.
    by_source: dict = {}
    for a in anatomy:
        by_source.setdefault(source_table(a)[0], []).append(a)
    names = sorted(by_source)
    weights = np.array([SOURCE_WEIGHT.get(n, 1.0) for n in names])
    cycles = {n: [by_source[n][i] for i in rng.permutation(len(by_source[n]))] for n in names}
    drawn = rng.choice(len(names), len(ids), p=weights / weights.sum())
    jobs, config = [], args_config(args)
    for n, (kits_id, k) in enumerate(zip(ids, drawn)):
        cycle = cycles[names[k]]
        a = cycle[int((drawn[:n] == k).sum()) % len(cycle)]
        case_id = f"{kits_id}_{re.sub(r'[^0-9A-Za-z]', '', a.name.split('.')[0])}"
        jobs.append((maps[kits_id], a, args.seed, case_id, config, out, kits_id))
    return jobs


@contextmanager
def _pool(workers: int):
    """Worker processes with one BLAS/OpenMP thread each (W workers x W BLAS threads on W cores thrash, and
    spent half their time in the kernel). Fresh (spawned) interpreters read the limits when numpy loads;
    the caller's environment is restored afterwards."""
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: "1" for v in THREAD_VARS})
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


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
    p.add_argument("--extend-mm", type=float, nargs=2, metavar=("LO", "HI"),
                   help="pad each volume to reach LO-HI mm below the kidneys (pelvis, bladder, hips)")
    p.add_argument("--exclude", nargs="+", metavar="DIR", help="skip the KiTS23 cases of these synthetic sets "
                   "(folders with synthetic.json): a test set disjoint from the training set")
    p.add_argument("--workers", type=int, default=1, help="processes (same output for any number)")
    add_painter_options(p)
    p.add_argument("--cases", nargs="+", help="use these KiTS23 case ids instead of a random draw")
    p.add_argument("--anatomy", nargs="+", metavar="DIR", help="real whole-abdomen label maps (TotalSegmentator "
                   "with classes.csv, AMOS, FLARE22) to paint each case from; the KiTS23 kidneys replace theirs")
    args = p.parse_args(argv)
    if any(getattr(args, dest(flag)) for flag in PAINTER_OPTIONS) and not args.anatomy:
        p.error(f"{', '.join(PAINTER_OPTIONS)} change the real-anatomy painter: they go with --anatomy")
    config = SynthConfig(**({"spacing": tuple(args.spacing)} if args.spacing else {}),
                         **({"extend_mm": tuple(args.extend_mm)} if args.extend_mm else {}))
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
        excluded_maps = set()
        for other in args.exclude or ():  # e.g. a held-out test set: none of a training set's sources
            log_path = Path(other) / "synthetic.json" if Path(other).is_dir() else Path(other)
            for case_id, entry in json.loads(log_path.read_text(encoding="utf-8"))["cases"].items():
                maps.pop(entry.get("kits_case", case_id), None)
                if entry.get("anatomy"):
                    excluded_maps.add(Path(entry["anatomy"]).name.split(".")[0])
        unknown = sorted(set(args.cases or ()) - set(maps))
        if unknown:
            p.error(f"--cases: no KiTS23 label map for {', '.join(unknown[:5])} in {args.kits23}"
                    f"{' (or excluded by --exclude)' if args.exclude else ''}; give ids of cases that folder holds")
        if args.anatomy:
            jobs, work = _real_jobs(args, maps, excluded_maps, out), _synth_real_one
            log["config"] = {"real_anatomy": asdict(args_config(args))}
            write_text(out / "anatomy_labels.json", json.dumps(ANATOMY, indent=1))
        else:
            ids = args.cases or sorted(np.random.default_rng(args.seed).choice(
                sorted(maps), min(args.n, len(maps)), replace=False).tolist())
            jobs, work = [(maps[i], args.seed, i, config, out) for i in ids], _synth_one
        for job in jobs:
            check_not_held_out(job[0])
        # Each case has its own seed, so worker processes give exactly the files one process would.
        with _pool(args.workers) if args.workers > 1 else nullcontext() as pool:
            for case_id, entry in (pool.map if pool else map)(work, jobs):
                log["cases"][case_id] = entry
                print(case_id, entry.get("phase", ""), flush=True)
    write_text(out / "synthetic.json", json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
