"""The command line's measurement files in the scene (KidneyTumorSegSlicer.measurementNodes, slicer-core): the
table is the CSV row for row, each lesion's diameter line lands on that lesion in world coordinates under the
volume's parent transform, and a rerun into the same segmentation reuses its nodes."""
import csv
import json

import numpy as np
import pytest
import slicer
import vtk

from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.pipeline import measurement_paths, write_measurement_outputs
from KidneyTumorSegSlicer.errors import SegmentationError
from KidneyTumorSegSlicer.logic import KidneyTumorSegMRMLLogic
from KidneyTumorSegSlicer.measurementNodes import (LINE_ROLE, TABLE_ROLE, fillTable, readMeasurements,
                                                   removeMeasurementNodes)
from mrml_helpers import LPS_TO_RAS
from test_seg_nrrd_in_slicer import kidney_phantom


def cli_files(labels, g, folder, name="case"):
    """What `segment --measure` writes for this label map (the function it calls): {"measurements_csv", ...}."""
    paths = measurement_paths(name, folder)
    write_measurement_outputs(labels, g, paths)
    return {key: str(path) for key, path in paths.items()}


def phantom_in_scene(scene, labels, g, transform=None):
    """The phantom as a volume node (under a linear transform with ``transform``, RAS 4x4) and its segments."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
    slicer.util.updateVolumeFromArray(volume, labels.astype(np.int16))
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(LPS_TO_RAS @ g.affine()))
    if transform is not None:
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(transform))
        volume.SetAndObserveTransformNodeID(node.GetID())
    return volume, KidneyTumorSegMRMLLogic().importLabelmap(labels, g, referenceVolumeNode=volume)


def table_cells(table_node):
    t = table_node.GetTable()
    header = [t.GetColumnName(c) for c in range(t.GetNumberOfColumns())]
    return [header] + [[t.GetValue(r, c).ToString() for c in range(len(header))] for r in range(t.GetNumberOfRows())]


def test_table_is_the_cli_csv_row_for_row(scene, tmp_path):
    labels, g = kidney_phantom()
    files = cli_files(labels, g, tmp_path)
    volume, seg = phantom_in_scene(scene, labels, g)
    table, lines = KidneyTumorSegMRMLLogic().importMeasurements(files["measurements_csv"],
                                                                files["measurements_json"], seg, volume)
    with open(files["measurements_csv"], newline="", encoding="utf-8") as f:
        assert table_cells(table) == list(csv.reader(f))
    assert [r[1] for r in table_cells(table)[1:]] == ["kidney_left", "kidney_right", "tumor_1", "cyst_1"]
    assert table.GetName() == "phantom kidney measurements" and seg.GetNodeReference(TABLE_ROLE) is table
    assert table.GetUseColumnTitleAsColumnHeader()  # else the view heads them A, B, C, names in the first row
    assert [n.GetAttribute("KidneyTumorSeg.LesionId") for n in lines] == ["tumor_1", "cyst_1"]


def test_diameter_lines_land_on_their_lesions_under_the_volume_transform(scene, tmp_path, synth):
    labels, g = kidney_phantom()  # oblique, anisotropic, one axis flipped
    files = cli_files(labels, g, tmp_path)
    move = np.eye(4)
    move[:3, :3], move[:3, 3] = synth.rotation(20, -15, 35), (30.0, -12.0, 7.5)
    volume, seg = phantom_in_scene(scene, labels, g, move)
    _, lines = KidneyTumorSegMRMLLogic().importMeasurements(files["measurements_csv"],
                                                            files["measurements_json"], seg, volume)
    lesions = json.loads(open(files["measurements_json"], encoding="utf-8").read())["lesions"]
    assert len(lines) == len(lesions) == 2
    to_world = vtk.vtkMatrix4x4()
    volume.GetParentTransformNode().GetMatrixTransformToWorld(to_world)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    world_to_ijk = np.linalg.inv(slicer.util.arrayFromVTKMatrix(to_world) @ slicer.util.arrayFromVTKMatrix(ijk_to_ras))
    for line, lesion in zip(lines, lesions):
        assert line.GetTransformNodeID() == volume.GetTransformNodeID()
        assert abs(line.GetMeasurement("length").GetValue() - lesion["longest_diameter_mm"]) < 0.02
        value = Label.TUMOR if lesion["kind"] == "tumor" else Label.CYST
        for i, lps in enumerate(lesion["lines_lps"]["longest"]):
            np.testing.assert_allclose(line.GetNthControlPointPosition(i), np.multiply(lps, [-1, -1, 1]), atol=1e-9)
            world = [0.0, 0.0, 0.0]
            line.GetNthControlPointPositionWorld(i, world)
            np.testing.assert_allclose(world, (move @ np.r_[np.multiply(lps, [-1, -1, 1]), 1.0])[:3], atol=1e-6)
            # An end is a surface voxel's centre (to 0.01 mm in the file): in world, it is on the lesion.
            ijk = world_to_ijk @ np.r_[world, 1.0]
            assert np.abs(ijk[:3] - np.round(ijk[:3])).max() < 0.01
            assert labels[tuple(np.round(ijk[:3]).astype(int)[::-1])] == value


def test_a_rerun_reuses_the_nodes_and_drops_lines_of_lesions_gone(scene, tmp_path):
    labels, g = kidney_phantom()
    volume, seg = phantom_in_scene(scene, labels, g)
    logic = KidneyTumorSegMRMLLogic()
    first = cli_files(labels, g, tmp_path / "first")
    table, lines = logic.importMeasurements(first["measurements_csv"], first["measurements_json"], seg, volume)
    ids = {n.GetAttribute("KidneyTumorSeg.LesionId"): n.GetID() for n in lines}
    without_cyst = np.where(labels == Label.CYST, Label.KIDNEY, labels).astype(np.uint8)
    second = cli_files(without_cyst, g, tmp_path / "second")
    again, lines = logic.importMeasurements(second["measurements_csv"], second["measurements_json"], seg, volume)
    assert again is table and [r[1] for r in table_cells(table)[1:]] == ["kidney_left", "kidney_right", "tumor_1"]
    assert [n.GetID() for n in lines] == [ids["tumor_1"]]
    assert scene.GetNodeByID(ids["cyst_1"]) is None  # the cyst's line went with the cyst
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode") == 1
    assert seg.GetNumberOfNodeReferences(LINE_ROLE) == 1
    removeMeasurementNodes(seg)  # a rerun without measurements: the earlier ones no longer describe it
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode") == 0
    assert seg.GetNodeReference(TABLE_ROLE) is None and volume.GetScene() is scene


def test_missing_or_broken_measurement_files_are_refused(tmp_path):
    with pytest.raises(SegmentationError, match="wrote no measurements"):
        readMeasurements({"labelmap": "x.nrrd"})
    labels, g = kidney_phantom()
    files = cli_files(labels, g, tmp_path)
    with open(files["measurements_json"], "w", encoding="utf-8") as f:
        f.write('{"version": 2')  # cut short
    with pytest.raises(SegmentationError, match="could not be read"):
        readMeasurements(files)


def test_the_table_header_is_set_on_slicer_before_5_6_1_too():
    """Slicer 5.4 and 5.6.0 name the header switch SetUseColumnNameAsColumnHeader (Title came in 5.6.1)."""
    class OldTableNode:  # today's node without the newer name
        def __init__(self):
            self.node = slicer.vtkMRMLTableNode()

        def __getattr__(self, name):
            if name == "SetUseColumnTitleAsColumnHeader":
                raise AttributeError(name)
            return getattr(self.node, name)

    old = OldTableNode()
    fillTable(old, ["id", "volume_ml"], [["tumor_1", "12.50"]])
    assert old.node.GetUseColumnTitleAsColumnHeader()
    assert old.node.GetTable().GetValue(0, 1).ToString() == "12.50"  # the CSV's text, unchanged


def test_each_known_column_carries_its_unit_and_meaning_for_the_cells_tooltip():
    """Slicer's table view shows a column's unit label and description as its cells' tooltip."""
    from KidneyTumorSegLib.measurement_columns import MEANINGS

    node = slicer.vtkMRMLTableNode()
    fillTable(node, ["id", "volume_ml", "longest_diameter_mm", "R", "a_new_column"],
              [["tumor_1", "12.50", "31.2", "1", "x"]])
    units = [node.GetColumnUnitLabel(n) for n in ("id", "volume_ml", "longest_diameter_mm", "R", "a_new_column")]
    assert units == ["", "mL", "mm", "points", ""]
    assert node.GetColumnDescription("volume_ml") == MEANINGS["volume_ml"]
    assert node.GetColumnDescription("a_new_column") == ""  # a column the list does not know: no tooltip
    assert node.GetTable().GetValue(0, 1).ToString() == "12.50"
