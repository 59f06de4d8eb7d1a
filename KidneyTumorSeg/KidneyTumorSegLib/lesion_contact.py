"""How much of a lesion's surroundings is kidney: the "loose lesion" post-processing rule.

A kidney tumor or cyst grows from the kidney, so kidney tissue makes up part of the one-voxel shell around it:
in the KiTS23 ground truth every tumor/cyst component of 0.2 mL or more has at least 5.4 % kidney in its shell
(the lowest, 5.4 %, a 913 mL exophytic tumor; 1 % of components >= 0.5 mL are below 11 %). A predicted "lesion"
that only grazes the kidney, such as a bowel loop lying against it, has far less. Smaller components are left to
the fragment and speck rules, since KiTS23 has detached lesion slivers of up to 0.2 mL with no contact at all.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
from scipy import ndimage

from .labels import Label


def lesion_contacts(labels: np.ndarray, structure: np.ndarray) -> List[Tuple[Tuple[slice, ...], np.ndarray, float]]:
    """(slices, mask, kidney share of its shell) for each tumor+cyst component of ``labels`` (components by
    ``structure``; the shell is the 6-connected one-voxel layer around the component)."""
    mass = (labels == Label.TUMOR) | (labels == Label.CYST)
    cc, n = ndimage.label(mass, structure=structure)
    out = []
    face = ndimage.generate_binary_structure(3, 1)
    for i, box in enumerate(ndimage.find_objects(cc), start=1):
        sl = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, k)) for s, k in zip(box, labels.shape))
        mask = cc[sl] == i
        shell = ndimage.binary_dilation(mask, structure=face) & ~mask
        share = float(np.mean(labels[sl][shell] == Label.KIDNEY)) if shell.any() else 1.0  # fills the volume
        out.append((sl, mask, share))
    return out


def remove_loose_lesions(work: np.ndarray, min_contact: float, min_mm3: float, voxel_mm3: float,
                         structure: np.ndarray) -> Tuple[int, List[float]]:
    """Set to background (in place) every tumor+cyst component of at least ``min_mm3`` whose shell is less than
    ``min_contact`` kidney; returns (voxels changed, removed volumes in mm^3)."""
    changed, removed = 0, []
    for sl, mask, share in lesion_contacts(work, structure):
        volume = float(mask.sum()) * voxel_mm3
        if volume >= min_mm3 and share < min_contact:
            work[sl][mask] = Label.BACKGROUND
            changed += int(mask.sum())
            removed.append(volume)
    return changed, removed
