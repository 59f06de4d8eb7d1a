"""Preprocessing steps and their inverses keep every voxel where it is in physical (LPS) space; so does the
whole path to a network input and back (network_input: reorient -> resample -> normalise)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.image_io import read_image, read_labelmap
from KidneyTumorSegLib.network_input import InputGrid, canonical_ct, stage_input
from KidneyTumorSegLib.preprocessing import (PreprocessingConfig, crop_or_pad, normalize, reorient, resample,
                                             resampled_geometry, undo_reorient, uncrop)

SHAPE = (20, 28, 24)  # z, y, x


def _geometries(synth):
    kits = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # KiTS23 files: axial is index axis i
    return {
        "anisotropic": Geometry((0.8, 0.8, 3.0), (-100.0, -150.0, -700.0), np.eye(3)),
        "flipped": Geometry((3.0, 1.5, 0.9), (177.956, -11.319, 94.302), np.diag([-1.0, -1.0, 1.0])),
        "permuted": Geometry((2.5, 0.78, 0.78), (12.0, -3.0, 40.0), kits),
        "oblique": Geometry((0.9, 1.2, 2.7), (33.3, -44.4, 55.5), synth.rotation(12, -20, 25) @ np.diag([-1.0, 1, -1])),
    }


GEOMETRIES = ["anisotropic", "flipped", "permuted", "oblique"]


def _centroids(labels: np.ndarray, geometry: Geometry) -> dict:
    return {int(v): geometry.index_to_physical(np.argwhere(labels == v).mean(axis=0)[::-1])
            for v in np.unique(labels) if v}


# -- reorientation --------------------------------------------------------------------------------
@pytest.mark.parametrize("which", GEOMETRIES)
def test_reorientation_moves_no_voxel_and_is_exactly_undone(synth, which):
    g = _geometries(synth)[which]
    ids = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    out, g2, info = reorient(ids, g, "LPS")
    rng = np.random.default_rng(0)
    for zyx in rng.integers(0, out.shape, size=(10, 3)):
        old_zyx = np.unravel_index(out[tuple(zyx)], SHAPE)
        assert np.allclose(g2.index_to_physical(zyx[::-1]), g.index_to_physical(np.array(old_zyx)[::-1]), atol=1e-9)
    d = g2.direction_matrix
    assert np.all(np.diag(d) > 0.7) and np.all(np.argmax(np.abs(d), axis=0) == [0, 1, 2])  # closest to LPS
    assert np.isclose(abs(np.linalg.det(d)), 1)
    back, g3 = undo_reorient(out, info)
    assert np.array_equal(back, ids) and g3 == Geometry(g.spacing, g.origin, g.direction, SHAPE[::-1])
    if which != "oblique":  # axis-aligned: same result as SimpleITK's DICOMOrient
        ref = sitk.DICOMOrient(Image(ids.astype(np.int32), g).to_sitk(), "LPS")
        assert np.array_equal(sitk.GetArrayFromImage(ref), out)
        assert Geometry.from_sitk(ref).is_close(g2, atol=1e-9) and np.allclose(d, np.eye(3))


def test_reorient_to_ras_and_channel_axis(synth):
    g = _geometries(synth)["anisotropic"]
    probs = np.random.default_rng(0).random((3,) + SHAPE)
    out, g2, info = reorient(probs, g, "RAS")
    assert np.allclose(g2.direction_matrix, np.diag([-1, -1, 1]))
    assert np.array_equal(out[1], reorient(probs[1], g, "RAS")[0])
    assert np.array_equal(undo_reorient(out, info)[0], probs)


# -- resampling ---------------------------------------------------------------------------------
def test_resampled_grid_keeps_field_of_view(synth):
    g = Geometry((0.8, 1.0, 3.0), (5.0, 6.0, 7.0), synth.rotation(5, 10, 15), (24, 28, 20))
    half = resampled_geometry(g, (0.4, 0.5, 1.5))
    assert half.size == (48, 56, 40)
    corner = np.array([-0.5, -0.5, -0.5])  # outer voxel corners coincide for integer ratios
    assert np.allclose(half.index_to_physical(corner), g.index_to_physical(corner), atol=1e-9)
    odd = resampled_geometry(g, (1.1, 0.7, 2.0))
    assert odd.size == (17, 40, 30)  # round(24*0.8/1.1)=17, round(28/0.7)=40, round(60/2)=30
    centre = lambda x: x.index_to_physical((np.asarray(x.size) - 1) / 2)  # noqa: E731
    assert np.allclose(centre(odd), centre(g), atol=1e-9) and odd.direction == g.direction


def _forward(image, cfg, kind):
    """A label map (or CT) on its own grid -> the stage's network grid, as network_input does for training."""
    canon, grid, reo = reorient(image.array, image.geometry, cfg.orientation)
    where = InputGrid.of(grid, cfg)
    return where.cut(canon, kind), where, reo


