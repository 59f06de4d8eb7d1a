"""Registered models: shipped files are checked against their SHA-256; URL models are downloaded once into
the user cache, verified before use, and a failed download leaves no file behind."""
import functools
import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

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


def _zero_bytes(path, offset=1000, count=5000):
    """The fault of issue #17: bytes zeroed inside a model file, its size unchanged."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(count))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage,message", [(_zero_bytes, "does not match its recorded SHA-256"),
                                            (_truncate, r"has \d+ bytes, not the \d+ recorded for it")])
def test_shipped_file_is_verified_and_a_damaged_one_refused(registry, damage, message):
    for name in ("stage1.pt", "stage2.pt"):
        shutil.copy(registry.served / name, registry.root / "Models" / name)
    registry.write({"default": {"stage1": registry.stage("stage1.pt", url=False),
                                "stage2": registry.stage("stage2.pt", url=False)}})
    files = resolve_model("default")
    assert files.stage1 == registry.root / "Models" / "stage1.pt" and files.warning is None
    damage(registry.root / "Models" / "stage2.pt")
    with pytest.raises(ModelError, match=f"Model 'default': .*stage2.pt {message}.*; reinstall the extension"):
        resolve_model("default")


@pytest.fixture
def exported_folder(tmp_path, model_dir):
    """A model folder as training.export leaves it: the two files and models_entry.json with their hashes."""
    folder = tmp_path / "my-model"
    folder.mkdir()
    entry = {}
    for stage in ("stage1", "stage2"):
        data = (model_dir / f"{stage}.pt").read_bytes()
        (folder / f"{stage}.pt").write_bytes(data)
        entry[stage] = {"file": f"my-model/{stage}.pt", "sha256": hashlib.sha256(data).hexdigest(),
                        "size_bytes": len(data)}
    (folder / models.ENTRY_FILE).write_text(json.dumps({"my-model": entry}))
    return folder


@pytest.mark.parametrize("damage,message", [(_zero_bytes, "does not match its recorded SHA-256"),
                                            (_truncate, r"has \d+ bytes, not the \d+ recorded for it")])
def test_model_folder_with_an_entry_is_verified(exported_folder, damage, message):
    files = resolve_model(str(exported_folder))
    assert files.stage2 == exported_folder / "stage2.pt" and files.warning is None
    damage(exported_folder / "stage2.pt")
    with pytest.raises(ModelError, match=f"Model 'my-model': .*stage2.pt {message}.*export the model again"):
        resolve_model(str(exported_folder))


def test_model_folder_with_a_broken_entry_is_refused(exported_folder):
    entry_file = exported_folder / models.ENTRY_FILE
    entry_file.write_text('{"my-model": {"stage1": ')
    with pytest.raises(ModelError, match="models_entry.json cannot be read .*cannot be verified"):
        resolve_model(str(exported_folder))
    entry_file.write_text(json.dumps({"my-model": {"stage1": {"file": "my-model/stage1.pt"}}}))
    with pytest.raises(ModelError, match="records no SHA-256 for stage1"):
        resolve_model(str(exported_folder))
    entry_file.write_text(json.dumps({"a": {}, "b": {}}))
    with pytest.raises(ModelError, match="does not hold one model entry"):
        resolve_model(str(exported_folder))


def test_model_folder_without_an_entry_is_used_with_a_warning(model_dir):
    files = resolve_model(str(model_dir))
    assert files.stage1 == model_dir / "stage1.pt"
    assert files.warning.startswith(f"unverified model: {model_dir} has no models_entry.json")


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


def test_the_shipped_model_folder_passes_its_own_entry():
    root = Path(__file__).resolve().parents[2]
    folder = next(iter(sorted(root.glob("Resources/Models/*/models_entry.json")))).parent
    assert resolve_model(str(folder)).warning is None  # the shipped files match what export recorded
    # the folder's own entry is the registry's, so a model given as a folder behaves as when given by name
    registry = json.loads((root / "Resources" / "Models" / "models.json").read_text(encoding="utf-8"))
    own = json.loads((folder / "models_entry.json").read_text(encoding="utf-8"))
    assert own == {folder.name: registry["models"][folder.name]}
