"""Where a model's tumor and cyst errors lie on synthetic cases whose anatomy is known exactly.

For each case of a synthetic set made with ``training.synthetic --anatomy`` (every voxel's organ is in
``anatomy.nii.gz``), and for each lesion kind (tumor, cyst):
- false voxels (predicted as the kind, another label in the reference) by what they are: kidney, the other
  lesion kind, the renal hilum (sinus fat, collecting system, renal vessels), liver, spleen, bowel (stomach,
  duodenum, small bowel, colon), great vessels, or anything else;
- missed voxels (the kind in the reference, another label predicted) by what the model called them, and how
  much of the reference lay outside every stage-2 box (stage 2 never saw it: a cascade limit, not stage 2's);
- the false voxels farther than NEAR_MM from every reference voxel of the kind: separate false pieces, as
  opposed to a true lesion drawn too large;
- how far the painted lesion stands out from the kidney tissue within 10 mm of it (``training.ambiguity``): mean
  HU of each and their separation (difference over the pooled standard deviation), so that a low Dice can be told
  apart from a lesion the CT hardly shows. The totals give the rank correlation of separation and per-case Dice.
This says whether a low lesion Dice is confusion inside the kidney (tumor taken for kidney, tumor for cyst)
or false lesion outside it, and where: the question each next data or training change has to answer. Held-out
synthetic sets only; the real CTs have no lesion and are measured by ``benchmarks/real_ct.py``.

Writes OUT/lesion_errors.csv (one row per case and kind: volumes in mL, the Dice, the contrast; all of a case's
lesions of one kind together) and OUT/lesion_errors.md (totals), and prints the totals.
Usage: python benchmarks/lesion_errors.py --synthetic DIR [--model default] [-o OUT] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import ndimage, stats

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

from KidneyTumorSegLib.atomic import write_csv, write_text  # noqa: E402
from KidneyTumorSegLib.geometry import Geometry  # noqa: E402
from KidneyTumorSegLib.image_io import read_image, read_labelmap  # noqa: E402
from KidneyTumorSegLib.labels import Label  # noqa: E402
from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade  # noqa: E402
from training.ambiguity import lesion_contrast  # noqa: E402
from training.datasets import discover  # noqa: E402
from training.datasets.layouts import DatasetError  # noqa: E402
from training.datasets.negatives import read_anatomy  # noqa: E402

KINDS = {"tumor": Label.TUMOR, "cyst": Label.CYST}
# Background of the reference, grouped by the anatomy map's organ names; every other name is "other".
GROUPS = {"hilum": ("renal_sinus_fat", "collecting_system", "renal_vessel"), "liver": ("liver",),
          "spleen": ("spleen",), "bowel": ("stomach", "duodenum", "small_bowel", "colon"),
          "vessels": ("aorta", "inferior_vena_cava", "portal_splenic_vein", "other_vessel")}
FALSE_IN = ("kidney", "other_lesion") + tuple(GROUPS) + ("other",)
MISSED_AS = ("background", "kidney", "other_lesion")
NEAR_MM = 5.0  # a false voxel within this of the true lesion belongs to it (an edge drawn too far)
VOLUMES = (["reference_ml", "predicted_ml", "correct_ml"] + [f"false_in_{g}" for g in FALSE_IN]
           + [f"missed_as_{g}" for g in MISSED_AS] + ["missed_outside_boxes", "false_beyond_near_mm"])
CONTRAST = ["lesion_hu", "kidney_hu_near", "separation"]
COLUMNS = ["case", "kind"] + VOLUMES + ["dice"] + CONTRAST


def outside_boxes(mask: np.ndarray, geometry: Geometry, boxes: Sequence) -> np.ndarray:
    """The voxels of ``mask`` whose centre lies outside every stage-2 box's LPS extent (``KidneyBox.lps_min`` to
    ``lps_max``: exact for grids along the LPS axes, as the synthetic cases are; larger than the box on an
    oblique grid)."""
    idx = np.argwhere(mask)
    lps = geometry.index_to_physical(idx[:, ::-1].astype(float)) if len(idx) else np.zeros((0, 3))
    inside = np.zeros(len(idx), bool)
    for box in boxes:
        inside |= np.all((lps >= np.subtract(box.lps_min, 1e-6)) & (lps <= np.add(box.lps_max, 1e-6)), axis=1)
    out = np.zeros(mask.shape, bool)
    out[tuple(idx[~inside].T)] = True
    return out


def lesion_errors(pred: np.ndarray, ref: np.ndarray, anatomy: np.ndarray, vocabulary: Dict[str, int],
                  voxel_ml: float, outside: Optional[np.ndarray] = None,
                  spacing_zyx: Optional[Sequence[float]] = None, ct: Optional[np.ndarray] = None) -> List[dict]:
    """One row per lesion kind (tumor, cyst): volumes in mL of the reference, the prediction, their overlap,
    the false voxels by FALSE_IN group and the missed voxels by MISSED_AS group (each sums to its total), the
    reference's volume within ``outside`` (voxels no stage-2 box held) and, with ``spacing_zyx`` (mm), the false
    volume farther than NEAR_MM from the reference lesion; with the ``ct`` (HU) too, the CONTRAST columns (None
    where not known); the kind's Dice (None where neither has it)."""
    if not pred.shape == ref.shape == anatomy.shape == (pred.shape if ct is None else ct.shape):
        raise ValueError(f"Prediction {pred.shape}, reference {ref.shape}, anatomy {anatomy.shape} and CT "
                         f"{None if ct is None else ct.shape} must share one grid.")
    group_of = np.zeros(max(vocabulary.values(), default=0) + 1, np.int8)  # 0: other
    for i, names in enumerate(GROUPS.values(), start=1):
        for name in names:
            if name in vocabulary:
                group_of[vocabulary[name]] = i
    rows = []
    for kind, label in KINDS.items():
        other = int(Label.CYST if label == Label.TUMOR else Label.TUMOR)
        p, r = pred == label, ref == label
        false, missed = p & ~r, r & ~p
        # distance (mm) from the reference lesion: for false pieces far from it and the kidney tissue beside it
        dist = (ndimage.distance_transform_edt(~r, sampling=spacing_zyx) if spacing_zyx is not None and r.any()
                else None)
        row = {"kind": kind, "reference_ml": r.sum() * voxel_ml, "predicted_ml": p.sum() * voxel_ml,
               "correct_ml": (p & r).sum() * voxel_ml,
               "false_in_kidney": (false & (ref == Label.KIDNEY)).sum() * voxel_ml,
               "false_in_other_lesion": (false & (ref == other)).sum() * voxel_ml}
        in_background = false & (ref == Label.BACKGROUND)
        found = anatomy[in_background]
        known = found < len(group_of)  # an id beyond the vocabulary counts as "other"
        counts = np.bincount(np.where(known, group_of[np.where(known, found, 0)], 0), minlength=len(GROUPS) + 1)
        row.update({f"false_in_{g}": counts[i] * voxel_ml for i, g in enumerate(GROUPS, start=1)})
        row["false_in_other"] = counts[0] * voxel_ml
        row.update({"missed_as_background": (missed & (pred == Label.BACKGROUND)).sum() * voxel_ml,
                    "missed_as_kidney": (missed & (pred == Label.KIDNEY)).sum() * voxel_ml,
                    "missed_as_other_lesion": (missed & (pred == other)).sum() * voxel_ml,
                    "missed_outside_boxes": None if outside is None else (r & outside).sum() * voxel_ml,
                    "false_beyond_near_mm": None if spacing_zyx is None else
                    (false.sum() if dist is None else (dist[false] > NEAR_MM).sum()) * voxel_ml,
                    "dice": 2 * (p & r).sum() / (p.sum() + r.sum()) if p.any() or r.any() else None})
        row.update(dict(zip(CONTRAST, (None,) * 3 if ct is None or dist is None else
                            lesion_contrast(ct, r, ref == Label.KIDNEY, dist))))
        rows.append({k: (round(float(v), 4 if k == "dice" else 2) if k != "kind" and v is not None else v)
                     for k, v in row.items()})
    return rows


