"""The command line: outputs on the input's grid, batch summary, exit codes, and every bad input."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib import cli
from phantoms import write_small_ct as _ct


def _run(*args):
    return cli.main([str(a) for a in args])


def test_single_file_outputs_land_on_the_input_grid(tmp_path, model_dir, capsys):
    src = tmp_path / "in" / "patient7.nrrd"
    src.parent.mkdir()
    img = _ct(src, direction=(-1, 0, 0, 0, 0, 1, 0, -1, 0))
    before = src.read_bytes()
    out = tmp_path / "out"
    assert _run("segment", src, "-o", out, "--model", model_dir, "--device", "cpu", "--qc") == 0
    labels = sitk.ReadImage(str(out / "patient7.nii.gz"))
    assert labels.GetSize() == img.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), img.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(labels.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), img.GetDirection(), atol=1e-6)
    assert (out / "patient7.seg.nrrd").is_file() and (out / "patient7_qc.png").is_file()
    assert src.read_bytes() == before and os.listdir(src.parent) == ["patient7.nrrd"]
    assert "patient7" in capsys.readouterr().out


def test_refuses_to_overwrite_without_flag_and_keeps_the_old_file(tmp_path, model_dir):
    src = tmp_path / "ct.nii.gz"
    _ct(src)
    out = tmp_path / "out"
    assert _run("segment", src, "-o", out, "--model", model_dir, "--device", "cpu") == 0
    (out / "ct.nii.gz").write_bytes(b"keep me")
    assert _run("segment", src, "-o", out, "--model", model_dir, "--device", "cpu") == cli.EXIT_INPUT
    assert (out / "ct.nii.gz").read_bytes() == b"keep me"
    assert _run("segment", src, "-o", out, "--model", model_dir, "--device", "cpu", "--overwrite") == 0
    assert (out / "ct.nii.gz").read_bytes() != b"keep me"


def test_batch_goes_on_after_a_failure_and_summarizes(tmp_path, model_dir, capsys):
    cases = tmp_path / "cases"
    (cases / "case_00001").mkdir(parents=True)
    _ct(cases / "a.nii.gz")
    _ct(cases / "case_00001" / "imaging.nii.gz")
    (cases / "broken.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = _run("segment", cases, "-o", out, "--model", model_dir, "--device", "cpu", "--json-progress")
    assert code == cli.EXIT_FAILED
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "summary" and "progress" in kinds
    summary = events[-1]
    assert summary["succeeded"] == 2 and summary["failed"] == 1
    assert "broken.nii.gz" in summary["failures"][0]["case"]
    assert "corrupt or truncated" in summary["failures"][0]["message"]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a.nii.gz", "case_00001.nii.gz"]
    done = [e for e in events if e["event"] == "case_done"]
    assert all(0 <= e["volumes_ml"].get("Left kidney", 0) for e in done)


def test_dicom_folder_input(tmp_path, model_dir, shared_data):
    out = tmp_path / "out"
    src = shared_data / "dicom" / "example_series"
    code = _run("segment", src, "-o", out, "--model", model_dir, "--device", "cpu", "--json-progress")
    assert code == cli.EXIT_SKIPPED  # de-identified with empty UIDs: no DICOM SEG (issue #18), the rest is done
    labels = sitk.ReadImage(str(out / "example_series.nii.gz"))
    assert labels.GetSize() == (512, 512, 20)
    assert sorted(os.listdir(out)) == ["example_series.nii.gz", "example_series.seg.nrrd"]


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"junk"), "corrupt or truncated"),
    (lambda p: sitk.WriteImage(sitk.Image(40, 40, sitk.sitkUInt8), str(p)), "2D"),
    (lambda p: sitk.WriteImage(sitk.Image([30, 30, 3], sitk.sitkInt16), str(p)), "slices"),
])
def test_bad_single_inputs_exit_3_with_a_clear_message(tmp_path, model_dir, capsys, make, message):
    src = tmp_path / "bad.nii.gz"
    make(src)
    assert _run("segment", src, "-o", tmp_path / "out", "--model", model_dir, "--device", "cpu") == 3
    assert message in capsys.readouterr().err


def test_screenshot_like_intensities_are_refused(tmp_path, model_dir, capsys):
    src = tmp_path / "shot.nii.gz"
    arr = np.random.default_rng(0).integers(0, 256, (20, 30, 30)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(src))
    assert _run("segment", src, "-o", tmp_path / "out", "--model", model_dir, "--device", "cpu") == 3
    assert "Hounsfield" in capsys.readouterr().err or "HU" in capsys.readouterr().err


def test_model_errors_exit_4(tmp_path, model_dir, capsys):
    src = tmp_path / "ct.nii.gz"
    _ct(src)
    assert _run("segment", src, "-o", tmp_path / "o", "--model", tmp_path / "nothing-here") == 4
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(model_dir / "stage1.pt", partial / "stage1.pt")
    assert _run("segment", src, "-o", tmp_path / "o", "--model", partial) == 4
    assert "stage2.pt" in capsys.readouterr().err
    (partial / "stage2.pt").write_bytes(b"truncated")
    assert _run("segment", src, "-o", tmp_path / "o", "--model", partial) == 4
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        _run("segment", tmp_path, "--fast", "--accurate", "-o", tmp_path)
    assert exc.value.code == 2


def test_bad_device_exits_3(tmp_path, model_dir, capsys):
    src = tmp_path / "ct.nii.gz"
    _ct(src)
    assert _run("segment", src, "-o", tmp_path / "o", "--model", model_dir, "--device", "gpu7") == 3
    assert "not valid" in capsys.readouterr().err


def test_cyst_by_density_reaches_the_segment_options(tmp_path, monkeypatch):
    from KidneyTumorSegLib.models import ModelError
    src = tmp_path / "ct.nii.gz"
    _ct(src)
    seen = []

    def load_cascade(options, **kwargs):  # records the options, then stops the run as a missing model would
        seen.append(options.cyst_by_density)
        raise ModelError("stopped here")
    monkeypatch.setattr(cli, "load_cascade", load_cascade)
    assert _run("segment", src, "-o", tmp_path / "a") == 4
    for choice in ("model", "on", "off"):
        assert _run("segment", src, "-o", tmp_path / choice, "--cyst-by-density", choice) == 4
    assert seen == [None, None, True, False]
    with pytest.raises(SystemExit) as usage:
        _run("segment", src, "-o", tmp_path / "b", "--cyst-by-density", "maybe")
    assert usage.value.code == 2
