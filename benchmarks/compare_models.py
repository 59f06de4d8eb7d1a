"""Compare models from the figures the benchmarks wrote, and apply the ship rule of docs/decisions.md (54).

Each ``--model NAME REAL CARD [CONF [LESIONS]]`` names a model and its output folders: REAL from
``benchmarks/real_ct.py -o`` (real_ct.json), CARD from ``benchmarks/model_card.py -o`` (registry_metrics.json)
and, optionally, CONF from ``benchmarks/confidence_threshold.py`` (its folder or its JSON) and LESIONS from
``benchmarks/lesion_errors.py -o`` (lesion_errors.csv: the held-out false tumor, of it on kidney tissue and over
5 mm from every true tumor). It prints the comparison table of ``Resources/Models/stage2_runs.md`` (markdown, one
column per model) and, with ``--baseline NAME``, the rule for every other model, decided before its figures
exist: over the real CTs,
  (a) less false tumor + cyst outside the reference kidneys in total than the baseline,
  (b) at most 1 mL of lesion in the liver or spleen on each CT,
  (c) a mean kidney Dice at least the baseline's, and both kidneys found on each CT (as the rule was written),
and (d) a held-out synthetic tumor Dice at least the baseline's. A model is shipped only if it passes all four.
``--outside-at-most ML`` and ``--tumor-dice-at-least D`` replace (a)'s and (d)'s comparison with the baseline by
fixed bounds (a rule that allows for seed noise, decisions 85 and 86). A time limit, or a choice between two
candidates that both pass, stays outside this script. Beside the verdict, where CARD holds model_card.py's
synthetic/metrics.csv for both, it prints the held-out tumor Dice difference case by case with a paired bootstrap
interval: how large a difference the held-out cases alone can tell (information, not part of the rule).
Usage: python benchmarks/compare_models.py --model v2 V2_REAL V2_CARD [V2_CONF [V2_LESIONS]] --model ep EP_REAL
    EP_CARD [...] --baseline v2 [--outside-at-most ML] [--tumor-dice-at-least D]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class Figures:
    name: str
    cases: List[dict]           # real_ct.json "cases", in its order
    held_out: dict              # registry_metrics.json "held_out_synthetic"
    false_lesions: Optional[List[dict]] = None  # confidence_threshold.json groups.false_synthetic
    false_tumor: Optional[Dict[str, float]] = None  # lesion_errors.csv, tumor rows summed: false mL by where
    tumor_by_case: Optional[Dict[str, float]] = None  # CARD/synthetic/metrics.csv: each held-out case's tumor Dice

    @property
    def outside_ml(self) -> float:
        return sum(c["outside_kidneys_ml"] for c in self.cases)

    @property
    def mean_kidney_dice(self) -> float:
        return sum(c["kidney_dice"] for c in self.cases) / len(self.cases)

    @property
    def tumor_dice(self) -> float:
        return self.held_out["mean"]["tumor"]["dice"]


def _locate(path: Path, name: str, writer: str) -> Path:
    """``path`` itself, or ``name`` in it when it is a folder; a clear exit when it is not there."""
    path = path / name if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"{path}: not found; run {writer} first (see this script's help)")
    return path


def _read_json(path: Path, name: str) -> dict:
    path = _locate(path, name, f"the benchmark that writes {name}")
    return json.loads(path.read_text(encoding="utf-8"))


def _false_tumor(folder: Path) -> Dict[str, float]:
    """lesion_errors.csv's tumor rows summed: all false tumor, that on kidney tissue, that far from true tumor."""
    path = _locate(folder, "lesion_errors.csv", "benchmarks/lesion_errors.py")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"kind", "false_in_kidney", "false_beyond_near_mm"} <= set(reader.fieldnames or ()):
            raise SystemExit(f"{path}: not a lesion_errors.py CSV (or an older one); rerun benchmarks/lesion_errors.py")
        rows = [r for r in reader if r["kind"] == "tumor"]
    if not rows:
        raise SystemExit(f"{path}: no tumor rows; rerun benchmarks/lesion_errors.py on the held-out set")
    false = [k for k in rows[0] if k.startswith("false_in_")]
    return {"false": sum(float(r[k]) for r in rows for k in false),
            "on_kidney": sum(float(r["false_in_kidney"]) for r in rows),
            "far": sum(float(r["false_beyond_near_mm"]) for r in rows)}


