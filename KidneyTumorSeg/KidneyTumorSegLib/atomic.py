"""Atomic file output: every file and folder this project writes appears whole or not at all.

Also the one check of an output path before writing (``check_output``, ``check_outputs_free``), so every
writer refuses with the same words.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

from .errors import InputError

PathLike = Union[str, os.PathLike]


def _read_umask() -> int:
    umask = os.umask(0)  # the only portable way to read it is to set it; put it back at once
    os.umask(umask)
    return umask


# Read once, at import: setting the umask briefly to 0 while other threads create files would be a race.
_UMASK = _read_umask()


def default_mode(directory: bool = False) -> int:
    """The permissions a plain open/mkdir would give under the umask (mkstemp/mkdtemp give 0600/0700,
    which would hide outputs, e.g. a shipped model folder, from other users)."""
    return (0o777 if directory else 0o666) & ~_UMASK


@contextlib.contextmanager
def atomic_output(path: PathLike, suffix: str = "", fsync: bool = False) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; when the block succeeds it replaces ``path``.

    The temporary file is in the destination folder (same file system), so ``os.replace`` is an atomic
    rename: readers see the old file or the new one, never half of one. On any error, Ctrl+C included, the
    temporary file is removed. ``suffix`` keeps the extension for writers that choose the format by it.
    ``fsync``: force the bytes to disk before the rename (release files that must survive a power cut).
    Whether ``path`` may be replaced is checked by the caller (``check_output`` for user outputs).
    """
    out = Path(path)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: PathLike, text: str, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8, line endings as given) atomically."""
    with atomic_output(path, fsync=fsync) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def write_csv(path: PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, Any]], **options: Any) -> None:
    """Write ``rows`` (dicts) under a header of ``columns`` atomically; ``options`` go to ``csv.DictWriter``
    (e.g. ``lineterminator``, ``extrasaction``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), **options)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; when the block succeeds it becomes ``path``.

    An existing ``path`` is moved aside, the staging folder renamed into place, then the old one removed;
    if the rename fails the old folder is put back. On any error the staging folder is removed, so a crash
    never leaves a half-written folder at ``path``.
    """
    final = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".staging", dir=final.parent))
    try:
        yield staging
        os.chmod(staging, default_mode(directory=True))
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        try:
            os.replace(staging, final)
        except OSError:
            if old is not None:  # put the previous folder back rather than leave nothing
                os.replace(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def check_output(path: Path, overwrite: bool) -> None:
    """InputError unless ``path`` may be written: it must not exist (unless ``overwrite``) and its folder
    must (writers do not create folders the user may have mistyped)."""
    if path.exists() and not overwrite:
        raise InputError(f"Output '{path}' already exists; choose another path or allow overwriting.")
    if not path.parent.is_dir():
        raise InputError(f"Output folder '{path.parent}' does not exist; create it first.")


def check_outputs_free(paths: Iterable[Path], overwrite: bool) -> None:
    """InputError naming the first of a case's output files that exists (unless ``overwrite``): checked
    before any work, so a run that would stop at its first write does not run at all."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise InputError(f"Output {existing[0]} already exists; choose another output folder or pass "
                         "--overwrite.")
