"""Faults during a run (issue #17): a write that fails, two runs into one folder, an interrupted measure --mesh.

Each ends with the documented exit code and one sentence, and leaves the output folder holding a complete
set of outputs or exactly what it held before (a fresh folder: nothing at all). The write failures are real:
a path below a file, a name too long, the file-size limit (RLIMIT_FSIZE), and, where this machine allows
user namespaces (``unshare``), a full disk and a read-only file system (small tmpfs mounts) and a folder
without write permission (as a user other than root). Interrupts in each phase: test_interrupts.py.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from KidneyTumorSegLib import cascade as cascade_module
from KidneyTumorSegLib import cli
from faults_common import ALL_OUTPUTS, ENV, SET, _cli, _signal_after, contents, one_error_line
from phantoms import write_small_ct


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


def test_two_runs_into_one_folder_leave_one_complete_set(earlier, model_dir, tmp_path):
    ct, _ = earlier
    out = tmp_path / "out"
    runs = [_cli("segment", ct, "-o", out, "--model", model_dir, "--device", "cpu") for _ in range(2)]
    results = sorted((run.wait(timeout=300), run.stderr.read()) for run in runs)
    assert [code for code, _ in results] == [cli.EXIT_OK, cli.EXIT_INPUT], results
    message = one_error_line(results[1][1])
    assert f"{out}/ct." in message and ("already exists" in message or "appeared while" in message), message
    assert sorted(os.listdir(out)) == ["ct.nii.gz", "ct.seg.nrrd"]  # one set, no staging folder left



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
