"""`kidney-tumor-seg measure` and `segment --measure`: files, JSON keys, events, exit codes, overwriting."""
import contextlib
import csv
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib import cli
from KidneyTumorSegLib.pipeline import SegmentOptions, output_paths
from KidneyTumorSegLib.result_text import MAX_LESIONS_SHOWN, volume_text
from phantoms import write_small_ct as _ct

OUTPUTS = ("_measurements.csv", "_measurements.json", "_report.html")


def _labels(path, like, values=(1, 2)):
    """A kidney ellipsoid with a tumor ball in it, on ``like``'s grid."""
    z, y, x = np.indices(like.GetSize()[::-1], dtype=float)
    arr = np.zeros(z.shape, np.uint8)
    arr[((z - 10) / 7) ** 2 + ((y - 15) / 9) ** 2 + ((x - 28) / 8) ** 2 <= 1] = values[0]
    arr[((z - 10) / 3) ** 2 + ((y - 15) / 3) ** 2 + ((x - 33) / 3) ** 2 <= 1] = values[1]
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(like)
    sitk.WriteImage(img, str(path))
    return arr


def _run(*args):
    return cli.main([str(a) for a in args])


def _events(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


@pytest.fixture(scope="module")
def kits_measured(tmp_path_factory, shared_data):
    """``measure`` run once on a real KiTS23 label map (a few seconds), with JSON progress."""
    out = tmp_path_factory.mktemp("kits")
    src = shared_data / "kits23" / "labels" / "case_00000.nii.gz"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = _run("measure", src, "-o", out, "--json-progress")
    capture = [json.loads(line) for line in buf.getvalue().splitlines()]
    return code, out, capture, src


def test_measure_a_kits23_label_map(kits_measured):
    code, out, events, _ = kits_measured
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"case_00000{s}" for s in OUTPUTS)
    d = json.loads((out / "case_00000_measurements.json").read_text(encoding="utf-8"))
    assert {"side", "volume_ml"} <= set(d["kidneys"][0])
    assert sorted(k["side"] for k in d["kidneys"]) == ["left", "right"]
    assert all(50 < k["volume_ml"] < 400 for k in d["kidneys"])
    tumors = [x for x in d["lesions"] if x["kind"] == "tumor"]
    assert tumors
    for les in d["lesions"]:
        assert {"kind", "side", "volume_ml", "longest_diameter_mm", "longest_axial_diameter_mm", "renal"} <= set(les)
    assert {"R", "E", "N", "A", "L", "total", "suffix"} <= set(tumors[0]["renal"])
    rows = list(csv.DictReader((out / "case_00000_measurements.csv").open()))
    assert len(rows) == len(d["kidneys"]) + len(d["lesions"])
    text = (out / "case_00000_report.html").read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(text)
    assert parser.tags.count("table") == 2 and parser.tags.count("img") == 2 * len(d["lesions"])
    assert f"{tumors[0]['volume_ml']:.1f}" in text and "case_00000.nii.gz" in text
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "case_done" in kinds and kinds[-1] == "summary"
    done = next(e for e in events if e["event"] == "case_done")
    summary = done["measurements"]
    assert [k["side"] for k in summary["kidneys"]] == [k["side"] for k in d["kidneys"]]
    assert summary["lesions"][0]["renal_total"] == tumors[0]["renal"]["total"]
    assert set(done["outputs"]) == {"measurements_csv", "measurements_json", "report"}


def test_measure_refuses_existing_outputs_before_reading(kits_measured, capsys):
    _, out, _, src = kits_measured
    report = out / "case_00000_report.html"
    before = report.read_bytes()
    assert _run("measure", src, "-o", out) == cli.EXIT_INPUT
    assert "already exists" in capsys.readouterr().err and report.read_bytes() == before


