"""Closed STL surfaces of the segments: watertight, outward, on the label map (volume and bounds), in LPS mm."""
import numpy as np
import pytest

from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.image_io import read_labelmap
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.segments import segments_from_labels
from KidneyTumorSegLib.surfaces import (enclosed_volume_mm3, is_closed, mask_surface, possible_surface_paths,
                                        read_stl, segment_surfaces, stl_path, write_segment_surfaces)
from phantoms import rotation

GRIDS = {"axial": (np.eye(3), (0.8, 1.1, 2.5)), "oblique": (rotation(20, -15, 30), (0.8, 1.1, 2.5)),
         "mirrored": (np.diag([-1.0, 1.0, 1.0]), (0.7, 0.7, 3.0)), "kits": ([[0, 0, 1], [0, 1, 0], [-1, 0, 0]],
                                                                         (3.0, 0.78, 0.78))}
CENTRE = np.array([30.0, -12.0, 80.0])
VOLUME_TOLERANCE, BOUNDS_MM = 0.10, 3.0


def grid(direction, spacing, extent_mm=90.0):
    sp = np.asarray(spacing, float)
    size = np.ceil(extent_mm / sp).astype(int)
    origin = CENTRE - np.asarray(direction, float) @ (sp * (size - 1) / 2)
    return Geometry(sp, origin, np.asarray(direction, float).ravel(), tuple(size))


def points(g):
    k, j, i = np.indices(g.shape)
    return g.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(g.shape + (3,))


def ellipsoid(p, radii, axes=np.eye(3), centre=CENTRE):
    return np.sum((((p - centre) @ np.asarray(axes)) / np.asarray(radii, float)) ** 2, axis=-1) <= 1.0


def bean(p):
    """A kidney-like shape: an ellipsoid with a medial notch (a concave surface)."""
    notch = ellipsoid(p, (14, 10, 22), centre=CENTRE + (-24, 0, 0))
    return ellipsoid(p, (22, 16, 38)) & ~notch


SHAPES = {"sphere": (lambda p: ellipsoid(p, (15, 15, 15)), 4 / 3 * np.pi * 15 ** 3),
          "rotated ellipsoid": (lambda p: ellipsoid(p, (8, 14, 30), rotation(35, 10, -50)),
                                4 / 3 * np.pi * 8 * 14 * 30),
          "small sphere": (lambda p: ellipsoid(p, (4, 4, 4)), 4 / 3 * np.pi * 4 ** 3),
          "bean": (bean, None)}


def voxel_bounds(mask, g, offset=(0, 0, 0)):
    """LPS bounds of the mask's voxels as boxes (their 8 corners), the label map's own extent."""
    ijk = (np.argwhere(mask) + np.asarray(offset))[:, ::-1].astype(float)
    corners = np.concatenate([g.index_to_physical(ijk + np.array(c) - 0.5) for c in np.ndindex(2, 2, 2)])
    return corners.min(axis=0), corners.max(axis=0)


@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_surface_is_closed_and_lies_on_the_mask(grid_name, shape):
    g = grid(*GRIDS[grid_name])
    inside, analytic_mm3 = SHAPES[shape]
    mask = inside(points(g))
    verts, faces = mask_surface(mask, g)
    assert is_closed(faces)
    volume = enclosed_volume_mm3(verts, faces)
    voxel_mm3 = mask.sum() * np.prod(g.spacing)
    assert volume > 0  # outward normals on every grid, mirrored ones included
    assert abs(volume / voxel_mm3 - 1) <= VOLUME_TOLERANCE
    if analytic_mm3 is not None:
        assert abs(volume / analytic_mm3 - 1) <= VOLUME_TOLERANCE
    lo, hi = voxel_bounds(mask, g)
    assert np.abs(verts.min(axis=0) - lo).max() <= BOUNDS_MM
    assert np.abs(verts.max(axis=0) - hi).max() <= BOUNDS_MM


