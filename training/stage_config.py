"""A stage's model definition, read from a JSON file in training/configs/ (one file per stage).

The file names the network and its config, the output labels, the preprocessing and the patch size: exactly
what a checkpoint carries, so a trained model is this definition plus weights. A ``training`` section (the
recipe) is passed through to the trainer untouched. An optional ``data`` section says which data the stage
trains on when that is not the recipe's main data: ``{"synthetic_flags": ["--bowel-walls"]}`` means the cases
``training.synthetic`` makes with the same sources, count and seed plus those flags (``training.reproduce``
generates them for a stage-2 fine-tune; decision 52). With them, ``"extra_cases": {"seed": S, "kits23": [ids]}``
adds cases of more KiTS23 shapes, painted with seed S, the same flags and anatomy maps (decision 105).

A file may name another config as ``"base"`` and hold only what it changes (decision 84): the base's dict with
this file's keys merged in, key by key where both are dicts, replaced otherwise (lists too). ``read_config``
resolves the chain; everything that reads a config goes through it, so a run's config.json and last.pt hold the
whole resolved dict, and best.pt the resolved network, labels, preprocessing, patch and recipe.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from KidneyTumorSegLib.labels import is_auxiliary
from KidneyTumorSegLib.networks import build_network, config_from_dict
from KidneyTumorSegLib.preprocessing import PreprocessingConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
KEYS = {"stage", "description", "network", "labels", "preprocessing", "patch_size", "training", "data"}


@dataclass(frozen=True)
class ExtraCases:
    """More KiTS23 shapes for a stage's own data: ``training.synthetic --cases KITS23 --seed SEED``."""
    seed: int
    kits23: Tuple[str, ...]


@dataclass(frozen=True)
class StageConfig:
    stage: int
    network_name: str
    network: Any                      # the network's frozen config dataclass
    labels: Tuple[str, ...]
    preprocessing: PreprocessingConfig
    patch_size: Tuple[int, int, int]  # (z, y, x)
    training: Dict[str, Any] = field(default_factory=dict)
    description: str = ""
    synthetic_flags: Tuple[str, ...] = ()  # the ``data`` section: training.synthetic flags of this stage's data
    extra_cases: Optional[ExtraCases] = None  # ... and more KiTS23 shapes beside those cases

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_network(self.network_name, self.network)


def config_path(spec: Union[str, Path]) -> Path:
    """A stage config's file: ``spec`` itself, or for a bare name (e.g. stage1_default) its file in
    training/configs."""
    p = Path(spec)
    return CONFIG_DIR / f"{p.name}.json" if not p.suffix and not p.exists() else p


def load_stage_config(path: Union[str, Path]) -> StageConfig:
    """Read a stage definition; ``path`` may also be a bare name from training/configs (e.g. stage1_default)."""
    return stage_config_from_dict(read_config(path), str(config_path(path)))


def read_config(spec: Union[str, Path]) -> Dict[str, Any]:
    """A stage config's JSON dict with its ``base`` chain resolved (see the module docstring)."""
    return _resolve(config_path(spec), ())


def _resolve(p: Path, chain: Tuple[Path, ...]) -> Dict[str, Any]:
    named = f" (the \"base\" of {chain[-1]})" if chain else ""
    if p.resolve() in chain:
        loop = " -> ".join(str(c) for c in chain + (p.resolve(),))
        raise ValueError(f"Stage config {p}: its \"base\" chain comes back to itself ({loop}).")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"Stage config {p}{named} does not exist; see training/configs/ for examples.") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"Stage config {p}{named} is not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"Stage config {p}{named} must be a JSON object, got {type(d).__name__}.")
    if "base" not in d:
        return d
    base = d.pop("base")
    if not isinstance(base, str) or not base:
        raise ValueError(f"Stage config {p}: \"base\" must name a config (e.g. \"stage2_v2_fh\"), got {base!r}.")
    # a bare name is a file of training/configs; a name with an extension ("x.json") is a file beside this config
    base_path = p.parent / base if Path(base).suffix else CONFIG_DIR / f"{base}.json"
    return merge_config(_resolve(base_path, chain + (p.resolve(),)), d)


def merge_config(base: Mapping[str, Any], change: Mapping[str, Any]) -> Dict[str, Any]:
    """``base`` with ``change`` merged in: dicts key by key (recursively), any other value replaces the base's.
    A new dict: changing it leaves both arguments as they were."""
    out = copy.deepcopy(dict(base))
    for key, value in change.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_config(out[key], value) if both else copy.deepcopy(value)
    return out


