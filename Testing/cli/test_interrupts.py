"""Interrupts (issue #17): a real SIGINT or SIGTERM in each phase of a run, during the final renames, while the
libraries load, and when the program that started the run dies. Each ends with 130 / 143 and one line, and leaves
the output folder holding a complete set of outputs or exactly what it held before (a fresh folder: nothing)."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from KidneyTumorSegLib import cascade as cascade_module
from KidneyTumorSegLib import cli, measurements, pipeline, qc, report
from KidneyTumorSegLib.entry import interrupted_message
from faults_common import ALL_OUTPUTS, ENV, ROOT, _cli, _signal_after, contents, one_error_line


def _signal_at_progress(prefix, signum, monkeypatch):
    original = cli.Reporter.progress

    def progress(self, fraction, text):
        original(self, fraction, text)
        if text.startswith(prefix) and 0 < fraction < 1:
            os.kill(os.getpid(), signum)
    monkeypatch.setattr(cli.Reporter, "progress", progress)


PHASES = {  # phase -> (how to send the signal in it, the outputs asked for)
    "read": (lambda s, mp: _signal_after(pipeline, "read_image", s, mp), ()),
    "stage 1": (lambda s, mp: _signal_at_progress("Stage 1", s, mp), ()),
    "stage 2": (lambda s, mp: _signal_at_progress("Stage 2", s, mp), ()),
    "post-processing": (lambda s, mp: _signal_after(cascade_module, "postprocess", s, mp), ()),
    "write label map": (lambda s, mp: _signal_after(pipeline, "write_labelmap", s, mp), ()),
    "write .seg.nrrd": (lambda s, mp: _signal_after(pipeline, "write_segments", s, mp), ()),
    "write QC picture": (lambda s, mp: _signal_after(qc, "write_qc_png", s, mp), ("--qc",)),
    "write probabilities": (lambda s, mp: _signal_after(pipeline, "write_image", s, mp), ("--qc", "--probabilities")),
    "write measurements": (lambda s, mp: _signal_after(measurements, "write_measurements", s, mp), ("--measure",)),
    "write report": (lambda s, mp: _signal_after(report, "write_report", s, mp), ALL_OUTPUTS),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_interrupt_in_each_phase_leaves_no_output(phase, earlier, model_dir, tmp_path, monkeypatch, capsys):
    """Every other phase runs into a fresh folder (which must be gone afterwards) or reruns with --overwrite
    over the earlier set (which must be left exactly as it was); SIGINT and SIGTERM alternate too."""
    ct, earlier_out = earlier
    index = list(PHASES).index(phase)
    out = tmp_path / "out"
    rerun = index % 2 == 1
    if rerun:
        shutil.copytree(earlier_out, out)
    before = contents(out)
    signum = signal.SIGTERM if index % 4 >= 2 else signal.SIGINT
    send, outputs = PHASES[phase]
    send(signum, monkeypatch)
    args = ["segment", str(ct), "-o", str(out), "--model", str(model_dir), "--device", "cpu", *outputs]
    code = cli.main(args + (["--overwrite"] if rerun else []))
    assert code == 128 + signum  # 130 (Ctrl+C) or 143 (SIGTERM)
    message = one_error_line(capsys.readouterr().err)
    assert message == interrupted_message(type("E", (), {"signum": signum})())
    assert contents(out) == before  # the earlier set exactly, or (fresh) no folder at all


def test_signal_during_the_final_renames_waits_for_them(earlier, model_dir, tmp_path, monkeypatch, capsys):
    """A signal while the set is renamed into place is handled right after: the set is complete."""
    from KidneyTumorSegLib import atomic
    ct, _ = earlier
    original = atomic.folder_lock

    @contextlib.contextmanager
    def lock_then_signal(folder):
        with original(folder):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a signal that were not deferred would be handled here
            yield
    monkeypatch.setattr(atomic, "folder_lock", lock_then_signal)
    out = tmp_path / "out"
    assert cli.main(["segment", str(ct), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
                     "--qc", "--json-progress"]) == 130
    captured = capsys.readouterr()
    assert one_error_line(captured.err) == (  # it says the set is there, not that nothing was left
        f"Interrupted by Ctrl+C (SIGINT): stopped after 3 output file(s) were written complete in {out}; "
        "no partial output was left.")
    assert sorted(os.listdir(out)) == ["ct.nii.gz", "ct.seg.nrrd", "ct_qc.png"]  # complete: renamed, then stopped
    last = json.loads(captured.out.splitlines()[-1])
    assert last["event"] == "interrupted" and last["written"] == [str(out / n) for n in ("ct.nii.gz", "ct.seg.nrrd",
                                                                                          "ct_qc.png")]


def test_a_stop_after_the_case_was_reported_names_its_files(earlier, model_dir, tmp_path, monkeypatch, capsys):
    """SIGTERM just after the case_done event (e.g. while a full pipe to the Slicer module blocked it): the files
    that event listed are in place, and the interrupted event and the line name them."""
    original = cli.Reporter.event

    def event(self, name, /, **fields):  # positional: a field may be called "kind"
        original(self, name, **fields)
        if name == "case_done":
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(cli.Reporter, "event", event)
    out = tmp_path / "out"
    code = cli.main(["segment", str(earlier[0]), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
                     "--json-progress"])
    assert code == cli.EXIT_TERMINATED
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    done = next(e for e in events if e["event"] == "case_done")
    assert events[-1] == {"event": "interrupted", "exit_code": cli.EXIT_TERMINATED,
                          "written": list(done["outputs"].values())}
    assert sorted(os.listdir(out)) == sorted(Path(p).name for p in done["outputs"].values())
    assert one_error_line(captured.err).startswith(
        f"Interrupted by SIGTERM: stopped after {len(done['outputs'])} output file(s) were written complete")


def test_a_batch_stopped_in_its_second_case_names_what_the_first_wrote(earlier, model_dir, tmp_path, monkeypatch,
                                                                       capsys):
    """The cases done before the stop stay, complete, and both the line and the JSON event say so."""
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(earlier[0], cases / name)
    original = cli.Reporter.progress

    def progress(self, fraction, text):
        original(self, fraction, text)
        if self.case == "b.nii.gz" and text.startswith("Stage 1") and 0 < fraction < 1:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(cli.Reporter, "progress", progress)
    out = tmp_path / "out"
    code = cli.main(["segment", str(cases), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
                     "--json-progress"])
    assert code == cli.EXIT_TERMINATED
    captured = capsys.readouterr()
    assert one_error_line(captured.err) == (
        f"Interrupted by SIGTERM: stopped after 2 output file(s) were written complete in {out}; "
        "no partial output was left.")
    last = json.loads(captured.out.splitlines()[-1])
    assert last == {"event": "interrupted", "exit_code": cli.EXIT_TERMINATED,
                    "written": [str(out / "a.nii.gz"), str(out / "a.seg.nrrd")]}
    assert sorted(os.listdir(out)) == ["a.nii.gz", "a.seg.nrrd"]  # b left nothing, not even a staging folder


def test_the_console_script_handles_signals_before_any_heavy_import():
    assert 'kidney-tumor-seg = "KidneyTumorSegLib.entry:main"' in (ROOT / "pyproject.toml").read_text()
    code = ("import sys, KidneyTumorSegLib.entry, KidneyTumorSegLib.__main__\n"
            "print(sorted(m for m in ('numpy', 'SimpleITK', 'scipy', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _caught_signals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(l for l in f if l.startswith("SigCgt:")).split()[1], 16)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see the handlers")
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, cli.EXIT_INTERRUPTED), (signal.SIGTERM, cli.EXIT_TERMINATED)])
def test_signal_while_the_libraries_load_ends_with_one_line(signum, code, earlier, model_dir, tmp_path):
    out = tmp_path / "out"
    run = _cli("segment", earlier[0], "-o", out, "--model", model_dir, "--device", "cpu")
    deadline = time.monotonic() + 60
    while not _caught_signals(run.pid) & (1 << (signal.SIGTERM - 1)):  # the entry's handlers are in place
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    run.send_signal(signum)  # torch and the rest are being imported now
    _, err = run.communicate(timeout=120)
    assert run.returncode == code
    assert err.strip() == interrupted_message(type("E", (), {"signum": signum})()), err
    assert not out.exists()


@pytest.mark.parametrize("dead", ["stdin", "stdin and stderr"])
def test_the_run_stops_when_the_program_that_started_it_dies(dead, earlier, model_dir, tmp_path):
    """--stop-when-stdin-closes (the Slicer module's runs): once the run is working, its standard input closes,
    as when Slicer crashes; the run stops as on SIGTERM and the earlier outputs stay exactly as they were. A dead
    parent also takes the other end of stderr with it: the line saying why cannot be written, the stop must
    still come (stdout stays read here, so that the run would otherwise go on to the end)."""
    ct, before = earlier
    out = tmp_path / "out"
    shutil.copytree(before, out)
    run = _cli("segment", ct, "-o", out, "--model", model_dir, "--device", "cpu", "--overwrite", *ALL_OUTPUTS,
               "--json-progress", "--stop-when-stdin-closes", stdin=subprocess.PIPE)
    for line in run.stdout:  # the run is under way: it has read the CT
        if json.loads(line).get("event") == "progress":
            break
    if dead == "stdin and stderr":
        run.stderr.close()
    run.stdin.close()
    events = [json.loads(line) for line in run.stdout]
    err = "" if run.stderr.closed else run.stderr.read()
    assert run.wait(timeout=120) == cli.EXIT_TERMINATED, (events[-3:], err)
    assert events[-1] == {"event": "interrupted", "exit_code": cli.EXIT_TERMINATED, "written": []}
    if dead == "stdin":
        assert err.splitlines()[-2:] == [
            "Standard input closed (the program that started this run has ended): stopping.",
            interrupted_message(type("E", (), {"signum": signal.SIGTERM})())], err
    assert contents(out) == contents(before)
