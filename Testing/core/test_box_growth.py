"""network_input.grown_box: which faces of a stage-2 box grow, by how much, and where the image edge stops it."""
import numpy as np
import pytest

from KidneyTumorSegLib.cascade import CascadeConfig
from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.network_input import KidneyBox, grown_box
from KidneyTumorSegLib.labels import Label, Side
from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade

GRID = Geometry((2.0, 1.0, 2.5), (0.0, 0.0, 0.0), np.eye(3), (100, 120, 60))  # spacing and size are x, y, z


def box(start, stop):
    return KidneyBox.on_grid(start, stop, (Side.LEFT,), GRID)


def labels_of(b, painted):
    """Labels on box ``b`` (z, y, x), kidney in the middle, tumor on the ``painted`` (z, y, x) slices."""
    lab = np.zeros(tuple(np.subtract(b.stop, b.start)), np.uint8)
    lab[4:-4, 4:-4, 4:-4] = Label.KIDNEY
    for region in painted:
        lab[region] = Label.TUMOR
    return lab


def test_no_label_near_a_face_no_growth():
    b = box((10, 20, 30), (40, 80, 70))
    assert grown_box(b, labels_of(b, []), GRID, 30.0) is None


def test_each_touched_face_grows_by_the_physical_distance():
    b = box((20, 20, 30), (50, 80, 70))
    lab = labels_of(b, [np.s_[10:20, 10:20, -1:], np.s_[0:1, 10:20, 10:20]])  # the high-x and the low-z face
    g = grown_box(b, lab, GRID, 30.0)
    # 30 mm is 12 voxels in z (2.5 mm) and 15 in x (2 mm); the other faces stay
    assert g.start == (20 - 12, 20, 30) and g.stop == (50, 80, 70 + 15)
    assert g.sides == b.sides and g.lps_max[0] == pytest.approx((70 + 15 - 0.5) * 2.0)


def test_a_label_within_the_band_counts_and_one_beyond_it_does_not():
    b = box((10, 20, 30), (40, 80, 70))
    near = labels_of(b, [np.s_[10:20, 1:2, 10:20]])   # 1 mm from the low-y face (band 2 mm: 2 voxels of 1 mm)
    far = labels_of(b, [np.s_[10:20, 2:3, 10:20]])   # 2 mm from it: outside the band
    assert grown_box(b, near, GRID, 10.0).start == (10, 10, 30)
    assert grown_box(b, far, GRID, 10.0) is None


def test_the_image_edge_stops_growth():
    b = box((0, 20, 30), (60, 80, 95))  # z spans the whole image; x ends 5 voxels before its edge
    lab = labels_of(b, [np.s_[:1, 10:20, 10:20], np.s_[-1:, 10:20, 10:20], np.s_[10:20, 10:20, -1:]])
    g = grown_box(b, lab, GRID, 30.0)
    assert g.start == (0, 20, 30) and g.stop == (60, 80, 100)  # z at both edges; x clipped at 100
    assert grown_box(g, labels_of(g, [np.s_[:1, 10:20, 10:20], np.s_[10:20, 10:20, -1:]]), GRID, 30.0) is None


def test_a_few_stray_voxels_at_a_face_do_not_grow_it():
    b = box((20, 20, 30), (50, 80, 70))
    speck = labels_of(b, [np.s_[10:14, 10:14, -1:]])  # 16 voxels of 5 mm3: 80 mm3, under 100
    assert grown_box(b, speck, GRID, 30.0) is None
    assert grown_box(b, speck, GRID, 30.0, min_mm3=80.0).stop == (50, 80, 85)
    assert grown_box(b, labels_of(b, [np.s_[10, 10, -1]]), GRID, 30.0, min_mm3=0.0).stop == (50, 80, 85)


def test_labels_must_match_the_box():
    b = box((10, 20, 30), (40, 80, 70))
    with pytest.raises(ValueError, match="do not match the box"):
        grown_box(b, np.zeros((3, 3, 3), np.uint8), GRID, 30.0)


def test_segment_options_carry_box_growth_to_the_cascade():
    assert load_cascade(SegmentOptions(device="cpu", box_growth=2)).config.box_growth == 2  # the shipped model
    assert load_cascade(SegmentOptions(device="cpu")).config.box_growth == CascadeConfig().box_growth
    with pytest.raises(InputError, match="box_growth"):
        SegmentOptions(box_growth=-1)


def test_segment_options_check_stage2_mirror_axes():
    options = SegmentOptions(stage2_mirror_axes=[2])
    assert options.stage2_mirror_axes == (2,) and hash(options)  # a tuple: the frozen options stay hashable
    assert SegmentOptions().stage2_mirror_axes is None  # None: the model's recommendation
    for wrong in [(0, 3), 2, (1, 1)]:
        with pytest.raises(InputError, match="stage2_mirror_axes"):
            SegmentOptions(stage2_mirror_axes=wrong)