def stage_config_from_dict(d: Mapping[str, Any], source: str = "(dict)") -> StageConfig:
    """A stage definition from its JSON dict, checked; ``source`` names it in the error messages."""
    unknown = set(d) - KEYS
    if unknown:
        raise ValueError(f"Stage config {source} has unknown keys {sorted(unknown)}; known keys: {sorted(KEYS)}.")
    net = d["network"]
    config = config_from_dict(net["name"], net.get("config", {}))
    labels = tuple(d["labels"])
    if len(labels) != config.num_classes:
        raise ValueError(f"Stage config {source}: {len(labels)} labels for a network with {config.num_classes} "
                         "outputs.")
    check_labels(int(d["stage"]), labels, source)
    patch = tuple(int(v) for v in d["patch_size"])
    if len(patch) != 3 or min(patch) < 8:
        raise ValueError(f"Stage config {source}: patch_size must be three sizes >= 8 (z, y, x), got {patch}.")
    return StageConfig(int(d["stage"]), net["name"], config, labels,
                       PreprocessingConfig.from_dict(d["preprocessing"]), patch, d.get("training", {}),
                       d.get("description", ""), synthetic_flags(d.get("data", {}), source),
                       extra_cases(d.get("data", {}), source))


# What each stage may predict besides auxiliary classes: the cascade boxes every main class of stage 1 as kidney
# and needs stage 2's four KiTS labels; a misspelt or misplaced name would silently train a class that never appears.
MAIN_LABELS = {1: (("background", "kidney"), ("background", "kidney", "masses")),
               2: (("background", "kidney", "tumor", "cyst"),)}


def check_labels(stage: int, labels: Tuple[str, ...], source: str) -> None:
    """The main labels first, in their order, then the auxiliary ("aux_") ones (as the cache numbers them)."""
    main = tuple(n for n in labels if not is_auxiliary(n))
    if stage not in MAIN_LABELS:
        raise ValueError(f"Stage config {source}: stage must be 1 or 2, got {stage}.")
    if main not in MAIN_LABELS[stage] or labels[:len(main)] != main:
        raise ValueError(f"Stage config {source}: labels {list(labels)} must start with one of "
                         f"{[list(m) for m in MAIN_LABELS[stage]]} for stage {stage}, followed only by auxiliary "
                         "('aux_') classes.")


def synthetic_flags(data: Any, source: str) -> Tuple[str, ...]:
    """The checked ``data`` section: a tuple of ``training.synthetic`` flags (empty: the recipe's main data)."""
    if not isinstance(data, dict) or set(data) - {"synthetic_flags", "extra_cases"}:
        raise ValueError(f'Stage config {source}: "data" must be {{"synthetic_flags": ["--flag", ...]}} (and '
                         f'optionally "extra_cases"), got {data!r}.')
    flags = data.get("synthetic_flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) and f.startswith("--") for f in flags):
        raise ValueError(f"Stage config {source}: data.synthetic_flags must be a list of training.synthetic "
                         f"options such as \"--bowel-walls\", got {flags!r}.")
    return tuple(flags)


def extra_cases(data: Dict[str, Any], source: str) -> Optional[ExtraCases]:
    """The checked ``data.extra_cases``: a seed and distinct KiTS23 ids, only beside ``synthetic_flags``."""
    extra = data.get("extra_cases")
    if extra is None:
        return None
    ids = extra.get("kits23") if isinstance(extra, dict) else None
    kits = isinstance(ids, list) and ids and all(isinstance(i, str) and re.fullmatch(r"case_\d{5}", i) for i in ids)
    if not kits or set(extra) != {"seed", "kits23"} or not isinstance(extra["seed"], int) or len(set(ids)) != len(ids):
        raise ValueError(f'Stage config {source}: data.extra_cases must be {{"seed": S, "kits23": ["case_00001", '
                         f'...]}} with distinct KiTS23 ids, got {extra!r}.')
    if not data.get("synthetic_flags"):
        raise ValueError(f"Stage config {source}: data.extra_cases go beside the stage's own cases; give "
                         "data.synthetic_flags too.")
    return ExtraCases(extra["seed"], tuple(sorted(ids)))


def check_preprocessing(stage_pp: PreprocessingConfig, cache_pp: PreprocessingConfig, say) -> None:
    """Warn (through ``say``) where a cache was preprocessed differently from the stage config that trains on it."""
    keys = ["target_spacing", "normalization", "orientation", "image_interpolation",
            "box_margin_mm", "box_min_kidney_mm3", "box_merge"]
    keys += ["clip_range"] if cache_pp.normalization == "clip_zscore" else ["window_level", "window_width"]
    diff = [k for k in keys if getattr(stage_pp, k) != getattr(cache_pp, k)]
    if diff:
        say("WARNING: the cache was preprocessed differently from the stage config ("
            + ", ".join(f"{k}: cache {getattr(cache_pp, k)} vs config {getattr(stage_pp, k)}" for k in diff)
            + "); the model is trained on, and best.pt records, the CACHE's preprocessing.")
