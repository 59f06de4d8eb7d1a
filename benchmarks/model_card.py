"""The model card's figures for one model: the real example CT and held-out synthetic cases.

1. Real CT: the bundled sample CT (= ../shared/data/ct/example_ct.nii.gz, never used in training) segmented
   by the cascade (time and volumes as the CLI reports them); Dice / Jaccard / HD95 / ASD / surface Dice of
   the predicted kidneys with their masses (every label > 0; training/metrics.py, as training/evaluate.py
   computes them) against the reference whole-kidney masks, which
   are TotalSegmentator v1 outputs, not manual ground truth; per side: Dice and volume; tumor and cyst volume
   predicted outside the reference kidneys (more than 10 mm away).
2. The real-CT benchmark: ``benchmarks/real_ct.py``'s table for every real CT with reference masks (the example
   CT, ../shared/data/real_ct/*), in OUT/real_ct_benchmark.md.
3. Synthetic: each case of ``--synthetic DIR`` (KiTS layout; make it with ``training.synthetic --exclude`` so
   that no KiTS23 case or anatomy map of the training set is in it) segmented and evaluated with
   training/evaluate.py (kidney, masses, tumor, cyst regions; tumor Dice by size bucket; cyst Dice over the
   cases that have a cyst), and the same by appearance (contrast-enhanced, unenhanced, random intensities,
   from the generator's synthetic.json) in OUT/synthetic/by_appearance.md. Where the cases have anatomy maps
   (``training.synthetic --anatomy``): the predicted kidney, tumor or cyst inside their liver and spleen, the
   organ confusion seen on real CTs, measured where the organs' outlines are known exactly.

Writes OUT/real_ct.json, OUT/real_ct.md, OUT/real_ct_benchmark.md,
OUT/synthetic/{metrics.csv,summary.md,by_appearance.md,organs.csv} (organs.csv: per case, the foreground in the
liver and spleen beside the mean HU of the reference kidney, the liver and the spleen), and OUT/registry_metrics.json
(the figures for ``training.export --metrics``, hence models.json), and prints the tables.
Usage: python benchmarks/model_card.py [--model default] [--synthetic DIR] [-o OUT] [--device cpu]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

from benchmarks.machine_info import machine  # noqa: E402
from benchmarks.real_ct import discover_cases, markdown, run_case, side_dice  # noqa: E402
from KidneyTumorSegLib.atomic import write_csv, write_text  # noqa: E402
from KidneyTumorSegLib.geometry import Image  # noqa: E402
from KidneyTumorSegLib.image_io import read_image, read_labelmap  # noqa: E402
from KidneyTumorSegLib.labels import Label  # noqa: E402
from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade, segment_case  # noqa: E402
from KidneyTumorSegLib.sample import sample_ct_path  # noqa: E402
from training.datasets import discover  # noqa: E402
from training.datasets.layouts import DatasetError  # noqa: E402
from training.datasets.negatives import read_anatomy  # noqa: E402
from training.evaluate import evaluate_arrays, evaluate_images, tumor_dice_by_size, write_outputs  # noqa: E402
from training.export import summarize_metrics_csv  # noqa: E402

SHARED_CT = REPO.parent / "shared" / "data" / "ct"
OUTSIDE_MM = 10.0


def real_ct(cascade, options, work: Path) -> dict:
    ct_path = sample_ct_path()
    result = segment_case(ct_path, work / "real", cascade, options)
    pred = read_labelmap(result.outputs["labelmap"])
    ct = read_image(ct_path)
    sides = {side: read_labelmap(SHARED_CT / f"example_ct_kidney_{side}.nii.gz").array > 0
             for side in ("right", "left")}
    ref = (sides["right"] | sides["left"]).astype(np.uint8)
    if not pred.geometry.is_close(ct.geometry, atol=1e-4):
        raise RuntimeError("the label map does not lie on the CT's grid")
    sp_zyx = tuple(reversed(ct.geometry.spacing))
    rows = {r["region"]: r for r in evaluate_arrays(pred.array, ref, ct.geometry.spacing, "example_ct")}
    kidney = rows["kidney_and_masses"]  # the reference masks are whole kidneys: compare every label > 0
    dice = side_dice(pred.array > 0, sides, sp_zyx)  # a voxel belongs to the side of the nearer reference kidney
    dist = {s: ndimage.distance_transform_edt(~m, sampling=sp_zyx) for s, m in sides.items()}
    right_zone = dist["right"] < dist["left"]
    voxel_ml = float(np.prod(ct.geometry.spacing)) / 1000
    per_side = {side: {"dice": round(dice[side], 4), "volume_ml": round(float(((pred.array > 0) & zone).sum())
                                                                            * voxel_ml, 1),
                       "reference_ml": round(float(sides[side].sum()) * voxel_ml, 1)}
                for side, zone in (("right", right_zone), ("left", ~right_zone))}
    far = np.minimum(dist["right"], dist["left"]) > OUTSIDE_MM
    lesion = np.isin(pred.array, (Label.TUMOR, Label.CYST))
    outside, n = ndimage.label(lesion & far)
    largest = float(np.bincount(outside.ravel())[1:].max()) * voxel_ml if n else 0.0
    return {"case": "example_ct (bundled sample CT)", "seconds": round(result.seconds, 1),
            "message": result.message, "volumes_ml": result.volumes_ml,
            "kidney": {k: (round(float(kidney[k]), 4) if isinstance(kidney[k], float) else kidney[k])
                       for k in ("dice", "jaccard", "hd95_mm", "asd_mm", "surface_dice", "tolerance_mm")},
            "per_side": per_side,
            "tumor_ml": round(float((pred.array == Label.TUMOR).sum()) * voxel_ml, 1),
            "cyst_ml": round(float((pred.array == Label.CYST).sum()) * voxel_ml, 1),
            "lesion_outside_kidneys_ml": round(float((lesion & far).sum()) * voxel_ml, 2),
            "largest_lesion_outside_kidneys_ml": round(largest, 2)}


def real_ct_markdown(r: dict) -> str:
    k = r["kidney"]
    lines = [f"Real example CT, {r['seconds']} s: {r['message']}", "",
             "| kidneys (all labels > 0, both sides) | Dice | Jaccard | HD95 mm | ASD mm | surface Dice |",
             "|---|---|---|---|---|---|",
             f"| vs TotalSegmentator v1 masks | {k['dice']:.3f} | {k['jaccard']:.3f} | {k['hd95_mm']:.1f} | "
             f"{k['asd_mm']:.1f} | {k['surface_dice']:.3f} (at {k['tolerance_mm']} mm) |", "",
             "| side | Dice | predicted mL | reference mL |", "|---|---|---|---|"]
    lines += [f"| {s} | {v['dice']:.3f} | {v['volume_ml']} | {v['reference_ml']} |" for s, v in r["per_side"].items()]
    lines += ["", f"Tumor {r['tumor_ml']} mL, cyst {r['cyst_ml']} mL predicted (the reference has none); "
              f"tumor or cyst more than {OUTSIDE_MM:.0f} mm outside the reference kidneys: "
              f"{r['lesion_outside_kidneys_ml']} mL in all, largest piece {r['largest_lesion_outside_kidneys_ml']} mL."]
    return "\n".join(lines)


def registry_metrics(real: dict, synthetic_csv: Path = None) -> dict:
    """The figures models.json records: real CT (kidney), held-out synthetic (mean per region, tumor Dice per
    size bucket), and the real CT's end-to-end time on the machine named."""
    out = {"real_example_ct": {"reference": "TotalSegmentator v1 kidney masks (model-made, not manual)",
                               "kidney": real["kidney"], "per_side": real["per_side"],
                               "tumor_ml": real["tumor_ml"], "cyst_ml": real["cyst_ml"],
                               "lesion_outside_kidneys_ml": real["lesion_outside_kidneys_ml"]},
           "speed": {"example_ct_seconds": real["seconds"], "machine": real["machine"]}}
    if synthetic_csv is not None:
        import csv
        summary = summarize_metrics_csv(synthetic_csv)
        with open(synthetic_csv, newline="", encoding="utf-8") as f:
            by_size = tumor_dice_by_size(list(csv.DictReader(f)))
        summary["tumor_dice_by_size"] = {b: {"n": n, "mean": round(mean, 4)} for b, (n, mean, _) in by_size.items()
                                         if n}
        summary["cyst_dice_cases_with_cyst"] = cyst_dice_with_reference(synthetic_csv)
        out["held_out_synthetic"] = summary
    return out


