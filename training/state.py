"""Full training state (``RUN_DIR/last.pt``) for exact resume, and the inference export (``best.pt``).

``last.pt`` holds everything that decides what the next epoch computes: model, optimizer, LR scheduler,
GradScaler, epoch/iteration counters, best metric, the hard-case loss history, the python/numpy/torch
(and CUDA) RNG states and the resolved config. It is a plain dict of tensors, numbers, strings, lists and
dicts (numpy's RNG state is taken as a dict of ints), so it loads with ``torch.load(weights_only=True)``.
It is written to a temporary file in the same folder and renamed, so a crash mid-write leaves the
previous ``last.pt`` intact.

``best.pt`` is a normal inference checkpoint (``KidneyTumorSegLib.checkpoint.save_checkpoint``) that the
Slicer module and ``load_checkpoint`` read.
"""
from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from KidneyTumorSegLib.atomic import atomic_output
from KidneyTumorSegLib.checkpoint import save_checkpoint
from KidneyTumorSegLib.preprocessing import PreprocessingConfig

STATE_FORMAT = "kidneytumorseg-training-state"
STATE_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]


# -- RNG -------------------------------------------------------------------------------------------------
def capture_rng() -> Dict[str, Any]:
    version, internal, gauss = random.getstate()
    npst = np.random.get_state(legacy=False)  # MT19937: key array -> list, for weights_only loading
    npst = {**npst, "state": {"key": [int(v) for v in npst["state"]["key"]], "pos": int(npst["state"]["pos"])}}
    state = {"python": [version, list(internal), gauss], "numpy": npst, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = dict(state["numpy"])
    npst["state"] = {"key": np.asarray(npst["state"]["key"], np.uint32), "pos": int(npst["state"]["pos"])}
    np.random.set_state(npst)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# -- last.pt ---------------------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, suffix=".tmp") as tmp:
        torch.save(obj, tmp)


def save_state(path: Path, *, model: torch.nn.Module, optimizer, scheduler, scaler, epoch: int, iteration: int,
               best_metric: Optional[float], best_epoch: Optional[int], loss_ema: np.ndarray,
               config: Dict[str, Any], run: Dict[str, Any],
               weight_average: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """``epoch``: number of COMPLETED epochs (the resumed run starts at this 0-based epoch).
    ``weight_average``: the state of the weights' moving average, when the recipe keeps one."""
    atomic_torch_save({
        "format": STATE_FORMAT, "version": STATE_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "epoch": int(epoch), "iteration": int(iteration),
        "best_metric": None if best_metric is None else float(best_metric),
        "best_epoch": best_epoch, "loss_ema": [float(v) for v in loss_ema],
        "rng": capture_rng(), "config": config, "run": run,
        "weight_average": None if weight_average is None else {k: v.detach().cpu() for k, v in weight_average.items()},
    }, path)


def load_state(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} does not exist; start without --resume.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a training state written by training.train.")
    if state.get("version", 0) > STATE_VERSION:
        raise ValueError(f"{path} has training-state version {state.get('version')}, newer than this code.")
    return state


def load_initial_weights(path: Path, model: torch.nn.Module, labels, member: Optional[int] = None) -> None:
    """Start a new run from the weights of an earlier one (``train --init``): its ``last.pt`` or ``best.pt``, or
    network ``member`` (0 = the first) of an exported ensemble (``--init-member``, e.g. a released stage2.pt).
    The outputs and the network must be the same; the optimizer, schedule and counters start afresh, so a
    fine-tuning run has its own config (loss weights, sampling, learning rate)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--init: {path} does not exist.")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("format") == STATE_FORMAT:  # last.pt
        weights, their_labels = payload["model"], payload["config"]["labels"]
    elif "state_dict" in payload:  # best.pt (an inference checkpoint)
        weights, their_labels = payload["state_dict"], payload["labels"]
    elif "members" in payload:  # an exported ensemble: one of its networks
        n = len(payload["members"])
        if member is None or not 0 <= member < n:
            raise SystemExit(f"--init: {path} is an ensemble of {n} networks; pass --init-member 0 to {n - 1} to "
                             "start from one of them" + ("" if member is None else f" (not {member})") + ".")
        weights, their_labels = payload["members"][member], payload["labels"]
    else:
        raise SystemExit(f"--init: {path} is neither a training state (last.pt) nor a checkpoint (best.pt).")
    if member is not None and "members" not in payload:
        raise SystemExit(f"--init-member: {path} is one network, not an ensemble; leave --init-member out.")
    if list(their_labels) != list(labels):
        raise SystemExit(f"--init: {path} predicts {list(their_labels)}, this config {list(labels)}.")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # another network: missing/unexpected keys or other shapes
        raise SystemExit(f"--init: {path} holds another network than this config ({str(exc).splitlines()[0]})")


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move loaded optimizer moments to the model's device (they are saved on the CPU)."""
    for st in optimizer.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and k != "step":
                st[k] = v.to(device)


# -- best.pt ---------------------------------------------------------------------------------------------
def git_commit() -> Optional[str]:
    """HEAD commit of the repository this code runs from (with '-dirty' if modified), or None."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def export_best(path: Path, *, network_name: str, network_config, model: torch.nn.Module, labels,
                preprocessing: PreprocessingConfig, patch_size, provenance: Dict[str, Any],
                metrics: Dict[str, Any]) -> Path:
    return save_checkpoint(path, network_name, network_config, model, labels, preprocessing, patch_size,
                           provenance=provenance, metrics=metrics, overwrite=True)
