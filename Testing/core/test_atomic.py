"""atomic.py: files, folders and sets of files appear whole or not at all; a failed write leaves no temporary
file and is told in one sentence naming the file and the cause."""
import errno
import os

import pytest

from KidneyTumorSegLib.atomic import (OutputSet, atomic_folder, atomic_output, check_output, check_outputs_free,
                                      default_mode, folder_lock, prepare_folder, prepare_outputs, probe_write,
                                      remove_empty_folders, write_error_message, write_text)
from KidneyTumorSegLib.errors import InputError, OutputError


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "a.txt"
    write_text(out, "old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(out, suffix=".txt") as tmp:
            assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".txt")
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == ["a.txt"] and out.read_text() == "old\n"


def test_write_text_gives_plain_file_permissions(tmp_path):
    out = tmp_path / "b.json"
    write_text(out, "{}\r\n", fsync=True)  # line endings as given
    assert out.read_bytes() == b"{}\r\n"
    assert out.stat().st_mode & 0o777 == default_mode() == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_folder_replaces_the_old_folder_or_leaves_it(tmp_path):
    final = tmp_path / "model"
    with atomic_folder(final) as staging:
        write_text(staging / "v", "1")
        assert not final.exists()  # nothing at the final name until the block succeeds
    assert (final / "v").read_text() == "1" and final.stat().st_mode & 0o777 == default_mode(True)
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(final) as staging:
            write_text(staging / "v", "2")
            raise KeyboardInterrupt
    with atomic_folder(final) as staging:
        write_text(staging / "w", "3")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(final) == ["w"]  # no staging or old copy left


def test_output_checks_say_what_to_do(tmp_path):
    (tmp_path / "x.nrrd").write_text("")
    with pytest.raises(InputError, match="already exists; choose another path or allow overwriting"):
        check_output(tmp_path / "x.nrrd", overwrite=False)
    check_output(tmp_path / "x.nrrd", overwrite=True)
    with pytest.raises(InputError, match="does not exist; create it first"):
        check_output(tmp_path / "missing" / "y.nrrd", overwrite=True)
    with pytest.raises(InputError, match=r"Output .*x.nrrd already exists; .* pass --overwrite"):
        check_outputs_free([tmp_path / "none.nrrd", tmp_path / "x.nrrd"], overwrite=False)
    check_outputs_free([tmp_path / "x.nrrd"], overwrite=True)


def _write_set(staged, tag):
    for key, path in staged.items():
        write_text(path, f"{key} {tag}\n")


def test_output_set_appears_whole_and_leaves_no_staging_folder(tmp_path):
    paths = {"a": tmp_path / "x.nii.gz", "b": tmp_path / "x.seg.nrrd"}
    with OutputSet(paths) as staged:
        _write_set(staged, "new")
        assert os.listdir(tmp_path) == [staged["a"].parent.name]  # only the hidden staging folder so far
        assert staged["a"].parent.name.startswith(".") and staged["a"].name == "x.nii.gz"
    assert sorted(os.listdir(tmp_path)) == ["x.nii.gz", "x.seg.nrrd"]
    assert (tmp_path / "x.seg.nrrd").read_text() == "b new\n"


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_output_set_failure_keeps_the_earlier_files_exactly(tmp_path, failure):
    paths = {"a": tmp_path / "x.nii.gz", "b": tmp_path / "x.seg.nrrd", "c": tmp_path / "x_qc.png"}
    with OutputSet(paths) as staged:
        _write_set(staged, "old")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(failure):
        with OutputSet(paths, overwrite=True) as staged:
            _write_set({"a": staged["a"], "b": staged["b"]}, "new")
            raise failure()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_output_set_rolls_back_a_commit_that_fails_half_way(tmp_path, monkeypatch):
    paths = {"a": tmp_path / "x.nii.gz", "b": tmp_path / "x.seg.nrrd"}
    with OutputSet(paths) as staged:
        _write_set(staged, "old")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def replace(src, dst):  # the disk fills up while the second new file is renamed into place
        if str(dst).endswith("x.seg.nrrd") and ".partial" in str(src) and "previous" not in str(src):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match=r"Could not write .*x.seg.nrrd: the disk is full; free some space"):
        with OutputSet(paths, overwrite=True) as staged:
            _write_set(staged, "new")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_output_set_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    paths = {"a": tmp_path / "x.nii.gz", "b": tmp_path / "x.seg.nrrd"}
    with pytest.raises(OutputError, match="x.seg.nrrd appeared while this run was computing"):
        with OutputSet(paths) as staged:
            _write_set(staged, "mine")
            write_text(paths["b"], "another run's\n")  # another run finished first
    assert sorted(os.listdir(tmp_path)) == ["x.seg.nrrd"] and paths["b"].read_text() == "another run's\n"


