"""Measurements against analytic shapes sampled in physical space on anisotropic and oblique grids."""
import csv
import json

import numpy as np
import pytest

from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.measurements import Measurements, mark_uncertain, measure, write_measurements
from KidneyTumorSegLib.measurements import csv_rows as measurement_csv_rows
from KidneyTumorSegLib.report import render_html
from KidneyTumorSegLib.result_text import describe_measurements
from phantoms import rotation

K, T, C = int(Label.KIDNEY), int(Label.TUMOR), int(Label.CYST)
SPACING = (0.8, 1.1, 2.5)  # (x, y, z) mm
VOXEL = max(SPACING)       # diameters must be within one voxel of the largest spacing


DIRECTIONS = {"axial": np.eye(3), "oblique": rotation(20, -15, 30), "flipped": np.diag([-1.0, -1.0, 1.0])}


def grid(direction, extent_mm=(90, 90, 130), centre=(40.0, -20.0, 30.0), spacing=SPACING):
    """Geometry covering ``extent_mm`` (x, y, z) around the LPS point ``centre``."""
    sp = np.asarray(spacing, float)
    size = np.ceil(np.asarray(extent_mm) / sp).astype(int)
    origin = np.asarray(centre) - np.asarray(direction) @ (sp * (size - 1) / 2)
    return Geometry(sp, origin, np.asarray(direction).ravel(), tuple(size))


def points(g):
    """LPS position of every voxel centre, shape (z, y, x, 3)."""
    k, j, i = np.indices(g.shape)
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    return g.index_to_physical(ijk).reshape(g.shape + (3,))


def ellipsoid(p, centre, radii, axes=np.eye(3)):
    """Inside test of an ellipsoid whose semi-axis n (radius radii[n]) lies along column n of ``axes``."""
    q = (p - np.asarray(centre)) @ np.asarray(axes)
    return np.sum((q / np.asarray(radii)) ** 2, axis=-1) <= 1.0


def paint(g, shapes):
    """Label map sampled at voxel centres; later shapes overwrite earlier ones."""
    p = points(g)
    lab = np.zeros(g.shape, np.uint8)
    for label, inside in shapes:
        lab[inside(p)] = label
    return lab


KIDNEY_C = np.array([40.0, -20.0, 30.0])
KIDNEY_R = (25.0, 20.0, 50.0)  # 104.7 mL


def kidney_with(*lesions):
    return [(K, lambda p: ellipsoid(p, KIDNEY_C, KIDNEY_R))] + list(lesions)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_sphere_volume_and_diameters(name):
    g = grid(DIRECTIONS[name])
    r = 16.0
    centre = KIDNEY_C + (14.0, 3.0, -5.0)  # partly outside the kidney
    lab = paint(g, kidney_with((T, lambda p: ellipsoid(p, centre, (r, r, r)))))
    m = measure(lab, g)
    (tumor,) = m.tumors
    assert tumor.volume_ml == pytest.approx(4 / 3 * np.pi * r ** 3 / 1000, rel=0.02)
    for d in (tumor.longest_diameter_mm, tumor.longest_axial_diameter_mm, tumor.perpendicular_axial_diameter_mm):
        assert abs(d - 2 * r) <= VOXEL
    assert np.allclose(tumor.centroid_lps, centre, atol=0.3)
    a, b = (np.asarray(x) for x in tumor.lines["longest"])
    assert np.linalg.norm(b - a) == pytest.approx(tumor.longest_diameter_mm, abs=1e-6)
    assert np.linalg.norm(0.5 * (a + b) - centre) < VOXEL  # the diameter runs through the centre


@pytest.mark.parametrize("name", ["axial", "oblique"])
def test_rotated_ellipsoid_longest_diameter_and_volume(name):
    g = grid(DIRECTIONS[name])
    radii, axes = (8.0, 12.0, 30.0), rotation(35, 10, -50)
    lab = paint(g, kidney_with((C, lambda p: ellipsoid(p, KIDNEY_C + (5, 0, 0), radii, axes))))
    (cyst,) = measure(lab, g).cysts
    assert cyst.volume_ml == pytest.approx(4 / 3 * np.pi * np.prod(radii) / 1000, rel=0.02)
    assert abs(cyst.longest_diameter_mm - 60.0) <= VOXEL
    assert cyst.renal is None and cyst.side == "left"


