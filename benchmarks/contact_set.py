"""Lesion and foreground in the liver and spleen where the kidney meets them with no fat between (decision 99).

The contact set is the held-out test set painted again with ``training.synthetic --organ-contact`` (the same
cases, maps and seed; in about half of them the fat planes between a kidney and the liver or spleen are closed:
``organ_contact_mm`` in its synthetic.json). Over the cases that drew contact this sums, from a model's figures on
that set:
- lesion in the liver and spleen: tumor and cyst voxels predicted there (``lesion_errors.py``'s
  false_in_liver and false_in_spleen);
- foreground in the liver and spleen: predicted kidney, tumor or cyst there (``model_card.py``'s organs.csv).
A proxy on synthetic data for the real-CT failure it answers (lesion called across the liver-kidney contact):
reported beside a candidate's figures, not a ship gate. ``benchmarks/candidate.py measure`` runs it.

Usage: python benchmarks/contact_set.py --set SETS/contact --card OUT/contact/card
           --lesion-errors OUT/contact/lesion_errors [-o OUT/contact.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

LESION_COLUMNS = ("false_in_liver", "false_in_spleen")


def contact_cases(set_dir: Path) -> List[str]:
    """The set's cases whose painting drew organ contact (synthetic.json's ``organ_contact_mm`` not None)."""
    log = set_dir / "synthetic.json"
    if not log.is_file():
        raise SystemExit(f"--set {set_dir}: no synthetic.json there; give the contact set's folder "
                         "(benchmarks/candidate.py sets paints it as SETS/contact)")
    cases = json.loads(log.read_text(encoding="utf-8")).get("cases", {})
    if not any("organ_contact_mm" in e for e in cases.values()):
        raise SystemExit(f"--set {set_dir} was painted without --organ-contact: it is not a contact set")
    return sorted(c for c, e in cases.items() if e.get("organ_contact_mm") is not None)


def _rows(path: Path, what: str) -> List[Dict[str, str]]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run {what} on the contact set first (candidate.py measure does)")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _ml(value: str) -> float:
    return float(value) if value not in ("", "None") else 0.0


def summarize(set_dir: Path, card: Path, lesion_errors: Path) -> Dict[str, object]:
    cases = contact_cases(set_dir)
    lesions = _rows(lesion_errors / "lesion_errors.csv", "benchmarks/lesion_errors.py")
    organs = _rows(card / "synthetic" / "organs.csv", "benchmarks/model_card.py")
    found = {r["case"] for r in organs}
    for folder, have in ((card, found), (lesion_errors, {r["case"] for r in lesions})):
        missing = [c for c in cases if c not in have]
        if missing:
            raise SystemExit(f"{folder}: no figures for the contact cases {', '.join(missing)}; measure the whole set")
    chosen = set(cases)
    lesion = sum(_ml(r[c]) for r in lesions if r["case"] in chosen for c in LESION_COLUMNS)
    foreground = sum(_ml(r["in_liver_spleen_ml"]) for r in organs if r["case"] in chosen)
    return {"contact_cases": len(cases), "cases": len(found), "lesion_in_liver_spleen_ml": round(lesion, 1),
            "foreground_in_liver_spleen_ml": round(foreground, 1)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", type=Path, required=True, help="the contact set (SETS/contact)")
    p.add_argument("--card", type=Path, required=True, help="model_card.py's output on that set")
    p.add_argument("--lesion-errors", type=Path, required=True, help="lesion_errors.py's output on that set")
    p.add_argument("-o", "--output", type=Path, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    s = summarize(args.set, args.card, args.lesion_errors)
    print(f"Contact set: {s['contact_cases']} of {s['cases']} cases drew organ contact; over them, "
          f"{s['lesion_in_liver_spleen_ml']:.1f} mL of lesion and {s['foreground_in_liver_spleen_ml']:.0f} mL of "
          "foreground (kidney, tumor or cyst) predicted in the liver and spleen.")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