def _tumor_dice_by_case(card: Path) -> Optional[Dict[str, float]]:
    """Each held-out case's tumor Dice from model_card.py's synthetic/metrics.csv; None where the folder lacks it."""
    path = (card if card.is_dir() else card.parent) / "synthetic" / "metrics.csv"
    if not path.is_file():
        return None
    found = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("region") != "tumor":
                continue
            try:
                value = float(row.get("dice") or "nan")  # blank: a case with no Dice to give
            except ValueError:
                continue
            if not math.isnan(value):
                found[row["case"]] = value
    return found or None


def tumor_dice_difference(candidate: Figures, baseline: Figures, draws: int = 10_000,
                          seed: int = 0) -> Optional[Tuple[float, float, float, int]]:
    """(mean, low, high, cases): the candidate's held-out tumor Dice minus the baseline's, case by case, with a
    paired bootstrap 95 % interval over the cases. It says how large a difference the held-out cases alone can
    tell; seed noise (decision 80) comes on top. None unless both have per-case figures for the same cases."""
    a, b = candidate.tumor_by_case, baseline.tumor_by_case
    if not a or not b or set(a) != set(b) or len(a) < 2:
        return None
    diff = np.array([a[c] - b[c] for c in sorted(a)])
    means = diff[np.random.default_rng(seed).integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high), len(diff)


def load(name: str, folders: Sequence[str]) -> Figures:
    """A model's figures from its benchmark folders (REAL, CARD and optionally CONF and LESIONS)."""
    if len(folders) not in (2, 3, 4):
        raise SystemExit(f"--model {name}: give REAL CARD [CONF [LESIONS]] folders, got {len(folders)}")
    conf = _read_json(Path(folders[2]), "confidence_threshold.json") if len(folders) >= 3 else None
    real = _read_json(Path(folders[0]), "real_ct.json")
    if not real.get("cases"):
        raise SystemExit(f"--model {name}: {folders[0]} has no real-CT cases; rerun benchmarks/real_ct.py")
    return Figures(name, real["cases"],
                   _read_json(Path(folders[1]), "registry_metrics.json")["held_out_synthetic"],
                   conf["groups"]["false_synthetic"] if conf else None,
                   _false_tumor(Path(folders[3])) if len(folders) == 4 else None,
                   _tumor_dice_by_case(Path(folders[1])))


def _per_case(f: Figures, key: str, fmt: str) -> str:
    return " / ".join("–" if c.get(key) is None else fmt.format(c[key]) for c in f.cases)


def table(models: Sequence[Figures]) -> str:
    """The comparison table (markdown), one column per model; all must have been measured on the same real CTs."""
    for f in models[1:]:
        same_cases(f, models[0])
    def with_part(value: float, part) -> str:  # part: {"mean": ...}, or None / mean None where no case has one
        return f"{value:.3f}" + (f" ({part['mean']:.3f})" if part and part.get("mean") is not None else "")

    def size(f):
        return with_part(f.tumor_dice, f.held_out.get("tumor_dice_by_size", {}).get("2-4cm"))

    def cyst(f):
        return with_part(f.held_out["mean"]["cyst"]["dice"], f.held_out.get("cyst_dice_cases_with_cyst"))

    def organs(f):  # older model_card.py folders lack it
        o = f.held_out.get("in_liver_spleen_ml")
        return "–" if o is None else f"{o['mean_ml']:.1f} ({o['cases_over_10_ml']} of {o['n']} > 10 mL)"

    def false_set(f):
        if f.false_lesions is None:
            return "–"
        return f"{sum(x['volume_ml'] for x in f.false_lesions):.1f} mL in {len(f.false_lesions)}"

    def false_tumor(f):
        t = f.false_tumor
        return "–" if t is None else f"{t['false']:,.0f} ({t['on_kidney']:,.0f}; {t['far']:,.0f})"

    cases = " / ".join(c["case"] for c in models[0].cases)
    rows = [("held-out synthetic tumor Dice (2-4 cm)", size),
            ("held-out synthetic cyst Dice (cases with a cyst)", cyst),
            ("held-out synthetic foreground in the liver or spleen, mean mL", organs),
            ("held-out false tumor, mL (of it: on kidney tissue; over 5 mm from a true tumor)", false_tumor),
            (f"real-CT kidney Dice: {cases}", lambda f: _per_case(f, "kidney_dice", "{:.3f}")),
            ("real-CT false tumor + cyst outside the kidneys, mL",
             lambda f: _per_case(f, "outside_kidneys_ml", "{:.1f}")),
            ("the same, total, mL", lambda f: f"{f.outside_ml:.1f}"),
            ("all predicted tumor + cyst, total, mL", lambda f: f"{sum(c['masses_ml'] for c in f.cases):.1f}"),
            ("real-CT lesion in the liver or spleen, mL", lambda f: _per_case(f, "in_liver_spleen_ml", "{:.1f}")),
            ("false lesion on the synthetic confidence set", false_set)]
    lines = ["| check | " + " | ".join(f.name for f in models) + " |", "|---" * (len(models) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cell(f) for f in models) + " |" for label, cell in rows]
    return "\n".join(lines)


