"""Faults during a run (issue #17): an interrupt in any phase, a write that fails, two runs into one folder.

Each ends with the documented exit code and one sentence, and leaves the output folder holding a complete
set of outputs or exactly what it held before (a fresh folder: nothing at all). The interrupts are real
signals (SIGINT, SIGTERM) sent to the running process at the named moment; the write failures are real too:
a path below a file, a name too long, the file-size limit (RLIMIT_FSIZE), and, where this machine allows
user namespaces (``unshare``), a full disk and a read-only file system (small tmpfs mounts) and a folder
without write permission (as a user other than root).
"""
import contextlib
import hashlib
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
from phantoms import write_small_ct

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "KidneyTumorSeg"), os.environ.get("PYTHONPATH", "")]))
ALL_OUTPUTS = ("--qc", "--measure", "--probabilities")
SET = ["ct.nii.gz", "ct.seg.nrrd", "ct_measurements.csv", "ct_measurements.json", "ct_prob_cyst.nii.gz",
       "ct_prob_kidney.nii.gz", "ct_prob_tumor.nii.gz", "ct_qc.png", "ct_report.html"]
RAW = ("Traceback", "[nrrd]", "ITK ERROR", "Errno")  # never shown to the user


def contents(folder: Path):
    """{relative path: SHA-256} of every file below ``folder``, hidden ones included; None if it is gone."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} | {
           str(p.relative_to(folder)) + "/": "" for p in folder.rglob("*") if p.is_dir()}


def one_error_line(err: str) -> str:
    """The run's closing message: exactly one line that is not progress output."""
    lines = [l for l in err.splitlines() if l.strip() and "%" not in l and not l.startswith("warning: unverified")]
    assert len(lines) == 1, err
    assert not any(raw in err for raw in RAW), err
    return lines[0]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, model_dir):
    """A small CT and a folder holding the complete set of outputs of an earlier run."""
    root = tmp_path_factory.mktemp("faults")
    ct = root / "ct.nii.gz"
    write_small_ct(ct)
    out = root / "earlier"
    assert cli.main(["segment", str(ct), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
                     *ALL_OUTPUTS]) == 0
    assert sorted(os.listdir(out)) == SET
    return ct, out


