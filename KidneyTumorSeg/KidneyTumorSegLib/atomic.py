"""Atomic file output: every file and folder this project writes appears whole or not at all.

Also the one check of an output path before writing (``check_output``, ``check_outputs_free``,
``prepare_outputs``), so every writer refuses with the same words, the one wording of a failed write
(``write_error_message``), and :class:`OutputSet`: the files of one result appear together or not at all.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from .entry import record_written
from .errors import InputError, OutputError

PathLike = Union[str, os.PathLike]
TEMP_NAME_KEEP = 40  # characters of a file name kept in its temporary name
# errno -> (cause, what to do), for the one sentence a failed write gets
WRITE_CAUSES = {
    errno.ENOSPC: ("the disk is full", "free some space or choose another output folder"),
    getattr(errno, "EDQUOT", -1): ("the disk quota is used up", "free some space or choose another output folder"),
    errno.EFBIG: ("the file would exceed the file-size limit of this process (ulimit -f)",
                  "raise the limit or write somewhere else"),
    errno.EACCES: ("permission denied", "choose a folder you may write to"),
    errno.EPERM: ("the operation is not permitted", "choose a folder you may write to"),
    errno.EROFS: ("the file system is read-only", "choose a writable output folder"),
    errno.ENOTDIR: ("part of the path is a file, not a folder", "choose a folder path"),
    errno.ENAMETOOLONG: ("the name is too long for the file system", "shorten the input's name or the output path"),
    errno.EISDIR: ("a folder of that name is in the way", "move it or choose another output folder"),
}


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
    try:  # the name is cut so that a name that fits also fits with the temporary name's additions
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name[:TEMP_NAME_KEEP]}.", suffix=suffix)
    except OSError as exc:
        if exc.errno is not None:
            exc.filename = str(out)
        raise
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, out)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp):
            exc.filename = str(out)  # the user knows the file by its name, not by the temporary one
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
    existing = [str(p) for p in paths if os.path.lexists(p)]  # lexists: False, not an error, for a name too long
    if existing and not overwrite:
        raise InputError(f"Output {existing[0]} already exists; choose another output folder or pass "
                         "--overwrite.")


def write_error_message(exc: OSError, path: PathLike, action: str = "write") -> str:
    """One sentence for a failed write: the path, the cause in words, and what to do."""
    cause, remedy = WRITE_CAUSES.get(exc.errno, ((exc.strerror or str(exc) or "unknown error").rstrip("."),
                                                 "check the output folder"))
    return f"Could not {action} {path}: {cause}; {remedy}."


def probe_write(folder: PathLike, size: int) -> Optional[OSError]:
    """Write ``size`` bytes to a nameless temporary file in ``folder`` and return the OSError that stopped it
    (None if none did). Libraries that write from C++ (ITK) say that a write failed but not why; the same
    write from Python gets the reason (disk full, file-size limit, read-only, ...)."""
    block = b"\0" * min(max(size, 1), 1 << 20)
    try:
        with tempfile.TemporaryFile(dir=folder) as f:
            fd, left = f.fileno(), max(size, 1)
            while left > 0:
                left -= os.write(fd, block[:left])
            os.fsync(fd)
    except OSError as exc:
        return exc
    return None


def _first_existing(path: Path) -> Path:
    return next(p for p in [path, *path.parents] if os.path.lexists(p))


def prepare_folder(folder: PathLike) -> List[Path]:
    """Create ``folder`` (and missing parents) and check that files can be made in it, before any work;
    OutputError (one sentence) when it cannot be used. Returns the folders it created, deepest first, for
    :func:`remove_empty_folders` when the run fails."""
    folder = Path(folder)
    existing = _first_existing(folder)
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"lies below {existing}, which is a file"
        raise OutputError(f"Output folder {folder} {where}, not a folder; choose another output folder.")
    created = [p for p in [folder, *folder.parents] if not os.path.lexists(p)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".kidney-tumor-seg-probe-", dir=folder))
    except OSError as exc:
        remove_empty_folders(created)
        raise OutputError(write_error_message(exc, folder, "write into")) from exc
    return created


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove each folder (deepest first) if it is empty; one that is not empty, or gone, stays as it is."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            pass


def prepare_outputs(paths: Iterable[PathLike]) -> List[Path]:
    """:func:`prepare_folder` for the folders of ``paths``, and each name checked against the file system's
    limit, so a name that cannot be written is refused before any work. Returns the folders created."""
    paths = [Path(p) for p in paths]
    created: List[Path] = []
    for folder in dict.fromkeys(p.parent for p in paths):
        created += prepare_folder(folder)
    for p in paths:
        try:
            limit = os.pathconf(p.parent, "PC_NAME_MAX")
        except (AttributeError, OSError, ValueError):
            limit = 255
        too_long = len(os.fsencode(p.name)) > limit
        if too_long or (os.path.isdir(p) and not os.path.islink(p)):
            remove_empty_folders(created)
            exc = OSError(errno.ENAMETOOLONG if too_long else errno.EISDIR, "", str(p))
            raise OutputError(write_error_message(exc, f"{p.parent}/{p.name[:40]}..." if too_long else p))
    return created


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends: a set of renames or a cleanup is never cut in half. A
    signal that came meanwhile goes to the previous handler when the block ends. (Python-level: a signal mask
    would not do, as the kernel hands a blocked signal to another thread, e.g. one of torch's. Only the main
    thread can set handlers; elsewhere the block runs unprotected.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: List[int] = []
    wanted = [s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None]
    previous: Dict[int, Any] = {}
    try:  # swapped inside the try: a signal between the two swaps still gets the first handler restored
        for s in wanted:
            previous[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if pending:  # handled now, as it would have been during the block
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler in (signal.SIG_DFL, None):
                os.kill(os.getpid(), pending[0])


@contextlib.contextmanager
def folder_lock(folder: PathLike) -> Iterator[None]:
    """Exclusive lock on ``folder`` between processes while the block runs: flock on the folder itself, so no
    lock file is left behind (POSIX; where fcntl is missing, Windows, the block runs unlocked)."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): unlocked, as on Windows
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