def test_smoothing_removes_the_staircase_and_keeps_the_size():
    g = grid(*GRIDS["oblique"])
    mask = ellipsoid(points(g), (15, 15, 15))
    raw, faces = mask_surface(mask, g, iterations=0)
    smooth, faces_s = mask_surface(mask, g)
    err = {k: np.abs(np.linalg.norm(v - CENTRE, axis=1) - 15.0) for k, v in (("raw", raw), ("smooth", smooth))}
    assert err["smooth"].mean() < 0.6 * err["raw"].mean()  # closer to the true sphere than the voxel steps
    assert abs(np.linalg.norm(smooth - CENTRE, axis=1).mean() - 15.0) < 0.5  # no shrinkage


def test_two_pieces_touching_at_a_voxel_edge_stay_watertight():
    mask = np.zeros((6, 6, 6), bool)
    mask[1:3, 1:3, 1:3] = True
    mask[3:5, 3:5, 1:3] = True  # touches the first block along one voxel edge only
    verts, faces = mask_surface(mask, Geometry((0.8, 1.1, 2.5)))
    assert is_closed(faces)


def test_random_masks_are_always_watertight():
    rng = np.random.default_rng(3)
    for _ in range(40):
        mask = rng.random((7, 8, 9)) > 0.55  # worst case: every ambiguous cube configuration occurs
        verts, faces = mask_surface(mask, Geometry((0.8, 1.1, 2.5)))
        assert is_closed(faces)
        assert enclosed_volume_mm3(verts, faces) > 0


def _kidney_map():
    g = grid(*GRIDS["oblique"], extent_mm=120.0)
    p = points(g)
    lab = np.zeros(g.shape, np.uint8)
    lab[bean(p)] = Label.KIDNEY
    lab[ellipsoid(p, (9, 9, 9), centre=CENTRE + (18, 0, 10))] = Label.TUMOR
    return lab, g


def test_stl_files_in_lps_with_header_and_overwrite_rules(tmp_path):
    from KidneyTumorSegLib.errors import InputError
    lab, g = _kidney_map()
    seg_map, segments = segments_from_labels(lab, g)
    written = write_segment_surfaces(seg_map, segments, g, tmp_path, "case")
    assert set(written) == {f"mesh_{s.id}" for s in segments}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(stl_path(tmp_path, "case", s.name).name
                                                                for s in segments)
    surfaces = {s.segment_id: s for s in segment_surfaces(seg_map, segments, g)}
    for seg in segments:
        header, tri = read_stl(written[f"mesh_{seg.id}"])
        assert header.startswith(b"SPACE=LPS UNITS=mm") and seg.name.encode() in header
        np.testing.assert_allclose(tri, surfaces[seg.id].vertices[surfaces[seg.id].faces], atol=1e-3)
    with pytest.raises(InputError, match="already exists"):
        write_segment_surfaces(seg_map, segments, g, tmp_path, "case")
    # A rerun without the tumor removes the stale tumor surface of the same case, and nothing else.
    (tmp_path / "other.stl").write_bytes(b"keep")
    seg_map2, segments2 = segments_from_labels(np.where(lab == Label.TUMOR, Label.KIDNEY, lab).astype(np.uint8), g)
    again = write_segment_surfaces(seg_map2, segments2, g, tmp_path, "case", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in again.values()] + ["other.stl"])
    assert set(again.values()) <= set(possible_surface_paths(tmp_path, "case"))


def test_kits23_label_map_surfaces(shared_data):
    img = read_labelmap(shared_data / "kits23" / "labels" / "case_00003.nii.gz")
    seg_map, segments = segments_from_labels(img.array, img.geometry)
    surfaces = segment_surfaces(seg_map, segments, img.geometry)
    assert {s.label for s in segments} == {Label.KIDNEY, Label.TUMOR}
    assert [s.segment_id for s in surfaces] == [s.id for s in segments]
    for surface, seg in zip(surfaces, segments):
        assert is_closed(surface.faces), surface.name
        assert abs(surface.volume_ml / surface.voxel_volume_ml - 1) <= VOLUME_TOLERANCE
        lo, hi = voxel_bounds(seg_map == seg.value, img.geometry)
        assert np.abs(surface.bounds_lps[0] - lo).max() <= BOUNDS_MM
        assert np.abs(surface.bounds_lps[1] - hi).max() <= BOUNDS_MM
