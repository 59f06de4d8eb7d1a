"""Issue #18: DICOM as hospitals and archives deliver it, read right or refused with one sentence. Every
series is built here from the shared real CT (Testing/dicom_builder.py); "read right" means the voxels and
the geometry of the same CT, exactly."""
import shutil
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.fileset import FileSet

from dicom_builder import coronal, small_ct, write_series, write_study
from KidneyTumorSegLib.dicom_io import select_series
from KidneyTumorSegLib.dicom_read import read_series
from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.geometry import Image
from KidneyTumorSegLib.image_io import read_image

import highdicom as hd  # the test extra installs it
from pydicom.uid import generate_uid


@pytest.fixture(scope="module")
def ct(shared_data):
    return small_ct(shared_data)


def assert_same_ct(image, ct):
    """``image`` (image_io.Image) holds exactly the voxels and the geometry of ``ct`` (SimpleITK)."""
    assert image.geometry.size == ct.GetSize()
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ct).astype(np.float32))
    np.testing.assert_allclose(image.geometry.spacing, ct.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(image.geometry.origin, ct.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(image.geometry.direction, ct.GetDirection(), atol=1e-9)


@pytest.mark.parametrize("per_series_folders", [False, True], ids=["one_folder", "folder_per_series"])
def test_a_study_gives_its_axial_ct_and_says_which(ct, tmp_path, per_series_folders):
    uids = write_study(ct, tmp_path / "study", per_series_folders)
    selection = select_series(tmp_path / "study")
    assert selection.chosen.uid == uids["series"] and selection.chosen.kind == "axial CT"
    line = selection.describe()
    assert line.startswith(f"DICOM series 3 'Abdomen 6.0' (axial CT, 32 images, uid '{uids['series']}')")
    assert "chosen as the axial CT series with the most images" in line
    for other in ("series 1 'Topogram' (localizer, 2 images)", "series 4 'Cor 3.0' (coronal CT, 102 images, uid",
                  "series 900 'Dose Report' (secondary capture, 1 image)", "1 DICOM file without an image",
                  "--series-uid UID chooses another"):
        assert other in line
    assert "\n" not in line
    assert_same_ct(read_image(selection.chosen), ct)
    assert_same_ct(read_image(tmp_path / "study"), ct)


def test_series_uid_reads_the_coronal_reconstruction_and_refuses_the_localizer(ct, tmp_path):
    write_study(ct, tmp_path)
    series = {s.kind: s for s in select_series(tmp_path).others}
    cor = read_image(tmp_path, series_uid=series["coronal CT"].uid)
    assert cor.geometry.size == (61, 32, 102)
    # The same patient point: the axial CT's centre voxel lies where the coronal one says it does.
    centre = np.asarray(ct.TransformIndexToPhysicalPoint((30, 25, 16)))
    k = np.round(cor.geometry.physical_to_index([centre])[0]).astype(int)
    np.testing.assert_allclose(cor.geometry.index_to_physical([k])[0], centre, atol=1e-6)
    assert cor.array[k[2], k[1], k[0]] == sitk.GetArrayFromImage(ct)[16, 25, 30]
    assert np.allclose(np.asarray(cor.geometry.direction).reshape(3, 3)[:, 2], [0, 1, 0]) or \
        np.allclose(np.asarray(cor.geometry.direction).reshape(3, 3)[:, 2], [0, -1, 0])
    with pytest.raises(InputError, match=r"holds no CT volume of at least 8 slices in series .*localizer, 2 images"):
        select_series(tmp_path, series_uid=series["localizer"].uid)


def test_a_series_split_across_subfolders_is_one_series(ct, tmp_path):
    uid = generate_uid()
    study = generate_uid()
    write_series(ct, tmp_path / "part2", study, uid=uid, slices=range(16, 32), frame_of_reference="1.2.3.4")
    write_series(ct, tmp_path / "part1", study, uid=uid, slices=range(16), frame_of_reference="1.2.3.4")
    assert_same_ct(read_image(tmp_path), ct)


def test_duplicate_files_of_one_instance_are_read_once(ct, tmp_path):
    write_series(ct, tmp_path / "ct", generate_uid())
    (tmp_path / "ct" / "copy").mkdir()
    for name in ("IM0003.dcm", "IM0004.dcm", "IM0020.dcm"):
        shutil.copy(tmp_path / "ct" / name, tmp_path / "ct" / "copy" / f"again_{name}")
    selection = select_series(tmp_path / "ct")
    assert "32 images" in selection.describe() and "3 duplicate files of its instances ignored" in selection.describe()
    assert_same_ct(read_image(tmp_path / "ct"), ct)


def test_two_different_images_at_one_position_are_refused(ct, tmp_path):
    study, uid = generate_uid(), generate_uid()
    write_series(ct, tmp_path, study, uid=uid, frame_of_reference="1.2.3.4")
    write_series(ct, tmp_path, study, uid=uid, frame_of_reference="1.2.3.4", slices=[5], name="second_{k}.dcm")
    with pytest.raises(InputError, match=r"has two different images at the same position .*export the series once"):
        read_image(tmp_path)


@pytest.mark.parametrize("missing,text", [([10], "1 slice missing: a gap of 12 mm"),
                                          ([10, 11], "2 slices missing: a gap of 18 mm")])
def test_missing_instances_are_refused(ct, tmp_path, missing, text):
    write_series(ct, tmp_path, generate_uid(), slices=[k for k in range(32) if k not in missing])
    with pytest.raises(InputError, match="irregular slice spacing") as err:
        read_image(tmp_path)
    assert text in str(err.value) and "where the others are 6 mm apart" in str(err.value)


def test_gantry_tilt_is_refused_with_our_sentence_and_no_itk_output(ct, tmp_path, capfd):
    write_series(ct, tmp_path, generate_uid(), tilt_deg=15.0)
    capfd.readouterr()
    with pytest.raises(InputError) as err:
        read_image(tmp_path)
    assert "was acquired with a gantry tilt of 15.0 degrees" in str(err.value)
    assert "Acquisition geometry regularization" in str(err.value)
    assert capfd.readouterr().err == ""  # ITK's raw warnings never reach the terminal


def _cd(ct, tmp_path):
    """A PACS disc: DICOMDIR and PT*/ST*/SE*/IM* files (pydicom's File-set), made from a study."""
    write_study(ct, tmp_path / "export")
    fs = FileSet()
    for path in sorted((tmp_path / "export").iterdir()):
        if path.name != "dose_sr.dcm":  # pydicom's DICOMDIR records need more than this minimal SR has
            fs.add(pydicom.dcmread(str(path)))
    fs.write(str(tmp_path / "cd"))
    return tmp_path / "cd"


def test_dicomdir_lists_the_files_and_a_missing_one_is_refused(ct, tmp_path, monkeypatch):
    cd = _cd(ct, tmp_path)
    assert (cd / "DICOMDIR").is_file() and not list(cd.glob("*.dcm"))
    selection = select_series(cd)
    assert selection.chosen.kind == "axial CT" and selection.non_image == 0
    assert_same_ct(read_image(cd), ct)
    with monkeypatch.context() as m:  # without pydicom the folder is scanned instead: the same CT
        m.setitem(sys.modules, "pydicom", None)
        assert_same_ct(read_image(cd), ct)
    victim = select_series(cd).chosen.slices[7].path
    shutil.move(victim, tmp_path / "elsewhere")
    with pytest.raises(InputError, match=r"DICOMDIR in .* lists 1 file that is missing .*copy the complete disc"):
        select_series(cd)


def _multiframe(ct, tmp_path):
    datasets = write_series(ct, tmp_path / "single", generate_uid())
    frames = hd.legacy.LegacyConvertedEnhancedCTImage(
        datasets, series_instance_uid=generate_uid(), series_number=5, sop_instance_uid=generate_uid(),
        instance_number=1)
    (tmp_path / "enhanced").mkdir()
    frames.save_as(str(tmp_path / "enhanced" / "ct.dcm"))
    return tmp_path / "enhanced"


def test_enhanced_multiframe_ct_reads_as_the_same_ct(ct, tmp_path, monkeypatch):
    folder = _multiframe(ct, tmp_path)
    selection = select_series(folder)
    assert selection.chosen.multiframe and "axial CT, 32 frames" in selection.describe()
    image = read_image(folder)
    # highdicom stores the frames from head to feet: the same voxels on the same grid, read the other way.
    flipped = sitk.DICOMOrient(image.to_sitk(), "LPS")
    assert_same_ct(Image.from_sitk(flipped), sitk.DICOMOrient(ct, "LPS"))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(InputError, match=r"enhanced \(multi-frame\) CT, whose frame positions are checked with"):
        read_series(selection.chosen)


def test_folders_without_a_ct_volume_are_refused(ct, tmp_path):
    from dicom_builder import write_dose_reports
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"No DICOM series found in folder .*empty'; choose the folder"):
        select_series(tmp_path / "empty")
    write_dose_reports(tmp_path / "dose", generate_uid())
    with pytest.raises(InputError, match=r"holds no CT volume of at least 8 slices \(found: series 900 'Dose Report'"):
        select_series(tmp_path / "dose")
    write_series(coronal(ct), tmp_path / "loc", generate_uid(), slices=[3], image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    with pytest.raises(InputError, match=r"\(found: series 3 'Abdomen 6.0' \(localizer, 1 image"):
        select_series(tmp_path / "loc")