def cyst_dice_with_reference(metrics_csv: Path) -> dict:
    """Mean cyst Dice over the cases that have a reference cyst (the KiTS mean also counts "both empty" as 1)."""
    import csv
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        return mean_dice(list(csv.DictReader(f)), "cyst")


def mean_dice(rows, region: str) -> dict:
    """{"n", "mean"} Dice of ``region`` over metrics.csv rows; for cysts only over the cases that have a
    reference cyst (None when there are none)."""
    dice = [float(r["dice"]) for r in rows if r["region"] == region
            and not (region == "cyst" and r["empty"] in ("both", "reference"))]
    return {"n": len(dice), "mean": round(float(np.mean(dice)), 4) if dice else None}


APPEARANCES = ("contrast-enhanced", "unenhanced", "random intensities", "unknown")


def appearance_of(entry: dict) -> str:
    """A held-out case's look, from the generator's record (synthetic.json): what a reader of the card needs
    to weigh the figures (KiTS CTs are contrast-enhanced; random intensities exist in no real scan). Cases of
    the older generators, which record no phase, and cases missing from the record are "unknown"."""
    if entry.get("random_intensities"):
        return "random intensities"
    if "phase" not in entry:
        return "unknown"
    return "unenhanced" if entry["phase"] == "unenhanced" else "contrast-enhanced"