def _signal_after(module, name, signum, monkeypatch):
    """Replace module.name by a wrapper that calls it and then signals this process."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), signum)
        return result
    monkeypatch.setattr(module, name, wrapper)


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
                     "--qc"]) == 130
    assert "Interrupted by Ctrl+C" in one_error_line(capsys.readouterr().err)
    assert sorted(os.listdir(out)) == ["ct.nii.gz", "ct.seg.nrrd", "ct_qc.png"]  # complete: renamed, then stopped


def test_output_folder_below_a_file_is_refused_before_any_work(earlier, model_dir, tmp_path, capsys):
    ct, _ = earlier
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "notes.txt" / "out"
    assert cli.main(["segment", str(ct), "-o", str(out), "--model", str(model_dir)]) == cli.EXIT_INPUT
    assert one_error_line(capsys.readouterr().err) == (
        f"error: Output folder {out} lies below {tmp_path / 'notes.txt'}, which is a file, not a folder; "
        "choose another output folder.")
    assert os.listdir(tmp_path) == ["notes.txt"]
    assert cli.main(["measure", str(ct), "-o", str(out)]) == cli.EXIT_INPUT  # measure checks the same way
    assert "lies below" in capsys.readouterr().err


def test_a_name_too_long_for_the_file_system_is_refused_before_any_work(model_dir, tmp_path, capsys):
    ct = tmp_path / ("c" * 245 + ".nii.gz")  # fits; NAME_measurements.json does not (255 bytes at most)
    write_small_ct(ct)
    out = tmp_path / "out"
    code = cli.main(["segment", str(ct), "-o", str(out), "--model", str(model_dir), "--measure"])
    assert code == cli.EXIT_INPUT
    assert "the name is too long for the file system; shorten the input's name or the output path." in \
        one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_a_folder_where_an_output_file_goes_is_refused(earlier, model_dir, tmp_path, capsys):
    ct, _ = earlier
    out = tmp_path / "out"
    (out / "ct.seg.nrrd").mkdir(parents=True)
    code = cli.main(["segment", str(ct), "-o", str(out), "--model", str(model_dir), "--overwrite"])
    assert code == cli.EXIT_INPUT
    assert one_error_line(capsys.readouterr().err) == (
        f"error: Could not write {out / 'ct.seg.nrrd'}: a folder of that name is in the way; move it or "
        "choose another output folder.")
    assert contents(out) == {"ct.seg.nrrd/": ""}


def test_a_set_that_appears_meanwhile_is_kept_and_this_run_drops_its_own(earlier, model_dir, tmp_path,
                                                                         monkeypatch, capsys):
    """Another run finishes into the same folder while this one computes: its set stays, whole."""
    ct, earlier_out = earlier
    out = tmp_path / "out"
    original = cascade_module.postprocess

    def other_run_finishes(*args, **kwargs):
        shutil.copytree(earlier_out, out, dirs_exist_ok=True)
        return original(*args, **kwargs)
    monkeypatch.setattr(cascade_module, "postprocess", other_run_finishes)
    code = cli.main(["segment", str(ct), "-o", str(out), "--model", str(model_dir), "--device", "cpu", "--qc"])
    assert code == cli.EXIT_INPUT
    assert f"error: Output {out / 'ct.nii.gz'} appeared while this run was computing" in \
        one_error_line(capsys.readouterr().err)
    assert contents(out) == contents(earlier_out)


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "KidneyTumorSegLib", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_two_runs_into_one_folder_leave_one_complete_set(earlier, model_dir, tmp_path):
    ct, _ = earlier
    out = tmp_path / "out"
    runs = [_cli("segment", ct, "-o", out, "--model", model_dir, "--device", "cpu") for _ in range(2)]
    results = sorted((run.wait(timeout=300), run.stderr.read()) for run in runs)
    assert [code for code, _ in results] == [cli.EXIT_OK, cli.EXIT_INPUT], results
    message = one_error_line(results[1][1])
    assert f"{out}/ct." in message and ("already exists" in message or "appeared while" in message), message
    assert sorted(os.listdir(out)) == ["ct.nii.gz", "ct.seg.nrrd"]  # one set, no staging folder left


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
    assert events[-1] == {"event": "interrupted", "exit_code": cli.EXIT_TERMINATED}
    if dead == "stdin":
        assert err.splitlines()[-2:] == [
            "Standard input closed (the program that started this run has ended): stopping.",
            interrupted_message(type("E", (), {"signum": signal.SIGTERM})())], err
    assert contents(out) == contents(before)


RUNNER = r"""
import contextlib, hashlib, io, json, os, resource, shutil, sys
from KidneyTumorSegLib import cli
results = []
for case in json.loads(sys.argv[1]):
    if case.get("copy"):
        shutil.copytree(case["copy"], case["folder"], dirs_exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    err = io.StringIO()
    try:
        if case.get("fsize"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], hard))
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(case["args"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    paths = [os.path.join(d, n) for d, _, names in os.walk(case["folder"]) for n in names]
    files = None if not os.path.exists(case["folder"]) else {
        os.path.relpath(p, case["folder"]): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}
    results.append({"code": code, "err": err.getvalue(), "files": files})
print(json.dumps(results))
"""


def _run_cases(cases, wrapper=()):
    """Several command lines in one Python process (one torch import), inside ``wrapper`` (e.g. unshare)."""
    done = subprocess.run([*wrapper, sys.executable, "-c", RUNNER, json.dumps(cases)], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(raw in done.stderr for raw in ("[nrrd]", "ITK")), done.stderr  # nothing past Python either
    return json.loads(done.stdout.splitlines()[-1])


def _hashes(folder: Path):
    return {k: v for k, v in (contents(folder) or {}).items() if not k.endswith("/")}


def test_file_size_limit_keeps_the_earlier_outputs_exactly(earlier, model_dir, tmp_path):
    """RLIMIT_FSIZE between the sizes of the label map and the .seg.nrrd: the label map is written, the
    .seg.nrrd is not (ITK: "couldn't write gzip data"); the --overwrite rerun must then leave the earlier
    set as it was, not a new label map beside an old .seg.nrrd."""
    ct, earlier_out = earlier
    sizes = [(earlier_out / name).stat().st_size for name in ("ct.nii.gz", "ct.seg.nrrd")]
    assert sizes[0] < sizes[1]
    out = tmp_path / "out"
    args = ["segment", str(ct), "-o", str(out), "--model", str(model_dir), "--device", "cpu", *ALL_OUTPUTS]
    [result] = _run_cases([{"args": args + ["--overwrite"], "folder": str(out), "copy": str(earlier_out),
                            "fsize": sum(sizes) // 2}])
    assert result["code"] == cli.EXIT_INPUT
    assert one_error_line(result["err"]) == (
        f"error: Could not write {out / 'ct.seg.nrrd'}: the file would exceed the file-size limit of this "
        "process (ulimit -f); raise the limit or write somewhere else.")
    assert result["files"] == _hashes(earlier_out)


def _namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _namespaces_work(), reason="needs unprivileged user namespaces (unshare -rm)")
def test_full_disk_and_read_only_file_system(earlier, model_dir, tmp_path):
    ct, earlier_out = earlier
    mounts = {name: tmp_path / name for name in ("full", "half", "readonly")}
    for folder in mounts.values():
        folder.mkdir()
    base = ["segment", str(ct), "--model", str(model_dir), "--device", "cpu", *ALL_OUTPUTS]
    cases = [{"args": base + ["-o", str(mounts["full"] / "out")], "folder": str(mounts["full"] / "out")},
             {"args": base + ["-o", str(mounts["half"] / "out"), "--overwrite"], "folder": str(mounts["half"] / "out"),
              "copy": str(earlier_out)},
             {"args": base + ["-o", str(mounts["readonly"] / "out")], "folder": str(mounts["readonly"] / "out")}]
    size_kb = sum(p.stat().st_size for p in earlier_out.iterdir()) // 1024 + 8 * len(SET) + 64
    script = (f"mount -t tmpfs -o size=64k tmpfs {mounts['full']} && "  # room for a few files, not all
              f"mount -t tmpfs -o size={size_kb}k tmpfs {mounts['half']} && "  # the earlier set fits, two do not
              f"mount -t tmpfs -o ro tmpfs {mounts['readonly']} && exec \"$@\"")
    full, half, readonly = _run_cases(cases, wrapper=("unshare", "-rm", "sh", "-c", script, "sh"))
    for result in (full, half):
        assert result["code"] == cli.EXIT_INPUT
        message = one_error_line(result["err"])
        assert message.startswith("error: Could not write ") and message.endswith(
            ": the disk is full; free some space or choose another output folder."), message
    assert full["files"] is None  # the folder this run made is gone again
    assert half["files"] == _hashes(earlier_out)
    assert readonly["code"] == cli.EXIT_INPUT and one_error_line(readonly["err"]) == (
        f"error: Could not write into {mounts['readonly'] / 'out'}: the file system is read-only; choose a "
        "writable output folder.")


def _other_user_works() -> bool:
    if os.geteuid() != 0:
        return True  # not root: a folder without write permission is refused as it is
    try:
        return subprocess.run(["unshare", "--map-user=1000", "--map-group=1000", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _other_user_works(), reason="root, and no user namespace to run as another user")
def test_folder_without_write_permission(earlier, model_dir, tmp_path):
    ct, _ = earlier
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    out = locked / "out"
    args = ["segment", str(ct), "-o", str(out), "--model", str(model_dir), "--device", "cpu"]
    as_other = ("unshare", "--map-user=1000", "--map-group=1000") if os.geteuid() == 0 else ()
    [result] = _run_cases([{"args": args, "folder": str(out)}], wrapper=as_other)
    assert result["code"] == cli.EXIT_INPUT and result["files"] is None
    assert one_error_line(result["err"]) == (
        f"error: Could not write into {out}: permission denied; choose a folder you may write to.")


def test_measure_mesh_overwrite_replaces_the_surfaces_as_a_set(tmp_path, monkeypatch, capsys):
    """measure --mesh: an interrupted --overwrite rerun keeps every earlier file (the tumor surface too); a
    finished one drops the surface of the tumor the new label map lacks."""
    import numpy as np
    from KidneyTumorSegLib.geometry import Geometry
    from KidneyTumorSegLib.image_io import write_labelmap
    from phantoms import ellipsoid_labels
    labels = ellipsoid_labels((24, 40, 36))
    geometry = Geometry((2.0, 2.0, 2.0))
    for folder in ("with", "without"):
        (tmp_path / folder).mkdir()
    write_labelmap(labels, geometry, tmp_path / "with" / "case.nii.gz")
    write_labelmap(np.where(labels == 2, 1, labels).astype(np.uint8), geometry, tmp_path / "without" / "case.nii.gz")
    out = tmp_path / "out"
    assert cli.main(["measure", str(tmp_path / "with" / "case.nii.gz"), "-o", str(out), "--mesh"]) == 0
    earlier = contents(out)
    assert any("tumor" in name for name in earlier)
    rerun = ["measure", str(tmp_path / "without" / "case.nii.gz"), "-o", str(out), "--mesh", "--overwrite"]
    with monkeypatch.context() as mp:
        _signal_after(cli, "write_segment_surfaces", signal.SIGTERM, mp)
        assert cli.main(rerun) == cli.EXIT_TERMINATED
    assert contents(out) == earlier
    capsys.readouterr()
    assert cli.main(rerun) == 0
    fresh = tmp_path / "fresh"
    assert cli.main(rerun[:3] + [str(fresh), "--mesh"]) == 0
    assert set(contents(out)) == set(contents(fresh))  # the files of a first run: no tumor surface left over
