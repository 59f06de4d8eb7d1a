"""One line that says which machine a figure came from: CPU model, usable cores, torch, threads, and the
device the figure was measured on (with the GPU's name), for every benchmark script."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f" ({torch.cuda.get_device_name()})" if str(device).startswith("cuda") and torch.cuda.is_available() else ""
    return (f"{cpu_name()}, {cores} cores usable, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, measured on {device}{gpu}")
