"""Closed 3D surfaces of the segments, for planning and 3D printing: binary STL in LPS millimetres.

One surface per segment (``segments.segments_from_labels``: each kidney, tumor and cyst per side):

1. The segment's mask on its bounding box, padded by one empty voxel so the surface closes at the box edge.
2. Marching cubes at 0.5 on the binary mask (scikit-image's ``marching_cubes``, Lewiner et al. 2003, with
   the grid's anisotropic spacing): the triangles pass half way between inside and outside voxel centres.
   Lewiner's variant resolves the ambiguous cube configurations consistently, so a padded binary mask
   gives a closed, manifold surface (every edge shared by exactly two triangles).
3. Taubin lambda/mu smoothing (Taubin 1995; lambda 0.5, mu -0.53, ``SMOOTHING_ITERATIONS`` pairs, uniform
   umbrella weights): a shrinking step followed by an inflating one, so the voxel staircase goes while the
   shape keeps its size, unlike plain Laplacian smoothing, which shrinks every closed surface.
4. Volume match: what shrinkage remains (marching cubes cuts every convex voxel corner) is undone by moving
   every vertex along its normal by (voxel volume - enclosed volume) / area, at most half the smallest
   voxel spacing, so the surface encloses the volume the measurements report.
5. Index (z, y, x) mm -> LPS through the grid's direction and origin; the triangle winding is flipped when
   that map mirrors (negative determinant), so normals always point outwards.

STL stores float32 coordinates without units or frame; the 80-byte header says ``SPACE=LPS`` and mm, as
3D Slicer writes and reads it (Slicer loads STL files as LPS unless the header says RAS).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from scipy import sparse

from .atomic import atomic_output, check_output
from .geometry import Geometry
from .labels import FOREGROUND, Side, segment_name

PathLike = Union[str, os.PathLike]

SMOOTHING_ITERATIONS = 15
TAUBIN_LAMBDA, TAUBIN_MU = 0.5, -0.53
STL_DTYPE = np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])


@dataclass
class Surface:
    """A closed triangle mesh: ``vertices`` (n, 3) LPS mm, ``faces`` (m, 3) vertex indices, outward winding."""

    segment_id: str
    name: str
    vertices: np.ndarray
    faces: np.ndarray
    voxel_volume_ml: float

    @property
    def volume_ml(self) -> float:
        """Enclosed volume (divergence theorem), mL; positive for outward normals."""
        return enclosed_volume_mm3(self.vertices, self.faces) / 1000.0

    @property
    def bounds_lps(self) -> Tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(axis=0), self.vertices.max(axis=0)


def enclosed_volume_mm3(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def is_closed(faces: np.ndarray) -> bool:
    """Watertight and consistently oriented: every directed edge appears once and its reverse once."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    directed = np.unique(edges, axis=0)
    if len(directed) != len(edges):
        return False  # an edge used twice in one direction: non-manifold or flipped triangles
    reverse = np.unique(edges[:, ::-1], axis=0)
    return bool(np.array_equal(directed, reverse))


def _adjacency(n: int, faces: np.ndarray) -> sparse.csr_matrix:
    """Row-normalised vertex adjacency (the uniform umbrella operator's averaging matrix)."""
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    a = sparse.csr_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    a.data[:] = 1.0  # duplicate entries (an edge of two triangles) summed: count each neighbour once
    degree = np.asarray(a.sum(axis=1)).ravel()
    return sparse.diags(1.0 / np.maximum(degree, 1.0)) @ a


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int = SMOOTHING_ITERATIONS,
                  lam: float = TAUBIN_LAMBDA, mu: float = TAUBIN_MU) -> np.ndarray:
    """Taubin lambda/mu smoothing (uniform weights): ``iterations`` pairs of a shrink and an inflate step."""
    avg = _adjacency(len(vertices), faces)
    v = np.asarray(vertices, float).copy()
    for _ in range(iterations):
        v += lam * (avg @ v - v)
        v += mu * (avg @ v - v)
    return v


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals (outward for an outward-wound mesh)."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    fn = np.cross(b - a, c - a)
    n = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(n, faces[:, i], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def match_volume(vertices: np.ndarray, faces: np.ndarray, target_mm3: float, max_offset_mm: float,
                 rounds: int = 3) -> np.ndarray:
    """Offset the vertices along their normals until the enclosed volume is ``target_mm3`` (first-order
    steps dV = area x offset), the total offset clipped to +-``max_offset_mm``."""
    v = vertices.copy()
    total = 0.0
    for _ in range(rounds):
        a, b, c = (v[faces[:, i]] for i in range(3))
        area = 0.5 * float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())
        step = (target_mm3 - enclosed_volume_mm3(v, faces)) / max(area, 1e-12)
        step = float(np.clip(total + step, -max_offset_mm, max_offset_mm)) - total
        if abs(step) < 1e-6:
            break
        v += step * vertex_normals(v, faces)
        total += step
    return v


