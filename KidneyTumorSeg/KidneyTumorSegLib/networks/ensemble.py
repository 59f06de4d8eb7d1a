"""Several trained networks of one architecture run as one: their class probabilities are averaged.

Independently trained networks make different mistakes; where only one of them calls a structure tumor, the
average falls below one half and the label goes (nnU-Net ensembles its folds the same way). ``forward``
returns the log of the averaged softmax, so anything that applies a softmax to a network's logits gets exactly
the averaged probabilities. The sliding window blends overlapping windows (and mirror flips) as logits, so
where windows overlap the result is their normalised geometric mean of those averages, as for one network.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """Inference only: the members' softmax averaged over the class axis (dim 1), returned as its log."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two networks, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("Ensemble is for inference; train its members one by one.")
        total = None
        for member in self.members:
            out = member(x)
            if isinstance(out, (tuple, list)):  # a training-style output: logits come first
                out = out[0]
            p = torch.softmax(out.float(), dim=1)
            total = p if total is None else total + p
        assert total is not None
        # The floor keeps log() finite where every member gives a class exactly 0 (float32 underflow).
        return torch.log((total / len(self.members)).clamp_min(1e-12))
