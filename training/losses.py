"""Training losses: weighted cross-entropy, soft Dice, Dice+CE, boundary weighting, focal loss, deep supervision.

Shapes: logits (N, C, Z, Y, X), target labels (N, Z, Y, X) long in 0..C-1. All losses are computed in
float32 (logits are cast), so mixed-precision training does not change them.

Sources: the improved V-Net paper (seed 000: class weights background 0.2, kidney 0.8, tumor 1.5; loss
0.6 Dice + 0.4 CE; boundary supervision with contour voxels weighted 2.5 in the cross-entropy) and seed 002
(focal loss + weighted Dice). The cyst (KiTS23 label 3) is not in 000; it gets the tumor's weight 1.5.

Weighted cross-entropy is a weighted MEAN, sum(w_i * nll_i) / sum(w_i), as ``F.cross_entropy(weight=...)``:
only relative weights matter and the scale stays that of plain CE. Per-voxel weights (boundary) multiply
the class weights in the same mean.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from KidneyTumorSegLib.networks.blocks import NetworkOutput
from KidneyTumorSegLib.networks.config_checks import coerce_tuples

DEFAULT_CLASS_WEIGHTS: Tuple[float, ...] = (0.2, 0.8, 1.5, 1.5)  # background, kidney, tumor, cyst
Weights = Optional[Sequence[float]]


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 5:
        raise ValueError(f"logits must be (N, C, Z, Y, X), got shape {tuple(logits.shape)}")
    if tuple(target.shape) != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"target must be (N, Z, Y, X) = {(logits.shape[0],) + tuple(logits.shape[2:])}, "
                         f"got {tuple(target.shape)}")
    if target.dtype != torch.long:
        raise ValueError(f"target must be a long tensor of labels, got {target.dtype}")


def _per_class(values: Weights, logits: torch.Tensor, name: str) -> Optional[torch.Tensor]:
    if values is None:
        return None
    t = torch.as_tensor(tuple(values), dtype=torch.float32, device=logits.device)
    if t.numel() != logits.shape[1]:
        raise ValueError(f"{name} has {t.numel()} values but the logits have {logits.shape[1]} classes")
    return t


# -- basic losses -----------------------------------------------------------------------------------------
def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           class_weights: Weights = DEFAULT_CLASS_WEIGHTS,
                           voxel_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy, weighted mean over voxels with weight class_weights[label] * voxel_weights."""
    _check(logits, target)
    nll = F.cross_entropy(logits.float(), target, reduction="none")
    cw = _per_class(class_weights, logits, "class_weights")
    w = cw[target] if cw is not None else torch.ones_like(nll)
    if voxel_weights is not None:
        w = w * voxel_weights.to(w.dtype)
    return (w * nll).sum() / w.sum().clamp_min(1e-12)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = False,
                   batch_dice: bool = True, smooth: float = 1e-5, class_weights: Weights = None) -> torch.Tensor:
    """1 - mean soft Dice of the softmax probabilities, per class.

    ``batch_dice``: sums over the batch and space (one Dice per class, nnU-Net's choice for small batches);
    else one Dice per sample and class, averaged. ``smooth`` goes into numerator and denominator, so a class
    absent from target and prediction scores 1. ``class_weights`` (all C classes, background included even
    if ignored) turn the mean over classes into a weighted mean (seed 002's weighted Dice).
    """
    _check(logits, target)
    probs = torch.softmax(logits.float(), dim=1)
    onehot = torch.zeros_like(probs).scatter_(1, target[:, None], 1.0)  # float, no int64 one-hot copy
    cw = _per_class(class_weights, logits, "class_weights")
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
        cw = cw[1:] if cw is not None else None
    dims = (0, 2, 3, 4) if batch_dice else (2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth).clamp_min(1e-12)
    if not batch_dice:
        dice = dice.mean(0)  # (N, C') -> (C')
    if cw is None:
        return 1.0 - dice.mean()
    return 1.0 - (cw * dice).sum() / cw.sum().clamp_min(1e-12)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: Weights = None
               ) -> torch.Tensor:
    """Mean over voxels of -alpha[label] * (1 - p_t)^gamma * log(p_t) (Lin et al.; seed 002)."""
    _check(logits, target)
    logpt = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None])[:, 0]
    loss = -((1.0 - logpt.exp()).clamp_min(0.0) ** gamma) * logpt
    a = _per_class(alpha, logits, "alpha")
    if a is not None:
        loss = loss * a[target]
    return loss.mean()


