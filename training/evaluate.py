"""Evaluate predicted label maps against references: ``metrics.csv`` and ``summary.md`` per folder pair.

    python -m training.evaluate PRED_DIR REF_DIR -o OUTDIR [--tolerance-mm 1.0 | REGION=MM ...]

Pairing is by case name: ``PRED_DIR/case_00001.nii.gz`` (any of .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd)
pairs with ``REF_DIR/case_00001.<ext>`` or the KiTS layout ``REF_DIR/case_00001/segmentation.<ext>`` (either
layout is accepted on either side). Unpaired cases are listed on stderr and in ``summary.md``; the exit
code is 1 when nothing pairs, when a pair's grids differ (the error names the case) or on unreadable input.

Metrics and empty-mask conventions: see :mod:`training.metrics` (HD95 and ASD over both directions'
surface distances pooled, as MedPy; voxel-based surface Dice at the KiTS tolerances).

Tumor size buckets are per case: a case goes into the bucket of the longest diameter (max centre-to-centre
voxel distance, mm) of its largest reference tumor component (label 2, 26-connected), and the bucket's
statistic is the case's tumor Dice; cases without a reference tumor are in no bucket. (Per-component Dice
would need a rule for assigning predicted voxels to components; KiTS sizes are per case, too.)
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from KidneyTumorSegLib.atomic import write_text
from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.image_io import READ_EXTENSIONS, read_labelmap

from .metrics import (KITS_TOLERANCES_MM, METRICS, REGIONS, SIZE_BUCKETS, region_metrics, size_bucket,
                      tumor_diameters_mm)

CSV_COLUMNS = ("case", "region", "labels", "empty", "tolerance_mm") + METRICS + (
    "ref_tumor_diameter_mm", "tumor_size_bucket")
GEOMETRY_ATOL = 1e-4  # mm / unitless; NIfTI stores origin and direction as float32 (~1e-5)


# -- pairing --------------------------------------------------------------------------------------------
def _strip_extension(name: str) -> Optional[str]:
    lower = name.lower()
    for ext in READ_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return None


def find_label_files(folder: Path) -> Dict[str, Path]:
    """{case: path} of ``folder/<case>.<ext>`` files and ``folder/<case>/segmentation.<ext>`` (KiTS layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Folder '{folder}' does not exist or is not a folder.")
    found: Dict[str, Path] = {}

    def add(case: str, path: Path) -> None:
        if case in found:
            raise InputError(f"Case '{case}' appears twice in '{folder}' ({found[case].name} and "
                             f"{path.relative_to(folder)}); keep one file per case.")
        found[case] = path

    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):  # temporary / hidden files
            continue
        if entry.is_file():
            case = _strip_extension(entry.name)
            if case is not None:
                add(case, entry)
        elif entry.is_dir():
            segs = [entry / f"segmentation{ext}" for ext in READ_EXTENSIONS if (entry / f"segmentation{ext}").is_file()]
            if segs:
                add(entry.name, segs[0])
    return found


def pair_cases(pred_dir: Path, ref_dir: Path) -> Tuple[List[Tuple[str, Path, Path]], List[str], List[str]]:
    """(pairs [(case, pred, ref)], cases only in the predictions, cases only in the references)."""
    preds, refs = find_label_files(pred_dir), find_label_files(ref_dir)
    pairs = [(c, preds[c], refs[c]) for c in sorted(set(preds) & set(refs))]
    return pairs, sorted(set(preds) - set(refs)), sorted(set(refs) - set(preds))


# -- per case -------------------------------------------------------------------------------------------
def evaluate_arrays(pred: np.ndarray, ref: np.ndarray, spacing_xyz: Sequence[float], case: str = "",
                    tolerances_mm: Optional[Mapping[str, float]] = None) -> List[Dict[str, object]]:
    """CSV rows (one per region) for two (z, y, x) label maps on a grid of ``spacing_xyz`` mm (x, y, z)."""
    spacing_zyx = tuple(float(s) for s in reversed(tuple(spacing_xyz)))
    per_region = region_metrics(pred, ref, spacing_zyx, tolerances_mm)
    diameters = tumor_diameters_mm(ref, spacing_zyx)
    diameter = diameters[0] if diameters else math.nan
    bucket = size_bucket(diameter) if diameters else ""
    rows = []
    for region, values in per_region.items():
        row: Dict[str, object] = {"case": case, "region": region,
                                  "labels": "+".join(str(v) for v in REGIONS[region])}
        row.update(values)
        row.update(ref_tumor_diameter_mm=diameter, tumor_size_bucket=bucket)
        rows.append(row)
    return rows


