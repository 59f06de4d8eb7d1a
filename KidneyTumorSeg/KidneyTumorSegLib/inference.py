"""Patch-based (sliding-window) inference of a 3D segmentation network, on CUDA or CPU.

Design (nnU-Net v2 style):

- Windows of ``patch_size`` step by ``round(patch * (1 - overlap))`` (at least 1) and the last window
  along each axis is aligned to the volume end, so no window reads outside the volume.
- Volumes smaller than the patch along an axis are padded (centred, constant = volume minimum or
  ``pad_value``) and the result is cropped back to the input size.
- Weighted *logits* are accumulated (Gaussian importance weights by default) and divided by the summed
  weights; the softmax is applied once at the end. This is what nnU-Net v2 does and it is cheaper than a
  softmax per window; for a network that does not depend on context the result equals the whole-volume
  prediction exactly.
- The accumulators (K + 1 float32 volumes) live on the GPU when they fit in
  ``min(gpu_accumulator_max_gib, half the free GPU memory)``, else on the CPU (large CTs).
- Patches are gathered batch by batch from the (CPU) volume: memory stays bounded by one batch.
- On CUDA out-of-memory the batch is halved down to 1, then the run falls back to the CPU
  (see :func:`run_with_oom_fallback`); each step is reported through ``log``.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.mirroring import mirror_combinations

LOGGER = logging.getLogger(__name__)

# Environment variable that overrides the number of CPU threads torch uses (default: all usable cores).
THREADS_ENV = "KIDNEYTUMORSEG_NUM_THREADS"

PatchSize = Union[int, Sequence[int]]
RunBatch = Callable[[torch.Tensor, torch.device], torch.Tensor]


class Cancelled(Exception):
    """Raised by :func:`sliding_window_inference` when ``should_cancel()`` returns True."""


class DeviceError(InputError):
    """A device string that is malformed or names hardware that is not available."""


# ----------------------------------------------------------------------------------------------- device
def _usable_cpu_count() -> int:
    # sched_getaffinity respects container / taskset limits; cpu_count() may overstate them.
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def configure_cpu_threads() -> int:
    """Let torch use all usable cores, or ``$KIDNEYTUMORSEG_NUM_THREADS`` when set; returns the count.

    torch's default is often the physical-core count or less (and 1 inside some embedding hosts).
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    n = _usable_cpu_count()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise DeviceError(f"{THREADS_ENV}={value!r} is not a whole number; set it to a thread count "
                              f"such as 4, or unset it to use all cores.") from None
        if n < 1:
            raise DeviceError(f"{THREADS_ENV}={value!r} must be at least 1.")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a torch device and set the CPU thread count.

    ``auto`` picks the first CUDA GPU when one is usable, else the CPU. Asking for CUDA where there is
    none raises :class:`DeviceError` saying so and suggesting ``--device cpu``.
    """
    configure_cpu_threads()
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index: Optional[int] = None
        if text != "cuda":
            suffix = text[len("cuda:"):]
            if not suffix.isdigit():
                raise DeviceError(f"Device {spec!r} is not valid: write cuda:N with N a GPU number, "
                                  f"e.g. cuda:0, or use auto or cpu.")
            index = int(suffix)
        if not torch.cuda.is_available():
            build = "this PyTorch build has no CUDA support" if torch.version.cuda is None \
                else "no NVIDIA GPU or driver was found"
            raise DeviceError(f"Device {spec!r} was requested but CUDA is not available ({build}); "
                              f"use --device cpu (or auto).")
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise DeviceError(f"Device {spec!r} does not exist: this machine has {count} CUDA GPU(s) "
                              f"(cuda:0 to cuda:{count - 1}); pick one of those or use --device cpu.")
        return torch.device("cuda", index) if index is not None else torch.device("cuda")
    raise DeviceError(f"Device {spec!r} is not valid: use auto, cpu, cuda or cuda:N.")


# ---------------------------------------------------------------------------------------------- windows
def _as_patch_size(patch_size: PatchSize) -> Tuple[int, int, int]:
    size = (int(patch_size),) * 3 if isinstance(patch_size, (int, np.integer)) else tuple(int(p) for p in patch_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"patch_size must be one or three positive integers, got {patch_size!r}")
    return size  # type: ignore[return-value]


def gaussian_importance_map(patch_size: PatchSize, sigma_scale: float = 1.0 / 8,
                            min_value: float = 1e-4) -> np.ndarray:
    """nnU-Net style Gaussian weight map: centred on the patch, max 1, every value >= ``min_value``.

    sigma = ``sigma_scale * patch`` per axis. Unlike nnU-Net (delta at ``size // 2``), the centre is
    ``(size - 1) / 2`` so the map is exactly symmetric for even sizes too. The floor keeps border voxels
    weighted (no 0/0 where a single window covers a voxel) while staying negligible next to the centre.
    """
    size = _as_patch_size(patch_size)
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    profiles = []
    for s in size:
        coords = np.arange(s, dtype=np.float64) - (s - 1) / 2.0
        sigma = sigma_scale * s
        profiles.append(np.exp(-0.5 * (coords / sigma) ** 2))
    g = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    g /= g.max()
    return np.maximum(g, min_value).astype(np.float32)


def compute_window_starts(size: int, patch: int, overlap: float) -> List[int]:
    """Window start indices along one axis of length ``size`` (>= ``patch``); the last one ends at ``size``."""
    if size < patch:
        raise ValueError(f"axis of length {size} is smaller than the patch {patch}; pad it first")
    step = max(1, int(round(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


# ------------------------------------------------------------------------------------------ OOM policy
def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error (the dedicated class or an older plain RuntimeError)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_cuda_cache(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_oom_fallback(run_batch: RunBatch, patches: torch.Tensor, device: torch.device, batch_size: int,
                          log: Callable[[str], None]) -> Tuple[List[torch.Tensor], torch.device, int]:
    """Run ``run_batch(chunk, device)`` over ``patches`` in chunks of ``batch_size``, surviving OOM.

    On an out-of-memory error the chunk is retried with half its size (down to 1); when a single patch
    does not fit on a CUDA device, the run moves to the CPU. An OOM on the CPU with one patch, or any
    other error, propagates. Returns the outputs (one tensor per successful chunk, in order; they may sit
    on different devices after a fallback) and the device and batch size to use for the next patches.
    """
    outputs: List[torch.Tensor] = []
    i = 0
    while i < patches.shape[0]:
        chunk = patches[i:i + batch_size]
        failed = False
        try:
            out = run_batch(chunk, device)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            # Handle it outside the except block: the traceback pins the GPU tensors of the failed pass.
            failed, error_text = True, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not failed:
            outputs.append(out)
            i += chunk.shape[0]
            continue
        _free_cuda_cache(device)
        if chunk.shape[0] > 1:
            batch_size = max(1, chunk.shape[0] // 2)
            log(f"Out of memory on {device} with a batch of {chunk.shape[0]} patches ({error_text}); "
                f"retrying with batch size {batch_size}.")
        elif device.type == "cuda":
            log(f"Out of memory on {device} even with one patch ({error_text}); "
                f"falling back to the CPU (slower).")
            device = torch.device("cpu")
        else:
            raise MemoryError(f"Out of memory on the CPU with a single patch ({error_text}); "
                              f"use a smaller patch size or free memory.")
    return outputs, device, batch_size


# ----------------------------------------------------------------------------------------------- driver
def _accumulate_on_gpu(device: torch.device, n_bytes: int, max_gib: float) -> bool:
    if device.type != "cuda":
        return False
    try:
        free, _total = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return False
    return n_bytes <= min(max_gib * 2**30, free / 2)


def _to_tensor(volume: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    # float32 numpy input is shared, not copied; other dtypes (int16 CT, uint16...) are converted once.
    x = volume.detach().float() if isinstance(volume, torch.Tensor) \
        else torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"volume must be (Z, Y, X) or (C, Z, Y, X), got shape {tuple(x.shape)}")
    return x


def sliding_window_inference(
        volume: Union[np.ndarray, torch.Tensor], model: Callable[[torch.Tensor], torch.Tensor],
        patch_size: PatchSize, overlap: float = 0.5, batch_size: int = 2,
        device: Union[str, torch.device] = "auto", gaussian: bool = True,
        mirror_axes: Optional[Sequence[int]] = None, return_probabilities: bool = True,
        progress: Optional[Callable[[float], None]] = None,
        should_cancel: Optional[Callable[[], bool]] = None,
        log: Optional[Callable[[str], None]] = None, pad_value: Optional[float] = None,
        amp_dtype: Optional[torch.dtype] = torch.float16,
        gpu_accumulator_max_gib: float = 4.0) -> np.ndarray:
    """Predict a whole volume patch by patch; returns (K, Z, Y, X) float32 probabilities or logits.

    ``volume``: (C, Z, Y, X) or (Z, Y, X) (one channel). ``model`` maps (N, C, pz, py, px) to logits
    (N, K, pz, py, px); an ``nn.Module`` is put in eval mode (its mode is restored afterwards) and moved
    to the device (it is left there, or on the CPU after an OOM fallback). ``mirror_axes``: spatial axes
    to mirror for test-time augmentation; the logits of all 2**len(axes) flips are averaged.
    ``return_probabilities``: softmax over classes, else the weighted-average logits.
    ``progress(fraction)`` is called after each batch (increasing, ending at 1.0); ``should_cancel()``
    is checked before each batch and raises :class:`Cancelled`. ``amp_dtype``: autocast dtype on CUDA
    (None = float32); the CPU always runs float32.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    log = log or LOGGER.warning
    patch = _as_patch_size(patch_size)
    flips = mirror_combinations(mirror_axes)
    if isinstance(device, torch.device):
        dev = device
        configure_cpu_threads()
    else:
        dev = resolve_device(device)
    is_module = isinstance(model, torch.nn.Module)
    was_training = bool(is_module and model.training)
    if is_module:
        model.eval()
    try:
        with torch.inference_mode():
            return _infer(_to_tensor(volume), model, patch, overlap, int(batch_size), dev, gaussian, flips,
                          return_probabilities, progress, should_cancel, log, pad_value, amp_dtype,
                          gpu_accumulator_max_gib)
    finally:
        if was_training:
            model.train()


def _pad_to_patch(x: torch.Tensor, patch: Tuple[int, int, int], pad_value: Optional[float]
                  ) -> Tuple[torch.Tensor, Optional[Tuple[slice, ...]]]:
    """Centre the volume in a box at least the patch size (nnU-Net does the same); returns the padded
    volume and the crop back to the input (None when nothing was padded)."""
    shape = tuple(x.shape[1:])
    before = [max(0, p - s) // 2 for s, p in zip(shape, patch)]
    after = [max(0, p - s) - b for s, p, b in zip(shape, patch, before)]
    if not any(before) and not any(after):
        return x, None
    value = float(x.min()) if pad_value is None else float(pad_value)
    pads = [v for axis in reversed(range(3)) for v in (before[axis], after[axis])]
    x = torch.nn.functional.pad(x, pads, mode="constant", value=value)
    return x, tuple(slice(b, b + s) for b, s in zip(before, shape))


def _batch_runner(model: Callable[[torch.Tensor], torch.Tensor], patch: Tuple[int, int, int],
                  flips: List[Tuple[int, ...]], amp_dtype: Optional[torch.dtype]) -> RunBatch:
    """``run_batch(chunk, device)``: the logits of a batch of patches, averaged over the mirror flips; an
    ``nn.Module`` is moved to ``device`` on first use there."""
    model_device: List[Optional[torch.device]] = [None]

    def run_batch(chunk: torch.Tensor, dev: torch.device) -> torch.Tensor:
        if isinstance(model, torch.nn.Module) and model_device[0] != dev:
            model.to(dev)
            model_device[0] = dev
        chunk = chunk.to(dev)
        amp = torch.autocast(device_type="cuda", dtype=amp_dtype) \
            if dev.type == "cuda" and amp_dtype is not None else contextlib.nullcontext()
        total: Optional[torch.Tensor] = None
        with amp:
            for dims in flips:
                out = model(chunk.flip(dims) if dims else chunk)
                if isinstance(out, (tuple, list)):  # a training-style output: logits come first
                    out = out[0]
                if tuple(out.shape[2:]) != patch or out.shape[0] != chunk.shape[0]:
                    raise ValueError(f"the model returned shape {tuple(out.shape)} for input "
                                     f"{tuple(chunk.shape)}; expected (N, K) + the patch size {patch}")
                out = out.float()
                out = out.flip(dims) if dims else out
                total = out if total is None else total + out
        assert total is not None
        return total / len(flips) if len(flips) > 1 else total
    return run_batch


class _Accumulator:
    """Weighted logits and summed weights over the (padded) volume; on the GPU when they fit."""

    def __init__(self, n_classes: int, padded: Tuple[int, ...], device: torch.device, weight_map: torch.Tensor,
                 max_gib: float) -> None:
        n_bytes = (n_classes + 1) * math.prod(padded) * 4
        dev = device if _accumulate_on_gpu(device, n_bytes, max_gib) else torch.device("cpu")
        self.acc = torch.zeros((n_classes,) + padded, dtype=torch.float32, device=dev)
        self.weights = torch.zeros(padded, dtype=torch.float32, device=dev)
        self.weight_map = weight_map.to(dev)

    def add(self, outputs: List[torch.Tensor], windows: List[Tuple[slice, ...]], device: torch.device) -> None:
        if device.type == "cpu" and self.acc.device.type != "cpu":
            # After a fallback to the CPU, free the GPU entirely.
            self.acc, self.weights, self.weight_map = self.acc.cpu(), self.weights.cpu(), self.weight_map.cpu()
            _free_cuda_cache(self.acc.device)
        k = 0
        for out in outputs:
            out = out.to(self.acc.device)
            for j in range(out.shape[0]):
                w = windows[k]
                self.acc[(slice(None),) + w] += out[j] * self.weight_map
                self.weights[w] += self.weight_map
                k += 1

    def result(self, crop: Optional[Tuple[slice, ...]], return_probabilities: bool) -> np.ndarray:
        """Weighted mean logits (or their softmax) cropped back to the input."""
        self.acc /= self.weights
        result = self.acc if crop is None else self.acc[(slice(None),) + crop]
        if return_probabilities:
            # Softmax slab by slab along Z, in place: no second full-size volume.
            for z0 in range(0, result.shape[1], 32):
                slab = result[:, z0:z0 + 32]
                slab.copy_(torch.softmax(slab, dim=0))
        if crop is not None:
            result = result.contiguous()
        return result.cpu().numpy()


def _infer(x: torch.Tensor, model: Callable[[torch.Tensor], torch.Tensor], patch: Tuple[int, int, int],
           overlap: float, batch_size: int, device: torch.device, gaussian: bool,
           flips: List[Tuple[int, ...]], return_probabilities: bool,
           progress: Optional[Callable[[float], None]], should_cancel: Optional[Callable[[], bool]],
           log: Callable[[str], None], pad_value: Optional[float], amp_dtype: Optional[torch.dtype],
           gpu_accumulator_max_gib: float) -> np.ndarray:
    x, crop = _pad_to_patch(x, patch, pad_value)
    padded = tuple(x.shape[1:])
    starts = [compute_window_starts(s, p, overlap) for s, p in zip(padded, patch)]
    windows = [tuple(slice(st, st + p) for st, p in zip(corner, patch)) for corner in itertools.product(*starts)]
    run_batch = _batch_runner(model, patch, flips, amp_dtype)
    weight_map = torch.from_numpy(gaussian_importance_map(patch)) if gaussian else torch.ones(patch)
    acc: Optional[_Accumulator] = None
    n_done = 0
    while n_done < len(windows):
        if should_cancel is not None and should_cancel():
            raise Cancelled("Inference was cancelled.")
        batch_windows = windows[n_done:n_done + batch_size]
        patches = torch.stack([x[(slice(None),) + w] for w in batch_windows])
        outputs, device, batch_size = run_with_oom_fallback(run_batch, patches, device, batch_size, log)
        if acc is None:
            acc = _Accumulator(outputs[0].shape[1], padded, device, weight_map, gpu_accumulator_max_gib)
        acc.add(outputs, batch_windows, device)
        n_done += len(batch_windows)
        if progress is not None:
            progress(n_done / len(windows))
    assert acc is not None
    return acc.result(crop, return_probabilities)
