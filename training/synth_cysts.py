"""Simple renal cysts added to the KiTS23 kidneys (``training.synthetic --extra-cysts``).

Why: no stage 2 trained on the painted cases finds cysts. On the held-out cases v4 called 502 of 535 mL of
reference cyst something else, and V called none (decision 108). A cyst bulging out of the kidney is a round
fluid blob against it, and the painter puts such blobs there as background: fluid-filled bowel loops against the
kidney (``--bowel-by-kidneys``), a dilated extrarenal pelvis (``--extrarenal-pelvis``). KiTS23 labels a cyst in
about half of its cases, mostly small (median 3.6 mL a case, half the pieces under 0.5 mL, on the 160 training
shapes), so the training cases show few cysts of the kind that is confused.

So, in ``CYST_P`` of the kidneys (the two largest pieces of the KiTS labels, each of at least ``MIN_KIDNEY_ML``),
1-``MAX_CYSTS`` round cysts of radius ``RADIUS_MM`` are added, each centred on the kidney's outer surface and moved
along its outward normal by ``DEPTH`` radii: from wholly inside the kidney (-1) to mostly bulging out of it (+0.5:
about 84 % outside a flat surface). A cyst takes only kidney voxels and unlabelled voxels of the body (the fat
around the kidney), never a tumor, another cyst, an organ, the renal sinus or the hilum's vessels, so its shape
follows what it meets.
The cyst label is the only change to the labels; the painter paints it as every KiTS cyst (water density, never
enhancing) and surrounds it with perirenal fat. Called after every other option, with a generator of its own,
so the rest of the case is drawn as without it. The grid is the generator's axis-aligned grid; ``sp`` is its
spacing (z, y, x) mm.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.labels import Label

CYST_P = 0.5              # share of the kidneys that get cysts
MAX_CYSTS = 2             # cysts per such kidney: 1 to this many
RADIUS_MM = (4.0, 18.0)   # cyst radius, drawn per cyst (8-36 mm across)
DEPTH = (-1.0, 0.5)       # centre's distance outside the kidney surface, in radii
MIN_ML = 0.1              # a cyst cut to less than this by what it meets is dropped
MIN_KIDNEY_ML = 10.0      # smaller pieces of the KiTS labels (stray voxels of a label map) get no cyst


def add_cysts(anatomy: np.ndarray, labels: np.ndarray, sp, rng: np.random.Generator,
              body: Optional[np.ndarray] = None) -> Tuple[int, float]:
    """Add cysts to ``labels`` (in place) as above; returns (cysts added, their mL). ``anatomy`` is read only:
    a cyst takes only its unlabelled (0) voxels, and of those only the ``body`` mask's (None: all)."""
    sp = np.asarray(sp, float)
    pieces, n = ndimage.label(labels > 0)
    sizes = ndimage.sum(labels > 0, pieces, range(1, n + 1)) * float(np.prod(sp)) / 1000.0
    kidneys = [k + 1 for k in np.argsort(sizes)[::-1][:2] if sizes[k] >= MIN_KIDNEY_ML]
    room = (anatomy == 0) & (labels == 0) & (True if body is None else body)
    added, voxels = 0, 0
    for k in sorted(kidneys):
        if rng.random() >= CYST_P:
            continue
        for _ in range(int(rng.integers(1, MAX_CYSTS + 1))):
            cyst = _one_cyst(room, labels, pieces == k, sp, rng)
            if cyst is not None:
                labels[cyst] = Label.CYST
                added, voxels = added + 1, voxels + int(cyst.sum())
    return added, round(voxels * float(np.prod(sp)) / 1000.0, 3)


def _one_cyst(room: np.ndarray, labels: np.ndarray, kidney: np.ndarray, sp: np.ndarray,
              rng: np.random.Generator):
    """One cyst's voxels for the kidney ``kidney`` (a mask of all its labels), or None if too small; ``room``:
    the unlabelled voxels a cyst may take outside the kidney."""
    radius = float(rng.uniform(*RADIUS_MM))
    pad = np.ceil((radius * 2 + 2 * sp.max()) / sp).astype(int)
    box = ndimage.find_objects(kidney.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - p, 0), min(s.stop + p, m)) for s, p, m in zip(box, pad, labels.shape))
    inside = kidney[box]
    parenchyma = inside & (labels[box] == Label.KIDNEY)
    # the outer surface: parenchyma facing unlabelled voxels (not the sinus, an organ or a lesion)
    free = room[box] & (labels[box] == 0)  # labels: a cyst added before
    surface = np.argwhere(parenchyma & ndimage.binary_dilation(free, ndimage.generate_binary_structure(3, 1)))
    if not len(surface):
        return None
    point = surface[rng.integers(len(surface))]
    # outward normal: down the kidney's distance field (the field rises into the kidney)
    depth = ndimage.distance_transform_edt(inside, sampling=sp)
    normal = -np.array([g[tuple(point)] for g in np.gradient(depth, *sp)])
    norm = float(np.linalg.norm(normal))
    if norm == 0:
        return None
    centre = point * sp + normal / norm * radius * float(rng.uniform(*DEPTH))
    axes = radius * rng.uniform(0.85, 1.15, 3)  # not quite round
    grid = np.ogrid[tuple(slice(0, s) for s in inside.shape)]
    ball = sum(((g * d - c) / a) ** 2 for g, d, c, a in zip(grid, sp, centre, axes)) <= 1.0
    cyst = ball & (parenchyma | free)
    cyst, pieces = ndimage.label(cyst)
    if not pieces:
        return None
    sizes = ndimage.sum(cyst > 0, cyst, range(1, pieces + 1))
    cyst = cyst == int(np.argmax(sizes)) + 1  # one cyst: the largest piece of what the ball could take
    if cyst.sum() * float(np.prod(sp)) / 1000.0 < MIN_ML:
        return None
    out = np.zeros(labels.shape, bool)
    out[box] = cyst
    return out