@pytest.mark.parametrize("name", ["axial", "oblique"])
def test_ellipsoid_along_z_longest_3d_exceeds_axial(name):
    g = grid(DIRECTIONS[name])
    radii = (10.0, 12.0, 30.0)
    lab = paint(g, kidney_with((T, lambda p: ellipsoid(p, KIDNEY_C + (18, 0, 0), radii))))
    (tumor,) = measure(lab, g).tumors
    assert abs(tumor.longest_diameter_mm - 60.0) <= VOXEL
    assert tumor.longest_diameter_mm > tumor.longest_axial_diameter_mm + 10
    if name == "axial":  # slices are true axial planes: the cross-section is the 24 x 20 mm ellipse
        assert abs(tumor.longest_axial_diameter_mm - 24.0) <= VOXEL
        assert abs(tumor.perpendicular_axial_diameter_mm - 20.0) <= VOXEL


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_kidney_volumes(name):
    g = grid(DIRECTIONS[name])
    r = 10.0  # fully inside: the kidney region stays the analytic ellipsoid
    lab = paint(g, kidney_with((T, lambda p: ellipsoid(p, KIDNEY_C + (8, 0, 10), (r, r, r)))))
    m = measure(lab, g)
    (kid,) = m.kidneys
    region = 4 / 3 * np.pi * np.prod(KIDNEY_R) / 1000
    tumor = 4 / 3 * np.pi * r ** 3 / 1000
    assert kid.volume_ml == pytest.approx(region, rel=0.02)
    assert kid.parenchyma_volume_ml == pytest.approx(region - tumor, rel=0.02)
    assert kid.tumor_volume_ml == pytest.approx(tumor, rel=0.02)
    assert np.allclose(kid.centroid_lps, KIDNEY_C, atol=0.5)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_side_from_physical_x(name):
    # Two kidneys at LPS x = +-60: patient left is +x whatever the direction matrix.
    g = grid(DIRECTIONS[name], extent_mm=(190, 70, 120), centre=(0.0, 0.0, 0.0), spacing=(1.5, 1.5, 3.0))
    left, right = np.array([60.0, 0, 0]), np.array([-60.0, 0, 0])
    lab = paint(g, [(K, lambda p: ellipsoid(p, left, (20, 15, 40)) | ellipsoid(p, right, (20, 15, 40))),
                    (T, lambda p: ellipsoid(p, left + (15, 0, 10), (8, 8, 8))),
                    (C, lambda p: ellipsoid(p, right + (-15, 0, -10), (7, 7, 7)))])
    m = measure(lab, g)
    assert sorted(k.side for k in m.kidneys) == ["left", "right"]
    for k in m.kidneys:
        assert (k.side == "left") == (k.centroid_lps[0] > 0)
        assert k.centroid_ras == (-k.centroid_lps[0], -k.centroid_lps[1], k.centroid_lps[2])
    assert m.tumors[0].side == "left" and m.tumors[0].kidney_id == "kidney_left"
    assert m.cysts[0].side == "right"


def test_lesion_outside_kidneys_and_specks():
    g = grid(np.eye(3))
    lab = paint(g, kidney_with((T, lambda p: ellipsoid(p, KIDNEY_C + (-38, 0, 0), (6, 6, 6)))))
    lab[2, 2, 2] = C  # a 2.2 mm^3 speck
    m = measure(lab, g)
    (tumor,) = m.tumors
    assert tumor.side is None and tumor.kidney_id is None and tumor.renal is None
    assert m.skipped_lesion_specks == 1 and not m.cysts


