"""Post-processing rules on synthetic phantoms with known answers (anisotropic spacing, volumes in mm^3)."""
import numpy as np
import pytest
from scipy import ndimage

from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.labels import Label, Side
from KidneyTumorSegLib.postprocessing import PostprocessingConfig, kidney_components, postprocess

K, T, C = int(Label.KIDNEY), int(Label.TUMOR), int(Label.CYST)
SPACING = (0.8, 0.8, 3.0)  # (x, y, z) mm; a voxel is 1.92 mm^3
SHAPE = (30, 80, 150)      # (z, y, x)


def ellipsoid(shape, centre_zyx, radii_xyz_mm, spacing):
    """Boolean ellipsoid; centre in voxels (z, y, x), radii in mm (x, y, z)."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cz, cy, cx = centre_zyx
    rx, ry, rz = (r / s for r, s in zip(radii_xyz_mm, spacing))
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0


def phantom():
    """Two kidneys (about 28 mL each) with a tumor and a cyst speck inside, a detached tumor, a third small
    kidney-like blob, a small and a big hole, and a cyst speck. Returns (labels, dict of masks)."""
    lab = np.zeros(SHAPE, np.uint8)
    m = {}
    m["kidney_a"] = ellipsoid(SHAPE, (15, 30, 30), (15, 15, 30), SPACING)
    m["kidney_b"] = ellipsoid(SHAPE, (15, 30, 100), (15, 15, 30), SPACING)
    lab[m["kidney_a"] | m["kidney_b"]] = K
    m["tumor"] = ellipsoid(SHAPE, (15, 30, 45), (8, 8, 9), SPACING)  # exophytic, at the edge of kidney A
    lab[m["tumor"]] = T
    m["detached"] = ellipsoid(SHAPE, (15, 5, 140), (3, 3, 3), SPACING)  # tumor away from both kidneys
    lab[m["detached"]] = T
    m["third"] = ellipsoid(SHAPE, (15, 70, 65), (10, 6, 9), SPACING)  # 2.3 mL, > 10 mm away: dropped
    lab[m["third"]] = K
    m["small_hole"] = np.zeros(SHAPE, bool)
    m["small_hole"][14, 30:32, 95:97] = True   # 4 voxels = 7.7 mm^3 <= 50: filled
    m["big_hole"] = np.zeros(SHAPE, bool)
    m["big_hole"][15:17, 26:31, 104:109] = True  # 50 voxels = 96 mm^3 > 50: kept (a cavity)
    lab[m["small_hole"] | m["big_hole"]] = 0
    m["speck_in_kidney"] = np.zeros(SHAPE, bool)
    m["speck_in_kidney"][10, 20, 100] = True   # 1.9 mm^3 cyst inside kidney B -> kidney
    m["speck_in_tumor"] = np.zeros(SHAPE, bool)
    m["speck_in_tumor"][15, 30, 45] = True     # cyst speck inside the tumor -> tumor
    m["speck_outside"] = np.zeros(SHAPE, bool)
    m["speck_outside"][15, 30, 10:12] = True   # cyst speck at the edge of kidney A, mostly outside -> background
    lab[m["speck_in_kidney"] | m["speck_in_tumor"]] = C
    lab[m["speck_outside"]] = C
    return lab, m


def test_phantom_changes_exactly_the_expected_voxels():
    lab, m = phantom()
    assert (lab[m["speck_outside"]] == C).all() and lab[15, 30, 12] == K  # touches kidney A at one face
    expected = lab.copy()
    expected[m["detached"]] = 0
    expected[m["third"]] = 0
    expected[m["small_hole"]] = K
    expected[m["speck_in_kidney"]] = K
    expected[m["speck_in_tumor"]] = T
    expected[m["speck_outside"]] = 0
    out, rep = postprocess(lab, SPACING, return_report=True)
    np.testing.assert_array_equal(out, expected)
    assert rep.changed == {"small_kidney": int(m["third"].sum()), "extra_kidney": 0,
                           "detached_lesion": int(m["detached"].sum()), "lesion_speck": 4, "holes": 4}
    assert rep.total_changed == int(np.count_nonzero(out != lab))
    assert sorted(r for r, _ in rep.removed_components) == ["detached_lesion", "small_kidney"]
    assert len(rep.kidney_components_mm3) == 2 and all(25_000 < v < 32_000 for v in rep.kidney_components_mm3)
    assert rep.to_dict()["total_changed"] == rep.total_changed


def test_fragments_near_a_kidney_are_kept():
    lab, m = phantom()
    frag = np.zeros(SHAPE, bool)
    frag[15, 30, 125:127] = True   # kidney B ends at x = 118: a fragment 5.6 mm away
    lesion = np.zeros(SHAPE, bool)
    lesion[14:17, 50:52, 99:102] = True  # kidney B ends at y = 48: a 35 mm^3 tumor rim 1.6 mm away
    lab[frag], lab[lesion] = K, T
    out, rep = postprocess(lab, SPACING, return_report=True)
    assert (out[frag] == K).all() and (out[lesion] == T).all() and len(rep.attached_fragments_mm3) == 2
    out = postprocess(lab, SPACING, PostprocessingConfig(attach_mm=0))
    assert (out[frag | lesion] == 0).all()
    out = postprocess(lab, SPACING, PostprocessingConfig(attach_mm=5))
    assert (out[frag] == 0).all() and (out[lesion] == T).all()


def test_each_rule_can_be_switched_off():
    lab, m = phantom()
    cfg = PostprocessingConfig(max_kidneys=None, min_kidney_mm3=0, remove_detached_lesions=False,
                               min_lesion_mm3=0, fill_holes=False)
    np.testing.assert_array_equal(postprocess(lab, SPACING, cfg), lab)
    # Every hole filled when the size limit is lifted.
    out = postprocess(lab, SPACING, PostprocessingConfig(max_hole_mm3=None))
    assert (out[m["big_hole"]] == K).all() and (out[m["small_hole"]] == K).all()


def test_third_component_above_the_minimum_is_an_extra_kidney():
    lab, m = phantom()
    out, rep = postprocess(lab, SPACING, PostprocessingConfig(min_kidney_mm3=1000), return_report=True)
    assert (out[m["third"]] == 0).all()
    assert rep.changed["extra_kidney"] == int(m["third"].sum()) and rep.changed["small_kidney"] == 0
    out = postprocess(lab, SPACING, PostprocessingConfig(min_kidney_mm3=1000, max_kidneys=3))
    assert (out[m["third"]] == K).all()


def test_input_is_not_modified_and_dtype_kept():
    lab, _ = phantom()
    for dtype in (np.uint8, np.int16, np.int32):
        a = lab.astype(dtype)
        before = a.copy()
        out = postprocess(a, SPACING)
        np.testing.assert_array_equal(a, before)
        assert out.dtype == dtype and out.shape == a.shape and not np.shares_memory(out, a)


def test_empty_label_map():
    empty = np.zeros((5, 6, 7), np.uint8)
    out, rep = postprocess(empty, SPACING, return_report=True)
    assert out.sum() == 0 and out is not empty and rep.total_changed == 0
    assert kidney_components(empty, SPACING) == []


def test_result_does_not_depend_on_the_crop():
    lab, _ = phantom()
    big = np.zeros((50, 130, 220), np.uint8)
    big[7:37, 33:113, 41:191] = lab
    expected = np.zeros_like(big)
    expected[7:37, 33:113, 41:191] = postprocess(lab, SPACING)
    np.testing.assert_array_equal(postprocess(big, SPACING), expected)


def test_thresholds_are_in_cubic_millimetres():
    lab = np.zeros((20, 40, 40), np.uint8)
    blob = ellipsoid(lab.shape, (10, 20, 20), (12, 12, 24), (1, 1, 3))
    lab[blob] = K
    lab[10, 20:22, 20:22] = T  # 4 voxels
    n = int(blob.sum())
    # At 0.8 x 0.8 x 3 mm the blob is n * 1.92 mm^3 and the speck 7.7 mm^3; at 1.6 x 1.6 x 3 four times more.
    cfg = PostprocessingConfig(min_kidney_mm3=n * 4.0, min_lesion_mm3=10)
    small = postprocess(lab, (0.8, 0.8, 3.0), cfg)
    assert small.sum() == 0  # the whole kidney (with its lesion) is below the minimum
    cfg = PostprocessingConfig(min_kidney_mm3=n * 1.0, min_lesion_mm3=10)
    small = postprocess(lab, (0.8, 0.8, 3.0), cfg)
    assert (small[blob] == K).all()  # kidney kept, speck (7.7 mm^3) absorbed
    large = postprocess(lab, (1.6, 1.6, 3.0), cfg)
    np.testing.assert_array_equal(large, lab)  # the speck is now 30.7 mm^3: a lesion


def test_connectivity_six_versus_twenty_six():
    lab = np.zeros((24, 24, 24), np.uint8)
    lab[2:12, 2:12, 2:12] = K
    lab[12:16, 12:16, 12:16] = T  # touches the kidney at one corner only
    cfg26 = PostprocessingConfig(min_kidney_mm3=0, connectivity=26)
    cfg6 = PostprocessingConfig(min_kidney_mm3=0, connectivity=6, attach_mm=0)  # else a fragment
    np.testing.assert_array_equal(postprocess(lab, (1, 1, 1), cfg26), lab)
    out6, rep6 = postprocess(lab, (1, 1, 1), cfg6, return_report=True)
    assert (out6[12:16, 12:16, 12:16] == 0).all() and rep6.changed["detached_lesion"] == 64
    np.testing.assert_array_equal(out6[:12, :12, :12], lab[:12, :12, :12])


def sinus_kidney(open_medially: bool):
    """A kidney with a central sinus cavity of about 1 mL; the hilum channel opens it towards +x."""
    shape = (34, 60, 60)
    lab = np.zeros(shape, np.uint8)
    kidney = ellipsoid(shape, (17, 30, 30), (20, 15, 45), (0.8, 0.8, 3.0))
    sinus = ellipsoid(shape, (17, 30, 30), (8, 6, 15), (0.8, 0.8, 3.0))
    lab[kidney & ~sinus] = K
    if open_medially:
        lab[15:20, 26:35, 30:] = 0  # the hilum: the sinus opens through a channel (C-shape in axial slices)
    return lab, sinus


def test_open_sinus_is_not_filled_but_a_closed_cavity_is():
    cfg = PostprocessingConfig(max_hole_mm3=None)
    lab, sinus = sinus_kidney(open_medially=True)
    np.testing.assert_array_equal(postprocess(lab, (0.8, 0.8, 3.0), cfg), lab)
    # A slice-wise 2D fill would close the sinus wherever the hilum channel is out of the slice.
    assert (ndimage.binary_fill_holes(lab[13] > 0) & (lab[13] == 0)).any()
    closed, sinus = sinus_kidney(open_medially=False)
    out = postprocess(closed, (0.8, 0.8, 3.0), cfg)
    assert (out[sinus] == K).all() and (out[~sinus] == closed[~sinus]).all()
    # The default size limit keeps such a 1 mL cavity (KiTS23 ground truth has them).
    np.testing.assert_array_equal(postprocess(closed, (0.8, 0.8, 3.0)), closed)


def test_hole_inside_a_tumor_becomes_tumor():
    lab = np.zeros((20, 40, 40), np.uint8)
    lab[ellipsoid(lab.shape, (10, 20, 20), (20, 20, 40), (1, 1, 3))] = K
    lab[ellipsoid(lab.shape, (10, 20, 20), (8, 8, 12), (1, 1, 3))] = T
    lab[10, 20, 20] = 0
    out = postprocess(lab, (1, 1, 3), PostprocessingConfig(min_kidney_mm3=0))
    assert out[10, 20, 20] == T and int(np.count_nonzero(out != lab)) == 1


def two_kidneys():
    lab = np.zeros((20, 40, 100), np.uint8)
    lab[ellipsoid(lab.shape, (10, 20, 20), (12, 12, 24), (1, 1, 3))] = K  # low x index
    lab[ellipsoid(lab.shape, (10, 20, 75), (14, 14, 24), (1, 1, 3))] = K  # high x index, larger
    return lab


def test_sides_follow_physical_x_not_the_array_index():
    lab, sp = two_kidneys(), (1.0, 1.0, 3.0)
    cfg = PostprocessingConfig(min_kidney_mm3=1000)
    ident = kidney_components(lab, sp, Geometry(sp, (0, 0, 0)), cfg)
    assert [c.side for c in ident] == [Side.LEFT, Side.RIGHT]  # largest first: high index = +x = left
    assert ident[0].centroid_lps[0] == pytest.approx(75.0, abs=0.5)
    flipped_dir = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    flipped = kidney_components(lab, sp, Geometry(sp, (0, 0, 0), flipped_dir), cfg)
    assert [c.side for c in flipped] == [Side.RIGHT, Side.LEFT]
    assert flipped[0].centroid_lps[0] == pytest.approx(-75.0, abs=0.5)
    as_tuple = kidney_components(lab, sp, ((10.0, 5.0, 0.0), sp, flipped_dir), cfg)
    assert [c.side for c in as_tuple] == [Side.RIGHT, Side.LEFT]
    c = flipped[0]
    assert c.mask.sum() * 3.0 == pytest.approx(c.volume_mm3)
    assert (lab[c.slices][c.mask] == K).all()


def test_single_kidney_side_from_the_volume_centre():
    lab = two_kidneys()
    lab[:, :, 50:] = 0  # only the low-x kidney is left
    sp = (1.0, 1.0, 3.0)
    cfg = PostprocessingConfig(min_kidney_mm3=1000)
    [c] = kidney_components(lab, sp, Geometry(sp), cfg)
    assert c.side == Side.RIGHT
    [c] = kidney_components(lab, sp, Geometry(sp, (0, 0, 0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)), cfg)
    assert c.side == Side.LEFT


def test_the_bodys_midline_from_the_ct_decides_the_sides_when_known():
    lab, sp = two_kidneys(), (1.0, 1.0, 3.0)
    cfg, g = PostprocessingConfig(min_kidney_mm3=1000), Geometry(sp)
    single = lab.copy()
    single[:, :, 50:] = 0  # a solitary kidney at x = 20 mm, left of the volume's centre (49.5 mm)
    assert [c.side for c in kidney_components(single, sp, g, cfg)] == [Side.RIGHT]
    # a patient off-centre in the field of view: the body's midline at x = 10 mm puts it on the left
    assert [c.side for c in kidney_components(single, sp, g, cfg, midline_x=10.0)] == [Side.LEFT]
    # a crop of a larger CT: the caller's centre of the whole volume stands in for the crop's own
    assert [c.side for c in kidney_components(single, sp, g, cfg, volume_centre_x=10.0)] == [Side.LEFT]
    assert [c.side for c in kidney_components(single, sp, g, cfg, 30.0, volume_centre_x=10.0)] == [Side.RIGHT]
    # two pieces 55 mm apart, both right of the body (a kidney split by a lesion gap), stay one side
    assert [c.side for c in kidney_components(lab, sp, g, cfg, midline_x=90.0)] == [Side.RIGHT, Side.RIGHT]
    # a solitary left kidney and a false find 70 mm further left (a spleen taken for kidney): both left,
    # where halfway between them would have named the kidney right
    wide = np.zeros((20, 40, 160), np.uint8)
    for x in (60, 130):
        wide[ellipsoid(wide.shape, (10, 20, x), (12, 12, 24), (1, 1, 3))] = K
    sides = {round(c.centroid_lps[0]): c.side for c in kidney_components(wide, sp, g, cfg, midline_x=0.0)}
    assert sides == {60: Side.LEFT, 130: Side.LEFT}
    assert {round(c.centroid_lps[0]): c.side for c in kidney_components(wide, sp, g, cfg)} == \
        {60: Side.RIGHT, 130: Side.LEFT}  # without the CT's midline: the old rule


def test_body_midline_is_the_centre_of_the_voxels_above_minus_500_hu():
    from KidneyTumorSegLib.postprocessing import body_midline_x
    ct = np.full((6, 8, 40), -1000.0)
    ct[:, 2:6, 4:12] = 40.0   # the body: x index 4..11, centre 7.5
    ct[2, 3, 30] = 1500.0     # one metal voxel far off: counts with its weight of one voxel
    g = Geometry((2.0, 1.0, 3.0), (100.0, 0.0, 0.0))
    expect = 100.0 + 2.0 * (7.5 * 192 + 30) / 193
    assert body_midline_x(ct, g) == pytest.approx(expect)
    assert body_midline_x(np.full((2, 2, 2), -1000.0), g) is None
    assert body_midline_x(np.full((6, 8, 40), 40.0), g) is None  # no air around it: a crop, not the body


def test_config_round_trip_and_errors():
    cfg = PostprocessingConfig(max_kidneys=1, connectivity=6, max_hole_mm3=None)
    assert PostprocessingConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="Unknown PostprocessingConfig keys.*min_tumor"):
        PostprocessingConfig.from_dict({"min_tumor": 3})
    for bad in ({"connectivity": 18}, {"max_kidneys": 0}, {"min_lesion_mm3": -1}, {"max_hole_mm3": -1}):
        with pytest.raises(ValueError):
            PostprocessingConfig(**bad)
    with pytest.raises(ValueError, match="3D"):
        postprocess(np.zeros((4, 4), np.uint8), SPACING)
    with pytest.raises(ValueError, match="KiTS23"):
        postprocess(np.full((4, 4, 4), 4, np.uint8), SPACING)
    with pytest.raises(ValueError, match="spacing"):
        postprocess(np.zeros((4, 4, 4), np.uint8), (1, 1))


def test_thousands_of_specks_take_their_surroundings_label():
    """A noisy prediction: single-voxel tumor and cyst specks scattered through a kidney with a real tumor."""
    spacing = (1.0, 1.0, 1.0)
    labels = np.zeros((60, 60, 60), np.uint8)
    labels[ellipsoid(labels.shape, (30, 30, 30), (25, 25, 25), spacing)] = Label.KIDNEY
    labels[ellipsoid(labels.shape, (30, 30, 42), (8, 8, 8), spacing)] = Label.TUMOR
    rng = np.random.default_rng(0)
    # Specks deep in kidney tissue (their whole shell is kidney), so the right answer is exactly 'kidney'.
    inside = np.argwhere(ndimage.binary_erosion(labels == Label.KIDNEY, iterations=2))
    picks = inside[rng.choice(len(inside), 3000, replace=False)]
    picks = picks[(picks % 3 == 0).all(axis=1)]  # a 3-voxel lattice: no two specks touch
    noisy = labels.copy()
    noisy[tuple(picks.T)] = np.where(rng.random(len(picks)) < 0.5, Label.TUMOR, Label.CYST)
    assert len(picks) > 50
    out, report = postprocess(noisy, spacing, PostprocessingConfig(min_lesion_mm3=2.0), return_report=True)
    np.testing.assert_array_equal(out, labels)
    assert report.changed["lesion_speck"] == len(picks)
