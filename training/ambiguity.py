"""Tumors the CT hardly shows: how far a tumor stands out from its kidney, and a loss that does not ask the
network to tell apart what the image does not show (decision 86).

In 36 of the 167 synthetic training crops that hold a tumor, the painted tumor lies within half a pooled standard
deviation of the kidney tissue around it, measured on the network input (19 of them unenhanced, where a KiTS
tumor is painted almost like kidney). Supervising kidney-versus-tumor there teaches the network to call tumors
by shape alone, and it then calls the bulging pole of a healthy kidney "tumor" (the model card's "what stands in
the way"). With ``training.ambiguous_tumor_separation`` set, the tumor of such a crop is trained with the
marginal loss of partially labelled segmentation (Shi et al., Med. Image Anal. 2021): on the tumor's voxels and
one voxel around them, tumor and kidney are one class whose probability is the sum of the two, so the network
is taught that kidney-or-tumor lies there, not which. Everywhere else, the healthy kidney of the same crop
included, the full labels apply: calling healthy kidney "tumor" is still an error. Merged voxels are weighted as
kidney in the cross-entropy (fewer than a tumor's: they teach less), and the boundary head is not trained on
them (the edge between a faint tumor and its kidney is neither taught nor denied).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy import ndimage

from KidneyTumorSegLib.networks.blocks import NetworkOutput

CONTRAST_MM = 10.0  # the kidney tissue a lesion is told apart from: within this of it
MIN_VOXELS = 20     # fewer tumor (or nearby kidney) voxels than this: no separation is measured
SUPPRESSED = -1.0e4  # logit of a merged-away class: exp() underflows to 0 in float32, no inf in the graph


def lesion_contrast(image: np.ndarray, lesion: np.ndarray, kidney: np.ndarray, distance_mm: np.ndarray) -> tuple:
    """(lesion mean, mean of the kidney within CONTRAST_MM of it, |difference| / pooled SD), given each voxel's
    distance (mm) from the lesion; Nones without a lesion or kidney beside it, separation None where neither
    varies (no noise: not a CT). Any intensity unit: a linear rescaling does not change the separation (clipping,
    as the network input's window does, can)."""
    near = kidney & (distance_mm <= CONTRAST_MM)
    if not lesion.any() or not near.any():
        return None, None, None
    a, b = image[lesion].astype(np.float64), image[near].astype(np.float64)
    pooled = float(np.sqrt((a.var() + b.var()) / 2))
    return a.mean(), b.mean(), abs(a.mean() - b.mean()) / pooled if pooled > 0 else None


def tumor_separation(image: np.ndarray, labels: np.ndarray, spacing_zyx: Sequence[float], tumor: int,
                     kidney: int) -> Optional[float]:
    """The separation of :func:`lesion_contrast` for all ``tumor`` voxels of a (z, y, x) crop against the
    ``kidney`` voxels within CONTRAST_MM of them, in the crop's own units (for the cache: the network input, HU
    window applied and clipped, so what the network can see); None where either has fewer than MIN_VOXELS
    voxels; 0 where both are one constant value (saturated by the window)."""
    lesion = labels == tumor
    if lesion.sum() < MIN_VOXELS:
        return None
    distance = ndimage.distance_transform_edt(~lesion, sampling=tuple(float(s) for s in spacing_zyx))
    if (labels[distance <= CONTRAST_MM] == kidney).sum() < MIN_VOXELS:
        return None
    a, b, separation = lesion_contrast(image, lesion, labels == kidney, distance)
    if separation is None:  # neither varies: both clipped to one value by the window (identical input) or not
        return 0.0 if a == b else float("inf")
    return separation


def merge_region(target: torch.Tensor, merge: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    """Bool (N, Z, Y, X): in the samples flagged by ``merge`` (N,), the ``src`` voxels and the ``dst`` voxels
    touching them (26-neighbourhood: partial volume at the faint edge)."""
    lesion = (target == src) & merge.to(device=target.device, dtype=torch.bool).view(-1, 1, 1, 1)
    near = torch.nn.functional.max_pool3d(lesion[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    return lesion | (near & (target == dst))


def merge_classes(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor, src: int, dst: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C, Z, Y, X) and labels (N, Z, Y, X) in which, on the voxels of ``region`` (N, Z, Y, X), class
    ``src`` is folded into ``dst``: dst's logit becomes logsumexp(src, dst), so its softmax probability is the sum
    of the two, src's is suppressed to probability 0, and src labels become dst. Other voxels are untouched. Any
    loss on the result is the marginal loss there (float32, as the losses compute)."""
    if src == dst or not 0 <= src < logits.shape[1] or not 0 <= dst < logits.shape[1]:
        raise ValueError(f"merge_classes: src and dst must be two of the {logits.shape[1]} classes, got {src}, {dst}")
    if tuple(region.shape) != tuple(target.shape):
        raise ValueError(f"merge region {tuple(region.shape)} does not match the labels {tuple(target.shape)}")
    x = logits.float()
    joint = torch.logsumexp(x[:, [src, dst]], dim=1)
    channels = [torch.where(region, joint, x[:, c]) if c == dst
                else torch.where(region, torch.full_like(x[:, c], SUPPRESSED), x[:, c]) if c == src
                else x[:, c] for c in range(x.shape[1])]
    return torch.stack(channels, dim=1), torch.where(region & (target == src), dst, target)


def merge_output(output: Union[NetworkOutput, torch.Tensor], target: torch.Tensor, merge: torch.Tensor,
                 src: int, dst: int) -> Tuple[Union[NetworkOutput, torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
    """(output, labels, region): :func:`merge_classes` on :func:`merge_region`, applied to a network's logits and
    every deep-supervision output (all at full size, compared with the same target); the boundary head's logits
    are kept, and ``region`` (None where nothing is merged) is where the loss should not train the boundary head.
    """
    if not bool(merge.any()):  # on the CPU flags from the loader: no device sync
        return output, target, None
    region = merge_region(target, merge, src, dst)
    if isinstance(output, torch.Tensor):
        return (*merge_classes(output, target, region, src, dst), region)
    logits, merged = merge_classes(output.logits, target, region, src, dst)
    deep = tuple(merge_classes(d, target, region, src, dst)[0] for d in output.deep_supervision)
    return output._replace(logits=logits, deep_supervision=deep), merged, region