def test_tumor_under_one_centimetre_is_too_small_to_score():
    """A 7 mm tumor inside the kidney is measured but gets no R.E.N.A.L. or PADUA; a 16 mm one is scored."""
    g = grid(np.eye(3))
    lab = paint(g, kidney_with((T, lambda p: ellipsoid(p, KIDNEY_C + (10, 0, 25), (3.5, 3.5, 3.5))),
                               (T, lambda p: ellipsoid(p, KIDNEY_C + (-10, 0, -25), (8, 8, 8)))))
    m = measure(lab, g)
    small, big = sorted(m.tumors, key=lambda t: t.volume_ml)
    assert small.kidney_id is not None and small.kidney_id == big.kidney_id
    assert small.longest_diameter_mm < 10 <= big.longest_diameter_mm
    assert small.renal is None and small.padua is None and small.unscored.startswith("too small to score")
    assert big.renal is not None and big.padua is not None and big.unscored is None
    rows = {r["id"]: r for r in json.loads(json.dumps(m.to_json_dict()))["lesions"]}
    assert rows[small.id]["unscored"] == small.unscored and rows[big.id]["unscored"] is None
    lines = {x.id: line for x, line in zip(sorted(m.lesions, key=lambda x: -x.volume_ml),
                                           describe_measurements(m)[len(m.kidneys):])}
    assert "too small to score" in lines[small.id] and "R.E.N.A.L." not in lines[small.id]
    assert "R.E.N.A.L." in lines[big.id] and "too small" not in lines[big.id]
    csv_rows = {r["id"]: r for r in measurement_csv_rows(m) if r["record"] == "lesion"}
    assert csv_rows[small.id]["unscored"] == small.unscored and csv_rows[big.id]["unscored"] is None
    assert "too small to score" in render_html(m, lab, g)


def test_the_size_rule_allows_for_the_diameter_between_voxel_centres():
    """On 3 mm voxels an 11 mm tumor reads about 9.9 mm between voxel centres: still scored (it is 11 mm edge
    to edge); a single voxel is not."""
    g = grid(np.eye(3), spacing=(3.0, 3.0, 3.0))
    lab = paint(g, kidney_with((T, lambda p: ellipsoid(p, KIDNEY_C + (0, 0, 20), (5.5, 5.5, 5.5)))))
    k = np.argwhere(lab == K)[len(np.argwhere(lab == K)) // 2]
    lab[tuple(k)] = T  # a one-voxel tumor (27 mm^3, above the 10 mm^3 speck size) inside the kidney
    m = measure(lab, g)
    one, sphere = sorted(m.tumors, key=lambda t: t.volume_ml)
    assert one.volume_ml == pytest.approx(0.027) and one.unscored.startswith("too small")
    assert sphere.longest_diameter_mm < 10 and sphere.renal is not None and sphere.unscored is None


def test_empty_and_bad_input():
    g = grid(np.eye(3), extent_mm=(20, 20, 20))
    assert measure(np.zeros(g.shape, np.uint8), g).to_json_dict()["lesions"] == []
    with pytest.raises(ValueError):
        measure(np.zeros(g.shape, np.float32), g)


def _case():
    g = grid(DIRECTIONS["oblique"])
    lab = paint(g, kidney_with((T, lambda p: ellipsoid(p, KIDNEY_C + (20, 0, 0), (12, 12, 12))),
                               (C, lambda p: ellipsoid(p, KIDNEY_C + (-5, 0, 30), (6, 6, 6)))))
    return measure(lab, g)


def test_json_names_and_types(tmp_path):
    d = _case().to_json_dict()
    text = json.dumps(d, allow_nan=False)  # valid JSON: no NaN, no numpy types
    d = json.loads(text)
    (kid,) = d["kidneys"]
    assert kid["side"] == "left" and isinstance(kid["volume_ml"], float)
    kinds = [les["kind"] for les in d["lesions"]]
    assert kinds == ["tumor", "cyst"]
    for les in d["lesions"]:
        assert les["side"] == "left"
        for key in ("volume_ml", "longest_diameter_mm", "longest_axial_diameter_mm",
                    "perpendicular_axial_diameter_mm"):
            assert isinstance(les[key], float) and les[key] > 0
        assert len(les["centroid_lps"]) == 3 and les["centroid_ras"][0] == -les["centroid_lps"][0]
    tumor, cyst = d["lesions"]
    assert cyst["renal"] is None
    renal = tumor["renal"]
    for key in ("R", "E", "N", "L", "total"):
        assert isinstance(renal[key], int)
    assert renal["A"] in ("a", "p", "x") and renal["suffix"] == renal["A"]  # "h" is never assigned
    assert renal["total"] == renal["R"] + renal["E"] + renal["N"] + renal["L"]
    assert 4 <= renal["total"] <= 12


def test_write_measurements_atomic_and_no_overwrite(tmp_path):
    m = _case()
    paths = write_measurements(m, tmp_path / "out", "case")
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["lesions"][0]["kind"] == "tumor"
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["record"] for r in rows] == ["kidney", "lesion", "lesion"]
    assert rows[1]["R"] and rows[2]["R"] == ""  # cysts have no R.E.N.A.L.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case.csv", "case.json"]  # no temp left
    with pytest.raises(FileExistsError):
        write_measurements(Measurements(), tmp_path / "out", "case")
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["lesions"]  # untouched
    write_measurements(Measurements(), tmp_path / "out", "case", overwrite=True)
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["lesions"] == []


