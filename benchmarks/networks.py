"""Benchmark the segmentation networks: parameters, forward time and peak memory.

Prints a Markdown table (batch 1, 1 input channel, torch.inference_mode, median
of ``--repeats`` runs after one warm-up; rows whose warm-up is slow do fewer
timed runs so that each row takes about ``--budget`` seconds). Each measurement runs in a fresh
subprocess so memory peaks do not leak between rows:

- CPU peak: the process RSS high-water mark (/proc/self/status VmHWM) reset via
  /proc/self/clear_refs just before the forward passes; "peak" is that
  high-water mark minus the RSS before the passes (model + input already
  allocated), i.e. the extra memory the forward needs;
- CUDA peak: torch.cuda.max_memory_allocated (model weights included).

Usage (from the repository root):
    PYTHONPATH=KidneyTumorSeg python benchmarks/networks.py [--quick] [--sizes 96 128]
        [--configs improved_vnet:paper residual_unet:default] [--devices cpu cuda] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "KidneyTumorSeg"))
sys.path.insert(0, str(REPO))

from benchmarks.machine_info import machine  # noqa: E402


def _status_kib(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _worker(config: str, size: int, device: str, repeats: int, threads: Optional[int],
            budget_s: float = 30.0) -> Dict:
    """Run one measurement in this (fresh) process and return it as a dict."""
    import torch

    from KidneyTumorSegLib.networks import build_network, count_parameters

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_network(*_resolve(config)).eval().to(device)
    x = torch.randn(1, 1, size, size, size, device=device)
    result = {"config": config, "size": size, "device": device, "params": count_parameters(model)}

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    hwm_reset = False
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        base_kib = _status_kib("VmRSS")
        try:  # "5" resets the peak RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            hwm_reset = True
        except OSError:
            pass
    times: List[float] = []
    runs = repeats
    with torch.inference_mode():
        i = 0
        while i <= runs:
            sync()
            t0 = time.perf_counter()
            out = model(x)
            sync()
            dt = time.perf_counter() - t0
            del out
            if i == 0:  # warm-up; cap the timed runs at ~budget_s of work (slow CPU rows)
                runs = max(1, min(repeats, int(budget_s // max(dt, 1e-9))))
            else:
                times.append(dt)
            i += 1
    result["time_s"] = statistics.median(times)
    result["runs"] = len(times)
    if device == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        result["peak_kind"] = "max_memory_allocated"
    else:
        hwm = _status_kib("VmHWM")
        result["peak_mib"] = (hwm - base_kib) / 1024 if hwm_reset and hwm and base_kib else None
        result["process_hwm_mib"] = hwm / 1024 if hwm else None
    return result


def _resolve(config: str):
    """``name:preset`` from the networks registry, or ``stage:NAME`` for a definition in training/configs
    (the shipped stage networks)."""
    from KidneyTumorSegLib.networks import PRESETS
    name, _, preset = config.partition(":")
    if name == "stage":
        sys.path.insert(0, str(REPO))
        from training.stage_config import load_stage_config
        stage = load_stage_config(preset)
        return stage.network_name, stage.network
    return name, PRESETS[name][preset]


def main(argv: Optional[List[str]] = None) -> int:
    import torch

    from KidneyTumorSegLib.networks import PRESETS

    all_configs = [f"{n}:{p}" for n, presets in PRESETS.items() for p in presets] + [
        "stage:stage1_default", "stage:stage2_default"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=all_configs, help=f"name:preset (default all: {all_configs})")
    ap.add_argument("--sizes", nargs="+", type=int, default=[96, 128], help="cube edge lengths (default 96 128)")
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if available)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds of timed runs per row; slow rows do fewer runs (at least 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's choice)")
    ap.add_argument("--quick", action="store_true", help="96^3 only, 1 timed run")
    ap.add_argument("--worker", nargs=3, metavar=("CONFIG", "SIZE", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        cfg, size, dev = args.worker
        print(json.dumps(_worker(cfg, int(size), dev, args.repeats, args.threads, args.budget)))
        return 0

    for c in args.configs:
        n, _, p = c.partition(":")
        if c not in all_configs and not (n in PRESETS and p in PRESETS[n]):
            ap.error(f"unknown config {c!r}; choose from {all_configs}")
    sizes, repeats = ([96], 1) if args.quick else (args.sizes, args.repeats)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    print(machine("cpu"))
    print()
    print("| network:preset | parameters | device | input | forward time (s, median) | timed runs "
          "| peak memory (MiB) |")
    print("|---|---:|---|---|---:|---:|---:|")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "KidneyTumorSeg"),
                                                                        os.environ.get("PYTHONPATH")]))}
    for dev in devices:
        for cfg in args.configs:
            for size in sizes:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--repeats", str(repeats),
                       "--budget", str(args.budget),
                       "--worker", cfg, str(size), dev]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"| {cfg} | | {dev} | {size}^3 | failed: {err} | | |", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
                if dev == "cpu" and r.get("process_hwm_mib"):
                    peak += f" (process {r['process_hwm_mib']:.0f})"
                print(f"| {cfg} | {r['params']:,} | {dev} | {size}^3 | {r['time_s']:.3f} | {r['runs']} | {peak} |",
                      flush=True)
    print()
    print("CPU peak = RSS high-water during the forward passes minus RSS before them "
          "(process = whole-process high-water); CUDA peak = torch.cuda.max_memory_allocated.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
