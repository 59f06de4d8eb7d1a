"""Where the cascade's two model files come from: a folder, or a name in the registry (models.json).

A model is a pair of checkpoints, ``stage1.pt`` (coarse kidney network) and ``stage2.pt`` (fine kidney /
tumor / cyst network). ``--model`` takes a folder holding both, or a name registered in
``Resources/Models/models.json``. Resources are looked for in ``$KIDNEYTUMORSEG_RESOURCES``, beside the
library (installed Slicer extension: ``qt-scripted-modules/Resources``) and at the top of a source checkout.

A registered stage is ``{"file", "sha256", "size_bytes", ...}``: the file beside the registry (shipped with
the extension) or, when it is not there and the entry has a ``url``, downloaded once into the user cache
(``$KIDNEYTUMORSEG_CACHE``, default ``~/.cache/kidneytumorseg/models``). Either way its SHA-256 is checked
before use; a download is verified before it is renamed into place, so no broken file is ever left.

A model folder is checked the same way when it holds ``models_entry.json`` (what ``training.export``
writes beside the two files): each stage file against the size and SHA-256 recorded there. A folder without
one (a training run's own checkpoints) is used as it is, and ``ModelFiles.warning`` says "unverified model".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from .download import DownloadError, Progress, download, sha256_file
from .errors import InputError
from .mirroring import mirror_axes_tuple

RESOURCES_ENV = "KIDNEYTUMORSEG_RESOURCES"
CACHE_ENV = "KIDNEYTUMORSEG_CACHE"
DEFAULT_MODEL = "default"
STAGE_FILES = ("stage1.pt", "stage2.pt")
FALLBACK_MIN_CONFIDENCE = 0.5  # --min-confidence for models that recommend none: the argmax line of two classes
ENTRY_FILE = "models_entry.json"  # written by training.export beside the stage files


class ModelError(InputError):
    """A model that cannot be found or used; the message says what to do."""


@dataclass(frozen=True)
class ModelFiles:
    name: str
    stage1: Path
    stage2: Path
    warning: Optional[str] = None  # set for a folder whose files could not be verified


def resource_dirs() -> List[Path]:
    here = Path(__file__).resolve().parent
    candidates = [Path(os.environ[RESOURCES_ENV])] if os.environ.get(RESOURCES_ENV) else []
    candidates += [here.parent / "Resources", here.parents[1] / "Resources"]
    return [c for c in candidates if c.is_dir()]


def registry_path() -> Optional[Path]:
    for d in resource_dirs():
        if (d / "Models" / "models.json").is_file():
            return d / "Models" / "models.json"
    return None


def cache_dir() -> Path:
    """Where downloaded models are kept: $KIDNEYTUMORSEG_CACHE, else $XDG_CACHE_HOME or ~/.cache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kidneytumorseg" / "models"


def resolve_model(spec: str = DEFAULT_MODEL, progress: Optional[Progress] = None) -> ModelFiles:
    """A folder with stage1.pt and stage2.pt, or a registered model name (downloaded when needed)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder_model(path)
    registry = registry_path()
    if registry is None:
        raise ModelError(f"No model named {spec!r}: no model registry (Resources/Models/models.json) is "
                         "installed and no such folder exists; pass --model FOLDER with stage1.pt and "
                         "stage2.pt.")
    data = json.loads(registry.read_text(encoding="utf-8"))
    entries = data.get("models", {})
    if spec == DEFAULT_MODEL and spec not in entries and _default_target(data):
        spec = _default_target(data)
    if spec not in entries:
        raise ModelError(f"No model named {spec!r} in {registry}; known models: {sorted(entries)}, or pass "
                         "--model FOLDER with stage1.pt and stage2.pt.")
    files = [_stage_file(spec, entries[spec][stage], registry.parent, progress) for stage in ("stage1", "stage2")]
    return ModelFiles(spec, files[0], files[1])


def recommended_min_confidence(spec: str = DEFAULT_MODEL) -> float:
    """The ``--min-confidence`` a model's registry entry recommends (``min_confidence``, chosen from data by
    ``benchmarks/confidence_threshold.py``), or a model folder's ``models_entry.json``;
    ``FALLBACK_MIN_CONFIDENCE`` for a folder or an entry without one."""
    return float(_model_entry(spec)[0].get("min_confidence", FALLBACK_MIN_CONFIDENCE))


def recommended_stage2_mirror_axes(spec: str = DEFAULT_MODEL) -> Tuple[int, ...]:
    """The canonical axes (0, 1, 2 = z, y, x) whose mirror images a model's stage 2 should also run on in the
    default mode (``stage2_mirror_axes`` of its entry, as ``training.export --stage2-mirror-axes`` records it);
    none for a folder or an entry without them."""
    entry, where = _model_entry(spec)
    axes = entry.get("stage2_mirror_axes", [])
    try:
        if not isinstance(axes, list):
            raise ValueError(f"a list is needed, not {axes!r}")
        return mirror_axes_tuple(axes)
    except ValueError as exc:
        raise ModelError(f"Model {spec!r}: the stage2_mirror_axes of {where} are wrong ({exc}); fix them or "
                         "export the model again.") from exc


def recommended_cyst_hu(spec: str = DEFAULT_MODEL) -> Optional[Tuple[float, float]]:
    """The HU range whose tumors become cysts (``cyst_hu`` of a model's entry, as ``training.export --cyst-hu``
    records it; ``lesion_density.py``), or None for a folder or an entry without one."""
    from .lesion_density import cyst_hu_range  # here, so that reading the registry needs no numpy

    entry, where = _model_entry(spec)
    if "cyst_hu" not in entry:
        return None
    try:
        return cyst_hu_range(entry["cyst_hu"])
    except ValueError as exc:
        raise ModelError(f"Model {spec!r}: the cyst_hu of {where} is wrong ({exc}); fix it or export the "
                         "model again.") from exc


def _model_entry(spec: str) -> Tuple[dict, str]:
    """(the registry entry of ``spec`` (a name, or "default") or a model folder's ``models_entry.json`` entry,
    where it came from); {} for a folder without one or a name the registry lacks."""
    folder = Path(spec).expanduser()
    if folder.is_dir():  # a folder that training.export wrote carries its entry beside it
        return (_folder_entry(folder) if (folder / ENTRY_FILE).is_file() else {}), str(folder / ENTRY_FILE)
    registry = registry_path()
    if registry is None:
        return {}, "the registry"
    data = json.loads(registry.read_text(encoding="utf-8"))
    name = _default_target(data) if spec == DEFAULT_MODEL and spec not in data.get("models", {}) else spec
    return data.get("models", {}).get(name, {}), str(registry)


def registered_names() -> List[str]:
    """Model names in the installed registry; "default" first when the registry names a default model."""
    registry = registry_path()
    if registry is None:
        return []
    data = json.loads(registry.read_text(encoding="utf-8"))
    return ([DEFAULT_MODEL] if _default_target(data) else []) + sorted(data.get("models", {}))


def _default_target(data: dict) -> Optional[str]:
    """The model a registry's ``"default": NAME`` names, when that model is registered."""
    target = data.get(DEFAULT_MODEL)
    return target if target in data.get("models", {}) else None