def test_output_set_names_the_final_path_of_a_failed_write(tmp_path):
    paths = {"a": tmp_path / "x.csv"}
    with pytest.raises(OutputError, match=rf"^Could not write {tmp_path / 'x.csv'}: the file would exceed"):
        with OutputSet(paths) as staged:
            with atomic_output(staged["a"]) as tmp:
                raise OSError(errno.EFBIG, "File too large", tmp)
    assert os.listdir(tmp_path) == []


def test_prepare_folder_refuses_a_path_below_a_file_and_removes_what_it_made(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=r"Output folder .*file/out lies below .*file, which is a file, not a "
                                          "folder; choose another output folder."):
        prepare_folder(tmp_path / "file" / "out")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        prepare_folder(tmp_path / "file")
    created = prepare_folder(tmp_path / "new" / "deeper")
    assert created == [tmp_path / "new" / "deeper", tmp_path / "new"] and os.listdir(tmp_path / "new") == ["deeper"]
    remove_empty_folders(created)
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_prepare_outputs_refuses_names_the_file_system_cannot_hold(tmp_path):
    with pytest.raises(OutputError, match="the name is too long for the file system; shorten the input's name"):
        prepare_outputs([tmp_path / "out" / ("n" * 300 + ".nii.gz")])
    assert os.listdir(tmp_path) == []  # the folder it made for them is gone again


def test_write_error_messages_name_path_cause_and_remedy():
    cases = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied",
             errno.EROFS: "the file system is read-only", errno.ENOTDIR: "part of the path is a file",
             errno.EFBIG: "file-size limit", errno.ENAMETOOLONG: "name is too long"}
    for number, cause in cases.items():
        text = write_error_message(OSError(number, os.strerror(number)), "/out/x.nii.gz")
        assert text.startswith("Could not write /out/x.nii.gz: ") and cause in text and text.count(".") >= 2
    assert write_error_message(OSError(errno.EIO, "Input/output error"), "/o") == \
        "Could not write /o: Input/output error; check the output folder."


def test_probe_write_finds_why_a_write_fails(tmp_path):
    assert probe_write(tmp_path, 10) is None and os.listdir(tmp_path) == []
    assert probe_write(tmp_path / "missing", 10).errno == errno.ENOENT


@pytest.mark.skipif(os.name == "nt", reason="no flock on Windows")
def test_folder_lock_serialises_commits_and_leaves_no_file(tmp_path):
    import threading
    import time
    order = []

    def hold(name, seconds):
        with folder_lock(tmp_path):
            order.append(f"{name} in")
            time.sleep(seconds)
            order.append(f"{name} out")
    first = threading.Thread(target=hold, args=("a", 0.3))
    first.start()
    while not order:
        time.sleep(0.01)
    hold("b", 0)
    first.join()
    assert order == ["a in", "a out", "b in", "b out"] and os.listdir(tmp_path) == []


def test_output_set_drops_earlier_files_it_no_longer_writes_and_restores_them_on_failure(tmp_path, monkeypatch):
    """--mesh --overwrite: the surface of a tumor the new result lacks goes with the new set, not before it."""
    paths = {"tumor": tmp_path / "x_tumor.stl", "map": tmp_path / "x.nii.gz"}  # the drop comes first
    with OutputSet(paths) as staged:
        _write_set(staged, "old")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def replace(src, dst):  # the new label map cannot be renamed into place, after the tumor was dropped
        if str(dst).endswith("x.nii.gz") and "previous" not in str(src) and ".partial" in str(src):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match="x.nii.gz: Input/output error"):
        with OutputSet(paths, overwrite=True, drop_unwritten=["tumor"]) as staged:
            _write_set({"map": staged["map"]}, "new")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    with OutputSet(paths, overwrite=True, drop_unwritten=["tumor"]) as staged:
        _write_set({"map": staged["map"]}, "new")
    assert os.listdir(tmp_path) == ["x.nii.gz"] and paths["map"].read_text() == "map new\n"
