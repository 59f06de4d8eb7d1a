"""Where the cascade's two model files come from: a folder, or a name in the registry (models.json).

A model is a pair of checkpoints, ``stage1.pt`` (coarse kidney network) and ``stage2.pt`` (fine kidney /
tumor / cyst network). ``--model`` takes a folder holding both, or a name registered in
``Resources/Models/models.json``. Resources are looked for in ``$KIDNEYTUMORSEG_RESOURCES``, beside the
library (installed Slicer extension: ``qt-scripted-modules/Resources``) and at the top of a source checkout.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .errors import InputError

RESOURCES_ENV = "KIDNEYTUMORSEG_RESOURCES"
DEFAULT_MODEL = "default"
STAGE_FILES = ("stage1.pt", "stage2.pt")


class ModelError(InputError):
    """A model that cannot be found or used; the message says what to do."""


@dataclass(frozen=True)
class ModelFiles:
    name: str
    stage1: Path
    stage2: Path


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


def resolve_model(spec: str = DEFAULT_MODEL) -> ModelFiles:
    """A folder with stage1.pt and stage2.pt, or a registered model name."""
    path = Path(spec).expanduser()
    if path.is_dir():
        missing = [f for f in STAGE_FILES if not (path / f).is_file()]
        if missing:
            raise ModelError(f"Model folder {path} lacks {' and '.join(missing)}; a model folder holds "
                             f"{STAGE_FILES[0]} and {STAGE_FILES[1]} (see training/README.md to export them).")
        return ModelFiles(path.name, path / STAGE_FILES[0], path / STAGE_FILES[1])
    registry = registry_path()
    if registry is None:
        raise ModelError(f"No model named {spec!r}: no model registry (Resources/Models/models.json) is "
                         "installed and no such folder exists; pass --model FOLDER with stage1.pt and "
                         "stage2.pt.")
    entries = json.loads(registry.read_text(encoding="utf-8")).get("models", {})
    if spec not in entries:
        raise ModelError(f"No model named {spec!r} in {registry}; known models: {sorted(entries)}, or pass "
                         "--model FOLDER with stage1.pt and stage2.pt.")
    entry = entries[spec]
    files = [registry.parent / entry[stage]["file"] for stage in ("stage1", "stage2")]
    for f in files:
        if not f.is_file():
            raise ModelError(f"Model {spec!r} is registered but its file {f} is missing; reinstall the "
                             "extension or download the model again.")
    return ModelFiles(spec, files[0], files[1])
