"""Fixtures of the tests against the real MRML library (slicer-core)."""
import pytest
import slicer


@pytest.fixture
def scene():
    """A fresh scene as slicer.mrmlScene (slicer.util needs one), cleared afterwards. Modules that need
    converter rules or a module-wide scene define their own ``scene``."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)
