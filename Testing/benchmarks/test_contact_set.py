"""benchmarks/contact_set.py: lesion and foreground in the liver and spleen, summed over the contact cases only."""
import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "contact_set.py"
_spec = importlib.util.spec_from_file_location("benchmarks_contact_set", _SCRIPT)
contact = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = contact
_spec.loader.exec_module(contact)


def _csv(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _figures(tmp_path, cases):
    s = tmp_path / "contact"
    s.mkdir()
    (s / "synthetic.json").write_text(json.dumps({"cases": cases}))
    lesions = [{"case": c, "kind": k, "false_in_liver": liver, "false_in_spleen": spleen, "false_in_kidney": 50.0}
               for c, (liver, spleen) in {"a": (1.5, 0.25), "b": (10.0, 20.0), "c": (0.5, "")}.items()
               for k in ("tumor", "cyst")]
    _csv(tmp_path / "le" / "lesion_errors.csv", lesions)
    _csv(tmp_path / "card" / "synthetic" / "organs.csv",
         [{"case": c, "in_liver_spleen_ml": v, "kidney_hu": 150} for c, v in (("a", 3.0), ("b", 100.0), ("c", 7.0))])
    return s


def test_only_the_cases_that_drew_contact_are_summed(tmp_path, capsys):
    s = _figures(tmp_path, {"a": {"organ_contact_mm": 3.1, "organ_contact_ml": 2.0},
                            "b": {"organ_contact_mm": None, "organ_contact_ml": 0.0},
                            "c": {"organ_contact_mm": 5.0, "organ_contact_ml": 0.0}})
    got = contact.summarize(s, tmp_path / "card", tmp_path / "le")
    # a and c drew contact (c closed no fat, yet was drawn); b's 30 mL of lesion and 100 mL of foreground are left out
    assert got == {"contact_cases": 2, "cases": 3, "lesion_in_liver_spleen_ml": round(2 * (1.5 + 0.25 + 0.5), 1),
                   "foreground_in_liver_spleen_ml": 10.0}
    assert contact.main(["--set", str(s), "--card", str(tmp_path / "card"), "--lesion-errors", str(tmp_path / "le"),
                         "-o", str(tmp_path / "o" / "c.json")]) == 0
    assert json.loads((tmp_path / "o" / "c.json").read_text()) == got
    assert "2 of 3 cases drew organ contact" in capsys.readouterr().out


def test_a_set_without_contact_or_without_figures_is_refused(tmp_path):
    s = _figures(tmp_path, {"a": {"phase": "portal"}, "b": {"phase": "portal"}})
    with pytest.raises(SystemExit, match="painted without --organ-contact"):
        contact.summarize(s, tmp_path / "card", tmp_path / "le")
    (s / "synthetic.json").write_text(json.dumps({"cases": {"z": {"organ_contact_mm": 2.0}}}))
    with pytest.raises(SystemExit, match="no figures for the contact cases z"):
        contact.summarize(s, tmp_path / "card", tmp_path / "le")
    both = {"a": {"organ_contact_mm": 2.0}, "b": {"organ_contact_mm": 3.0}}
    (s / "synthetic.json").write_text(json.dumps({"cases": both}))
    rows = list(csv.DictReader(open(tmp_path / "le" / "lesion_errors.csv")))
    _csv(tmp_path / "le" / "lesion_errors.csv", [r for r in rows if r["case"] != "b"])
    with pytest.raises(SystemExit, match="le: no figures for the contact cases b"):
        contact.summarize(s, tmp_path / "card", tmp_path / "le")
    with pytest.raises(SystemExit, match="lesion_errors.csv is missing"):
        contact.summarize(s, tmp_path / "card", tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="no synthetic.json there"):
        contact.summarize(tmp_path, tmp_path / "card", tmp_path / "le")
