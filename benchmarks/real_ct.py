"""Real-CT benchmark: one model on every real CT that has reference masks, one table row per case.

Cases: ../shared/data/ct/example_ct.nii.gz (reference kidneys: the TotalSegmentator v1 masks beside it, model-made)
and each folder under ../shared/data/real_ct/ with ct.nii.gz plus either per-structure masks (kidney_left.nii.gz,
kidney_right.nii.gz; liver.nii.gz, spleen.nii.gz optional) or labels.nii.gz + classes.csv (id,name). In a label map
the reference kidney of a side is kidney_<side> ∪ kidney_cyst_<side> (TotalSegmentator codes cysts apart).
These CTs are for validation only: never train or tune a model on them.

Per case ("masses" = predicted tumor + cyst labels):
  * kidney Dice, HD95 mm: every predicted label > 0 vs the union of the reference kidneys (training/metrics.py;
    the references are whole kidneys, lesions included);
  * Dice R / Dice L: each voxel belongs to the side of the nearer reference kidney (Euclidean distance in mm,
    ties go left), as in model_card.py; Dice of that side's prediction (label > 0) vs that side's reference;
  * tumor+cyst mL; of it, the mL farther than 3 voxels (Euclidean, in voxel units) from the reference kidneys,
    and the mL inside the liver or spleen masks ("–" where the case has neither);
  * kidney in liver/spleen mL: the predicted kidney label inside those masks (organ tissue taken for kidney);
  * both found: the prediction (label > 0) overlaps each reference kidney;
  * time s: segment_case end to end (read, cascade, write), on the machine printed under the table.
Writes OUT/<case>/ (label map, .seg.nrrd and the pipeline's QC picture *_qc.png), OUT/real_ct.json and
OUT/real_ct.md (the table, for the model card), and prints the table.
Usage: python benchmarks/real_ct.py [--model default|NAME|FOLDER] [--device cpu] [-o OUT] [--cases NAME ...]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

from benchmarks.machine_info import machine  # noqa: E402
from KidneyTumorSegLib.atomic import write_text  # noqa: E402
from KidneyTumorSegLib.image_io import read_labelmap  # noqa: E402
from KidneyTumorSegLib.labels import Label  # noqa: E402
from KidneyTumorSegLib.models import resolve_model  # noqa: E402
from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade, segment_case  # noqa: E402
from training.metrics import KITS_TOLERANCES_MM, binary_metrics, overlap_metrics  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SIDES = ("right", "left")
ORGANS = ("liver", "spleen")
STRUCTURES = tuple(f"kidney_{s}" for s in SIDES) + ORGANS
OUTSIDE_VOXELS = 3.0
# s0009 is listed as contrast-enhanced, but its reference masks put the aorta at a median 39 HU, the IVC at 33
# and the liver at 54: unenhanced values.
PHASES = {"example_ct": "unenhanced", "ircadb_1.1": "portal venous", "totalseg_s0009": "unenhanced"}
COLUMNS = (("case", "case"), ("phase", "phase"), ("kidney Dice", "kidney_dice"), ("Dice R", "dice_right"),
           ("Dice L", "dice_left"), ("HD95 mm", "hd95_mm"), ("tumor+cyst mL", "masses_ml"),
           ("outside kidneys mL", "outside_kidneys_ml"), ("in liver/spleen mL", "in_liver_spleen_ml"),
           ("kidney in liver/spleen mL", "kidney_in_liver_spleen_ml"),
           ("both found", "both_found"), ("time s", "seconds"))


@dataclass
class Case:
    name: str
    ct: Path
    masks: Dict[str, Path] = field(default_factory=dict)  # structure -> binary mask, or ...
    labels: Optional[Path] = None                         # ... one multi-label map
    classes: Optional[Path] = None                        # with its classes.csv (id,name)


def discover_cases(data: Path = DATA) -> List[Case]:
    """The example CT first, then every usable folder under data/real_ct, sorted by name."""
    cases = []
    ct, masks = data / "ct" / "example_ct.nii.gz", {f"kidney_{s}": data / "ct" / f"example_ct_kidney_{s}.nii.gz"
                                                   for s in SIDES}
    if ct.is_file() and all(p.is_file() for p in masks.values()):
        cases.append(Case("example_ct", ct, masks))
    for folder in sorted(p for p in (data / "real_ct").glob("*") if p.is_dir()):
        ct = folder / "ct.nii.gz"
        masks = {s: folder / f"{s}.nii.gz" for s in STRUCTURES if (folder / f"{s}.nii.gz").is_file()}
        if not ct.is_file():
            continue
        if all(f"kidney_{s}" in masks for s in SIDES):
            cases.append(Case(folder.name, ct, masks))
        elif (folder / "labels.nii.gz").is_file() and (folder / "classes.csv").is_file():
            cases.append(Case(folder.name, ct, labels=folder / "labels.nii.gz", classes=folder / "classes.csv"))
    return cases


def read_classes(path: Path) -> Dict[str, int]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["name"].strip(): int(row["id"]) for row in csv.DictReader(f)}


def masks_from_labels(labels: np.ndarray, classes: Dict[str, int]) -> Dict[str, np.ndarray]:
    """The STRUCTURES a multi-label map names (kidney_<side> includes kidney_cyst_<side>)."""
    parts = {f"kidney_{s}": (f"kidney_{s}", f"kidney_cyst_{s}") for s in SIDES}
    parts.update({o: (o,) for o in ORGANS})
    ids = {s: [classes[n] for n in names if n in classes] for s, names in parts.items()}
    return {s: np.isin(labels, i) for s, i in ids.items() if i}


def reference_masks(case: Case, geometry) -> Dict[str, np.ndarray]:
    files = dict(case.masks) if case.masks else {"labels": case.labels}
    images = {k: read_labelmap(p) for k, p in files.items()}
    for k, img in images.items():
        if not img.geometry.is_close(geometry, atol=1e-4):  # a shifted reference would bias every figure
            raise RuntimeError(f"{case.name}: reference {files[k]} does not lie on the CT's grid")
    if case.labels is not None:
        return masks_from_labels(images["labels"].array, read_classes(case.classes))
    return {k: img.array > 0 for k, img in images.items()}


def voxel_ml(spacing: Sequence[float]) -> float:
    return float(np.prod(spacing)) / 1000.0


def outside_ml(masses: np.ndarray, kidneys: np.ndarray, spacing: Sequence[float],
               voxels: float = OUTSIDE_VOXELS) -> float:
    """mL of ``masses`` farther than ``voxels`` voxels (Euclidean, voxel units) from ``kidneys``."""
    if not kidneys.any():  # EDT of a mask without background is undefined: everything is outside
        return float(np.count_nonzero(masses)) * voxel_ml(spacing)
    far = ndimage.distance_transform_edt(~kidneys) > voxels
    return float(np.count_nonzero(masses & far)) * voxel_ml(spacing)


def in_organs_ml(masses: np.ndarray, organs: Sequence[np.ndarray], spacing: Sequence[float]) -> Optional[float]:
    """mL of ``masses`` inside any of ``organs``; None without organ masks (unknown, not zero)."""
    if not organs:
        return None
    return float(np.count_nonzero(masses & np.logical_or.reduce(list(organs)))) * voxel_ml(spacing)


def side_dice(pred: np.ndarray, sides: Dict[str, np.ndarray], spacing_zyx: Sequence[float]) -> Dict[str, float]:
    """Dice per side: a voxel belongs to the side of the nearer reference kidney (mm; ties go left)."""
    dist = {s: ndimage.distance_transform_edt(~sides[s], sampling=spacing_zyx) for s in SIDES}
    right = dist["right"] < dist["left"]
    return {s: overlap_metrics(pred & zone, sides[s])["dice"] for s, zone in (("right", right), ("left", ~right))}


def both_found(pred: np.ndarray, sides: Dict[str, np.ndarray]) -> bool:
    return all(bool((pred & sides[s]).any()) for s in SIDES)


def case_metrics(labels: np.ndarray, refs: Dict[str, np.ndarray], spacing: Sequence[float]) -> dict:
    """The table's figures for one predicted KiTS label map (z, y, x) on a grid of ``spacing`` (x, y, z) mm."""
    sp_zyx = tuple(reversed(tuple(spacing)))
    pred, masses = labels > 0, np.isin(labels, (Label.TUMOR, Label.CYST))
    sides = {s: refs[f"kidney_{s}"] for s in SIDES}
    kidneys = sides["right"] | sides["left"]
    m = binary_metrics(pred, kidneys, sp_zyx, KITS_TOLERANCES_MM["kidney_and_masses"])
    dice = side_dice(pred, sides, sp_zyx)
    organs = [refs[o] for o in ORGANS if o in refs]
    in_organs = in_organs_ml(masses, organs, spacing)
    kidney_in_organs = in_organs_ml(labels == Label.KIDNEY, organs, spacing)
    return {"kidney_dice": round(m["dice"], 4), "dice_right": round(dice["right"], 4),
            "dice_left": round(dice["left"], 4),
            "hd95_mm": None if math.isnan(m["hd95_mm"]) else round(m["hd95_mm"], 1),  # NaN: no prediction
            "masses_ml": round(float(np.count_nonzero(masses)) * voxel_ml(spacing), 1),
            "outside_kidneys_ml": round(outside_ml(masses, kidneys, spacing), 1),
            "in_liver_spleen_ml": None if in_organs is None else round(in_organs, 1),
            "kidney_in_liver_spleen_ml": None if kidney_in_organs is None else round(kidney_in_organs, 1),
            "both_found": both_found(pred, sides),
            "reference_ml": {s: round(float(np.count_nonzero(r)) * voxel_ml(spacing), 1) for s, r in refs.items()}}


