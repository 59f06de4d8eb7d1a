"""Planning outputs in MRML (slicer-core): "Export surfaces" through Slicer's closed-surface representation,
our STL read by Slicer as LPS, confidence tags on segments (node and .seg.nrrd) and the measurement table
with PADUA, confidence and uncertain lesions."""
import numpy as np
import pytest
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from KidneyTumorSegLib.confidence import UncertainLesion, segment_confidences
from KidneyTumorSegLib.segments import segments_from_labels, write_segments
from KidneyTumorSegLib.surfaces import read_stl, segment_surfaces, stl_bytes
from KidneyTumorSegLib.pipeline import measurement_paths, write_measurement_outputs
from KidneyTumorSegSlicer.logic import KidneyTumorSegMRMLLogic as KidneyTumorSegLogic
from test_seg_nrrd_in_slicer import kidney_phantom


def corner_bounds(mask, g):
    ijk = np.argwhere(mask)[:, ::-1].astype(float)
    corners = np.concatenate([g.index_to_physical(ijk + np.array(c) - 0.5) for c in np.ndindex(2, 2, 2)])
    return corners.min(axis=0), corners.max(axis=0)


def confidence_of(labels):
    """A confidence map set by hand: 0.9 everywhere, the tumor 0.4 and the cyst 0.7."""
    conf = np.full(labels.shape, 230, np.uint8)
    conf[labels == 2], conf[labels == 3] = 102, 179
    return conf


def test_export_surfaces_writes_slicers_closed_surfaces_in_lps(scene, tmp_path):
    labels, g = kidney_phantom()
    seg_map, segments = segments_from_labels(labels, g)
    node = KidneyTumorSegLogic().importLabelmap(labels, g)
    written = KidneyTumorSegLogic().exportSurfaces(node, str(tmp_path / "stl"))
    assert sorted(p.split("/")[-1] for p in written) == sorted(f"{node.GetName()}_{s.name}.stl" for s in segments)
    for s in segments:
        header, tri = read_stl(tmp_path / "stl" / f"{node.GetName()}_{s.name}.stl")
        assert b"SPACE=LPS" in header
        lo, hi = corner_bounds(seg_map == s.value, g)
        pts = tri.reshape(-1, 3)
        assert np.abs(pts.min(axis=0) - lo).max() <= 3.0 and np.abs(pts.max(axis=0) - hi).max() <= 3.0
    assert sorted(p.name for p in (tmp_path / "stl").iterdir()) == sorted(p.split("/")[-1] for p in written)
    before = (tmp_path / "stl" / written[0].split("/")[-1]).read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        KidneyTumorSegLogic().exportSurfaces(node, str(tmp_path / "stl"))
    assert KidneyTumorSegLogic().exportSurfaces(node, str(tmp_path / "stl"), overwrite=True) == written
    assert (tmp_path / "stl" / written[0].split("/")[-1]).read_bytes() == before  # same surfaces again
    assert not [p for p in (tmp_path / "stl").iterdir() if p.name.startswith(".")]  # no staging left


def test_slicer_reads_our_stl_as_lps(scene, tmp_path):
    labels, g = kidney_phantom()
    seg_map, segments = segments_from_labels(labels, g)
    surface = segment_surfaces(seg_map, segments, g)[0]
    (tmp_path / "s.stl").write_bytes(stl_bytes(surface))
    model = scene.AddNewNodeByClass("vtkMRMLModelNode")
    storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage.SetFileName(str(tmp_path / "s.stl"))
    assert storage.ReadData(model) == 1
    ras = vtk_to_numpy(model.GetPolyData().GetPoints().GetData())
    expected = surface.vertices[np.unique(surface.faces)] * [-1.0, -1.0, 1.0]  # LPS -> RAS
    assert len(ras) == len(expected)
    np.testing.assert_allclose(np.sort(ras, axis=0), np.sort(expected, axis=0), atol=1e-3)


def test_confidence_tags_on_segments_and_in_seg_nrrd(scene, tmp_path):
    labels, g = kidney_phantom()
    conf = confidence_of(labels)
    node = KidneyTumorSegLogic().importLabelmap(labels, g, confidence=conf, unsureBelow=0.99)
    seg_map, segments = segments_from_labels(labels, g)
    tags = segment_confidences(seg_map, segments, conf, g, unsure_below=0.99)
    assert "(uncertain)" in " ".join(t["Description"] for t in tags.values())  # every lesion is below 0.99
    path = write_segments(seg_map, segments, g, tmp_path / "k.seg.nrrd", tags=tags)
    read = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(read) == 1
    for target in (node, read):
        seg = target.GetSegmentation()
        for s in segments:
            segment = seg.GetSegment(s.id)
            for key in ("KidneyTumorSeg.Confidence", "Description"):
                value = vtk.reference("")
                assert segment.GetTag(key, value), key
                assert str(value) == tags[s.id][key]
    assert tags["left_kidney_tumor"]["KidneyTumorSeg.Confidence"] == "0.400"


def test_table_has_padua_confidence_and_uncertain_rows(scene, tmp_path):
    """The command line's measurement files (as `segment --measure --min-confidence` writes them) in a table."""
    labels, g = kidney_phantom()
    uncertain = [UncertainLesion("tumor", "left", 2.5, (40.0, 1.0, 90.0), 0.31, "uncertain_1")]
    paths = measurement_paths("case", tmp_path)
    write_measurement_outputs(labels, g, paths, confidence=confidence_of(labels), uncertain=uncertain,
                              min_confidence=0.35)
    node = KidneyTumorSegLogic().importLabelmap(labels, g)
    table, lines = KidneyTumorSegLogic().importMeasurements(str(paths["measurements_csv"]),
                                                            str(paths["measurements_json"]), node)
    t = table.GetTable()
    columns = {t.GetColumnName(c): c for c in range(t.GetNumberOfColumns())}
    rows = [{k: t.GetValue(r, c).ToString() for k, c in columns.items()} for r in range(t.GetNumberOfRows())]
    tumor = next(r for r in rows if r["kind"] == "tumor" and r["record"] == "lesion")
    assert float(tumor["confidence"]) == pytest.approx(0.4, abs=0.001)
    assert 6 <= int(tumor["padua_total"]) <= 14 and tumor["padua_score"].startswith(tumor["padua_total"])
    (u,) = [r for r in rows if r["record"] == "uncertain"]
    assert (u["id"], u["side"], u["confidence"]) == ("uncertain_1", "left", "0.31")
    assert len(lines) == 2  # a diameter line per drawn lesion; none for the uncertain one