def test_overwrite_and_matching_ct(tmp_path, capsys):
    ct = _ct(tmp_path / "ct.nii.gz")
    _labels(tmp_path / "lab.nii.gz", ct)
    out = tmp_path / "out"
    assert _run("measure", tmp_path / "lab.nii.gz", "-o", out) == 0
    assert "tumor_1" in capsys.readouterr().out
    (out / "lab_measurements.json").write_text("keep me")
    assert _run("measure", tmp_path / "lab.nii.gz", "-o", out) == cli.EXIT_INPUT
    assert (out / "lab_measurements.json").read_text(encoding="utf-8") == "keep me"
    assert _run("measure", tmp_path / "lab.nii.gz", "-o", out, "--ct", tmp_path / "ct.nii.gz", "--overwrite") == 0
    d = json.loads((out / "lab_measurements.json").read_text(encoding="utf-8"))
    assert [x["kind"] for x in d["lesions"]] == ["tumor"] and d["kidneys"][0]["side"] is not None
    assert "CT window" in (out / "lab_report.html").read_text(encoding="utf-8")


def test_values_outside_kits_exit_3(tmp_path, capsys):
    ct = _ct(tmp_path / "ct.nii.gz")
    arr = np.random.default_rng(0).integers(0, 8, (20, 30, 40)).astype(np.uint8)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ct)
    sitk.WriteImage(img, str(tmp_path / "bad.nii.gz"))
    assert _run("measure", tmp_path / "bad.nii.gz", "-o", tmp_path / "out") == cli.EXIT_INPUT
    err = capsys.readouterr().err
    assert "bad.nii.gz" in err and "outside 0-3" in err and "[4, 5, 6, 7]" in err
    assert not (tmp_path / "out").exists()


def test_ct_on_another_grid_exits_3_naming_both(tmp_path, capsys):
    ct = _ct(tmp_path / "ct.nii.gz")
    _labels(tmp_path / "lab.nii.gz", ct)
    _ct(tmp_path / "other.nii.gz", spacing=(4.0, 4.5, 4.0))
    code = _run("measure", tmp_path / "lab.nii.gz", "-o", tmp_path / "out", "--ct", tmp_path / "other.nii.gz",
                "--json-progress")
    assert code == cli.EXIT_INPUT
    events = _events(capsys)
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 3
    assert "other.nii.gz" in events[-1]["message"] and "lab.nii.gz" in events[-1]["message"]
    assert "different grids" in events[-1]["message"]
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_missing_label_map_exits_3(tmp_path, capsys):
    assert _run("measure", tmp_path / "nothing.nii.gz", "-o", tmp_path / "out") == cli.EXIT_INPUT
    assert "does not exist" in capsys.readouterr().err


def test_segment_with_measure(tmp_path, model_dir, capsys):
    src = tmp_path / "patient3.nii.gz"
    _ct(src)
    out = tmp_path / "out"
    args = ("segment", src, "-o", out, "--model", model_dir, "--device", "cpu", "--measure", "--json-progress")
    assert _run(*args) == 0
    for suffix in OUTPUTS + (".nii.gz", ".seg.nrrd"):
        assert (out / f"patient3{suffix}").is_file()
    done = next(e for e in _events(capsys) if e["event"] == "case_done")
    assert {"kidneys", "lesions"} <= set(done["measurements"])
    assert {"measurements_csv", "measurements_json", "report"} <= set(done["outputs"])
    d = json.loads((out / "patient3_measurements.json").read_text(encoding="utf-8"))
    assert len(done["measurements"]["lesions"]) == len(d["lesions"])
    # An existing report alone refuses the case before inference: the label map is not rewritten.
    for f in out.iterdir():
        if f.name != "patient3_report.html":
            f.unlink()
    assert _run(*args) == cli.EXIT_INPUT
    assert "patient3_report.html" in _events(capsys)[-1]["message"]
    assert not (out / "patient3.nii.gz").exists()


def test_measurement_outputs_only_with_measure(tmp_path):
    plain = output_paths("p", tmp_path, SegmentOptions(), is_dicom=False)
    measured = output_paths("p", tmp_path, SegmentOptions(measure=True), is_dicom=False)
    assert set(measured) - set(plain) == {"measurements_csv", "measurements_json", "report"}
    assert [measured[k].name for k in ("measurements_csv", "measurements_json", "report")] == [
        f"p{s}" for s in OUTPUTS]