class OutputSet:
    """The files of one result (a case's label map, .seg.nrrd, picture, report, ...): all of them or none.

    ``with OutputSet(paths, overwrite) as staged:`` gives, for each key of ``paths`` (final files in one
    folder), the same file name in a hidden staging folder beside them; the writers write there. When the
    block ends without error the written files are renamed into place as a set, under a lock on the folder
    and with SIGINT/SIGTERM deferred; files they replace (``overwrite``) are moved aside first and put back
    if a rename fails. On any error or interrupt the staging folder is removed. So the folder holds the
    complete new set or exactly what it held before, and a file that appeared meanwhile (another run) is
    never replaced without ``overwrite``. An OSError leaves as an OutputError naming the final path.
    ``committed``: the keys written, with their final paths. ``drop_unwritten``: keys whose earlier file is
    removed (with ``overwrite``, as part of the set) when this run did not write it, e.g. the surface of a
    segment the new result lacks.
    """

    def __init__(self, paths: Mapping[str, PathLike], overwrite: bool = False, drop_unwritten: Iterable[str] = ()):
        self.paths = {key: Path(p) for key, p in paths.items()}
        self.drop_unwritten = set(drop_unwritten)
        folders = {p.parent for p in self.paths.values()}
        if len(folders) != 1:
            raise ValueError(f"An OutputSet writes into one folder, not {sorted(map(str, folders))}.")
        self.folder, self.overwrite = folders.pop(), overwrite
        self.staging: Optional[Path] = None
        self.committed: Dict[str, Path] = {}
        self.keep_staging = False  # set when a rollback could not put a previous file back

    def __enter__(self) -> Dict[str, Path]:
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=".kidney-tumor-seg-", suffix=".partial", dir=self.folder))
        except OSError as exc:
            raise OutputError(write_error_message(exc, self.folder, "write into")) from exc
        return {key: self.staging / p.name for key, p in self.paths.items()}

    def __exit__(self, kind, exc, tb) -> bool:
        with signals_deferred():  # a signal during the renames is handled after them: the set is in place, noted
            try:
                if exc is None:
                    self._commit()
                    record_written(self.committed.values())
            except OSError as err:
                raise OutputError(write_error_message(err, self.shown(err.filename))) from err
            finally:
                if not self.keep_staging:
                    shutil.rmtree(self.staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(write_error_message(exc, self.shown(exc.filename))) from exc
        return False

    def shown(self, filename: Optional[PathLike]) -> Path:
        """The path to name in a message: a staged file by its final place."""
        if filename is None:
            return self.folder
        path = Path(os.fsdecode(filename))
        return self.folder / path.name if path.parent == self.staging else path

    def _commit(self) -> None:
        moved: List[tuple] = []  # (final path, the previous file moved aside or None)
        with folder_lock(self.folder):
            try:
                for i, (key, final) in enumerate(self.paths.items()):
                    staged = self.staging / final.name
                    if not os.path.lexists(staged):  # an optional output that was not written
                        if key in self.drop_unwritten and self.overwrite and os.path.isfile(final):
                            os.replace(final, self.staging / f".previous-{i}")  # deleted with the staging
                            moved.append((final, self.staging / f".previous-{i}"))  # folder, or put back
                        continue
                    previous = None
                    if os.path.lexists(final):
                        if final.is_dir() and not final.is_symlink():
                            raise OSError(errno.EISDIR, "Is a directory", str(final))
                        if not self.overwrite:
                            raise OutputError(f"Output {final} appeared while this run was computing (another run "
                                              "writing into the same folder?); this run kept nothing: choose "
                                              "another output folder or pass --overwrite.")
                        previous = self.staging / f".previous-{i}"
                        os.replace(final, previous)
                    moved.append((final, previous))
                    os.replace(staged, final)
                    self.committed[key] = final
            except BaseException:
                self._roll_back(moved)
                raise

    def _roll_back(self, moved: List[tuple]) -> None:
        for final, previous in reversed(moved):
            try:
                if previous is not None:
                    os.replace(previous, final)
                elif os.path.lexists(final):
                    os.remove(final)
            except OSError:
                self.keep_staging = True  # the previous file is still in the staging folder: do not delete it
        self.committed = {}
