"""Issue #18 end to end: DICOM series as archives deliver them, through `kidney-tumor-seg segment`. A DICOM
series is segmented exactly as the same CT in NIfTI; an output the input cannot support (DICOM SEG without
FrameOfReferenceUID) is skipped with one line and exit 5; a series that cannot be read right is refused
with one sentence and exit 3; never a traceback, never ITK's own messages."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

import dicom_builder
from dicom_builder import small_ct, write_series, write_study
from KidneyTumorSegLib import cli, dicom_io
from KidneyTumorSegLib.segments import segments_from_labels

import highdicom as hd  # the test extra installs it
import pydicom


def _run(*args):
    return cli.main([str(a) for a in args])


def _our_lines(err: str):
    """The warning and error lines on stderr (not the progress lines), without the model_dir fixture's own
    'unverified model' warning."""
    return [line for line in err.splitlines() if line.startswith(("warning: ", "error: ", "Traceback"))
            and not line.startswith("warning: unverified model")]


def _events(out: str):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def ct(shared_data):
    return small_ct(shared_data)


def test_dicom_study_is_segmented_like_the_same_ct_as_nifti(ct, tmp_path, model_dir, capfd, monkeypatch):
    """The study folder (localizer, axial, coronal reconstruction, dose reports; a UTF-8 patient name): the
    axial series is chosen and named, its label map equals the NIfTI run's voxel for voxel on the same grid,
    and its DICOM SEG, read back with highdicom, lies on the label map's voxels."""
    monkeypatch.setattr(dicom_builder, "PATIENT", "Müller^Jörg")
    sitk.WriteImage(ct, str(tmp_path / "study.nii.gz"))
    uids = write_study(ct, tmp_path / "dicom" / "study", per_series_folders=True)
    common = ("--model", model_dir, "--device", "cpu")
    assert _run("segment", tmp_path / "study.nii.gz", "-o", tmp_path / "from_nifti", *common) == 0
    capfd.readouterr()
    assert _run("segment", tmp_path / "dicom" / "study", "-o", tmp_path / "from_dicom", *common, "--json-progress") == 0
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "WARNING" not in captured.err
    done = [e for e in _events(captured.out) if e["event"] == "case_done"]
    assert len(done) == 1 and done[0]["skipped"] == {}
    assert done[0]["dicom_series"]["series_uid"] == uids["series"]
    assert done[0]["dicom_series"]["summary"].startswith("DICOM series 3 'Abdomen 6.0' (axial CT, 32 images")

    nifti = sitk.ReadImage(str(tmp_path / "from_nifti" / "study.nii.gz"))
    dicom = sitk.ReadImage(str(tmp_path / "from_dicom" / "study.nii.gz"))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(dicom, get)() == getattr(nifti, get)() == getattr(ct, get)()
    labels = sitk.GetArrayFromImage(dicom)
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(nifti))

    seg = hd.seg.segread(str(tmp_path / "from_dicom" / "study_seg.dcm"))
    assert str(seg.PatientName) == "Müller^Jörg"
    from KidneyTumorSegLib.image_io import read_labelmap
    seg_map, segments = segments_from_labels(labels, read_labelmap(tmp_path / "from_dicom" / "study.nii.gz").geometry)
    assert segments and seg.number_of_segments == len(segments)
    axial = sorted((tmp_path / "dicom" / "study" / "3_axial").iterdir())  # IM0000 ... IM0031: slice order
    sop_uids = [pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in axial]
    assert {u[2] for u in seg.get_source_image_uids()} == set(sop_uids)
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance(sop_uids, combine_segments=True), seg_map)


