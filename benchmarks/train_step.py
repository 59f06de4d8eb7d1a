"""Time one training step of a stage config's network on this machine: float32 against autocast.

One step = the forward pass of a batch of the config's patch size (random input and labels; the time does
not depend on the values), the config's loss, the backward pass and an AdamW step, exactly as
``training.optim.train_step`` runs it; data loading and augmentation are not included. The precisions
alternate, so that load which changes over time is shared between them (load from other processes is still
best avoided: it need not slow both alike); each row is the median of ``--repeats`` steps after ``--warmup``
steps. On CPU the other precision is bfloat16 (``training.train --cpu-bf16``); on CUDA float16 with its
GradScaler, warmed up further until its scale settles (a step it skips would be timed as a fast one).
``--flops`` prints instead the network's parameters and the FLOPs of one float32 step (forward + backward,
PyTorch's ``FlopCounterMode``, which counts matrix products and convolutions), the figures of
training/README.md's compute table.

Usage (from the repository root):
    PYTHONPATH=KidneyTumorSeg python benchmarks/train_step.py [--config stage2_v2_scratch] [--device cpu]
        [--threads 2] [--repeats 5] [--warmup 2] [--flops [--patch Z Y X]]
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


def _setup(config: str, device: torch.device, patch_size=None):
    """The config's recipe, network, loss, optimizer and a random batch (``patch_size`` overrides the config's)."""
    stage = load_stage_config(config)
    recipe = TrainingRecipe.from_dict(stage.training)
    model = stage.build(0).to(device).train()
    loss_fn = SegmentationLoss(recipe.loss_config(len(stage.labels)))
    shape = (recipe.batch_size, 1) + tuple(patch_size or stage.patch_size)
    batch = {"image": torch.randn(shape), "labels": torch.randint(0, len(stage.labels), (shape[0],) + shape[2:])}
    return recipe, model, loss_fn, make_optimizer(recipe, model.parameters()), batch


def step_cost(config: str, device: torch.device, patch_size=None) -> dict:
    """The network's parameters and the FLOPs of one float32 training step (forward + backward) on a batch of
    the config's batch size and patch size (``patch_size`` overrides the latter)."""
    from torch.utils.flop_counter import FlopCounterMode

    recipe, model, loss_fn, optimizer, batch = _setup(config, device, patch_size)
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, batch, loss_fn, optimizer, torch.amp.GradScaler("cuda", enabled=False), device, None,
                   recipe.grad_clip_norm)
    return {"parameters": sum(p.numel() for p in model.parameters()), "flops": counter.get_total_flops(),
            "patch_size": list(batch["image"].shape[2:]), "batch_size": recipe.batch_size}


def time_steps(config: str, device: torch.device, repeats: int, warmup: int) -> dict:
    """{precision name: median seconds per step} for float32 and the device's autocast precision."""
    recipe, model, loss_fn, optimizer, batch = _setup(config, device)
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
    p.add_argument("--flops", action="store_true", help="print parameters and FLOPs of one step instead of times")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="with --flops: this patch instead of the config's (a paper-size patch may not fit in memory)")
    args = p.parse_args(argv)
    if args.patch and not args.flops:
        p.error("--patch is for --flops (the times use the config's own patch)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.flops:
        c = step_cost(args.config, device, args.patch)
        print(f"| {args.config} | parameters {c['parameters']:,} | batch {c['batch_size']} x patch "
              f"{'x'.join(map(str, c['patch_size']))} | {c['flops'] / 1e9:.0f} GFLOP per float32 step |")
        return 0
    times = time_steps(args.config, device, args.repeats, args.warmup)
    base = times["float32"]
    print(f"| {args.config}: one training step | seconds (median of {args.repeats}) | speed-up |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} | {base / t:.2f}x |")
    print(f"\nmachine: {machine(args.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
