"""The measurement table's columns: their order in the CSV file, unit and meaning.

One list, so that the CSV (``measurements.write_measurements``), the table Slicer shows (each cell's tooltip
carries its column's unit and meaning) and docs/measurement_columns.md cannot drift apart. A cell is empty where a
column does not apply to a row (a kidney has no diameter; a cyst, a tumor under 10 mm across (its longest diameter
plus one voxel) or one outside the kidneys has no R.E.N.A.L. or PADUA score, and ``unscored`` says why).
"""
from typing import Dict, List, Tuple

# (name, unit or "", meaning)
COLUMNS: List[Tuple[str, str, str]] = [
    ("record", "", "kidney, lesion, or uncertain (a lesion --min-confidence took out of the segmentation)"),
    ("id", "", "the row's name: kidney_left, kidney_right (a second piece on one side: kidney_left_2, ...), "
            "tumor_1, cyst_1, ... (per kind, largest first), uncertain_1, ... (largest first)"),
    ("kind", "", "kidney, tumor or cyst"),
    ("side", "", "the patient's left or right (a lesion's: its kidney's); empty for a lesion outside every kidney"),
    ("kidney_id", "", "the kidney that holds the lesion (a kidney's own id on its row); empty: a lesion outside "
                   "every kidney, or an uncertain row (taken out before the kidneys were measured)"),
    ("volume_ml", "mL", "voxel count x voxel volume; a kidney's counts its tumors and cysts (not those "
                   "--min-confidence took out)"),
    ("parenchyma_volume_ml", "mL", "the kidney label's volume, without tumors and cysts (includes the renal sinus "
                              "where it is labelled kidney)"),
    ("longest_diameter_mm", "mm", "longest 3D diameter, between voxel centres"),
    ("longest_axial_diameter_mm", "mm", "longest diameter within one axial slice (RECIST style)"),
    ("perpendicular_axial_diameter_mm", "mm", "longest chord perpendicular to it, in the same slice"),
    ("centroid_lps_x", "mm", "centre of mass, LPS x (ITK, DICOM)"),
    ("centroid_lps_y", "mm", "centre of mass, LPS y"),
    ("centroid_lps_z", "mm", "centre of mass, LPS z"),
    ("centroid_ras_x", "mm", "centre of mass, RAS x (= -LPS x; the CT's own frame, before any Slicer transform)"),
    ("centroid_ras_y", "mm", "centre of mass, RAS y"),
    ("centroid_ras_z", "mm", "centre of mass, RAS z"),
    ("exophytic_fraction", "", "share of the tumor outside the kidney's outline (0-1; R.E.N.A.L. E)"),
    ("distance_to_sinus_mm", "mm", "gap between the tumor and the renal sinus estimate (R.E.N.A.L. N)"),
    ("R", "points", "R.E.N.A.L. radius: <= 40 mm 1, 40-70 mm 2, >= 70 mm 3"),
    ("E", "points", "R.E.N.A.L. exophytic: >= 50 % 1, < 50 % 2, entirely endophytic (< 1 % outside) 3"),
    ("N", "points", "R.E.N.A.L. nearness to the sinus: >= 7 mm 1, 4-7 mm 2, <= 4 mm 3"),
    ("A", "", "R.E.N.A.L. anterior (a), posterior (p) or neither (x)"),
    ("L", "points", "R.E.N.A.L. location: entirely above or below a polar line 1, crossing one 2, > 50 % between "
                  "them or crossing the axial midline 3 (polar lines estimated: the hilum's lips, else thirds of "
                  "the kidney's length)"),
    ("total", "points", "R.E.N.A.L. total R + E + N + L (4-12); empty when N is (no sinus estimate found)"),
    ("suffix", "", "a, p or x, as A; the hilar suffix h is never given (the labels hold no vessels)"),
    ("score", "", "R.E.N.A.L. as reported, e.g. 7p (an estimate from the segmentation, not a reading; never h); "
                 "empty when total is"),
    ("padua_polar", "points", "PADUA longitudinal location: polar 1, middle 2"),
    ("padua_exophytic", "points", "PADUA exophytic rate: >= 50 % 1, < 50 % 2, endophytic 3"),
    ("padua_rim", "points", "PADUA renal rim: lateral 1, medial 2"),
    ("padua_sinus", "points", "PADUA renal sinus: not involved 1, involved 2 (within 1 mm of the sinus estimate "
                            "or 15 mm deep in the kidney's outline)"),
    ("padua_collecting_system", "points", "PADUA collecting system: not involved 1, involved 2 (the tumor reaches "
                                        "20 mm deep in the kidney's outline; an estimate, dilatation is not seen)"),
    ("padua_size", "points", "PADUA size: <= 4 cm 1, > 4 to 7 cm 2, > 7 cm 3"),
    ("padua_total", "points", "PADUA total (6-14)"),
    ("padua_score", "", "PADUA as reported, e.g. 9a (an estimate from the segmentation, not a reading)"),
    ("confidence", "", "mean probability of the lesion's class over its voxels (0-1)"),
    ("uncertain", "", "True: confidence below the model's recommended threshold (segment without "
                   "--min-confidence) or, on an uncertain row, below --min-confidence; False: at or above it; "
                   "empty: no threshold applied or no confidence"),
    ("unscored", "", "why a lesion has no R.E.N.A.L. or PADUA score (a cyst, outside the kidneys, too small); "
                   "empty on uncertain rows, which are not measured further"),
]

CSV_COLUMNS: List[str] = [name for name, _, _ in COLUMNS]
UNITS: Dict[str, str] = {name: unit for name, unit, _ in COLUMNS}
MEANINGS: Dict[str, str] = {name: meaning for name, _, meaning in COLUMNS}


def markdown_table() -> str:
    """The columns as the Markdown table of docs/measurement_columns.md (a test keeps that file equal to it)."""
    lines = ["| column | unit | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {unit} | {meaning} |" for name, unit, meaning in COLUMNS]
    return "\n".join(lines) + "\n"