def dice_by_appearance(metrics_csv: Path, synthetic_json: Path, organs: Optional[Dict] = None) -> dict:
    """{appearance: {"n", "kidney_and_masses", "tumor", "cyst_with_reference": mean Dice (n)}} over the cases
    of ``metrics_csv``, grouped by :func:`appearance_of`; cyst over the cases that have a reference cyst; with
    ``organs`` ({case: mL or None}, see :func:`in_liver_spleen_ml`) also "in_liver_spleen_ml" (organ_summary)."""
    import csv
    cases = json.loads(Path(synthetic_json).read_text(encoding="utf-8"))["cases"]
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for look in APPEARANCES:
        mine = [r for r in rows if appearance_of(cases.get(r["case"], {})) == look]
        if not mine:
            continue
        out[look] = {"n": len({r["case"] for r in mine}), "kidney_and_masses": mean_dice(mine, "kidney_and_masses"),
                     "tumor": mean_dice(mine, "tumor"), "cyst_with_reference": mean_dice(mine, "cyst")}
        if organs:
            out[look]["in_liver_spleen_ml"] = organ_summary({c: organs.get(c) for c in {r["case"] for r in mine}})
    return out


def appearance_markdown(table: dict) -> str:
    def fmt(c):
        return "n/a" if c["mean"] is None else f"{c['mean']:.3f} (n={c['n']})"
    def organ(c):
        o = c.get("in_liver_spleen_ml")
        return "n/a" if o is None else (f"{o['mean_ml']:.1f} (n={o['n']}; max {o['max_ml']:.1f}; "
                                         f"{o['cases_over_10_ml']} > 10 mL)")
    lines = ["| appearance | cases | kidney + masses Dice | tumor Dice | cyst Dice (cases with a cyst) "
             "| in liver/spleen mL, mean |", "|---|---|---|---|---|---|"]
    lines += [f"| {look} | {c['n']} | {fmt(c['kidney_and_masses'])} | {fmt(c['tumor'])} | "
              f"{fmt(c['cyst_with_reference'])} | {organ(c)} |" for look, c in table.items()]
    return "\n".join(lines)


