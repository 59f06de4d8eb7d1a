"""Labels follow KiTS23, and each segment's terminology string has the form Slicer parses."""
import pytest

from KidneyTumorSegLib.labels import (COLORS, Label, Side, color_float, segment_name, terminology)


def test_values_follow_kits23():
    assert [int(v) for v in Label] == [0, 1, 2, 3]
    assert [v.name for v in Label] == ["BACKGROUND", "KIDNEY", "TUMOR", "CYST"]


def test_each_label_has_a_distinct_color():
    colors = [COLORS[v] for v in Label if v != Label.BACKGROUND]
    assert len(set(colors)) == len(colors)
    assert all(0.0 <= c <= 1.0 for c in color_float(Label.TUMOR))


def test_kidney_terminology_carries_side_as_type_modifier():
    s = terminology(Label.KIDNEY, Side.LEFT).serialize()
    assert s == ("Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
                 "~SCT^64033007^Kidney~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")
    assert "SCT^24028007^Right" in terminology(Label.KIDNEY, "right").serialize()


def test_lesions_are_findings_located_in_the_kidney():
    s = terminology(Label.TUMOR, Side.RIGHT).serialize()
    assert not s.endswith("|")  # "|" separates tags in .seg.nrrd; it is not part of the entry
    fields = s.split("~")
    assert len(fields) == 7
    assert fields[1] == "SCT^49755003^Morphologically Altered Structure"
    assert fields[2] == "SCT^108369006^Neoplasm"
    assert fields[3] == "^^"  # the side belongs to the region, not to the finding
    assert fields[5] == "SCT^64033007^Kidney"
    assert fields[6] == "SCT^24028007^Right"
    assert terminology(Label.CYST).serialize().split("~")[2] == "SCT^367643001^Cyst"


def test_background_has_no_terminology():
    with pytest.raises(ValueError, match="background"):
        terminology(Label.BACKGROUND)


def test_segment_names():
    assert segment_name(Label.KIDNEY, Side.LEFT) == "Left kidney"
    assert segment_name(Label.TUMOR, Side.RIGHT) == "Right kidney tumor"
    assert segment_name(Label.CYST) == "Kidney cyst"


def test_has_masses_reads_only_the_main_labels():
    from KidneyTumorSegLib.labels import has_masses

    assert has_masses(["background", "kidney", "masses", "aux_body"])
    assert not has_masses(["background", "kidney", "tumor", "cyst"])
