"""training.batch_augmentation: the GPU recipes' batch augmentation against the scipy path it replaces.

Ground truth is the CPU augmentation (training.augmentation) on the same parameters: the same source points, the
same interpolated values inside the crop, the same smooth elastic field, the same blur away from the edges; plus
exact properties (identity and flips are exact crops, a patch's result depends only on its own seed, the fill is
the crop's per-channel minimum).
"""
import numpy as np
import pytest
import torch
from scipy import ndimage

from training import augmentation as cpu
from training import batch_augmentation as ba
from training.augmentation import AugmentationConfig

PATCH, MARGIN = [24, 20, 16], [3, 2, 2]
CROP = [p + 2 * m for p, m in zip(PATCH, MARGIN)]
SPACING = (3.0, 0.8, 0.8)  # z, y, x: anisotropic, so a non-physical rotation would show
CENTRE = tuple(slice(m, m + p) for m, p in zip(MARGIN, PATCH))
SPATIAL_ONLY = AugmentationConfig(p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_gamma=0, p_low_res=0)
NOTHING = AugmentationConfig(p_flip=0, p_rotate=0, p_scale=0, p_elastic=0, p_noise=0, p_blur=0, p_brightness=0,
                             p_contrast=0, p_gamma=0, p_low_res=0)


def crop_pair(seed=0, channels=1):
    rng = np.random.default_rng(seed)
    img = np.stack([ndimage.gaussian_filter(rng.standard_normal(CROP), 2) + 3 * c for c in range(channels)])
    img = img.astype(np.float32)
    lab = ((img[0] > 0.05).astype(np.int64) + (img[0] > 0.15))
    return img, lab


def run(img, lab, seeds, config, force=None, patch=PATCH):
    b = len(seeds)
    return ba.augment_batch(torch.from_numpy(np.stack([img] * b)), torch.from_numpy(np.stack([lab] * b)),
                            torch.tensor([SPACING] * b), torch.tensor(seeds), config, patch, force)


@pytest.mark.parametrize("force", [{"angles_deg": (10, -5, 7), "scale": 1.1},
                                   {"angles_deg": (0, 0, 25), "scale": 0.9},
                                   {"angles_deg": (0, 0, 0), "scale": 1.15}])
def test_rotation_and_scaling_match_the_scipy_path_inside_the_crop(force):
    img, lab = crop_pair()
    force = {**force, "elastic_mm": 0.0}
    coords = cpu.spatial_grid(CROP, SPACING, np.random.default_rng(0), SPATIAL_ONLY, force=force)
    ref_img, ref_lab = cpu.apply_grid(img, lab, coords)
    out_img, out_lab = run(img, lab, [5], SPATIAL_ONLY, {**force, "flips": []})
    pts = coords[(slice(None),) + CENTRE]
    inside = np.all((pts >= 0) & (pts <= np.array(CROP)[:, None, None, None] - 1), axis=0)
    tie = np.any(np.isclose(pts % 1, 0.5, atol=1e-4), axis=0)  # nearest: scipy rounds half up, torch to even
    assert inside.mean() > 0.4  # most points compared (25 degrees in z-y of a flat crop leaves half)
    np.testing.assert_allclose(out_img[0].numpy()[:, inside], ref_img[(slice(None),) + CENTRE][:, inside], atol=1e-5)
    assert np.array_equal(out_lab[0].numpy()[inside & ~tie], ref_lab[CENTRE][inside & ~tie])


def test_the_elastic_field_is_the_scipy_paths_field():
    shape, grid_mm = (24, 20, 16), 12.0
    coarse = [max(int(np.ceil(n * d / grid_mm)) + 3, 4) for n, d in zip(shape, SPACING)]
    field = np.random.default_rng(4).standard_normal(coarse).astype(np.float32)
    ref = cpu._smooth(shape, SPACING, grid_mm, np.random.default_rng(4))  # draws the same coarse field
    np.testing.assert_allclose(ba._smooth(field, shape, torch.device("cpu")).numpy(), ref, atol=1e-4)


def test_no_augmentation_is_the_exact_centre_and_flips_are_exact():
    img, lab = crop_pair(channels=2)
    out_img, out_lab = run(img, lab.astype(np.uint8), [1, 2], NOTHING)  # workers send uint8 labels
    assert out_img.shape == (2, 2, *PATCH) and out_lab.shape == (2, *PATCH) and out_lab.dtype == torch.int64
    assert np.array_equal(out_img[0].numpy(), img[(slice(None),) + CENTRE])
    assert np.array_equal(out_lab[1].numpy(), lab[CENTRE])
    flipped_img, flipped_lab = run(img, lab, [1], NOTHING, {"flips": [0, 2]})
    assert np.array_equal(flipped_img[0].numpy(), np.flip(img[(slice(None),) + CENTRE], (1, 3)))
    assert np.array_equal(flipped_lab[0].numpy(), np.flip(lab[CENTRE], (0, 2)))


