"""The QC picture: rows per lesion, label colors, radiological orientation and square pixels."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.labels import COLORS, Label
from KidneyTumorSegLib.preprocessing import reorient
from KidneyTumorSegLib.qc import lps_view, render_qc, write_qc_png

# Index axes: i -> patient right (-x), j -> inferior (-z), k -> posterior (+y): a permuted, flipped,
# anisotropic grid, so display order must come from the geometry, not from the array.
DIRECTION = np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # columns: i, j, k directions in LPS
SIZE, SPACING = (80, 30, 60), (2.0, 3.0, 1.5)


def geometry() -> Geometry:
    origin = -DIRECTION @ (np.asarray(SPACING) * (np.asarray(SIZE) - 1) / 2)  # volume centred at 0
    return Geometry(SPACING, origin, DIRECTION.ravel(), SIZE)


def phantom(spheres):
    """(CT Image, labels) with ellipsoids ``(label, centre LPS mm, radii mm)`` drawn in physical space."""
    g = geometry()
    z, y, x = np.indices(g.shape)
    p = g.index_to_physical(np.stack([x, y, z], -1).reshape(-1, 3)).reshape(g.shape + (3,))
    labels = np.zeros(g.shape, np.uint8)
    for label, c, r in spheres:
        labels[(((p - np.asarray(c)) / np.asarray(r)) ** 2).sum(-1) <= 1] = label
    ct = np.where((p[..., 0] / 75) ** 2 + (p[..., 1] / 42) ** 2 <= 1, -60.0, -1000.0).astype(np.float32)
    ct[labels > 0] = 150.0
    return Image(ct, g), labels


KIDNEYS = [(Label.KIDNEY, (40, 0, 0), (18, 15, 25)), (Label.KIDNEY, (-40, 0, 0), (18, 15, 25))]
LESIONS = [(Label.TUMOR, (-50, -5, 5), (10, 10, 10)), (Label.CYST, (40, 0, -10), (6, 6, 6))]


def panel(pic, row, view):
    (t, b, l, r), = [box for rr, v, box in pic.panels if rr == row and v == view]
    return pic.rgb[t:b, l:r]


def colored(rgb, label):
    return np.argwhere((rgb == np.asarray(COLORS[label], np.uint8)).all(-1))


def test_png_rows_colors_and_patient_right_on_the_left(tmp_path):
    ct, labels = phantom(KIDNEYS + LESIONS)
    path = write_qc_png(ct, labels, tmp_path / "qc.png")
    assert sorted(os.listdir(tmp_path)) == ["qc.png"]  # nothing temporary left
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    pic = render_qc(ct, labels)
    np.testing.assert_array_equal(png, pic.rgb)
    assert [r.label for r in pic.rows] == [Label.TUMOR, Label.CYST]  # largest lesion first
    assert len(pic.panels) == 3 * len(pic.rows)
    row_height = max(b - t for _, _, (t, b, _, _) in pic.panels)
    assert png.shape[0] == len(pic.rows) * row_height + (len(pic.rows) + 1) * 4  # rows plus 4-px gaps
    assert png.ndim == 3 and png.shape[2] == 3 and png.dtype == np.uint8

    axial = panel(pic, 0, "axial")
    tumor = colored(axial, Label.TUMOR)
    assert len(tumor) > 20
    assert tumor[:, 1].max() < axial.shape[1] / 2  # patient right (-x) is on the image's left
    cyst = colored(panel(pic, 1, "axial"), Label.CYST)
    assert len(cyst) > 5 and cyst[:, 1].min() > axial.shape[1] / 2
    assert len(colored(axial, Label.KIDNEY)) > 50  # both kidneys outlined


def test_radiological_orientation_with_an_asymmetric_marker():
    # One marker anterior (-y), right (-x) and superior (+z) of the centre.
    ct, labels = phantom([(Label.TUMOR, (-40, -25, 25), (8, 8, 8))])
    pic = render_qc(ct, labels)
    assert len(pic.rows) == 1
    for view in ("axial", "coronal", "sagittal"):
        image = panel(pic, 0, view)
        rows, cols = colored(image, Label.TUMOR).mean(0) / image.shape[:2]
        # axial: anterior at the top, patient right on the left; coronal: superior at the top, right on
        # the left; sagittal: superior at the top, anterior on the left. Every view: top-left quadrant.
        assert rows < 0.5 and cols < 0.5, (view, rows, cols)


def test_square_pixels_keep_physical_proportions():
    ct, labels = phantom(KIDNEYS)
    pic = render_qc(ct, labels)
    assert [r.label for r in pic.rows] == [Label.KIDNEY, Label.KIDNEY]  # no lesion: one row per kidney
    extent = {"x": SIZE[0] * SPACING[0], "y": SIZE[2] * SPACING[2], "z": SIZE[1] * SPACING[1]}  # LPS mm
    for view, (h, w) in {"axial": ("y", "x"), "coronal": ("z", "x"), "sagittal": ("z", "y")}.items():
        image = panel(pic, 0, view)
        assert image.shape[0] / image.shape[1] == pytest.approx(extent[h] / extent[w], rel=0.03), view


def test_empty_label_map_and_safety(tmp_path):
    ct, labels = phantom([])
    pic = render_qc(ct, labels)
    assert [r.label for r in pic.rows] == [Label.BACKGROUND]
    path = tmp_path / "qc.png"
    path.write_bytes(b"old")
    with pytest.raises(InputError, match="already exists"):
        write_qc_png(ct, labels, path)
    assert path.read_bytes() == b"old"
    write_qc_png(ct, Image(labels, ct.geometry), path, overwrite=True)
    assert sitk.ReadImage(str(path)).GetNumberOfComponentsPerPixel() == 3
    with pytest.raises(InputError, match="png"):
        write_qc_png(ct, labels, tmp_path / "qc.jpg")
    with pytest.raises(ValueError, match="shape"):
        render_qc(ct, labels[:-1])


def test_lps_view_matches_reorient():
    ct, _ = phantom([])
    expected, _, info = reorient(ct.array, ct.geometry, "LPS")
    np.testing.assert_array_equal(lps_view(ct.array, info.perm, info.flip), expected)
