"""Seeded data augmentation of (z, y, x) training patches, spatial transforms spacing-aware.

Spatial transforms (flips, rotation, scaling, elastic deformation) are composed into ONE sampling grid:
for every output voxel the source position is computed once and both arrays are sampled there with
``scipy.ndimage.map_coordinates`` (image order 1, labels order 0, same ``mode``), so image and labels stay
aligned voxel for voxel. Outside the patch the image takes its per-channel minimum and the labels 0.
Rotation and scaling act in PHYSICAL space: voxel offsets from the patch centre are multiplied by the
spacing (mm), rotated/scaled, and divided by the spacing again, so a 10 degree rotation of an anisotropic
patch (e.g. 0.8 x 0.8 x 3 mm) is a true 10 degree rotation of the anatomy, not a shear. Elastic
displacements are drawn in mm as well. Flips are exact index reversals (``np.flip``) of both arrays.

Intensity transforms (noise, blur, brightness, contrast, gamma, simulated low resolution) change only the
image; labels are returned untouched. They assume a normalised image (z-score) but work on any scale.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

Range = Tuple[float, float]


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities (p_*) and ranges; set a probability to 0 to switch a transform off."""

    p_flip: float = 0.5                      # per axis in flip_axes
    flip_axes: Tuple[int, ...] = (0, 1, 2)   # array axes (z, y, x)
    p_rotate: float = 0.2
    rotation_deg: float = 15.0               # uniform in [-r, r] about each axis in rotation_axes
    rotation_axes: Tuple[int, ...] = (0, 1, 2)  # rotation about z (in-plane), y and x
    p_scale: float = 0.2
    scale: Range = (0.85, 1.15)              # > 1 zooms in (anatomy looks bigger)
    p_elastic: float = 0.1
    elastic_mm: Range = (0.0, 6.0)           # displacement sd, mm
    elastic_grid_mm: float = 40.0            # control-point spacing, mm
    p_noise: float = 0.15
    noise_sd: Range = (0.0, 0.1)
    p_blur: float = 0.1
    blur_mm: Range = (0.5, 1.5)              # Gaussian sigma, mm
    p_brightness: float = 0.15
    brightness: Range = (0.75, 1.25)         # multiplicative
    p_contrast: float = 0.15
    contrast: Range = (0.75, 1.25)           # about the mean, result clipped to the old range
    p_gamma: float = 0.15
    gamma: Range = (0.7, 1.5)
    p_low_res: float = 0.1
    low_res_zoom: Range = (0.5, 1.0)         # downsample factor, then back up (cubic)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") and not 0 <= v <= 1:
                raise ValueError(f"AugmentationConfig.{f.name} must be a probability in [0, 1], got {v}.")
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        for name in ("scale", "elastic_mm", "noise_sd", "blur_mm", "brightness", "contrast", "gamma", "low_res_zoom"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"AugmentationConfig.{name} must be (low, high) with low <= high.")

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "AugmentationConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Unknown AugmentationConfig keys: {sorted(unknown)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    """Rotation matrix in (z, y, x) coordinates: about axis 0 (z), then 1 (y), then 2 (x)."""
    m = np.eye(3)
    for axis, a in enumerate(angles_rad):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        m = r @ m
    return m


def _smooth(shape, spacing, grid_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-sd smooth random field: normal noise on control points every ``grid_mm``, cubic B-spline
    interpolation as separable matrix products (much faster than ndimage.zoom)."""
    coarse = [max(int(np.ceil(n * d / grid_mm)) + 3, 4) for n, d in zip(shape, spacing)]
    f = rng.standard_normal(coarse).astype(np.float32)
    for axis, (n, c) in enumerate(zip(shape, coarse)):
        t = np.abs(np.linspace(1.0, c - 2.0, n)[:, None] - np.arange(c)[None, :])
        w = np.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0)).astype(np.float32)
        f = np.moveaxis(np.tensordot(w, np.moveaxis(f, axis, 0), axes=1), 0, axis)
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def draw_spatial(rng: np.random.Generator, config: AugmentationConfig,
                 force: Optional[Dict[str, Any]] = None) -> Tuple[np.ndarray, float, float]:
    """(rotation angles (z, y, x) in radians, scale, elastic SD in mm), each drawn with its probability (0 and 1
    when not drawn); ``force`` fixes them, for tests (forced angles skip their draws, so later draws move)."""
    force = force or {}
    angles = np.zeros(3)
    if "angles_deg" in force:
        angles = np.radians(force["angles_deg"])
    elif rng.random() < config.p_rotate:
        for a in config.rotation_axes:
            angles[a] = np.radians(rng.uniform(-config.rotation_deg, config.rotation_deg))
    s = force.get("scale", rng.uniform(*config.scale) if rng.random() < config.p_scale else 1.0)
    elastic = force.get("elastic_mm", rng.uniform(*config.elastic_mm) if rng.random() < config.p_elastic else 0.0)
    return angles, s, elastic


