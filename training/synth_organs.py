"""Enlarged spleens and livers for the real-anatomy generator (``training.synthetic --large-organs``).

Why: on held-out synthetic cases the from-scratch stage 2 took a whole spleen that lay beside the left kidney,
at its level, for kidney and tumor (``Resources/Models/stage2_runs.md``, run sc). The 46 training bodies rarely
put spleen or liver there; splenomegaly and hepatomegaly, common in the patients who get abdominal CTs
(cirrhosis, portal hypertension, blood diseases), do. An enlarged spleen grows down, forward and toward the
midline from its fixed place under the left diaphragm, and a Riedel lobe or a large liver reaches down beside
the right kidney.

So, on the anatomy map after the kidneys and their hila are painted, the organ is scaled about the cranial,
posterior, lateral corner of its largest piece's bounding box: it keeps its top and back and grows down by the
full factor, forward and medially by half as much. It takes voxels of bowel, stomach, pancreas and unlabelled
fat (replaced, not pushed aside: a simplification), never a kidney or the fat within ``KIDNEY_SHELL_MM`` of
it, the hilum, bone, muscle, a vessel, an adrenal gland, lung, heart, bladder or the other organ; nor the
column behind the aorta where the painter later puts the spine and psoas of maps that label no bone; nor
anything outside the ellipse, per axial slice, inscribed ``BODY_MARGIN_MM`` inside the labelled voxels' extent
(the painter sizes the body to enclose every labelled voxel and puts the ribs under its wall: an organ grown to
the edge would swell the body and cover the ribs). The grid is the generator's axis-aligned LPS grid: array
axes (z, y, x) run superior, posterior and patient-left.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from scipy import ndimage

from .anatomy_maps import ANATOMY

GROWTH_P = {"spleen": 0.35, "liver": 0.2}  # share of cases whose organ is enlarged
GROWTH = (1.15, 1.45)  # factor downward; forward and medially 1 + half the excess: 1.3-2.2x the volume
SIDEWAYS = 0.5
PROTECTED = ("bone", "muscle", "aorta", "inferior_vena_cava", "portal_splenic_vein", "other_vessel",
             "renal_vessel", "renal_sinus_fat", "collecting_system", "adrenal_gland", "lung", "heart",
             "urinary_bladder", "liver", "spleen")
KIDNEY_SHELL_MM = 4.0  # perirenal fat kept around each kidney
SPINE_HALF_WIDTH_MM = 45.0  # vertebra and psoas behind the aorta, either side of it
BODY_MARGIN_MM = 20.0  # kept free inside the labelled extent: the abdominal wall and ribs go there


def grow_organ(anatomy: np.ndarray, labels: np.ndarray, sp, name: str, factor: float) -> int:
    """Scale organ ``name`` of ``anatomy`` (in place) by ``factor`` downward and 1 + SIDEWAYS * (factor - 1)
    forward and medially, about its cranial, posterior, lateral corner, into the voxels the module docstring
    allows. ``labels``: the KiTS labels (kidneys > 0); ``sp``: spacing (z, y, x) mm. Lateral is patient left
    for the spleen, right for the liver. Returns the number of voxels it gained."""
    if name not in ("spleen", "liver"):
        raise ValueError(f"grow_organ enlarges the spleen or the liver, not {name!r}.")
    if not factor >= 1.0:
        raise ValueError(f"grow_organ needs a factor >= 1 (it enlarges), got {factor!r}.")
    value = ANATOMY[name]
    mask = anatomy == value
    if not mask.any():
        return 0
    cc, n = ndimage.label(mask)
    largest = np.argmax(np.bincount(cc.ravel())[1:]) + 1
    piece = ndimage.find_objects(cc)[largest - 1]  # stray voxels must not move the anchor
    lo = np.array([s.start for s in piece])
    hi = np.array([s.stop - 1 for s in piece])
    anchor = np.array([hi[0], hi[1], hi[2] if name == "spleen" else lo[2]], dtype=float)
    f = np.array([factor, 1 + SIDEWAYS * (factor - 1), 1 + SIDEWAYS * (factor - 1)])
    occupied = np.nonzero((anatomy > 0) | (labels > 0))
    extent_lo = np.array([0, occupied[1].min(), occupied[2].min()])  # the labelled voxels' front and sides
    extent_hi = np.array([anatomy.shape[0] - 1, occupied[1].max(), occupied[2].max()])
    new_lo = np.maximum(np.floor(anchor + (lo - anchor) * f), extent_lo).astype(int)
    new_hi = np.minimum(np.ceil(anchor + (hi - anchor) * f), extent_hi).astype(int)
    box = tuple(slice(a, b + 1) for a, b in zip(new_lo, new_hi))
    # Inverse nearest-neighbour mapping, separable per axis: output index i reads source anchor + (i - anchor) / f.
    src = [np.rint(anchor[i] + (np.arange(new_lo[i], new_hi[i] + 1) - anchor[i]) / f[i]).astype(int)
           for i in range(3)]
    ok = [(s >= 0) & (s < m) for s, m in zip(src, anatomy.shape)]
    scaled = mask[np.ix_(*[np.clip(s, 0, m - 1) for s, m in zip(src, anatomy.shape)])]
    scaled &= ok[0][:, None, None] & ok[1][None, :, None] & ok[2][None, None, :]
    gain = scaled & ~_protected(anatomy, labels, sp, box) & _within_body(box, extent_lo, extent_hi, sp)
    anatomy[box][gain] = value
    return int(gain.sum())


def _within_body(box, lo, hi, sp) -> np.ndarray:
    """(1, Y, X) over ``box``: inside the ellipse inscribed BODY_MARGIN_MM within the extent [lo, hi] (y, x)."""
    y = np.arange(box[1].start, box[1].stop)[:, None]
    x = np.arange(box[2].start, box[2].stop)[None, :]
    (cy, cx), (ry, rx) = ((lo[1:] + hi[1:]) / 2), ((hi[1:] - lo[1:]) / 2 - BODY_MARGIN_MM / np.asarray(sp)[1:])
    if ry <= 0 or rx <= 0:
        return np.zeros((1,) + y.shape[:1] + x.shape[1:], bool)
    return (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1)[None]


def _protected(anatomy: np.ndarray, labels: np.ndarray, sp, box) -> np.ndarray:
    """Within ``box``: the voxels no organ may grow into (see the module docstring)."""
    sp = np.asarray(sp, float)
    keep = np.isin(anatomy[box], [ANATOMY[n] for n in PROTECTED])
    m = np.ceil(KIDNEY_SHELL_MM / sp).astype(int)  # a kidney just outside the box still has its shell inside it
    wide = tuple(slice(max(b.start - k, 0), min(b.stop + k, n)) for b, k, n in zip(box, m, labels.shape))
    kidney = labels[wide] > 0
    if kidney.any():
        shell = ndimage.distance_transform_edt(~kidney, sampling=sp) <= KIDNEY_SHELL_MM
        keep |= shell[tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide))]
    aorta = np.argwhere(anatomy == ANATOMY["aorta"])
    centre = aorta if len(aorta) else np.argwhere(labels > 0)
    if len(centre):
        ay, ax = centre[:, 1].mean(), centre[:, 2].mean()
        y = np.arange(box[1].start, box[1].stop)[None, :, None]
        x = np.arange(box[2].start, box[2].stop)[None, None, :]
        keep |= (y >= ay) & (np.abs(x - ax) * sp[2] <= SPINE_HALF_WIDTH_MM)
    return keep


def enlarge_organs(anatomy: np.ndarray, labels: np.ndarray, sp, rng: np.random.Generator) -> Dict[str, float]:
    """Enlarge the spleen and the liver each with its :data:`GROWTH_P` chance, by a factor drawn from
    :data:`GROWTH`; returns {organ: factor} for those enlarged (the case's info records it). Give it a
    generator of its own (``rng.spawn(1)[0]``) so that the rest of the case is drawn as without the option."""
    grown = {}
    for name, p in GROWTH_P.items():
        if rng.random() < p:
            factor = float(rng.uniform(*GROWTH))
            if grow_organ(anatomy, labels, sp, name, factor):
                grown[name] = round(factor, 3)
    return grown
