"""`kidney-tumor-seg demo`: the bundled sample CT, verified, segmented with --qc and --measure."""
import json
import shutil
from pathlib import Path

from KidneyTumorSegLib.cli import EXIT_INPUT, EXIT_OK, main
from KidneyTumorSegLib.download import sha256_file
from KidneyTumorSegLib.models import RESOURCES_ENV
from KidneyTumorSegLib.sample import SAMPLE_FILE, SAMPLE_NOTE, SAMPLE_SHA256, sample_ct_path


def test_demo_segments_the_sample_ct(model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--model", str(model_dir), "--device", "cpu"]) == EXIT_OK
    stem = SAMPLE_FILE[: -len(".nii.gz")]
    for name in (f"{stem}.nii.gz", f"{stem}.seg.nrrd", f"{stem}_qc.png", f"{stem}_measurements.json",
                 f"{stem}_report.html"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert stem in printed and " s)" in printed  # the time taken
    assert printed.rstrip().endswith(SAMPLE_NOTE)  # last: no listed lesion on the sample reads as a finding
    assert sha256_file(sample_ct_path()) == SAMPLE_SHA256  # the bundled file is untouched


def test_demo_refuses_a_damaged_sample(model_dir, tmp_path, monkeypatch, capsys):
    resources = tmp_path / "Resources"
    (resources / "SampleData").mkdir(parents=True)
    shutil.copy(sample_ct_path(), resources / "SampleData" / SAMPLE_FILE)
    with open(resources / "SampleData" / SAMPLE_FILE, "ab") as f:
        f.write(b"\0")
    monkeypatch.setenv(RESOURCES_ENV, str(resources))
    rc = main(["demo", "-o", str(tmp_path / "out"), "--model", str(model_dir), "--json-progress"])
    assert rc == EXIT_INPUT
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any("SHA-256" in e.get("message", "") for e in events)
    assert not (tmp_path / "out").exists()


def test_outputs_are_reported_as_absolute_paths(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a relative -o: every written file is still reported by its full path
    assert main(["demo", "-o", "rel", "--model", str(model_dir), "--device", "cpu", "--json-progress"]) == EXIT_OK
    out = capsys.readouterr().out
    assert SAMPLE_NOTE not in out  # --json-progress: JSON lines only
    done = [json.loads(line) for line in out.splitlines() if '"case_done"' in line][0]
    assert len(done["outputs"]) >= 6
    for path in done["outputs"].values():
        assert Path(path).is_absolute() and Path(path).is_file() and Path(path).parent == tmp_path / "rel"