def spatial_grid(shape, spacing_zyx, rng: np.random.Generator, config: AugmentationConfig,
                 force: Optional[Dict[str, Any]] = None) -> Optional[np.ndarray]:
    """Source coordinates (3, z, y, x) in voxels for rotation/scaling/elastic, or None (identity).

    ``force`` fixes parameters (for tests): {"angles_deg": (a0, a1, a2), "scale": s, "elastic_mm": sd}.
    """
    sp = np.asarray(spacing_zyx, float)
    angles, s, elastic = draw_spatial(rng, config, force)
    if not np.any(angles) and s == 1.0 and elastic == 0:
        return None
    centre = (np.asarray(shape) - 1) / 2.0
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    mm = (idx - centre[:, None].astype(np.float32)) * sp[:, None].astype(np.float32)  # output offsets, mm
    # Output point p (mm) shows source point R^-1 p / s: the anatomy is rotated by R and scaled by s.
    src = (rotation_matrix(angles).T / s).astype(np.float32) @ mm
    if elastic > 0:
        for a in range(3):
            src[a] += elastic * _smooth(shape, sp, config.elastic_grid_mm, rng).ravel()
    return (src / sp[:, None].astype(np.float32) + centre[:, None]).reshape((3,) + tuple(shape))


def apply_grid(image: np.ndarray, labels: Optional[np.ndarray], coords: np.ndarray, image_order: int = 1):
    """Sample image (linear, outside = per-channel min) and labels (nearest, outside = 0) at ``coords``."""
    chans = image[None] if image.ndim == 3 else image
    out = np.stack([ndimage.map_coordinates(c, coords, order=image_order, mode="constant", cval=float(c.min()))
                    for c in chans]).astype(image.dtype, copy=False)
    out = out[0] if image.ndim == 3 else out
    lab = None if labels is None else ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
    return out, lab


def flip(image: np.ndarray, labels: Optional[np.ndarray], axes: Sequence[int]):
    """Exact flips of spatial axes (0, 1, 2 = z, y, x) of image ((C,) z, y, x) and labels (z, y, x)."""
    off = image.ndim - 3
    for a in axes:
        image = np.flip(image, a + off)
        labels = None if labels is None else np.flip(labels, a)
    return np.ascontiguousarray(image), None if labels is None else np.ascontiguousarray(labels)


def intensity(image: np.ndarray, spacing_zyx, rng: np.random.Generator, config: AugmentationConfig) -> np.ndarray:
    """Noise, blur, brightness, contrast, gamma, simulated low resolution (image only)."""
    x = np.array(image, dtype=np.float32, copy=True)
    sp = np.asarray(spacing_zyx, float)
    if rng.random() < config.p_noise:
        x += rng.normal(0, rng.uniform(*config.noise_sd), x.shape).astype(np.float32)
    if rng.random() < config.p_blur:
        sig = rng.uniform(*config.blur_mm) / sp
        x = ndimage.gaussian_filter(x, ([0] if x.ndim == 4 else []) + list(sig))  # never across channels
    if rng.random() < config.p_brightness:
        x *= rng.uniform(*config.brightness)
    if rng.random() < config.p_contrast:
        lo, hi, m = x.min(), x.max(), x.mean()
        x = np.clip((x - m) * rng.uniform(*config.contrast) + m, lo, hi)
    if rng.random() < config.p_gamma:
        lo, hi = x.min(), x.max()
        if hi > lo:
            x = (((x - lo) / (hi - lo)) ** rng.uniform(*config.gamma)) * (hi - lo) + lo
    if rng.random() < config.p_low_res:
        z = rng.uniform(*config.low_res_zoom)
        spatial = x.shape[-3:]
        small = ndimage.zoom(x, [1.0] * (x.ndim - 3) + [z] * 3, order=0)
        back = [1.0] * (x.ndim - 3) + [n / m for n, m in zip(spatial, small.shape[-3:])]
        x = ndimage.zoom(small, back, order=3)[(Ellipsis,) + tuple(slice(0, n) for n in spatial)]
        if x.shape[-3:] != spatial:  # rounding in zoom: pad by edge values
            pad = [(0, 0)] * (x.ndim - 3) + [(0, n - m) for n, m in zip(spatial, x.shape[-3:])]
            x = np.pad(x, pad, mode="edge")
    return x.astype(np.float32, copy=False)


def augment(image: np.ndarray, labels: Optional[np.ndarray], spacing_zyx: Sequence[float],
            rng: np.random.Generator, config: AugmentationConfig = AugmentationConfig()):
    """Augment one patch: image ((C,) z, y, x), labels (z, y, x) or None, spacing (z, y, x) in mm.

    Returns (image float32, labels with their dtype). Same rng state -> same result.
    """
    if labels is not None and labels.shape != image.shape[-3:]:
        raise ValueError(f"labels {labels.shape} and image {image.shape} differ in spatial shape.")
    coords = spatial_grid(image.shape[-3:], spacing_zyx, rng, config)
    if coords is not None:
        image, labels = apply_grid(image, labels, coords)
    axes = [a for a in config.flip_axes if rng.random() < config.p_flip]
    if axes:
        image, labels = flip(image, labels, axes)
    return intensity(image, spacing_zyx, rng, config), labels
