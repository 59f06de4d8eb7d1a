"""The Slicer logic's import of a label map (any grid, a rerun into the same node, a solitary kidney's side), its
dependency check, and the converter rules it registers; with slicer-core."""
import numpy as np
import pytest
import slicer

from KidneyTumorSegSlicer.errors import SegmentationError
from KidneyTumorSegSlicer.logic import KidneyTumorSegMRMLLogic as KidneyTumorSegLogic
from mrml_helpers import LPS_TO_RAS, add_volume, kits_labels, segments
from mrml_helpers import module_scene  # noqa: F401  (the fixture "scene": one scene for this module)


def test_import_replaces_segments(scene, tmp_path, synth):
    from KidneyTumorSegLib.geometry import Geometry
    from KidneyTumorSegLib.image_io import write_labelmap
    labels = synth.labels((24, 40, 36))
    g = Geometry((2.0, 1.5, 2.5), (10.0, -20.0, 30.0), synth.rotation(5, 0, 10).ravel(), labels.shape[::-1])
    volume = add_volume(scene, synth.ct(labels).astype(np.int16), LPS_TO_RAS @ g.affine(), "phantom")
    path = write_labelmap(labels, g, tmp_path / "labels.nrrd")
    logic = KidneyTumorSegLogic()
    node = logic.importLabelmap(str(path), referenceVolumeNode=volume)
    assert node.GetName() == "phantom kidneys" and node.GetDisplayNode() is not None
    assert node.GetSegmentation().ContainsRepresentation("Closed surface")  # for 3D display
    np.testing.assert_array_equal(kits_labels(node, volume), labels)
    again = logic.importLabelmap(labels, g, segmentationNode=node, referenceVolumeNode=volume)
    assert again is node and node.GetSegmentation().GetNumberOfSegments() == len(segments(node))
    with pytest.raises(SegmentationError, match="grid"):
        logic.importLabelmap(labels[:, :, 1:], g, referenceVolumeNode=volume)


def test_a_solitary_kidney_takes_its_side_from_the_reference_volumes_body(scene):
    """The kidney lies on the patient-left (+x) half of the volume; the CT's body lies further left still,
    as for a patient off-centre in the field of view: with the volume it is the right kidney."""
    from KidneyTumorSegLib.geometry import Geometry
    labels = np.zeros((20, 30, 60), np.uint8)
    labels[2:18, 5:25, 34:48] = 1  # 36 mL, centre x index 40.5
    ct = np.full(labels.shape, -1000, np.int16)
    ct[:, :, 30:] = 40  # the body: x index 30-59, centre 44.5 > the kidney's 40.5
    g = Geometry((2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3).ravel(), labels.shape[::-1])
    volume = add_volume(scene, ct, LPS_TO_RAS @ g.affine(), "offcentre")
    logic = KidneyTumorSegLogic()
    assert [x.GetName() for x in segments(logic.importLabelmap(labels, g))] == ["Left kidney"]
    assert [x.GetName() for x in segments(logic.importLabelmap(labels, g, referenceVolumeNode=volume))] == \
        ["Right kidney"]


def test_dependencies_are_checked_and_installed_only_after_asking(monkeypatch):
    logic = KidneyTumorSegLogic()
    assert logic.missingDependencies() == []
    assert logic.installDependencies(lambda message: pytest.fail("asked although nothing is missing"))
    monkeypatch.setattr(logic, "missingDependencies", lambda: ["scipy"])
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a: pytest.fail("installed without consent"))
    asked = []
    assert logic.installDependencies(lambda message: asked.append(message) or False) is False
    assert "scipy" in asked[0]


@pytest.mark.parametrize("in_app", [False, True])
def test_converter_rules_are_registered_even_where_vtk_cannot_list_them(monkeypatch, in_app):
    """A VTK whose wrapping cannot return the factory's std::vector of rules: outside the application both
    rules are registered anyway (a labelmap could not be made without them); inside, the app has them."""
    import KidneyTumorSegSlicer.segmentationNodes as nodes

    class Factory:
        registered = []

        def GetConverterRules(self):
            raise AttributeError("GetConverterRules")

        def RegisterConverterRule(self, rule):
            self.registered.append(rule.GetClassName())

    factory = Factory()
    monkeypatch.setattr(slicer, "vtkSegmentationConverterFactory", type("F", (), {"GetInstance": lambda: factory}))
    if in_app:
        monkeypatch.setattr(slicer, "app", object(), raising=False)
    nodes.ensureConverterRules()
    assert factory.registered == ([] if in_app else ["vtkBinaryLabelmapToClosedSurfaceConversionRule",
                                                     "vtkClosedSurfaceToBinaryLabelmapConversionRule"])
