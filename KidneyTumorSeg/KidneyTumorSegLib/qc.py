"""A quality-control picture: axial, coronal and sagittal slices through each lesion, with label outlines.

One row per lesion (tumor/cyst connected component, largest first, at most ``MAX_ROWS``); without lesions
one row per kidney (the two largest foreground components), without any foreground one row through the
middle of the volume. Panels follow the radiological convention: the volume is first put in LPS index
order (a view, no copy of the CT), so the axial panel shows anterior at the top and the patient's right
on the image's left, coronal and sagittal show superior at the top (sagittal: anterior on the left).
Every panel is resampled to square pixels of one common size, so anatomy keeps its proportions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .atomic import atomic_output, check_output
from .errors import InputError
from .geometry import Image
from .image_io import write_sitk
from .labels import COLORS, FOREGROUND, Label
from .preprocessing import reorient

PathLike = Union[str, os.PathLike]

MAX_ROWS = 6
WINDOW = (40.0, 400.0)        # level, width (HU): soft-tissue window
PANEL_PX = 400                # the largest physical extent of the volume spans this many pixels
GAP = 4                       # pixels between panels and rows
GAP_GREY = 64
TICK = 7                      # length of the marks at the panel edges that point at the row's centre
VIEWS = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class QCRow:
    """What a row shows: ``label`` (tumor/cyst/kidney, or background for the volume middle) and its
    centre as an index (x, y, z) of the LPS-ordered volume."""

    label: Label
    centre: Tuple[int, int, int]
    voxels: int


@dataclass
class QCPicture:
    rgb: np.ndarray                                   # (height, width, 3) uint8
    rows: List[QCRow]
    panels: List[Tuple[int, str, Tuple[int, int, int, int]]]  # (row, view, (top, bottom, left, right))


def lps_view(array: np.ndarray, perm, flip) -> np.ndarray:
    """The array in LPS index order as a view (what ``preprocessing.reorient`` does, without its copy)."""
    out = np.transpose(array, [2 - perm[2], 2 - perm[1], 2 - perm[0]])
    for a in range(3):
        if flip[a]:
            out = np.flip(out, axis=2 - a)
    return out


def _components(mask: np.ndarray, limit: int) -> List[Tuple[Tuple[int, int, int], int]]:
    """(centre index (x, y, z), voxels) of the ``limit`` largest 26-connected components of ``mask``."""
    box = ndimage.find_objects(mask.astype(np.uint8))
    if not box:
        return []
    box = box[0]
    cc, n = ndimage.label(mask[box], structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(cc.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable")[:limit] + 1
    out = []
    for i, zyx in zip(order, ndimage.center_of_mass(cc > 0, cc, order)):
        # Centre of mass, moved onto the component's nearest voxel so non-convex lesions are still cut.
        pts = np.argwhere(cc == i)
        nearest = pts[np.argmin(((pts - np.asarray(zyx)) ** 2).sum(1))] + [s.start for s in box]
        out.append((tuple(int(v) for v in nearest[::-1]), int(sizes[i - 1])))
    return out


def _rows(lab: np.ndarray) -> List[QCRow]:
    lesions = _components(np.isin(lab, (Label.TUMOR, Label.CYST)), MAX_ROWS)
    if lesions:  # a row is named after the label at its centre (a mixed lesion may have both)
        return [QCRow(Label(int(lab[z, y, x])), (x, y, z), v) for (x, y, z), v in lesions]
    kidneys = _components(lab > 0, 2)
    if kidneys:
        return [QCRow(Label.KIDNEY, c, v) for c, v in kidneys]
    return [QCRow(Label.BACKGROUND, tuple(int(n // 2) for n in lab.shape[::-1]), 0)]


def resample_plane(plane: np.ndarray, spacing: Tuple[float, float], px: float, order: int) -> np.ndarray:
    """2D slice with (row, column) pixel ``spacing`` mm -> square pixels of ``px`` mm covering the same extent."""
    shape = [max(1, int(round(n * s / px))) for n, s in zip(plane.shape, spacing)]
    coords = [((np.arange(m) + 0.5) * px / s - 0.5).clip(0, n - 1) for m, s, n in zip(shape, spacing, plane.shape)]
    grid = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(plane, grid, order=order, mode="nearest")


def _panel(ct2d: np.ndarray, lab2d: np.ndarray, spacing, px: float, mark: Tuple[int, int]) -> np.ndarray:
    """RGB panel: windowed CT, 1-pixel outlines per label, ticks at the edges pointing at ``mark``."""
    level, width = WINDOW
    grey = resample_plane(ct2d.astype(np.float32), spacing, px, order=1)
    grey = np.clip((grey - (level - width / 2)) * (255.0 / width), 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    lab = resample_plane(lab2d, spacing, px, order=0)
    for label in FOREGROUND:
        mask = lab == label
        if mask.any():
            # Outline = mask minus its erosion; border_value=0 keeps outlines where a label meets the edge.
            rgb[mask & ~ndimage.binary_erosion(mask, border_value=0)] = COLORS[label]
    r, c = (int(min(max((m + 0.5) * s / px, 0), n - 1)) for m, s, n in zip(mark, spacing, rgb.shape[:2]))
    rgb[r, :TICK] = rgb[r, -TICK:] = rgb[:TICK, c] = rgb[-TICK:, c] = 255
    return rgb


def render_qc(ct: Image, labels) -> QCPicture:
    """The QC picture as an RGB array, with what each row shows and where each panel lies."""
    lab = np.asarray(labels.array if isinstance(labels, Image) else labels)
    if lab.shape != ct.array.shape:
        raise ValueError(f"Label map shape {lab.shape} does not match the CT shape {ct.array.shape} (z, y, x).")
    # The label map goes through reorient (uint8, a cheap copy); the CT follows as a view of the same
    # permutation and flips, so a 600 MB float volume is not copied for a picture.
    lab, g, info = reorient(lab.astype(np.uint8, copy=False), ct.geometry, "LPS")
    cta = lps_view(ct.array, info.perm, info.flip)
    sx, sy, sz = g.spacing
    nz, ny, nx = lab.shape
    px = max(nx * sx, ny * sy, nz * sz) / PANEL_PX  # same scale in every panel: sizes compare
    rows = _rows(lab)
    picture_rows, panels = [], []
    for r, row in enumerate(rows):
        x, y, z = row.centre
        # numpy rows/columns of each view; [::-1] on z puts superior at the top.
        views = [(cta[z], lab[z], (sy, sx), (y, x)),
                 (cta[::-1, y, :], lab[::-1, y, :], (sz, sx), (nz - 1 - z, x)),
                 (cta[::-1, :, x], lab[::-1, :, x], (sz, sy), (nz - 1 - z, y))]
        images = [_panel(c, l, sp, px, m) for c, l, sp, m in views]
        height = max(im.shape[0] for im in images)
        strip, left = [], GAP
        for view, im in zip(VIEWS, images):
            top = (height - im.shape[0]) // 2
            padded = np.zeros((height, im.shape[1], 3), np.uint8)
            padded[top:top + im.shape[0]] = im
            strip += [padded, np.full((height, GAP, 3), GAP_GREY, np.uint8)]
            panels.append((r, view, (top, top + im.shape[0], left, left + im.shape[1])))
            left += im.shape[1] + GAP
        picture_rows.append(np.concatenate([np.full((height, GAP, 3), GAP_GREY, np.uint8)] + strip, axis=1))
    width = picture_rows[0].shape[1]
    parts, offsets, y0 = [np.full((GAP, width, 3), GAP_GREY, np.uint8)], [], GAP
    for im in picture_rows:
        offsets.append(y0)
        parts += [im, np.full((GAP, width, 3), GAP_GREY, np.uint8)]
        y0 += im.shape[0] + GAP
    panels = [(r, v, (t + offsets[r], b + offsets[r], a, c)) for r, v, (t, b, a, c) in panels]
    return QCPicture(np.concatenate(parts, axis=0), rows, panels)


def write_qc_png(ct: Image, labels, path: PathLike, overwrite: bool = False) -> Path:
    """Write the QC picture (see :func:`render_qc`) as an RGB PNG, atomically; never replaces an existing
    file unless ``overwrite``. ``labels``: a (z, y, x) array or Image on the CT's grid."""
    out = Path(path).expanduser().resolve()
    if out.suffix.lower() != ".png":
        raise InputError(f"Cannot write '{out.name}' as a QC picture; name it '*.png'.")
    check_output(out, overwrite)
    img = sitk.GetImageFromArray(render_qc(ct, labels).rgb, isVector=True)
    with atomic_output(out, suffix=".png") as tmp:
        write_sitk(img, tmp, out, compress=False)
    return out