def test_a_patch_depends_on_its_own_seed_only():
    img, lab = crop_pair()
    other, other_lab = crop_pair(seed=9)
    config = AugmentationConfig(p_rotate=1, p_scale=1, p_elastic=1, p_noise=1, p_blur=1, p_gamma=1, p_low_res=1)
    alone = run(img, lab, [77], config)
    batch = ba.augment_batch(torch.from_numpy(np.stack([other, img])), torch.from_numpy(np.stack([other_lab, lab])),
                             torch.tensor([SPACING, SPACING]), torch.tensor([3, 77]), config, PATCH)
    assert torch.equal(alone[0][0], batch[0][1]) and torch.equal(alone[1][0], batch[1][1])
    again = run(img, lab, [77], config)
    assert torch.equal(alone[0], again[0])
    assert not torch.equal(alone[0], run(img, lab, [78], config)[0])
    assert torch.isfinite(alone[0]).all()


def test_outside_the_crop_the_image_takes_each_channels_minimum_and_the_labels_zero():
    img, lab = crop_pair(channels=2)
    lab[:] = 1
    out_img, out_lab = run(img, lab, [1], SPATIAL_ONLY, {"angles_deg": (45, 0, 0), "scale": 0.7, "elastic_mm": 0.0,
                                                          "flips": []})
    corner = (slice(None), 0, 0)  # far outside the crop after 45 degrees and zooming out
    assert np.allclose(out_img[0][(slice(None),) + corner].numpy(), img.min(axis=(1, 2, 3))[:, None], atol=1e-5)
    assert (out_lab[0][corner] == 0).all() and (out_lab[0][12, 10] == 1).all()


def test_intensity_leaves_the_labels_and_follows_the_drawn_parameters():
    img, lab = crop_pair()
    bright = AugmentationConfig(p_flip=0, p_rotate=0, p_scale=0, p_elastic=0, p_noise=0, p_blur=0,
                                p_brightness=1, p_contrast=0, p_gamma=0, p_low_res=0)
    out_img, out_lab = run(img, lab, [11], bright)
    factor = ba.draw(11, bright, PATCH, SPACING)["brightness"]
    np.testing.assert_allclose(out_img[0].numpy(), img[(slice(None),) + CENTRE] * factor, rtol=1e-6)
    assert np.array_equal(out_lab[0].numpy(), lab[CENTRE])


def test_blur_is_scipys_gaussian_away_from_the_edges():
    x = np.random.default_rng(2).standard_normal((1, 30, 40, 40)).astype(np.float32)
    sigma = [0.4, 1.5, 1.5]
    ours = ba._gaussian(torch.from_numpy(x), sigma).numpy()
    ref = ndimage.gaussian_filter(x, [0] + sigma)
    inner = (slice(None), slice(4, -4), slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(ours[inner], ref[inner], atol=1e-5)


@pytest.mark.parametrize("zoom", [0.5, 0.6, 0.75])
def test_low_resolution_is_scipys_zoom_so_the_image_does_not_shift(zoom):
    x = np.zeros((1, 24, 20, 16), np.float32)
    x[:, 9:, 7:, 5:] = 1.0  # step edges on every axis
    low = {**ba.draw(1, NOTHING, PATCH, SPACING), "low_res_zoom": zoom}
    ours = ba.intensity(torch.from_numpy(x), low, SPACING).numpy()
    small = ndimage.zoom(x, [1, zoom, zoom, zoom], order=0)
    ref = ndimage.zoom(small, [1] + [n / m for n, m in zip(x.shape[1:], small.shape[1:])], order=1)
    assert ref.shape == ours.shape
    # scipy's corner-aligned grids (trilinear where the CPU path is cubic): torch's own nearest/trilinear grids
    # would move the image up to 0.7 voxel against the labels
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_crops_that_are_not_patch_plus_an_even_margin_are_refused():
    img, lab = crop_pair()
    with pytest.raises(ValueError, match="even margin"):
        run(img, lab, [1], NOTHING, patch=[23, 20, 16])
    with pytest.raises(ValueError, match="even margin"):
        run(img, lab, [1], NOTHING, patch=[40, 20, 16])
