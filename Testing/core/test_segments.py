"""Label map -> per-side Slicer segments, and the .seg.nrrd file read back by slicerio."""
import os

import numpy as np
import pytest

from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.labels import Label, Side, color_float, terminology
from KidneyTumorSegLib.postprocessing import PostprocessingConfig
from KidneyTumorSegLib.segments import segments_from_labels, write_seg_nrrd

CENTRE = np.array([5.0, -3.0, 100.0])  # LPS mm of the volume centre


def kidney_phantom(synth):
    """Two kidneys at LPS x = +-45 mm around CENTRE (patient left = +x), a tumor bulging from the left
    one and a cyst inside the right one, on an oblique, anisotropic grid whose i axis points to the
    patient's right (flipped), so index order and patient side disagree."""
    size, spacing = (72, 44, 24), (2.5, 2.0, 3.5)
    d = synth.rotation(8, -6, 12) @ np.diag([-1.0, 1.0, 1.0])
    origin = CENTRE - d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    g = Geometry(spacing, origin, d.ravel(), size)
    z, y, x = np.indices(g.shape)
    p = g.index_to_physical(np.stack([x, y, z], -1).reshape(-1, 3)).reshape(g.shape + (3,)) - CENTRE

    def ellipsoid(c, r):
        return (((p - np.asarray(c)) / np.asarray(r)) ** 2).sum(-1) <= 1

    labels = np.zeros(g.shape, np.uint8)
    labels[ellipsoid((45, 0, 0), (22, 18, 25))] = Label.KIDNEY
    labels[ellipsoid((-45, 0, 0), (22, 18, 25))] = Label.KIDNEY
    labels[ellipsoid((55, 5, 5), (12, 12, 12))] = Label.TUMOR
    labels[ellipsoid((-40, 0, -5), (8, 8, 8))] = Label.CYST
    return labels, g


def physical_x(mask, g):
    zyx = np.argwhere(mask)
    return g.index_to_physical(zyx[:, ::-1].astype(float))[:, 0]


EXPECTED = [("left_kidney", "Left kidney", Label.KIDNEY, Side.LEFT),
            ("right_kidney", "Right kidney", Label.KIDNEY, Side.RIGHT),
            ("left_kidney_tumor", "Left kidney tumor", Label.TUMOR, Side.LEFT),
            ("right_kidney_cyst", "Right kidney cyst", Label.CYST, Side.RIGHT)]


def test_segments_per_side(synth):
    labels, g = kidney_phantom(synth)
    seg_map, segments = segments_from_labels(labels, g)
    assert seg_map.dtype == np.uint8 and seg_map.shape == labels.shape
    assert [(s.id, s.name, s.label, s.side) for s in segments] == EXPECTED
    assert [s.value for s in segments] == [1, 2, 3, 4]
    for s in segments:
        assert s.color == color_float(s.label)
        assert s.terminology == terminology(s.label, s.side).serialize()
        xs = physical_x(seg_map == s.value, g) - CENTRE[0]
        assert (xs > 0).all() if s.side == Side.LEFT else (xs < 0).all()  # patient left = +x in LPS
    # The segments partition the label map exactly.
    for label in (Label.KIDNEY, Label.TUMOR, Label.CYST):
        values = [s.value for s in segments if s.label == label]
        np.testing.assert_array_equal(np.isin(seg_map, values), labels == label)
    assert ((seg_map > 0) == (labels > 0)).all()


def test_fragments_outside_every_component_take_the_nearest_kidneys_side(synth):
    labels, g = kidney_phantom(synth)
    z, y, x = np.indices(g.shape)
    p = g.index_to_physical(np.stack([x, y, z], -1).reshape(-1, 3)).reshape(g.shape + (3,)) - CENTRE
    # A 4 mm-radius tumor fragment 4 mm beyond the left kidney's lateral pole: too small to be a
    # component of its own, so post-processing keeps it only as an attached piece.
    fragment = (((p - np.array([75.0, 0, 0])) / 4.0) ** 2).sum(-1) <= 1
    assert fragment.any() and not (labels[fragment] > 0).any()
    labels[fragment] = Label.TUMOR
    seg_map, segments = segments_from_labels(labels, g)
    assert all(s.side is not None for s in segments)
    left_tumor = next(s for s in segments if s.id == "left_kidney_tumor")
    assert (seg_map[fragment] == left_tumor.value).all()