def real_ct_benchmark(cascade, options: SegmentOptions, work: Path, out: Path) -> list:
    """benchmarks/real_ct.py's table for every real CT with reference masks (QC pictures in OUT/real_ct)."""
    qc = dataclasses.replace(options, qc=True)
    rows = [run_case(case, cascade, qc, work / "real_ct") for case in discover_cases()]
    write_text(out / "real_ct_benchmark.md", markdown(rows, options.model, machine(options.device)) + "\n")
    return rows


def synthetic(cascade, options, data: Path, work: Path, out: Path) -> Tuple[Path, Dict[str, Optional[float]]]:
    """(summary.md of training/evaluate.py's figures, {case: predicted foreground in its liver and spleen, mL}).
    Also writes OUT/synthetic/organs.csv: per case, that mL beside the kidney's, liver's and spleen's mean HU."""
    rows, organs, table = [], {}, []
    cases = discover(data)
    for i, case in enumerate(cases, 1):
        result = segment_case(case.image_path, work / "synthetic" / case.case_id, cascade, options)
        pred, ref = read_labelmap(result.outputs["labelmap"]), read_labelmap(case.label_path)  # read once
        rows += evaluate_images(case.case_id, pred, ref, pred_name=f" ({result.outputs['labelmap']})",
                                ref_name=f" ({case.label_path})")
        ct = read_image(case.image_path)
        masks = liver_spleen(case.image_path, ct)
        organs[case.case_id] = in_liver_spleen_ml(pred, masks, ct)
        table.append({"case": case.case_id, "in_liver_spleen_ml": organs[case.case_id],
                      **organ_hu(ct, ref.array == int(Label.KIDNEY), masks)})
        print(f"[{i}/{len(cases)}] {case.case_id}: {result.seconds:.1f} s", flush=True)
    summary = write_outputs(rows, out / "synthetic")[1]
    write_csv(out / "synthetic" / "organs.csv", list(table[0]) if table else ["case"], table)
    return summary, organs


def liver_spleen(image_path: Path, image: Image) -> Optional[Dict[str, np.ndarray]]:
    """The liver and spleen masks of the case's anatomy map, keyed by the names its vocabulary has; None for a
    case without a map (KiTS data, the procedural generator) or with one on another grid than ``image`` (warned:
    a map that does not lie on the CT would be misread)."""
    try:
        anatomy, vocabulary = read_anatomy(image_path)
    except DatasetError:
        return None
    if anatomy.array.shape != image.array.shape or not anatomy.geometry.is_close(image.geometry, atol=1e-3):
        print(f"WARNING: {image_path}'s anatomy map lies on another grid than its CT; left out", file=sys.stderr)
        return None
    return {name: anatomy.array == vocabulary[name] for name in ("liver", "spleen") if name in vocabulary}


def organ_hu(ct: Image, kidney: np.ndarray, organs: Optional[Dict[str, np.ndarray]]) -> Dict[str, Optional[float]]:
    """Mean HU of the reference kidney and of the liver and spleen masks on the case's CT (None where a structure
    or the map is missing): whether the model's organ confusion follows their contrast."""
    def mean(mask):
        return float(ct.array[mask].mean()) if mask is not None and mask.any() else None
    return {"kidney_hu": mean(kidney), **{f"{n}_hu": mean((organs or {}).get(n)) for n in ("liver", "spleen")}}


