"""Registered models: shipped files are checked against their SHA-256; URL models are downloaded once into
the user cache, verified before use, and a failed download leaves no file behind."""
import functools
import hashlib
import http.server
import json
import shutil
import threading

import pytest

from KidneyTumorSegLib import models
from KidneyTumorSegLib.models import ModelError, registered_names, resolve_model


@pytest.fixture
def registry(tmp_path, monkeypatch, model_dir):
    """A Resources folder with models.json; the model files are served from 127.0.0.1 or kept local."""
    resources = tmp_path / "Resources"
    (resources / "Models").mkdir(parents=True)
    served = tmp_path / "served"
    served.mkdir()
    for name in ("stage1.pt", "stage2.pt"):
        shutil.copy(model_dir / name, served / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(models.RESOURCES_ENV, str(resources))
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))

    def write(entries, **extra):
        data = {"schema_version": 1, "models": entries, **extra}
        (resources / "Models" / "models.json").write_text(json.dumps(data))

    def stage(name, url=True, sha=None):
        data = (served / name).read_bytes()
        entry = {"file": name, "sha256": sha or hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
        if url:
            entry["url"] = f"http://127.0.0.1:{server.server_address[1]}/{name}"
        return entry

    yield type("Registry", (), {"write": staticmethod(write), "stage": staticmethod(stage), "root": resources,
                                "served": served, "cache": tmp_path / "cache", "server": server})
    server.shutdown()
    server.server_close()


def test_url_model_is_downloaded_once_then_used_from_the_cache(registry):
    registry.write({"web": {"stage1": registry.stage("stage1.pt"), "stage2": registry.stage("stage2.pt")}})
    seen = []
    files = resolve_model("web", progress=lambda done, total: seen.append((done, total)))
    assert files.stage1 == registry.cache / "web" / "stage1.pt"
    assert files.stage1.read_bytes() == (registry.served / "stage1.pt").read_bytes()
    assert seen and seen[-1][0] == seen[-1][1]
    registry.server.shutdown()  # offline from now on: the cached, verified files are enough
    assert resolve_model("web") == files


def test_wrong_checksum_leaves_nothing_behind(registry):
    registry.write({"bad": {"stage1": registry.stage("stage1.pt", sha="0" * 64),
                            "stage2": registry.stage("stage2.pt")}})
    with pytest.raises(ModelError, match="could not be downloaded.*SHA-256|checksum"):
        resolve_model("bad")
    leftovers = list(registry.cache.rglob("*")) if registry.cache.exists() else []
    assert not [p for p in leftovers if p.is_file()]


def test_no_network_is_a_clear_error_without_a_broken_file(registry):
    entries = {"stage1": registry.stage("stage1.pt"), "stage2": registry.stage("stage2.pt")}
    registry.server.shutdown()
    registry.server.server_close()
    registry.write({"web": entries})
    with pytest.raises(ModelError, match="could not be downloaded"):
        resolve_model("web")
    assert not (registry.cache / "web" / "stage1.pt").exists()


def test_shipped_file_is_verified_and_a_changed_one_refused(registry):
    for name in ("stage1.pt", "stage2.pt"):
        shutil.copy(registry.served / name, registry.root / "Models" / name)
    registry.write({"default": {"stage1": registry.stage("stage1.pt", url=False),
                                "stage2": registry.stage("stage2.pt", url=False)}})
    assert resolve_model("default").stage1 == registry.root / "Models" / "stage1.pt"
    with open(registry.root / "Models" / "stage2.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(ModelError, match="does not match its registered SHA-256"):
        resolve_model("default")


def test_registry_names_its_default_model(registry):
    for name in ("stage1.pt", "stage2.pt"):
        shutil.copy(registry.served / name, registry.root / "Models" / name)
    entry = {"stage1": registry.stage("stage1.pt", url=False), "stage2": registry.stage("stage2.pt", url=False)}
    registry.write({"small-v1": entry, "big-v2": entry}, default="small-v1")
    assert resolve_model("default").name == "small-v1"
    assert registered_names() == ["default", "big-v2", "small-v1"]
    registry.write({"small-v1": entry}, default="gone")  # a dangling alias is not offered, and says so
    assert registered_names() == ["small-v1"]
    with pytest.raises(ModelError, match="No model named 'default'.*known models"):
        resolve_model("default")


def test_entries_without_checksum_or_file_are_refused(registry):
    entry = registry.stage("stage1.pt")
    registry.write({"nosha": {"stage1": {k: v for k, v in entry.items() if k != "sha256"},
                              "stage2": registry.stage("stage2.pt")},
                    "gone": {"stage1": registry.stage("stage1.pt", url=False),
                             "stage2": registry.stage("stage2.pt", url=False)}})
    with pytest.raises(ModelError, match="without a SHA-256"):
        resolve_model("nosha")
    with pytest.raises(ModelError, match="missing and it has no download URL"):
        resolve_model("gone")
    with pytest.raises(ModelError, match="known models"):
        resolve_model("nothing")