def run_case(case: Case, cascade, options: SegmentOptions, out: Path) -> dict:
    result = segment_case(case.ct, out / case.name, cascade, options)
    pred = read_labelmap(result.outputs["labelmap"])
    row = {"case": case.name, "phase": PHASES.get(case.name, "unknown"),
           **case_metrics(pred.array, reference_masks(case, pred.geometry), pred.geometry.spacing),
           "seconds": round(result.seconds, 1), "qc_png": str(result.outputs["qc"]), "message": result.message}
    return row


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if "dice" in key else f"{value:.1f}"
    return str(value)


def markdown(rows: List[dict], model: str, machine_name: str) -> str:
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(k, r[k]) for _, k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines + ["", f"Model {model}; machine: {machine_name}. Dice/HD95: all predicted labels vs the "
                              "reference kidneys; outside = farther than 3 voxels from them."])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help="'default', a registered model name, or a model folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--box-growth", type=int, help="stage-2 box growths (CascadeConfig.box_growth; default: its own)")
    p.add_argument("-o", "--output", type=Path, help="output folder (default: a new temporary folder)")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default: ../shared/data)")
    p.add_argument("--cases", nargs="+", help="only these case names (default: all)")
    args = p.parse_args(argv)
    cases = [c for c in discover_cases(args.data) if not args.cases or c.name in args.cases]
    if not cases:
        p.error(f"no cases found under {args.data}" + (f" named {args.cases}" if args.cases else ""))
    out = args.output or Path(tempfile.mkdtemp(prefix="real_ct_"))
    out.mkdir(parents=True, exist_ok=True)
    options = SegmentOptions(model=args.model, device=args.device, box_growth=args.box_growth, qc=True,
                             overwrite=True)
    model = resolve_model(args.model).name
    cascade = load_cascade(options)
    rows = []
    for i, case in enumerate(cases, 1):
        rows.append(run_case(case, cascade, options, out))
        print(f"[{i}/{len(cases)}] {case.name}: {rows[-1]['seconds']} s", flush=True)
    report = {"model": model, "device": args.device, "machine": machine(args.device),
              "box_growth": cascade.config.box_growth, "stage2_mirror_axes": list(cascade.config.stage2_mirror_axes),
              "outside_voxels": OUTSIDE_VOXELS,
              "cases": rows}
    write_text(out / "real_ct.json", json.dumps(report, indent=1))
    md = markdown(rows, model, report["machine"])
    write_text(out / "real_ct.md", md + "\n")
    print(md + f"\n\nWritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
