"""The cascade's geometry, boxes, merging and post-processing, checked with networks whose fixed weights
compute a known function of intensity, so the right answer is known voxel for voxel."""
import numpy as np
import pytest
import torch

from KidneyTumorSegLib.cascade import Cascade, CascadeConfig, Stage, body_midline_x
from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.inference import Cancelled
from KidneyTumorSegLib.labels import Label, Side
from KidneyTumorSegLib.network_input import reference_boxes
from KidneyTumorSegLib.preprocessing import PreprocessingConfig, reorient

HU = {"air": -1000.0, "fat": -100.0, "kidney": 150.0, "tumor": 250.0, "cyst": 350.0, "bone": 700.0}
WINDOW = dict(normalization="window", window_level=150.0, window_width=1000.0)


def _norm(hu):
    return (np.clip(hu, -350.0, 650.0) + 350.0) / 1000.0


class NearestIntensity(torch.nn.Module):
    """Logits = -sharpness * (x - centre_c)^2: each voxel goes to the class whose intensity is nearest."""

    def __init__(self, centres_hu):
        super().__init__()
        self.register_buffer("centres", torch.tensor(_norm(np.asarray(centres_hu)), dtype=torch.float32)
                             .view(1, -1, 1, 1, 1))

    def forward(self, x):
        return -1e4 * (x - self.centres) ** 2


def _cascade(stage2_spacing=None, box=None, **config):
    """``box``: stage 2's box rule (PreprocessingConfig.box_*), ``config``: CascadeConfig fields."""
    stage1 = Stage(NearestIntensity([0.0, HU["kidney"]]),
                   PreprocessingConfig(target_spacing=(4.0, 4.0, 4.0), **WINDOW), ["background", "kidney"],
                   (16, 16, 16))
    stage2 = Stage(NearestIntensity([HU["fat"], HU["kidney"], HU["tumor"], HU["cyst"]]),
                   PreprocessingConfig(target_spacing=stage2_spacing, **WINDOW, **(box or {})),
                   ["background", "kidney", "tumor", "cyst"], (24, 24, 24))
    return Cascade(stage1, stage2, CascadeConfig(**config), device="cpu")


def _ellipsoid(shape, spacing, centre_mm, radii_mm):
    z, y, x = np.indices(shape, dtype=float)
    pts = [x * spacing[0], y * spacing[1], z * spacing[2]]
    return sum(((p - c) / r) ** 2 for p, c, r in zip(pts, centre_mm, radii_mm)) <= 1


def phantom(shape=(64, 75, 100), spacing=(2.0, 2.0, 2.5), isthmus=False, seed=0):
    """(ct, truth) in LPS index order: right kidney (low x = patient right) with a cyst, left with a tumor,
    and a small bright 'bone' (2 mL) that stage 1 sees but must not box."""
    truth = np.zeros(shape, np.uint8)
    right = _ellipsoid(shape, spacing, (55, 75, 80), (22, 25, 45))
    left = _ellipsoid(shape, spacing, (145, 75, 80), (22, 25, 45))
    truth[right | left] = Label.KIDNEY
    if isthmus:
        truth[_ellipsoid(shape, spacing, (100, 75, 45), (40, 8, 8))] = Label.KIDNEY
    truth[_ellipsoid(shape, spacing, (160, 70, 95), (10, 10, 12))] = Label.TUMOR
    truth[_ellipsoid(shape, spacing, (50, 80, 60), (7, 7, 8))] = Label.CYST
    ct = np.full(shape, HU["fat"], np.float32)
    ct[:, :5] = HU["air"]
    for label, name in [(Label.KIDNEY, "kidney"), (Label.TUMOR, "tumor"), (Label.CYST, "cyst")]:
        ct[truth == label] = HU[name]
    ct[_ellipsoid(shape, spacing, (100, 130, 140), (8, 8, 8))] = HU["bone"]
    ct += np.random.default_rng(seed).normal(0, 5, shape).astype(np.float32)
    return ct, truth


