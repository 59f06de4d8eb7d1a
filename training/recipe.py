"""The training recipe: the ``"training"`` section of a stage config (training/configs/*.json).

Every key is optional; missing keys take the defaults below (seed 000's recipe: AdamW lr 1e-4, weight decay
1e-5, cosine schedule, batch 2, validation every 10 epochs, best-by-Dice kept). Unknown keys are an error, so
a typo never silently falls back to a default. ``loss`` is a :class:`training.losses.LossConfig` dict
(``num_classes`` is filled in from the stage's labels); ``augmentation`` an
:class:`training.augmentation.AugmentationConfig` dict, or ``null`` for no augmentation.

Sampling: ``foreground_fraction`` of the patches are centred on a random voxel of ``foreground_label``
(default: tumor for stage 2, kidney for stage 1), the rest on a uniformly random voxel; with
``second_foreground_label``, ``second_foreground_share`` of those foreground patches are centred on that label
instead, where an entry has it (cyst-centred patches, decision 112). Hard cases
(seed 002): entries containing ``hard_case_label`` (default cyst, the rare class often confused with tumor)
are drawn ``hard_case_factor`` times as often; with ``hard_loss_factor`` > 0 entries whose recent loss is
above the mean are drawn more often too (weight * (1 + factor * max(0, loss / mean loss - 1)), the
recent loss being an exponential average with ``hard_loss_momentum`` updated once per epoch).
``cpu_bf16`` runs the training forward pass on CPU in bfloat16 (as ``training.train --cpu-bf16``; CUDA has
``amp``). ``skip_random_intensity_cases`` leaves the generator's random-intensity cases out of training
(validation keeps them), for a stage that need not learn SynthSeg-style robustness on a small budget
(decision 49). ``ambiguous_tumor_separation`` (stage 2): a crop whose tumor stands out from the kidney within
10 mm of it by less than this (|mean difference| / pooled SD, on the network input) has its tumor, and the
kidney touching it, trained with tumor and kidney as one class (``training.ambiguity``, decision 86); null:
every crop keeps its full labels. ``box_jitter_mm`` [lo, hi] (stage 2): every face of a training patch's kidney
box moves by a distance drawn in [lo, hi] mm (outwards positive) from where the box rule puts it, and what lies
beyond is cut away as at inference, so that stage 2 learns boxes placed as loosely as stage 1 places them; the cache
must then be cut wider (``training.datasets.preprocess`` does that from the config: decision 95).
``augment_on_device``: the loader workers only cut patches (with their context margin) and the augmentation runs on
each batch on the training device (``training.batch_augmentation``; for GPUs, whose loaders could not keep up:
decision 111); off, the workers augment each patch with scipy.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

from .augmentation import AugmentationConfig
from .losses import DEFAULT_CLASS_WEIGHTS, LossConfig

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "poly", "constant")


@dataclass(frozen=True)
class TrainingRecipe:
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    momentum: float = 0.99                   # sgd only (nesterov)
    schedule: str = "cosine"                 # per iteration, over epochs * iterations_per_epoch
    min_lr: float = 0.0
    warmup_iterations: int = 0               # linear warm-up before the schedule
    batch_size: int = 2                      # per process (GPU); DDP's global batch is batch * world size
    epochs: int = 100
    iterations_per_epoch: int = 250
    val_every: int = 10                      # epochs; the last epoch is always validated
    val_overlap: float = 0.5                 # sliding-window overlap at validation
    val_batch_size: int = 2
    foreground_label: Optional[str] = None   # None: "tumor" if among the labels, else "kidney"
    foreground_fraction: float = 1.0 / 3.0
    second_foreground_label: Optional[str] = None  # e.g. "cyst": centres a share of the foreground patches
    second_foreground_share: float = 0.0
    interface_fraction: float = 0.0          # patches centred where liver, spleen or hilum meet the kidney
    skip_random_intensity_cases: bool = False  # synthetic data: train without the SynthSeg-style cases
    ambiguous_tumor_separation: Optional[float] = None  # crops whose tumor stands out less: marginal loss
    box_jitter_mm: Optional[Sequence[float]] = None  # [lo, hi]: stage-2 box faces moved this far (decision 95)
    hard_case_label: str = "cyst"            # entries with it (or cases with it, stage 1) are oversampled
    hard_case_factor: float = 2.0            # 1 = off
    hard_loss_factor: float = 0.0            # 0 = off
    hard_loss_momentum: float = 0.9
    grad_clip_norm: Optional[float] = 12.0   # nnU-Net's value; None = no clipping
    weight_average: float = 0.0              # per-step decay of the weights' moving average (0 = off; decision 88)
    amp: bool = True                         # CUDA float16; the CPU trains in float32 (or bfloat16: cpu_bf16)
    cpu_bf16: bool = False                   # CPU: the training forward pass in bfloat16 (decision 60)
    num_workers: int = 2                     # patch-loading processes (0 = in the training process)
    augment_on_device: bool = False          # augment each batch on the training device (decision 111)
    loss: Dict[str, Any] = field(default_factory=dict)
    augmentation: Optional[Dict[str, Any]] = field(default_factory=dict)
    notes: str = ""                          # free text (sources, deviations)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"training.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"training.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("batch_size", "epochs", "iterations_per_epoch", "val_every", "val_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"training.{name} must be a positive integer, got {v!r}")
        if not 0.0 <= self.weight_average < 1.0:
            raise ValueError(f"training.weight_average must be in [0, 1) (0 = off), got {self.weight_average!r}")
        for name in ("warmup_iterations", "num_workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"training.{name} must be a non-negative integer, got {v!r}")
        if not self.lr > 0 or self.min_lr < 0 or self.weight_decay < 0:
            raise ValueError("training.lr must be positive, min_lr and weight_decay non-negative")
        if not 0.0 <= self.foreground_fraction <= 1.0 or not 0.0 <= self.interface_fraction <= 1.0:
            raise ValueError("training.foreground_fraction and interface_fraction must be in [0, 1], got "
                             f"{self.foreground_fraction} and {self.interface_fraction}")
        if not 0.0 <= self.second_foreground_share <= 1.0 or (self.second_foreground_share > 0) != (
                self.second_foreground_label is not None):
            raise ValueError("training.second_foreground_share must be in [0, 1], above 0 exactly when "
                             f"second_foreground_label is set; got {self.second_foreground_share} and "
                             f"{self.second_foreground_label!r}")
        if not 0.0 <= self.val_overlap < 1.0:
            raise ValueError(f"training.val_overlap must be in [0, 1), got {self.val_overlap}")
        if self.hard_case_factor < 1.0 or self.hard_loss_factor < 0.0 or not 0 <= self.hard_loss_momentum < 1:
            raise ValueError("training.hard_case_factor must be >= 1, hard_loss_factor >= 0, "
                             "hard_loss_momentum in [0, 1)")
        sep = self.ambiguous_tumor_separation
        if sep is not None and (isinstance(sep, bool) or not isinstance(sep, (int, float)) or not sep > 0):
            raise ValueError(f"training.ambiguous_tumor_separation must be a positive number or null, got {sep!r}")
        jitter = self.box_jitter_mm
        if jitter is not None and (isinstance(jitter, (str, bytes)) or len(jitter) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in jitter) or jitter[0] > jitter[1]):
            raise ValueError(f"training.box_jitter_mm must be [lo, hi] in mm with lo <= hi, or null; got {jitter!r}")
        if jitter is not None:
            object.__setattr__(self, "box_jitter_mm", (float(jitter[0]), float(jitter[1])))
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"training.grad_clip_norm must be positive or null, got {self.grad_clip_norm}")
        if self.augmentation is not None:
            AugmentationConfig.from_dict(self.augmentation)  # validate early, before any data is read

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainingRecipe":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown training recipe keys {sorted(unknown)}; known: "
                             f"{sorted(f.name for f in dataclasses.fields(cls))}")
        return cls(**d)

    def with_overrides(self, **kw: Any) -> "TrainingRecipe":
        """Copy with the non-None keyword values replaced (command-line overrides)."""
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    # -- derived settings ------------------------------------------------------------------------------
    def loss_config(self, num_classes: int) -> LossConfig:
        d = {**self.loss, "num_classes": num_classes}
        if num_classes != len(DEFAULT_CLASS_WEIGHTS):  # the default weights are for the 4 stage-2 classes
            d.setdefault("class_weights", None)
        return LossConfig.from_dict(d)

    def augmentation_config(self) -> Optional[AugmentationConfig]:
        return None if self.augmentation is None else AugmentationConfig.from_dict(self.augmentation)

    def foreground_index(self, labels: Sequence[str]) -> int:
        name = self.foreground_label or ("tumor" if "tumor" in labels else "kidney")
        if name not in labels:
            raise ValueError(f"training.foreground_label {name!r} is not one of the stage's labels {list(labels)}")
        return list(labels).index(name)

    def second_foreground(self, labels: Sequence[str]) -> Optional[tuple]:
        """(class index, share of the foreground patches) for the second foreground label, or None."""
        if self.second_foreground_label is None:
            return None
        if self.second_foreground_label not in labels:
            raise ValueError(f"training.second_foreground_label {self.second_foreground_label!r} is not one of the "
                             f"stage's labels {list(labels)}")
        index = labels.index(self.second_foreground_label)
        if index in (0, self.foreground_index(labels)):
            raise ValueError(f"training.second_foreground_label must be neither background nor the foreground label, "
                             f"got {self.second_foreground_label!r}")
        return index, self.second_foreground_share

    def merged_classes(self, labels: Sequence[str]) -> Optional[tuple]:
        """(tumor, kidney) class indices that ambiguous crops merge, or None when the recipe merges none."""
        if self.ambiguous_tumor_separation is None:
            return None
        if "tumor" not in labels or "kidney" not in labels:
            raise ValueError(f"training.ambiguous_tumor_separation needs tumor and kidney labels, got {list(labels)}")
        return list(labels).index("tumor"), list(labels).index("kidney")

    @property
    def total_iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch
