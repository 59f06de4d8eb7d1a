"""The default ``--min-confidence`` of a model, chosen from held-out synthetic CTs: their true lesions vs their
false ones. The real validation CTs are only checked at the chosen threshold, never used to choose it.

Lesions are the measurements' lesions (tumor and cyst components, 26-connected, specks below 10 mm^3
left out) of the cascade's label map, each with its confidence (``KidneyTumorSegLib.confidence``: the mean
probability of its class over its voxels).

* True and false: predicted lesions on held-out synthetic CTs (``--synthetic DIR``, KiTS layout) that overlap a
  reference tumor or cyst, and those that touch none. Make them from anatomy maps never used in training, e.g.
  ``python -m training.synthetic --kits23 ../shared/data/kits23/labels --anatomy
  ../shared/data/anatomy/flare22/FLARE22_Tr_0049.nii.gz ../shared/data/anatomy/flare22/FLARE22_Tr_0050.nii.gz
  -o /tmp/conf_test -n 12 --seed 99`` (``benchmarks/candidate.py sets`` makes this set).
* Choice: among thresholds 0.00, 0.01, ..., 1.00, the one that maximises (share of false lesions removed)
  - (share of true lesions removed), counting lesions (Youden's J); ties go to the lowest threshold, which
  removes the fewest lesions. Removed mL of each group are printed beside it.
* Check, not choice: every lesion predicted on the real validation CTs (``benchmarks/real_ct.py``'s cases; none
  has a kidney tumor or cyst, so each is false) and how many of them the chosen threshold removes. They judge
  the model, so they may not set its threshold (decision 104; decision 32 had chosen with them).

Prints the three distributions, the choice, the real CTs at the choice and the per-threshold table; writes
OUT/confidence_threshold.json. Rerun it for every new model (``--model NAME``) and put the result in its registry
entry (``min_confidence``) and model card.
Usage: python benchmarks/confidence_threshold.py --synthetic DIR [--model default] [--device cpu] [-o OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

from benchmarks.machine_info import machine  # noqa: E402
from benchmarks.real_ct import DATA, discover_cases  # noqa: E402
from KidneyTumorSegLib.atomic import write_text  # noqa: E402
from KidneyTumorSegLib.confidence import KINDS, component_means  # noqa: E402
from KidneyTumorSegLib.image_io import read_image, read_labelmap  # noqa: E402
from KidneyTumorSegLib.labels import Label  # noqa: E402
from KidneyTumorSegLib.models import resolve_model  # noqa: E402
from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade  # noqa: E402
from KidneyTumorSegLib.postprocessing import PostprocessingConfig  # noqa: E402

THRESHOLDS = np.round(np.arange(0.0, 1.001, 0.01), 2)


def lesions(labels: np.ndarray, confidence: np.ndarray, spacing, reference: Optional[np.ndarray] = None,
            case: str = "") -> List[dict]:
    """Predicted lesions with kind, mL, confidence and, with a reference label map, whether they overlap a
    reference tumor or cyst."""
    config = PostprocessingConfig()
    voxel_mm3 = float(np.prod(spacing))
    out = []
    for kind, value in KINDS:
        lc, n = ndimage.label(labels == value, structure=config.structure)
        means, sizes = component_means(lc, n, confidence), np.bincount(lc.ravel(), minlength=n + 1)
        hit = None if reference is None else np.bincount(lc.ravel(), weights=(reference >= Label.TUMOR).ravel(),
                                                          minlength=n + 1) > 0
        for j in range(1, n + 1):
            if sizes[j] * voxel_mm3 >= config.min_lesion_mm3:
                out.append({"case": case, "kind": kind, "volume_ml": round(sizes[j] * voxel_mm3 / 1000, 2),
                            "confidence": round(float(means[j]), 4), "true": None if hit is None else bool(hit[j])})
    return out


def segment(cascade, ct_path: Path):
    image = read_image(ct_path)
    result = cascade.segment(image)
    return result.labels, result.confidence, image.geometry


def collect(cascade, synthetic: Optional[Path], data: Path) -> Dict[str, List[dict]]:
    groups: Dict[str, List[dict]] = {"false_real": [], "true_synthetic": [], "false_synthetic": []}
    for case in discover_cases(data):
        labels, conf, g = segment(cascade, case.ct)
        groups["false_real"] += lesions(labels, conf, g.spacing, case=case.name)
        print(f"real {case.name}: {len(groups['false_real'])} false lesions so far", flush=True)
    for folder in sorted(p for p in (synthetic.glob("case_*") if synthetic else []) if p.is_dir()):
        labels, conf, g = segment(cascade, folder / "imaging.nii.gz")
        ref = read_labelmap(folder / "segmentation.nii.gz").array
        for les in lesions(labels, conf, g.spacing, ref, folder.name):
            groups["true_synthetic" if les["true"] else "false_synthetic"].append(les)
        print(f"synthetic {folder.name}: done", flush=True)
    return groups


def sweep(true: List[dict], false: List[dict]) -> List[dict]:
    rows = []
    for t in THRESHOLDS:
        row = {"threshold": float(t)}
        for name, group in (("true", true), ("false", false)):
            gone = [x for x in group if x["confidence"] < t]
            row[f"{name}_removed"] = len(gone) / len(group) if group else 0.0
            row[f"{name}_removed_ml"] = round(sum(x["volume_ml"] for x in gone), 1)
        row["j"] = round(row["false_removed"] - row["true_removed"], 9)  # ties compare equal
        rows.append(row)
    return rows


def choose(rows: List[dict]) -> dict:
    best = max(r["j"] for r in rows)
    return next(r for r in rows if r["j"] == best)  # the lowest threshold among the best


def choose_from_synthetic(groups: Dict[str, List[dict]]) -> Tuple[dict, dict, List[dict]]:
    """(the choice, the real CTs' row at it, the synthetic sweep): chosen by the held-out synthetic lesions alone."""
    empty = [name for name in ("true_synthetic", "false_synthetic") if not groups[name]]
    if empty:  # a sweep against nothing "chooses" 0.00
        raise ValueError(f"No {' and no '.join(n.replace('_', ' ') for n in empty)} lesions on the --synthetic cases: "
                         "the threshold needs both; give a held-out set with lesions the model finds and misses.")
    rows = sweep(groups["true_synthetic"], groups["false_synthetic"])
    chosen = choose(rows)
    real = next(r for r in sweep([], groups["false_real"]) if r["threshold"] == chosen["threshold"])
    return chosen, {k: v for k, v in real.items() if k.startswith(("threshold", "false"))}, rows


def describe(name: str, group: List[dict]) -> str:
    if not group:
        return f"{name}: none"
    c = np.array([x["confidence"] for x in group])
    lines = [f"{name}: {len(group)} lesions, {sum(x['volume_ml'] for x in group):.1f} mL; confidence min "
             f"{c.min():.3f}, median {np.median(c):.3f}, max {c.max():.3f}"]
    lines += [f"    {x['case']:<28} {x['kind']:<5} {x['volume_ml']:>8.2f} mL  confidence {x['confidence']:.3f}"
              for x in sorted(group, key=lambda x: -x["volume_ml"])]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--synthetic", type=Path, required=True, help="held-out synthetic cases (KiTS layout)")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default: ../shared/data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--output", type=Path, help="output folder (default: a new temporary folder)")
    args = p.parse_args(argv)
    cascade = load_cascade(SegmentOptions(model=args.model, device=args.device))
    groups = collect(cascade, args.synthetic, args.data)
    try:
        chosen, real, rows = choose_from_synthetic(groups)
    except ValueError as exc:
        p.error(str(exc))
    for name in ("true_synthetic", "false_synthetic", "false_real"):
        print(describe(name, groups[name]))
    print("\nthreshold  true removed (n %, mL)  false removed (n %, mL)")
    for r in rows[::5]:
        print(f"  {r['threshold']:.2f}      {100 * r['true_removed']:5.1f} % {r['true_removed_ml']:8.1f}"
              f"        {100 * r['false_removed']:5.1f} % {r['false_removed_ml']:8.1f}")
    print(f"\nchosen --min-confidence {chosen['threshold']:.2f} (model {resolve_model(args.model).name}): removes "
          f"{100 * chosen['false_removed']:.0f} % of the false lesions ({chosen['false_removed_ml']} mL) and "
          f"{100 * chosen['true_removed']:.0f} % of the true ones ({chosen['true_removed_ml']} mL) on the held-out "
          f"synthetic CTs; on the real CTs (not used to choose) {100 * real['false_removed']:.0f} % of the false "
          f"lesions ({real['false_removed_ml']} mL); {machine(args.device)}")
    out = args.output or Path(tempfile.mkdtemp(prefix="confidence_"))
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "confidence_threshold.json", json.dumps(
        {"model": resolve_model(args.model).name, "machine": machine(args.device), "chosen": chosen,
         "chosen_from": "held-out synthetic true vs false lesions", "real_at_chosen": real, "groups": groups,
         "sweep": rows}, indent=1) + "\n")
    print(f"Written to {out / 'confidence_threshold.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
