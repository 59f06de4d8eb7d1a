"""The HTML report: well-formed, the tables' numbers, embedded PNGs, and lines drawn at the right pixels."""
import base64
import html
import os
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.labels import COLORS, Label
from KidneyTumorSegLib.measurements import mark_uncertain, measure
from KidneyTumorSegLib.report import (LINE_COLORS, line_pixels, png_bytes, render_html, render_lesion,
                                      write_report)
from KidneyTumorSegLib.preprocessing import reorient

# Index axes: i -> patient right (-x), j -> inferior (-z), k -> posterior (+y): permuted, flipped and
# anisotropic, so the display must come from the geometry (as in test_qc).
DIRECTION = np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
SIZE, SPACING = (80, 30, 60), (2.0, 3.0, 1.5)
TUMOR_C, TUMOR_R = np.array([50.0, -5.0, 6.0]), np.array([12.0, 6.0, 6.0])  # long along LPS x
VOID = {"meta", "img", "br", "hr", "input", "link"}


def geometry() -> Geometry:
    origin = -DIRECTION @ (np.asarray(SPACING) * (np.asarray(SIZE) - 1) / 2)
    return Geometry(SPACING, origin, DIRECTION.ravel(), SIZE)


def voxel_points(g):
    z, y, x = np.indices(g.shape)
    return g.index_to_physical(np.stack([x, y, z], -1).reshape(-1, 3)).reshape(g.shape + (3,))


@pytest.fixture(scope="module")
def case():
    g = geometry()
    p = voxel_points(g)
    lab = np.zeros(g.shape, np.uint8)
    for label, c, r in [(Label.KIDNEY, (40, 0, 0), (18, 15, 30)), (Label.KIDNEY, (-40, 0, 0), (18, 15, 30)),
                        (Label.TUMOR, TUMOR_C, TUMOR_R), (Label.CYST, (-40, 0, -10), (7, 7, 7))]:
        lab[(((p - np.asarray(c)) / np.asarray(r)) ** 2).sum(-1) <= 1] = label
    ct = np.where(lab > 0, 150.0, -60.0).astype(np.float32)
    return lab, g, Image(ct, g), measure(lab, g)