def _folder_model(path: Path) -> ModelFiles:
    """A model folder: its stage files, verified against models_entry.json when the folder has one."""
    missing = [f for f in STAGE_FILES if not (path / f).is_file()]
    if missing:
        raise ModelError(f"Model folder {path} lacks {' and '.join(missing)}; a model folder holds "
                         f"{STAGE_FILES[0]} and {STAGE_FILES[1]} (see training/README.md to export them).")
    files = ModelFiles(path.name, path / STAGE_FILES[0], path / STAGE_FILES[1])
    if not (path / ENTRY_FILE).is_file():
        return ModelFiles(files.name, files.stage1, files.stage2, warning=(
            f"unverified model: {path} has no {ENTRY_FILE}, so its files cannot be checked against their "
            "SHA-256 (an exported model has one)."))
    entry = _folder_entry(path)
    for stage, file in (("stage1", files.stage1), ("stage2", files.stage2)):
        record = entry.get(stage)
        if not isinstance(record, dict) or not record.get("sha256"):
            raise ModelError(f"Model folder {path}: {ENTRY_FILE} records no SHA-256 for {stage}, so the model "
                             "cannot be verified; export it again.")
        _verify(path.name, file, record["sha256"], f"copy or export the model again ({ENTRY_FILE} says "
                "what it should be)", record.get("size_bytes"))
    return files


def _folder_entry(path: Path) -> dict:
    """The one model entry of ``path/models_entry.json`` (``{NAME: entry}``, as training.export writes it)."""
    try:
        data = json.loads((path / ENTRY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"Model folder {path}: {ENTRY_FILE} cannot be read ({type(exc).__name__}), so the "
                         "model cannot be verified; copy or export it again.") from exc
    entries = data if isinstance(data, dict) else {}
    entry = entries.get(path.name) if len(entries) != 1 else next(iter(entries.values()))
    if not isinstance(entry, dict):
        raise ModelError(f"Model folder {path}: {ENTRY_FILE} does not hold one model entry "
                         f"({{NAME: {{stage1, stage2, ...}}}}), so the model cannot be verified; export it again.")
    return entry


def _stage_file(name: str, entry: dict, folder: Path, progress: Optional[Progress]) -> Path:
    sha = entry.get("sha256")
    if not sha:
        raise ModelError(f"Model {name!r} is registered without a SHA-256 for {entry.get('file')}; a model is "
                         "only used when its checksum can be verified: fix models.json.")
    local = folder / entry["file"]
    if local.is_file():
        _verify(name, local, sha, "reinstall the extension or export the model again", entry.get("size_bytes"))
        return local
    if not entry.get("url"):
        raise ModelError(f"Model {name!r} is registered but its file {local} is missing and it has no "
                         "download URL; reinstall the extension.")
    cached = cache_dir() / name / Path(entry["file"]).name
    if cached.is_file():
        _verify(name, cached, sha, f"delete {cached} to download it again", entry.get("size_bytes"))
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        return download(entry["url"], cached, sha256=sha, expected_size=entry.get("size_bytes"),
                        progress=progress)
    except DownloadError as exc:
        raise ModelError(f"Model {name!r} could not be downloaded: {exc}") from exc


def _verify(name: str, path: Path, sha: str, remedy: str, size: Optional[int] = None) -> None:
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ModelError(f"Model {name!r}: {path} has {actual} bytes, not the {size} recorded for it "
                         f"(truncated or replaced); {remedy}.")
    if sha256_file(path) != str(sha).lower():
        raise ModelError(f"Model {name!r}: {path} does not match its recorded SHA-256 (damaged or "
                         f"replaced); {remedy}.")