# -- boundary -----------------------------------------------------------------------------------------------
def boundary_map(target: torch.Tensor) -> torch.Tensor:
    """Bool (N, Z, Y, X): voxels whose label differs from one of their 6 face neighbours.

    BOTH sides of every interface are marked (e.g. a cube's outer surface layer and the background layer
    touching it), so the contour is two voxels thick and symmetric between the classes. Neighbours outside
    the volume do not exist (max pooling pads with -inf), so the volume edge is not a contour.
    Max/min pooling along one axis at a time gives the 6-neighbourhood and runs on any device.
    """
    if target.dim() != 4:
        raise ValueError(f"target must be (N, Z, Y, X), got shape {tuple(target.shape)}")
    x = target[:, None].float()  # labels are small integers: exact in float32
    hi, lo = x, x
    for k in ((3, 1, 1), (1, 3, 1), (1, 1, 3)):
        pad = tuple(s // 2 for s in k)
        hi = torch.maximum(hi, F.max_pool3d(x, k, stride=1, padding=pad))
        lo = torch.minimum(lo, -F.max_pool3d(-x, k, stride=1, padding=pad))
    return ((hi != x) | (lo != x))[:, 0]


def boundary_voxel_weights(target: torch.Tensor, contour_weight: float = 2.5,
                           contour: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Float (N, Z, Y, X): ``contour_weight`` on :func:`boundary_map` voxels, 1 elsewhere."""
    contour = boundary_map(target) if contour is None else contour
    return 1.0 + (float(contour_weight) - 1.0) * contour.float()


def boundary_head_loss(boundary_logits: torch.Tensor, target: torch.Tensor,
                       contour: Optional[torch.Tensor] = None, pos_weight: Optional[float] = None,
                       ignore: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean BCE of the boundary head's logits (N, 1, Z, Y, X) against :func:`boundary_map` of ``target``, over
    the voxels not in ``ignore`` (N, Z, Y, X) bool, if given."""
    if boundary_logits.dim() != 5 or boundary_logits.shape[1] != 1:
        raise ValueError(f"boundary logits must be (N, 1, Z, Y, X), got {tuple(boundary_logits.shape)}")
    contour = boundary_map(target) if contour is None else contour
    pw = None if pos_weight is None else torch.tensor(float(pos_weight), device=boundary_logits.device)
    if ignore is None:
        return F.binary_cross_entropy_with_logits(boundary_logits[:, 0].float(), contour.float(), pos_weight=pw)
    keep = (~ignore).float()
    return F.binary_cross_entropy_with_logits(boundary_logits[:, 0].float(), contour.float(), weight=keep,
                                              pos_weight=pw, reduction="sum") / keep.sum().clamp_min(1.0)


# -- deep supervision ---------------------------------------------------------------------------------------
def deep_supervision_weights(n_outputs: int) -> Tuple[float, ...]:
    """1, 1/2, 1/4, ... for the main output then each coarser one, normalised to sum 1 (nnU-Net).

    Unlike nnU-Net v2 the coarsest output keeps its weight: our auxiliary logits are already upsampled to
    full size, so none of them is a near-useless few-voxel map.
    """
    if n_outputs < 1:
        raise ValueError(f"need at least one output, got {n_outputs}")
    w = [0.5 ** i for i in range(n_outputs)]
    return tuple(v / sum(w) for v in w)


# -- configurable total loss ----------------------------------------------------------------------------------
def _check_weights(name: str, values: Optional[Tuple[float, ...]], n: int, allow_none: bool) -> None:
    if values is None:
        if not allow_none:
            raise ValueError(f"{name} is required")
        return
    if not isinstance(values, tuple) or len(values) != n:
        raise ValueError(f"{name} must have num_classes = {n} values, got {values!r}")
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"{name} must be non-negative numbers with a positive sum, got {values!r}")


@dataclass(frozen=True)
class LossConfig:
    """Settings of :class:`SegmentationLoss`; defaults follow seed 000 (focal term of seed 002 off)."""

    num_classes: int = 4
    class_weights: Optional[Tuple[float, ...]] = DEFAULT_CLASS_WEIGHTS  # CE; None = unweighted
    dice_weight: float = 0.6
    ce_weight: float = 0.4
    focal_weight: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: Optional[Tuple[float, ...]] = None
    dice_include_background: bool = False
    batch_dice: bool = True
    dice_smooth: float = 1e-5
    dice_class_weights: Optional[Tuple[float, ...]] = None  # weighted Dice (seed 002); None = plain mean
    boundary_weight: float = 2.5  # CE weight of contour voxels; 1.0 turns the weighting off
    boundary_head_weight: float = 1.0  # weight of the boundary head's BCE when the network has the head
    boundary_pos_weight: Optional[float] = None  # BCE pos_weight for the sparse contour class
    deep_supervision: bool = True  # use NetworkOutput.deep_supervision when present

    def __post_init__(self) -> None:
        coerce_tuples(self)
        n = self.num_classes
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {n!r}")
        _check_weights("class_weights", self.class_weights, n, allow_none=True)
        _check_weights("focal_alpha", self.focal_alpha, n, allow_none=True)
        _check_weights("dice_class_weights", self.dice_class_weights, n, allow_none=True)
        for name in ("dice_weight", "ce_weight", "focal_weight", "focal_gamma", "dice_smooth",
                     "boundary_head_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {v!r}")
        if self.dice_weight + self.ce_weight + self.focal_weight <= 0:
            raise ValueError("at least one of dice_weight, ce_weight, focal_weight must be positive")
        if not isinstance(self.boundary_weight, (int, float)) or not self.boundary_weight > 0:
            raise ValueError(f"boundary_weight must be a positive number, got {self.boundary_weight!r}")
        if self.boundary_pos_weight is not None and not self.boundary_pos_weight > 0:
            raise ValueError(f"boundary_pos_weight must be positive or None, got {self.boundary_pos_weight!r}")
        for name in ("dice_include_background", "batch_dice", "deep_supervision"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LossConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown LossConfig keys: {sorted(unknown)}")
        return cls(**d)


class SegmentationLoss(nn.Module):
    """Total training loss from a :class:`LossConfig`.

    total = sum_i ds_i * [dice_w * Dice(out_i) + ce_w * CE_boundary(out_i) + focal_w * Focal(out_i)]
            + boundary_head_w * BCE(boundary logits, contour map)
    where out_0 is the main logits, out_1.. the deep-supervision logits (already at full size, so all are
    compared with the same target) and ds_i = :func:`deep_supervision_weights`. ``forward`` returns
    (total, components); ``boundary_ignore`` (N, Z, Y, X) bool leaves voxels out of the boundary head's BCE
    (the marginal loss's merged voxels, ``training.ambiguity``). Components are detached: 'dice', 'ce',
    'focal' (each ds-weighted over the outputs, so total = the weighted sum of the components),
    'boundary_head' (0 without a head) and 'total'.
    """

    def __init__(self, config: Optional[LossConfig] = None) -> None:
        super().__init__()
        self.config = config if config is not None else LossConfig()

    def forward(self, output: Union[NetworkOutput, torch.Tensor], target: torch.Tensor,
                boundary_ignore: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        cfg = self.config
        if isinstance(output, NetworkOutput):
            outputs = (output.logits,) + (tuple(output.deep_supervision) if cfg.deep_supervision else ())
            boundary_logits = output.boundary
        elif isinstance(output, torch.Tensor):
            outputs, boundary_logits = (output,), None
        else:
            raise TypeError(f"expected NetworkOutput or a logits tensor, got {type(output).__name__}")
        logits = outputs[0]
        _check(logits, target)
        if logits.shape[1] != cfg.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, LossConfig.num_classes is {cfg.num_classes}")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= cfg.num_classes):
            raise ValueError(f"target labels must lie in 0..{cfg.num_classes - 1}, got "
                             f"{int(target.min())}..{int(target.max())}")
        need_contour = cfg.boundary_weight != 1.0 or boundary_logits is not None
        contour = boundary_map(target) if need_contour else None  # once, shared by all outputs
        voxel_w = boundary_voxel_weights(target, cfg.boundary_weight, contour) if cfg.boundary_weight != 1.0 else None
        zero = logits.new_zeros((), dtype=torch.float32)
        parts = {"dice": zero, "ce": zero, "focal": zero}
        for w, out in zip(deep_supervision_weights(len(outputs)), outputs):
            _check(out, target)
            if cfg.dice_weight > 0:
                parts["dice"] = parts["dice"] + w * soft_dice_loss(
                    out, target, include_background=cfg.dice_include_background, batch_dice=cfg.batch_dice,
                    smooth=cfg.dice_smooth, class_weights=cfg.dice_class_weights)
            if cfg.ce_weight > 0:
                parts["ce"] = parts["ce"] + w * weighted_cross_entropy(out, target, cfg.class_weights, voxel_w)
            if cfg.focal_weight > 0:
                parts["focal"] = parts["focal"] + w * focal_loss(out, target, cfg.focal_gamma, cfg.focal_alpha)
        parts["boundary_head"] = zero
        if boundary_logits is not None and cfg.boundary_head_weight > 0:
            parts["boundary_head"] = boundary_head_loss(boundary_logits, target, contour, cfg.boundary_pos_weight,
                                                        boundary_ignore)
        total = (cfg.dice_weight * parts["dice"] + cfg.ce_weight * parts["ce"] + cfg.focal_weight * parts["focal"]
                 + cfg.boundary_head_weight * parts["boundary_head"])
        components = {k: v.detach() for k, v in parts.items()}
        components["total"] = total.detach()
        return total, components
