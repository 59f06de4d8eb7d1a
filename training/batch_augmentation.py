"""The training augmentation applied to a whole batch on the training device (torch), for GPU recipes.

Why: on the first lent GPU (decision 109) each loader worker spent about 0.26 s a patch, three quarters of it in
``scipy.ndimage.map_coordinates``, so eight workers fed an H200 at under 4 iterations a second. With the recipe's
``augment_on_device`` the workers only cut each patch with its context margin (``PatchSampler``), and this module
augments the batch where the network runs: one ``grid_sample`` call for the spatial transforms, tensor operations
for the intensity ones (decision 111).

The transforms and their parameters are those of :mod:`training.augmentation` (same ``AugmentationConfig``, the
same probabilities and ranges, rotation and scaling in physical space, elastic displacements in mm on a
``elastic_grid_mm`` control grid, fill = the crop's per-channel minimum for the image and 0 for the labels), drawn
per patch from its own seed, so a patch's augmentation depends neither on the batch it lands in nor on the number
of loader workers (the noise itself is drawn by the device's generator: CPU and CUDA runs differ there). Where it
differs from the CPU path, and why that is accepted (decision 111): the CPU path augments patch + margin and then
cuts the patch, this one computes the patch only, so rotation and scaling read the same source points, but the
elastic field is normalised over the patch and the intensity steps (contrast and gamma ranges, blur context, the
low-resolution grid) see the patch, not the crop; interpolation across the crop's edge blends towards the fill;
label ties round to even; blur pads by mirroring (scipy's "mirror", not its default "reflect"); and the simulated
low resolution comes back up trilinearly (scipy: cubic), both ways corner-aligned as scipy's zoom, so the image
does not shift against the labels.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augmentation import AugmentationConfig, draw_spatial, rotation_matrix

SEED_SALT = 0xA06  # the augmentation's generator is seeded [plan seed, SEED_SALT]: not the crop's draws


def draw(seed: int, config: AugmentationConfig, patch: Sequence[int], spacing_zyx: Sequence[float],
         force: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One patch's augmentation parameters, drawn in ``training.augmentation.augment``'s order. ``force`` fixes the
    spatial ones (for tests): {"angles_deg": (a0, a1, a2), "scale": s, "elastic_mm": sd, "flips": axes}."""
    rng, c, force = np.random.default_rng([int(seed), SEED_SALT]), config, force or {}
    p: Dict[str, Any] = dict(zip(("angles", "scale", "elastic_mm"), draw_spatial(rng, c, force)))
    coarse = [max(int(np.ceil(n * d / c.elastic_grid_mm)) + 3, 4) for n, d in zip(patch, spacing_zyx)]
    p["elastic_fields"] = rng.standard_normal([3] + coarse).astype(np.float32) if p["elastic_mm"] > 0 else None
    p["flips"] = force.get("flips", [a for a in c.flip_axes if rng.random() < c.p_flip])
    p["noise_sd"] = rng.uniform(*c.noise_sd) if rng.random() < c.p_noise else None
    p["noise_seed"] = int(rng.integers(2 ** 62)) if p["noise_sd"] is not None else None
    p["blur_mm"] = rng.uniform(*c.blur_mm) if rng.random() < c.p_blur else None
    p["brightness"] = rng.uniform(*c.brightness) if rng.random() < c.p_brightness else None
    p["contrast"] = rng.uniform(*c.contrast) if rng.random() < c.p_contrast else None
    p["gamma"] = rng.uniform(*c.gamma) if rng.random() < c.p_gamma else None
    p["low_res_zoom"] = rng.uniform(*c.low_res_zoom) if rng.random() < c.p_low_res else None
    return p


def spatial_identity(p: Dict[str, Any]) -> bool:
    return not np.any(p["angles"]) and p["scale"] == 1.0 and p["elastic_mm"] == 0


def _smooth(coarse: np.ndarray, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """``training.augmentation._smooth`` on ``device``: the coarse normal field through cubic B-spline weights,
    then unit SD."""
    f = torch.as_tensor(coarse, device=device)
    for axis, (n, c) in enumerate(zip(shape, coarse.shape)):
        t = (torch.linspace(1.0, c - 2.0, n, device=device)[:, None] - torch.arange(c, device=device)[None, :]).abs()
        w = torch.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, torch.where(t < 2, (2 - t) ** 3 / 6, torch.zeros_like(t)))
        f = torch.movedim(torch.tensordot(w, torch.movedim(f, axis, 0), dims=1), 0, axis)
    return (f - f.mean()) / f.std(unbiased=False).clamp_min(1e-6)


def source_grid(p: Dict[str, Any], patch: Sequence[int], crop: Sequence[int], spacing_zyx: Sequence[float],
                device: torch.device) -> torch.Tensor:
    """``grid_sample``'s grid (z, y, x, 3 as x, y, z in [-1, 1], align_corners=True): for each patch voxel, the
    crop position it shows. Offsets from the patch centre in mm are rotated (R^T) and divided by the scale, plus
    the elastic displacement, and placed about the crop centre (the crop is the patch plus a margin)."""
    sp = torch.tensor(list(spacing_zyx), dtype=torch.float32, device=device)
    axes = [torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0 for n in patch]
    mm = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(3, -1) * sp[:, None]
    m = torch.as_tensor(rotation_matrix(p["angles"]).T / p["scale"], dtype=torch.float32, device=device)
    src = m @ mm
    if p["elastic_mm"] > 0:
        src = src + p["elastic_mm"] * torch.stack([_smooth(f, patch, device).reshape(-1)
                                                   for f in p["elastic_fields"]])
    centre = torch.tensor([(n - 1) / 2.0 for n in crop], dtype=torch.float32, device=device)
    size = torch.tensor([max(n - 1, 1) for n in crop], dtype=torch.float32, device=device)
    idx = src / sp[:, None] + centre[:, None]
    norm = 2.0 * idx / size[:, None] - 1.0
    return norm.flip(0).T.reshape(tuple(patch) + (3,))  # (z, y, x) -> grid_sample's (x, y, z)


