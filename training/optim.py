"""Optimisation for the trainer: the optimizer, the learning-rate schedule and one training step."""
from __future__ import annotations

import math
import sys
from typing import Callable, Dict, Optional, Tuple

import torch

from .ambiguity import merge_output
from .recipe import TrainingRecipe


def make_optimizer(recipe: TrainingRecipe, params) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                           weight_decay=recipe.weight_decay)


def lr_factor(recipe: TrainingRecipe, iteration: int) -> float:
    """LR multiplier after ``iteration`` steps: linear warm-up, then the schedule down to min_lr."""
    if iteration < recipe.warmup_iterations:
        return (iteration + 1) / recipe.warmup_iterations
    span = max(recipe.total_iterations - recipe.warmup_iterations, 1)
    t = min(max(iteration - recipe.warmup_iterations, 0) / span, 1.0)
    floor = recipe.min_lr / recipe.lr
    if recipe.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    if recipe.schedule == "poly":
        return floor + (1 - floor) * (1 - t) ** 0.9
    return 1.0


def make_scheduler(recipe: Callable[[], TrainingRecipe], optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    # A plain function (not saved in the state) of the run's recipe as it stands at each step: the horizon
    # follows the CURRENT recipe, so --epochs may extend a resumed run and --fit-epochs may move it while the run
    # trains; the step count (last_epoch) is what the state restores.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(recipe(), it))


def train_step(model, batch: Dict[str, torch.Tensor], loss_fn, optimizer, scaler, device: torch.device,
               autocast: Optional[torch.dtype], clip: Optional[float],
               merged: Optional[Tuple[int, int]] = None) -> Dict[str, float]:
    """One optimisation step, the forward pass under ``autocast`` (float16 on CUDA with the GradScaler,
    bfloat16 on CPU without one; None: float32); returns the loss components as floats (non-finite loss:
    step skipped). ``merged`` (src, dst): in the samples the batch flags ``"merge"``, class src is folded into
    dst on and around src's voxels before the loss (``training.ambiguity``, the marginal loss)."""
    image = batch["image"].to(device, non_blocking=True)
    target = batch["labels"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        output = model(image)
    region = None
    if merged is not None:
        output, target, region = merge_output(output, target, batch["merge"], *merged)
    # float32 (the losses cast the logits)
    loss, comps = loss_fn(output, target) if region is None else loss_fn(output, target, region)
    # Always backward, even for a non-finite loss: under DDP every rank must join the gradient all-reduce.
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones (no-op without AMP)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf"))
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips the step itself on inf/NaN gradients
    elif torch.isfinite(norm):  # the norm of the all-reduced gradients: the same decision on every rank
        optimizer.step()
    scaler.update()
    return {k: float(v) for k, v in comps.items()}


def cpu_bf16(asked: bool, device: torch.device, resumed: Optional[bool] = None) -> bool:
    """Whether training runs its forward pass in bfloat16 (``--cpu-bf16``, CPU only). ``resumed``: what the run
    being resumed used (False for runs from before the flag); a run keeps one precision, so that its
    provenance is true."""
    use = bool(asked and device.type == "cpu")
    if asked and device.type != "cpu":
        print(f"cpu_bf16 (--cpu-bf16) is ignored on {device.type}", file=sys.stderr)
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    if use and not supported():
        print("cpu_bf16: this CPU has no bfloat16 instructions; training will be slower, not faster",
              file=sys.stderr)
    if resumed is not None and resumed != use:
        raise SystemExit(f"--resume: this run trained {'with' if resumed else 'without'} --cpu-bf16; resume it the "
                         "same way (or start a new run from its weights with --init).")
    return use
