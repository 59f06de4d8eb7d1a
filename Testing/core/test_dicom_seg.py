"""DICOM SEG of the per-side segments on a synthetic CT series, read back with highdicom."""
import os
import sys

import numpy as np
import pytest

from KidneyTumorSegLib.dicom_seg import write_dicom_seg
from KidneyTumorSegLib.errors import InputError, OutputSkipped
from KidneyTumorSegLib.image_io import read_image
from KidneyTumorSegLib.labels import Label, terminology
from KidneyTumorSegLib.postprocessing import PostprocessingConfig
from KidneyTumorSegLib.segments import segments_from_labels

import highdicom as hd  # the "dicom" extra; the test extra installs it
import pydicom
KEEP_SMALL = PostprocessingConfig(min_kidney_mm3=100)  # the phantom's 'kidneys' are ~1.4 mL

ROWS, COLS, SLICES = 40, 48, 10
PIXEL_SPACING = (0.9, 1.1)          # DICOM order: between rows (y), between columns (x)
SLICE_STEP = 2.5


def write_series(folder, seed=0):
    """An oblique CT series with valid UIDs, written in shuffled order with shuffled instance numbers."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    rng = np.random.default_rng(seed)
    a = np.radians(10)
    row_dir = np.array([np.cos(a), np.sin(a), 0.0])                  # along a row: column index (x)
    col_dir = np.array([-np.sin(a) * np.cos(0.2), np.cos(a) * np.cos(0.2), np.sin(0.2)])  # down a column
    normal = np.cross(row_dir, col_dir)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    y, x = np.mgrid[:ROWS, :COLS]
    order = rng.permutation(SLICES)
    for k in range(SLICES):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Phantom^Test", "P1"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
            "20240101", "120000", "1", "", ""
        ds.SeriesNumber, ds.InstanceNumber = 3, int(order[k]) + 1
        ds.Manufacturer = "test"
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([row_dir, col_dir])]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array([-20.0, -30.0, 50.0]) + k * SLICE_STEP * normal]
        ds.PixelSpacing = [str(v) for v in PIXEL_SPACING]
        ds.SliceThickness = str(SLICE_STEP)
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLS, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        hu = np.where((x - COLS / 2) ** 2 + (y - ROWS / 2) ** 2 < 18 ** 2, 40, -1000) + k
        ds.PixelData = hu.astype(np.int16).tobytes()
        ds.save_as(str(folder / f"slice_{order[k]:03d}.dcm"), enforce_file_format=True)
    return folder


def labels_on(image):
    """Two 'kidneys' (left = +x in LPS), a tumor in the left one; in physical space, so any grid works."""
    g = image.geometry
    z, y, x = np.indices(g.shape)
    p = g.index_to_physical(np.stack([x, y, z], -1).reshape(-1, 3)).reshape(g.shape + (3,))
    centre = p.reshape(-1, 3).mean(0)
    lab = np.zeros(g.shape, np.uint8)
    for label, dx, r in [(Label.KIDNEY, 11, 7), (Label.KIDNEY, -11, 7), (Label.TUMOR, 13, 3.5)]:
        lab[((p - centre - [dx, 0, 0]) ** 2).sum(-1) <= r ** 2] = label
    return lab


@pytest.fixture
def series(tmp_path):
    return write_series(tmp_path / "series")


def test_dicom_seg_round_trip(series, tmp_path):
    image = read_image(series)
    labels = labels_on(image)
    seg_map, segments = segments_from_labels(labels, image.geometry, config=KEEP_SMALL)
    assert [s.name for s in segments] == ["Left kidney", "Right kidney", "Left kidney tumor"]
    path = write_dicom_seg(labels, image.geometry, series, tmp_path / "seg.dcm", config=KEEP_SMALL)
    assert sorted(os.listdir(tmp_path)) == ["seg.dcm", "series"]

    seg = hd.seg.segread(str(path))
    assert seg.number_of_segments == len(segments) == 3
    assert seg.SegmentationType == "BINARY"
    sources = {pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID: f for f in series.iterdir()}
    for number, s in enumerate(segments, start=1):
        desc = seg.get_segment_description(number)
        assert desc.segment_label == s.name
        t = terminology(s.label, s.side)
        assert desc.segmented_property_type.value == t.type.value
        assert desc.segmented_property_category.value == t.category.value
        if t.type_modifier:
            assert desc.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == t.type_modifier.value
        if t.region_modifier:
            assert desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeValue == \
                t.region_modifier.value
        assert desc.algorithm_identification[0].AlgorithmName == "KidneyTumorSeg"
        np.testing.assert_allclose(hd.color.CIELabColor.from_dicom_value(
            desc.RecommendedDisplayCIELabValue).to_rgb(), np.asarray(s.color) * 255, atol=1.5)

    # Frames land on the right source instances: the SEG's pixels, fetched per source SOP instance in our
    # slice order (found from each file's ImagePositionPatient), equal the segment labelmap.
    k_of_uid = {}
    for uid, f in sources.items():
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        k_of_uid[uid] = int(round(image.geometry.physical_to_index([float(v) for v in ds.ImagePositionPatient])[2]))
    uids = sorted(k_of_uid, key=k_of_uid.get)
    assert {u[2] for u in seg.get_source_image_uids()} == set(uids)
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    np.testing.assert_array_equal(arr, seg_map)


def test_missing_highdicom_gives_install_hint(series, tmp_path, monkeypatch):
    image = read_image(series)
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import now raises ImportError
    with pytest.raises(InputError, match="pip install highdicom"):
        write_dicom_seg(labels_on(image), image.geometry, series, tmp_path / "seg.dcm")


def test_refuses_overwrite_and_wrong_grid(series, tmp_path):
    image = read_image(series)
    labels = labels_on(image)
    out = tmp_path / "seg.dcm"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="already exists"):
        write_dicom_seg(labels, image.geometry, series, out)
    assert out.read_bytes() == b"old"
    shifted = image.geometry.__class__(image.geometry.spacing, np.add(image.geometry.origin, 5.0),
                                       image.geometry.direction, image.geometry.size)
    with pytest.raises(InputError, match="grid"):
        write_dicom_seg(labels, shifted, series, tmp_path / "other.dcm")
    with pytest.raises(InputError, match="no kidney"):
        write_dicom_seg(np.zeros_like(labels), image.geometry, series, tmp_path / "empty.dcm")
    assert not (tmp_path / "other.dcm").exists() and not (tmp_path / "empty.dcm").exists()


def test_example_series_without_uids_is_skipped_with_one_line(shared_data, tmp_path):
    folder = shared_data / "dicom" / "example_series"
    image = read_image(folder)
    labels = np.zeros(image.array.shape, np.uint8)
    labels[5:10, 200:260, 300:360] = Label.KIDNEY
    with pytest.raises(OutputSkipped, match="UID") as err:
        write_dicom_seg(labels, image.geometry, folder, tmp_path / "seg.dcm")
    message = str(err.value)
    assert "StudyInstanceUID" in message and ".seg.nrrd hold the result" in message and "\n" not in message
    assert not (tmp_path / "seg.dcm").exists()


def test_series_without_frame_of_reference_gets_no_seg_and_one_line(shared_data, tmp_path):
    """Issue #18: highdicom refuses such a source with a ValueError; the writer says why in one line and
    writes nothing (docs/decisions.md 45: no made-up FrameOfReferenceUID)."""
    from dicom_builder import small_ct, write_series
    from pydicom.uid import generate_uid
    write_series(small_ct(shared_data), tmp_path / "ct", generate_uid(), frame_of_reference=None)
    image = read_image(tmp_path / "ct")
    with pytest.raises(OutputSkipped) as err:
        write_dicom_seg(labels_on(image), image.geometry, tmp_path / "ct", tmp_path / "seg.dcm", config=KEEP_SMALL)
    assert str(err.value).startswith("DICOM SEG not written: the source series in ")
    assert "has no FrameOfReferenceUID" in str(err.value) and "\n" not in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["ct"]


def test_enhanced_multiframe_source_round_trip(shared_data, tmp_path):
    """A SEG of an enhanced (multi-frame) CT references its frames; read back frame by frame it is the
    segment map of the label map, slice for slice."""
    from dicom_builder import small_ct, write_series
    from KidneyTumorSegLib.dicom_io import select_series
    from pydicom.uid import generate_uid
    datasets = write_series(small_ct(shared_data), tmp_path / "single", generate_uid())
    source = hd.legacy.LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=generate_uid(), series_number=5,
                                                      sop_instance_uid=generate_uid(), instance_number=1)
    (tmp_path / "enhanced").mkdir()
    source.save_as(str(tmp_path / "enhanced" / "ct.dcm"))
    series = select_series(tmp_path / "enhanced").chosen
    image = read_image(series)
    labels = labels_on(image)
    seg_map, segments = segments_from_labels(labels, image.geometry, config=KEEP_SMALL)
    path = write_dicom_seg(labels, image.geometry, series, tmp_path / "seg.dcm", config=KEEP_SMALL)
    seg = hd.seg.segread(str(path))
    assert seg.number_of_segments == len(segments) >= 2
    frames = seg.get_pixels_by_source_frame(source_sop_instance_uid=source.SOPInstanceUID,
                                            source_frame_numbers=list(range(1, image.geometry.shape[0] + 1)),
                                            combine_segments=True, assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(frames, seg_map)
