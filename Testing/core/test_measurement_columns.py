"""The measurement table's column list (measurement_columns): every value the CSV writer fills has a column (the
writer drops what has none), every column is filled by some row, and docs/measurement_columns.md is the list."""
from pathlib import Path

import pytest

from KidneyTumorSegLib.confidence import UncertainLesion
from KidneyTumorSegLib.measurement_columns import COLUMNS, CSV_COLUMNS, MEANINGS, UNITS, markdown_table
from KidneyTumorSegLib.measurements import csv_rows, mark_uncertain
from test_measurements import _case

DOC = Path(__file__).resolve().parents[2] / "docs" / "measurement_columns.md"


def _rows():
    """A kidney, a scored tumor, a cyst (no scores: ``unscored``) and a lesion --min-confidence took out."""
    m = _case()
    for lesion in m.lesions:
        lesion.confidence = 0.9
    mark_uncertain(m, 0.5)
    m.uncertain.append(UncertainLesion("tumor", "left", 1.2, (1.0, 2.0, 3.0), 0.2, id="uncertain_1"))
    m.min_confidence = 0.5
    return csv_rows(m)


def test_every_written_value_has_a_column_and_every_column_is_written():
    rows = _rows()
    assert [r["record"] for r in rows] == ["kidney", "lesion", "lesion", "uncertain"]
    assert [r["kidney_id"] for r in rows] == ["kidney_left"] * 3 + [None]  # taken out before it had a kidney
    written = set().union(*rows)
    assert written - set(CSV_COLUMNS) == set()  # nothing the writer would drop
    assert set(CSV_COLUMNS) - written == set()  # no column that no row can fill
    assert len(CSV_COLUMNS) == len(set(CSV_COLUMNS))


@pytest.mark.parametrize("name, unit, meaning", COLUMNS)
def test_each_column_has_a_meaning_and_the_unit_its_name_says(name, unit, meaning):
    assert len(meaning) > 10 and UNITS[name] == unit and MEANINGS[name] == meaning
    if name.endswith("_ml"):
        assert unit == "mL"
    if name.endswith("_mm") or name.startswith("centroid_"):
        assert unit == "mm"
    if name in ("R", "E", "N", "L", "total") or (name.startswith("padua_") and name != "padua_score"):
        assert unit == "points"


def test_the_documented_columns_are_the_code_s():
    text = DOC.read_text(encoding="utf-8")
    assert markdown_table() in text, ("docs/measurement_columns.md is out of date: paste "
                                      "measurement_columns.markdown_table() into it")
