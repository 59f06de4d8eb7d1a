"""One file per model: network config, weights, labels, preprocessing and provenance.

The file is a plain ``dict`` of str/int/float/list/dict and tensors saved with ``torch.save``, so it loads
with ``torch.load(weights_only=True)``: no pickled classes, no code runs when a file is opened.

An ensemble (``networks.Ensemble``: several trainings of one network whose probabilities are averaged) is one
file too: ``members`` holds one state dict per network in place of ``state_dict``. Such a file has format
version 2, so that a program that cannot run it says so instead of failing on a missing key; a single network
is still written as version 1.
"""
from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Tuple

import torch

from KidneyTumorSegLib.atomic import atomic_output
from KidneyTumorSegLib.networks import Ensemble, build_network, config_from_dict, config_to_dict
from KidneyTumorSegLib.preprocessing import PreprocessingConfig

FORMAT_NAME = "kidneytumorseg-checkpoint"
FORMAT_VERSION = 2   # the newest this code reads and writes
SINGLE_VERSION = 1  # what a single network is written as (readable by every release)


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and what to do."""


@dataclass
class Checkpoint:
    """Everything needed to run one network (or an ensemble of one network's trainings: ``model`` is then a
    ``networks.Ensemble``); ``model`` is built and loaded, in eval mode."""

    network_name: str
    config: Any
    labels: list[str]
    preprocessing: PreprocessingConfig
    model: torch.nn.Module
    patch_size: Tuple[int, int, int]  # sliding-window patch (z, y, x) the network was trained on
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, network_name: str, config: Any, model: torch.nn.Module,
                    labels: Sequence[str], preprocessing: PreprocessingConfig, patch_size: Sequence[int],
                    provenance: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Write a checkpoint atomically (temporary file, then rename): a crash never leaves half a file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
    config_dict = config_to_dict(config)
    if len(labels) != config_dict.get("num_classes", len(labels)):
        raise ValueError(f"{len(labels)} label names given for a network with "
                         f"{config_dict['num_classes']} output classes.")
    payload = {
        "format": FORMAT_NAME,
        "format_version": format_version_of(model),
        "network": {"name": network_name, "config": config_dict},
        **_weights(model),
        "labels": list(labels),
        "preprocessing": preprocessing.to_dict(),
        "inference": {"patch_size": _patch_size(patch_size)},
        "provenance": {**_default_provenance(), **dict(provenance or {})},
        "metrics": dict(metrics or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, suffix=".tmp") as tmp:
        torch.save(payload, tmp)
        try:  # a file that would not load safely (e.g. a non-plain provenance value) is never published
            torch.load(tmp, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"Checkpoint content is not plain data (str, numbers, lists, dicts, tensors): "
                             f"{exc}") from exc
    return path


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint file into a ready network (eval mode) with its metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Model file {path} does not exist; check the path or reinstall the model.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"Model file {path} cannot be read ({type(exc).__name__}); it is corrupt, truncated or not a "
            "KidneyTumorSeg checkpoint: download or export it again.") from exc
    _check_header(path, payload)
    net = payload["network"]
    try:
        config = config_from_dict(net["name"], net["config"])
        preprocessing = PreprocessingConfig.from_dict(payload["preprocessing"])
        patch_size = _patch_size(payload.get("inference", {}).get("patch_size"))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"Model file {path} holds an invalid configuration: {exc}") from exc
    model = _build(path, net["name"], config, payload)
    model.to(device).eval()
    labels = list(payload["labels"])
    if len(labels) != config_to_dict(config)["num_classes"]:
        raise CheckpointError(f"Model file {path} names {len(labels)} labels for a network with "
                              f"{config_to_dict(config)['num_classes']} outputs; export it again.")
    return Checkpoint(net["name"], config, labels, preprocessing, model, tuple(patch_size),
                      dict(payload.get("provenance", {})), dict(payload.get("metrics", {})))


def format_version_of(model: torch.nn.Module) -> int:
    """The format version a file holding ``model`` is written with: 2 for an ensemble, else 1."""
    return FORMAT_VERSION if isinstance(model, Ensemble) else SINGLE_VERSION


def ensemble_of(checkpoints: Sequence[Checkpoint]) -> Checkpoint:
    """One checkpoint whose model averages the probabilities of ``checkpoints`` (``networks.Ensemble``). They
    must be trainings of the same network on the same input: network and config, output labels,
    preprocessing and patch size all equal (else a ValueError names the first difference). Each member's
    provenance and metrics are kept under ``members``."""
    if len(checkpoints) < 2:
        raise ValueError(f"an ensemble needs at least two checkpoints, got {len(checkpoints)}")
    nested = [i for i, c in enumerate(checkpoints, start=1) if isinstance(c.model, Ensemble)]
    if nested:
        raise ValueError(f"checkpoint {nested[0]} is an ensemble already; give its members' files instead.")
    first = checkpoints[0]
    for i, c in enumerate(checkpoints[1:], start=2):
        for what, a, b in (("network", first.network_name, c.network_name),
                           ("network config", config_to_dict(first.config), config_to_dict(c.config)),
                           ("labels", list(first.labels), list(c.labels)),
                           ("preprocessing", first.preprocessing, c.preprocessing),
                           ("patch size", tuple(first.patch_size), tuple(c.patch_size))):
            if a != b:
                raise ValueError(f"checkpoint {i} has another {what} than checkpoint 1 ({b!r} vs {a!r}); "
                                 "an ensemble's networks must be trainings of one network on one input.")
    model = Ensemble([c.model for c in checkpoints]).eval()
    return Checkpoint(first.network_name, first.config, list(first.labels), first.preprocessing, model,
                      tuple(first.patch_size), {"members": [dict(c.provenance) for c in checkpoints]},
                      {"members": [dict(c.metrics) for c in checkpoints]})


def _weights(model: torch.nn.Module) -> dict:
    """``state_dict`` (or ``members``, one per network of an ensemble), detached and on the CPU so that the
    file loads on any machine."""
    def plain(m: torch.nn.Module) -> dict:
        return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
    if isinstance(model, Ensemble):
        return {"members": [plain(m) for m in model.members]}
    return {"state_dict": plain(model)}


def _build(path: Path, name: str, config: Any, payload: dict) -> torch.nn.Module:
    """The network (or ensemble) the payload describes, with its weights loaded strictly."""
    members = payload.get("members")
    if members is None:
        model = build_network(name, config)
        _load_state(path, model, payload["state_dict"])
        return model
    if not isinstance(members, list) or len(members) < 2:
        raise CheckpointError(f"Model file {path} is an ensemble with fewer than two networks; export it again.")
    nets = [build_network(name, config) for _ in members]
    for k, (net, state) in enumerate(zip(nets, members), start=1):
        _load_state(path, net, state, f" (network {k} of the ensemble)")
    return Ensemble(nets)


def _patch_size(value: Any) -> list:
    if value is None or len(value) != 3 or any(int(v) != v or int(v) < 1 for v in value):
        raise ValueError(f"patch_size must be three positive integers (z, y, x), got {value!r}")
    return [int(v) for v in value]


def _check_header(path: Path, payload: Any) -> None:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"Model file {path} is not a KidneyTumorSeg checkpoint (no '{FORMAT_NAME}' "
                              "header); export it with training/export or pick another file.")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"Model file {path} has format version {version}, newer than this program "
                              f"reads ({FORMAT_VERSION}); update KidneyTumorSeg.")
    weights = "members" if "members" in payload else "state_dict"
    missing = [k for k in ("network", weights, "labels", "preprocessing", "inference") if k not in payload]
    if missing:
        raise CheckpointError(f"Model file {path} lacks {', '.join(missing)}; export it again.")


def _load_state(path: Path, model: torch.nn.Module, state: Mapping[str, torch.Tensor], which: str = "") -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {what} (e.g. {keys[0]})")
        raise CheckpointError(f"Model file {path}{which} does not match its network configuration: "
                              f"{'; '.join(parts)}. The file is damaged or was exported from other code.")
    model.load_state_dict(state, strict=True)


def _default_provenance() -> dict:
    return {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),  # TorchVersion is a class weights_only refuses
        "python_version": platform.python_version(),
    }
