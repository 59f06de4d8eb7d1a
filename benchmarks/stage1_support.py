"""What would a "stage-1 support" cut do: stage 2's labels farther than X mm from stage 1's foreground -> background.

Stage 2 may label tissue that stage 1 did not count as kidney (on 3D-IRCADb, v4's stage 2 calls part of the
liver kidney). This measures, for each distance X, what the cut would remove, without changing the cascade:
- on a held-out synthetic set (``--synthetic DIR``, made by ``training.synthetic --anatomy``): the mean
  kidney-and-masses, tumor and cyst Dice after the cut, the share of true foreground and true tumor voxels it
  removes (pooled over the cases), and the false foreground and the foreground in the liver or spleen left;
- on CTs without a reference (``--ct CT ...``): only the volume of each label beyond X.
The cut is applied to the final labels (after post-processing), so it approximates a cut made inside the
cascade. Decision 93 (``docs/decisions.md``) used it, with a rule written first, and left the cut out.

Writes OUT/stage1_support.csv (one row per case and X) and OUT/stage1_support.md (the totals per X).
Usage: python benchmarks/stage1_support.py (--synthetic DIR | --ct CT [CT ...]) [--model default] [-o OUT]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

from KidneyTumorSegLib.atomic import write_csv, write_text  # noqa: E402
from KidneyTumorSegLib.geometry import Geometry  # noqa: E402
from KidneyTumorSegLib.image_io import read_image, read_labelmap  # noqa: E402
from KidneyTumorSegLib.labels import Label, merge_auxiliary  # noqa: E402
from KidneyTumorSegLib.network_input import canonical_ct, stage_input  # noqa: E402
from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade  # noqa: E402
from KidneyTumorSegLib.preprocessing import resample_to_reference, undo_reorient  # noqa: E402
from training.datasets.negatives import read_anatomy  # noqa: E402

DISTANCES_MM = (4.0, 6.0, 8.0, 12.0, 16.0)
ORGANS = ("liver", "spleen")
COLUMNS = ["case", "x_mm", "kidney_and_masses_dice", "tumor_dice", "cyst_dice", "true_voxels", "true_tumor_voxels",
           "false_ml", "in_liver_spleen_ml", "kidney_ml", "tumor_ml", "cyst_ml"]


def distance_from(mask: np.ndarray, geometry: Geometry, target: Geometry) -> Optional[np.ndarray]:
    """Distance (mm) from the centres of ``mask``'s voxels (on ``geometry``) to each voxel of ``target``, linearly
    resampled (at 4 mm the mask's face reads about 2 mm); None when the mask is empty. Outside ``geometry`` the
    nearest edge voxel's distance is taken (the resampler's extrapolation)."""
    if not mask.any():
        return None
    d = ndimage.distance_transform_edt(~mask, sampling=geometry.spacing[::-1]).astype(np.float32)
    return resample_to_reference(d, geometry, target, "linear")


def stage1_distance(cascade, image) -> Optional[np.ndarray]:
    """Distance (mm) of each voxel of ``image``'s grid from stage 1's foreground (main classes; every component,
    not only those the cascade boxes: the most lenient cut); None when stage 1 finds nothing. Runs stage 1 again
    beside ``segment`` (deterministic on the CPU)."""
    pre = cascade.stage1.preprocessing
    ct, grid, reo = canonical_ct(image, pre)
    x1 = stage_input(ct, grid, pre)
    probs = cascade.stage1_probabilities(x1.image)
    d = distance_from(merge_auxiliary(probs, cascade.stage1.labels)[0] < 0.5, x1.geometry, grid)
    return None if d is None else undo_reorient(d, reo)[0]


def _dice(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    total = int(a.sum() + b.sum())
    return None if total == 0 else 2.0 * float((a & b).sum()) / total


def cut_rows(name: str, labels: np.ndarray, distance: Optional[np.ndarray], voxel_ml: float,
             distances: Sequence[float], ref: Optional[np.ndarray] = None,
             organs: Optional[np.ndarray] = None) -> List[Dict]:
    """One row per X (and X = inf: no cut) for one case; Dice and true/false figures only with ``ref``."""
    rows = []
    for x in list(distances) + [float("inf")]:
        cut = labels.copy()
        if distance is not None:
            cut[distance > x] = Label.BACKGROUND
        row = {"case": name, "x_mm": x}
        row.update({f"{k.name.lower()}_ml": round(float((cut == k).sum()) * voxel_ml, 2)
                    for k in (Label.KIDNEY, Label.TUMOR, Label.CYST)})
        if ref is not None:
            fg, true_fg = cut > 0, ref > 0
            tumor, true_tumor = cut == Label.TUMOR, ref == Label.TUMOR
            row.update(kidney_and_masses_dice=_dice(fg, true_fg), tumor_dice=_dice(tumor, true_tumor),
                       cyst_dice=_dice(cut == Label.CYST, ref == Label.CYST), true_voxels=int((fg & true_fg).sum()),
                       true_tumor_voxels=int((tumor & true_tumor).sum()),
                       false_ml=round(float((fg & ~true_fg).sum()) * voxel_ml, 2))
            if organs is not None:
                row["in_liver_spleen_ml"] = round(float((fg & ~true_fg & organs).sum()) * voxel_ml, 2)
        rows.append(row)
    return rows


def totals(rows: List[Dict]) -> List[Dict]:
    """Per X: mean Dice over the cases where the reference or the prediction has the structure, the share of the
    correctly found (tumor) voxels the cut removes (pooled over cases, against no cut), and summed volumes."""
    out = []
    full = [r for r in rows if r["x_mm"] == float("inf")]
    for x in sorted({r["x_mm"] for r in rows}):
        mine = [r for r in rows if r["x_mm"] == x]
        t = {"x_mm": x}
        for k in ("kidney_and_masses_dice", "tumor_dice", "cyst_dice"):
            values = [r[k] for r in mine if r.get(k) is not None]
            t[k] = round(float(np.mean(values)), 4) if values else None
        for k in ("true_voxels", "true_tumor_voxels"):
            base = sum(r.get(k) or 0 for r in full)
            t[f"{k}_removed_pct"] = round(100.0 * (1 - sum(r.get(k) or 0 for r in mine) / base), 2) if base else None
        for k in ("false_ml", "in_liver_spleen_ml", "kidney_ml", "tumor_ml", "cyst_ml"):
            values = [r[k] for r in mine if r.get(k) is not None]
            t[k] = round(float(sum(values)), 1) if values else None
        out.append(t)
    return out


def totals_markdown(table: List[Dict], model: str, data: str) -> str:
    keys = [k for k in table[0] if k != "x_mm" and any(t[k] is not None for t in table)]
    lines = [f"Stage-1 support cut, model {model}, {data}", "",
             "| X mm | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for t in table:
        x = "no cut" if t["x_mm"] == float("inf") else f"{t['x_mm']:g}"
        lines.append(f"| {x} | " + " | ".join("–" if t[k] is None else f"{t[k]:g}" for k in keys) + " |")
    return "\n".join(lines)


def _cases(args) -> List[tuple]:
    """(name, CT path, reference path or None): a CT is named by its folder, or by its file in a folder "ct"."""
    if args.ct:
        return [(p.name.split(".")[0] if p.parent.name in ("ct", "") else p.parent.name, p, None)
                for p in map(Path, args.ct)]
    folders = sorted(p for p in args.synthetic.iterdir() if (p / "imaging.nii.gz").is_file())
    return [(f.name, f / "imaging.nii.gz", f / "segmentation.nii.gz") for f in folders]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", type=Path, help="a held-out synthetic set (training.synthetic --anatomy)")
    source.add_argument("--ct", nargs="+", help="CTs without a reference: volumes beyond X only")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--distances", type=float, nargs="+", default=list(DISTANCES_MM), help="X values (mm)")
    p.add_argument("-o", "--output", type=Path, default=Path("stage1_support"))
    args = p.parse_args(argv)
    cascade = load_cascade(SegmentOptions(model=args.model, device=args.device))
    rows = []
    for name, ct_path, ref_path in _cases(args):
        image = read_image(ct_path)
        labels = cascade.segment(image).labels
        ref = organs = None
        if ref_path is not None:
            ref = read_labelmap(ref_path).array
            anatomy, vocab = read_anatomy(ct_path)
            organs = np.isin(anatomy.array, [vocab[o] for o in ORGANS if o in vocab])
        rows += cut_rows(name, labels, stage1_distance(cascade, image), float(np.prod(image.geometry.spacing)) / 1000,
                         args.distances, ref, organs)
        print(name, flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    write_csv(args.output / "stage1_support.csv", COLUMNS, rows)
    md = totals_markdown(totals(rows), args.model, str(args.synthetic or "CTs without a reference"))
    write_text(args.output / "stage1_support.md", md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