def evaluate_case(case: str, pred_path: Path, ref_path: Path,
                  tolerances_mm: Optional[Mapping[str, float]] = None) -> List[Dict[str, object]]:
    """Read one pair, check that both lie on the same grid, and return its CSV rows."""
    return evaluate_images(case, read_labelmap(pred_path), read_labelmap(ref_path), tolerances_mm,
                           f" ({pred_path})", f" ({ref_path})")


def evaluate_images(case: str, pred: Image, ref: Image, tolerances_mm: Optional[Mapping[str, float]] = None,
                    pred_name: str = "", ref_name: str = "") -> List[Dict[str, object]]:
    """:func:`evaluate_case` on label maps already read (callers that use them again read each file once)."""
    if not pred.geometry.is_close(ref.geometry, atol=GEOMETRY_ATOL):
        raise InputError(f"Case '{case}': the prediction{pred_name} and the reference{ref_name} lie on "
                         f"different grids ({_describe(pred.geometry)} vs {_describe(ref.geometry)}); resample "
                         "the prediction onto the reference grid first.")
    return evaluate_arrays(pred.array, ref.array, ref.geometry.spacing, case, tolerances_mm)


def _describe(g: Geometry) -> str:
    fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
    return f"size {g.size}, spacing {fmt(g.spacing)}, origin {fmt(g.origin)}, direction {fmt(g.direction)}"


# -- outputs --------------------------------------------------------------------------------------------
def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, ".10g")
    return str(v)


