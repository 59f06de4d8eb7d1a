"""Run ``measure`` on every KiTS23 ground-truth label map and summarise tumor sizes and R.E.N.A.L. components.

    PYTHONPATH=KidneyTumorSeg python benchmarks/measurements_kits23.py [--limit N] [--data DIR]
Writes docs/measurements_kits23.csv (one row per tumor) and docs/measurements_kits23.md (distributions).
A case that fails is logged with its error and listed in the summary; the run goes on.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "KidneyTumorSeg"))

from KidneyTumorSegLib.atomic import write_csv, write_text  # noqa: E402
from KidneyTumorSegLib.geometry import Geometry  # noqa: E402
from KidneyTumorSegLib.measurements import measure  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared/data/kits23/labels"
COLUMNS = ["case", "id", "side", "volume_ml", "longest_diameter_mm", "longest_axial_diameter_mm",
           "perpendicular_axial_diameter_mm", "exophytic_fraction", "distance_to_sinus_mm", "R", "E", "N", "A",
           "L", "total", "polar_source", "kidney_sinus_ml"]


def run_case(path: Path):
    """(tumor rows, number of cysts, seconds) of one case."""
    t0 = time.perf_counter()
    img = sitk.ReadImage(str(path))
    m = measure(sitk.GetArrayFromImage(img), Geometry.from_sitk(img))
    d = m.to_json_dict()
    case = path.name.split(".")[0]
    sinus = {k["id"]: k["sinus_volume_ml"] for k in d["kidneys"]}
    rows = []
    for les in d["lesions"]:
        if les["kind"] != "tumor":
            continue
        renal = les["renal"] or {}
        row = {k: les.get(k) for k in COLUMNS if k in les}
        row.update({k: renal.get(k) for k in ("R", "E", "N", "A", "L", "total", "polar_source")})
        row.update(case=case, kidney_sinus_ml=sinus.get(les["kidney_id"]))
        rows.append(row)
    return rows, len(m.cysts), time.perf_counter() - t0


def _q(values) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return "-"
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return f"{med:.1f} ({q1:.1f}-{q3:.1f})"


def _counts(rows, key, values) -> list:
    c = Counter(r[key] for r in rows)
    n = len(rows)
    out = [f"| {key} | tumors | % |", "|---|---|---|"]
    for v in values + ([None] if c.get(None) else []):
        out.append(f"| {'n/a' if v is None else v} | {c.get(v, 0)} | {100.0 * c.get(v, 0) / max(n, 1):.1f} |")
    return out


def summary(rows: list, n_cases: int, n_cysts: int, failures: list, seconds: float) -> str:
    cases_with = len({r["case"] for r in rows})
    lines = ["# Measurements on KiTS23 ground truth", "",
             "Produced by `benchmarks/measurements_kits23.py` (`KidneyTumorSegLib.measurements.measure` on every "
             "ground-truth label map; definitions and proxies in `measurements.py` and `nephrometry.py`). One row "
             "per tumor (connected component) in `measurements_kits23.csv`. R.E.N.A.L. values are automatic "
             "estimates from labels only; the suffix h is never assigned.", "",
             f"Cases: {n_cases} ({len(failures)} failed); cases with a tumor: {cases_with}; tumors: {len(rows)}; "
             f"cysts: {n_cysts}; total time {seconds / 60:.1f} min.", "",
             "## Tumor size", "", "| | median (IQR) |", "|---|---|",
             f"| volume (mL) | {_q(r['volume_ml'] for r in rows)} |",
             f"| longest 3D diameter (mm) | {_q(r['longest_diameter_mm'] for r in rows)} |",
             f"| longest axial diameter (mm) | {_q(r['longest_axial_diameter_mm'] for r in rows)} |",
             f"| perpendicular axial diameter (mm) | {_q(r['perpendicular_axial_diameter_mm'] for r in rows)} |",
             f"| exophytic fraction | {_q(r['exophytic_fraction'] for r in rows)} |",
             f"| distance to sinus proxy (mm) | {_q(r['distance_to_sinus_mm'] for r in rows)} |", "",
             "R buckets (longest 3D diameter): 1 = <= 40 mm, 2 = 40-70 mm, 3 = >= 70 mm.", ""]
    for key, values in (("R", [1, 2, 3]), ("E", [1, 2, 3]), ("N", [1, 2, 3]), ("A", ["a", "p", "x"]),
                        ("L", [1, 2, 3]), ("polar_source", ["hilum", "thirds"])):
        lines += [f"## {key}", ""] + _counts(rows, key, values) + [""]
    lines += ["## Total (R+E+N+L)", ""] + _counts(rows, "total", list(range(4, 13)))
    groups = Counter("low 4-6" if t <= 6 else "moderate 7-9" if t <= 9 else "high 10-12"
                     for t in (r["total"] for r in rows) if t is not None)
    lines += ["", "| complexity | tumors |", "|---|---|"] + [f"| {g} | {groups.get(g, 0)} |"
                                                          for g in ("low 4-6", "moderate 7-9", "high 10-12")]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {c}: {e}" for c, e in failures]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of case_XXXXX.nii.gz label maps")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases")
    p.add_argument("--out", type=Path, default=ROOT / "docs/measurements_kits23.csv")
    args = p.parse_args(argv)
    paths = sorted(args.data.glob("case_*.nii.gz"))[: args.limit]
    if not paths:
        p.error(f"no case_*.nii.gz in {args.data}")
    rows, failures, n_cysts, t0 = [], [], 0, time.perf_counter()
    for i, path in enumerate(paths, start=1):
        try:
            case_rows, cysts, sec = run_case(path)
        except Exception as exc:  # keep going: a failing case is a finding to report, not a reason to stop
            failures.append((path.name, f"{type(exc).__name__}: {exc}"))
            traceback.print_exc()
            continue
        rows += case_rows
        n_cysts += cysts
        print(f"{i}/{len(paths)} {path.name} tumors={len(case_rows)} cysts={cysts} {sec:.1f}s",
              file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(args.out, COLUMNS, rows)
    text = summary(rows, len(paths), n_cysts, failures, time.perf_counter() - t0)
    write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
