"""The measurement table's columns: their order in the CSV file, unit and meaning.

One list, so that the CSV (``measurements.write_measurements``), the table Slicer shows (its header tooltips
carry the unit and meaning) and the README's column list cannot drift apart. A cell is empty where a column
does not apply to a row (a kidney has no diameter; a cyst, a tumor under 10 mm or one outside the kidneys
has no R.E.N.A.L. or PADUA score, and ``unscored`` says why).
"""
from typing import Dict, List, Tuple

# (name, unit or "", meaning)
COLUMNS: List[Tuple[str, str, str]] = [
    ("record", "", "kidney, lesion, or uncertain (a lesion --min-confidence took out of the segmentation)"),
    ("id", "", "the row's name: kidney_left, kidney_right (kidney_1 when the side is unknown), tumor_1, cyst_1, ... "
            "(numbered per kind), uncertain_1, ..."),
    ("kind", "", "kidney, tumor or cyst"),
    ("side", "", "the patient's left or right; empty when unknown"),
    ("kidney_id", "", "the kidney that holds the lesion (a kidney's own id on its row; empty: none)"),
    ("volume_ml", "mL", "voxel count x voxel volume; a kidney's counts its tumors and cysts"),
    ("parenchyma_volume_ml", "mL", "a kidney's volume without its tumors and cysts"),
    ("longest_diameter_mm", "mm", "longest 3D diameter, between voxel centres"),
    ("longest_axial_diameter_mm", "mm", "longest diameter within one axial slice (RECIST style)"),
    ("perpendicular_axial_diameter_mm", "mm", "longest chord perpendicular to it, in the same slice"),
    ("centroid_lps_x", "mm", "centre of mass, LPS x (ITK, DICOM)"),
    ("centroid_lps_y", "mm", "centre of mass, LPS y"),
    ("centroid_lps_z", "mm", "centre of mass, LPS z"),
    ("centroid_ras_x", "mm", "centre of mass, RAS x (Slicer)"),
    ("centroid_ras_y", "mm", "centre of mass, RAS y"),
    ("centroid_ras_z", "mm", "centre of mass, RAS z"),
    ("exophytic_fraction", "", "share of the tumor outside the kidney's outline (0-1; R.E.N.A.L. E)"),
    ("distance_to_sinus_mm", "mm", "gap between the tumor and the renal sinus estimate (R.E.N.A.L. N)"),
    ("R", "points", "R.E.N.A.L. radius: <= 40 mm 1, 40-70 mm 2, >= 70 mm 3"),
    ("E", "points", "R.E.N.A.L. exophytic: >= 50 % 1, < 50 % 2, entirely endophytic 3"),
    ("N", "points", "R.E.N.A.L. nearness to the sinus: >= 7 mm 1, 4-7 mm 2, <= 4 mm 3"),
    ("A", "", "R.E.N.A.L. anterior (a), posterior (p) or neither (x)"),
    ("L", "points", "R.E.N.A.L. location against the polar lines: 1, 2 or 3"),
    ("total", "points", "R.E.N.A.L. total R + E + N + L (4-12)"),
    ("suffix", "", "R.E.N.A.L. suffix (A)"),
    ("score", "", "R.E.N.A.L. as reported, e.g. 7p (an estimate from the segmentation, not a reading)"),
    ("padua_polar", "points", "PADUA longitudinal location: polar 1, middle 2"),
    ("padua_exophytic", "points", "PADUA exophytic rate: >= 50 % 1, < 50 % 2, endophytic 3"),
    ("padua_rim", "points", "PADUA renal rim: lateral 1, medial 2"),
    ("padua_sinus", "points", "PADUA renal sinus: not involved 1, involved 2"),
    ("padua_collecting_system", "points", "PADUA collecting system (depth estimate): not involved 1, involved 2"),
    ("padua_size", "points", "PADUA size: <= 4 cm 1, 4.1-7 cm 2, > 7 cm 3"),
    ("padua_total", "points", "PADUA total (6-14)"),
    ("padua_score", "", "PADUA as reported, e.g. 9a (an estimate from the segmentation, not a reading)"),
    ("confidence", "", "mean probability of the lesion's class over its voxels (0-1)"),
    ("uncertain", "", "True: the model is unsure of this lesion (below its recommended confidence)"),
    ("unscored", "", "why a lesion has no R.E.N.A.L. or PADUA score"),
]

CSV_COLUMNS: List[str] = [name for name, _, _ in COLUMNS]
UNITS: Dict[str, str] = {name: unit for name, unit, _ in COLUMNS}
MEANINGS: Dict[str, str] = {name: meaning for name, _, meaning in COLUMNS}


def markdown_table() -> str:
    """The columns as the Markdown table of docs/measurement_columns.md (a test keeps that file equal to it)."""
    lines = ["| column | unit | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {unit} | {meaning} |" for name, unit, meaning in COLUMNS]
    return "\n".join(lines) + "\n"