GEOMETRY = Geometry((2.0, 2.0, 2.5), (-100.0, -80.0, 30.0), np.eye(3))


def test_phantom_is_segmented_exactly_with_sides():
    ct, truth = phantom()
    result = _cascade().segment(Image(ct, GEOMETRY))
    assert result.geometry == Image(ct, GEOMETRY).geometry
    assert result.labels.dtype == np.uint8 and result.labels.shape == ct.shape
    np.testing.assert_array_equal(result.labels, truth)
    assert len(result.boxes) == 2  # the 2 mL bone is below the stage-1 minimum, so it gets no box
    assert sorted(b.sides[0] for b in result.boxes) == [Side.LEFT, Side.RIGHT]
    left = next(b for b in result.boxes if b.sides == (Side.LEFT,))
    assert left.lps_min[0] > 0 > next(b for b in result.boxes if b.sides == (Side.RIGHT,)).lps_max[0]


@pytest.mark.parametrize("code", ["RAS", "ASL", "IRP"])
def test_any_axis_order_lands_on_the_same_physical_voxels(code):
    ct, truth = phantom()
    ct_v, g_v, _ = reorient(ct, Image(ct, GEOMETRY).geometry, code)
    truth_v, _, _ = reorient(truth, Image(ct, GEOMETRY).geometry, code)
    result = _cascade().segment(Image(ct_v, g_v))
    assert result.geometry == g_v
    np.testing.assert_array_equal(result.labels, truth_v)


