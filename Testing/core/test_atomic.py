"""atomic.py: files and folders appear whole or not at all; a failed write leaves no temporary file."""
import os

import pytest

from KidneyTumorSegLib.atomic import (atomic_folder, atomic_output, check_output, check_outputs_free,
                                      default_mode, write_text)
from KidneyTumorSegLib.errors import InputError


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
