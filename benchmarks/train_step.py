"""Time one training step of a stage config's network on this machine: float32 against autocast.

One step = the forward pass of a batch of the config's patch size (random input and labels; the time does
not depend on the values), the config's loss, the backward pass and an AdamW step, exactly as
``training.optim.train_step`` runs it; data loading and augmentation are not included. The precisions
alternate, so that load which changes over time is shared between them (load from other processes is still
best avoided: it need not slow both alike); each row is the median of ``--repeats`` steps after ``--warmup``
steps. On CPU the other precision is bfloat16 (``training.train --cpu-bf16``); on CUDA float16 with its
GradScaler, warmed up further until its scale settles (a step it skips would be timed as a fast one).

Usage (from the repository root):
    PYTHONPATH=KidneyTumorSeg python benchmarks/train_step.py [--config stage2_v2_scratch] [--device cpu]
        [--threads 2] [--repeats 5] [--warmup 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

import torch  # noqa: E402

from benchmarks.machine_info import machine  # noqa: E402
from training.losses import SegmentationLoss  # noqa: E402
from training.optim import make_optimizer, train_step  # noqa: E402
from training.recipe import TrainingRecipe  # noqa: E402
from training.stage_config import load_stage_config  # noqa: E402


def time_steps(config: str, device: torch.device, repeats: int, warmup: int) -> dict:
    """{precision name: median seconds per step} for float32 and the device's autocast precision."""
    stage = load_stage_config(config)
    recipe = TrainingRecipe.from_dict(stage.training)
    model = stage.build(0).to(device).train()
    loss_fn = SegmentationLoss(recipe.loss_config(len(stage.labels)))
    optimizer = make_optimizer(recipe, model.parameters())
    shape = (recipe.batch_size, 1) + tuple(stage.patch_size)
    batch = {"image": torch.randn(shape), "labels": torch.randint(0, len(stage.labels), (shape[0],) + shape[2:])}
    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    modes = {"float32": None, f"{str(low).split('.')[-1]} autocast": low}
    scalers = {name: torch.amp.GradScaler("cuda", enabled=dtype == torch.float16) for name, dtype in modes.items()}
    times = {name: [] for name in modes}
    for name, dtype in modes.items():  # the float16 scale starts high and halves on each overflowing step
        for _ in range(50 if scalers[name].is_enabled() else 0):
            scale = scalers[name].get_scale()
            train_step(model, batch, loss_fn, optimizer, scalers[name], device, dtype, recipe.grad_clip_norm)
            if scalers[name].get_scale() == scale:
                break
    for i in range(warmup + repeats):
        for name, dtype in modes.items():  # alternate, so that other load slows both alike
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_step(model, batch, loss_fn, optimizer, scalers[name], device, dtype, recipe.grad_clip_norm)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="stage2_v2_scratch", help="a stage config (file or name in training/configs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's choice)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    times = time_steps(args.config, device, args.repeats, args.warmup)
    base = times["float32"]
    print(f"| {args.config}: one training step | seconds (median of {args.repeats}) | speed-up |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} | {base / t:.2f}x |")
    print(f"\nmachine: {machine(args.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
