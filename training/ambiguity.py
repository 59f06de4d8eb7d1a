"""Tumors the CT hardly shows: how far a tumor stands out from its kidney, and a loss that does not ask the
network to tell apart what the image does not show (decision 86).

In about a fifth of the synthetic training crops the painted tumor lies within half a pooled standard deviation
of the kidney tissue around it (most of them unenhanced, where a KiTS tumor is painted almost like kidney).
Supervising kidney-versus-tumor there teaches the network to call tumors by shape alone, and it then calls the
bulging pole of a healthy kidney "tumor" (the model card's "what stands in the way"). With
``training.ambiguous_tumor_separation`` set, such crops are trained with the marginal loss of partially labelled
segmentation (Shi et al., Med. Image Anal. 2021): tumor and kidney become one class for the loss, whose
probability is the sum of the two, so the network is taught where kidney-or-tumor is, not which of the two.
Crops where the tumor stands out keep the full labels.
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
    varies (no noise: not a CT). Any intensity unit: the separation does not depend on a linear rescaling."""
    near = kidney & (distance_mm <= CONTRAST_MM)
    if not lesion.any() or not near.any():
        return None, None, None
    a, b = image[lesion].astype(np.float64), image[near].astype(np.float64)
    pooled = float(np.sqrt((a.var() + b.var()) / 2))
    return a.mean(), b.mean(), abs(a.mean() - b.mean()) / pooled if pooled > 0 else None


def tumor_separation(image: np.ndarray, labels: np.ndarray, spacing_zyx: Sequence[float], tumor: int,
                     kidney: int) -> Optional[float]:
    """The separation of :func:`lesion_contrast` for all ``tumor`` voxels of a (z, y, x) crop against the
    ``kidney`` voxels within CONTRAST_MM of them; None where either has fewer than MIN_VOXELS voxels."""
    lesion = labels == tumor
    if lesion.sum() < MIN_VOXELS:
        return None
    distance = ndimage.distance_transform_edt(~lesion, sampling=tuple(float(s) for s in spacing_zyx))
    if (labels[distance <= CONTRAST_MM] == kidney).sum() < MIN_VOXELS:
        return None
    return lesion_contrast(image, lesion, labels == kidney, distance)[2]


def merge_classes(logits: torch.Tensor, target: torch.Tensor, merge: torch.Tensor, src: int, dst: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C, Z, Y, X) and labels (N, Z, Y, X) in which, for the samples where ``merge`` (N,) is true,
    class ``src`` is folded into ``dst``: dst's logit becomes logsumexp(src, dst), so its softmax probability is
    the sum of the two, src's is suppressed to probability 0, and src labels become dst. Other samples and
    classes are untouched. Any loss on the result is the marginal loss (float32, as the losses compute)."""
    if src == dst or not 0 <= src < logits.shape[1] or not 0 <= dst < logits.shape[1]:
        raise ValueError(f"merge_classes: src and dst must be two of the {logits.shape[1]} classes, got {src}, {dst}")
    merge = merge.to(device=logits.device, dtype=torch.bool).view(-1, 1, 1, 1)
    if merge.numel() != logits.shape[0]:
        raise ValueError(f"merge has {merge.numel()} flags for a batch of {logits.shape[0]}")
    if not bool(merge.any()):
        return logits, target
    x = logits.float()
    joint = torch.logsumexp(x[:, [src, dst]], dim=1)
    channels = [torch.where(merge, joint, x[:, c]) if c == dst
                else torch.where(merge, torch.full_like(x[:, c], SUPPRESSED), x[:, c]) if c == src
                else x[:, c] for c in range(x.shape[1])]
    return torch.stack(channels, dim=1), torch.where(merge & (target == src), dst, target)


def merge_output(output: Union[NetworkOutput, torch.Tensor], target: torch.Tensor, merge: torch.Tensor,
                 src: int, dst: int) -> Tuple[Union[NetworkOutput, torch.Tensor], torch.Tensor]:
    """:func:`merge_classes` applied to a network's logits and every deep-supervision output (all at full size,
    compared with the same target); the boundary head's logits are kept (the loss derives its contour from the
    merged target)."""
    if isinstance(output, torch.Tensor):
        return merge_classes(output, target, merge, src, dst)
    logits, merged = merge_classes(output.logits, target, merge, src, dst)
    deep = tuple(merge_classes(d, target, merge, src, dst)[0] for d in output.deep_supervision)
    return output._replace(logits=logits, deep_supervision=deep), merged