def in_liver_spleen_ml(pred: Image, organs: Optional[Dict[str, np.ndarray]], ct: Image) -> Optional[float]:
    """Predicted kidney, tumor or cyst inside the liver and spleen masks (on ``ct``'s grid; the organs the model
    takes for kidney), mL; None without a map, with a vocabulary that has neither organ, or for a prediction that
    does not lie on the CT (warned)."""
    if not organs:
        return None
    if pred.array.shape != ct.array.shape or not pred.geometry.is_close(ct.geometry, atol=1e-3):
        print("WARNING: a prediction lies on another grid than its CT; its liver/spleen mL left out", file=sys.stderr)
        return None
    inside = functools.reduce(np.logical_or, organs.values()) & (pred.array > 0)  # no stacked copy of the masks
    return float(np.count_nonzero(inside) * np.prod(pred.geometry.spacing) / 1000.0)


def organ_summary(organs: Dict[str, Optional[float]]) -> Optional[dict]:
    """{"n", "mean_ml", "max_ml", "cases_over_10_ml"} over the cases with an anatomy map (None without any)."""
    v = [x for x in organs.values() if x is not None]
    if not v:
        return None
    return {"n": len(v), "mean_ml": round(float(np.mean(v)), 1), "max_ml": round(max(v), 1),
            "cases_over_10_ml": sum(x > 10.0 for x in v)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--synthetic", type=Path, help="held-out synthetic cases (KiTS layout)")
    p.add_argument("-o", "--output", type=Path, default=Path("model_card_figures"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--box-growth", type=int, help="stage-2 box growths (CascadeConfig.box_growth; default: its own)")
    args = p.parse_args(argv)
    options = SegmentOptions(model=args.model, device=args.device, box_growth=args.box_growth, overwrite=True)
    cascade = load_cascade(options)
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        r = real_ct(cascade, options, Path(tmp))
        r["machine"] = machine(args.device)
        r["box_growth"] = cascade.config.box_growth
        r["stage2_mirror_axes"] = list(cascade.config.stage2_mirror_axes)
        bench = real_ct_benchmark(cascade, options, Path(tmp), args.output)
        print((args.output / "real_ct_benchmark.md").read_text(encoding="utf-8"))
        write_text(args.output / "real_ct.json", json.dumps(r, indent=1))
        md = real_ct_markdown(r)
        write_text(args.output / "real_ct.md", md + "\n")
        print(md + "\n\nmachine: " + r["machine"])
        csv_path = None
        organs = {}
        if args.synthetic:
            summary, organs = synthetic(cascade, options, args.synthetic, Path(tmp), args.output)
            print(summary.read_text(encoding="utf-8"))
            csv_path = summary.parent / "metrics.csv"
        metrics = registry_metrics(r, csv_path)
        metrics["box_growth"] = cascade.config.box_growth  # how the figures were made (CascadeConfig)
        metrics["stage2_mirror_axes"] = list(cascade.config.stage2_mirror_axes)
        if organ_summary(organs):
            metrics["held_out_synthetic"]["in_liver_spleen_ml"] = organ_summary(organs)
            print("Held-out synthetic, predicted foreground in the liver and spleen:", organ_summary(organs))
        if csv_path is not None and (args.synthetic / "synthetic.json").is_file():
            looks = dice_by_appearance(csv_path, args.synthetic / "synthetic.json", organs)
            write_text(csv_path.parent / "by_appearance.md", appearance_markdown(looks) + "\n")
            print(appearance_markdown(looks))
            metrics["held_out_synthetic"]["dice_by_appearance"] = looks
        metrics["real_ct_benchmark"] = [{k: row[k] for k in ("case", "phase", "kidney_dice", "dice_right", "dice_left",
                                                             "hd95_mm", "masses_ml", "outside_kidneys_ml",
                                                             "in_liver_spleen_ml", "both_found")} for row in bench]
        write_text(args.output / "registry_metrics.json", json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
