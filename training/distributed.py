"""Multi-GPU / multi-node training through ``torchrun`` (DistributedDataParallel).

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`setup` reads them and
joins the process group (nccl on CUDA, gloo on CPU). Without them (plain ``python -m training.train``) the
run is single-process and every helper here is a no-op, so the trainer has one code path.

    torchrun --nproc_per_node 4 -m training.train --config ... --data ... --out ...
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_endpoint HOST:PORT -m training.train ...
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from KidneyTumorSegLib.inference import THREADS_ENV

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank information from the torchrun environment (single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                    int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def setup(device_spec: str = "auto", timeout_minutes: float = 60.0) -> "tuple[DistInfo, torch.device]":
    """Join the process group (if launched by torchrun) and pick this process's device.

    Each process on a node takes GPU ``LOCAL_RANK``. The long timeout leaves room for rank 0's
    checkpoint writing and for validation shards of unequal length.
    """
    info = env_info()
    spec = str(device_spec).lower()
    use_cuda = torch.cuda.is_available() if spec == "auto" else spec.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is usable; use --device cpu.")
    if use_cuda:
        index = info.local_rank if info.enabled or ":" not in spec else int(spec.split(":")[1])
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=info.rank, world_size=info.world_size,
                                timeout=timedelta(minutes=timeout_minutes))
    return info, device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (returns the tensor). Reductions are done on the process's own device."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """``obj`` of rank ``src`` on every rank (e.g. a decision taken by rank 0)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """``fn()`` run on rank 0 only, its result sent to every rank. If it raises, every rank raises (instead of
    the other ranks waiting forever for a result that never comes)."""
    if not info.enabled:
        return fn()
    result = None
    if info.is_main:
        try:
            result = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - re-raised below on every rank
            broadcast_object(("error", f"{type(exc).__name__}: {exc}"), info)
            raise
    result = broadcast_object(result, info)
    if result[0] == "error":
        raise RuntimeError(f"rank 0 failed: {result[1]}")
    return result[1]


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device,
               find_unused_parameters: bool = False) -> torch.nn.Module:
    """DDP wrapper when distributed (it broadcasts rank 0's weights, so all ranks start equal)."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                     find_unused_parameters=find_unused_parameters)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def weights_checksum(model: torch.nn.Module, info: DistInfo, device: torch.device) -> Optional[bool]:
    """True when all ranks hold bit-identical weights (None when not distributed); a cheap sanity check."""
    if not info.enabled:
        return None
    flat = torch.cat([p.detach().float().reshape(-1) for p in unwrap(model).state_dict().values()
                      if p.is_floating_point()]).cpu()
    mine = torch.tensor([flat.double().sum().item(), (flat.double() ** 2).sum().item()], dtype=torch.float64,
                        device=device)  # nccl reduces GPU tensors only
    gathered = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def configure_threads(info: ddp.DistInfo) -> int:
    """One thread count for the whole run (also for the validation's sliding window, via its env var):
    several ranks on one machine share its cores, and a constant count keeps CPU results reproducible."""
    if os.environ.get(THREADS_ENV):
        n = int(os.environ[THREADS_ENV])
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = max(1, cores // info.local_world_size)
        os.environ[THREADS_ENV] = str(n)
    torch.set_num_threads(n)
    return n


def configure_determinism(deterministic: bool) -> None:
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
