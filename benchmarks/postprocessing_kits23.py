"""Apply ``postprocess`` (default config) to every KiTS23 ground-truth label map and report what changes.

Ground truth should need almost no post-processing, so every case that changes is either a rule (or a
default) that is wrong for real anatomy or a real oddity of the annotation; docs/postprocessing_kits23.md
explains each case changing > 0.5 % of its foreground.

    PYTHONPATH=KidneyTumorSeg python benchmarks/postprocessing_kits23.py [--limit N] [--jobs 1]
Writes docs/postprocessing_kits23.csv and prints a Markdown summary.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "KidneyTumorSeg"))

from KidneyTumorSegLib.atomic import write_csv  # noqa: E402
from KidneyTumorSegLib.geometry import Geometry  # noqa: E402
from KidneyTumorSegLib.postprocessing import (RULES, PostprocessingConfig, kidney_components,  # noqa: E402
                                              postprocess)

DEFAULT_DATA = ROOT.parent / "shared/data/kits23/labels"
THRESHOLD_PCT = 0.5
COLUMNS = (["case", "foreground_voxels", "changed_voxels", "changed_pct"] + list(RULES)
           + ["kept_components", "kept_ml", "sides", "removed", "spacing", "seconds"])


def run_case(path: Path, config: PostprocessingConfig) -> dict:
    t0 = time.perf_counter()
    img = sitk.ReadImage(str(path))
    labels = sitk.GetArrayFromImage(img)
    spacing = img.GetSpacing()
    out, rep = postprocess(labels, spacing, config, return_report=True)
    changed = int(np.count_nonzero(out != labels))
    comps = kidney_components(labels, spacing, Geometry.from_sitk(img), config)
    fg = rep.foreground_voxels
    row = {"case": path.name.split(".")[0], "foreground_voxels": fg, "changed_voxels": changed,
           "changed_pct": round(100.0 * changed / fg, 4) if fg else 0.0,
           "kept_components": len(rep.kidney_components_mm3),
           "kept_ml": ";".join(f"{v / 1000:.1f}" for v in rep.kidney_components_mm3),
           "sides": ";".join(c.side.value for c in comps),
           "removed": ";".join(f"{r}:{v / 1000:.3f}mL" for r, v in rep.removed_components),
           "spacing": "x".join(f"{s:.3g}" for s in spacing),
           "seconds": round(time.perf_counter() - t0, 2)}
    row.update({r: rep.changed[r] for r in RULES})
    return row


def _worker(args):
    return run_case(*args)


def summary(rows: list) -> str:
    pct = np.array([r["changed_pct"] for r in rows], dtype=float)
    unchanged = int(np.sum(pct == 0))
    lines = [f"Cases: {len(rows)}; unchanged: {unchanged}; changed: {len(rows) - unchanged}.", "",
             "| changed % of foreground | cases |", "|---|---|",
             f"| 0 | {unchanged} |"]
    edges = [0, 0.01, 0.1, 0.5, 1, 5, 100]
    for lo, hi in zip(edges[:-1], edges[1:]):
        lines.append(f"| ({lo}, {hi}] | {int(np.sum((pct > lo) & (pct <= hi)))} |")
    lines += ["", "Cases changed by each rule (voxels in all cases):", "", "| rule | cases | voxels |", "|---|---|---|"]
    for r in RULES:
        v = np.array([int(row[r]) for row in rows])
        lines.append(f"| {r} | {int(np.sum(v > 0))} | {int(v.sum())} |")
    big = [r for r in rows if r["changed_pct"] > THRESHOLD_PCT]
    lines += ["", f"Cases changing > {THRESHOLD_PCT} % of their foreground: {len(big)}", "",
              "| case | changed % | voxels | by rule | kept (mL) | removed |", "|---|---|---|---|---|---|"]
    for r in sorted(big, key=lambda r: -r["changed_pct"]):
        by = ", ".join(f"{k} {r[k]}" for k in RULES if int(r[k]))
        lines.append(f"| {r['case']} | {r['changed_pct']:.2f} | {r['changed_voxels']} | {by} | "
                     f"{r['kept_ml']} | {r['removed']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of case_XXXXX.nii.gz label maps")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases")
    p.add_argument("--cases", nargs="*", default=None, help="only these case names (e.g. case_00012)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--out", type=Path, default=ROOT / "docs/postprocessing_kits23.csv")
    args = p.parse_args(argv)
    paths = sorted(args.data.glob("case_*.nii.gz"))
    if args.cases:
        paths = [q for q in paths if q.name.split(".")[0] in set(args.cases)]
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        p.error(f"no case_*.nii.gz in {args.data}")
    config = PostprocessingConfig()
    tasks = [(q, config) for q in paths]
    rows = []
    if args.jobs > 1:
        import multiprocessing
        with multiprocessing.Pool(args.jobs) as pool:
            for row in pool.imap(_worker, tasks):
                rows.append(row)
                print(row["case"], row["changed_pct"], file=sys.stderr, flush=True)
    else:
        for t in tasks:
            rows.append(_worker(t))
            print(rows[-1]["case"], rows[-1]["changed_pct"], rows[-1]["seconds"], file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(args.out, COLUMNS, rows)
    print(f"Post-processing of KiTS23 ground truth, default config {config.to_dict()}\n")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
