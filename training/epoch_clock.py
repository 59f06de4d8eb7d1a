"""A training time limit that ends at an epoch boundary, so the last epoch is validated and saved; and, with
``train --fit-epochs``, the number of epochs that fit in it (the schedule then ends with the time: decision 115)."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, List, Optional

import torch

from KidneyTumorSegLib.atomic import write_text

from . import distributed as ddp

if TYPE_CHECKING:  # the trainer imports this module
    from .train import Run


class EpochClock:
    """Whether another epoch fits in ``max_minutes`` since the run started: it assumes the next epoch takes
    as long as the longest so far (its validation included; the first epoch of the invocation, which pays the
    warm-up, left out once there are others; before the first, 1.5 times the training part). All ranks get the
    same answer (any rank out of time stops them all)."""

    def __init__(self, max_minutes: Optional[float]) -> None:
        self.limit_s = None if max_minutes is None else 60.0 * max_minutes
        self.start = time.perf_counter()
        self.epoch_start = self.start
        self.epochs: List[float] = []       # each epoch of this invocation, whole
        self.train_parts: List[float] = []  # its optimisation part
        self.val_s: Optional[float] = None  # the longest rest of a validated epoch (validation and saving)
        self.save_s = 0.0                   # the longest rest of an epoch without validation (saving)

    def no_time_for_another(self, info: ddp.DistInfo, device: torch.device) -> bool:
        if self.limit_s is None:
            return False
        now = time.perf_counter()
        next_s = max(self.epochs[1:] or self.epochs or [1.5 * (now - self.epoch_start)])
        late = float(now - self.start + next_s > self.limit_s)
        return bool(ddp.all_reduce_sum(torch.tensor([late], device=device), info).item() > 0)

    def epoch_done(self, seconds: float, train_seconds: float, validated: bool = False) -> None:
        self.epochs.append(seconds)
        self.train_parts.append(train_seconds)
        self.epoch_start = time.perf_counter()
        if validated:
            self.val_s = max(self.val_s or 0.0, seconds - train_seconds)
        else:
            self.save_s = max(self.save_s, seconds - train_seconds)

    def epochs_that_fit(self, done: int, val_every: Optional[int], info: ddp.DistInfo, device: torch.device) -> int:
        """The run's number of epochs such that those after the ``done`` ones end within the limit (at least
        one more): each takes the mean optimisation time of this invocation's epochs after the first (which pays
        the warm-up) plus the saving, and each validated one (every ``val_every``-th and the last; None: no
        validation) what the longest validation so far added to that (before the first, an epoch's optimisation:
        a guess that errs on the short side). Ranks agree (means over them)."""
        if self.limit_s is None or len(self.train_parts) < 2:
            raise ValueError("epochs_that_fit needs --max-minutes and two finished epochs (the first pays the warm-up)")
        train_s = sum(self.train_parts[1:]) / (len(self.train_parts) - 1)
        val_s = 0.0 if val_every is None else train_s if self.val_s is None else max(self.val_s - self.save_s, 0.0)
        left_s = self.limit_s - (time.perf_counter() - self.start)
        mean = ddp.all_reduce_sum(torch.tensor([left_s, train_s + self.save_s, val_s], dtype=torch.float64,
                                               device=device), info) / info.world_size
        left_s, epoch_s, val_s = (float(v) for v in mean.cpu())
        return done + max(1, most_epochs(left_s, epoch_s, val_s, done, val_every))


def most_epochs(seconds: float, epoch_s: float, val_s: float, done: int, val_every: Optional[int]) -> int:
    """The most epochs n after the ``done`` ones whose optimisation (``epoch_s`` each) and validations
    (``val_s`` each: epochs done+1..done+n that are multiples of ``val_every``, and the last) fit in
    ``seconds``; 0 if none. The cost grows with n, so a bisection finds it."""
    def cost(n: int) -> float:
        if n == 0:
            return 0.0
        if val_every is None:
            return n * epoch_s
        validations = (done + n) // val_every - done // val_every + ((done + n) % val_every != 0)
        return n * epoch_s + validations * val_s

    lo, hi = 0, min(int(seconds / max(epoch_s, 1e-9)) + 1, 10 ** 7)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= seconds:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit_epochs(r: "Run", scheduler: torch.optim.lr_scheduler.LambdaLR, clock: EpochClock, done: int,
               first_fit: bool) -> None:
    """--fit-epochs: the run's number of epochs becomes what fits in --max-minutes, so the learning-rate schedule
    (a function of the recipe, which the saved config carries for --resume) ends when the time does."""
    epochs = clock.epochs_that_fit(done, r.recipe.val_every if r.val_entries else None, r.info, r.device)
    if first_fit:
        r.say(f"--fit-epochs: {epochs} epochs fit in --max-minutes {r.args.max_minutes:g} (the config has "
              f"{r.recipe.epochs}); the schedule follows, refitted before each epoch")
    if epochs == r.recipe.epochs:
        return
    r.recipe = r.recipe.with_overrides(epochs=epochs)
    r.config = {**r.config, "training": r.recipe.to_dict()}
    r.provenance.update(recipe=r.recipe.to_dict(), epochs=epochs)
    # The scheduler set the next step's learning rate from the old horizon at its last step: set it anew.
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    if r.info.is_main:
        write_text(r.out / "config.json", json.dumps(r.config, indent=1))