def _gaussian(x: torch.Tensor, sigma_vox: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian of x (C, z, y, x) per channel, truncated at 4 SD as scipy's, reflecting at the edges."""
    for axis, s in enumerate(sigma_vox):
        r = int(4.0 * s + 0.5)
        if s <= 0 or r == 0:
            continue
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) / s) ** 2)
        k = (k / k.sum()).reshape([1, 1] + [len(k) if a == axis else 1 for a in range(3)])
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r  # F.pad lists the last axis first
        y = F.pad(x[:, None], pad, mode="reflect" if r < x.shape[1 + axis] else "replicate")
        x = F.conv3d(y, k)[:, 0]
    return x


def intensity(x: torch.Tensor, p: Dict[str, Any], spacing_zyx: Sequence[float]) -> torch.Tensor:
    """``training.augmentation.intensity`` on one patch (C, z, y, x) with drawn parameters ``p``."""
    if p["noise_sd"] is not None:
        g = torch.Generator(device=x.device).manual_seed(p["noise_seed"])
        x = x + p["noise_sd"] * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    if p["blur_mm"] is not None:
        x = _gaussian(x, [p["blur_mm"] / s for s in spacing_zyx])
    if p["brightness"] is not None:
        x = x * p["brightness"]
    if p["contrast"] is not None:
        lo, hi, m = x.min(), x.max(), x.mean()
        x = torch.clamp((x - m) * p["contrast"] + m, lo, hi)
    if p["gamma"] is not None:
        lo, hi = x.min(), x.max()
        if hi > lo:
            x = ((x - lo) / (hi - lo)).clamp_min(0) ** p["gamma"] * (hi - lo) + lo
    if p["low_res_zoom"] is not None:  # scipy.ndimage.zoom's corner-aligned grids, down (nearest) and up
        spatial = x.shape[-3:]
        small = x
        for axis, n in enumerate(spatial):
            m = max(int(round(n * p["low_res_zoom"])), 1)
            idx = torch.linspace(0, n - 1, m, device=x.device).round().long()
            small = small.index_select(axis + 1, idx)
        x = F.interpolate(small[None], size=spatial, mode="trilinear", align_corners=True)[0]
    return x


def augment_batch(image: torch.Tensor, labels: torch.Tensor, spacing_zyx: torch.Tensor, seeds: torch.Tensor,
                  config: AugmentationConfig, patch: Sequence[int], force: Optional[Dict[str, Any]] = None):
    """Augment a batch of crops (patch + margin each side) on their device and cut the patches.

    image (B, C, z, y, x) float, labels (B, z, y, x) integer, spacing_zyx (B, 3) mm, seeds (B,) the plans' seeds.
    Returns image (B, C, *patch) float32 and labels (B, *patch) as int64 (the losses' target type).
    """
    patch = [int(v) for v in patch]
    crop = list(image.shape[-3:])
    if labels.shape[-3:] != image.shape[-3:] or any(c < p or (c - p) % 2 for c, p in zip(crop, patch)):
        raise ValueError(f"crops {tuple(image.shape)} / labels {tuple(labels.shape)} are not patch {patch} plus an "
                         "even margin (PatchSampler with augment_on_device cuts them so)")
    device, image = image.device, image.float()
    params = [draw(int(s), config, patch, [float(v) for v in sp], force) for s, sp in zip(seeds, spacing_zyx)]
    margin = [(c - p) // 2 for c, p in zip(crop, patch)]
    centre = (Ellipsis,) + tuple(slice(m, m + p) for m, p in zip(margin, patch))
    out_img = image[centre].clone()
    out_lab = labels[centre].to(torch.int64, copy=True)  # workers send uint8, an eighth of the bytes
    moved = [i for i, p in enumerate(params) if not spatial_identity(p)]
    if moved:
        grid = torch.stack([source_grid(params[i], patch, crop, [float(v) for v in spacing_zyx[i]], device)
                            for i in moved])
        low = image[moved].amin(dim=(2, 3, 4), keepdim=True)  # outside the crop: its per-channel minimum
        out_img[moved] = F.grid_sample(image[moved] - low, grid, mode="bilinear", padding_mode="zeros",
                                       align_corners=True) + low
        lab = F.grid_sample(labels[moved][:, None].float(), grid, mode="nearest", padding_mode="zeros",
                            align_corners=True)
        out_lab[moved] = lab[:, 0].round().long()
    for i, p in enumerate(params):
        if p["flips"]:
            out_img[i] = torch.flip(out_img[i], [a + 1 for a in p["flips"]])
            out_lab[i] = torch.flip(out_lab[i], list(p["flips"]))
        out_img[i] = intensity(out_img[i], p, [float(v) for v in spacing_zyx[i]])
    return out_img.contiguous(), out_lab.contiguous()