def metrics_csv(rows: Iterable[Mapping[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_fmt(row.get(c, "")) for c in CSV_COLUMNS])
    return buf.getvalue()


def _stats(values: Sequence[float]) -> Tuple[int, float, float]:
    """(number of defined values, nan-mean, nan-median); NaN when none is defined."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    return (len(v), float(v.mean()), float(np.median(v))) if len(v) else (0, math.nan, math.nan)


def tumor_dice_by_size(rows: Sequence[Mapping[str, object]]) -> Dict[str, Tuple[int, float, float]]:
    """(cases, mean, median) of the tumor Dice per size bucket, over the rows of ``evaluate_case`` or of
    metrics.csv read back (values as strings)."""
    tumor_rows = [r for r in rows if r["region"] == "tumor"]
    return {name: _stats([float(r["dice"]) for r in tumor_rows  # type: ignore[arg-type]
                          if r["tumor_size_bucket"] == name]) for name, _, _ in SIZE_BUCKETS}


def _cell(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def summary_markdown(rows: Sequence[Mapping[str, object]], unpaired_pred: Sequence[str] = (),
                     unpaired_ref: Sequence[str] = ()) -> str:
    cases = sorted({str(r["case"]) for r in rows})
    lines = ["# Segmentation evaluation", "", f"{len(cases)} case(s) evaluated. Distances in mm on the true voxel "
             "spacing. HD95 = 95th percentile and ASD = mean of both directions' surface distances pooled "
             "(as MedPy 0.5 `hd95` and `assd`). Surface Dice at the tolerance per region "
             "(column `tolerance_mm` of metrics.csv).", "",
             "Empty masks: both empty -> Dice/Jaccard/precision/recall/surface Dice 1, distances 0; one empty -> "
             "Dice/Jaccard/surface Dice 0, distances NaN (left out of the statistics below; `n` counts the "
             "defined values). See the `empty` column of metrics.csv.", ""]
    for stat, idx in (("Mean", 1), ("Median", 2)):
        lines += [f"## {stat} per region", "", "| region | cases | " + " | ".join(METRICS) + " |",
                  "|---|---|" + "---|" * len(METRICS)]
        for region in REGIONS:
            sel = [r for r in rows if r["region"] == region]
            if not sel:
                continue
            cells = []
            for m in METRICS:
                st = _stats([float(r[m]) for r in sel])  # type: ignore[arg-type]
                cells.append(_cell(st[idx]) + ("" if st[0] == len(sel) else f" (n={st[0]})"))
            lines.append(f"| {region} | {len(sel)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Empty masks per region", "", "| region | both empty | reference empty | prediction empty |",
              "|---|---|---|---|"]
    for region in REGIONS:
        sel = [r for r in rows if r["region"] == region]
        if sel:
            count = lambda s: sum(1 for r in sel if r["empty"] == s)  # noqa: E731
            lines.append(f"| {region} | {count('both')} | {count('reference')} | {count('prediction')} |")
    lines += ["", "## Tumor Dice by reference tumor size", "",
              "Per case: longest diameter (max centre-to-centre voxel distance) of the largest reference tumor "
              "component; cases without a reference tumor are in no bucket.", "",
              "| bucket | cases | mean Dice | median Dice |", "|---|---|---|---|"]
    tumor_rows = [r for r in rows if r["region"] == "tumor"]
    for name, (n, mean, median) in tumor_dice_by_size(rows).items():
        lines.append(f"| {name} | {n} | {_cell(mean)} | {_cell(median)} |")
    no_tumor = sum(1 for r in tumor_rows if not r["tumor_size_bucket"])
    lines += ["", f"Cases without a reference tumor: {no_tumor}.", ""]
    if unpaired_pred or unpaired_ref:
        lines += ["## Unpaired files (not evaluated)", "",
                  f"- predictions without a reference ({len(unpaired_pred)}): {', '.join(unpaired_pred) or '-'}",
                  f"- references without a prediction ({len(unpaired_ref)}): {', '.join(unpaired_ref) or '-'}", ""]
    return "\n".join(lines)


def write_outputs(rows: Sequence[Mapping[str, object]], outdir: Path, unpaired_pred: Sequence[str] = (),
                  unpaired_ref: Sequence[str] = ()) -> Tuple[Path, Path]:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = outdir / "metrics.csv", outdir / "summary.md"
    write_text(csv_path, metrics_csv(rows))
    write_text(md_path, summary_markdown(rows, unpaired_pred, unpaired_ref))
    return csv_path, md_path


# -- command line ---------------------------------------------------------------------------------------
def parse_tolerances(values: Optional[Sequence[str]]) -> Dict[str, float]:
    """``["1.0"]`` -> every region 1.0 mm; ``["tumor=1.5", ...]`` -> those regions; default KiTS values."""
    tol = dict(KITS_TOLERANCES_MM)
    for v in values or ():
        region, sep, mm = v.rpartition("=")
        if sep and region not in REGIONS:
            raise InputError(f"Unknown region '{region}' in --tolerance-mm; regions: {', '.join(REGIONS)}.")
        try:
            mm_value = float(mm)
        except ValueError:
            raise InputError(f"--tolerance-mm value '{v}' is not a number of mm (or REGION=MM).") from None
        if not mm_value >= 0:
            raise InputError(f"--tolerance-mm must be non-negative, got '{v}'.")
        tol.update({region: mm_value} if sep else {r: mm_value for r in REGIONS})
    return tol


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("pred_dir", type=Path, help="folder of predicted label maps")
    parser.add_argument("ref_dir", type=Path, help="folder of reference label maps (flat or KiTS case folders)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for metrics.csv and summary.md")
    parser.add_argument("--tolerance-mm", nargs="+", metavar="MM|REGION=MM",
                        help="surface-Dice tolerance: one value for all regions or REGION=MM pairs "
                             f"(default KiTS: {', '.join(f'{k}={v}' for k, v in KITS_TOLERANCES_MM.items())})")
    args = parser.parse_args(argv)
    try:
        tolerances = parse_tolerances(args.tolerance_mm)
        pairs, only_pred, only_ref = pair_cases(args.pred_dir, args.ref_dir)
        if only_pred:
            print(f"warning: {len(only_pred)} prediction(s) without a reference: {', '.join(only_pred)}",
                  file=sys.stderr)
        if only_ref:
            print(f"warning: {len(only_ref)} reference(s) without a prediction: {', '.join(only_ref)}",
                  file=sys.stderr)
        if not pairs:
            print(f"error: no prediction in '{args.pred_dir}' pairs with a reference in '{args.ref_dir}' "
                  "(names must match, e.g. case_00001.nii.gz with case_00001.nii.gz or "
                  "case_00001/segmentation.nii.gz).", file=sys.stderr)
            return 1
        rows: List[Dict[str, object]] = []
        for i, (case, pred_path, ref_path) in enumerate(pairs, 1):
            case_rows = evaluate_case(case, pred_path, ref_path, tolerances)
            rows += case_rows
            summary = ", ".join(f"{r['region']} {float(r['dice']):.4f}" for r in case_rows[:3])
            print(f"[{i}/{len(pairs)}] {case}: Dice {summary}")
        csv_path, md_path = write_outputs(rows, args.output, only_pred, only_ref)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