class Checker(HTMLParser):
    """Collects cell texts and image sources, and checks that every non-void tag is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.cells, self.imgs, self.errors, self._cell = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)
        if tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)
        if tag in ("td", "th"):
            self.cells.append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parse(text):
    c = Checker()
    c.feed(text)
    c.close()
    assert not c.errors and not c.stack, (c.errors, c.stack)
    return c


def decode(src):
    assert src.startswith("data:image/png;base64,")
    return base64.b64decode(src.split(",", 1)[1])


def read_png(data, tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(data)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(f)))


def test_html_is_well_formed_with_the_tables_numbers(case, tmp_path):
    lab, g, ct, m = case
    path = write_report(m, lab, g, tmp_path / "p1_report.html", ct=ct)
    assert sorted(os.listdir(tmp_path)) == ["p1_report.html"]  # atomic: nothing temporary left
    text = path.read_text(encoding="utf-8")
    c = parse(text)
    d = m.to_json_dict()
    tumor = next(x for x in d["lesions"] if x["kind"] == "tumor")
    cyst = next(x for x in d["lesions"] if x["kind"] == "cyst")
    for kid in d["kidneys"]:
        assert f"{kid['volume_ml']:.1f}" in c.cells and f"{kid['parenchyma_volume_ml']:.1f}" in c.cells
    assert f"{tumor['volume_ml']:.1f}" in c.cells and f"{tumor['longest_diameter_mm']:.1f}" in c.cells
    axial = f"{tumor['longest_axial_diameter_mm']:.1f} \u00d7 {tumor['perpendicular_axial_diameter_mm']:.1f}"
    assert axial in c.cells
    assert ", ".join(f"{v:.1f}" for v in tumor["centroid_ras"]) in c.cells
    if tumor["renal"]["total"] is not None:
        assert f"{tumor['renal']['total']}{tumor['renal']['suffix']}" in c.cells
    assert "n/a (cyst)" in c.cells and cyst["side"] == "right"
    assert "Not for clinical use" in text and "automatic estimates" in text and "sinus proxy" in text
    assert "polar lines" in text and "KidneyTumorSeg 0.1.0" in text and "p1" in text
    assert "CT window" in text
    assert len(c.imgs) == 2 * len(d["lesions"])  # context + zoom per lesion


def test_embedded_images_decode_as_pngs_of_the_rendered_size(case, tmp_path):
    lab, g, ct, m = case
    c = parse(render_html(m, lab, g))
    lab_lps, g_lps, _ = reorient(lab, g, "LPS")
    pic = render_lesion(lab_lps, g_lps, m.lesions[0])
    context, zoom = c.imgs[:2]
    for attrs, expected in ((context, pic.context), (zoom, pic.zoom)):
        png = read_png(decode(attrs["src"]), tmp_path)
        assert png.shape == expected.shape and png.dtype == np.uint8
        assert (int(attrs["height"]), int(attrs["width"])) == expected.shape[:2]
        np.testing.assert_array_equal(png, expected)  # label-only: same pixels as rendered here
    assert "label map is shown in grey levels" in render_html(m, lab, g)


def test_png_encoder_round_trips(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 13, 3)).astype(np.uint8)
    np.testing.assert_array_equal(read_png(png_bytes(rgb), tmp_path), rgb)


def test_bresenham_lines_are_8_connected_and_hit_both_ends():
    for p0, p1 in [((0, 0), (0, 5)), ((2, 9), (7, 1)), ((4.4, 4.6), (-3.2, 0.5)), ((3, 3), (3, 3))]:
        px = line_pixels(p0, p1)
        assert tuple(px[0]) == tuple(int(np.floor(v + 0.5)) for v in p0)
        assert tuple(px[-1]) == tuple(int(np.floor(v + 0.5)) for v in p1)
        steps = np.abs(np.diff(px, axis=0))
        assert (steps.max(initial=1) == 1) and len(px) == np.abs(px[-1] - px[0]).max() + 1


def expected_pixel(view, lps, g):
    """Pixel of an LPS point in a panel, from physical reasoning only: the panel's left edge is the
    most-right voxel column's outer face (radiological), its top edge the most anterior row's."""
    corners = g.index_to_physical(np.array(np.meshgrid(*[[0, n - 1] for n in g.size])).reshape(3, -1).T)
    sx, sy = 2.0, 1.5  # LPS x and y spacings of this grid (index axes i and k)
    left = corners[:, 0].min() + view.col0 * sx - sx / 2
    top = corners[:, 1].min() + view.row0 * sy - sy / 2
    return np.array([(lps[1] - top) / view.px - 0.5, (lps[0] - left) / view.px - 0.5])


def colored(rgb, color):
    return np.argwhere((rgb == np.asarray(color, np.uint8)).all(-1))


def test_diameter_lines_land_on_the_lesion_on_a_flipped_anisotropic_grid(case):
    lab, g, ct, m = case
    tumor = next(x for x in m.lesions if x.kind == "tumor")
    lab_lps, g_lps, _ = reorient(lab, g, "LPS")
    pic = render_lesion(lab_lps, g_lps, tumor)
    view, red = pic.zoom_view, colored(pic.zoom, LINE_COLORS["axial_long"])
    assert len(red) > 20
    # The mapping, against the independent formula, for the measured end points and the lesion's centre.
    for p in list(tumor.lines["axial_long"]) + [tuple(TUMOR_C)]:
        np.testing.assert_allclose(view.to_pixel(np.asarray(p)), expected_pixel(view, p, g), atol=1e-6)
    a, b = (np.floor(expected_pixel(view, p, g) + 0.5).astype(int) for p in tumor.lines["axial_long"])
    assert (pic.zoom[tuple(a)] == LINE_COLORS["axial_long"]).all()
    assert (pic.zoom[tuple(b)] == LINE_COLORS["axial_long"]).all()
    # End to end: the red line spans the tumor along x (its 24 mm long axis) at the tumor's y.
    lo, hi = (expected_pixel(view, TUMOR_C + [s * TUMOR_R[0], 0, 0], g) for s in (-1, 1))
    tol = SPACING[0] / view.px + 1  # diameters run between voxel centres: up to one voxel short
    assert abs(red[:, 1].min() - lo[1]) <= tol and abs(red[:, 1].max() - hi[1]) <= tol
    assert abs(red[:, 0].mean() - lo[0]) <= SPACING[2] / view.px + 1
    # The tumor outline surrounds the line; the perpendicular line is there too.
    outline = colored(pic.zoom, COLORS[Label.TUMOR])
    assert outline[:, 1].min() <= red[:, 1].min() and red[:, 1].max() <= outline[:, 1].max()
    assert len(colored(pic.zoom, LINE_COLORS["axial_short"])) > 5
    # Patient left (+x) is on the image's right in the whole-slice panel, inside the zoom box.
    cols = colored(pic.context, COLORS[Label.TUMOR])[:, 1]
    assert cols.min() > pic.context.shape[1] / 2
    box = colored(pic.context, (255, 255, 255))
    assert box[:, 1].min() < cols.min() and cols.max() < box[:, 1].max()


def test_3d_diameter_ends_are_marked_only_near_the_slice(case):
    lab, g, ct, m = case
    tumor = next(x for x in m.lesions if x.kind == "tumor")
    lab_lps, g_lps, _ = reorient(lab, g, "LPS")
    pic = render_lesion(lab_lps, g_lps, tumor)
    near = int((pic.zoom_view.distance_mm(np.asarray(tumor.lines["longest"])) <= 3.0).sum())
    assert pic.marked_3d_ends == near
    assert (len(colored(pic.zoom, LINE_COLORS["longest"])) > 0) == (near > 0)


def test_refuses_to_overwrite_and_escapes_text(case, tmp_path):
    lab, g, ct, m = case
    path = tmp_path / "r.html"
    write_report(m, lab, g, path, title="<script>alert(1)</script>", source="a&b<i>")
    text = path.read_text(encoding="utf-8")
    assert "<script>" not in text and html.escape("<script>alert(1)</script>") in text
    assert "a&amp;b&lt;i&gt;" in text
    with pytest.raises(FileExistsError):
        write_report(m, lab, g, path)
    assert path.read_text(encoding="utf-8") == text
    write_report(m, lab, g, path, overwrite=True, title="Second report")  # the date may be the same minute
    assert "Second report" in path.read_text(encoding="utf-8")


def test_report_without_lesions_or_kidneys(case, tmp_path):
    lab, g, ct, _ = case
    kidneys_only = np.where(lab == Label.KIDNEY, lab, 0).astype(np.uint8)
    c = parse(render_html(measure(kidneys_only, g), kidneys_only, g, ct=ct))
    assert not c.imgs and len([x for x in c.cells if re.fullmatch(r"\d+\.\d", x)]) >= 4
    empty = np.zeros(g.shape, np.uint8)
    text = render_html(measure(empty, g), empty, g)
    parse(text)
    assert "No kidney found." in text and "No tumor or cyst found." in text


def test_a_lesion_below_the_models_threshold_is_marked_uncertain(case):
    """A kept lesion below the model's threshold is shown as uncertain, and its confidence unlike the threshold
    (0.5697 beside 0.57 reads 0.569); one above it is not marked."""
    lab, g, ct, _ = case
    m = measure(lab, g)
    tumor, cyst = m.tumors[0], m.cysts[0]
    tumor.confidence, cyst.confidence = 0.5697, 0.81
    mark_uncertain(m, 0.57)
    c = parse(render_html(m, lab, g))
    assert "0.569 uncertain" in c.cells and "0.81" in c.cells and "0.81 uncertain" not in c.cells
    assert "recommended 0.57 is marked" in render_html(m, lab, g)
    mark_uncertain(m, None)  # no threshold known: nothing marked, no sentence
    text = render_html(m, lab, g)
    assert "0.57" in parse(text).cells and "uncertain" not in text.split("<h2>Lesions</h2>")[1].split("</table>")[0]
    assert "is marked" not in text