@pytest.mark.parametrize("name", ["axial", "flipped"])
@pytest.mark.parametrize("x, side", [(60.0, "left"), (-60.0, "right")])
def test_single_kidney_side_from_the_volume_centre(name, x, side):
    # One kidney: the midline is the centre of the whole volume (not of the cropped foreground).
    g = grid(DIRECTIONS[name], extent_mm=(190, 60, 100), centre=(0.0, 0.0, 0.0), spacing=(1.5, 1.5, 3.0))
    lab = paint(g, [(K, lambda p: ellipsoid(p, (x, 0, 0), (20, 15, 40))),
                    (T, lambda p: ellipsoid(p, (x, 0, 30), (8, 8, 8)))])
    m = measure(lab, g)
    assert [k.side for k in m.kidneys] == [side] and m.tumors[0].side == side


def test_mark_uncertain_flags_what_min_confidence_would_leave_out_and_prints_it_below_the_threshold():
    """The comparison of split_uncertain (unrounded): 0.3795 is below 0.38 although it rounds to it, so it is
    uncertain and its printed confidence must not read 0.38 (it is cut: 0.379)."""
    g = grid(np.eye(3))
    lab = paint(g, kidney_with((T, lambda p: ellipsoid(p, KIDNEY_C + (-38, 0, 0), (6, 6, 6)))))
    m = measure(lab, g)
    (tumor,) = m.tumors
    for confidence, below, expected, shown in ((0.30, 0.38, True, "0.30"), (0.5, 0.38, False, "0.50"),
                                               (0.3795, 0.38, True, "0.379"), (0.377, 0.38, True, "0.377"),
                                               (0.3804, 0.38, False, "0.38"), (0.38, 0.38, False, "0.38"),
                                               (0.30, None, None, "0.30")):
        tumor.confidence = confidence
        mark_uncertain(m, below)
        assert tumor.uncertain is expected and m.unsure_below == below
        assert m.to_json_dict()["lesions"][0]["uncertain"] is expected
        written = [r["confidence"] for r in measurement_csv_rows(m) if r["id"] == tumor.id]  # the CSV and JSON values
        assert written[0] == pytest.approx(confidence, abs=5e-4)
        assert below is None or (written[0] < below) is expected  # 0.3795 is written 0.3795, not 0.38
        (line,) = [t for t in describe_measurements(m) if tumor.id in t]
        assert f"confidence {shown}" in line and ("uncertain (below the model's 0.38)" in line) is bool(expected)
    tumor.confidence = None  # no confidence map: nothing to judge
    mark_uncertain(m, 0.38)
    assert tumor.uncertain is None
