"""Atomic file output: every file this project writes appears whole or not at all."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_output(path: PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary file name beside ``path``; when the block succeeds it replaces ``path``.

    The temporary file is in the destination folder (same file system), so ``os.replace`` is an atomic
    rename: readers see the old file or the new one, never half of one. On any error, Ctrl+C included, the
    temporary file is removed. ``suffix`` keeps the extension for writers that choose the format by it.
    Checking whether ``path`` may be replaced is the caller's job (the messages differ per output).
    """
    out = Path(path)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be read like any other file
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, line endings as given) atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