def test_terminal_lists_the_largest_lesions_only(tmp_path, capsys):
    img = sitk.Image([60, 40, 30], sitk.sitkUInt8)
    img.SetSpacing((2.0, 2.0, 2.0))
    arr = np.zeros((30, 40, 60), np.uint8)
    arr[3:27, 5:35, 5:55] = 1  # a (boxy) kidney of 72 mL
    for i in range(12):  # twelve separate cysts of growing size inside it
        arr[6:9 + i // 4, 8 + 2 * (i % 4) * 3:10 + 2 * (i % 4) * 3, 8 + (i // 4) * 14:8 + (i // 4) * 14 + 3 + i % 3] = 3
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(tmp_path / "many.nii.gz"))
    assert _run("measure", tmp_path / "many.nii.gz", "-o", tmp_path / "out") == 0
    text = capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "many_measurements.json").read_text(encoding="utf-8"))
    n = len(data["lesions"])
    assert n > MAX_LESIONS_SHOWN
    assert text.count(" mL, longest ") == MAX_LESIONS_SHOWN
    assert f"and {n - MAX_LESIONS_SHOWN} smaller lesions" in text


def test_a_one_voxel_lesion_reads_as_such_not_as_zero(tmp_path, capsys):
    img = sitk.Image(40, 30, 20, sitk.sitkUInt8)
    img.SetSpacing((3.0, 3.0, 3.0))
    arr = np.zeros((20, 30, 40), np.uint8)
    arr[4:16, 5:25, 5:35] = 1
    arr[10, 15, 20] = 2  # one 27 mm^3 voxel of tumor: 0.027 mL, no diameter
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(tmp_path / "speck.nii.gz"))
    assert _run("measure", tmp_path / "speck.nii.gz", "-o", tmp_path / "out") == 0
    text = capsys.readouterr().out
    assert "< 0.1 mL, a single voxel" in text and "0.0 mL" not in text and "longest 0.0 mm" not in text
    # the whole kidney (12 x 20 x 30 voxels of 27 mm^3) says that it includes its mass
    assert re.search(r"(left|right) kidney with its masses: 194\.4 mL \(tumor < 0\.1 mL\)", text), text
    assert volume_text(0.0) == "0.0 mL" and volume_text(0.049) == "< 0.1 mL" and volume_text(0.05) == "0.1 mL"


def test_a_kidney_line_names_what_its_volume_holds():
    from types import SimpleNamespace
    from KidneyTumorSegLib.result_text import kidney_text
    k = SimpleNamespace(side="left", volume_ml=150.0, tumor_volume_ml=0.0, cyst_volume_ml=0.0)
    assert kidney_text(k) == "  left kidney: 150.0 mL (no tumor or cyst)"
    k = SimpleNamespace(side=None, volume_ml=232.0, tumor_volume_ml=16.3, cyst_volume_ml=2.04)
    assert kidney_text(k) == "  unknown kidney with its masses: 232.0 mL (tumor 16.3 mL, cyst 2.0 mL)"


def test_with_the_ct_a_solitary_kidney_gets_its_side_from_the_bodys_midline(tmp_path):
    """The kidney lies at x index 28 of 40, on the patient-left (+x) side of the volume's centre (19.5). The
    CT's body fills x index 24-39 (centre 31.5), as for a patient off-centre in the field of view, so the
    kidney is the right one."""
    like = _ct(tmp_path / "noise.nii.gz")
    _labels(tmp_path / "lab.nii.gz", like)
    arr = np.full(like.GetSize()[::-1], -1000, np.int16)
    arr[:, :, 24:] = 40
    ct = sitk.GetImageFromArray(arr)
    ct.CopyInformation(like)
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sides = {}
    for name, extra in (("no_ct", ()), ("ct", ("--ct", tmp_path / "ct.nii.gz"))):
        assert _run("measure", tmp_path / "lab.nii.gz", "-o", tmp_path / name, "--mesh", *extra) == 0
        d = json.loads((tmp_path / name / "lab_measurements.json").read_text(encoding="utf-8"))
        sides[name] = ([k["side"] for k in d["kidneys"]], [x["side"] for x in d["lesions"]],
                       sorted(p.name for p in (tmp_path / name).glob("*.stl")))
    assert sides["no_ct"][:2] == (["left"], ["left"])
    assert sides["ct"][:2] == (["right"], ["right"])  # the tumor follows its kidney
    assert any("right" in n for n in sides["ct"][2]) and not any("left" in n for n in sides["ct"][2])
