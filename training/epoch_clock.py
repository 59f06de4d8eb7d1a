"""A training time limit that ends at an epoch boundary, so the last epoch is validated and saved."""
from __future__ import annotations

import time
from typing import Optional

import torch

from . import distributed as ddp


class EpochClock:
    """Whether another epoch fits in ``max_minutes`` since the run started: it assumes the next epoch takes
    as long as the longest so far (its validation included; before the first, 1.5 times the training
    part). All ranks get the same answer (any rank out of time stops them all)."""

    def __init__(self, max_minutes: Optional[float]) -> None:
        self.limit_s = None if max_minutes is None else 60.0 * max_minutes
        self.start = time.perf_counter()
        self.longest_s = 0.0
        self.epoch_start = self.start

    def no_time_for_another(self, info: ddp.DistInfo, device: torch.device) -> bool:
        if self.limit_s is None:
            return False
        now = time.perf_counter()
        next_s = self.longest_s or 1.5 * (now - self.epoch_start)
        late = float(now - self.start + next_s > self.limit_s)
        return bool(ddp.all_reduce_sum(torch.tensor([late], device=device), info).item() > 0)

    def epoch_done(self, seconds: float) -> None:
        self.longest_s = max(self.longest_s, seconds)
        self.epoch_start = time.perf_counter()