def same_cases(a: Figures, b: Figures) -> None:
    """Refuse two models measured on different real CTs (or in another order): their columns would not match."""
    if [c["case"] for c in a.cases] != [c["case"] for c in b.cases]:
        raise SystemExit(f"{a.name} and {b.name} were measured on different real CTs; rerun benchmarks/real_ct.py "
                         "with the same --cases for both")


def ship_rule(candidate: Figures, baseline: Figures, outside_at_most: Optional[float] = None,
              tumor_dice_at_least: Optional[float] = None) -> Dict[str, bool]:
    """Decision 54's four points for ``candidate`` against ``baseline`` (text -> passed). A rule that allows for
    seed noise (decisions 85 and 86) gives its own bounds: (a) at most ``outside_at_most`` mL instead of less
    than the baseline, (d) at least ``tumor_dice_at_least`` instead of the baseline's Dice."""
    same_cases(candidate, baseline)
    liver = max((c.get("in_liver_spleen_ml") or 0.0) for c in candidate.cases)
    found = all(c["both_found"] for c in candidate.cases)
    tumor_min = baseline.tumor_dice if tumor_dice_at_least is None else tumor_dice_at_least
    tumor_text = f"{tumor_min:.3f}" if tumor_dice_at_least is None else f"{tumor_min:g}"  # a bound as given
    if outside_at_most is None:
        a = (f"(a) false lesion outside the kidneys {candidate.outside_ml:.1f} mL < {baseline.outside_ml:.1f}",
             candidate.outside_ml < baseline.outside_ml)
    else:
        a = (f"(a) false lesion outside the kidneys {candidate.outside_ml:.1f} mL <= {outside_at_most:g}",
             candidate.outside_ml <= outside_at_most)
    return {a[0]: a[1],
            f"(b) lesion in liver/spleen at most {liver:.1f} mL <= 1": liver <= 1.0,
            f"(c) mean kidney Dice {candidate.mean_kidney_dice:.3f} >= {baseline.mean_kidney_dice:.3f}, both found "
            f"on every CT: {found}": candidate.mean_kidney_dice >= baseline.mean_kidney_dice and found,
            f"(d) held-out tumor Dice {candidate.tumor_dice:.3f} >= {tumor_text}":
            candidate.tumor_dice >= tumor_min}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", nargs="+", action="append", required=True, metavar="NAME REAL CARD [CONF [LESIONS]]",
                   help="a model's name and the output folders of real_ct.py, model_card.py "
                        "[, confidence_threshold.py [, lesion_errors.py]]")
    p.add_argument("--baseline", help="apply the ship rule to every other model against this one")
    p.add_argument("--outside-at-most", type=float, metavar="ML", help="rule (a): at most this much false lesion "
                   "outside the reference kidneys of the real CTs, in total (default: less than the baseline)")
    p.add_argument("--tumor-dice-at-least", type=float, metavar="D", help="rule (d): at least this held-out tumor "
                   "Dice (default: the baseline's)")
    args = p.parse_args(argv)
    if (args.outside_at_most is not None or args.tumor_dice_at_least is not None) and not args.baseline:
        p.error("--outside-at-most and --tumor-dice-at-least are bounds of the ship rule: give --baseline too")
    models = [load(m[0], m[1:]) for m in args.model]
    print(table(models))
    if args.baseline:
        named = {m.name: m for m in models}
        if args.baseline not in named:
            p.error(f"--baseline {args.baseline}: not among the --model names {sorted(named)}")
        for m in models:
            if m.name == args.baseline:
                continue
            rule = ship_rule(m, named[args.baseline], args.outside_at_most, args.tumor_dice_at_least)
            print(f"\n{m.name} against {args.baseline}:")
            print("\n".join(("PASS " if ok else "FAIL ") + text for text, ok in rule.items()))
            print("SHIP" if all(rule.values()) else "DO NOT SHIP")
            spread = tumor_dice_difference(m, named[args.baseline])
            if spread is not None:
                print(f"held-out tumor Dice, {m.name} minus {args.baseline}: {spread[0]:+.3f} over {spread[3]} cases, "
                      f"paired bootstrap 95 % interval {spread[1]:+.3f} to {spread[2]:+.3f} (the cases' sampling "
                      "alone; seed noise, decision 80, comes on top)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