def totals_markdown(rows: List[dict]) -> str:
    """Per kind: the summed volumes, and each error group's share of its kind's false or missed total; then, per
    kind with a separation known in at least 3 cases, a line on separation against the case's Dice."""
    lines = ["| kind | reference mL | predicted mL | correct mL | false mL, by where | missed mL, called | "
             "outside every box mL |", "|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        s = {c: sum(r[c] or 0.0 for r in mine) for c in VOLUMES}
        boxes = "-" if any(r["missed_outside_boxes"] is None for r in mine) else f"{s['missed_outside_boxes']:.1f}"
        false = sum(s[f"false_in_{g}"] for g in FALSE_IN)
        missed = sum(s[f"missed_as_{g}"] for g in MISSED_AS)
        where = ", ".join(f"{g} {s[f'false_in_{g}']:.1f}" for g in FALSE_IN if s[f"false_in_{g}"] > 0)
        called = ", ".join(f"{g} {s[f'missed_as_{g}']:.1f}" for g in MISSED_AS if s[f"missed_as_{g}"] > 0)
        beyond = ("" if any(r["false_beyond_near_mm"] is None for r in mine) else
                  f"; {s['false_beyond_near_mm']:.1f} of it over {NEAR_MM:g} mm from a true {kind}")
        lines.append(f"| {kind} ({len(mine)} cases) | {s['reference_ml']:.1f} | {s['predicted_ml']:.1f} | "
                     f"{s['correct_ml']:.1f} | {false:.1f}: {where or '-'}{beyond} | {missed:.1f}: {called or '-'} | "
                     f"{boxes} |")
    return "\n".join(lines + [line for kind in KINDS if (line := _contrast_line(rows, kind))])


def _contrast_line(rows: List[dict], kind: str) -> str:
    """Whether the cases whose lesion stands out least are those the model gets wrong: the rank correlation of
    separation and per-case Dice (2 x correct / (predicted + reference)) over the cases with both known."""
    pairs = [(r["separation"], r["dice"]) for r in rows
             if r["kind"] == kind and r.get("separation") is not None and r.get("dice") is not None]
    if len(pairs) < 3:
        return ""
    sep, dice = np.array(pairs, dtype=float).T
    rho = ("undefined (one value throughout)" if np.ptp(sep) == 0 or np.ptp(dice) == 0 else
           f"{stats.spearmanr(sep, dice)[0]:.2f}")
    low = sep < np.median(sep)
    halves = (f"; mean Dice {dice[low].mean():.3f} below the median separation, {dice[~low].mean():.3f} at or above "
              "it" if low.any() else "")
    return (f"\n{kind}: separation from the kidney beside it (|HU difference| / pooled SD) median "
            f"{np.median(sep):.2f} over {len(pairs)} cases; Spearman rho with the case's Dice {rho}{halves}.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--synthetic", type=Path, required=True, help="held-out synthetic cases made with --anatomy")
    p.add_argument("--model", default="default")
    p.add_argument("-o", "--output", type=Path, default=Path("lesion_errors"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--box-growth", type=int, help="stage-2 box growths (CascadeConfig.box_growth; default: its own)")
    args = p.parse_args(argv)
    options = SegmentOptions(model=args.model, device=args.device, box_growth=args.box_growth, overwrite=True)
    cascade = load_cascade(options)
    rows = []
    for case in discover(args.synthetic):
        image, ref = read_image(case.image_path), read_labelmap(case.label_path)
        try:
            anatomy, vocabulary = read_anatomy(case.image_path)
        except DatasetError as e:
            raise SystemExit(f"{case.case_id} has no anatomy map: lesion_errors needs cases made with "
                             f"training.synthetic --anatomy ({e})")
        if not (ref.geometry.is_close(image.geometry, atol=1e-3) and anatomy.geometry.is_close(image.geometry,
                                                                                                atol=1e-3)):
            raise SystemExit(f"{case.case_id}: its labels or anatomy map lie on another grid than its CT.")
        result = cascade.segment(image)  # the cascade itself, for its boxes
        outside = outside_boxes(np.isin(ref.array, [int(v) for v in KINDS.values()]), ref.geometry, result.boxes)
        voxel_ml = float(np.prod(ref.geometry.spacing)) / 1000.0
        rows += [{"case": case.case_id, **r} for r in
                 lesion_errors(result.labels, ref.array, anatomy.array, vocabulary, voxel_ml, outside,
                               ref.geometry.spacing[::-1], image.array)]
        print(f"{case.case_id}: {result.timings['total_s']:.1f} s", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    write_csv(args.output / "lesion_errors.csv", COLUMNS, rows)
    md = totals_markdown(rows)
    write_text(args.output / "lesion_errors.md", f"Model {args.model}, box growth {cascade.config.box_growth}, "
                                                  f"stage-2 mirror axes {list(cascade.config.stage2_mirror_axes)}, "
                                                  f"cases {args.synthetic}\n\n{md}\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
