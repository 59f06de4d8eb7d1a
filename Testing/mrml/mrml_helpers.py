"""Helpers of the tests against slicer-core: a volume node from an array, a node's IJK-to-RAS matrix, a
segmentation exported onto a volume's grid (as Slicer's own export does) and read back as KiTS values, and a
module-wide scene fixture."""
import numpy as np
import pytest
import slicer
import vtk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module", name="scene")
def module_scene():
    """One scene for a whole module (import it, and its tests get it as ``scene``), as slicer.mrmlScene, with
    the converter factory created empty: the logic must register its converter rules itself."""
    slicer.vtkSegmentationConverterFactory.GetInstance()
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)


def add_volume(scene, array, ijk_to_ras, name="CT", cls="vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(cls, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return node


def matrix(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def tag(segment, key):
    value = vtk.reference("")
    assert segment.GetTag(key, value), key
    return str(value)


def segments(seg_node):
    s = seg_node.GetSegmentation()
    return [s.GetSegment(s.GetNthSegmentID(i)) for i in range(s.GetNumberOfSegments())]


def exported(seg_node, volume):
    """Slicer's export of all segments onto the volume's grid: value i+1 = the i-th segment."""
    ids = vtk.vtkStringArray()
    for i in range(seg_node.GetSegmentation().GetNumberOfSegments()):
        ids.InsertNextValue(seg_node.GetSegmentation().GetNthSegmentID(i))
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg_node, ids, labelmap, volume)
    np.testing.assert_allclose(matrix(labelmap), matrix(volume), atol=1e-9)
    values = slicer.util.arrayFromVolume(labelmap).copy()
    slicer.mrmlScene.RemoveNode(labelmap)
    return values


def kits_labels(seg_node, volume):
    """Segmentation -> label map on the volume's grid, mapped back to KiTS values by the segments' tags."""
    lut = np.zeros(seg_node.GetSegmentation().GetNumberOfSegments() + 1, np.uint8)
    lut[1:] = [int(tag(s, "KidneyTumorSeg.Label")) for s in segments(seg_node)]
    return lut[exported(seg_node, volume)]


def centroids_ras(seg_node, volume):
    """{segment name: centre of mass in RAS mm} on the volume's grid."""
    values = exported(seg_node, volume)
    return {s.GetName(): (matrix(volume) @ np.r_[np.argwhere(values == i + 1).mean(0)[::-1], 1.0])[:3]
            for i, s in enumerate(segments(seg_node))}