def _restore(array, where, reo, kind):
    return undo_reorient(where.back(array, kind), reo)[0]


@pytest.mark.parametrize("which", GEOMETRIES)
def test_label_round_trip_is_exact_for_integer_spacing_ratio(synth, which):
    g = _geometries(synth)[which]
    labels = synth.labels(SHAPE)
    reoriented_spacing = reorient(labels, g)[1].spacing
    cfg = PreprocessingConfig(target_spacing=tuple(s / 2 for s in reoriented_spacing))
    fine, where, reo = _forward(Image(labels, g), cfg, "nearest")
    assert fine.shape == tuple(2 * s for s in reorient(labels, g)[0].shape)
    assert where.geometry.spacing == cfg.target_spacing
    assert np.array_equal(_restore(fine, where, reo, "nearest"), labels)
    assert np.array_equal(np.bincount(fine.ravel()), 8 * np.bincount(labels.ravel()))  # every voxel split in 8


@pytest.mark.parametrize("which", GEOMETRIES)
@pytest.mark.parametrize("kind", ["nearest", "onehot"])
def test_label_round_trip_with_non_integer_factors(synth, which, kind):
    g = _geometries(synth)[which]
    labels = synth.labels(SHAPE)
    reoriented_spacing = np.asarray(reorient(labels, g)[1].spacing)
    cfg = PreprocessingConfig(target_spacing=tuple(reoriented_spacing * (0.77, 1.13, 0.61)))
    out, where, reo = _forward(Image(labels, g), cfg, kind)
    back = _restore(out, where, reo, kind)
    assert back.shape == labels.shape and back.dtype == labels.dtype
    assert (back == labels).mean() >= 0.99
    tolerance = 0.25 * max(g.spacing)  # a fraction of the coarsest voxel, in mm
    for c in (_centroids(out, where.geometry), _centroids(back, g)):
        ref = _centroids(labels, g)
        assert c.keys() == ref.keys()
        assert all(np.linalg.norm(c[k] - ref[k]) < tolerance for k in ref), (c, ref)


def test_probabilities_restore_linearly(synth):
    g = _geometries(synth)["oblique"]
    labels = synth.labels(SHAPE)
    cfg = PreprocessingConfig(target_spacing=(1.0, 1.0, 1.5))
    fine, where, reo = _forward(Image(labels, g), cfg, "nearest")
    probs = np.stack([(fine == k).astype(np.float32) for k in range(4)])
    back = _restore(probs, where, reo, "linear")
    assert back.shape == (4,) + SHAPE and back.dtype == np.float32
    assert np.allclose(back.sum(axis=0), 1, atol=1e-5)  # linear interpolation keeps a partition of unity
    assert (back.argmax(axis=0) == _restore(fine, where, reo, "nearest")).mean() > 0.98


def test_ct_network_input_restores_onto_the_input_grid(synth):
    g = _geometries(synth)["flipped"]
    ct = synth.ct(synth.labels(SHAPE))
    cfg = PreprocessingConfig(target_spacing=(1.5, 1.5, 1.5))
    canon, grid, reo = canonical_ct(Image(ct, g), cfg)
    x = stage_input(canon, grid, cfg)
    assert x.image.dtype == np.float32 and x.image.shape == x.geometry.shape
    assert abs(x.image.mean()) < 1e-4 and abs(x.image.std() - 1) < 1e-3  # no fixed mean/std: per volume
    assert reo.original == Geometry(g.spacing, g.origin, g.direction, SHAPE[::-1])
    hu = _restore(x.hu, x.grid, reo, "linear")
    assert hu.shape == SHAPE and np.corrcoef(hu.ravel(), ct.ravel())[0, 1] > 0.9
    same = stage_input(canon, grid, PreprocessingConfig(target_spacing=None))  # no resampling: HU as they are
    assert same.hu is canon and same.geometry is grid and same.grid.back(same.hu) is same.hu


def test_real_ct_and_kidney_mask(shared_data):
    ct = read_image(shared_data / "ct" / "example_ct.nii.gz")
    left = read_labelmap(shared_data / "ct" / "example_ct_kidney_left.nii.gz")
    cfg = PreprocessingConfig(target_spacing=(1.5, 1.5, 1.5))
    x = stage_input(*canonical_ct(ct, cfg)[:2], cfg)
    lab, where, reo = _forward(left, cfg, "nearest")
    g = x.geometry
    assert where.geometry == g and x.image.shape == lab.shape == (224, 202, 244)
    assert np.allclose(g.direction_matrix, np.eye(3))  # canonical LPS after flipping x and y
    c = _centroids(lab, g)[1]
    assert c[0] > 30 and np.allclose(c, _centroids(left.array, left.geometry)[1], atol=0.5)
    assert np.array_equal(_restore(lab, where, reo, "nearest"), left.array)


