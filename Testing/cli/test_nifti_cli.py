"""NIfTI variants of one CT segment like the plain file (issue #15, item 4): same labels, same grid, the one
note where the directions were made orthonormal, and none of ITK's own words on the terminal."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib import cli
from KidneyTumorSegLib.nifti_io import ORTHONORMAL_TOL
from phantoms import nifti_variant, read_nifti1, rotation, sheared_srow


def _run(*args):
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def cases(tmp_path_factory, shared_data):
    """A crop of the real CT, made oblique and stored as int16 (plain.nii.gz), and its header variants."""
    folder = tmp_path_factory.mktemp("cases")
    ct = sitk.ReadImage(str(shared_data / "ct" / "example_ct.nii.gz"))[30:86, 20:76, 36:68]
    ct = sitk.Cast(ct, sitk.sitkInt16)
    ct.SetDirection(rotation(6, -4, 15).ravel())
    plain = folder / "plain.nii.gz"
    sitk.WriteImage(ct, str(plain))
    header, data = read_nifti1(plain)
    hu = np.frombuffer(data, np.int16)
    dim = header["dim"].copy()
    dim[0], dim[4] = 4, 1
    nifti_variant(plain, folder / "oblique.nii.gz", qform_code=0, srow=sheared_srow(header, 4e-4))
    nifti_variant(plain, folder / "scaled.nii.gz", voxels=(2 * (hu.astype(np.int32) + 1024)).astype("<i2").tobytes(),
                  scl_slope=0.5, scl_inter=-1024.0)
    nifti_variant(plain, folder / "qform_only.nii.gz", sform_code=0, srow=np.zeros((3, 4)))
    nifti_variant(plain, folder / "singleton_4d.nii.gz", dim=dim)
    return folder


def test_each_variant_segments_like_the_plain_file(tmp_path, cases, model_dir, capfd):
    before = {p.name: p.read_bytes() for p in cases.iterdir()}
    capfd.readouterr()
    code = _run("segment", cases, "-o", tmp_path, "--model", model_dir, "--device", "cpu", "--json-progress")
    out, err = capfd.readouterr()
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    done = {e["case"].split("/")[-1]: e for e in events if e["event"] == "case_done"}
    assert sorted(done) == sorted(before) and events[-1]["failed"] == 0
    assert "ITK" not in err and "WARNING" not in err, err
    reference = sitk.ReadImage(str(tmp_path / "plain.nii.gz"))
    labels = sitk.GetArrayFromImage(reference)
    assert len(np.unique(labels)) > 1  # a comparison of empty label maps would prove little
    for name in before:
        result = sitk.ReadImage(str(tmp_path / name))
        atol = ORTHONORMAL_TOL if name == "oblique.nii.gz" else 1e-6
        assert np.array_equal(sitk.GetArrayFromImage(result), labels), name
        assert result.GetSize() == reference.GetSize(), name
        np.testing.assert_allclose(result.GetSpacing(), reference.GetSpacing(), atol=1e-6, err_msg=name)
        np.testing.assert_allclose(result.GetOrigin(), reference.GetOrigin(), atol=1e-4, err_msg=name)
        np.testing.assert_allclose(result.GetDirection(), reference.GetDirection(), atol=atol, err_msg=name)
        warnings = done[name]["warnings"]
        if name == "oblique.nii.gz":
            assert len(warnings) == 1 and "perpendicular" in warnings[0] and "oblique.nii.gz" in warnings[0]
        else:
            assert warnings == [], (name, warnings)
    assert {p.name: p.read_bytes() for p in cases.iterdir()} == before


def test_the_note_is_one_line_on_the_terminal(tmp_path, cases, model_dir, capfd):
    code = _run("segment", cases / "oblique.nii.gz", "-o", tmp_path, "--model", model_dir, "--device", "cpu")
    out, err = capfd.readouterr()
    assert code == 0, err
    lines = [line for line in out.splitlines() if "perpendicular" in line]
    assert len(lines) == 1 and lines[0].startswith("  warning: '") and "moves no voxel" in lines[0]
    assert "ITK" not in err and "WARNING" not in err, err


def test_measure_says_it_for_a_label_map_and_its_ct(tmp_path, cases, capfd):
    """measure: the oblique CT and a label map with the same header agree on the corrected grid."""
    ct = sitk.ReadImage(str(cases / "plain.nii.gz"))
    arr = np.zeros(ct.GetSize()[::-1], np.uint8)
    arr[10:30, 20:60, 20:50] = 1
    arr[15:22, 30:40, 25:35] = 2
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(ct)
    sitk.WriteImage(labels, str(tmp_path / "lab.nii.gz"))
    header, _ = read_nifti1(cases / "plain.nii.gz")
    nifti_variant(tmp_path / "lab.nii.gz", tmp_path / "lab_oblique.nii.gz", qform_code=0,
                  srow=sheared_srow(header, 4e-4))
    capfd.readouterr()
    code = _run("measure", tmp_path / "lab_oblique.nii.gz", "--ct", cases / "oblique.nii.gz", "-o", tmp_path / "m",
                "--json-progress")
    out, err = capfd.readouterr()
    assert code == 0, err
    warnings = [json.loads(line)["message"] for line in out.splitlines() if '"warning"' in line]
    assert len(warnings) == 2 and all("perpendicular" in w for w in warnings)
    assert "lab_oblique.nii.gz" in warnings[0] and "oblique.nii.gz" in warnings[1]
    assert (tmp_path / "m" / "lab_oblique_measurements.json").is_file()