def test_series_without_frame_of_reference_skips_the_seg_with_one_line_and_exit_5(ct, tmp_path, model_dir, capfd):
    """The issue's case: the label map and .seg.nrrd are written, the DICOM SEG is not, one warning line says
    why (a 'warning' event in JSON, which the Slicer module shows), exit 5; with --overwrite an earlier SEG
    goes, so the folder never mixes two runs."""
    write_series(ct, tmp_path / "anon", generate_uid(), frame_of_reference=None)
    out = tmp_path / "out"
    common = ("--model", model_dir, "--device", "cpu")
    assert _run("segment", tmp_path / "anon", "-o", out, *common) == cli.EXIT_SKIPPED == 5
    captured = capfd.readouterr()
    lines = _our_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("warning: DICOM SEG not written: the source series in ")
    assert "has no FrameOfReferenceUID" in lines[0] and "Traceback" not in captured.err + captured.out
    assert sorted(os.listdir(out)) == ["anon.nii.gz", "anon.seg.nrrd"]

    (out / "anon_seg.dcm").write_bytes(b"a SEG of an earlier run")
    assert _run("segment", tmp_path / "anon", "-o", out, *common, "--overwrite", "--json-progress") == 5
    events = _events(capfd.readouterr().out)
    warning = [e for e in events if e["event"] == "warning" and e.get("kind") == "output_skipped"]
    assert len(warning) == 1 and warning[0]["kind"] == "output_skipped" and warning[0]["output"] == "dicom_seg"
    assert "FrameOfReferenceUID" in warning[0]["message"] and warning[0]["case"] == str(tmp_path / "anon")
    done = next(e for e in events if e["event"] == "case_done")
    assert done["skipped"] == {"dicom_seg": warning[0]["message"]} and "dicom_seg" not in done["outputs"]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["succeeded"] == 1
    assert [s["output"] for s in summary["skipped"]] == ["dicom_seg"]
    assert sorted(os.listdir(out)) == ["anon.nii.gz", "anon.seg.nrrd"]  # the stale SEG went with the new set


@pytest.mark.parametrize("make,sentence", [
    (lambda ct, p: write_series(ct, p, generate_uid(), tilt_deg=20.0), "acquired with a gantry tilt of 20.0 degrees"),
    (lambda ct, p: write_series(ct, p, generate_uid(), slices=[k for k in range(32) if k != 9]),
     "has irregular slice spacing (1 slice missing"),
    (lambda ct, p: write_series(ct, p, generate_uid(), slices=range(5)), "holds no CT volume of at least 8 slices"),
], ids=["gantry_tilt", "missing_slice", "too_few_slices"])
def test_series_that_cannot_be_read_right_exit_3_with_one_sentence(ct, tmp_path, model_dir, capfd, make, sentence):
    make(ct, tmp_path / "series")
    capfd.readouterr()
    assert _run("segment", tmp_path / "series", "-o", tmp_path / "out", "--model", model_dir, "--device", "cpu") == 3
    lines = _our_lines(capfd.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(("error: The DICOM series 3 'Abdomen 6.0'", "error: Folder "))
    assert sentence in lines[0] and not (tmp_path / "out").exists()


def test_folders_of_dicom_are_one_case_per_study(ct, tmp_path, monkeypatch):
    """A study in subfolders (a folder per series, or one series split across folders) is one case; folders
    holding different studies (or de-identified ones without StudyInstanceUID) are a batch."""
    uid, study = generate_uid(), generate_uid()
    write_series(ct, tmp_path / "split" / "a", study, uid=uid, slices=range(20), frame_of_reference="1.2.3")
    write_series(ct, tmp_path / "split" / "b", study, uid=uid, slices=range(20, 32), frame_of_reference="1.2.3")
    assert cli.discover_cases(tmp_path / "split") == ([tmp_path / "split"], False)
    write_study(ct, tmp_path / "study", per_series_folders=True)
    assert cli.discover_cases(tmp_path / "study") == ([tmp_path / "study"], False)
    for name in ("patient1", "patient2"):
        write_series(ct, tmp_path / "batch" / name / "DICOM" / "S1", generate_uid())
    cases, batch = cli.discover_cases(tmp_path / "batch")
    assert batch and cases == [tmp_path / "batch" / "patient1", tmp_path / "batch" / "patient2"]
    read = []
    with monkeypatch.context() as m:  # the first image of each folder, until two studies show
        m.setattr(dicom_io, "_read_header", lambda reader, path, f=dicom_io._read_header: read.append(path) or
                  f(reader, path))
        assert len(dicom_io.study_uids(tmp_path / "batch")) == 2
    assert [p.parent.parent.parent.name for p in read] == ["patient1", "patient2"]
    shutil.copytree(tmp_path / "batch", tmp_path / "anonymous")
    for f in (tmp_path / "anonymous").rglob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        ds.StudyInstanceUID = ""
        ds.save_as(str(f))
    assert cli.discover_cases(tmp_path / "anonymous")[1] is True