def test_oblique_direction_keeps_the_input_grid():
    ct, truth = phantom()
    a = np.radians(12.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    g = Geometry(GEOMETRY.spacing, GEOMETRY.origin, rot @ np.diag([-1.0, 1.0, 1.0]))
    result = _cascade().segment(Image(np.ascontiguousarray(ct[:, :, ::-1]), g))
    assert result.geometry.direction == Image(ct, g).geometry.direction
    np.testing.assert_array_equal(result.labels, truth[:, :, ::-1])


def test_stage2_at_another_spacing_comes_back_on_the_input_grid():
    ct, truth = phantom()
    result = _cascade(stage2_spacing=(1.0, 1.0, 1.0)).segment(Image(ct, GEOMETRY))
    # Resampling blurs intensity edges (partial volume): a lesion loses a rim, a tumor/fat border
    # interpolates to kidney-like values and a kidney/cyst border to tumor-like ones, so lesions are compared
    # per kidney half and by overlap only. The foreground/fat border is symmetric: a shifted grid would show
    # in its centroid, which must stay within a quarter voxel.
    for label, half, min_dice in ((Label.KIDNEY, slice(None), 0.95), (Label.TUMOR, slice(50, None), 0.85),
                                  (Label.CYST, slice(None, 50), 0.85), ("all", slice(None), 0.97)):
        a = result.labels[..., half] > 0 if label == "all" else result.labels[..., half] == label
        b = truth[..., half] > 0 if label == "all" else truth[..., half] == label
        assert 2 * np.sum(a & b) / (a.sum() + b.sum()) > min_dice, label
        if label in ("all", Label.KIDNEY):
            shift = np.mean(np.argwhere(a), axis=0) - np.mean(np.argwhere(b), axis=0)
            assert np.all(np.abs(shift) < 0.25), (label, shift)


def test_horseshoe_kidney_gets_one_box():
    ct, truth = phantom(isthmus=True)
    result = _cascade().segment(Image(ct, GEOMETRY))
    assert len(result.boxes) == 1
    np.testing.assert_array_equal(result.labels, truth)


def test_box_margin_and_merge_rule_come_from_stage2_config():
    ct, truth = phantom()  # the kidneys lie 46 mm apart: 30 mm margins make their boxes overlap
    wide, narrow = (_cascade(box=dict(box_margin_mm=m)).segment(Image(ct, GEOMETRY)).boxes for m in (15.0, 5.0))
    for w, n in zip(wide, narrow):
        grow = (np.subtract(n.start, w.start), np.subtract(w.stop, n.stop))  # z, y, x voxels of 2.5, 2, 2 mm
        assert all(np.all(g <= np.ceil(10.0 / np.array([2.5, 2.0, 2.0]))) for g in grow)
        assert sum(int(np.sum(g)) for g in grow) > 0
    merged = _cascade(box=dict(box_margin_mm=30.0)).segment(Image(ct, GEOMETRY))
    assert len(merged.boxes) == 1 and sorted(merged.boxes[0].sides) == [Side.LEFT, Side.RIGHT]
    separate = _cascade(box=dict(box_margin_mm=30.0, box_merge="none")).segment(Image(ct, GEOMETRY))
    assert len(separate.boxes) == 2 and separate.boxes[0].stop[2] > separate.boxes[1].start[2]
    np.testing.assert_array_equal(separate.labels, truth)


def test_a_larger_midline_find_does_not_displace_a_kidney():
    """A full bladder (midline, kidney-like to stage 1, larger than the small left kidney) gets no box:
    kidneys lie beside the spine. Without the rule the two largest finds would be boxed."""
    shape, spacing = (64, 75, 100), (2.0, 2.0, 2.5)
    ct = np.full(shape, HU["fat"], np.float32)
    ct[:, :5] = HU["air"]
    right = _ellipsoid(shape, spacing, (55, 75, 100), (22, 25, 45))   # ~104 mL
    left = _ellipsoid(shape, spacing, (145, 75, 100), (16, 18, 35))   # ~42 mL
    bladder = _ellipsoid(shape, spacing, (100, 45, 25), (38, 30, 16))  # ~76 mL, on the midline
    for m in (right, left, bladder):
        ct[m] = HU["kidney"]
    ct += np.random.default_rng(0).normal(0, 5, shape).astype(np.float32)
    result = _cascade().segment(Image(ct, GEOMETRY))
    assert sorted(s for b in result.boxes for s in b.sides) == [Side.LEFT, Side.RIGHT]
    assert not result.labels[bladder].any() and result.labels[left].all() and result.labels[right].all()
    plain = _cascade(min_lateral_mm=0.0).segment(Image(ct, GEOMETRY))  # the rule off: largest two
    assert plain.labels[bladder].any() and not plain.labels[left].any()


def test_the_result_carries_the_body_midline_of_an_off_centre_patient():
    """Air fills the patient-left fifth of the volume: the body's midline (x index 39.5) is not the volume's
    centre (49.5); the result carries it, for every output's left and right."""
    ct, _ = phantom()
    ct[:, :, 80:] = HU["air"]
    result = _cascade().segment(Image(ct, GEOMETRY))
    assert result.midline_x == pytest.approx(-100.0 + 39.5 * 2.0, abs=2.0)


def test_body_midline_follows_the_patient_not_the_field_of_view():
    ct = np.full((10, 40, 60), -1000.0, np.float32)
    ct[:, 10:30, 30:50] = 40.0  # body off-centre: x indices 30-49, centre 39.5
    g = Geometry((2.0, 2.0, 2.0), (-50.0, 0.0, 0.0), np.eye(3))
    assert body_midline_x(ct, g) == pytest.approx(-50.0 + 39.5 * 2.0)
    flipped = Geometry((2.0, 2.0, 2.0), (50.0, 0.0, 0.0), np.diag([-1.0, 1.0, 1.0]))
    assert body_midline_x(ct, flipped) == pytest.approx(50.0 - 39.5 * 2.0)
    assert body_midline_x(np.full((4, 4, 4), -1000.0), g) is None


def test_kidney_touching_the_volume_edge():
    ct, truth = phantom()
    ct, truth = ct[:, :, 20:], truth[:, :, 20:]  # the right kidney now starts at x index 0
    assert truth[:, :, 0].any()
    result = _cascade().segment(Image(ct, GEOMETRY))
    assert min(b.start[2] for b in result.boxes) == 0
    np.testing.assert_array_equal(result.labels, truth)


def test_one_kidney():
    ct, truth = phantom()
    ct[:, :, 50:][truth[:, :, 50:] > 0] = HU["fat"]
    truth[:, :, 50:] = 0
    result = _cascade().segment(Image(ct, GEOMETRY))
    assert len(result.boxes) == 1
    np.testing.assert_array_equal(result.labels, truth)


def test_a_single_kidneys_box_takes_its_side_from_the_body_midline():
    """Air fills x indices 0-49, so the body's midline (index 74.5) lies patient-left of the one kidney (index
    72.5): its box says right, as the midline says, not left, as the volume's centre (index 49.5) would."""
    ct, truth = phantom()
    ct[:, :, :50] = HU["air"]
    truth[:, :, :50] = 0
    result = _cascade().segment(Image(ct, GEOMETRY))
    assert result.midline_x == pytest.approx(-100.0 + 74.5 * 2.0, abs=2.0)
    assert [b.sides for b in result.boxes] == [(Side.RIGHT,)]
    np.testing.assert_array_equal(result.labels, truth)


def test_no_kidney_gives_an_empty_result_and_says_so():
    ct = np.full((40, 40, 40), HU["fat"], np.float32)
    result = _cascade().segment(Image(ct, GEOMETRY))
    assert result.boxes == [] and not result.labels.any()
    assert "No kidney was found" in result.message


def test_progress_and_cancel():
    ct, _ = phantom()
    seen = []
    _cascade().segment(Image(ct, GEOMETRY), progress=lambda f, text: seen.append((f, text)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("Stage 2" in t for _, t in seen)
    calls = []
    with pytest.raises(Cancelled):
        _cascade().segment(Image(ct, GEOMETRY), should_cancel=lambda: calls.append(1) or len(calls) > 3)


def test_probabilities_on_the_input_grid():
    ct, truth = phantom()
    ct_v, g_v, _ = reorient(ct, Image(ct, GEOMETRY).geometry, "RAS")
    result = _cascade().segment(Image(ct_v, g_v), return_probabilities=True)
    assert result.probabilities.shape == (4,) + ct_v.shape
    np.testing.assert_array_equal(np.argmax(result.probabilities, axis=0), result.labels)


def test_real_ct_in_two_axis_orders_gives_the_same_physical_result(shared_data):
    from KidneyTumorSegLib.image_io import read_image
    image = read_image(shared_data / "ct" / "example_ct.nii.gz")
    cascade = _cascade(box=dict(box_min_kidney_mm3=20_000.0), postprocessing=None)
    result = cascade.segment(image)
    assert result.geometry == image.geometry
    assert result.labels.any()  # bright structures (bone) are 'kidney-like' for these intensity networks
    ct_v, g_v, _ = reorient(image.array, image.geometry, "LPS")  # the file is stored RAS-like
    assert g_v != image.geometry
    result_v = cascade.segment(Image(ct_v, g_v))
    expected, _, _ = reorient(result.labels, image.geometry, "LPS")
    np.testing.assert_array_equal(result_v.labels, expected)


def test_auxiliary_outputs_count_as_background():
    """Stage 2 with an extra 'aux_fat' class that wins every fat voxel (its background is air): the
    auxiliary class is merged into the background, so the result is still exactly the truth, and the
    probabilities have the four main labels. Stage 1 with 'aux_bone': the bone is not a kidney find."""
    ct, truth = phantom()
    stage1 = Stage(NearestIntensity([0.0, HU["kidney"], HU["bone"]]),
                   PreprocessingConfig(target_spacing=(4.0, 4.0, 4.0), **WINDOW),
                   ["background", "kidney", "aux_bone"], (16, 16, 16))
    stage2 = Stage(NearestIntensity([HU["air"], HU["kidney"], HU["tumor"], HU["cyst"], HU["fat"]]),
                   PreprocessingConfig(target_spacing=None, **WINDOW),
                   ["background", "kidney", "tumor", "cyst", "aux_fat"], (24, 24, 24))
    result = Cascade(stage1, stage2, CascadeConfig(), device="cpu").segment(Image(ct, GEOMETRY),
                                                                              return_probabilities=True)
    np.testing.assert_array_equal(result.labels, truth)
    assert len(result.boxes) == 2 and result.probabilities.shape == (4,) + ct.shape
    np.testing.assert_allclose(result.probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)


def test_merge_auxiliary_adds_auxiliary_probabilities_to_the_background():
    from KidneyTumorSegLib.labels import merge_auxiliary
    p = np.array([[0.1, 0.5], [0.2, 0.1], [0.3, 0.3], [0.4, 0.1]])  # (C=4, 2 voxels)
    merged = merge_auxiliary(p, ["background", "kidney", "aux_liver", "aux_body"])
    np.testing.assert_allclose(merged, [[0.8, 0.9], [0.2, 0.1]])
    assert merge_auxiliary(p, ["background", "kidney", "tumor", "cyst"]) is p
    with pytest.raises(ValueError, match="follow the main labels"):
        merge_auxiliary(p, ["background", "aux_liver", "kidney", "tumor"])


class KidneyOnlyBoxes(Cascade):
    """Stage 2's boxes around the reference kidney alone (the phantom is on the LPS canonical grid), as when
    stage 1 misses an exophytic tumor: the tumor runs out of its box."""

    def __init__(self, kidney, **config):
        base = _cascade(**config)
        super().__init__(base.stage1, base.stage2, base.config, device="cpu")
        self.kidney = kidney

    def kidney_boxes(self, mask1, grid1, grid, midline_x=None):
        return reference_boxes(self.kidney, grid, self.stage2.preprocessing)


def test_a_box_that_cuts_a_tumor_grows_until_the_tumor_is_whole():
    ct, truth = phantom()
    spacing = GEOMETRY.spacing
    outside = _ellipsoid(ct.shape, spacing, (18, 75, 80), (14, 14, 14)) & (truth == 0)  # beside the right kidney
    truth[outside], ct[outside] = Label.TUMOR, HU["tumor"]
    kidney = np.where(truth == Label.KIDNEY, truth, 0).astype(np.uint8)  # x from 33 mm: box from 18 mm
    cut = KidneyOnlyBoxes(kidney).segment(Image(ct, GEOMETRY))
    assert 0.2 < (cut.labels[outside] == Label.TUMOR).mean() < 0.9
    once = KidneyOnlyBoxes(kidney, box_growth=1, box_growth_mm=4.0).segment(Image(ct, GEOMETRY))
    assert (cut.labels[outside] == Label.TUMOR).mean() < (once.labels[outside] == Label.TUMOR).mean() < 1.0
    whole = KidneyOnlyBoxes(kidney, box_growth=2).segment(Image(ct, GEOMETRY))
    np.testing.assert_array_equal(whole.labels, truth)
    right, left = sorted(whole.boxes, key=lambda b: b.start[2])
    assert right.start[2] == 0  # grown to the image's edge, and only there
    assert right.stop == cut.boxes[0].stop and right.start[:2] == cut.boxes[0].start[:2]
    assert (left.start, left.stop) == (cut.boxes[1].start, cut.boxes[1].stop)
    with pytest.raises(ValueError, match="box_growth"):
        CascadeConfig(box_growth=-1)


def test_boxes_that_grow_into_each_other_are_merged_and_run_once_more():
    """A lesion bridging the two kidneys: each kidney's box grows across the gap into the other's; the two are
    merged, so no voxel is labelled from the edge of one box over the other's."""
    ct, truth = phantom()
    bridge = _ellipsoid(ct.shape, GEOMETRY.spacing, (100, 75, 80), (25, 10, 10)) & (truth == 0)
    truth[bridge], ct[bridge] = Label.TUMOR, HU["tumor"]
    kidney = np.where(truth == Label.KIDNEY, truth, 0).astype(np.uint8)
    separate = KidneyOnlyBoxes(kidney).segment(Image(ct, GEOMETRY))
    assert len(separate.boxes) == 2 and not (separate.labels[bridge] == Label.TUMOR).all()
    merged = KidneyOnlyBoxes(kidney, box_growth=1).segment(Image(ct, GEOMETRY))
    assert len(merged.boxes) == 1 and sorted(merged.boxes[0].sides) == [Side.LEFT, Side.RIGHT]
    np.testing.assert_array_equal(merged.labels, truth)


class Counting(torch.nn.Module):
    """A network that counts the patches it is given (its calls times batch size)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.patches = net, 0

    def forward(self, x):
        self.patches += x.shape[0]
        return self.net(x)


def _counted(cascade):
    cascade.stage1.model, cascade.stage2.model = Counting(cascade.stage1.model), Counting(cascade.stage2.model)
    return cascade


@pytest.mark.parametrize("mode, axes, passes1, passes2", [("default", (), 1, 1), ("default", (1, 2), 1, 4),
                                                           ("default", (2,), 1, 2), ("fast", (1, 2), 1, 1),
                                                           ("accurate", (), 8, 8), ("accurate", (1, 2), 8, 8)])
def test_stage2_mirror_axes_mirror_stage2_only_in_the_default_mode(mode, axes, passes1, passes2):
    """Patches each network sees against the same mode's overlap without any mirroring (accurate: default's)."""
    ct, truth = phantom()
    baseline = _counted(_cascade(mode="fast" if mode == "fast" else "default"))
    baseline.segment(Image(ct, GEOMETRY))
    cascade = _counted(_cascade(mode=mode, stage2_mirror_axes=axes))
    result = cascade.segment(Image(ct, GEOMETRY))
    assert cascade.stage1.model.patches == passes1 * baseline.stage1.model.patches > 0
    assert cascade.stage2.model.patches == passes2 * baseline.stage2.model.patches > 0
    assert np.mean(result.labels == truth) > 0.99  # a mirror-symmetric network: the same answer


def test_stage2_mirror_axes_are_checked():
    assert CascadeConfig(stage2_mirror_axes=[2, 1]).stage2_mirror_axes == (2, 1)
    for wrong in [(3,), (1, 1), (-1,), (True,), (1.0,), 2, "12"]:
        with pytest.raises(ValueError, match="mirror axes must be"):
            CascadeConfig(stage2_mirror_axes=wrong)


def test_a_stage1_masses_class_brings_an_exophytic_tumor_into_the_box():
    """Stage 1 predicting masses as a main class boxes them with the kidney; the same output as an auxiliary
    class (what a stage 1 that takes the tumor for spleen does) leaves the tumor's far side out of the box."""
    ct, truth = phantom()
    shape, spacing = ct.shape, (2.0, 2.0, 2.5)
    exo = _ellipsoid(shape, spacing, (178, 75, 80), (14, 14, 14)) & (truth == Label.BACKGROUND)
    truth[exo], ct[exo] = Label.TUMOR, HU["tumor"]
    found = {}
    for third in ("masses", "aux_tumor_like"):
        stage1 = Stage(NearestIntensity([0.0, HU["kidney"], HU["tumor"]]),  # at the CT's spacing: no partial
                       PreprocessingConfig(target_spacing=None, **WINDOW),   # volume makes the tumor's rim kidney
                       ["background", "kidney", third], (16, 16, 16))
        cascade = _cascade()
        cascade.stage1 = stage1
        found[third] = cascade.segment(Image(ct, GEOMETRY)).labels
    assert np.array_equal(found["masses"] == Label.TUMOR, truth == Label.TUMOR)
    assert (found["aux_tumor_like"] == Label.TUMOR).sum() < 0.85 * (truth == Label.TUMOR).sum()
