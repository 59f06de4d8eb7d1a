"""benchmarks/model_card.py's breakdown of the held-out synthetic figures by appearance."""
import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

# benchmarks/ is not an installed package: load the script by path (it puts the repository on sys.path itself).
_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "model_card.py"
_spec = importlib.util.spec_from_file_location("benchmarks_model_card", _SCRIPT)
mc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mc
_spec.loader.exec_module(mc)
appearance_markdown, appearance_of, dice_by_appearance = mc.appearance_markdown, mc.appearance_of, mc.dice_by_appearance

COLUMNS = ["case", "region", "labels", "empty", "dice"]


def test_dice_by_appearance_groups_cases_as_the_generator_painted_them(tmp_path):
    cases = {"a": {"phase": "portal"}, "b": {"phase": "arterial"}, "c": {"phase": "unenhanced"},
             "d": {"phase": "unenhanced", "random_intensities": True}}
    (tmp_path / "synthetic.json").write_text(json.dumps({"cases": cases}))
    rows = []
    for case, tumor, cyst, empty in (("a", 0.8, 0.5, "none"), ("b", 0.4, 0.0, "reference"),
                                     ("c", 0.1, 1.0, "both"), ("d", 0.0, 0.2, "none")):
        rows += [dict(case=case, region="kidney_and_masses", labels="1+2+3", empty="none", dice=0.9),
                 dict(case=case, region="tumor", labels="2", empty="none", dice=tumor),
                 dict(case=case, region="cyst", labels="3", empty=empty, dice=cyst)]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    table = dice_by_appearance(tmp_path / "metrics.csv", tmp_path / "synthetic.json")
    assert list(table) == ["contrast-enhanced", "unenhanced", "random intensities"]
    enhanced = table["contrast-enhanced"]
    assert enhanced["n"] == 2 and enhanced["tumor"] == {"n": 2, "mean": pytest.approx(0.6)}
    assert enhanced["cyst_with_reference"] == {"n": 1, "mean": 0.5}  # b has no reference cyst
    assert table["unenhanced"]["cyst_with_reference"] == {"n": 0, "mean": None}  # both empty is not a cyst
    assert table["random intensities"]["tumor"]["mean"] == 0.0 and appearance_of(cases["d"]) == "random intensities"
    assert appearance_of({}) == appearance_of({"kits_case": "case_00001"}) == "unknown"  # older generators
    text = appearance_markdown(table)
    assert "| contrast-enhanced | 2 | 0.900 (n=2) | 0.600 (n=2) | 0.500 (n=1) |" in text and "| n/a |" in text