def test_unassigned_voxels_get_no_side(synth):
    labels, g = kidney_phantom(synth)
    # No component is kept with this config (all too small), as if post-processing had not run.
    seg_map, segments = segments_from_labels(labels, g, PostprocessingConfig(min_kidney_mm3=1e9))
    assert [(s.name, s.id, s.side) for s in segments] == [
        ("Kidney", "kidney", None), ("Kidney tumor", "kidney_tumor", None), ("Kidney cyst", "kidney_cyst", None)]
    np.testing.assert_array_equal(seg_map, labels)
    assert segments[2].terminology == terminology(Label.CYST).serialize()


def test_empty_label_map_has_no_segments():
    g = Geometry(size=(5, 4, 3))
    seg_map, segments = segments_from_labels(np.zeros((3, 4, 5), np.uint8), g)
    assert segments == [] and not seg_map.any()
    with pytest.raises(ValueError, match="KiTS23"):
        segments_from_labels(np.full((3, 4, 5), 7, np.uint8), g)


def test_seg_nrrd_read_back_by_slicerio(synth, tmp_path):
    import slicerio
    import slicerio.segmentation  # noqa: F401  (terminology string helpers)
    labels, g = kidney_phantom(synth)
    seg_map, segments = segments_from_labels(labels, g)
    path = write_seg_nrrd(labels, g, tmp_path / "out.seg.nrrd")
    assert sorted(os.listdir(tmp_path)) == ["out.seg.nrrd"]  # no temporary file left behind

    seg = slicerio.read_segmentation(str(path))
    assert seg["masterRepresentation"] == "Binary labelmap"
    assert seg["containedRepresentationNames"] == ["Binary labelmap"]
    # Only the segments' bounding box is stored, at its offset in the reference grid (as Slicer saves).
    offset = np.array(seg["referenceImageExtentOffset"])
    zyx = np.argwhere(seg_map > 0)
    np.testing.assert_array_equal(offset, zyx.min(0)[::-1])
    np.testing.assert_allclose(seg["ijkToLPS"][:3, :3], g.affine()[:3, :3], atol=1e-9)
    np.testing.assert_allclose(seg["ijkToLPS"][:3, 3], g.index_to_physical(offset.astype(float)), atol=1e-9)
    stored = np.asarray(seg["voxels"]).transpose(2, 1, 0)  # pynrrd gives (x, y, z)
    voxels = np.zeros_like(seg_map)
    o = offset[::-1]
    voxels[o[0]:o[0] + stored.shape[0], o[1]:o[1] + stored.shape[1], o[2]:o[2] + stored.shape[2]] = stored
    assert stored.size < seg_map.size
    assert len(seg["segments"]) == len(segments)
    for s, r in zip(segments, seg["segments"]):
        assert (r["id"], r["name"], r["labelValue"], r["layer"]) == (s.id, s.name, s.value, 0)
        assert not r["nameAutoGenerated"] and not r["colorAutoGenerated"]
        np.testing.assert_allclose(r["color"], s.color, atol=1e-5)
        assert slicerio.segmentation.terminology_entry_to_string(r["terminology"]) == s.terminology
        np.testing.assert_array_equal(voxels == r["labelValue"], seg_map == s.value)
        zyx = np.argwhere(seg_map == s.value)
        lo, hi = zyx.min(0)[::-1] - offset, zyx.max(0)[::-1] - offset  # extents within the stored box
        assert r["extent"] == [int(v) for pair in zip(lo, hi) for v in pair]


def test_seg_nrrd_refuses_overwrite(synth, tmp_path):
    labels, g = kidney_phantom(synth)
    path = tmp_path / "out.seg.nrrd"
    path.write_bytes(b"keep me")
    with pytest.raises(InputError, match="already exists"):
        write_seg_nrrd(labels, g, path)
    assert path.read_bytes() == b"keep me"
    write_seg_nrrd(labels, g, path, overwrite=True)
    assert path.read_bytes().startswith(b"NRRD")
    with pytest.raises(InputError, match="seg.nrrd"):
        write_seg_nrrd(labels, g, tmp_path / "out.nii.gz")
    with pytest.raises(InputError, match="does not exist"):
        write_seg_nrrd(labels, g, tmp_path / "missing" / "out.seg.nrrd")
