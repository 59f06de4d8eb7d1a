"""Slicer's own terminology logic (from slicer-core) parses every segment entry we write, unchanged."""
import pytest
import slicer

from KidneyTumorSegLib.labels import FOREGROUND, Label, Side, terminology

CASES = [(label, side) for label in FOREGROUND for side in (Side.LEFT, Side.RIGHT, None)]


@pytest.mark.parametrize("label,side", CASES)
def test_slicer_deserializes_and_reserializes_identically(label, side):
    entry_string = terminology(label, side).serialize()
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(entry_string, entry)
    assert logic.SerializeTerminologyEntry(entry) == entry_string
    expected_type = {Label.KIDNEY: "64033007", Label.TUMOR: "108369006", Label.CYST: "367643001"}[label]
    assert entry.GetTypeObject().GetCodeValue() == expected_type
    side_code = {Side.LEFT: "7771000", Side.RIGHT: "24028007", None: None}[side]
    modifier = entry.GetTypeModifierObject() if label == Label.KIDNEY else entry.GetRegionModifierObject()
    assert modifier.GetCodeValue() == side_code