def mask_surface(mask: np.ndarray, geometry: Geometry, offset_zyx: Sequence[int] = (0, 0, 0),
                 iterations: int = SMOOTHING_ITERATIONS) -> Tuple[np.ndarray, np.ndarray]:
    """Closed surface of a boolean (z, y, x) ``mask`` whose voxel (0, 0, 0) is voxel ``offset_zyx`` of
    ``geometry``: (vertices (n, 3) LPS mm, faces (m, 3)), outward winding."""
    from skimage.measure import marching_cubes  # imported here: only surfaces need scikit-image
    sp_zyx = np.asarray(geometry.spacing[::-1], float)
    padded = np.pad(np.asarray(mask, bool), 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(sp_zyx), method="lorensen",
                                        allow_degenerate=False)
    faces = faces.astype(np.int64)
    if iterations:
        verts = taubin_smooth(verts, faces, iterations)
    if enclosed_volume_mm3(verts, faces) < 0:  # outward winding before the volume match
        faces = faces[:, ::-1]
    target = float(np.count_nonzero(mask)) * float(np.prod(sp_zyx))
    verts = match_volume(verts, faces, target, 0.5 * float(sp_zyx.min()))
    ijk = (verts / sp_zyx - 1.0 + np.asarray(offset_zyx, float))[:, ::-1]  # padded voxel 1 = mask voxel 0
    lps = geometry.index_to_physical(ijk)
    if np.linalg.det(geometry.affine()[:3, :3]) > 0:  # (z, y, x) -> (x, y, z) mirrors; a mirroring grid
        faces = faces[:, ::-1]                         # mirrors back: keep the normals outward
    return lps, faces


def segment_surfaces(seg_map: np.ndarray, segments, geometry: Geometry,
                     iterations: int = SMOOTHING_ITERATIONS) -> List[Surface]:
    """One closed surface per present segment of a segment map (``segments.segments_from_labels``)."""
    from scipy import ndimage
    boxes = ndimage.find_objects(np.asarray(seg_map))
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    out = []
    for s in segments:
        box = boxes[s.value - 1] if s.value <= len(boxes) else None
        if box is None:
            continue
        mask = seg_map[box] == s.value
        verts, faces = mask_surface(mask, geometry, [b.start for b in box], iterations)
        out.append(Surface(s.id, s.name, verts, faces, float(np.count_nonzero(mask)) * voxel_ml))
    return out


# -- STL ---------------------------------------------------------------------------------------------
def stl_header(name: str) -> bytes:
    """80 bytes: ``SPACE=LPS`` (what Slicer looks for) and the units, never starting with "solid" (that
    word marks ASCII STL and misleads some readers)."""
    text = f"SPACE=LPS UNITS=mm KidneyTumorSeg {name}".encode("ascii", "replace")[:80]
    return text.ljust(80, b" ")


def stl_bytes(surface: Surface) -> bytes:
    tri = surface.vertices[surface.faces]  # (m, 3, 3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    records = np.zeros(len(tri), STL_DTYPE)
    records["normal"], records["vertices"] = normal, tri
    return stl_header(surface.name) + np.uint32(len(tri)).tobytes() + records.tobytes()


def read_stl(path: PathLike) -> Tuple[bytes, np.ndarray]:
    """(header, triangles (m, 3, 3) float32) of a binary STL file."""
    data = Path(path).read_bytes()
    n = int(np.frombuffer(data, "<u4", 1, 80)[0])
    records = np.frombuffer(data, STL_DTYPE, n, 84)
    return data[:80], records["vertices"].copy()


def stl_path(outdir: PathLike, basename: str, segment_name: str) -> Path:
    """``<outdir>/<basename>_<segment name>.stl``, e.g. case_00003_left_kidney_tumor.stl."""
    return Path(outdir) / f"{basename}_{re.sub(r'[^A-Za-z0-9]+', '_', segment_name.lower()).strip('_')}.stl"


def possible_surface_paths(outdir: PathLike, basename: str) -> List[Path]:
    """Every STL name a case can get (each structure, left/right/no side), known before segmenting: the
    output check runs on these before any compute."""
    return [stl_path(outdir, basename, segment_name(label, side))
            for label in FOREGROUND for side in (Side.LEFT, Side.RIGHT, None)]


def write_stl(surface: Surface, path: PathLike, overwrite: bool = False) -> Path:
    out = Path(path)
    check_output(out, overwrite)
    with atomic_output(out) as tmp:
        Path(tmp).write_bytes(stl_bytes(surface))
    return out


def write_segment_surfaces(seg_map: np.ndarray, segments, geometry: Geometry, outdir: PathLike, basename: str,
                           overwrite: bool = False) -> Dict[str, Path]:
    """Each present segment's surface as ``<outdir>/<basename>_<segment>.stl``: {"mesh_<segment id>": path}.
    With ``overwrite``, STL files of this case's naming whose segment is absent now are removed, so a
    rerun never leaves an earlier run's tumor beside the new result."""
    written = {f"mesh_{s.segment_id}": write_stl(s, stl_path(outdir, basename, s.name), overwrite)
               for s in segment_surfaces(seg_map, segments, geometry)}
    if overwrite:
        for stale in set(possible_surface_paths(outdir, basename)) - set(written.values()):
            if stale.is_file():
                stale.unlink()
    return written
