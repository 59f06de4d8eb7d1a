"""Fixtures of the tests against the real MRML library (slicer-core)."""
import pytest
import slicer


@pytest.fixture
def scene():
    """A fresh scene as slicer.mrmlScene (slicer.util needs one), cleared afterwards. A module that needs one
    scene for all its tests imports ``mrml_helpers.module_scene`` instead, or defines its own ``scene``."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)
