"""Kidneys that meet the liver or spleen without a fat plane (``training.synthetic --organ-contact``).

Why: the real label maps leave a voxel or two unlabelled where two organs touch (the annotator's boundary runs
through the partial-volume voxels), and the painter fills every unlabelled voxel near a kidney with perirenal fat
(``synth_structures.paint_kidneys``); ``synth_organs`` keeps a 4 mm fat shell on purpose. So in every synthetic
case a line of fat outlines the kidney against the liver and spleen, while on CT the upper pole often meets the
liver or spleen with no fat visible between them. Soft tissue that touches the kidney with no fat between was,
in training, only ever tumor. The moved-box stage 2 (decision 95) called such liver, over a real kidney's upper
pole, an exophytic tumor. On the source maps (FLARE22 and AMOS, a one-off count), 0-6% of a right kidney's upper
half lies within 2 mm of the liver: the maps show the organs apart even where they touch.

So, in ``CONTACT_P`` of the cases, the liver and spleen close the fat planes no thicker than ``w`` (drawn from
``CONTACT_MM`` once a case) between them and a kidney (every KiTS label: kidney, tumor and cyst, so the fat
between an exophytic tumor and the liver closes too): an unlabelled voxel whose distance to the kidney and
distance to the organ along unlabelled voxels add up to at most ``w`` plus one voxel becomes that organ, if it
touches the organ across faces through such voxels. The sum is the plane's thickness through the voxel counted
between voxel centres, so one voxel is added back; it is the voxel's longest side, so a plane across a finer
axis closes up to the difference (at most 1 mm with the generator's spacings) thicker than ``w``. A thicker
plane keeps all its fat. The organ's distance goes around a labelled structure lying in the plane (adrenal,
bowel, a vessel), so the fat behind it stays fat unless the organ reaches it around the structure's edge
within ``w``; the touching rule keeps out what lies behind a sheet whose voxels meet only at edges: no island
of organ appears. Bowel loops added by the painter itself (``--bowel-by-kidneys``, ``--packed-bowel``) are
not in the map yet and do not block the organ. The KiTS labels never change. The grid is the generator's
axis-aligned grid; ``sp`` is its spacing (z, y, x) mm.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy import ndimage
from skimage.graph import MCP_Geometric

from .anatomy_maps import ANATOMY

CONTACT_P = 0.5           # share of the cases whose kidneys meet the organs without fat
CONTACT_MM = (2.0, 6.0)   # the thickest fat plane w closed, drawn once a case
ORGANS = ("liver", "spleen")


def close_fat_planes(anatomy: np.ndarray, labels: np.ndarray, sp, width_mm: float) -> int:
    """Give the liver and spleen of ``anatomy`` (in place) the unlabelled voxels (0) of the planes at most
    ``width_mm`` thick between them and a kidney (``labels > 0``): distance to the kidney + distance to the
    organ through unlabelled voxels <= ``width_mm`` + the longest voxel side, touching the organ across faces
    through such voxels. A voxel in the planes of both organs goes to the one with the thinner plane, the liver
    on a tie. Returns the number of voxels given."""
    if not width_mm > 0:
        raise ValueError(f"close_fat_planes needs a positive width in mm, got {width_mm!r}.")
    kidney = labels > 0
    if not kidney.any():
        return 0
    sp = np.asarray(sp, float)
    reach = width_mm + sp.max()
    # A voxel of a plane lies within ``reach`` of the kidney, in its box grown by that, and so does the organ voxel
    # that closes it: the box grown by ``reach`` holds both.
    pad = np.ceil(reach / sp).astype(int)
    box = ndimage.find_objects(kidney.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(box, pad, labels.shape))
    view = anatomy[box]
    free = (view == 0) & ~kidney[box]
    to_kidney = ndimage.distance_transform_edt(~kidney[box], sampling=sp)
    best = np.full(view.shape, np.inf)
    owner = np.zeros(view.shape, anatomy.dtype)
    organs = {ANATOMY[name]: view == ANATOMY[name] for name in ORGANS}
    for value, organ in organs.items():  # the liver first: a tie (not <) keeps it
        plane = to_kidney + _distance_through(free, organ, sp)
        take = _touching(organ, free & (plane <= reach)) & (plane < best)
        best[take], owner[take] = plane[take], value
    for value, organ in organs.items():  # the choice between two organs can cut a voxel off from its own
        given = owner == value
        owner[given & ~_touching(organ, given)] = 0
    given = owner > 0
    view[given] = owner[given]
    return int(given.sum())


def _distance_through(free: np.ndarray, organ: np.ndarray, sp) -> np.ndarray:
    """Distance (mm) from ``organ`` along paths through ``free`` voxels only (inf where none reaches): a straight
    distance would reach past a structure lying in the plane (adrenal, bowel, a vessel) to the fat behind it."""
    starts = organ & ndimage.binary_dilation(free, ndimage.generate_binary_structure(3, 3))
    if not starts.any():
        return np.full(free.shape, np.inf)
    costs = np.where(free | starts, 1.0, np.inf)  # infinite cost: impassable
    return MCP_Geometric(costs, sampling=tuple(sp)).find_costs(np.argwhere(starts))[0]


def _touching(organ: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """The ``voxels`` joined to ``organ`` across faces through ``voxels``: a sheet whose voxels meet only at
    edges (a resampled structure's staircase) still separates."""
    faces = ndimage.generate_binary_structure(3, 1)
    return voxels & ndimage.binary_propagation(organ, faces, mask=organ | voxels)


def organ_contact(anatomy: np.ndarray, labels: np.ndarray, sp,
                  rng: np.random.Generator) -> Tuple[Optional[float], float]:
    """In ``CONTACT_P`` of the cases close the fat planes (``close_fat_planes``) at a width drawn from
    ``CONTACT_MM``. Returns (that width, or None when the case keeps its fat; the mL of fat closed, which may be
    0 where no organ lies near a kidney). Give it a generator of its own, so that the rest of the case is drawn
    as without the option."""
    if rng.random() >= CONTACT_P:
        return None, 0.0
    width = float(rng.uniform(*CONTACT_MM))
    voxels = close_fat_planes(anatomy, labels, sp, width)
    return round(width, 2), round(voxels * float(np.prod(sp)) / 1000.0, 3)
