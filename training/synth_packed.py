"""Packed small bowel (``training.synthetic --packed-bowel``): the peritoneal fat in front of the kidneys filled
with loops, as on most real abdominal CTs.

Without it the procedural painter puts 30-60 separate loops into a body that is otherwise fat, so the space in
front of the kidneys is mostly empty and whatever enhances there is kidney or tumor. On a real CT the small
bowel fills most of that space: loops pressed against each other and against the anterior renal fascia,
separated by thin mesenteric fat that carries small enhancing vessels. Here the fat is cut into loop-sized
cells (a Voronoi partition of random seeds; its cells are the loops), with a one-voxel fat septum between
neighbours (taken from the cell of the smaller index) and along the region's edge, and each painted as one
loop: distended (an enhancing wall around fluid, gas or oral contrast), collapsed (a flat band of wall-density
tissue, the rest of its cell left fat) or left as mesenteric fat. In contrast phases, bright dots and short
curves in the septa are the mesenteric vessels. Everything is labelled as the rest of the body, like the other
procedural bowel. Only fat is filled (nothing painted since the fat is touched: no organ, muscle, bone, colon or
loop), only in front of the kidneys' centre and below their top, and labelled organs, the kidneys and their
perirenal fat are painted over it afterwards.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

PACKED_SHARE = 0.6          # of the cases under --packed-bowel (the others keep the sparse loops: lean patients)
CELL_MM = (22.0, 38.0)      # mean loop cell diameter, drawn per case
FAT_CELLS = (0.15, 0.45)    # share of the cells left as mesenteric fat, drawn per case
KINDS = ("fluid", "gas", "contrast", "collapsed")
KIND_P = (0.40, 0.12, 0.08, 0.40)


def packed_region(fat: np.ndarray, axes, kidney_y: float, top_z: float) -> np.ndarray:
    """The ``fat`` in front of the kidneys' centre (smaller y: anterior in LPS) and below their top (z in mm
    from the grid corner)."""
    zz, yy, _ = axes
    return fat & (yy[None, :, None] < kidney_y) & (zz[:, None, None] < top_z)


def voronoi_cells(region: np.ndarray, sp, cell_mm: float, rng) -> np.ndarray:
    """int32 cell index (1..n) of every ``region`` voxel, 0 elsewhere; seeds are random region voxels, about one
    per cell volume, and each voxel belongs to its nearest seed in mm."""
    idx = np.flatnonzero(region)
    if idx.size == 0:
        return np.zeros(region.shape, np.int32)
    n = max(1, int(round(idx.size * float(np.prod(sp)) / (cell_mm ** 3 * np.pi / 6))))
    seeds = np.zeros(region.shape, bool)
    seeds.flat[rng.choice(idx, size=min(n, idx.size), replace=False)] = True
    ids = np.cumsum(seeds.ravel()).reshape(region.shape).astype(np.int32) * seeds
    nearest = ndimage.distance_transform_edt(~seeds, sampling=sp, return_distances=False, return_indices=True)
    cells = ids[tuple(nearest)]
    cells[~region] = 0
    return cells


def paint_packed_bowel(ct: np.ndarray, fat: np.ndarray, sp, axes, kidney_y: float, top_z: float,
                       unenhanced: bool, vessel_hu: float, rng) -> int:
    """Fill the fat in front of the kidneys with loops (module docstring); returns the number of loops painted
    (0 for the cases left sparse). ``fat``: the voxels inside the abdominal wall that nothing has been painted
    on since the fat (a mask, not an HU window: a procedural colon's stool can reach fat densities). ``rng`` is
    the option's own generator, so that the rest of the case is drawn as without the option."""
    from .synth_anatomy import smooth_field  # here: synth_anatomy imports this module
    if rng.random() >= PACKED_SHARE:
        return 0
    sp = np.asarray(sp, float)
    region = packed_region(fat, axes, kidney_y, top_z)
    cells = voronoi_cells(region, sp, rng.uniform(*CELL_MM), rng)
    # A one-voxel fat septum (the mesentery) between neighbouring cells (on the side of the smaller index) and
    # along the region's edge, so that loops touch neither each other nor what lies around them, not even
    # diagonally (both with 26-connectivity).
    edge = ~ndimage.binary_erosion(region, structure=np.ones((3, 3, 3), bool))
    septa = region & ((ndimage.grey_dilation(cells, size=3) != cells) | edge)
    loops = np.where(septa, 0, cells)
    boxes = ndimage.find_objects(loops)
    wall_hu = (30.0, 50.0) if unenhanced else (70.0, 140.0)
    fat_share, painted = rng.uniform(*FAT_CELLS), 0
    for i, box in enumerate(boxes, start=1):
        if box is None or rng.random() < fat_share:
            continue
        view, mask = ct[box], _rounded(loops[box] == i, sp, rng)
        if not mask.any():  # a cell in pieces whose centroid lies outside it: nothing left to paint
            continue
        kind = KINDS[int(rng.choice(len(KINDS), p=KIND_P))]
        wall = rng.uniform(*wall_hu)
        if kind == "collapsed":  # a flat band through the cell's centre, across a random direction
            painted += _paint_band(view, mask, sp, wall, rng)
        else:
            _paint_distended(view, mask, wall, kind, rng)
            painted += 1
    if not unenhanced:  # mesenteric vessels: bright where a fine random field peaks inside the septa
        field = smooth_field(ct.shape, rng, 3.0 / sp.mean() + 1)
        vessels = septa & (field > rng.uniform(1.6, 2.2))
        ct[vessels] = vessel_hu * rng.uniform(0.6, 0.9)
    return painted


def _rounded(mask: np.ndarray, sp, rng) -> np.ndarray:
    """The cell without its corners: within 0.85-1.05 of its equivalent-sphere radius of its centroid, so that a
    loop is round in section, as bowel is, not a polyhedron."""
    pts = np.argwhere(mask)
    if len(pts) == 0:
        return mask
    radius = (3 * len(pts) * float(np.prod(sp)) / (4 * np.pi)) ** (1 / 3) * rng.uniform(0.85, 1.05)
    keep = np.linalg.norm((pts - pts.mean(axis=0)) * sp, axis=1) < radius
    out = np.zeros_like(mask)
    out[tuple(pts[keep].T)] = True
    return out


def _paint_distended(view: np.ndarray, mask: np.ndarray, wall: float, kind: str, rng) -> None:
    """An enhancing wall (the cell's outer voxel) around fluid (0-30 HU), gas or oral contrast (150-300 HU)."""
    lumen = ndimage.binary_erosion(mask)
    shell = mask & ~lumen
    view[shell] = wall + rng.normal(0.0, 6.0, size=int(shell.sum()))
    content = {"fluid": rng.uniform(0, 30), "gas": rng.uniform(-1000, -900), "contrast": rng.uniform(150, 300)}[kind]
    view[lumen] = np.maximum(content + rng.normal(0.0, 5.0, size=int(lumen.sum())), -1000.0)  # air is the floor


def _paint_band(view: np.ndarray, mask: np.ndarray, sp, wall: float, rng) -> bool:
    """A collapsed loop: the cell's voxels within 3-7 mm of a plane through its centre, at wall density with
    fluid-density speckle between the folds; the rest of the cell stays fat. False when the band misses a cell
    in pieces (nothing painted)."""
    idx = np.argwhere(mask)
    pts = idx * sp
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal)
    dist = np.abs((pts - pts.mean(axis=0)) @ normal)
    band = dist < rng.uniform(3.0, 7.0)
    speckle = rng.random(band.sum()) < 0.15
    hu = np.where(speckle, rng.uniform(0, 30), wall + rng.normal(0.0, 8.0, size=band.sum()))
    view[tuple(idx[band].T)] = hu
    return bool(band.any())
