"""Resumable, SHA-256-verified downloads over HTTP(S), with urllib only (no extra dependency).

``download()``: the file grows as ``DEST.part``; a rerun asks the server for the rest (HTTP Range) and
appends. SHA-256 (and size) are checked before the ``.part`` is renamed to DEST, so DEST is always
complete. A wrong checksum removes the ``.part`` (its bytes are bad, resuming would keep them); a cut
connection keeps it for the next run. Used for model files (``models.py``) and training data.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Union

USER_AGENT = "KidneyTumorSeg/1 (urllib)"
Progress = Callable[[int, Optional[int]], None]   # (bytes so far, total bytes or None)
PathLike = Union[str, os.PathLike]


class DownloadError(RuntimeError):
    """A download that did not produce a verified file; the message says what happened and what to do."""


class ChecksumError(DownloadError):
    pass


class IncompleteDownloadError(DownloadError):
    """Transfer cut short; the .part file is kept, so rerunning resumes it."""


class UnreachableError(DownloadError):
    """No connection at all (no network, DNS failure, refused): retrying at once will not help."""


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _content_range_start(value: Optional[str]) -> Optional[int]:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _total_from_headers(resp, offset: int) -> Optional[int]:
    m = re.match(r"bytes \d+-\d+/(\d+)", resp.headers.get("Content-Range") or "")
    if m:
        return int(m.group(1))
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _unreachable(url: str, reason) -> UnreachableError:
    host = urllib.request.urlparse(url).netloc
    return UnreachableError(f"Cannot reach {host} ({reason}): check the network connection or proxy "
                            f"settings, then rerun (or download {url} by hand).")


def download(url: str, dest: PathLike, sha256: Optional[str] = None, expected_size: Optional[int] = None,
             progress: Optional[Progress] = None, chunk: int = 1 << 20, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, rename; returns ``dest``.

    An existing ``dest`` is kept when it matches ``sha256`` (or, without one, ``expected_size`` / any size):
    reruns skip finished files. One that does not match raises ChecksumError and is left untouched (it is
    the user's file: delete it to download again).
    """
    dest = Path(dest)
    sha256 = sha256.lower() if sha256 else None
    if dest.exists():
        if sha256 and sha256_file(dest) != sha256:
            raise ChecksumError(f"{dest} exists but its SHA-256 does not match the expected {sha256}; delete it "
                                "and rerun to download it again.")
        if expected_size is not None and dest.stat().st_size != expected_size:
            raise ChecksumError(f"{dest} exists but has {dest.stat().st_size} bytes, not {expected_size}; "
                                "delete it and rerun.")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:  # not a prefix of the file we want
        part.unlink()
        offset = 0
    total = expected_size
    if total is None or offset < total:
        total = _fetch(url, part, offset, expected_size, progress, chunk, timeout)
    return _finish(url, part, dest, sha256, total)


def _fetch(url, part: Path, offset: int, expected_size, progress, chunk, timeout) -> Optional[int]:
    """Append the rest of ``url`` to ``part``; returns the total size (None when the server did not say)."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after offset: the .part is already the whole file
            return offset
        raise DownloadError(f"The server answered {exc.code} {exc.reason} for {url}; check the URL / case "
                            "number (the file may not exist there).") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (ConnectionError, socket.gaierror, OSError)) and not isinstance(reason, socket.timeout):
            raise _unreachable(url, reason) from None
        raise IncompleteDownloadError(f"Connection to {url} failed ({reason}); rerun to retry.") from None
    except (socket.timeout, TimeoutError) as exc:
        raise IncompleteDownloadError(f"No answer from {url} within {timeout:g} s ({exc}); rerun to retry.") from None
    except (ConnectionError, http.client.HTTPException) as exc:  # urlopen does not wrap getresponse() errors
        raise IncompleteDownloadError(f"Connection to {url} dropped before the answer ({type(exc).__name__}); "
                                      "rerun to retry.") from None
    with resp:
        mode = "ab"
        if offset and resp.status == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(f"The server sent bytes from {start}, not {offset}, for {url}; delete "
                                    f"{part} and rerun.")
        elif offset:  # 200: server ignored Range; start over rather than append a second copy
            mode, offset = "wb", 0
        total = _total_from_headers(resp, offset)
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(f"{url} is {total} bytes, not the expected {expected_size}; the file on the "
                                "server changed or the manifest is wrong.")
        done = offset
        try:
            with open(part, mode) as f:
                while True:
                    block = resp.read(chunk)
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, socket.timeout, ConnectionError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, ConnectionError):
                raise  # a local write error (disk full, permissions), not the network
            raise IncompleteDownloadError(f"Download of {url} was interrupted at {done} bytes ({exc}); the "
                                          f"partial file {part} is kept: rerun to resume.") from None
        except Exception as exc:  # http.client.IncompleteRead and friends
            raise IncompleteDownloadError(f"Download of {url} was interrupted at {done} bytes "
                                          f"({type(exc).__name__}); the partial file {part} is kept: rerun "
                                          "to resume.") from None
    # http.client returns b"" (no error) when the server closes early, so the length is checked here.
    if total is not None and done < total:
        raise IncompleteDownloadError(f"Download of {url} stopped at {done} of {total} bytes (connection "
                                      f"closed); the partial file {part} is kept: rerun to resume.")
    return total if total is not None else done


def _finish(url, part: Path, dest: Path, sha256: Optional[str], total: Optional[int]) -> Path:
    size = part.stat().st_size
    if total is not None and size != total:
        part.unlink()
        raise ChecksumError(f"{part} has {size} bytes but {url} has {total}; the partial file was removed: "
                            "rerun to download it again.")
    if sha256:
        got = sha256_file(part)
        if got != sha256:
            part.unlink()
            raise ChecksumError(f"Checksum mismatch for {url}: expected SHA-256 {sha256}, got {got}. The "
                                "downloaded file was removed (no corrupt file was kept); rerun to download it "
                                "again, and if it fails again the file on the server or the manifest differs.")
    # Not atomic.atomic_output: the .part is resume state that must outlive a failure, not a temporary file.
    os.replace(part, dest)
    return dest


# -- KiTS23 ------------------------------------------------------------------------------------------------
