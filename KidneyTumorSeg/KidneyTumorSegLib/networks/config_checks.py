"""Validation of the networks' frozen config dataclasses: one sentence per bad field, raised as ValueError."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .blocks import ACTIVATIONS, NORMS, PAD_MODES


def coerce_tuples(cfg: object) -> None:
    """Turn list values of a frozen dataclass into tuples (JSON gives lists back)."""
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        v = getattr(cfg, f.name)
        if isinstance(v, list):
            object.__setattr__(cfg, f.name, tuple(v))


def check_common(cfg, min_base_channels: int) -> None:
    """Lists to tuples, then the checks of the fields both networks' configs have (same names, same meaning)."""
    coerce_tuples(cfg)
    check_int("in_channels", cfg.in_channels, 1)
    check_int("num_classes", cfg.num_classes, 1)
    check_int("base_channels", cfg.base_channels, min_base_channels)
    check_int("depth", cfg.depth, 1)
    check_choice("norm", cfg.norm, NORMS)
    check_choice("activation", cfg.activation, ACTIVATIONS)
    check_choice("pad_mode", cfg.pad_mode, PAD_MODES)
    check_bool("dilated_bottleneck", cfg.dilated_bottleneck)
    check_bool("deep_supervision", cfg.deep_supervision)
    if not isinstance(cfg.dilation_rates, tuple) or not cfg.dilation_rates:
        raise ValueError(f"dilation_rates must be a non-empty sequence, got {cfg.dilation_rates!r}")
    check_int_tuple("dilation_rates", cfg.dilation_rates, len(cfg.dilation_rates), 1)


def check_int(name: str, value: object, minimum: int) -> None:
    """Raise ValueError unless ``value`` is an int (not bool) >= minimum."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def check_int_tuple(name: str, value: object, length: int, minimum: int) -> None:
    if not isinstance(value, tuple) or len(value) != length:
        raise ValueError(f"{name} must be a sequence of {length} integers, got {value!r}")
    for i, v in enumerate(value):
        check_int(f"{name}[{i}]", v, minimum)