# -- crop / pad ---------------------------------------------------------------------------------
def test_crop_pad_round_trip(synth):
    data = np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE) + 1
    g = Image(data, _geometries(synth)["oblique"]).geometry  # with size, as uncrop needs it
    start, stop = (-3, 5, 2), (15, 33, 30)  # pads before z, after y and x
    box, g_box = crop_or_pad(data, g, start, stop, pad_value=0)
    assert box.shape == (18, 28, 28) and g_box.size == (28, 28, 18)
    assert np.allclose(g_box.index_to_physical((0, 0, 0)), g.index_to_physical(np.array(start[::-1], float)))
    assert box[3, 0, 0] == data[0, 5, 2] and box[0].max() == 0 and box[:, -1].max() == 0
    p = g_box.index_to_physical((4, 6, 7))  # same value at the same physical point
    assert box[7, 6, 4] == data[tuple(np.rint(g.physical_to_index(p)[::-1]).astype(int))]
    pasted = uncrop(box, start, g)
    inside = np.zeros(SHAPE, bool)
    inside[0:15, 5:28, 2:24] = True
    assert np.array_equal(pasted[inside], data[inside]) and pasted[~inside].max() == 0
    whole, g_whole = crop_or_pad(data, g, (-2, -2, -2), (22, 30, 26), pad_value=-1)
    assert np.array_equal(uncrop(whole, (-2, -2, -2), g), data)
    with pytest.raises(ValueError):
        crop_or_pad(data, g, (0, 0, 0), (0, 5, 5))


# -- normalisation and config -----------------------------------------------------------------
def test_normalization_matches_hand_computed_values():
    hu = np.array([-1000, -100, 0, 150, 400, 3000], np.float32).reshape(1, 1, 6)
    fixed = normalize(hu, PreprocessingConfig(mean=100.0, std=50.0))
    assert np.allclose(fixed.ravel(), [-4, -4, -2, 1, 6, 6])
    clipped = np.array([-100, -100, 0, 150, 400, 400], float)
    auto = normalize(hu, PreprocessingConfig())
    assert np.allclose(auto.ravel(), (clipped - clipped.mean()) / clipped.std(), atol=1e-6)
    window = normalize(hu, PreprocessingConfig(normalization="window"))  # [-150, 250] -> [0, 1]
    assert np.allclose(window.ravel(), [0, 0.125, 0.375, 0.75, 1, 1])
    assert fixed.dtype == auto.dtype == window.dtype == np.float32


def test_config_round_trip_and_errors():
    cfg = PreprocessingConfig(target_spacing=(0.78125, 0.78125, 3.0), normalization="window", mean=None,
                              window_level=40, window_width=350.5, orientation="ras")
    d = cfg.to_dict()
    assert PreprocessingConfig.from_dict(json.loads(json.dumps(d))) == cfg and d["orientation"] == "RAS"
    assert PreprocessingConfig.from_dict({}) == PreprocessingConfig()
    old = {k: v for k, v in d.items() if not k.startswith("box_")}  # checkpoints from before the box rule
    assert PreprocessingConfig.from_dict(old) == cfg
    assert (cfg.box_margin_mm, cfg.box_min_kidney_mm3, cfg.box_merge) == (15.0, 5000.0, "overlap")
    with pytest.raises(ValueError, match="Unknown PreprocessingConfig keys.*spacing_mm"):
        PreprocessingConfig.from_dict({**d, "spacing_mm": 1})
    for bad, word in [({"target_spacing": [1, 0, 1]}, "target_spacing"), ({"normalization": "zscore"}, "normalization"),
                      ({"mean": 1.0}, "together"), ({"orientation": "LPX"}, "orientation"),
                      ({"clip_range": [400, -100]}, "clip_range"), ({"window_width": "wide"}, "window_width"),
                      ({"box_margin_mm": -1}, "box_margin_mm"), ({"box_min_kidney_mm3": None}, "box_min_kidney"),
                      ({"box_merge": "union"}, "box_merge")]:
        with pytest.raises(ValueError, match=word):
            PreprocessingConfig.from_dict(bad)


def test_resample_nearest_keeps_dtype(synth):
    labels = synth.labels(SHAPE)
    out, g = resample(labels, _geometries(synth)["anisotropic"], (1.0, 1.0, 1.0), "nearest")
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1, 2, 3} and out.shape == g.shape
