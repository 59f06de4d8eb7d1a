"""Augmentation: image/label alignment under every spatial transform, seeding, volumes, intensity-only."""
import numpy as np
import pytest
from scipy import ndimage

from training.augmentation import AugmentationConfig, apply_grid, augment, flip, spatial_grid

SHAPE = (24, 64, 64)
SPACING = (3.0, 1.0, 1.0)  # z, y, x mm: anisotropic like a thick-slice CT patch
OFF = dict(p_flip=0, p_rotate=0, p_scale=0, p_elastic=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0,
           p_gamma=0, p_low_res=0)
SPATIAL = {**OFF, "p_flip": 0.5, "p_rotate": 1.0, "p_scale": 1.0, "p_elastic": 1.0}
TRANSFORMS = {"rot_z": {"angles_deg": (15, 0, 0)}, "rot_y": {"angles_deg": (0, -15, 0)},
              "rot_x": {"angles_deg": (0, 0, 15)}, "scale_up": {"scale": 1.15}, "scale_down": {"scale": 0.85},
              "elastic": {"elastic_mm": 4.0},
              "all": {"angles_deg": (10, -12, 15), "scale": 1.1, "elastic_mm": 3.0}}


def sphere(radius_mm=14.0, shape=SHAPE, spacing=SPACING, centre_mm=None):
    grids = np.indices(shape, dtype=float) * np.asarray(spacing)[:, None, None, None]
    c = (np.asarray(shape) - 1) / 2 * np.asarray(spacing) if centre_mm is None else np.asarray(centre_mm)
    return (np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grids, c))) <= radius_mm).astype(np.uint8)


def interior(mask, mm=6.0):
    """Voxels at least ``mm`` (physical) from the mask's boundary: a linear sample there only sees the
    mask's label (its 8 source neighbours lie within one 3 x 1 x 1 mm voxel diagonal, 3.3 mm)."""
    return ndimage.distance_transform_edt(mask, sampling=SPACING) > mm


def labels_3():
    lab = sphere(26.0)
    lab[sphere(11.0, centre_mm=(34, 20, 20)) > 0] = 2
    lab[sphere(10.0, centre_mm=(36, 42, 44)) > 0] = 3
    return lab


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_image_and_labels_stay_aligned_voxel_for_voxel(name):
    lab = labels_3()
    img = lab.astype(np.float32) * 100
    coords = spatial_grid(SHAPE, SPACING, np.random.default_rng(0), AugmentationConfig(**OFF), TRANSFORMS[name])
    # Same grid, nearest for both: the image is exactly label * 100 everywhere (borders included).
    out0, lab0 = apply_grid(img, lab, coords, image_order=0)
    assert np.array_equal(out0, lab0.astype(np.float32) * 100)
    # Linear image: equal to label * 100 away from label boundaries.
    out1, lab1 = apply_grid(img, lab, coords)
    assert np.array_equal(lab1, lab0)
    for k in range(4):
        inner = interior(lab1 == k)
        assert inner.sum() > 10
        assert np.allclose(out1[inner], 100 * k, atol=1e-3)
    assert not np.array_equal(lab1, lab)  # the transform did something


def test_augment_end_to_end_alignment_and_flips():
    lab = labels_3()
    for seed in range(4):
        img, out = augment(lab.astype(np.float32) * 100, lab, SPACING, np.random.default_rng(seed),
                           AugmentationConfig(**SPATIAL))
        for k in range(4):
            assert np.allclose(img[interior(out == k)], 100 * k, atol=1e-3)
    img, out = flip(lab.astype(np.float32) * 100, lab, (0, 2))
    assert np.array_equal(img, out * 100.0) and np.array_equal(out, lab[::-1, :, ::-1])


def test_seeded_reproducibility():
    lab = labels_3()
    img = lab.astype(np.float32) * 100 + np.random.default_rng(9).normal(0, 5, SHAPE).astype(np.float32)
    cfg = AugmentationConfig(**{k: 0.7 for k in OFF})
    a = augment(img, lab, SPACING, np.random.default_rng(42), cfg)
    b = augment(img, lab, SPACING, np.random.default_rng(42), cfg)
    c = augment(img, lab, SPACING, np.random.default_rng(43), cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_volumes_preserved_by_flips_and_rotations():
    lab = sphere(14.0)
    cfg = AugmentationConfig(**OFF)
    _, flipped = flip(lab.astype(np.float32), lab, (0, 1, 2))
    assert flipped.sum() == lab.sum()
    for angles in [(15, 0, 0), (0, 15, 0), (0, 0, -15), (12, -9, 15)]:
        coords = spatial_grid(SHAPE, SPACING, np.random.default_rng(0), cfg, {"angles_deg": angles})
        _, rot = apply_grid(lab.astype(np.float32), lab, coords)
        assert abs(int(rot.sum()) - int(lab.sum())) <= 0.04 * lab.sum()
        # Rotation in physical space: a physical sphere maps onto itself even with 3 x 1 x 1 mm voxels
        # (a rotation of voxel indices would turn it into a tilted ellipsoid).
        dice = 2 * np.sum(rot & lab) / (rot.sum() + lab.sum())
        assert dice > 0.93, (angles, dice)
    coords = spatial_grid(SHAPE, SPACING, np.random.default_rng(0), cfg, {"scale": 1.15})
    _, big = apply_grid(lab.astype(np.float32), lab, coords)
    assert big.sum() / lab.sum() == pytest.approx(1.15 ** 3, rel=0.06)


def test_rotation_is_physical_on_an_off_centre_point():
    # A single bright voxel 10 mm from the centre along y, rotated 90 degrees about x (the z-y plane),
    # must land 10 mm away along z: 10 voxels along y become 10 / 3 voxels along z.
    shape = (31, 31, 5)
    lab = np.zeros(shape, np.uint8)
    lab[15, 25, 2] = 1
    big = ndimage.binary_dilation(lab, iterations=1).astype(np.uint8)
    coords = spatial_grid(shape, (3.0, 1.0, 1.0), np.random.default_rng(0), AugmentationConfig(**OFF),
                          {"angles_deg": (0, 0, 90)})
    _, out = apply_grid(big.astype(np.float32), big, coords)
    zc, yc, _ = np.argwhere(out > 0).mean(0)
    assert yc == pytest.approx(15, abs=1.0) and abs(zc - 15) == pytest.approx(10 / 3, abs=1.0)


def test_intensity_transforms_do_not_touch_labels():
    lab = labels_3()
    img = lab.astype(np.float32) * 2 - 1
    cfg = AugmentationConfig(**{**OFF, **{k: 1.0 for k in ("p_noise", "p_blur", "p_brightness", "p_contrast",
                                                           "p_gamma", "p_low_res")}})
    out_img, out_lab = augment(img, lab.copy(), SPACING, np.random.default_rng(1), cfg)
    assert np.array_equal(out_lab, lab) and out_img.shape == img.shape and out_img.dtype == np.float32
    assert not np.allclose(out_img, img)
    two = np.stack([img, -img])  # channels first
    out2, _ = augment(two, lab, SPACING, np.random.default_rng(1), AugmentationConfig(**SPATIAL))
    assert out2.shape == two.shape


def test_config_round_trip_and_validation():
    cfg = AugmentationConfig(p_rotate=0.3, scale=(0.9, 1.1), flip_axes=(1, 2))
    assert AugmentationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="probability"):
        AugmentationConfig(p_noise=1.5)
    with pytest.raises(ValueError, match="Unknown"):
        AugmentationConfig.from_dict({"p_warp": 1})
