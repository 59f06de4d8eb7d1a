"""Resumable, verified downloads against a local HTTP server (127.0.0.1 only, stops with the test)."""
import hashlib
import http.server
import os
import re
import socket
import threading

import pytest

from training import download as dl
from KidneyTumorSegLib.download import (ChecksumError, DownloadError, IncompleteDownloadError, UnreachableError,
                                        download)

TIMEOUT = 5.0  # every request in this file; a hang fails fast instead of blocking the suite


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.root`` files with HTTP Range; ``server.drop[name] = n`` cuts the next answer after n
    body bytes (Content-Length still promises the whole file), once; ``server.ranges`` logs Range headers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        path = self.server.root / name
        self.server.ranges.append(self.headers.get("Range"))
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = self.server.drop.pop(name, None)
        if cut is not None:  # simulate a dropped connection mid-file
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    srv.root, srv.drop, srv.ranges = root, {}, []
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _publish(server, name="f.bin", size=300_000, seed=1):
    data = os.urandom(size) if seed is None else bytes((i * 7 + seed) % 251 for i in range(size))
    (server.root / name).write_bytes(data)
    return data, hashlib.sha256(data).hexdigest()


def test_success_with_checksum_and_progress(server, tmp_path):
    data, sha = _publish(server)
    seen = []
    out = download(server.url + "f.bin", tmp_path / "d" / "f.bin", sha256=sha, expected_size=len(data),
                   progress=lambda done, total: seen.append((done, total)), chunk=65536, timeout=TIMEOUT)
    assert out.read_bytes() == data and not (tmp_path / "d" / "f.bin.part").exists()
    assert seen[-1] == (len(data), len(data))
    # a finished, matching file is kept without asking the server again
    n = len(server.ranges)
    download(server.url + "f.bin", out, sha256=sha, timeout=TIMEOUT)
    assert len(server.ranges) == n


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    data, sha = _publish(server)
    server.drop["f.bin"] = 100_000
    dest = tmp_path / "f.bin"
    with pytest.raises(IncompleteDownloadError, match="rerun to resume"):
        download(server.url + "f.bin", dest, sha256=sha, chunk=8192, timeout=TIMEOUT)
    part = tmp_path / "f.bin.part"
    assert not dest.exists() and part.is_file() and part.stat().st_size == 100_000
    download(server.url + "f.bin", dest, sha256=sha, chunk=8192, timeout=TIMEOUT)
    assert server.ranges == [None, "bytes=100000-"]
    assert dest.read_bytes() == data and not part.exists()


def test_complete_part_is_finished_without_refetching(server, tmp_path):
    data, sha = _publish(server)
    (tmp_path / "f.bin.part").write_bytes(data)  # e.g. crash between the last byte and the rename
    download(server.url + "f.bin", tmp_path / "f.bin", sha256=sha, timeout=TIMEOUT)
    assert server.ranges == [f"bytes={len(data)}-"]  # answered 416: nothing left to send
    assert (tmp_path / "f.bin").read_bytes() == data


def test_wrong_checksum_removes_part_and_leaves_no_file(server, tmp_path):
    _publish(server)
    with pytest.raises(ChecksumError, match="Checksum mismatch.*removed") as err:
        download(server.url + "f.bin", tmp_path / "f.bin", sha256="0" * 64, timeout=TIMEOUT)
    assert "0" * 64 in str(err.value)
    assert list(tmp_path.iterdir()) == [server.root]


def test_404_names_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"404 .*" + re.escape(server.url + "missing.bin")):
        download(server.url + "missing.bin", tmp_path / "m.bin", timeout=TIMEOUT)
    assert not (tmp_path / "m.bin").exists() and not (tmp_path / "m.bin.part").exists()


def test_connection_refused_says_cannot_reach(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # a port nobody listens on (bound, not listening: connect is refused)
    port = s.getsockname()[1]
    try:
        with pytest.raises(UnreachableError, match=f"Cannot reach 127.0.0.1:{port}"):
            download(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin", timeout=TIMEOUT)
    finally:
        s.close()
    assert not (tmp_path / "x.bin").exists()


def test_kits23_command_downloads_writes_and_checks_a_manifest(server, tmp_path, capsys):
    blobs = {n: _publish(server, dl.KITS23_NAME.format(n), 5000 + n, seed=n)[0] for n in (0, 1, 400)}
    labels = tmp_path / "kits23" / "dataset" / "case_00001"
    labels.mkdir(parents=True)
    (labels / "segmentation.nii.gz").write_bytes(b"seg")
    root, manifest = tmp_path / "root", tmp_path / "sha256.txt"
    args = ["kits23", "-o", str(root), "--cases", "0-1,400", "--base-url", server.url, "--retries", "0"]
    assert dl.main(args + ["--write-manifest", str(manifest), "--labels-from", str(tmp_path / "kits23")]) == 0
    for n, data in blobs.items():
        assert (root / f"case_{n:05d}" / "imaging.nii.gz").read_bytes() == data
    assert (root / "case_00001" / "segmentation.nii.gz").read_bytes() == b"seg"
    assert "git clone https://github.com/neheller/kits23" in capsys.readouterr().err  # 2 cases lack labels
    hashes = dl.read_manifest(manifest)
    assert hashes["case_00400/imaging.nii.gz"] == hashlib.sha256(blobs[400]).hexdigest()
    # a later download against the manifest: a tampered server file is refused, the others verify
    (root / "case_00000" / "imaging.nii.gz").unlink()
    (server.root / dl.KITS23_NAME.format(0)).write_bytes(b"tampered")
    assert dl.main(args + ["--manifest", str(manifest)]) == 1
    assert "Checksum mismatch" in capsys.readouterr().err
    assert not (root / "case_00000" / "imaging.nii.gz").exists()


def test_parse_cases():
    assert dl.parse_cases("0-2,5,400-401") == [0, 1, 2, 5, 400, 401]
    assert len(dl.parse_cases(dl.KITS23_CASES)) == 489
    with pytest.raises(ValueError):
        dl.parse_cases("3-1")
